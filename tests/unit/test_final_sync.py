"""The final sync's choice of databases and its budget, with a fake control socket (the real
one is in tests/e2e/test_tenant_dir.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sidecar import config
from sidecar.bucket import tenants
from sidecar.config import Database, DbDir
from sidecar.litestream.control import ControlError
from sidecar.supervise import final_sync


def members(entry: DbDir) -> list[Database]:
    """What run.py hands the supervisor: the entry's databases on the volume."""
    return [tenants.member(entry, rel) for rel in tenants.local_members(entry)]


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))


class Control:
    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.synced: list[str] = []
        self.fail = fail

    def sync(self, path: Path, wait: bool = True, timeout: float = 10.0,
             slack: float = 5.0) -> dict[str, Any]:
        if path.name in self.fail:
            raise ControlError(f"litestream POST /sync: 500 cannot sync {path.name}")
        self.synced.append(path.name)
        return {"txid": 1, "replicated_txid": 1}


def _cfg(tmp_path: Path) -> config.Config:
    d = tmp_path / "tenants"
    d.mkdir()
    now = time.time()
    for name, age in (("old.db", 3600), ("a.db", 30), ("b.db", 5), ("c.db", 60)):
        p = d / name
        p.write_bytes(b"")
        os.utime(p, (now - age, now - age))
    os.utime(d / "a.db", (now - 3600, now - 3600))
    (d / "a.db-wal").write_bytes(b"")  # its -wal changed recently: it counts
    os.utime(d / "a.db-wal", (now - 30, now - 30))
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(d),
           "SIDECAR_REPLICA_URL": "s3://bkt/tenants", "SIDECAR_S3_ENDPOINT": "http://s3.test",
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    return config.load(env, need_app=False, cwd=tmp_path)


def test_tenants_written_during_the_run_are_synced_newest_first(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    since = time.time() - 120
    assert [m.path.name for m in final_sync.tenants_written_since(cfg, since, members)] == [
        "b.db", "a.db", "c.db"]  # old.db was not written during the run
    control, log = Control(), Log()
    failed = final_sync.run(cfg, control, 10.0, since, log, time.monotonic, members,
                            parallelism=1)
    assert failed == [] and control.synced == ["b.db", "a.db", "c.db"]
    (_, event, fields), = log.events
    assert event == "final sync of directory databases"
    assert fields["synced"] == fields["written_during_run"] == 3


def test_tenants_that_cannot_be_synced_are_named(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    control, log = Control(fail={"a.db"}), Log()
    failed = final_sync.run(cfg, control, 10.0, time.time() - 120, log, time.monotonic,
                            members)
    assert failed == [str(tmp_path / "tenants" / "a.db")]
    level, _event, fields = log.events[-1]
    assert level == "warning" and fields["databases"] == failed and fields["count"] == 1
    assert "cannot sync a.db" in fields["first_error"]


def test_the_budget_bounds_the_tenants(tmp_path: Path) -> None:
    """Once the budget is spent the rest are not asked for (and are named)."""
    cfg = _cfg(tmp_path)
    now = [0.0]

    class Slow(Control):
        def sync(self, path: Path, wait: bool = True, timeout: float = 10.0,
                 slack: float = 5.0) -> dict[str, Any]:
            now[0] += 4.0
            return super().sync(path, wait, timeout)

    control, log = Slow(), Log()
    failed = final_sync.run(cfg, control, 6.0, time.time() - 120, log, lambda: now[0],
                            members, parallelism=1)
    assert control.synced == ["b.db", "a.db"]
    assert failed == [str(tmp_path / "tenants" / "c.db")]


def test_a_hung_litestream_never_holds_the_sync_past_its_budget(tmp_path: Path) -> None:
    """Each sync's whole wait (Litestream's, then the socket's slack for its answer) fits in
    what is left of the budget: a Litestream that never answers costs the budget, not more
    (the socket used to wait 5 s past Litestream's wait of the whole budget)."""
    cfg = _cfg(tmp_path)
    now = [0.0]
    waits: list[float] = []

    class Hung(Control):
        def sync(self, path: Path, wait: bool = True, timeout: float = 10.0,
                 slack: float = 5.0) -> dict[str, Any]:
            waits.append(max(1, int(timeout)) + slack)  # what Control.sync would wait
            now[0] += waits[-1]
            raise ControlError(f"cannot reach the socket: timed out ({path.name})")

    for budget in (1.1, 1.5, 2.0, 6.0, 6.5, 30.0):
        now[0], waits[:] = 0.0, []
        failed = final_sync.run(cfg, Hung(), budget, time.time() - 120, Log(),
                                lambda: now[0], members, parallelism=1)
        assert waits and now[0] <= budget, (budget, waits)
        assert len(failed) == 3


def test_the_control_sockets_wait_is_litestreams_and_the_slack(monkeypatch) -> None:
    """What the test above assumes of Control.sync: Litestream is told whole seconds (at
    least 1), and the socket waits that plus the slack, no more."""
    from sidecar.litestream import control as control_mod

    seen: list[tuple[dict[str, Any], float]] = []

    def fake(path: Path, method: str, url: str, body: Any = None, timeout: float = 5.0,
             headers: Any = None) -> tuple[int, Any]:
        seen.append((body, timeout))
        return 200, {"txid": 1}

    monkeypatch.setattr(control_mod, "unix_request", fake)
    c = control_mod.Control(Path("/nonexistent.sock"))
    c.sync(Path("/data/a.db"), timeout=4, slack=0.5)
    c.sync(Path("/data/a.db"), timeout=0.2, slack=0.1)
    c.sync(Path("/data/a.db"), timeout=7.9)
    assert [(b["timeout"], t) for b, t in seen] == [(4, 4.5), (1, 1.1), (7, 12.0)]
