"""A TCP proxy in front of PostgreSQL that a test can cut, stall and restore.

Plain sockets and threads, so that every socket it opens is known and closed
by ``close()`` (an asyncio server could accept a connection in its last turn
and leave the socket to the garbage collector: a ResourceWarning, an error in
this suite).  ``cut()`` closes every connection through it and closes new ones
at once (a network cut the client sees); ``stall()`` keeps connections open but
forwards nothing (a database that stops answering); ``restore()`` forwards
again.  Never touches the server itself.
"""

from __future__ import annotations

import select
import socket
import threading


class FaultProxy:
    def __init__(self, host: str, port: int):
        self._target = (host, port)
        self._mode = "open"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()  # every open socket, the listener's too
        self._closing = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closing:
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            if self._mode == "cut" or self._closing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                self._threads.append(pump)
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closing:
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                while self._mode == "stall" and not self._closing:
                    threading.Event().wait(0.01)
                if self._mode == "cut" or self._closing:
                    break
                sink.sendall(data)
        except (OSError, ValueError):  # closed under it by cut() or close()
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with self._lock:
                self._sockets.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self) -> None:
        """Close every connection through the proxy, and new ones at once, until restore()."""
        self._mode = "cut"
        with self._lock:
            open_now = list(self._sockets)
        self._drop(*open_now)

    def stall(self) -> None:
        """Forward nothing more (connections stay open) until restore()."""
        self._mode = "stall"

    def restore(self) -> None:
        self._mode = "open"

    def close(self) -> None:
        self._closing = True
        self.cut()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()
