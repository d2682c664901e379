"""A directory entry's lag checks (sidecar/lag/dir_lag.py) against a bucket held in memory: the
real listing code (tenants.BucketView, its pages and start-after) over a fake S3 client, so
the requests each check makes are counted exactly. The same checks against real Litestream
and a real S3 server are in tests/e2e/test_tenant_dir.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar import config
from sidecar.bucket import tenants
from sidecar.config import DbDir
from sidecar.errors import ReplicaUnreachable
from sidecar.lag.dir_lag import DirLag


class Bucket:
    """list_objects_v2 over sorted keys, S3's way: Prefix, MaxKeys, StartAfter, tokens."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.calls: list[dict[str, object]] = []
        self.down = False

    def put(self, rel: str, txid: int, level: int = 0) -> None:
        self.keys.add(f"tenants/{rel}/{level:04x}/{txid:016x}-{txid:016x}.ltx")

    def drop(self, rel: str) -> None:
        self.keys = {k for k in self.keys if not k.startswith(f"tenants/{rel}/")}

    def list_objects_v2(self, *, Bucket: str, Prefix: str = "", MaxKeys: int = 1000,
                        StartAfter: str | None = None,
                        ContinuationToken: str | None = None) -> dict[str, object]:
        self.calls.append({"Prefix": Prefix, "StartAfter": StartAfter,
                           "ContinuationToken": ContinuationToken})
        if self.down:
            from sidecar.errors import ReplicaUnreachable
            raise ReplicaUnreachable("unreachable", "cannot reach the bucket: timed out")
        after = ContinuationToken or StartAfter or ""
        keys = sorted(k for k in self.keys if k.startswith(Prefix) and k > after)
        page, rest = keys[:MaxKeys], keys[MaxKeys:]
        out: dict[str, object] = {"IsTruncated": bool(rest),
                                  "Contents": [{"Key": k, "Size": 1} for k in page]}
        if rest:
            out["NextContinuationToken"] = page[-1]
        return out


class Control:
    """Litestream's local TXID per database, as its control socket gives it."""

    def __init__(self) -> None:
        self.txids: dict[str, int] = {}

    def txid(self, db: Path) -> int:
        return self.txids[db.name]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Rig:
    entry: DbDir
    bucket: Bucket
    control: Control
    clock: Clock
    lag: DirLag

    def write(self, rel: str) -> None:
        """A write Litestream turned into the next TXID, seen by the watcher."""
        self.control.txids[rel] += 1
        self.touch(rel)

    def touch(self, rel: str) -> None:
        """A write the watcher saw (Litestream makes its TXID on its next sync)."""
        self.lag.file_changed(str(self.entry.dir / rel))
        self.clock.t += 0.1


def _setup(tmp_path: Path, n: int, page: int = 1000) -> Rig:
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(tmp_path / "tenants"),
           "SIDECAR_REPLICA_URL": "s3://bkt/tenants", "SIDECAR_S3_ENDPOINT": "http://s3.test",
           "AWS_ACCESS_KEY_ID": "key-id-1234", "AWS_SECRET_ACCESS_KEY": "secret-value-5678"}
    cfg = config.load(env, need_app=False, cwd=tmp_path)
    entry = cfg.directories[0]
    entry.dir.mkdir(parents=True)
    bucket, control, clock = Bucket(), Control(), Clock()
    for i in range(n):
        rel = f"t{i:04d}.db"
        (entry.dir / rel).write_bytes(b"x")
        control.txids[rel] = 3
        for level, txid in ((0, 3), (1, 2), (9, 1)):  # three objects a database
            bucket.put(rel, txid, level)
    view = tenants.BucketView(entry, 1.0, client=bucket, page=page)
    lag = DirLag(entry, control, 1.0, 10, clock=clock, bucket=view)  # type: ignore[arg-type]
    return Rig(entry, bucket, control, clock, lag)


@pytest.mark.parametrize("n", [10, 1000])
def test_an_idle_directory_costs_one_request_a_check_whatever_its_size(
        tmp_path: Path, n: int) -> None:
    r = _setup(tmp_path, n)
    first = r.lag.check()
    assert first.reachable and first.lag_seconds == 0.0 and r.lag.members == n
    assert first.requests == -(-3 * n // 1000)  # the whole prefix once, 1,000 keys a page
    for _ in range(12):
        r.clock.t += 10
        res = r.lag.check()
        assert res.reachable and res.requests == 1 and res.lag_seconds == 0.0
    assert not r.lag.behind


def test_the_pages_sweep_the_whole_prefix_and_start_over(tmp_path: Path) -> None:
    r = _setup(tmp_path, 1000)
    r.lag.check()
    r.bucket.calls.clear()
    for _ in range(4):
        r.lag.check()
    # 3,000 keys: three pages, each after the previous one's last key, then the first again.
    starts = [c["StartAfter"] for c in r.bucket.calls]
    assert starts[0] is None and starts[3] is None
    assert starts[1] == "tenants/t0333.db/0000/0000000000000003-0000000000000003.ltx"
    assert starts[2] is not None and starts[2] > starts[1]


def test_a_written_database_has_its_own_prefix_listed_until_the_bucket_holds_it(
        tmp_path: Path) -> None:
    r = _setup(tmp_path, 1000)
    r.lag.check()
    r.write("t0900.db")  # TXID 4 here, 3 in the bucket
    r.clock.t += 10
    r.bucket.calls.clear()
    res = r.lag.check()
    assert res.requests == 2  # the page, then t0900.db's own prefix
    assert r.bucket.calls[1]["Prefix"] == "tenants/t0900.db/"
    assert res.lag_seconds == pytest.approx(10.1) and r.lag.behind[0][0] == "t0900.db"
    assert [k for k, v in r.lag.lags.items() if v > 0] == ["t0900.db"]
    r.bucket.put("t0900.db", 4)  # Litestream uploaded it
    r.clock.t += 10
    res = r.lag.check()
    assert res.requests == 2 and res.lag_seconds == 0.0 and not r.lag.behind
    r.clock.t += 10
    assert r.lag.check().requests == 1  # caught up: nothing of its own again


def test_more_databases_behind_than_pages_read_the_whole_prefix_once(tmp_path: Path) -> None:
    r = _setup(tmp_path, 1000)
    assert r.lag.check().requests == 3
    for i in range(10):  # 1% of the directory
        r.write(f"t{i * 97:04d}.db")
    r.clock.t += 10
    res = r.lag.check()
    assert res.requests == 3  # the whole prefix alone (3 pages < 10 own listings), no page
    assert len(r.lag.behind) == 10


def test_a_page_ending_inside_a_database_never_lowers_its_position(tmp_path: Path) -> None:
    r = _setup(tmp_path, 3, page=4)
    r.lag.check()
    want = {"t0000.db": 3, "t0001.db": 3, "t0002.db": 3}
    assert r.lag.remote == want
    r.lag.check()  # keys 1-4: t0000.db whole, t0001.db's level 0 only (TXID 3)
    assert r.lag.remote == want
    r.lag.check()  # keys 5-8: t0001.db's levels 1 and 9 (TXIDs 2, 1), t0002.db's level 0
    assert r.lag.remote == want
    r.lag.check()  # key 9: t0002.db's level 9 (TXID 1), the sweep's end
    assert r.lag.remote == want and r.lag._cursor is None


def test_a_database_gone_from_the_bucket_leaves_the_positions_after_a_sweep(
        tmp_path: Path) -> None:
    r = _setup(tmp_path, 4, page=1000)
    r.lag.check()
    r.bucket.drop("t0002.db")
    r.lag.check()  # one page is the whole sweep
    assert "t0002.db" not in r.lag.remote and r.lag.remote["t0001.db"] == 3


def test_an_outage_keeps_the_positions_and_only_the_written_tenant_falls_behind(
        tmp_path: Path) -> None:
    r = _setup(tmp_path, 1000)
    r.lag.check()
    r.bucket.down = True
    r.clock.t += 10
    res = r.lag.check()
    assert not res.reachable and res.requests == 1 and res.lag_seconds == 0.0
    r.write("t0900.db")
    for _ in range(3):
        r.clock.t += 10
        res = r.lag.check()
        assert not res.reachable and res.requests == 1  # no per-database listing while down
    assert res.lag_seconds == pytest.approx(30.1) and [r for r, _ in r.lag.behind] == ["t0900.db"]
    r.bucket.down = False
    r.bucket.put("t0900.db", 4)
    r.clock.t += 10
    res = r.lag.check()
    assert res.reachable and res.lag_seconds == 0.0 and res.requests == 2  # page 1 again, and t0900.db's own


def test_a_failed_listing_of_one_database_makes_the_check_unreachable(tmp_path: Path) -> None:
    r = _setup(tmp_path, 10)
    r.lag.check()
    r.write("t0003.db")
    real = r.bucket.list_objects_v2

    def flaky(**kw: object) -> dict[str, object]:
        if kw.get("Prefix") == "tenants/t0003.db/":
            raise ReplicaUnreachable("unreachable", "cannot reach http://s3.test: timed out")
        return real(**kw)  # type: ignore[arg-type]

    r.bucket.list_objects_v2 = flaky  # type: ignore[method-assign]
    r.clock.t += 10
    res = r.lag.check()
    assert not res.reachable and "timed out" in (res.error or "") and res.requests == 2


def test_a_database_created_while_running_is_checked_in_the_next_check(tmp_path: Path) -> None:
    r = _setup(tmp_path, 10)
    r.lag.check()
    (r.entry.dir / "new.db").write_bytes(b"x")
    r.control.txids["new.db"] = 1
    r.clock.t += 10
    res = r.lag.check()
    assert r.lag.members == 11 and r.lag.behind[0][0] == "new.db" and res.requests == 2
    r.bucket.put("new.db", 1)
    r.clock.t += 10
    assert r.lag.check().lag_seconds == 0.0 and not r.lag.behind


def test_a_write_litestream_has_not_turned_into_a_txid_yet_is_not_forgotten(
        tmp_path: Path) -> None:
    """A check between a write and Litestream's next sync sees the old TXID: the next check
    asks Litestream again, and the new TXID the bucket lacks shows as lag."""
    r = _setup(tmp_path, 10)
    r.lag.check()
    r.touch("t0004.db")  # written; Litestream's TXID is still 3
    res = r.lag.check()
    assert res.lag_seconds == 0.0  # nothing Litestream counted yet, and within GRACE
    r.control.txids["t0004.db"] = 4  # its sync, which the bucket never gets
    r.clock.t += 10
    res = r.lag.check()
    assert [rel for rel, _ in r.lag.behind] == ["t0004.db"]
    assert res.lag_seconds == pytest.approx(10.1)


def test_a_tenant_written_while_litestream_does_not_answer_stays_behind(
        tmp_path: Path) -> None:
    r = _setup(tmp_path, 10)
    r.lag.check()
    r.lag.control = None  # the control socket is gone
    r.touch("t0004.db")
    lags = []
    for _ in range(3):
        r.clock.t += 5
        res = r.lag.check()
        lags.append(round(res.lag_seconds, 1))
        assert res.local_txid is None
    assert lags == [5.1, 10.1, 15.1]
    assert res.requests == 1  # the bucket cannot settle what Litestream did not answer


def test_a_database_deleted_and_created_again_has_its_position_read_again(
        tmp_path: Path) -> None:
    """t0905.db is deleted, its backup purged, and a new one made under the same name: the
    old position (TXID 3) must not make its new TXIDs look uploaded."""
    r = _setup(tmp_path, 1000)
    r.lag.check()
    (r.entry.dir / "t0905.db").unlink()
    r.clock.t += 10
    r.lag.check()
    assert "t0905.db" not in r.lag.remote
    r.bucket.drop("t0905.db")
    (r.entry.dir / "t0905.db").write_bytes(b"x")
    r.control.txids["t0905.db"] = 2  # below the old 3, never uploaded
    r.clock.t += 10
    res = r.lag.check()
    assert [rel for rel, _ in r.lag.behind] == ["t0905.db"] and res.requests == 2


def test_a_replaced_database_has_its_position_read_again(tmp_path: Path) -> None:
    """Its local TXID goes back (a restore put another file in place): the known position is
    dropped and its own prefix listed, as a single database's tracker is reset."""
    r = _setup(tmp_path, 1000)
    r.lag.check()
    r.bucket.drop("t0950.db")
    r.bucket.put("t0950.db", 1)  # the bucket as the replacing restore left it
    r.control.txids["t0950.db"] = 2
    r.touch("t0950.db")
    r.clock.t += 10
    res = r.lag.check()
    assert r.lag.remote["t0950.db"] == 1 and [b for b, _ in r.lag.behind] == ["t0950.db"]
    assert r.bucket.calls[-1]["Prefix"] == "tenants/t0950.db/" and res.requests == 2


def test_a_databases_own_listing_outlasts_the_sweep_that_read_it_before(
        tmp_path: Path) -> None:
    """Its own listing (lower: the bucket was rewritten) after the sweep's page read the old
    position: the sweep's end keeps the newer reading."""
    r = _setup(tmp_path, 1000)
    r.lag.check()
    r.lag.check()  # page 1: t0000.db .. t0333.db
    r.bucket.drop("t0100.db")
    r.bucket.put("t0100.db", 1)
    r.control.txids["t0100.db"] = 2
    r.touch("t0100.db")  # TXID 2 < the known 3: replaced, listed on its own
    r.lag.check()  # page 2, then t0100.db's own prefix
    assert r.lag.remote["t0100.db"] == 1
    r.lag.check()  # page 3: the sweep's end
    assert r.lag._cursor is None and r.lag.remote["t0100.db"] == 1
    assert [b for b, _ in r.lag.behind] == ["t0100.db"]


def test_a_database_dropped_from_the_bucket_mid_sweep_is_gone_at_its_end(
        tmp_path: Path) -> None:
    r = _setup(tmp_path, 1000)
    r.lag.check()
    r.lag.check()  # page 1
    r.bucket.drop("t0500.db")  # on page 2, not read yet
    r.bucket.drop("t0010.db")  # on page 1, read already: the next sweep sees it gone
    r.lag.check()
    r.lag.check()
    assert r.lag._cursor is None
    assert "t0500.db" not in r.lag.remote and r.lag.remote["t0010.db"] == 3
    for _ in range(3):
        r.lag.check()
    assert "t0010.db" not in r.lag.remote and len(r.lag.remote) == 998


def test_a_name_s3_cannot_be_asked_for_is_read_from_the_whole_prefix(
        tmp_path: Path) -> None:
    """A file name that is not UTF-8 on disk (os.walk gives it with surrogates) cannot go
    into a request's prefix: the whole prefix is listed instead of failing the check."""
    r = _setup(tmp_path, 10)
    r.lag.check()
    assert r.lag._members(["t\udcff.db", "t0002.db"]) == 1  # 30 keys: one whole listing
    assert [c["Prefix"] for c in r.bucket.calls[-1:]] == ["tenants/"]
