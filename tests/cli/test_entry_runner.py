"""`blockkit` without the runner extra: which modules mean "install blockkit-eo[runner]" comes from blockkit-eo's metadata."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import time
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest

from blockkit.cli._entry import needs_runner, runner_requirements

REPO = Path(__file__).resolve().parents[2]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_runner_requirements_are_the_pyproject_extra() -> None:
    """Read from the installed metadata: a package added to the extra needs no second list kept by hand."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["runner"]
    asked = {_canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line).group(0)) for line in extra}  # type: ignore[union-attr]
    assert {_canonical(n) for n in runner_requirements() or []} == asked


@pytest.mark.parametrize("module, expected", [
    ("typer", True), ("yaml", True), ("rich.console", True), ("botocore.session", True),  # botocore: boto3's, shellingham: typer's
    ("shellingham", True), ("numpy", False), ("blockkit.cli.nothing", False), ("no_such_module_at_all", False),
])
def test_a_missing_module_of_the_extra_or_its_dependencies_means_the_runner(module: str, expected: bool) -> None:
    assert needs_runner(module) is expected


def test_a_dependency_of_the_extra_that_is_not_installed_means_the_runner(tmp_path: Path) -> None:
    """A broken install: boto3 there, botocore gone. The old hand-kept list named botocore; the metadata must too."""
    site = tmp_path / "site"
    for name, requires in (("blockkit-eo", ['fakerunnerdep; extra == "runner"']),
                           ("fakerunnerdep", ["fakemissingdep>=1"])):
        info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
                                       + "".join(f"Requires-Dist: {r}\n" for r in requires))
        (info / "RECORD").write_text("")
    code = (f"import sys\nsys.path.insert(0, {str(site)!r})\nsys.path.insert(1, {str(REPO)!r})\n"
            "from blockkit.cli._entry import needs_runner\n"
            "print(needs_runner('fakemissingdep'), needs_runner('fakemissingdep.sub'), needs_runner('unrelated'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True", "False"], done.stderr


SCRIPT = r"""
import json, sys, time
sys.argv = ["blockkit", "run", "."]
from blockkit.cli._entry import main
start = time.perf_counter()
try:
    main()
except SystemExit as exc:
    print(json.dumps({"code": exc.code, "seconds": time.perf_counter() - start,
                      "packaging": "packaging" in sys.modules}))
"""


def test_an_environment_without_the_runner_extra_gets_one_line(tmp_path: Path) -> None:
    """A real environment: this one's packages but none of the runner extra's distributions (as a block image)."""
    site = Path(sysconfig.get_paths()["purelib"])
    left_out: set[str] = set()
    for name in runner_requirements() or []:
        dist = distribution(name)
        left_out |= {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    assert {"typer", "yaml", "rich", "cryptography", "boto3", "requests", "packaging"} <= left_out
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    for entry in site.iterdir():
        if entry.name not in left_out:
            (target / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    assert subprocess.run([str(python), "-c", "import typer"], env=env, capture_output=True).returncode != 0
    started = time.perf_counter()
    done = subprocess.run([str(python), "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["code"] == 4
    missing = re.fullmatch(r"\[WRONG_INPUT_ERROR\] the blockkit command line needs the runner \((\S+) is not "
                           r"installed\): pip install 'blockkit-eo\[runner\]'", done.stderr.strip())
    assert missing and missing.group(1).split(".")[0] in left_out, done.stderr
    assert not result["packaging"]  # the error path reads metadata as text: nothing of the extra is needed
    assert result["seconds"] < 2.0, result
    print(f"error path {result['seconds']:.3f} s, process {time.perf_counter() - started:.2f} s")
