"""Helpers shared by the tests (tests/unit, tests/e2e) and the benchmarks (bench/): free ports,
waiting on a condition, HTTP requests and /metrics, the rclone S3 server, small SQLite
databases, process trees, `sidecar` as a real process (and seen from its volume), and the rule
that a missing real part fails in CI instead of skipping.

pytest finds this package through `pythonpath` in pyproject.toml; bench/harness.py puts the
repository root on sys.path itself."""

from testkit.db import make_db, make_tenants, rows
from testkit.net import free_port
from testkit.poll import wait_for
from testkit.procs import descendants
from testkit.require import in_ci, need
from testkit.s3 import S3_KEY, S3_SECRET, S3Server, railway_bucket_env
from testkit.sidecar import (
    BIN,
    WRITER_APP,
    Sidecar,
    base_env,
    run_sidecar,
    s3_env,
    seed_bucket,
    side_restore,
    tool,
    write_app,
)

__all__ = [
    "BIN", "S3_KEY", "S3_SECRET", "WRITER_APP", "S3Server", "Sidecar", "base_env", "descendants",
    "free_port", "in_ci", "make_db", "make_tenants", "need", "railway_bucket_env", "rows",
    "run_sidecar", "s3_env", "seed_bucket", "side_restore", "tool", "wait_for", "write_app",
]
