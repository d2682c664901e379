"""Private files on a tmpfs: a config or a CA bundle that must not touch the volume.

A file here is created 0600 with O_EXCL|O_NOFOLLOW under a random name on a memory-backed
filesystem, and removed by `remove_private` or when the process exits. The Litestream config
(litestream/yaml_file.py) and the CA bundle (bucket/trust.py) both use it, so it sits below
both of them.
"""

from __future__ import annotations

import atexit
import os
import secrets
from pathlib import Path

from sidecar.errors import PreflightError

# Where a config that holds a secret may be rendered: memory-backed, never the volume.
TMPFS_CANDIDATES = ("/dev/shm", "/run", "/tmp")


def _is_tmpfs(path: str) -> bool:
    """Whether `path` lies on a tmpfs, from the longest matching mount point in mountinfo."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    best, fstype = "", ""
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        point = fields[4].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # later lines are mounted over earlier ones
            best, fstype = point, rest[0]
    return fstype in ("tmpfs", "ramfs")


# Private files not yet removed: each is removed by `remove_private` or at exit. A set, not
# one atexit handler per file: the daemon renders one per tenant it verifies.
_private: set[Path] = set()


@atexit.register
def _remove_private_files() -> None:
    for path in list(_private):
        remove_private(path)


def remove_private(path: Path) -> None:
    path.unlink(missing_ok=True)
    _private.discard(path)


def private_file(name: str) -> Path:
    """Create an empty 0600 file on a tmpfs (O_EXCL|O_NOFOLLOW, a random name), removed when
    the process exits. Raises PreflightError when no tmpfs is writable."""
    for d in ((os.environ.get("XDG_RUNTIME_DIR") or ""), *TMPFS_CANDIDATES):
        if not d or not os.path.isdir(d) or not os.access(d, os.W_OK | os.X_OK):
            continue
        if not _is_tmpfs(os.path.realpath(d)):
            continue
        path = Path(d) / f"sidecar-{os.getpid()}-{secrets.token_hex(6)}-{name}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        os.close(fd)
        _private.add(path)
        return path
    raise PreflightError(
        "cannot render the Litestream config: it holds a secret (or needs variables expanded) "
        "and no tmpfs is writable to keep it off the disk",
        hint="mount a tmpfs at /run or /dev/shm, or let sidecar generate the config from "
             "SIDECAR_REPLICA_URL (its credentials go through the environment only)")
