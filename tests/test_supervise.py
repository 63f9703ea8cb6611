"""The task's process under supervision: its locks, its process group, its stack, its caps.

Real `python -m reqcron.runtask` processes, real signals, real forks.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import popen, reqcron_cmd, runtask, wait_for

from reqcron import Docroot
from reqcron.limits import ERROR_LIMIT, RESULT_READ_LIMIT, TRACEBACK_LIMIT, cap

TASKS = """
import os, subprocess, time
from pathlib import Path
from reqcron import Task

MARK = Path(os.environ["MARK_DIR"])

class Forks(Task):                         # leaves a daemonised helper behind
    def run(self):
        helper = os.fork()
        if helper == 0:
            os.setsid()
            time.sleep(30)
            os._exit(0)
        (MARK / f"helper.{helper}").write_text(str(helper))

class StartsASleep(Task):
    timeout = 1
    stop_grace = 0.5
    def run(self):
        sleeper = subprocess.Popen(["sleep", "300"])
        (MARK / "sleep.pid").write_text(str(sleeper.pid))
        time.sleep(30)

def stuck_here():
    time.sleep(30)                          # in C code when the timeout comes

class Stuck(Task):
    timeout = 1
    stop_grace = 0.5
    def run(self):
        stuck_here()

class Huge(Task):
    def run(self):
        raise ValueError("x" * 100_000_000)

class Overreports(Task):                    # a child whose own caps have gone wrong
    def run(self):
        import reqcron.run.child
        reqcron.run.child.RETURN_VALUE_LIMIT = 10**9
        return "y" * 5_000_000
"""


@pytest.fixture
def site(make_docroot, tmp_path, monkeypatch):
    monkeypatch.setenv("MARK_DIR", str(tmp_path))
    return make_docroot(TASKS)


def last_run(root: Path, name: str) -> dict:
    doc = Docroot(root)
    try:
        run_id = doc.history(name, limit=1)[0].id
    finally:
        doc.close()
    proc = reqcron_cmd("history", str(root), "--run", str(run_id), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def line_of(code: str) -> int:
    """The line of __tasks__.py that holds ``code``."""
    (number,) = [n for n, line in enumerate(TASKS.split("\n"), 1) if code in line]
    return number


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kill_from(*pid_files: Path) -> None:
    for pid_file in pid_files:
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def test_a_helper_the_task_forks_does_not_keep_its_lock(site, tmp_path):
    try:
        first = runtask(site, "Forks")
        assert first.returncode == 0, first.stdout + first.stderr
        (helper,) = tmp_path.glob("helper.*")
        assert _alive(int(helper.read_text()))  # it outlives run(), with the fds it inherited
        second = runtask(site, "Forks")
        assert second.returncode == 0, second.stderr  # not 75: the overlap lock is free
    finally:
        _kill_from(*tmp_path.glob("helper.*"))


def test_a_timeout_stops_the_subprocesses_the_task_started(site, tmp_path):
    try:
        proc = runtask(site, "StartsASleep")
        assert proc.returncode == 124, proc.stdout + proc.stderr
        sleeper = int((tmp_path / "sleep.pid").read_text())
        wait_for(lambda: not _alive(sleeper), timeout=10, message="the task's sleep to end")
    finally:
        _kill_from(tmp_path / "sleep.pid")


def test_a_timed_out_run_records_where_it_was_stuck(site):
    proc = runtask(site, "Stuck")
    assert proc.returncode == 124
    run = last_run(site, "Stuck")
    assert run["status"] == "timeout"
    assert run["full_error"] == "stopped by its timeout of 1 s (and killed)"
    stack = run["traceback"]
    assert stack.startswith("Stack when asked to stop:\n")
    sleep = line_of("in C code when")
    assert f'File "{site / "__tasks__.py"}", line {sleep} in stuck_here' in stack
    assert "in run" in stack and "_child" not in stack  # the task's frames, not reqcron's


def test_runtask_says_in_one_line_where_a_timed_out_task_was(site):
    proc = runtask(site, "Stuck")
    assert proc.returncode == 124
    assert proc.stderr == (
        f"runtask: task 'Stuck' timed out after 1 s; "
        f"it was at {site / '__tasks__.py'}:{line_of('in C code when')} in stuck_here\n"
    )


def test_a_huge_exception_is_capped_before_it_costs_memory_or_state(site, tmp_path, state_home):
    out = (tmp_path / "huge.out").open("w")
    err = (tmp_path / "huge.err").open("w")
    with out, err:
        proc = popen(
            [sys.executable, "-m", "reqcron.runtask", str(site), "Huge"], stdout=out, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, for its rusage
    assert proc.returncode == 1
    # The largest of runtask and its task process (which holds the 100 MB
    # message itself, once): uncapped, each made several copies of it.
    assert usage.ru_maxrss * 1024 < 300_000_000
    assert (tmp_path / "huge.out").stat().st_size < 2 * TRACEBACK_LIMIT
    run = last_run(site, "Huge")
    assert len(run["full_error"]) <= ERROR_LIMIT
    assert run["full_error"].startswith("ValueError: xxx") and "truncated" in run["full_error"]
    assert len(run["traceback"]) <= TRACEBACK_LIMIT
    assert f'__tasks__.py", line {line_of("raise ValueError")}, in run' in run["traceback"]
    state = sum(p.stat().st_size for p in state_home.rglob("*") if p.is_file())
    assert state < 5_000_000


def test_a_child_that_reports_too_much_is_cut_and_noted(site):
    proc = runtask(site, "Overreports")
    assert proc.returncode == 1
    run = last_run(site, "Overreports")
    assert run["status"] == "failed" and run["return_value"] is None
    assert run["full_error"] == f"its report was over {RESULT_READ_LIMIT} bytes and was dropped"


@pytest.mark.parametrize(
    ("text", "limit", "keep_end", "expected"),
    [
        ("short", 10, False, "short"),
        ("a" * 60 + "b" * 40, 50, False, "a" * 21 + "… [truncated 79 characters]"),
        ("a" * 60 + "b" * 40, 50, True, "… [truncated 79 characters]\n" + "b" * 21),
        ("abcdef", 3, False, "abc"),
    ],
)
def test_cap_cuts_to_the_limit_and_says_so(text, limit, keep_end, expected):
    assert cap(text, limit, keep_end=keep_end) == expected
    assert len(expected) <= limit
