"""Reading a block's own Dockerfile: stages with build args, the offline pip lines, dev requirements."""

from __future__ import annotations

from pathlib import Path

from blockkit.runner._build import DEV_TOOLS, dockerfile_stages, drop_dev_requirements, own_dockerfile
from blockkit.runner._build import _offline_dockerfile, _dockerfile_lines  # noqa: PLC2701 - the build's own text


def test_stages_resolve_args_and_know_earlier_stages() -> None:
    text = "ARG BASE=python:3.7\nARG TAG\nARG OTHER\nFROM ${BASE} AS build\nRUN x\nFROM build\nFROM $OTHER:${TAG:-latest}\nFROM scratch\n"
    stages = dockerfile_stages(text, {"OTHER": "repo/img"})
    assert [(s.resolved, s.alias, s.external) for s in stages] == [
        ("python:3.7", "build", True), ("build", None, False), ("repo/img:latest", None, True), ("scratch", None, False),
    ]
    assert dockerfile_stages(text, {"BASE": "blockkit-base:bullseye", "TAG": "1"})[0].resolved == "blockkit-base:bullseye"
    assert dockerfile_stages(text, {"OTHER": "o", "TAG": "1"})[2].resolved == "o:1"
    # As in Docker: a build arg the Dockerfile does not declare before FROM is not substituted.
    assert dockerfile_stages("FROM $UNDECLARED:1\n", {"UNDECLARED": "x"})[0].resolved == ":1"


def test_offline_lines_follow_every_from_and_are_reset_at_the_end() -> None:
    text = "FROM a AS one\nRUN pip install -r requirements.txt \\\n    && true\nFROM b\nCMD [\"python\"]\n"
    out = _offline_dockerfile(_dockerfile_lines(text), "http://127.0.0.1:1/").splitlines()
    assert out[1].startswith("ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=http://127.0.0.1:1/")
    assert out[4].startswith("ENV PIP_NO_INDEX=1") and out[-1] == "ENV PIP_NO_INDEX=0 PIP_FIND_LINKS="
    assert "pip install -r requirements.txt      && true" in out[2]  # continuation joined, not broken


def test_dev_tools_are_commented_out_with_their_names(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("numpy\nPytest>=7  # tests\npytest_cov\nmypy-extensions==1.0\n-r other.txt\nblack[jupyter]\nrasterio\n")
    warnings = drop_dev_requirements(req)
    assert warnings == ["requirements.txt: development tools left out: Pytest, pytest_cov, mypy-extensions, black"]
    kept = [l for l in req.read_text().splitlines() if not l.startswith("#")]
    assert kept == ["numpy", "-r other.txt", "rasterio"]
    assert {"pytest", "mypy", "black", "coverage-badge"} <= DEV_TOOLS


def test_template_and_missing_dockerfiles_are_not_own(tmp_path: Path) -> None:
    assert own_dockerfile(tmp_path) is None
    (tmp_path / "Dockerfile").write_text("# blockkit-template-dockerfile\nFROM x\n")
    assert own_dockerfile(tmp_path) is None
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    assert own_dockerfile(tmp_path) == tmp_path / "Dockerfile"
