"""The watcher wakes for changes to __tasks__.py / reqcron.toml, never for reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from reqcron.web.watch import Watcher

QUIET = 1.0  # s; longer than watchdog's inotify delay (0.5 s) for a read's events to arrive


class Calls:
    """Records when on_change was called, from the observer's thread."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, path: str) -> None:
        with self.lock:
            self.times.append(time.monotonic())

    def count(self) -> int:
        with self.lock:
            return len(self.times)

    def quiet_for(self, seconds: float) -> bool:
        with self.lock:
            last = self.times[-1] if self.times else 0.0
        return time.monotonic() - last > seconds

    def clear(self) -> None:
        with self.lock:
            self.times.clear()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Calls]]:
    """A DOCROOT with both watched files, watched by a live Watcher that has settled."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "__tasks__.py").write_text("# tasks\n")
    (root / "reqcron.toml").write_text("[reqcron]\n")
    calls = Calls()
    watcher = Watcher(calls)
    try:
        assert watcher.watch(str(root))
        # Positive control first: the watcher is live and sees a real write...
        (root / "__tasks__.py").write_text("# tasks, primed\n")
        wait_for(calls.count, timeout=10, message="the priming write to be seen")
        # ...and every event of that write has been delivered.
        wait_for(lambda: calls.quiet_for(0.7), timeout=10, message="the watcher to settle")
        calls.clear()
        yield root, calls
    finally:
        watcher.stop()


def test_reading_the_tasks_file_does_not_wake_the_watcher(watched):
    root, calls = watched
    tasks = root / "__tasks__.py"
    for _ in range(3):
        with open(tasks, encoding="utf-8") as fh:
            fh.read()
        assert (root / "reqcron.toml").read_text() == "[reqcron]\n"
        subprocess.run([shutil.which("cat") or "cat", str(tasks)], check=True, capture_output=True)
    time.sleep(QUIET)  # a negative needs a window: any read's events have arrived by now
    written_at = time.monotonic()
    tasks.write_text("# tasks, changed\n")
    wait_for(calls.count, timeout=10, message="the write to be seen")
    before = [t for t in calls.times if t < written_at]
    assert before == [], f"{len(before)} wake-ups from reads alone"


def test_a_chmod_wakes_the_watcher(watched):
    # A mode change matters: a world-writable __tasks__.py must be refused.
    root, calls = watched
    os.chmod(root / "__tasks__.py", 0o666)
    wait_for(calls.count, timeout=10, message="the chmod to be seen")


def test_touching_the_tasks_file_wakes_the_watcher(watched):
    root, calls = watched
    os.utime(root / "__tasks__.py")
    wait_for(calls.count, timeout=10, message="the touch to be seen")


def test_an_editor_save_by_rename_wakes_the_watcher(watched):
    root, calls = watched
    temp = root / ".reqcron.toml.swp"
    temp.write_text("[reqcron]\nhistory = 5\n")
    os.replace(temp, root / "reqcron.toml")
    wait_for(calls.count, timeout=10, message="the rename to be seen")


def test_deleting_the_tasks_file_wakes_the_watcher(watched):
    root, calls = watched
    (root / "__tasks__.py").unlink()
    wait_for(calls.count, timeout=10, message="the delete to be seen")


def test_changes_to_other_files_do_not_wake_the_watcher(watched):
    root, calls = watched
    (root / "index.html").write_text("<p>hello</p>")
    (root / "index.html").unlink()
    time.sleep(QUIET)
    assert calls.count() == 0
