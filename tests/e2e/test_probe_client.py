"""sidecar's S3 client (bucket.client: boto3 under a deadline and a cap) against the real S3
server: it reads what the server holds, maps the error answers to their meaning, sends a
session token with the key it belongs to, and the start-up probe answers through it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import config
from sidecar.bucket import replica
from sidecar.bucket.client import Client, credentials
from testkit import S3_KEY, S3_SECRET, S3Server

LTX = ("0000000000000001-0000000000000004.ltx", "0000000000000005-0000000000000005.ltx",
       "0000000000000006-0000000000000009.ltx")


def rep(server: S3Server, bucket: str, prefix: str = "app.db", **env: str) -> config.Replica:
    base = {"SIDECAR_DB_PATH": "/tmp/unused/app.db", "PATH": "/usr/bin:/bin",
            "SIDECAR_REPLICA_URL": f"s3://{bucket}/{prefix}",
            "SIDECAR_S3_ENDPOINT": server.endpoint, "SIDECAR_S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, **env}
    cfg = config.load(base, app_command=["true"], cwd=Path("/tmp"))
    r = cfg.databases[0].replica
    assert r is not None and r.s3 is not None
    return r


def put(server: S3Server, bucket: str, keys: list[str]) -> None:
    client = server.client()
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * 10)


def test_lists_what_the_server_holds(s3: S3Server, bucket: str) -> None:
    """Every listing the store makes (top level with a delimiter, one level with start-after
    and a key limit) gives what was written, on a real bucket."""
    put(s3, bucket, [f"app.db/0000/{n}" for n in LTX] + [f"app.db/0009/{LTX[0]}",
                                                         "app.db/notes.txt", "other/x"])
    store = replica.S3Store(rep(s3, bucket), 5.0)
    assert store.contents() == replica.Contents("0.5")
    assert [o.key for o in store.list_ltx(0)] == [f"0000/{n}" for n in LTX]
    assert [o.key for o in store.list_ltx(0, max_keys=1)] == [f"0000/{LTX[0]}"]
    assert [o.key for o in store.list_ltx(0, start_after=f"0000/{LTX[0]}")] == [
        f"0000/{n}" for n in LTX[1:]]
    assert [(o.key, o.size, o.max_txid) for o in store.list_ltx(
        0, start_after=f"0000/{LTX[0]}", max_keys=1)] == [(f"0000/{LTX[1]}", 10, 5)]
    assert store.list_ltx(9)[0].key == f"0009/{LTX[0]}"


def test_empty_unknown_and_v3_layouts(s3: S3Server, bucket: str) -> None:
    assert replica.S3Store(rep(s3, bucket), 5.0).contents() == replica.Contents("empty")
    put(s3, bucket, ["app.db/backup.tar"])
    assert replica.S3Store(rep(s3, bucket), 5.0).contents() == replica.Contents(
        "unknown", ("backup.tar",))
    other = s3.make_bucket()
    put(s3, other, ["app.db/generations/0123456789abcdef/snapshots/00000000.snapshot.lz4"])
    assert replica.S3Store(rep(s3, other), 5.0).contents() == replica.Contents("0.3")


def test_session_token_is_sent_and_accepted(s3: S3Server, bucket: str) -> None:
    """Temporary keys in the environment come with AWS_SESSION_TOKEN: the client signs it in
    and the real server accepts the request. A key that is not the environment's (a Railway
    Bucket's ACCESS_KEY_ID) gets no token."""
    put(s3, bucket, [f"app.db/0000/{LTX[0]}"])
    r = rep(s3, bucket)
    env = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "AWS_SESSION_TOKEN": "tok-123"}
    client = Client(r, 5.0, env=env)
    sent: list[object] = []
    client.boto().meta.events.register(
        "before-send.s3.ListObjectsV2",
        lambda request, **_kw: sent.append((request.headers.get("X-Amz-Security-Token"),
                                            request.headers.get("Authorization"))))
    assert replica.S3Store(r, 5.0, client=client).contents() == replica.Contents("0.5")
    token, auth = sent[0]
    assert token in (b"tok-123", "tok-123"), sent
    auth_text = auth.decode() if isinstance(auth, bytes) else str(auth)
    assert "x-amz-security-token" in auth_text.split("SignedHeaders=")[1]
    assert credentials(r, {**env, "AWS_ACCESS_KEY_ID": "another"}) == (S3_KEY, S3_SECRET, None)


def test_error_answers_mean_what_they_mean(s3: S3Server, bucket: str,
                                           own_s3: S3Server) -> None:
    """Wrong secret: denied; no such bucket: no-bucket; a server that is down: unreachable."""
    cases = [(rep(s3, bucket, AWS_SECRET_ACCESS_KEY="wrong"), "denied"),
             (rep(s3, "no-such-bucket-here"), "no-bucket")]
    for r, kind in cases:
        with pytest.raises(replica.ReplicaUnreachable) as err:
            replica.S3Store(r, 5.0).contents()
        assert err.value.kind == kind, err.value.message
        assert "wrong" not in err.value.message
    down = rep(own_s3, bucket)
    own_s3.stop()
    with pytest.raises(replica.ReplicaUnreachable) as err:
        replica.S3Store(down, 5.0).contents()
    assert err.value.kind == "unreachable"
    assert err.value.message.startswith(f"cannot reach {down.endpoint_label}: ")


def test_probe_answers_through_it_in_a_process_of_its_own(s3: S3Server, bucket: str) -> None:
    """The start-up probe, as a start runs it: the layout, with or without a proxy variable
    (no other client is chosen by the environment any more)."""
    put(s3, bucket, [f"app.db/0000/{LTX[0]}"])
    code = ("import json, sys; from pathlib import Path; from sidecar import config\n"
            "from sidecar.bucket import replica\n"
            "cfg = config.load(json.loads(sys.argv[1]), app_command=['true'], cwd=Path('/tmp'))\n"
            "c = replica.probe(cfg.databases[0].replica, 10)\n"
            "print(json.dumps(c.layout))")
    env = {"SIDECAR_DB_PATH": "/tmp/unused/app.db", "PATH": "/usr/bin:/bin",
           "SIDECAR_REPLICA_URL": f"s3://{bucket}/app.db", "SIDECAR_S3_ENDPOINT": s3.endpoint,
           "SIDECAR_S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": S3_KEY,
           "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    for extra in ({}, {"NO_PROXY": "127.0.0.1", "HTTPS_PROXY": "http://127.0.0.1:9"}):
        out = subprocess.run([sys.executable, "-c", code, json.dumps({**env, **extra})],
                             env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == "0.5", (extra, out.stdout)
