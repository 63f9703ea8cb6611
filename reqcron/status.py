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
import threading
import weakref
from collections.abc import Callable, Iterable
from html import escape
from typing import Any
from urllib.parse import urlsplit

from webob import Request, Response

from . import report
from .docroot import Docroot
from .errors import ReqCronError
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
        doc = self._docroot()
        data = report.summary(doc, history=30)
        if request.GET.get("format") == "json":
            data["csrf"] = csrf
            return Response(json.dumps(data, indent=2).encode(), content_type="application/json")
        runs = {r.id: r for r in doc.recent_runs(None, 30)}
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
            f'<tr><td>{h["id"]}</td><td>{escape(h.get("call", {}).get("label") or h["task"])}'
            f'</td><td>{escape(h["trigger"])}</td>'
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
<form method="post" action="{escape(path)}/logout" class="signout">
<input type="hidden" name="csrf" value="{escape(csrf)}"><button>Sign out</button></form>
{f'<h2>Load errors</h2><ul class="bad">{errors}</ul>' if errors else ""}
<h2>Tasks</h2>
<table><tr><th>Task</th><th>Schedule</th><th>Next run</th><th>Last run</th><th>Enabled</th>
<th></th></tr>{"".join(rows)}</table>
<h2>Recent runs</h2>
<table id="history"><tr><th>Run</th><th>Task</th><th>Trigger</th><th>Start</th><th>Duration</th>
<th>Status</th><th>Result</th></tr>{"".join(history)}</table></main>
<script>{_SCRIPT}</script></html>"""


_CSS = """body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
main{max-width:72rem;margin:auto;padding:1rem 1.5rem}h1 small{font-weight:normal;color:#666;
font-size:60%}table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:.35rem .5rem;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}th{background:#eee}
.actions form{display:inline;margin-right:.25rem}button{cursor:pointer}pre{white-space:pre-wrap;
max-height:20rem;overflow:auto;background:#f0f0f0;padding:.5rem}.mark{font-size:75%;
background:#fde68a;padding:0 .3rem;border-radius:3px;text-transform:uppercase}.bad,.s-failed,
.s-timeout,.s-lost,.s-missed{color:#b91c1c}.s-ok,.good{color:#15803d}.s-skipped{color:#92400e}
.signout{float:right;margin-top:-2.6rem}"""
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
