"""The block lifecycle: real blocks run as processes and in-process, checked by exit code and files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from blockkit import BlockContext, DataBlock, FeatureCollection, ProcessingBlock, Query, data_block, processing_block
from blockkit.contract._datajson import DATA_PATH
from blockkit.runtime._block import BlockRunner

SQUARE = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.1], [13.0, 52.0]]]}

MANIFEST: dict[str, Any] = {
    "_up42_specification_version": 2,
    "name": "test-block",
    "type": "processing",
    "parameters": {
        "factor": {"type": "number", "default": 2, "minimum": 0, "maximum": 10},
        "mode": {"type": "string", "default": "copy", "enum": ["copy", "fail"]},
    },
    "input_capabilities": {"raster": {}},
    "output_capabilities": {"raster": {}},
}

BLOCK_CODE = '''
import sys
import blockkit
from blockkit import FeatureCollection


@blockkit.processing_block
def process(fc, ctx):
    if ctx.params["mode"] == "fail":
        raise RuntimeError("the block failed on purpose")
    out = []
    for feature in fc:
        data = ctx.input_path(feature).read_bytes()
        rel = f"out/{feature['id']}.bin"
        ctx.output_path(rel).write_bytes(data * int(ctx.params["factor"]))
        out.append(ctx.derive_feature(feature, data_path=rel, properties={"factor": ctx.params["factor"]}))
    return FeatureCollection(out)


if __name__ == "__main__":
    process.run()
'''


# --- fixtures -----------------------------------------------------------------------------------


def make_block(
    root: Path, code: str = BLOCK_CODE, manifest: dict[str, Any] | None = None, name: str = "block"
) -> Path:
    """A block folder: UP42Manifest.json and src/run.py."""
    block = root / name
    (block / "src").mkdir(parents=True)
    (block / "UP42Manifest.json").write_text(json.dumps(manifest or MANIFEST))
    (block / "src" / "run.py").write_text(textwrap.dedent(code))
    return block


def make_input(root: Path, count: int = 2, **extra_props: Any) -> Path:
    """An input folder with `count` files linked by data.json features."""
    folder = root / "input"
    (folder / "scenes").mkdir(parents=True)
    features = []
    for i in range(count):
        (folder / "scenes" / f"s{i}.bin").write_bytes(f"scene-{i}".encode())
        props = {DATA_PATH: f"scenes/s{i}.bin", "sensor": "demo", "up42.provider": "x", "custom.note": "y", **extra_props}
        features.append({"type": "Feature", "id": f"s{i}", "geometry": SQUARE, "properties": props})
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return folder


def tree_digest(folder: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, mode and mtime of every file and link under folder."""
    out: dict[str, tuple[str, int, int]] = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        out[path.relative_to(folder).as_posix()] = (digest, st.st_mode, st.st_mtime_ns)
    return out


def run_process(
    block: Path, env_extra: dict[str, str], args: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python src/run.py` of a block with a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, str(block / "src" / "run.py"), *(args or [])],
        env=env, capture_output=True, text=True, timeout=120, cwd=block,
    )


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    block = make_block(tmp_path)
    return {"block": block, "input": make_input(tmp_path), "output": tmp_path / "output", "ql": tmp_path / "ql"}


def env_for(dirs: dict[str, Path], params: Any = None, **extra: str) -> dict[str, str]:
    """Environment pointing a block at the test folders (never /tmp/input)."""
    env = {
        "BLOCKKIT_INPUT_DIR": str(dirs["input"]),
        "BLOCKKIT_OUTPUT_DIR": str(dirs["output"]),
        "BLOCKKIT_QUICKLOOK_DIR": str(dirs["ql"]),
        "BLOCKKIT_MANIFEST": str(dirs["block"] / "UP42Manifest.json"),
    }
    if params is not None:
        env["UP42_TASK_PARAMETERS"] = params if isinstance(params, str) else json.dumps(params)
    env.update(extra)
    return env


def run_inline(
    fn: Callable[..., Any], dirs: dict[str, Path], params: Any = None, kind: str = "processing", **extra: str
) -> int:
    """Run a block function in-process through BlockRunner.main."""
    return BlockRunner(fn, kind, None).main([], env_for(dirs, params, **extra))


def output_fc(dirs: dict[str, Path]) -> dict[str, Any]:
    return json.loads((dirs["output"] / "data.json").read_text())


def headline(stderr: str) -> str:
    """The first line that starts with an exit-code tag."""
    return next(line for line in stderr.splitlines() if line.startswith("["))


# --- as a process -----------------------------------------------------------------------------


def test_process_with_env_variables(dirs: dict[str, Path]) -> None:
    before = tree_digest(dirs["input"])
    result = run_process(dirs["block"], env_for(dirs, {"factor": 3}) | {"BLOCKKIT_MANIFEST": ""})
    assert result.returncode == 0, result.stderr
    fc = output_fc(dirs)
    assert [f["id"] for f in fc["features"]] == ["s0", "s1"]
    props = fc["features"][0]["properties"]
    assert props == {"sensor": "demo", "factor": 3, DATA_PATH: "out/s0.bin"}
    assert (dirs["output"] / "out" / "s0.bin").read_bytes() == b"scene-0" * 3
    assert tree_digest(dirs["input"]) == before


def test_process_with_arguments_and_params_file(dirs: dict[str, Path], tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text('{"factor": 1}')
    result = run_process(
        dirs["block"], {}, ["--input", str(dirs["input"]), "--output", str(dirs["output"]), "--params", f"@{params}"]
    )
    assert result.returncode == 0, result.stderr
    assert (dirs["output"] / "out" / "s1.bin").read_bytes() == b"scene-1"


def test_process_arguments_override_env(dirs: dict[str, Path], tmp_path: Path) -> None:
    env = env_for(dirs, {"factor": 99}) | {"BLOCKKIT_OUTPUT_DIR": str(tmp_path / "elsewhere")}
    result = run_process(dirs["block"], env, ["--output", str(dirs["output"]), "--params", '{"factor": 2}'])
    assert result.returncode == 0, result.stderr
    assert (dirs["output"] / "out" / "s0.bin").read_bytes() == b"scene-0" * 2
    assert not (tmp_path / "elsewhere").exists()


def test_process_bad_params_exit_2(dirs: dict[str, Path]) -> None:
    before = tree_digest(dirs["input"])
    result = run_process(dirs["block"], env_for(dirs, {"factor": 11, "colour": "red"}))
    assert result.returncode == 2
    line = headline(result.stderr)
    assert line.startswith("[INPUT_PARAMETERS_ERROR] invalid parameters: ")
    assert "factor" in result.stderr and "colour" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (dirs["output"] / "data.json").exists()
    assert tree_digest(dirs["input"]) == before


def test_process_uncaught_exception_exit_1(dirs: dict[str, Path]) -> None:
    result = run_process(dirs["block"], env_for(dirs, {"mode": "fail"}))
    assert result.returncode == 1
    assert headline(result.stderr) == "[UNEXPECTED_ERROR] RuntimeError: the block failed on purpose"
    assert "Traceback (most recent call last)" in result.stderr
    assert not (dirs["output"] / "data.json").exists()


def test_process_unsafe_data_path_exit_4(dirs: dict[str, Path]) -> None:
    fc = json.loads((dirs["input"] / "data.json").read_text())
    fc["features"].append({"type": "Feature", "geometry": None, "properties": {DATA_PATH: "../etc/passwd"}})
    fc["features"].append({"type": "Feature", "geometry": None, "properties": {DATA_PATH: "/etc/passwd"}})
    (dirs["input"] / "data.json").write_text(json.dumps(fc))
    before = tree_digest(dirs["input"])
    result = run_process(dirs["block"], env_for(dirs))
    assert result.returncode == 4
    line = headline(result.stderr)
    assert line.startswith("[WRONG_INPUT_ERROR] ")
    assert "feature 2: up42.data_path '../etc/passwd' leaves its folder (through '..') (and 1 more)" in line
    assert "feature 3: up42.data_path '/etc/passwd' is absolute" in result.stderr
    assert tree_digest(dirs["input"]) == before
    assert not (dirs["output"] / "data.json").exists()


# --- in-process: exit codes -------------------------------------------------------------------


def copy_block(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
    out = []
    for feature in fc:
        rel = f"{feature['id']}.bin"
        ctx.output_path(rel).write_bytes(ctx.input_path(feature).read_bytes())
        out.append(ctx.derive_feature(feature, data_path=rel))
    return FeatureCollection(out)


def test_ok_in_process(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_inline(copy_block, dirs) == 0
    assert len(output_fc(dirs)["features"]) == 2
    assert not any(line.startswith("[") for line in capsys.readouterr().err.splitlines())


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"factor": -1}, "parameter 'factor': -1 is below the minimum 0"),
        ({"factor": "2"}, "parameter 'factor': must be a number, not a string"),
        ({"factor": True}, "parameter 'factor': must be a number, not a boolean"),
        ({"mode": "move"}, "parameter 'mode': 'move' is not one of ['copy', 'fail']"),
        ({"nope": 1}, "parameter 'nope': is not declared by block 'test-block'"),
        ("[1, 2]", "UP42_TASK_PARAMETERS must be a JSON object, not list"),
        ("{factor: 1}", "UP42_TASK_PARAMETERS is not valid JSON"),
        ('{"factor": NaN}', "NaN is not a valid JSON number"),
    ],
)
def test_bad_params_exit_2(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str], params: Any, expected: str) -> None:
    assert run_inline(copy_block, dirs, params) == 2
    err = capsys.readouterr().err
    assert headline(err).startswith("[INPUT_PARAMETERS_ERROR] ") and expected in headline(err)
    assert not (dirs["output"] / "data.json").exists()


@pytest.mark.parametrize("params", [None, "", "null", "{}"])
def test_unset_or_empty_params_use_defaults(dirs: dict[str, Path], params: str | None) -> None:
    seen: dict[str, Any] = {}

    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        seen.update(ctx.params)
        return FeatureCollection()

    assert run_inline(fn, dirs, params) == 0
    assert seen == {"factor": 2, "mode": "copy"}


def test_missing_data_json_exit_3(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    (dirs["input"] / "data.json").unlink()
    assert run_inline(copy_block, dirs) == 3
    assert headline(capsys.readouterr().err).startswith("[NO_INPUT_ERROR] no input: ")
    assert not (dirs["output"] / "data.json").exists()


def test_missing_input_dir_exit_3(dirs: dict[str, Path], tmp_path: Path) -> None:
    dirs["input"] = tmp_path / "does-not-exist"
    assert run_inline(copy_block, dirs) == 3


def test_empty_data_json_exit_3(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    (dirs["input"] / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    assert run_inline(copy_block, dirs) == 3
    assert "has no features" in headline(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not json", "is not valid JSON"),
        (b"\xff\xfe\x00", "is not UTF-8"),
        (b'{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,1]]]}, "properties": {}}]}', "feature 0: geometry: a polygon ring is not closed"),
        (b'{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": null, "properties": {"up42.data_path": "missing.tif"}}]}', "feature 0: up42.data_path 'missing.tif' does not exist"),
    ],
)
def test_bad_data_json_exit_4(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str], content: bytes, expected: str) -> None:
    (dirs["input"] / "data.json").write_bytes(content)
    before = tree_digest(dirs["input"])
    assert run_inline(copy_block, dirs) == 4
    line = headline(capsys.readouterr().err)
    assert line.startswith("[WRONG_INPUT_ERROR] ") and expected in line
    assert tree_digest(dirs["input"]) == before


def test_symlink_leaving_input_exit_4(dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (dirs["input"] / "scenes" / "s0.bin").unlink()
    (dirs["input"] / "scenes" / "s0.bin").symlink_to(secret)
    assert run_inline(copy_block, dirs) == 4
    assert "feature 0 (id 's0'): up42.data_path 'scenes/s0.bin' is a symlink that leaves the directory" in headline(capsys.readouterr().err)
    assert not (dirs["output"] / "s0.bin").exists()


def returns(value: Any) -> Callable[[FeatureCollection, BlockContext], Any]:
    def fn(fc: FeatureCollection, ctx: BlockContext) -> Any:
        return value

    return fn


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, "the block returned nothing"),
        (5, "the block returned int"),
        ({"a": 1}, "the block returned dict"),
        ("data.json", "the block returned str"),
        ([{"type": "Feature", "geometry": None, "properties": {DATA_PATH: "never-written.tif"}}], "feature 0: up42.data_path 'never-written.tif' does not exist"),
        ([{"type": "Feature", "geometry": None, "properties": {DATA_PATH: "../input/scenes/s0.bin"}}], "'../input/scenes/s0.bin' leaves its folder (through '..')"),
        ([{"type": "Feature", "geometry": None, "properties": {DATA_PATH: "/etc/passwd"}}], "'/etc/passwd' is absolute"),
        ([{"type": "Feature", "properties": {}}], "'geometry' is a required property"),
        ([{"type": "Feature", "geometry": None, "properties": {"v": float("nan")}}], "cannot write data.json: Out of range float"),
        ([{"type": "Feature", "geometry": None, "properties": {"v": {1, 2}}}], "cannot write data.json: Object of type set"),
    ],
    ids=["none", "int", "dict", "str", "missing-file", "outside", "absolute", "bad-feature", "nan", "set"],
)
def test_bad_output_exit_6(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str], result: Any, expected: str) -> None:
    code = run_inline(returns(result), dirs)
    line = headline(capsys.readouterr().err)
    assert code == 6, line
    assert line.startswith("[NO_OUTPUT_ERROR] ") and expected in line
    assert not (dirs["output"] / "data.json").exists()
    assert [p.name for p in dirs["output"].iterdir()] == []


def test_output_symlink_leaving_output_exit_6(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        (ctx.output_dir / "link.bin").symlink_to(ctx.input_path(fc[0]))
        return FeatureCollection([ctx.new_feature(geometry=None, data_path="link.bin")])

    assert run_inline(fn, dirs) == 6
    assert "symlink that leaves" in headline(capsys.readouterr().err)
    assert not (dirs["output"] / "data.json").exists()


def test_block_writing_its_own_data_json_and_returning_none(dirs: dict[str, Path]) -> None:
    def fn(fc: FeatureCollection, ctx: BlockContext) -> None:
        (ctx.output_dir / "a.txt").write_text("a")
        feature = {"type": "Feature", "geometry": None, "properties": {DATA_PATH: "a.txt"}}
        (ctx.output_dir / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))

    assert run_inline(fn, dirs) == 0
    assert output_fc(dirs)["features"][0]["properties"] == {DATA_PATH: "a.txt"}


def test_block_writing_a_bad_data_json_itself_exit_6(dirs: dict[str, Path]) -> None:
    def fn(fc: FeatureCollection, ctx: BlockContext) -> None:
        feature = {"type": "Feature", "geometry": None, "properties": {DATA_PATH: "missing.txt"}}
        (ctx.output_dir / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))

    assert run_inline(fn, dirs) == 6


def test_memory_error_exit_137(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        raise MemoryError

    assert run_inline(fn, dirs) == 137
    assert headline(capsys.readouterr().err) == "[OUT_OF_MEMORY] the block ran out of memory (MemoryError)"
    assert not (dirs["output"] / "data.json").exists()


def test_uncaught_exception_exit_1_in_process(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        (ctx.output_dir / "partial.bin").write_bytes(b"x")
        raise KeyError("band")

    before = tree_digest(dirs["input"])
    assert run_inline(fn, dirs) == 1
    err = capsys.readouterr().err
    assert headline(err) == "[UNEXPECTED_ERROR] KeyError: 'band'"
    assert "Traceback" in err
    assert not (dirs["output"] / "data.json").exists()
    assert tree_digest(dirs["input"]) == before


def test_blockkit_errors_raised_by_the_author_keep_their_exit_code(dirs: dict[str, Path]) -> None:
    from blockkit import ApiConnectionError

    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        raise ApiConnectionError("catalogue unreachable after 3 retries")

    assert run_inline(fn, dirs) == 5


# --- propagation ------------------------------------------------------------------------------


def test_metadata_propagation_drops_up42_and_custom(dirs: dict[str, Path]) -> None:
    assert run_inline(copy_block, dirs) == 0
    for feature in output_fc(dirs)["features"]:
        assert feature["properties"] == {"sensor": "demo", DATA_PATH: f"{feature['id']}.bin"}
        assert feature["geometry"] == SQUARE


def test_data_forwarding_uses_hard_links(tmp_path: Path) -> None:
    manifest = dict(MANIFEST, blockkit={"propagate": True})
    block = make_block(tmp_path, manifest=manifest)
    dirs = {"block": block, "input": make_input(tmp_path), "output": tmp_path / "output", "ql": tmp_path / "ql"}
    (dirs["input"] / "folder").mkdir()
    (dirs["input"] / "folder" / "band.tif").write_bytes(b"band")
    fc = json.loads((dirs["input"] / "data.json").read_text())
    fc["features"].append({"type": "Feature", "id": "dir", "geometry": None, "properties": {DATA_PATH: "folder"}})
    fc["features"].append({"type": "Feature", "id": "meta", "geometry": None, "properties": {"note": "no data"}})
    (dirs["input"] / "data.json").write_text(json.dumps(fc))
    before = tree_digest(dirs["input"])

    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        ctx.output_path("result.txt").write_text("mine")
        return FeatureCollection([ctx.new_feature(geometry=None, data_path="result.txt", id="result")])

    assert run_inline(fn, dirs) == 0
    out = output_fc(dirs)["features"]
    assert [f["id"] for f in out] == ["result", "s0", "s1", "dir", "meta"]
    by_id = {f["id"]: f for f in out}
    for fid, rel in (("s0", "scenes/s0.bin"), ("dir", "folder")):
        assert by_id[fid]["properties"][DATA_PATH] == rel
        assert by_id[fid]["properties"]["up42.provider" if fid == "s0" else DATA_PATH]  # forwarded as is
    assert os.stat(dirs["output"] / "scenes" / "s0.bin").st_ino == os.stat(dirs["input"] / "scenes" / "s0.bin").st_ino
    assert os.stat(dirs["output"] / "folder" / "band.tif").st_ino == os.stat(dirs["input"] / "folder" / "band.tif").st_ino
    assert by_id["meta"]["properties"] == {"note": "no data"}
    # hard links share an inode: the link count changed, the bytes did not
    after = tree_digest(dirs["input"])
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}


def test_data_forwarding_puts_an_input_file_whose_name_the_block_used_under_input(tmp_path: Path) -> None:
    """The block's result keeps its name (as UP42's sharpening writes it, the input's); the input file moves aside."""
    block = make_block(tmp_path, manifest=dict(MANIFEST, blockkit={"propagate": True}))
    dirs = {"block": block, "input": make_input(tmp_path, 1), "output": tmp_path / "output", "ql": tmp_path / "ql"}

    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        ctx.output_path("scenes/s0.bin").write_text("mine")
        return FeatureCollection([ctx.new_feature(geometry=None, data_path="scenes/s0.bin")])

    assert run_inline(fn, dirs) == 0  # was: exit 4, 'scenes/s0.bin' already exists in the output
    out = json.loads((dirs["output"] / "data.json").read_text())
    assert [f["properties"][DATA_PATH] for f in out["features"]] == ["scenes/s0.bin", "input/scenes/s0.bin"]
    assert (dirs["output"] / "scenes" / "s0.bin").read_text() == "mine"
    assert (dirs["output"] / "input/scenes/s0.bin").stat().st_ino == (dirs["input"] / "scenes/s0.bin").stat().st_ino


# --- base classes, decorators, modes ----------------------------------------------------------


DATA_MANIFEST: dict[str, Any] = {
    "_up42_specification_version": 2,
    "name": "scene-source",
    "type": "data",
    "parameters": {
        "bbox": {"type": "array"},
        "time": {"type": "dateRange"},
        "limit": {"type": "integer", "default": 1},
        "intersects": {"type": "geometry"},
    },
    "optional_features": {"dry_run_supported": True},
    "input_capabilities": {},
    "output_capabilities": {"raster": {"up42_standard": {"format": "GTiff"}}},
}


class SceneSource(DataBlock):
    def fetch(self, query: Query, dry_run: bool = False) -> FeatureCollection:
        assert self.context is not None
        out = []
        for i in range(query.limit or 1):
            feature = self.context.new_feature(geometry=query.geometry(), id=f"scene-{i}", properties={"dry_run": dry_run})
            if not dry_run:
                rel = f"scene-{i}.txt"
                self.context.output_path(rel).write_text(f"{query.bbox} {self.params['limit']}")
                feature["properties"][DATA_PATH] = rel
            out.append(feature)
        return FeatureCollection(out)


class Doubler(ProcessingBlock):
    def process(self, input_fc: FeatureCollection) -> FeatureCollection:
        assert self.context is not None
        ctx = self.context
        out = []
        for feature in input_fc:
            rel = f"double/{feature['id']}.bin"
            ctx.output_path(rel).write_bytes(ctx.input_path(feature).read_bytes() * int(self.params["factor"]))
            out.append(ctx.derive_feature(feature, data_path=rel))
        return FeatureCollection(out)


@pytest.fixture
def data_dirs(tmp_path: Path) -> dict[str, Path]:
    block = make_block(tmp_path, manifest=DATA_MANIFEST, name="data-block")
    return {"block": block, "input": tmp_path / "no-input", "output": tmp_path / "data-output", "ql": tmp_path / "ql"}


def test_data_block_class_default_mode(data_dirs: dict[str, Path]) -> None:
    code = SceneSource.main([], env_for(data_dirs, {"bbox": [13, 52, 13.1, 52.1], "limit": 2}))
    assert code == 0
    fc = output_fc(data_dirs)
    assert [f["id"] for f in fc["features"]] == ["scene-0", "scene-1"]
    assert fc["features"][0]["geometry"]["type"] == "Polygon"
    assert (data_dirs["output"] / "scene-0.txt").read_text() == "(13.0, 52.0, 13.1, 52.1) 2"
    assert not data_dirs["input"].exists()


@pytest.mark.parametrize("how", ["env", "flag", "lowercase-env"])
def test_data_block_dry_run_fetches_nothing(data_dirs: dict[str, Path], how: str) -> None:
    params = {"bbox": [13, 52, 13.1, 52.1], "limit": 3}
    if how == "flag":
        code = SceneSource.main(["--dry-run"], env_for(data_dirs, params))
    else:
        code = SceneSource.main([], env_for(data_dirs, params, UP42_JOB_MODE="DRY_RUN" if how == "env" else "dry_run"))
    assert code == 0
    fc = output_fc(data_dirs)
    assert len(fc["features"]) == 3
    assert all(f["properties"] == {"dry_run": True} for f in fc["features"])
    assert sorted(p.name for p in data_dirs["output"].iterdir()) == ["data.json"]


def test_unknown_job_mode_runs_default_with_a_warning(data_dirs: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("blockkit").addHandler(handler)
    try:
        code = SceneSource.main([], env_for(data_dirs, {"limit": 1}, UP42_JOB_MODE="TURBO"))
    finally:
        logging.getLogger("blockkit").removeHandler(handler)
    assert code == 0
    assert output_fc(data_dirs)["features"][0]["properties"]["dry_run"] is False
    assert any(r.levelname == "WARNING" and "TURBO" in r.getMessage() for r in records)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"bbox": [13, 52, 13.1, 52.1], "intersects": SQUARE}, "give at most one of bbox, intersects, contains"),
        ({"limit": 0}, "parameter 'limit': must be an integer >= 1, not 0"),
        ({"bbox": [14, 52, 13, 53]}, "west < east"),
        ({"time": "2024-02-01T00:00:00Z/2024-01-01T00:00:00Z"}, "start is after end"),
    ],
)
def test_data_block_query_rules_exit_2(data_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str], params: dict[str, Any], expected: str) -> None:
    assert SceneSource.main([], env_for(data_dirs, params)) == 2
    line = headline(capsys.readouterr().err)
    assert line.startswith("[INPUT_PARAMETERS_ERROR] ") and expected in line
    assert not (data_dirs["output"] / "data.json").exists()


def test_processing_block_class(dirs: dict[str, Path]) -> None:
    assert Doubler.main([], env_for(dirs, {"factor": 2})) == 0
    fc = output_fc(dirs)
    assert [f["properties"][DATA_PATH] for f in fc["features"]] == ["double/s0.bin", "double/s1.bin"]
    assert (dirs["output"] / "double" / "s1.bin").read_bytes() == b"scene-1scene-1"


def test_base_class_without_override_exit_1(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    class Lazy(ProcessingBlock):
        pass

    assert Lazy.main([], env_for(dirs)) == 1
    assert "override process" in headline(capsys.readouterr().err)


def test_decorators_return_runners(dirs: dict[str, Path], data_dirs: dict[str, Path]) -> None:
    @processing_block
    def proc(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        return FeatureCollection([ctx.derive_feature(f) for f in fc])

    @data_block
    def fetch(query: Query, ctx: BlockContext) -> list[dict[str, Any]]:
        return [ctx.new_feature(geometry=query.geometry(), id="only")]

    assert isinstance(proc, BlockRunner) and proc.kind == "processing"
    assert isinstance(fetch, BlockRunner) and fetch.kind == "data"
    assert proc.main([], env_for(dirs)) == 0
    assert [f["id"] for f in output_fc(dirs)["features"]] == ["s0", "s1"]
    assert fetch.main([], env_for(data_dirs, {"bbox": [0, 0, 1, 1]})) == 0
    assert output_fc(data_dirs)["features"][0]["geometry"]["coordinates"][0][0] == [0.0, 0.0]


def test_no_manifest_means_params_pass_through(tmp_path: Path) -> None:
    dirs = {"input": make_input(tmp_path), "output": tmp_path / "output", "ql": tmp_path / "ql", "block": tmp_path}
    seen: dict[str, Any] = {}

    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        seen.update(ctx.params)
        return FeatureCollection()

    env = env_for(dirs, {"anything": [1, 2]})
    del env["BLOCKKIT_MANIFEST"]
    assert BlockRunner(fn, "processing", str(tmp_path / "src" / "run.py")).main([], env) == 0
    assert seen == {"anything": [1, 2]}


def test_bad_manifest_is_reported_not_a_traceback(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    (dirs["block"] / "UP42Manifest.json").write_text(json.dumps(dict(MANIFEST, name="Bad Name")))
    code = run_inline(copy_block, dirs)
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "name" in headline(err)


# --- STAC -------------------------------------------------------------------------------------


def make_stac_input(root: Path) -> Path:
    """An OGC App Package stage-in folder: catalog.json, item folders with assets, no data.json."""
    folder = root / "stac-input"
    folder.mkdir()
    links = [{"rel": "root", "href": "./catalog.json"}]
    for name in ("a", "b"):
        (folder / name).mkdir()
        (folder / name / f"{name}.tif").write_bytes(name.encode())
        item = {
            "type": "Feature", "stac_version": "1.0.0", "id": name, "geometry": SQUARE,
            "properties": {"datetime": "2024-01-01T00:00:00Z", "platform": "s2"},
            "links": [{"rel": "root", "href": "../catalog.json"}],
            "assets": {"data": {"href": f"./{name}.tif", "roles": ["data"], "type": "image/tiff"}},
        }
        (folder / name / f"{name}.json").write_text(json.dumps(item))
        links.append({"rel": "item", "href": f"./{name}/{name}.json"})
    (folder / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "in", "stac_version": "1.0.0", "description": "d", "links": links}))
    return folder


def test_stac_catalog_input_is_read_as_features(dirs: dict[str, Path], tmp_path: Path) -> None:
    dirs["input"] = make_stac_input(tmp_path)
    seen: list[dict[str, Any]] = []

    def fn(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
        seen.extend(fc)
        return copy_block(fc, ctx)

    assert run_inline(fn, dirs) == 0
    assert sorted(f["properties"][DATA_PATH] for f in seen) == ["a/a.tif", "b/b.tif"]
    assert (dirs["output"] / "a.bin").read_bytes() == b"a"
    assert output_fc(dirs)["features"][0]["properties"]["platform"] == "s2"


def test_stac_catalog_link_leaving_the_folder_exit_4(dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs["input"] = make_stac_input(tmp_path)
    catalog = json.loads((dirs["input"] / "catalog.json").read_text())
    catalog["links"].append({"rel": "item", "href": "../outside/x.json"})
    (dirs["input"] / "catalog.json").write_text(json.dumps(catalog))
    assert run_inline(copy_block, dirs) == 4
    assert "leaves the input directory" in headline(capsys.readouterr().err)


def test_write_stac_catalog_beside_data_json(dirs: dict[str, Path]) -> None:
    pystac = pytest.importorskip("pystac")
    assert run_inline(copy_block, dirs, BLOCKKIT_WRITE_STAC="1") == 0
    catalog = pystac.Catalog.from_file(str(dirs["output"] / "catalog.json"))
    items = sorted(catalog.get_items(recursive=True), key=lambda i: i.id)
    assert [i.id for i in items] == ["s0", "s1"]
    for item in items:
        href = Path(item.assets["data"].get_absolute_href())
        assert href.resolve() == (dirs["output"] / f"{item.id}.bin").resolve()
        assert href.read_bytes() == f"scene-{item.id[1]}".encode()
        assert item.properties["sensor"] == "demo"
    assert output_fc(dirs)["features"][0]["id"] == "s0"


# --- input/output isolation -------------------------------------------------------------------


def test_block_that_writes_into_input_does_not_touch_data_json(dirs: dict[str, Path]) -> None:
    before = (dirs["input"] / "data.json").read_bytes()
    assert run_inline(copy_block, dirs) == 0
    assert (dirs["input"] / "data.json").read_bytes() == before


def test_never_touches_the_default_tmp_input(dirs: dict[str, Path]) -> None:
    ctx = BlockRunner(copy_block, "processing", None).context([], env_for(dirs))
    assert ctx.input_dir == dirs["input"] and ctx.output_dir == dirs["output"] and ctx.quicklook_dir == dirs["ql"]
