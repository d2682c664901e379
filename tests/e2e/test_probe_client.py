"""The start-up probe's own S3 client (sidecar.s3list) against the real S3 server: it reads
the same listings boto3 reads, maps the same error answers, and a probe made with it never
loads boto3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import config, replica, s3list
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


def both(r: config.Replica, env: dict[str, str] | None = None
         ) -> tuple[replica.S3Store, replica.S3Store]:
    small = s3list.Client(r, 5.0, env=env) if env is not None else s3list.Client(r, 5.0)
    return replica.S3Store(r, 5.0), replica.S3Store(r, 5.0, client=small)


def test_lists_what_boto3_lists(s3: S3Server, bucket: str) -> None:
    """Every listing the store makes (top level with a delimiter, one level with start-after
    and a key limit) gives the same answer through both clients, on a real bucket."""
    put(s3, bucket, [f"app.db/0000/{n}" for n in LTX] + [f"app.db/0009/{LTX[0]}",
                                                         "app.db/notes.txt", "other/x"])
    boto, small = both(rep(s3, bucket))
    assert small.contents() == boto.contents() == replica.Contents("0.5")
    for kw in ({}, {"max_keys": 1}, {"start_after": f"0000/{LTX[0]}"},
               {"start_after": f"0000/{LTX[0]}", "max_keys": 1}):
        got, want = small.list_ltx(0, **kw), boto.list_ltx(0, **kw)
        assert [(o.key, o.size, o.max_txid) for o in got] == [
            (o.key, o.size, o.max_txid) for o in want], kw
        assert all(abs(a.last_modified - b.last_modified) < 1 for a, b in zip(got, want, strict=True))
    assert [o.key for o in small.list_ltx(0)] == [f"0000/{n}" for n in LTX]
    assert small.list_ltx(9)[0].key == f"0009/{LTX[0]}"


def test_empty_unknown_and_v3_layouts(s3: S3Server, bucket: str) -> None:
    boto, small = both(rep(s3, bucket))
    assert small.contents() == boto.contents() == replica.Contents("empty")
    put(s3, bucket, ["app.db/backup.tar"])
    assert small.contents() == boto.contents() == replica.Contents("unknown", ("backup.tar",))
    other = s3.make_bucket()
    put(s3, other, ["app.db/generations/0123456789abcdef/snapshots/00000000.snapshot.lz4"])
    boto, small = both(rep(s3, other))
    assert small.contents() == boto.contents() == replica.Contents("0.3")


def test_session_token_is_sent_and_accepted(s3: S3Server, bucket: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporary keys in the environment come with AWS_SESSION_TOKEN: the small client signs
    it in and the real server accepts the request; boto3's client sends it too. A key that is
    not the environment's (a Railway Bucket's ACCESS_KEY_ID) gets no token."""
    put(s3, bucket, [f"app.db/0000/{LTX[0]}"])
    r = rep(s3, bucket)
    env = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "AWS_SESSION_TOKEN": "tok-123"}
    client = s3list.Client(r, 5.0, env=env)
    assert client.token == "tok-123"
    headers = client.sign("GET", {"list-type": "2"}, s3list.datetime.now(s3list.UTC))
    assert headers["x-amz-security-token"] == "tok-123"
    assert "x-amz-security-token" in headers["authorization"].split("SignedHeaders=")[1]
    assert replica.S3Store(r, 5.0, client=client).contents() == replica.Contents("0.5")
    assert s3list.credentials(r, {**env, "AWS_ACCESS_KEY_ID": "another"}) == (
        S3_KEY, S3_SECRET, None)

    sent: list[str | None] = []
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    boto = replica.make_client(r, 5.0)
    boto.meta.events.register("before-send.s3.ListObjectsV2",
                              lambda request, **_kw: sent.append(
                                  request.headers.get("X-Amz-Security-Token")))
    boto.list_objects_v2(Bucket=bucket, Prefix="app.db/", MaxKeys=1)
    assert sent == [b"tok-123"] or sent == ["tok-123"], sent


def test_error_answers_mean_what_they_mean_with_boto3(s3: S3Server, bucket: str,
                                                      own_s3: S3Server) -> None:
    """Wrong secret: denied; no such bucket: no-bucket; a server that is down: unreachable;
    the same kind and message as the boto3 client gives (whose class name differs)."""
    cases = [(rep(s3, bucket, AWS_SECRET_ACCESS_KEY="wrong"), "denied"),
             (rep(s3, "no-such-bucket-here"), "no-bucket")]
    for r, kind in cases:
        for store in both(r):
            with pytest.raises(replica.ReplicaUnreachable) as err:
                store.contents()
            assert err.value.kind == kind, err.value.message
        boto_msg = _message(both(r)[0])
        assert _message(both(r)[1]) == boto_msg
        assert "wrong" not in boto_msg
    down = rep(own_s3, bucket)
    own_s3.stop()
    with pytest.raises(replica.ReplicaUnreachable) as err:
        both(down)[1].contents()
    assert err.value.kind == "unreachable"
    assert err.value.message.startswith(f"cannot reach {down.endpoint_label}: ")


def _message(store: replica.S3Store) -> str:
    try:
        store.contents()
    except replica.ReplicaUnreachable as exc:
        return exc.message
    raise AssertionError("no error")


def test_probe_uses_it_and_never_loads_boto3(s3: S3Server, bucket: str) -> None:
    """The start-up probe answers from the small client; boto3 stays unloaded. With a proxy
    variable set (which boto3 honours and this client does not) it falls back to boto3."""
    put(s3, bucket, [f"app.db/0000/{LTX[0]}"])
    code = ("import json, sys; from pathlib import Path; from sidecar import config, replica\n"
            "cfg = config.load(json.loads(sys.argv[1]), app_command=['true'], cwd=Path('/tmp'))\n"
            "c = replica.probe(cfg.databases[0].replica, 10)\n"
            "print(json.dumps([c.layout, 'boto3' in sys.modules, 'botocore' in sys.modules]))")
    env = {"SIDECAR_DB_PATH": "/tmp/unused/app.db", "PATH": "/usr/bin:/bin",
           "SIDECAR_REPLICA_URL": f"s3://{bucket}/app.db", "SIDECAR_S3_ENDPOINT": s3.endpoint,
           "SIDECAR_S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": S3_KEY,
           "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    for extra, boto in (({}, False), ({"HTTPS_PROXY": "http://127.0.0.1:9"}, True)):
        out = subprocess.run([sys.executable, "-c", code, json.dumps({**env, **extra})],
                             env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == ["0.5", boto, boto], (extra, out.stdout)
