"""The ``reqcron`` subcommands, each a thin layer over Docroot."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from .cli import EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one sentence and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser_class = _Parser
    parser = parser_class(prog="reqcron", description="See and steer a DOCROOT's tasks.")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=parser_class
    )
    run = sub.add_parser("run", help="run a task now, like runtask")
    run.add_argument("docroot", metavar="DOCROOT")
    run.add_argument("task", metavar="TASK")
    run.set_defaults(handler=cmd_run)
    return parser


def cmd_run(args: Any) -> int:
    from .cli import _run

    return _run(args.docroot, args.task, None)
