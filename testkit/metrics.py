"""Reading a Prometheus text exposition (a /metrics body) with prometheus_client's own parser,
and a stand-in runtime for sidecar's metrics collector (one database, its last lag check)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from testkit.http import get


def samples(text: str | bytes) -> list[Sample]:
    """Every sample of the exposition, in order (counters under their `_total` names)."""
    if isinstance(text, bytes):
        text = text.decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def series(text: str | bytes, name: str, **labels: str) -> list[Sample]:
    """The samples named `name` whose labels include `labels` (other labels may be present)."""
    return [s for s in samples(text)
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(text: str | bytes, name: str, **labels: str) -> float | None:
    """The value of the one series named `name` matching `labels`; None when there is none.
    AssertionError when `labels` match more than one series (say which one)."""
    found = series(text, name, **labels)
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series: {found}"
    return found[0].value if found else None


def total(text: str | bytes, name: str, **labels: str) -> float:
    """The sum of every series named `name` matching `labels` (0 when there is none): a
    counter over all its other labels, such as requests of every operation."""
    return sum(s.value for s in series(text, name, **labels))


def scrape(base: str, timeout: float = 5) -> str:
    """GET `base`/metrics; AssertionError unless it answers 200."""
    resp = get(f"{base.rstrip('/')}/metrics", timeout=timeout)
    assert resp.status == 200, (resp.status, resp.text[:500])
    return resp.text


def read(base: str, name: str, **labels: str) -> float | None:
    """value() of a fresh scrape of `base`/metrics."""
    return value(scrape(base), name, **labels)


def read_total(base: str, name: str, **labels: str) -> float:
    """total() of a fresh scrape of `base`/metrics."""
    return total(scrape(base), name, **labels)


def fake_runtime(db: str, litestream_version: str = "0.5.17", **result: Any) -> SimpleNamespace:
    """What metrics.RuntimeCollector reads from a Runtime: one database, its last lag check
    (LagResult fields; none: no check yet), no supervisor (children down)."""
    from sidecar.lag.model import LagResult

    res = LagResult(db=db, **result)
    return SimpleNamespace(
        cfg=SimpleNamespace(databases=[SimpleNamespace(path=Path(db))]),
        lag=SimpleNamespace(dbs=[SimpleNamespace(label=db, result=res)], dirs=[]),
        supervisor=None, litestream_version=litestream_version)


@contextlib.contextmanager
def watching(rt: Any) -> Iterator[Any]:
    """sidecar's metrics.watch(rt) for the block; then back to no runtime."""
    from sidecar import metrics

    metrics.watch(rt)
    try:
        yield rt
    finally:
        metrics.watch(None)
