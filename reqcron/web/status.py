"""The opt-in status page; the only module that imports webob.

Auth: ``Authorization: Bearer <token>`` (any case of "Bearer"), or the
token typed once into a login form that sets an HttpOnly, SameSite=Strict
session cookie: a random id, its expiry and an HMAC of both keyed by the
token (never the token itself), so every worker process can check it
without shared state.  Without either: 401 and a login form that names
nothing (JSON for ``?format=json``).  Wrong tokens are throttled per client
address and per process (429).  Every POST is refused from another origin;
actions and sign-out also carry a CSRF token derived from the session.
Every response forbids framing.  Every piece of text is escaped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

from webob import Request, Response

from .. import report
from ..engine.docroot import Docroot
from ..errors import ReqCronError, TaskLookupError
from ..records import RAN, Run, now
from .gate import SESSION_SECONDS, Gate

COOKIE = "reqcron_session"
ACTIONS = ("run", "enable", "disable")
class StatusPage:
    """A WSGI app serving the status page of one DOCROOT under ``path``."""

    def __init__(self, docroot: str, path: str, token: str | None,
                 metrics_token: str | None = None):
        self.root = docroot
        self.path = path.rstrip("/") or "/"
        self._gate = Gate(token, metrics_token)
        self._doc: Docroot | None = None
        self._pid = 0
        self._lock = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def _docroot(self) -> Docroot:
        # One engine per process (the worker thread keeps its own); re-made
        # after fork so no connection crosses it.
        if self._doc is None or self._pid != os.getpid():
            self._doc = Docroot(self.root, busy_timeout=1.0)
            self._pid = os.getpid()
        return self._doc

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        request = Request(environ)
        with self._lock:
            response = self._respond(request)
        for key, value in HEADERS.items():
            response.headers[key] = value
        return response(environ, start_response)  # type: ignore[no-any-return]

    def _respond(self, request: Request) -> Response:
        sub = request.path_info[len(self.path):].strip("/")
        if request.method == "POST" and not _same_origin(request):
            return _plain(403, "Cross-origin request refused.")
        if sub == "login" and request.method == "POST":
            return self._login(request)
        if sub == "metrics":
            return self._metrics(request)
        csrf = self._authenticate(request)
        if isinstance(csrf, Response):
            return csrf
        try:
            if sub in ("action", "logout"):
                if request.method != "POST":
                    return _plain(405, "POST only.", allow="POST")
                if not hmac.compare_digest(request.POST.get("csrf", "").encode(), csrf.encode()):
                    return _plain(403, "Missing or wrong CSRF token; reload the page.")
                return self._action(request) if sub == "action" else self._logout(request)
            if sub == "" and request.method in ("GET", "HEAD"):
                return self._page(request, csrf)
            return _plain(404, "Not found.")
        except ReqCronError as exc:
            return _plain(500 if not isinstance(exc, LookupError) else 404, str(exc))

    def _authenticate(self, request: Request, metrics: bool = False) -> str | Response:
        """Return the caller's CSRF token, or the response that turns the caller away.

        ``metrics``: the metrics token is good too (it opens nothing else).
        """
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            refusal = self._throttled(request)
            if refusal is not None:
                return refusal
            if self._gate.check(request.remote_addr or "", credentials.strip(), metrics):
                return self._gate.csrf(None)
            return self._refuse(request, 401, "That token is not right.")
        session = self._gate.session(request.cookies.get(COOKIE, ""))
        if session is None:
            return self._refuse(request, 401, "")
        return self._gate.csrf(session[0])

    def _metrics(self, request: Request) -> Response:
        """Prometheus text (metrics.py), for either token."""
        refusal = self._authenticate(request, metrics=True)
        if isinstance(refusal, Response):
            return refusal
        if request.method not in ("GET", "HEAD"):
            return _plain(405, "GET only.", allow="GET, HEAD")
        from .metrics import exposition  # prometheus_client only when scraped

        try:
            status, content_type, body = exposition(self._docroot())
        except ReqCronError as exc:
            return _plain(500, str(exc))
        response = Response(body=body, status=status)
        response.headers["Content-Type"] = content_type
        return response

    def _throttled(self, request: Request) -> Response | None:
        wait = self._gate.wait(request.remote_addr or "")
        if not wait:
            return None
        seconds = max(1, math.ceil(wait))
        response = self._refuse(request, 429, f"Too many wrong tokens; try again in {seconds} s.")
        response.headers["Retry-After"] = str(seconds)
        return response

    def _login(self, request: Request) -> Response:
        refusal = self._throttled(request)
        if refusal is not None:
            return refusal
        if not self._gate.check(request.remote_addr or "", request.POST.get("token", "")):
            return self._refuse(request, 401, "That token is not right.")
        response = Response(status=303, location=request.application_url + self.path + "/")
        response.set_cookie(COOKIE, self._gate.new_session(), max_age=SESSION_SECONDS,
                            **self._cookie_flags(request))
        return response

    def _logout(self, request: Request) -> Response:
        self._gate.sign_out(request.cookies.get(COOKIE, ""))
        response = self._login_form(200, "Signed out.", note="good")
        response.set_cookie(COOKIE, "", max_age=0, **self._cookie_flags(request))
        return response

    def _cookie_flags(self, request: Request) -> dict[str, Any]:
        return {"httponly": True, "samesite": "Strict", "path": self.path,
                "secure": request.scheme == "https"}

    def _action(self, request: Request) -> Response:
        form = request.POST
        action, name = form.get("action", ""), form.get("task", "")
        if action not in ACTIONS:
            return _plain(400, f"Unknown action {action!r}.")
        doc = self._docroot()
        {"run": doc.run_now, "enable": doc.enable, "disable": doc.disable}[action](name)
        if _wants_json(request):
            return Response(json_body={"ok": True, "action": action, "task": name})
        return Response(status=303, location=request.application_url + self.path + "/")

    def _page(self, request: Request, csrf: str) -> Response:
        query = _history_query(request)
        if isinstance(query, str):
            return _bad_request(request, query)
        doc = self._docroot()
        try:
            runs, older, newer = report.history_page(doc, **query)
        except TaskLookupError as exc:
            return _bad_request(request, f"No task or call named {exc.name!r} has runs.")
        data = report.summary(doc, recent=report.STRIP_RUNS)
        data.update(history=[report.run_dict(r, doc.zone) for r in runs],
                    task=query["task"], next=older, newer=newer)
        if request.GET.get("format") == "json":
            data["csrf"] = csrf
            return Response(json.dumps(data, indent=2).encode(), content_type="application/json")
        return Response(_render(data, runs, csrf, self.path),
                        content_type="text/html", charset="utf-8")

    def _refuse(self, request: Request, status: int, message: str) -> Response:
        """A 401 or 429: JSON if asked for, else the login form."""
        if _wants_json(request):
            response = Response(json_body={"error": message or "A status token is needed."},
                                status=status)
        else:
            response = self._login_form(status, message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="reqcron"'
        return response

    def _login_form(self, status: int, message: str, note: str = "bad") -> Response:
        shown = f'<p class="{note}">{escape(message)}</p>' if message else ""
        body = f"""<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reqcron: sign in</title><style>{_CSS}</style>
<main><h1>reqcron</h1>{shown}
<form method="post" action="{escape(self.path)}/login">
<label>Status token <input type="password" name="token" autofocus required></label>
<button>Sign in</button></form></main></html>"""
        return Response(body, status=status, content_type="text/html", charset="utf-8")


def _after_fork(ref: weakref.ref[StatusPage]) -> None:
    """In a child after fork(): a lock another thread held would never be released."""
    page = ref()
    if page is not None:
        page._lock = threading.Lock()


def _wants_json(request: Request) -> bool:
    if request.GET.get("format") == "json":
        return True
    offers = request.accept.acceptable_offers(["text/html", "application/json"])
    return bool(offers) and offers[0][0] == "application/json"


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _same_origin(request: Request) -> bool:
    """False if an Origin (else Referer) header names another scheme://host:port."""
    claimed = request.headers.get("Origin") or request.headers.get("Referer")
    return not claimed or _origin(claimed) == _origin(request.host_url)


_CURSOR = re.compile("[1-9][0-9]{0,17}")  # a run id; fits a 64-bit integer


def _history_query(request: Request) -> dict[str, Any] | str:
    """The task filter and page cursor asked for, or why they cannot be used."""
    get = request.GET
    if get.get("format", "") not in ("", "html", "json"):
        return "format must be html or json."
    task = get.get("task") or None
    if task is not None and (len(task) > 200 or not task.isprintable()):
        return "task must be the name of a task (printable, at most 200 characters)."
    cursors = {}
    for key in ("before", "after"):
        value = get.get(key)
        if value is not None:
            if not _CURSOR.fullmatch(value):
                return f"{key} must be a run id (a positive whole number), not {value[:40]!r}."
            cursors[key] = int(value)
    if len(cursors) > 1:
        return "Give before (older runs) or after (newer runs), not both."
    return {"task": task, **cursors}


def _bad_request(request: Request, message: str) -> Response:
    if _wants_json(request):
        return Response(json_body={"error": message}, status=400)
    return _plain(400, message)


def _plain(status: int, text: str, **headers: str) -> Response:
    response = Response(text + "\n", status=status, content_type="text/plain", charset="utf-8")
    for key, value in headers.items():
        response.headers[key.capitalize()] = value
    return response


def _when(value: str | None) -> str:
    """An ISO time for people: local wall time and how long ago or ahead."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value)
    return (f'<time datetime="{escape(value)}">{moment:%Y-%m-%d %H:%M:%S}</time> '
            f"<small>({escape(report.relative(moment.timestamp()))})</small>")


# The strip of a task's latest runs, in SVG units (= CSS pixels).
BAR_W, BAR_GAP, STRIP_H, BAR_MIN = 6, 2, 24, 3
# Slots that did not run have no duration: a fixed height tells them apart.
NOT_RUN_H = 10
BAR_CLASS = {"ok": "ok", "failed": "bad", "timeout": "bad", "lost": "bad", "skipped": "skip",
             "missed": "miss", "running": "run"}


def _strip(recent: list[dict[str, Any]], href: str) -> str:
    """A task's latest runs as bars, oldest on the left: colour for status, height for time."""
    runs = recent[::-1]
    longest = max((r["duration"] or 0.0 for r in runs), default=0.0)
    bars = []
    for i, r in enumerate(runs):
        status, seconds = r["status"], r["duration"]
        if status == "running" and r["start"]:  # so far
            seconds = max(0.0, now() - datetime.fromisoformat(r["start"]).timestamp())
        if status in ("skipped", "missed", "queued", "pending"):
            height = NOT_RUN_H
        elif longest > 0 and seconds:
            height = max(BAR_MIN, round(STRIP_H * min(seconds / longest, 1.0)))
        else:
            height = BAR_MIN
        when = (datetime.fromisoformat(r["start"]).strftime("%Y-%m-%d %H:%M:%S")
                if r["start"] else "-")
        tip = f"{when} · {status}" + (f" x{r['slots']}" if r["slots"] > 1 else "")
        if status in RAN or status == "running":
            tip += f" · {report.duration(seconds)}" + (" so far" if status == "running" else "")
        x, y = i * (BAR_W + BAR_GAP), STRIP_H - height
        kind = BAR_CLASS.get(status, "wait")
        bars.append(f'<rect class="bar b-{kind}" x="{x}.5" y="{y}.5" width="{BAR_W - 1}" '
                    f'height="{height - 1}"><title>{escape(tip)}</title></rect>')
    width = report.STRIP_RUNS * (BAR_W + BAR_GAP)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    label = (f"last {len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items())
             if runs else "no runs yet")
    return (f'<a href="{escape(href)}" class="strip"><svg xmlns="http://www.w3.org/2000/svg" '
            f'width="{width}" height="{STRIP_H + 1}" viewBox="0 0 {width} {STRIP_H + 1}" '
            f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
            f'<line x1="0" y1="{STRIP_H + .5}" x2="{width}" y2="{STRIP_H + .5}"/>'
            f'{"".join(bars)}</svg></a>')


def _render(data: dict[str, Any], runs: list[Run], csrf: str, path: str) -> str:
    def button(action: str, task: str, label: str) -> str:
        return (f'<form method="post" action="{escape(path)}/action">'
                f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
                f'<input type="hidden" name="action" value="{action}">'
                f'<input type="hidden" name="task" value="{escape(task)}">'
                f'<button>{label}</button></form>')

    def page(**params: Any) -> str:
        """The page's URL with these query parameters (None: left out)."""
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{path}/" + (f"?{query}" if query else "")

    task = data["task"]
    rows = []
    for t in data["tasks"]:
        last = t["last_run"]
        last_text = "never"
        if last:
            last_text = (f'<span class="s-{escape(last["status"])}">{escape(last["status"])}'
                         f'</span> {_when(last["start"] or last["end"])}'
                         f' ({escape(report.duration(last["duration"]))})')
        marks = " ".join(f'<span class="mark">{escape(m)}</span>' for m in t["marks"])
        toggle = (button("disable", t["name"], "Disable") if t["enabled"]
                  else button("enable", t["name"], "Enable"))
        rows.append(
            f'<tr><td><b>{escape(t["name"])}</b> {marks}</td><td>{escape(t["schedule"])}</td>'
            f'<td>{_when(t["next_run"])}</td><td>{last_text}</td>'
            f'<td>{_strip(t["recent"], page(task=t["name"]) + "#runs")}</td>'
            f'<td>{"yes" if t["enabled"] else "no"}</td>'
            f'<td class="actions">{button("run", t["name"], "Run now")}{toggle}</td></tr>')
    errors = "".join(f"<li><code>{escape(e)}</code></li>" for e in data["load_errors"])
    history = []
    for run, h in zip(runs, data["history"], strict=True):
        detail = ""
        if run.output or run.traceback or run.error:
            parts = [escape(run.error or ""), escape(report.output_without_traceback(run)),
                     escape(run.traceback or "")]
            detail = ("<details><summary>output</summary><pre>"
                      + "\n".join(p for p in parts if p) + "</pre></details>")
        times = f" x{h['slots']}" if h["slots"] > 1 else ""
        history.append(
            f'<tr><td>{h["id"]}</td><td><a href="{escape(page(task=h["task"]))}#runs">'
            f'{escape(h.get("call", {}).get("label") or h["task"])}</a>'
            f'</td><td>{escape(h["trigger"])}</td>'
            f'<td>{_when(h["start"] or h["end"])}</td>'
            f'<td>{escape(report.duration(h["duration"]))}</td>'
            f'<td class="s-{escape(h["status"])}">{escape(h["status"])}{times}</td>'
            f'<td>{escape(h["error"] or "")}{detail}</td></tr>')
    options = "".join(
        f'<option value="{escape(t["name"])}"{" selected" if t["name"] == task else ""}>'
        f'{escape(t["name"])}</option>' for t in data["tasks"])
    if task and task not in {t["name"] for t in data["tasks"]}:  # a call's function
        options += f'<option value="{escape(task)}" selected>{escape(task)}</option>'
    links = [f'<a href="{escape(page(task=task, after=data["newer"]))}#runs" rel="prev">'
             "← newer</a>" if data["newer"] else "",
             f'<a href="{escape(page(task=task))}#runs">newest</a>'
             if data["newer"] or data["next"] else "",
             f'<a href="{escape(page(task=task, before=data["next"]))}#runs" rel="next">'
             "older →</a>" if data["next"] else ""]
    nav = " · ".join(link for link in links if link)
    title = f"Runs of {escape(task)}" if task else "Recent runs"
    return f"""<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reqcron: {escape(data["docroot"])}</title><style>{_CSS}</style>
<main><h1>reqcron <small>{escape(data["docroot"])}</small></h1>
<p>Times in {escape(data["timezone"])}.
<a href="{escape(path)}/">Refresh</a> · <a href="{escape(page(format="json", task=task))}">JSON</a>
</p>
<form method="post" action="{escape(path)}/logout" class="signout">
<input type="hidden" name="csrf" value="{escape(csrf)}"><button>Sign out</button></form>
{f'<h2>Load errors</h2><ul class="bad">{errors}</ul>' if errors else ""}
<h2>Tasks</h2>
<table><tr><th>Task</th><th>Schedule</th><th>Next run</th><th>Last run</th><th>Latest runs</th>
<th>Enabled</th><th></th></tr>{"".join(rows)}</table>
<h2 id="runs">{title}</h2>
<form method="get" action="{escape(path)}/" class="filter"><label>Task
<select name="task"><option value="">all tasks and calls</option>{options}</select></label>
<button>Show</button></form>
<table id="history"><tr><th>Run</th><th>Task</th><th>Trigger</th><th>Start</th><th>Duration</th>
<th>Status</th><th>Result</th></tr>{"".join(history)}</table>
{f'<p class="pages">{nav}</p>' if nav else ""}
{"" if history else "<p>No runs yet.</p>"}</main>
<script>{_SCRIPT}</script></html>"""


_CSS = """body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
main{max-width:72rem;margin:auto;padding:1rem 1.5rem}h1 small{font-weight:normal;color:#666;
font-size:60%}table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:.35rem .5rem;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}th{background:#eee}
.actions form{display:inline;margin-right:.25rem}button{cursor:pointer}pre{white-space:pre-wrap;
max-height:20rem;overflow:auto;background:#f0f0f0;padding:.5rem}.mark{font-size:75%;
background:#fde68a;padding:0 .3rem;border-radius:3px;text-transform:uppercase}.bad,.s-failed,
.s-timeout,.s-lost,.s-missed{color:#b91c1c}.s-ok,.good{color:#15803d}.s-skipped{color:#92400e}
.signout{float:right;margin-top:-2.6rem}.strip svg{display:block}.strip line{stroke:#ccc}
.bar{stroke-width:1}.b-ok{fill:#16a34a}.b-bad{fill:#dc2626}.b-skip{fill:#f59e0b}
.b-miss{fill:none;stroke:#9ca3af}.b-run{fill:#2563eb}.b-wait{fill:none;stroke:#2563eb}
.filter{margin:.5rem 0}.pages{text-align:center}"""
_SCRIPT = """/* refresh while nobody reads an opened output */
setTimeout(function r() { if (document.querySelector("details[open]")) setTimeout(r, 5000);
else location.reload(); }, 5000);"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# Sent with every response: no framing, and only this page's own style and
# script (by hash), forms posting back to it.
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; img-src 'self'; style-src '{_sha256(_CSS)}'; "
        f"script-src '{_sha256(_SCRIPT)}'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
