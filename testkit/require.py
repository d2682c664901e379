"""A test that needs a real part (root, unshare, node_modules, promtool, podman, ...) runs it,
or, when the part is missing, skips on a developer's machine and FAILS in CI (CI=true): a CI
run that silently skipped the real part would prove nothing.

Use `need(present, "what is missing and how to get it")` inside a test or fixture, or the
marker `@pytest.mark.requires(present, "why")`, which tests/conftest.py hands to `check_marks`
before each test."""

from __future__ import annotations

import os
from typing import Any

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(present: bool, missing: str) -> None:
    if present:
        return
    if in_ci():
        pytest.fail(f"CI=true and a real part is missing: {missing}", pytrace=False)
    pytest.skip(missing)


def check_marks(item: Any) -> None:
    """`need` for every `requires` marker on a test item."""
    for mark in item.iter_markers("requires"):
        need(bool(mark.args[0]), mark.args[1])
