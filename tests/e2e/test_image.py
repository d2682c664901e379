"""The image, built from the repository's Dockerfile unchanged (scripts/image-build.sh, podman
against a local stand-in for its base) and run as a platform runs it: a volume at /data, an S3
server on the host (rclone on 127.0.0.1, reached with --network host), the ENTRYPOINT as PID 1,
and `podman kill --signal TERM` for the platform's stop. It shows: the first boot migrates and
serves, /readyz answers 200 once healthy, SIGTERM ends the container with the app's exit code
and the app's last row in the bucket, and a fresh volume restores every row before the app
serves."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit import S3_KEY, S3_SECRET, S3Server, free_port, http, side_restore, wait_for

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "tests" / "image" / "containers.conf"
TAG = "sidecar-example:test"

pytestmark = pytest.mark.slow


def podman(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True,
                         timeout=timeout,
                         env={**os.environ, **(env or {}), "CONTAINERS_CONF": str(CONTAINERS_CONF)})
    if check:
        assert res.returncode == 0, f"podman {' '.join(args)}: {res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built by the same script a person would run (layers cached between runs)."""
    if os.geteuid() != 0:
        pytest.fail("the image test runs podman as root; run it as root after ./scripts/setup.sh")
    t0 = time.monotonic()
    res = subprocess.run([str(ROOT / "scripts" / "image-build.sh"), TAG], cwd=ROOT,
                         capture_output=True, text=True, timeout=45 * 60)
    assert res.returncode == 0, res.stderr[-6000:]
    print(f"image built in {time.monotonic() - t0:.0f}s")
    return TAG


class Container:
    """One `podman run -d` of the image; removed at the end of the test."""

    def __init__(self, image: str, volume: Path, env: dict[str, str], secrets: dict[str, str]):
        self.name = f"sidecar-test-{uuid.uuid4().hex[:8]}"
        self.image, self.volume, self.env, self.secrets = image, volume, env, secrets

    def start(self) -> Container:
        # Secrets are passed by name (-e NAME) with the value in podman's environment, so they
        # never appear on a command line.
        args = ["run", "-d", "--name", self.name, "--network", "host",
                "-v", f"{self.volume}:/data"]
        for key, value in self.env.items():
            args += ["-e", f"{key}={value}"]
        for key in self.secrets:
            args += ["-e", key]
        podman(*args, self.image, env=self.secrets)
        return self

    def logs(self) -> str:
        res = podman("logs", self.name, check=False)
        return res.stdout + res.stderr

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict) and "message" in rec:
                    out.append(rec)
        return out

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e["message"] == name), None)

    def running(self) -> bool:
        res = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return res.stdout.strip() == "true"

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            ev = self.event(name)
            if ev is None and not self.running():
                raise AssertionError(f"container exited before {name!r}:\n{self.logs()[-5000:]}")
            return ev

        return wait_for(found, timeout, interval=0.5, what=f"event {name!r}")

    def stop_with_term(self, timeout: float = 90) -> int:
        podman("kill", "--signal", "TERM", self.name)
        res = podman("wait", self.name, timeout=timeout)
        return int(res.stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False, timeout=60)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.remove()


def get(url: str) -> tuple[int, Any]:
    """(status, the JSON document or the raw body); (0, None) while nothing answers."""
    try:
        resp = http.get(url)
    except OSError:
        return 0, None
    return resp.status, resp.json() if resp.body[:1] in (b"{", b"[") else resp.body


def post_note(port: int, title: str) -> None:
    resp = http.post_json(f"http://127.0.0.1:{port}/notes",
                          {"title": title, "author": "ada@example.com", "tags": ["t"]})
    assert resp.status == 201, resp


# A first build on a fresh machine takes about 6-10 minutes on 2 cores (the fixture's time
# counts here); cached, a few seconds.
@pytest.mark.timeout(50 * 60)
def test_image_boots_serves_stops_and_restores(image: str, own_s3: S3Server, tmp_path: Path,
                                               containers: list[Container]) -> None:
    """First boot: PID 1 is sidecar, migrations run, the app serves and /readyz turns 200.
    SIGTERM: exit code 0 (the app's), the last note in the bucket. A new volume: restored
    before the app starts, every note there at its first answer."""
    bucket = own_s3.make_bucket()
    app_port, http_port = free_port(), free_port()
    env = {"SIDECAR_REPLICA_URL": f"s3://{bucket}/app.db", "SIDECAR_S3_ENDPOINT": own_s3.endpoint,
           "SIDECAR_VOLUME_PATH": "/data", "APP_PORT": str(app_port),
           "SIDECAR_HTTP_ADDR": f"127.0.0.1:{http_port}", "SIDECAR_LOG_FORMAT": "json"}
    secrets = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}

    # --- first boot on an empty volume
    vol1 = tmp_path / "vol1"
    vol1.mkdir()
    first = Container(image, vol1, env, secrets)
    containers.append(first)
    first.start()
    assert first.wait_event("restore decided", 120)["outcome"] == "fresh"
    first.wait_event("migrations finished", 180)
    first.wait_event("app started", 60)
    # PID 1 is sidecar's Python script, running the image's CMD.
    pid1 = podman("exec", first.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert pid1[1:6] == ["/opt/sidecar/bin/sidecar", "run", "--", "node", "server.js"], pid1
    wait_for(lambda: get(f"http://127.0.0.1:{app_port}/health")[0] == 200, 60, 0.5, "the app")
    titles = [f"note {i}" for i in range(5)]
    for t in titles:
        post_note(app_port, t)
    wait_for(lambda: get(f"http://127.0.0.1:{http_port}/readyz")[0] == 200, 120, 0.5,
             "/readyz 200")
    assert (vol1 / "app.db").is_file()
    migrated = podman("exec", first.name, "node", "-e",
                      "const D=require('better-sqlite3');const d=new D('/data/app.db');"
                      "console.log(d.prepare('select count(*) c from _prisma_migrations').get().c)")
    assert int(migrated.stdout.strip()) >= 1
    post_note(app_port, "the last one")  # right before the stop: only the final sync saves it
    code = first.stop_with_term()
    logs = first.logs()
    app_exit = first.event("app exited")
    assert app_exit is not None and code == app_exit["code"] == 0, logs[-5000:]
    assert S3_SECRET not in logs

    restored = side_restore({"SIDECAR_REPLICA_URL": f"s3://{bucket}/app.db",
                             "SIDECAR_S3_ENDPOINT": own_s3.endpoint,
                             "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                             "PATH": os.environ["PATH"]}, tmp_path / "check.db")
    con = sqlite3.connect(restored)
    in_bucket = [r[0] for r in con.execute('SELECT title FROM "Note" ORDER BY rowid')]
    con.close()
    assert in_bucket == [*titles, "the last one"], in_bucket

    # --- a fresh volume: restored before the app serves
    vol2 = tmp_path / "vol2"
    vol2.mkdir()
    second = Container(image, vol2, env, secrets)
    containers.append(second)
    second.start()
    decided = second.wait_event("restore decided", 120)
    assert decided["outcome"] == "restored", decided
    second.wait_event("app started", 180)
    _, notes = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        get(f"http://127.0.0.1:{app_port}/notes")), 60, 0.2, "the app's first answer")
    assert sorted(n["title"] for n in notes) == sorted([*titles, "the last one"])
    names = [e["message"] for e in second.events()]
    assert names.index("restore decided") < names.index("app started")
    wait_for(lambda: get(f"http://127.0.0.1:{http_port}/readyz")[0] == 200, 120, 0.5,
             "/readyz 200 after the restore")
    assert second.stop_with_term() == 0, second.logs()[-5000:]
