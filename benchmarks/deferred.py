"""Deferred calls against huey 3.5: enqueue cost, a burst drained, and the latency to a call.

Prints, all measured in this one run (compare the ratios: these machines are noisy):

1. microseconds per enqueue of a no-op, median of 5 x 1,000 calls in this process:
   reqcron's ``@delay`` (``REQCRON_DOCROOT`` set, no middleware) and huey's SqliteHuey
   task, each into a fresh file in a temp dir, nothing draining either queue;
2. seconds from the first enqueue to all of 1,000 no-op calls run, max_processes = 2:
   reqcron's calls deferred inside one request to a ReqCron-wrapped app (called here
   with wsgiref's testing environ; its drainers start after the response's close(), as
   under a server) against huey's consumer (``-w 2 -k process``, started and warmed up
   before the timed part), and the ratio (target <= 1.00);
3. milliseconds from a call deferred in a request to the function entered: (a) with no
   drainer running, against a bare ``python -c pass`` (target <= 2.5x); (b) with a
   drainer lingering after a previous call (target: a few ms).

The per-request cost when nothing is due is not redone here: benchmarks/request_overhead.py
measures it.  Needs huey (``pip install huey==3.5.0``).  Not a test.

    .venv/bin/python benchmarks/deferred.py [N]     # N: latency samples (default 15)
"""

from __future__ import annotations

import importlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

from common import leftovers

CALLS = 1_000
DRAIN_REPEAT = 3
ENQUEUE_REPEAT = 5

JOBS = """
import time
from reqcron import delay

@delay
def noop():
    pass

@delay
def entered():
    return time.time()
"""

HUEY_JOBS = """
import os
from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"])

@huey.task()
def noop():
    return True  # huey keeps no None: a value shows the task ran
"""


def wait_for(predicate, timeout: float = 60.0, pause: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"still waiting after {timeout:g} s")
        time.sleep(pause)


def make_site(path: Path, max_processes: int = 2) -> Path:
    path.mkdir(parents=True)
    (path / "__tasks__.py").write_text("")
    (path / "reqcron.toml").write_text(f"[reqcron]\nmax_processes = {max_processes}\n")
    return path


def request(middleware, app_body) -> None:
    """One request through ``middleware``, as a server makes it: call, iterate, close()."""
    middleware.app = app_body
    environ: dict = {}
    setup_testing_defaults(environ)
    response = middleware(environ, lambda status, headers, exc_info=None: None)
    for _ in response:
        pass
    getattr(response, "close", lambda: None)()


def answer(start_response) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def all_ready(results) -> bool:
    """True once every Result is ready; remembers how far it got (ready ones stay ready)."""
    while results.done < len(results) and results[results.done].is_ready():
        results.done += 1
    return results.done == len(results)


class Results(list):
    done = 0


# -- 1. enqueue ----------------------------------------------------------------------------


def reqcron_enqueue_us(root: Path, jobs) -> float:
    os.environ["REQCRON_DOCROOT"] = str(root)
    jobs.noop()  # opens the state: once per process, not per call
    start = time.perf_counter()
    for _ in range(CALLS):
        jobs.noop()
    return (time.perf_counter() - start) / CALLS * 1e6


def huey_enqueue_us(path: Path, fsync: bool | None) -> float:
    from huey import SqliteHuey

    huey = SqliteHuey(filename=str(path), fsync=fsync)
    noop = huey.task(name="noop")(lambda: True)
    noop()
    start = time.perf_counter()
    for _ in range(CALLS):
        noop()
    elapsed = time.perf_counter() - start
    huey.storage.close()
    return elapsed / CALLS * 1e6


# -- 2. a burst of 1,000 -------------------------------------------------------------------


def reqcron_drain(middleware, jobs, site: Path) -> tuple[float, float]:
    """Seconds from the first enqueue to all run, and to the response closed."""
    results = Results()
    began: list[float] = []

    def app(environ, start_response):
        began.append(time.perf_counter())
        for _ in range(CALLS):
            results.append(jobs.noop())
        return answer(start_response)

    request(middleware, app)
    closed = time.perf_counter()
    wait_for(lambda: all_ready(results), timeout=300)
    done = time.perf_counter()
    assert all(r.status == "ok" for r in results)
    wait_for(lambda: not leftovers(site), timeout=30)  # its drainers gone: the next starts cold
    return done - began[0], closed - began[0]


def start_consumer(tmp: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # -l names a file in the temp dir: leftovers() then finds the consumer and its workers.
    command = [sys.executable, "-m", "huey.bin.huey_consumer", "hueyjobs.huey",
               "-w", "2", "-k", "process", "-l", str(tmp / "huey.log")]
    return subprocess.Popen(command, env=env, cwd=tmp, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def huey_warm_up(hueyjobs, count: int) -> None:
    """Run ``count`` tasks and take their results: the workers are polling at their quickest."""
    warm = [hueyjobs.noop() for _ in range(count)]
    wait_for(lambda: all(r.get() is not None for r in warm), timeout=60)


def huey_drain(hueyjobs) -> float:
    huey = hueyjobs.huey
    huey_warm_up(hueyjobs, 2)
    start = time.perf_counter()
    for _ in range(CALLS):
        hueyjobs.noop()
    # A read: taking each result (a write) would contend with the workers.
    wait_for(lambda: huey.result_count() >= CALLS, timeout=300)
    elapsed = time.perf_counter() - start
    huey.storage.flush_results()
    return elapsed


# -- 3. latency ----------------------------------------------------------------------------


def deferred_latency(middleware, jobs) -> float:
    """Seconds from a call deferred in a request to its function entered."""
    results: list = []
    called: list[float] = []

    def app(environ, start_response):
        called.append(time.time())
        results.append(jobs.entered())
        return answer(start_response)

    request(middleware, app)
    wait_for(results[0].is_ready, timeout=30, pause=0.001)
    assert results[0].status == "ok", results[0].error_message
    return results[0].result - called[0]


def bare_start(*options: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *options, "-c", "pass"], check=True)
    return time.perf_counter() - start


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    import reqcron

    # As an installed package would be: with PYTHONDONTWRITEBYTECODE set (as on these
    # machines) every task process would otherwise compile reqcron from source.
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(reqcron.__file__)],
                   check=True, stdout=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="reqcron-deferred-"))
    consumer: subprocess.Popen[bytes] | None = None
    try:
        app_dir = tmp / "app"
        app_dir.mkdir()
        (app_dir / "benchjobs.py").write_text(JOBS)
        (app_dir / "hueyjobs.py").write_text(HUEY_JOBS)
        sys.path.insert(0, str(app_dir))
        os.environ["XDG_STATE_HOME"] = str(tmp / "state")
        os.environ["BENCH_HUEY_DB"] = str(tmp / "huey.db")
        jobs = importlib.import_module("benchjobs")

        # 1. Before any ReqCron exists: the calls go to REQCRON_DOCROOT.
        enqueue: dict[str, list[float]] = {"reqcron": [], "huey": [], "huey_nosync": []}
        for i in range(ENQUEUE_REPEAT):
            root = make_site(tmp / f"enqueue{i}")
            enqueue["reqcron"].append(reqcron_enqueue_us(root, jobs))
            enqueue["huey"].append(huey_enqueue_us(tmp / f"enqueue{i}.db", None))
            enqueue["huey_nosync"].append(huey_enqueue_us(tmp / f"enqueue{i}-nosync.db", False))
        del os.environ["REQCRON_DOCROOT"]

        # 2. and 3. through the middleware, on a site it has served already.
        from reqcron import ReqCron

        site = make_site(tmp / "site")
        middleware = ReqCron(None, site, watch=False)
        deferred_latency(middleware, jobs)  # warm: the engine, the state, the module
        wait_for(lambda: not leftovers(site), timeout=30)

        huey_env = dict(os.environ, PYTHONPATH=str(app_dir))
        consumer = start_consumer(tmp, huey_env)
        hueyjobs = importlib.import_module("hueyjobs")
        huey_warm_up(hueyjobs, 10)  # started, imported, polling
        drains: dict[str, list[float]] = {"reqcron": [], "huey": [], "closed": []}
        for _ in range(DRAIN_REPEAT):  # interleaved, so drift hits both alike
            total, closed = reqcron_drain(middleware, jobs, site)
            drains["reqcron"].append(total)
            drains["closed"].append(closed)
            drains["huey"].append(huey_drain(hueyjobs))
        consumer.send_signal(signal.SIGINT)  # huey's graceful stop
        consumer.wait(30)
        consumer = None

        cold: list[float] = []
        warm: list[float] = []
        bare: list[float] = []
        no_site: list[float] = []
        for _ in range(n):
            wait_for(lambda: not leftovers(site), timeout=30)
            bare.append(bare_start())
            no_site.append(bare_start("-S"))
            cold.append(deferred_latency(middleware, jobs))
            time.sleep(0.2)  # well within the drainer's 1 s linger
            warm.append(deferred_latency(middleware, jobs))
        middleware.close()
        wait_for(lambda: not leftovers(tmp), timeout=30)
    finally:
        if consumer is not None:
            consumer.kill()
            consumer.wait()
        left = leftovers(tmp)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    med = {k: statistics.median(v) for k, v in enqueue.items()}
    import huey

    print(f"python {sys.version.split()[0]}, huey {huey.__version__}; {os.cpu_count()} cores")
    print(f"1. enqueue, us per call (median of {ENQUEUE_REPEAT} x {CALLS:,}, nothing draining)")
    print(f"  reqcron @delay (REQCRON_DOCROOT)    {med['reqcron']:7.1f} us   "
          f"{med['reqcron'] / med['huey']:4.2f}x huey's")
    print(f"  huey SqliteHuey (default: fsync)    {med['huey']:7.1f} us")
    print(f"  huey SqliteHuey fsync=False         {med['huey_nosync']:7.1f} us   "
          "(reqcron's state: WAL, synchronous=NORMAL)")
    in_request = statistics.median(drains["closed"]) / CALLS * 1e6
    print(f"  reqcron @delay inside a request     {in_request:7.1f} us   (from 2., to the "
          "response closed, release included)")

    r, h = statistics.median(drains["reqcron"]), statistics.median(drains["huey"])
    print(f"2. drain {CALLS:,} no-op calls, max_processes = 2, first enqueue -> all run "
          f"(median of {DRAIN_REPEAT})")
    print(f"  reqcron (deferred in one request; drainers started by the middleware after "
          f"close())\n{'':38s}{r:7.2f} s    runs: "
          + ", ".join(f"{x:.2f}" for x in drains["reqcron"]))
    print(f"  huey (consumer -w 2 -k process, warm) {h:7.2f} s    runs: "
          + ", ".join(f"{x:.2f}" for x in drains["huey"]))
    print(f"  reqcron / huey                      {r / h:7.2f}x   (target <= 1.00x)")

    b, c, w, s = (statistics.median(x) for x in (bare, cold, warm, no_site))
    print(f"3. call deferred in a request -> function entered (median of {n})")
    print(f"  python -c pass                      {ms(b)}   (python -S -c pass: {s * 1000:.1f} ms;"
          " the difference is site, with any editable install's finder)")
    print(f"  (a) no drainer running              {ms(c)}   {c / b:4.2f}x bare "
          f"(target <= 2.5x); max {max(cold) * 1000:.1f} ms")
    print(f"  (b) a drainer lingering             {ms(w)}   (target: a few ms); "
          f"max {max(warm) * 1000:.1f} ms")
    print(f"processes left behind: {len(left)}" + (f" (killed: {left})" if left else ""))


if __name__ == "__main__":
    main()
