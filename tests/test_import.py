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


def test_import_blockkit_leaves_out_what_only_some_blocks_use() -> None:
    """Every block (and every feature of a scattered step) pays for what `import blockkit` loads.

    `uuid` (with `platform`, about 2 ms) is imported when a feature is made without an id.
    """
    code = (
        "import json, sys\n"
        "import blockkit\n"
        "before = 'uuid' in sys.modules\n"
        "from blockkit.runtime._propagation import make_feature\n"
        "kept = make_feature(geometry=None, feature_id='a')['id'] == 'a' and 'uuid' not in sys.modules\n"
        "made = len(make_feature(geometry=None)['id']) == 36 and 'uuid' in sys.modules\n"
        "print(json.dumps([before, kept, made]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [False, True, True]
