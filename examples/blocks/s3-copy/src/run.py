"""s3-copy: a block that touches its data only through S3 (boto3 against $S3_ENDPOINT), like Pachyderm's S3 example."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
from botocore.config import Config

import blockkit
from blockkit import BlockContext, FeatureCollection, WrongInputError

INPUT, OUTPUT = "input", "out"


def s3_client() -> Any:
    """A boto3 S3 client for the gateway beside the block (credentials come from AWS_* variables)."""
    endpoint = os.environ.get("S3_ENDPOINT")
    if not endpoint:
        raise WrongInputError("S3_ENDPOINT is not set: run this block with the S3 gateway (manifest blockkit.s3)")
    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))


def list_keys(s3: Any, bucket: str) -> list[str]:
    """Every key in the bucket (ListObjectsV2, paginated)."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def copy_features(s3: Any) -> dict[str, Any]:
    """Copy each object linked from the input's data.json to `out`, with a stats file; return the new data.json."""
    keys = set(list_keys(s3, INPUT))
    if "data.json" not in keys:
        raise WrongInputError(f"bucket {INPUT!r} has no data.json ({len(keys)} object(s))")
    fc = json.loads(s3.get_object(Bucket=INPUT, Key="data.json")["Body"].read())
    features = []
    for feature in fc.get("features", []):
        props = dict(feature.get("properties") or {})
        key = props.get("up42.data_path")
        if not key or key not in keys:
            raise WrongInputError(f"feature {feature.get('id')!r}: {key!r} is not an object in {INPUT!r}")
        s3.copy_object(Bucket=OUTPUT, Key=key, CopySource={"Bucket": INPUT, "Key": key})
        head = s3.head_object(Bucket=OUTPUT, Key=key)
        fid = str(feature.get("id") or key.rsplit("/", 1)[-1])
        stats = {"id": fid, "key": key, "size": head["ContentLength"], "etag": head["ETag"].strip('"')}
        stats_key = f"{fid}.stats.json"
        s3.put_object(Bucket=OUTPUT, Key=stats_key, Body=json.dumps(stats, indent=1).encode(),
                      ContentType="application/json")
        props["s3_copy.size"] = stats["size"]
        props["s3_copy.stats"] = stats_key
        features.append({**feature, "properties": props})
    return {"type": "FeatureCollection", "features": features}


@blockkit.processing_block
def s3_copy(fc: FeatureCollection, ctx: BlockContext) -> None:
    """Ignores the input folder: everything goes through the gateway; data.json is put into `out`."""
    s3 = s3_client()
    result = copy_features(s3)
    s3.put_object(Bucket=OUTPUT, Key="data.json", Body=json.dumps(result, indent=1).encode(),
                  ContentType="application/geo+json")
    return None


if __name__ == "__main__":
    s3_copy.run()
