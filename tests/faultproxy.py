"""A TCP proxy in front of PostgreSQL that a test can cut, stall and restore.

Runs an asyncio loop in a thread of its own.  ``cut()`` closes every
connection through it and closes new ones at once (a network cut the
client sees); ``stall()`` keeps connections open but forwards nothing (a
database that stops answering); ``restore()`` forwards again.  Never
touches the server itself.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class FaultProxy:
    def __init__(self, host: str, port: int):
        self._target = (host, port)
        self._mode = "open"
        self._writers: set[asyncio.StreamWriter] = set()
        # Every connection ever made, kept until close(): one left to the garbage collector
        # (a stalled pipe's paused transport has no other reference) warns, an error here.
        self._every: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the proxy did not start")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # Every connection closed, and each pipe let to finish, before the loop goes: a
        # transport left to the garbage collector warns (ResourceWarning, an error here).
        for w in self._every:
            w.transport.abort()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.run_until_complete(asyncio.sleep(0.01))  # the transports' last callbacks
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._every.append(writer)
        if self._mode == "cut":
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._every.append(up_writer)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                while self._mode == "stall":
                    await asyncio.sleep(0.01)
                if self._mode == "cut":
                    break
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def _call(self, fn: Any) -> None:
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def cut(self) -> None:
        """Close every connection through the proxy, and new ones at once, until restore()."""
        def go() -> None:
            self._mode = "cut"
            for w in list(self._writers):
                w.transport.abort()
        self._call(go)

    def stall(self) -> None:
        """Forward nothing more (connections stay open) until restore()."""
        self._call(lambda: setattr(self, "_mode", "stall"))

    def restore(self) -> None:
        self._call(lambda: setattr(self, "_mode", "open"))

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
