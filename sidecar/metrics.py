"""Every metric sidecar exports, declared once, here, so /metrics reads like documentation.

prometheus_client is used directly. Two kinds of metric:

- Events (a restore, a lag check, a restart, a request to the bucket) are counted where they
  happen, on the Counters and Gauges declared below (`metrics.RESTORES.labels(...).inc()`).
- State that already lives in the runtime (each database's lag and positions, the directory
  entries, the children, the files' sizes, the versions) is read at scrape time by
  RuntimeCollector from the Runtime that `watch()` is given: nothing is copied into gauges,
  so /metrics and /status cannot disagree, and nothing set before a scrape can be lost.

The metrics live on their own registry, REGISTRY, not on prometheus_client's global one.
render() returns that registry in the Prometheus text format followed by Litestream's own
`litestream_*` series, fetched from its loopback metrics endpoint at scrape time, so one
scrape target shows both. The combined text passes `promtool check metrics`.

Per-database series carry a `db` label. Its value should be the database's absolute path: that
is what Litestream puts in its own `db` label, so one dashboard filter or PromQL join covers
both, and two databases with the same file name in different directories stay apart.
"""

from __future__ import annotations

import http.client
import math
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from sidecar import __version__

# Counters get no `<name>_created` companion series: they double the output and no alert or
# dashboard here uses them. Must run before the first Counter below is created.
prometheus_client.disable_created_metrics()

# /metrics speaks the classic text format: Litestream's text is passed through in it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Label values known up front. Their series are created at 0 on import, so a rate() or an
# increase() over them works from the first scrape instead of after the first event.
CHILDREN = ("app", "litestream")
RESTORE_TRIGGERS = ("startup", "manual")
RESTORE_OUTCOMES = ("restored", "fresh", "skipped", "failed")
MIGRATION_OUTCOMES = ("succeeded", "failed", "skipped")
LAG_CHECK_OUTCOMES = ("ok", "failed")

REGISTRY = CollectorRegistry(auto_describe=True)

# The sidecar's own CPU, memory, open files and start time (process_start_time_seconds is
# what the "backup never verified" alert measures uptime with). Litestream's process_* series
# are not passed through, so the names cannot clash.
ProcessCollector(registry=REGISTRY)

# --- state read from the runtime at scrape time (RuntimeCollector) ----------------------------
# name: (help, label names)

STATE = {
    "sidecar_replication_lag_seconds": (
        "How far the bucket is behind the local database: 0 when the bucket holds the local "
        "latest TXID, else now minus the time of the oldest local change not yet in the "
        "bucket. NaN until the first lag check has finished.", ("db",)),
    "sidecar_replica_last_upload_timestamp_seconds": (
        "Unix time of the newest object for this database in the bucket, as listed by the "
        "last lag check. 0 when none has been seen.", ("db",)),
    "sidecar_local_txid": (
        "Latest Litestream transaction ID of the local database (0 before it is known).",
        ("db",)),
    "sidecar_replica_txid": (
        "Highest Litestream transaction ID found in the bucket for this database "
        "(0 before it is known, or when the bucket holds nothing).", ("db",)),
    "sidecar_replica_reachable": (
        "1 when the last check of the bucket succeeded, 0 when it failed or none has run yet.",
        ("db",)),
    "sidecar_directory_databases": (
        "Databases in a directory entry (SIDECAR_DB_DIR or a dir: entry) at the last lag "
        "check.", ("dir",)),
    "sidecar_directory_databases_behind": (
        "Databases of a directory entry whose bucket lacks a local change. The "
        "entry's sidecar_replication_lag_seconds (db label: the directory) is the largest lag.",
        ("dir",)),
    "sidecar_restore_window_seconds": (
        "How far back the backup can be restored now: now minus the time of the oldest "
        "snapshot in the bucket (Litestream restores every moment from there on). Refreshed "
        "every sixth lag check; absent until the first refresh.", ("db",)),
    "sidecar_restore_window_configured_seconds": (
        "The window the config promises (SIDECAR_PITR_WINDOW, or the project's "
        "litestream.yml: snapshot retention minus snapshot interval).", ("db",)),
    "sidecar_db_size_bytes": ("Size of the database file on the volume.", ("db",)),
    "sidecar_wal_size_bytes": (
        "Size of the database's -wal file on the volume (0 when there is none).", ("db",)),
    "sidecar_app_up": ("1 while the application process runs, else 0.", ()),
    "sidecar_litestream_up": ("1 while the Litestream replicate process runs, else 0.", ()),
    "sidecar_build_info": (
        "Always 1; the labels carry the sidecar and Litestream versions.",
        ("version", "litestream_version")),
}


class RuntimeCollector(Collector):
    """The STATE families, read from the runtime (`watch(rt)`) at each scrape.

    Before `watch()` (a scrape while sidecar starts, or a test), the families are there
    with what is known: the build info, the children down."""

    def __init__(self) -> None:
        self.rt: Any = None
        self._known: dict[tuple[str, str], float] = {}  # last known positions, per database
        self._lock = threading.Lock()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = self._families()
        rt = self.rt
        fam["sidecar_build_info"].add_metric(
            [__version__, (rt.litestream_version if rt else None) or "unknown"], 1)
        sup = rt.supervisor if rt else None
        fam["sidecar_app_up"].add_metric([], 1 if sup and sup.app_running() else 0)
        fam["sidecar_litestream_up"].add_metric([], 1 if sup and sup.litestream_running() else 0)
        if rt is not None:
            with self._lock:
                self._databases(rt, fam)
                self._directories(rt, fam)
        return iter(fam.values())

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {name: GaugeMetricFamily(name, text, labels=list(labels))
                for name, (text, labels) in STATE.items()}

    def _last(self, name: str, db: str, value: float | None) -> float:
        """The value, or the last one known (0 before any): a check that could not ask
        Litestream does not make a position drop to 0."""
        if value is not None:
            self._known[(name, db)] = float(value)
        return self._known.get((name, db), 0.0)

    def _databases(self, rt: Any, fam: dict[str, GaugeMetricFamily]) -> None:
        lags = {d.label: d for d in rt.lag.dbs} if rt.lag else {}
        now = time.time()
        for db in rt.cfg.databases:
            path = str(db.path)  # the same `db` label value Litestream uses
            d = lags.get(path)
            res = d.result if d is not None else None
            if res is not None and res.restorable_oldest is not None:
                fam["sidecar_restore_window_seconds"].add_metric(
                    [path], max(0.0, now - res.restorable_oldest))
            if (promised := getattr(d, "window_promised", None)) is not None:
                fam["sidecar_restore_window_configured_seconds"].add_metric([path], promised)
            lag = res.lag_seconds if res is not None and res.checks else None
            fam["sidecar_replication_lag_seconds"].add_metric(
                [path], math.nan if lag is None else lag)
            fam["sidecar_replica_reachable"].add_metric(
                [path], 1 if res is not None and res.reachable else 0)
            known = (res.local_txid, res.replica_txid, res.last_upload or None) if res \
                else (None, None, None)
            for name, value in zip(("sidecar_local_txid", "sidecar_replica_txid",
                                    "sidecar_replica_last_upload_timestamp_seconds"), known,
                                   strict=True):
                fam[name].add_metric([path], self._last(name, path, value))
            size, wal = _sizes(db.path)
            fam["sidecar_db_size_bytes"].add_metric([path], size)
            fam["sidecar_wal_size_bytes"].add_metric([path], wal)

    @staticmethod
    def _directories(rt: Any, fam: dict[str, GaugeMetricFamily]) -> None:
        for d in rt.lag.dirs if rt.lag else []:
            res = d.result
            if not res.checks:
                continue  # nothing known yet: no series, as before the first check
            fam["sidecar_replication_lag_seconds"].add_metric([d.label], res.lag_seconds or 0.0)
            fam["sidecar_replica_reachable"].add_metric([d.label], 1 if res.reachable else 0)
            fam["sidecar_directory_databases"].add_metric([d.label], d.members)
            fam["sidecar_directory_databases_behind"].add_metric([d.label], len(d.behind))
            lags = d.lags  # replaced whole by each check, never changed in place
            for rel in sorted(lags)[:d.per_db_limit]:
                fam["sidecar_replication_lag_seconds"].add_metric(
                    [str(d.entry.dir / rel)], lags[rel])


def _sizes(path: Path) -> tuple[int, int]:
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    return size(path), size(Path(f"{path}-wal"))


RUNTIME = RuntimeCollector()
REGISTRY.register(RUNTIME)


def watch(rt: Any) -> None:
    """Read the STATE families from this Runtime from now on (assembly.py, once it exists)."""
    RUNTIME.rt = rt


# --- events, counted where they happen ---------------------------------------------------------

LAG_CHECKS = Counter(
    "sidecar_lag_checks_total",
    "Lag checks run against the bucket, by outcome (ok, failed).",
    ["db", "outcome"],
    registry=REGISTRY,
)
REPLICA_REQUESTS = Counter(
    "sidecar_replica_requests_total",
    "Requests sidecar itself made to the bucket, by S3 operation (for example "
    "list_objects_v2). Divided by sidecar_lag_checks_total it shows the cost of one check.",
    ["db", "operation"],
    registry=REGISTRY,
)
BACKUP_VERIFY_LAST_SUCCESS = Gauge(
    "sidecar_backup_verify_last_success_timestamp_seconds",
    "Unix time of the last verification that restored the latest backup and found it intact. "
    "0 when no verification has succeeded since start.",
    ["db"],
    registry=REGISTRY,
)
CHILD_RESTARTS = Counter(
    "sidecar_child_restarts_total",
    "Times the supervisor restarted a child process (child: app, litestream).",
    ["child"],
    registry=REGISTRY,
)
RESTORES = Counter(
    "sidecar_restores_total",
    "Restore decisions, by trigger (startup, manual) and outcome (restored: a backup was "
    "restored; fresh: the bucket was empty, so the database starts new; skipped: the local "
    "database already held data; failed).",
    ["trigger", "outcome"],
    registry=REGISTRY,
)
RESTORE_DURATION = Gauge(
    "sidecar_restore_duration_seconds",
    "Wall-clock duration of the last restore (0 when none has run since start).",
    registry=REGISTRY,
)
MIGRATIONS = Counter(
    "sidecar_migrations_total",
    "Runs of the migration command, by outcome (succeeded, failed, skipped: no command).",
    ["outcome"],
    registry=REGISTRY,
)
LITESTREAM_METRICS_SCRAPE_ERRORS = Counter(
    "sidecar_litestream_metrics_scrape_errors_total",
    "Times Litestream's own metrics could not be fetched or parsed while serving /metrics; "
    "the litestream_* series are missing from those scrapes.",
    registry=REGISTRY,
)

for _child in CHILDREN:
    CHILD_RESTARTS.labels(child=_child)
for _trigger in RESTORE_TRIGGERS:
    for _outcome in RESTORE_OUTCOMES:
        RESTORES.labels(trigger=_trigger, outcome=_outcome)
for _outcome in MIGRATION_OUTCOMES:
    MIGRATIONS.labels(outcome=_outcome)


def init_db(db: str) -> None:
    """Create a database's event series at zero (its absolute path), so a rate() works from
    the first scrape; its state series come from the runtime."""
    BACKUP_VERIFY_LAST_SUCCESS.labels(db=db).set(0)
    for outcome in LAG_CHECK_OUTCOMES:
        LAG_CHECKS.labels(db=db, outcome=outcome)


def render(litestream_metrics_url: str | None, timeout: float = 1.0) -> bytes:
    """Return the /metrics body: sidecar's series, then Litestream's litestream_* series.

    When Litestream's endpoint cannot be read, its series are left out, the failure is counted
    in sidecar_litestream_metrics_scrape_errors_total, and sidecar's own series still go out.
    """
    passthrough = ""
    if litestream_metrics_url:
        try:
            passthrough = _litestream_families(_fetch(litestream_metrics_url, timeout))
        # A broken or half-started Litestream must never take sidecar's own metrics down with
        # it, whatever it answers; the counter below makes the failure visible.
        except Exception:
            LITESTREAM_METRICS_SCRAPE_ERRORS.inc()
    return prometheus_client.generate_latest(REGISTRY) + passthrough.encode()


_MAX_BODY = 4 << 20  # Litestream's whole exposition is a few kB; anything bigger is wrong.


# Litestream's endpoint is on the loopback: never through HTTP_PROXY / HTTPS_PROXY, which a
# platform may set for the app's outbound traffic (and which may not reach 127.0.0.1 at all).
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fetch(url: str, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with _NO_PROXY.open(request, timeout=timeout) as response:
        body = response.read(_MAX_BODY + 1)
    if len(body) > _MAX_BODY:
        raise http.client.HTTPException(f"metrics body larger than {_MAX_BODY} bytes")
    return body.decode("utf-8")


_SAMPLE_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
_RESERVED = ("_bucket", "_sum", "_count")


class _Family:
    def __init__(self, name: str) -> None:
        self.name = name
        self.help: str | None = None
        self.type = "untyped"
        self.samples: list[str] = []

    def owns(self, sample_name: str) -> bool:
        suffixes = ("", *_SUFFIXES.get(self.type, ()))
        return any(sample_name == self.name + suffix for suffix in suffixes)

    def render(self) -> str:
        # Litestream names some counters *_count or without _total. promtool's lint rejects
        # that for counters and gauges but not for untyped series, and PromQL does not use the
        # type; so such families go out as untyped, under Litestream's own names, which keeps
        # every existing Litestream dashboard and alert working.
        kind = self.type
        if kind == "counter" and not self.name.endswith("_total"):
            kind = "untyped"
        if kind not in _SUFFIXES and self.name.endswith(_RESERVED):
            kind = "untyped"
        help_text = self.help if self.help else "Passed through from Litestream."
        lines = [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {kind}", *self.samples]
        return "\n".join(lines) + "\n"


def _litestream_families(text: str) -> str:
    """Return the litestream_* families of a text exposition, re-typed to pass promtool."""
    # The client library's parser rejects malformed text; its result is not used because it
    # renames counter samples, and these families must keep Litestream's names.
    for _ in text_string_to_metric_families(text):
        pass
    families: dict[str, _Family] = {}
    current: _Family | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
                continue
            current = families.setdefault(parts[2], _Family(parts[2]))
            if parts[1] == "HELP":
                current.help = parts[3] if len(parts) == 4 else ""
            elif len(parts) == 4:
                current.type = parts[3]
            continue
        match = _SAMPLE_NAME.match(line)
        if match is None:
            raise ValueError(f"not a sample line: {line!r}")
        if current is None or not current.owns(match.group()):
            current = families.setdefault(match.group(), _Family(match.group()))
        current.samples.append(line)
    return "".join(
        family.render() for family in families.values() if family.name.startswith("litestream_")
    )
