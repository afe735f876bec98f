"""The wheel carries what installed users need: schemas, the block template and Dockerfile.base."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = r'''
import json, sys
from pathlib import Path
import blockkit
from blockkit.cli._new_cmd import create_block
from blockkit.contract._manifest import load_manifest
from blockkit.runner._build import blockkit_source_root, find_dockerfile

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


@pytest.mark.slow
def test_installed_wheel_has_template_and_dockerfile(tmp_path: Path) -> None:
    import json

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    # The distribution is blockkit-eo (`blockkit` on the package index is another project).
    wheel = next((tmp_path / "dist").glob("blockkit_eo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "\nName: blockkit-eo\n" in metadata
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "blockkit = blockkit.cli._entry:main" in entry_points
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
    assert {"UP42Manifest.json", "src/run.py", "tests/test_block.py", "Dockerfile"} <= set(result["files"])


def test_template_dockerfile_is_up42_ready_and_not_used_by_build(tmp_path: Path) -> None:
    from blockkit.cli._new_cmd import create_block
    from blockkit.runner._build import own_dockerfile

    block = create_block("ready-block", tmp_path)
    text = (block / "Dockerfile").read_text()
    assert 'ARG manifest' in text and 'LABEL "up42_manifest"=$manifest' in text
    assert 'pip install "blockkit-eo"' in text and "pip install blockkit\n" not in text
    assert own_dockerfile(block) is None  # `blockkit build` keeps using Dockerfile.base for it


def test_the_command_without_the_runner_extra_says_what_to_install() -> None:
    """Where only the SDK is installed (a block image), `blockkit` is one line and the contract's exit code."""
    blocker = (
        "import sys, importlib.abc\n"
        "class NoRunner(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('typer', 'rich'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoRunner())\n"
        "sys.argv = ['blockkit', 'run', '.']\n"
        "from blockkit.cli._entry import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines() == [
        "[WRONG_INPUT_ERROR] the blockkit command line needs the runner (typer is not installed): "
        "pip install 'blockkit-eo[runner]'"]
