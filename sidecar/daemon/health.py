"""The probes on the HTTP listener: /metrics, /healthz and /readyz.

They read the Runtime and answer; /healthz reads the supervisor loop's beat (it beats on every
turn and inside long work), so a wedged loop shows as unhealthy while the process still serves
HTTP, and a long restore does not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sidecar import api, metrics
from sidecar.daemon.runtime import Runtime

# /healthz fails once the supervisor loop's thread has shown no progress for this long. The
# loop beats on every turn and inside its long work (a live restore, a migration, stopping the
# app), so only a loop that is really stuck gets there, however long a restore takes.
LOOP_STALL_LIMIT = 60.0


class Probes:
    def __init__(self, rt: Runtime, restoring: Callable[[], bool] = lambda: False):
        self.rt = rt
        self.restoring = restoring

    def metrics(self) -> api.Text:
        rt = self.rt
        sup = rt.supervisor
        # Litestream's endpoint is only asked while it runs; a known-down Litestream is already
        # visible as sidecar_litestream_up 0 and would only add scrape errors.
        url = rt.metrics_url if sup is not None and sup.litestream_running() else None
        return api.Text(metrics.render(url), metrics.CONTENT_TYPE)

    def healthz(self) -> dict[str, Any]:
        """200 while the supervisor loop is alive (the app's state does not matter here)."""
        sup = self.rt.supervisor
        if sup is None or not threading.main_thread().is_alive():
            doc = {"status": "down", "reason": "supervisor not running"}
            raise api.Unavailable("supervisor not running", doc)
        if sup.phase == "starting":
            # Start-up steps (restore, migrations) run on the main thread before the loop
            # starts; a long restore must not get the container killed by a liveness probe.
            return {"status": "ok", "phase": "starting"}
        silent = sup.silent_for()
        if silent < LOOP_STALL_LIMIT:
            return {"status": "ok", "phase": sup.phase, **({"busy": True} if silent > 1.0 else {})}
        reason = f"supervisor loop has not answered for {silent:.0f}s"
        raise api.Unavailable(reason, {"status": "down", "phase": sup.phase, "reason": reason})

    def readiness(self) -> tuple[list[str], dict[str, Any]]:
        """Why the sidecar is not ready (empty when it is), and the per-database lag."""
        rt = self.rt
        cfg, sup = rt.cfg, rt.supervisor
        reasons: list[str] = []
        if rt.failure is not None:
            what = "start failed, " if sup is None or sup.phase == "starting" else ""
            reasons.append(f"{what}held for an operator: {rt.failure.message}")
        elif self.restoring():
            reasons.append("a live restore is running")
        elif sup is None or sup.phase == "starting":
            reasons.append("starting")
        elif sup.phase != "running":
            reasons.append(f"shutting down ({sup.phase})")
        if sup is not None and sup.phase != "starting":
            if cfg.app_command and not sup.app_running():
                reasons.append("app is not running")
            if not sup.litestream_running():
                reasons.append("litestream is not running")
        results = rt.lag.results() if rt.lag else {}
        dbs: dict[str, Any] = {}
        for db in cfg.databases:
            res = results.get(str(db.path))
            if res is None or not res.measured or res.lag_seconds is None:
                reasons.append(f"replication lag of {db.path} not measured yet")
                dbs[str(db.path)] = {"lag_seconds": None, "replica_reachable": None}
                continue
            dbs[str(db.path)] = {"lag_seconds": round(res.lag_seconds, 3),
                                 "replica_reachable": res.reachable,
                                 **({"last_check_error": res.error} if res.error else {})}
            if res.lag_seconds >= cfg.max_lag:
                why = f": {res.error}" if res.error else ""
                reasons.append(f"replication lag of {db.path} is {res.lag_seconds:.0f}s, over "
                               f"SIDECAR_MAX_LAG_SECONDS={cfg.max_lag:g}{why}")
        for d in (rt.lag.dirs if rt.lag else []):
            res = d.result
            if not res.checks or res.lag_seconds is None:
                reasons.append(f"replication lag of the databases in {d.label} not measured yet")
                dbs[d.label] = {"lag_seconds": None, "replica_reachable": None}
                continue
            dbs[d.label] = {"lag_seconds": round(res.lag_seconds, 3), "databases": d.members,
                            "behind": len(d.behind), "replica_reachable": res.reachable,
                            **({"last_check_error": res.error} if res.error else {})}
            if not res.reachable:
                reasons.append(f"the replica of the databases in {d.label} cannot be read: "
                               f"{res.error}")
            if res.lag_seconds >= cfg.max_lag:
                worst = d.behind[0][0] if d.behind else "?"
                reasons.append(f"replication lag of {len(d.behind)} database(s) in {d.label} "
                               f"reaches {res.lag_seconds:.0f}s ({worst}), over "
                               f"SIDECAR_MAX_LAG_SECONDS={cfg.max_lag:g}")
        return reasons, dbs

    def readyz(self) -> dict[str, Any]:
        """200 only when the app runs, Litestream runs and every lag is under the maximum."""
        reasons, dbs = self.readiness()
        doc = {"ready": not reasons, "reasons": reasons, "databases": dbs}
        if reasons:
            raise api.Unavailable("not ready", doc)
        return doc
