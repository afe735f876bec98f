"""Tiny real blocks written into a folder for the CWL export tests."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from tests.runner.blocks import write_block as _write_block

# The export tests' blocks declare machine type "medium" (CWL ResourceRequirement is checked).
write_block = partial(_write_block, machine="medium")

SOURCE = '''
import blockkit
from blockkit import FeatureCollection

@blockkit.data_block
def make(query, ctx):
    out = []
    for i in range(ctx.params["count"]):
        rel = f"item{i}.txt"
        ctx.output_path(rel).write_text(f"{ctx.params['text']} {i}\\n")
        out.append(ctx.new_feature(geometry={"type": "Point", "coordinates": [13.4 + i, 52.5]},
                                   data_path=rel, properties={"i": i, "text": ctx.params["text"]}, id=f"item{i}"))
    return FeatureCollection(out)

if __name__ == "__main__":
    make.run()
'''

UPPER = '''
import sys
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def upper(fc, ctx):
    if ctx.params["fail_with"]:
        print("[WRONG_INPUT_ERROR] asked to fail", file=sys.stderr)
        sys.exit(ctx.params["fail_with"])
    out = []
    for f in fc:
        rel = f["properties"]["up42.data_path"].replace("/", "_") + ".upper"
        ctx.output_path(rel).write_text(ctx.input_path(f).read_text().upper())
        out.append(ctx.derive_feature(f, data_path=rel, properties={"upper": True, "scale": ctx.params["scale"],
                                                                    "tags": ctx.params["tags"], "aoi": ctx.params["aoi"]}))
    return FeatureCollection(out)

if __name__ == "__main__":
    upper.run()
'''

SECRETIVE = '''
import hashlib
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def secretive(fc, ctx):
    digest = hashlib.sha256(ctx.params["password"].encode()).hexdigest()
    return FeatureCollection([ctx.derive_feature(f, properties={"password_sha256": digest}) for f in fc])

if __name__ == "__main__":
    secretive.run()
'''



def make_blocks(root: Path) -> dict[str, Path]:
    """`source` (data), `upper` (processing, can fail on request) and `secretive` (a secret parameter)."""
    return {
        "source": write_block(root, "cwl-source", kind="data", source=SOURCE, options={"network": True}, params={
            "count": {"type": "integer", "default": 2, "minimum": 0, "maximum": 100},
            "text": {"type": "string", "default": "hello"},
        }),
        "upper": write_block(root, "cwl-upper", kind="processing", source=UPPER, params={
            "fail_with": {"type": "integer", "default": 0},
            "scale": {"type": "number", "default": 1.5},
            "tags": {"type": "array", "default": ["a", "b"]},
            "aoi": {"type": "geometry"},
            "dotted.name": {"type": "string", "default": "x"},
        }),
        "secretive": write_block(root, "cwl-secretive", kind="processing", source=SECRETIVE, params={
            "password": {"type": "string", "required": True, "secret": True},
        }),
    }
