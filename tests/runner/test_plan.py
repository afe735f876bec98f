"""Workflow files and planning: every problem reported at once, with its step or line."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockkit.contract.errors import InputParametersError, WorkflowError
from blockkit.runner._plan import plan_workflow
from blockkit.runner._workflow import load_workflow, parse_workflow

from .blocks import make_blocks, write_block


@pytest.fixture()
def blocks(tmp_path: Path) -> dict[str, Path]:
    return make_blocks(tmp_path / "blocks")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return path


def test_linear_plan_defaults_after_to_previous_step(tmp_path: Path, blocks: dict[str, Path]) -> None:
    wf = _write(tmp_path, f"name: t\nsteps:\n  a: {{block: {blocks['source']}, params: {{count: 3}}}}\n  b: {{block: {blocks['upper']}}}\n")
    plan = plan_workflow(load_workflow(wf))
    assert [s.name for s in plan.steps] == ["a", "b"]
    assert plan.step("b").upstream == ["a"]
    assert plan.step("a").params == {"count": 3, "text": "hello"}


def test_block_paths_resolve_from_parent_folders(tmp_path: Path, blocks: dict[str, Path]) -> None:
    sub = tmp_path / "workflows"
    sub.mkdir()
    wf = sub / "wf.yaml"
    wf.write_text("name: t\nsteps:\n  a: {block: blocks/source}\n")
    assert plan_workflow(load_workflow(wf)).step("a").block_dir == blocks["source"].resolve()


def test_every_problem_is_reported_at_once_with_lines(tmp_path: Path, blocks: dict[str, Path]) -> None:
    text = (
        "name: broken\n"
        "colour: blue\n"
        "steps:\n"
        f"  a: {{block: {blocks['source']}, params: {{count: 1000, nope: 1}}}}\n"
        "  b: {block: does/not/exist}\n"
        f"  c: {{block: {blocks['upper']}, after: [zzz]}}\n"
        f"  d: {{block: {blocks['upper']}, image: x, timeout: -1}}\n"
        f"  e: {{block: {blocks['upper']}, after: [f]}}\n"
        f"  f: {{block: {blocks['upper']}, after: [e]}}\n"
    )
    with pytest.raises(WorkflowError) as info:
        plan_workflow(load_workflow(_write(tmp_path, text)))
    messages = [str(p) for p in info.value.problems]
    joined = "\n".join(messages)
    assert "unknown key 'colour'" in joined
    assert "step 'a' (line 4)" in joined and "1000 is above the maximum 100" in joined
    assert "parameter 'nope'" in joined
    assert "step 'b' (line 5)" in joined and "not found" in joined
    assert "unknown step 'zzz'" in joined
    assert "exactly one of 'block'" in joined and "'timeout' must be a positive number" in joined
    assert "cycle" in joined
    assert len(messages) >= 8
    assert info.value.headline().startswith("[WRONG_INPUT_ERROR] workflow 'broken' cannot run")


def test_duplicate_step_names_are_reported(tmp_path: Path, blocks: dict[str, Path]) -> None:
    text = f"name: t\nsteps:\n  a: {{block: {blocks['source']}}}\n  a: {{block: {blocks['source']}, bogus: 1}}\n"
    with pytest.raises(WorkflowError, match="duplicate key 'a'") as info:
        plan_workflow(load_workflow(_write(tmp_path, text)))
    # The second 'a' is the one YAML keeps: its problems carry its own line.
    assert any(p.where == "step 'a' (line 4)" and "unknown key 'bogus'" in p.message for p in info.value.problems)


def test_only_parameter_problems_give_exit_code_2(tmp_path: Path, blocks: dict[str, Path]) -> None:
    text = f"name: t\nsteps:\n  a: {{block: {blocks['source']}, params: {{count: -1}}}}\n"
    with pytest.raises(InputParametersError) as info:
        plan_workflow(load_workflow(_write(tmp_path, text)))
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text, message", [
    ("steps: [", "not valid YAML (line"),
    ("- a\n- b\n", "must be a mapping"),
    ("name: x\nsteps: {}\n", "at least one step"),
    ("name: x\nsteps:\n  1bad: {block: x}\n", "step names start with a letter"),
])
def test_malformed_workflow_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(WorkflowError) as info:
        plan_workflow(parse_workflow(text, tmp_path / "wf.yaml"))
    assert message in (str(info.value) + "\n".join(map(str, info.value.problems)))


def test_missing_and_huge_and_binary_workflow_files(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="not found"):
        load_workflow(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(WorkflowError, match="not UTF-8"):
        load_workflow(binary)
    huge = tmp_path / "huge.yaml"
    huge.write_text("#" * (2 << 20))
    with pytest.raises(WorkflowError, match="limited"):
        load_workflow(huge)


def test_capability_mismatch_and_first_last_rules(tmp_path: Path) -> None:
    root = tmp_path / "b"
    raster_out = write_block(root, "rasters", kind="data", source="", params={})
    manifest = raster_out / "UP42Manifest.json"
    manifest.write_text(manifest.read_text().replace('"misc"', '"raster"'))
    vector_in = write_block(root, "vectors", kind="processing", source="", params={},
                            inputs={"vector": {"up42_standard": {"format": "GeoJSON"}}})
    second_data = write_block(root, "second", kind="data", source="", params={})
    text = f"name: t\nsteps:\n  r: {{block: {raster_out}}}\n  v: {{block: {vector_in}}}\n  d: {{block: {second_data}}}\n"
    with pytest.raises(WorkflowError) as info:
        plan_workflow(load_workflow(_write(tmp_path, text)))
    joined = "\n".join(map(str, info.value.problems))
    assert "produces ['raster'] but this block reads ['vector']" in joined
    assert "must be the first step" in joined


def test_yaml_anchor_bombs_and_self_references_are_refused_quickly(tmp_path: Path, blocks: dict[str, Path]) -> None:
    import time

    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = "name: bomb\nanchors:\n  " + "\n  ".join(levels) + f"\nsteps:\n  a: {{block: {blocks['source']}, params: {{text: *l8}}}}\n"
    started = time.monotonic()
    with pytest.raises(WorkflowError, match="expands to more than 100000 values"):
        parse_workflow(bomb, tmp_path / "bomb.yaml")
    assert time.monotonic() - started < 5  # 10^9 values on expansion; refused from the node graph

    deep = "name: deep\nsteps:\n  a: {block: x, params: {p: " + "[" * 20000 + "]" * 20000 + "}}\n"
    with pytest.raises(WorkflowError, match="nested too deeply"):
        parse_workflow(deep, tmp_path / "deep.yaml")

    with pytest.raises(WorkflowError, match="refers to itself"):
        parse_workflow("name: loop\nsteps: &s\n  a: {block: x, params: {p: *s}}\n", tmp_path / "loop.yaml")

    # Ordinary anchors for shared parameters still work, kept under an `x-` key.
    shared = (
        f"name: shared\nx-common: &common {{count: 1}}\nsteps:\n  a: {{block: {blocks['source']}, params: *common}}\n"
    )
    workflow = parse_workflow(shared, tmp_path / "shared.yaml")
    assert workflow.steps[0].params == {"count": 1} and workflow.problems == []
    assert plan_workflow(workflow).steps[0].params["count"] == 1
