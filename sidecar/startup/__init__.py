"""The steps before the app starts: preflight checks, the restore decision and restore (and, in
tenants.py, the restore of a whole directory of databases), migrations."""
