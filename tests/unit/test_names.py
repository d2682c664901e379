"""The one rule for a database's name (sidecar/names.py), and where it applies: the bucket
listing's classification, the local scan, `--db`/admin `db`."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from sidecar import config, names
from sidecar.bucket import tenants
from sidecar.errors import OperatorError
from sidecar.recovery import backups, directory_restore

LTX = "0009/0000000000000001-0000000000000002.ltx"

# Names the issue found in a bucket, each with a word of the reason it is refused.
HOSTILE = [
    ("%2e%2e%2f%2e%2e%2ftmp%2fvictim%2fvictim.db", "'%2e'"),
    ("%2e%2e%2fescaped.db", "'%2e'"),
    ("t2.db#.db", "'#'"),
    ("m.db?mode=memory&x=.db", "'?'"),
    ("%741.db", "'%74'"),
    ("sub//z.db", "empty segment"),
    ("q/./dot2.db", "'.' segment"),
    ("../up.db", "'..' segment"),
    (".sidecar/st.db", "hidden directory"),
    (".t1.db-litestream/x.db", "hidden directory"),
    ("x" * 237 + ".db", "240 bytes long"),
    ("tab\there.db", "control character"),
    ("nl\nhere.db", "control character"),
    ("/abs.db", "relative"),
    ("", "empty"),
]


@pytest.mark.parametrize("rel,word", HOSTILE)
def test_hostile_names_are_refused_with_the_reason(rel: str, word: str) -> None:
    """Each name a bucket could plant is refused, and the words say which part of the rule."""
    why = names.problem(rel)
    assert why is not None and word in why


@pytest.mark.parametrize("rel", ["t1.db", ".hidden.db", "eu/t1.db", "données é 日本.db",
                                 "50%.db", "a%zz.db", "q'uote;semi&amp=[1] $x.db",
                                 "x" * 196 + ".db"])
def test_ordinary_names_are_accepted(rel: str) -> None:
    """Spaces, non-ASCII, a `%` that is no escape, a dot-named file (Litestream backs it up)."""
    assert names.problem(rel) is None


def _entry(recursive: bool) -> config.DbDir:
    return config.DbDir(Path("/d"), "*.db", recursive, True, config.Replica("s3://b/p"))


@pytest.mark.parametrize("recursive", [False, True])
def test_listing_never_makes_a_member_of_a_hostile_name(recursive: bool) -> None:
    """Every hostile name that the entry would take is `bad` (named with one of its keys),
    never a member; those it would not take (nested without recursion) stay `ignored`."""
    keys = ["t1.db/" + LTX] + [f"{rel}/{LTX}" for rel, _ in HOSTILE if rel]
    keys.append("t1.db/0009/nest.db/" + LTX)
    listing = tenants.classify(_entry(recursive), keys)
    assert listing.members == {"t1.db": "0.5"}
    assert set(listing.positions) == {"t1.db"}
    for rel, _ in HOSTILE:
        if not rel:
            continue
        if rel.startswith("/") or ("/" in rel and not recursive):
            assert rel in listing.ignored, rel
        elif "\n" in rel:  # no layout's pattern takes a key with a newline
            assert f"{rel}/{LTX}" in listing.unknown
        else:
            assert rel in listing.bad, rel
            key, why = listing.bad[rel]
            assert key.startswith(rel + "/") and repr(rel) in why
    if recursive:
        assert "inside the path of the database 't1.db'" in listing.bad["t1.db/0009/nest.db"][1]


def test_local_scan_leaves_bad_names_out(tmp_path: Path) -> None:
    """A file in the directory whose name Litestream would not open exactly is no member."""
    for name in ("a.db", "b%41.db", "c#.db"):
        (tmp_path / name).write_bytes(b"")
    entry = config.DbDir(tmp_path, "*.db", False, True, config.Replica("s3://b/p"))
    assert tenants.local_members(entry) == ["a.db"]


def test_db_argument_follows_the_rule(tmp_path: Path) -> None:
    """`--db` (and an admin request's `db`) takes what the rule accepts and names why not."""
    cfg = config.load({"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(tmp_path / "t"),
                       "SIDECAR_REPLICA_URL": "s3://bkt/t", "SIDECAR_DB_RECURSIVE": "1",
                       "SIDECAR_S3_ENDPOINT": "http://s3.test"}, need_app=False, cwd=tmp_path)
    assert backups.pick_database(cfg, "eu/t1.db").path == tmp_path / "t" / "eu" / "t1.db"
    assert backups.pick_database(cfg, str(tmp_path / "t" / "t2.db")).path == \
        tmp_path / "t" / "t2.db"
    for bad, word in [("%2e%2e%2fx.db", "'%2e'"), ("sub//z.db", "empty segment"),
                      (str(tmp_path / "t") + "//z.db", "relative"),
                      (".sidecar/x.db", "hidden directory")]:
        with pytest.raises(OperatorError) as err:
            backups.pick_database(cfg, bad)
        assert word in err.value.message, err.value.message


def test_db_argument_never_goes_through_a_link_on_the_way(tmp_path: Path) -> None:
    """`--db eu/t9.db` for a database not on the volume yet, where `eu` is a link planted
    on the volume: refused naming the link (a live restore would have written through it),
    as a name from the bucket is."""
    import os

    cfg = config.load({"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(tmp_path / "t"),
                       "SIDECAR_REPLICA_URL": "s3://bkt/t", "SIDECAR_DB_RECURSIVE": "1",
                       "SIDECAR_S3_ENDPOINT": "http://s3.test"}, need_app=False, cwd=tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "t" / "eu")
    with pytest.raises(OperatorError) as err:
        backups.pick_database(cfg, "eu/t9.db")
    assert "symbolic link" in err.value.message, err.value.message
    (tmp_path / "t" / "us").mkdir()
    assert backups.pick_database(cfg, "us/t9.db").path == tmp_path / "t" / "us" / "t9.db"


# ------------------------------------------------------------------ the fuzzer

_SEGMENT = st.lists(st.sampled_from(
    [*"ab.%2eE/?#&=_- ", "%2e", "%2f", "%41", "é", "\t", "\x7f", "日"]), max_size=12).map("".join)


def _litestream_dsn(path: Path) -> str:
    """The DSN Litestream 0.5 opens a database with (db.go, DB.init): the path unescaped."""
    return f"file:{path}?_pragma=busy_timeout(5000)&_pragma=wal_autocheckpoint(0)"


_ROOT = Path(tempfile.mkdtemp(prefix="names-fuzz-"))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_SEGMENT, min_size=1, max_size=3).map(lambda p: "/".join(p) + ".db"))
@example("%2e%2e%2fvictim.db")
@example("a%41.db")
@example("50%.db")
@example("x#y.db")
def test_an_accepted_name_is_the_file_litestream_opens(rel: str) -> None:
    """Whatever the rule accepts, Litestream's SQLite URI opens exactly that file (SQLite
    decodes the URI the same way in Python as in Litestream's SQLite): the name round-trips."""
    if names.problem(rel) is not None:
        event("refused")
        return
    event("accepted")
    d = Path(tempfile.mkdtemp(dir=_ROOT))
    path = d / "dir" / rel
    assert path.resolve().is_relative_to(d / "dir")  # the name stays in its directory
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE who(name TEXT)")
    con.execute("INSERT INTO who VALUES (?)", (rel,))
    con.commit()
    con.close()
    before = sorted(str(p) for p in _ROOT.rglob("*"))
    con = sqlite3.connect(_litestream_dsn(path), uri=True)
    try:
        assert con.execute("PRAGMA database_list").fetchone()[2] == str(path)
        assert con.execute("SELECT name FROM who").fetchone()[0] == rel
    finally:
        con.close()
    assert sorted(str(p) for p in _ROOT.rglob("*")) == before  # nothing else opened


def test_the_fuzzer_can_see_a_wrong_file(tmp_path: Path) -> None:
    """The round-trip check is not blind: a name the rule refuses opens another file."""
    (tmp_path / "A.db").write_bytes(b"")
    con = sqlite3.connect(_litestream_dsn(tmp_path / "%41.db"), uri=True)
    try:
        assert con.execute("PRAGMA database_list").fetchone()[2] == str(tmp_path / "A.db")
    finally:
        con.close()
    assert os.path.exists(tmp_path / "A.db")


def _dir_cfg(tmp_path: Path, **extra: str) -> config.Config:
    return config.load({"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(tmp_path / "t"),
                        "SIDECAR_REPLICA_URL": "s3://bkt/t", "SIDECAR_DB_RECURSIVE": "1",
                        "SIDECAR_S3_ENDPOINT": "http://s3.test", **extra},
                       need_app=False, cwd=tmp_path)


@pytest.mark.parametrize("mode", ["refuse", "skip"])
def test_a_backup_whose_path_is_no_place_for_a_database_is_refused_or_skipped(
        tmp_path: Path, mode: str) -> None:
    """Names the rule accepts but the volume cannot take: inside a (non-hidden) state dir,
    through a link to elsewhere, under a file. Refused naming each (exit 4) or, with `skip`,
    taken out of the listing; nothing is created."""
    from sidecar.errors import RestoreError

    cfg = _dir_cfg(tmp_path, SIDECAR_STATE_DIR=str(tmp_path / "t" / "state"),
                   SIDECAR_BUCKET_BAD_NAMES=mode)
    entry = cfg.directories[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    entry.dir.mkdir()
    (entry.dir / "link").symlink_to(elsewhere)
    (entry.dir / "plain").write_bytes(b"")
    rels = ["ok.db", "state/x.db", "link/x.db", "plain/x.db"]
    listing = tenants.classify(entry, [f"{r}/{LTX}" for r in rels])
    assert set(listing.members) == set(rels)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    if mode == "refuse":
        with pytest.raises(RestoreError) as err:
            directory_restore._refuse_or_skip_bad(cfg, entry, listing, set())
        text = " ".join([err.value.message, *err.value.problems])
        assert err.value.exit_code == 4
        assert "inside sidecar's state dir" in text
        assert f"{entry.dir / 'link'} on the way to 'link/x.db' is a symbolic link" in text
        assert f"{entry.dir / 'plain'} on the way to 'plain/x.db' is a file" in text
        assert "move or delete" in (err.value.hint or "")
    else:
        directory_restore._refuse_or_skip_bad(cfg, entry, listing, set())
        assert set(listing.members) == {"ok.db"}
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_a_directory_whose_path_litestream_would_decode_is_a_config_error(tmp_path: Path
                                                                          ) -> None:
    """SIDECAR_DB_DIR (and a `dir:` entry) is the start of every database's path: `%XX`, `?`
    or `#` in it would have Litestream open files elsewhere; exit 2 naming it."""
    from sidecar.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _dir_cfg(tmp_path, SIDECAR_DB_DIR=str(tmp_path / "t%2e%2e"))
    assert "SIDECAR_DB_DIR: must not contain '%2e'" in " ".join(err.value.problems)
    (tmp_path / "litestream.yml").write_text(
        f"dbs:\n  - dir: {tmp_path}/a#b\n    pattern: '*.db'\n    replica:\n"
        "      type: s3\n      bucket: bkt\n      path: t\n      endpoint: http://s3.test\n")
    with pytest.raises(ConfigError) as err:
        config.load({"PATH": "/usr/bin:/bin"}, need_app=False, cwd=tmp_path)
    assert "dbs[0].dir: must not contain '#'" in " ".join(err.value.problems)
