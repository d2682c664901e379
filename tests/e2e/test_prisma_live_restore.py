"""The example Prisma app and a live point-in-time restore to before its last migration: the
real `prisma migrate deploy` runs again on the restored database (it needs an exclusive lock,
so replication of the DB is still stopped) before the real Node app serves again, and the
restored, migrated state becomes the newest backup. Real Prisma, Node, Litestream, S3."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.litestream import Control
from testkit import run_sidecar
from testkit.prisma import ADD_BIO, Deployment, add_migration, deployment, migration_lines

pytestmark = pytest.mark.slow
__all__ = ["deployment"]  # the fixture


def sync(dep: Deployment) -> None:
    res = Control(dep.data / ".sidecar" / "litestream.sock").sync(dep.db, wait=True, timeout=30)
    assert res["replicated_txid"] == res["txid"], res


def test_pitr_before_a_prisma_migration_migrates_again_before_the_app(
        deployment: Deployment) -> None:
    """Note A, time T, a deploy adding User.bio, note B; `sidecar restore --timestamp T`:
    migrate deploy applies the bio migration to the restored DB, the app serves note A only,
    and the bucket's newest state has the bio column and note A."""
    dep = deployment
    sc = dep.boot()
    dep.wait_serving(sc)
    dep.post_note("before", [])
    sync(dep)
    time.sleep(1.2)  # the listing's times have whole-second resolution
    t = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(1.2)
    dep.stop(sc)

    add_migration(dep.app, "20250701120000_user_bio", ADD_BIO)
    schema = dep.app / "prisma" / "schema.prisma"
    schema.write_text(schema.read_text().replace(
        "  name      String?\n", "  name      String?\n  bio       String?\n", 1))
    sc = dep.boot()
    dep.wait_serving(sc)
    dep.post_note("after", [])
    sync(dep)
    before = len(sc.events)

    res = run_sidecar(["restore", "--timestamp", t, "--yes"], dep.env(), dep.app, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "migrating" in res.stderr
    dep.wait_serving(sc)
    assert [n["title"] for n in dep.notes()] == ["before"]
    assert "bio" in [r[1] for r in dep.query('PRAGMA table_info("User")')]
    assert dep.query("SELECT migration_name FROM _prisma_migrations "
                     "WHERE finished_at IS NOT NULL ORDER BY migration_name") == \
        [("20250601120000_init",), ("20250701120000_user_bio",)]
    after = sc.events[before:]
    names = [e.get("message") for e in after]
    assert "20250701120000_user_bio" in "\n".join(
        str(e.get("line", "")) for e in after if e.get("message") == "migration output")
    copy = next(Path(e["path"]) for e in after if e.get("message") == "pre-migration copy")
    assert "bio" not in [r[1] for r in dep.query('PRAGMA table_info("User")', copy)]
    migrated = max(i for i, n in enumerate(names) if n == "migrations finished")
    assert migrated < max(i for i, n in enumerate(names) if n == "app started")
    dep.post_note("after the restore", [])
    dep.stop(sc)
    assert "20250701120000_user_bio" in migration_lines(sc)
    backup = dep.bucket_copy("bucket.db")
    assert "bio" in [r[1] for r in dep.query('PRAGMA table_info("User")', backup)]
    assert sorted(r[0] for r in dep.query('SELECT title FROM "Note"', backup)) == \
        ["after the restore", "before"]
