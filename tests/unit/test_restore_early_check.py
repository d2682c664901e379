"""The restore's quick_check run on Litestream's temporary file while Litestream syncs it
(restore._EarlyCheck): its "ok" counts only for the bytes that end up at the output.

Litestream itself writes the file once, in page order, then fsyncs and renames it, so it
cannot be made to change the file after the check; a stand-in `litestream` does what a
misbehaving writer would (change a page after the check, or never stop writing), on a real
SQLite file, through the same Restoring.finish the start uses. The real Litestream's part is
covered by tests/e2e/test_restore_overlap.py and test_run_restore.py.
"""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar import config
from sidecar.errors import RestoreError
from sidecar.recovery import restore

# argv: restore -config C -no-expand-env -o NAME -json DB; cwd is the output's directory.
WRITER = textwrap.dedent("""\
    #!{python}
    import os, sys, time
    name = sys.argv[sys.argv.index("-o") + 1]
    tmp = name + ".tmp"
    src = open({src!r}, "rb").read()
    with open(tmp, "wb") as f:
        for i in range(0, len(src), 4096):  # one page at a time, in order, as Litestream
            f.write(src[i:i + 4096])
            f.flush()
    time.sleep({sync})  # Litestream's fsync of the whole file
    if {corrupt}:
        with open(tmp, "r+b") as f:  # a write after the check began: page 2 zeroed
            f.seek(4096)
            f.write(bytes(4096))
        time.sleep(0.05)
    os.rename(tmp, name)
    print("{{\\n  \\"txid\\": \\"0000000000000001\\"\\n}}")
""")


def _setup(tmp_path: Path, sync: float, corrupt: bool) -> restore.Restoring:
    src = tmp_path / "src.db"
    con = sqlite3.connect(src)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    with con:
        con.executemany("INSERT INTO t(v) VALUES (randomblob(1000))", [()] * 400)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    fake = tmp_path / "litestream"
    fake.write_text(WRITER.format(python=sys.executable, src=str(src), sync=sync,
                                  corrupt=corrupt))
    fake.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    cfg = config.load({"SIDECAR_DB_PATH": str(data / "app.db"), "PATH": "/usr/bin:/bin",
                       "SIDECAR_REPLICA_URL": f"file://{tmp_path / 'replica'}"},
                      app_command=["true"], cwd=tmp_path)
    conf = tmp_path / "litestream.yml"
    conf.write_text("{}")
    out = restore.temp_path(cfg.databases[0].path)
    return restore.Restoring(str(fake), conf, cfg.databases[0], out)


def test_a_complete_file_is_checked_while_it_is_synced(tmp_path: Path) -> None:
    running = _setup(tmp_path, sync=1.0, corrupt=False)
    summary = running.finish(check_early=True)
    assert summary["txid"] == "0000000000000001"
    early = running._early
    assert early is not None and early.seen is not None and early.result == "ok"
    assert sqlite3.connect(running.output).execute("SELECT count(*) FROM t").fetchone()[0] == 400


def test_a_change_after_the_check_began_is_caught_by_checking_again(tmp_path: Path) -> None:
    """The early check passed the file as it was; the writer then zeroed a page: the early
    "ok" is not taken, the file at the output is checked again, fails, and is removed."""
    running = _setup(tmp_path, sync=1.0, corrupt=True)
    with pytest.raises(RestoreError, match="fails quick_check"):
        running.finish(check_early=True)
    early = running._early
    assert early is not None and early.result == "ok"  # it did pass the unchanged file
    assert not running.output.exists()
    assert not list(running.output.parent.iterdir())


def test_without_the_early_check_the_same_file_fails_the_same_way(tmp_path: Path) -> None:
    running = _setup(tmp_path, sync=0.1, corrupt=True)
    with pytest.raises(RestoreError, match="fails quick_check"):
        running.finish()
    assert running._early is None


def test_a_header_without_a_trusted_page_count_is_not_checked_early(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t(x)")
    con.close()
    size = restore._expected_size(db)
    assert size == db.stat().st_size
    raw = bytearray(db.read_bytes())
    raw[92:96] = (int.from_bytes(raw[24:28], "big") + 1).to_bytes(4, "big")
    db.write_bytes(bytes(raw))
    assert restore._expected_size(db) is None
    db.write_bytes(b"not a database" * 100)
    assert restore._expected_size(db) is None
