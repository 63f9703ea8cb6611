"""A PostgreSQL state that stalls, is cut off, or flaps: what requests and runs pay for it.

Prints, for a DOCROOT whose reqcron.toml has ``state = "postgresql://...:<port>/<db>"``
and ``site = "bench"``, where the port is a TCP proxy in front of the server
(tests/faultproxy.py: ``stall()`` keeps connections open and forwards nothing,
``cut()`` closes them and refuses new ones, ``restore()`` forwards again):

1. how long a WSGI request through ``ReqCron`` takes (ms, median and max of N,
   in-process, a minimal environ), a request that defers one ``@delay`` call
   beside one that defers nothing (the floor) and, while healthy, a plain
   committed INSERT through the same proxy, interleaved, with the state
   healthy, stalled and cut; for the deferring ones how many Results were
   "spooled" and how many had an id, then, after ``restore()`` (the
   middleware tended by a request every 0.1 s), how long until every Result
   had an id and had run (``wait()`` returning the value), how long each call
   waited for its process, how many rows were stored per call (its token in
   the stored call: duplicates and calls missing must be 0), and how many
   task processes for calls were started and failed;
2. a flap: an ``overlap = False`` task (run() sleeps 8 s, returns 42) started
   by ``python -m reqcron.runtask`` through the proxy, the proxy cut for
   0.3 s every 0.7 s ten times while it runs, and meanwhile a second host
   (a copy of the DOCROOT with its own state_dir, reaching PostgreSQL
   directly) starting ``runtask`` for the same task every second: exit codes,
   how many runs entered run() and whether any overlapped (run() logs its
   start and end to a file), the statuses in the history, and whether the
   first run's outcome (ok, 42) was recorded; its timings beside the same
   runtask run just before with nothing cut and no second host.

Every figure is compared with one measured in this same run (these machines
are noisy: read the ratios).  The PostgreSQL server is $REQCRON_TEST_POSTGRES
or postgresql://root@127.0.0.1:5432/postgres; the run makes its own database
(reqcron_bench_<random>) and drops it at the end; everything else lives in a
temporary directory, state included (XDG_STATE_HOME).  Takes ~30 s on 2 cores.
Not a test.

    .venv/bin/python benchmarks/state_faults.py [N]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from wsgiref.util import setup_testing_defaults

from common import SERVER, create_database, drop_database, leftovers, ms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from faultproxy import FaultProxy  # noqa: E402

SITE = "bench"
FLAPS = 10
CUT_FOR = 0.3  # seconds each cut lasts
FLAP_EVERY = 0.7  # seconds from one cut to the next
SECOND_HOST_EVERY = 1.0  # seconds between the second host's runtask starts
RUN_FOR = 8.0  # seconds Held's run() takes

#: The app's own module, on sys.path (task processes import it from there too).
JOBS = """\
from reqcron import delay

@delay
def add(a, b):
    return a + b
"""

#: The same on every host; LOG is where run() says when it started and ended.
TASKS = """\
import os, time
from reqcron import Task

LOG = {log!r}

class Held(Task):
    overlap = False

    def run(self):
        with open(LOG, "a") as fh:
            fh.write(f"start {{time.time()!r}} {{os.getpid()}}\\n")
        time.sleep({run_for!r})
        with open(LOG, "a") as fh:
            fh.write(f"end {{time.time()!r}} {{os.getpid()}}\\n")
        return 42
"""


class Collect(logging.Handler):
    """reqcron's log lines in this process, counted instead of printed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[f"{record.levelname}: {record.getMessage()[:300]}"] += 1



# -- the database and the DOCROOTs ----------------------------------------------------




def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


def make_root(where: Path, tasks: str, url: str, state_dir: Path) -> Path:
    where.mkdir()
    (where / "__tasks__.py").write_text(tasks)
    (where / "reqcron.toml").write_text(
        f'[reqcron]\ntimezone = "UTC"\nstate = "{url}"\nsite = "{SITE}"\n'
        f'state_dir = "{state_dir}"\n')
    return where


def spool_left(state_dir: Path) -> str:
    """What waits in a host's spool: outcomes (run-*.json) and calls (call-*.json,
    .pending); ``call-*.id`` files only remember where a stored call went."""
    from reqcron.engine.spool import spool_dir

    try:
        names = os.listdir(spool_dir(state_dir))
    except FileNotFoundError:
        names = []
    outcomes = sum(1 for n in names if n.startswith("run-") and n.endswith(".json"))
    calls = sum(1 for n in names if n.startswith("call-") and n.endswith((".json", ".pending")))
    return f"{outcomes} outcomes, {calls} calls waiting"


# -- 1. requests --------------------------------------------------------------------------


def request(app, path: str) -> float:
    """One WSGI request to ``app`` (the response closed, as a server does); its seconds."""
    environ = {"PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": ""}
    setup_testing_defaults(environ)
    status: list[str] = []
    began = time.perf_counter()
    body = app(environ, lambda s, h, exc_info=None: status.append(s))
    try:
        b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    took = time.perf_counter() - began
    assert status and status[0] == "200 OK", status
    return took


def settle(mw, results: list, root: Path, restored: float) -> dict[str, object]:
    """After restore(): tend the site with requests (as steady traffic would) until every
    Result has an id and has run; then count the stored rows per call."""
    from reqcron import Docroot

    deadline = restored + 60
    ids_at = done_at = None
    while time.monotonic() < deadline:
        request(mw, "/")  # the next check stores the spooled calls and starts their runs
        if ids_at is None and all(r.id is not None for r in results):
            ids_at = time.monotonic() - restored
        if ids_at is not None and all(ready(r) for r in results):
            done_at = time.monotonic() - restored
            break
        time.sleep(0.1)
    values, not_done = [], 0
    for r in results:
        try:
            values.append(r.wait(max(0.1, min(60.0, deadline - time.monotonic()))).result)
        except (TimeoutError, LookupError):
            not_done += 1
    with Docroot(root) as doc:
        rows = doc.history(limit=100_000)
    calls = [r for r in rows if r.call is not None]
    per_token = Counter(json.loads(r.call).get("token") for r in calls)
    by_id = {r.id: json.loads(r.call).get("token") for r in calls}
    # A call stored within its request's wait has no token in its Result: its row has one.
    tokens = [r._token or by_id.get(r.id) for r in results]
    ids = {r.id for r in results}
    mine = [r for r in calls if r.id in ids and r.start is not None]
    waited = [r.start - r.created for r in mine] or [float("nan")]
    return {"waited": waited, "no_id": sum(1 for r in results if r.id is None), "ids_at": ids_at,
            "done_at": done_at, "not_done": not_done,
            "wrong": sum(1 for v in values if v != 5),
            "duplicates": sum(max(0, per_token[t] - 1) for t in tokens if t),
            "missing": sum(1 for t in tokens if not t or per_token[t] == 0),
            "statuses": dict(Counter(r.status for r in results if r.id is not None))}


def drainers_failed(state_dir: Path) -> int:
    """Task processes for calls that could not use the state, from the spawn log."""
    from reqcron.run.spawn import SPAWN_LOG

    try:
        return (state_dir / SPAWN_LOG).read_text().count("cannot be used")
    except FileNotFoundError:
        return 0


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def ready(result) -> bool:
    try:
        return result.is_ready()
    except LookupError:
        return False


def section_requests(tmp: Path, root: Path, state_dir: Path, url: str, proxy: FaultProxy,
                     n: int, log: Collect) -> None:
    import importlib

    import psycopg

    from reqcron import ReqCron

    folder = tmp / "app"
    folder.mkdir()
    (folder / "benchjobs.py").write_text(JOBS)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    jobs = importlib.import_module("benchjobs")
    results: list = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/defer":
            results.append(jobs.add(2, 3))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    # The baseline for storing a call: one committed INSERT of a row, through the proxy.
    baseline = psycopg.connect(url, autocommit=True, connect_timeout=3)
    baseline.execute("CREATE TABLE bench_insert (id bigserial PRIMARY KEY, body text)")
    body = json.dumps({"target": "benchjobs:add", "args": [2, 3], "token": "0" * 32})

    def insert() -> float:
        began = time.perf_counter()
        baseline.execute("INSERT INTO bench_insert (body) VALUES (%s) RETURNING id", (body,))
        return time.perf_counter() - began

    startup = statistics.median(
        wall([sys.executable, "-c", "import psycopg"]) for _ in range(3))
    mw = ReqCron(app, root, watch=False)
    # Count the task processes started for calls (runtask --calls): wrap this middleware's
    # own spawner (an internal, as benchmarks/postgres.py pokes _wake_at).
    drainers = [0]
    spawner = mw._spawner
    start_drainer = spawner.start_drainer

    def counted(doc) -> bool:
        started = start_drainer(doc)
        drainers[0] += started
        return started

    spawner.start_drainer = counted
    rows: list[tuple[str, dict]] = []
    inserts: list[float] = []
    try:
        request(mw, "/defer")  # the worker wakes, connects, loads the catalog
        assert results[0].wait(60).result == 5, "the warm-up call did not run"
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # steady traffic until the worker is settled
            request(mw, "/")
            insert()
            time.sleep(0.02)
        for state, fault in (("healthy", None), ("stalled", proxy.stall),
                             ("cut", proxy.cut)):
            log.seen.clear()
            before = len(results)
            failed_before = drainers_failed(state_dir)
            drainers_before = drainers[0]
            plain: list[float] = []
            defer: list[float] = []
            if fault is not None:
                fault()
            try:
                for _ in range(n):  # interleaved: a busy moment hits all
                    plain.append(request(mw, "/"))
                    defer.append(request(mw, "/defer"))
                    if fault is None:
                        inserts.append(insert())
            finally:
                proxy.restore()
            restored = time.monotonic()
            batch = results[before:]
            spooled = sum(1 for r in batch if r._id is None)
            with_id = sum(1 for r in batch if r._id is not None)
            figures = settle(mw, batch, root, restored)
            rows.append((state, {"plain": plain, "defer": defer, "spooled": spooled,
                                 "with_id": with_id, **figures,
                                 "failed": drainers_failed(state_dir) - failed_before,
                                 "started": drainers[0] - drainers_before}))
            if log.seen:
                print(f"  ({state}, reqcron logged {sum(log.seen.values())} lines in this"
                      " process:")
                for line, count in log.seen.most_common(3):
                    print(f"     x{count} {line.replace(str(tmp), '$TMP')}")
                print("  )")
    finally:
        mw.close()
        baseline.close()
        sys.path.remove(str(folder))

    floor = statistics.median(rows[0][1]["plain"]) * 1000
    healthy = statistics.median(rows[0][1]["defer"]) * 1000
    ins_med, ins_max = ms(inserts)

    def when(at: float | None) -> str:
        return "-" if at is None else f"{at:.1f}"

    print(f"1. a request through ReqCron, state on PostgreSQL behind a TCP proxy"
          f" (ms, median / max of {n};\n   the two kinds, and the INSERT while healthy,"
          " interleaved)")
    print(f"  {'state':8s} {'request':30s} {'median':>8s} {'max':>8s} {'x floor':>8s}"
          f" {'x healthy':>9s}")
    for state, r in rows:
        med, top = ms(r["plain"])
        print(f"  {state:8s} {'defers nothing':30s} {med:8.3f} {top:8.3f} {med / floor:8.2f}")
        med, top = ms(r["defer"])
        print(f"  {'':8s} {'defers one call':30s} {med:8.3f} {top:8.3f} {med / floor:8.0f}"
              f" {med / healthy:9.2f}")
        if state == "healthy":
            print(f"  {'':8s} {'INSERT + commit, via proxy':30s} {ins_med:8.3f} {ins_max:8.3f}"
                  f" {ins_med / floor:8.0f} {ins_med / healthy:9.2f}")
    print("  floor: the healthy request deferring nothing; INSERT + commit: one row, psycopg"
          " in autocommit,\n  through the same proxy (what storing a call cannot beat)")
    print()
    print(f"  the calls ({n} per state); ids at / ran at: seconds after restore() until every"
          " Result had an id /\n  had run and returned 5, requests every 0.1 s meanwhile;"
          " wait: a call's start - its request\n  (s, median / max; a task process started"
          f" from scratch: python -c 'import psycopg' takes {startup:.2f} s here)")
    print(f"  {'state':8s} {'spooled':>7s} {'had id':>6s} {'ids at':>6s} {'ran at':>6s}"
          f" {'wait':>11s} {'not run':>7s} {'dup':>4s} {'missing':>7s} {'processes':>9s}"
          f" {'failed':>6s}")
    for state, r in rows:
        waited = f"{statistics.median(r['waited']):.2f} / {max(r['waited']):.2f}"
        print(f"  {state:8s} {r['spooled']:7d} {r['with_id']:6d}"
              f" {when(r['ids_at']):>6s} {when(r['done_at']):>6s} {waited:>11s}"
              f" {r['no_id'] + r['not_done'] + r['wrong']:7d} {r['duplicates']:4d}"
              f" {r['missing']:7d} {r['started']:9d} {r['failed']:6d}")
    print("  not run: no id, not ready or a wrong value 60 s after restore(); dup: rows stored"
          " beyond one\n  per call (by its token); missing: calls with no row; processes:"
          " task processes started for\n  calls (runtask --calls; max_processes = 4 may hold"
          " a drain slot at once); failed: those that\n  could not use the state"
          " (runtask.log), each doubling the pause before the next is started")
    bad = [(s, r["statuses"]) for s, r in rows if set(r["statuses"]) - {"ok"}]
    if bad:
        print(f"  statuses other than ok: {bad}")
    print()


# -- 2. a flapping connection under a running task --------------------------------------


def read_log(path: Path) -> list[tuple[int, float, float | None]]:
    """(pid, start, end or None) for each run that entered run()."""
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            what, at, pid = line.split()
            (starts if what == "start" else ends)[int(pid)] = float(at)
    return [(pid, at, ends.get(pid)) for pid, at in sorted(starts.items(), key=lambda x: x[1])]


def baseline_run(root_a: Path, task_log: Path) -> dict[str, float]:
    """The same runtask through the proxy, nothing cut and no second host: the baseline."""
    began, began_wall = time.monotonic(), time.time()
    done = subprocess.run([sys.executable, "-m", "reqcron.runtask", str(root_a), "Held"],
                          cwd=root_a, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - began
    ended_wall = time.time()
    runs = read_log(task_log)
    task_log.rename(task_log.with_name("held-baseline.log"))
    assert done.returncode == 0 and len(runs) == 1 and runs[0][2] is not None, (done, runs)
    return {"took": took, "entered": runs[0][1] - began_wall,
            "after": ended_wall - runs[0][2]}


def section_flap(root_a: Path, root_b: Path, state_a: Path, proxy: FaultProxy,
                 task_log: Path) -> None:
    from reqcron import Docroot

    with Docroot(root_b) as doc:
        before = max((r.id for r in doc.history("Held", limit=1)), default=0)
    base = baseline_run(root_a, task_log)
    with Docroot(root_b) as doc:
        baseline_id = max((r.id for r in doc.history("Held", limit=1)), default=before)
    py = sys.executable
    first_wall = time.time()
    first = subprocess.Popen([py, "-m", "reqcron.runtask", str(root_a), "Held"], cwd=root_a,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    began = time.monotonic()
    others: list[tuple[subprocess.Popen[str], float]] = []
    stop = threading.Event()

    def second_host() -> None:
        while not stop.is_set():
            proc = subprocess.Popen([py, "-m", "reqcron.runtask", str(root_b), "Held"],
                                    cwd=root_b, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            others.append((proc, time.time()))
            stop.wait(SECOND_HOST_EVERY)

    starter = threading.Thread(target=second_host, daemon=True)
    cuts: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while not read_log(task_log):
            if time.monotonic() > deadline or first.poll() is not None:
                raise RuntimeError(f"the first run did not enter run(): {first.poll()}")
            time.sleep(0.01)
        starter.start()
        for _ in range(FLAPS):
            at = time.monotonic()
            proxy.cut()
            time.sleep(CUT_FOR)
            proxy.restore()
            cuts.append(time.monotonic() - at)
            time.sleep(max(0.0, FLAP_EVERY - (time.monotonic() - at)))
        stop.set()  # no more starts once the flapping ends (the first run ends ~1 s later)
        try:
            out, err = first.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            first.kill()
            out, err = first.communicate()
        exited = time.monotonic()
    except BaseException:
        stop.set()
        if starter.is_alive():
            starter.join(10)
        for proc, _ in others:
            proc.kill()
            proc.communicate()
        raise
    finally:
        proxy.restore()
        stop.set()
        if starter.is_alive():
            starter.join(10)
        if first.poll() is None:
            first.kill()
            first.communicate()
    codes: list[int] = []
    odd: list[tuple[float, int, list[str]]] = []
    for proc, launched in others:
        try:
            o, e = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            o, e = proc.communicate()
        codes.append(proc.returncode)
        if proc.returncode != 75:
            odd.append((launched, proc.returncode, (e or o).strip().splitlines()[-2:]))

    runs = read_log(task_log)
    overlaps = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
                if b[1] < (a[2] if a[2] is not None else float("inf"))]
    run_end = runs[0][2] if runs else None  # the first to enter run() is the first runtask
    entered = runs[0][1] - first_wall
    with Docroot(root_b) as doc:  # the host that reaches PostgreSQL directly
        history = [r for r in doc.history("Held", limit=1000) if r.id > baseline_id]
    rows = Counter(r.status for r in history)
    slots = Counter()
    for r in history:
        slots[r.status] += r.slots
    mine = [r for r in history if r.pid == first.pid] or sorted(history, key=lambda r: r.id)[:1]
    outcome = mine[0] if mine else None
    recorded = (outcome is not None and outcome.status == "ok"
                and outcome.return_value is not None and json.loads(outcome.return_value) == 42)

    print(f"2. a flap: Held (overlap = False, run() {RUN_FOR:g} s, returns 42) run through the"
          f" proxy, cut for {CUT_FOR:g} s\n   every {FLAP_EVERY:g} s x {FLAPS}; a second host"
          f" (PostgreSQL directly) starts runtask Held every {SECOND_HOST_EVERY:g} s")
    after = (time.time() - (time.monotonic() - exited) - run_end) if run_end else float("nan")
    print(f"  {'':42s} {'flapping':>9s} {'healthy':>9s} {'x healthy':>9s}")
    for what, flap, healthy in (("first runtask: start to run(), no cut yet", entered,
                                 base["entered"]),
                                ("first runtask: run() ended to exit", after, base["after"]),
                                ("first runtask: in all", exited - began, base["took"])):
        print(f"  {what:42s} {flap:9.2f} {healthy:9.2f} {flap / healthy:9.2f}")
    print(f"  first runtask's exit code: {first.returncode} (healthy: 0; seconds above,"
          f" the healthy run is the same\n  runtask through the proxy just before, nothing cut,"
          " no second host)")
    print(f"  cuts: {len(cuts)}, {min(cuts):.2f}-{max(cuts):.2f} s each")
    print(f"  second host: {len(codes)} runtask started, exit codes"
          f" {dict(sorted(Counter(codes).items()))}")
    for launched, code, last in odd[:5]:
        since = "" if run_end is None else f", {launched - run_end:+.2f} s from the first run's end"
        print(f"    exit {code}: started at {launched - first_wall:.2f} s{since}; {last}")
    print(f"  runs that entered run(): {len(runs)}; overlapping pairs: {len(overlaps)}"
          + (f"; unfinished: {sum(1 for r in runs if r[2] is None)}"
             if any(r[2] is None for r in runs) else ""))
    for a, b in overlaps[:5]:
        print(f"    pid {a[0]} {a[1]:.2f}-{a[2]} overlaps pid {b[0]} {b[1]:.2f}-{b[2]}")
    print(f"  history of Held (rows): {dict(sorted(rows.items()))};"
          f" slots: {dict(sorted(slots.items()))}")
    if outcome is not None:
        print(f"  first run's row: status {outcome.status}, return_value"
              f" {outcome.return_value}, exit_code {outcome.exit_code}"
              f" ({'its pid' if mine and outcome.pid == first.pid else 'the oldest row'})")
    print(f"  first run's outcome (ok, 42) recorded: {'yes' if recorded else 'NO'};"
          f" skipped slots {slots.get('skipped', 0)} vs exits 75 {codes.count(75)};"
          f" host A's spool: {spool_left(state_a)}")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if lines:
        print(f"  first runtask's stderr ({len(lines)} lines):")
        for line in lines[:6]:
            print(f"    {line[:160]}")
    if out.strip():
        print(f"  first runtask's stdout: {out.strip()[:200]!r}")
    print()


# -- the run -------------------------------------------------------------------------------


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="reqcron-faults-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    log = Collect()
    logging.getLogger("reqcron").addHandler(log)
    database = create_database()
    url = SERVER.rsplit("/", 1)[0] + "/" + database
    parts = urlsplit(url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        import psycopg

        task_log = tmp / "held.log"
        tasks = TASKS.format(log=str(task_log), run_for=RUN_FOR)
        state_a, state_b = tmp / "state-a", tmp / "state-b"
        root_a = make_root(tmp / "host-a", tasks, with_port(url, proxy.port), state_a)
        root_b = make_root(tmp / "host-b", tasks, url, state_b)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, psycopg"
              f" {psycopg.__version__} ({psycopg.pq.__impl__}), PostgreSQL at"
              f" {SERVER.rsplit('/', 1)[0]} behind a proxy on port {proxy.port}"
              f";\nload average {os.getloadavg()[0]:.1f}; ratios are against figures"
              " measured in this run")
        print()
        section_requests(tmp, root_a, state_a, with_port(url, proxy.port), proxy, n, log)
        log.seen.clear()
        section_flap(root_a, root_b, state_a, proxy, task_log)
        if log.seen:
            print(f"reqcron logged in this process during 2.: {sum(log.seen.values())} lines")
            for line, count in log.seen.most_common(4):
                print(f"  x{count} {line.replace(str(tmp), '$TMP')}")
    finally:
        proxy.close()
        left = leftovers(tmp)  # task processes end by themselves
        deadline = time.monotonic() + 15
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = leftovers(tmp)
        if left:
            print(f"killed {len(left)} processes still running after 15 s")
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        drop_database(database)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
