"""The Store contract, written once: every backend runs every test here.

A new backend adds itself to the ``backend`` fixture and inherits the
suite.  ``store`` is the state under test; ``another()`` opens a second
store on the same state, as another process or host would (its own
connection, its own locks), so races can be run between them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from reqcron.errors import StateError
from reqcron.limits import OUTPUT_LIMIT
from reqcron.records import Run, Status, Trigger
from reqcron.store import CLOCK_KEY, REMOVED, Attempt, SQLiteStore, Store, TaskSync
from reqcron.store.base import Dump


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path: Path):
    """Open stores of one backend: ``open(name)`` is a state; the same name, the same state."""
    made: list[Store] = []

    def open_state(name: str = "s") -> Store:
        if request.param == "postgres":
            from reqcron.store.postgres import PostgresStore

            store: Store = PostgresStore(request.getfixturevalue("pg_url"), site=name)
        else:
            store = SQLiteStore(tmp_path / name / "state.db")
        made.append(store)
        return store

    open_state.kind = request.param  # type: ignore[attr-defined]
    yield open_state
    for store in made:
        store.close()


@pytest.fixture
def store(backend) -> Store:
    return backend()


@pytest.fixture
def another(backend) -> Callable[[], Store]:
    """A second store on the state ``store`` holds."""
    return lambda: backend()


def sync(store, name, signature, next_due, now=1.0, key=None):
    """Save a catalog holding one task, as the process that read the files does."""
    key = key or f"{name}:{signature}:{next_due}"
    assert store.begin_read(key, now, now + 10)
    return store.save_catalog(key, "{}", [TaskSync(name, signature, next_due, None, True)], [],
                              now)


def pending(task="a", created=101.0, **fields) -> Run:
    return Run(task=task, trigger=Trigger.REQUEST, status=Status.PENDING, created=created,
               **fields)


def finished(task="a", status=Status.OK, created=0.0, **fields) -> Run:
    return Run(task=task, trigger=Trigger.MANUAL, status=status, created=created, **fields)


def queued_call(due: float, task="mod.fn") -> Run:
    return Run(task=task, trigger=Trigger.CALL, status=Status.QUEUED, created=due, due=due,
               call="{}")


def race(count: int, attempt: Callable[[int], object]) -> list[object]:
    """Run ``attempt(i)`` in ``count`` threads released together; return their results."""
    results: list[object] = [None] * count
    errors: list[BaseException] = []
    gate = threading.Barrier(count)

    def one(i: int) -> None:
        try:
            gate.wait(10)
            results[i] = attempt(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


# -- the pulse, and small named values --------------------------------------------------


def test_a_new_state_has_an_empty_pulse_and_catalog(store):
    pulse = store.pulse()
    assert (pulse.catalog_version, pulse.catalog_key, pulse.next_due) == (0, None, None)
    assert (pulse.run_requested, pulse.clock, pulse.call_due, pulse.earliest) == (None,) * 4
    catalog = store.catalog()
    assert (catalog.version, catalog.key, catalog.data, catalog.reading_key) == (0, None, None,
                                                                                 None)
    assert store.states() == {} and store.runs() == [] and store.location


def test_the_pulse_reads_the_earliest_slot_request_clock_and_call(store):
    sync(store, "a", "sig", 100.0)
    sync(store, "b", "sig", 50.0)
    store.request_run("a", 70.0)
    store.add_run(queued_call(due=90.0))
    store.claim_slot("b", 50.0, "sig", 110.0, pending("b"), clock=12.5)
    pulse = store.pulse()
    assert (pulse.next_due, pulse.run_requested, pulse.clock, pulse.call_due) == (100.0, 70.0,
                                                                                 12.5, 90.0)
    assert pulse.earliest == 70.0 and pulse.catalog_version == 2


def test_meta_values_are_set_replaced_and_initialised_once(store):
    assert store.meta("zone") is None
    assert store.init_meta("zone", "Europe/Brussels") == "Europe/Brussels"
    assert store.init_meta("zone", "Asia/Tokyo") == "Europe/Brussels"  # the first one stays
    store.set_meta("zone", "UTC")
    assert store.meta("zone") == "UTC"


def test_one_of_several_processes_initialising_a_value_wins(store, another):
    stores = [another() for _ in range(6)]
    kept = race(6, lambda i: stores[i].init_meta("zone", f"zone{i}"))
    assert len(set(kept)) == 1 and store.meta("zone") == kept[0]


# -- the catalog ------------------------------------------------------------------------


def test_store_lets_one_reader_at_a_time_read_a_change(store):
    assert store.begin_read("k1", 1.0, 11.0)
    assert not store.begin_read("k1", 2.0, 12.0)  # being read
    assert store.catalog().reading_key == "k1" and store.catalog().reading_until == 11.0
    assert store.begin_read("k1", 12.0, 22.0)  # its reader's lease ran out
    assert store.save_catalog("k1", "{}", [], [], 13.0) == 1
    assert not store.begin_read("k1", 14.0, 24.0)  # already read
    catalog = store.catalog()
    assert (catalog.key, catalog.data, catalog.reading_key) == ("k1", "{}", None)
    assert store.begin_read("k2", 15.0, 25.0)  # a new change


def test_of_readers_racing_for_a_change_exactly_one_gets_the_lease(store, another):
    stores = [another() for _ in range(8)]
    won = race(8, lambda i: stores[i].begin_read("k1", 1.0, 11.0))
    assert won.count(True) == 1


def test_saving_a_catalog_creates_moves_and_removes_task_rows(store):
    assert store.begin_read("k1", 1.0, 11.0)
    syncs = [TaskSync("a", "sig", 100.0, None, True), TaskSync("b", "sig", 200.0, 5.0, False)]
    assert store.save_catalog("k1", '{"tasks": 2}', syncs, [], 2.0) == 1
    a, b = store.state("a"), store.state("b")
    assert (a.next_due, a.enabled, a.signature, a.first_seen) == (100.0, True, "sig", 2.0)
    assert (b.anchor, b.enabled) == (5.0, False)
    assert store.save_catalog("k2", "{}", [], ["b"], 3.0) == 2
    b = store.state("b")
    assert b.signature == REMOVED and b.next_due is None
    assert store.catalog().data == "{}" and store.state("nothing") is None


def test_store_resyncs_only_on_a_new_signature(store):
    sync(store, "a", "sig", 100.0)
    sync(store, "a", "sig", 999.0)
    assert store.states()["a"].next_due == 100.0
    sync(store, "a", "sig2", 999.0)
    assert store.states()["a"].next_due == 999.0


# -- schedule positions -----------------------------------------------------------------


def test_due_states_are_the_rows_with_a_due_slot_or_request(store):
    sync(store, "a", "sig", 100.0)
    sync(store, "b", "sig", 500.0)
    sync(store, "c", "sig", 500.0)
    store.request_run("c", 90.0)
    assert sorted(s.name for s in store.due_states(100.0)) == ["a", "c"]
    assert store.due_states(10.0) == []


def test_store_claims_are_compare_and_swap(store):
    sync(store, "a", "sig", 100.0)
    run_id = store.claim_slot("a", 100.0, "sig", 160.0, pending(slot=100.0))
    assert run_id is not None and store.get_run(run_id).slot == 100.0
    assert store.claim_slot("a", 100.0, "sig", 160.0, pending()) is None
    assert store.states()["a"].next_due == 160.0
    assert len(store.runs("a")) == 1  # the lost claim recorded nothing


def test_store_claims_only_with_the_current_schedule(store):
    sync(store, "a", "old", 100.0)
    sync(store, "a", "new", 100.0)  # a process that has not re-read yet still says "old"
    assert store.claim_slot("a", 100.0, "old", 160.0, pending()) is None
    assert store.claim_slot("a", 100.0, "new", 160.0, pending()) is not None


def test_of_processes_racing_for_a_slot_exactly_one_claims_it(store, another):
    sync(store, "a", "sig", 100.0)
    stores = [another() for _ in range(8)]
    won = race(8, lambda i: stores[i].claim_slot("a", 100.0, "sig", 160.0, pending(pid=i)))
    assert len([w for w in won if w is not None]) == 1
    (run,) = store.runs("a")
    assert run.id in won


def test_forked_processes_racing_for_slots_claim_each_once(store):
    sync(store, "a", "sig", 0.0)
    read, write = os.pipe()
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # the child uses the inherited store: it must open its own connection
            code = 0
            try:
                for slot in range(20):
                    if store.claim_slot("a", float(slot), "sig", slot + 1.0,
                                        pending(slot=float(slot))) is not None:
                        os.write(write, b"x")
            except BaseException:
                code = 1
            os._exit(code)
        children.append(pid)
    os.close(write)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with os.fdopen(read, "rb") as fh:
        assert len(fh.read()) == 20
    assert sorted(r.slot for r in store.runs("a", 100)) == [float(s) for s in range(20)]


def test_a_claim_keeps_the_claimers_clock_and_can_merge_into_the_last_run(store):
    sync(store, "a", "sig", 100.0)
    first = store.claim_slot("a", 100.0, "sig", 160.0, finished(status=Status.SKIPPED,
                                                                 error="disabled"), clock=1.5)
    merged = store.claim_slot("a", 160.0, "sig", 220.0,
                              finished(status=Status.SKIPPED, error="disabled", slot=160.0),
                              merge=True, clock=2.5)
    assert merged == first and store.meta(CLOCK_KEY) == "2.5"
    (run,) = store.runs("a")
    assert run.slots == 2 and run.slot == 160.0


def test_reposition_moves_next_due_from_the_expected_place_only(store):
    sync(store, "a", "sig", 100.0)
    assert not store.reposition("a", 90.0, "sig", 50.0)
    assert not store.reposition("a", 100.0, "other", 50.0)
    assert store.reposition("a", 100.0, "sig", 50.0)
    assert store.reposition("a", 50.0, "sig", None)
    assert store.reposition("a", None, "sig", 70.0)  # from no position too
    assert store.state("a").next_due == 70.0


def test_a_run_now_request_is_kept_once_and_claimed_once(store, another):
    sync(store, "a", "sig", 100.0)
    store.request_run("a", 5.0)
    store.request_run("a", 6.0)  # asking twice before a claim is one request
    assert store.state("a").run_requested == 5.0
    assert store.claim_request("a", 6.0, pending()) is None  # not the request there
    stores = [another() for _ in range(6)]
    won = race(6, lambda i: stores[i].claim_request("a", 5.0, pending()))
    assert len([w for w in won if w is not None]) == 1
    assert store.state("a").run_requested is None


def test_a_task_is_disabled_and_enabled(store):
    sync(store, "a", "sig", 100.0)
    store.set_enabled("a", False)
    assert store.state("a").enabled is False
    store.set_enabled("a", True)
    assert store.states()["a"].enabled is True


# -- history ----------------------------------------------------------------------------


def test_a_run_is_recorded_read_and_updated(store):
    run_id = store.add_run(pending(slot=100.0, lateness=1.0))
    store.update_run(run_id, status=Status.RUNNING, start=102.0, pid=4321)
    run = store.get_run(run_id)
    assert (run.id, run.status, run.start, run.pid, run.slot) == (run_id, "running", 102.0, 4321,
                                                                  100.0)
    assert store.get_run(run_id + 1000) is None
    with pytest.raises(TypeError, match="unknown run fields"):
        store.update_run(run_id, colour="blue")


def test_a_conditional_update_applies_only_in_the_expected_status(store):
    run_id = store.add_run(pending())
    assert not store.update_run_if(Attempt(run_id, Status.RUNNING), status=Status.LOST)
    assert store.update_run_if(Attempt(run_id, Status.PENDING), status=Status.RUNNING)
    assert store.get_run(run_id).status == "running"


def test_of_racing_conditional_updates_exactly_one_applies(store, another):
    run_id = store.add_run(pending())
    stores = [another() for _ in range(6)]
    won = race(6, lambda i: stores[i].update_run_if(Attempt(run_id, Status.PENDING),
                                                    status=Status.LOST, pid=i))
    assert won.count(True) == 1


def test_a_transition_applies_only_to_the_attempt_its_writer_read(store):
    run_id = store.add_run(pending(lock="tok-1"))
    read = Attempt.of(store.get_run(run_id))
    assert not store.update_run_if(Attempt(run_id, Status.PENDING, "tok-2"), status=Status.LOST)
    assert not store.update_run_if(Attempt(run_id, Status.PENDING, None), status=Status.LOST)
    assert not store.update_run_if(Attempt(run_id, Status.PENDING, "tok-1", attempts=1),
                                   status=Status.LOST)
    assert store.update_run_if(read, status=Status.RUNNING)
    assert store.get_run(run_id).status == Status.RUNNING


def test_a_stale_reaper_cannot_end_or_requeue_the_next_attempt_of_a_call(store, another):
    # Forced interleaving: a reaper reads attempt 1 of a call as running; meanwhile that
    # attempt is requeued and taken again (attempt 2, another process's lock); then the
    # reaper, acting on what it read, tries to record it lost and to requeue it.
    store.add_run(queued_call(due=1.0))
    first = store.take_call(2.0, pid=11, lock="drainer-a")
    stale = Attempt.of(first)
    assert store.update_run_if(stale, status=Status.QUEUED, due=2.0)
    second = another().take_call(3.0, pid=22, lock="drainer-b")
    assert (second.id, second.attempts, second.lock) == (first.id, 2, "drainer-b")
    reaper = another()
    assert not reaper.update_run_if(stale, status=Status.LOST, end=4.0)
    assert not reaper.update_run_if(stale, status=Status.QUEUED, due=5.0)
    row = store.get_run(first.id)
    assert (row.status, row.lock, row.attempts, row.end) == (Status.RUNNING, "drainer-b", 2, None)
    assert store.update_run_if(Attempt.of(second), status=Status.OK, end=6.0)
    assert store.get_run(first.id).status == Status.OK


def test_of_a_reaper_and_the_runs_own_end_racing_exactly_one_applies(store, another):
    run_id = store.add_run(finished(status=Status.RUNNING, lock="tok"))
    read = Attempt.of(store.get_run(run_id))
    stores = [another() for _ in range(2)]
    won = race(2, lambda i: stores[i].update_run_if(
        read, status=(Status.OK, Status.FAILED)[i], end=float(i)))
    assert won.count(True) == 1
    assert store.get_run(run_id).status == (Status.OK, Status.FAILED)[won.index(True)]


def test_merging_folds_an_identical_latest_not_run_row_only(store):
    skip = finished(status=Status.SKIPPED, error="disabled", slot=1.0, end=1.0)
    first = store.add_run(skip, merge=True)
    assert store.add_run(finished(status=Status.SKIPPED, error="disabled", slot=2.0, end=2.0),
                         merge=True) == first
    other = store.add_run(finished(status=Status.SKIPPED, error="still running"), merge=True)
    assert other != first
    assert store.add_run(skip, merge=False) not in (first, other)
    assert [r.slots for r in store.runs("a")] == [1, 1, 2]


def test_store_caps_output(store):
    run_id = store.add_run(finished())
    store.update_run(run_id, output="x" * (OUTPUT_LIMIT + 10) + "END")
    out = store.get_run(run_id).output
    assert len(out) <= OUTPUT_LIMIT and out.endswith("END") and "truncated" in out
    capped = store.get_run(store.add_run(finished(error="e" * 100_000))).error
    assert len(capped) < 100_000 and "truncated" in capped


def test_text_with_a_nul_is_kept_readable(store):
    run_id = store.add_run(finished(output="a\x00b"))
    assert store.get_run(run_id).output in ("a\x00b", "a\ufffdb")


def test_runs_are_filtered_by_task_and_status_newest_first(store):
    for i, status in enumerate([Status.OK, Status.FAILED, Status.OK, Status.TIMEOUT]):
        store.add_run(finished(task="ab"[i % 2], status=status, created=float(i)))
    assert [r.created for r in store.runs()] == [3.0, 2.0, 1.0, 0.0]
    assert [r.created for r in store.runs("a")] == [2.0, 0.0]
    assert [r.status for r in store.runs(None, 50, ("failed", "timeout"))] == ["timeout",
                                                                               "failed"]
    assert store.runs("b", 50, ("ok",)) == [] and len(store.runs(limit=1)) == 1


def test_store_pages_runs_before_and_after_an_id(store):
    ids = [store.add_run(finished(task="ab"[i % 2], created=float(i))) for i in range(10)]
    assert [r.id for r in store.runs(None, 3)] == ids[:-4:-1]
    assert [r.id for r in store.runs(None, 3, before=ids[7])] == [ids[6], ids[5], ids[4]]
    # After: the runs just newer than the id, still newest first.
    assert [r.id for r in store.runs(None, 3, after=ids[1])] == [ids[4], ids[3], ids[2]]
    assert [r.id for r in store.runs("a", 2, before=ids[6])] == [ids[4], ids[2]]
    assert [r.id for r in store.runs("b", 9, after=ids[6])] == [ids[9], ids[7]]


def test_store_prunes_finished_runs_only(store):
    for i in range(10):
        store.add_run(finished(created=float(i)))
    store.add_run(finished(status=Status.RUNNING))
    store.add_run(finished(status=Status.QUEUED))
    store.add_run(finished(task="b"))
    store.prune("a", 3)
    statuses = [r.status for r in store.runs("a")]
    assert statuses.count("ok") == 3 and statuses.count("running") == 1
    assert statuses.count("queued") == 1 and len(store.runs("b")) == 1
    assert [r.created for r in store.runs("a", 50, ("ok",))] == [9.0, 8.0, 7.0]


def test_store_prunes_a_tasks_own_runs_and_leaves_its_delay_calls_to_result_days(store):
    for i in range(4):
        store.add_run(finished(created=float(i)))
        store.add_run(finished(created=float(i), call='{"target":"a","task":true}'))
    store.prune("a", 1)
    runs = store.runs("a", 50)
    assert len([r for r in runs if r.call is None]) == 1
    assert len([r for r in runs if r.call is not None]) == 4


def test_run_stats_count_by_task_and_status_with_durations(store):
    store.add_run(finished(start=10.0, end=13.0, lateness=0.5))
    store.add_run(finished(start=20.0, end=21.0, lateness=0.25))
    store.add_run(finished(status=Status.FAILED, start=30.0, end=35.0))
    store.add_run(finished(status=Status.SKIPPED))
    store.add_run(finished(task="mod.fn", start=1.0, end=2.0, call="{}"))
    stats = store.run_stats()
    counts = {(c.task, c.status, c.call): c for c in stats.counts}
    ok = counts["a", "ok", False]
    assert (ok.runs, ok.timed, ok.seconds, ok.longest, ok.last_end) == (2, 2, 4.0, 3.0, 21.0)
    assert counts["a", "skipped", False].timed == 0 and counts["mod.fn", "ok", True].runs == 1
    assert stats.lateness == {"a": 0.25} and stats.duration == {"a": 5.0}


# -- deferred calls ---------------------------------------------------------------------


def test_a_call_is_taken_when_due_first_due_first(store):
    late = store.add_run(queued_call(due=20.0))
    early = store.add_run(queued_call(due=10.0))
    assert store.due_calls(5.0, 10) == 0 and store.take_call(5.0, 1, "lock") is None
    assert store.due_calls(30.0, 10) == 2 and store.due_calls(30.0, 1) == 1
    taken = store.take_call(30.0, 42, "lk")
    assert taken.id == early and (taken.status, taken.pid, taken.lock) == ("running", 42, "lk")
    assert (taken.attempts, taken.start) == (1, 30.0)
    assert store.calls_running() == 1 and store.take_call(30.0, 42, "lk").id == late
    assert store.take_call(30.0, 42, "lk") is None and store.calls_running() == 2


def test_of_processes_racing_to_take_calls_each_gets_another(store, another):
    ids = {store.add_run(queued_call(due=float(i))) for i in range(12)}
    stores = [another() for _ in range(6)]

    def drain(i: int) -> list[int]:
        got = []
        while (call := stores[i].take_call(100.0, i, f"lock{i}")) is not None:
            got.append(call.id)
        return got

    taken = [call_id for got in race(6, drain) for call_id in got]  # type: ignore[union-attr]
    assert sorted(taken) == sorted(ids)  # each once, none left


def test_held_calls_are_brought_forward_unless_already_tried(store):
    held = store.add_run(queued_call(due=100.0))
    tried = store.add_run(queued_call(due=100.0))
    store.update_run(tried, attempts=1)
    store.release_calls([held, tried], 60.0)
    assert store.get_run(held).due == 40.0 and store.get_run(tried).due == 100.0
    store.release_calls([], 60.0)  # nothing to release


def test_finished_calls_are_pruned_by_their_end(store):
    old = store.add_run(queued_call(due=1.0))
    store.update_run(old, status=Status.OK, end=10.0)
    new = store.add_run(queued_call(due=1.0))
    store.update_run(new, status=Status.OK, end=30.0)
    running = store.add_run(queued_call(due=1.0))
    store.update_run(running, status=Status.RUNNING, end=5.0)
    store.add_run(finished(end=1.0))  # a task's run: not a call
    assert store.prune_calls(20.0) == 1
    assert store.get_run(old) is None and store.get_run(running) is not None
    assert len(store.runs("a")) == 1


# -- locks that die with their holder ---------------------------------------------------


def test_a_task_lock_is_held_by_one_store_at_a_time(store, another):
    other = another()
    lock = store.take_task_lock("a")
    assert lock is not None and lock.token and lock.fds
    assert other.take_task_lock("a") is None  # another process's run still has it
    assert other.held_task_locks(["a", "b"]) == 1
    b = other.take_task_lock("b")
    assert store.held_task_locks(["a", "b", "c"]) == 2
    lock.release()
    b.release()
    assert store.held_task_locks(["a", "b"]) == 0
    again = other.take_task_lock("a")
    assert again is not None
    again.release()


def test_of_processes_racing_for_a_task_lock_exactly_one_takes_it(store, another):
    stores = [another() for _ in range(6)]
    locks = race(6, lambda i: stores[i].take_task_lock("a"))
    held = [lock for lock in locks if lock is not None]
    assert len(held) == 1
    held[0].release()  # type: ignore[attr-defined]


def test_a_run_lock_is_alive_while_held_anywhere(store, another):
    lock = store.take_run_lock()
    second = store.take_run_lock()
    assert lock.token != second.token
    other = another()
    assert other.lock_alive(lock.token) and store.lock_alive(lock.token)
    lock.release()
    assert not other.lock_alive(lock.token)
    other.forget_lock(lock.token)  # tidying twice is harmless
    assert not other.lock_alive("nothing-held-by-this-name")
    second.release()


def test_a_lock_dies_with_its_holder_process(store):
    from conftest import wait_for

    told, tell = os.pipe()  # child -> parent: its run lock's token
    waits, release = os.pipe()  # parent -> child: die now
    pid = os.fork()
    if pid == 0:
        try:
            token = store.take_run_lock().token
            store.take_task_lock("a")
            os.write(tell, token.encode() + b"\n")
            os.read(waits, 1)  # until the parent has looked; then die holding both
        finally:
            os._exit(0)
    os.close(tell)
    with os.fdopen(told) as fh:
        token = fh.readline().strip()
    assert store.lock_alive(token) and store.held_task_locks(["a"]) == 1
    os.write(release, b"x")
    os.waitpid(pid, 0)
    os.close(waits)
    os.close(release)
    wait_for(lambda: not store.lock_alive(token), message="the lock freed")
    assert store.held_task_locks(["a"]) == 0


# -- health, and copying a state --------------------------------------------------------


def test_a_healthy_state_has_no_problems(store):
    store.verify()
    assert store.problems() == []
    assert all(isinstance(fd, int) for fd in store.connection_fds())


def test_store_reopens_after_fork(store):
    sync(store, "a", "sig", 100.0)
    pid = os.fork()
    if pid == 0:  # the child must not use the parent's connection
        try:
            store.set_enabled("a", False)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.states()["a"].enabled is False


def test_a_dump_restores_into_an_empty_state_only(backend, store):
    sync(store, "a", "sig", 100.0)
    store.set_meta("zone", "UTC")
    store.request_run("a", 50.0)
    ids = [store.add_run(finished(created=float(i), output=f"run {i}")) for i in range(3)]
    dump = store.dump()
    assert isinstance(dump, Dump) and [r.id for r in dump.runs] == ids
    copy = backend("copy")
    copy.restore(dump)
    again = copy.dump()
    assert again.meta == dump.meta and again.tasks == dump.tasks
    assert (again.catalog.version, again.catalog.key) == (dump.catalog.version, dump.catalog.key)
    assert [r.output for r in again.runs] == ["run 0", "run 1", "run 2"]
    with pytest.raises(StateError, match="nothing was copied"):
        copy.restore(dump)


def test_a_state_is_set_aside_where_it_is_a_file_only(backend, store):
    store.set_meta("which", "first")
    if backend.kind == "postgres":
        with pytest.raises(StateError, match="not reset"):
            store.set_aside()
        return
    aside = store.set_aside()
    assert aside and Path(aside).exists()
    assert store.meta("which") is None  # a fresh state in its place


def test_a_closed_store_opens_again_on_use(store):
    store.set_meta("k", "v")
    store.close()
    assert store.meta("k") == "v"


@pytest.mark.parametrize("name", ["sqlite", "postgres"])
def test_a_state_of_the_previous_schema_is_brought_up_to_date_and_keeps_its_runs(
        name, request, tmp_path):
    """The last migration (the runs' lease column), from a state made before it."""
    store = _store_of(name, request, tmp_path)
    run_id = store.add_run(finished(created=1.0))
    store.close()
    _downgrade(name, request, tmp_path)
    again = _store_of(name, request, tmp_path)
    try:
        assert again.get_run(run_id).created == 1.0  # kept
        leased = again.add_run(finished(status=Status.RUNNING, created=2.0, lease=99.0))
        assert again.get_run(leased).lease == 99.0
    finally:
        again.close()


def _store_of(name: str, request, tmp_path: Path) -> Store:
    if name == "postgres":
        from reqcron.store.postgres import PostgresStore

        return PostgresStore(request.getfixturevalue("pg_url"), site="m")
    return SQLiteStore(tmp_path / "m" / "state.db")


def _downgrade(name: str, request, tmp_path: Path) -> None:
    """Make the state look as the previous schema made it: no lease column."""
    if name == "postgres":
        import psycopg

        with psycopg.connect(request.getfixturevalue("pg_url"), autocommit=True) as conn:
            conn.execute("ALTER TABLE reqcron_runs DROP COLUMN lease")
            conn.execute("UPDATE reqcron_schema SET version = 2")
        return
    import sqlite3

    conn = sqlite3.connect(tmp_path / "m" / "state.db", isolation_level=None)
    try:
        conn.execute("ALTER TABLE runs DROP COLUMN lease")
        conn.execute("PRAGMA user_version = 3")
    finally:
        conn.close()
