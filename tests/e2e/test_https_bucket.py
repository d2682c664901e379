"""A bucket over HTTPS signed by a private CA, reached the way users reach it: `rclone serve s3
--cert --key` with a CA and a server certificate made here, and the CA given only as
AWS_CA_BUNDLE (the machine's own trust variables removed from every child). Fresh start with
rows replicated, the last row in the bucket after SIGTERM, a wiped volume restored whole, a
live point-in-time restore, `verify`, `check`, a directory of databases; and without the CA,
or with another CA, `sidecar run` refuses at once (exit 4 well within 5 s, nothing created)
and says it is the certificate."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.litestream import Control
from testkit import (
    S3_SECRET,
    base_env,
    make_db,
    make_tenants,
    rows,
    run_sidecar,
    s3_env,
    side_restore,
    wait_for,
    write_app,
)
from testkit.tls import MACHINE_TRUST, Certs, HTTPSServer, make_ca

pytestmark = pytest.mark.slow

IDLE_APP = """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("app up", flush=True)
    while True:
        time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[HTTPSServer]:
    server = HTTPSServer(tmp_path_factory.mktemp("s3tls") / "root", certs)
    server.start()
    yield server
    server.stop()


def tls_env(tmp_path: Path, server: HTTPSServer, bucket: str, ca: Path | None,
            prefix: str = "app.db", **extra: str) -> dict[str, str]:
    """base_env for the HTTPS bucket with AWS_CA_BUNDLE=`ca` (None: no CA variable at all)
    and none of the machine's trust variables."""
    env = base_env(tmp_path, **s3_env(server, bucket, prefix), **extra)
    for name in MACHINE_TRUST:
        env.pop(name, None)
    if ca is not None:
        env["AWS_CA_BUNDLE"] = str(ca)
    return env


def bucket_of(server: HTTPSServer) -> str:
    return server.make_bucket()


def read_back(env: dict[str, str], ca: Path, out: Path) -> list[str]:
    """The bucket's latest state through plain `litestream restore`, trusting the CA the way
    Go reads it."""
    side_restore({**env, "SSL_CERT_FILE": str(ca)}, out)
    return rows(out)


def test_fresh_start_replicates_and_a_wiped_volume_comes_back_whole(
        tmp_path: Path, https: HTTPSServer, certs: Certs, sidecars: object) -> None:
    """An empty volume starts fresh over HTTPS; the app's rows reach the bucket, its last row
    (written on SIGTERM) too; the volume wiped, the next start restores every row before
    the app; `verify` and `check` pass, and `check` says the certificate was verified with
    the CA bundle."""
    bucket = bucket_of(https)
    env = tls_env(tmp_path, https, bucket, certs.ca, WRITE_LIMIT="5", WRITE_INTERVAL="0.05")
    db = Path(env["SIDECAR_DB_PATH"])
    first = sidecars(env, write_app(tmp_path), tmp_path)  # type: ignore[operator]
    assert first.wait_event("restore decided", 60)["outcome"] == "fresh"
    first.wait_stdout("wrote run-4", timeout=30)
    first.signal(signal.SIGTERM)
    assert first.wait(60) == 0, first.output()
    want = [f"run-{i}" for i in range(5)] + ["run-final"]
    assert read_back(env, certs.ca, tmp_path / "side.db") == want
    assert S3_SECRET not in "\n".join(first.lines)

    shutil.rmtree(db.parent)
    db.parent.mkdir()
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"outcome": "restored"' in res.stderr, res.stderr[-3000:]
    assert rows(db) == want

    res = run_sidecar(["verify"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    res = run_sidecar(["check"], env, tmp_path, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert (f"the certificate of {https.endpoint} was verified with "
            f"AWS_CA_BUNDLE={certs.ca}") in res.stdout, res.stdout


def test_live_point_in_time_restore(tmp_path: Path, https: HTTPSServer, certs: Certs,
                                    sidecars: object) -> None:
    """Rows A, time T, rows B; `sidecar restore --timestamp T --yes` against the running
    sidecar brings back A only, over HTTPS, and the app runs again."""
    bucket = bucket_of(https)
    env = tls_env(tmp_path, https, bucket, certs.ca, SIDECAR_SYNC_INTERVAL="200ms")
    db = Path(env["SIDECAR_DB_PATH"])
    state = db.parent / ".sidecar"
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)  # type: ignore[operator]
    sc.wait_event("app started", 60)
    control = Control(state / "litestream.sock")
    wait_for(lambda: (state / "litestream.sock").exists(), 10, what="control socket")
    make_db(db, ["a1", "a2"])

    def synced() -> int:
        res = control.sync(db, wait=True, timeout=20)
        assert res["replicated_txid"] == res["txid"], res
        return int(res["replicated_txid"])

    def try_sync() -> bool:
        try:
            return synced() > 0
        except Exception:
            return False

    wait_for(try_sync, 30, what="Litestream to upload the database over HTTPS")
    time.sleep(1.2)
    t = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(1.2)
    make_db(db, ["b1", "b2"])
    synced()
    res = run_sidecar(["restore", "--timestamp", t, "--yes"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert rows(db) == ["a1", "a2"]
    wait_for(lambda: sc.stdout.count("app up") == 2, 15, what="the app to start again")
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 0, sc.output()


def test_a_directory_of_databases_over_https(tmp_path: Path, https: HTTPSServer, certs: Certs,
                                             sidecars: object) -> None:
    """A tenant directory replicates over HTTPS and comes back whole on an empty volume."""
    bucket = bucket_of(https)
    tenants = tmp_path / "data" / "tenants"
    want = make_tenants(tenants, 3)
    env = tls_env(tmp_path, https, bucket, certs.ca, "tenants", SIDECAR_DB_DIR=str(tenants))
    del env["SIDECAR_DB_PATH"]
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)  # type: ignore[operator]
    sc.wait_stdout("app up", timeout=60)

    def backed_up() -> set[str]:
        keys = https.keys(bucket, "tenants/")
        return {k.split("/")[1] for k in keys if k.endswith(".ltx")}

    wait_for(lambda: set(want) <= backed_up(), 60, what="every tenant backed up over HTTPS")
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 0, sc.output()
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "data").mkdir()
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    for name, values in want.items():
        assert rows(tenants / name) == values, name


@pytest.mark.parametrize("trust", ["none", "another CA"])
def test_an_untrusted_certificate_is_final_at_once(tmp_path: Path, https: HTTPSServer,
                                                   trust: str) -> None:
    """Without the CA (no trust variable: the system's roots) or with a CA that did not sign
    the server's certificate: `sidecar run` on an empty volume exits 4 well within 5 s, says
    it is the certificate, names the endpoint and AWS_CA_BUNDLE, starts no app and creates
    nothing; `sidecar verify` refuses as fast (exit 4), and `sidecar check` fails its replica
    row the same way (exit 1)."""
    bucket = bucket_of(https)
    ca = None if trust == "none" else make_ca(tmp_path / "other", "another CA").ca
    env = tls_env(tmp_path, https, bucket, ca, SIDECAR_REPLICA_TIMEOUT="30s")
    db = Path(env["SIDECAR_DB_PATH"])
    marker = tmp_path / "app-ran"
    t0 = time.monotonic()
    res = run_sidecar(["run", "--", "touch", str(marker)], env, tmp_path, timeout=60)
    took = time.monotonic() - t0
    assert res.returncode == 4, res.stderr[-3000:]
    assert took < 5, took
    assert "certificate" in res.stderr and https.endpoint in res.stderr
    assert "AWS_CA_BUNDLE" in res.stderr and "Traceback" not in res.stderr
    assert "_ssl.c" not in res.stderr  # the reason, not the ssl module's source position
    assert not marker.exists() and not db.exists()
    # Nothing but sidecar's own lock and state: no database, no restore's files.
    assert sorted(p.name for p in db.parent.iterdir()
                  if p.name not in (".sidecar", ".app.db.sidecar.lock")) == []
    assert https.keys(bucket) == []

    t0 = time.monotonic()
    res = run_sidecar(["verify"], env, tmp_path, timeout=60)
    assert res.returncode == 4, res.stdout + res.stderr[-2000:]
    assert time.monotonic() - t0 < 5
    out = res.stdout + res.stderr
    assert "certificate" in out and "SIDECAR_REPLICA_TIMEOUT" not in out, out

    res = run_sidecar(["check"], env, tmp_path, timeout=60)
    assert res.returncode == 1, res.stdout
    row = next(line for line in res.stdout.splitlines() if line.startswith("FAIL  replica"))
    assert "certificate" in row and https.endpoint in row, res.stdout
    assert "AWS_CA_BUNDLE" in res.stdout
