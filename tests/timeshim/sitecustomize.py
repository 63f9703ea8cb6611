"""A wall clock the tests can move while the processes under test run.

With this directory on PYTHONPATH and REQCRON_TEST_CLOCK_FILE set, every
Python process (the server, `reqcron due`, the `runtask` processes they
start) reads the wall clock as the real time plus the offset in seconds
written in that file.  The file is re-read at most every READ_EVERY
seconds, so a test moves the clock by rewriting it (atomically).

Shimmed: time.time, time.time_ns and time.clock_gettime(_ns) for
CLOCK_REALTIME; reqcron reads the wall clock through time.time only.  The
monotonic clock is left alone: a real clock set back moves the wall clock
only.  datetime.now() is not shimmed: datetime is a C type whose methods
cannot be replaced, and putting a subclass in its place breaks pickling
of every datetime (pickle finds a different class under the name).
Without the variable this module does nothing.
"""

from __future__ import annotations

import os

READ_EVERY = 0.05  # seconds


def _install(path: str) -> None:
    import time

    real_time, real_time_ns, monotonic = time.time, time.time_ns, time.monotonic
    real_clock_gettime, real_clock_gettime_ns = time.clock_gettime, time.clock_gettime_ns
    realtime = time.CLOCK_REALTIME
    cache = {"offset": 0.0, "read_at": float("-inf")}

    def offset() -> float:
        if monotonic() - cache["read_at"] >= READ_EVERY:
            try:
                with open(path) as f:
                    cache["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass  # keep the last offset read
            cache["read_at"] = monotonic()
        return cache["offset"]

    def shifted_time() -> float:
        return real_time() + offset()

    def shifted_time_ns() -> int:
        return real_time_ns() + round(offset() * 1e9)

    def shifted_clock_gettime(clock: int) -> float:
        return real_clock_gettime(clock) + (offset() if clock == realtime else 0.0)

    def shifted_clock_gettime_ns(clock: int) -> int:
        extra = round(offset() * 1e9) if clock == realtime else 0
        return real_clock_gettime_ns(clock) + extra

    time.time = shifted_time
    time.time_ns = shifted_time_ns
    time.clock_gettime = shifted_clock_gettime
    time.clock_gettime_ns = shifted_clock_gettime_ns


if os.environ.get("REQCRON_TEST_CLOCK_FILE"):
    _install(os.environ["REQCRON_TEST_CLOCK_FILE"])
