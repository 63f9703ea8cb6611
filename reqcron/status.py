"""The opt-in status page; the only module that imports webob.

Auth: ``Authorization: Bearer <token>``, or the token typed once into a
login form that sets an HttpOnly, SameSite=Strict cookie holding an HMAC
of the token (never the token itself).  Without either: 401 and a login
form that names nothing.  Actions are POST-only with a CSRF token derived
from the session.  Every piece of text is escaped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Iterable
from html import escape
from typing import Any

from webob import Request, Response

from . import report
from .docroot import Docroot
from .errors import ReqCronError

COOKIE = "reqcron_session"
ACTIONS = ("run", "enable", "disable")


class StatusPage:
    """A WSGI app serving the status page of one DOCROOT under ``path``."""

    def __init__(self, docroot: str, path: str, token: str):
        if not token:
            raise ValueError("status_token must not be empty")
        self.root = docroot
        self.path = path.rstrip("/") or "/"
        self._token = token.encode()
        self._session = self._mac(b"session")
        self._doc: Docroot | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _mac(self, message: bytes) -> str:
        return hmac.new(self._token, message, hashlib.sha256).hexdigest()

    def _csrf(self) -> str:
        return self._mac(b"csrf:" + self._session.encode())

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
        return response(environ, start_response)  # type: ignore[no-any-return]

    def _respond(self, request: Request) -> Response:
        sub = request.path_info[len(self.path):].strip("/")
        if sub == "login" and request.method == "POST":
            return self._login(request)
        if not self._authorized(request):
            return self._login_form(401, "")
        try:
            if sub == "action":
                if request.method != "POST":
                    return _plain(405, "Actions are POST only.", allow="POST")
                return self._action(request)
            if sub == "" and request.method in ("GET", "HEAD"):
                return self._page(request)
            return _plain(404, "Not found.")
        except ReqCronError as exc:
            return _plain(500 if not isinstance(exc, LookupError) else 404, str(exc))

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return hmac.compare_digest(header[7:].strip().encode(), self._token)
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode())

    def _login(self, request: Request) -> Response:
        typed = request.POST.get("token", "")
        if not hmac.compare_digest(typed.encode(), self._token):
            return self._login_form(401, "That token is not right.")
        response = Response(status=303, location=request.application_url + self.path + "/")
        response.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict",
                            path=self.path, secure=request.scheme == "https")
        return response

    def _action(self, request: Request) -> Response:
        form = request.POST
        if not hmac.compare_digest(form.get("csrf", "").encode(), self._csrf().encode()):
            return _plain(403, "Missing or wrong CSRF token; reload the page and try again.")
        action, name = form.get("action", ""), form.get("task", "")
        if action not in ACTIONS:
            return _plain(400, f"Unknown action {action!r}.")
        doc = self._docroot()
        {"run": doc.run_now, "enable": doc.enable, "disable": doc.disable}[action](name)
        offers = request.accept.acceptable_offers(["text/html", "application/json"])
        if offers and offers[0][0] == "application/json":
            return Response(json_body={"ok": True, "action": action, "task": name})
        return Response(status=303, location=request.application_url + self.path + "/")

    def _page(self, request: Request) -> Response:
        data = report.summary(self._docroot(), history=30)
        if request.GET.get("format") == "json":
            data["csrf"] = self._csrf()
            response = Response(json.dumps(data, indent=2).encode(),
                                content_type="application/json")
        else:
            runs = {r.id: r for r in self._docroot().recent_runs(None, 30)}
            response = Response(_render(data, runs, self._csrf(), self.path),
                                content_type="text/html", charset="utf-8")
        response.cache_control = "no-store"
        return response

    def _login_form(self, status: int, message: str) -> Response:
        note = f'<p class="bad">{escape(message)}</p>' if message else ""
        body = f"""<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reqcron: sign in</title><style>{_CSS}</style>
<main><h1>reqcron</h1>{note}
<form method="post" action="{escape(self.path)}/login">
<label>Status token <input type="password" name="token" autofocus required></label>
<button>Sign in</button></form></main></html>"""
        response = Response(body, status=status, content_type="text/html", charset="utf-8")
        response.headers["WWW-Authenticate"] = 'Bearer realm="reqcron"'
        return response


def _plain(status: int, text: str, **headers: str) -> Response:
    response = Response(text + "\n", status=status, content_type="text/plain", charset="utf-8")
    for key, value in headers.items():
        response.headers[key.capitalize()] = value
    return response


def _when(value: str | None) -> str:
    """An ISO time for people: local wall time and how long ago or ahead."""
    if not value:
        return "-"
    from datetime import datetime

    moment = datetime.fromisoformat(value)
    return (f'<time datetime="{escape(value)}">{moment:%Y-%m-%d %H:%M:%S}</time> '
            f"<small>({escape(report.relative(moment.timestamp()))})</small>")


def _render(data: dict[str, Any], runs: dict[Any, Any], csrf: str, path: str) -> str:
    def button(action: str, task: str, label: str) -> str:
        return (f'<form method="post" action="{escape(path)}/action">'
                f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
                f'<input type="hidden" name="action" value="{action}">'
                f'<input type="hidden" name="task" value="{escape(task)}">'
                f'<button>{label}</button></form>')

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
            f'<td>{"yes" if t["enabled"] else "no"}</td>'
            f'<td class="actions">{button("run", t["name"], "Run now")}{toggle}</td></tr>')
    errors = "".join(f"<li><code>{escape(e)}</code></li>" for e in data["load_errors"])
    history = []
    for h in data["history"]:
        run = runs.get(h["id"])
        detail = ""
        if run is not None and (run.output or run.traceback or run.error):
            parts = [escape(run.error or ""), escape(run.output or ""), escape(run.traceback or "")]
            detail = ("<details><summary>output</summary><pre>"
                      + "\n".join(p for p in parts if p) + "</pre></details>")
        history.append(
            f'<tr><td>{h["id"]}</td><td>{escape(h["task"])}</td><td>{escape(h["trigger"])}</td>'
            f'<td>{_when(h["start"] or h["end"])}</td>'
            f'<td>{escape(report.duration(h["duration"]))}</td>'
            f'<td class="s-{escape(h["status"])}">{escape(h["status"])}</td>'
            f'<td>{escape(h["error"] or "")}{detail}</td></tr>')
    return f"""<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reqcron: {escape(data["docroot"])}</title><style>{_CSS}</style>
<main><h1>reqcron <small>{escape(data["docroot"])}</small></h1>
<p>Times in {escape(data["timezone"])}.
<a href="{escape(path)}/">Refresh</a> · <a href="{escape(path)}/?format=json">JSON</a></p>
{f'<h2>Load errors</h2><ul class="bad">{errors}</ul>' if errors else ""}
<h2>Tasks</h2>
<table><tr><th>Task</th><th>Schedule</th><th>Next run</th><th>Last run</th><th>Enabled</th>
<th></th></tr>{"".join(rows)}</table>
<h2>Recent runs</h2>
<table id="history"><tr><th>Run</th><th>Task</th><th>Trigger</th><th>Start</th><th>Duration</th>
<th>Status</th><th>Result</th></tr>{"".join(history)}</table></main>
<script>/* refresh while nobody reads an opened output */
setTimeout(function r() {{ if (document.querySelector("details[open]")) setTimeout(r, 5000);
else location.reload(); }}, 5000);</script></html>"""


_CSS = """body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
main{max-width:72rem;margin:auto;padding:1rem 1.5rem}h1 small{font-weight:normal;color:#666;
font-size:60%}table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:.35rem .5rem;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}th{background:#eee}
.actions form{display:inline;margin-right:.25rem}button{cursor:pointer}pre{white-space:pre-wrap;
max-height:20rem;overflow:auto;background:#f0f0f0;padding:.5rem}.mark{font-size:75%;
background:#fde68a;padding:0 .3rem;border-radius:3px;text-transform:uppercase}.bad,.s-failed,
.s-timeout,.s-lost,.s-missed{color:#b91c1c}.s-ok{color:#15803d}.s-skipped{color:#92400e}"""
