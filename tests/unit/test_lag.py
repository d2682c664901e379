"""Replication lag: the arithmetic with fakes (fast, exact). The same behaviour with real
sidecars, S3 and Litestream is in tests/e2e/test_lag_e2e.py."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sidecar.bucket.replica import LtxObject, ReplicaUnreachable, Store
from sidecar.config import Database, Replica
from sidecar.lag import model as lag
from sidecar.lag.db_lag import DbLag
from sidecar.lag.model import ChangeLog, ReplicaTracker
from sidecar.litestream import ControlError

# ------------------------------------------------------------------ fakes


class FakeStore(Store):
    """An in-memory bucket with S3's listing semantics (sorted keys, StartAfter, MaxKeys)."""

    def __init__(self) -> None:
        self.keys: dict[str, LtxObject] = {}
        self.requests = 0
        self.down = False

    def put(self, level: int, lo: int, hi: int, mtime: float = 0.0) -> None:
        key = f"{level:04x}/{lo:016x}-{hi:016x}.ltx"
        self.keys[key] = LtxObject(key, level, lo, hi, 100, mtime)

    def list_ltx(self, level: int, start_after: str | None = None,
                 max_keys: int = 1000) -> list[LtxObject]:
        self.requests += 1
        if self.down:
            raise ReplicaUnreachable("unreachable", "cannot reach fake: EndpointConnectionError")
        prefix = f"{level:04x}/"
        out = [self.keys[k] for k in sorted(self.keys)
               if k.startswith(prefix) and (start_after is None or k > start_after)]
        return out[:max_keys]


class FakeControl:
    def __init__(self) -> None:
        self.local = 0
        self.down = False

    def txid(self, _path: Path) -> int:
        if self.down:
            raise ControlError("cannot reach litestream.sock")
        return self.local


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_db(tmp_path: Path) -> Database:
    return Database(tmp_path / "app.db", Replica(url="s3://b/app.db"))


# ------------------------------------------------------------------ ChangeLog


def test_idle_database_has_nothing_pending() -> None:
    """With no writes and the same TXID observed again and again, nothing is pending."""
    log = ChangeLog()
    for t in range(0, 120, 10):
        log.observe(7, float(t))
        assert log.oldest_pending(7, float(t)) is None


def test_pending_change_is_timed_from_the_first_write() -> None:
    """A write at t=10 that became TXID 8 is pending from 10 until the bucket holds 8."""
    log = ChangeLog()
    log.observe(7, 0.0)
    log.changed(10.0)
    log.changed(10.5)
    log.observe(8, 11.0)
    assert log.oldest_pending(7, 20.0) == 10.0
    assert log.oldest_pending(8, 21.0) is None


def test_oldest_of_several_pending_changes_counts() -> None:
    """Two TXIDs behind: the lag is measured from the older one's first write, never less."""
    log = ChangeLog()
    log.observe(1, 0.0)
    log.changed(5.0)
    log.observe(2, 6.0)
    log.changed(7.0)
    log.observe(3, 8.0)
    assert log.oldest_pending(1, 9.0) == 5.0
    # TXID 3's first write was at 7.0; with observations this sparse the write at 5.0 might
    # also belong to it, so the estimate may be earlier (a larger lag), never later.
    pending = log.oldest_pending(2, 9.0)
    assert pending is not None and 5.0 <= pending <= 7.0


def test_write_not_yet_turned_into_a_txid_is_kept_for_the_next_one() -> None:
    """A write just before an observation that did not advance the TXID belongs to the next."""
    log = ChangeLog()
    log.observe(1, 0.0)
    log.changed(9.9)
    log.observe(1, 10.0)  # Litestream has not seen it yet
    log.observe(2, 11.0)
    assert log.oldest_pending(1, 12.0) == 9.9


def test_stray_write_without_a_new_txid_is_forgotten() -> None:
    """A checkpoint-like write that never becomes a TXID does not inflate a later lag."""
    log = ChangeLog()
    log.observe(1, 0.0)
    log.changed(1.0)
    log.observe(1, 1.0 + lag.GRACE + 0.1)
    log.changed(100.0)
    log.observe(2, 101.0)
    assert log.oldest_pending(1, 102.0) == 100.0


def test_writes_litestream_never_counts_are_pending() -> None:
    """With Litestream down (no observations) writes older than GRACE count as pending."""
    log = ChangeLog()
    log.observe(1, 0.0)
    log.changed(10.0)
    assert log.oldest_pending(1, 10.0 + lag.GRACE / 2, litestream_answered=False) is None
    assert log.oldest_pending(1, 10.0 + lag.GRACE + 1, litestream_answered=False) == 10.0
    assert log.oldest_pending(1, 10.0 + lag.GRACE + 1) is None  # answered: not a TXID yet


# ------------------------------------------------------------------ ReplicaTracker


@pytest.mark.parametrize("level", [0, 1, 2, 3, 9])
def test_bootstrap_finds_the_newest_object_in_any_level(level: int) -> None:
    """The seek finds the newest object whichever level holds it."""
    store = FakeStore()
    for i in range(1, 400):
        store.put(level, i if level != 9 else 1, i)
    tracker = ReplicaTracker(store)
    tracker.bootstrap(hint=399)
    assert tracker.txid == 399


def test_seek_last_is_right_for_random_layouts() -> None:
    """For random runs of objects and hints, seek_last returns the level's last object."""
    rng = random.Random(7)
    for _ in range(200):
        store = FakeStore()
        txid = 0
        for _ in range(rng.randint(1, 60)):
            lo = txid + 1
            txid = lo + rng.randint(0, 50)
            store.put(1, lo, txid)
        hint = rng.randint(0, txid + 100)
        last = ReplicaTracker(store).seek_last(1, hint)
        assert last is not None and last.max_txid == txid, (hint, txid)


def test_empty_bucket_reads_txid_zero() -> None:
    """An empty bucket (reachable) is position 0, not unknown."""
    tracker = ReplicaTracker(FakeStore())
    tracker.bootstrap(hint=5)
    assert tracker.txid == 0


def test_check_cost_stays_bounded_as_the_bucket_grows() -> None:
    """Steady-state checks cost one request; a seek costs O(log n), at 100 or 100,000 keys."""
    costs = {}
    for n in (100, 100_000):
        store = FakeStore()
        for i in range(1, n + 1):
            store.put(1, i, i)
        for i in range(n + 1, n + 6):
            store.put(0, i, i)
        tracker = ReplicaTracker(store)
        tracker.update(local_txid=n + 5)
        boot = store.requests
        assert tracker.txid == n + 5
        store.put(0, n + 6, n + 6)
        before = store.requests
        tracker.update(local_txid=n + 6)
        costs[n] = (boot, store.requests - before)
        assert tracker.txid == n + 6
    assert costs[100][1] == costs[100_000][1] == 1
    assert costs[100_000][0] <= 4


def test_caught_up_bucket_found_in_compaction_level_after_l0_cleanup() -> None:
    """When level 0 was emptied by retention, an idle DB still reads as caught up."""
    store = FakeStore()
    for i in range(1, 50):
        store.put(1, i * 10 - 9, i * 10)
    tracker = ReplicaTracker(store)
    tracker.update(local_txid=490)
    assert tracker.txid == 490


# ------------------------------------------------------------------ DbLag


def test_outage_marks_unreachable_at_once_and_lag_keeps_growing(tmp_path: Path) -> None:
    """The first failed check drops reachability; lag grows from the oldest pending write."""
    store, control, clock = FakeStore(), FakeControl(), Clock()
    d = DbLag(make_db(tmp_path), store, control, clock=clock)  # type: ignore[arg-type]
    control.local = 3
    store.put(0, 1, 3)
    assert d.check().lag_seconds == 0 and d.result.reachable
    store.down = True
    clock.t += 1
    d.changes.changed(clock.t)
    clock.t += 1
    control.local = 4
    res = d.check()
    assert not res.reachable and res.error
    clock.t += 30
    res = d.check()
    assert res.lag_seconds == pytest.approx(31.0) and not res.reachable
    store.down = False
    store.put(0, 4, 4)
    res = d.check()
    assert res.reachable and res.lag_seconds == 0


def test_litestream_down_before_first_answer_gives_unknown_position(tmp_path: Path) -> None:
    """Without a local TXID the check only probes the bucket and reports no positions."""
    store, control = FakeStore(), FakeControl()
    control.down = True
    d = DbLag(make_db(tmp_path), store, control)  # type: ignore[arg-type]
    res = d.check()
    assert res.reachable and res.local_txid is None and res.replica_txid is None
    assert res.lag_seconds == 0 and store.requests == 1


def test_settled_once_the_bucket_holds_every_change(tmp_path: Path) -> None:
    """What lets the watcher listen again (watcher.py): a check ran, no write waits for a
    TXID, and the bucket holds the newest local one."""
    store, control, clock = FakeStore(), FakeControl(), Clock()
    d = DbLag(make_db(tmp_path), store, control, clock=clock)  # type: ignore[arg-type]
    control.local = 3
    assert not d.settled()  # no check yet: the bucket's position is not known
    store.put(0, 1, 3)
    d.check()
    assert d.settled()
    clock.t += 1
    d.file_changed()  # a write Litestream has not turned into a TXID yet
    assert not d.settled()
    clock.t += 1
    control.local = 4
    d.check()  # TXID 4 holds it; the bucket does not yet
    assert not d.settled()
    store.put(0, 4, 4)
    clock.t += 1
    d.check()
    assert d.settled()
