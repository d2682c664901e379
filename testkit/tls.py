"""An S3 bucket over HTTPS, signed by a private CA made for the test: `make_ca` writes a CA and
a server certificate for 127.0.0.1 and localhost with openssl (Go needs the names in the
subjectAltName, not only the CN), and `HTTPSServer` is the rclone S3 server with them."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.s3 import S3Server

# Variables through which this machine (or a CI runner) trusts CAs of its own: a TLS test
# removes them from a child's environment and sets only the one it means, or it tests the
# machine instead of the code.
MACHINE_TRUST = ("AWS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                 "CURL_CA_BUNDLE", "NIX_SSL_CERT_FILE")


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA certificate (what AWS_CA_BUNDLE names)
    cert: Path  # the server's certificate, signed by the CA
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def make_ca(directory: Path, name: str = "sidecar test CA") -> Certs:
    """A fresh CA and a server certificate it signed, for IP:127.0.0.1 and DNS:localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
             cwd=directory)
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "3", "-extfile", "server.ext",
             cwd=directory)
    return Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key")


class HTTPSServer(S3Server):
    """`rclone serve s3 --cert --key`: the same server, over TLS with `certs`."""

    def __init__(self, root: Path, certs: Certs, **kw: Any):
        super().__init__(root, **kw)
        self.certs = certs
        self.extra_args = ("--cert", str(certs.cert), "--key", str(certs.key))

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1",
                            verify=str(self.certs.ca),
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))
