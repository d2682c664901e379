"""Time travel without real parts: SIDECAR_PITR_WINDOW in the rendered config, the window read
from a project's litestream.yml, the planner replay over LTX file timestamps, the cost
estimate and the undo bookmarks."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from sidecar import config
from sidecar.bucket.restore_points import LtxFile, points, stretches
from sidecar.config import pitr
from sidecar.errors import ConfigError
from sidecar.litestream import yaml_file as litestream
from sidecar.recovery import bookmarks


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "SIDECAR_DB_PATH": str(tmp_path / "app.db"),
            "SIDECAR_REPLICA_URL": "s3://bkt/app.db", "SIDECAR_S3_ENDPOINT": "http://s3.test",
            "SIDECAR_MIGRATE_COMMAND": "", **extra}


@pytest.mark.parametrize(("value", "interval", "retention", "window"), [
    (None, "43200000ms", "129600000ms", 86400.0),  # the default: Litestream's 24h
    ("2h", "3600000ms", "10800000ms", 7200.0),
    ("90m", "2700000ms", "8100000ms", 5400.0),
    ("168h", "302400000ms", "907200000ms", 604800.0),
])
def test_pitr_window_sets_the_generated_snapshot_interval_and_retention(
        tmp_path: Path, value: str | None, interval: str, retention: str, window: float) -> None:
    env = _env(tmp_path, **({"SIDECAR_PITR_WINDOW": value} if value else {}))
    cfg = config.load(env, need_app=False, cwd=tmp_path)
    doc = litestream.render_config(cfg, 9999)
    assert doc["snapshot"] == {"interval": interval, "retention": retention}
    # The oldest snapshot kept is at least retention - interval old: the window itself.
    assert pitr.configured(cfg)["window_seconds"] == window
    assert pitr.configured(cfg)["source"] == "SIDECAR_PITR_WINDOW"


@pytest.mark.parametrize("bad", ["0", "-1h", "soon", "1y"])
def test_a_bad_pitr_window_is_one_error_naming_it(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(_env(tmp_path, SIDECAR_PITR_WINDOW=bad), need_app=False, cwd=tmp_path)
    text = str(exc.value)
    assert "SIDECAR_PITR_WINDOW" in text and bad in text, text


def test_the_window_of_a_project_litestream_yml_is_read_from_it(tmp_path: Path) -> None:
    (tmp_path / "litestream.yml").write_text(textwrap.dedent(f"""
        snapshot:
          interval: 6h
          retention: 1h30m
        levels:
          - interval: 10s
        l0-retention: 1m
        dbs:
          - path: {tmp_path}/app.db
            replica:
              url: s3://bkt/app.db
    """))
    env = _env(tmp_path)
    env.pop("SIDECAR_REPLICA_URL")
    cfg = config.load(env, need_app=False, cwd=tmp_path)
    w = pitr.configured(cfg)
    assert w["snapshot_interval_seconds"] == 6 * 3600 and w["snapshot_retention_seconds"] == 5400
    assert w["window_seconds"] == 0  # a snapshot interval longer than its retention
    assert w["level_intervals_seconds"] == [10.0] and w["l0_retention_seconds"] == 60
    assert w["source"].endswith("litestream.yml")
    # sidecar does not touch the project's own snapshot settings
    assert litestream.render_config(cfg, 9999)["snapshot"] == {"interval": "6h",
                                                               "retention": "1h30m"}
    (tmp_path / "litestream.yml").write_text(f"dbs:\n  - path: {tmp_path}/app.db\n"
                                             "    replica:\n      url: s3://bkt/app.db\n")
    w = pitr.configured(config.load(env, need_app=False, cwd=tmp_path))
    assert w["snapshot_retention_seconds"] == 86400 and w["window_seconds"] == 0


def test_go_durations() -> None:
    assert pitr.go_duration("1h30m") == 5400 and pitr.go_duration("500ms") == 0.5
    assert pitr.go_duration("0") == 0 and pitr.go_duration("2.5s") == 2.5
    assert pitr.go_duration("10") is None and pitr.go_duration("1d") is None
    assert pitr.go_duration("") is None


def f(level: int, lo: int, hi: int, created: int) -> LtxFile:
    return LtxFile(level, lo, hi, created, 100)


def test_points_replay_the_planner() -> None:
    """A snapshot of txid 1 at t=1000; L1 compactions carry their last sync's time; L0
    files (one per sync) after the last compaction; a later snapshot."""
    files = [
        f(9, 1, 1, 1000),
        f(1, 1, 3, 3000), f(1, 4, 6, 6000),
        f(2, 1, 6, 6000),  # same max and time as an L1: the point is L1's
        f(0, 7, 7, 7000), f(0, 8, 8, 8000),
        f(9, 1, 8, 8500),  # reaches no further than the L0 file before it
        f(0, 9, 9, 9000),
    ]
    pts = points(files)
    assert [(p.txid, p.time_ms, p.level) for p in pts] == [
        (1, 1001, 9), (3, 3001, 1), (6, 6001, 1), (7, 7001, 0), (8, 8001, 0), (9, 9001, 0)]
    assert [s["kind"] for s in stretches(pts)] == ["snapshot", "compaction of level 1", "sync"]


def test_points_need_a_contiguous_chain() -> None:
    """A gap (a deleted file) ends the chain until a snapshot past it; files older than the
    oldest snapshot that do not start at 1 restore nothing."""
    files = [f(1, 5, 7, 500), f(9, 1, 4, 1000), f(1, 9, 9, 2000), f(9, 1, 9, 4000),
             f(0, 10, 10, 5000)]
    pts = points(files)
    # 5-7 restores nothing alone (no base), then chains from the snapshot; 9 waits for the
    # snapshot that covers the missing 8.
    assert [(p.txid, p.time_ms) for p in pts] == [(7, 1001), (9, 4001), (10, 5001)]


def test_points_of_an_empty_bucket() -> None:
    assert points([]) == [] and stretches([]) == []


def test_estimate_counts_snapshots_compactions_and_syncs() -> None:
    w = {"snapshot_interval_seconds": 43200.0, "snapshot_retention_seconds": 129600.0,
         "level_intervals_seconds": [30.0, 300.0, 3600.0], "l0_retention_seconds": 300.0}
    idle = pitr.estimate(w, 10_000_000, 0.0, 1.0)
    assert idle["objects"] == 4 and idle["bytes"] == 40_000_000
    busy = pitr.estimate(w, 10_000_000, 1000.0, 1.0)
    assert busy["objects"] == 4 + 4320 + 432 + 36 + 300
    assert busy["bytes"] == 40_000_000 + 4320 * 30_000 + 432 * 300_000 + 36 * 3_600_000 \
        + 300 * 1000


def test_bookmarks_are_kept_per_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert bookmarks.get(state, tmp_path / "a.db") is None
    bookmarks.put(state, tmp_path / "a.db", {"kept": "/x/a.db.1", "txid": "01"})
    bookmarks.put(state, tmp_path / "b.db", {"kept": "/x/b.db.1", "txid": "02"})
    bookmarks.put(state, tmp_path / "a.db", {"kept": "/x/a.db.2", "txid": "03"})
    assert bookmarks.get(state, tmp_path / "a.db") == {"kept": "/x/a.db.2", "txid": "03"}
    assert bookmarks.get(state, tmp_path / "b.db")["txid"] == "02"
    assert (state / bookmarks.FILE).stat().st_mode & 0o777 == 0o600
    (state / bookmarks.FILE).write_text("not json")
    assert bookmarks.get(state, tmp_path / "a.db") is None


def test_check_shows_the_window_and_its_cost(tmp_path: Path) -> None:
    from sidecar.bucket.replica import DirStore
    from sidecar.commands.cmd_check import window_check

    (tmp_path / "app.db").write_bytes(b"x" * 4096)
    cfg = config.load(_env(tmp_path, SIDECAR_PITR_WINDOW="2h"), need_app=False, cwd=tmp_path)
    c = window_check(cfg, cfg.databases[0], DirStore(tmp_path / "replica"))
    assert c.ok and c.name == "restore window (app.db)"
    assert c.detail.startswith("2h (SIDECAR_PITR_WINDOW: snapshots every 1h, kept 3h); "
                               "no snapshot yet; costs about 4 objects, 16.4 KB"), c.detail
    ltx = tmp_path / "replica" / "ltx"
    for level, name, size, mtime in ((9, "0000000000000001-0000000000000001.ltx", 4096, 1000),
                                     (0, "0000000000000002-0000000000000002.ltx", 500, 2000),
                                     (0, "0000000000000003-0000000000000003.ltx", 500, 2010)):
        (ltx / str(level)).mkdir(parents=True, exist_ok=True)
        (ltx / str(level) / name).write_bytes(b"x" * size)
        os.utime(ltx / str(level) / name, (mtime, mtime))
    c = window_check(cfg, cfg.databases[0], DirStore(tmp_path / "replica"))
    assert "reaches back to 1970-01-01T00:16:40Z" in c.detail, c.detail
    assert "at 50 B/s of changes" in c.detail, c.detail


@pytest.mark.parametrize(("body", "field"), [
    ({"timestamp": "2025-01-01T00:00:00Z"}, "timestamp"), ({"txid": "1"}, "txid"),
    ({"wait": "yes"}, "wait"), ({"timeout": 5}, "timeout"),
    ({"timeout": -1, "wait": True}, "timeout"), ({"db": 3}, "db"),
])
def test_undo_request_is_strict(body: dict[str, object], field: str) -> None:
    from sidecar import api

    with pytest.raises(api.BadRequest) as exc:
        api.UndoRequest.parse(body)
    assert field in exc.value.message
    assert api.UndoRequest.parse({"db": "app.db", "wait": True, "timeout": 9}) == \
        api.UndoRequest(db="app.db", wait=True, timeout=9)


@pytest.mark.parametrize(("args", "words"), [
    (["--list", "--limit", "0"], ["--limit 0", "1 or more"]),
    (["--limit", "3"], ["--limit only applies with --list"]),
    (["--list", "--output", "x.db"], ["--list takes only"]),
    (["--undo", "--output", "x.db"], ["--undo takes only"]),
    (["--undo", "--yes"], ["cannot undo: no sidecar is running here"]),
])
def test_restore_list_and_undo_refuse_bad_arguments_touching_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        words: list[str]) -> None:
    """One error, exit 1, before the bucket or the daemon is asked anything (the endpoint
    here answers nothing)."""
    from sidecar import cli

    env = _env(tmp_path, SIDECAR_S3_ENDPOINT="http://127.0.0.1:9")
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith(("SIDECAR_", "AWS_", "DATABASE_URL"))]:
            mp.delenv(k)
        for k, v in env.items():
            mp.setenv(k, v)
        mp.chdir(tmp_path)
        code = cli.main(["restore", *args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert all(w in err for w in words), err
    assert "Traceback" not in err and not (tmp_path / "x.db").exists()


def test_read_files_takes_litestreams_timestamp_metadata_and_skips_files_deleted_meanwhile(
        tmp_path: Path) -> None:
    """The planner's creation time is the `litestream-timestamp` metadata (else LastModified);
    a file gone between the listing and its HEAD (a 404) is left out, not a missing bucket."""
    from datetime import UTC, datetime

    from sidecar.bucket import replica, restore_points
    from sidecar.errors import ReplicaUnreachable

    keys = {"app.db/0000/0000000000000002-0000000000000002.ltx": "2026-12-07T04:00:02.5Z",
            "app.db/0000/0000000000000003-0000000000000003.ltx": None,  # no metadata
            "app.db/0000/0000000000000004-0000000000000004.ltx": "gone",
            "app.db/0009/0000000000000001-0000000000000001.ltx": "2026-12-07T04:00:01.123456789Z"}
    listed = datetime(2026, 12, 7, 4, 0, 9, tzinfo=UTC)

    class Client:
        def list_objects_v2(self, **kw: object) -> dict[str, object]:
            return {"Contents": [{"Key": k, "Size": 10, "LastModified": listed}
                                 for k in keys if k.startswith(str(kw["Prefix"]))]}

        def head_object(self, Bucket: str, Key: str) -> dict[str, object]:
            if keys[Key] == "gone":  # what bucket.client.Client.head_object makes of a 404
                raise ReplicaUnreachable("missing", f"{Key!r} is no longer in bucket 'bkt'")
            return {"Metadata": {"litestream-timestamp": keys[Key]} if keys[Key] else {}}

    cfg = config.load(_env(tmp_path), need_app=False, cwd=tmp_path)
    db = cfg.databases[0]
    assert db.replica is not None
    store = replica.S3Store(db.replica, client=Client())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replica, "open_store", lambda *a, **k: store)
        files = restore_points.read_files(db)
    got = sorted((f.level, f.min_txid, f.created_ms) for f in files)
    ms = int(listed.timestamp() * 1000)
    t2 = int(datetime(2026, 12, 7, 4, 0, 2, 500000, tzinfo=UTC).timestamp() * 1000)
    t1 = int(datetime(2026, 12, 7, 4, 0, 1, 123000, tzinfo=UTC).timestamp() * 1000)
    assert got == [(0, 2, t2), (0, 3, ms), (9, 1, t1)]


def test_a_bookmark_is_forgotten_and_an_unreadable_file_is_kept_aside(tmp_path: Path) -> None:
    """put(None) forgets a database's bookmark (a swap that kept nothing: --undo must not
    reach back to an older restore's copy); a bookmarks file that is not JSON is renamed
    aside before the next write, never overwritten with the other databases' marks lost."""
    from sidecar.recovery import bookmarks

    a, b = tmp_path / "a.db", tmp_path / "b.db"
    bookmarks.put(tmp_path, a, {"kept": "/k/a"})
    bookmarks.put(tmp_path, b, {"kept": "/k/b"})
    bookmarks.put(tmp_path, a, None)
    assert bookmarks.get(tmp_path, a) is None and bookmarks.get(tmp_path, b) == {"kept": "/k/b"}
    (tmp_path / bookmarks.FILE).write_text('{"/x": {"kept": "/k/x"')  # cut short
    bookmarks.put(tmp_path, a, {"kept": "/k/a2"})
    assert bookmarks.get(tmp_path, a) == {"kept": "/k/a2"}
    aside = list(tmp_path.glob(bookmarks.FILE + ".unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"/x": {"kept": "/k/x"'


def test_a_timestamp_no_backup_can_have_falls_back_to_the_listing_time() -> None:
    """Metadata claiming year 9999 (the bucket is untrusted) is not a time: the file's
    LastModified is used, as Litestream does without metadata (restore --list was exit 70)."""
    from sidecar.bucket import restore_points

    assert restore_points._parse_rfc3339("9999-12-31T23:59:59.999Z") is None
    assert restore_points._parse_rfc3339("0001-01-01T00:00:00Z") is None
    assert restore_points._parse_rfc3339("2026-12-07T04:00:01.5Z") == 1796616001500
