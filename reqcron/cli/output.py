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
