"""Verification and snapshots never fill the volume: verify restores off the volume when it can,
refuses without writing when the copy does not fit, a killed verification's leftovers are gone
after the next start, and snapshots taken through the daemon are rotated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sidecar import dbfile
from sidecar.litestream import unix_request
from testkit import BIN, base_env, run_sidecar, s3_env, seed_bucket, wait_for, write_app

pytestmark = pytest.mark.slow

BIG_ROWS = [f"{i:06d}-" + "x" * 2000 for i in range(2000)]  # a DB of about 4.5 MB


def seeded(tmp_path: Path, s3, bucket: str) -> tuple[dict[str, str], Path]:
    """A bucket holding a ~4.5 MB database, and a single-file copy of it."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, BIG_ROWS)
    copy = tmp_path / "seed-copy.db"
    dbfile.backup(Path(env["SIDECAR_DB_PATH"]), copy)
    return env, copy


def verify_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("sidecar-verify-"))


def test_verify_refuses_without_writing_when_the_copy_does_not_fit(tmp_path: Path, s3,
                                                                    bucket) -> None:
    """On a 6 MB tmpfs volume holding a 4.5 MB DB, with the temp dir on that volume: verify
    refuses (exit 1) naming the free space, and the volume is byte for byte as it was. With
    TMPDIR on another filesystem the same verify restores there and passes."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs in a mount namespace and needs root")
    env, copy = seeded(tmp_path, s3, bucket)
    vol, out, other = tmp_path / "vol", tmp_path / "out", tmp_path / "other-tmp"
    for d in (vol, out, other):
        d.mkdir()
    env = {**env, "SIDECAR_DB_PATH": str(vol / "app.db"), "VOL": str(vol), "OUT": str(out),
           "OTHER": str(other), "SEED": str(copy), "SIDECAR": str(BIN / "sidecar")}
    script = r'''
        set -e
        mount -t tmpfs -o size=6m tmpfs "$VOL"
        cp "$SEED" "$VOL/app.db"
        mkdir "$VOL/tmp"
        snap() { (cd "$VOL" && find . -printf '%p %s\n' | sort) > "$1"; }
        snap "$OUT/before"
        set +e
        TMPDIR="$VOL/tmp" "$SIDECAR" verify --json > "$OUT/out1" 2> "$OUT/err1"; echo $? > "$OUT/rc1"
        snap "$OUT/after1"
        TMPDIR="$OTHER" "$SIDECAR" verify --json > "$OUT/out2" 2> "$OUT/err2"; echo $? > "$OUT/rc2"
        snap "$OUT/after2"
        df -B1 "$VOL" | tail -1 > "$OUT/df"
    '''
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    first = json.loads((out / "out1").read_text())
    assert (out / "rc1").read_text().strip() == "1", (out / "err1").read_text()
    error = first["databases"][0]["error"]
    assert "not enough free space" in error and str(vol / "tmp") in error, error
    assert (out / "after1").read_text() == (out / "before").read_text()

    second = json.loads((out / "out2").read_text())
    assert (out / "rc2").read_text().strip() == "0", second
    assert second["databases"][0]["ok"] is True
    assert second["databases"][0]["scratch_dir"] == str(other)
    assert (out / "after2").read_text() == (out / "before").read_text()
    assert verify_dirs(other) == []


def _kill_a_verify(env: dict[str, str], tmpdir: Path, cwd: Path) -> str:
    """Start `sidecar verify`, SIGKILL it (and its Litestream) once its scratch dir exists."""
    proc = subprocess.Popen([str(BIN / "sidecar"), "verify"], env={**env, "TMPDIR": str(tmpdir)},
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        found = wait_for(lambda: verify_dirs(tmpdir), 60, interval=0.005,
                         what="the verification's scratch dir")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.2)
    assert verify_dirs(tmpdir) == found, "the kill left nothing behind: nothing to test"
    return found[0]


def test_a_killed_verify_leaves_nothing_after_the_next_start(tmp_path: Path, s3,
                                                             bucket) -> None:
    """SIGKILL during a verification leaves its scratch dir; the next `sidecar verify` removes
    it, and so does the next `sidecar run`."""
    env, _ = seeded(tmp_path, s3, bucket)
    tmpdir = tmp_path / "scratch"
    tmpdir.mkdir()
    leftover = _kill_a_verify(env, tmpdir, tmp_path)
    res = run_sidecar(["verify"], {**env, "TMPDIR": str(tmpdir)}, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert leftover not in verify_dirs(tmpdir)
    assert verify_dirs(tmpdir) == []

    leftover = _kill_a_verify(env, tmpdir, tmp_path)
    res = run_sidecar(["run", "--", "true"], {**env, "TMPDIR": str(tmpdir)}, tmp_path,
                      timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert verify_dirs(tmpdir) == [], leftover
    assert '"removed verification leftovers"' in res.stderr


def test_daemon_snapshots_are_rotated(tmp_path: Path, s3, bucket, sidecars) -> None:
    """Snapshots asked of the daemon go into the state dir; only the newest few stay."""
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_KEEP_COPIES="2",
                   WRITE_INTERVAL="0.2")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_stdout("wrote run-2")
    sock = Path(env["SIDECAR_DB_PATH"]).parent / ".sidecar" / "sidecar.sock"
    outputs = []
    for _ in range(4):
        status, body = unix_request(sock, "POST", "/snapshot", {}, timeout=30)
        assert status == 200, body
        outputs.append(body["output"])
        time.sleep(0.01)
    snaps = sorted(p.name for p in (sock.parent / "snapshots").iterdir())
    assert snaps == sorted(Path(o).name for o in outputs[-2:])
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0


