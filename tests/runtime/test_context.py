"""The block context: directories from arguments/env/defaults, mode, logger, safe paths."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from blockkit.contract.errors import WrongInputError
from blockkit.runtime._context import BlockContext, get_logger


def test_directories_arguments_then_env_then_defaults(tmp_path: Path) -> None:
    env = {"BLOCKKIT_INPUT_DIR": str(tmp_path / "i"), "BLOCKKIT_OUTPUT_DIR": str(tmp_path / "o"), "BLOCKKIT_QUICKLOOK_DIR": str(tmp_path / "q")}
    ctx = BlockContext.from_env(env)
    assert (ctx.input_dir, ctx.output_dir, ctx.quicklook_dir) == (tmp_path / "i", tmp_path / "o", tmp_path / "q")
    ctx = BlockContext.from_env(env, input_dir=tmp_path / "arg")
    assert ctx.input_dir == tmp_path / "arg" and ctx.output_dir == tmp_path / "o"
    ctx = BlockContext.from_env({})
    assert (ctx.input_dir, ctx.output_dir, ctx.quicklook_dir) == (Path("/tmp/input"), Path("/tmp/output"), Path("/tmp/quicklooks"))


@pytest.mark.parametrize(("value", "mode"), [(None, "DEFAULT"), ("", "DEFAULT"), ("DEFAULT", "DEFAULT"), ("DRY_RUN", "DRY_RUN"), (" dry_run ", "DRY_RUN"), ("TURBO", "DEFAULT")])
def test_job_mode(value: str | None, mode: str) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("blockkit").addHandler(handler)
    try:
        ctx = BlockContext.from_env({} if value is None else {"UP42_JOB_MODE": value})
    finally:
        logging.getLogger("blockkit").removeHandler(handler)
    assert ctx.mode == mode and ctx.dry_run == (mode == "DRY_RUN")
    warned = [r for r in records if r.levelno == logging.WARNING]
    assert bool(warned) == (value == "TURBO")
    if warned:
        assert "TURBO" in warned[0].getMessage() and "DEFAULT" in warned[0].getMessage()


def test_logger_has_exactly_one_handler_after_many_calls() -> None:
    for _ in range(50):
        get_logger()
        get_logger("blockkit.block")
        get_logger("myblock")
        BlockContext.from_env({})
    root = logging.getLogger("blockkit")
    assert len([h for h in root.handlers if getattr(h, "_blockkit_handler", False)]) == 1
    assert get_logger("myblock").name == "blockkit.myblock"
    assert not get_logger("blockkit.block").handlers  # children use the one root handler


def test_one_log_line_per_message_in_a_fresh_process() -> None:
    code = (
        "from blockkit.runtime._context import get_logger, BlockContext\n"
        "for _ in range(20):\n"
        "    get_logger('x'); BlockContext.from_env({})\n"
        "get_logger('x').warning('hello once')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("hello once") == 1


def test_input_path_is_checked(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_text("a")
    ctx = BlockContext(input_dir=tmp_path)
    assert ctx.input_path({"properties": {"up42.data_path": "a.tif"}}) == tmp_path / "a.tif"
    for value, expected in (("../x", "leaves"), ("/etc/passwd", "absolute"), ("b.tif", "does not exist")):
        with pytest.raises(WrongInputError) as info:
            ctx.input_path({"id": "f1", "properties": {"up42.data_path": value}})
        assert "feature 'f1'" in info.value.headline() and expected in info.value.headline()
    with pytest.raises(WrongInputError, match="has no up42.data_path"):
        ctx.input_path({"id": "f2", "properties": None})


def test_output_path_creates_parents_and_refuses_escapes(tmp_path: Path) -> None:
    ctx = BlockContext(output_dir=tmp_path / "out")
    path = ctx.output_path("a/b/c.tif")
    assert path == tmp_path / "out" / "a" / "b" / "c.tif" and path.parent.is_dir()
    for bad in ("../x.tif", "/abs.tif", "a/../../x", ""):
        with pytest.raises(ValueError):
            ctx.output_path(bad)
    assert not (tmp_path / "x.tif").exists()


def test_quicklook_path(tmp_path: Path) -> None:
    ctx = BlockContext(quicklook_dir=tmp_path / "ql")
    assert ctx.quicklook_path("f1") == tmp_path / "ql" / "f1.png"
    assert ctx.quicklook_path("f1", "jpg").name == "f1.jpg"
    for bad_id in ("../x", "..", "", "a/b"):
        with pytest.raises(ValueError):
            ctx.quicklook_path(bad_id)
    with pytest.raises(ValueError):
        ctx.quicklook_path("f1", "gif")


def test_new_feature(tmp_path: Path) -> None:
    ctx = BlockContext(output_dir=tmp_path)
    f = ctx.new_feature(geometry=None, data_path="x.tif", properties={"a": 1}, id="k")
    assert f == {"type": "Feature", "id": "k", "geometry": None, "properties": {"a": 1, "up42.data_path": "x.tif"}}
    assert ctx.new_feature(geometry=None)["id"] != ctx.new_feature(geometry=None)["id"]


def test_the_log_handler_follows_a_swapped_stderr(monkeypatch) -> None:
    """A stream that was stderr when the handler was made may be closed later (CLI runners, tests)."""
    import io
    import logging
    import sys

    from blockkit.runtime._context import get_logger

    root = logging.getLogger("blockkit")
    for handler in [h for h in root.handlers if getattr(h, "_blockkit_handler", False)]:
        root.removeHandler(handler)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    get_logger("blockkit.test").info("one")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("blockkit.test").info("two")
    assert "INFO blockkit.test: two" in second.getvalue()
    assert "Logging error" not in second.getvalue()
