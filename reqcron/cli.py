"""The command-line surfaces: ``runtask`` and ``reqcron``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .errors import ReqCronError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one sentence and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _guarded(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; turn reqcron's errors into one sentence on stderr and exit 2."""
    from .runner import NotRun

    try:
        return body()
    except NotRun as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return exc.exit_code
    except ReqCronError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("REQCRON_DEBUG"):
            raise
        sys.stderr.write(
            f"{prog}: internal error: {type(exc).__name__}: {exc} "
            "(set REQCRON_DEBUG=1 for the traceback)\n"
        )
        return 1


def runtask_main(argv: Sequence[str] | None = None) -> int:
    """``runtask DOCROOT TASKNAME``: run one task now, in the foreground."""
    parser = _Parser(prog="runtask", description="Run one task of a DOCROOT now.")
    parser.add_argument("docroot", metavar="DOCROOT")
    parser.add_argument("task", metavar="TASKNAME")
    # A run that Docroot.due() claimed; internal, used by spawned processes.
    parser.add_argument("--run-id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return _guarded("runtask", lambda: _run(args.docroot, args.task, args.run_id))


def _run(docroot_path: str, name: str, run_id: int | None) -> int:
    from .docroot import Docroot

    logging.basicConfig(level=logging.WARNING, format="runtask: %(message)s")
    docroot = Docroot(docroot_path)
    try:
        return docroot.run(name, run_id=run_id)
    finally:
        docroot.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``reqcron``: the administrator's command."""
    from .commands import build_parser

    parser = build_parser(_Parser)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return _guarded("reqcron", lambda: handler(args))
