"""The restore plan made the way Litestream makes it (fetch.calc_plan, a port of
CalcRestorePlan), and the LTX header and dry-run answers fetch.py reads."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.recovery.fetch import PlanFile, calc_plan, dry_run_plan, header_info


def f(level: int, lo: int, hi: int, size: int = 10) -> PlanFile:
    return PlanFile(level, lo, hi, size)


def names(plan: list[PlanFile]) -> list[tuple[int, int, int]]:
    return [(p.level, p.min_txid, p.max_txid) for p in plan]


def test_newest_snapshot_then_the_files_that_extend_the_chain_furthest() -> None:
    """The newest snapshot, then an L1 covering several L0 files beats them, then the L0
    files after it; older files below the snapshot are not taken."""
    levels = {9: [f(9, 1, 5), f(9, 1, 20)],
              1: [f(1, 1, 10), f(1, 21, 30)],
              0: [f(0, 19, 19), f(0, 20, 20), f(0, 21, 21), f(0, 22, 22), f(0, 31, 31),
                  f(0, 32, 32)]}
    assert names(calc_plan(levels)) == [(9, 1, 20), (1, 21, 30), (0, 31, 31), (0, 32, 32)]


def test_a_txid_target_stops_there_and_picks_the_snapshot_below_it() -> None:
    levels = {9: [f(9, 1, 5), f(9, 1, 20)], 0: [f(0, 6, 6), f(0, 7, 7), f(0, 8, 8)]}
    assert names(calc_plan(levels, txid=7)) == [(9, 1, 5), (0, 6, 6), (0, 7, 7)]
    assert names(calc_plan(levels, txid=5)) == [(9, 1, 5)]


def test_a_txid_no_file_reaches_gives_no_plan() -> None:
    assert calc_plan({9: [f(9, 1, 5)], 0: [f(0, 6, 6)]}, txid=9) == []


def test_ties_prefer_the_lower_min_txid_then_the_higher_level() -> None:
    levels = {9: [f(9, 1, 4)], 2: [f(2, 5, 8)], 1: [f(1, 3, 8), f(1, 5, 8)]}
    # (1, 3, 8) and (2, 5, 8) reach as far: the lower min TXID wins.
    assert names(calc_plan(levels)) == [(9, 1, 4), (1, 3, 8)]
    levels = {9: [f(9, 1, 4)], 2: [f(2, 5, 8)], 0: [f(0, 5, 8)]}
    assert names(calc_plan(levels)) == [(9, 1, 4), (2, 5, 8)]


def test_a_gap_gives_no_plan_for_the_latest_state_but_a_txid_before_it_is_planned() -> None:
    """Litestream refuses a latest-state restore with files beyond a gap (non-contiguous):
    no plan, so it restores directly and says so itself; a target before the gap is fine."""
    levels = {9: [f(9, 1, 4)], 0: [f(0, 5, 5), f(0, 7, 7)]}
    assert calc_plan(levels) == []
    assert names(calc_plan(levels, txid=5)) == [(9, 1, 4), (0, 5, 5)]


def test_without_a_snapshot_the_chain_starts_at_the_first_transaction() -> None:
    levels = {0: [f(0, 1, 1), f(0, 2, 2)], 1: [f(1, 1, 2)]}
    assert names(calc_plan(levels)) == [(1, 1, 2)]


def test_the_layouts_of_a_planned_file() -> None:
    p = f(9, 1, 0x1a)
    assert p.s3_key == "0009/0000000000000001-000000000000001a.ltx"
    assert p.local == "ltx/9/0000000000000001-000000000000001a.ltx"


def test_the_ltx_header_gives_page_size_count_and_time() -> None:
    head = (b"LTX1" + (2).to_bytes(4, "big") + (4096).to_bytes(4, "big")
            + (7).to_bytes(4, "big") + (6).to_bytes(8, "big") + (6).to_bytes(8, "big")
            + (1796616452558).to_bytes(8, "big") + bytes(60))
    assert header_info(head) == (4096, 7, 1796616452558)
    assert header_info(b"SQLite format 3\0" + bytes(84)) is None
    assert header_info(head[:30]) is None


def test_the_dry_run_answer_is_read_for_its_files() -> None:
    out = "some log line\n" + json.dumps({"files": [
        {"level": 9, "name": "x", "min_txid": "0000000000000001",
         "max_txid": "0000000000000002", "size": 5, "timestamp": "2026-01-01T00:00:00Z"}]})
    assert dry_run_plan(out) == [{"level": 9, "min_txid": "0000000000000001",
                                  "max_txid": "0000000000000002", "size": 5}]
    assert dry_run_plan("no json here") == []


def test_a_level_is_listed_to_the_servers_last_page_whatever_keys_a_page_holds() -> None:
    """A full page holding a stray key (999 LTX names, 1 junk) is not the last page: the
    listing follows IsTruncated, so the newest L0 file on the next page is in the plan
    (counting parsed names stopped there, and the restore came back older without a word)."""
    from sidecar import config
    from sidecar.bucket import replica

    page1 = [f"app.db/0000/{i:016x}-{i:016x}.ltx" for i in range(2, 1001)] + ["app.db/0000/junk"]
    page2 = ["app.db/0000/00000000000003e9-00000000000003e9.ltx"]
    calls: list[dict[str, object]] = []

    class Client:
        def list_objects_v2(self, **kw: object) -> dict[str, object]:
            calls.append(kw)
            if not str(kw["Prefix"]).endswith("/0000/"):
                return {"Contents": [], "IsTruncated": False}
            if "ContinuationToken" not in kw:
                return {"Contents": [{"Key": k, "Size": 1} for k in sorted(page1)],
                        "IsTruncated": True, "NextContinuationToken": "t2"}
            assert kw["ContinuationToken"] == "t2"
            return {"Contents": [{"Key": k, "Size": 1} for k in page2], "IsTruncated": False}

    rep = config.Replica(url="s3://bkt/app.db", s3=config.S3(
        bucket="bkt", prefix="app.db", endpoint="http://127.0.0.1:9", region="auto",
        force_path_style=True))
    store = replica.S3Store(rep, client=Client())
    objs = store.list_level(0)
    assert len(objs) == 1000 and objs[-1].max_txid == 0x3E9
    levels = {0: [PlanFile(0, o.min_txid, o.max_txid, o.size) for o in objs],
              9: [f(9, 1, 1)]}
    assert names(calc_plan(levels))[-1] == (0, 0x3E9, 0x3E9)


def test_a_mirror_is_made_new_and_private_whatever_was_planted_at_its_path(tmp_path) -> None:
    """The mirror's name beside an output is predictable (`--output /tmp/x.db`): a link or a
    directory planted there is removed, never followed, and the mirror is a new 0700
    directory (a link was accepted by mkdir(exist_ok) and the fetch wrote through it)."""
    import os
    import stat

    from sidecar.recovery import fetch

    out = tmp_path / "x.db"
    victim = tmp_path / "victim"
    (victim / "ltx" / "0").mkdir(parents=True)
    (victim / "ltx" / "0" / "keep.ltx").write_bytes(b"theirs")
    os.symlink(victim, fetch.mirror_path(out))
    root = fetch.make_mirror(out)
    st = os.lstat(root)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert list(root.iterdir()) == []
    assert (victim / "ltx" / "0" / "keep.ltx").read_bytes() == b"theirs"
    fetch.remove_mirror(out)
    assert not os.path.lexists(fetch.mirror_path(out))
    os.symlink(victim, fetch.mirror_path(out))
    fetch.remove_mirror(out)  # a link alone: unlinked, its target kept
    assert not os.path.lexists(fetch.mirror_path(out)) and victim.is_dir()


def test_a_mirror_removed_later_is_out_of_the_way_at_once_and_gone_after_the_wait(
        tmp_path, monkeypatch) -> None:
    """`remove_mirror(later=True)`: the mirror's path is free when it returns (its files are
    removed by a thread), and nothing is left after `wait_removals(out)`, which does not wait
    for another output's. A `.gone` that is
    still there (an earlier removal) or a link planted at that name makes it remove the
    mirror there and then, the link's target untouched. A leftover `.gone` (a run killed
    while removing it) is one of the next start's leftovers."""
    import os
    import threading
    import time

    from sidecar.recovery import fetch, restore

    db = tmp_path / "app.db"
    out = restore.temp_path(db)

    def mirror() -> Path:
        root = fetch.make_mirror(out)
        (root / "ltx" / "0").mkdir(parents=True)
        for i in range(50):
            (root / "ltx" / "0" / f"{i:04}.ltx").write_bytes(os.urandom(64 * 1024))
        return root

    gone = fetch.mirror_path(out).with_name(fetch.mirror_path(out).name + fetch.GONE_SUFFIX)
    mirror()
    gate = threading.Event()
    real = fetch.shutil.rmtree

    def held(*args, **kwargs):  # the removal waits until the test lets it go
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(fetch.shutil, "rmtree", held)
    fetch.remove_mirror(out, later=True)  # returns while the removal is held
    assert not os.path.lexists(fetch.mirror_path(out))
    assert len(list((gone / "ltx" / "0").iterdir())) == 50  # renamed aside, not yet removed
    t0 = time.monotonic()
    fetch.wait_removals(tmp_path / "other.db", timeout=5)  # another output's: none to wait for
    assert time.monotonic() - t0 < 1 and gone.is_dir()
    gate.set()
    fetch.wait_removals(out)  # this output's own
    assert not os.path.lexists(gone)
    monkeypatch.setattr(fetch.shutil, "rmtree", real)
    assert list(tmp_path.iterdir()) == []

    gone.mkdir()
    (gone / "still.ltx").write_bytes(b"x")  # an earlier removal, not over
    mirror()
    fetch.remove_mirror(out, later=True)
    assert not os.path.lexists(fetch.mirror_path(out)) and (gone / "still.ltx").exists()
    assert restore.clean_leftovers(db) == [gone]
    assert list(tmp_path.iterdir()) == []

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"theirs")
    os.symlink(victim, gone)
    mirror()
    fetch.remove_mirror(out, later=True)
    fetch.wait_removals()
    assert not os.path.lexists(fetch.mirror_path(out))
    assert (victim / "keep").read_bytes() == b"theirs" and os.path.islink(gone)


def test_a_certificate_failure_is_never_retried_by_the_fetch() -> None:
    """A download's certificate failure is final at once, as for every other request (it was
    retried for the replica timeout as a transport error)."""
    import ssl

    from botocore.exceptions import ConnectionClosedError, SSLError

    from sidecar.recovery.fetch import _retryable

    cert = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                           "verify failed: unable to get local issuer")
    assert not _retryable(SSLError(endpoint_url="https://s3.test", error=cert))
    assert _retryable(ConnectionClosedError(endpoint_url="https://s3.test"))


def test_an_answer_longer_than_its_range_is_refused_not_written_over_the_next(tmp_path) -> None:
    """A server that ignores Range answers the whole object: writing it at the range's start
    would overrun the following ranges; the fetch stops with an error instead (and the
    restore goes direct)."""
    import os

    import pytest

    from sidecar import config
    from sidecar.recovery import fetch

    env = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_PATH": str(tmp_path / "app.db"),
           "SIDECAR_REPLICA_URL": "s3://bkt/app.db", "SIDECAR_S3_ENDPOINT": "http://s3.test",
           "SIDECAR_MIGRATE_COMMAND": ""}
    db = config.load(env, need_app=False, cwd=tmp_path).databases[0]

    class Body:
        def iter_chunks(self, n: int):
            yield b"x" * 300  # the whole object, asked for bytes 100-199

        def close(self) -> None:
            pass

    class Client:
        def get_object(self, **kw: object) -> dict[str, object]:
            return {"Body": Body()}

    job = fetch.Fetch(db, tmp_path / "app.db", 4, 5.0)
    job._client, job._store = Client(), type("S", (), {"prefix": "app.db/", "bucket": "bkt"})()
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(fetch.LocalError, match="longer than the 100 bytes"):
            job._get(f(0, 2, 2, 300), 100, 199, fd)
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)
