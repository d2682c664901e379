"""What a running sidecar knows, as one typed object built once by `run`.

Read by the status document, the probes and the operations; written only by the start-up steps
(assembly.py) and the supervisor loop's handlers. It imports no server and no operation, so every
module that reads it can import it without a circle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.config import Config
from sidecar.errors import SidecarError
from sidecar.lag.monitor import LagMonitor
from sidecar.litestream.control import Control
from sidecar.recovery.restore import RestoreResult
from sidecar.startup.migrate import MigrationResult
from sidecar.startup.preflight import Preflight
from sidecar.supervise.supervisor import Supervisor


@dataclass
class Runtime:
    cfg: Config
    env: dict[str, str]
    started_at: float = field(default_factory=time.time)
    supervisor: Supervisor | None = None
    pre: Preflight | None = None
    litestream_config: Path | None = None
    litestream_version: str | None = None
    litestream_bin: str | None = None
    metrics_url: str | None = None
    control: Control | None = None
    lag: LagMonitor | None = None
    # Schedules the lag checks and the verification, once, off the main thread (assembly.py).
    begin_jobs: Callable[[], None] | None = None
    restores: dict[str, RestoreResult] = field(default_factory=dict)
    migration: MigrationResult | None = None
    verification: dict[str, object] | None = None
    failure: SidecarError | None = None
