"""``{status_path}/metrics``: Prometheus text; the only module that imports prometheus_client.

Each scrape reads the shared state afresh (the catalog, the task rows and
one aggregate of the history), never what this process remembers, so every
worker, and every host of a PostgreSQL state, answers with the same numbers.
The history is pruned (``history`` runs per task, calls after
``result_days``), so counts over it are gauges that may fall, not counters.
prometheus_client is an optional extra, imported only when scraped.

Per-task series are about 600 bytes a task: megabytes and seconds a scrape
for 10,000 tasks, and as many series in Prometheus.  So above PER_TASK_LIMIT
tasks a scrape has only the site's aggregates, unless it asks for them
(``?per_task=1``); the aggregates are always there.
"""

from __future__ import annotations

from .. import marks
from ..engine.docroot import Docroot
from ..records import Status, now

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from ..loading.catalog import Catalog
    from ..records import TaskState
    from ..store.rows import RunStats

MISSING = "Metrics need prometheus_client: pip install 'reqcron[metrics]'.\n"
#: The statuses a task's run can have; each is shown, at 0 when none is kept.
RUN_STATUSES = tuple(s.value for s in Status if s != Status.QUEUED)
#: A deferred call's statuses shown even at 0: the queue's length and what runs it.
CALL_STATUSES = (Status.QUEUED.value, Status.RUNNING.value)
#: Most tasks a scrape shows per-task series for, unless asked (``?per_task=``).
PER_TASK_LIMIT = 500
#: What ``?per_task=`` may say: show the per-task series, or not, whatever the count.
PER_TASK = {"1": True, "0": False}
PLAIN = "text/plain; charset=utf-8"


def exposition(doc: Docroot, per_task: str | None = None) -> tuple[int, str, bytes]:
    """The metrics of ``doc`` as (HTTP status, content type, body); ``per_task``: the
    scrape's ``?per_task=`` (None: per-task series up to PER_TASK_LIMIT tasks)."""
    if per_task not in (None, *PER_TASK):
        return 400, PLAIN, b"per_task must be 1 (per-task series) or 0 (aggregates only).\n"
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError:
        return 501, PLAIN, MISSING.encode()
    registry = CollectorRegistry(auto_describe=False)  # private: never the global REGISTRY
    registry.register(DocrootCollector(doc, None if per_task is None else PER_TASK[per_task]))
    return 200, CONTENT_TYPE_LATEST, generate_latest(registry)


class DocrootCollector:
    """A prometheus_client collector reading one DOCROOT's shared state at each scrape.

    ``per_task``: whether to show the per-task series (None: up to PER_TASK_LIMIT tasks).
    """

    def __init__(self, doc: Docroot, per_task: bool | None = None):
        self.doc = doc
        self.per_task = per_task

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily as Gauge

        doc = self.doc
        catalog = doc.catalog()
        states = doc.states()
        stats = doc.run_stats()
        errors = doc.load_errors()
        current = now()
        names = sorted(catalog.tasks)
        marked = marks.glance(doc, current, states, doc.paused(current), marks.open_runs(doc),
                              stats)
        yield from _aggregates(marked, stats)
        per_task = self.per_task if self.per_task is not None else len(names) <= PER_TASK_LIMIT
        yield Gauge("reqcron_per_task_series", "1 when this scrape has the per-task series "
                    f"(up to {PER_TASK_LIMIT} tasks, or asked with ?per_task=1), else 0",
                    value=int(per_task))
        yield from (_calls(stats), Gauge("reqcron_load_errors", LOAD_ERRORS, value=len(errors)))
        if per_task:
            yield from _per_task(names, catalog, states, stats, marked)



def _aggregates(marked: dict[str, list[str]], stats: RunStats) -> Iterator[Metric]:
    """The site's series, whatever the number of tasks."""
    from prometheus_client.core import GaugeMetricFamily as Gauge

    yield Gauge("reqcron_tasks", "Tasks of the site (catalogued, loading or not)",
                value=len(marked))
    tasks = Gauge("reqcron_tasks_marked", "Tasks bearing each mark, as `reqcron list` "
                  "shows them (failing: by the latest end of each status kept)",
                  labels=["mark"])
    for mark, count in marks.count(marked).items():
        tasks.add_metric([mark], count)
    runs = Gauge("reqcron_site_runs", "Runs of all tasks kept in the history, by status "
                 "(deferred calls apart)", labels=["status"])
    by_status = dict.fromkeys(RUN_STATUSES, 0)
    for c in stats.counts:
        if not c.call:
            by_status[c.status] = by_status.get(c.status, 0) + c.runs
    for status, count in by_status.items():
        runs.add_metric([status], count)
    yield from (tasks, runs)


LOAD_ERRORS = "Problems reading __tasks__.py, the task modules and reqcron.toml"


def _calls(stats: RunStats) -> Metric:
    from prometheus_client.core import GaugeMetricFamily as Gauge

    calls = Gauge("reqcron_calls", "Deferred calls kept in the history (finished ones for "
                  "`result_days`), by status: queued ones wait for their time or a task "
                  "process", labels=["status"])
    counts = dict.fromkeys(CALL_STATUSES, 0)
    for c in stats.counts:
        if c.call:
            counts[c.status] = counts.get(c.status, 0) + c.runs
    for status, count in sorted(counts.items()):
        calls.add_metric([status], count)
    return calls


def _per_task(names: list[str], catalog: Catalog, states: dict[str, TaskState],
              stats: RunStats, marked: dict[str, list[str]]) -> Iterator[Metric]:
    """Each task's series: about 18 a task."""
    from prometheus_client.core import GaugeMetricFamily as Gauge

    runs = Gauge("reqcron_runs", "Runs of each task kept in the history (the latest "
                 "`history` per task), by status; a gauge: pruning lowers it",
                 labels=["task", "status"])
    success = Gauge("reqcron_last_success_timestamp_seconds", "When the latest kept "
                    "successful run of each task ended (unix seconds)", labels=["task"])
    last = Gauge("reqcron_last_run_duration_seconds", "How long each task's latest "
                 "finished run took", labels=["task"])
    mean = Gauge("reqcron_run_duration_mean_seconds", "Mean duration of each task's "
                 "kept runs that have a start and an end", labels=["task"])
    longest = Gauge("reqcron_run_duration_max_seconds", "Longest duration among each "
                    "task's kept runs", labels=["task"])
    late = Gauge("reqcron_last_run_lateness_seconds", "How late each task's latest "
                 "scheduled slot was claimed, after its time", labels=["task"])
    next_run = Gauge("reqcron_next_run_timestamp_seconds", "Each enabled task's next "
                     "scheduled slot (unix seconds)", labels=["task"])
    starved = Gauge("reqcron_task_starved", "1 when the task's slots pass with nothing "
                    "triggering it (no requests, no crontab), else 0", labels=["task"])
    broken = Gauge("reqcron_task_broken", "1 when the task does not load (it runs the "
                   "last good definition's schedule and fails), else 0", labels=["task"])
    enabled = Gauge("reqcron_task_enabled", "1 when the task's schedule is on, else 0",
                    labels=["task"])

    counted: dict[tuple[str, str], int] = {}
    timed: dict[str, list[float]] = {}  # task -> [runs timed, seconds, longest]
    for c in stats.counts:
        if c.call:
            continue
        counted[(c.task, c.status)] = c.runs
        if c.status == Status.OK and c.last_end is not None and c.task in catalog.tasks:
            success.add_metric([c.task], c.last_end)
        if c.timed:
            sums = timed.setdefault(c.task, [0, 0.0, 0.0])
            sums[0] += c.timed
            sums[1] += c.seconds
            sums[2] = max(sums[2], c.longest or 0.0)
    for name in names:
        info, state = catalog.tasks[name], states.get(name)
        for status in RUN_STATUSES:
            runs.add_metric([name, status], counted.get((name, status), 0))
        if name in stats.duration:
            last.add_metric([name], stats.duration[name])
        if name in timed:
            mean.add_metric([name], timed[name][1] / timed[name][0])
            longest.add_metric([name], timed[name][2])
        if name in stats.lateness:
            late.add_metric([name], stats.lateness[name])
        on = state.enabled if state is not None else info.enabled
        enabled.add_metric([name], int(on))
        if on and state is not None and state.next_due is not None:
            next_run.add_metric([name], state.next_due)
        broken.add_metric([name], int("broken" in marked[name]))
        starved.add_metric([name], int("starved" in marked[name]))
    yield from (runs, success, last, mean, longest, late, next_run, starved, broken, enabled)
