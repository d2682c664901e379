"""The small S3 client reads only a real listing as a listing: any other 200 answer is an
error, never an empty bucket (an empty bucket lets a start begin fresh over the backups)."""

from __future__ import annotations

import pytest

from sidecar import config, s3list

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
ENV = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-value-5678"}


def client(monkeypatch: pytest.MonkeyPatch, body: bytes) -> s3list.Client:
    r = config.Replica(url="s3://bkt/app.db", s3=config.S3(
        bucket="bkt", prefix="app.db", endpoint="http://127.0.0.1:9", region="auto",
        force_path_style=True, access_key_id="AKIDEXAMPLE", secret_access_key="secret-value-5678"))
    c = s3list.Client(r, 5.0, env=ENV)
    monkeypatch.setattr(c, "_get", lambda query: (200, body))
    return c


@pytest.mark.parametrize("body", [
    b"<html><body>Welcome to the proxy</body></html>",
    b'<ListAllMyBucketsResult ' + NS.encode() + b'><Buckets/></ListAllMyBucketsResult>',
    b"<Error><Code>Nope</Code></Error>",
])
def test_a_200_that_is_not_a_listing_is_unreachable_not_empty(
        monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    """A proxy page or another API's answer with status 200 raises, it is not an empty list."""
    with pytest.raises(s3list.Unreachable):
        client(monkeypatch, body).list_objects_v2(Bucket="bkt", Prefix="app.db/")


@pytest.mark.parametrize("ns", [NS, ""])
def test_a_listing_is_read_with_or_without_s3s_namespace(monkeypatch: pytest.MonkeyPatch,
                                                        ns: str) -> None:
    """Keys and sizes come back whether or not the server sends S3's xmlns, as botocore reads."""
    body = (f"<ListBucketResult {ns}><Name>bkt</Name><Contents><Key>app.db/0000/a.ltx</Key>"
            f"<Size>42</Size></Contents><CommonPrefixes><Prefix>app.db/0001/</Prefix>"
            f"</CommonPrefixes></ListBucketResult>").encode()
    out = client(monkeypatch, body).list_objects_v2(Bucket="bkt", Prefix="app.db/")
    assert out["Contents"][0]["Key"] == "app.db/0000/a.ltx" and out["Contents"][0]["Size"] == 42
    assert out["CommonPrefixes"] == [{"Prefix": "app.db/0001/"}]


def test_an_empty_listing_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real listing with no keys is the one answer that means empty."""
    body = f"<ListBucketResult {NS}><Name>bkt</Name><KeyCount>0</KeyCount></ListBucketResult>"
    assert client(monkeypatch, body.encode()).list_objects_v2(Bucket="bkt", Prefix="x/") == {
        "IsTruncated": False}


def test_a_truncated_page_gives_its_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page with more to come says so and hands on the token, as boto3's answer does."""
    body = (f"<ListBucketResult {NS}><IsTruncated>true</IsTruncated><NextContinuationToken>"
            f"1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken><Contents>"
            f"<Key>k</Key><Size>1</Size></Contents></ListBucketResult>").encode()
    out = client(monkeypatch, body).list_objects_v2(Bucket="bkt", Prefix="")
    assert out["IsTruncated"] is True
    assert out["NextContinuationToken"] == "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="


def test_a_truncated_page_without_a_token_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping there would be a short listing (backups read as missing): an error instead."""
    body = (f"<ListBucketResult {NS}><IsTruncated>true</IsTruncated><Contents><Key>k</Key>"
            f"<Size>1</Size></Contents></ListBucketResult>").encode()
    with pytest.raises(s3list.Unreachable):
        client(monkeypatch, body).list_objects_v2(Bucket="bkt", Prefix="")


def test_the_token_goes_out_as_continuation_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next page is asked for with the token (and signed with it: test_s3list_sign)."""
    c = client(monkeypatch, f"<ListBucketResult {NS}/>".encode())
    seen: list[dict[str, str]] = []
    monkeypatch.setattr(c, "_get", lambda query: (seen.append(query), (200, b"<ListBucketResult/>"))[1])
    c.list_objects_v2(Bucket="bkt", Prefix="p/", ContinuationToken="a/b+c=")
    assert seen[0]["continuation-token"] == "a/b+c="


def test_a_garbled_size_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing with a size that is not a number raises the client's error, not ValueError."""
    body = (f"<ListBucketResult {NS}><Contents><Key>k</Key><Size>lots</Size></Contents>"
            f"</ListBucketResult>").encode()
    with pytest.raises(s3list.Unreachable):
        client(monkeypatch, body).list_objects_v2(Bucket="bkt", Prefix="")
