"""Every S3 request sidecar makes itself (the start-up probe, the lag checks, a directory's
listings, `check`, the plans, verify's probes) goes through `Client`: boto3, the project's S3
library, configured once, in every environment (an endpoint with static keys, AWS's own
endpoints, a session token, a profile, a proxy, a private CA). Litestream moves the bytes
with its own client; nothing else talks to the bucket.

boto3 alone does not give what a start or a lag check needs, so this module adds it around
boto3, here and nowhere else:

- a deadline on each whole call, connect and answer together (`limit`): botocore's timeouts
  bound each socket read, so a server that sends a byte now and then would hold a probe (and
  the start behind it) for ever. At the deadline the call's sockets are shut down, which ends
  any read, under TLS too;
- a cap on what one answer may cost in memory (MAX_BODY): the body is read here, not by
  botocore, and a larger one is refused before it is held;
- an answer that is not an S3 listing is an error: botocore reads any well-formed XML (a
  proxy's page, another API's answer) as a listing with no keys, and an empty bucket lets a
  start begin a fresh database over the real backups;
- one mapping of S3 and transport errors to ReplicaUnreachable's kinds: `unreachable` (the
  probe retries it), `denied`, `no-bucket` and `certificate` (final at once: a certificate
  that cannot be verified now will not be verified in a minute).

boto3 is imported by the first request, not before: a start that needs no restore never
loads it before the app is up.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from sidecar.config.replica_config import Replica
from sidecar.errors import ReplicaUnreachable

# A page of 1,000 keys is a few hundred KB; anything far larger is not a listing.
MAX_BODY = 16 * 1024 * 1024
# Error codes that mean "retrying will not help".
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
          "InvalidToken", "ExpiredToken", "AllAccessDisabled", "AuthorizationHeaderMalformed",
          "InvalidClientTokenId", "TokenRefreshRequired"}
NO_BUCKET = {"NoSuchBucket", "404"}
CA_HINT = "set AWS_CA_BUNDLE to a CA file (PEM) that signed the endpoint's certificate"


def credentials(replica: Replica, env: Mapping[str, str] = os.environ) -> (
        tuple[str, str, str | None] | None):
    """(key, secret, session token) for this replica, or None when only boto3's own chain
    (a profile, the shared files, an instance role) can find them. Temporary credentials in
    the environment come with AWS_SESSION_TOKEN: it goes with the key it was issued with,
    never with another (a Railway Bucket's keys, or keys a litestream.yml names)."""
    s3 = replica.s3
    assert s3 is not None
    key, secret = s3.access_key_id, s3.secret_access_key
    if not (key and secret):
        return None
    token = None
    if key == env.get("AWS_ACCESS_KEY_ID") and secret == env.get("AWS_SECRET_ACCESS_KEY"):
        token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    return key, secret, token


def timeouts(timeout: float) -> tuple[float, float]:
    """(connect, read) for a call given `timeout`: connecting is bounded at 5 s so a down
    server is retried soon; an answer may take the whole `timeout`."""
    return max(0.5, min(timeout, 5.0)), max(1.0, timeout)


_session: Any = None
_session_lock = threading.Lock()


def make_boto3_client(replica: Replica, timeout: float = 5.0,
                      env: Mapping[str, str] = os.environ, pool: int = 10) -> Any:
    """A plain boto3 S3 client for the replica. Every client comes from one shared session,
    so botocore parses the S3 service model once per process (about 15 MB each time
    otherwise). Raises what boto3 raises (a profile that does not exist)."""
    global _session
    import boto3
    from botocore.config import Config as BotoConfig

    s3 = replica.s3
    assert s3 is not None
    key, secret, token = credentials(replica, env) or (None, None, None)
    connect, read = timeouts(timeout)
    cfg = BotoConfig(
        connect_timeout=connect, read_timeout=read,
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path" if s3.force_path_style else "virtual"},
        signature_version="s3v4", max_pool_connections=pool,
    )
    with _session_lock:  # creating clients from one session is not thread-safe
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(
            "s3", endpoint_url=s3.endpoint, config=cfg, region_name=s3.region,
            verify=s3.ca_bundle or None,
            aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token)


class Client:
    """The S3 calls sidecar makes, on one boto3 client made at the first call. Each call
    either returns boto3's answer or raises ReplicaUnreachable."""

    def __init__(self, replica: Replica, timeout: float = 5.0,
                 env: Mapping[str, str] = os.environ):
        assert replica.s3 is not None
        self.replica, self.s3, self.env = replica, replica.s3, env
        self.label = replica.endpoint_label
        self.timeout = timeout
        connect, read = timeouts(timeout)
        self.limit = connect + read
        self._boto: Any = None
        self._lock = threading.Lock()

    def boto(self) -> Any:
        with self._lock:
            if self._boto is None:
                client = make_boto3_client(self.replica, self.timeout, self.env)
                _watch_connections(client)
                client.meta.events.register("before-send.s3", self._send)
                self._boto = client
            return self._boto

    def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
        deadline = _Deadline(self.limit)
        try:
            with deadline:
                resp: dict[str, Any] = self.boto().list_objects_v2(**kwargs)
        except Exception as exc:
            raise self.unreachable(exc, deadline.cut) from None
        if resp.get("IsTruncated") and not resp.get("NextContinuationToken"):
            # Stopping there would be a short listing, and a short listing reads as backups
            # that are not there: an error, never a stop.
            raise ReplicaUnreachable("unreachable", f"cannot reach {self.label}: a truncated "
                                     "S3 listing without NextContinuationToken")
        return resp

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        """An object's headers and metadata. A 404 here is the object, not the bucket: it was
        deleted since it was listed (kind "missing")."""
        deadline = _Deadline(self.limit)
        try:
            with deadline:
                resp: dict[str, Any] = self.boto().head_object(**kwargs)
        except Exception as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get(
                "HTTPStatusCode") if not deadline.cut else None
            if status == 404:
                raise ReplicaUnreachable("missing", f"{kwargs.get('Key')!r} is no longer in "
                                         f"bucket {self.s3.bucket!r}") from None
            raise self.unreachable(exc, deadline.cut) from None
        return resp

    # -- the answer, read here under the cap
    def _send(self, request: Any, event_name: str = "", **_: Any) -> Any:
        """botocore's before-send hook: send with botocore's own HTTP session (its proxies,
        its trust) and read the body here, at most MAX_BODY of it, then hand botocore the
        response to parse as if it had read it itself."""
        if request.stream_output:  # a download streams; sidecar makes none
            return None
        request.stream_output = True  # botocore must not read the body: it has no cap
        resp = self._boto._endpoint.http_session.send(request)
        raw = resp.raw
        body = bytearray()
        try:
            while chunk := raw.read(65536):
                body += chunk
                if len(body) > MAX_BODY:
                    raise BadAnswer(f"an answer larger than {MAX_BODY // 2**20} MB is not an "
                                    "S3 listing")
        except BaseException:
            with contextlib.suppress(Exception):
                raw.close()
            raise
        resp._content = bytes(body)
        listing = resp.status_code == 200 and event_name.endswith(".ListObjectsV2")
        if listing and (tag := _root_tag(body)) != "ListBucketResult":
            raise BadAnswer("the answer is not S3 XML" if tag is None else
                            f"the answer is not an S3 listing (<{tag[:40]}>)")
        return resp

    # -- the one place errors get their meaning
    def unreachable(self, exc: BaseException, cut: bool = False) -> ReplicaUnreachable:
        """What an exception of a call means, as the ReplicaUnreachable to raise."""
        bucket = self.s3.bucket
        if cut:
            return ReplicaUnreachable("unreachable", f"cannot reach {self.label}: no whole "
                                      f"answer within {self.limit:g}s")
        if isinstance(exc, ReplicaUnreachable):
            return exc
        if isinstance(exc, BadAnswer):
            return ReplicaUnreachable("unreachable", f"cannot reach {self.label}: {exc}")
        if (why := certificate_problem(exc)) is not None:
            return ReplicaUnreachable("certificate", certificate_message(
                self.label, why, self.s3.ca_bundle))
        import botocore.exceptions as bce

        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            return self.answered(str(err.get("Code", "")),
                                 exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError,
                            bce.ProfileNotFound, bce.CredentialRetrievalError,
                            bce.NoAuthTokenError)):
            return ReplicaUnreachable(
                "denied", f"cannot sign a request to bucket {bucket!r} at {self.label}: {exc}; "
                "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a "
                "profile of the shared config")
        if isinstance(exc, ValueError) and not isinstance(exc, bce.BotoCoreError):
            # botocore's parser on a value that is not what the shape says (a size "lots")
            return ReplicaUnreachable("unreachable", f"cannot reach {self.label}: the answer "
                                      "is not a well-formed S3 listing")
        if isinstance(exc, bce.BotoCoreError) or _transport_error(exc):
            return ReplicaUnreachable("unreachable",
                                      f"cannot reach {self.label}: {type(exc).__name__}")
        raise exc

    def answered(self, code: str, status: int | None) -> ReplicaUnreachable:
        """What an error answer of the server means."""
        bucket = self.s3.bucket
        if code in NO_BUCKET or (status == 404 and not code):
            return ReplicaUnreachable(
                "no-bucket", f"bucket {bucket!r} does not exist at {self.label}")
        if code in DENIED or status == 403:
            return ReplicaUnreachable(
                "denied", f"access to bucket {bucket!r} at {self.label} was denied "
                f"({code or status}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(and AWS_SESSION_TOKEN with temporary keys)")
        return ReplicaUnreachable("unreachable", f"{self.label} answered {code or status}")


class BadAnswer(Exception):
    """An answer that is not what an S3 listing is (too large, not S3 XML)."""


def _root_tag(body: bytes) -> str | None:
    """The answer's root element without its namespace (servers that omit S3's xmlns are
    read as botocore reads them), or None when it is not XML."""
    parser = ET.XMLPullParser(events=("start",))
    try:
        for i in range(0, len(body), 4096):
            parser.feed(body[i:i + 4096])
            for _event, el in parser.read_events():
                return str(el.tag).rsplit("}", 1)[-1]
    except ET.ParseError:
        return None
    return None


def certificate_problem(exc: BaseException) -> str | None:
    """Why the server's certificate was not trusted, when that is what `exc` (or what it
    wraps) says; None for any other failure."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return str(e.verify_message or e.reason or "certificate verify failed")
        if "CERTIFICATE_VERIFY_FAILED" in str(e) and not isinstance(e, ssl.SSLError):
            # urllib3 keeps the ssl error as text only on some paths
            text = str(e)
            return text.split("certificate verify failed:", 1)[-1].strip(" )'\"]") or (
                "certificate verify failed")
        todo += [e.__cause__, e.__context__, *getattr(e, "args", ()),
                 *getattr(e, "kwargs", {}).values()]
    return None


def certificate_message(label: str, why: str, ca_bundle: str | None) -> str:
    trusted = (f"the CA bundle {ca_bundle}" if ca_bundle else
               "botocore's default CA bundle (neither AWS_CA_BUNDLE nor SSL_CERT_FILE is set)")
    why = re.sub(r"\s*\(_ssl\.c:\d+\)?", "", why).strip(" ()'\"[]") or "verify failed"
    return f"the certificate of {label} could not be verified with {trusted}: {why}; {CA_HINT}"


def _transport_error(exc: BaseException) -> bool:
    import http.client

    import urllib3.exceptions

    return isinstance(exc, (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError))


# ---------------------------------------------------------------- the deadline of a call

_current = threading.local()


class _Deadline:
    """Shuts down every connection a call uses once `seconds` have passed since it began.
    The connections register themselves (`_watch`) from the calling thread."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cut = False
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _current.deadline = None

    def watch(self, conn: Any) -> None:
        with self._lock:
            self._conns.append(conn)
            if self.cut:
                _shut(conn)

    def _fire(self) -> None:
        with self._lock:
            self.cut = True
            for conn in self._conns:
                _shut(conn)


def _shut(conn: Any) -> None:
    # The plain socket's shutdown, under TLS too (during the handshake the TLS socket does
    # not exist yet): it ends any read on it at once.
    for sock in (getattr(conn, "sock", None), getattr(conn, "_sidecar_socket", None)):
        if sock is not None:
            with contextlib.suppress(OSError, TypeError, ValueError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watch(conn: Any) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(conn)


_pools: dict[str, Any] = {}


def _watch_connections(client: Any) -> None:
    """Make the client's connections register with the calling thread's deadline: a new
    connection when it opens its socket, a kept-alive one when it sends a request."""
    if not _pools:
        from botocore import awsrequest

        class Watched:
            def _new_conn(self) -> Any:
                sock = super()._new_conn()  # type: ignore[misc]
                self._sidecar_socket = sock
                _watch(self)
                return sock

            def request(self, *args: Any, **kwargs: Any) -> Any:
                _watch(self)
                return super().request(*args, **kwargs)  # type: ignore[misc]

        class HTTPConnection(Watched, awsrequest.AWSHTTPConnection):
            pass

        class HTTPSConnection(Watched, awsrequest.AWSHTTPSConnection):
            pass

        class HTTPPool(awsrequest.AWSHTTPConnectionPool):
            ConnectionCls = HTTPConnection

        class HTTPSPool(awsrequest.AWSHTTPSConnectionPool):
            ConnectionCls = HTTPSConnection

        _pools.update(http=HTTPPool, https=HTTPSPool)
    # botocore's URLLib3Session hands this one dict to its pool manager and to every proxy
    # manager it makes, so the pools made from now on are ours.
    by_scheme = client._endpoint.http_session._pool_classes_by_scheme
    by_scheme.update(_pools)
