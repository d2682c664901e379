"""Fault suite, secrets: every fault test scans its own output (no_secret_leaks in
faultkit.py); this module adds the paths most likely to leak — every HTTP endpoint with no,
a wrong and the right admin token, the operator commands, a rejected secret at start, and config
errors around the secret values — and scans them too."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from faultkit import (  # noqa: F401
    ADMIN_TOKEN,
    RECORDED,
    SecretScan,
    fault_env,
    no_secret_leaks,
    request,
    run_cmd,
)

from testkit import S3_SECRET, s3_env, seed_bucket, write_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_secret_leaks")]


def test_http_endpoints_and_operator_commands_never_show_a_secret(tmp_path: Path, s3, bucket,
                                                                   sidecars) -> None:
    """/metrics, /healthz, /readyz, /status and every /admin/ answer (no token, wrong token,
    right token), `sidecar status --json`, `check` and `verify`: no S3 secret, no admin
    token, in any body, header or log line."""
    env = fault_env(tmp_path, **s3_env(s3, bucket), APP_TAG="s")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started")
    sc.wait_stdout("wrote s-10")
    for path in ("/metrics", "/healthz", "/readyz", "/status"):
        status, body = request(env, "GET", path)
        assert status in (200, 503), (path, status)
    for token in (None, "wrong-token-wrong-token", ADMIN_TOKEN[:-1], S3_SECRET):
        for method, path in (("POST", "/admin/verify"), ("GET", "/admin/status"),
                             ("POST", "/admin/restore")):
            status, _ = request(env, method, path, token=token)
            assert status == 401, (method, path, token is None)
    status, body = request(env, "POST", "/admin/verify", token=ADMIN_TOKEN, timeout=60)
    assert status < 500, body
    status, body = request(env, "GET", "/admin/status", token=ADMIN_TOKEN)
    assert status == 200 and json.loads(body)
    for args in (["status", "--json"], ["check"], ["verify"]):
        res = run_cmd(args, env, tmp_path, timeout=120)
        assert "Traceback" not in res.stderr, res.stderr[-2000:]
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 0


def test_rejected_secret_and_secret_config_errors_are_not_echoed(tmp_path: Path, s3, bucket,
                                                                  ) -> None:
    """A wrong S3 secret at a start that needs a restore (exit 4), a short admin token and a
    secret without its key id (exit 2): the messages say what is wrong, never the value."""
    wrong = S3_SECRET[::-1]
    env = fault_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["backed-up"])
    for p in Path(env["SIDECAR_DB_PATH"]).parent.glob("app.db*"):
        p.unlink()
    res = run_cmd(["run", "--", "true"], {**env, "AWS_SECRET_ACCESS_KEY": wrong}, tmp_path)
    assert res.returncode == 4 and "denied" in res.stderr, res.stderr[-2000:]
    assert wrong not in res.stdout + res.stderr
    res = run_cmd(["run", "--", "true"], {**env, "SIDECAR_ADMIN_TOKEN": "short$ecret"},
                  tmp_path)
    assert res.returncode == 2 and "SIDECAR_ADMIN_TOKEN" in res.stderr
    assert "short$ecret" not in res.stdout + res.stderr
    no_key = {k: v for k, v in env.items() if k != "AWS_ACCESS_KEY_ID"}
    res = run_cmd(["run", "--", "true"], no_key, tmp_path)
    assert res.returncode == 2 and "AWS_ACCESS_KEY_ID" in res.stderr
    res = run_cmd(["check"], {**env, "AWS_SECRET_ACCESS_KEY": wrong}, tmp_path)
    assert res.returncode == 1 and wrong not in res.stdout + res.stderr


def test_the_scan_reads_a_run_and_reports_each_planted_secret(tmp_path: Path, s3, bucket,
                                                             sidecars) -> None:
    """The scan is not vacuous, whatever ran before this test: over a real sidecar, an HTTP
    answer and a command it reads lines and records and finds nothing; the S3 secret or the
    admin token planted in a log line, app output, a recorded answer or a file is reported,
    each where it was."""
    root = tmp_path / "scanned"
    root.mkdir()
    scan = SecretScan(root)
    try:
        env = fault_env(root, **s3_env(s3, bucket), APP_TAG="s")
        sc = sidecars(env, write_app(root), root)
        sc.wait_stdout("wrote s-3")
        assert request(env, "GET", "/status")[0] == 200
        assert run_cmd(["status", "--json"], env, root).returncode == 0
        sc.signal(signal.SIGTERM)
        assert sc.wait(60) == 0
    finally:
        scan.stop()
    assert scan.hits() == []
    assert scan.started == [sc] and scan.lines > 10 and scan.records == 2, (
        scan.started, scan.lines, scan.records)

    planted = ("planted answer", f"body {ADMIN_TOKEN} body")
    sc.lines.append(f"log {S3_SECRET} log")
    sc.stdout.append(f"out {ADMIN_TOKEN} out")
    RECORDED.append(planted)
    (root / "data" / "planted.txt").write_text(S3_SECRET)
    try:
        hits = scan.hits()
    finally:  # the module's own scan of this test must not see them
        sc.lines.pop()
        sc.stdout.pop()
        RECORDED.remove(planted)
        (root / "data" / "planted.txt").unlink()
    assert len(hits) == 4, hits
    assert hits[0].startswith("sidecar log: log ") and hits[1].startswith("app output: out ")
    assert hits[2].startswith("planted answer: ...body ")
    assert hits[3] == f"{root / 'data' / 'planted.txt'} holds the S3 secret"


# A migration command that says its pid and stays up long enough for its environment to be read.
MIGRATE = """
import os, time
print(f"migrate pid {os.getpid()}", flush=True)
time.sleep(float(os.environ.get("MIGRATE_SECONDS", "3")))
"""


def _files_holding(root: Path, secrets: tuple[str, ...]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                hits += [f"{p}: {s[:6]}..." for s in secrets if s.encode() in data]
        except OSError:
            continue
    return hits


def _proc(pid: int, what: str) -> bytes:
    with open(f"/proc/{pid}/{what}", "rb") as f:
        return f.read()


def _run_and_scan(tmp_path: Path, env: dict[str, str], sidecars) -> dict[str, object]:
    """Run a sidecar with a migration, scan while running and after exit; return findings."""
    from faultkit import events

    from testkit import descendants, wait_for

    migrate = write_app(tmp_path, MIGRATE, "migrate.py")
    env = {**env, "SIDECAR_MIGRATE_COMMAND": " ".join(migrate)}
    data = Path(env["SIDECAR_DB_PATH"]).parent
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    line = wait_for(lambda: next((e["line"] for e in events(sc, "migration output")
                                  if "migrate pid" in e.get("line", "")), None), 60,
                    what="the migration command")
    migrate_env = _proc(int(line.split()[-1]), "environ")
    sc.wait_event("app started", 60)
    sc.wait_stdout("wrote run-5")
    assert sc.proc is not None
    app_pid = int(sc.event("app started")["pid"])
    ls_pid = int(sc.event("replication started")["pid"])
    found: dict[str, object] = {
        "migrate_env": migrate_env,
        "app_env": _proc(app_pid, "environ"),
        "litestream_env": _proc(ls_pid, "environ"),
        "cmdlines": [_proc(p, "cmdline") for p in [sc.proc.pid, *descendants(sc.proc.pid)]],
        "running": _files_holding(data, (S3_SECRET, ADMIN_TOKEN)),
        "rendered": Path(sc.event("litestream config written")["path"]),
    }
    rendered = found["rendered"]
    assert isinstance(rendered, Path)
    found["rendered_mode"] = rendered.stat().st_mode & 0o777
    found["rendered_secret"] = S3_SECRET.encode() in rendered.read_bytes()
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 0, sc.output()
    found["after"] = _files_holding(data, (S3_SECRET, ADMIN_TOKEN))
    found["rendered_left"] = rendered.exists()
    return found


def _no_token_and_no_secret_in_children(found: dict[str, object]) -> None:
    for name in ("migrate_env", "app_env", "litestream_env"):
        blob = found[name]
        assert isinstance(blob, bytes)
        assert ADMIN_TOKEN.encode() not in blob, f"{name} holds the admin token"
        assert b"SIDECAR_ADMIN_TOKEN" not in blob, f"{name} holds SIDECAR_ADMIN_TOKEN*"
    cmdlines = found["cmdlines"]
    assert isinstance(cmdlines, list) and len(cmdlines) >= 3
    for cmd in cmdlines:
        for s in (S3_SECRET, ADMIN_TOKEN):
            assert s.encode() not in cmd, cmd
    assert found["running"] == [] and found["after"] == [], found


def test_no_secret_on_the_volume_or_in_a_child_environment(tmp_path: Path, s3, bucket,
                                                           sidecars) -> None:
    """Default state dir on the volume, generated Litestream config, token from a file: no file
    under the volume holds the S3 secret while running or after exit; the migration command's,
    the app's and Litestream's environments hold no admin token; no command line a secret;
    Litestream still reads the bucket (its credentials come through its environment)."""
    token_file = tmp_path / "secrets" / "admin-token"
    token_file.parent.mkdir()
    token_file.write_text(ADMIN_TOKEN + "\n")
    env = fault_env(tmp_path, **s3_env(s3, bucket), SIDECAR_ADMIN_TOKEN_FILE=str(token_file))
    env.pop("SIDECAR_ADMIN_TOKEN")
    found = _run_and_scan(tmp_path, env, sidecars)
    _no_token_and_no_secret_in_children(found)
    rendered = found["rendered"]
    assert isinstance(rendered, Path) and rendered.is_relative_to(tmp_path / "data")
    assert found["rendered_secret"] is False  # the generated config holds no credentials
    assert S3_SECRET.encode() in found["litestream_env"]  # type: ignore[operator]
    objects = s3.keys(bucket)
    assert any(k.endswith(".ltx") for k in objects), objects  # it did upload with them
    token_file.unlink()  # the operator's own secret file, not one sidecar wrote


def test_a_project_config_needing_expansion_is_rendered_on_a_tmpfs(tmp_path: Path, s3, bucket,
                                                                   sidecars) -> None:
    """A project litestream.yml with ${AWS_SECRET_ACCESS_KEY}: rendered outside the volume on a
    tmpfs, mode 0600, removed at exit; nothing under the volume ever holds the secret."""
    import textwrap

    from sidecar.tmpfs import _is_tmpfs

    env = fault_env(tmp_path, **s3_env(s3, bucket))
    db = env.pop("SIDECAR_DB_PATH")
    env.pop("SIDECAR_REPLICA_URL")
    env["DATABASE_URL"] = f"file:{db}"
    (tmp_path / "litestream.yml").write_text(textwrap.dedent(f"""
        dbs:
          - path: {db}
            replica:
              url: s3://{bucket}/app.db
              endpoint: ${{SIDECAR_S3_ENDPOINT}}
              access-key-id: ${{AWS_ACCESS_KEY_ID}}
              secret-access-key: ${{AWS_SECRET_ACCESS_KEY}}
    """))
    env["SIDECAR_DB_PATH"] = db  # the writer app reads it; it matches the config
    found = _run_and_scan(tmp_path, env, sidecars)
    _no_token_and_no_secret_in_children(found)
    rendered = found["rendered"]
    assert isinstance(rendered, Path) and not rendered.is_relative_to(tmp_path)
    assert _is_tmpfs(str(rendered.parent.resolve())), rendered
    assert found["rendered_mode"] == 0o600 and found["rendered_secret"] is True
    assert found["rendered_left"] is False, "the rendered config outlived the sidecar"


def test_snapshot_and_restore_output_files_are_private(tmp_path: Path, s3, bucket) -> None:
    """`sidecar snapshot --output` and `sidecar restore --output` write mode 0600 files, and
    the admin token is no flag any more (it would show in every `ps`)."""
    env = fault_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["x"])
    for args, out in ((["snapshot", "--output"], tmp_path / "snap.db"),
                      (["restore", "--output"], tmp_path / "restored.db")):
        res = run_cmd([*args, str(out)], env, tmp_path, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert out.stat().st_mode & 0o777 == 0o600, (args, oct(out.stat().st_mode))
    res = run_cmd(["run", "--admin-token", ADMIN_TOKEN, "--", "true"], env, tmp_path)
    assert res.returncode == 2 and "--admin-token was removed" in res.stderr, res.stderr
