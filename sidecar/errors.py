"""The few error types sidecar raises; the CLI maps each to its exit code.

Messages read "cannot <do X>: <cause>" and never carry a secret.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")


def redact(text: str) -> str:
    """`text` with the user:password part of every URL masked (s3://key:secret@host/...)."""
    return _USERINFO.sub(r"\1***@", text)


class SidecarError(Exception):
    """Base class: a failure that stops the command with `exit_code`."""

    exit_code = 70
    step = "internal"

    def __init__(self, message: str, *, hint: str | None = None, problems: list[str] | None = None):
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.hint = redact(hint) if hint else hint
        self.problems = [redact(p) for p in problems or []]

    def __str__(self) -> str:
        lines = [self.message]
        lines += [f"  - {p}" for p in self.problems]
        if self.hint:
            lines.append(f"fix: {self.hint}")
        return "\n".join(lines)


class ConfigError(SidecarError):
    """Invalid environment, flags or Litestream config (exit 2)."""

    exit_code = 2
    step = "config"


class PreflightError(SidecarError):
    """The volume, the DB directory, the lock or the Litestream binary is not right (exit 3)."""

    exit_code = 3
    step = "preflight"


class RestoreError(SidecarError):
    """A restore was needed and could not be done, or the replica cannot be reached (exit 4)."""

    exit_code = 4
    step = "restore"


class MigrationError(SidecarError):
    """The migration command failed; the app was not started (exit 5)."""

    exit_code = 5
    step = "migrate"


class OperatorError(SidecarError):
    """An operator command (check, status, verify, restore, ...) could not do what was asked (exit 1)."""

    exit_code = 1
    step = "operator"


class InternalError(SidecarError):
    """A bug or an unexpected environment failure (exit 70)."""

    exit_code = 70


EXIT_CODES = {
    0: "the app exited 0 (or an operator command succeeded)",
    1: "an operator command failed (check found a problem, verify failed, ...)",
    2: "configuration error (a variable, flag or the Litestream config is invalid)",
    3: "preflight failed (volume not mounted, DB outside the volume, lock held, no Litestream)",
    4: "restore needed and impossible (replica unreachable, denied, missing bucket, corrupt DB)",
    5: "the migration command failed; the app was not started",
    70: "internal error",
    128: "128+N: the app died of signal N (e.g. 143 for SIGTERM, 137 for SIGKILL)",
}
