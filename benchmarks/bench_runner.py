"""Runner benchmarks (need a Docker daemon and the base image; see .ci/docker-setup.sh).

1. per-step overhead of the docker engine over a bare `docker run` of the same image doing the same work;
2. a 3-step chain on 2 GB vs 2 MB of input (runner overhead ratio; no copying), next to `cp -r` of the data;
3. the same 3-step chain run by blockkit (docker) and by cwltool from a hand-written CWL workflow;
4. sealing: a step writing 2 GB in 200 files, the runner's time after the block exits (taking the
   output over: rename, walk, read-only, hash) vs one `sha256sum` pass over the same files.

Run: python benchmarks/bench_runner.py [--big-mb 2048] [--part all|docker|seal] [--seal-mb 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from statistics import median

BLOCK_CODE = '''
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def summarise(fc, ctx):
    """Write one small summary file per run; the input features and files are forwarded (propagate)."""
    total = sum(ctx.input_path(f).stat().st_size for f in fc)
    rel = f"summary-{ctx.params['tag']}.json"
    ctx.output_path(rel).write_text('{"bytes": %d}' % total)
    return FeatureCollection([ctx.new_feature(geometry=None, data_path=rel, id=f"summary-{ctx.params['tag']}")])

if __name__ == "__main__":
    summarise.run()
'''

MANIFEST = {
    "_up42_specification_version": 2,
    "name": "bench-summarise",
    "type": "processing",
    "parameters": {"tag": {"type": "string", "default": "x"}},
    "input_capabilities": {"misc": {"up42_standard": {}}},
    "output_capabilities": {"misc": {"up42_standard": {}}},
    "blockkit": {"propagate": True},
}


def make_block(root: Path) -> Path:
    block = root / "summarise"
    (block / "src").mkdir(parents=True)
    (block / "UP42Manifest.json").write_text(json.dumps(MANIFEST))
    (block / "src" / "run.py").write_text(BLOCK_CODE)
    return block


def make_input(folder: Path, total_mb: int, files: int = 20) -> Path:
    folder.mkdir(parents=True)
    per = max(1, total_mb * (1 << 20) // files)
    features = []
    chunk = os.urandom(1 << 20)
    for i in range(files):
        with open(folder / f"part{i:02d}.bin", "wb") as fh:
            left = per
            while left > 0:
                fh.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        features.append({"type": "Feature", "id": f"part{i:02d}", "geometry": None,
                         "properties": {"up42.data_path": f"part{i:02d}.bin"}})
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return folder


def chain_workflow(root: Path, block: Path, input_dir: Path, name: str) -> Path:
    wf = root / f"{name}.yaml"
    wf.write_text(textwrap.dedent(f"""\
        name: {name}
        input: {input_dir}
        steps:
          one:   {{block: {block}, params: {{tag: one}}}}
          two:   {{block: {block}, params: {{tag: two}}}}
          three: {{block: {block}, params: {{tag: three}}}}
        """))
    return wf


def blockkit_run(workflow: Path, runs: Path, engine: str, use_cache: bool = False) -> float:
    from blockkit.runner._session import RunRequest, run_request

    start = time.perf_counter()
    run_request(RunRequest(target=workflow, engine=engine, runs_dir=runs, use_cache=use_cache))
    return time.perf_counter() - start


def bare_docker_run(image: str, input_dir: Path, output_dir: Path) -> float:
    """`docker run` of the block image by hand, with the limits of the block's machine type.

    The limits are part of "the same work": the CPU share and memory limit blockkit gives a
    machine type (`--cpu-shares`, not a `--cpus` cap, as `blockkit run` without --strict-cpu).
    """
    from blockkit.contract._manifest import parse_manifest

    cpus, memory_mb = parse_manifest(MANIFEST, None).resources
    output_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(output_dir, 0o777)
    start = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", "1000:1000",
                    "--cpu-shares", str(max(2, int(cpus * 1024))), "--memory", f"{memory_mb}m", "--memory-swap", f"{memory_mb}m",
                    "-v", f"{input_dir}:/tmp/input:ro", "-v", f"{output_dir}:/tmp/output",
                    "-e", 'UP42_TASK_PARAMETERS={"tag": "bare"}', image],
                   check=True, capture_output=True)
    return time.perf_counter() - start


CWL_TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement:
    dockerPull: "IMAGE"
  InlineJavascriptRequirement: {}
  EnvVarRequirement:
    envDef:
      UP42_TASK_PARAMETERS: '$(JSON.stringify({"tag": inputs.tag}))'
baseCommand: [python, /block/src/run.py]
arguments: [--input, $(inputs.input_dir.path), --output, $(runtime.outdir)/out]
inputs:
  input_dir: Directory
  tag: string
outputs:
  out:
    type: Directory
    outputBinding: {glob: out}
"""

CWL_WORKFLOW = """\
cwlVersion: v1.2
class: Workflow
inputs:
  input_dir: Directory
outputs:
  result: {type: Directory, outputSource: three/out}
steps:
  one: {run: tool.cwl, in: {input_dir: input_dir, tag: {default: one}}, out: [out]}
  two: {run: tool.cwl, in: {input_dir: one/out, tag: {default: two}}, out: [out]}
  three: {run: tool.cwl, in: {input_dir: two/out, tag: {default: three}}, out: [out]}
"""


def cwltool_run(root: Path, image: str, input_dir: Path) -> float:
    cwl = root / "cwl"
    cwl.mkdir(exist_ok=True)
    (cwl / "tool.cwl").write_text(CWL_TOOL.replace("IMAGE", image))
    (cwl / "chain.cwl").write_text(CWL_WORKFLOW)
    (cwl / "job.yml").write_text(f"input_dir: {{class: Directory, path: {input_dir}}}\n")
    out = root / "cwl-out"
    cwltool = Path(sys.executable).with_name("cwltool")
    start = time.perf_counter()
    done = subprocess.run([str(cwltool), "--quiet", "--outdir", str(out), "--tmpdir-prefix", f"{root}/cwltmp/",
                           "--tmp-outdir-prefix", f"{root}/cwlout/", str(cwl / "chain.cwl"), str(cwl / "job.yml")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cwltool failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


WRITER_CODE = '''
import json, os
P = json.loads(os.environ["UP42_TASK_PARAMETERS"])
out = os.environ["BLOCKKIT_OUTPUT_DIR"]
per = P["mb"] * (1 << 20) // P["files"]
chunk = os.urandom(1 << 20)
features, inodes = [], {}
for i in range(P["files"]):
    name = f"f{i:03d}.bin"
    with open(os.path.join(out, name), "wb") as fh:
        left = per
        while left > 0:
            fh.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    inodes[name] = os.stat(os.path.join(out, name)).st_ino
    features.append({"type": "Feature", "id": name, "geometry": None, "properties": {"up42.data_path": name}})
json.dump({"type": "FeatureCollection", "features": features}, open(os.path.join(out, "data.json"), "w"))
print("INODES " + json.dumps(inodes))
'''


def seal_benchmark(root: Path, total_mb: int, files: int = 200) -> None:
    """The runner's work after a block exits (sealing its output) vs `sha256sum` of the same files."""
    from blockkit.runner._engine import StepResult, StepSpec
    from blockkit.runner._plan import plan_workflow
    from blockkit.runner._process_engine import ProcessEngine
    from blockkit.runner._run import RunOptions, WorkflowRun
    from blockkit.runner._workflow import load_workflow

    block = root / "writer"
    (block / "src").mkdir(parents=True)
    (block / "UP42Manifest.json").write_text(json.dumps({
        **MANIFEST, "name": "bench-writer", "type": "data", "input_capabilities": {},
        "parameters": {"mb": {"type": "integer"}, "files": {"type": "integer"}}, "blockkit": {}}))
    (block / "src" / "run.py").write_text(WRITER_CODE)
    wf = root / "seal.yaml"
    wf.write_text(f"name: seal\nsteps:\n  w: {{block: {block}, params: {{mb: {total_mb}, files: {files}}}}}\n")

    class TimedEngine(ProcessEngine):
        """The process engine, noting when the block has exited."""

        exited = 0.0
        log: list[str] = []

        def run_step(self, spec: StepSpec, on_log_line=None) -> StepResult:  # type: ignore[override]
            result = super().run_step(spec, lambda step, line: self.log.append(line))
            TimedEngine.exited = time.perf_counter()
            return result

    done: dict[str, float] = {}

    def on_event(kind: str, step: str, info: dict) -> None:
        if kind == "done":
            done[step] = time.perf_counter()

    run = WorkflowRun(plan_workflow(load_workflow(wf)), RunOptions(
        engine=TimedEngine(), runs_dir=root / "seal-runs", use_cache=False, on_event=on_event))
    folder = run.execute()
    after_exit = done["w"] - TimedEngine.exited
    out = folder.output_dir("w")
    written = json.loads(next(line for line in TimedEngine.log if line.startswith("INODES "))[7:])
    same = all((out / name).stat().st_ino == ino for name, ino in written.items())
    names = sorted(str(p) for p in out.glob("f*.bin"))
    start = time.perf_counter()
    subprocess.run(["sha256sum", *names], check=True, capture_output=True)
    sha = time.perf_counter() - start
    openssl = ""
    if shutil.which("openssl"):
        start = time.perf_counter()
        subprocess.run(["openssl", "dgst", "-sha256", *names], check=True, capture_output=True)
        ssl = time.perf_counter() - start
        openssl = f"; vs `openssl dgst -sha256` (SHA extensions, like hashlib) {ssl:.2f} s: {after_exit / ssl:.2f}x"
    print(f"sealing a step's output of {total_mb} MB in {files} files: runner after the block exits "
          f"{after_exit:.2f} s vs one sha256sum pass {sha:.2f} s: {after_exit / sha:.2f}x (target <= 1.2x); "
          f"no byte copied (same inodes as the block wrote): {'yes' if same else 'NO'}{openssl}")
    from blockkit.runner._seal import remove_tree

    remove_tree(root / "seal-runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big-mb", type=int, default=2048)
    parser.add_argument("--small-mb", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=9, help="runs of each side of the one-step comparison")
    parser.add_argument("--part", choices=["all", "docker", "chain", "seal"], default="all")
    parser.add_argument("--seal-mb", type=int, default=2048)
    args = parser.parse_args()
    if args.part in ("all", "seal"):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BLOCKKIT_BENCH_DIR")) as tmp:
            seal_benchmark(Path(tmp), args.seal_mb)
        if args.part == "seal":
            return
    from blockkit.runner._build import build_block_image
    from blockkit.runner._docker_engine import docker_available

    if not docker_available():
        print("docker daemon not available: runner benchmarks skipped (run bash .ci/docker-setup.sh)")
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BLOCKKIT_BENCH_DIR")) as tmp:
        root = Path(tmp)
        block = make_block(root)
        image = build_block_image(block).tag
        small = make_input(root / "small", args.small_mb)
        big = make_input(root / "big", args.big_mb)

        if args.part == "chain":
            wf_small = chain_workflow(root, block, small, "chain-small")
            wf_big = chain_workflow(root, block, big, "chain-big")
            blockkit_run(wf_small, root / "runs", "docker")
            blockkit_run(wf_big, root / "runs", "docker")
            smalls, bigs = [], []
            for _ in range(3):  # alternating, so both see the same load
                smalls.append(blockkit_run(wf_small, root / "runs", "docker"))
                bigs.append(blockkit_run(wf_big, root / "runs", "docker"))
            print(f"3-step chain: {args.big_mb} MB {median(bigs):.2f} s vs {args.small_mb} MB {median(smalls):.2f} s, "
                  f"ratio {median(bigs) / median(smalls):.2f}x median of 3 (target <= 1.5x)")
            return
        # 1. one step: blockkit docker engine vs bare docker run, alternating so both see the same load
        one = root / "one.yaml"
        one.write_text(f"name: one\ninput: {small}\nsteps:\n  s: {{block: {block}, params: {{tag: one}}}}\n")
        blockkit_run(one, root / "runs", "docker")  # warm-up
        ours, bare = [], []
        for i in range(args.repeat):
            ours.append(blockkit_run(one, root / "runs", "docker"))
            bare.append(bare_docker_run(image, small, root / f"bare{i}"))
        print(f"docker step ({args.repeat} runs each): blockkit median {median(ours):.3f} s (best {min(ours):.3f}), "
              f"bare docker run median {median(bare):.3f} s (best {min(bare):.3f}), "
              f"ratio {median(ours) / median(bare):.2f}x median, {min(ours) / min(bare):.2f}x best (target < 1.3x)")

        # 2. 3-step chain, 2 GB vs 2 MB (cold: file hashes computed; warm: hash cache, steps re-run)
        wf_small = chain_workflow(root, block, small, "chain-small")
        wf_big = chain_workflow(root, block, big, "chain-big")
        cold_small = blockkit_run(wf_small, root / "runs", "docker")
        cold_big = blockkit_run(wf_big, root / "runs", "docker")
        warm_small = min(blockkit_run(wf_small, root / "runs", "docker") for _ in range(2))
        warm_big = min(blockkit_run(wf_big, root / "runs", "docker") for _ in range(2))
        start = time.perf_counter()
        subprocess.run(["cp", "-r", str(big), str(root / "big-copy")], check=True)
        copy = time.perf_counter() - start
        shutil.rmtree(root / "big-copy")
        print(f"3-step chain on {args.small_mb} MB: {warm_small / 3:.3f} s per step vs bare docker run "
              f"{median(bare):.3f} s: {warm_small / 3 / median(bare):.2f}x per step")
        print(f"3-step chain: {args.big_mb} MB {warm_big:.2f} s vs {args.small_mb} MB {warm_small:.2f} s, "
              f"ratio {warm_big / warm_small:.2f}x (target <= 1.5x); first run with hashing: "
              f"{cold_big:.2f} s vs {cold_small:.2f} s ({cold_big / cold_small:.2f}x); cp -r of {args.big_mb} MB: {copy:.2f} s")

        # 3. blockkit (docker) vs cwltool, 3-step chain on the small input
        cwl = cwltool_run(root, image, small)
        print(f"3-step chain: blockkit docker {warm_small:.2f} s, cwltool {cwl:.2f} s, "
              f"blockkit is {cwl / warm_small:.2f}x faster (target >= 2x)")


if __name__ == "__main__":
    main()
