"""Every error a user can cause, each under SidecarError with its exit code; the CLI maps
them to exit codes, and anything else is a bug (exit 70).

Messages read "cannot <do X>: <cause>" and never carry a secret.
"""

from __future__ import annotations

import os
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


class ReplicaUnreachable(RestoreError):
    """The replica cannot be read: `kind` is unreachable (the only one worth retrying), denied,
    no-bucket or certificate (bucket/client.py decides which). Callers that can go on
    without the replica (check, lag, the scratch sweep) catch it; elsewhere it stops the
    command with exit 4."""

    requests = 0  # S3 requests made before it was raised, where a caller counts them

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class MigrationError(SidecarError):
    """The migration command failed; the app was not started (exit 5)."""

    exit_code = 5
    step = "migrate"


class OperatorError(SidecarError):
    """An operator command (check, status, verify, restore, ...) could not do what was asked (exit 1)."""

    exit_code = 1
    step = "operator"


class NoDaemon(OperatorError):
    """No sidecar runs here (no control socket, or nothing answers on it) (exit 1)."""


class ExecError(SidecarError):
    """A child process could not be executed: its binary is missing (ENOENT), not executable
    (EACCES) or not a program (ENOEXEC). The exit code says which child: the app 127 (not
    found) or 126 (cannot execute), like a shell; Litestream 3 (as a missing Litestream at
    preflight); the migration command raises MigrationError (5) instead."""

    step = "start"

    def __init__(self, what: str, argv0: str, exc: OSError, exit_code: int, *,
                 hint: str | None = None):
        super().__init__(f"cannot start {what}: {argv0}: {exec_reason(exc, argv0)}", hint=hint)
        self.exit_code = exit_code


def exec_reason(exc: OSError, argv0: str) -> str:
    """Why execve failed, in words: ENOENT for a file that exists means its #! interpreter
    is missing."""
    if isinstance(exc, FileNotFoundError):
        if "/" in argv0 and os.path.isfile(argv0):
            return "not found: the interpreter on its #! line does not exist"
        if exc.filename and str(exc.filename) != argv0:
            return f"not found ({exc.filename})"
        return "not found"
    return exc.strerror or str(exc)


def exec_code(exc: OSError) -> int:
    """The shell's code for a command that cannot run: 127 not found, 126 not executable."""
    return 127 if isinstance(exc, FileNotFoundError) else 126


class StartError(SidecarError):
    """Litestream was executed but did not come up: it exited during start-up, or it did not
    open every database within SIDECAR_READY_TIMEOUT (exit 3, as a Litestream that cannot run
    at all). Not a bug: its log lines, folded into ours, say why."""

    exit_code = 3
    step = "start"


class InternalError(SidecarError):
    """A bug or an unexpected environment failure (exit 70)."""

    exit_code = 70


EXIT_CODES = {
    0: "the app exited 0 (or an operator command succeeded)",
    1: "an operator command failed (check found a problem, verify failed, ...)",
    2: "configuration error (a variable, flag or the Litestream config is invalid)",
    3: "preflight failed (volume not mounted, DB outside the volume, lock held, Litestream "
       "missing or cannot be executed), or Litestream exited or did not open every database "
       "during start-up",
    4: "restore needed and impossible (replica unreachable, denied, missing bucket, corrupt DB)",
    5: "the migration command failed or cannot be executed; the app was not started",
    70: "internal error",
    126: "the app command cannot be executed (permission denied, not a program)",
    127: "the app command was not found (or its #! interpreter is missing)",
    128: "128+N: the app died of signal N (e.g. 143 for SIGTERM, 137 for SIGKILL)",
}


class Invalid(ValueError):
    """A value that does not fit, with a message more precise than the setting's expectation
    (a range, the parser's own reason)."""
