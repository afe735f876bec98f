"""Machine-type CPUs: the step's share by default, a hard cap with --strict-cpu (docker only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockkit.runner._session import RunRequest, run_request

from .blocks import write_block

QUOTA = '''
import blockkit
from blockkit import FeatureCollection

def first(*paths):
    for path in paths:
        try:
            return open(path).read().strip()
        except OSError:
            continue
    return "unreadable"

@blockkit.data_block
def quota(query, ctx):
    ctx.output_path("quota.txt").write_text(first("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))
    return FeatureCollection([ctx.new_feature(geometry=None, data_path="quota.txt", id="quota")])

if __name__ == "__main__":
    quota.run()
'''


def _quota(tmp_path: Path, runs: str, **kw) -> str:
    block = write_block(tmp_path / "blocks", "quota", kind="data", source=QUOTA, params={}, machine="small")
    summary = run_request(RunRequest(target=block, runs_dir=tmp_path / runs, use_cache=False, **kw))
    return (Path(summary["run_dir"]) / "steps" / "quota" / "output" / "quota.txt").read_text()


@pytest.mark.slow
@pytest.mark.docker
def test_a_small_step_is_capped_only_with_strict_cpu(tmp_path: Path, docker_client, base_image) -> None:
    assert _quota(tmp_path, "share", engine="docker") in ("-1", "max 100000")
    assert _quota(tmp_path, "strict", engine="docker", strict_cpu=True) in ("50000", "50000 100000")


def test_strict_cpu_on_the_process_engine_says_it_cannot_cap(tmp_path: Path) -> None:
    said: list[str] = []
    block = write_block(tmp_path / "blocks", "quota", kind="data", source=QUOTA, params={})
    summary = run_request(RunRequest(target=block, runs_dir=tmp_path / "runs", engine="process",
                                     strict_cpu=True, on_message=said.append))
    assert summary["status"] == "ok"
    assert [line for line in said if "--strict-cpu" in line] == [
        "warning: --strict-cpu: the process engine cannot cap a step's CPUs; steps use what they get "
        "(use --engine docker to cap them)"]
    assert json.loads((Path(summary["run_dir"]) / "run.json").read_text())["status"] == "ok"
