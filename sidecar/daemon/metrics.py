"""The metrics, as the rest of sidecar uses them: the same names as sidecar.daemon.registry
(where they are declared), loaded only when first needed for real.

prometheus_client and the registry (0.02-0.04 s of imports) used to load before anything
else; nothing on the way to the app's first line reads a metric, it only sets and counts.
So until `load()` (called once the app is up, or by the first /metrics scrape, whichever
comes first) every call on a metric here is recorded in order, and `load()` replays them on
the real metrics: no sample is lost, and every scrape sees the same values as before.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # as registry.CONTENT_TYPE

_lock = threading.Lock()
_real: ModuleType | None = None
_pending: list[tuple[str, tuple[Any, ...] | None, dict[str, Any], str, tuple[Any, ...],
                     dict[str, Any]]] = []


def load() -> ModuleType:
    """The registry module, imported now if it was not, with every recorded call replayed."""
    global _real
    if _real is not None:
        return _real
    with _lock:
        if _real is None:
            from sidecar.daemon import registry

            try:
                for name, largs, lkw, method, args, kw in _pending:
                    try:
                        _apply(registry, name, largs, lkw, method, args, kw)
                    except Exception as exc:  # one bad call must not lose the rest
                        _log_failed(name, method, exc)
            finally:
                # Each call is replayed once, whatever happens: never twice, never kept.
                _pending.clear()
                _real = registry
    return _real


def _log_failed(name: str, method: str, exc: Exception) -> None:
    from sidecar import log

    log.get("metrics").error("metric call failed", metric=name, call=method or "labels",
                             error=f"{type(exc).__name__}: {exc}")


def loaded() -> bool:
    return _real is not None


def _apply(real: ModuleType, name: str, largs: tuple[Any, ...] | None, lkw: dict[str, Any],
           method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    target = getattr(real, name)
    if largs is not None:
        target = target.labels(*largs, **lkw)
    return getattr(target, method)(*args, **kw) if method else target


def _record(name: str, largs: tuple[Any, ...] | None, lkw: dict[str, Any], method: str,
            args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    real = _real
    if real is None:
        with _lock:
            real = _real
            if real is None:
                _pending.append((name, largs, lkw, method, args, kw))
                return
    _apply(real, name, largs, lkw, method, args, kw)


class _Metric:
    """A metric (or one labelled child of it): each method call is applied or recorded."""

    __slots__ = ("_largs", "_lkw", "_name")

    def __init__(self, name: str, largs: tuple[Any, ...] | None = None,
                 lkw: dict[str, Any] | None = None):
        self._name, self._largs, self._lkw = name, largs, lkw or {}

    def labels(self, *args: Any, **kw: Any) -> _Metric:
        child = _Metric(self._name, args, kw)
        _record(self._name, args, kw, "", (), {})  # the series exists from here on
        return child

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kw: Any) -> None:
            _record(self._name, self._largs, self._lkw, method, args, kw)

        return call


def _function(name: str) -> Any:
    def call(*args: Any, **kw: Any) -> None:
        if _real is None:
            with _lock:
                if _real is None:
                    _pending.append((name, None, {}, "__call__", args, kw))
                    return
        getattr(_real, name)(*args, **kw)

    call.__name__ = name
    return call


# One for each metric declared in registry.py, under the same name.
REPLICATION_LAG = _Metric("REPLICATION_LAG")
REPLICA_LAST_UPLOAD = _Metric("REPLICA_LAST_UPLOAD")
LOCAL_TXID = _Metric("LOCAL_TXID")
REPLICA_TXID = _Metric("REPLICA_TXID")
DIR_DATABASES = _Metric("DIR_DATABASES")
DIR_BEHIND = _Metric("DIR_BEHIND")
REPLICA_REACHABLE = _Metric("REPLICA_REACHABLE")
LAG_CHECKS = _Metric("LAG_CHECKS")
REPLICA_REQUESTS = _Metric("REPLICA_REQUESTS")
BACKUP_VERIFY_LAST_SUCCESS = _Metric("BACKUP_VERIFY_LAST_SUCCESS")
RESTORE_WINDOW = _Metric("RESTORE_WINDOW")
RESTORE_WINDOW_CONFIGURED = _Metric("RESTORE_WINDOW_CONFIGURED")
DB_SIZE = _Metric("DB_SIZE")
WAL_SIZE = _Metric("WAL_SIZE")
APP_UP = _Metric("APP_UP")
LITESTREAM_UP = _Metric("LITESTREAM_UP")
CHILD_RESTARTS = _Metric("CHILD_RESTARTS")
RESTORES = _Metric("RESTORES")
RESTORE_DURATION = _Metric("RESTORE_DURATION")
MIGRATIONS = _Metric("MIGRATIONS")
BUILD_INFO = _Metric("BUILD_INFO")
LITESTREAM_METRICS_SCRAPE_ERRORS = _Metric("LITESTREAM_METRICS_SCRAPE_ERRORS")

set_build_info = _function("set_build_info")
init_db = _function("init_db")


def render(litestream_metrics_url: str | None, timeout: float = 1.0) -> bytes:
    """The /metrics body (see registry.render); loads the registry first if needed."""
    body: bytes = load().render(litestream_metrics_url, timeout)
    return body


def __getattr__(name: str) -> Any:
    """Anything else (REGISTRY, the helpers tests call) is the registry module's own."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(load(), name)
