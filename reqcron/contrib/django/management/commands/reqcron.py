"""``python manage.py reqcron COMMAND [ARGS]``: ``reqcron COMMAND REQCRON_DOCROOT [ARGS]``.

The words go to reqcron's own parser (cli/main.py), with the project's
DOCROOT put where it takes one: the same output and exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError

from reqcron.contrib.django.conf import docroot

#: Options manage.py reads itself, for every command (ManagementUtility).
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def reqcron_argv(words: Sequence[str], root: str) -> list[str]:
    """``list --json`` -> ``list ROOT --json``; ``state reset`` -> ``state reset ROOT``."""
    words = list(words)
    if not words or words[0].startswith("-"):
        return words  # --help, --version
    at = 2 if words[0] == "state" and len(words) > 1 and not words[1].startswith("-") else 1
    return [*words[:at], root, *words[at:]]


def _without_django_options(words: Sequence[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in _DJANGO_OPTIONS:
            skip = True
        elif not word.startswith(tuple(o + "=" for o in _DJANGO_OPTIONS)):
            kept.append(word)
    return kept


def run(words: Sequence[str]) -> int:
    """Run ``reqcron`` with ``words`` for the project's DOCROOT; return its exit code."""
    from reqcron.cli.main import main

    try:
        return int(main(reqcron_argv(words, docroot())))
    except SystemExit as exc:  # argparse: --help, a usage error
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2


class Command(BaseCommand):  # type: ignore[misc]
    help = ("Run a reqcron command (list, history, check, due, run, enable, disable, explain, "
            "crontab, state ...) for REQCRON_DOCROOT: `manage.py reqcron list`.")
    # reqcron check reports problems itself, with its own exit codes.
    requires_system_checks: list[str] = []

    def run_from_argv(self, argv: list[str]) -> NoReturn:
        """``manage.py reqcron …``: every word after it is reqcron's, and so is the exit code."""
        from django.db import connections

        try:
            code = run(_without_django_options(argv[2:]))
        finally:
            connections.close_all()
        sys.stdout.flush()
        sys.exit(code)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS]")

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command("reqcron", "list")``: output to the command's stdout and stderr."""
        with contextlib.redirect_stdout(self.stdout), contextlib.redirect_stderr(self.stderr):
            code = run([*args, *options.get("words", [])])
        if code:
            raise CommandError(f"reqcron exited with code {code}", returncode=code)
