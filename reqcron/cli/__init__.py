"""The command line: ``reqcron`` and ``runtask`` (main.py), the subcommands (commands.py)."""

from .main import main, runtask_main

__all__ = ["main", "runtask_main"]
