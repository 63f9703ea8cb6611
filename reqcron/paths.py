"""Placeholder until the config branch lands: private directories."""

from __future__ import annotations

from pathlib import Path


def ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def check_tasks_safety(docroot: Path) -> str | None:
    for p in (docroot, docroot / "__tasks__.py"):
        if p.stat().st_mode & 0o002:
            return f"{p} is world-writable: refused, as cron refuses a crontab others can write"
    return None


def owner_warning(docroot: Path) -> str | None:
    return None
