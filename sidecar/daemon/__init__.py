"""What runs beside the app: the runtime, the HTTP and control-socket listeners, their one route
table, operations (the live restore, verify, snapshot), status, lag (tenant_lag.py: a
directory of databases at one listing per check), metrics, and the client the commands use to
reach the control socket (control_client.py). The request types both sides share are in
sidecar/api.py.
"""
