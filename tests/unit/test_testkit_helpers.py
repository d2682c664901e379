"""The shared test helpers themselves: waiting names what it saw last, /metrics reading refuses
an ambiguous series, and an HTTP error status is an answer while no answer is an OSError."""

from __future__ import annotations

import pytest

from testkit.http import get, post_json, serving
from testkit.metrics import read, read_total, total, value
from testkit.net import free_port
from testkit.poll import wait_for

EXPOSITION = """\
# HELP sidecar_lag_checks_total Lag checks.
# TYPE sidecar_lag_checks_total counter
sidecar_lag_checks_total{db="/data/a.db",outcome="ok"} 7.0
sidecar_lag_checks_total{db="/data/a.db",outcome="failed"} 2.0
# HELP sidecar_app_up App up.
# TYPE sidecar_app_up gauge
sidecar_app_up 1.0
"""


def test_wait_for_returns_the_first_truthy_value() -> None:
    seen = iter([0, None, "", 5, 6])
    assert wait_for(lambda: next(seen), 5, interval=0.01) == 5


def test_wait_for_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as err:
        wait_for(lambda: [], 0.05, interval=0.01, what="the bucket to fill")
    assert "the bucket to fill" in str(err.value) and "last: []" in str(err.value)


def test_wait_for_ignores_only_the_exceptions_it_is_told_to_and_names_the_last() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("socket not up")

    with pytest.raises(AssertionError) as err:
        wait_for(refused, 0.05, interval=0.01, ignore=(OSError,))
    assert "socket not up" in str(err.value)
    with pytest.raises(ConnectionRefusedError):
        wait_for(refused, 5, interval=0.01)


def test_metric_values_by_labels_ambiguity_and_totals() -> None:
    assert value(EXPOSITION, "sidecar_app_up") == 1.0
    assert value(EXPOSITION, "sidecar_lag_checks_total", outcome="failed") == 2.0
    assert value(EXPOSITION, "sidecar_no_such_metric") is None
    with pytest.raises(AssertionError, match="matches 2 series"):
        value(EXPOSITION, "sidecar_lag_checks_total")
    assert total(EXPOSITION, "sidecar_lag_checks_total") == 9.0
    assert total(EXPOSITION, "sidecar_lag_checks_total", db="/data/b.db") == 0


def test_an_error_status_is_an_answer_and_no_answer_is_an_oserror() -> None:
    answers = {"/metrics": (200, EXPOSITION.encode()), "/readyz": (503, b'{"ready": false}')}
    with serving(lambda path: answers.get(path, (404, b"no"))) as base:
        assert read(base, "sidecar_app_up") == 1.0
        assert read_total(base, "sidecar_lag_checks_total", outcome="ok") == 7.0
        status, body, headers = get(f"{base}/readyz")
        assert (status, body) == (503, b'{"ready": false}')
        assert headers["Content-Type"].startswith("text/plain")
        assert get(f"{base}/readyz").json() == {"ready": False}
        assert post_json(f"{base}/x", {"a": 1}).status == 501  # the server answers GET only
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{free_port()}/", timeout=2)
