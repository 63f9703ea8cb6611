"""``reqcron state copy``: a DOCROOT's SQLite state into a PostgreSQL one, for several hosts."""

from __future__ import annotations

from ..errors import StateError
from ..store import SQLiteStore

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..config import Settings


def copy_state(settings: Settings, url: str, site: str | None,
               busy_timeout: float) -> tuple[int, int]:
    """Copy the SQLite state ``settings`` name into ``url`` as ``site``; return (tasks, runs).

    The source is the SQLite state the DOCROOT uses now, so copy before
    setting ``site`` and ``state`` in reqcron.toml (``site`` there moves a
    SQLite state).  The target site must be empty.
    """
    from ..store.postgres import PostgresStore, redact

    site = site or settings.site
    if not site:
        raise StateError(redact(url), "name the site it becomes there: --site NAME")
    source = SQLiteStore(settings.state_dir / "state.db", busy_timeout)
    target = PostgresStore(url, site)
    try:
        dump = source.dump()
        target.restore(dump)
    finally:
        source.close()
        target.close()
    return len(dump.tasks), len(dump.runs)
