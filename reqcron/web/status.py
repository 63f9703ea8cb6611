"""The opt-in status page; the only module that imports webob.

Auth: ``Authorization: Bearer <token>`` (any case of "Bearer"), or the
token typed once into a login form that sets an HttpOnly, SameSite=Strict
session cookie: a random id, its expiry and an HMAC of both keyed by the
token (never the token itself), so every worker process can check it
without shared state.  Without either: 401 and a login form that names
nothing (JSON for ``?format=json``).  Wrong tokens are throttled per client
address and per process (429).  Every POST is refused from another origin;
actions and sign-out also carry a CSRF token derived from the session.
Every response forbids framing.  The HTML itself is status_html.py's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from webob import Request, Response

from ..engine import registry
from ..engine.docroot import Docroot
from ..errors import ReqCronError, StateError, UsageError
from . import actions, page
from . import status_html as html
from .gate import SESSION_SECONDS, Gate

COOKIE = "reqcron_session"
FORM_LIMIT = 8 * 1024  # bytes of a POST's body: a token, a task name, a CSRF token


class StatusPage:
    """A WSGI app serving the status page of one DOCROOT under ``path``."""

    def __init__(self, docroot: str, path: str, token: str | None,
                 metrics_token: str | None = None, tick: Callable[[], None] | None = None):
        self.root = docroot
        self.path = path.rstrip("/") or "/"
        # Wakes the middleware's worker: each health probe ticks the schedule (after it
        # has read the state).
        self._tick = tick
        # Only a metrics token: the page stays off, its path the app's.
        self._metrics_only = not token
        self._gate = Gate(token, metrics_token)
        self._doc: Docroot | None = None
        self._lock = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def serves(self, path: str) -> bool:
        """Whether a request for ``path`` (a PATH_INFO) is this page's to answer."""
        if self._metrics_only:
            return path.rstrip("/") in (self.path.rstrip("/") + "/metrics", self.health_path)
        return path == self.path or path.startswith(self.path + "/")

    @property
    def health_path(self) -> str:
        """The uptime probe's path (health.py), which needs no token."""
        return self.path.rstrip("/") + "/health"

    def _docroot(self) -> Docroot:
        # The process's engine for the DOCROOT, shared with the worker thread
        # and @delay; its store re-opens its connection in a child after fork.
        if self._doc is None:
            self._doc = registry.hold(self.root)
        return self._doc

    def close(self) -> None:
        """Let go of the engine (the middleware's close() calls this)."""
        with self._lock:
            doc, self._doc = self._doc, None
        if doc is not None:
            registry.let_go(doc)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        too_big = _read_form(environ)  # before webob, which would read any size
        request = Request(environ)
        with self._lock:
            response = too_big or self._respond(request)
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
        if sub == "health":
            return self._health(request)
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
        except StateError as exc:
            return _unavailable(request, exc)
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
            status, content_type, body = exposition(self._docroot(), request.GET.get("per_task"))
        except StateError as exc:
            return _unavailable(request, exc)
        except ReqCronError as exc:
            return _plain(500, str(exc))
        response = Response(body=body, status=status)
        response.headers["Content-Type"] = content_type
        return response

    def _health(self, request: Request) -> Response:
        """200 ok or 503 with a count (names only for the token), read before its tick."""
        from ..records import now
        from .health import answer

        if request.method not in ("GET", "HEAD"):
            return _plain(405, "GET only.", allow="GET, HEAD")
        named = (not self._metrics_only and bool(request.authorization or
                                                  request.cookies.get(COOKIE))
                 and not isinstance(self._authenticate(request), Response))
        try:
            code, text, data = answer(self._docroot(), now(), named)
        except ReqCronError as exc:
            code, text, data = 503, f"the state cannot be read: {exc}", None
        finally:
            if self._tick is not None:
                self._tick()
        if data is not None:
            return Response(json.dumps(data).encode(), status=code,
                            content_type="application/json")
        return _plain(code, text, cache_control="no-store")

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
        if action not in actions.ACTIONS:
            return _plain(400, f"Unknown action {action!r}.")
        try:
            actions.perform(self._docroot(), action, name, form.get("call", ""))
        except UsageError as exc:  # a call gone, or taken by a process meanwhile
            return _plain(409, f"{exc}.")
        if _wants_json(request):
            return Response(json_body={"ok": True, "action": action, "task": name})
        return Response(status=303, location=request.application_url + self.path + "/")

    def _page(self, request: Request, csrf: str) -> Response:
        """The page, a page of it, or one run's (page.py: the same for Django's view)."""
        status, content_type, body = page.answer(self._docroot(), request.GET, csrf=csrf,
                                                 path=self.path,
                                                 json_errors=_wants_json(request))
        response = Response(body=body, status=status)
        response.headers["Content-Type"] = content_type
        return response

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
        return Response(html.login_page(self.path, message, note), status=status,
                        content_type="text/html", charset="utf-8")


def _after_fork(ref: weakref.ref[StatusPage]) -> None:
    """In a child after fork(): a lock another thread held would never be released."""
    page = ref()
    if page is not None:
        page._lock = threading.Lock()


def _read_form(environ: dict[str, Any]) -> Response | None:
    """Read a POST's body, at most FORM_LIMIT bytes, into ``environ``; else the refusal.

    A declared length over the cap is refused (413) unread; a body with no
    length (chunked) is read up to one byte past the cap.  What is read
    replaces ``wsgi.input``, so nothing downstream reads the stream again.
    """
    if environ.get("REQUEST_METHOD") != "POST":
        return None
    declared = str(environ.get("CONTENT_LENGTH") or "").strip()
    if declared and not declared.isdigit():
        return _plain(400, "Bad Content-Length.")
    if declared and int(declared) > FORM_LIMIT:
        return _plain(413, f"A form here is at most {FORM_LIMIT} bytes.")
    stream = environ.get("wsgi.input")
    if declared:
        body = stream.read(int(declared)) if stream is not None else b""
    elif environ.get("wsgi.input_terminated") and stream is not None:
        body = stream.read(FORM_LIMIT + 1)
        if len(body) > FORM_LIMIT:
            return _plain(413, f"A form here is at most {FORM_LIMIT} bytes.")
    else:
        body = b""  # no length and no end: WSGI says there is no body to read
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("wsgi.input_terminated", None)
    return None


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


def _unavailable(request: Request, exc: StateError) -> Response:
    status, content_type, body = page.unavailable(exc, _wants_json(request))
    response = Response(body=body, status=status)
    response.headers["Content-Type"] = content_type
    return response


def _plain(status: int, text: str, **headers: str) -> Response:
    response = Response(text + "\n", status=status, content_type="text/plain", charset="utf-8")
    for key, value in headers.items():
        response.headers[key.capitalize()] = value
    return response


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# Sent with every response: no framing, and only this page's own style and
# script (by hash), forms posting back to it.
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; img-src 'self'; style-src '{_sha256(html.CSS)}'; "
        f"script-src '{_sha256(html.SCRIPT)}'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
