"""`reqcron calls`, `cancel` and `retry`: the commands about the deferred-call queue."""

from __future__ import annotations

import sys

from .. import report, times
from ..engine import registry
from ..errors import ExitCode
from ..records import Status
from .output import emit, table

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from ..engine.docroot import Docroot


def add_call_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add calls, cancel and retry to the parser build_parser() makes."""
    calls = command("calls", cmd_calls, "the deferred calls, newest first", json_flag=True)
    calls.add_argument("--status", action="append", choices=[s.value for s in Status],
                       metavar="S", help="only calls in this status (again for more): "
                       "queued, running, ok, failed, timeout, lost, cancelled")
    calls.add_argument("--limit", type=int, default=50, metavar="N")
    cancel = command("cancel", cmd_cancel, "cancel a queued deferred call: it never runs")
    cancel.add_argument("id", type=int, metavar="ID")
    retry = command("retry", cmd_retry, "queue a deferred call that ended failed, timeout or "
                    "lost (or was cancelled) again, due now")
    retry.add_argument("id", type=int, metavar="ID")


def _open(args: argparse.Namespace) -> Docroot:
    return registry.engine(args.docroot, busy_timeout=registry.BACKGROUND_BUSY_TIMEOUT,
                           log_load_errors=False)


def cmd_calls(args: argparse.Namespace) -> int:
    from ..engine.stored_calls import label

    doc = _open(args)
    doc.reap()  # a call whose process died shows as what it is
    calls = doc.calls(tuple(args.status or ()), max(1, args.limit))
    zone = doc.zone
    if args.json:
        emit([report.run_dict(r, zone) for r in calls])
        return ExitCode.OK
    rows = [[str(r.id), label(r), r.status, times.local(r.due, zone) if r.due else "-",
             str(r.attempts), report.shorten(report.first_error_line(r) or "", 60)]
            for r in calls]
    sys.stdout.write(table(rows, ["CALL", "FUNCTION", "STATUS", "DUE", "ATTEMPTS", "ERROR"])
                     if rows else "no deferred calls\n")
    return ExitCode.OK


def cmd_cancel(args: argparse.Namespace) -> int:
    run = _open(args).cancel_call(args.id)
    sys.stdout.write(f"call {run.id} cancelled: it will not run\n")
    return ExitCode.OK


def cmd_retry(args: argparse.Namespace) -> int:
    run = _open(args).retry_call(args.id)
    sys.stdout.write(f"call {run.id} queued again (attempt {run.attempts + 1})\n")
    return ExitCode.OK
