"""One run's page (``?run=ID``): what it was, and its whole output and traceback.

The status page shows each run in a line; its output (up to 64 KiB, and as
much again of traceback) only here, when asked, so the page of 50 runs stays
small.  Every piece of text is escaped; no script (nothing here changes).
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

from .. import report, times
from .status_html import CSS, when

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from datetime import tzinfo

    from ..records import Run


def run_page(run: Run, zone: tzinfo, path: str) -> str:
    """The page of ``run``, linking back to the status page at ``path``."""
    data = report.run_dict(run, zone)
    name = data.get("call", {}).get("label") or run.task
    runs_of = f"{path}/?{urlencode({'task': run.task})}#runs"
    facts = [
        ("task", f'<a href="{escape(runs_of)}">{escape(name)}</a>'),
        ("status", f'<span class="s-{escape(run.status)}">{escape(run.status)}</span>'
                   + (f" x{run.slots}" if run.slots > 1 else "")),
        ("trigger", escape(run.trigger)),
        ("slot", when(data["slot"])),
        ("start", when(data["start"])),
        ("end", when(data["end"])),
        ("duration", escape(times.duration(run.duration))),
        ("lateness", escape(times.duration(run.lateness)) if run.lateness is not None else "-"),
        ("exit code", "-" if run.exit_code is None else str(run.exit_code)),
        ("attempts", str(run.attempts)) if run.call is not None else None,
        ("returned", f"<pre>{escape(run.return_value)}</pre>" if run.return_value else None),
        ("notified", escape(run.notified) if run.notified else None),
    ]
    rows = "".join(f"<tr><th>{label}</th><td>{value}</td></tr>"
                   for label, value in (f for f in facts if f is not None) if value is not None)
    sections = [(title, text) for title, text in (
        ("Error", run.error), ("Output", report.output_without_traceback(run)),
        ("Traceback", run.traceback)) if text and text.strip()]
    body = "".join(f"<h2>{title}</h2><pre>{escape(text)}</pre>" for title, text in sections)
    return f"""<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reqcron: run {run.id} of {escape(name)}</title><style>{CSS}</style>
<main class="run"><h1>Run {run.id} <small>{escape(name)}</small></h1>
<p><a href="{escape(path)}/">← the status page</a> ·
<a href="{escape(runs_of)}">runs of {escape(name)}</a> ·
<a href="{escape(path)}/?{urlencode({'run': run.id, 'format': 'json'})}">JSON</a></p>
<table class="facts">{rows}</table>
{body or "<p>No output.</p>"}</main></html>"""
