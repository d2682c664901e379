"""The CA an HTTPS endpoint is trusted with, for Litestream as for boto3.

Users give a private CA (a self-hosted MinIO, a corporate proxy) the AWS way, AWS_CA_BUNDLE,
or the way Python and Go read it, SSL_CERT_FILE; config checks the file is a readable PEM
bundle (exit 2 otherwise) and boto3 is given it as `verify` (bucket/client.py).

Litestream 0.5.17 cannot start with AWS_CA_BUNDLE set ("unable to add custom RootCAs
HTTPClient": the AWS SDK for Go cannot add a CA to the HTTP client Litestream gives it), so
it never sees that variable. It is given what Go reads instead, SSL_CERT_FILE, naming a
bundle of the roots it would have trusted anyway (SSL_CERT_FILE when set, else the system's
bundle) plus the given CA, written once per process into a private file (0600, on a tmpfs
where there is one, removed at exit) as the rendered config is. An SSL_CERT_FILE without
AWS_CA_BUNDLE reaches Litestream as it is: Go reads it already.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping, MutableMapping
from pathlib import Path

# Where Go's crypto/x509 looks for the system's roots on Linux, in its order.
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                  "/etc/ssl/ca-bundle.pem", "/etc/pki/tls/cacert.pem",
                  "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "/etc/ssl/cert.pem")

_written: dict[tuple[str, str], Path] = {}
_lock = threading.Lock()


def given(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, path) of the CA bundle the user gave, AWS_CA_BUNDLE first, or None."""
    for var in ("AWS_CA_BUNDLE", "SSL_CERT_FILE"):
        if (env.get(var) or "").strip():
            return var, env[var]
    return None


def system_roots() -> str | None:
    return next((p for p in SYSTEM_BUNDLES if os.path.isfile(p)), None)


def litestream_env(env: MutableMapping[str, str]) -> None:
    """Make `env` (Litestream's environment) trust what AWS_CA_BUNDLE names, without it."""
    ca = env.pop("AWS_CA_BUNDLE", None)
    if not (ca or "").strip():
        return
    assert ca is not None
    # SSL_CERT_FILE is read only when AWS_CA_BUNDLE is not set, so config has not checked it.
    own = (env.get("SSL_CERT_FILE") or "").strip()
    roots = own if own and os.access(own, os.R_OK) and os.path.isfile(own) else (
        system_roots() or "")
    env["SSL_CERT_FILE"] = str(bundle(ca, roots))


def bundle(ca: str, roots: str) -> Path:
    """The private file holding `roots` then `ca` (written once per process for each pair)."""
    with _lock:
        path = _written.get((ca, roots))
        if path is not None and path.exists():
            return path
        parts = []
        for source in (roots, ca):
            if source:
                text = Path(source).read_bytes()
                parts.append(text if text.endswith(b"\n") else text + b"\n")
        path = _private_file()
        path.write_bytes(b"".join(parts))
        _written[(ca, roots)] = path
        return path


def _private_file() -> Path:
    from sidecar import tmpfs
    from sidecar.errors import PreflightError

    try:
        return tmpfs.private_file("ca-bundle.pem")
    except PreflightError:
        # No tmpfs: a CA bundle holds no secret, so a private temporary file will do.
        fd, name = tempfile.mkstemp(prefix=f"sidecar-{os.getpid()}-", suffix="-ca-bundle.pem")
        os.close(fd)
        tmpfs._private.add(Path(name))
        return Path(name)
