"""Secrets stay secret: secret parameters, key secrets and the passphrase never reach a log or the console."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockkit.contract.errors import InputParametersError
from blockkit.runner._plan import plan_workflow
from blockkit.runner._secret_params import resolve_secret_refs, secret_values
from blockkit.runner._workflow import load_workflow

from .engine_blocks import cli_command, files_under, workflow, write_hostile

TOKEN = "TOKEN-s3cr3t-VALUE-42"
PASSPHRASE = "correct horse battery staple"
S3_SECRET = "SUPERSECRETs3key/ABC+123"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=600)


def _keystore(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "BLOCKKIT_KEYSTORE": str(tmp_path / "ks"), "BLOCKKIT_KEYSTORE_PASSPHRASE": PASSPHRASE}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from blockkit.cli.main import main; main()", "keys", "add", "prod",
         "--type", "s3", "--access-key", "AKIAEXAMPLE", "--endpoint", "http://127.0.0.1:1"],
        input=S3_SECRET + "\n", env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return env


def _assert_nowhere(run_dir: Path, console: str, *values: str) -> None:
    for value in values:
        assert value not in console, value
        for path in files_under(run_dir):
            if path.name == "workflow.yaml":
                continue  # the workflow copy is the seal helper's (references keep values out of it)
            assert value.encode() not in path.read_bytes(), (value, path)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_secrets_a_block_prints_are_masked_in_logs_and_console(tmp_path: Path, engine: str, request) -> None:
    if engine == "docker":
        request.getfixturevalue("base_image")
    env = _keystore(tmp_path)
    env["BLOCKKIT_RUNS_DIR"] = str(tmp_path / "runs")
    env["MY_TOKEN"] = TOKEN
    block = write_hostile(tmp_path / "blocks")
    wf = workflow(tmp_path, block, {"action": "print-secrets", "token": {"from_env": "MY_TOKEN"}},
                  source=False, extra=", keys: [prod]")
    done = _cli(["run", str(wf), "-e", engine], env)
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    assert "TOKEN PARAM IS ***" in console and "STDERR TOKEN ***" in console
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
    log = (run_dir / "logs" / "evil.log").read_text()
    assert "TOKEN PARAM IS ***" in log
    _assert_nowhere(run_dir, console, TOKEN, PASSPHRASE, S3_SECRET)
    # The step got its key (that is what keys: are for) but never the keystore passphrase.
    names = json.loads((run_dir / "steps/evil/output/data.json").read_text())["env"]
    assert "BLOCKKIT_KEY_PROD_SECRET_KEY" in names and "BLOCKKIT_KEYSTORE_PASSPHRASE" not in names
    assert "BLOCKKIT_KEYSTORE" not in names


def test_a_literal_secret_parameter_is_masked_too(tmp_path: Path) -> None:
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs"), "BLOCKKIT_KEYSTORE_PASSPHRASE": PASSPHRASE}
    block = write_hostile(tmp_path / "blocks")
    wf = workflow(tmp_path, block, {"action": "print-secrets", "token": TOKEN}, source=False)
    done = _cli(["run", str(wf), "-e", "process"], env)
    assert done.returncode == 0, done.stderr
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
    _assert_nowhere(run_dir, done.stdout + done.stderr, TOKEN, PASSPHRASE)


def test_from_key_takes_a_keystore_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _keystore(tmp_path)
    monkeypatch.setenv("BLOCKKIT_KEYSTORE", env["BLOCKKIT_KEYSTORE"])
    monkeypatch.setenv("BLOCKKIT_KEYSTORE_PASSPHRASE", PASSPHRASE)
    block = write_hostile(tmp_path / "blocks")
    wf = workflow(tmp_path, block, {"action": "ok", "token": {"from_key": "prod.secret_key"}}, source=False)
    plan = plan_workflow(load_workflow(wf))
    assert plan.step("evil").params["token"] == S3_SECRET
    assert S3_SECRET in secret_values(plan) and PASSPHRASE in secret_values(plan)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"from_env": "BLOCKKIT_TEST_UNSET_VARIABLE"}, "environment variable BLOCKKIT_TEST_UNSET_VARIABLE is not set"),
        ({"from_key": "nodot"}, "from_key needs KEY.FIELD"),
        ({"from_env": ""}, "from_env needs a name"),
    ],
)
def test_bad_references_are_one_clear_parameter_problem(tmp_path: Path, value: dict, message: str) -> None:
    block = write_hostile(tmp_path / "blocks")
    wf = workflow(tmp_path, block, {"action": "ok", "token": value}, source=False)
    with pytest.raises(InputParametersError) as info:
        plan_workflow(load_workflow(wf))
    assert message in str(info.value) and "'token'" in str(info.value)


def test_references_only_for_secret_parameters(tmp_path: Path) -> None:
    from blockkit.contract._manifest import load_manifest

    manifest = load_manifest(write_hostile(tmp_path / "blocks"))
    resolved, problems = resolve_secret_refs({"action": {"from_env": "PATH"}}, manifest, environ={"PATH": "/bin"})
    assert resolved["action"] == {"from_env": "PATH"}
    assert len(problems) == 1 and "only for parameters the block declares secret" in problems[0].message
    resolved, problems = resolve_secret_refs({"token": {"from_env": "T"}}, manifest, environ={"T": "v"})
    assert resolved == {"token": "v"} and problems == []


def test_masking_one_steps_log_leaves_another_running_steps_log_alone(tmp_path: Path) -> None:
    """`scene` ends while `scene2` (whose name starts the same) still writes its log.

    A secret of two lines passes the per-line filter and is masked in the whole log when its
    step ends. Masking `scene`'s logs once rewrote every `scene*.log`: `scene2.log` was
    replaced under the open log, and all that `scene2` printed afterwards, its error
    included, was lost.
    """
    from blockkit.runner._run import RunFailed
    from blockkit.runner._session import RunRequest, run_request

    from .engine_blocks import _empty_input

    token = '"s3cr3t-token-value\\nsecond-line-of-it"'  # YAML: two lines
    block = write_hostile(tmp_path / "blocks")
    workflow = tmp_path / "prefix.yaml"
    workflow.write_text(
        f"name: prefix\ninput: {_empty_input(tmp_path)}\nsteps:\n"
        f"  scene: {{block: {block}, params: {{action: print-secrets, token: {token}}}}}\n"
        f"  scene2: {{block: {block}, params: {{action: slow-secret, token: {token}, long: 3000}}, after: []}}\n")
    with pytest.raises(RunFailed) as failed:
        run_request(RunRequest(target=workflow, engine="process", runs_dir=tmp_path / "runs"))
    assert failed.value.step == "scene2"
    log = (failed.value.run_dir / "logs" / "scene2.log").read_text()
    assert "s3cr3t-token-value" not in log
    assert "late line" in log and "[WRONG_INPUT_ERROR] the final error" in log
