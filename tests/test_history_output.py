"""What `reqcron list` and `reqcron history` print: FAILING, rounding, tracebacks, cuts, JSON."""

from __future__ import annotations

import json
import time

import pytest
from conftest import reqcron_cmd

from reqcron import Docroot
from reqcron.records import Run, Status

TASKS = """
from reqcron import Task

class Slow(Task):
    timeout = 5

class Loud(Task):
    def run(self):
        print("working on it")
        raise RuntimeError(
            "the 'quoted thing' went wrong because the disk said \\"no space left on device\\"")

class Value(Task):
    def run(self):
        return {"rows": [1, 2], "note": "done"}

class Opaque(Task):
    def run(self):
        return object()
"""


@pytest.fixture
def site(make_docroot):
    return make_docroot(TASKS, '[reqcron]\ntimezone = "UTC"\n')


def add(root, task: str, status: str, error: str | None = None, *, start: float,
        seconds: float = 1.0) -> int:
    doc = Docroot(root)
    try:
        return doc.store.add_run(Run(task=task, trigger="request", status=status, created=start,
                                     start=start, end=start + seconds, error=error))
    finally:
        doc.close()


def listed(root, name: str) -> dict:
    data = json.loads(reqcron_cmd("list", str(root), "--json").stdout)
    return next(t for t in data["tasks"] if t["name"] == name)


@pytest.mark.parametrize(("status", "error"), [
    (Status.SKIPPED, "the previous run is still going"),  # overlap = False
    (Status.SKIPPED, "disabled"),
    (Status.MISSED, None),
])
def test_a_timeout_is_not_hidden_by_a_later_slot_that_did_not_run(site, status, error):
    t0 = time.time() - 600
    add(site, "Slow", Status.OK, start=t0)
    add(site, "Slow", Status.TIMEOUT, "stopped by its timeout of 5 s", start=t0 + 60, seconds=5)
    add(site, "Slow", status, error, start=t0 + 120, seconds=0.001)
    slow = listed(site, "Slow")
    assert "failing" in slow["marks"]
    assert slow["last_run"]["status"] == "timeout"  # the last run that ran
    proc = reqcron_cmd("list", str(site))
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("Slow ")]
    assert "FAILING" in row and "timeout" in row
    assert proc.returncode == 1


def test_a_good_run_after_the_failure_clears_failing_whatever_follows(site):
    t0 = time.time() - 600
    add(site, "Slow", Status.TIMEOUT, start=t0, seconds=5)
    add(site, "Slow", Status.OK, start=t0 + 60)
    add(site, "Slow", Status.SKIPPED, "the previous run is still going", start=t0 + 120)
    slow = listed(site, "Slow")
    assert slow["marks"] == [] and slow["last_run"]["status"] == "ok"


def test_one_run_shows_rounded_seconds_and_its_traceback_once(site, docroot):
    assert reqcron_cmd("run", str(site), "Loud").returncode == 1
    (run,) = json.loads(reqcron_cmd("history", str(site), "Loud", "--json").stdout)
    doc = docroot(site)
    doc.store.update_run(run["id"], lateness=0.123456789)
    out = reqcron_cmd("history", str(site), "--run", str(run["id"])).stdout
    (duration,) = [line for line in out.splitlines() if line.startswith("duration: ")]
    assert duration.endswith(" s") and len(duration.split()[1]) == 4  # "0.02"
    assert "lateness: 0.12 s\n" in out
    assert out.count("Traceback (most recent call last)") == 1
    assert out.count('raise RuntimeError(') == 1
    assert "--- output ---\nworking on it\n" in out
    assert "Stack when asked to stop" not in out  # it was not asked to stop


def test_the_error_column_is_cut_at_a_word_with_an_ellipsis(site):
    assert reqcron_cmd("run", str(site), "Loud").returncode == 1
    out = reqcron_cmd("history", str(site)).stdout
    error = out.splitlines()[1].split("failed", 1)[1].strip()
    assert error.endswith("…") and len(error) <= 70
    assert error.startswith("RuntimeError: the 'quoted thing' went wrong")
    assert error[:-1].endswith(("because", "the", "disk", "said")), error


def test_json_return_values_are_values_and_reprs_stay_text(site):
    assert reqcron_cmd("run", str(site), "Value").returncode == 0
    assert reqcron_cmd("run", str(site), "Opaque").returncode == 0
    runs = {r["task"]: r for r in json.loads(reqcron_cmd("history", str(site), "--json").stdout)}
    assert runs["Value"]["return_value"] == {"rows": [1, 2], "note": "done"}
    assert runs["Opaque"]["return_value"].startswith("<object object at ")
    one = json.loads(reqcron_cmd("history", str(site), "--run", str(runs["Value"]["id"]),
                                 "--json").stdout)
    assert one["return_value"] == {"rows": [1, 2], "note": "done"}
    text = reqcron_cmd("history", str(site), "--run", str(runs["Value"]["id"])).stdout
    assert 'return_value: {"rows": [1, 2], "note": "done"}\n' in text


@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_a_limit_below_one_is_refused_in_one_sentence(site, limit):
    proc = reqcron_cmd("history", str(site), f"--limit={limit}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert f"--limit: must be a whole number of at least 1, not '{limit}'" in proc.stderr
