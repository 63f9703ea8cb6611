"""SQLite and PostgreSQL states side by side: requests, racing claims, and the way to run().

Prints, for a DOCROOT on the default SQLite state and one on a PostgreSQL
state (``state = "postgresql://..."``, ``site = ...`` in reqcron.toml):

1. the per-request cost through ReqCron with nothing due (ns, best of 7 x
   200,000), against a bare app and the cheapest possible wrapper, all four
   interleaved; nothing on the hot path touches the store, so the two
   stores should cost the same;
2. claims per second with 8 processes racing ``Docroot.due(at=...)`` over
   increasing fake times (an ``every = 10`` and a ``* * * * *`` task, as in
   tests/test_due.py), with the duplicates (a slot claimed twice) and the
   minute task's gaps (a slot no run stands for) counted;
3. slot due -> the task's run() entered: ``run_now()`` then a request
   through ReqCron, and a spawned ``runtask --run-id`` on its own (median
   and max of N each), beside ``python -c pass`` and ``python -c 'import
   psycopg'``, and whether psycopg was imported before run().

Every figure is compared with one measured in this same run (these machines
are noisy: read the ratios).  The PostgreSQL server is
$REQCRON_TEST_POSTGRES or postgresql://root@127.0.0.1:5432/postgres; the
run makes its own database (reqcron_bench_<random>) and drops it at the
end; everything else lives in a temporary directory, state included
(XDG_STATE_HOME).  Takes about a minute on 2 cores.  Not a test.

    .venv/bin/python benchmarks/postgres.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import SERVER, Cheapest, app, create_database, drop_database, leftovers, ms, ns_per_call

RACERS = 8
STEPS = 2_000
STEP = 10.0  # seconds of fake time per step
T0 = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC).timestamp()

IDLE = """
from reqcron import Task

class Hourly(Task):
    every = 3600
"""

RACE = """
from reqcron import Task

class Tick(Task):
    cron = "* * * * *"

class Fast(Task):
    every = 10
"""

ENTER = """
import os, sys, time
from reqcron import Task

class Enter(Task):
    def run(self):
        entered = time.time()
        with open(os.environ["ENTERED"], "w") as fh:
            fh.write(f"{entered!r} {int('psycopg' in sys.modules)}")
"""

RACER = """
import json, sys, time
from reqcron import Docroot
from reqcron.records import Trigger
doc = Docroot(sys.argv[1])
start, step, count = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
doc.catalog()  # connected, catalog loaded: the race measures claims, not start-up
print("ready", flush=True)
sys.stdin.readline()
began = time.time()
claimed = []
for i in range(count):
    for c in doc.due(trigger=Trigger.DUE, at=start + i * step):
        claimed.append([c.task, c.slot])
ended = time.time()
doc.close()
print(json.dumps({"claimed": claimed, "began": began, "ended": ended}))
"""




def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start



# -- the database and the DOCROOTs ----------------------------------------------------




def make_root(where: Path, tasks: str, url: str | None, site: str) -> Path:
    """A DOCROOT with ``tasks``; on the PostgreSQL state at ``url`` when given, else SQLite."""
    where.mkdir()
    (where / "__tasks__.py").write_text(tasks)
    toml = '[reqcron]\ntimezone = "UTC"\n'
    if url:
        toml += f'state = "{url}"\nsite = "{site}"\n'
    (where / "reqcron.toml").write_text(toml)
    return where


def roots(tmp: Path, url: str, name: str, tasks: str) -> dict[str, Path]:
    return {"SQLite": make_root(tmp / f"{name}-sqlite", tasks, None, name),
            "PostgreSQL": make_root(tmp / f"{name}-pg", tasks, url, name)}


# -- 1. the request path ------------------------------------------------------------------


def warm(wrapped, tasks: int = 1) -> None:
    """Requests until the worker has loaded the catalog and answered (the hot path's clock)."""
    wrapped({}, None)  # the first request wakes the worker, which loads and syncs
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        wrapped.docroot is not None and len(wrapped.docroot.catalog().tasks) == tasks
        and wrapped._wake_at > time.monotonic() + 0.5
    ):
        time.sleep(0.05)
        wrapped({}, None)  # steady traffic, as a live site has
    assert wrapped.docroot is not None and len(wrapped.docroot.catalog().tasks) == tasks


def section_requests(tmp: Path, url: str) -> None:
    from reqcron import ReqCron

    wrapped = {label: ReqCron(app, root, watch=False)
               for label, root in roots(tmp, url, "idle", IDLE).items()}
    try:
        for w in wrapped.values():
            warm(w)
        bare, cheapest, *stores = ns_per_call(app, Cheapest(app), *wrapped.values())
    finally:
        for w in wrapped.values():
            w.close()
    floor = cheapest - bare
    print("1. per request, nothing due (ns, best of 7 x 200,000, the four interleaved;"
          "\n   both workers wake once a second meanwhile)")
    print(f"  {'':22s} {'ns':>7s} {'adds':>7s} {'x cheapest adds':>15s}")
    print(f"  {'bare app':22s} {bare:7.1f}")
    print(f"  {'cheapest wrapper':22s} {cheapest:7.1f} {floor:7.1f} {1:15.2f}")
    for label, ns in zip(wrapped, stores, strict=True):
        print(f"  {'ReqCron, ' + label:22s} {ns:7.1f} {ns - bare:7.1f}"
              f" {(ns - bare) / floor:15.2f}")
    sq, pg = (ns - bare for ns in stores)
    print(f"  PostgreSQL/SQLite, of what ReqCron adds: {pg / sq:.2f}")
    print()


# -- 2. racing claims ----------------------------------------------------------------------


def race(root: Path, script: Path) -> dict[str, float]:
    from reqcron import Docroot

    seed = Docroot(root)
    seed.due(at=T0)  # both tasks seen at T0: Tick next at T0 + 30, Fast at T0 + 10
    seed.close()
    start, last = T0 + 1, T0 + 1 + (STEPS - 1) * STEP
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(start), str(STEP),
                               str(STEPS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
             for _ in range(RACERS)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # release them together
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [json.loads(proc.communicate(timeout=300)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in procs), [p.returncode for p in procs]
    claimed = [tuple(pair) for out in outputs for pair in out["claimed"]]
    span = max(o["ended"] for o in outputs) - min(o["began"] for o in outputs)

    doc = Docroot(root)
    runs = doc.store.runs(limit=1_000_000)
    doc.close()
    expected = set()
    slot = T0 + 30
    while slot <= last:
        expected.add(slot)
        slot += 60
    covered: list[float] = []
    for r in runs:
        if r.task == "Tick":
            covered += [r.slot - 60 * k for k in range(r.slots)]
    fast = sum(r.slots for r in runs if r.task == "Fast")
    return {
        "claims": len(claimed), "runs": len(runs), "span": span,
        "duplicates": len(claimed) - len(set(claimed)) + len(covered) - len(set(covered)),
        "gaps": len(expected - set(covered)), "minute": len(expected),
        "coalesced": sum(1 for r in runs if r.slots > 1),
        "not pending": sum(1 for r in runs if r.status != "pending"),
        "fast": fast, "most": max(len(o["claimed"]) for o in outputs),
        "least": min(len(o["claimed"]) for o in outputs),
    }


def section_race(tmp: Path, url: str) -> None:
    script = tmp / "racer.py"
    script.write_text(RACER)
    results = {label: race(root, script) for label, root in roots(tmp, url, "race", RACE).items()}
    calls = RACERS * STEPS
    print(f"2. {RACERS} processes racing due(at=...) over {STEPS:,} fake steps of {STEP:g} s"
          " (an every = 10 and a * * * * * task)")
    print(f"  {'':12s} {'claims':>6s} {'seconds':>7s} {'claims/s':>8s} {'due()/s':>8s}"
          f" {'per process':>11s} {'duplicates':>10s} {'minute gaps':>11s} {'coalesced':>9s}")
    for label, r in results.items():
        spread = f"{r['least']:.0f}-{r['most']:.0f}"
        print(f"  {label:12s} {r['claims']:6d} {r['span']:7.2f} {r['claims'] / r['span']:8.0f}"
              f" {calls / r['span']:8.0f} {spread:>11s}"
              f" {r['duplicates']:10d} {r['gaps']:11d} {r['coalesced']:9d}")
        if r["runs"] != r["claims"] or r["not pending"]:
            print(f"    ({r['runs']} runs recorded for {r['claims']} claims;"
                  f" {r['not pending']} recorded as not run)")
    sq, pg = results["SQLite"], results["PostgreSQL"]
    ratio = (pg["claims"] / pg["span"]) / (sq["claims"] / sq["span"])
    print(f"  PostgreSQL/SQLite claims/s: {ratio:.2f}"
          f"; minute slots passed {sq['minute']}, every=10 slots claimed"
          f" {sq['fast']} / {pg['fast']}")
    print("  duplicates: a (task, slot) claimed twice; minute gaps: a minute slot no run"
          " stands for;\n  per process: the fewest and most claims of one racer; every due()"
          " also polls (pulse)\n  and reads the due rows, so claims/s is the engine's, not"
          " one UPDATE's")
    print()


# -- 3. slot due -> run() -------------------------------------------------------------------


def entered(marker: Path, since: float, timeout: float = 30.0) -> tuple[float, bool]:
    """Seconds from ``since`` to run() entered, and whether psycopg was imported by then."""
    deadline = time.monotonic() + timeout
    while not marker.exists() or not marker.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError("the task's run() was not entered")
        time.sleep(0.001)
    at, imported = marker.read_text().split()
    return float(at) - since, imported == "1"


def finished(doc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (run := doc.store.runs("Enter", 1)[0]).status in ("pending", "running"):
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not end")
        time.sleep(0.005)
    assert run.status == "ok", (doc.path, run)


def section_enter(tmp: Path, url: str, n: int) -> None:
    from reqcron import Docroot, ReqCron

    py = sys.executable
    marker = tmp / "entered"
    os.environ["ENTERED"] = str(marker)  # inherited by the task processes
    sites = roots(tmp, url, "enter", ENTER)
    docs = {label: Docroot(root) for label, root in sites.items()}
    wrapped = {label: ReqCron(app, root, watch=False) for label, root in sites.items()}
    request: dict[str, list[float]] = {label: [] for label in sites}
    spawned: dict[str, list[float]] = {label: [] for label in sites}
    imported: dict[str, set[bool]] = {label: set() for label in sites}
    base: dict[str, list[float]] = {"pass": [], "psycopg": []}
    try:
        for label, w in wrapped.items():
            warm(w)
            docs[label].catalog()
        for _ in range(n):  # interleaved, so drift hits every figure alike
            for label, w in wrapped.items():
                marker.unlink(missing_ok=True)
                docs[label].run_now("Enter")
                w._wake_at = 0  # as if this request were the first after the poll interval
                start = time.time()
                w({}, None)
                took, pg = entered(marker, start)
                request[label].append(took)
                imported[label].add(pg)
                finished(docs[label])
    finally:
        for w in wrapped.values():
            w.close()
    try:
        for _ in range(n):
            base["pass"].append(wall([py, "-c", "pass"]))
            base["psycopg"].append(wall([py, "-c", "import psycopg"]))
            for label, doc in docs.items():
                marker.unlink(missing_ok=True)
                doc.run_now("Enter")  # what a request does: claim, then spawn with --run-id
                (claim,) = doc.due()
                command = [py, "-P", "-m", "reqcron.runtask", "--run-id", str(claim.run_id),
                           str(doc.path), "Enter"]
                start = time.time()
                subprocess.run(command, check=True, cwd=doc.path, stdout=subprocess.DEVNULL)
                took, pg = entered(marker, start)
                assert doc.store.get_run(claim.run_id).status == "ok"
                spawned[label].append(took)
                imported[label].add(pg)
    finally:
        for doc in docs.values():
            doc.close()
    bare = statistics.median(base["pass"]) * 1000
    driver = statistics.median(base["psycopg"]) * 1000
    print(f"3. a due run -> the task's run() entered (ms, median / max of {n}, interleaved)")
    print(f"  {'':38s} {'SQLite':>13s} {'PostgreSQL':>13s} {'PG/SQLite':>9s} {'PG - SQLite':>11s}")
    for what, samples in (("request via ReqCron, after run_now()", request),
                          ("runtask --run-id to run()", spawned)):
        (sq_med, sq_max), (pg_med, pg_max) = ms(samples["SQLite"]), ms(samples["PostgreSQL"])
        print(f"  {what:38s} {f'{sq_med:.1f} / {sq_max:.1f}':>13s}"
              f" {f'{pg_med:.1f} / {pg_max:.1f}':>13s} {pg_med / sq_med:9.2f}"
              f" {pg_med - sq_med:11.1f}")
    print(f"  python -c pass {bare:.1f} ms; python -c 'import psycopg' {driver:.1f} ms"
          f" (adds {driver - bare:.1f} ms)")
    said = {label: "yes" if True in seen else "no" for label, seen in imported.items()}
    print(f"  psycopg imported before run(): SQLite {said['SQLite']},"
          f" PostgreSQL {said['PostgreSQL']}; the request row"
          f"\n  counts from the request (the worker claims, then spawns runtask --run-id)")
    print()


# -- the run -------------------------------------------------------------------------------


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="reqcron-pg-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    database = create_database()
    url = SERVER.rsplit("/", 1)[0] + "/" + database
    try:
        import psycopg

        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, psycopg"
              f" {psycopg.__version__} ({psycopg.pq.__impl__}), PostgreSQL at"
              f" {SERVER.rsplit('/', 1)[0]}; ratios are against figures measured in this run")
        print()
        section_requests(tmp, url)
        section_race(tmp, url)
        section_enter(tmp, url, n)
    finally:
        left = leftovers(tmp)  # task processes end by themselves
        deadline = time.monotonic() + 15
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = leftovers(tmp)
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
