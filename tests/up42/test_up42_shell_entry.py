"""UP42-style blocks whose entry is a shell script get their block venv on the process engine.

UP42's public blocks often start with `CMD ["/block/run.sh"]` or `sh run.sh`, and the script
calls `python ...`: in the image that python has the block's requirements installed; on the
process engine it must be the block venv's, with VIRTUAL_ENV set, exactly as for a `python` entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockkit.runner._process_engine import ProcessEngine

from .conftest import in_ci

BLOCKKIT = Path(sys.executable).with_name("blockkit")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "blocks"

MANIFEST = {
    "_up42_specification_version": 2,
    "name": "up42-shell",
    "type": "processing",
    "tags": ["test"],
    "display_name": "UP42-style shell entry",
    "description": "A shell entry that calls python with a requirement only its venv has.",
    "parameters": {},
    "machine": {"type": "small"},
    "input_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
    "output_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
}

RUN_PY = '''
import json, os, shutil, sys
import tabulate  # only in the block venv: neither blockkit's environment nor the system Python has it

fc = json.load(open("/tmp/input/data.json"))
for feature in fc["features"]:
    shutil.copy(os.path.join("/tmp/input", feature["properties"]["up42.data_path"]), "/tmp/output")
    feature["properties"]["table"] = tabulate.tabulate([[1, 2]], tablefmt="plain")
    feature["properties"]["venv"] = os.environ.get("VIRTUAL_ENV", "")
    feature["properties"]["prefix"] = sys.prefix
    feature["properties"]["path0"] = os.environ["PATH"].split(os.pathsep)[0]
with open("/tmp/output/data.json", "w") as out:
    json.dump({"type": "FeatureCollection", "features": fc["features"]}, out)
'''

RUN_SH = '#!/bin/sh\nset -e\ncd /block\npython src/run.py\n'


def _block(root: Path, cmd: str) -> Path:
    block = root / "up42-shell"
    (block / "src").mkdir(parents=True)
    (block / "UP42Manifest.json").write_text(json.dumps(MANIFEST))
    (block / "requirements.txt").write_text("tabulate\n")
    (block / "src" / "run.py").write_text(RUN_PY)
    script = block / "run.sh"
    script.write_text(RUN_SH)
    script.chmod(0o755)
    (block / "Dockerfile").write_text(
        "FROM blockkit-base:bookworm\nWORKDIR /block\nCOPY requirements.txt /block\n"
        f"RUN pip install -r requirements.txt\nCOPY . /block\nCMD {cmd}\n")
    return block


@pytest.mark.slow
@pytest.mark.parametrize("cmd", ['["/block/run.sh"]', '["sh", "run.sh"]', "sh /block/run.sh"])
def test_a_shell_entry_runs_python_from_the_block_venv(tmp_path: Path, cmd: str) -> None:
    if not ProcessEngine().isolates_paths and not in_ci():
        pytest.skip("the process engine cannot isolate the fixed UP42 paths here (needs bubblewrap)")
    block = _block(tmp_path / "blocks", cmd)
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: shell-entry\nsteps:\n"
                  f"  scene: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 16, limit: 1}}}}\n"
                  f"  shell: {{block: {block}}}\n")
    venvs = tmp_path / "venvs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_", "VIRTUAL_ENV"))}
    env["BLOCKKIT_VENV_DIR"] = str(venvs)
    done = subprocess.run([str(BLOCKKIT), "run", str(wf), "-e", "process", "--runs-dir", str(tmp_path / "runs"),
                           "--json"], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(json.loads(done.stdout)["run_dir"])
    [feature] = json.loads((run_dir / "steps/shell/output/data.json").read_text())["features"]
    props = feature["properties"]
    [venv] = [p for p in venvs.iterdir() if (p / "pyvenv.cfg").is_file()]
    assert props["table"] == "1  2"
    assert props["venv"] == str(venv) and props["prefix"] == str(venv)
    assert props["path0"] == str(venv / "bin")
