"""The bucket as sidecar itself reads it: one S3 client (boto3) for every request sidecar makes
(client.py), and the trust it and Litestream share for an HTTPS endpoint (trust.py)."""
