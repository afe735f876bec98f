"""Tiny real blocks written into tmp_path for runner tests (plain Python, UP42-style entry)."""

from __future__ import annotations

import json
from pathlib import Path

MISC = {"misc": {"up42_standard": {}}}

SOURCE = '''
import blockkit
from blockkit import FeatureCollection

@blockkit.data_block
def make(query, ctx):
    out = []
    for i in range(ctx.params["count"]):
        rel = f"item{i}.txt"
        ctx.output_path(rel).write_text(f"{ctx.params['text']} {i}\\n")
        out.append(ctx.new_feature(geometry=None, data_path=rel, properties={"i": i}, id=f"item{i}"))
    return FeatureCollection(out)

if __name__ == "__main__":
    make.run()
'''

UPPER = '''
import os, sys, time
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def upper(fc, ctx):
    mode = os.environ.get("BEHAVIOUR") or ctx.params.get("behaviour")
    if mode == "crash":
        raise RuntimeError("boom")
    if mode == "sleep":
        time.sleep(60)
    if mode == "alloc":  # touch 3 GB: past the 2 GB of machine type "small"
        blob = b"x" * (3 << 30)
    if mode == "exit":
        sys.exit(int(ctx.params["code"]))
    if mode == "bad-output":
        return FeatureCollection([ctx.new_feature(geometry=None, data_path="missing.txt")])
    out = []
    for f in fc:
        rel = f["properties"]["up42.data_path"].replace("/", "_") + ".upper"
        ctx.output_path(rel).write_text(ctx.input_path(f).read_text().upper())
        out.append(ctx.derive_feature(f, data_path=rel, properties={"upper": True}))
    return FeatureCollection(out)

if __name__ == "__main__":
    upper.run()
'''


def write_block(root: Path, name: str, *, kind: str, source: str, params: dict, inputs: dict | None = None,
                machine: str | None = None, options: dict | None = None) -> Path:
    """Write a block folder with a manifest (optional machine type and `blockkit` options) and src/run.py."""
    folder = root / name
    (folder / "src").mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "_up42_specification_version": 2,
        "name": name,
        "type": kind,
        "parameters": params,
        "input_capabilities": {} if kind == "data" else (inputs if inputs is not None else MISC),
        "output_capabilities": MISC,
    }
    if machine:
        manifest["machine"] = {"type": machine}
    if options:
        manifest["blockkit"] = options
    (folder / "UP42Manifest.json").write_text(json.dumps(manifest))
    (folder / "src" / "run.py").write_text(source)
    return folder


def make_blocks(root: Path) -> dict[str, Path]:
    """A data block `source` and a processing block `upper` that can misbehave on request."""
    return {
        "source": write_block(root, "source", kind="data", source=SOURCE, params={
            "count": {"type": "integer", "default": 2, "minimum": 0, "maximum": 100},
            "text": {"type": "string", "default": "hello"},
        }),
        "upper": write_block(root, "upper", kind="processing", source=UPPER, params={
            "behaviour": {"type": "string", "enum": ["ok", "crash", "sleep", "exit", "bad-output", "alloc"], "default": "ok"},
            "code": {"type": "integer", "default": 0},
        }),
    }
