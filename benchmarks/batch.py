"""A request deferring N calls: one by one, against `deferred.map(...)` (one write).

Prints, for a DOCROOT on the default SQLite state, the time one request
through ReqCron takes to defer N calls (default 5,000) each way, and per
call, best of 3, the two ways interleaved (these machines are noisy: read
the ratio).  Everything lives in a temporary directory (XDG_STATE_HOME
too).  Not a test.

    .venv/bin/python benchmarks/batch.py [N]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

JOBS = "from reqcron import delay\n\n@delay\ndef add(a, b):\n    return a + b\n"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        os.environ["XDG_STATE_HOME"] = str(here / "state")
        (here / "site").mkdir()
        (here / "site" / "__tasks__.py").write_text("from reqcron import Task\n")
        (here / "app").mkdir()
        (here / "app" / "batchjobs.py").write_text(JOBS)
        sys.path.insert(0, str(here / "app"))
        import batchjobs

        from reqcron import ReqCron

        took: dict[str, list[float]] = {"one by one": [], "map": []}
        current = {"way": "one by one"}  # what the app does on the next request

        def app(environ, start_response):
            began = time.perf_counter()
            way = current["way"]
            if way == "map":
                batchjobs.add.map((i, 1) for i in range(n))
            else:
                for i in range(n):
                    batchjobs.add(i, 1)
            took[way].append(time.perf_counter() - began)
            start_response("200 OK", [])
            return [b"ok"]

        middleware = ReqCron(app, str(here / "site"))
        for _ in range(3):
            for current["way"] in ("one by one", "map"):
                environ: dict[str, str] = {}
                setup_testing_defaults(environ)
                body = middleware(environ, lambda *args: None)
                list(body)
                getattr(body, "close", lambda: None)()
        middleware.close()
        base = min(took["one by one"])
        print(f"a request deferring {n} calls, SQLite, best of 3; load average "
              f"{os.getloadavg()[0]:.1f}")
        for name, times in took.items():
            best = min(times)
            print(f"  {name:<11} {best:7.2f} s  {best / n * 1e3:6.3f} ms a call  "
                  f"x{best / base:5.2f}")


if __name__ == "__main__":
    main()
