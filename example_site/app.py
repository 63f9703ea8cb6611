"""The example site: a plain WSGI app wrapped in ReqCron.

gunicorn --chdir example_site -w 2 -b 127.0.0.1:8000 app:application
"""

import html
import os
from pathlib import Path

from reqcron import Docroot, ReqCron

DOCROOT = Path(__file__).resolve().parent
ENGINE = Docroot(DOCROOT)  # to read the history; ReqCron keeps its own per process


def site(environ, start_response):
    """Show what the tasks did: the last heartbeat and the recent runs."""
    beat = DOCROOT / "data" / "heartbeat.txt"
    last = beat.read_text() if beat.exists() else "none yet (wait a few seconds, then reload)"
    rows = "".join(
        f"<tr><td>{run.id}</td><td>{html.escape(run.task)}</td><td>{run.trigger}</td>"
        f"<td>{run.status}</td><td>{html.escape((run.error or run.return_value or '')[:80])}"
        "</td></tr>"
        for run in ENGINE.history(limit=15)
    )
    body = f"""<!doctype html><meta charset="utf-8"><title>reqcron example</title>
<meta http-equiv="refresh" content="2">
<h1>reqcron example site</h1>
<p><a href="/_reqcron/">Status page</a> (token printed by scripts/serve).
<p>Served by process {os.getpid()}. Last heartbeat: <b>{html.escape(last)}</b></p>
<table border="1" cellpadding="4"><tr><th>run</th><th>task</th><th>trigger</th><th>status</th>
<th>result</th></tr>{rows}</table>"""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [body.encode()]


# The status page is on when REQCRON_STATUS_TOKEN is set (scripts/serve sets one).
application = ReqCron(site, DOCROOT, status_path="/_reqcron",
                      status_token=os.environ.get("REQCRON_STATUS_TOKEN"))
