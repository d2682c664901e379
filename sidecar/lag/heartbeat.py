"""The heartbeat: after a healthy lag check, one GET of SIDECAR_HEARTBEAT_URL, so a dead man's
switch (healthchecks.io and the like) hears from a sidecar whose backups are current, and
raises its alarm when the calls stop."""

from __future__ import annotations

from sidecar import log


def beat(url: str) -> None:
    """One call; a failure is logged (host only) and the next healthy check tries again."""
    import urllib.parse
    import urllib.request  # only with SIDECAR_HEARTBEAT_URL, never on the start path

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read(1024)
    # Any failure to reach the monitor is logged and the next healthy check tries again.
    except Exception as exc:
        # The URL often carries the monitor's secret token: show its host only.
        host = urllib.parse.urlsplit(url).hostname
        log.get("lag").warning("heartbeat failed", host=host, error=type(exc).__name__)
