"""What ReqCronASGI adds to an ASGI request when nothing is due.

Prints nanoseconds per request for a bare ASGI app, for the cheapest
possible wrapper (one extra await and one clock compare), and for
ReqCronASGI with 1, 100 and 10,000 tasks, then with deferred calls
followed per request (the ContextVar mode asgi.py turns on once the
process has @delay functions), all measured in this one run, interleaved,
best of 7.  Each request is driven by ``coroutine.send(None)``, so no
event loop's cost hides the difference.  Not a test.

    .venv/bin/python benchmarks/asgi_overhead.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from common import CheapestASGI, asgi_app, asgi_ns_per_call, run_asgi

TASKS = """
from reqcron import Task
for i in range({n}):
    globals()[f"T{{i}}"] = type(f"T{{i}}", (Task,), {{"every": 3600}})
"""

SCOPE = {"type": "http", "path": "/"}


def steady(wrapped, n: int):
    """Wait until the worker has loaded ``n`` tasks and set the next wake far enough ahead."""
    run_asgi(wrapped, SCOPE)  # the first request wakes the worker, which loads and syncs
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        wrapped.docroot is not None and len(wrapped.docroot.catalog().tasks) == n
        and wrapped._wake_at > time.monotonic() + 0.5  # the hot path's clock
    ):
        time.sleep(0.05)
        run_asgi(wrapped, SCOPE)  # steady traffic, as a live site has
    assert len(wrapped.docroot.catalog().tasks) == n
    return wrapped


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    from reqcron.web.asgi import ReqCronASGI

    labels = ["bare ASGI app", "cheapest wrapper"]
    apps = [asgi_app, CheapestASGI(asgi_app)]
    made = []
    for n in (1, 100, 10_000):
        root = tmp / f"site{n}"
        root.mkdir()
        (root / "__tasks__.py").write_text(TASKS.format(n=n))
        # A long poll: the steady state lasts the whole measurement.
        made.append(steady(ReqCronASGI(asgi_app, root, watch=False, poll=600), n))
        labels.append(f"ReqCronASGI, {n} tasks")
        apps.append(made[-1])
    following = ReqCronASGI(asgi_app, tmp / "site1", watch=False, poll=600)
    following.track_calls()  # as in a process with @delay functions
    made.append(steady(following, 1))
    labels.append("  following calls, 1")
    apps.append(following)

    rows = list(zip(labels, asgi_ns_per_call(*apps), strict=True))
    for wrapped in made:
        wrapped.close()
    bare = rows[0][1]
    floor = rows[1][1] - bare
    print(f"python {sys.version.split()[0]}; ns per ASGI request, best of 7 x 200,000, "
          "interleaved")
    for label, ns in rows:
        added = ns - bare
        ratio = f"{added / floor:5.2f}x the cheapest wrapper's added cost" if ns != bare else ""
        print(f"  {label:24s} {ns:7.1f} ns   adds {added:6.1f} ns  {ratio}")


if __name__ == "__main__":
    main()
