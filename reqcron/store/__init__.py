"""The state store: the interface the engine talks to, and its implementations.

``Store`` (base.py) is what the engine needs.  ``SQLStore`` (sql_store.py)
implements it once over the statements of sql.py; ``SQLiteStore``
(sqlite.py) keeps it in one SQLite file for the processes of one host,
``PostgresStore`` (postgres.py, its connection and locks beside it) in
PostgreSQL for every host of a site.  They differ only where their
databases do: parameter style, locks, SKIP LOCKED, connections.
"""

from __future__ import annotations

from .base import CLOCK_KEY, REMOVED, Attempt, CatalogRow, Lock, Pulse, Store, TaskSync
from .sqlite import SQLiteStore

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "CLOCK_KEY", "REMOVED", "Attempt", "CatalogRow", "Lock", "Pulse", "SQLiteStore", "Store",
    "TaskSync", "open_store",
]


def open_store(settings: Settings, busy_timeout: float = 5.0) -> Store:
    """The store ``settings`` name: PostgreSQL for a ``state`` URL, else SQLite in state_dir."""
    if settings.state:
        from .postgres import PostgresStore  # psycopg only where it is used

        assert settings.site is not None  # config requires it with a URL
        return PostgresStore(settings.state, settings.site, busy_timeout=busy_timeout)
    return SQLiteStore(settings.state_dir / "state.db", busy_timeout)
