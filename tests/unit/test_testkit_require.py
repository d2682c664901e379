"""A missing real part skips a test on a developer's machine and fails it in CI (CI=true)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from testkit.require import check_marks, need


class Item:
    """The one thing check_marks asks of a pytest item: its markers by name."""

    def __init__(self, *marks: pytest.MarkDecorator):
        self.marks = [m.mark for m in marks]

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [m for m in self.marks if m.name == name]


def outcome(call: Callable[[], None]) -> BaseException | None:
    """What `call` raised, caught here: a skip must not turn this test itself into a skip."""
    try:
        call()
    except BaseException as exc:  # pytest's outcomes are BaseExceptions
        return exc
    return None


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_part_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    exc = outcome(lambda: need(False, "promtool is not installed"))
    assert isinstance(exc, pytest.fail.Exception), exc
    assert str(exc) == "CI=true and a real part is missing: promtool is not installed"


def test_missing_part_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    exc = outcome(lambda: need(False, "promtool is not installed"))
    assert isinstance(exc, pytest.skip.Exception), exc
    assert str(exc) == "promtool is not installed"


def test_present_part_runs_in_and_out_of_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    for ci in ("true", ""):
        monkeypatch.setenv("CI", ci)
        assert outcome(lambda: need(True, "never said")) is None
        assert outcome(lambda: check_marks(
            Item(pytest.mark.requires("/usr/bin/unshare", "never said")))) is None


def test_requires_marker_is_checked_before_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    item = Item(pytest.mark.slow, pytest.mark.requires(None, "unshare is not installed"))
    exc = outcome(lambda: check_marks(item))
    assert isinstance(exc, pytest.fail.Exception) and "unshare is not installed" in str(exc), exc
