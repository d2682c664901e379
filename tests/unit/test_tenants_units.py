"""Directory entries without real parts: config, layout, listing classification, configs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from sidecar import config
from sidecar.bucket import tenants
from sidecar.errors import ConfigError, OperatorError
from sidecar.litestream import yaml_file as litestream
from sidecar.recovery import backups


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(tmp_path / "tenants"),
            "SIDECAR_REPLICA_URL": "s3://bkt/tenants", "SIDECAR_S3_ENDPOINT": "http://s3.test",
            "AWS_ACCESS_KEY_ID": "key-id-1234", "AWS_SECRET_ACCESS_KEY": "secret-value-5678",
            **extra}


def test_generated_directory_entry(tmp_path: Path) -> None:
    cfg = config.load(_env(tmp_path), need_app=False, cwd=tmp_path)
    assert cfg.databases == ()
    (entry,) = cfg.directories
    assert entry.dir == tmp_path / "tenants" and entry.pattern == "*.db" and entry.watch
    assert cfg.state_dir == tmp_path / "tenants" / ".sidecar"
    doc = litestream.render_config(cfg, 9999)
    (d,) = doc["dbs"]
    assert d["dir"] == str(tmp_path / "tenants") and d["watch"] is True
    assert d["replica"]["path"] == "tenants" and "secret-access-key" not in d["replica"]


def test_members_get_litestreams_prefix_layout(tmp_path: Path) -> None:
    cfg = config.load(_env(tmp_path, SIDECAR_DB_RECURSIVE="1"), need_app=False, cwd=tmp_path)
    entry = cfg.directories[0]
    m = tenants.member(entry, "eu/t1.db")
    assert m.path == tmp_path / "tenants" / "eu" / "t1.db"
    assert m.replica is not None and m.replica.s3 is not None
    assert m.replica.s3.prefix == "tenants/eu/t1.db" and m.replica.url == "s3://bkt/tenants/eu/t1.db"
    doc = litestream.member_doc(cfg, [m])
    assert doc["dbs"] == [{"path": str(m.path), "replica": litestream.replica_section(
        m.replica, None)}]


def test_listing_is_classified_per_database() -> None:
    entry = config.DbDir(Path("/d"), "*.db", False, True, config.Replica("s3://b/p"))
    listing = tenants.classify(entry, [
        "a.db/0000/0000000000000001-0000000000000004.ltx",
        "a.db/0009/0000000000000001-0000000000000002.ltx",
        "b.db/generations/0123456789abcdef/snapshots/00000000.snapshot.lz4",
        "c.sqlite/0000/0000000000000001-0000000000000001.ltx",  # the pattern does not match
        "sub/d.db/0000/0000000000000001-0000000000000001.ltx",  # not recursive
        "notes.txt", "a.db/stray",
    ])
    assert listing.members == {"a.db": "0.5", "b.db": "0.3"}
    assert listing.positions == {"a.db": 4}
    assert sorted(listing.ignored) == ["c.sqlite", "sub/d.db"]
    assert listing.unknown == ["notes.txt", "a.db/stray"]


def test_local_members_skip_sidecars_files_and_unmatched(tmp_path: Path) -> None:
    """A dot-named file the pattern matches is a tenant (Litestream backs it up); sidecar's
    own files, even under a pattern that matches them, and its state dir are not."""
    d = tmp_path / "tenants"
    (d / ".sidecar").mkdir(parents=True)
    (d / "sub").mkdir()
    for name in ("a.db", "b.db-wal", ".a.db.sidecar-restore-1", "c.txt", "sub/e.db",
                 ".sidecar/x.db", ".dot.db", ".x.db.sidecar-restore-7.db", ".y.db.sidecar.lock"):
        (d / name).write_bytes(b"")
    entry = config.DbDir(d, "*.db", False, True, config.Replica("s3://b/p"))
    assert tenants.local_members(entry) == [".dot.db", "a.db"]
    entry = config.DbDir(d, "*.db", True, True, config.Replica("s3://b/p"))
    assert tenants.local_members(entry) == [".dot.db", "a.db", "sub/e.db"]
    entry = config.DbDir(d, "*", False, True, config.Replica("s3://b/p"))
    assert ".a.db.sidecar-restore-1" not in tenants.local_members(entry)
    assert ".y.db.sidecar.lock" not in tenants.local_members(entry)


def test_a_dot_named_backup_is_a_member_not_needed_again(tmp_path: Path) -> None:
    entry = config.DbDir(tmp_path, "*.db", False, True, config.Replica("s3://b/p"))
    listing = tenants.classify(entry, [".dot.db/0000/0000000000000001-0000000000000001.ltx",
                                       ".a.db.sidecar-restore-1/0000/"
                                       "0000000000000001-0000000000000001.ltx"])
    assert listing.members == {".dot.db": "0.5"}
    (tmp_path / ".dot.db").write_bytes(b"")
    assert set(listing.members) <= set(tenants.local_members(entry))


def test_litestream_yml_dir_entry_keeps_its_replica_settings(tmp_path: Path) -> None:
    (tmp_path / "litestream.yml").write_text(textwrap.dedent("""
        dbs:
          - dir: /data/tenants
            pattern: "*.sqlite"
            recursive: true
            watch: true
            replica:
              type: s3
              bucket: bkt
              path: tenants
              endpoint: http://s3.test
              access-key-id: "${KEY}"
              secret-access-key: "${SECRET}"
          - path: /data/app.db
            replica: {type: s3, bucket: bkt, path: app.db, endpoint: "http://s3.test"}
    """))
    env = {"PATH": "/usr/bin:/bin", "KEY": "key-id-1234", "SECRET": "secret-value-5678"}
    cfg = config.load(env, need_app=False, cwd=tmp_path)
    assert [d.path for d in cfg.databases] == [Path("/data/app.db")]
    (entry,) = cfg.directories
    assert entry.pattern == "*.sqlite" and entry.recursive and entry.replica.s3.prefix == "tenants"
    doc = litestream.render_config(cfg, 9999)
    assert doc["dbs"][0]["replica"]["force-path-style"] is True  # aligned, the entry not skipped
    m = tenants.member(entry, "x/t.sqlite")
    (md,) = litestream.member_doc(cfg, [m])["dbs"]
    assert md["replica"]["path"] == "tenants/x/t.sqlite"
    assert md["replica"]["secret-access-key"] == "secret-value-5678"  # goes to a private file
    assert backups.pick_database(cfg, "x/t.sqlite").path == Path("/data/tenants/x/t.sqlite")
    assert backups.pick_database(cfg, "/data/tenants/t.sqlite").replica.s3.prefix == \
        "tenants/t.sqlite"
    with pytest.raises(OperatorError, match=r"x\.txt"):
        backups.pick_database(cfg, "x.txt")
    with pytest.raises(OperatorError, match="several"):
        backups.pick_database(cfg, None)
    yaml.safe_dump(doc)


@pytest.mark.parametrize("entry,expected", [
    ({"dir": "/d"}, "pattern"),
    ({"dir": "/d", "pattern": "a/*.db"}, "pattern"),
    ({"dir": "/d", "pattern": "*"}, "pattern"),
    ({"dir": "/d", "pattern": "*.db", "watch": "yes"}, "watch"),
    ({"dir": "/d", "pattern": "*.db", "replica": {"type": "file", "path": "/r"}}, "s3 replica"),
])
def test_bad_dir_entries_are_named(tmp_path: Path, entry: dict, expected: str) -> None:
    entry.setdefault("replica", {"type": "s3", "bucket": "b", "path": "p"})
    (tmp_path / "litestream.yml").write_text(yaml.safe_dump({"dbs": [entry]}))
    with pytest.raises(ConfigError) as exc:
        config.load({"PATH": "/usr/bin:/bin"}, need_app=False, cwd=tmp_path)
    text = "\n".join(exc.value.problems)
    assert "dbs[0]" in text and expected in text, text


def test_db_dir_and_db_path_together_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(_env(tmp_path, SIDECAR_DB_PATH=str(tmp_path / "a.db")), need_app=False,
                    cwd=tmp_path)
    assert any("SIDECAR_DB_DIR" in p and "SIDECAR_DB_PATH" in p for p in exc.value.problems)


@pytest.mark.parametrize("var,value,expected", [
    ("SIDECAR_DB_PATTERN", ".hidden*", "file-name pattern"),
    ("SIDECAR_DB_PATTERN", "a/*.db", "file-name pattern"),
    ("SIDECAR_DB_PATTERN", "*", "fixed suffix"),
    ("SIDECAR_DB_PATTERN", "t*", "fixed suffix"),
    ("SIDECAR_DB_PATTERN", "*.db*", "fixed suffix"),
    ("SIDECAR_DB_PATTERN", "*-wal", "fixed suffix"),
    ("SIDECAR_DB_PATTERN", "*.lock", "fixed suffix"),
    ("SIDECAR_DB_RECURSIVE", "maybe", "1/0 or true/false"),
    ("SIDECAR_RESTORE_PARALLELISM", "65", "from 1 to 64"),
    ("SIDECAR_DB_METRICS_LIMIT", "10001", "from 0 to 10000"),
    ("SIDECAR_REPLICA_URL", "file:///backups", "s3:// URL with SIDECAR_DB_DIR"),
])
def test_a_bad_directory_setting_is_one_error_naming_it(tmp_path: Path, var: str, value: str,
                                                        expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(_env(tmp_path, **{var: value}), need_app=False, cwd=tmp_path)
    (problem,) = exc.value.problems
    assert problem.startswith(f"{var}:") and expected in problem and value in problem, problem


def test_a_bad_pattern_is_an_error_without_a_directory_too(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_PATH": str(tmp_path / "a.db"),
           "SIDECAR_DB_PATTERN": ".x"}
    with pytest.raises(ConfigError) as exc:
        config.load(env, need_app=False, cwd=tmp_path)
    assert [p.split(":")[0] for p in exc.value.problems] == ["SIDECAR_DB_PATTERN"]


def test_directory_settings_fill_the_config(tmp_path: Path) -> None:
    cfg = config.load(_env(tmp_path, SIDECAR_RESTORE_PARALLELISM="3", SIDECAR_DB_METRICS_LIMIT="0",
                           SIDECAR_DB_RECURSIVE="1", SIDECAR_DB_PATTERN="*.sqlite"),
                      need_app=False, cwd=tmp_path)
    assert (cfg.restore_parallelism, cfg.db_metrics_limit) == (3, 0)
    (entry,) = cfg.directories
    assert entry.recursive and entry.pattern == "*.sqlite"
    assert config.describe(cfg)["directories"][0]["pattern"] == "*.sqlite"
    assert "secret-value-5678" in config.secrets_of(cfg)


def test_db_dir_beside_a_project_litestream_config_is_an_error(tmp_path: Path) -> None:
    """SIDECAR_DB_DIR with a project litestream.yml is refused, never silently ignored."""
    (tmp_path / "litestream.yml").write_text(textwrap.dedent("""
        dbs:
          - path: /data/app.db
            replica: {type: s3, bucket: bkt, path: app.db, endpoint: "http://s3.test"}
    """))
    with pytest.raises(ConfigError) as exc:
        config.load(_env(tmp_path), need_app=False, cwd=tmp_path)
    assert any("SIDECAR_DB_DIR" in p and "dir:" in p for p in exc.value.problems)


def test_the_volume_check_covers_directories(tmp_path: Path) -> None:
    from sidecar.startup import preflight

    vol = tmp_path / "vol"
    vol.mkdir()
    mountinfo = f"36 35 98:0 / {vol} rw - tmpfs tmpfs rw\n"
    inside = config.load(_env(tmp_path, SIDECAR_DB_DIR=str(vol / "tenants"),
                              SIDECAR_VOLUME_PATH=str(vol)), need_app=False, cwd=tmp_path)
    checks = {c.name: c for c in preflight.check_volume(inside, mountinfo)}
    assert checks["db dir on volume (tenants/)"].ok
    outside = config.load(_env(tmp_path, SIDECAR_VOLUME_PATH=str(vol)), need_app=False,
                          cwd=tmp_path)
    bad = {c.name: c for c in preflight.check_volume(outside, mountinfo)}[
        "db dir on volume (tenants/)"]
    assert not bad.ok and "outside the volume" in bad.detail
    assert bad.fix == f"set SIDECAR_DB_DIR to {vol / 'tenants'}"
    (c,) = preflight.check_db_dir(inside.directories[0])
    assert c.ok and "can be created" in c.detail


def test_a_failed_directory_check_still_counts_its_requests(tmp_path: Path) -> None:
    """A listing that timed out was a request to the bucket: sidecar_replica_requests_total
    counts it (the bench read 0 requests per minute while every check was timing out)."""
    from sidecar import metrics
    from sidecar.errors import ReplicaUnreachable
    from sidecar.lag.dir_lag import DirLag

    cfg = config.load(_env(tmp_path), need_app=False, cwd=tmp_path)
    entry = cfg.directories[0]

    class Down(tenants.BucketView):
        def full(self) -> tenants.Listing:
            exc = ReplicaUnreachable("unreachable",
                                     "cannot reach http://s3.test: ReadTimeoutError")
            exc.requests = 1
            raise exc

    def counted() -> float:
        return metrics.REPLICA_REQUESTS.labels(
            db=str(entry.dir), operation="list_objects_v2")._value.get()

    before = counted()
    res = DirLag(entry, None, 1.0, 10, bucket=Down(entry, 1.0)).check()
    assert not res.reachable and res.requests == 1
    assert counted() == before + 1
