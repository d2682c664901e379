"""The requests an operator can send the daemon, and the errors it answers with.

Each operation has one request type, shared by the client commands (`sidecar restore` builds a
RestoreRequest and sends `as_json()`) and the server (which builds it back with `parse()`).
`parse()` checks the whole body before anything happens: an unknown field or a value of the
wrong type is a BadRequest naming it, so `{"dry-run": true}` can never start a real restore.

Handlers return a document (HTTP 200) or Accepted (202), or raise one of the errors below;
router.status_of() is the one place that turns them into HTTP codes.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from sidecar.errors import OperatorError

_HEX = re.compile(r"^(?:0x)?([0-9a-fA-F]{1,16})$")
MAX_WAIT = 24 * 3600.0  # a waiting restore request gives up after a day at most


# ------------------------------------------------------------------ errors (one per HTTP code)


class BadRequest(OperatorError):
    """The request itself is wrong: a field, a value, the body (400)."""


class Unauthorized(OperatorError):
    """A missing or wrong bearer token (401)."""


class NotFound(OperatorError):
    """No such route, or no such restore (404)."""


class MethodNotAllowed(OperatorError):
    """The path exists with other methods (405)."""

    def __init__(self, message: str, allowed: list[str]):
        super().__init__(message)
        self.allowed = allowed


class NotNow(OperatorError):
    """The request is fine but the sidecar cannot do it in its current state (409)."""


class TooLarge(OperatorError):
    """The body is over the route's limit (413)."""


class Failed(OperatorError):
    """The operation ran and failed; `doc` says how (500 with that document)."""

    def __init__(self, message: str, doc: dict[str, Any]):
        super().__init__(message)
        self.doc = doc


class Unavailable(OperatorError):
    """Not healthy or not ready; `doc` says why (503 with that document)."""

    def __init__(self, message: str, doc: dict[str, Any]):
        super().__init__(message)
        self.doc = doc


@dataclass(frozen=True)
class Accepted:
    """The operation was queued; `doc` describes it (202)."""

    doc: dict[str, Any]


@dataclass(frozen=True)
class Text:
    """A non-JSON answer (the Prometheus exposition)."""

    body: bytes
    content_type: str


Result = dict[str, Any] | Accepted | Text


# ------------------------------------------------------------------ strict parsing

R = TypeVar("R", bound="Request")


def _type_name(tp: Any) -> str:
    names = {str: "a string", bool: "true or false", float: "a number", int: "a whole number"}
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)


def _fits(value: Any, tp: Any) -> bool:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is float:  # JSON has one number type; a bool is not a number here
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


@dataclass(frozen=True)
class Request:
    """Base of every request type: strict parsing from a JSON object or a query string."""

    # Where the fields come from: "body" (a JSON object) or "query" (?name=value).
    source: ClassVar[str] = "body"

    @classmethod
    def parse(cls: type[R], data: Any) -> R:
        where = "query parameter" if cls.source == "query" else "field"
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise BadRequest(f"unknown {where} {unknown[0]!r}; accepted: "
                             + (", ".join(sorted(known)) or "none"),
                             problems=[f"{k}: not a {where} of this request" for k in unknown])
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise BadRequest(f"{where} {name!r} is required")
                continue
            value = data[name]
            if cls.source == "query" and hints[name] is not str and not _fits(value, hints[name]):
                value = _from_query(name, value, hints[name])
            if not _fits(value, hints[name]):
                raise BadRequest(f"{where} {name!r}: must be {_type_name(hints[name])} "
                                 f"(got {_shown(value)})")
            values[name] = value
        req = cls(**values)
        req.check()
        return req

    def check(self) -> None:
        """Rules beyond the types (ranges, formats); raise BadRequest naming the field."""

    def as_json(self) -> dict[str, Any]:
        """The body a client sends: only the fields that differ from their defaults."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.default is MISSING or value != f.default:
                out[f.name] = value
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _from_query(name: str, value: Any, tp: Any) -> Any:
    if _fits(value, tp):
        return value
    text = str(value)
    try:
        if bool in typing.get_args(tp) or tp is bool:
            return {"true": True, "1": True, "false": False, "0": False}[text.lower()]
        return float(text)
    except (KeyError, ValueError):
        raise BadRequest(f"query parameter {name!r}: must be {_type_name(tp)} "
                         f"(got {_shown(text)})") from None


# ------------------------------------------------------------------ the restore target


@dataclass(frozen=True)
class Target:
    """What to restore: the latest state, a TXID (16 hex digits) or an RFC3339 time (UTC)."""

    txid: str | None = None
    timestamp: str | None = None

    def describe(self) -> str:
        if self.txid:
            return f"txid {self.txid}"
        if self.timestamp:
            return f"time {self.timestamp}"
        return "the latest backup"

    def as_dict(self) -> dict[str, str | None]:
        return {"txid": self.txid, "timestamp": self.timestamp}


def parse_target(txid: str | None, timestamp: str | None, *, flags: bool = True) -> Target:
    """Validate --txid / --timestamp (or the JSON fields); one clear error per bad value."""
    t_name, ts_name = ("--txid", "--timestamp") if flags else ("txid", "timestamp")
    error = OperatorError if flags else BadRequest
    if txid and timestamp:
        raise error(f"cannot restore: give {t_name} or {ts_name}, not both")
    if txid is not None:
        m = _HEX.match(str(txid).strip())
        if not m or int(m.group(1), 16) == 0:
            raise error(f"cannot restore: {t_name}: must be a transaction id of up to 16 "
                        f"hex digits, like 00000000000001a4 (got {str(txid)!r})")
        return Target(txid=f"{int(m.group(1), 16):016x}")
    if timestamp is not None:
        text = str(timestamp).strip()
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            when = None
        if when is None or when.tzinfo is None or "T" not in text.upper():
            raise error(f"cannot restore: {ts_name}: must be an RFC3339 time with a zone, "
                        f"like 2025-01-31T13:45:00Z (got {text!r})")
        utc = when.astimezone(UTC)
        return Target(timestamp=utc.isoformat(timespec="microseconds").replace("+00:00", "Z"))
    return Target()


# ------------------------------------------------------------------ the operations' requests


@dataclass(frozen=True)
class StatusRequest(Request):
    """GET /status: no parameters."""

    source: ClassVar[str] = "query"


@dataclass(frozen=True)
class RestoreRequest(Request):
    """POST /restore: a fenced live restore (or its plan, with dry_run)."""

    txid: str | None = None
    timestamp: str | None = None
    db: str | None = None
    dry_run: bool = False
    wait: bool = False
    timeout: float | None = None  # with wait: how long to wait for the outcome, seconds

    def check(self) -> None:
        self.target()
        _check_wait(self.wait, self.timeout)

    def target(self) -> Target:
        return parse_target(self.txid, self.timestamp, flags=False)


def _check_wait(wait: bool, timeout: float | None) -> None:
    """`timeout` (seconds to wait for the outcome) is bounded and needs `wait`."""
    if timeout is not None:
        if not math.isfinite(timeout) or not 0 < timeout <= MAX_WAIT:
            raise BadRequest(f"field 'timeout': must be a number of seconds between 0 and "
                             f"{MAX_WAIT:g} (got {_shown(timeout)})")
        if not wait:
            raise BadRequest("field 'timeout': only applies with \"wait\": true")


@dataclass(frozen=True)
class UndoRequest(Request):
    """POST /undo: put back the database the last live restore (or undo) replaced, through
    the same fenced steps as a restore."""

    db: str | None = None
    wait: bool = False
    timeout: float | None = None  # with wait: how long to wait for the outcome, seconds

    def check(self) -> None:
        _check_wait(self.wait, self.timeout)


@dataclass(frozen=True)
class RestoreStatusRequest(Request):
    """GET /restore?id=ID: one restore's progress (the last one without an id)."""

    source: ClassVar[str] = "query"
    id: str | None = None


@dataclass(frozen=True)
class VerifyRequest(Request):
    """POST /verify: verify every database, or the one named."""

    db: str | None = None


@dataclass(frozen=True)
class SnapshotRequest(Request):
    """POST /snapshot: a consistent copy into the state dir (a caller cannot pick the path)."""

    db: str | None = None


@dataclass(frozen=True)
class ResumeRequest(Request):
    """POST /resume: continue a held start; no fields."""
