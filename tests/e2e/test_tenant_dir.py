"""A directory of databases (one per tenant) with the real Litestream and a real S3 server:
replicated through Litestream's `dir:` entry, restored as a whole after a volume loss."""

from __future__ import annotations

import json
import shutil
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from testkit import (
    S3_SECRET,
    base_env,
    free_port,
    make_tenants,
    rows,
    run_sidecar,
    s3_env,
    wait_for,
    write_app,
)
from testkit.http import get
from testkit.metrics import read, scrape, series

pytestmark = pytest.mark.slow

N = 50

# Creates one more tenant while running (Litestream's watch must pick it up), then records
# what it found at start: "<name> <rows>" per database, before it wrote anything.
TENANT_APP = textwrap.dedent("""
    import os, signal, sqlite3, sys, time, pathlib
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    d = pathlib.Path(os.environ["SIDECAR_DB_DIR"])
    with open(os.environ["PROBE_OUT"], "w") as f:
        for p in sorted(d.glob("*.db")):
            n = sqlite3.connect(p).execute("SELECT count(*) FROM rows").fetchone()[0]
            f.write(f"{p.name} {n}\\n")
    if os.environ.get("CREATE"):
        db = sqlite3.connect(d / os.environ["CREATE"], isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT)")
        db.execute("INSERT INTO rows(v) VALUES ('created-while-running')")
        db.close()
    print("app up", flush=True)
    while True:
        time.sleep(1)
""")


def _tenant_env(tmp_path: Path, s3, bucket: str, **extra: str) -> dict[str, str]:
    env = base_env(tmp_path, **{**s3_env(s3, bucket, "tenants"),
                                "SIDECAR_DB_DIR": str(tmp_path / "data" / "tenants"),
                                "PROBE_OUT": str(tmp_path / "probe.txt"), **extra})
    del env["SIDECAR_DB_PATH"]
    return env


def _seed(directory: Path, n: int) -> None:
    """t00.db .. t<n-1>.db, tenant i holding i % 5 + 1 rows (`t<i>-<j>`)."""
    make_tenants(directory, n, width=2, rows_of=lambda i: i % 5 + 1)


def _backed_up(s3, bucket: str) -> set[str]:
    """The databases the bucket holds a 0.5 backup of, from its keys."""
    out: set[str] = set()
    token = None
    while True:
        kw = {"Bucket": bucket, "Prefix": "tenants/"}
        if token:
            kw["ContinuationToken"] = token
        resp = s3.client().list_objects_v2(**kw)
        for o in resp.get("Contents", []):
            parts = o["Key"].split("/")
            if len(parts) == 4 and parts[3].endswith(".ltx"):
                out.add(parts[1])
        token = resp.get("NextContinuationToken")
        if not token:
            return out


def _run_until_backed_up(sidecars, env: dict[str, str], app: Any, tmp_path: Path, s3,
                         bucket: str, want: set[str], timeout: float, what: str) -> Any:
    """A first sidecar run: the app up, every database in `want` backed up, then a clean stop
    (exit 0). Returns the run, for its output."""
    first = sidecars(env, app, tmp_path)
    first.wait_stdout("app up", timeout=60)
    wait_for(lambda: want <= _backed_up(s3, bucket), timeout, what=what)
    first.signal()
    assert first.wait(60) == 0, first.output()
    return first


def test_directory_of_50_replicates_and_comes_back_whole(tmp_path: Path, s3, bucket,
                                                         sidecars) -> None:
    tenants = tmp_path / "data" / "tenants"
    _seed(tenants, N)
    app = write_app(tmp_path, TENANT_APP)
    env = _tenant_env(tmp_path, s3, bucket, CREATE="new.db")
    want = {f"t{i:02d}.db" for i in range(N)} | {"new.db"}
    first = _run_until_backed_up(sidecars, env, app, tmp_path, s3, bucket, want, 60,
                                 "all 51 databases backed up")
    assert S3_SECRET not in "\n".join(first.lines)

    shutil.rmtree(tmp_path / "data")  # the volume is lost, sidecar's state dir with it
    (tmp_path / "data").mkdir()
    (tmp_path / "probe.txt").unlink()
    env.pop("CREATE")
    second = sidecars(env, app, tmp_path)
    second.wait_stdout("app up", timeout=120)
    found = dict(line.split() for line in (tmp_path / "probe.txt").read_text().splitlines())
    expected = {f"t{i:02d}.db": str(i % 5 + 1) for i in range(N)} | {"new.db": "1"}
    assert found == expected  # every database, each with its rows, before the app ran
    assert rows(tenants / "t07.db") == ["t07-0", "t07-1", "t07-2"]
    assert rows(tenants / "new.db") == ["created-while-running"]
    decided = [e for e in second.events if e.get("msg") == "restore decided"
               or e.get("message") == "restore decided"]
    assert decided and decided[-1]["restored"] == N + 1, decided

    # Operator commands for one tenant of the directory, while it runs.
    out = tmp_path / "t07-copy.db"
    res = run_sidecar(["restore", "--db", "t07.db", "--output", str(out)], env, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert rows(out) == ["t07-0", "t07-1", "t07-2"]
    res = run_sidecar(["verify", "--db", "t07.db"], env, tmp_path, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr[-2000:]
    snap = tmp_path / "t07-snap.db"
    res = run_sidecar(["snapshot", "--db", str(tenants / "t07.db"), "--output", str(snap)],
                      env, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert rows(snap) == ["t07-0", "t07-1", "t07-2"]
    con = sqlite3.connect(tenants / "t08.db", isolation_level=None)
    con.execute("DELETE FROM rows")  # a mistake the live restore undoes
    con.close()
    res = run_sidecar(["restore", "--db", "t08.db", "--txid", "0000000000000001", "--yes"],
                      env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert rows(tenants / "t08.db") == [f"t08-{j}" for j in range(4)]
    res = run_sidecar(["restore", "--db", "nope.txt", "--output", str(tmp_path / "x.db")],
                      env, tmp_path)
    assert res.returncode != 0 and "nope.txt" in res.stderr and "Traceback" not in res.stderr

    second.signal()
    assert second.wait(60) == 0, second.output()

    # One tenant's backup is damaged: the next start after a volume loss fails, naming it.
    for f in (s3.root / bucket / "tenants" / "t13.db").rglob("*.ltx"):
        f.write_bytes(b"not an ltx file")
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "data").mkdir()
    (tmp_path / "probe.txt").unlink()
    res = run_sidecar(["run", "--", *app], env, tmp_path, timeout=120)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "t13.db" in res.stderr and "cannot restore" in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "probe.txt").exists()  # the app never ran
    assert not (tenants / "t13.db").exists()  # and no partial file is left in its place
    assert not list(tenants.glob(".t13.db*"))


def test_unknown_objects_under_the_prefix_refuse_an_empty_start(tmp_path: Path, s3,
                                                                bucket) -> None:
    s3.client().put_object(Bucket=bucket, Key="tenants/notes.txt", Body=b"someone's data")
    env = _tenant_env(tmp_path, s3, bucket)
    app = write_app(tmp_path, TENANT_APP)
    res = run_sidecar(["run", "--", *app], env, tmp_path)
    assert res.returncode == 4, res.stderr[-2000:]
    assert "tenants/notes.txt" in res.stderr and "not a Litestream backup" in res.stderr
    assert not (tmp_path / "probe.txt").exists()


def test_a_damaged_tenant_is_not_replaced_and_stops_the_start(tmp_path: Path, s3, bucket,
                                                              sidecars) -> None:
    """As for one database: a damaged file the bucket has a backup of is never replaced
    automatically; the start fails naming it and the file is left as it was."""
    _seed(tmp_path / "data" / "tenants", 3)
    env = _tenant_env(tmp_path, s3, bucket)
    app = write_app(tmp_path, TENANT_APP)
    _run_until_backed_up(sidecars, env, app, tmp_path, s3, bucket,
                         {"t00.db", "t01.db", "t02.db"}, 30, "backups")
    damaged = tmp_path / "data" / "tenants" / "t01.db"
    damaged.write_bytes(b"garbage, not SQLite" * 100)
    (tmp_path / "probe.txt").unlink(missing_ok=True)
    res = run_sidecar(["run", "--", *app], env, tmp_path)
    assert res.returncode == 4, res.stderr[-2000:]
    assert "t01.db" in res.stderr and "damaged" in res.stderr, res.stderr[-2000:]
    assert damaged.read_bytes() == b"garbage, not SQLite" * 100
    assert not (tmp_path / "probe.txt").exists()


def test_unreachable_bucket_refuses_the_start(tmp_path: Path, s3, bucket) -> None:
    env = _tenant_env(tmp_path, s3, bucket, SIDECAR_S3_ENDPOINT="http://127.0.0.1:9",
                      SIDECAR_REPLICA_TIMEOUT="1s")
    app = write_app(tmp_path, TENANT_APP)
    res = run_sidecar(["run", "--", *app], env, tmp_path)
    assert res.returncode == 4, res.stderr[-2000:]
    assert "cannot be read" in res.stderr and "tenants" in res.stderr
    assert not (tmp_path / "probe.txt").exists()


@pytest.mark.parametrize("var,value,expected", [
    ("SIDECAR_DB_PATTERN", "sub/*.db", "file-name pattern"),
    ("SIDECAR_DB_RECURSIVE", "sometimes", "1/0 or true/false"),
    ("SIDECAR_RESTORE_PARALLELISM", "0", "from 1 to 64"),
    ("SIDECAR_REPLICA_URL", "file:///tmp/x", "s3:// URL"),
])
def test_bad_directory_settings_are_one_clear_error(tmp_path: Path, s3, bucket, var: str,
                                                    value: str, expected: str) -> None:
    env = _tenant_env(tmp_path, s3, bucket, **{var: value})
    app = write_app(tmp_path, TENANT_APP)
    res = run_sidecar(["run", "--", *app], env, tmp_path)
    assert res.returncode == 2, res.stderr
    assert var in res.stderr and value in res.stderr and expected in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "data" / "tenants").exists()


def _lag(base: str, path: Path) -> float:
    value = read(base, "sidecar_replication_lag_seconds", db=str(path))
    assert value is not None, f"no lag series for {path}"
    return value


def two_more_checks(base: str, tenants: Path) -> None:
    """Wait until the directory's lag check has run twice more: the last one then started
    after everything before this call."""
    def checks() -> float:
        return read(base, "sidecar_lag_checks_total", db=str(tenants), outcome="ok") or 0

    done = checks() + 2
    wait_for(lambda: checks() >= done, 30, what="two more lag checks of the directory")


def test_outage_shows_in_aggregate_lag_and_only_the_writing_tenant_falls_behind(
        tmp_path: Path, own_s3, sidecars) -> None:
    bucket = own_s3.make_bucket()
    tenants = tmp_path / "data" / "tenants"
    _seed(tenants, 10)
    port = free_port()
    env = _tenant_env(tmp_path, own_s3, bucket, SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}",
                      SIDECAR_LAG_CHECK_INTERVAL="1s", SIDECAR_MAX_LAG_SECONDS="4",
                      SIDECAR_DB_METRICS_LIMIT="5")
    base = f"http://127.0.0.1:{port}"
    sc = sidecars(env, write_app(tmp_path, TENANT_APP), tmp_path)
    sc.wait_stdout("app up", timeout=60)
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, 30, what="ready")

    def settled() -> dict | None:
        entry = json.loads(get(f"{base}/status")[1])["directories"][0]
        return entry if entry["databases"] == 10 and entry["behind"] == 0 else None

    want = {f"t{i:02d}.db" for i in range(10)}
    wait_for(lambda: _backed_up(own_s3, bucket) >= want, 30, what="every tenant in the bucket")
    two_more_checks(base, tenants)
    entry = wait_for(settled, 30, what="no tenant behind")
    # One listing per check for ten idle databases (not one or more per database).
    assert entry["last_check_requests"] == 1, entry
    per_db = [s.labels["db"] for s in series(scrape(base), "sidecar_replication_lag_seconds")
              if "/tenants/" in s.labels["db"]]
    assert len(per_db) == 5  # SIDECAR_DB_METRICS_LIMIT

    # A tenant created while running shows within a check or two.
    con = sqlite3.connect(tenants / "t10.db", isolation_level=None)
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT)")
    con.close()
    wait_for(lambda: json.loads(get(f"{base}/status")[1])["directories"][0]["databases"] == 11,
             10, what="the new tenant in /status")
    wait_for(lambda: "t10.db" in _backed_up(own_s3, bucket), 30, what="the new tenant backed up")
    two_more_checks(base, tenants)
    wait_for(lambda: json.loads(get(f"{base}/status")[1])["directories"][0]["behind"] == 0,
             10, what="no tenant behind")

    own_s3.stop()
    writer = sqlite3.connect(tenants / "t03.db", isolation_level=None)
    end = time.monotonic() + 8
    while time.monotonic() < end:
        writer.execute("INSERT INTO rows(v) VALUES ('during outage')")
        time.sleep(0.2)
    wait_for(lambda: get(f"{base}/readyz")[0] == 503, 10, what="not ready")
    agg = _lag(base, tenants)
    assert agg >= 4, agg
    assert _lag(base, tenants / "t03.db") >= 4
    for other in ("t00.db", "t01.db", "t02.db", "t04.db"):
        assert _lag(base, tenants / other) == 0, other
    assert read(base, "sidecar_directory_databases_behind", dir=str(tenants)) == 1
    assert read(base, "sidecar_replica_reachable", db=str(tenants)) == 0
    doc = json.loads(get(f"{base}/readyz")[1])
    assert any(str(tenants) in r for r in doc["reasons"]), doc
    status = json.loads(get(f"{base}/status")[1])
    assert status["directories"][0]["most_behind"][0]["db"] == "t03.db"

    own_s3.start()
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, 30, what="ready again")
    assert _lag(base, tenants) == 0
    writer.close()
    sc.signal()
    assert sc.wait(60) == 0, sc.output()


def test_a_tenant_written_right_before_sigterm_is_in_the_backup(tmp_path: Path, s3, bucket,
                                                                 sidecars) -> None:
    """The final sync covers directory databases: rows written to a tenant just before the
    stop signal, with Litestream's own sync interval far away, are in the bucket after the
    shutdown (restored and counted)."""
    tenants = tmp_path / "data" / "tenants"
    _seed(tenants, 3)
    env = _tenant_env(tmp_path, s3, bucket, SIDECAR_SYNC_INTERVAL="1m")
    sc = sidecars(env, write_app(tmp_path, TENANT_APP), tmp_path)
    sc.wait_stdout("app up", timeout=60)
    wait_for(lambda: {"t00.db", "t01.db", "t02.db"} <= _backed_up(s3, bucket), 60,
             what="the first backups")
    time.sleep(1)
    con = sqlite3.connect(tenants / "t01.db", isolation_level=None)
    con.executemany("INSERT INTO rows(v) VALUES (?)", [(f"late-{j}",) for j in range(25)])
    con.close()
    sc.signal()
    assert sc.wait(60) == 0, sc.output()
    done = sc.event("final sync of directory databases")
    assert done and done["synced"] >= 1 and done["synced"] == done["written_during_run"], done
    out = tmp_path / "t01-after.db"
    res = run_sidecar(["restore", "--db", "t01.db", "--output", str(out)], env, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(rows(out)) == 2 + 25, rows(out)


def test_a_dot_named_tenant_is_a_tenant_like_the_others(tmp_path: Path, s3, bucket,
                                                        sidecars) -> None:
    """`*.db` matches `.dot.db` for Litestream, which backs it up: sidecar treats it as a
    tenant too, so a start with the volume intact restores nothing (it used to count it as
    missing every time), and after a volume loss it comes back with its rows."""
    tenants = tmp_path / "data" / "tenants"
    _seed(tenants, 2)
    con = sqlite3.connect(tenants / ".dot.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT)")
    con.execute("INSERT INTO rows(v) VALUES ('hidden-tenant')")
    con.close()
    env = _tenant_env(tmp_path, s3, bucket)
    app = write_app(tmp_path, TENANT_APP)
    _run_until_backed_up(sidecars, env, app, tmp_path, s3, bucket,
                         {"t00.db", "t01.db", ".dot.db"}, 60,
                         "every tenant backed up, the dot-named one too")

    second = sidecars(env, app, tmp_path)
    second.wait_stdout("app up", timeout=60)
    assert second.event("directory restore started") is None, second.output()
    decided = second.event("restore decided")
    assert decided and decided["restored"] == 0 and decided["databases"] == 3, decided
    second.signal()
    assert second.wait(60) == 0, second.output()

    shutil.rmtree(tmp_path / "data")
    (tmp_path / "data").mkdir()
    third = sidecars(env, app, tmp_path)
    third.wait_stdout("app up", timeout=120)
    assert rows(tenants / ".dot.db") == ["hidden-tenant"]
    third.signal()
    assert third.wait(60) == 0, third.output()


def test_verify_without_db_verifies_every_tenant_and_names_the_failure(tmp_path: Path, s3,
                                                                       bucket,
                                                                       sidecars) -> None:
    """`sidecar verify` with no --db covers each tenant (it used to verify none and pass):
    one line per database, the damaged one named, exit 1; with no sidecar running and
    through the running one."""
    tenants = tmp_path / "data" / "tenants"
    _seed(tenants, 3)
    env = _tenant_env(tmp_path, s3, bucket)
    app = write_app(tmp_path, TENANT_APP)
    sc = sidecars(env, app, tmp_path)
    sc.wait_stdout("app up", timeout=60)
    wait_for(lambda: {"t00.db", "t01.db", "t02.db"} <= _backed_up(s3, bucket), 60,
             what="backups")
    sc.signal()
    assert sc.wait(60) == 0, sc.output()
    res = run_sidecar(["verify"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert res.stdout.count("OK  ") == 3, res.stdout
    res = run_sidecar(["check"], env, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert "replica (tenants/)" in res.stdout and "backups of 3 database(s)" in res.stdout

    for f in (s3.root / bucket / "tenants" / "t01.db").rglob("*.ltx"):
        f.write_bytes(b"not an ltx file")
    res = run_sidecar(["verify"], env, tmp_path, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert any(ln.startswith("FAIL") and "t01.db" in ln for ln in lines), res.stdout
    assert sum(ln.startswith("OK  ") for ln in lines) == 2, res.stdout
    assert f"1 of 3 failed: {tenants / 't01.db'}" in res.stdout
    assert "Traceback" not in res.stderr

    sc = sidecars(env, app, tmp_path)
    sc.wait_stdout("app up", timeout=60)
    res = run_sidecar(["verify", "--json"], env, tmp_path, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert doc["verified_by"] == "the running sidecar"
    assert {Path(r["db"]).name: r["ok"] for r in doc["databases"]} == {
        "t00.db": True, "t01.db": False, "t02.db": True}
    sc.signal()
    assert sc.wait(60) == 0, sc.output()


def test_a_second_sidecar_on_the_same_directory_exits_3(tmp_path: Path, s3, bucket,
                                                        sidecars) -> None:
    """One sidecar per directory of databases, whatever SIDECAR_STATE_DIR says: a second one
    with its own state dir refuses (exit 3) instead of replicating the same tenants twice."""
    _seed(tmp_path / "data" / "tenants", 2)
    env = _tenant_env(tmp_path, s3, bucket)
    app = write_app(tmp_path, TENANT_APP)
    first = sidecars(env, app, tmp_path)
    first.wait_stdout("app up", timeout=60)
    other = {**env, "SIDECAR_STATE_DIR": str(tmp_path / "other-state"),
             "PROBE_OUT": str(tmp_path / "probe2.txt")}
    res = run_sidecar(["run", "--", *app], other, tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "another sidecar is running on the databases in" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "probe2.txt").exists()
    first.signal()
    assert first.wait(60) == 0, first.output()
