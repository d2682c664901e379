"""The preflight checks of where the databases live: the volume (a real mount point that
holds every database and directory of databases) and each database's directory (writable, room
for a copy). `Check` is one row of `sidecar check`'s table; preflight.py runs these with the
others.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Config, Database, DbDir


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


# ------------------------------------------------------------------ mounts


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points(mountinfo: str | None = None) -> list[str]:
    """Mount points from /proc/self/mountinfo (the 5th field of each line)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    points = []
    for line in mountinfo.splitlines():
        parts = line.split(" ")
        if len(parts) > 4:
            points.append(_unescape(parts[4]))
    return points


def _real(path: Path) -> Path:
    """realpath of a path that may not exist yet (resolve its nearest existing ancestor)."""
    missing: list[str] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p.name)
        p = p.parent
    real = Path(os.path.realpath(p))
    for name in reversed(missing):
        real = real / name
    return real


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_volume(cfg: Config, mountinfo: str | None = None) -> list[Check]:
    if cfg.volume_path is None:
        return [Check("volume", True, "no volume configured (SIDECAR_VOLUME_PATH / "
                      "RAILWAY_VOLUME_MOUNT_PATH unset); not checked")]
    vol = Path(os.path.realpath(cfg.volume_path))
    points = [Path(p) for p in mount_points(mountinfo)]
    checks: list[Check] = []
    if vol not in points:
        checks.append(Check(
            "volume mounted", False,
            f"{cfg.volume_var}={cfg.volume_path} is not a mount point; anything written there "
            "is lost on redeploy",
            f"attach a volume at {cfg.volume_path} (Railway: service > Volumes), or correct "
            f"{cfg.volume_var}"))
    else:
        checks.append(Check("volume mounted", True, f"{cfg.volume_path} is a mount point"))
    for db in cfg.databases:
        fixed = cfg.volume_path / db.path.name
        checks.append(_on_volume(cfg, vol, points, db.path, f"db on volume ({db.name})",
                                 f"the database {db.path}",
                                 f"set DATABASE_URL=file:{fixed} (or SIDECAR_DB_PATH={fixed})"))
    for entry in cfg.directories:
        fixed = cfg.volume_path / entry.dir.name
        where = (f"the dir: entry in {cfg.user_litestream_config}"
                 if cfg.user_litestream_config else "SIDECAR_DB_DIR")
        checks.append(_on_volume(cfg, vol, points, entry.dir,
                                 f"db dir on volume ({_dir_name(entry.dir)})",
                                 f"the database directory {entry.dir}", f"set {where} to {fixed}"))
    return checks


def _dir_name(d: Path) -> str:
    return f"{d.name}/"


def _on_volume(cfg: Config, vol: Path, points: list[Path], path: Path, name: str, what: str,
               fix: str) -> Check:
    """A database (or a directory of them) must be inside the volume, on its own filesystem."""
    real = _real(path)
    if not _inside(real, vol):
        return Check(name, False, f"{what} is outside the volume {cfg.volume_path}; it would "
                     "be wiped on the next deploy", fix)
    # It must sit on the volume's own filesystem, not on a mount nested inside it.
    deepest = max((p for p in points if _inside(real, p)), key=lambda p: len(p.parts),
                  default=None)
    if vol in points and deepest is not None and deepest != vol:
        return Check(name, False, f"{path} is on {deepest}, a mount nested inside the volume",
                     f"move it directly onto {cfg.volume_path}")
    return Check(name, True, f"{path} is on the volume")


# ------------------------------------------------------------------ directories


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_directory(db: Database) -> list[Check]:
    d = db.path.parent
    existing = _nearest_existing(d)
    if not existing.is_dir():
        return [Check(f"db directory ({db.name})", False, f"{existing} is not a directory",
                      f"point the database at a directory, e.g. DATABASE_URL=file:/data/{db.name}")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [Check(f"db directory ({db.name})", False, f"{existing} is not writable by uid "
                      f"{os.getuid()}", f"chown the volume to uid {os.getuid()} or run as its owner")]
    usage = shutil.disk_usage(existing)
    size = db.path.stat().st_size if db.path.exists() else 0
    free_mb = usage.free / 1e6
    checks = [Check(f"db directory ({db.name})", True,
                    f"{d} writable; {free_mb:,.0f} MB free of {usage.total / 1e6:,.0f} MB")]
    if size and usage.free < size:
        checks.append(Check(f"free space ({db.name})", False,
                            f"{free_mb:,.0f} MB free, less than the database ({size / 1e6:,.0f} MB)"
                            "; migrations and restores need room for a copy",
                            "grow the volume or delete old copies in the state dir"))
    return checks


def check_db_dir(entry: DbDir) -> list[Check]:
    """A directory entry's directory: a directory (not a file), or creatable, and writable."""
    d = entry.dir
    name = f"db directory ({_dir_name(d)})"
    existing = _nearest_existing(d)
    if existing == d and not d.is_dir():
        return [Check(name, False, f"{d} is a file, not a directory",
                      "point SIDECAR_DB_DIR (or the dir: entry) at a directory on the volume, "
                      "e.g. /data/tenants")]
    if not existing.is_dir():
        return [Check(name, False, f"{d} cannot be created: {existing} is not a directory",
                      "point SIDECAR_DB_DIR (or the dir: entry) at a directory on the volume, "
                      "e.g. /data/tenants")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [Check(name, False, f"{existing} is not writable by uid {os.getuid()}",
                      f"chown the volume to uid {os.getuid()} or run as its owner")]
    usage = shutil.disk_usage(existing)
    state = "writable" if existing == d else f"can be created ({existing} is writable)"
    return [Check(name, True, f"{d} {state}; {usage.free / 1e6:,.0f} MB free of "
                  f"{usage.total / 1e6:,.0f} MB")]
