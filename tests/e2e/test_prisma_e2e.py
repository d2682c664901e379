"""The example Prisma app under `sidecar run`, end to end: the real Prisma CLI migrating (the
default `npx prisma migrate deploy`), the real Node app serving over HTTP, the real Litestream
replicating to a real S3 server. The app is started with exactly the image's ENTRYPOINT + CMD
and environment, from a copy of examples/prisma-app in a temp dir."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testkit import wait_for
from testkit.prisma import (
    ADD_BIO,
    NODE_MODULES,
    Deployment,
    add_migration,
    deployment,
    migration_lines,
)

__all__ = ["deployment"]  # the fixture
pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires(
        (NODE_MODULES / ".bin" / "prisma").exists() and shutil.which("node") is not None,
        "examples/prisma-app/node_modules is not installed (./scripts/setup.sh runs "
        "`npm ci` there) or node is not on PATH"),
]

def test_first_boot_migrates_then_serves(deployment: Deployment) -> None:
    """On an empty volume and bucket: fresh start, `prisma migrate deploy` creates the schema,
    then the app serves writes and reads, and the bucket receives the database."""
    sc = deployment.boot()
    restore = sc.wait_event("restore decided", timeout=60)
    assert restore["outcome"] == "fresh"
    migrated = sc.wait_event("migrations finished", timeout=90)
    assert migrated["outcome"] == "succeeded"
    assert "npx prisma migrate deploy" in migrated["detail"]
    deployment.wait_serving(sc)
    note = deployment.post_note("first", ["a", "b"])
    assert note["author"]["email"] == "ada@example.com" and sorted(note["tags"]) == ["a", "b"]
    assert [n["title"] for n in deployment.notes()] == ["first"]
    assert deployment.query("SELECT migration_name FROM _prisma_migrations") == \
        [("20250601120000_init",)]
    assert "All migrations have been successfully applied." in migration_lines(sc)
    client = deployment.s3.client()
    wait_for(lambda: client.list_objects_v2(Bucket=deployment.bucket, Prefix="app.db/")
             .get("KeyCount", 0) > 0, 20, what="objects in the bucket")
    deployment.stop(sc)


def test_rows_survive_a_lost_volume(deployment: Deployment) -> None:
    """Notes written over HTTP come back after the database file is deleted: the next boot
    restores it from the bucket, `migrate deploy` finds nothing to do, and the app serves them."""
    sc = deployment.boot()
    deployment.wait_serving(sc)
    for i in range(5):
        deployment.post_note(f"note {i}", [f"t{i % 2}"])
    deployment.stop(sc)

    deployment.lose_volume()
    sc = deployment.boot()
    assert sc.wait_event("restore decided", timeout=60)["outcome"] == "restored"
    assert sc.wait_event("migrations finished", timeout=90)["outcome"] == "succeeded"
    deployment.wait_serving(sc)
    assert "No pending migrations to apply." in migration_lines(sc)
    titles = sorted(n["title"] for n in deployment.notes())
    assert titles == [f"note {i}" for i in range(5)]
    assert deployment.query("SELECT count(*) FROM _prisma_migrations") == [(1,)]
    assert deployment.query('SELECT count(*) FROM "NoteTag"') == [(5,)]
    deployment.post_note("after the restore", [])
    deployment.stop(sc)
    # Replication goes on from the restored state: the bucket holds old and new notes.
    backup = deployment.bucket_copy("bucket.db")
    assert len(deployment.query('SELECT id FROM "Note"', backup)) == 6


def test_new_migration_applies_after_the_restore(deployment: Deployment) -> None:
    """A migration added after the last backup is applied on the next boot, on top of the
    restored data (restore first, then migrate), the app serves the old rows, and the bucket
    receives the migrated schema."""
    sc = deployment.boot()
    deployment.wait_serving(sc)
    deployment.post_note("before the migration", ["x"])
    deployment.stop(sc)

    deployment.lose_volume()
    add_migration(deployment.app, "20250701120000_user_bio", ADD_BIO)
    schema = deployment.app / "prisma" / "schema.prisma"
    schema.write_text(schema.read_text().replace(
        "  name      String?\n", "  name      String?\n  bio       String?\n", 1))
    sc = deployment.boot()
    assert sc.wait_event("restore decided", timeout=60)["outcome"] == "restored"
    assert sc.wait_event("migrations finished", timeout=90)["outcome"] == "succeeded"
    deployment.wait_serving(sc)
    assert "20250701120000_user_bio" in migration_lines(sc)
    columns = [r[1] for r in deployment.query('PRAGMA table_info("User")')]
    assert "bio" in columns
    assert deployment.query("SELECT migration_name FROM _prisma_migrations "
                            "WHERE finished_at IS NOT NULL ORDER BY migration_name") == \
        [("20250601120000_init",), ("20250701120000_user_bio",)]
    assert [n["title"] for n in deployment.notes()] == ["before the migration"]
    deployment.post_note("after the migration", [])
    deployment.stop(sc)
    backup = deployment.bucket_copy("bucket.db")
    assert "bio" in [r[1] for r in deployment.query('PRAGMA table_info("User")', backup)]
    assert len(deployment.query("SELECT migration_name FROM _prisma_migrations", backup)) == 2
    assert sorted(r[0] for r in deployment.query('SELECT title FROM "Note"', backup)) == \
        ["after the migration", "before the migration"]


def test_failing_migration_stops_the_start_with_exit_5(deployment: Deployment) -> None:
    """A migration that fails ends the start with exit 5: the app never runs or listens, the
    data stays, and the pre-migration copy holds the database as it was."""
    sc = deployment.boot()
    deployment.wait_serving(sc)
    deployment.post_note("kept", [])
    deployment.stop(sc)

    add_migration(deployment.app, "20250801120000_broken",
                  'ALTER TABLE "NoSuchTable" ADD COLUMN "x" TEXT;\n')
    sc = deployment.boot()
    assert sc.wait(120) == 5, sc.output()
    assert sc.event("restore decided")["outcome"] == "skipped"
    assert sc.event("app started") is None
    assert not any('"listening"' in line for line in sc.stdout), sc.stdout
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(deployment.url("/health"), timeout=2)
    assert "NoSuchTable" in migration_lines(sc)
    assert deployment.query('SELECT title FROM "Note"') == [("kept",)]
    copies = [e["path"] for e in sc.events if e.get("message") == "pre-migration copy"]
    assert len(copies) == 1 and Path(copies[0]).is_file()
    assert deployment.query('SELECT title FROM "Note"', Path(copies[0])) == [("kept",)]
