"""``{status_path}/metrics``: Prometheus text; the only module that imports prometheus_client.

Each scrape reads the shared state afresh (the catalog, the task rows and
one aggregate of the history), never what this process remembers, so every
worker, and every host of a PostgreSQL state, answers with the same numbers.
The history is pruned (``history`` runs per task, calls after
``result_days``), so counts over it are gauges that may fall, not counters.
prometheus_client is an optional extra, imported only when scraped.
"""

from __future__ import annotations

from ..engine.docroot import Docroot
from ..errors import ScheduleError
from ..marks import is_starved
from ..records import Status, now

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

MISSING = "Metrics need prometheus_client: pip install 'reqcron[metrics]'.\n"
#: The statuses a task's run can have; each is shown, at 0 when none is kept.
RUN_STATUSES = tuple(s.value for s in Status if s != Status.QUEUED)
#: A deferred call's statuses shown even at 0: the queue's length and what runs it.
CALL_STATUSES = (Status.QUEUED.value, Status.RUNNING.value)


def exposition(doc: Docroot) -> tuple[int, str, bytes]:
    """The metrics of ``doc`` as (HTTP status, content type, body)."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError:
        return 501, "text/plain; charset=utf-8", MISSING.encode()
    registry = CollectorRegistry(auto_describe=False)  # private: never the global REGISTRY
    registry.register(DocrootCollector(doc))
    return 200, CONTENT_TYPE_LATEST, generate_latest(registry)


class DocrootCollector:
    """A prometheus_client collector reading one DOCROOT's shared state at each scrape."""

    def __init__(self, doc: Docroot):
        self.doc = doc

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily as Gauge

        doc = self.doc
        catalog = doc.catalog()
        states = doc.states()
        stats = doc.run_stats()
        errors = doc.load_errors()
        current = now()
        names = sorted(catalog.tasks)

        runs = Gauge("reqcron_runs", "Runs of each task kept in the history (the latest "
                     "`history` per task), by status; a gauge: pruning lowers it",
                     labels=["task", "status"])
        calls = Gauge("reqcron_calls", "Deferred calls kept in the history (finished ones for "
                      "`result_days`), by status: queued ones wait for their time or a task "
                      "process", labels=["status"])
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
        load_errors = Gauge("reqcron_load_errors", "Problems reading __tasks__.py, the task "
                            "modules and reqcron.toml", value=len(errors))

        counted: dict[tuple[str, str], int] = {}
        call_counts = dict.fromkeys(CALL_STATUSES, 0)
        timed: dict[str, list[float]] = {}  # task -> [runs timed, seconds, longest]
        for c in stats.counts:
            if c.call:
                call_counts[c.status] = call_counts.get(c.status, 0) + c.runs
                continue
            counted[(c.task, c.status)] = c.runs
            if c.status == Status.OK and c.last_end is not None and c.task in catalog.tasks:
                success.add_metric([c.task], c.last_end)
            if c.timed:
                sums = timed.setdefault(c.task, [0, 0.0, 0.0])
                sums[0] += c.timed
                sums[1] += c.seconds
                sums[2] = max(sums[2], c.longest or 0.0)
        for status, count in sorted(call_counts.items()):
            calls.add_metric([status], count)
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
            broken.add_metric([name], int(bool(catalog.error_of(name))))
            try:
                hungry = is_starved(doc.schedule_of(name, state), state, current)
            except ScheduleError:  # unreadable: shown as broken, not as starved
                hungry = False
            starved.add_metric([name], int(hungry))
        yield from (runs, calls, success, last, mean, longest, late, next_run, starved, broken,
                    enabled, load_errors)
