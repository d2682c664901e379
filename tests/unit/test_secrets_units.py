"""Fast checks of where secrets may go: redaction, the child environments, the rendered
Litestream config (never a credential in the generated one; a project config with `${VAR}` on a
tmpfs), the token file, and the loopback metrics fetch that ignores HTTP_PROXY."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from sidecar import config, metrics, tmpfs
from sidecar.errors import ConfigError, OperatorError, redact
from sidecar.litestream import process as litestream_process
from sidecar.litestream import yaml_file as litestream_config
from testkit.http import serving

SECRET = "s3-$ecret-value-1234567890"
TOKEN = "admin-token-0123456789abcdef"


def _cfg(tmp_path: Path, **extra: str) -> config.Config:
    env = {"SIDECAR_DB_PATH": str(tmp_path / "data" / "app.db"),
           "SIDECAR_REPLICA_URL": "s3://bkt/app.db", "SIDECAR_S3_ENDPOINT": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "key-id", "AWS_SECRET_ACCESS_KEY": SECRET,
           "SIDECAR_MIGRATE_COMMAND": "", "PATH": os.environ["PATH"], **extra}
    (tmp_path / "data").mkdir(exist_ok=True)
    return config.load(env, app_command=["true"], cwd=tmp_path)


def test_urls_with_userinfo_are_masked_in_every_error() -> None:
    """A URL's user:password part never reaches an error message."""
    assert redact("cannot reach https://key:sec@host/x") == "cannot reach https://***@host/x"
    exc = OperatorError("cannot open s3://a:b@h/p", hint="see http://u:p@x", problems=["ftp://u@h"])
    assert "a:b" not in str(exc) and "u:p" not in str(exc) and "u@" not in str(exc)


def test_the_generated_config_holds_no_credential_and_litestream_gets_them_by_env(
        tmp_path: Path) -> None:
    """The generated config lands in the state dir without a key; child_env carries them (from
    the Railway names too) and never the admin token."""
    cfg = _cfg(tmp_path)
    cfg.state_dir.mkdir(mode=0o700)  # preflight makes it in a real run
    path = litestream_config.write_config(cfg, 9999)
    assert path == cfg.state_dir / "litestream.generated.yml"
    text = path.read_text()
    assert SECRET not in text and "key-id" not in text and "access-key" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    env = litestream_process.child_env({"ACCESS_KEY_ID": "rk", "SECRET_ACCESS_KEY": "rs",
                                "SIDECAR_ADMIN_TOKEN": TOKEN, "SIDECAR_ADMIN_TOKEN_FILE": "/f",
                                "AWS_CA_BUNDLE": str(ca), "AWS_SESSION_TOKEN": "not-theirs"})
    assert env["AWS_ACCESS_KEY_ID"] == "rk" and env["AWS_SECRET_ACCESS_KEY"] == "rs"
    assert not {"SIDECAR_ADMIN_TOKEN", "SIDECAR_ADMIN_TOKEN_FILE", "AWS_CA_BUNDLE",
                "AWS_SESSION_TOKEN"} & set(env)
    # The CA reaches Litestream as Go reads it: SSL_CERT_FILE, a private copy ending in it.
    bundle = Path(env["SSL_CERT_FILE"])
    assert bundle.read_text().endswith(ca.read_text()) and not bundle.is_relative_to(tmp_path)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert config.for_children({"SIDECAR_ADMIN_TOKEN": TOKEN, "A": "1"}) == {"A": "1"}


def test_a_project_config_with_variables_is_rendered_on_a_tmpfs(tmp_path: Path) -> None:
    """${AWS_SECRET_ACCESS_KEY} in litestream.yml: the expanded file is 0600 on a tmpfs, off the
    state dir, with the `$` of the secret intact."""
    db = tmp_path / "data" / "app.db"
    (tmp_path / "litestream.yml").write_text(yaml.safe_dump({"dbs": [{
        "path": str(db), "replica": {"url": "s3://bkt/app.db", "endpoint": "http://127.0.0.1:9",
                                     "access-key-id": "${AWS_ACCESS_KEY_ID}",
                                     "secret-access-key": "${AWS_SECRET_ACCESS_KEY}"}}]}))
    cfg = _cfg(tmp_path)
    path = litestream_config.write_config(cfg, 9999)
    try:
        assert not path.is_relative_to(tmp_path)
        assert tmpfs._is_tmpfs(str(path.parent.resolve()))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert SECRET in path.read_text()
    finally:
        path.unlink()


def test_the_admin_token_file(tmp_path: Path) -> None:
    """The token comes from the file (one newline dropped); errors name the variable and never
    show the token; both variables at once is an error."""
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert _cfg(tmp_path, SIDECAR_ADMIN_TOKEN_FILE=str(f)).admin_token == TOKEN
    for extra in ({"SIDECAR_ADMIN_TOKEN_FILE": str(tmp_path / "missing")},
                  {"SIDECAR_ADMIN_TOKEN_FILE": str(f), "SIDECAR_ADMIN_TOKEN": TOKEN}):
        with pytest.raises(ConfigError) as exc:
            _cfg(tmp_path, **extra)
        assert "SIDECAR_ADMIN_TOKEN_FILE" in str(exc.value) and TOKEN not in str(exc.value)
    f.write_text("tiny-tok\n")
    with pytest.raises(ConfigError) as exc:
        _cfg(tmp_path, SIDECAR_ADMIN_TOKEN_FILE=str(f))
    assert "16 characters" in str(exc.value) and "tiny-tok" not in str(exc.value)


def test_litestream_metrics_are_fetched_without_the_proxy(monkeypatch) -> None:
    """HTTP_PROXY pointing nowhere does not stop the loopback fetch."""
    for var in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with serving(lambda _path: (200, b"litestream_txid 1\n")) as base:
        assert "litestream_txid" in metrics._fetch(f"{base}/metrics", 5)


def test_the_session_token_is_a_secret_and_scrubbed(tmp_path: Path) -> None:
    """Temporary credentials come with AWS_SESSION_TOKEN (or AWS_SECURITY_TOKEN): the token is
    redacted from /status and `sidecar status` like the secret key, and its presence sends a
    rendered config off the volume if it ever appears in it."""
    from sidecar.daemon.status import MASK, scrub

    token = "IQoJb3JpZ2luX2VjEJr-session-token-value"
    base = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_PATH": str(tmp_path / "app.db"),
            "SIDECAR_REPLICA_URL": "s3://bkt/app.db", "SIDECAR_S3_ENDPOINT": "http://s3.test",
            "AWS_ACCESS_KEY_ID": "key-id-1234", "AWS_SECRET_ACCESS_KEY": "secret-value-5678"}
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        cfg = config.load({**base, name: token}, need_app=False, cwd=tmp_path)
        assert token in config.secrets_of(cfg), name
        assert token not in repr(cfg)
        doc = scrub({"error": f"denied with token {token}"}, config.secrets_of(cfg))
        assert token not in str(doc) and MASK in doc["error"]
    cfg = config.load(base, need_app=False, cwd=tmp_path)
    assert cfg.session_token is None


def test_a_secret_with_a_slash_in_the_replica_url_is_refused_and_never_shown(tmp_path) -> None:
    """`s3://KEY:SECRET/WITH/SLASH@bucket/p` parses with `KEY:SECRET` as the bucket (AWS
    secrets often hold `/`): refused as a bucket name no bucket has, the value never echoed
    (it was accepted, and the URL with the secret went into every log line)."""
    from sidecar import config
    from sidecar.errors import ConfigError

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_PATH": str(tmp_path / "app.db"),
           "SIDECAR_MIGRATE_COMMAND": "",
           "SIDECAR_REPLICA_URL": f"s3://AKIAIOSFODNN7EXAMPLE:{secret}@bkt/app.db"}
    with pytest.raises(ConfigError) as exc:
        config.load(env, need_app=False, cwd=tmp_path)
    text = str(exc.value) + repr(exc.value.__dict__)
    assert "SIDECAR_REPLICA_URL" in text and "credentials" in text
    assert "wJalr" not in text and "EXAMPLEKEY" not in text
