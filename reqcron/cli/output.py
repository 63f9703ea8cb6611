"""How the commands print: JSON for machines, aligned columns for people."""

from __future__ import annotations

import json
import sys
from typing import Any


def emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def crontab_escaped(line: str) -> str:
    """``line`` as crontab(5) must hold it: each ``%`` written ``\\%``.

    cron ends a command at its first unescaped ``%`` (the rest becomes the
    command's stdin), so a DOCROOT or interpreter path with a ``%`` would
    run a cut-off command; cron turns ``\\%`` back into ``%`` before the
    shell sees it, inside quotes too.
    """
    return line.replace("%", "\\%")
