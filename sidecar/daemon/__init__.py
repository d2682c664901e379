"""What runs beside the app: the runtime, the HTTP and control-socket listeners, their one route
table, operations (the live restore, verify, snapshot), status, health, metrics, and the client
the commands use to reach the control socket (control_client.py). The lag checks are in
sidecar/lag/; the request types both sides share are in sidecar/api.py.
"""
