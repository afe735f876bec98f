"""Hostile blocks, a victim outside the run folder, and checks that runs still match their provenance."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# One plain-Python block that misbehaves as its `action` parameter says (both engines run it:
# the process engine as `python src/run.py`, the docker engine in an image built from the folder).
EVIL = r'''
import json, os, sys, time
P = json.loads(os.environ.get("UP42_TASK_PARAMETERS") or "{}")
OUT = os.environ.get("BLOCKKIT_OUTPUT_DIR", "/tmp/output")
IN = os.environ.get("BLOCKKIT_INPUT_DIR", "/tmp/input")
action, arg = P.get("action", "write"), P.get("arg", "")

def out(rel):
    return os.path.join(OUT, rel)

def fc(features):
    with open(out("data.json"), "w") as fh:
        json.dump({"type": "FeatureCollection", "features": features}, fh)

def feat(path, fid):
    return {"type": "Feature", "id": fid, "geometry": None, "properties": {"up42.data_path": path}}

if action == "write":
    os.makedirs(out("x"), exist_ok=True)
    open(out("x/payload.sh"), "w").write(arg or "payload\n")
    open(out("result.bin"), "w").write(arg or "ORIGINAL")
    fc([feat("x/payload.sh", "x"), feat("result.bin", "r")])
elif action == "many":
    for i in range(int(arg)):
        open(out(f"f{i:05d}.bin"), "w").write(f"file {i}\n" * 10)
    fc([feat(f"f{i:05d}.bin", f"f{i}") for i in range(int(arg))])
elif action == "plant_symlink":
    os.symlink(arg, out("x"))
    print("planted", out("x"), "->", arg)
    fc([])
elif action == "plant_tmp_symlinks":
    fc([])
    for pid in sorted(set(range(1, 4096)) | {os.getppid()}):
        os.symlink(arg, out(f".data.json.{pid}.tmp"))
elif action == "symlink_in_dir":
    os.makedirs(out("folder"))
    open(out("folder/a.txt"), "w").write("a\n")
    os.symlink("a.txt", out("folder/secret.txt"))
    fc([feat("folder", "f")])
elif action == "fifo":
    os.mkfifo(out("pipe"))
    fc([])
elif action == "sparse":
    with open(out("big.bin"), "wb") as fh:
        fh.truncate(30 << 30)
    fc([feat("big.bin", "b")])
elif action == "no_datajson":
    open(out("something.txt"), "w").write("no data.json\n")
elif action == "modify_input":
    changed = []
    for root, _, files in os.walk(IN):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "r+b") as fh:
                    fh.write(b"TAMPERED")
                changed.append(path)
            except OSError as exc:
                print("cannot modify", path, exc.strerror)
    print("modified", changed)
    fc([])
elif action == "hardlink_victim":
    os.link(arg, out("v"))
    fc([feat("v", "v")])
elif action == "fill":
    fc([])
    try:
        with open(out("filler.bin"), "wb") as fh:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
    except OSError as exc:
        print("filled:", exc.strerror)
elif action == "deep":
    fd = os.open(OUT, os.O_RDONLY)
    for _ in range(int(arg or 2000)):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    fc([])
elif action == "unreadable":
    os.makedirs(out("locked"))
    open(out("locked/a.bin"), "w").write("hidden\n")
    os.chmod(out("locked/a.bin"), 0)
    os.chmod(out("locked"), 0)
    open(out("b.bin"), "w").write("b\n")
    os.chmod(out("b.bin"), 0)
    fc([feat("b.bin", "b")])
elif action == "links_inside":
    for i in range(20):
        open(out(f"a{i}.bin"), "w").write(f"same {i}\n")
        os.link(out(f"a{i}.bin"), out(f"b{i}.bin"))
    fc([feat(f"b{i}.bin", f"b{i}") for i in range(20)])
elif action == "exit":
    sys.exit(int(arg))
elif action == "with_quicklook":
    open(out("result.bin"), "w").write("result\n")
    ql = os.environ.get("BLOCKKIT_QUICKLOOK_DIR", "/tmp/quicklooks")
    open(os.path.join(ql, "a.png"), "wb").write(b"\x89PNG " + arg.encode())
    fc([feat("result.bin", "r")])
elif action == "raw_datajson":
    open(out("data.json"), "w").write(arg)
elif action == "wide_datajson":  # arg "lists:N" (N empty arrays: ~27 bytes of memory a byte) or "text:N"
    kind, n = arg.split(":")
    value = "[" + ",".join(["[]"] * int(n)) + "]" if kind == "lists" else json.dumps("x" * int(n))
    open(out("data.json"), "w").write('{"type": "FeatureCollection", "features": [{"type": "Feature", "id": "w", '
                                      '"geometry": null, "properties": {"wide": ' + value + '}}]}')
elif action == "lock_output":
    fc([])
    os.chmod(OUT, int(arg or "0", 8))
elif action == "lock_sub":
    os.makedirs(out("sub"))
    open(out("sub/f"), "w").write("f\n")
    fc([feat("sub/f", "f")])
    os.chmod(out("sub"), int(arg, 8))
elif action == "lock_sub_fail":
    os.makedirs(out("sub/deeper"))
    open(out("sub/deeper/f"), "w").write("f\n")
    os.chmod(out("sub"), 0)
    sys.exit(3)
elif action == "sleep_write":
    time.sleep(float(arg))
    for i in range(200):
        open(out(f"f{i:03d}.bin"), "w").write(f"file {i}\n")
    fc([feat(f"f{i:03d}.bin", f"f{i}") for i in range(200)])
'''


def write_block(root: Path, name: str, *, kind: str, propagate: bool = False, secret: bool = False) -> Path:
    """Write the hostile block as a data or processing block (optionally propagating, with a secret)."""
    folder = root / name
    (folder / "src").mkdir(parents=True, exist_ok=True)
    misc = {"misc": {"up42_standard": {}}}
    params: dict = {"action": {"type": "string", "default": "write"}, "arg": {"type": "string", "default": ""}}
    if secret:
        params["token"] = {"type": "string", "default": "", "secret": True}
    manifest: dict = {
        "_up42_specification_version": 2,
        "name": name,
        "type": kind,
        "parameters": params,
        "input_capabilities": {} if kind == "data" else misc,
        "output_capabilities": misc,
    }
    if propagate:
        manifest["blockkit"] = {"propagate": True}
    (folder / "UP42Manifest.json").write_text(json.dumps(manifest))
    (folder / "src" / "run.py").write_text(EVIL)
    return folder


@pytest.fixture(scope="session")
def evil(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The hostile blocks: `evil` (data), `evilproc` (processing), `evilprop` (propagating), `secretive`."""
    root = tmp_path_factory.mktemp("evil-blocks")
    return {
        "evil": write_block(root, "evil", kind="data"),
        "evilproc": write_block(root, "evilproc", kind="processing"),
        "evilprop": write_block(root, "evilprop", kind="processing", propagate=True),
        "secretive": write_block(root, "secretive", kind="data", secret=True),
    }


def _snapshot(path: Path) -> dict[str, tuple[int, bytes | None]]:
    found: dict[str, tuple[int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            found[str(p.relative_to(path))] = (st.st_mode, p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    st = path.lstat()
    found["."] = (st.st_mode, path.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return found


@dataclass
class Victim:
    """A folder and a file outside every run folder that no block may touch."""

    folder: Path
    file: Path

    def __post_init__(self) -> None:
        self.before = (_snapshot(self.folder), _snapshot(self.file))

    def assert_untouched(self) -> None:
        """Nothing created, changed, removed or chmod-ed in the victim folder or file."""
        assert (_snapshot(self.folder), _snapshot(self.file)) == self.before


@pytest.fixture()
def victim(tmp_path: Path) -> Victim:
    folder = tmp_path / "victim-dir"
    folder.mkdir(mode=0o700)
    (folder / "keep.txt").write_text("victim folder content\n")
    file = tmp_path / "victim-file.conf"
    file.write_text("IMPORTANT CONFIG\n")
    file.chmod(0o600)
    return Victim(folder, file)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_runs_match_provenance(runs: Path) -> None:
    """Every finished step's output, in every run, and every cache entry match their recorded hashes."""
    for prov_path in runs.glob("*/provenance.json"):
        prov = json.loads(prov_path.read_text())
        for step in prov["steps"]:
            if step["status"] not in ("ok", "cached"):
                continue
            out = prov_path.parent / "steps" / step["name"] / "output"
            actual = {p.relative_to(out).as_posix(): sha256(p) for p in out.rglob("*") if p.is_file()}
            assert actual == step["outputs"], f"{out} no longer matches its provenance"
    index = runs / "cache-index.json"
    if index.exists():
        for rel in json.loads(index.read_text()).values():
            assert (runs / rel / "data.json").is_file(), rel


def blockkit(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
             prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the blockkit CLI as its own process (as a user would)."""
    exe = str(Path(sys.executable).parent / "blockkit")
    return subprocess.run([*(prefix or []), exe, *args], cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout)


def workflow_file(folder: Path, body: str) -> Path:
    """Write a workflow's YAML `body` to `<folder>/wf.yaml`; return its path."""
    path = folder / "wf.yaml"
    path.write_text(body)
    return path


def run_workflow(folder: Path, wf: Path, engine: str = "process", *extra: str,
                 prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """`blockkit run WF -e ENGINE --runs-dir <folder>/runs EXTRA...` in `folder`, as its own process."""
    return blockkit("run", str(wf), "-e", engine, "--runs-dir", str(folder / "runs"), *extra, cwd=folder,
                    prefix=prefix)


def one_line_error(stderr: str) -> str:
    """The error line of a failed `blockkit run` (one line starting with `[`), checked to be single."""
    lines = [line for line in stderr.splitlines() if line.startswith("[") and "]" in line[:30]]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def engine(request: pytest.FixtureRequest) -> str:
    """Each hostile-block test on both engines (docker ones need the daemon and the base image)."""
    if request.param == "docker":
        request.getfixturevalue("docker_client")
        request.getfixturevalue("base_image")
    return request.param
