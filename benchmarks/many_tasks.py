"""Many tasks: what 1, 100, 1,000 and 10,001 tasks cost the web process.

Prints, for DOCROOTs whose __tasks__.py holds that many Task subclasses
(half ``cron`` at an hour twelve hours away, half ``every = 3600``: nothing
is due while this runs), plus one 10,001-task variant whose first task is
``every = 1`` so that claims happen:

1. the first load (fresh state until the catalog is read in a child and
   stored), a second process's pick-up of the stored catalog (a fresh
   Docroot on the same state), and, as the baseline, importing the file in
   this process as the old design did in every worker; also one task
   process (``runtask``) end to end, since every run imports the file;
2. the per-poll cost with nothing changed: ``Docroot.pulse()`` and ``due()``
   with nothing due (medians), and their ratio to the 1-task case;
3. the per-request cost through ReqCron with nothing due, against a bare app
   call and the cheapest possible wrapper (as benchmarks/request_overhead.py);
4. a real gunicorn (2 sync workers) on the 1-task, the 10,001-task and the
   every=1 DOCROOTs: the workers' CPU over 10 idle seconds and over 10 s of
   ~50 requests/s, and the latency of those requests.

Every figure is compared with one measured in this same run (these machines
are noisy: read the ratios).  Everything lives in a temporary directory,
state included (XDG_STATE_HOME), and every server is stopped at the end.
Takes about two and a half minutes on 2 cores.  Not a test.

    .venv/bin/python benchmarks/many_tasks.py
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from common import Cheapest, app, leftovers, ns_per_call

COUNTS = (1, 100, 1_000, 10_001)
FAST = "10,001 + every=1"  # the variant where claims happen
RATE = 50.0  # requests per second driven at each gunicorn
PHASE = 10.0  # seconds of warm-up, of idleness, and of steady load
TICK = os.sysconf("SC_CLK_TCK")

APP = """
import os
from reqcron import ReqCron

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

application = ReqCron(app, os.environ["MANY_TASKS_DOCROOT"])
"""


def tasks_file(n: int, fast: bool) -> str:
    """``n`` Task subclasses, written out as a person would; none due for hours."""
    hour = (time.localtime().tm_hour + 12) % 24
    lines = ["from reqcron import Task", ""]
    for i in range(n):
        if i == 0 and fast:
            body = "    every = 1"
        elif i % 2:
            body = f'    cron = "0 {hour} * * *"'
        else:
            body = "    every = 3600"
        lines += [f"class T{i:05d}(Task):", body, ""]
    return "\n".join(lines)




def median_us(func, number: int) -> float:
    samples = []
    for _ in range(number):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def wall(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


# -- section 1 and 2: the engine in this process -------------------------------------


def first_load(label: str, root: Path, n: int, py: str) -> dict[str, float]:
    from reqcron import Docroot

    firsts = []
    # Two throw-away copies (state is keyed by the DOCROOT's path: each starts fresh), then root.
    for where in (root.with_name(root.name + "-a"), root.with_name(root.name + "-b"), root):
        if where != root:
            where.mkdir()
            shutil.copy(root / "__tasks__.py", where)
        start = time.perf_counter()
        doc = Docroot(where)
        found = len(doc.catalog().tasks)
        firsts.append(time.perf_counter() - start)
        doc.close()
        assert found == n, (label, found, n)
    pickups = []
    for _ in range(3):
        start = time.perf_counter()
        doc = Docroot(root)
        found = len(doc.catalog().tasks)
        pickups.append(time.perf_counter() - start)
        doc.close()
        assert found == n, (label, found, n)
    doc = Docroot(root)
    start = time.perf_counter()
    imported = len(doc.tasks())  # the Python API: imports the file here, as every worker did
    old = time.perf_counter() - start
    doc.close()
    assert imported == n, (label, imported, n)
    # A run of a task (on demand, so no slot is taken): its process imports the file.
    one_run = wall([py, "-m", "reqcron.runtask", str(root), "T00001" if n > 1 else "T00000"],
                   cwd=root)
    return {"first": statistics.median(firsts), "pickup": statistics.median(pickups),
            "old": old, "run": one_run}


def poll_costs(root: Path, n: int) -> dict[str, float]:
    from reqcron import Docroot

    doc = Docroot(root)
    assert len(doc.catalog().tasks) == n
    doc.due()  # anything left over from the first load
    result = {"pulse": median_us(doc.pulse, 3000), "due": median_us(doc.due, 3000)}
    doc.close()
    return result


def claim_cost(root: Path) -> float:
    """Median µs of a due() that claims one slot of the every=1 task (clock stepped by `at`)."""
    from reqcron import Docroot

    doc = Docroot(root)
    doc.catalog()
    name = "T00000"
    state = doc.store.states()[name]
    at = max(state.next_due, time.time()) + 0.5
    samples = []
    for _ in range(200):
        start = time.perf_counter()
        claims = doc.due(at=at)
        samples.append(time.perf_counter() - start)
        assert [c.task for c in claims] == [name], claims
        at += 1.0
    # Put the slot back at the real clock, for the sections that follow.
    state = doc.store.states()[name]
    doc.store.reposition(name, state.next_due, state.signature, time.time() + 1.0)
    doc.close()
    return statistics.median(samples) * 1e6


# -- section 3: the request path ---------------------------------------------------------


def request_cost(root: Path, n: int) -> list[float]:
    from reqcron import ReqCron

    wrapped = ReqCron(app, root, watch=False)
    wrapped({}, None)  # the first request wakes the worker, which picks the catalog up
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        wrapped.docroot is not None and len(wrapped.docroot.catalog().tasks) == n
        and wrapped._wake_at > time.monotonic() + 0.5  # the worker thread has answered
    ):
        time.sleep(0.05)
        wrapped({}, None)  # steady traffic, as a live site has
    assert wrapped.docroot is not None and len(wrapped.docroot.catalog().tasks) == n
    # The floors again, interleaved with ReqCron: whatever loads the machine loads all three.
    ns = ns_per_call(app, Cheapest(app), wrapped)
    wrapped.close()
    return ns


# -- section 4: gunicorn -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()  # [0] is field 3 (state)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(proc_stat(int(entry))[1]) == pid:
                    found.append(int(entry))
            except (OSError, IndexError):
                pass
    return sorted(found)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(own utime+stime, reaped children's cutime+cstime) of ``pid``, in clock ticks."""
    f = proc_stat(pid)
    return int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


def get(port: int, timeout: float = 10.0) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.read() == b"ok", response.status
    finally:
        conn.close()


def drive(port: int, seconds: float, rate: float = RATE, threads: int = 10) -> list[float]:
    """Send ``rate`` requests a second for ``seconds``, on a fixed timetable; return latencies."""
    total = int(seconds * rate)
    start = time.monotonic() + 0.05
    latencies: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def client(first: int) -> None:
        for i in range(first, total, threads):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            try:
                get(port)
            except Exception as exc:  # counted and reported, never hidden
                with lock:
                    failures.append(exc)
                continue
            with lock:
                latencies.append(time.perf_counter() - began)

    workers = [threading.Thread(target=client, args=(j,)) for j in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if failures:
        print(f"    ({len(failures)} of {total} requests failed: {failures[0]!r})")
    return latencies


class Served(NamedTuple):
    idle: list[float]  # CPU % of each worker, idle
    busy: list[float]  # CPU % of each worker, under load
    kids: float  # CPU % of the task processes the workers reaped, both phases
    median: float  # ms
    p99: float  # ms
    answered: int  # requests answered under load


def serve(root: Path, tmp: Path, env: dict[str, str]) -> Served:
    site = tmp / "server"
    site.mkdir(exist_ok=True)
    (site / "app.py").write_text(APP)
    port = free_port()
    log = open(tmp / f"gunicorn-{root.name}.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--chdir", str(site), "-w", "2",
         "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:application"],
        env=dict(env, MANY_TASKS_DOCROOT=str(root)), stdout=log, stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(port, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not come up; see {log.name}") from None
                time.sleep(0.1)
        while len(workers := children_of(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the second worker may still be starting
        assert len(workers) == 2, f"expected 2 gunicorn workers, found {workers}"
        drive(port, PHASE)  # warm-up: every worker has picked the catalog up and settled

        def cpu() -> tuple[float, list[tuple[int, int]]]:
            return time.monotonic(), [cpu_ticks(w) for w in workers]

        def percent(a: tuple[float, list[tuple[int, int]]],
                    b: tuple[float, list[tuple[int, int]]]) -> tuple[list[float], float]:
            elapsed = b[0] - a[0]
            pairs = list(zip(a[1], b[1], strict=True))
            own = [(y[0] - x[0]) / TICK / elapsed * 100 for x, y in pairs]
            kids = sum(y[1] - x[1] for x, y in pairs) / TICK / elapsed * 100
            return own, kids

        before = cpu()
        time.sleep(PHASE)
        idle, idle_kids = percent(before, cpu())
        before = cpu()
        latencies = sorted(drive(port, PHASE))
        busy, busy_kids = percent(before, cpu())
        assert children_of(server.pid) == workers, "a worker was restarted during the run"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    return Served(idle, busy, busy_kids + idle_kids, statistics.median(latencies) * 1000,
                  latencies[int(0.99 * (len(latencies) - 1))] * 1000, len(latencies))


# -- the run -------------------------------------------------------------------------------


def main() -> None:
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="reqcron-many-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    env = dict(os.environ)
    py = sys.executable
    try:
        run(tmp, env, py)
    finally:
        left = leftovers(tmp)  # task processes the servers started end by themselves
        deadline = time.monotonic() + 15
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = leftovers(tmp)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total {time.monotonic() - began:.0f} s")


def run(tmp: Path, env: dict[str, str], py: str) -> None:
    variants: list[tuple[str, int, Path]] = []
    for n in COUNTS:
        variants.append((f"{n:,}", n, tmp / f"site{n}"))
    variants.append((FAST, 10_001, tmp / "site-fast"))
    for label, n, root in variants:
        root.mkdir()
        (root / "__tasks__.py").write_text(tasks_file(n, label == FAST))

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          "ratios are against figures measured in this run")
    print()
    print("1. first load (median of 3 fresh states), and a second process's pick-up (ms)")
    print(f"  {'tasks':18s} {'first load':>10s} {'pick-up':>8s} {'import here':>11s}"
          f" {'pick-up/import':>14s} {'one runtask':>11s} {'x 1 task':>8s}")
    base_run = 0.0
    for label, n, root in variants:
        r = first_load(label, root, n, py)
        base_run = base_run or r["run"]
        print(f"  {label:18s} {r['first'] * 1000:10.0f} {r['pickup'] * 1000:8.1f}"
              f" {r['old'] * 1000:11.0f} {r['pickup'] / r['old']:14.3f}"
              f" {r['run'] * 1000:11.0f} {r['run'] / base_run:8.1f}")
    print("  import here: Docroot.tasks(), what every worker paid in the old design;"
          " one runtask: a task process end to end")
    print()

    print("2. per poll, nothing changed (µs, median of 3,000)")
    print(f"  {'tasks':18s} {'pulse()':>8s} {'x 1 task':>8s} {'due(), none due':>15s}"
          f" {'x 1 task':>8s}")
    base: dict[str, float] = {}
    for label, n, root in variants:
        r = poll_costs(root, n)
        base = base or r
        print(f"  {label:18s} {r['pulse']:8.1f} {r['pulse'] / base['pulse']:8.2f}"
              f" {r['due']:15.1f} {r['due'] / base['due']:8.2f}")
    claim = claim_cost(tmp / "site-fast")
    print(f"  {FAST:18s} due() claiming the every=1 slot: {claim:.0f} µs"
          f" ({claim / base['due']:.1f}x due() with none due), median of 200")
    print()

    print("3. per request, nothing due (ns, best of 7 x 200,000, the three interleaved)")
    print(f"  {'tasks':18s} {'bare app':>8s} {'cheapest':>8s} {'ReqCron':>8s}"
          f" {'ReqCron adds':>12s} {'x cheapest adds':>15s} {'x 1 task':>8s}")
    ratio1 = 0.0
    for label, n, root in variants:
        bare, cheapest, ns = request_cost(root, n)
        added = ns - bare
        ratio = added / (cheapest - bare)
        ratio1 = ratio1 or ratio
        print(f"  {label:18s} {bare:8.1f} {cheapest:8.1f} {ns:8.1f} {added:12.1f}"
              f" {ratio:15.2f} {ratio / ratio1:8.2f}")
    print("  cheapest: one extra call and one clock compare; x 1 task: of the 'x cheapest adds'"
          " column; the every=1 row\n  claims and spawns a task process each second while it"
          " is measured (the machine is busier: read its ratios)")
    print()

    print(f"4. gunicorn, 2 sync workers: CPU per worker over {PHASE:.0f} s idle and over"
          f" {PHASE:.0f} s at {RATE:.0f} requests/s (after {PHASE:.0f} s of warm-up)")
    print(f"  {'tasks':18s} {'idle CPU %':>12s} {'loaded CPU %':>12s} {'task procs %':>12s}"
          f" {'median ms':>9s} {'p99 ms':>7s} {'x 1 task':>14s}")
    first: Served | None = None
    for label, _, root in [variants[0], variants[3], variants[4]]:
        served = serve(root, tmp, env)
        first = first or served
        idle = "/".join(f"{x:.1f}" for x in served.idle)
        busy = "/".join(f"{x:.1f}" for x in served.busy)
        ratios = f"{served.median / first.median:.2f} / {served.p99 / first.p99:.2f}"
        print(f"  {label:18s} {idle:>12s} {busy:>12s} {served.kids:12.1f}"
              f" {served.median:9.2f} {served.p99:7.2f} {ratios:>14s}")
        if served.answered < PHASE * RATE:
            print(f"    (only {served.answered} of {PHASE * RATE:.0f} requests answered)")
    print("  CPU %: of one core, worker 1/worker 2; task procs: the task processes the workers"
          " started and reaped, over both phases; x 1 task: median / p99")


if __name__ == "__main__":
    main()
