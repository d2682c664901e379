"""Strict operator requests against the real daemon: a misspelled or ill-typed field on any
admin route (HTTP and the control socket) is a 400 naming it, and nothing happens: the app keeps
its pid, nothing is moved aside, no restore is queued, the database keeps its rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.litestream import unix_request
from testkit import free_port, rows
from testkit.http import request
from testkit.live import app_pids, db_path, sock, start_with_rows, state_dir

pytestmark = pytest.mark.slow
TOKEN = "t0ken-for-the-admin-endpoints"

# (body, the field the answer must name)
BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"dry-run": True}, "dry-run"),
    ({"dryrun": True}, "dryrun"),
    ({"timeout": "abc", "wait": True}, "timeout"),
    ({"timestamp": "yesterday"}, "timestamp"),
]
RESTORE_ONLY: list[tuple[dict[str, Any], str]] = [
    ({"txid": 5}, "txid"),
    ({"wait": "yes"}, "wait"),
    ({"dry_run": "true"}, "dry_run"),
    ({"timeout": -1, "wait": True}, "timeout"),
    ({"timestamp": "2025-01-31 13:45"}, "timestamp"),
]
POST_ROUTES = ("/restore", "/undo", "/verify", "/snapshot", "/resume")
GET_ROUTES = ("/restore", "/status")


def http(port: int, method: str, path: str, body: bytes | None) -> tuple[int, Any]:
    resp = request(f"http://127.0.0.1:{port}{path}", method, body, token=TOKEN, timeout=30)
    return resp.status, resp.json()


def test_misspelled_and_ill_typed_requests_are_400_naming_the_field_and_change_nothing(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """Every admin route, over HTTP and the control socket, with `dry-run`, `dryrun`, a string
    `timeout`, a bad `timestamp` (and ill-typed restore fields): 400 naming the field; the app's
    pid is unchanged, nothing is moved aside, no restore is requested."""
    port = free_port()
    env, sc, _txid, _t = start_with_rows(tmp_path, s3, bucket, sidecars,
                                         SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}",
                                         SIDECAR_ADMIN_TOKEN=TOKEN)
    pids = app_pids(sc)
    before = rows(db_path(env))
    checked = 0
    for path in POST_ROUTES:
        cases = BAD_BODIES + (RESTORE_ONLY if path == "/restore" else [])
        for body, field in cases:
            raw = json.dumps(body).encode()
            for where, (code, doc) in (
                    ("http", http(port, "POST", "/admin" + path, raw)),
                    ("socket", unix_request(sock(env), "POST", path, body, timeout=30))):
                assert code == 400, (where, path, body, code, doc)
                assert field in doc["error"], (where, path, body, doc)
                checked += 1
    for path in GET_ROUTES:
        for body, field in BAD_BODIES:
            key, value = next(iter(body.items()))
            query = f"?{key}={value}"
            for where, (code, doc) in (
                    ("http", http(port, "GET", "/admin" + path + query, None)),
                    ("socket", unix_request(sock(env), "GET", path + query, timeout=30))):
                assert code == 400, (where, path, query, code, doc)
                assert field in doc["error"], (where, path, query, doc)
                checked += 1
    # A GET with a body (GET routes take none), and a body that is not a JSON object.
    code, doc = http(port, "GET", "/admin/status", b'{"x": 1}')
    assert code == 413 and "body" in doc["error"], (code, doc)
    for raw in (b"[1, 2]", b"not json", b'"dry_run"', b"\xff\xfe"):
        code, doc = http(port, "POST", "/admin/restore", raw)
        assert code == 400 and "JSON object" in doc["error"], (raw, code, doc)
    # A field given twice (taking the last ran a live restore for a dry run) and brackets
    # nested past the parser's recursion (was a 500): a 400 naming the problem.
    code, doc = http(port, "POST", "/admin/restore", b'{"dry_run": true, "dry_run": false}')
    assert code == 400 and "'dry_run' twice" in doc["error"], (code, doc)
    code, doc = http(port, "POST", "/admin/restore", b"[" * 4000)  # 4,000 bytes: under the cap
    assert code == 400 and "4000 levels deep" in doc["error"], (code, doc)
    assert checked >= 40
    assert sc.event("restore requested") is None, "a restore was queued"
    assert sc.event("undo requested") is None, "an undo was queued"
    assert app_pids(sc) == pids, "the app was restarted"
    assert sc.proc is not None and sc.proc.poll() is None
    aside = state_dir(env) / "pre-restore"
    assert not aside.exists() or not any(aside.iterdir()), "something was moved aside"
    assert rows(db_path(env)) == before
    # The same routes still work with correct requests: a dry run plans, and changes nothing.
    code, doc = http(port, "POST", "/admin/restore", json.dumps({"dry_run": True}).encode())
    assert code == 200 and doc["dry_run"] is True and doc["plan"]["files"], doc
    assert sc.event("restore requested") is None
    assert app_pids(sc) == pids
