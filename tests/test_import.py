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


def test_a_block_start_loads_no_argument_parser_digest_or_dates(tmp_path) -> None:
    """A block started as the engines start it (no arguments) skips argparse, hashlib and datetime.

    Each is 1-3 ms of every block start, and of every feature of a scattered step; a block given
    arguments, or a date to parse, still gets them.
    """
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "a", "geometry": None, "properties": {}}]}))
    (tmp_path / "run.py").write_text(
        "import json, sys\n"
        "import blockkit\n"
        "@blockkit.processing_block\n"
        "def seen(fc, ctx):\n"
        "    loaded = [m for m in ('argparse', 'hashlib', 'datetime', 'shutil') if m in sys.modules]\n"
        "    (ctx.output_dir / 'seen.json').write_text(json.dumps(loaded))\n"
        "    return fc\n"
        "if __name__ == '__main__':\n"
        "    seen.run()\n")
    env = {"PATH": "/usr/bin:/bin", "BLOCKKIT_INPUT_DIR": str(tmp_path / "in"), "UP42_TASK_PARAMETERS": "{}",
           "BLOCKKIT_OUTPUT_DIR": str(tmp_path / "out"), "BLOCKKIT_QUICKLOOK_DIR": str(tmp_path / "ql")}
    done = subprocess.run([sys.executable, str(tmp_path / "run.py")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "seen.json").read_text()) == []
    given = subprocess.run([sys.executable, str(tmp_path / "run.py"), "--output", str(tmp_path / "given")],
                           env=env, capture_output=True, text=True, timeout=60)
    assert given.returncode == 0, given.stderr
    assert "argparse" in json.loads((tmp_path / "given" / "seen.json").read_text())
