"""Credentials as users have them, through sidecar's one S3 client and Litestream alike, on the
real S3 server: a profile of the shared credentials file (AWS_PROFILE, no key variables),
temporary keys with AWS_SESSION_TOKEN; and what Litestream 0.5.17 cannot use (temporary keys
named in the project's litestream.yml: it signs those without their token) refused at config
time, exit 2, before anything starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from testkit import S3_KEY, S3_SECRET, S3Server, base_env, rows, run_sidecar, s3_env, seed_bucket

pytestmark = pytest.mark.slow


def profile_env(tmp_path: Path, s3: S3Server, bucket: str) -> dict[str, str]:
    """The bucket reached through profile `backups` of a shared credentials file."""
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[backups]\naws_access_key_id = {S3_KEY}\n"
                     f"aws_secret_access_key = {S3_SECRET}\n")
    config = tmp_path / "aws-config"
    config.write_text("[profile backups]\nregion = us-east-1\n")
    env = base_env(tmp_path, **s3_env(s3, bucket), AWS_PROFILE="backups",
                   AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(config))
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    return env


def test_a_profile_of_the_shared_files_backs_up_checks_and_restores(
        tmp_path: Path, s3: S3Server, bucket: str) -> None:
    """No key variable at all: sidecar's probe and `check` (boto3) and Litestream find the
    keys through AWS_PROFILE; rows replicate, `check` passes, a wiped volume comes back."""
    env = profile_env(tmp_path, s3, bucket)
    seed_bucket(env, tmp_path, ["p1", "p2"])
    assert any(k.endswith(".ltx") for k in s3.keys(bucket, "app.db/"))
    res = run_sidecar(["check"], env, tmp_path, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert "latest backup txid" in res.stdout
    db = Path(env["SIDECAR_DB_PATH"])
    shutil.rmtree(db.parent)
    db.parent.mkdir()
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert rows(db) == ["p1", "p2"]


def test_a_profile_that_does_not_exist_is_denied_not_retried(tmp_path: Path, s3: S3Server,
                                                             bucket: str) -> None:
    """AWS_PROFILE naming no profile: the start stops at once (exit 4) saying it cannot sign,
    instead of retrying an unreachable bucket for SIDECAR_REPLICA_TIMEOUT."""
    env = profile_env(tmp_path, s3, bucket)
    env.update(AWS_PROFILE="nope", SIDECAR_REPLICA_TIMEOUT="30s")
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=60)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "nope" in res.stderr and "cannot sign" in res.stderr, res.stderr[-2000:]
    assert not Path(env["SIDECAR_DB_PATH"]).exists()


def test_temporary_keys_with_a_session_token_back_up_and_check(tmp_path: Path, s3: S3Server,
                                                               bucket: str) -> None:
    """AWS_SESSION_TOKEN beside the keys (the generated config names none, so Litestream
    reads all three from its environment): rows replicate and `check` passes."""
    env = base_env(tmp_path, **s3_env(s3, bucket), AWS_SESSION_TOKEN="FwoGZXIvYXdzE-token")
    seed_bucket(env, tmp_path, ["t1"])
    res = run_sidecar(["check"], env, tmp_path, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert "FwoGZXIvYXdzE-token" not in res.stdout + res.stderr


def test_temporary_keys_named_in_litestream_yml_are_refused_at_config_time(
        tmp_path: Path, s3: S3Server, bucket: str) -> None:
    """The project's litestream.yml names the keys AWS_SESSION_TOKEN goes with: Litestream
    would sign without the token and be denied on every upload, so `run` refuses (exit 2,
    naming the key and what to do) and touches nothing; without the token it starts."""
    env = base_env(tmp_path, **s3_env(s3, bucket), AWS_SESSION_TOKEN="FwoGZXIvYXdzE-token")
    db = Path(env.pop("SIDECAR_DB_PATH"))
    env.pop("SIDECAR_REPLICA_URL")
    (tmp_path / "litestream.yml").write_text(yaml.safe_dump({"dbs": [{
        "path": str(db), "replica": {
            "type": "s3", "bucket": bucket, "path": "app.db", "endpoint": s3.endpoint,
            "region": "us-east-1", "access-key-id": "${AWS_ACCESS_KEY_ID}",
            "secret-access-key": "${AWS_SECRET_ACCESS_KEY}"}}]}))
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "access-key-id" in res.stderr and "AWS_SESSION_TOKEN" in res.stderr
    assert "FwoGZXIvYXdzE-token" not in res.stderr and S3_SECRET not in res.stderr
    assert not db.exists()
    del env["AWS_SESSION_TOKEN"]
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
