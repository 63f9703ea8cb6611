"""The state store: the interface the engine talks to, and its implementations.

``Store`` (base.py) is what the engine needs; ``SQLiteStore`` (sqlite.py)
keeps it in one SQLite file for the processes of one host.
"""

from __future__ import annotations

from .base import CLOCK_KEY, REMOVED, CatalogRow, Lock, Pulse, Store, TaskSync
from .sqlite import SQLiteStore

__all__ = [
    "CLOCK_KEY", "REMOVED", "CatalogRow", "Lock", "Pulse", "SQLiteStore", "Store", "TaskSync",
]
