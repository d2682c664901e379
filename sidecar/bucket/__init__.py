"""The bucket as sidecar itself reads it: one S3 client (boto3) for every request sidecar makes
(client.py), the trust it and Litestream share for an HTTPS endpoint (trust.py), the stores
over a replica and the layouts of the backups they hold (replica.py), the restore points a
backup offers (restore_points.py), and the listing of a directory entry's databases
(tenants.py, with BucketView)."""
