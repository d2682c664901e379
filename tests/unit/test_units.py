"""Fast unit tests of the decision logic (config parsing, restore decision, exit codes), with
fakes beside the real-process tests."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from sidecar import config, dbfile
from sidecar.bucket import replica
from sidecar.errors import ConfigError, RestoreError
from sidecar.recovery import restore
from sidecar.startup import preflight
from sidecar.supervise import procs


def load(tmp_path: Path, **env: str) -> config.Config:
    base = {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "PATH": "/usr/bin:/bin"}
    base.update(env)
    return config.load(base, app_command=["true"], cwd=tmp_path)


@pytest.mark.parametrize("text,seconds", [("2", 2), ("0.5", 0.5), ("500ms", 0.5), ("2s", 2),
                                          ("1m", 60), ("1h", 3600)])
def test_durations(text: str, seconds: float) -> None:
    """Durations are plain seconds or carry a unit."""
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1d", "-1s", "1 0s"])
def test_bad_durations(text: str) -> None:
    """Anything else is rejected."""
    with pytest.raises(ValueError):
        config.parse_duration(text)


@pytest.mark.parametrize("text,expected", [("[::]:9090", ("::", 9090)),
                                           ("0.0.0.0:80", ("0.0.0.0", 80)),
                                           (":9090", ("::", 9090)), ("9090", ("::", 9090)),
                                           ("off", (None, 0))])
def test_http_addr(text: str, expected: tuple) -> None:
    """Listener addresses: bracketed IPv6, IPv4, bare port, or off."""
    assert config.parse_addr(text) == expected


@pytest.mark.parametrize("url,path", [("file:/data/app.db", "/data/app.db"),
                                      ("file:./dev.db?connection_limit=1", "./dev.db"),
                                      ("file:///data/x.db", "/data/x.db")])
def test_prisma_url(url: str, path: str) -> None:
    """Prisma's file: URL gives the path, without the query."""
    assert config.database_path_from_url(url) == path


def test_relative_database_url_resolves_against_the_prisma_schema(tmp_path: Path) -> None:
    """A relative DATABASE_URL is resolved like Prisma does: against the schema's directory."""
    (tmp_path / "prisma").mkdir()
    (tmp_path / "prisma" / "schema.prisma").write_text("// schema")
    cfg = config.load({"DATABASE_URL": "file:./dev.db", "PATH": "/usr/bin"}, app_command=["true"],
                      cwd=tmp_path)
    assert cfg.databases[0].path == tmp_path / "prisma" / "dev.db"


def test_railway_bucket_names_are_fallbacks(tmp_path: Path) -> None:
    """Railway's BUCKET/ENDPOINT/REGION/ACCESS_KEY_ID/SECRET_ACCESS_KEY work as they are."""
    cfg = load(tmp_path, BUCKET="bkt", ENDPOINT="https://storage.railway.app", REGION="auto",
               ACCESS_KEY_ID="id", SECRET_ACCESS_KEY="Zq9-secret",
               SIDECAR_S3_FORCE_PATH_STYLE="false")
    s3 = cfg.databases[0].replica.s3
    assert (s3.bucket, s3.prefix, s3.endpoint, s3.region) == (
        "bkt", "app.db", "https://storage.railway.app", "auto")
    assert s3.access_key_id == "id" and s3.secret_access_key == "Zq9-secret"
    assert s3.force_path_style is False
    assert "Zq9-secret" not in repr(cfg)


def test_custom_endpoint_defaults_to_path_style(tmp_path: Path) -> None:
    """With a custom endpoint and no explicit setting, path-style addressing is used."""
    cfg = load(tmp_path, SIDECAR_REPLICA_URL="s3://b/p", SIDECAR_S3_ENDPOINT="http://x:9000")
    assert cfg.databases[0].replica.s3.force_path_style is True


def test_local_default_replica_off_railway(tmp_path: Path) -> None:
    """No replica off Railway: a local file:// replica under the state dir, flagged as such."""
    cfg = load(tmp_path)
    assert cfg.local_default_replica
    assert cfg.databases[0].replica.dir == tmp_path / ".sidecar" / "replica" / "app.db"


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    """A problem with a secret variable says so without its value."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, SIDECAR_ADMIN_TOKEN="short$ecret")
    assert "short$ecret" not in str(err.value)
    assert "SIDECAR_ADMIN_TOKEN" in str(err.value)


def test_litestream_config_is_read_and_expanded(tmp_path: Path) -> None:
    """The project's litestream.yml gives the databases; ${VAR} is expanded on our side, so a
    `$` inside the secret survives."""
    (tmp_path / "litestream.yml").write_text(
        "dbs:\n  - path: /data/a.db\n    replica:\n      type: s3\n      bucket: b\n"
        "      path: a\n      secret-access-key: ${SECRET}\n      access-key-id: id\n"
        "  - path: /data/b.db\n    replica:\n      url: file:///backups/b\n")
    cfg = config.load({"SECRET": "x$y$$z", "PATH": "/usr/bin"}, app_command=["true"], cwd=tmp_path)
    assert [d.path for d in cfg.databases] == [Path("/data/a.db"), Path("/data/b.db")]
    assert cfg.databases[0].replica.s3.secret_access_key == "x$y$$z"
    assert cfg.databases[1].replica.dir == Path("/backups/b")


def test_database_url_not_in_litestream_config_is_an_error(tmp_path: Path) -> None:
    """A DATABASE_URL that the Litestream config does not replicate would never be backed up."""
    (tmp_path / "litestream.yml").write_text(
        "dbs:\n  - path: /data/a.db\n    replica:\n      url: file:///b\n")
    with pytest.raises(ConfigError) as err:
        config.load({"DATABASE_URL": "file:/data/other.db", "PATH": "/usr/bin"},
                    app_command=["true"], cwd=tmp_path)
    assert "would not be backed up" in str(err.value)


def test_mountinfo_parsing_unescapes_spaces() -> None:
    """Mount points come from the 5th field of mountinfo, with octal escapes undone."""
    info = ("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "40 22 0:50 / /my\\040data rw - tmpfs tmpfs rw\n")
    assert preflight.mount_points(info) == ["/", "/my data"]


def test_volume_check_against_mountinfo(tmp_path: Path) -> None:
    """The DB must be under a volume that is a mount point; the fix names DATABASE_URL."""
    cfg = load(tmp_path, SIDECAR_VOLUME_PATH="/data", SIDECAR_DB_PATH="/app/prisma/app.db")
    info = "1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /data rw - ext4 y rw\n"
    checks = preflight.check_volume(cfg, info)
    assert checks[0].ok
    assert not checks[1].ok and "DATABASE_URL=file:/data/app.db" in checks[1].fix
    unmounted = preflight.check_volume(cfg, "1 0 0:1 / / rw - ext4 x rw\n")
    assert not unmounted[0].ok


def test_exit_codes_follow_the_shell_convention() -> None:
    """Wait statuses become exit codes: the code itself, or 128+N for signal N."""
    assert procs.exit_code(3 << 8) == 3
    assert procs.exit_code(signal.SIGTERM) == 143
    assert procs.exit_code(signal.SIGKILL) == 137


def _db(path: Path, tables: bool = True) -> None:
    con = sqlite3.connect(path)
    if tables:
        con.execute("CREATE TABLE t(x)")
        con.execute("INSERT INTO t VALUES (1)")
    else:
        con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()


def test_file_states(tmp_path: Path) -> None:
    """missing, ghost (0 bytes / no tables), present, corrupt."""
    p = tmp_path / "x.db"
    assert dbfile.inspect(p).kind == "missing"
    p.write_bytes(b"")
    assert dbfile.inspect(p).kind == "ghost"
    p.unlink()
    _db(p, tables=False)
    assert dbfile.inspect(p).kind == "ghost"
    p.unlink()
    _db(p)
    assert dbfile.inspect(p).kind == "present"
    p.write_bytes(b"garbage" * 1000)
    assert dbfile.inspect(p).kind == "corrupt"


class FakeStore(replica.Store):
    def __init__(self, answers: list) -> None:
        self.answers = answers

    def contents(self) -> replica.Contents:
        self.requests += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_probe_retries_unreachable_until_the_deadline(monkeypatch) -> None:
    """Connection failures are retried within the bound; then the last one is raised."""
    store = FakeStore([replica.ReplicaUnreachable("unreachable", "down")] * 100)
    monkeypatch.setattr(replica, "open_store", lambda r, timeout: store)
    now = [0.0]
    with pytest.raises(replica.ReplicaUnreachable):
        replica.probe(object(), 5.0, sleep=lambda s: now.__setitem__(0, now[0] + s),
                      clock=lambda: now[0])
    assert 3 <= store.requests <= 6
    assert now[0] <= 5.0


def test_probe_denied_is_final_at_once(monkeypatch) -> None:
    """Access denied is not retried."""
    store = FakeStore([replica.ReplicaUnreachable("denied", "no"), replica.Contents("0.5")])
    monkeypatch.setattr(replica, "open_store", lambda r, timeout: store)
    with pytest.raises(replica.ReplicaUnreachable):
        replica.probe(object(), 60.0, sleep=lambda s: None)
    assert store.requests == 1


def test_probe_recovers_when_the_bucket_comes_back(monkeypatch) -> None:
    """An outage shorter than the bound ends in an answer."""
    store = FakeStore([replica.ReplicaUnreachable("unreachable", "down"),
                       replica.Contents("empty")])
    monkeypatch.setattr(replica, "open_store", lambda r, timeout: store)
    assert replica.probe(object(), 60.0, sleep=lambda s: None).layout == "empty"


@pytest.mark.parametrize("answer,outcome", [(replica.Contents("empty"), "fresh"), (
    replica.ReplicaUnreachable("unreachable", "down"), "refused")])
def test_restore_decision_for_a_missing_db(tmp_path: Path, monkeypatch, answer, outcome) -> None:
    """Missing DB: an empty replica means a fresh start; an unreachable one stops the start and
    creates nothing."""
    cfg = load(tmp_path, SIDECAR_REPLICA_TIMEOUT="1s")
    monkeypatch.setattr(replica, "probe", lambda r, t: (_ for _ in ()).throw(answer)
                        if isinstance(answer, Exception) else answer)
    db = cfg.databases[0]
    if outcome == "fresh":
        assert restore.on_start(cfg, db, "litestream", tmp_path / "c.yml").outcome == "fresh"
    else:
        with pytest.raises(RestoreError) as err:
            restore.on_start(cfg, db, "litestream", tmp_path / "c.yml")
        assert "cannot be read" in str(err.value)
    assert not db.path.exists()


def test_swap_in_keeps_the_old_db_and_its_wal(tmp_path: Path) -> None:
    """Putting a restored file in place keeps the old DB (checkpointed) aside, whole."""
    live, new, aside = tmp_path / "app.db", tmp_path / "new.db", tmp_path / "aside"
    _db(live)
    con = sqlite3.connect(live)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("INSERT INTO t VALUES (2)")
    con.commit()
    con.close()
    _db(new)
    kept = restore.swap_in(new, live, aside)
    old = next(Path(k) for k in kept if not k.endswith(("-wal", "-shm")) and "app.db." in k)
    assert sqlite3.connect(old).execute("SELECT count(*) FROM t").fetchone()[0] == 2
    assert sqlite3.connect(live).execute("SELECT count(*) FROM t").fetchone()[0] == 1
    assert not new.exists()


class _ListingClient:
    """A fake S3 client: answers list_objects_v2 from a sorted key list, recording MaxKeys."""

    def __init__(self, keys: list[str]):
        self.keys = sorted(keys)
        self.calls: list[dict] = []

    def list_objects_v2(self, **kw):
        self.calls.append(kw)
        under = [k for k in self.keys if k.startswith(kw["Prefix"])]
        if kw.get("Delimiter"):
            rest = {k[len(kw["Prefix"]):] for k in under}
            dirs = sorted({r.split("/", 1)[0] + "/" for r in rest if "/" in r})
            loose = [kw["Prefix"] + r for r in sorted(rest) if "/" not in r]
            return {"CommonPrefixes": [{"Prefix": kw["Prefix"] + d} for d in dirs],
                    "Contents": [{"Key": k} for k in loose]}
        return {"Contents": [{"Key": k} for k in under[:kw["MaxKeys"]]]}


def _store(keys: list[str]) -> tuple[replica.S3Store, _ListingClient]:
    client = _ListingClient(keys)
    s3 = config.S3(bucket="b", prefix="app.db", endpoint="http://127.0.0.1:9", region="x",
                   force_path_style=True)
    return replica.S3Store(config.Replica(url="s3://b/app.db", s3=s3), client=client), client


def test_backup_probe_reads_one_key_of_a_level() -> None:
    """`rclone serve s3` reads every listed object (its ETag): one key answers "any backup?"."""
    ltx = [f"app.db/0009/{i:016x}-{i:016x}.ltx" for i in range(1, 30)]
    store, client = _store(ltx)
    assert store.contents().layout == "0.5"
    assert [c["MaxKeys"] for c in client.calls if "Delimiter" not in c] == [1]


def test_backup_probe_looks_past_a_stray_first_key() -> None:
    """A stray object sorting first in a level does not hide the backup behind it."""
    store, _ = _store(["app.db/0000/.keep", "app.db/0000/0000000000000001-0000000000000001.ltx"])
    assert store.contents().layout == "0.5"
    store, _ = _store(["app.db/0000/.keep"])
    assert store.contents().layout == "unknown"


def test_lag_monitor_opens_its_client_in_its_first_check_and_checks_when_told(
        tmp_path: Path, monkeypatch) -> None:
    """Nothing on the way to the app builds the lag monitor's S3 client, and with
    defer_checks nothing is scheduled (so nothing lists the bucket) until begin_checks()."""
    from sidecar.lag import monitor as lag

    opened: list[object] = []
    monkeypatch.setattr(lag, "open_store", lambda *a, **kw: opened.append(a) or
                        replica.DirStore(tmp_path / "none"))
    cfg = load(tmp_path, SIDECAR_REPLICA_URL="s3://bkt/app.db",
               SIDECAR_S3_ENDPOINT="http://127.0.0.1:9")
    scheduled: list[tuple] = []
    monitor = lag.start(cfg, None, lambda: True, lambda *a: scheduled.append(a),
                        defer_checks=True)
    try:
        assert opened == [] and scheduled == []
        assert not monitor.healthy()  # unmeasured lag is not ready
        monitor.begin_checks()
        monitor.begin_checks()
        assert len(scheduled) == 1 and scheduled[0][2] == "lag check"
        assert opened == []
        monitor.check_all()
        assert len(opened) == 1
        monitor.check_all()
        assert len(opened) == 1
    finally:
        monitor.stop()


@pytest.mark.parametrize("url", ["s3://bkt/app#1.db", "s3://bkt/app.db?region=x",
                                 "file:///backups/a#b"])
def test_replica_url_with_query_or_fragment_is_refused(tmp_path: Path, url: str) -> None:
    """A `#` or `?` would cut the prefix short: one error naming the variable and the value,
    never a backup under another prefix."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, SIDECAR_REPLICA_URL=url, SIDECAR_S3_ENDPOINT="http://127.0.0.1:9")
    text = str(err.value)
    assert "SIDECAR_REPLICA_URL" in text and url in text and "prefix would be cut" in text
