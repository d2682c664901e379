"""One S3 request, ListObjectsV2, signed with SigV4 by the standard library: the client of the
start-up probe and of the lag checks, which only ever list.

Every start with a missing database asks the bucket whether it holds a backup before anything
else can happen. With boto3 that question cost more than the rest of the start together
(importing boto3 and building an S3 client: 0.2-0.4 s, ~24 MB, against a whole start budget of
about twice a shell plus Litestream), and the lag checks' boto3 client was what an idle
`sidecar run` held most of its memory for. So both list with this instead
(replica.listing_store), and only where it is equivalent to boto3 (`usable`): a configured
endpoint, credentials given to sidecar or in the AWS_* variables, no proxy or profile variable.
Anywhere else (AWS's own endpoints, profiles, instance roles, proxies) they use boto3 as every
other S3 call does.

`list_objects_v2` takes and returns the subset of boto3's shapes that replica.S3Store reads
(pages too: `ContinuationToken` in, `IsTruncated` and `NextContinuationToken` out, so a
directory entry's listing of many thousand keys stays on this client), so the store does not
care which client it holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import os
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from sidecar.config import Replica

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# A page of 1,000 keys is a few hundred KB; anything far larger is not a listing.
MAX_BODY = 16 * 1024 * 1024
# Variables that change how boto3 reaches or authenticates to S3 in ways this client does not
# copy: when one is set, the listing callers use boto3.
_BOTO_ONLY = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AWS_PROFILE",
              "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


class Answered(Exception):
    """The server answered with an error: `code` from its XML body (may be empty), `status`."""

    def __init__(self, code: str, status: int):
        super().__init__(f"{code or status}")
        self.code = code
        self.status = status


class Unreachable(Exception):
    """No answer: connection refused, reset, timed out, or not HTTP/S3 at all."""


def credentials(replica: Replica, env: Mapping[str, str] = os.environ) -> (
        tuple[str, str, str | None] | None):
    """(key, secret, session token) for this replica, or None when only boto3's own chain
    (profiles, instance roles) can find them. Temporary credentials in the environment come
    with AWS_SESSION_TOKEN: it goes with the key it was issued with, never with another."""
    s3 = replica.s3
    assert s3 is not None
    key, secret = s3.access_key_id, s3.secret_access_key
    if not (key and secret):
        return None
    token = None
    if key == env.get("AWS_ACCESS_KEY_ID") and secret == env.get("AWS_SECRET_ACCESS_KEY"):
        token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    return key, secret, token


def usable(replica: Replica, env: Mapping[str, str] = os.environ) -> bool:
    s3 = replica.s3
    return (s3 is not None and bool(s3.endpoint) and credentials(replica, env) is not None
            and not any(env.get(name) for name in _BOTO_ONLY))


class Client:
    def __init__(self, replica: Replica, timeout: float = 5.0,
                 env: Mapping[str, str] = os.environ):
        s3 = replica.s3
        assert s3 is not None and s3.endpoint
        creds = credentials(replica, env)
        assert creds is not None
        self.key, self.secret, self.token = creds
        self.region = s3.region or "us-east-1"
        self.bucket = s3.bucket
        url = urlsplit(s3.endpoint)
        self.https = url.scheme == "https"
        self.port = url.port
        netloc = url.hostname or ""
        if s3.force_path_style:
            self.host, self.path = netloc, f"/{quote(s3.bucket, safe='')}/"
        else:
            self.host, self.path = f"{s3.bucket}.{netloc}", "/"
        default_port = 443 if self.https else 80
        self.host_header = self.host if self.port in (None, default_port) else (
            f"{self.host}:{self.port}")
        self.connect_timeout = max(0.5, min(timeout, 5.0))  # as make_client's botocore config
        self.read_timeout = max(1.0, timeout)
        self.cafile = env.get("AWS_CA_BUNDLE") or None

    def list_objects_v2(self, *, Bucket: str, Prefix: str = "", MaxKeys: int = 1000,
                        Delimiter: str | None = None, StartAfter: str | None = None,
                        ContinuationToken: str | None = None) -> dict[str, Any]:
        assert Bucket == self.bucket
        query = {"list-type": "2", "prefix": Prefix, "max-keys": str(MaxKeys)}
        if Delimiter is not None:
            query["delimiter"] = Delimiter
        if StartAfter is not None:
            query["start-after"] = StartAfter
        if ContinuationToken is not None:
            query["continuation-token"] = ContinuationToken
        status, body = self._get(query)
        if status != 200:
            code = ""
            with contextlib.suppress(ET.ParseError):
                code = ET.fromstring(body).findtext("Code") or ""
            raise Answered(code, status)
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise Unreachable("the answer is not S3 XML") from None
        # Element names are matched without their namespace (servers that omit S3's xmlns
        # are read as botocore reads them), and the answer must BE a listing: any other 200
        # (a proxy's page, another service) would otherwise read as an empty bucket, and an
        # empty bucket lets a start begin a fresh database over the real backups.
        for el in root.iter():
            el.tag = el.tag.rsplit("}", 1)[-1]
        if root.tag != "ListBucketResult":
            raise Unreachable(f"the answer is not an S3 listing (<{root.tag[:40]}>)")
        contents = []
        try:
            for item in root.iter("Contents"):
                lm = item.findtext("LastModified")
                contents.append({
                    "Key": item.findtext("Key") or "",
                    "Size": int(item.findtext("Size") or 0),
                    **({"LastModified": _parse_time(lm)} if lm else {}),
                })
        except ValueError:
            raise Unreachable("the answer is not a well-formed S3 listing") from None
        prefixes = [{"Prefix": p.findtext("Prefix") or ""} for p in root.iter("CommonPrefixes")]
        out: dict[str, Any] = {"IsTruncated": root.findtext("IsTruncated") == "true"}
        if contents:
            out["Contents"] = contents
        if prefixes:
            out["CommonPrefixes"] = prefixes
        if out["IsTruncated"]:
            # A truncated page without a token to go on would end a listing early, and a
            # short listing reads as backups that are not there: an error, never a stop.
            token = root.findtext("NextContinuationToken")
            if not token:
                raise Unreachable("a truncated S3 listing without NextContinuationToken")
            out["NextContinuationToken"] = token
        return out

    def _get(self, query: dict[str, str]) -> tuple[int, bytes]:
        now = datetime.now(UTC)
        headers = self.sign("GET", query, now)
        target = self.path + "?" + _canonical_query(query)
        conn: http.client.HTTPConnection
        if self.https:
            ctx = ssl.create_default_context(cafile=self.cafile)
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                               context=ctx)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        # A socket timeout bounds each read, not the answer: a server that sends a byte now
        # and then would hold a probe (and the start behind it) for ever. The whole request
        # is cut off at its deadline instead, and is then unreachable, whatever arrived.
        limit = self.connect_timeout + self.read_timeout
        cut = threading.Event()

        def cut_off() -> None:
            cut.set()
            sock = conn.sock
            if sock is not None:  # the plain socket's shutdown, under TLS too: ends any read
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

        timer = threading.Timer(limit, cut_off)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            assert conn.sock is not None
            if cut.is_set():  # the deadline passed while connecting (a slow name lookup)
                raise OSError
            conn.sock.settimeout(self.read_timeout)
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            body = bytearray()
            while chunk := resp.read(65536):
                body += chunk
                if len(body) > MAX_BODY:
                    raise Unreachable(f"an answer larger than {MAX_BODY // 2**20} MB is not "
                                      "an S3 listing")
            if cut.is_set():
                raise OSError
            return resp.status, bytes(body)
        except (OSError, http.client.HTTPException) as exc:
            if cut.is_set():
                raise Unreachable(f"no whole answer within {limit:g}s") from None
            raise Unreachable(type(exc).__name__) from None
        finally:
            timer.cancel()
            conn.close()

    def sign(self, method: str, query: dict[str, str], now: datetime) -> dict[str, str]:
        """SigV4 headers for a request without a body (AWS's "Signature Version 4")."""
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        headers = {"host": self.host_header, "x-amz-content-sha256": _EMPTY_SHA256,
                   "x-amz-date": amz_date}
        if self.token:
            headers["x-amz-security-token"] = self.token
        signed = ";".join(sorted(headers))
        canonical = "\n".join([
            method, self.path, _canonical_query(query),
            "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
            signed, _EMPTY_SHA256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        k = _hmac(f"AWS4{self.secret}".encode(), day)
        for part in (self.region, "s3", "aws4_request"):
            k = _hmac(k, part)
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        return headers


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                    for k, v in sorted(query.items()))


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
