"""A one-process WSGI server for the clock tests: `python serve.py DOCROOT PORT_FILE`.

Serves a tiny app wrapped in ReqCron on 127.0.0.1 (a free port, written to
PORT_FILE once listening) until SIGTERM, then closes the middleware.  Run it
with tests/timeshim on PYTHONPATH to give it the test's wall clock.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from reqcron import ReqCron


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def main(docroot: str, port_file: str) -> None:
    app = ReqCron(hello, docroot)
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    partial = port_file + ".partial"
    with open(partial, "w") as f:
        f.write(str(server.server_port))
    os.replace(partial, port_file)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
        app.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
