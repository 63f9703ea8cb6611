"""The `reqcron` command: every subcommand, its output and exit codes, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import popen, reqcron_cmd, wait_for

TASKS = """
from datetime import timedelta
from reqcron import Task

class Nightly(Task):
    cron = "30 2 * * *"
    timezone = "Europe/Amsterdam"

class Hourly(Task):
    def __init__(self):
        Task.__init__(self)
        self.schedule(minute=15)

class Beat(Task):
    every = timedelta(seconds=1)
    def run(self):
        print("beat")

class Broken(Task):
    def run(self):
        raise RuntimeError("<b>boom</b> & more")

class Reindex(Task):
    def run(self):
        return "done"
"""


@pytest.fixture
def site(make_docroot):
    return make_docroot(TASKS, '[reqcron]\ntimezone = "UTC"\n')


def one_sentence(proc):
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    return proc.stderr.strip()


def test_list_shows_schedules_next_runs_and_where_state_lives(site):
    proc = reqcron_cmd("list", str(site))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.splitlines()[0].split() == ["TASK", "SCHEDULE", "NEXT", "RUN", "LAST", "RUN",
                                           "STATE"]
    assert "every day at 02:30" in out and "every hour at :15" in out
    assert "every second" in out and "on demand only" in out
    assert "state: " in out and str(site) not in out.split("state: ")[1]


def test_list_json_has_a_stable_shape(site):
    data = json.loads(reqcron_cmd("list", str(site), "--json").stdout)
    assert set(data) == {"docroot", "state", "timezone", "now", "tasks", "load_errors", "warnings",
                         "history", "calls", "paused"}
    assert data["calls"] == {"queued": 0, "running": 0}
    nightly = next(t for t in data["tasks"] if t["name"] == "Nightly")
    assert set(nightly) == {"name", "schedule", "kind", "timezone", "enabled", "next_run",
                            "running", "pending", "last_run", "marks", "error", "fix",
                            "catch_up", "between", "even_when_paused"}
    assert nightly["timezone"] == "Europe/Amsterdam"
    assert nightly["next_run"].endswith("+00:00")  # ISO 8601 with offset, DOCROOT's zone


def test_run_history_and_one_run_in_full(site):
    assert reqcron_cmd("run", str(site), "Broken").returncode == 1
    assert reqcron_cmd("run", str(site), "Reindex").returncode == 0
    hist = reqcron_cmd("history", str(site))
    assert hist.returncode == 0
    assert "RuntimeError: <b>boom</b> & more" in hist.stdout
    runs = json.loads(reqcron_cmd("history", str(site), "Broken", "--json").stdout)
    assert [r["status"] for r in runs] == ["failed"]
    full = reqcron_cmd("history", str(site), "--run", str(runs[0]["id"]))
    assert "--- traceback ---" in full.stdout and 'raise RuntimeError' in full.stdout
    listed = json.loads(reqcron_cmd("list", str(site), "--json").stdout)
    broken = next(t for t in listed["tasks"] if t["name"] == "Broken")
    assert broken["marks"] == ["failing"]
    assert reqcron_cmd("list", str(site)).returncode == 1  # a failure is reported


def test_a_disabled_task_is_listed_and_not_run_by_hand_or_run_now(site, docroot):
    # Every trigger of a schedule: tests/test_middleware.py's disable test.
    assert reqcron_cmd("disable", str(site), "Reindex").returncode == 0
    from conftest import runtask

    proc = runtask(site, "Reindex")
    assert proc.returncode == 75
    assert "DISABLED" in reqcron_cmd("list", str(site)).stdout
    doc = docroot(site)
    doc.run_now("Reindex")
    # Beat (every second) may be due too on a slow machine: only Reindex is looked at.
    (claim,) = [c for c in doc.due() if c.task == "Reindex"]
    spawned = [sys.executable, "-m", "reqcron.runtask", "--run-id", str(claim.run_id),
               str(site), "Reindex"]  # what the server starts for the claim
    assert subprocess.run(spawned, capture_output=True).returncode == 75
    run = doc.get_run(claim.run_id)
    assert (run.status, run.error) == ("skipped", "disabled")
    assert reqcron_cmd("enable", str(site), "Reindex").returncode == 0
    assert runtask(site, "Reindex").returncode == 0


def test_due_wait_starts_due_tasks_and_returns_the_worst_code(site, docroot):
    doc = docroot(site)
    doc.run_now("Broken")
    doc.run_now("Reindex")
    proc = reqcron_cmd("due", str(site), "--wait")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "started Broken" in proc.stdout and "started Reindex" in proc.stdout
    statuses = {r.task: r.status for r in doc.history()}
    assert statuses["Broken"] == "failed" and statuses["Reindex"] == "ok"
    # The two asked for ran as run-now (a scheduled task of the site may come due meanwhile).
    assert all(r.trigger == "run_now" for r in doc.history() if r.task in ("Broken", "Reindex"))


RACER = """
import subprocess, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    subprocess.run([sys.executable, "-m", "reqcron", "due", sys.argv[1]],
                   stdout=subprocess.DEVNULL, check=True)
"""


def test_many_concurrent_due_calls_start_each_slot_once(make_docroot, tmp_path, docroot):
    root = make_docroot("from reqcron import Task\nclass Tick(Task):\n    every = 1\n")
    docroot(root).states()
    seconds = 5
    procs = [popen([sys.executable, "-c", RACER, str(root), str(seconds)])
             for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    doc = docroot(root)
    wait_for(lambda: not doc.store.runs("Tick", 1000, ("pending", "running")), timeout=20)
    runs = sorted(doc.store.runs("Tick", 1000), key=lambda r: r.slot)
    slots = [r.slot for r in runs]
    assert runs and len(slots) == len(set(slots))  # each slot claimed once
    # None lost between the first and the last: a run that came late stands for the slots
    # it coalesced (how many runs a busy machine managed in the window does not matter).
    assert sum(r.slots for r in runs) == round(slots[-1] - slots[0]) + runs[0].slots
    assert all(r.status == "ok" and r.trigger == "due" for r in runs)


def test_crontab_lines_are_valid_cron(site):
    from croniter import croniter

    proc = reqcron_cmd("crontab", str(site))
    assert proc.returncode == 0
    lines = [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    commands = []
    for line in lines:
        if line.startswith("CRON_TZ="):
            continue
        fields = line.split(None, 5)
        assert croniter.is_valid(" ".join(fields[:5])), line
        commands.append(fields[5])
    # Nightly is in Europe/Amsterdam, the system in UTC: cron checks each minute and
    # runtask --if-due starts it at its times (Debian's cron ignores CRON_TZ).
    assert f"* * * * * {sys.prefix}/bin/runtask --if-due {site} Nightly" in lines
    assert "CRON_TZ" not in proc.stdout
    assert "# Beat: every second: cron fires at most once a minute" in proc.stdout
    assert f"* * * * * {sys.prefix}/bin/runtask --if-due {site} Beat" in lines
    assert f"* * * * * {sys.prefix}/bin/reqcron due {site}" in proc.stdout


def test_crontab_takes_a_zone_by_any_of_its_names(make_docroot):
    # timezone = "UTC" in reqcron.toml, the system in Etc/UTC: one zone, so cron runs the
    # task at its own times rather than every minute.
    import os

    root = make_docroot("from reqcron import Task\nclass Nightly(Task):\n    cron = '30 2 * * *'\n",
                        '[reqcron]\ntimezone = "UTC"\n')
    proc = reqcron_cmd("crontab", str(root), env={**os.environ, "TZ": "Etc/UTC"})
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("30 2 * * * ") and line.endswith(" Nightly")
               for line in proc.stdout.splitlines()), proc.stdout


def as_cron_runs_it(command: str) -> str:
    """What cron(8) hands the shell for a crontab command field (Debian's cron and cronie
    alike): ``\\%`` becomes ``%``, and an unescaped ``%`` ends the command."""
    out: list[str] = []
    escaped = False
    for ch in command:
        if escaped:
            escaped = False
            if ch == "%":
                out[-1] = "%"
                continue
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            break
        out.append(ch)
    return "".join(out)


def test_crontab_lines_escape_every_percent_sign(make_docroot, tmp_path):
    root = make_docroot("""
        from datetime import timedelta
        from reqcron import Task

        class Nightly(Task):
            cron = "30 2 * * *"

        class Beat(Task):
            every = timedelta(minutes=5)
    """, name="100%site")
    # An interpreter path with a % too: the venv, reached through a link named so.
    venv = tmp_path / "venv%1"
    venv.symlink_to(sys.prefix)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "reqcron", "crontab", str(root)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # The task lines, and the commented-out `reqcron due` line meant to be uncommented.
    commands = [line.removeprefix("# ").split(None, 5)[5] for line in proc.stdout.splitlines()
                if not line.startswith("#") or " due " in line]
    assert len(commands) == 3, proc.stdout
    for command in commands:
        assert "venv\\%1/bin/" in command and "100\\%site" in command, command
        # Run as cron would: the whole command reaches the shell (a cut one fails).
        ran = subprocess.run(["sh", "-c", as_cron_runs_it(command)], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert ran.returncode == 0, (command, ran.stderr)


def test_explain_marks_daylight_saving_changes(site):
    proc = reqcron_cmd("explain", str(site), "Nightly", "--count", "400", "--json")
    data = json.loads(proc.stdout)
    assert data["schedule"] == "every day at 02:30"
    changes = [r for r in data["runs"] if r["dst_change"]]
    assert len(changes) >= 1 and all("UTC+0" in r["dst_change"] for r in changes)
    text = reqcron_cmd("explain", str(site), "Nightly", "--count", "3").stdout
    assert text.startswith("Nightly: every day at 02:30\n") and text.count("02:30:00") == 3


def test_check_passes_a_good_docroot(site):
    proc = reqcron_cmd("check", str(site))
    assert proc.returncode == 0 and "5 tasks load cleanly" in proc.stdout


@pytest.mark.parametrize(("tasks", "toml", "needle"), [
    ("from reqcron import Task\nclass A(Task)\n", None, "__tasks__.py:2: SyntaxError"),
    ("from reqcron import Task\nclass A(Task):\n    cron = '* * *'\n", None, "5 fields"),
    ("", "[reqcron]\ntimezone = 'Nowhere'\n", "unknown time zone"),
])
def test_check_reports_problems_and_exits_2(make_docroot, tasks, toml, needle):
    root = make_docroot(tasks, toml)
    proc = reqcron_cmd("check", str(root))
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_a_starved_task_is_marked_with_the_fixing_crontab_line(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\nclass Minutely(Task):\n    cron = '* * * * *'\n")
    doc = docroot(root)
    doc.due(at=time.time() - 3600)  # first seen an hour ago, never triggered since
    proc = reqcron_cmd("list", str(root))
    assert "STARVED" in proc.stdout and "Minutely is starved" in proc.stdout
    assert f"reqcron due {root}" in proc.stdout
    assert proc.returncode == 1


def test_the_fixing_crontab_line_is_printed_once_for_all_starved_tasks(make_docroot, docroot):
    root = make_docroot("""
        from reqcron import Task

        class A(Task):
            cron = "* * * * *"

        class B(Task):
            cron = "*/2 * * * *"
    """, name="50%off")
    docroot(root).due(at=time.time() - 3600)  # first seen an hour ago, never triggered since
    proc = reqcron_cmd("list", str(root))
    assert proc.returncode == 1
    assert proc.stdout.count("STARVED") == 2 and "A, B are starved" in proc.stdout
    assert proc.stdout.count("reqcron due") == 1  # one line starts both
    escaped = str(root).replace("%", "\\%")
    assert f"reqcron due {escaped}\n" in proc.stdout  # pasted into a crontab as it is


README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_state_list_shows_is_in_the_readme(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\nclass Minutely(Task):\n    cron = '* * * * *'\n")
    doc = docroot(root)
    doc.due(at=time.time() - 120)  # first seen two minutes ago
    assert doc.due()  # its slot claimed here, and no process started: pending
    proc = reqcron_cmd("list", str(root))
    state = proc.stdout.splitlines()[1].rsplit("  ", 1)[1].strip()
    assert "PENDING" in state, proc.stdout
    row = next(line for line in README.read_text().splitlines()
               if line.startswith("| `reqcron list"))
    assert all(word in row for word in state.split(", ")), (state, row)


@pytest.mark.parametrize("args", [
    ("list", "/no/such/docroot"),
    ("run", "{site}", "Nope"),
    ("enable", "{site}", "../etc"),
    ("history", "{site}", "--run", "999"),
    ("explain", "{site}", "Nope"),
    ("frobnicate",),
    ("history", "{site}", "--limit", "many"),
    ("history", "{site}", "--bogus"),
    ("state", "copy", "{site}", "mysql://db/shop"),
])
def test_bad_input_is_one_sentence_and_exit_2(site, args):
    proc = reqcron_cmd(*[a.format(site=site) for a in args])
    assert proc.returncode == 2
    assert one_sentence(proc).startswith("reqcron: ")


def test_every_error_of_reqcron_check_and_runtask_is_one_line_with_its_prefix(
        make_docroot, site):
    broken = make_docroot("from reqcron import Task\nclass A(Task)\n")
    checked = reqcron_cmd("check", str(broken))
    assert checked.returncode == 2 and "__tasks__.py:2: SyntaxError" in checked.stderr
    assert all(line.startswith("reqcron: ") for line in checked.stderr.splitlines())
    for args, code in [((), 2), (("/no/such/docroot", "A"), 2), ((str(site), "Nope"), 2),
                       ((str(broken), "A"), 2)]:
        proc = subprocess.run([sys.executable, "-m", "reqcron.runtask", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == code
        assert one_sentence(proc).startswith("runtask: ") and "reqcron:" not in proc.stderr


def test_what_a_run_logs_has_the_commands_prefix_alone(make_docroot):
    from realserver import free_port

    root = make_docroot(f"""
        from reqcron import Task

        class Pinged(Task):
            ping = "http://127.0.0.1:{free_port()}/"  # nothing listens: each ping fails
            def run(self):
                return "done"
    """)
    for command, prefix in ([[sys.executable, "-m", "reqcron.runtask"], "runtask: "],
                            [[sys.executable, "-m", "reqcron", "run"], "reqcron: "]):
        proc = subprocess.run([*command, str(root), "Pinged"], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 2 and all(f"{prefix}ping http://127.0.0.1:" in line
                                       for line in lines), proc.stderr
        assert all(line.startswith(prefix) and "reqcron: reqcron" not in line
                   and "runtask: reqcron" not in line for line in lines), proc.stderr


def test_a_missing_psycopg_names_the_state_by_its_url_without_the_password(make_docroot):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    pass\n",
                        '[reqcron]\nstate = "postgresql://reqcron:s3cret@db.invalid/shop"\n'
                        'site = "shop"\n')
    # As installed without the postgres extra: importing psycopg fails.
    without_psycopg = ("import sys; sys.modules['psycopg'] = None; "
                       "from reqcron.cli.main import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", without_psycopg, "list", str(root)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    line = one_sentence(proc)
    assert "state at postgresql://reqcron@db.invalid/shop (site shop) cannot be used" in line
    assert "pip install 'reqcron[postgres]'" in line and "s3cret" not in line


def test_a_broken_tasks_file_is_reported_by_list(make_docroot):
    root = make_docroot("from reqcron import Task\nimport nope_not_here\n")
    proc = reqcron_cmd("list", str(root))
    assert proc.returncode == 2
    assert "load error:" in proc.stdout and "nope_not_here" in proc.stdout


def test_state_reset_keeps_a_usable_state_unless_forced(site):
    assert reqcron_cmd("run", str(site), "Reindex").returncode == 0
    refused = reqcron_cmd("state", "reset", str(site))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert "ok" in reqcron_cmd("history", str(site)).stdout  # nothing lost
    forced = reqcron_cmd("state", "reset", str(site), "--force")
    assert forced.returncode == 0 and "the old state is kept at" in forced.stdout
    assert "no runs yet" in reqcron_cmd("history", str(site)).stdout


def test_version_is_shown():
    from reqcron import __version__

    proc = reqcron_cmd("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"reqcron {__version__}"
