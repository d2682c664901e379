"""A running sidecar seen from its volume: where its database and state live, its control
sockets, forcing its Litestream to upload, the pids its app reported, and a sidecar started
over a bucket holding rows from before and after a known moment."""

from __future__ import annotations

import signal
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testkit.db import lose_db, make_db
from testkit.net import free_port
from testkit.poll import wait_for
from testkit.s3 import S3Server
from testkit.sidecar import base_env, s3_env, write_app

# An app that only reports its pid: the test writes the rows itself, so it knows exactly
# which rows came before and after a point in time.
IDLE_APP = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print(f"app up {os.getpid()}", flush=True)
    while True:
        time.sleep(0.2)
""")


def db_path(env: dict[str, str]) -> Path:
    return Path(env["SIDECAR_DB_PATH"])


def state_dir(env: dict[str, str]) -> Path:
    return db_path(env).parent / ".sidecar"


def sock(env: dict[str, str]) -> Path:
    """sidecar's own control socket."""
    return state_dir(env) / "sidecar.sock"


def synced(env: dict[str, str]) -> int:
    """Ask the sidecar's Litestream to upload everything; return the uploaded txid."""
    from sidecar.litestream import Control

    res = Control(state_dir(env) / "litestream.sock").sync(db_path(env), wait=True, timeout=20)
    assert res["replicated_txid"] == res["txid"], res
    return int(res["replicated_txid"])


def wait_synced(env: dict[str, str], timeout: float = 20,
                what: str = "litestream to pick up the new database") -> int:
    """synced() once Litestream accepts it (its socket up, the database known to it)."""
    return int(wait_for(lambda: synced(env), timeout, what=what, ignore=(Exception,)))


def app_pids(sc: Any) -> list[int]:
    """The pids of each start of IDLE_APP, in order."""
    return [int(line.split()[-1]) for line in sc.stdout if line.startswith("app up ")]


def aside_files(env: dict[str, str]) -> list[Path]:
    """The databases a restore moved aside, oldest name first."""
    d = state_dir(env) / "pre-restore"
    return sorted(p for p in d.glob("app.db.*") if not p.name.endswith(("-wal", "-shm"))) \
        if d.exists() else []


def restart_on_a_lost_volume(env: dict[str, str], sc: Any, tmp_path: Path, sidecars: Any
                             ) -> Any:
    """Upload everything, stop `sc`, lose the database and start a sidecar over IDLE_APP
    again: the one returned restored the bucket's newest state and started the app."""
    synced(env)
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0
    lose_db(db_path(env))
    again = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    assert again.wait_event("restore decided")["outcome"] == "restored"
    again.wait_event("app started")
    return again


def start_with_rows(tmp_path: Path, s3: Any, bucket: str, sidecars: Any, **extra: str
                    ) -> tuple[dict[str, str], Any, int, str]:
    """A running sidecar whose bucket holds rows a1,a2 (txid returned), then b1,b2 written
    after time T (returned, RFC3339) and uploaded."""
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_SYNC_INTERVAL="200ms", **extra)
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("app started")
    wait_for(lambda: sock(env).exists(), 10, what="control socket")
    make_db(db_path(env), ["a1", "a2"])
    wait_synced(env)
    txid_a = synced(env)
    time.sleep(1.2)  # Litestream's timestamps have whole-second resolution in the listing
    t = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(1.2)
    make_db(db_path(env), ["b1", "b2"])
    assert synced(env) > txid_a
    return env, sc, txid_a, t


def start_with_http(tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any,
                    addr: str | None = None, app: list[str] | None = None, **extra: str
                    ) -> tuple[Any, str]:
    """A running sidecar with its HTTP listener on `addr` (default: every address, a free
    port) and lag checks every second, over the writer app unless `app` is given; returns it
    and the listener's loopback base URL."""
    port = free_port()
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_HTTP_ADDR=addr or f"[::]:{port}",
                   SIDECAR_LAG_CHECK_INTERVAL="1s", **extra)
    sc = sidecars(env, app or write_app(tmp_path), tmp_path)
    sc.wait_event("app started", 60)
    if app is None:  # the writer has installed its SIGTERM handler once it says so
        sc.wait_stdout("app up")
    base = f"http://127.0.0.1:{port}"
    return sc, base
