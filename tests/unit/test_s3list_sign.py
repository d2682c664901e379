"""The probe's SigV4 signature is botocore's, byte for byte, for the requests it makes:
path-style and virtual-hosted, default and custom ports, with and without a session token."""

from __future__ import annotations

from datetime import UTC, datetime

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from sidecar import config, s3list

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def replica(endpoint: str, path_style: bool, region: str = "auto") -> config.Replica:
    return config.Replica(url="s3://bkt/app.db", s3=config.S3(
        bucket="bkt", prefix="app.db", endpoint=endpoint, region=region,
        force_path_style=path_style, access_key_id="AKIDEXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"))


@pytest.mark.parametrize("endpoint,path_style,token", [
    ("http://127.0.0.1:9000", True, None), ("http://storage.example:9000", False, None),
    ("http://storage.example", False, "FwoGZXIvYXdzE/+token="), ("http://127.0.0.1:80", True,
                                                                "tok")])
@pytest.mark.parametrize("continuation", [None, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="])
def test_signature_is_botocores(monkeypatch: pytest.MonkeyPatch, endpoint: str,
                                path_style: bool, token: str | None,
                                continuation: str | None) -> None:
    r = replica(endpoint, path_style)
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
           **({"AWS_SESSION_TOKEN": token} if token else {})}
    client = s3list.Client(r, 5.0, env=env)
    query = {"list-type": "2", "prefix": "app.db/0000/", "max-keys": "1",
             "start-after": "app.db/0000/0000000000000001-0000000000000001.ltx",
             "delimiter": "/"}
    if continuation:  # a next page: S3's tokens hold "/", "+" and "="
        query["continuation-token"] = continuation
    ours = client.sign("GET", query, NOW)

    scheme_host = f"http://{client.host_header}"
    req = AWSRequest(method="GET", url=scheme_host + client.path + "?" +
                     s3list._canonical_query(query))
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda *a, **kw: NOW.replace(tzinfo=None))
    botocore.auth.S3SigV4Auth(Credentials("AKIDEXAMPLE",
                                          "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
                              "s3", "auto").add_auth(req)
    assert ours["authorization"] == req.headers["Authorization"]
    assert ours["x-amz-date"] == req.headers["X-Amz-Date"]
    if token:
        assert ours["x-amz-security-token"] == req.headers["X-Amz-Security-Token"]
    else:
        assert "x-amz-security-token" not in ours
    assert ours["host"] == (client.host_header)
    assert client.host_header.startswith("bkt.") != path_style


def test_used_only_where_it_is_boto3s_equal() -> None:
    r = replica("http://127.0.0.1:9000", True)
    assert s3list.usable(r, {})
    assert not s3list.usable(r, {"HTTPS_PROXY": "http://proxy:3128"})
    assert not s3list.usable(r, {"AWS_PROFILE": "prod"})
    aws = config.Replica(url="s3://bkt/app.db", s3=config.S3(
        bucket="bkt", prefix="app.db", endpoint=None, region="us-east-1",
        force_path_style=False, access_key_id="k", secret_access_key="s"))
    assert not s3list.usable(aws, {})  # AWS's own endpoints: boto3 resolves them
    no_keys = config.Replica(url="s3://bkt/app.db", s3=config.S3(
        bucket="bkt", prefix="app.db", endpoint="http://127.0.0.1:9000", region="auto",
        force_path_style=True))
    assert not s3list.usable(no_keys, {})  # an instance role or a profile: boto3's chain
