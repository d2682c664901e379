"""The steps before the app starts: preflight checks, the restore decision and restore, migrations."""
