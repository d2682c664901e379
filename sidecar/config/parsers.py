"""The value parsers of the settings table: each takes the text of a variable and returns
its value, or raises ValueError (the setting's expectation is the message) or Invalid (its own
message says more: a range, the parser's reason).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from sidecar.errors import Invalid

MAX_DURATION = 366 * 86400.0  # beyond this a timer overflows somewhere (timedelta, Go, waits)
PATH_MAX = 4095  # bytes, Linux
NAME_MAX = 255  # bytes per file name

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """`2`, `0.5`, `500ms`, `2s`, `1m`, `1h` -> seconds. Raises ValueError."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError
    value = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if not value <= MAX_DURATION:  # also catches inf from a thousand digits
        raise Invalid(f"must be at most {MAX_DURATION / 86400:g} days")
    return value


def positive_duration(text: str) -> float:
    v = parse_duration(text)
    if v <= 0:
        raise ValueError
    return v


def litestream_duration(text: str) -> float:
    """A duration handed to Litestream, which sidecar writes in whole milliseconds."""
    v = positive_duration(text)
    if v < 0.001:
        raise Invalid("must be at least 1ms (Litestream's durations are written in "
                      "milliseconds; a shorter one would be 0)")
    return v


def positive_number(text: str) -> float:
    v = float(text)
    if not v > 0 or v == float("inf"):  # `not v > 0` is also true for NaN
        raise ValueError
    return v


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """ASCII digits only: int() would also take `+3`, `3_0` and other scripts' digits."""
    def parse(text: str) -> int:
        t = text.strip()
        if not (t.isascii() and t.isdigit()) or int(t) < low or (high and int(t) > high):
            raise ValueError
        return int(t)
    return parse


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


# Files beside the databases that a pattern must never take for one: SQLite's own (Litestream
# would open a -wal as a database of its own and replicate it) and sidecar's directory lock.
_NOT_DATABASES = ("t1.db-wal", "t1.db-shm", "t1.db-journal", ".sidecar.lock")


def pattern_problem(pattern: str) -> str | None:
    """Why a directory entry's file-name pattern cannot be used, or None."""
    if not pattern.strip() or "/" in pattern or pattern.strip().startswith("."):
        return ("must be a file-name pattern like *.db (no `/`, not starting with `.`: "
                "sidecar's own files beside the databases start with `.`)")
    if pattern[-1] in "*?]" or any(fnmatch.fnmatchcase(n, pattern) for n in _NOT_DATABASES):
        return ("must end in a fixed suffix like *.db, so that it never matches SQLite's "
                "-wal/-shm/-journal files or sidecar's .sidecar.lock beside the databases")
    return None


def db_pattern(text: str) -> str:
    """SIDECAR_DB_PATTERN: a file-name pattern (see pattern_problem)."""
    if (why := pattern_problem(text)) is not None:
        raise Invalid(why)
    return text


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        t = text.strip().lower()
        if t not in options:
            raise ValueError
        return t
    return parse


def parse_addr(text: str) -> tuple[str | None, int]:
    """`[::]:9090`, `0.0.0.0:9090`, `:9090`, `9090` -> (host, port); `off` -> (None, 0)."""
    t = text.strip()
    if t.lower() in ("off", "none", "disabled"):
        return None, 0
    m = re.match(r"^(?:\[([0-9a-fA-F:.]*)\]|([^:\[\]]*)):(\d+)$", t) or re.match(r"^()()(\d+)$", t)
    if not m:
        raise ValueError
    host = m.group(1) if m.group(1) is not None else (m.group(2) or "::")
    port = int(m.group(3))
    if not 0 <= port <= 65535:
        raise ValueError
    return host or "::", port


def database_path_from_url(url: str) -> str:
    """Prisma's `file:PATH[?params]` -> PATH (still relative if it was)."""
    if not url.startswith("file:"):
        raise ValueError
    path = url[len("file:"):].split("?", 1)[0]
    if path.startswith("//"):  # file:///abs/path
        path = path[2:]
    if not path:
        raise ValueError
    # Taken literally, as Prisma does (it does not percent-decode), so both open one file.
    return path


def http_url(text: str) -> str:
    if urlparse(text).scheme not in ("http", "https"):
        raise ValueError
    return text


def endpoint_url(text: str) -> str:
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError
    if parsed.username or parsed.password:
        raise Invalid("must not carry credentials in the URL (use AWS_ACCESS_KEY_ID)")
    return text


def command(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise Invalid(f"must be a command line with balanced quotes ({exc})") from None


def cron(text: str) -> str | None:
    """A cron line as crontab(5) reads it (sidecar/cron.py), normalised; empty: None."""
    if text.strip() == "":
        return None
    from sidecar import cron as crontab

    return crontab.parse(text).text


def absolute_path(text: str) -> Path:
    if not text.startswith("/"):
        raise ValueError
    return Path(os.path.normpath(text))


def ca_file(text: str) -> str:
    """A CA bundle: a file that can be read now and holds at least one PEM certificate (a
    bundle that cannot be read would fail every HTTPS request later, as a certificate error
    that no longer says why)."""
    try:
        if os.path.exists(text) and not os.path.isfile(text):  # a FIFO would block the read
            raise IsADirectoryError(0, "not a regular file")
        with open(text, "rb") as f:
            head = f.read(4 * 1024 * 1024)
    except OSError as exc:
        raise Invalid(f"cannot read the CA bundle: {exc.strerror or exc}; it must name a "
                      "readable PEM file of CA certificates") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise Invalid("must name a PEM file of CA certificates (it holds no "
                      "-----BEGIN CERTIFICATE----- block)")
    return text


def token(text: str) -> str:
    """An admin token: long enough to guess nothing, and nothing a header would mangle."""
    if len(text) < 16:
        raise Invalid("must be at least 16 characters")
    if text != text.strip() or any(not c.isprintable() for c in text):
        raise Invalid("must be printable, without surrounding spaces")
    return text


def text(value: str) -> str:
    return value


def path_problem(value: str, what: str = "path") -> str | None:
    """Why `value` cannot be a path here (not UTF-8, too long), or None."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return f"the {what} must be valid UTF-8 (it holds bytes that are not)"
    if b"\0" in raw:
        return f"the {what} must not contain a NUL byte"
    if len(raw) > PATH_MAX:
        return f"the {what} is {len(raw)} bytes long; at most {PATH_MAX}"
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        return f"a file name in the {what} is {longest} bytes long; at most {NAME_MAX}"
    return None
