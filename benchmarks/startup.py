"""How fast a task process starts: `import reqcron`, and `runtask` up to `run()`.

Prints medians of N runs, each against a bare `python -c pass` measured in
the same run (these machines are noisy: compare the ratios).  Not a test.

    .venv/bin/python benchmarks/startup.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = """
import os, time
from reqcron import Task

class Enter(Task):
    every = 3600
    def run(self):
        with open(os.environ["ENTERED"], "w") as fh:
            fh.write(repr(time.time()))

class Cron(Task):
    cron = "0 3 * * *"
    def run(self):
        with open(os.environ["ENTERED"], "w") as fh:
            fh.write(repr(time.time()))
"""


def wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def to_run(cmd: list[str], env: dict[str, str], marker: Path) -> float:
    """Seconds from starting ``cmd`` to the task's run() being entered."""
    marker.unlink(missing_ok=True)
    start = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return float(marker.read_text()) - start


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    py = sys.executable
    # As an installed package would be: with PYTHONDONTWRITEBYTECODE set (as on these
    # machines) every start would otherwise compile reqcron from source.
    import reqcron

    subprocess.run([py, "-m", "compileall", "-q", os.path.dirname(reqcron.__file__)],
                   check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "site"
        root.mkdir()
        (root / "__tasks__.py").write_text(TASKS)
        marker = Path(tmp) / "entered"
        env = dict(os.environ, XDG_STATE_HOME=str(Path(tmp) / "state"), ENTERED=str(marker))
        exec_tasks = f"exec(compile(open({str(root / '__tasks__.py')!r}).read(), 't', 'exec'))"
        runtask = [py, "-m", "reqcron.runtask", str(root)]
        subprocess.run([*runtask, "Enter"], env=env, check=True)  # create the state
        results: dict[str, list[float]] = {
            k: [] for k in ("bare", "import", "tasks", "enter", "cron", "claimed")
        }
        os.environ["XDG_STATE_HOME"] = env["XDG_STATE_HOME"]
        from reqcron import Docroot

        doc = Docroot(root)
        for _ in range(n):  # interleaved, so drift hits every figure alike
            results["bare"].append(wall([py, "-c", "pass"]))
            results["import"].append(wall([py, "-c", "import reqcron"]))
            results["tasks"].append(wall([py, "-c", exec_tasks]))
            results["enter"].append(to_run([*runtask, "Enter"], env, marker))
            results["cron"].append(to_run([*runtask, "Cron"], env, marker))
            doc.run_now("Enter")  # what a request does: claim, then spawn with --run-id
            (claim,) = doc.due()
            spawned = [py, "-m", "reqcron.runtask", "--run-id", str(claim.run_id), str(root)]
            results["claimed"].append(to_run([*spawned, "Enter"], env, marker))
    bare = median_ms(results["bare"])
    imp = median_ms(results["import"])
    tasks = median_ms(results["tasks"]) - bare
    enter = median_ms(results["enter"])
    cron = median_ms(results["cron"])
    claimed = median_ms(results["claimed"])
    budget = 2 * bare + tasks
    print(f"medians of {n} runs, python {sys.version.split()[0]}")
    print(f"  python -c pass                      {bare:7.1f} ms")
    print(
        f"  python -c 'import reqcron'          {imp:7.1f} ms   adds {imp - bare:5.1f} ms"
        " (target < 10 ms)"
    )
    print(f"  import of __tasks__.py alone        {tasks:7.1f} ms (over bare)")
    print(
        f"  spawned runtask --run-id to run()   {claimed:7.1f} ms   {claimed / budget:4.2f}x of "
        f"2 x bare + tasks = {budget:.1f} ms (target <= 1.00x)"
    )
    print(
        f"  runtask to run() (every task)       {enter:7.1f} ms   {enter / budget:4.2f}x of "
        f"2 x bare + tasks = {budget:.1f} ms (target <= 1.00x)"
    )
    print(
        f"  runtask to run() (cron task)        {cron:7.1f} ms   {cron / budget:4.2f}x"
        " (a manual run of a cron task reads its schedule: croniter)"
    )
    probe = (
        "import reqcron, sys; print(' '.join(m for m in ('croniter', 'watchdog', 'webob')"
        " if m in sys.modules))"
    )
    heavy = subprocess.run([py, "-c", probe], capture_output=True, text=True).stdout.strip()
    print(f"  heavy modules imported by 'import reqcron': {heavy or 'none'}")


if __name__ == "__main__":
    main()
