"""Replication lag: how long ago the oldest change the bucket does not hold happened.

model.py defines it (ChangeLog, ReplicaTracker, LagResult); db_lag.py checks one database,
dir_lag.py a directory entry's databases; watcher.py times local changes; heartbeat.py calls
SIDECAR_HEARTBEAT_URL; monitor.py holds them together for `sidecar run`. Each module imports
only the ones before it in that list.
"""
