"""What ReqCron adds to a request when nothing is due, and how soon a due task starts.

Prints nanoseconds per request for the bare app, for the cheapest possible
wrapper (one extra call and one clock compare), and for ReqCron with 1, 100
and 10,000 tasks, all measured in this one run (best of 7 timeit repeats);
then the time from a triggering request to the task's run() being entered
(median of 20).  Not a test.

    .venv/bin/python benchmarks/request_overhead.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

from common import Cheapest, app

TASKS = """
from reqcron import Task
for i in range({n}):
    globals()[f"T{{i}}"] = type(f"T{{i}}", (Task,), {{"every": 3600}})
"""

ENTER = """
import os, time
from reqcron import Task

class Enter(Task):
    def run(self):
        with open(os.environ["ENTERED"], "w") as fh:
            fh.write(repr(time.time()))
"""


def ns_per_call(func, number: int = 200_000) -> float:
    environ: dict[str, str] = {}
    timer = timeit.Timer(lambda: func(environ, None))
    return min(timer.repeat(repeat=7, number=number)) / number * 1e9


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    from reqcron import Docroot, ReqCron

    rows = [("bare app", ns_per_call(app)), ("cheapest wrapper", ns_per_call(Cheapest(app)))]
    for n in (1, 100, 10_000):
        root = tmp / f"site{n}"
        root.mkdir()
        (root / "__tasks__.py").write_text(TASKS.format(n=n))
        wrapped = ReqCron(app, root, watch=False)
        wrapped({}, None)  # the first request wakes the worker, which loads and syncs
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            wrapped.docroot is not None and len(wrapped.docroot.catalog().tasks) == n
            and wrapped._wake_at > time.monotonic() + 0.5  # the hot path's clock
        ):
            time.sleep(0.05)
            wrapped({}, None)  # steady traffic, as a live site has
        # Measured in steady state: the poll still wakes the worker once a second.
        assert len(wrapped.docroot.catalog().tasks) == n
        rows.append((f"ReqCron, {n} tasks", ns_per_call(wrapped)))
        wrapped.close()
    bare = rows[0][1]
    floor = rows[1][1] - bare
    print(f"python {sys.version.split()[0]}; ns per request, best of 7 x 200,000")
    for label, ns in rows:
        added = ns - bare
        ratio = f"{added / floor:5.2f}x the cheapest wrapper's added cost" if ns != bare else ""
        print(f"  {label:22s} {ns:7.1f} ns   adds {added:6.1f} ns  {ratio}")

    root = tmp / "enter"
    root.mkdir()
    (root / "__tasks__.py").write_text(ENTER)
    marker = tmp / "entered"
    os.environ["ENTERED"] = str(marker)
    wrapped = ReqCron(app, root, watch=False)
    doc = Docroot(root)
    wrapped({}, None)
    latencies = []
    for _ in range(20):
        marker.unlink(missing_ok=True)
        doc.run_now("Enter")
        wrapped._wake_at = 0  # as if this request were the first after the poll interval
        start = time.time()
        wrapped({}, None)
        while not marker.exists() or not marker.read_text():
            time.sleep(0.001)
        latencies.append(float(marker.read_text()) - start)
        while doc.store.runs("Enter", 1)[0].status not in ("ok", "failed"):
            time.sleep(0.005)
    wrapped.close()
    print(f"  triggering request -> run() entered: median {statistics.median(latencies) * 1000:.1f}"
          f" ms, max {max(latencies) * 1000:.1f} ms (20 runs)")


if __name__ == "__main__":
    main()
