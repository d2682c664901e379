"""sidecar: a safe container entrypoint for SQLite + Litestream."""

__version__ = "0.1.0"
