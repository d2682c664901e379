"""Replication lag: how long ago the oldest change the bucket does not hold happened."""
