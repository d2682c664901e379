"""Configuration: the settings table (settings.py), the value parsers (parsers.py), the
databases and their replicas (replica_config.py), point-in-time recovery's settings (pitr.py),
and loading one frozen Config from the environment and flags (loading.py).

The names below are the ones the rest of sidecar imports as `sidecar.config.X`; they live in
loading.py.
"""

from sidecar.config.loading import (
    HIDDEN_FROM_CHILDREN,
    S3,
    SECRET_ENV,
    SETTINGS,
    Config,
    ConfigError,
    Database,
    DbDir,
    Replica,
    database_path_from_url,
    describe,
    environment_with_flags,
    for_children,
    load,
    parse_addr,
    parse_duration,
    secrets_of,
)

__all__ = ["HIDDEN_FROM_CHILDREN", "S3", "SECRET_ENV", "SETTINGS", "Config", "ConfigError",
           "Database", "DbDir", "Replica", "database_path_from_url", "describe",
           "environment_with_flags", "for_children", "load", "parse_addr", "parse_duration",
           "secrets_of"]
