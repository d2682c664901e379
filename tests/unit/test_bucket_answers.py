"""sidecar's S3 client (bucket.client: boto3) reads only a real listing as a listing: any other
200 answer is an error, never an empty bucket (an empty bucket lets a start begin fresh over
the backups); and every failure means one of unreachable, denied, no-bucket. A plain HTTP
server on 127.0.0.1 gives the answers (no S3 behind it: each test says what it sends)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar import config
from sidecar.bucket import client as bucket
from sidecar.bucket import replica
from sidecar.errors import ReplicaUnreachable

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
KEY, SECRET = "AKIDEXAMPLE", "secret-value-5678"
ENV = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}


class Answers:
    """Answers each request with the next (status, body) of `queue` (the last one again when
    it runs out); `seen` holds each request's (path, query, headers)."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, bytes]] = [(200, b"")]
        self.seen: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        answers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                answers.seen.append((url.path, parse_qs(url.query, keep_blank_values=True),
                                     {k.lower(): v for k, v in self.headers.items()}))
                status, body = (answers.queue.pop(0) if len(answers.queue) > 1
                                else answers.queue[0])
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:  # the status only: a HEAD answer has no body
                url = urlsplit(self.path)
                answers.seen.append((url.path, {}, {k.lower(): v for k, v in self.headers.items()}))
                status, _ = (answers.queue.pop(0) if len(answers.queue) > 1 else answers.queue[0])
                self.send_response(status)
                self.send_header("x-amz-meta-litestream-timestamp", "2026-12-07T04:00:01Z")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: str | bytes, status: int = 200) -> None:
        self.queue = [(status, body.encode() if isinstance(body, str) else body)]


@pytest.fixture(scope="module")
def server() -> Iterator[Answers]:
    s = Answers()
    yield s
    s.server.shutdown()


def _replica(endpoint: str, key: str = KEY, secret: str = SECRET) -> config.Replica:
    return config.Replica(url="s3://bkt/app.db", s3=config.S3(
        bucket="bkt", prefix="app.db", endpoint=endpoint, region="auto",
        force_path_style=True, access_key_id=key, secret_access_key=secret))


def client(server: Answers, body: str | bytes = b"", status: int = 200,
           env: dict[str, str] | None = None, **creds: str) -> bucket.Client:
    server.answer(body, status)
    return bucket.Client(_replica(server.endpoint, **creds), 5.0, env=ENV if env is None else env)


@pytest.mark.parametrize("body", [
    b"<html><body>Welcome to the proxy</body></html>",
    b'<ListAllMyBucketsResult ' + NS.encode() + b'><Buckets/></ListAllMyBucketsResult>',
    b"<Error><Code>Nope</Code></Error>",
    b"not xml at all",
    b"",
])
def test_a_200_that_is_not_a_listing_is_unreachable_not_empty(server: Answers,
                                                              body: bytes) -> None:
    """A proxy page or another API's answer with status 200 raises, it is not an empty list."""
    with pytest.raises(ReplicaUnreachable, match=r"not S3 XML|not an S3 listing") as exc:
        client(server, body).list_objects_v2(Bucket="bkt", Prefix="app.db/")
    assert exc.value.kind == "unreachable"


def test_a_non_listing_is_never_an_empty_replica(server: Answers) -> None:
    """Through the store, as the start-up probe asks: an error, not Contents("empty")."""
    server.answer("<html><body>hello</body></html>")
    store = replica.S3Store(_replica(server.endpoint), 5.0)
    with pytest.raises(ReplicaUnreachable, match="not an S3 listing"):
        store.contents()


@pytest.mark.parametrize("ns", [NS, ""])
def test_a_listing_is_read_with_or_without_s3s_namespace(server: Answers, ns: str) -> None:
    """Keys and sizes come back whether or not the server sends S3's xmlns."""
    body = (f"<ListBucketResult {ns}><Name>bkt</Name><Contents><Key>app.db/0000/a.ltx</Key>"
            f"<Size>42</Size></Contents><CommonPrefixes><Prefix>app.db/0001/</Prefix>"
            f"</CommonPrefixes></ListBucketResult>")
    out = client(server, body).list_objects_v2(Bucket="bkt", Prefix="app.db/")
    assert out["Contents"][0]["Key"] == "app.db/0000/a.ltx" and out["Contents"][0]["Size"] == 42
    assert out["CommonPrefixes"] == [{"Prefix": "app.db/0001/"}]


def test_an_empty_listing_is_empty(server: Answers) -> None:
    """A real listing with no keys is the one answer that means empty."""
    body = f"<ListBucketResult {NS}><Name>bkt</Name><KeyCount>0</KeyCount></ListBucketResult>"
    out = client(server, body).list_objects_v2(Bucket="bkt", Prefix="x/")
    assert "Contents" not in out and not out.get("IsTruncated")
    assert replica.S3Store(_replica(server.endpoint), 5.0).contents() == replica.Contents("empty")


def test_a_truncated_page_gives_its_token(server: Answers) -> None:
    body = (f"<ListBucketResult {NS}><IsTruncated>true</IsTruncated><NextContinuationToken>"
            f"1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken><Contents>"
            f"<Key>k</Key><Size>1</Size></Contents></ListBucketResult>")
    out = client(server, body).list_objects_v2(Bucket="bkt", Prefix="")
    assert out["IsTruncated"] is True
    assert out["NextContinuationToken"] == "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="


def test_a_truncated_page_without_a_token_is_unreachable(server: Answers) -> None:
    """Stopping there would be a short listing (backups read as missing): an error instead."""
    body = (f"<ListBucketResult {NS}><IsTruncated>true</IsTruncated><Contents><Key>k</Key>"
            f"<Size>1</Size></Contents></ListBucketResult>")
    with pytest.raises(ReplicaUnreachable, match="without NextContinuationToken"):
        client(server, body).list_objects_v2(Bucket="bkt", Prefix="")


def test_the_token_goes_out_as_continuation_token_path_style(server: Answers) -> None:
    """The next page is asked for with the token, path-style: /BUCKET?list-type=2&..."""
    c = client(server, f"<ListBucketResult {NS}/>")
    server.seen.clear()
    c.list_objects_v2(Bucket="bkt", Prefix="p/", ContinuationToken="a/b+c=")
    path, query, _headers = server.seen[-1]
    assert path == "/bkt" and query["continuation-token"] == ["a/b+c="]
    assert query["list-type"] == ["2"] and query["prefix"] == ["p/"]


def test_a_garbled_size_is_unreachable(server: Answers) -> None:
    """A listing with a size that is not a number is the client's error, not ValueError."""
    body = (f"<ListBucketResult {NS}><Contents><Key>k</Key><Size>lots</Size></Contents>"
            f"</ListBucketResult>")
    with pytest.raises(ReplicaUnreachable) as exc:
        client(server, body).list_objects_v2(Bucket="bkt", Prefix="")
    assert exc.value.kind == "unreachable"


@pytest.mark.parametrize("status,body,kind", [
    (403, "<Error><Code>AccessDenied</Code><Message>no</Message></Error>", "denied"),
    (403, "<Error><Code>InvalidAccessKeyId</Code></Error>", "denied"),
    (400, "<Error><Code>ExpiredToken</Code></Error>", "denied"),
    (404, "<Error><Code>NoSuchBucket</Code></Error>", "no-bucket"),
    (500, "<Error><Code>InternalError</Code></Error>", "unreachable"),
    (503, "", "unreachable"),
])
def test_error_answers_have_one_meaning_each(server: Answers, status: int, body: str,
                                             kind: str) -> None:
    with pytest.raises(ReplicaUnreachable) as exc:
        client(server, body, status).list_objects_v2(Bucket="bkt", Prefix="")
    assert exc.value.kind == kind, exc.value.message
    assert SECRET not in exc.value.message


def test_a_refused_connection_is_unreachable() -> None:
    """Nothing listens: unreachable (retried by the probe), named by the endpoint."""
    from testkit.net import free_port

    c = bucket.Client(_replica(f"http://127.0.0.1:{free_port()}"), 1.0, env=ENV)
    with pytest.raises(ReplicaUnreachable, match=r"cannot reach http://127\.0\.0\.1") as exc:
        c.list_objects_v2(Bucket="bkt", Prefix="")
    assert exc.value.kind == "unreachable"


def test_a_session_token_goes_only_with_the_key_it_was_issued_with(server: Answers) -> None:
    """AWS_SESSION_TOKEN is sent (signed) with AWS_ACCESS_KEY_ID's key, never with others."""
    env = {**ENV, "AWS_SESSION_TOKEN": "FwoGZXIvYXdzE/+token="}
    empty = f"<ListBucketResult {NS}/>"
    client(server, empty, env=env).list_objects_v2(Bucket="bkt", Prefix="")
    headers = server.seen[-1][2]
    assert headers["x-amz-security-token"] == "FwoGZXIvYXdzE/+token="
    assert "x-amz-security-token" in headers["authorization"]  # signed with it
    client(server, empty, env=env, key="another", secret="s").list_objects_v2(
        Bucket="bkt", Prefix="")
    assert "x-amz-security-token" not in server.seen[-1][2]


@pytest.mark.parametrize("status,kind", [(404, "missing"), (403, "denied"),
                                         (500, "unreachable")])
def test_a_head_404_is_the_object_gone_not_the_bucket(server: Answers, status: int,
                                                      kind: str) -> None:
    """HEAD of an object: 404 means it was deleted since it was listed (restore --list skips
    it), never a missing bucket; other errors keep their meaning."""
    with pytest.raises(ReplicaUnreachable) as exc:
        client(server, b"", status).head_object(Bucket="bkt", Key="app.db/0000/x.ltx")
    assert exc.value.kind == kind, exc.value.message


def test_a_head_gives_the_objects_metadata(server: Answers) -> None:
    """A HEAD's answer carries the object's metadata (Litestream's LTX timestamp)."""
    resp = client(server, b"", 200).head_object(Bucket="bkt", Key="app.db/0000/x.ltx")
    assert resp["Metadata"] == {"litestream-timestamp": "2026-12-07T04:00:01Z"}
