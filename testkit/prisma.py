"""The example Prisma app (examples/prisma-app) deployed as its image would run it, outside
an image: a copy of the app sharing the installed node_modules, the image's ENTRYPOINT + CMD and
ENV, a volume directory and a bucket; each boot is a real `sidecar run`."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from testkit import http
from testkit.db import lose_db, query
from testkit.dockerfile import ROOT, image_command, image_env, image_workdir
from testkit.net import free_port
from testkit.poll import wait_for
from testkit.s3 import S3Server
from testkit.sidecar import BIN, Sidecar, base_env, s3_env, side_restore

APP_SRC = ROOT / "examples" / "prisma-app"
NODE_MODULES = APP_SRC / "node_modules"

ADD_BIO = 'ALTER TABLE "User" ADD COLUMN "bio" TEXT;\n'


def copy_app(dest: Path) -> Path:
    """The example app's source in `dest`, sharing the installed node_modules."""
    shutil.copytree(APP_SRC, dest, ignore=shutil.ignore_patterns(
        "node_modules", "*.db", "*.db-*", ".sidecar"))
    assert (dest / "server.js").is_file() and (dest / "prisma" / "schema.prisma").is_file()
    (dest / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    return dest


def add_migration(app: Path, name: str, sql: str) -> None:
    folder = app / "prisma" / "migrations" / name
    folder.mkdir()
    (folder / "migration.sql").write_text(sql)


class Deployment:
    """One app copy, its volume directory and bucket; each boot is a real `sidecar run`."""

    def __init__(self, tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any):
        self.tmp_path, self.s3, self.bucket, self._sidecars = tmp_path, s3, bucket, sidecars
        self.app = copy_app(tmp_path / image_workdir().strip("/"))
        self.data = tmp_path / "data"
        self.db = self.data / "app.db"
        self.port = free_port()

    def env(self) -> dict[str, str]:
        env = base_env(self.tmp_path, **s3_env(self.s3, self.bucket))
        # As in the image: its ENV, with the database in the test's volume directory.
        env.update({k: v for k, v in image_env().items() if k != "PATH"})
        env["DATABASE_URL"] = f"file:{self.db}"
        env["APP_PORT"] = str(self.port)
        # Production settings: DATABASE_URL names the database and the migration command is
        # sidecar's default, chosen because the app has a Prisma schema.
        env.pop("SIDECAR_DB_PATH")
        env.pop("SIDECAR_MIGRATE_COMMAND")
        return env

    def boot(self) -> Sidecar:
        argv = image_command()
        assert argv[0] == "sidecar"
        return self._sidecars(self.env(), argv[3:], self.app,
                              argv=[str(BIN / argv[0]), *argv[1:]])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_serving(self, sc: Sidecar) -> None:
        sc.wait_event("app started", timeout=90)

        def healthy() -> bool:
            assert sc.proc is not None and sc.proc.poll() is None, sc.output()
            try:
                return http.get(self.url("/health"), timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, 30, what="the app's /health")

    def post_note(self, title: str, tags: list[str]) -> dict[str, Any]:
        resp = http.post_json(self.url("/notes"),
                              {"title": title, "author": "ada@example.com", "tags": tags})
        assert resp.status == 201, resp
        return dict(resp.json())

    def notes(self) -> list[dict[str, Any]]:
        resp = http.get(self.url("/notes"), timeout=10)
        assert resp.status == 200, resp
        return list(resp.json())

    def stop(self, sc: Sidecar) -> None:
        sc.signal(signal.SIGTERM)
        assert sc.wait(90) == 0, sc.output()

    def lose_volume(self) -> None:
        lose_db(self.db)
        shutil.rmtree(self.data / ".sidecar", ignore_errors=True)

    def query(self, sql: str, db: Path | None = None) -> list[tuple[Any, ...]]:
        return query(db or self.db, sql)

    def bucket_copy(self, name: str) -> Path:
        """The bucket's latest state, restored with plain `litestream restore`."""
        return side_restore(self.env(), self.tmp_path / name)


def migration_lines(sc: Sidecar) -> str:
    return "\n".join(str(e.get("line", "")) for e in sc.events
                     if e.get("message") == "migration output")


@pytest.fixture
def deployment(tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> Deployment:
    return Deployment(tmp_path, s3, bucket, sidecars)
