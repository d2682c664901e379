"""The steps of a start that are neither a restore nor supervision: the preflight checks
(preflight.py, volume.py) and the migrations (migrate.py). The restore on start is in
recovery/."""
