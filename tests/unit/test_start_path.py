"""What start-up keeps as it should: a bad cron schedule is still a configuration error, the
generated Litestream config is YAML that PyYAML wrote (and a secret in it stays off the volume),
and `litestream version` started early gives the same answer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from sidecar import config
from sidecar.litestream import yaml_file as litestream_config
from sidecar.startup import preflight


def test_a_bad_schedule_is_still_a_configuration_error(tmp_path: Path) -> None:
    """SIDECAR_VERIFY_SCHEDULE=61 3 * * * stops the start naming the variable."""
    env = {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "SIDECAR_MIGRATE_COMMAND": "",
           "SIDECAR_VERIFY_SCHEDULE": "61 3 * * *", "PATH": os.environ["PATH"]}
    with pytest.raises(config.ConfigError) as info:
        config.load(env, app_command=["true"], cwd=tmp_path)
    assert "SIDECAR_VERIFY_SCHEDULE" in str(info.value)


def test_the_generated_litestream_config_is_yaml_written_by_pyyaml(tmp_path: Path) -> None:
    """Block-style YAML from PyYAML (not JSON): read back, it is exactly the rendered doc;
    a long non-ASCII path stays on one line, as written."""
    db = tmp_path / ("data dir " + "x" * 90) / "app é.db"
    db.parent.mkdir()
    env = {"SIDECAR_DB_PATH": str(db), "SIDECAR_REPLICA_URL": "s3://bkt/app.db",
           "SIDECAR_S3_ENDPOINT": "http://127.0.0.1:9", "SIDECAR_MIGRATE_COMMAND": "",
           "SIDECAR_STATE_DIR": str(tmp_path / "state"), "PATH": os.environ["PATH"]}
    cfg = config.load(env, app_command=["true"], cwd=tmp_path)
    doc = litestream_config.render_config(cfg, 9999)
    path = litestream_config.write_config(cfg, 9999)
    text = path.read_text()
    assert yaml.safe_load(text) == doc
    header, body = text.split("\n", 1)
    assert header.startswith("# Written by sidecar")
    assert body == yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=float("inf"))
    assert body.startswith("dbs:\n") and not body.lstrip().startswith("{")
    with pytest.raises(ValueError):
        json.loads(body)
    assert any(str(db) in line for line in body.splitlines())


def test_a_secret_in_the_config_keeps_it_off_the_volume_whatever_its_quoting(
        tmp_path: Path) -> None:
    """A project's litestream.yml holding a secret that YAML must quote (`: `, `'`, `#`):
    rendered into a private file, not the state dir, though the text holds it quoted."""
    secret = "se: cr'et #\\x" + "y" * 100  # YAML must quote it, doubling its quote
    db = tmp_path / "app.db"
    own = tmp_path / "litestream.yml"
    own.write_text(yaml.safe_dump({"dbs": [{"path": str(db), "replica": {
        "type": "s3", "bucket": "bkt", "path": "app.db", "endpoint": "http://127.0.0.1:9",
        "secret-access-key": secret, "access-key-id": "AKIAEXAMPLE"}}]}))
    env = {"SIDECAR_DB_PATH": str(db), "LITESTREAM_CONFIG": str(own),
           "SIDECAR_MIGRATE_COMMAND": "", "SIDECAR_STATE_DIR": str(tmp_path / "state"),
           "AWS_SECRET_ACCESS_KEY": secret, "PATH": os.environ["PATH"]}
    cfg = config.load(env, app_command=["true"], cwd=tmp_path)
    path = litestream_config.write_config(cfg, 9999)
    try:
        assert not str(path).startswith(str(tmp_path)), path
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert yaml.safe_load(path.read_text())["dbs"][0]["replica"]["secret-access-key"] \
            == secret
    finally:
        path.unlink(missing_ok=True)


def test_the_early_version_query_reads_the_version(tmp_path: Path) -> None:
    """Started before the rest of sidecar is imported, read in preflight: same answer."""
    fake = tmp_path / "litestream"
    fake.write_text("#!/bin/sh\necho v0.5.17\n")
    fake.chmod(0o755)
    assert preflight.VersionQuery(str(fake)).result() == "0.5.17"
    old = tmp_path / "old"
    old.write_text("#!/bin/sh\necho v0.3.13 >&2\n")
    old.chmod(0o755)
    assert preflight.VersionQuery(str(old)).result() == "0.3.13"
    assert preflight.VersionQuery(str(tmp_path / "missing")).result() is None
    assert preflight.VersionQuery(None).result() is None
