"""Pages that stay small: the status page, its JSON and the metrics of a big site.

Builds, in a temporary directory (state included, through XDG_STATE_HOME), a
DOCROOT of 10,000 tasks (half ``cron`` at an hour twelve hours away, half
``every = 3600``: nothing comes due while this runs) and records 50 runs with
large outputs (output, traceback and return value at their caps, 64 KiB
each; half of them failed) spread over ten tasks.  Then it asks ReqCron, in
this process, for:

- the baseline: reading the catalog and every task's row (``Docroot.catalog()``
  and ``.states()``, on an engine of its own), the floor of anything that
  looks at every task; also the app itself through the middleware, and the
  uptime probe ``{status_path}/health`` (which reads the same rows);
- the status page (HTML), its second page of tasks, its JSON, one run's
  whole output (``?run=ID``), and one metrics scrape (with the per-task
  series the site gives by default, and with them forced, ``?per_task=1``).

Each line is the body's size and the median time of REPEAT requests (after
one to warm up), and that time against the baseline's, measured in the same
run (these machines are noisy: read the ratios).  A parameter the code
under test does not know is ignored by it, so the script also runs against
older code, for a before and after.  Not a test.

    .venv/bin/python benchmarks/pages.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

TASKS = 10_000
RUNS = 50
REPEAT = 5
TOKEN = "bench-token"
PATH = "/_reqcron"
BIG = 64 * 1024  # the caps of a run's output, traceback and return value (limits.py)


def tasks_file(n: int) -> str:
    """``n`` Task subclasses, none due for hours."""
    hour = (time.localtime().tm_hour + 12) % 24
    lines = ["from reqcron import Task", ""]
    for i in range(n):
        body = f'    cron = "0 {hour} * * *"' if i % 2 else "    every = 3600"
        lines += [f"class T{i:05d}(Task):", body, ""]
    return "\n".join(lines)


def big_text(label: str) -> str:
    """About BIG characters of lines a task might print (with markup to escape)."""
    line = f"{label}: processed <item> & moved on; " + "x" * 40 + "\n"
    return (line * (BIG // len(line) + 1))[:BIG]


def record_runs(root: Path) -> list[int]:
    """RUNS runs of ten tasks, oldest first, with outputs at their caps; their ids."""
    from reqcron import Docroot
    from reqcron.records import Run

    start = time.time() - 3600
    ids = []
    with Docroot(root) as doc:
        doc.catalog()  # read the tasks (in a child) before adding their runs
        for i in range(RUNS):
            at = start + 60 * i
            failed = i % 2 == 1
            ids.append(doc.store.add_run(Run(
                task=f"T{(i % 10) * 997:05d}", trigger="request",
                status="failed" if failed else "ok", created=at, start=at, end=at + 1.5,
                exit_code=1 if failed else 0, output=big_text(f"run {i}"),
                traceback=big_text("Traceback (most recent call last)") if failed else None,
                error="RuntimeError: the disk is full" if failed else None,
                return_value=None if failed else json.dumps(big_text("done")))))
    return ids


def ask(app, path: str, query: str = "") -> tuple[str, bytes]:
    environ = {"PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
               "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = app(environ, lambda s, h, exc_info=None: status.append(s))
    try:
        data = b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    return status[0], data


def measure(app, path: str, query: str = "") -> tuple[str, int, float]:
    """(status, body bytes, median seconds of REPEAT requests after a warm-up)."""
    ask(app, path, query)
    times = []
    for _ in range(REPEAT):
        began = time.perf_counter()
        status, body = ask(app, path, query)
        times.append(time.perf_counter() - began)
    return status, len(body), statistics.median(times)


def read_rows(root: Path) -> float:
    """Median seconds of reading the catalog and the task rows (the baseline)."""
    from reqcron import Docroot

    with Docroot(root) as doc:
        doc.catalog()
        times = []
        for _ in range(REPEAT + 1):
            began = time.perf_counter()
            assert len(doc.catalog().tasks) == len(doc.states()) == TASKS
            times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def run(tmp: Path) -> None:
    from reqcron import ReqCron

    root = tmp / "site"
    root.mkdir()
    (root / "__tasks__.py").write_text(tasks_file(TASKS))
    began = time.perf_counter()
    ids = record_runs(root)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {TASKS:,} tasks and {RUNS} "
          f"runs of {BIG // 1024} KiB output (set up in {time.perf_counter() - began:.0f} s); "
          f"median of {REPEAT} requests")
    base = read_rows(root)
    wrapped = ReqCron(app, root, status_path=PATH, status_token=TOKEN, watch=False)
    try:
        rows = [
            ("the app through ReqCron", "/", ""),
            ("health", PATH + "/health", ""),
            ("status page", PATH + "/", ""),
            ("status page, tasks page 2", PATH + "/", "tasks_page=2"),
            ("status page JSON", PATH + "/", "format=json"),
            ("one run's output", PATH + "/", f"run={ids[-1]}"),
            ("metrics", PATH + "/metrics", ""),
            ("metrics, per task forced", PATH + "/metrics", "per_task=1"),
        ]
        figures = [(label, *measure(wrapped, path, query)) for label, path, query in rows]
    finally:
        wrapped.close()
    print(f"  {'':28s} {'status':>6s} {'size':>10s} {'ms':>8s} {'x rows':>9s}")
    print(f"  {'task rows read (baseline)':28s} {'':>6s} {'':>10s} {base * 1000:8.1f} "
          f"{1:9.1f}")
    for label, status, length, seconds in figures:
        print(f"  {label:28s} {status.split()[0]:>6s} {size(length):>10s} "
              f"{seconds * 1000:8.1f} {seconds / base:9.1f}")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="reqcron-pages-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
