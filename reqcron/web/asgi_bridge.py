"""Serve a WSGI app (the status page) for one ASGI HTTP request, from a thread.

One status page, written once for WSGI (status.py): under ASGI its request
is turned into a WSGI environ (with the whole body, read first), the page
runs in a worker thread because it reads the state (database I/O must not
block the event loop), and its status, headers and body are sent back.
Needs an asyncio event loop (uvicorn, gunicorn's uvicorn workers,
hypercorn's default).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

MAX_BODY = 64 * 1024  # the page's forms carry a token or an action: anything bigger is not them


def path_info(scope: Scope) -> str:
    """The request's path below the app's mount point (WSGI's PATH_INFO, decoded)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def serve_wsgi(app: WSGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one ASGI HTTP request with ``app``, run in a thread."""
    import asyncio

    body = await _read_body(receive)
    headers: list[tuple[str, str]]
    if body is None:
        status, headers, chunks = "413 Request Entity Too Large", [], [b"Request too large.\n"]
    else:
        status, headers, chunks = await asyncio.to_thread(_run, app, environ(scope, body))
    await send({
        "type": "http.response.start",
        "status": int(status.split(" ", 1)[0]),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    })
    await send({"type": "http.response.body", "body": b"".join(chunks)})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when it is over MAX_BODY or the client left."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of an ASGI HTTP scope and its body."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    root = scope.get("root_path", "")
    env: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        # WSGI carries decoded paths as latin-1 strings of their UTF-8 bytes.
        "SCRIPT_NAME": root.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path_info(scope).encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0] if client else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        joint = "; " if key == "HTTP_COOKIE" else ","  # HTTP/2 may split cookies
        env[key] = f"{env[key]}{joint}{value}" if key in env else value
    return env


def _run(app: WSGIApp, env: dict[str, Any]) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [(status, headers)]
        return chunks.append

    chunks: list[bytes] = []
    result = app(env, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started[0][0], started[0][1], chunks
