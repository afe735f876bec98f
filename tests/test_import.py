"""`import blockkit` stays light: no heavy or optional dependency is imported."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("rasterio", "shapely", "numpy", "jsonschema", "fastjsonschema", "typer", "rich", "boto3", "botocore", "docker", "pystac", "yaml", "cryptography")


def test_import_blockkit_imports_no_heavy_module() -> None:
    code = (
        "import json, sys\n"
        "import blockkit\n"
        "from blockkit import FeatureCollection, BlockContext, Query, processing_block, data_block\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_public_api() -> None:
    import blockkit

    for name in blockkit.__all__:
        assert hasattr(blockkit, name), name
    assert blockkit.ExitCode.OUT_OF_MEMORY == 137
