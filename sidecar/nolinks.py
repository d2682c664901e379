"""Sidecar's own files on the volume, opened without following a symbolic link.

Whoever can write to the volume (the app, or whatever the app lets in) can put a link where
sidecar keeps its lock files, its state dir and the copies in it. Followed, such a link makes
sidecar truncate or write another file (as root, any file) or put a full copy of the database
where others can read it. So these are opened with O_NOFOLLOW (a directory through a file
descriptor with O_DIRECTORY too), and a link or anything else than what sidecar expects there
is a refusal naming it (PreflightError, exit 3); sidecar never removes what it did not make.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

from sidecar.errors import PreflightError

_FIX = ("remove it (sidecar makes its own files there; a link could lead anywhere), then "
        "start again")


def _refuse(path: Path, what: str, exc: OSError | None = None, is_: str | None = None) -> None:
    if is_ is None and exc is not None:
        # O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR, as on a file: ask lstat.
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:
            link = False
        is_ = ("a symbolic link" if link or exc.errno == errno.ELOOP else
               "not a directory" if exc.errno == errno.ENOTDIR else exc.strerror or str(exc))
    raise PreflightError(f"cannot use {path} as {what}: it is {is_}", hint=_FIX)


def private_dir(path: Path, what: str) -> None:
    """`path` as a directory of sidecar's own (the state dir, its sub-directories): made 0700
    when missing (its parents as usual), tightened to 0700 when it exists looser; a link or a
    file there is refused (PreflightError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise PreflightError(f"cannot create {what} {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        _refuse(path, what, exc)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    except OSError as exc:
        raise PreflightError(f"cannot make {what} {path} private (0700): {exc.strerror}",
                             hint="give it to the user sidecar runs as, or remove it") from None
    finally:
        os.close(fd)


def open_lock(path: Path, what: str) -> IO[bytes]:
    """A lock file opened for writing (created 0600), never through a link; a link or
    anything but a regular file there is refused (PreflightError)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            _refuse(path, what, exc, "a symbolic link" if exc.errno == errno.ELOOP
                    else "a directory")
        raise PreflightError(f"cannot lock {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        _refuse(path, what, is_="not a regular file")
    if st.st_nlink != 1:  # a hard link planted there: the lock's writes would reach its twin
        os.close(fd)
        _refuse(path, what, is_="a hard link to another file")
    return os.fdopen(fd, "r+b")


def open_read(path: Path) -> IO[bytes] | None:
    """`path` for reading, not through a link (None when it is missing, a link or not a
    regular file: O_NONBLOCK, so a named pipe planted there cannot hang the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def private_copy(path: Path) -> None:
    """A copy sidecar keeps of a database (or its -wal/-shm), its owner's only: 0600. The
    file was made by sidecar (a hard link of a file replaced since, a moved file or a copy)
    in a 0700 directory; a link there is not followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
