"""Getting a database back from the bucket, and proving a backup can be: the restore on start
and its decision (restore.py), the file fetch behind it (fetch.py, with bookmarks.py for where a
fetch stopped), restores into a file for the operator commands and the daemon (backups.py),
verification (verification.py), the stall watch during a restore (reachable.py), and the
scratch space a restore or a verify writes into (scratch.py)."""
