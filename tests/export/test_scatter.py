"""`scatter: features` in the workflow file and in the CWL export; the split and merge tools as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blockkit.contract._datajson import dumps, load_data_json, write_data_json
from blockkit.contract.errors import ExitCode, NoInputError, NoOutputError, WrongInputError
from blockkit.runtime import scatter
from blockkit.export._cwl import export_cwl
from blockkit.runner._plan import plan_workflow
from blockkit.runner._workflow import load_workflow, parse_workflow

from .blocks import make_blocks
from .test_cwl import cwltool_validate, fixed_images, graph, write_workflow

BIN = Path(sys.executable).parent
BLOCKKIT = BIN / "blockkit"
REPO = Path(__file__).resolve().parents[2]


def _blockkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BLOCKKIT), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture()
def blocks(tmp_path: Path) -> dict[str, Path]:
    return make_blocks(tmp_path / "blocks")


def scattered(tmp_path: Path, blocks: dict[str, Path], extra: str = "") -> Path:
    return write_workflow(tmp_path, f"""
name: scattered
steps:
  src:  {{block: {blocks['source']}, params: {{count: 3}}}}
  up:   {{block: {blocks['upper']}, scatter: features, params: {{scale: 2.0}}}}
  last: {{block: {blocks['upper']}}}
{extra}""", "scatter.yaml")


# --- the workflow field ----------------------------------------------------------------------------

def test_scatter_field_is_parsed_and_only_features_is_accepted() -> None:
    wf = parse_workflow("name: w\nsteps:\n  a: {image: x, scatter: features}\n  b: {image: y}\n")
    assert [s.scatter for s in wf.steps] == ["features", None] and not wf.problems
    bad = parse_workflow("name: w\nsteps:\n  a: {image: x, scatter: bands}\n  b: {image: y, scatter: [features]}\n")
    assert [p.message for p in bad.problems] == [
        "'scatter' must be features, not 'bands'", "'scatter' must be features, not ['features']"]


def test_validate_reports_a_wrong_scatter_value_with_its_step_and_line(tmp_path, blocks) -> None:
    workflow = write_workflow(tmp_path, f"""
name: w
steps:
  src: {{block: {blocks['source']}}}
  up:  {{block: {blocks['upper']}, scatter: feature}}
""")
    result = _blockkit("validate", str(workflow), cwd=tmp_path)
    assert result.returncode == int(ExitCode.WRONG_INPUT_ERROR)
    assert "step 'up' (line 5): 'scatter' must be features, not 'feature'" in result.stderr


# --- the exported document -------------------------------------------------------------------------

@pytest.mark.slow
def test_scattered_step_becomes_split_scatter_merge(tmp_path, blocks) -> None:
    plan = plan_workflow(load_workflow(scattered(tmp_path, blocks)))
    document = export_cwl(plan, images=fixed_images(plan))
    path = tmp_path / "app.cwl"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert cwltool_validate(path).returncode == 0
    items = graph(document)
    main = items["main"]
    assert main["requirements"] == {"ScatterFeatureRequirement": {}}
    steps = {s["id"]: s for s in main["steps"]}
    assert list(steps) == ["src", "up__split", "up__each", "up", "last"]
    assert steps["up__split"]["run"] == "#up-split-tool"
    assert {i["id"]: i["source"] for i in steps["up__split"]["in"]} == {"input": "src/output"}
    each = steps["up__each"]
    assert each["scatter"] == "input" and each["run"] == "#up-tool"
    each_in = {i["id"]: i["source"] for i in each["in"]}
    assert each_in["input"] == "up__split/parts" and each_in["scale"] == "up__scale"
    merge_in = {i["id"]: i["source"] for i in steps["up"]["in"]}
    assert merge_in == {"names": "up__split/names", "parts": "up__each/output", "part_quicklooks": "up__each/quicklooks"}
    # The next step reads the merged folder under the step's own name, as without scatter.
    assert {i["id"]: i["source"] for i in steps["last"]["in"]}["input"] == "up/output"
    # The per-feature tool writes no catalog (the merge does) and always has a quicklook folder.
    tool = items["up-tool"]
    assert "--stac" not in tool["arguments"] and "--stac" in items["up-merge-tool"]["arguments"]
    assert {o["id"]: o["type"] for o in tool["outputs"]}["quicklooks"] == "Directory"
    # Split and merge run in the block's own image: nothing to pull, no network.
    for helper in ("up-split-tool", "up-merge-tool"):
        assert items[helper]["requirements"]["DockerRequirement"] == {"dockerPull": "blockkit/cwl-upper:test"}
        assert "NetworkAccess" not in items[helper]["requirements"]


@pytest.mark.slow
def test_scatter_after_fan_in_splits_the_merged_input(tmp_path, blocks) -> None:
    workflow = write_workflow(tmp_path, f"""
name: fan-scatter
steps:
  a:  {{block: {blocks['source']}}}
  b:  {{block: {blocks['source']}, after: []}}
  up: {{block: {blocks['upper']}, after: [a, b], scatter: features}}
""")
    plan = plan_workflow(load_workflow(workflow))
    document = export_cwl(plan, images=fixed_images(plan))
    items = graph(document)
    split = items["up-split-tool"]
    assert [i["id"] for i in split["inputs"]] == ["input_a", "input_b"]
    assert "--fan-in" in split["arguments"] and [e["entryname"] for e in
                                                 split["requirements"]["InitialWorkDirRequirement"]["listing"]] == ["_input/a", "_input/b"]
    assert [i["id"] for i in items["up-tool"]["inputs"] if i["type"] == "Directory"] == ["input"]
    path = tmp_path / "app.cwl"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert cwltool_validate(path).returncode == 0


@pytest.mark.parametrize("body, message", [
    ("  src: {{block: {source}, scatter: features}}\n",
     "step 'src': 'scatter: features' needs input features"),
    ("  src: {{block: {source}}}\n  up: {{block: {upper}, scatter: features}}\n  up__split: {{block: {upper}}}\n",
     "step 'up': its scatter step 'up__split' has the name of another step"),
])
def test_export_refuses_a_scatter_it_cannot_express(tmp_path, blocks, body, message) -> None:
    workflow = write_workflow(tmp_path, "name: w\nsteps:\n" + body.format(source=blocks["source"], upper=blocks["upper"]))
    result = _blockkit("export", "cwl", str(workflow), "--no-build", "-o", str(tmp_path / "app.cwl"), cwd=tmp_path)
    assert result.returncode == int(ExitCode.WRONG_INPUT_ERROR), result.stderr
    assert message in result.stderr.splitlines()[0]
    assert not (tmp_path / "app.cwl").exists()


# --- workflow output: and keys: --------------------------------------------------------------------

@pytest.mark.slow
def test_export_refuses_a_workflow_output_with_one_line_then_leaves_it_when_told(tmp_path, blocks) -> None:
    workflow = write_workflow(tmp_path, f"""
name: publish
output: s3://results/ndvi/
keys: {{output: results}}
steps:
  src: {{block: {blocks['source']}}}
""")
    refused = _blockkit("export", "cwl", str(workflow), "--no-build", "-o", str(tmp_path / "app.cwl"), cwd=tmp_path)
    assert refused.returncode == int(ExitCode.WRONG_INPUT_ERROR)
    first = refused.stderr.splitlines()[0]
    assert "'s3://results/ndvi/'" in first and "--leave-output" in first
    assert "blockkit stage-out RESULTS_DIR s3://results/ndvi/ --key results" in first
    assert not (tmp_path / "app.cwl").exists()
    left = _blockkit("export", "cwl", str(workflow), "--no-build", "--leave-output", "-o", str(tmp_path / "app.cwl"),
                     cwd=tmp_path)
    assert left.returncode == 0, left.stderr
    assert "note: the workflow's output 's3://results/ndvi/' is not exported" in left.stderr


@pytest.mark.slow
def test_an_input_key_is_refused_unless_the_input_is_given_another_way(tmp_path, blocks) -> None:
    staged = tmp_path / "staged"
    write_data_json(staged, {"type": "FeatureCollection", "features": []})
    workflow = write_workflow(tmp_path, f"""
name: private-input
input: s3://private/scenes/
keys: {{input: archive}}
steps:
  up: {{block: {blocks['upper']}}}
""")
    refused = _blockkit("export", "cwl", str(workflow), "--no-build", "-o", str(tmp_path / "app.cwl"), cwd=tmp_path)
    assert refused.returncode == int(ExitCode.WRONG_INPUT_ERROR)
    assert "keystore key 'archive'" in refused.stderr.splitlines()[0]
    assert "blockkit stage-in s3://private/scenes/ DIR --key archive" in refused.stderr.splitlines()[0]
    given = _blockkit("export", "cwl", str(workflow), "--no-build", "--input", str(staged), "-o",
                      str(tmp_path / "app.cwl"), "--job", str(tmp_path / "job.yml"), cwd=tmp_path)
    assert given.returncode == 0, given.stderr
    job = yaml.safe_load((tmp_path / "job.yml").read_text())
    assert job["input"] == {"class": "Directory", "path": str(staged.resolve())}


def test_input_option_without_a_workflow_input_is_refused(tmp_path, blocks) -> None:
    workflow = write_workflow(tmp_path, f"name: w\nsteps:\n  src: {{block: {blocks['source']}}}\n")
    result = _blockkit("export", "cwl", str(workflow), "--no-build", "--input", "x", cwd=tmp_path)
    assert result.returncode != 0 and "this workflow has none" in result.stderr


# --- part names, split and merge --------------------------------------------------------------------

def feature(ident, data_path=None, **props):
    properties = dict(props)
    if data_path:
        properties["up42.data_path"] = data_path
    out = {"type": "Feature", "geometry": None, "properties": properties}
    if ident is not None:
        out["id"] = ident
    return out


def test_part_names_are_plain_unique_and_independent_of_position() -> None:
    assert scatter.part_name(feature("S2A_2024-06-15")) == "S2A_2024-06-15"
    weird = scatter.part_name(feature("a:b/../c d"))
    assert weird.startswith("a_b_c_d-") and len(weird) == len("a_b_c_d-") + 8
    assert scatter.part_name(feature("a:b")) != scatter.part_name(feature("a/b"))  # both a_b, the hash differs
    for reserved in ("data", "catalog", "_quicklooks", "..", ".hidden"):
        name = scatter.part_name(feature(reserved))
        assert name != reserved and name[0].isalnum()
    assert scatter.part_name(feature(None, x=1)) == scatter.part_name(feature(None, x=1)) != scatter.part_name(feature(None, x=2))
    assert scatter.part_names([feature("a"), feature("b"), feature("a")]) == ["a", "b", "a-2"]
    assert scatter.part_names([feature("b"), feature("a")])[1] == scatter.part_names([feature("a")])[0]
    assert len(scatter.part_name(feature("x" * 500))) <= 64


def make_input(folder: Path) -> Path:
    (folder / "scenes" / "one").mkdir(parents=True)
    (folder / "scenes" / "one" / "a.tif").write_bytes(b"A" * 1000)
    (folder / "b.txt").write_text("B")
    (folder / "unrelated.txt").write_text("not a feature's")
    write_data_json(folder, {"type": "FeatureCollection", "features": [
        feature("one", "scenes/one"), feature("two", "b.txt", k=2), feature("three")]})
    return folder


def test_split_gives_each_feature_its_own_files_hard_linked(tmp_path) -> None:
    source = make_input(tmp_path / "in")
    parts = scatter.split(source, tmp_path / "parts")
    assert [name for name, _ in parts] == ["one", "two", "three"]
    one, two, three = (folder for _, folder in parts)
    assert sorted(p.relative_to(one).as_posix() for p in one.rglob("*")) == [
        "data.json", "scenes", "scenes/one", "scenes/one/a.tif"]
    assert os.stat(one / "scenes/one/a.tif").st_ino == os.stat(source / "scenes/one/a.tif").st_ino  # no copy
    assert sorted(p.name for p in two.iterdir()) == ["b.txt", "data.json"]
    assert [p.name for p in three.iterdir()] == ["data.json"]
    assert [f["id"] for f in load_data_json(two)] == ["two"]
    assert load_data_json(two).features[0]["properties"] == {"k": 2, "up42.data_path": "b.txt"}


def test_split_writes_scratch_without_fsync_and_results_keep_it(tmp_path, monkeypatch) -> None:
    """The split folders are made again on every attempt: no fsync per feature; data.json as a result keeps it."""
    source = make_input(tmp_path / "in")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    parts = scatter.split(source, tmp_path / "parts")
    assert len(parts) == 3 and synced == []
    assert [p.name for p in (tmp_path / "parts" / "one").iterdir() if p.name.startswith(".")] == []  # no temp file left
    write_data_json(tmp_path / "result", load_data_json(parts[0][1]))
    assert len(synced) == 1


def test_split_refuses_a_symlinked_data_file_and_an_empty_input(tmp_path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("host file")
    source = tmp_path / "in"
    source.mkdir()
    (source / "link.txt").symlink_to(outside)
    write_data_json(source, {"type": "FeatureCollection", "features": [feature("x", "link.txt")]})
    with pytest.raises(WrongInputError, match="symlink"):
        scatter.split(source, tmp_path / "parts")
    assert not any((tmp_path / "parts").rglob("link.txt"))
    empty = tmp_path / "empty"
    write_data_json(empty, {"type": "FeatureCollection", "features": []})
    with pytest.raises(NoInputError, match="no features to scatter over"):
        scatter.split(empty, tmp_path / "parts2")


def test_split_reads_a_stac_only_input_and_keeps_each_item(tmp_path) -> None:
    from blockkit.runtime._stac import write_catalog

    source = make_input(tmp_path / "in")
    write_catalog(source, load_data_json(source))
    (source / "data.json").unlink()
    parts = scatter.split(source, tmp_path / "parts")
    assert sorted(name for name, _ in parts) == ["one", "three", "two"]
    one = dict(parts)["one"]
    (f,) = load_data_json(one).features
    assert (one / f["properties"]["up42.stac_item"]).is_file() and (one / "scenes/one/a.tif").is_file()


def make_part(folder: Path, ident: str, payload: str, quicklook: bool = True) -> tuple[Path, Path]:
    (folder / "out" / "sub").mkdir(parents=True)
    (folder / "out" / "sub" / "r.tif").write_text(payload)
    (folder / "out" / "aux.txt").write_text("aux " + payload)
    write_data_json(folder / "out", {"type": "FeatureCollection", "features": [
        feature(ident, "sub/r.tif", payload=payload), feature("shared", None)]})
    (folder / "ql").mkdir()
    if quicklook:
        (folder / "ql" / "q.png").write_bytes(b"\x89PNG" + payload.encode())
    return folder / "out", folder / "ql"


def test_merge_prefixes_paths_keeps_ids_unique_and_quicklooks(tmp_path) -> None:
    p1, q1 = make_part(tmp_path / "1", "x", "one")
    p2, q2 = make_part(tmp_path / "2", "y", "two", quicklook=False)
    out, ql = tmp_path / "merged", tmp_path / "quicklooks"
    assert scatter.merge([("x", p1, q1), ("y", p2, q2)], out, ql) == 4
    merged = load_data_json(out)  # written, and every data path exists
    assert [f["id"] for f in merged] == ["x", "shared", "y", "y-shared"]
    assert [f["properties"].get("up42.data_path") for f in merged] == ["x/sub/r.tif", None, "y/sub/r.tif", None]
    # Written a feature at a time, byte for byte what writing the whole collection gives.
    assert (out / "data.json").read_text() == dumps(merged)
    assert (out / "x" / "aux.txt").read_text() == "aux one" and (out / "y" / "sub" / "r.tif").read_text() == "two"
    assert not (out / "x" / "data.json").exists()
    assert sorted(p.relative_to(ql).as_posix() for p in ql.rglob("*")) == ["x", "x/q.png"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "-x", "x" * 200])
def test_merge_refuses_a_part_name_that_is_not_a_plain_folder_name(tmp_path, name) -> None:
    part, ql = make_part(tmp_path / "1", "x", "one")
    with pytest.raises(WrongInputError, match="not a plain folder name"):
        scatter.merge([(name, part, ql)], tmp_path / "merged")
    assert not (tmp_path / "escape").exists()


def test_split_and_merge_as_the_container_runs_them(tmp_path, capfd) -> None:
    source = make_input(tmp_path / "in")
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    code = scatter.main(["split", "--step", "s", "--input", str(source), "--parts", str(outdir / "_parts"),
                         "--cwl-output", str(outdir / "cwl.output.json")])
    assert code == 0
    listing = json.loads((outdir / "cwl.output.json").read_text())
    assert listing["names"] == ["one", "two", "three"]
    assert listing["parts"] == [{"class": "Directory", "location": f"_parts/{n}"} for n in listing["names"]]
    merged_dir = tmp_path / "merged"
    args = ["merge", "--step", "s", "--output", str(merged_dir / "s"), "--quicklooks", str(merged_dir / "q"), "--stac"]
    for name in listing["names"]:
        args += ["--name", name, "--part", str(outdir / "_parts" / name)]
    assert scatter.main(args) == 0
    assert (merged_dir / "s" / "catalog.json").is_file()
    assert [f["properties"].get("up42.data_path") for f in load_data_json(merged_dir / "s")] == [
        "one/scenes/one", "two/b.txt", None]
    assert scatter.main(["merge", "--step", "s", "--output", str(tmp_path / "m2"), "--quicklooks", str(tmp_path / "q2"),
                         "--name", "a", "--name", "b", "--part", str(outdir / "_parts" / "one")]) == int(ExitCode.WRONG_INPUT_ERROR)
    assert "step 's': merge failed with exit code 4" in capfd.readouterr().err
    assert scatter.main(["split", "--step", "s", "--parts", str(tmp_path / "p3"),
                         "--cwl-output", str(tmp_path / "c.json")]) == int(ExitCode.NO_INPUT_ERROR)


def test_example_scatter_and_fan_out_workflows_validate() -> None:
    for name in ("scatter.yaml", "fan-out.yaml"):
        result = _blockkit("validate", str(REPO / "examples" / "workflows" / name), cwd=REPO)
        assert result.returncode == 0, result.stderr


def test_merge_holds_one_part_in_memory_at_a_time(tmp_path) -> None:
    """Each part's data.json fits the step's memory; all of them at once need not (the runner merges in its own process)."""
    import tracemalloc

    wide = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "w", "geometry": None, "properties": {"wide": [[] for _ in range(100_000)]}}]}
    parts = []
    for n in range(6):
        write_data_json(tmp_path / f"p{n}", wide)
        parts.append((f"p{n}", tmp_path / f"p{n}", None))
    tracemalloc.start()
    try:
        load_data_json(tmp_path / "p0", required=False)
        one = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert scatter.merge(parts, tmp_path / "merged") == 6
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * one, (peak, one)  # was: all 6 parts' features, then the whole text at once
    assert len(load_data_json(tmp_path / "merged")) == 6


def test_merge_refuses_a_part_that_holds_a_symlink_and_writes_nothing_outside(tmp_path) -> None:
    part, ql = make_part(tmp_path / "1", "x", "one")
    (part / "evil").symlink_to("/etc/passwd")
    out = tmp_path / "merged"
    with pytest.raises(WrongInputError, match="symlink"):
        scatter.merge([("x", part, ql)], out, tmp_path / "q")
    assert not (out / "x" / "evil").exists() and not (out / "data.json").exists()


@pytest.mark.slow
def test_export_notes_that_a_url_input_needs_a_platform_or_a_local_stage_in(tmp_path, blocks) -> None:
    workflow = write_workflow(tmp_path, f"""
name: stac
input: stac+http://127.0.0.1:9/stac/catalog.json
steps:
  up: {{block: {blocks['upper']}}}
""")
    result = _blockkit("export", "cwl", str(workflow), "--no-build", "--image", "up=x:1", "-o", str(tmp_path / "a.cwl"),
                       "--job", str(tmp_path / "job.yml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cwltool and Toil cannot: stage it in first (blockkit stage-in URL DIR) and export with --input DIR" in result.stderr


def test_merge_refuses_a_part_that_wrote_no_data_json(tmp_path) -> None:
    p1, q1 = make_part(tmp_path / "1", "x", "one")
    p2, q2 = make_part(tmp_path / "2", "y", "two")
    (p2 / "data.json").unlink()  # its block exited 0 without a result: the feature must not just vanish
    with pytest.raises(NoOutputError, match="feature 'y': its run wrote no data.json"):
        scatter.merge([("x", p1, q1), ("y", p2, q2)], tmp_path / "merged")
    assert not (tmp_path / "merged" / "data.json").exists()
    assert not list((tmp_path / "merged").glob(".data.json*"))  # nor a half-written one


def _stac_feature(ident: str, folder: str) -> dict:
    return {"type": "Feature", "id": ident, "geometry": None,
            "properties": {"up42.data_path": f"{folder}/B04.txt"},
            "assets": {"red": {"href": f"{folder}/B04.txt"}, "nir": {"href": f"{folder}/B08.txt"},
                       "meta": {"href": "https://example.invalid/meta.xml"}}}


def test_split_gives_each_feature_its_asset_files_and_merge_prefixes_their_hrefs(tmp_path) -> None:
    source = tmp_path / "in"
    for ident in ("s1", "s2"):
        (source / ident).mkdir(parents=True)
        for band in ("B04", "B08"):
            (source / ident / f"{band}.txt").write_text(f"{band} of {ident}")
    write_data_json(source, {"type": "FeatureCollection", "features": [_stac_feature("s1", "s1"),
                                                                       _stac_feature("s2", "s2")]})
    parts = scatter.split(source, tmp_path / "parts")
    for name, folder in parts:
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.txt")) == [
            f"{name}/B04.txt", f"{name}/B08.txt"]  # every band of its own, none of the other's
        assert load_data_json(folder).features[0]["assets"]["nir"]["href"] == f"{name}/B08.txt"
    scatter.merge([(name, folder, None) for name, folder in parts], tmp_path / "merged")
    for feature in load_data_json(tmp_path / "merged"):
        name = feature["id"]
        assets = feature["assets"]
        assert assets["nir"]["href"] == f"{name}/{name}/B08.txt" and assets["red"]["href"] == f"{name}/{name}/B04.txt"
        assert assets["meta"]["href"] == "https://example.invalid/meta.xml"  # a URL is left alone
        assert (tmp_path / "merged" / assets["nir"]["href"]).read_text() == f"B08 of {name}"
    assert [f["assets"]["nir"]["href"] for f in load_data_json(parts[0][1])] == ["s1/B08.txt"]  # inputs untouched


def test_split_leaves_out_an_asset_file_nobody_wrote_as_a_plain_step_would_see_it(tmp_path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.tif").write_text("a")
    write_data_json(source, {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "a", "geometry": None, "properties": {"up42.data_path": "a.tif"},
         "assets": {"data": {"href": "a.tif"}, "thumbnail": {"href": "thumb.png"}}}]})
    [(name, part)] = scatter.split(source, tmp_path / "parts")  # was: "up42.data_path 'thumb.png' does not exist"
    assert sorted(p.name for p in part.iterdir()) == ["a.tif", "data.json"]
