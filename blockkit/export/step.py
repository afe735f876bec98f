"""The entrypoint a CWL CommandLineTool runs inside a block image: `python -m blockkit.export.step`.

It makes a CWL engine's staging paths look like `blockkit run` to the block:
fan-in inputs get the same merged data.json, secret parameters join
UP42_TASK_PARAMETERS inside the container (never in the CWL document or the
engine's command line), a step marked `propagate` forwards its input, and the
output gets a STAC catalog (OGC EO Application Package). The block's own exit
code is the tool's exit code, so a CWL engine reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from blockkit.runtime._propagation import merge_upstreams
from blockkit.contract._datajson import FeatureCollection, load_data_json, write_data_json
from blockkit.contract.errors import TIMEOUT_EXIT_CODE, BlockkitError, ExitCode, NoOutputError, WrongInputError

#: The entry command of images made by `blockkit build` (Dockerfile.base's CMD).
DEFAULT_COMMAND = ("python", "/block/src/run.py")
DEFAULT_WORKDIR = "/block"


def task_parameters(env: Mapping[str, str], secrets: Mapping[str, tuple[str, str]]) -> str:
    """UP42_TASK_PARAMETERS with the secret parameters (name -> (env var, manifest type)) merged in."""
    text = env.get("UP42_TASK_PARAMETERS") or "{}"
    params: dict[str, Any] = json.loads(text)
    for name, (variable, kind) in secrets.items():
        raw = env.get(variable, "")
        if raw == "":
            continue  # not given: the block applies its manifest default
        # Secrets travel as CWL strings; other manifest types are JSON text.
        params[name] = raw if kind in ("string", "dateRange") else json.loads(raw)
    return json.dumps(params)


_KEY_FIELDS = ("endpoint", "region", "bucket", "access_key", "secret_key", "username", "password")


def expand_keys(env: dict[str, str]) -> None:
    """Give each key passed as JSON (`BLOCKKIT_KEY_<NAME>`) also the per-field variables the runner sets.

    Under `blockkit run` a step key `results` arrives as `BLOCKKIT_KEY_RESULTS` (the JSON)
    and as `BLOCKKIT_KEY_RESULTS_TYPE`, `..._ENDPOINT`, `..._ACCESS_KEY`, ...; the CWL
    document can only carry the JSON, so the fields are derived here. Set variables win.
    """
    for name, value in list(env.items()):
        if not name.startswith("BLOCKKIT_KEY_") or not value.startswith("{"):
            continue
        try:
            key = json.loads(value)
        except ValueError:
            continue
        if not isinstance(key, dict) or not isinstance(key.get("type"), str):
            continue
        env.setdefault(f"{name}_TYPE", key["type"])
        for field_name in _KEY_FIELDS:
            if key.get(field_name) not in (None, ""):
                env.setdefault(f"{name}_{field_name.upper()}", str(key[field_name]))


def _pairs(values: Sequence[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise WrongInputError(f"{what} {value!r} must be NAME=VALUE")
        pairs.append((name, rest))
    return pairs


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blockkit.export.step", description=__doc__.splitlines()[0])
    parser.add_argument("--step", required=True, help="step name (for messages)")
    parser.add_argument("--input", type=Path, help="input folder (one upstream, or the workflow input)")
    parser.add_argument("--fan-in", type=Path, help="folder whose <step>/ subfolders hold the upstream outputs")
    parser.add_argument("--upstream", action="append", default=[], help="upstream step name (fan-in), in order")
    parser.add_argument("--output", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--quicklooks", type=Path, required=True, help="quicklook folder")
    parser.add_argument("--secret-param", action="append", default=[], metavar="NAME=ENV:TYPE",
                        help="a secret parameter read from an environment variable")
    parser.add_argument("--propagate", action="store_true", help="forward the input features to the output")
    parser.add_argument("--stac", action="store_true", help="write a STAC catalog.json beside data.json")
    parser.add_argument("--timeout", type=float, help="kill the block after this many seconds (exit 124)")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="folder the block command runs in")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the block's command")
    return parser


def _say(step: str, text: str) -> None:
    print(f"[blockkit] step {step!r}: {text}", file=sys.stderr, flush=True)


def _run_block(command: Sequence[str], env: Mapping[str, str], workdir: str, timeout: float | None) -> tuple[int, bool]:
    """Run the block command; returns (exit code, timed out)."""
    cwd = workdir if Path(workdir).is_dir() else None
    proc = subprocess.Popen(list(command), env=dict(env), cwd=cwd)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return TIMEOUT_EXIT_CODE, True
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        return 130, False
    # Killed by a signal (e.g. the OOM killer's SIGKILL): report it the shell way, 128 + signal.
    return (128 - code if code < 0 else code), False


def _finish(step: str, input_dir: Path, output_dir: Path, propagate: bool, stac: bool) -> None:
    """Check the output as the runner does, forward the input if asked, write the STAC catalog."""
    try:
        fc = load_data_json(output_dir, required=False)
    except BlockkitError as err:
        raise NoOutputError(f"the step exited 0 but its output is invalid: {err.message}") from None
    if propagate:
        from blockkit.runtime._propagation import forward_all

        fc.features.extend(forward_all(load_data_json(input_dir, required=False).features, fc.features, input_dir, output_dir))
        write_data_json(output_dir, fc)
    if stac:
        from blockkit.runtime._stac import write_catalog

        write_catalog(output_dir, fc)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Prepare the input, run the block, finish its output; return the block's exit code."""
    args = _argument_parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    command = command or list(DEFAULT_COMMAND)
    try:
        if args.fan_in is not None:
            input_dir = args.fan_in
            merge_upstreams(input_dir, args.upstream)
        elif args.input is not None:
            input_dir = args.input
        else:
            # A first step without workflow input: an empty input folder, as the runner gives it.
            input_dir = Path(tempfile.mkdtemp(prefix="blockkit-input-"))
        args.output.mkdir(parents=True, exist_ok=True)
        args.quicklooks.mkdir(parents=True, exist_ok=True)
        secrets: dict[str, tuple[str, str]] = {}
        for name, spec in _pairs(args.secret_param, "--secret-param"):
            variable, _, kind = spec.partition(":")
            secrets[name] = (variable, kind or "string")
        env["UP42_TASK_PARAMETERS"] = task_parameters(env, secrets)
        expand_keys(env)
        for variable, _ in secrets.values():
            env.pop(variable, None)  # the block reads its secrets from the parameters only
        env.update({
            "BLOCKKIT_INPUT_DIR": str(input_dir),
            "BLOCKKIT_OUTPUT_DIR": str(args.output),
            "BLOCKKIT_QUICKLOOK_DIR": str(args.quicklooks),
            "BLOCKKIT_STEP": args.step,
        })
        if args.propagate:
            env["BLOCKKIT_RUNNER_FORWARDS"] = "1"  # forwarded below, once, as blockkit's runner does
        env.pop("BLOCKKIT_WRITE_STAC", None)  # written below, after propagation, for every kind of block
    except BlockkitError as err:
        print(err.headline(), file=sys.stderr, flush=True)
        return int(err.exit_code)
    except ValueError as exc:
        _say(args.step, f"cannot prepare the step: {exc}")
        return int(ExitCode.INPUT_PARAMETERS_ERROR)

    code, timed_out = _run_block(command, env, args.workdir, args.timeout)
    if timed_out:
        _say(args.step, f"timed out after {args.timeout:g}s and was killed (exit {TIMEOUT_EXIT_CODE})")
        return TIMEOUT_EXIT_CODE
    if code != 0:
        _say(args.step, f"failed with exit code {code} ({ExitCode.describe(code)})")
        return code
    try:
        _finish(args.step, input_dir, args.output, args.propagate, args.stac)
    except BlockkitError as err:
        print(err.headline(), file=sys.stderr, flush=True)
        _say(args.step, f"failed with exit code {int(err.exit_code)} ({err.exit_code.name})")
        return int(err.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
