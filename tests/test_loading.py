"""Loading a DOCROOT: __tasks__.py registration rules, reqcron.toml, errors with file and line."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import write

from reqcron import ConfigError, DocrootError, TaskLookupError


def test_tasks_register_by_the_spec_rules(make_docroot, docroot):
    root = make_docroot("""
        from reqcron import Task

        class Base(Task):
            abstract = True

        class Cleanup(Base):          # a subclass of an abstract base is registered
            cron = "0 3 * * *"

        class Renamed(Task):
            name = "nightly-report"
            cron = "@daily"

        Alias = Cleanup               # the same class twice is one task
        NOT_A_TASK = 42
    """)
    doc = docroot(root)
    assert sorted(doc.tasks()) == ["Cleanup", "nightly-report"]
    assert doc.load_errors() == []


def test_two_docroots_in_one_process_do_not_collide(make_docroot, docroot):
    one = docroot(
        make_docroot("from reqcron import Task\nclass A(Task):\n    cron = '0 1 * * *'\n")
    )
    two = docroot(
        make_docroot("from reqcron import Task\nclass A(Task):\n    cron = '0 2 * * *'\n")
    )
    assert one.tasks()["A"].compiled_schedule().signature.startswith("cron:0 1 ")
    assert two.tasks()["A"].compiled_schedule().signature.startswith("cron:0 2 ")
    assert type(one.tasks()["A"]).__module__ != type(two.tasks()["A"]).__module__


def test_a_reload_sees_new_classes_not_stale_ones(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    cron = '0 1 * * *'\n")
    doc = docroot(root)
    old = type(doc.tasks()["A"])
    assert sorted(doc.catalog().tasks) == ["A"]
    write(root / "__tasks__.py", "from reqcron import Task\nclass B(Task):\n    pass\n")
    assert sorted(doc.tasks()) == ["B"]
    assert type(doc.tasks()["B"]) is not old
    assert sorted(doc.catalog().tasks) == ["B"]  # the engine read the change too


def test_loading_writes_no_bytecode_into_the_docroot(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    pass\n")
    docroot(root).tasks()
    assert sorted(p.name for p in root.iterdir()) == ["__tasks__.py"]


def test_tasks_can_import_modules_beside_them(make_docroot, docroot):
    root = make_docroot(
        "from helpers import WHEN\nfrom reqcron import Task\nclass A(Task):\n    cron = WHEN\n"
    )
    (root / "helpers.py").write_text("WHEN = '5 4 * * *'\n")
    assert docroot(root).tasks()["A"].cron == "5 4 * * *"


def test_a_syntax_error_is_reported_with_file_and_line(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\n\nclass A(Task)\n    pass\n")
    errors = docroot(root).load_errors()
    assert len(errors) == 1
    assert str(errors[0]).startswith(f"{root / '__tasks__.py'}:3: SyntaxError")


def test_an_import_error_is_reported_with_file_and_line(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\nimport no_such_module_here\n")
    (error,) = docroot(root).load_errors()
    assert error.line == 2
    assert "ModuleNotFoundError" in error.message and "no_such_module_here" in error.message


def test_a_broken_reload_keeps_the_last_good_tasks(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    cron = '0 1 * * *'\n")
    doc = docroot(root)
    assert list(doc.catalog().tasks) == ["A"]
    write(root / "__tasks__.py", "from reqcron import Task\nclass A(Task:\n")
    assert list(doc.catalog().tasks) == ["A"]
    assert "SyntaxError" in str(doc.load_errors()[0])
    assert "SyntaxError" in doc.catalog().error_of("A")


def test_a_bad_task_does_not_stop_the_others(make_docroot, docroot):
    root = make_docroot("""
        from datetime import datetime
        from reqcron import Task

        class Good(Task):
            cron = "0 1 * * *"

        class BadCron(Task):
            cron = "99 * * * *"

        class Naive(Task):
            at = datetime(2030, 1, 1)

        class Exploding(Task):
            def __init__(self):
                Task.__init__(self)
                raise RuntimeError("no")

        class Twice(Task):
            cron = "0 1 * * *"
            every = 60

        class Dup1(Task):
            name = "dup"

        class Dup2(Task):
            name = "dup"

        class Hostile(Task):
            name = "../etc/passwd"
    """)
    doc = docroot(root)
    assert list(doc.tasks()) == ["Good"]
    by_task = {e.task: str(e) for e in doc.load_errors()}
    assert set(by_task) == {"BadCron", "Naive", "Exploding", "Twice", "dup", "../etc/passwd"}
    assert "invalid schedule" in by_task["BadCron"]
    assert "naive datetime" in by_task["Naive"]
    assert "RuntimeError: no" in by_task["Exploding"]
    assert "used by Dup1 and Dup2" in by_task["dup"]
    for text in by_task.values():
        assert text.startswith(str(root / "__tasks__.py") + ":")


def test_a_missing_docroot_is_one_clear_error(tmp_path, docroot):
    with pytest.raises(DocrootError, match="does not exist"):
        docroot(tmp_path / "nope")


def test_unknown_task_lists_the_known_ones(make_docroot, docroot):
    doc = docroot(make_docroot("from reqcron import Task\nclass A(Task):\n    pass\n"))
    with pytest.raises(TaskLookupError, match="known tasks: A"):
        doc.info("os")


def test_settings_come_from_reqcron_toml(make_docroot, tmp_path, docroot):
    root = make_docroot(
        "",
        """
        [reqcron]
        timezone = "Europe/Amsterdam"
        state_dir = "%s"
        history = 7

        [config]
        smtp_host = "localhost"
    """
        % (tmp_path / "mystate"),
    )
    doc = docroot(root)
    assert str(doc.zone) == "Europe/Amsterdam"
    assert doc.settings.state_dir == tmp_path / "mystate"
    assert doc.settings.history == 7
    assert doc.settings.config["smtp_host"] == "localhost"
    with pytest.raises(TypeError):
        doc.settings.config["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[reqcron]\ntimezone = "Nowhere/Here"\n', "unknown time zone"),
        ("[reqcron]\nhistory = 0\n", "history must be"),
        ("[reqcron]\nbogus = 1\n", "unknown setting 'bogus'"),
        ("[other]\n", "unknown table"),
        ("[reqcron]\n\ntimezone = \n", ":3: invalid TOML"),
    ],
)
def test_bad_settings_give_one_clear_error(make_docroot, toml, message, docroot):
    with pytest.raises(ConfigError, match=message) as info:
        docroot(make_docroot("", toml))
    assert "reqcron.toml" in str(info.value)


def test_state_lives_outside_the_docroot_and_is_private(make_docroot, state_home, docroot):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    cron = '0 1 * * *'\n")
    doc = docroot(root)
    doc.states()
    db = doc.settings.state_dir / "state.db"
    assert db.exists()
    assert state_home in db.parents and root not in db.parents
    assert stat.S_IMODE(os.stat(doc.settings.state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_a_schedule_error_names_the_line_at_fault(make_docroot, docroot):
    root = make_docroot("""\
        from reqcron import Task

        class A(Task):
            timeout = 5
            cron = "*/10 * * *"

            def run(self):
                pass

        class B(Task):
            def __init__(self):
                Task.__init__(self)
                self.schedule(hour=25)
        """)
    errors = {e.task: e.line for e in docroot(root).load_errors()}
    assert errors == {"A": 5, "B": 13}
