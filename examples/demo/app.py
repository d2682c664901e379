"""A tiny app for the demo: counts the rows it finds, adds a few, and exits."""

import os
import sqlite3
import time

db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS visits(id INTEGER PRIMARY KEY, at REAL)")
before = db.execute("SELECT count(*) FROM visits").fetchone()[0]
print(f"app: found {before} rows", flush=True)
for _ in range(int(os.environ.get("DEMO_ROWS", "25"))):
    db.execute("INSERT INTO visits(at) VALUES (?)", (time.time(),))
    time.sleep(0.02)
after = db.execute("SELECT count(*) FROM visits").fetchone()[0]
print(f"app: wrote rows, now {after}", flush=True)
