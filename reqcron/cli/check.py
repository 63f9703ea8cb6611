"""`reqcron check`: load the files, look at the state and the task interpreter, report."""

from __future__ import annotations

import sys

from ..engine import registry
from ..errors import ExitCode

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable


def cmd_check(args: argparse.Namespace) -> int:
    """Errors (exit 2): files that do not load, an unusable state or interpreter.
    Warnings (exit 1): disagreements that lose nothing yet."""
    from ..engine.catalog_sync import read_failures_again

    read_failures_again()  # a read that failed is tried now, not after its back-off
    doc = registry.engine(args.docroot, busy_timeout=registry.BACKGROUND_BUSY_TIMEOUT,
                          log_load_errors=False)
    interpreter = _interpreter_check(doc.settings.python)  # runs beside the other checks
    errors = doc.state_problems()
    warnings: list[str] = []
    if not errors:  # the tasks are read through the state
        errors += [str(e) for e in doc.load_errors()]
        warnings += doc.warnings()
    errors += interpreter()
    for error in errors:
        sys.stderr.write(f"reqcron: {error}\n")
    for warning in warnings:
        sys.stderr.write(f"reqcron: warning: {warning}\n")
    if errors:
        return ExitCode.USAGE
    count = len(doc.catalog().tasks)
    sys.stdout.write(f"{count} task{'' if count == 1 else 's'} load{'s' if count == 1 else ''}"
                     f" cleanly from {doc.path}; "
                     f"state at {doc.state_location} is usable\n")
    return ExitCode.FAILED if warnings else ExitCode.OK


def _interpreter_check(python: str) -> Callable[[], list[str]]:
    """Start checking that the task interpreter imports reqcron; return what waits for it."""
    import subprocess

    try:
        proc = subprocess.Popen([python, "-P", "-c", "import reqcron.runtask"], text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    except OSError as exc:
        failed = [f"the task interpreter {python} cannot be run: {exc}"]
        return lambda: failed

    def problems() -> list[str]:
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return [f"the task interpreter {python} did not import reqcron within 30 s"]
        if proc.returncode != 0:
            last = (err.strip().splitlines() or ["no message"])[-1]
            return [f"the task interpreter {python} cannot import reqcron: {last}"]
        return []

    return problems
