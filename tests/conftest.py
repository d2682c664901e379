"""Fixtures only; the helpers behind them live in the testkit package (shared with bench/).

Servers and installs are session-scoped: one rclone S3 server and one check of the Litestream
0.3 install for the whole run. A test that stops its server (an outage) takes `own_s3` instead."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit import S3Server, Sidecar
from testkit.require import check_marks

ROOT = Path(__file__).resolve().parents[1]
LS03 = ROOT / ".venv-ls03" / "bin" / "litestream"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shuffle", metavar="SEED", default=None,
        help="run the collected tests in an order shuffled with SEED (an integer), or "
             "'reverse': a test that passes only after another ran shows up")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seed = config.getoption("--shuffle")
    if seed is None:
        return
    if seed == "reverse":
        items.reverse()
    elif seed.isdigit():
        random.Random(int(seed)).shuffle(items)
    else:
        raise pytest.UsageError(f"--shuffle takes an integer seed or 'reverse', not {seed!r}")


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.getoption("--shuffle")
    return f"test order: --shuffle={seed}" if seed is not None else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.requires(present, why)`: skip locally, fail in CI (testkit.require)."""
    check_marks(item)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 server shared by the whole run (never stopped by a test)."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "root")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A private S3 server a test may stop and start (outages)."""
    server = S3Server(tmp_path / "s3root")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.make_bucket()


@pytest.fixture(scope="session")
def litestream03() -> str:
    """The real Litestream 0.3.13 (scripts/setup.sh installs it into .venv-ls03)."""
    if not os.access(LS03, os.X_OK):
        pytest.fail(f"{LS03} is missing; run ./scripts/setup.sh")
    out = subprocess.run([str(LS03), "version"], capture_output=True, text=True).stdout
    assert out.strip().startswith("v0.3."), out
    return str(LS03)


@pytest.fixture
def sidecars() -> Iterator[Callable[..., Sidecar]]:
    """Start sidecars; every one still running at the end of the test is killed."""
    started: list[Sidecar] = []

    def make(env: dict[str, str], app: list[str], cwd: Path, **kw: Any) -> Sidecar:
        sc = Sidecar(env, app, cwd, **kw).start()
        started.append(sc)
        return sc

    yield make
    for sc in started:
        sc.kill()


@pytest.fixture(autouse=True)
def _umask_kept() -> Iterator[None]:
    """A command's `main()` run in-process (`cli.main(["restore", ...])`) sets the umask of the
    whole pytest process (restore and snapshot: 077), which every later test and the children
    it starts would inherit (a `chmod -x` then leaves the group's and others' x bits): every
    test ends with the umask it began with."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
