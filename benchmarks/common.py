"""What the benchmarks share: the per-request floor they compare reqcron against (a bare
app, the cheapest wrapper, an interleaved timer), their clean-up check, and a database of
their own on PostgreSQL.  Imported by the scripts beside it."""

from __future__ import annotations

import os
import time
import timeit
from pathlib import Path


def app(environ, start_response):
    return None


class Cheapest:
    """One extra call and one clock compare: the floor any per-request check pays."""

    def __init__(self, app):
        self.app = app
        self._next = time.time() + 3600

    def __call__(self, environ, start_response):
        if time.time() >= self._next:
            raise AssertionError("never due here")
        return self.app(environ, start_response)


def ns_per_call(*funcs, number: int = 200_000, repeat: int = 7) -> list[float]:
    """Best of ``repeat`` for each of ``funcs``, interleaved so that a busy moment hits all."""
    environ: dict[str, str] = {}
    timers = [timeit.Timer(lambda f=f: f(environ, None)) for f in funcs]
    best = [float("inf")] * len(funcs)
    for _ in range(repeat):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(number))
    return [b / number * 1e9 for b in best]


def leftovers(tmp: Path) -> list[int]:
    """Processes of this run still alive: anything whose command line names the temp dir."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if str(tmp).encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


async def asgi_app(scope, receive, send):
    return None


class CheapestASGI:
    """One extra await of the app and one clock compare: the ASGI floor."""

    def __init__(self, app):
        self.app = app
        self._next = time.monotonic() + 3600

    async def __call__(self, scope, receive, send):
        if time.monotonic() >= self._next:
            raise AssertionError("never due here")
        await self.app(scope, receive, send)


def run_asgi(app, scope) -> None:
    """One request through ``app`` without an event loop: nothing in it suspends."""
    try:
        app(scope, None, None).send(None)
    except StopIteration:
        pass


def asgi_ns_per_call(*apps, number: int = 200_000, repeat: int = 7) -> list[float]:
    """Best of ``repeat`` for each ASGI app, interleaved like ``ns_per_call``."""
    scope = {"type": "http", "path": "/"}
    timers = [timeit.Timer(lambda a=a: run_asgi(a, scope)) for a in apps]
    best = [float("inf")] * len(apps)
    for _ in range(repeat):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(number))
    return [b / number * 1e9 for b in best]


# -- a PostgreSQL database of the benchmark's own --------------------------------------

SERVER = os.environ.get("REQCRON_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/postgres")


def ms(samples: list[float]) -> tuple[float, float]:
    """Median and max of ``samples`` (seconds), in milliseconds."""
    import statistics

    return statistics.median(samples) * 1000, max(samples) * 1000


def create_database() -> str:
    """A fresh database on SERVER, named reqcron_bench_<random>; drop it with drop_database."""
    import uuid

    import psycopg

    name = f"reqcron_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    import psycopg

    assert name.startswith("reqcron_bench_")
    with psycopg.connect(SERVER, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
