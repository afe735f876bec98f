"""The wheel carries what installed users need: schemas, the block template and Dockerfile.base."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECK = r'''
import json, sys
from pathlib import Path
import blockkit
from blockkit.cli.new_cmd import create_block
from blockkit.contract.manifest import load_manifest
from blockkit.runner.build import blockkit_source_root, find_dockerfile

here = Path(sys.argv[1])
assert Path(blockkit.__file__).resolve().is_relative_to(here), blockkit.__file__
assert blockkit_source_root() is None  # an installed copy, not the repository
block = create_block("wheel-block", Path(sys.argv[2]))
print(json.dumps({
    "dockerfile": str(find_dockerfile(None)),
    "manifest": load_manifest(block / "UP42Manifest.json").name,
    "files": sorted(p.relative_to(block).as_posix() for p in block.rglob("*") if p.is_file()),
}))
'''


def test_installed_wheel_has_template_and_dockerfile(tmp_path: Path) -> None:
    import json

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("blockkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "blockkit/docker/Dockerfile.base" in names
    assert "blockkit/templates/block/src/run.py" in names and "blockkit/schemas/data.schema.json" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    (tmp_path / "work").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(site), str(tmp_path / "work")],
        cwd=tmp_path / "work", env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert Path(result["dockerfile"]) == site / "blockkit" / "docker" / "Dockerfile.base"
    assert result["manifest"] == "wheel-block"
    assert {"UP42Manifest.json", "src/run.py", "tests/test_block.py"} <= set(result["files"])
