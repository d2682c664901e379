"""What the deploy files promise, shared by the tests that read them (deploy/, the Railway
template): the variables sidecar knows, the example's volume, ports and database URL, the
Railway variables file, the Compose file, and the time a shutdown may take."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from sidecar.config import SETTINGS, parse_duration

ROOT = Path(__file__).resolve().parents[1]
RAILWAY = ROOT / "deploy" / "railway"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
LITESTREAM_YML = ROOT / "litestream.yml"

METRICS_PORT = 9090
VOLUME = "/data"
DB_URL = "file:/data/app.db"

SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
KNOWN_VARIABLES = {s.env for s in SETTINGS} | {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "BUCKET", "ENDPOINT", "REGION",
    "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "PORT",
    "APP_PORT", "RAILWAY_RUN_UID"}


def env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not KEY=VALUE: {raw}"
        assert key not in out, f"{key} set twice in {path.name}"
        out[key] = value
    return out


def railway_vars() -> dict[str, str]:
    return env_file(RAILWAY / "variables.env.example")


def stop_budget(env: dict[str, Any]) -> float:
    """What shutdown can take: the app's stop timeout plus Litestream's final sync bound,
    with sidecar's defaults for whichever is unset."""
    defaults = {s.env: s.default for s in SETTINGS}
    app = parse_duration(str(env.get("SIDECAR_APP_STOP_TIMEOUT") or
                             defaults["SIDECAR_APP_STOP_TIMEOUT"]))
    sync = parse_duration(str(env.get("SIDECAR_LITESTREAM_STOP_TIMEOUT") or
                              defaults["SIDECAR_LITESTREAM_STOP_TIMEOUT"]))
    return app + sync


def load_file(path: Path) -> list[Any]:
    """Every document in a YAML, JSON or TOML file."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        return [d for d in yaml.safe_load_all(text) if d is not None]
    if path.suffix == ".json":
        return [json.loads(text)]
    if path.suffix == ".toml":
        return [tomllib.loads(text)]
    raise AssertionError(f"not a config file: {path}")


def compose() -> dict[str, Any]:
    return load_file(COMPOSE)[0]


def compose_env(service: str) -> dict[str, str]:
    env = compose()["services"][service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} / ${VAR} interpolation."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        return env.get(m.group(1)) or (m.group(3) or "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, value)
