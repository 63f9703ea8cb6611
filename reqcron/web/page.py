"""The status page's answer to a GET, for both its surfaces: the token-guarded StatusPage
(status.py) and Django's staff view.  What is asked, read through report.py, as JSON or
HTML; no webob, no Django.

A page stays small whatever the site: its tasks table holds TASKS_PAGE tasks
(those with marks first), its history PAGE_SIZE runs without their output,
and one run's whole output and traceback have a page of their own
(``?run=ID``).
"""

from __future__ import annotations

import json
import re

from .. import report
from ..errors import TaskLookupError
from ..limits import PAGE_VALUE_LIMIT
from ..records import Record
from . import run_html
from . import status_html as html

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ..engine.docroot import Docroot

HTML = "text/html; charset=utf-8"
JSON = "application/json"
PLAIN = "text/plain; charset=utf-8"

_ID = re.compile("[1-9][0-9]{0,17}")  # a run id; fits a 64-bit integer
_PAGE = re.compile("[1-9][0-9]{0,8}")


class Query(Record):
    """What a GET of the page asks for: one run (``run``), or the page: its history's
    task filter and cursor, its tasks table's page and name filter; as JSON or not."""

    __slots__ = ("task", "before", "after", "tasks_page", "tasks_filter", "run", "json")

    def __init__(self, task: str | None = None, before: int | None = None,
                 after: int | None = None, tasks_page: int = 1, tasks_filter: str | None = None,
                 run: int | None = None, json: bool = False):
        self.task = task
        self.before = before
        self.after = after
        self.tasks_page = tasks_page
        self.tasks_filter = tasks_filter
        self.run = run
        self.json = json


def parse(get: Mapping[str, str]) -> Query | str:
    """The query a request's parameters make, or why they cannot be used (a 400)."""
    if get.get("format", "") not in ("", "html", "json"):
        return "format must be html or json."
    names: dict[str, Any] = {}
    for key, what in (("task", "the name of a task"), ("tasks_filter", "a part of task names")):
        value = get.get(key) or None
        if value is not None and (len(value) > 200 or not value.isprintable()):
            return f"{key} must be {what} (printable, at most 200 characters)."
        names[key] = value
    numbers: dict[str, Any] = {}
    for key, pattern, what in (("before", _ID, "a run id"), ("after", _ID, "a run id"),
                               ("run", _ID, "a run id"), ("tasks_page", _PAGE, "a page number")):
        value = get.get(key)
        if value is not None:
            if not pattern.fullmatch(value):
                return f"{key} must be {what} (a positive whole number), not {value[:40]!r}."
            numbers[key] = int(value)
    if "before" in numbers and "after" in numbers:
        return "Give before (older runs) or after (newer runs), not both."
    return Query(**names, **numbers, json=get.get("format") == "json")


def answer(doc: Docroot, get: Mapping[str, str], *, csrf: str, path: str,
           csrf_field: str = "csrf", json_errors: bool = False, csrf_in_json: bool = True
           ) -> tuple[int, str, bytes]:
    """(HTTP status, content type, body) of a GET of the page at ``path``.

    ``csrf`` goes into its forms as the field ``csrf_field`` (and into its
    JSON, with ``csrf_in_json``); ``json_errors``: a 400 or 404 as JSON.
    """
    query = parse(get)
    if isinstance(query, str):
        return _error(400, query, json_errors)
    if query.run is not None:
        run = doc.get_run(query.run)
        if run is None:
            return _error(404, f"No run {query.run} is kept.", json_errors or query.json)
        if query.json:
            return 200, JSON, _dumps(report.run_dict(run, doc.zone, full=True))
        return 200, HTML, run_html.run_page(run, doc.zone, path).encode()
    try:
        runs, older, newer = report.history_page(doc, query.task, before=query.before,
                                                  after=query.after)
    except TaskLookupError as exc:
        return _error(400, f"No task or call named {exc.name!r} has runs.", json_errors)
    data = report.summary(doc, recent=report.STRIP_RUNS,
                          tasks=report.TasksWanted(query.tasks_page, query.tasks_filter))
    data.update(history=[report.run_dict(r, doc.zone) for r in runs],
                task=query.task, next=older, newer=newer)
    for shown in [*data["history"], *(t["last_run"] for t in data["tasks"])]:
        _without_a_big_value(shown)
    if query.json:
        if csrf_in_json:
            data["csrf"] = csrf
        return 200, JSON, _dumps(data)
    return 200, HTML, html.status_page(data, runs, csrf, path, csrf_field).encode()


def _without_a_big_value(run: dict[str, Any] | None) -> None:
    """Leave out a return value longer than PAGE_VALUE_LIMIT (the run's own page has it)."""
    if run is not None and run["return_value"] is not None and (
            len(json.dumps(run["return_value"])) > PAGE_VALUE_LIMIT):
        run.update(return_value=None, return_value_omitted=True)


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2).encode()


def _error(status: int, message: str, as_json: bool) -> tuple[int, str, bytes]:
    if as_json:
        return status, JSON, json.dumps({"error": message}).encode()
    return status, PLAIN, (message + "\n").encode()


def unavailable(exc: Exception, as_json: bool) -> tuple[int, str, bytes]:
    """503: the state cannot be used now (a database away, a state dir refused), and why, in
    one line; the page works again by itself once it can."""
    return _error(503, (str(exc).strip().splitlines() or ["the state cannot be used"])[0],
                  as_json)
