"""Time travel with real Litestream and rclone: `restore --list` names moments every one of
which restores exactly the rows committed by then (in the L0 stretch, and on both sides of
compactions), a live restore drops a later phase, `--undo` puts it back and a second `--undo`
redoes, and what the last undo left is what a disaster restore returns.

The project's litestream.yml uses short level intervals (L1 every 3 s, L2 every 9 s, level 0
kept 15 s) so compaction happens within the test. A point of the every-sync stretch is
restorable while its level 0 file is kept (l0-retention), so those are restored first."""

from __future__ import annotations

import itertools
import json
import sqlite3
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.litestream import unix_request
from testkit import (
    S3_SECRET,
    base_env,
    free_port,
    rows,
    run_sidecar,
    s3_env,
    wait_for,
    write_app,
)
from testkit.live import (
    IDLE_APP,
    app_pids,
    db_path,
    restart_on_a_lost_volume,
    state_dir,
    synced,
    wait_synced,
)
from testkit.metrics import read

pytestmark = pytest.mark.slow

FAST_LEVELS = """
    levels:
      - interval: 3s
      - interval: 9s
    snapshot:
      interval: 10m
      retention: 1h
    l0-retention: 15s
    l0-retention-check-interval: 1s
"""


def project(tmp_path: Path, s3: Any, bucket: str, extra: str = FAST_LEVELS
            ) -> dict[str, str]:
    env = base_env(tmp_path, **s3_env(s3, bucket))
    env.pop("SIDECAR_REPLICA_URL")
    data = tmp_path / "data"
    (tmp_path / "litestream.yml").write_text(textwrap.dedent(extra) + textwrap.dedent(f"""
        dbs:
          - path: {data}/app.db
            replica:
              type: s3
              bucket: {bucket}
              path: app.db
              region: us-east-1
              endpoint: ${{SIDECAR_S3_ENDPOINT}}
              force-path-style: true
              access-key-id: ${{AWS_ACCESS_KEY_ID}}
              secret-access-key: ${{AWS_SECRET_ACCESS_KEY}}
    """))
    return env


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Writer:
    """Writes rows `<phase>-<n>` one transaction each and remembers when each committed."""

    def __init__(self, path: Path):
        self.con = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, "
                         "at REAL)")
        self.commits: list[tuple[str, float, float]] = []  # (value, began, committed)

    def phase(self, tag: str, seconds: float, every: float = 0.25) -> None:
        end = time.time() + seconds
        n = 0
        while time.time() < end:
            began = time.time()
            self.con.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (f"{tag}-{n}", began))
            self.commits.append((f"{tag}-{n}", began, time.time()))
            n += 1
            time.sleep(every)

    def committed_by(self, t: float) -> list[str]:
        return [v for v, _b, c in self.commits if c < t]

    def ambiguous(self, t: float, margin: float = 0.1) -> bool:
        """Whether a commit was under way within `margin` before `t`: Litestream reads the
        WAL a moment before it stamps the file, so the test cannot say which side it is on."""
        return any(b < t and c > t - margin for _v, b, c in self.commits)


def listing(env: dict[str, str], tmp_path: Path, *extra: str) -> dict[str, Any]:
    res = run_sidecar(["restore", "--list", "--json", *extra], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert len(out) == 1
    return out[0]


def restored_rows(env: dict[str, str], tmp_path: Path, when: str, name: str) -> list[str]:
    out = tmp_path / f"{name}.db"
    res = run_sidecar(["restore", "--output", str(out), "--timestamp", when], env, tmp_path,
                      timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return rows(out)


def sample(points: list[dict[str, Any]], writer: Writer) -> list[dict[str, Any]]:
    """Points to restore, the every-sync stretch first (its level 0 files expire): its newest
    point and one a quarter back; then the oldest point, both sides of each compacted stretch's change
    of level and of a compaction boundary inside it, and the middle of each."""
    oldest_first = list(reversed(points))
    l0 = [p for p in oldest_first if p["level"] == 0]
    rest = [p for p in oldest_first if p["level"] != 0]
    # (the older of the two a quarter from the newest: far from expiring while restored)
    picks = [*l0[-1:], *l0[3 * len(l0) // 4:3 * len(l0) // 4 + 1], oldest_first[0]]
    for a, b in itertools.pairwise(rest):  # both sides of a change of level
        if a["level"] != b["level"]:
            picks += [a, b]
    by_level: dict[int, list[dict[str, Any]]] = {}
    for p in rest:
        by_level.setdefault(p["level"], []).append(p)
    for run in by_level.values():  # a compaction boundary: two successive points, and the middle
        picks += [*run[-2:], run[len(run) // 2]]
    chosen: dict[str, dict[str, Any]] = {}
    for p in picks:
        if not writer.ambiguous(ts(p["time"])):
            chosen.setdefault(p["txid"], p)
    return list(chosen.values())


def test_list_restore_exact_points_live_restore_undo_redo_and_disaster(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    env = project(tmp_path, s3, bucket)
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("app started")
    writer = Writer(db_path(env))
    wait_synced(env)
    time.sleep(1.5)
    start = time.time()
    writer.phase("p1", 6)
    time.sleep(2)
    writer.phase("p2", 6)
    time.sleep(2)
    between = time.time() - 1.0  # in the pause before p3
    writer.phase("p3", 5)
    synced(env)
    time.sleep(1.5)  # the last sync's file and a compaction after it

    # --list covers the whole run, at more than one granularity (the start of the run is
    # compacted once its level 0 files are 15 s old; on a slow machine that takes a moment).
    def both_stretches() -> dict[str, Any] | None:
        doc = listing(env, tmp_path)
        return doc if {0, 1} <= {p["level"] for p in doc["points"]} else None
    doc = wait_for(both_stretches, 20, interval=0.5, what="sync and compaction stretches")
    pts = doc["points"]
    assert doc["db"] == str(db_path(env))
    assert ts(doc["oldest"]) <= start and ts(doc["newest"]) >= writer.commits[-1][2]
    assert ts(doc["newest"]) <= time.time()
    assert [ts(p["time"]) for p in pts] == sorted((ts(p["time"]) for p in pts), reverse=True)
    assert [int(p["txid"], 16) for p in pts] == sorted(
        (int(p["txid"], 16) for p in pts), reverse=True)
    levels = {p["level"] for p in pts}
    assert 0 in levels and (levels & {1, 2}), levels
    assert {s["level"] for s in doc["stretches"]} == levels
    limited = listing(env, tmp_path, "--limit", "3")
    assert [(p["txid"], p["time"]) for p in limited["points"]] == [
        (p["txid"], p["time"]) for p in pts[:3]]
    # (older sync points expire meanwhile: only the newest are the same in both listings)
    assert len(limited["points"]) == 3 and limited["count"] >= 3
    text = run_sidecar(["restore", "--list"], env, tmp_path, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "granularity:" in text.stdout and doc["oldest"] in text.stdout
    assert " every " in text.stdout, text.stdout
    assert S3_SECRET not in text.stdout + text.stderr

    # Each sampled point restores exactly the rows committed by its time.
    chosen = sample(pts, writer)
    assert chosen[0]["level"] == 0 and len({p["level"] for p in chosen}) >= 2, chosen
    for p in chosen:
        got = restored_rows(env, tmp_path, p["time"], f"at-{p['txid']}")
        assert got == writer.committed_by(ts(p["time"])), p

    # Once the every-sync stretch has been compacted (its level 0 files expired), the same
    # moments list at level 1: each compaction boundary keeps its time (a compaction carries
    # its newest sync's timestamp) and restores exactly, and times between them are gone.
    def compacted() -> dict[str, Any] | None:
        doc = listing(env, tmp_path)
        l1 = [p for p in doc["points"] if p["level"] == 1]
        return doc if l1 and ts(l1[0]["time"]) > between else None
    later = wait_for(compacted, 40, interval=2, what="the run to be compacted")
    before_compaction = {p["txid"]: p["time"] for p in pts}
    l1 = [p for p in later["points"] if p["level"] == 1]
    assert len(l1) >= 4, later
    for p in l1:
        if p["txid"] in before_compaction:
            assert p["time"] == before_compaction[p["txid"]], p
    assert len(later["points"]) < len(pts)
    again = [p for p in (l1[0], l1[1], l1[len(l1) // 2]) if not writer.ambiguous(ts(p["time"]))]
    assert again
    for p in again:
        got = restored_rows(env, tmp_path, p["time"], f"l1-{p['txid']}")
        assert got == writer.committed_by(ts(p["time"])), p

    # A live restore to the newest point before p3 (as listed now: p3's and the pause's level
    # 0 files may have been compacted since) drops p3; the bookmark and the undo are named.
    everything = rows(db_path(env))
    # (Not a point with a commit under way just before it, as for the samples above: the
    # restore then held one more row than the writer's clock said, once in CI.)
    back = next(p for p in listing(env, tmp_path)["points"]
                if ts(p["time"]) <= between and not writer.ambiguous(ts(p["time"])))
    before_p3 = writer.committed_by(ts(back["time"]))
    assert any(v.startswith("p2-") for v in before_p3), back
    assert not any(v.startswith("p3-") for v in before_p3)
    first_apps = app_pids(sc)
    res = run_sidecar(["restore", "--timestamp", back["time"], "--yes"], env, tmp_path,
                      timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows(db_path(env)) == before_p3
    assert "sidecar restore --undo" in res.stdout and "bookmark:" in res.stdout
    wait_for(lambda: len(app_pids(sc)) == len(first_apps) + 1, 15, what="the app again")

    # --undo brings every row back (JSON names the bookmark of what it replaced).
    res = run_sidecar(["restore", "--undo", "--yes", "--json"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    job = json.loads(res.stdout)
    assert job["outcome"] == "restored" and job["undo_of"]["kind"] == "restore"
    assert job["bookmark"]["kind"] == "undo" and job["bookmark"]["undo"].startswith(
        "sidecar restore --undo")
    assert rows(db_path(env)) == everything
    wait_for(lambda: len(app_pids(sc)) == len(first_apps) + 2, 15, what="the app again")
    assert sc.proc.poll() is None

    # A second --undo redoes the restore; a third undoes it again.
    res = run_sidecar(["restore", "--undo", "--yes"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows(db_path(env)) == before_p3
    res = run_sidecar(["restore", "--undo", "--yes"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows(db_path(env)) == everything

    # The undone state is the newest backup: a disaster (the volume lost) restores it.
    restart_on_a_lost_volume(env, sc, tmp_path, sidecars)
    assert rows(db_path(env)) == everything


def test_undo_with_nothing_to_undo_is_one_error_and_touches_nothing(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    env = project(tmp_path, s3, bucket)
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("app started")
    writer = Writer(db_path(env))
    writer.phase("a", 0.5)
    wait_synced(env)
    pids = app_pids(sc)
    before = rows(db_path(env))
    res = run_sidecar(["restore", "--undo", "--yes"], env, tmp_path, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "cannot undo: no live restore of" in res.stderr and "Traceback" not in res.stderr
    assert rows(db_path(env)) == before and app_pids(sc) == pids and sc.proc.poll() is None
    assert not (state_dir(env) / "pre-restore").exists()
    code, body = unix_request(state_dir(env) / "sidecar.sock", "POST", "/undo",
                              {"wait": True, "bogus": 1})
    assert code == 400 and "bogus" in json.dumps(body), body
    code, body = unix_request(state_dir(env) / "sidecar.sock", "POST", "/undo", {})
    assert code == 404 and "no live restore" in body["error"], body
    assert rows(db_path(env)) == before and app_pids(sc) == pids


def _metric(port: int, name: str, db: Path) -> float | None:
    return read(f"http://127.0.0.1:{port}", name, db=str(db))


def test_the_window_metric_reads_shorter_once_the_oldest_snapshot_is_deleted(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """Snapshots every 3 s (kept 1 h): sidecar_restore_window_seconds grows with the oldest
    one; deleting it from the bucket (a lifecycle rule, a hand) shortens the window in the
    metric and in /status, and the configured window stays what the config promised."""
    port = free_port()
    env = project(tmp_path, s3, bucket, extra="""
        snapshot:
          interval: 3s
          retention: 1h
    """)
    env["SIDECAR_HTTP_ADDR"] = f"127.0.0.1:{port}"
    env["SIDECAR_LAG_CHECK_INTERVAL"] = "500ms"  # the window is refreshed every 3 s
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("app started")
    writer = Writer(db_path(env))
    writer.phase("a", 0.5)
    wait_synced(env)
    client = s3.client()

    def snapshots() -> list[str]:
        resp = client.list_objects_v2(Bucket=bucket, Prefix="app.db/0009/")
        return sorted(o["Key"] for o in resp.get("Contents", []))

    writer.phase("b", 10, every=0.5)  # snapshots need changes to be taken
    wait_for(lambda: len(snapshots()) >= 4, 30, what="four snapshots")
    assert _metric(port, "sidecar_restore_window_configured_seconds", db_path(env)) == 3600 - 3
    listed = client.list_objects_v2(Bucket=bucket, Prefix="app.db/0009/")["Contents"]
    by_time = sorted((o["LastModified"].timestamp(), o["Key"]) for o in listed)
    first_time = by_time[0][0]
    # The oldest snapshots to delete: those less than 2.5 s older than the one that will be
    # the oldest (the first two may come close together).
    doomed = [k for t, k in by_time if t < first_time + 2.5]
    second_time = by_time[len(doomed)][0]

    def status_oldest() -> float | None:
        """/status's restorable.oldest: set by the same check that exported the metric."""
        code, status = unix_request(state_dir(env) / "sidecar.sock", "GET", "/status")
        assert code == 200
        entry = status["databases"][0]["restorable"]
        assert entry["configured_window_seconds"] == 3600 - 3
        return ts(entry["oldest"]) if entry["oldest"] else None

    # Before: the metric counts from the first snapshot.
    wait_for(lambda: abs((status_oldest() or 0) - first_time) < 1.0, 30,
             what="/status to show the first snapshot")
    now = time.time()
    before = _metric(port, "sidecar_restore_window_seconds", db_path(env))
    assert before is not None and first_time - 0.5 <= now - before <= now
    assert before > 0

    # The oldest snapshot deleted behind the sidecar's back: the window reads shorter.
    for key in doomed:
        client.delete_object(Bucket=bucket, Key=key)
    wait_for(lambda: abs((status_oldest() or 0) - second_time) < 1.0, 20,
             what="/status to show the second snapshot as the oldest")
    now = time.time()
    after = _metric(port, "sidecar_restore_window_seconds", db_path(env))
    assert after is not None and after <= now - second_time + 0.5
    assert after < now - first_time - 2.0

    # `sidecar check` shows the promised window, how far back the bucket reaches, the cost.
    res = run_sidecar(["check", "--json"], env, tmp_path, timeout=60)
    (window,) = [c for c in json.loads(res.stdout) if c["name"] == "restore window (app.db)"]
    assert window["ok"] and window["detail"].startswith(
        f"59m57s ({tmp_path / 'litestream.yml'}: snapshots every 3s, kept 1h)"), window
    assert "reaches back to" in window["detail"] and " objects, " in window["detail"]
