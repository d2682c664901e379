"""Every line sidecar writes to stderr is a structured log line as Railway reads one: one JSON
object, a non-empty string `message`, `level` among debug/info/warn/error. Checked over a whole
cycle with the real Litestream and a real S3 server: a fresh start on an empty bucket (a
warning), a live restore by txid, SIGTERM, a start that restores from the bucket, SIGTERM;
Litestream's own lines included, and the app's own output passed through untouched."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from testkit import base_env, make_db, rows, run_sidecar, s3_env, wait_for, write_app
from testkit.db import lose_db
from testkit.live import db_path, sock, synced, wait_synced

pytestmark = pytest.mark.slow

RAILWAY_LEVELS = {"debug", "info", "warn", "error"}

# The app speaks on both streams, in lines that are not JSON: they must come out as written.
# Each line is one write(2). The app shares sidecar's stderr, so a line written in two (Python's
# `print` under PYTHONUNBUFFERED=1 writes the text, then "\n") can take one of sidecar's lines
# between its halves; that tear is the app's, and the README says so.
APP = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    os.write(1, f"app up {os.getpid()}\\n".encode())
    os.write(2, f"app stderr: plain text {os.getpid()} [warning] not json\\n".encode())
    while True:
        time.sleep(0.2)
""")


def _check_lines(sc: Any) -> list[dict[str, Any]]:
    """sidecar's stderr split into the app's lines (returned count checked by the caller) and
    sidecar's own, each of which must be a Railway-shaped JSON object."""
    own: list[dict[str, Any]] = []
    bad = []
    for line in sc.lines:
        if line.startswith("app stderr: plain text "):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not (isinstance(rec, dict) and isinstance(rec.get("message"), str) and rec["message"]
                and rec.get("level") in RAILWAY_LEVELS and list(rec)[:4] == [
                    "message", "level", "timestamp", "component"]):
            bad.append(line)
            continue
        own.append(rec)
    assert not bad, "lines Railway would not read as structured logs:\n" + "\n".join(bad[:20])
    return own


def _app_lines(sc: Any) -> tuple[list[str], list[str]]:
    return ([ln for ln in sc.stdout if ln.startswith("app up ")],
            [ln for ln in sc.lines if ln.startswith("app stderr: ")])


def test_a_whole_cycle_writes_only_railway_structured_lines(tmp_path: Path, s3, bucket,
                                                             sidecars) -> None:
    """Fresh start (warn), live restore, SIGTERM, restore at start, SIGTERM: every sidecar
    line is one JSON object with a message and a Railway level; Litestream's lines are among
    them; the app's stdout and stderr lines are exactly what it printed."""
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_SYNC_INTERVAL="200ms")
    app = write_app(tmp_path, APP, "speaker.py")

    first = sidecars(env, app, tmp_path)
    assert first.wait_event("restore decided", 60)["outcome"] == "fresh"
    first.wait_event("app started", 60)
    first.wait_stdout("app up")
    wait_for(lambda: sock(env).exists(), 10, what="control socket")
    make_db(db_path(env), ["a1"])
    wait_synced(env, 30)
    txid_a = synced(env)
    make_db(db_path(env), ["b1"])
    synced(env)
    res = run_sidecar(["restore", "--txid", f"{txid_a:x}", "--yes"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows(db_path(env)) == ["a1"]
    wait_for(lambda: len(_app_lines(first)[0]) == 2, 30, what="the app to start again")
    make_db(db_path(env), ["c1"])
    synced(env)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0

    lose_db(db_path(env))
    second = sidecars(env, app, tmp_path)
    assert second.wait_event("restore decided", 60)["outcome"] == "restored"
    second.wait_event("app started", 60)
    second.wait_stdout("app up")
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    assert rows(db_path(env)) == ["a1", "c1"]

    for sc, starts in ((first, 2), (second, 1)):
        own = _check_lines(sc)
        out, err = _app_lines(sc)
        pids = [ln.split()[-1] for ln in out]
        assert len(pids) == starts
        assert err == [f"app stderr: plain text {pid} [warning] not json" for pid in pids]
        assert any(e["component"] == "litestream" for e in own), sc.output()
        assert all("event" not in e for e in own)
    levels = {e["level"] for sc in (first, second) for e in _check_lines(sc)}
    assert {"info", "warn"} <= levels
    fresh = first.event("restore decided")
    assert fresh is not None and fresh["level"] == "warn"
