"""One error printer for every command: `[EXIT_NAME] message`, problems, hints; --json as one object.

Also the errors that used to leave the tree: the S3 sidecar that cannot start under Docker (now
the failed-step path: run folder, resume hint, one line) and the runtime helpers' ValueErrors.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import blockkit.cli
from tests.runner.blocks import write_block

BLOCKKIT = Path(sys.executable).with_name("blockkit")
CLI_DIR = Path(blockkit.cli.__file__).parent


def cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    return subprocess.run([str(BLOCKKIT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**base, **(env or {})})


def headline(result: subprocess.CompletedProcess[str], name: str, code: int) -> list[str]:
    """The failure's lines from its headline on (a run's progress comes before), checked: exit status,
    exactly one `[NAME] ` line, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    heads = [i for i, line in enumerate(lines) if re.match(r"^\[[A-Z_]+\] ", line)]
    assert len(heads) == 1 and lines[heads[0]].startswith(f"[{name}] "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[heads[0]:]


# --- the printer is the only one ----------------------------------------------------------------------


def _cli_modules() -> list[Path]:
    return sorted(p for p in CLI_DIR.glob("*.py") if p.name != "__init__.py")


def test_no_command_prints_a_headline_of_its_own() -> None:
    """`[SOMETHING] ...` is written by blockkit.cli._console only (f-strings and plain strings alike)."""
    found = []
    for path in _cli_modules():
        if path.name == "console.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                text = str(node.values[0].value)
            if text and text.startswith("[") and text[1:2].isupper() and "]" in text and "[/" not in text:
                found.append(f"{path.name}:{node.lineno}: {text[:40]!r}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("typer.Exit", "sys.exit") \
                    and node.args and ast.unparse(node.args[0]) not in ("0", "130", "command_status") \
                    and not ast.unparse(node.args[0]).endswith(".exit_status"):  # main(): after print_error
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "print errors with blockkit.cli._console.fail:\n" + "\n".join(found)


def test_command_modules_share_helpers_through_small_modules_not_main_or_each_other() -> None:
    allowed = {"blockkit.cli._console", "blockkit.cli._options"}
    wrong = []
    for path in _cli_modules():
        if path.name == "_entry.py":
            continue  # the console script: it imports main (the command line) and nothing else
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blockkit.cli"):
                if node.module not in allowed:
                    wrong.append(f"{path.name} imports {node.module}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blockkit.gateway.__main__"):
                wrong.append(f"{path.name} imports {node.module}")
    assert not wrong, "\n".join(wrong)


# --- the same shape from every command ------------------------------------------------------------------


def test_user_errors_from_several_commands_share_one_shape(tmp_path: Path) -> None:
    lines = headline(cli("validate", tmp_path / "missing"), "WRONG_INPUT_ERROR", 4)
    assert lines == [f"[WRONG_INPUT_ERROR] {tmp_path / 'missing'} does not exist"]

    lines = headline(cli("new", "Bad Name", "--dir", tmp_path), "INPUT_PARAMETERS_ERROR", 2)
    assert len(lines) == 1 and "must be 2-63 lowercase" in lines[0]

    block = write_block(tmp_path / "blocks", "one", kind="data", source="print('x')\n", params={})
    lines = headline(cli("build", block, "--build-arg", "oops"), "WRONG_INPUT_ERROR", 4)
    assert lines == ["[WRONG_INPUT_ERROR] --build-arg 'oops' must be NAME=VALUE"]

    lines = headline(cli("export", "cwl", tmp_path / "nope.yaml"), "WRONG_INPUT_ERROR", 4)
    assert len(lines) == 1 and "nope.yaml" in lines[0]

    lines = headline(cli("gateway"), "UNEXPECTED_ERROR", 1)
    assert lines == ["[UNEXPECTED_ERROR] nothing to serve: give at least one --input NAME=DIR or --output DIR"]

    lines = headline(cli("runs", "logs", "nope", "--runs-dir", tmp_path / "runs"), "WRONG_INPUT_ERROR", 4)
    assert len(lines) == 1 and "no runs in" in lines[0]


def test_problems_are_listed_and_a_single_one_is_not_printed_twice(tmp_path: Path) -> None:
    block = write_block(tmp_path / "blocks", "src", kind="data", source="print('x')\n", params={})
    one = tmp_path / "one.yaml"
    one.write_text(f"name: one\nsteps:\n  a: {{block: {block}, params: {{nope: 1}}}}\n")
    lines = headline(cli("validate", one), "INPUT_PARAMETERS_ERROR", 2)
    assert len(lines) == 1 and "nope" in lines[0], lines  # the headline names the only problem

    two = tmp_path / "two.yaml"
    two.write_text(f"name: two\nsteps:\n  a: {{block: {block}, params: {{nope: 1}}}}\n"
                   f"  b: {{block: {tmp_path / 'missing'}}}\n")
    lines = headline(cli("validate", two), "WRONG_INPUT_ERROR", 4)
    assert "(and 1 more)" in lines[0] and len(lines) == 3 and all(l.startswith("  - ") for l in lines[1:])


def _document(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == result.returncode
    # With --json a run's events are JSON lines on stderr too; the person's headline is the one `[` line.
    [line] = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert line == f"[{doc['exit_name']}] {doc['message']}"
    return doc


def test_json_errors_are_one_object_on_stdout_with_the_same_fields(tmp_path: Path) -> None:
    staged = cli("stage-in", tmp_path / "nothing-here", tmp_path / "in", "--json")
    doc = _document(staged)
    assert doc["status"] == "failed" and doc["exit_name"] == "WRONG_INPUT_ERROR"
    assert set(doc) >= {"status", "exit_code", "exit_name", "message", "problems", "hints"}

    ran = cli("run", tmp_path / "missing.yaml", "--runs-dir", tmp_path / "runs", "--json")
    doc = _document(ran)
    assert doc["status"] == "failed" and "missing.yaml" in doc["message"]

    (tmp_path / "a.txt").write_text("a")
    uploaded = cli("artifacts", "upload", tmp_path / "a.txt", "--key", "nope", "--json",
                   env={"BLOCKKIT_KEYSTORE": str(tmp_path / "keys")})
    doc = _document(uploaded)
    assert doc["exit_name"] == "INPUT_PARAMETERS_ERROR" and "no key named 'nope'" in doc["message"]


def test_a_failed_run_prints_its_hints_and_json_names_them(tmp_path: Path) -> None:
    failing = '''
import sys
import blockkit
from blockkit import FeatureCollection

@blockkit.data_block
def make(query, ctx):
    sys.exit(5)

if __name__ == "__main__":
    make.run()
'''
    block = write_block(tmp_path / "blocks", "flaky", kind="data", source=failing, params={})
    runs = tmp_path / "runs"
    result = cli("run", block, "--engine", "process", "--runs-dir", runs, "--json", "--quiet")
    doc = _document(result)
    assert doc["exit_code"] == 5 and doc["exit_name"] == "API_CONNECTION_ERROR" and doc["step_exit"] == 5
    assert doc["hints"][0] == f"run folder: {doc['run_dir']} (resume with: {doc['resume']})"
    assert doc["resume"].startswith("blockkit run --resume ")
    assert f"run folder: {doc['run_dir']}" in result.stderr


# --- the runtime helpers' errors, through a real block --------------------------------------------------


GEOMETRY_BLOCK = '''
import blockkit
from blockkit import FeatureCollection
from blockkit.runtime.geometry import utm_zone

@blockkit.data_block
def make(query, ctx):
    utm_zone(500.0, 0.0)  # a coordinate from a broken input
    return FeatureCollection([])

if __name__ == "__main__":
    make.run()
'''


def test_a_runtime_helper_error_carries_its_exit_code_not_a_bare_value_error(tmp_path: Path) -> None:
    block = write_block(tmp_path / "blocks", "geo", kind="data", source=GEOMETRY_BLOCK, params={})
    result = cli("run", block, "--engine", "process", "--runs-dir", tmp_path / "runs", "--quiet")
    lines = headline(result, "WRONG_INPUT_ERROR", 4)
    assert "longitude/latitude out of range: (500.0, 0.0)" in lines[0]
    assert "ValueError" not in result.stderr


# --- the S3 sidecar that cannot start, under Docker ---------------------------------------------------


SIDECAR_BLOCK = '''
print("never reached: the sidecar starts first")
'''


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize(("extra", "expected"), [
    ("", "executable file not found"),  # no `python` in the image: the container cannot even start
    ("RUN ln -s /usr/bin/python3 /usr/local/bin/python\n", "No module named"),  # python, but no blockkit
])
def test_a_sidecar_that_cannot_start_fails_the_step_with_one_line_and_a_resume_hint(
        tmp_path: Path, docker_client: Any, base_image: str, extra: str, expected: str) -> None:
    block = write_block(tmp_path / "blocks", "needs-s3", kind="data", source=SIDECAR_BLOCK, params={},
                        options={"s3": True})
    (block / "Dockerfile").write_text(f"FROM {base_image}\nARG manifest\nLABEL \"up42_manifest\"=$manifest\n{extra}"
                                      "COPY . /block\nCMD [\"python3\", \"/block/src/run.py\"]\n")
    runs = tmp_path / "runs"
    try:
        result = cli("run", block, "--engine", "docker", "--runs-dir", runs, env={"BLOCKKIT_BASE_IMAGE": base_image},
                     timeout=900)
        lines = headline(result, "UNEXPECTED_ERROR", 1)
        assert "step 'needs-s3' failed" in lines[0] and "S3 gateway sidecar" in lines[0] and expected in lines[0]
        assert "blockkit-eo" in lines[0]  # says what the image lacks
        assert any(line.startswith("run folder: ") and "resume with: blockkit run --resume" in line for line in lines)

        [run_dir] = [p for p in runs.iterdir() if (p / "run.json").is_file()]
        run = json.loads((run_dir / "run.json").read_text())
        assert run["status"] == "failed"
        assert run["steps"]["needs-s3"]["status"] == "failed" and "sidecar" in run["steps"]["needs-s3"]["detail"]
        left = docker_client.containers.list(ignore_removed=True, all=True, filters={"label": ["blockkit.step=needs-s3"]})
        assert left == [], [c.name for c in left]  # neither the sidecar nor the step outlives the run
    finally:
        for image in docker_client.images.list(filters={"label": f"blockkit.block_dir={block.resolve()}"}):
            try:
                docker_client.images.remove(image.id, force=True)
            except Exception:  # noqa: BLE001 - in use or gone
                pass


@pytest.mark.docker
def test_a_step_given_by_image_says_why_its_manifest_cannot_be_read(tmp_path: Path, docker_client: Any,
                                                                    base_image: str) -> None:
    """The planner reads an image's manifest through runner.docker_client: each problem one line."""
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: by-image\nsteps:\n  plain: {{image: '{base_image}'}}\n"
                  "  gone: {image: 'blockkit-test/no-such-image:never'}\n")
    lines = headline(cli("validate", wf), "WRONG_INPUT_ERROR", 4)
    assert "(and 1 more)" in lines[0]
    assert f"  - step 'plain' (line 3): image {base_image} has no up42_manifest label" in lines[1]
    assert lines[2].startswith("  - step 'gone' (line 4): image blockkit-test/no-such-image:never does not exist locally")


@pytest.mark.parametrize("args, said", [
    (["run", "x", "--dry-run"], "blockkit run: No such option: --dry-run (see blockkit run --help)"),
    (["run", "x", "-j", "0"], "blockkit run: Invalid value for '--jobs' / '-j': Input should be greater than or equal to 1"),
    (["nosuch"], "blockkit: No such command 'nosuch'."),
    (["artifacts", "upload", "r.html"], "blockkit artifacts upload: Missing option '--key'."),
    (["runs", "list", "--status", "fail"], "--status fail: not a run status (choose from ok, failed, running, interrupted)"),
], ids=["unknown-option", "bad-value", "unknown-command", "missing-option", "unknown-status"])
def test_a_command_line_click_cannot_parse_is_one_error_line_like_any_other(tmp_path: Path, args, said) -> None:
    """Was: a boxed multi-line message and exit 2 (INPUT_PARAMETERS_ERROR, the code for a block's parameters)."""
    result = cli(*args, cwd=tmp_path)
    [line] = headline(result, "WRONG_INPUT_ERROR", 4)
    assert line.startswith(f"[WRONG_INPUT_ERROR] {said}") and "╭" not in result.stderr and result.stdout == ""
    with_json = cli(*args, "--json", cwd=tmp_path)
    assert json.loads(with_json.stdout)["exit_code"] == 4 and said in json.loads(with_json.stdout)["message"]


def test_help_and_a_bare_command_group_still_show_the_help_and_exit_0(tmp_path: Path) -> None:
    for args in ([], ["runs"], ["run", "--help"]):
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 0 and "Usage: blockkit" in result.stdout + result.stderr, (args, result.stderr)
