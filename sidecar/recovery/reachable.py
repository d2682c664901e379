"""Operator commands that never hang on a dead bucket.

Litestream's own restore retries an unreachable endpoint for about two minutes and waits on a
black-holed one for longer, whatever SIDECAR_REPLICA_TIMEOUT says. So before `sidecar verify`,
`sidecar restore --dry-run` or `sidecar restore --output` run it, the replica is probed within
that timeout (`require`), and while it runs a restore that stops making progress for as long
is stopped (`Stall`). Either way the command ends with one error and exit 4, as a start does
when the replica cannot be read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sidecar.bucket import replica
from sidecar.config import Config, Database
from sidecar.errors import RestoreError

VAR = "SIDECAR_REPLICA_TIMEOUT"


def timeout_text(seconds: float) -> str:
    return f"{VAR}={seconds:g}s"


def require(cfg: Config | None, db: Database, verb: str) -> replica.Contents:
    """What the replica holds, read within the replica timeout (a few requests).
    Raises RestoreError (exit 4) naming the replica and the reason when it cannot be read."""
    assert db.replica is not None
    seconds = cfg.replica_timeout if cfg is not None else 30.0
    try:
        return replica.probe(db.replica, seconds)
    except replica.ReplicaUnreachable as exc:
        if exc.kind == "certificate":  # final at once: no timeout was waited for
            url = db.replica.url
            raise RestoreError(f"cannot {verb} {db.name}: the replica {url} cannot be read: "
                               f"{exc.message}", hint="nothing was changed") from None
        raise unreachable(db, verb, exc.message, seconds) from None


def unreachable(db: Database, verb: str, why: str, seconds: float) -> RestoreError:
    url = db.replica.url if db.replica else "?"
    return RestoreError(
        f"cannot {verb} {db.name}: the replica {url} cannot be read within "
        f"{timeout_text(seconds)}: {why}",
        hint="check the endpoint, bucket and credentials (`sidecar check`); nothing was "
             f"changed. A slow but working bucket may need a longer {VAR}")


class Stall:
    """A `should_stop` for `litestream restore` into `output`: true once none of Litestream's
    files for it (`<output>.tmp`, and the `-wal`/`-shm` it replays a 0.3 backup's WAL
    through) has changed size or mtime for `seconds` (the bucket stopped answering), or when
    `inner` says so. Litestream renames its .tmp to `output` when it is done: from then on
    (the integrity check that follows) it never fires."""

    def __init__(self, output: Path, seconds: float,
                 inner: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        tmp = output.with_name(output.name + ".tmp")
        self.output, self.tmp = output, tmp
        self.paths = (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm"))
        self.seconds = seconds
        self.inner = inner
        self.clock = clock
        self.state: tuple[tuple[int, int], ...] | None = None
        self.since = clock()
        self.stalled = False

    def _state(self) -> tuple[tuple[int, int], ...] | None:
        """(size, mtime) of each file written so far; None once Litestream has put the output
        in place."""
        if self.output.exists() and not self.tmp.exists():
            return None
        out = []
        for p in self.paths:
            try:
                st = p.stat()
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, 0))
        # Bytes a parallel fetch (fetch.py) has brought so far: it writes no file above.
        out.append((fetch_bytes(self.output), 0))
        return tuple(out)

    def __call__(self) -> bool:
        if self.inner is not None and self.inner():
            return True
        state = self._state()
        now = self.clock()
        if state is None:
            return False
        if state != self.state:
            self.state, self.since = state, now
            return False
        if now - self.since > self.seconds:
            self.stalled = True
            return True
        return False


def fetch_bytes(output: Path) -> int:
    from sidecar.recovery import fetch

    got = fetch.progress_of(output)
    return int(got["bytes_fetched"]) if got else -1
