"""The state store: the interface the engine talks to, and its implementations.

``Store`` (base.py) is what the engine needs; ``SQLiteStore`` (sqlite.py)
keeps it in one SQLite file for the processes of one host.
"""

from __future__ import annotations

from .base import REMOVED, CatalogRow, Pulse, Store, TaskSync
from .sqlite import SQLiteStore

__all__ = ["REMOVED", "CatalogRow", "Pulse", "SQLiteStore", "Store", "TaskSync"]
