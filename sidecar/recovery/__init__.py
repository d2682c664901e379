"""Getting a database back from the bucket, and proving a backup can be: the restore on start
and its decision (restore.py), a whole directory entry's restore on start
(directory_restore.py), the parallel fetch of a backup's files behind a restore (fetch.py),
restores into a file for the operator commands and the daemon (backups.py), verification
(verification.py), the stall watch during a restore (reachable.py), the undo's bookmarks and
copy (bookmarks.py), and the scratch space a restore or a verify writes into (scratch.py)."""
