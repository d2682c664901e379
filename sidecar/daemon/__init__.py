"""What runs beside the app: the runtime, the HTTP and control-socket listeners, their one route
table, operations (restore, verify, snapshot), status, health and metrics. The lag checks are
in sidecar/lag/.
"""
