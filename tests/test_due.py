"""Docroot.due(): the one place that decides and claims what must start now."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import write

from reqcron import Docroot


@pytest.fixture(params=["sqlite", "postgres"])
def make_docroot(request, make_docroot):
    """Every DOCROOT of these tests on each store: SQLite, and PostgreSQL as one site."""
    if request.param == "sqlite":
        return make_docroot
    url = request.getfixturevalue("pg_url")
    sites = [0]

    def make(tasks=None, toml=None, name=None):
        sites[0] += 1
        extra = f'state = "{url}"\nsite = "site{sites[0]}"\n'
        toml = (toml or "[reqcron]\n").replace("[reqcron]\n", "[reqcron]\n" + extra, 1)
        return make_docroot(tasks, toml, name)

    return make


T0 = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC).timestamp()
MINUTE_TASK = "from reqcron import Task\nclass Tick(Task):\n    cron = '* * * * *'\n"


def test_a_task_seen_for_the_first_time_starts_at_its_next_slot(make_docroot):
    doc = Docroot(make_docroot(MINUTE_TASK))
    assert doc.due(at=T0) == []  # slots before it existed never run
    assert doc.states()["Tick"].next_due == T0 + 30
    (claim,) = doc.due(at=T0 + 31)
    assert (claim.task, claim.slot, claim.trigger) == ("Tick", T0 + 30, "request")
    assert doc.due(at=T0 + 32) == []  # claimed once


def test_missed_slots_are_coalesced_into_one_run(make_docroot):
    doc = Docroot(make_docroot(MINUTE_TASK))
    doc.due(at=T0)
    ten_days = 10 * 86400
    (claim,) = doc.due(at=T0 + ten_days)
    assert claim.slot == T0 + ten_days - 30  # the latest passed slot
    assert doc.states()["Tick"].next_due == T0 + ten_days + 30
    run = doc.get_run(claim.run_id)
    assert run.status == "pending" and run.lateness == 30


def test_a_slot_past_grace_is_recorded_as_missed_not_run(make_docroot):
    doc2 = Docroot(make_docroot(MINUTE_TASK.replace("'* * * * *'", "'0 * * * *'\n    grace = 10")))
    doc2.due(at=T0)
    assert doc2.due(at=T0 + 3600) == []
    (missed,) = doc2.history("Tick")
    assert missed.status == "missed" and "past its grace of 10 s" in missed.error


def test_a_slot_within_grace_is_claimed(make_docroot):
    doc = Docroot(make_docroot(MINUTE_TASK.replace("'* * * * *'", "'0 * * * *'\n    grace = 60")))
    doc.due(at=T0)
    assert len(doc.due(at=T0 + 3600)) == 1  # 13:00 found 30 s late, grace 60


def test_slots_of_a_disabled_task_are_recorded_as_skipped_once(make_docroot):
    doc = Docroot(make_docroot(MINUTE_TASK))
    doc.due(at=T0)
    doc.disable("Tick")
    for minute in range(1, 6):
        assert doc.due(at=T0 + 60 * minute) == []
    (skipped,) = doc.history("Tick")
    assert skipped.status == "skipped" and skipped.error == "disabled" and skipped.slots == 5
    doc.enable("Tick")
    assert len(doc.due(at=T0 + 400)) == 1


def test_run_now_is_claimed_once(make_docroot):
    doc = Docroot(make_docroot("from reqcron import Task\nclass Reindex(Task):\n    pass\n"))
    assert doc.due() == []
    doc.run_now("Reindex")
    doc.run_now("Reindex")  # asking twice before a check is one run
    (claim,) = doc.due()
    assert claim.trigger == "run_now" and claim.slot is None
    assert doc.due() == []


def test_a_changed_schedule_applies_from_its_next_slot(make_docroot):
    root = make_docroot(MINUTE_TASK)
    doc = Docroot(root)
    doc.due(at=T0)
    write(root / "__tasks__.py", MINUTE_TASK.replace("* * * * *", "0 * * * *"))
    assert doc.due(at=T0 + 1) == []  # the change is read, from its next slot
    assert doc.states()["Tick"].next_due == T0 - 30 + 3600
    assert doc.due(at=T0 + 100) == []


def test_a_removed_task_that_comes_back_starts_at_its_next_slot(make_docroot):
    root = make_docroot(MINUTE_TASK)
    doc = Docroot(root)
    doc.due(at=T0)
    write(root / "__tasks__.py", "from reqcron import Task\n")
    assert doc.due(at=T0 + 1) == [] and "Tick" not in doc.catalog().tasks
    write(root / "__tasks__.py", MINUTE_TASK)
    assert doc.due(at=T0 + 3600) == []  # not a stale slot from before it was removed


def test_every_without_anchor_counts_from_first_seen_in_every_process(make_docroot):
    root = make_docroot("from reqcron import Task\nclass Beat(Task):\n    every = 7\n")
    one, two = Docroot(root), Docroot(root)
    one.due(at=T0)
    assert two.due(at=T0 + 3) == [] and two.states()["Beat"].next_due == T0 + 7
    (claim,) = two.due(at=T0 + 7 * 100 + 1)
    assert claim.slot == T0 + 700


RACER = """
import json, sys
from reqcron import Docroot
from reqcron.records import Trigger
doc = Docroot(sys.argv[1])
start, step, count = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()
claimed = []
for i in range(count):
    for c in doc.due(trigger=Trigger.DUE, at=start + i * step):
        claimed.append([c.task, c.slot])
print(json.dumps(claimed))
"""


def test_eight_processes_racing_due_claim_each_slot_exactly_once(make_docroot, tmp_path):
    root = make_docroot(MINUTE_TASK + "class Fast(Task):\n    every = 10\n")
    Docroot(root).due(at=T0)  # both tasks seen at T0
    script = tmp_path / "racer.py"
    script.write_text(textwrap.dedent(RACER))
    slots = 300
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(root), str(T0 + 1), "10", str(slots * 6)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for proc in procs:  # release them together
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    import json

    claimed = [tuple(pair) for out in outputs for pair in json.loads(out)]
    assert len(claimed) == len(set(claimed)), "a slot was claimed twice"
    doc = Docroot(root)
    runs = doc.store.runs(limit=100000)
    minute = sorted(r.slot for r in runs if r.task == "Tick")
    fast = sorted(r.slot for r in runs if r.task == "Fast")
    assert minute == [T0 + 30 + 60 * i for i in range(len(minute))]  # none lost, none twice
    assert len(minute) >= slots - 1
    assert len(fast) == len(set(fast)) and len(fast) >= slots * 5
    assert len(claimed) == len(runs)


def test_a_docroot_timestamp_is_what_due_uses(make_docroot):
    doc = Docroot(make_docroot(MINUTE_TASK))
    doc.due(at=T0)
    nxt = doc.schedule_of("Tick").next_run(datetime.fromtimestamp(T0, UTC))
    assert nxt == datetime.fromtimestamp(T0, UTC) + timedelta(seconds=30)


OPENER = """
import sys
from pathlib import Path
from reqcron.store import SQLiteStore
sys.stdin.readline()
store = SQLiteStore(Path(sys.argv[1]), busy_timeout=0.1)
store.pulse()
store.runs("a")
"""


def test_many_processes_creating_the_state_at_once_all_succeed(tmp_path):
    for attempt in range(5):
        db = tmp_path / f"fresh{attempt}" / "state.db"
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(db)], stdin=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(8)]
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err


def test_a_file_broken_before_a_process_started_still_gets_its_slots_recorded(make_docroot):
    from conftest import reqcron_cmd, wait_for

    root = make_docroot("from reqcron import Task\nclass Tick(Task):\n    every = 1\n")
    Docroot(root).states()  # seen while the file was good
    write(root / "__tasks__.py", "from reqcron import Task\nclass Tick(Task):\n    every = 1\n"
          "    def run(self)\n")
    doc = Docroot(root)  # a new process: it never saw the file whole
    assert doc.load_errors() and "Tick" in doc.catalog().tasks  # its last good definition
    wait_for(lambda: doc.store.states()["Tick"].next_due <= time.time(), message="a due slot")
    proc = reqcron_cmd("due", str(root), "--wait")  # e.g. the crontab fallback
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (run,) = doc.store.runs("Tick")
    assert run.status == "failed" and "__tasks__.py:4: SyntaxError" in run.error
    assert run.slot is not None and run.trigger == "due"
    doc.close()


def test_a_task_removed_while_no_process_watched_is_not_claimed_later(make_docroot):
    root = make_docroot("from reqcron import Task\nclass Tick(Task):\n    every = 1\n"
                        "class Keep(Task):\n    every = 3600\n")
    Docroot(root).due(at=T0)
    write(root / "__tasks__.py", "from reqcron import Task\nclass Keep(Task):\n    every = 3600\n")
    Docroot(root).states()  # the next process to read it sees Tick gone
    write(root / "__tasks__.py", "broken(\n")
    assert Docroot(root).due(at=T0 + 100) == []


def test_a_broken_reqcron_toml_records_due_slots_as_failed_with_its_error(make_docroot):
    root = make_docroot(MINUTE_TASK, "[reqcron]\n")
    doc = Docroot(root)
    doc.due(at=T0)
    toml = (root / "reqcron.toml").read_text()
    write(root / "reqcron.toml", toml + "max_processes = 0\n")
    assert doc.due(at=T0 + 31) == []  # no process that would die on the file
    (run,) = doc.history("Tick")
    assert run.status == "failed" and run.error.startswith("not run: reqcron.toml does not load")
    assert "max_processes" in run.error
    write(root / "reqcron.toml", toml)
    (claim,) = doc.due(at=T0 + 91)
    assert claim.task == "Tick"
