"""The deferred-call queue as Docroot shows and steers it: counts, list, cancel, retry.

Docroot mixes this in (``reqcron calls``, ``cancel``, ``retry`` and the
status page's buttons use it).  Cancelling and retrying are compare-and-swaps
on the attempt as read, like every transition: a call a task process took
meanwhile is not cancelled, and one that is queued again already is not
queued twice.
"""

from __future__ import annotations

from ..errors import UsageError
from ..records import FAILING, Run, Status, now
from ..store.rows import Attempt
from . import call_queue

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Store

#: What a cancelled call's row says.
CANCELLED = "cancelled"
#: What a call may be retried from: it ended badly, or was cancelled.
RETRYABLE = frozenset({*FAILING, Status.CANCELLED})
#: The fields of an attempt, cleared when a call is queued again.
_ATTEMPT_FIELDS = ("start", "end", "exit_code", "pid", "output", "return_value", "error",
                   "traceback", "lock", "lease")


class CallAdmin:
    """Docroot's ``queue``, ``drainers_wanted``, ``calls``, ``cancel_call``, ``retry_call``."""

    @property
    def store(self) -> Store:
        raise NotImplementedError

    @property
    def settings(self) -> Settings:
        raise NotImplementedError

    def queue(self) -> dict[str, int]:
        """How many deferred calls wait (for their time, or a process) and how many run."""
        return call_queue.counts(self.store)

    def drainers_wanted(self, at: float | None = None, mine: int = 0) -> int:
        """How many task processes to start for the deferred calls due now (max_processes),
        ``mine`` of the caller's own still alive (see call_queue.drainers_wanted)."""
        return call_queue.drainers_wanted(self.store, self.settings.max_processes,
                                          now() if at is None else at, mine)

    def calls(self, statuses: tuple[str, ...] = (), limit: int = 50) -> list[Run]:
        """The latest deferred calls (in ``statuses``, if given), newest first."""
        found: list[Run] = []
        before = None
        while len(found) < limit:
            page = self.store.runs(None, max(limit, 200), statuses, before=before)
            found += [r for r in page if r.call is not None]
            if len(page) < max(limit, 200):
                break
            before = page[-1].id
        return found[:limit]

    def cancel_call(self, run_id: int) -> Run:
        """Record queued call ``run_id`` as cancelled: it never runs.  UsageError if it is
        not a queued call (running, ended, or no call at all)."""
        run = self._call(run_id)
        if run.status != Status.QUEUED or not self.store.update_run_if(
                Attempt.of(run), status=Status.CANCELLED, end=now(), error=CANCELLED):
            raise UsageError(f"call {run_id} is {self._call(run_id).status}, not queued: only "
                             "a call waiting for its time or for a process can be cancelled")
        return self._call(run_id)

    def retry_call(self, run_id: int) -> Run:
        """Queue call ``run_id`` again, due now, for one more attempt.  UsageError unless it
        ended failed, timeout, lost or cancelled."""
        run = self._call(run_id)
        if run.status not in RETRYABLE or not self.store.update_run_if(
                Attempt.of(run), status=Status.QUEUED, due=now(),
                **dict.fromkeys(_ATTEMPT_FIELDS)):
            raise UsageError(f"call {run_id} is {self._call(run_id).status}: only a call that "
                             "ended failed, timeout or lost, or was cancelled, can be retried")
        return self._call(run_id)

    def _call(self, run_id: int) -> Run:
        run = self.store.get_run(run_id)
        if run is None or run.call is None:
            raise UsageError(f"no deferred call with id {run_id} (finished calls are kept "
                             "result_days days)")
        return run
