"""The CA a user gives is one setting (AWS_CA_BUNDLE, else SSL_CERT_FILE), checked once (a
file that cannot be read is a config error naming it), given to boto3 as it is and to
Litestream as Go reads it (SSL_CERT_FILE: the roots it would trust anyway plus the CA, in a
private file; never AWS_CA_BUNDLE, with which Litestream 0.5 cannot start)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sidecar import config
from sidecar.bucket import trust
from sidecar.errors import ConfigError
from sidecar.litestream.process import child_env

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def load(tmp_path: Path, **env: str) -> config.Config:
    base = {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "PATH": "/usr/bin",
            "SIDECAR_MIGRATE_COMMAND": "", "SIDECAR_REPLICA_URL": "s3://bkt/app.db",
            "SIDECAR_S3_ENDPOINT": "https://127.0.0.1:9", **env}
    return config.load(base, app_command=["true"], cwd=tmp_path)


def pem(tmp_path: Path, name: str = "ca.pem", text: str = PEM) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("var", ["AWS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_a_ca_bundle_that_cannot_be_used_is_one_config_error_naming_it(tmp_path: Path,
                                                                       var: str) -> None:
    for value, why in ((str(tmp_path / "missing.pem"), "No such file or directory"),
                       (str(tmp_path), "not a regular file"),
                       (str(pem(tmp_path, "x.pem", "not a certificate")), "BEGIN CERTIFICATE")):
        with pytest.raises(ConfigError) as exc:
            load(tmp_path, **{var: value})
        assert len(exc.value.problems) == 1, exc.value.problems
        problem = exc.value.problems[0]
        assert problem.startswith(f"{var}: ") and why in problem and value in problem, problem
        assert exc.value.exit_code == 2


def test_the_bundle_reaches_the_s3_settings_aws_first(tmp_path: Path) -> None:
    aws, ssl_file = pem(tmp_path, "aws.pem"), pem(tmp_path, "ssl.pem")
    rep = load(tmp_path, AWS_CA_BUNDLE=str(aws), SSL_CERT_FILE=str(ssl_file)).databases[0].replica
    assert rep is not None and rep.s3 is not None and rep.s3.ca_bundle == str(aws)
    rep = load(tmp_path, SSL_CERT_FILE=str(ssl_file)).databases[0].replica
    assert rep is not None and rep.s3 is not None and rep.s3.ca_bundle == str(ssl_file)
    rep = load(tmp_path).databases[0].replica
    assert rep is not None and rep.s3 is not None and rep.s3.ca_bundle is None


def test_litestream_gets_ssl_cert_file_with_the_roots_and_the_ca(tmp_path: Path) -> None:
    """AWS_CA_BUNDLE alone: the system's roots then the CA; with SSL_CERT_FILE too, that file's
    roots then the CA; SSL_CERT_FILE alone reaches it unchanged. Never AWS_CA_BUNDLE."""
    ca = pem(tmp_path, "ca.pem", PEM.replace("fake", "theCA"))
    env = child_env({"AWS_CA_BUNDLE": str(ca)})
    assert "AWS_CA_BUNDLE" not in env
    bundle = Path(env["SSL_CERT_FILE"])
    roots = trust.system_roots()
    assert roots is not None  # the machine's own bundle (Debian's path, where Go looks first)
    system = Path(roots).read_bytes()
    assert bundle.read_bytes() == system + (b"" if system.endswith(b"\n") else b"\n") + \
        ca.read_bytes()
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert not bundle.is_relative_to(tmp_path)

    own = pem(tmp_path, "own-roots.pem", PEM.replace("fake", "ownroots"))
    env = child_env({"AWS_CA_BUNDLE": str(ca), "SSL_CERT_FILE": str(own)})
    assert Path(env["SSL_CERT_FILE"]).read_text() == own.read_text() + ca.read_text()
    assert child_env({"SSL_CERT_FILE": str(own)})["SSL_CERT_FILE"] == str(own)
    # An SSL_CERT_FILE that cannot be read (config reads it only without AWS_CA_BUNDLE): the
    # system's roots instead, not a failure to start Litestream.
    env = child_env({"AWS_CA_BUNDLE": str(ca), "SSL_CERT_FILE": str(tmp_path / "gone.pem")})
    assert Path(env["SSL_CERT_FILE"]).read_bytes().endswith(ca.read_bytes())
    assert "SSL_CERT_FILE" not in child_env({})


def test_the_bundle_file_is_written_once_per_process(tmp_path: Path) -> None:
    """Every helper Litestream (the daemon runs one per verification) shares one file."""
    ca = pem(tmp_path)
    first = child_env({"AWS_CA_BUNDLE": str(ca)})["SSL_CERT_FILE"]
    assert child_env({"AWS_CA_BUNDLE": str(ca)})["SSL_CERT_FILE"] == first
