"""The status page's HTML: pure functions from report dicts to text; no webob.

Every piece of text is escaped here.  The page's one style sheet and one
script are constants, so status.py can allow exactly them (by hash) in its
Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from .. import report, times
from ..engine.call_admin import RETRYABLE
from ..records import RAN, Run, now


def login_page(path: str, message: str, note: str = "bad") -> str:
    """The sign-in form posting to ``path``/login, above ``message`` (class ``note``)."""
    shown = f'<p class="{note}">{escape(message)}</p>' if message else ""
    return f"""<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reqcron: sign in</title><style>{CSS}</style>
<main><h1>reqcron</h1>{shown}
<form method="post" action="{escape(path)}/login">
<label>Status token <input type="password" name="token" autofocus required></label>
<button>Sign in</button></form></main></html>"""


def when(value: str | None) -> str:
    """An ISO time for people: local wall time and how long ago or ahead."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value)
    return (f'<time datetime="{escape(value)}">{moment:%Y-%m-%d %H:%M:%S}</time> '
            f"<small>({escape(times.relative(moment.timestamp()))})</small>")


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
            tip += f" · {times.duration(seconds)}" + (" so far" if status == "running" else "")
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


def status_page(data: dict[str, Any], runs: list[Run], csrf: str, path: str,
                csrf_field: str = "csrf") -> str:
    """The page: ``data`` from report.summary with the history's ``runs``, its forms at ``path``
    (carrying ``csrf`` as the field ``csrf_field``: Django's is csrfmiddlewaretoken)."""
    def button(action: str, task: str, label: str, call: int | None = None) -> str:
        target = (f'<input type="hidden" name="call" value="{call}">' if call is not None
                  else f'<input type="hidden" name="task" value="{escape(task)}">')
        return (f'<form method="post" action="{escape(path)}/action">'
                f'<input type="hidden" name="{escape(csrf_field)}" value="{escape(csrf)}">'
                f'<input type="hidden" name="action" value="{action}">'
                f'{target}<button>{label}</button></form>')

    def page(**params: Any) -> str:
        """The page's URL with these query parameters (None: left out)."""
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{path}/" + (f"?{query}" if query else "")

    task = data["task"]
    paging = data.get("tasks_page")
    # The tasks table's page and filter, kept by the history's links and forms.
    kept = {"tasks_page": paging["page"] if paging and paging["page"] > 1 else None,
            "tasks_filter": paging["filter"] if paging else None}
    paused = data.get("paused")
    if paused:
        until = f' until {when(paused["until"])}' if paused["until"] else " until resumed"
        banner = (f'<p class="paused"><b>PAUSED</b> since {when(paused["since"])}{until}: '
                  "slots are recorded as skipped, but those of tasks with even_when_paused. "
                  f'{button("resume", "", "Resume")}</p>')
    else:
        banner = f'<p class="site">{button("pause", "", "Pause every task")}</p>'
    rows = []
    for t in data["tasks"]:
        last = t["last_run"]
        last_text = "never"
        if last:
            last_text = (f'<span class="s-{escape(last["status"])}">{escape(last["status"])}'
                         f'</span> {when(last["start"] or last["end"])}'
                         f' ({escape(times.duration(last["duration"]))})')
        marks = " ".join(f'<span class="mark">{escape(m)}</span>' for m in t["marks"])
        toggle = (button("disable", t["name"], "Disable") if t["enabled"]
                  else button("enable", t["name"], "Enable"))
        rows.append(
            f'<tr><td><b>{escape(t["name"])}</b> {marks}</td><td>{escape(t["schedule"])}</td>'
            f'<td>{when(t["next_run"])}</td><td>{last_text}</td>'
            f'<td>{_strip(t["recent"], page(task=t["name"], **kept) + "#runs")}</td>'
            f'<td>{"yes" if t["enabled"] else "no"}</td>'
            f'<td class="actions">{button("run", t["name"], "Run now")}{toggle}</td></tr>')
    errors = "".join(f"<li><code>{escape(e)}</code></li>" for e in data["load_errors"])
    history = []
    for run, h in zip(runs, data["history"], strict=True):
        # The output only on the run's own page: inlined, 50 runs made pages of megabytes.
        shown = escape(page(run=run.id))
        detail = (f' <a href="{shown}" class="more">output</a>'
                  if run.output or run.traceback or run.return_value else "")
        repeated = f" x{h['slots']}" if h["slots"] > 1 else ""
        steer = ""
        if run.call is not None and run.status == "queued":
            steer = button("cancel", "", "Cancel", call=run.id)
        elif run.call is not None and run.status in RETRYABLE:
            steer = button("retry", "", "Retry", call=run.id)
        history.append(
            f'<tr><td><a href="{shown}">{h["id"]}</a></td>'
            f'<td><a href="{escape(page(task=h["task"], **kept))}#runs">'
            f'{escape(h.get("call", {}).get("label") or h["task"])}</a>'
            f'</td><td>{escape(h["trigger"])}</td>'
            f'<td>{when(h["start"] or h["end"])}</td>'
            f'<td>{escape(times.duration(h["duration"]))}</td>'
            f'<td class="s-{escape(h["status"])}">{escape(h["status"])}{repeated}</td>'
            f'<td>{escape(h["error"] or "")}{detail}</td><td class="actions">{steer}</td></tr>')
    options = "".join(
        f'<option value="{escape(t["name"])}"{" selected" if t["name"] == task else ""}>'
        f'{escape(t["name"])}</option>' for t in data["tasks"])
    if task and task not in {t["name"] for t in data["tasks"]}:  # a call's function
        options += f'<option value="{escape(task)}" selected>{escape(task)}</option>'
    links = [f'<a href="{escape(page(task=task, after=data["newer"], **kept))}#runs" '
             'rel="prev">← newer</a>' if data["newer"] else "",
             f'<a href="{escape(page(task=task, **kept))}#runs">newest</a>'
             if data["newer"] or data["next"] else "",
             f'<a href="{escape(page(task=task, before=data["next"], **kept))}#runs" '
             'rel="next">older →</a>' if data["next"] else ""]
    nav = " · ".join(link for link in links if link)
    head, tasks_nav = _tasks_nav(paging, task, page) if paging else ("", "")
    kept_fields = "".join(f'<input type="hidden" name="{k}" value="{escape(str(v))}">'
                          for k, v in kept.items() if v is not None)
    title = f"Runs of {escape(task)}" if task else "Recent runs"
    return f"""<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reqcron: {escape(data["docroot"])}</title><style>{CSS}</style>
<main><h1>reqcron <small>{escape(data["docroot"])}</small></h1>
<p>Times in {escape(data["timezone"])}.
<a href="{escape(path)}/">Refresh</a> ·
<a href="{escape(page(format="json", task=task, **kept))}">JSON</a>
</p>
<form method="post" action="{escape(path)}/logout" class="signout">
<input type="hidden" name="{escape(csrf_field)}" value="{escape(csrf)}">
<button>Sign out</button></form>
{banner}
{f'<h2>Load errors</h2><ul class="bad">{errors}</ul>' if errors else ""}
<h2 id="tasks">Tasks</h2>
{head}{tasks_nav}
<table><tr><th>Task</th><th>Schedule</th><th>Next run</th><th>Last run</th><th>Latest runs</th>
<th>Enabled</th><th></th></tr>{"".join(rows)}</table>
{tasks_nav if len(rows) > 20 else ""}
<h2 id="runs">{title}</h2>
<form method="get" action="{escape(path)}/" class="filter"><label>Task
<select name="task"><option value="">all tasks and calls</option>{options}</select></label>
{kept_fields}<button>Show</button></form>
<table id="history"><tr><th>Run</th><th>Task</th><th>Trigger</th><th>Start</th><th>Duration</th>
<th>Status</th><th>Result</th><th></th></tr>{"".join(history)}</table>
{f'<p class="pages">{nav}</p>' if nav else ""}
{"" if history else "<p>No runs yet.</p>"}</main>
<script>{SCRIPT}</script></html>"""


def _tasks_nav(paging: dict[str, Any], task: str | None, page: Callable[..., str]
               ) -> tuple[str, str]:
    """Above the tasks table: how many there are and bear each mark, and the filter by
    name; and the links to the other pages of tasks (those with marks come first)."""
    wanted = paging["filter"]
    tally = ", ".join(f"{n:,} {mark}" for mark, n in paging["marks"].items() if n)
    found = (f'; {paging["matching"]:,} with “{escape(wanted)}” in their name'
             if wanted else "")
    where = (f' · page {paging["page"]} of {paging["pages"]}, tasks with marks first'
             if paging["pages"] > 1 else "")

    def to(number: int | None, label: str, rel: str = "") -> str:
        href = escape(page(tasks_page=number if number != 1 else None, tasks_filter=wanted,
                           task=task))
        return f'<a href="{href}#tasks"' + (f' rel="{rel}"' if rel else "") + f">{label}</a>"

    links = [to(1, "first") if paging["page"] > 2 else "",
             to(paging["previous"], "← previous", "prev") if paging["previous"] else "",
             to(paging["next"], "next →", "next") if paging["next"] else "",
             to(paging["pages"], "last") if paging["pages"] - paging["page"] > 1 else ""]
    nav = " · ".join(link for link in links if link)
    keep = (f'<input type="hidden" name="task" value="{escape(task)}">' if task else "")
    clear = f' <a href="{escape(page(task=task))}#tasks">all tasks</a>' if wanted else ""
    return (f'<p class="tally">{paging["total"]:,} tasks{": " + tally if tally else ""}{found}'
            f'{where}</p><form method="get" action="{escape(page())}#tasks" class="filter">'
            f'<label>Name contains <input name="tasks_filter" value="{escape(wanted or "")}" '
            f'size="24"></label>{keep}<button>Find</button>{clear}</form>',
            f'<p class="pages">{nav}</p>' if nav else "")


CSS = """body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
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
.filter{margin:.5rem 0}.pages{text-align:center}.paused{background:#fde68a;padding:.5rem}
.paused form,.site form{display:inline;margin-left:.5rem}.run pre{max-height:none}
.facts{width:auto}.facts th{background:none}"""
SCRIPT = """/* refresh, but not while someone types in a form */
setTimeout(function r() { var a = document.activeElement;
if (a && (a.tagName == "INPUT" || a.tagName == "SELECT")) setTimeout(r, 5000);
else location.reload(); }, 5000);"""
