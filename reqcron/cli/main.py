"""The command-line entry points: ``runtask`` and ``reqcron``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from ..errors import ExitCode, ReqCronError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    import argparse


def _guarded(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; turn reqcron's errors into one sentence on stderr and exit 2."""
    from ..errors import NotRun

    stop_logging = _log_as(prog)
    try:
        return body()
    except NotRun as exc:
        _say(prog, str(exc))
        return exc.exit_code
    except ReqCronError as exc:
        _say(prog, str(exc))
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if os.environ.get("REQCRON_DEBUG"):
            raise
        _say(prog, f"internal error: {type(exc).__name__}: {exc} "
                   "(set REQCRON_DEBUG=1 for the traceback)")
        return ExitCode.FAILED
    finally:
        stop_logging()


def _say(prog: str, message: str) -> None:
    """Write ``message`` to stderr as one line of command ``prog``: ``prog: message``."""
    # A message of reqcron's own may start with the prefix already (log lines do).
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    sys.stderr.write(f"{prog}: {text.removeprefix('reqcron: ')}\n")


def _log_as(prog: str) -> Callable[[], None]:
    """Print what the command logs (WARNING and up) as its errors are printed: one line,
    ``prog: ``.  Return what undoes it.  A process that logs somewhere already (a
    manage.py command in Django's) keeps its own handlers, and basicConfig() in the
    command's own code, which only configures a process that has none, is passed by."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return lambda: None

    class Line(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                _say(prog, record.getMessage())
            except Exception:
                self.handleError(record)

    handler = Line(logging.WARNING)
    root.addHandler(handler)
    return lambda: root.removeHandler(handler)


RUNTASK_USAGE = "usage: runtask [--if-due] DOCROOT TASKNAME"
RUNTASK_HELP = """
Run one task of a DOCROOT now, in the foreground, and record the run.

  --if-due  run only if the task's scheduled slot is due and no other trigger
            (a request, `reqcron due`) has started it; else exit 0 quietly.
            For crontab lines: each slot then runs once, whoever comes first.
"""


def runtask_main(argv: Sequence[str] | None = None) -> int:
    """``runtask DOCROOT TASKNAME``: run one task now, in the foreground."""
    # Parsed by hand: argparse (and the shutil and locale it pulls in) would
    # cost every task process ~4 ms for two positional arguments.
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(RUNTASK_USAGE + "\n" + RUNTASK_HELP)
        return ExitCode.OK
    if len(args) == 2 and args[0] == "--calls":
        # Run the DOCROOT's queued deferred calls; internal, used by spawned processes.
        return _guarded("runtask", lambda: _drain(args[1]))
    run_id = None
    if len(args) == 4 and args[0] == "--run-id" and args[1].isdigit():
        # A run that Docroot.due() claimed; internal, used by spawned processes.
        run_id = int(args[1])
        args = args[2:]
    if_due = "--if-due" in args
    args = [a for a in args if a != "--if-due"]
    if len(args) != 2 or any(a.startswith("-") for a in args):
        _say("runtask", f"expected DOCROOT and TASKNAME ({RUNTASK_USAGE})")
        return ExitCode.USAGE
    docroot, name = args

    def body() -> int:
        from ..run.runner import run_command

        return run_command(docroot, name, run_id=run_id, if_due=if_due)

    return _guarded("runtask", body)


def _drain(docroot: str) -> int:
    from ..calls.drain import drain_command

    return drain_command(docroot)


def main(argv: Sequence[str] | None = None) -> int:
    """``reqcron``: the administrator's command."""
    from .commands import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return _guarded("reqcron", lambda: handler(args))
    finally:
        from ..engine import registry

        registry.close_all()
