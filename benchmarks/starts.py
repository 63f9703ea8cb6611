"""How fast reqcron starts things, as installed from a wheel: every path from "due" to "running".

Builds a wheel of this checkout (from a copy in a temp dir, so the checkout
gets no build/ nor egg-info), installs it with its dependencies and the
``postgres`` extra into a fresh venv in that temp dir, and runs everything
below with that venv's python, on a DOCROOT on the default SQLite state and
one on a PostgreSQL state (``state = "postgresql://..."``, ``site = "bench"``
in reqcron.toml).  Prints ONE table: median and max of N runs, in ms, each
row also as a ratio against ``python -c pass`` and ``python -S -c pass``
measured interleaved with it (these machines are noisy and often busy: read
the ratios, and the load average printed with them), the issue's target
beside it:

1. ``python -c pass`` and ``python -S -c pass``: the baselines;
2. due -> run() entered through a request: ``Docroot.run_now()``, then one
   WSGI request through ``reqcron.ReqCron`` in this process (the middleware's
   worker claims and spawns ``runtask --run-id``), timed from the request to
   the time run() wrote (target: 2.5x ``python -c pass`` on both stores);
3. a direct ``runtask DOCROOT TASK`` (the venv's console script), from
   process start to run() entered (target: 2.5x on SQLite, 4x on PostgreSQL);
4. the duration recorded for a trivial task (run() returns at once) run by
   ``runtask``, as ``reqcron history DOCROOT TASK --json`` gives it (its
   ``duration``, end - start; the JSON's ``start``/``end`` are shown to the
   second) (target: PostgreSQL within 1.5x SQLite's);
5. a ``@delay`` function (a module on sys.path, writes time.time() to a
   file) called in a request through ReqCron -> the function entered,
   (a) when a process for calls must start, (b) when the one that ran the
   previous call still lingers for more (drain.py's LINGER, 1 s) (targets
   from benchmarks/deferred.py: 2.5x ``python -c pass``, a few ms);
6. ``reqcron check DOCROOT``, wall time (target: under 300 ms).

The PostgreSQL server is $REQCRON_TEST_POSTGRES or
postgresql://root@127.0.0.1:5432/postgres; the run makes its own database
(reqcron_bench_<random>) and drops it at the end.  Everything else lives in
a temporary directory, the state included (XDG_STATE_HOME), removed at the
end with every process it started.  Needs the package index (or pip's
cache) for the venv; takes about 2-3 minutes on 2 cores.  Not a test.

    .venv/bin/python benchmarks/starts.py [N]     # N: runs per row (default 15)
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
import uuid
from pathlib import Path
from wsgiref.util import setup_testing_defaults

from common import leftovers

REPO = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("REQCRON_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/postgres")
STORES = ("SQLite", "PostgreSQL")
INSIDE = "--inside"  # the second half of a run: this script again, under the fresh venv

TASKS = """
import os, time
from reqcron import Task

class Enter(Task):                  # on demand: run_now() or runtask
    def run(self):
        entered = time.time()
        with open(os.environ["BENCH_ENTERED"], "w") as fh:
            fh.write(repr(entered))

class Trivial(Task):
    def run(self):
        pass
"""

JOBS = """
import os, time
from reqcron import delay

@delay
def entered():
    now = time.time()
    with open(os.environ["BENCH_CALLED"], "w") as fh:
        fh.write(repr(now))
"""


# -- the first half: a wheel, a venv ----------------------------------------------------------


def install(tmp: Path) -> Path:
    """Build a wheel of this checkout and install it with the postgres extra into a new venv;
    return the venv's python."""
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "tests",
        "docs", "benchmarks"))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    for step in (
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"),
         str(source)],
        [sys.executable, "-m", "venv", str(tmp / "venv")],
    ):
        done = subprocess.run(step, **quiet)
        if done.returncode:
            raise SystemExit(f"{' '.join(step)} failed:\n{done.stderr}")
    (wheel,) = (tmp / "dist").glob("reqcron-*.whl")
    python = tmp / "venv" / "bin" / "python"
    step = [str(python), "-m", "pip", "install", "-q", f"{wheel}[postgres]"]
    done = subprocess.run(step, **quiet)
    if done.returncode:
        raise SystemExit(f"{' '.join(step)} failed:\n{done.stderr}")
    # pip compiles what it installs; this makes sure of it (PYTHONDONTWRITEBYTECODE is set on
    # these machines, and a task process must not compile reqcron from source at each start).
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], capture_output=True, text=True, check=True)
    subprocess.run([str(python), "-m", "compileall", "-q", site.stdout.strip()],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(source)
    return python


def drop_database(python: Path, name: str) -> None:
    """Drop ``name`` with the venv's psycopg (the caller may have none): idempotent."""
    assert name.startswith("reqcron_bench_")
    subprocess.run([str(python), "-c", "import psycopg, sys\n"
                    "with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=3) as c:\n"
                    "    c.execute(f'DROP DATABASE IF EXISTS \"{sys.argv[2]}\" WITH (FORCE)')",
                    SERVER, name], check=False)


def kill_leftovers(tmp: Path, wait: float = 15.0) -> list[int]:
    """The processes whose command line names ``tmp``, once given ``wait`` s to end: killed."""
    deadline = time.monotonic() + wait
    while (left := leftovers(tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="reqcron-starts-"))
    database = f"reqcron_bench_{uuid.uuid4().hex[:12]}"
    python = tmp / "venv" / "bin" / "python"
    code = 1
    try:
        python = install(tmp)
        installed = time.monotonic() - began
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
        env["XDG_STATE_HOME"] = str(tmp / "state")
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
        # Not in the checkout: the script's folder is sys.path[0], the checkout is not on it.
        code = subprocess.run([str(python), str(Path(__file__).resolve()), INSIDE, str(tmp),
                               database, str(n), f"{installed:.0f}"], env=env,
                              cwd=tmp).returncode
    finally:
        left = kill_leftovers(tmp)
        if python.exists():
            drop_database(python, database)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"processes left behind: {len(left)}" + (f" (killed: {left})" if left else ""))
    print(f"total {time.monotonic() - began:.0f} s")
    sys.exit(code)


# -- the second half, under the venv's python ---------------------------------------------------


def app(environ, start_response):
    """The app under ReqCron: /defer calls the @delay function (jobs set by inside())."""
    if environ.get("PATH_INFO") == "/defer":
        environ["bench.called"] = time.time()
        environ["bench.result"] = JOBS_MODULE[0].entered()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


JOBS_MODULE: list = []


def request(wrapped, path: str = "/") -> dict:
    """One request through ``wrapped``, as a server makes it: call, iterate, close()."""
    environ = {"PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": ""}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = wrapped(environ, lambda s, h, exc_info=None: status.append(s))
    try:
        b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    assert status == ["200 OK"], status
    return environ


def wait_for(predicate, timeout: float = 30.0, pause: float = 0.001, what: str = "it"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {timeout:g} s")
        time.sleep(pause)
    return value


def written(marker: Path, what: str) -> float:
    """The time.time() written to ``marker`` (waited for); the file is removed."""
    text = wait_for(lambda: marker.exists() and marker.read_text(), what=what)
    marker.unlink()
    return float(text)


def wall(cmd: list[str], *, ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr}")
    return took


def ended(doc, name: str) -> None:
    """Wait for the newest run of ``name`` to end, and check it ended well."""
    def last():
        run = doc.history(name, limit=1)[0]
        return run if run.status not in ("pending", "running") else None

    run = wait_for(last, pause=0.005, what=f"{name}'s run to end")
    assert run.status == "ok", (doc.path, run)


def quiet(root: Path) -> None:
    """Wait until no process of ``root`` runs (a process for calls lingers 1 s after its last)."""
    wait_for(lambda: not leftovers(root), pause=0.02, what=f"{root}'s processes to end")


def warm(wrapped) -> None:
    """Requests until the worker has loaded the catalog and gone to sleep (postgres.py's)."""
    request(wrapped)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        wrapped.docroot is not None and len(wrapped.docroot.catalog().tasks) == 2
        and wrapped._wake_at > time.monotonic() + 0.5
    ):
        time.sleep(0.05)
        request(wrapped)
    assert wrapped.docroot is not None and len(wrapped.docroot.catalog().tasks) == 2


def make_site(where: Path, url: str | None) -> Path:
    where.mkdir(mode=0o755)
    (where / "__tasks__.py").write_text(TASKS)
    toml = '[reqcron]\ntimezone = "UTC"\n'
    if url:
        toml += f'state = "{url}"\nsite = "bench"\n'
    (where / "reqcron.toml").write_text(toml)
    return where


def create_database(name: str) -> str:
    import psycopg

    assert name.startswith("reqcron_bench_")
    with psycopg.connect(SERVER, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return SERVER.rsplit("/", 1)[0] + "/" + name


def inside(tmp: Path, database: str, n: int, installed: str) -> None:
    import importlib

    import reqcron
    from reqcron import Docroot, ReqCron

    assert Path(reqcron.__file__).is_relative_to(sys.prefix), reqcron.__file__  # not the checkout
    py = sys.executable
    bindir = Path(py).parent
    runtask, cli = str(bindir / "runtask"), str(bindir / "reqcron")
    load_before = os.getloadavg()
    url = create_database(database)
    try:
        roots = {"SQLite": make_site(tmp / "site-sqlite", None),
                 "PostgreSQL": make_site(tmp / "site-pg", url)}
        entered_file, called_file = tmp / "entered", tmp / "called"
        os.environ["BENCH_ENTERED"] = str(entered_file)  # inherited by the task processes
        os.environ["BENCH_CALLED"] = str(called_file)
        app_dir = tmp / "app"
        app_dir.mkdir(mode=0o755)
        (app_dir / "startsjobs.py").write_text(JOBS)
        sys.path.insert(0, str(app_dir))
        JOBS_MODULE.append(importlib.import_module("startsjobs"))
        wrapped = {s: ReqCron(app, root, watch=False) for s, root in roots.items()}
        docs = {s: Docroot(root) for s, root in roots.items()}
        try:
            samples = measure(n, py, runtask, cli, roots, wrapped, docs, entered_file,
                              called_file)
        finally:
            for w in wrapped.values():
                w.close()
            for doc in docs.values():
                doc.close()
        samples["duration"] = {s: durations(cli, root, n) for s, root in roots.items()}
        for root in roots.values():
            quiet(root)
    finally:
        import psycopg

        with psycopg.connect(SERVER, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    report(samples, n, load_before, os.getloadavg(), installed)


def measure(n, py, runtask, cli, roots, wrapped, docs, entered_file, called_file) -> dict:
    s: dict[str, dict[str, list[float]]] = {
        k: {store: [] for store in STORES}
        for k in ("request", "runtask", "cold", "warm", "check")
    }
    s["pass"] = {"": []}
    s["pass -S"] = {"": []}

    def via_request(store: str) -> float:
        docs[store].run_now("Enter")
        wrapped[store]._wake_at = 0  # as if this request were the first after the poll interval
        start = time.time()
        request(wrapped[store])
        took = written(entered_file, "run() entered") - start
        ended(docs[store], "Enter")
        return took

    def direct(store: str) -> float:
        start = time.time()
        subprocess.run([runtask, str(roots[store]), "Enter"], check=True,
                       stdout=subprocess.DEVNULL)
        return written(entered_file, "run() entered") - start

    def call(store: str) -> float:
        environ = request(wrapped[store], "/defer")
        took = written(called_file, "the function entered") - environ["bench.called"]
        result = environ["bench.result"].wait(timeout=30)
        assert result.status == "ok", (result.status, result.error_message)
        return took

    def check(store: str) -> float:
        return wall([cli, "check", str(roots[store])])

    # Once each, not counted: the state made, the catalog read, the page cache warm.
    for store in STORES:
        warm(wrapped[store])
        via_request(store)
        direct(store)
        subprocess.run([runtask, str(roots[store]), "Trivial"], check=True,
                       stdout=subprocess.DEVNULL)
        check(store)
        call(store)
        quiet(roots[store])
    for _ in range(n):  # interleaved, so a busy moment hits every figure alike
        s["pass"][""].append(wall([py, "-c", "pass"]))
        s["pass -S"][""].append(wall([py, "-S", "-c", "pass"]))
        for store in STORES:
            s["request"][store].append(via_request(store))
        for store in STORES:
            s["runtask"][store].append(direct(store))
        for store in STORES:
            subprocess.run([runtask, str(roots[store]), "Trivial"], check=True,
                           stdout=subprocess.DEVNULL)
        for store in STORES:
            s["check"][store].append(check(store))
        for store in STORES:  # last: a lingering process for calls polls every 2 ms
            quiet(roots[store])
            s["cold"][store].append(call(store))
            s["warm"][store].append(call(store))  # well within the first one's linger
            quiet(roots[store])
    return s


def durations(cli: str, root: Path, n: int) -> list[float]:
    """The recorded durations of Trivial's last ``n`` runs (the rounds' runs), in seconds."""
    out = subprocess.run([cli, "history", str(root), "Trivial", "--json", "--limit", str(n)],
                         check=True, capture_output=True, text=True).stdout
    runs = json.loads(out)
    assert len(runs) == n and all(r["status"] == "ok" for r in runs), runs
    return [r["duration"] for r in runs]


def report(s: dict, n: int, before: tuple, after: tuple, installed: str) -> None:
    import reqcron

    def ms(samples: list[float]) -> tuple[float, float]:
        return statistics.median(samples) * 1000, max(samples) * 1000

    bare, bare_s = ms(s["pass"][""])[0], ms(s["pass -S"][""])[0]
    sq_duration = ms(s["duration"]["SQLite"])[0]

    def verdict(value: float, limit: float, unit: str = "x pass") -> str:
        return f"{'ok' if value <= limit else 'OVER'} (<= {limit:g}{unit})"

    rows: list[tuple[str, list[float], str]] = [
        ("python -c pass", s["pass"][""], "baseline"),
        ("python -S -c pass", s["pass -S"][""], "baseline"),
    ]
    for key, what, limits in (
        ("request", "due -> run(), request via ReqCron", {"SQLite": 2.5, "PostgreSQL": 2.5}),
        ("runtask", "runtask DOCROOT TASK -> run()", {"SQLite": 2.5, "PostgreSQL": 4}),
    ):
        for store in STORES:
            median = ms(s[key][store])[0]
            rows.append((f"{what}, {store}", s[key][store],
                         verdict(median / bare, limits[store])))
    for store in STORES:
        median = ms(s["duration"][store])[0]
        target = ("(the reference)" if store == "SQLite" else
                  f"{median / sq_duration:.2f}x SQLite's: "
                  + verdict(median / sq_duration, 1.5, "x SQLite's"))
        rows.append((f"trivial task's recorded duration, {store}", s["duration"][store], target))
    for store in STORES:
        median = ms(s["cold"][store])[0]
        rows.append((f"@delay call -> function, new process, {store}", s["cold"][store],
                     verdict(median / bare, 2.5) + " deferred.py's"))
        rows.append((f"@delay call -> function, warm process, {store}", s["warm"][store],
                     "a few ms (deferred.py's)"))
    for store in STORES:
        median = ms(s["check"][store])[0]
        rows.append((f"reqcron check DOCROOT, {store}", s["check"][store],
                     f"{'ok' if median < 300 else 'OVER'} (< 300 ms)"))

    print(f"reqcron {reqcron.__version__} installed from its wheel in a fresh venv "
          f"({installed} s to build and install), python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    print("load average (1, 5, 15 min): before " + " ".join(f"{x:.2f}" for x in before)
          + ", after " + " ".join(f"{x:.2f}" for x in after))
    print(f"ms, median and max of {n} runs, interleaved; ratios of the median against the "
          "baselines' medians")
    print(f"  {'':48s} {'median':>7s} {'max':>7s} {'x pass':>7s} {'x -S':>7s}  target")
    for what, samples, target in rows:
        median, most = ms(samples)
        print(f"  {what:48s} {median:7.1f} {most:7.1f} {median / bare:7.2f}"
              f" {median / bare_s:7.2f}  {target}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == INSIDE:
        inside(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
