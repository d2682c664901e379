"""S3 addressing: virtual-hosted by default for Railway's storage host, path style for any other
custom endpoint, SIDECAR_S3_FORCE_PATH_STYLE over both; and the whole lifecycle against a real
S3 server that answers only virtual-hosted requests, as a Railway Bucket does, configured with
nothing but the Bucket's own variable names.

The end-to-end tests run sidecar in a mount namespace whose /etc/hosts maps storage.railway.app
and bkt.storage.railway.app to 127.0.0.1, so the default for Railway's host kicks in while every
request stays on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sidecar import config
from sidecar.litestream.yaml_file import replica_section
from testkit import (
    BIN,
    S3_SECRET,
    S3Server,
    base_env,
    free_port,
    railway_bucket_env,
    rows,
    write_app,
)

BUCKET = "bkt"
RAILWAY_HOST = "storage.railway.app"


def load(tmp_path: Path, **env: str) -> config.Config:
    base = {"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "PATH": "/usr/bin:/bin"}
    base.update(env)
    return config.load(base, app_command=["true"], cwd=tmp_path)


# ------------------------------------------------------------------ the default, exactly


@pytest.mark.parametrize("endpoint", [
    "https://storage.railway.app", "https://storage.railway.app/", "http://storage.railway.app:9000",
    "https://STORAGE.railway.app:443"])
def test_railway_endpoint_defaults_to_virtual_hosted(tmp_path: Path, endpoint: str) -> None:
    """Railway's host, with any scheme or port, gives virtual-hosted addressing to both the
    boto3 client and the generated Litestream config."""
    cfg = load(tmp_path, **railway_bucket_env(endpoint, BUCKET))
    s3 = cfg.databases[0].replica.s3
    assert s3.force_path_style is False and s3.addressing == "virtual-hosted"
    assert replica_section(cfg.databases[0].replica, 1.0)["force-path-style"] is False


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:9000", "https://minio.example.com", "https://fly.storage.tigris.dev",
    "https://storage.railway.app.example.com", "https://notstorage.railway.app"])
def test_other_custom_endpoints_keep_path_style(tmp_path: Path, endpoint: str) -> None:
    """Any other custom endpoint (MinIO, lookalike hosts) keeps path style."""
    cfg = load(tmp_path, SIDECAR_REPLICA_URL="s3://b/p", SIDECAR_S3_ENDPOINT=endpoint)
    s3 = cfg.databases[0].replica.s3
    assert s3.force_path_style is True and s3.addressing == "path-style"
    assert replica_section(cfg.databases[0].replica, 1.0)["force-path-style"] is True


def test_aws_without_endpoint_is_virtual_hosted(tmp_path: Path) -> None:
    """No endpoint (AWS S3 itself): virtual-hosted, as before."""
    cfg = load(tmp_path, SIDECAR_REPLICA_URL="s3://b/p")
    assert cfg.databases[0].replica.s3.force_path_style is False


@pytest.mark.parametrize("endpoint,value,expected", [
    ("https://storage.railway.app", "true", True), ("https://storage.railway.app", "false", False),
    ("http://127.0.0.1:9000", "false", False), ("http://127.0.0.1:9000", "true", True)])
def test_force_path_style_overrides_both_defaults(tmp_path: Path, endpoint: str, value: str,
                                                  expected: bool) -> None:
    """SIDECAR_S3_FORCE_PATH_STYLE wins over the default either way (buckets made before
    Railway's change may need path style)."""
    cfg = load(tmp_path, **railway_bucket_env(endpoint, BUCKET), SIDECAR_S3_FORCE_PATH_STYLE=value)
    assert cfg.databases[0].replica.s3.force_path_style is expected
    assert replica_section(cfg.databases[0].replica, 1.0)["force-path-style"] is expected


def test_boto3_client_uses_the_chosen_addressing(tmp_path: Path) -> None:
    """The client sidecar builds puts the bucket in the host name for Railway's endpoint and in
    the path elsewhere (the URL is read from botocore's request, nothing is sent)."""
    from sidecar.bucket.client import Client

    urls: list[str] = []
    for endpoint, env in (("https://storage.railway.app", {}),
                          ("http://127.0.0.1:9", {}),
                          ("https://storage.railway.app", {"SIDECAR_S3_FORCE_PATH_STYLE": "true"})):
        cfg = load(tmp_path, **railway_bucket_env(endpoint, BUCKET), **env)
        client = Client(cfg.databases[0].replica, timeout=1.0).boto()
        seen: list[str] = []

        def capture(request, seen=seen, **_kw):  # type: ignore[no-untyped-def]
            seen.append(request.url)
            raise _Stop

        client.meta.events.register("before-send.s3.ListObjectsV2", capture)
        with pytest.raises(_Stop):
            client.list_objects_v2(Bucket=BUCKET, Prefix="app.db/")
        urls.append(seen[0])
    railway, other, overridden = urls
    assert railway.startswith("https://bkt.storage.railway.app/?"), railway
    assert other.startswith("http://127.0.0.1:9/bkt?"), other
    assert overridden.startswith("https://storage.railway.app/bkt?"), overridden


class _Stop(Exception):
    pass


# ------------------------------------------------------------------ for real


class VirtualHostedS3(S3Server):
    """`rclone serve s3 --force-path-style=false`: answers only BUCKET.HOST requests; a
    path-style request gets NoSuchBucket, as on a Railway Bucket made after its change."""

    extra_args = ("--force-path-style=false",)

    def start(self) -> None:
        (self.root / BUCKET).mkdir(parents=True, exist_ok=True)
        super().start()


@pytest.fixture
def vhost_s3(tmp_path: Path) -> Iterator[VirtualHostedS3]:
    server = VirtualHostedS3(tmp_path / "s3root", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hosts_file(tmp_path: Path) -> Path:
    """/etc/hosts plus Railway's storage host and the bucket's virtual host, on loopback."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("these tests need root and unshare(1) for a mount namespace; "
                    "run ./scripts/setup.sh as root")
    hosts = tmp_path / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() +
                     f"\n127.0.0.1 {RAILWAY_HOST} {BUCKET}.{RAILWAY_HOST}\n")
    return hosts


def in_namespace(hosts: Path, argv: list[str]) -> list[str]:
    """argv run with `hosts` bind-mounted over /etc/hosts in a private mount namespace; the
    shell execs argv, so the process started is argv itself (signals reach it directly)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *argv]


def railway_env(tmp_path: Path, server: S3Server, data: Path, **extra: str) -> dict[str, str]:
    env = base_env(tmp_path, **railway_bucket_env(f"http://{RAILWAY_HOST}:{server.port}", BUCKET), **extra)
    env["SIDECAR_DB_PATH"] = str(data / "app.db")
    data.mkdir(parents=True, exist_ok=True)
    return env


def start(sidecars, env: dict[str, str], app: list[str], tmp_path: Path, hosts: Path):  # type: ignore[no-untyped-def]
    return sidecars(env, app, tmp_path,
                    argv=in_namespace(hosts, [str(BIN / "sidecar"), "run", "--", *app]))


@pytest.mark.slow
def test_whole_lifecycle_with_only_railway_bucket_variables(
        tmp_path: Path, vhost_s3: VirtualHostedS3, hosts_file: Path, sidecars) -> None:  # type: ignore[no-untyped-def]
    """BUCKET/ENDPOINT/REGION/ACCESS_KEY_ID/SECRET_ACCESS_KEY as Railway provides them, no
    SIDECAR_S3_FORCE_PATH_STYLE: the first boot starts fresh and replicates, SIGTERM gives the
    app's exit code with the last row uploaded, a new volume restores every row before the app
    starts, and `sidecar check` reports virtual-hosted addressing with the bucket reachable."""
    app = write_app(tmp_path)
    env1 = railway_env(tmp_path, vhost_s3, tmp_path / "vol1", EXIT_ON_TERM="7", APP_TAG="one",
                       WRITE_LIMIT="20")
    assert not any(k.startswith("SIDECAR_S3") or k.startswith("AWS_ACCESS") for k in env1)

    first = start(sidecars, env1, app, tmp_path, hosts_file)
    decided = first.wait_event("restore decided", timeout=60)
    assert decided["outcome"] == "fresh", decided
    first.wait_event("replication started", timeout=60)
    first.wait_stdout("wrote one-19", timeout=60)
    first.signal(signal.SIGTERM)
    assert first.wait(90) == 7, first.output()
    assert rows(tmp_path / "vol1" / "app.db")[-1] == "one-final"
    uploaded = list((vhost_s3.root / BUCKET / "app.db").rglob("*.ltx"))
    assert uploaded, "nothing reached the virtual-hosted bucket"

    check = subprocess.run(in_namespace(hosts_file, [str(BIN / "sidecar"), "check", "--json"]),
                           env={**env1, "SIDECAR_DB_PATH": str(tmp_path / "vol1" / "app.db")},
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    rows_by_name = {c["name"]: c for c in json.loads(check.stdout)}
    addressing = rows_by_name["addressing (app.db)"]
    assert addressing["ok"] and addressing["detail"].startswith("virtual-hosted (bkt.HOST)"), addressing
    assert f"default for http://{RAILWAY_HOST}:{vhost_s3.port}" in addressing["detail"]
    assert rows_by_name["replica (app.db)"]["ok"], rows_by_name["replica (app.db)"]
    assert S3_SECRET not in check.stdout + check.stderr

    env2 = railway_env(tmp_path, vhost_s3, tmp_path / "vol2", APP_TAG="two", WRITE_LIMIT="1")
    second = start(sidecars, env2, app, tmp_path, hosts_file)
    decided = second.wait_event("restore decided", timeout=90)
    assert decided["outcome"] == "restored", decided
    second.wait_event("app started", timeout=60)
    restored = rows(tmp_path / "vol2" / "app.db")
    assert restored[:21] == [f"one-{i}" for i in range(20)] + ["one-final"], restored
    second.wait_stdout("wrote two-0", timeout=30)
    second.signal(signal.SIGTERM)
    assert second.wait(90) == 0, second.output()
    generated = yaml.safe_load((tmp_path / "vol2" / ".sidecar" / "litestream.generated.yml")
                               .read_text())
    assert generated["dbs"][0]["replica"]["force-path-style"] is False


@pytest.mark.slow
def test_path_style_override_is_obeyed_and_fails_on_a_virtual_only_bucket(
        tmp_path: Path, vhost_s3: VirtualHostedS3, hosts_file: Path) -> None:
    """SIDECAR_S3_FORCE_PATH_STYLE=true against the same server: the override is really used
    (path-style requests get NoSuchBucket there), so the start stops with exit 4 and one clear
    message, and creates nothing on the volume."""
    data = tmp_path / "vol"
    env = railway_env(tmp_path, vhost_s3, data, SIDECAR_S3_FORCE_PATH_STYLE="true")
    # A backup in the bucket makes the restore step read it (an empty bucket would start fresh).
    prefix = vhost_s3.root / BUCKET / "app.db" / "0000"
    prefix.mkdir(parents=True)
    (prefix / "0000000000000001-0000000000000001.ltx").write_bytes(b"not read")
    app = write_app(tmp_path)
    res = subprocess.run(in_namespace(hosts_file, [str(BIN / "sidecar"), "run", "--", *app]),
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "bkt" in res.stderr and "Traceback" not in res.stderr
    assert not (data / "app.db").exists()
    assert S3_SECRET not in res.stdout + res.stderr


@pytest.mark.parametrize("endpoint,set_in_file,expected", [
    ("https://storage.railway.app", None, False), ("http://127.0.0.1:9000", None, True),
    ("https://storage.railway.app", True, True), ("http://127.0.0.1:9000", False, False)])
def test_project_litestream_yml_gets_the_same_addressing(
        tmp_path: Path, endpoint: str, set_in_file: bool | None, expected: bool) -> None:
    """A project's own litestream.yml that leaves force-path-style unset runs with sidecar's
    choice written in (Litestream alone would use path style for any endpoint); a value set in
    the file is kept, and sidecar's client follows it too."""
    from sidecar.litestream.yaml_file import render_config

    replica: dict[str, object] = {"type": "s3", "bucket": BUCKET, "path": "app.db",
                                  "endpoint": endpoint, "region": "auto"}
    if set_in_file is not None:
        replica["force-path-style"] = set_in_file
    path = tmp_path / "litestream.yml"
    path.write_text(yaml.safe_dump({"dbs": [{"path": str(tmp_path / "app.db"), "replica": replica}]}))
    cfg = load(tmp_path, LITESTREAM_CONFIG=str(path), ACCESS_KEY_ID="id", SECRET_ACCESS_KEY="s")
    assert cfg.databases[0].replica.s3.force_path_style is expected
    rendered = render_config(cfg, metrics_port=9)["dbs"][0]["replica"]
    assert rendered["force-path-style"] is expected
    assert "force-path-style" not in cfg.user_litestream_doc["dbs"][0]["replica"] or \
        set_in_file is not None, "the loaded config must not be changed in place"
