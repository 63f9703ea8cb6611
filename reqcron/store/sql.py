"""The SQL both stores speak, written once, and what differs between their databases.

Statements are templates: ``{runs}``, ``{tasks}``, ``{meta}`` and ``{catalog}``
name the tables; ``{site}`` opens a WHERE clause on this store's rows (the
site's, in a state several sites share) and ``{site_col}``/``{site_val}``
add the site to an INSERT; ``{this_catalog}`` picks the one catalog row;
``{distinct}`` and ``{same}`` compare with NULL as a value.  Parameters are
named ``:x`` and bound from a dict; a ``Dialect`` turns a template into its
database's SQL and parameter style once, and keeps it.
"""

from __future__ import annotations

import re

from ..records import OPEN, RUN_COLUMNS, Run, TaskState

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, Protocol

    class Rows(Protocol):
        @property
        def rowcount(self) -> int: ...

        def fetchone(self) -> Any: ...

        def fetchall(self) -> list[Any]: ...

    class Executor(Protocol):
        def execute(self, query: str, params: dict[str, Any], /) -> Rows: ...


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class Dialect:
    """How one database spells the shared statements."""

    def __init__(self, *, prefix: str, site: bool, distinct: str, same: str, skip: str,
                 pyformat: bool, nul: bool):
        self._words = {
            "tasks": f"{prefix}tasks", "runs": f"{prefix}runs", "meta": f"{prefix}meta",
            "catalog": f"{prefix}catalog",
            "site": "site = :site AND " if site else "",
            "site_col": "site, " if site else "",
            "site_val": ":site, " if site else "",
            "this_catalog": "site = :site" if site else "id = 1",
            "distinct": distinct, "same": same, "skip": skip, "open": OPEN_SQL,
        }
        self._pyformat = pyformat  # %(x)s, not :x
        self._nul = nul  # text may hold NUL
        self._made: dict[str, str] = {}

    def sql(self, template: str) -> str:
        """The template in this database's SQL and parameter style."""
        made = self._made.get(template)
        if made is None:
            made = template.format_map(self._words)
            if self._pyformat:
                made = _NAMED.sub(r"%(\1)s", made)
            if len(self._made) < 256:  # the fixed statements, and filters of a few shapes
                self._made[template] = made
        return made

    def text(self, value: Any) -> Any:
        """A value as this database can keep it."""
        if not self._nul and isinstance(value, str):
            return value.replace("\x00", "\ufffd")
        return value


#: The statuses prune() keeps whatever their age (the run is not over).
OPEN_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(OPEN)) + ")"

SQLITE = Dialect(prefix="", site=False, distinct="IS NOT", same="IS", skip="", pyformat=False,
                 nul=True)
# SKIP LOCKED: processes taking a call at once each get another one, none waits.
POSTGRES = Dialect(prefix="reqcron_", site=True, distinct="IS DISTINCT FROM",
                   same="IS NOT DISTINCT FROM", skip=" FOR UPDATE SKIP LOCKED", pyformat=True,
                   nul=False)


class Session:
    """A connection (or cursor) that takes the shared statements, with the site bound."""

    def __init__(self, db: Executor, dialect: Dialect, site: str | None):
        self.db = db
        self.dialect = dialect
        self.site = site

    def run(self, template: str, params: dict[str, Any] | None = None, /, **more: Any) -> Rows:
        """Execute ``template``, in this database's spelling, with named parameters."""
        return self.db.execute(self.dialect.sql(template),
                               {"site": self.site, **(params or {}), **more})

    def one(self, template: str, params: dict[str, Any] | None = None, /, **more: Any) -> Any:
        """The first column of the first row (None for none)."""
        row = self.run(template, params, **more).fetchone()
        return row[0] if row else None


class Schema:
    """A schema's version, what creates it, and what brings each older version to the next."""

    def __init__(self, version: int, create: str, migrations: dict[int, list[str]]):
        self.version = version
        self.create = [s for s in create.split(";") if s.strip()]
        self.migrations = migrations

    def steps(self, found: int | None) -> list[str]:
        """The statements that bring a schema at ``found`` (None or 0: none) to this version.

        ValueError, saying so, for a schema newer than this reqcron knows.
        """
        if found == self.version:
            return []
        if found and found > self.version:
            raise ValueError(f"its schema is version {found}, newer than this reqcron knows")
        # Migrations first: the create statements' indexes may need their columns.
        migrate = [s for v in range(found or self.version, self.version)
                   for s in self.migrations.get(v, ())]
        return migrate + self.create


# -- the statements -------------------------------------------------------------

RUN_NAMES = ", ".join(f'"{c}"' for c in RUN_COLUMNS)
TASK_NAMES = "name, next_due, anchor, enabled, run_requested, signature, first_seen"
SELECT_RUNS = f"SELECT id, {RUN_NAMES} FROM {{runs}}"
SELECT_TASKS = f"SELECT {TASK_NAMES} FROM {{tasks}}"

PULSE = (
    "SELECT version, key, (SELECT min(next_due) FROM {tasks} WHERE {site}next_due IS NOT NULL),"
    " (SELECT min(run_requested) FROM {tasks} WHERE {site}run_requested IS NOT NULL),"
    " (SELECT value FROM {meta} WHERE {site}key = :key),"
    " (SELECT min(due) FROM {runs} WHERE {site}status = 'queued')"
    " FROM {catalog} WHERE {this_catalog}"
)
GET_META = "SELECT value FROM {meta} WHERE {site}key = :key"
SET_META = ("INSERT INTO {meta} ({site_col}key, value) VALUES ({site_val}:key, :value)"
            " ON CONFLICT ({site_col}key) DO UPDATE SET value = excluded.value")
INIT_META = ("INSERT INTO {meta} ({site_col}key, value) VALUES ({site_val}:key, :value)"
             " ON CONFLICT DO NOTHING")

CATALOG = ("SELECT version, key, data, reading_key, reading_until FROM {catalog}"
           " WHERE {this_catalog}")
BEGIN_READ = (
    "UPDATE {catalog} SET reading_key = :key, reading_until = :until WHERE {this_catalog}"
    " AND key {distinct} :key AND (reading_key {distinct} :key OR reading_until < :now)"
)
SAVE_CATALOG = (
    "UPDATE {catalog} SET version = version + 1, key = :key, data = :data,"
    " reading_key = NULL, reading_until = NULL WHERE {this_catalog} RETURNING version"
)
# A new task is created; a known one is moved only when its schedule changed.
SYNC_TASK = (
    "INSERT INTO {tasks} ({site_col}name, next_due, anchor, enabled, signature, first_seen)"
    " VALUES ({site_val}:name, :next_due, :anchor, :enabled, :signature, :now)"
    " ON CONFLICT ({site_col}name) DO UPDATE SET next_due = excluded.next_due,"
    " signature = excluded.signature WHERE {tasks}.signature {distinct} excluded.signature"
)
REMOVE_TASK = ("UPDATE {tasks} SET next_due = NULL, signature = :signature"
               " WHERE {site}name = :name AND signature {distinct} :signature")

DUE_TASKS = (f"{SELECT_TASKS} WHERE {{site}}next_due <= :now"
             f" UNION {SELECT_TASKS} WHERE {{site}}run_requested <= :now")
# The row stays locked until commit: a claim racing it waits, then finds
# next_due moved and claims nothing.
CLAIM_SLOT = ("UPDATE {tasks} SET next_due = :new WHERE {site}name = :name"
              " AND next_due = :expected AND signature = :signature")
REPOSITION = ("UPDATE {tasks} SET next_due = :new WHERE {site}name = :name"
              " AND next_due {same} :expected AND signature = :signature")
CLAIM_REQUEST = ("UPDATE {tasks} SET run_requested = NULL WHERE {site}name = :name"
                 " AND run_requested = :requested")
REQUEST_RUN = ("UPDATE {tasks} SET run_requested = COALESCE(run_requested, :now)"
               " WHERE {site}name = :name")
SET_ENABLED = "UPDATE {tasks} SET enabled = :enabled WHERE {site}name = :name"

# A transition's condition: the row is still the attempt its writer read.
SAME_ATTEMPT = (" AND status = :was_status AND lock {same} :was_lock"
                " AND attempts = :was_attempts")
LAST_RUN = "SELECT id, status, error FROM {runs} WHERE {site}task = :task ORDER BY id DESC LIMIT 1"
MERGE_RUN = 'UPDATE {runs} SET slots = slots + :slots, slot = :slot, "end" = :end WHERE id = :id'
INSERT_RUN = (f"INSERT INTO {{runs}} ({{site_col}}{RUN_NAMES})"
              f" VALUES ({{site_val}}{', '.join(':' + c for c in RUN_COLUMNS)}) RETURNING id")
# A task's own runs: its Task.delay calls are kept result_days, like every call.
PRUNE = (
    "DELETE FROM {runs} WHERE {site}task = :task AND status NOT IN {open} AND call IS NULL"
    " AND id <= (SELECT id FROM {runs} WHERE {site}task = :task AND status NOT IN {open}"
    " AND call IS NULL ORDER BY id DESC LIMIT 1 OFFSET :keep)"
)
# One row per (task, status, deferred call or not); durations where a run has both ends.
RUN_COUNTS = (
    'SELECT task, status, call IS NOT NULL, count(*), count("end" - start), sum("end" - start),'
    ' max("end" - start), max("end") FROM {runs} WHERE {site}1 = 1'
    " GROUP BY task, status, call IS NOT NULL"
)
# Each task's latest run with a lateness, and its latest with a duration.
LATEST_RUNS = (
    'SELECT id, task, lateness, "end" - start FROM {runs} WHERE id IN ('
    "SELECT max(id) FROM {runs} WHERE {site}call IS NULL AND lateness IS NOT NULL GROUP BY task"
    " UNION SELECT max(id) FROM {runs} WHERE {site}call IS NULL AND start IS NOT NULL"
    ' AND "end" IS NOT NULL GROUP BY task)'
)

QUEUED = "SELECT 1 FROM {runs} WHERE {site}status = 'queued' AND due <= :now LIMIT 1"
# The first queued call due, taken in one statement: of two processes, one updates the row.
TAKE_CALL = (
    "UPDATE {runs} SET status = 'running', start = :now, pid = :pid, lock = :lock,"
    ' attempts = attempts + 1, "end" = NULL WHERE id = (SELECT id FROM {runs}'
    " WHERE {site}status = 'queued' AND due <= :now ORDER BY due, id LIMIT 1{skip})"
    f" AND status = 'queued' RETURNING id, {RUN_NAMES}"
)
DUE_CALLS = ("SELECT count(*) FROM (SELECT 1 FROM {runs} WHERE {site}status = 'queued'"
             " AND due <= :now LIMIT :limit) q")
CALLS_RUNNING = ("SELECT count(*) FROM {runs} WHERE {site}status = 'running'"
                 " AND call IS NOT NULL")
PRUNE_CALLS = ('DELETE FROM {runs} WHERE {site}call IS NOT NULL AND "end" < :before'
               " AND status NOT IN {open}")

ALL_META = "SELECT key, value FROM {meta} WHERE {site}1 = 1"
ANY_STATE = ("SELECT EXISTS (SELECT 1 FROM {tasks} WHERE {site}1 = 1"
             " UNION ALL SELECT 1 FROM {runs} WHERE {site}1 = 1)")
RESTORE_CATALOG = ("UPDATE {catalog} SET version = :version, key = :key, data = :data"
                   " WHERE {this_catalog}")
RESTORE_TASK = (f"INSERT INTO {{tasks}} ({{site_col}}{TASK_NAMES}) VALUES ({{site_val}}:name,"
                " :next_due, :anchor, :enabled, :run_requested, :signature, :first_seen)")


def in_list(name: str, values: Iterable[Any], params: dict[str, Any]) -> str:
    """``(:name0, :name1, …)`` for ``values``, each bound in ``params``."""
    marks = []
    for i, value in enumerate(values):
        params[f"{name}{i}"] = value
        marks.append(f":{name}{i}")
    return f"({', '.join(marks) or 'NULL'})"


def run_from_row(row: tuple[Any, ...]) -> Run:
    """A Run from a row of (id, *RUN_COLUMNS)."""
    run_id, *values = row
    return Run(id=run_id, **dict(zip(RUN_COLUMNS, values, strict=True)))


def task_from_row(row: tuple[Any, ...]) -> TaskState:
    """A TaskState from a row of TASK_NAMES (SQLite keeps ``enabled`` as 0 or 1)."""
    name, next_due, anchor, enabled, requested, signature, first_seen = row
    return TaskState(name, next_due, anchor, bool(enabled), requested, signature, first_seen)


def check_run_fields(values: dict[str, Any]) -> None:
    """Refuse fields a run does not have (they name SQL columns)."""
    unknown = set(values) - set(RUN_COLUMNS)
    if unknown:
        raise TypeError(f"unknown run fields: {sorted(unknown)}")
