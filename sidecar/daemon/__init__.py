"""What runs beside the app: the runtime, the HTTP and control-socket listeners, their one route
table, operations (restore, verify, snapshot), status, lag (tenant_lag.py: a directory of
databases at one listing per check) and metrics.
"""
