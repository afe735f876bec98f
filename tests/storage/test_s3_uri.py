"""S3 URI parsing, including access-point ARNs as the bucket."""

from __future__ import annotations

import pytest

from blockkit.storage._errors import UnsupportedURI
from blockkit.storage._s3 import S3Location, parse_s3_uri

ARN = "arn:aws:s3:eu-west-2:123456789012:accesspoint/eodh-ws"


def test_plain_bucket() -> None:
    assert parse_s3_uri("s3://my-bucket/a/b.tif") == S3Location("my-bucket", "a/b.tif")
    assert parse_s3_uri("s3://my-bucket") == S3Location("my-bucket", "")
    assert parse_s3_uri("s3://my-bucket/prefix/").child("x.tif").key == "prefix/x.tif"


def test_access_point_arn() -> None:
    loc = parse_s3_uri(f"s3://{ARN}/workspaces/ws1/scene/B02.tif")
    assert loc.bucket == ARN
    assert loc.key == "workspaces/ws1/scene/B02.tif"
    assert loc.region == "eu-west-2" and loc.is_access_point
    assert parse_s3_uri(f"s3://{ARN}").key == ""
    assert parse_s3_uri("s3://arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/ap1/k").region == "us-gov-west-1"


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("s3://", "names no bucket"),
        ("s3:///key", "names no bucket"),
        ("s3://Bad_Bucket!/k", "not a valid bucket name"),
        ("s3://ab/k", "not a valid bucket name"),
        ("s3://arn:aws:s3:eu-west-2:123:accesspoint/ap/k", "12 digits"),
        ("s3://arn:aws:s3:nowhere:123456789012:accesspoint/ap/k", "not a region"),
        ("s3://arn:aws:iam:eu-west-2:123456789012:accesspoint/ap/k", "not an S3 access point"),
        ("s3://arn:aws:s3:eu-west-2:123456789012:bucket/ap/k", "accesspoint/<name>"),
        ("s3://arn:aws:s3:eu-west-2:123456789012:accesspoint/", "accesspoint/<name>"),
        ("s3://arn:aws:s3", "malformed access-point ARN"),
        ("http://bucket/key", "not an s3:// URI"),
    ],
)
def test_malformed(uri: str, fragment: str) -> None:
    with pytest.raises(UnsupportedURI, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_s3_uri(uri)
