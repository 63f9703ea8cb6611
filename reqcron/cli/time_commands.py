"""`reqcron pause`, `resume` and `replay`: the commands about the site's time."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from .. import times
from ..engine import registry
from ..errors import ExitCode, UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from ..engine.docroot import Docroot

_WHEN = "ISO 8601 with an offset, such as 2026-03-01T09:00:00+01:00"


def add_time_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add pause, resume and replay to the parser build_parser() makes."""
    pause = command("pause", cmd_pause, "pause every task of the site, on every host, until "
                    "resumed (tasks with even_when_paused go on)")
    pause.add_argument("--until", metavar="WHEN", type=when,
                       help=f"resume by itself then ({_WHEN})")
    command("resume", cmd_resume, "end the site's pause")
    replay = command("replay", cmd_replay, "run a task once for each of its slots in a past "
                     "range, oldest first, each with its own self.slot", task=True)
    replay.add_argument("--from", dest="start", metavar="WHEN", type=when, required=True,
                        help=f"the first slot's earliest time, inclusive ({_WHEN})")
    replay.add_argument("--to", dest="end", metavar="WHEN", type=when, required=True,
                        help="the last slot's latest time, inclusive")
    replay.add_argument("--force", action="store_true",
                        help="replay more slots than the task's history keeps")


def when(text: str) -> float:
    """An ISO 8601 time with an offset -> epoch seconds (argparse's error otherwise)."""
    import argparse

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: give {_WHEN}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset: give {_WHEN}")
    return moment.timestamp()


def _open(args: argparse.Namespace) -> Docroot:
    return registry.engine(args.docroot, busy_timeout=registry.BACKGROUND_BUSY_TIMEOUT,
                           log_load_errors=False)


def paused_line(paused: dict[str, Any]) -> str:
    """What `reqcron list` says of the site's pause (report.summary's "paused")."""
    until = f" until {paused['until']}" if paused["until"] else " until `reqcron resume`"
    return (f"\nPAUSED since {paused['since']}{until}: slots are recorded as skipped, "
            "but those of tasks with even_when_paused\n")


def cmd_pause(args: argparse.Namespace) -> int:
    doc = _open(args)
    pause = doc.pause(args.until)
    until = (f"until {times.local(pause.until, doc.zone)}" if pause.until is not None
             else "until `reqcron resume`")
    sys.stdout.write(f"{doc.path} paused {until}\n")
    return ExitCode.OK


def cmd_resume(args: argparse.Namespace) -> int:
    doc = _open(args)
    was = doc.paused()
    doc.resume()
    sys.stdout.write(f"{doc.path} resumed\n" if was else f"{doc.path} was not paused\n")
    return ExitCode.OK


def cmd_replay(args: argparse.Namespace) -> int:
    from ..engine.replay import claim_replay, slots_between
    from ..run.runner import run_task

    doc = _open(args)
    slots = slots_between(doc, args.task, args.start, args.end)
    history = doc.settings.history
    if len(slots) > history and not args.force:
        raise UsageError(f"that range holds {len(slots)} slots of {args.task!r}, more than its "
                         f"history keeps ({history}); narrow it, or add --force")
    if not slots:
        sys.stdout.write(f"no slot of {args.task} in that range\n")
        return ExitCode.OK
    codes: list[int] = []
    for slot in slots:
        sys.stdout.write(f"replaying {args.task} for {times.local(slot, doc.zone)}\n")
        sys.stdout.flush()
        try:
            codes.append(run_task(doc, args.task, run_id=claim_replay(doc, args.task, slot)))
        except UsageError:
            raise
        except Exception as exc:  # NotRun and its kin: this slot says why, the next goes on
            sys.stderr.write(f"reqcron: {exc}\n")
            codes.append(getattr(exc, "exit_code", ExitCode.FAILED))
    return ExitCode.worst(codes)
