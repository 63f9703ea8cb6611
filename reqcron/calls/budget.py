"""Storing a call deferred during a request within the request's budget.

A request never waits long for the state (SPEC, "When the state misbehaves"):
a database that stops answering (a black-holed network, a table lock, this
process's own store busy in a stalled statement) must not hold it.  So a
call made during a request, to a networked state (PostgreSQL: SQLite's busy
timeout bounds its wait already), is stored by a thread of this process,
and the request waits for that write WAIT seconds at most (FIRST_WAIT when
a healthy state must be connected to first).  Past that, the call is kept
in the host's spool as *in flight* (engine/call_spool.py) and the request
gets a "spooled" Result; the write goes on, and when it ends the thread
settles the spooled call: stored (its id left for the Result), or waiting
for an enqueuer.  The call's token is in its stored JSON either way, so
whoever stores it, it is stored once.

One thread serves the process: writes are short, and while one is stuck
the next requests see it and do not wait at all.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from ..engine import call_spool
from ..engine.stored_calls import HOLD

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..engine.docroot import Docroot
    from ..records import Run

log = logging.getLogger("reqcron")

#: Seconds a request waits for its call to be stored before the host's spool takes it.
WAIT = 0.1
#: ... when the write must open a connection first (psycopg's import, a TLS handshake, the
#: schema's check: a worker's first call), unless writes failed or were late lately.
FIRST_WAIT = 1.5
#: Seconds after a failed or late write during which every wait is WAIT.
TROUBLE = 60.0


class Write:
    """Storing a request's calls (one, or a batch); once the request has gone on, the thread
    settles what came of them."""

    __slots__ = ("engine", "runs", "spooled", "tokens", "done", "run_ids", "error",
                 "given_up", "released", "lock")

    def __init__(self, engine: Docroot, runs: list[Run], spooled: list[Run], tokens: list[str]):
        self.engine, self.runs, self.spooled, self.tokens = engine, runs, spooled, tokens
        self.done = threading.Event()
        self.run_ids: list[int] | None = None
        self.error: BaseException | None = None
        self.given_up = False  # the request went on: the thread settles the spooled calls
        self.released = False  # the request's response was sent: the calls may run
        self.lock = threading.Lock()

    def release(self) -> None:
        """The request's response has been sent: let the calls run (now, or once stored)."""
        with self.lock:
            self.released = True
            run_ids = self.run_ids if self.done.is_set() else None
        if run_ids:
            self.engine.store.release_calls(run_ids, HOLD)

    def settle(self) -> None:
        """End the spooled calls' flight: stored (their ids kept), or left for an enqueuer."""
        ids: list[int | None] = ([*self.run_ids] if self.run_ids is not None
                                else [None] * len(self.tokens))
        for token, run_id in zip(self.tokens, ids, strict=True):
            call_spool.settle(self.engine.settings.state_dir, token, run_id)

    def _ended(self) -> None:
        """On the thread, once the write ended: settle the calls if the request went on."""
        with self.lock:
            self.done.set()
            given_up, released = self.given_up, self.released
        if not given_up:
            return
        try:
            self.settle()
        except OSError as exc:  # the spooled files stay; an enqueuer takes them in time
            log.error("reqcron: cannot settle a spooled call in %s: %s",
                      self.engine.settings.state_dir, exc)
        if self.error is not None:
            log.warning("reqcron: %s: calls deferred during a request wait in this host's "
                        "spool: %s", self.engine.path, self.error)
        elif released and self.run_ids:
            try:
                self.engine.store.release_calls(self.run_ids, HOLD)
            except Exception as exc:  # noqa: BLE001 - they run when their hold ends instead
                log.error("reqcron: %s: cannot release deferred calls: %s",
                          self.engine.path, exc)


class InFlight(Exception):
    """The write outlasted the request's wait: the call is spooled, in flight."""

    def __init__(self, write: Write):
        super().__init__("in flight")
        self.write = write


class _Writer:
    """The process's thread that stores calls made during requests."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Write] = queue.SimpleQueue()
        self.busy_since = 0.0  # monotonic start of the write in progress, 0 when idle
        self.troubled_until = 0.0  # monotonic: short waits only, a write failed or was late
        self.thread = threading.Thread(target=self._serve, name="reqcron-calls", daemon=True)
        self.thread.start()

    def stuck(self) -> bool:
        since = self.busy_since
        return bool(since) and time.monotonic() - since > WAIT

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            self.busy_since = time.monotonic()
            try:
                job.run_ids = job.engine.store.add_runs(job.runs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller or settled
                job.error = exc
                self.troubled_until = time.monotonic() + TROUBLE
            finally:
                self.busy_since = 0.0
            job._ended()

    def wait_for(self, engine: Docroot) -> float:
        """How long a request waits for its write to ``engine``'s state."""
        if engine.store.connected() or time.monotonic() < self.troubled_until:
            return WAIT
        return FIRST_WAIT


_writer: _Writer | None = None
_writer_lock = threading.Lock()


def _reset() -> None:
    global _writer, _writer_lock
    _writer, _writer_lock = None, threading.Lock()  # no thread survives a fork


os.register_at_fork(after_in_child=_reset)


def store(engine: Docroot, runs: list[Run], spooled: list[Run], tokens: list[str]) -> list[int]:
    """Store ``runs`` (held calls whose JSON holds ``tokens``) and return their ids, within
    WAIT.

    Raises the store's error if it failed in time; InFlight if it did not
    end in time, once ``spooled`` (the calls unheld) are kept in the spool.
    """
    global _writer
    with _writer_lock:
        if _writer is None or not _writer.thread.is_alive():
            _writer = _Writer()
        writer = _writer
    job = Write(engine, runs, spooled, tokens)
    stuck = writer.stuck()  # the write before is stuck: this one would wait behind it
    writer.jobs.put(job)
    if stuck or not job.done.wait(writer.wait_for(engine)):
        writer.troubled_until = time.monotonic() + TROUBLE
        state_dir = engine.settings.state_dir
        for token, run in zip(tokens, spooled, strict=True):
            call_spool.keep(state_dir, token, run, in_flight=True)
        with job.lock:
            job.given_up = not job.done.is_set()
        if job.given_up:
            raise InFlight(job)
        job.settle()  # it ended while the spool was written: settled here instead
        if job.error is not None:
            raise InFlight(job)  # spooled, as settled
    if job.error is not None:
        raise job.error
    assert job.run_ids is not None
    return job.run_ids
