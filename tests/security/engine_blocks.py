"""Hostile blocks for the engine tests: plain UP42-style Python (no blockkit import, fixed paths).

One block, `hostile`, whose `action` parameter picks the misbehaviour, so the docker engine
builds one image for all tests. Processes it leaves behind carry a unique marker in their
command line, so a test can look for survivors in /proc (container processes included).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

# The CLI run by this Python without its console script (which a test may have no PATH entry for).
CLI_CODE = "import sys; from blockkit.cli.main import main; sys.argv[0] = 'blockkit'; main()"


def cli_command(*args: str) -> list[str]:
    """The argv that runs `blockkit ARGS...` with this test's Python."""
    return [sys.executable, "-c", CLI_CODE, *args]


HOSTILE = r'''
import json, os, sys, time

params = json.loads(os.environ.get("UP42_TASK_PARAMETERS") or "{}")
action = params.get("action", "ok")
marker = params.get("marker", "")
if action == "fixed-paths":
    IN, OUT, QL = "/tmp/input", "/tmp/output", "/tmp/quicklooks"   # hard-coded, as UP42 blocks do
else:
    IN = os.environ.get("BLOCKKIT_INPUT_DIR", "/tmp/input")
    OUT = os.environ.get("BLOCKKIT_OUTPUT_DIR", "/tmp/output")
    QL = os.environ.get("BLOCKKIT_QUICKLOOK_DIR", "/tmp/quicklooks")


def write_output(features=(), extra=None):
    with open(os.path.join(OUT, "data.json"), "w") as handle:
        json.dump({"type": "FeatureCollection", "features": list(features), **(extra or {})}, handle)


def linger(seconds, note):
    """Become a process whose command line carries the marker; write `note` into the output now and then."""
    code = ("import sys, time\n"
            "end = time.time() + %r\n"
            "while time.time() < end:\n"
            "    try:\n"
            "        open(%r, 'a').write('late\\n')\n"
            "    except OSError:\n"
            "        pass\n"
            "    time.sleep(0.2)\n") % (seconds, os.path.join(OUT, note))
    os.execv(sys.executable, [sys.executable, "-c", code, marker])


if action == "ok":
    write_output()
elif action == "fixed-paths":
    # A UP42 block: reads /tmp/input/data.json, writes results and a quicklook at the fixed paths.
    with open(os.path.join(IN, "data.json")) as handle:
        features = json.load(handle)["features"]
    out = []
    for i, feature in enumerate(features):
        rel = "seen-%d.txt" % i
        src = os.path.join(IN, feature["properties"]["up42.data_path"])
        with open(src) as handle, open(os.path.join(OUT, rel), "w") as dst:
            dst.write(handle.read().upper())
        props = dict(feature["properties"], **{"up42.data_path": rel})
        out.append({"type": "Feature", "id": "u%d" % i, "geometry": None, "properties": props})
    with open(os.path.join(QL, "ql.txt"), "w") as handle:
        handle.write("quicklook")
    write_output(out, {"cwd": os.getcwd(), "block": sorted(os.listdir("/block"))})
elif action == "source":
    with open(os.path.join(OUT, "a.txt"), "w") as handle:
        handle.write("hello\n")
    write_output([{"type": "Feature", "id": "a", "geometry": None, "properties": {"up42.data_path": "a.txt"}}])
elif action == "attack":
    # Everything a hostile block tries outside its output; each attempt's outcome is recorded.
    tried = {}
    for target in params.get("victims", []) + [os.path.join(IN, "a.txt"), os.path.join(IN, "planted.txt"),
                                                 "/block/planted.txt", "/etc/planted", "/usr/planted"]:
        try:
            with open(target, "a") as handle:
                handle.write("owned\n")
            tried[target] = "written"
        except OSError as exc:
            tried[target] = exc.strerror or str(exc)
    for folder in params.get("look", []):
        tried["ls " + folder] = sorted(os.listdir(folder)) if os.path.isdir(folder) else "absent"
    for path in ("/tmp/scratch.txt", os.path.join(os.environ.get("HOME", "/nonexistent"), ".cache-probe")):
        try:
            with open(path, "w") as handle:
                handle.write("x")
            tried[path] = "written"
        except OSError as exc:
            tried[path] = exc.strerror or str(exc)
    status = open("/proc/self/status").read()
    tried["NoNewPrivs"] = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")]
    tried["CapEff"] = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff")]
    write_output([], {"tried": tried})
elif action == "daemon":
    # A background child in the step's session with stdout closed; the block exits 0 at once.
    if os.fork() == 0:
        os.close(1)
        os.close(2)
        linger(30, "late-daemon.txt")
    write_output()
elif action == "setsid-daemon":
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(1)
            os.close(2)
            linger(30, "late-setsid.txt")
        os._exit(0)
    write_output()
elif action == "hang":
    # Quiet and long: the runner is killed meanwhile; a child too, to test the whole group.
    print("hanging", flush=True)
    if os.fork() == 0:
        linger(60, "late-child.txt")
    linger(60, "late-main.txt")
elif action == "print-secrets":
    print("TOKEN PARAM IS", params.get("token"), flush=True)
    print("ENV", json.dumps(dict(os.environ)), flush=True)
    print("STDERR TOKEN", params.get("token"), file=sys.stderr, flush=True)
    write_output([], {"env": sorted(os.environ)})
elif action == "slow-secret":
    # Prints its secret, waits `long` ms (another step ends meanwhile), then more, and fails.
    print("early", params.get("token"), flush=True)
    time.sleep(params.get("long", 0) / 1000)
    print("late line", flush=True)
    print("[WRONG_INPUT_ERROR] the final error", file=sys.stderr, flush=True)
    sys.exit(4)
elif action == "escapes":
    sys.stdout.write("clear\x1b[2Jscreen \x1b]0;pwned-title\x07 bell\x07 nul\x00 csi\x9b31m end\n")
    sys.stdout.write("x" * params.get("long", 0) + "\n")
    sys.stdout.write("rich [bold red]markup[/] [/] stays\n")
    sys.stdout.flush()
    write_output()
elif action == "fork-bomb":
    children = 0
    try:
        for _ in range(params.get("forks", 3000)):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError as exc:
        print("fork failed after %d children: %s" % (children, exc), flush=True)
        write_output([], {"children": children})
        sys.exit(0)
    write_output([], {"children": children})
elif action == "interleave":
    # Half a stdout line, then a whole stderr line, then the rest of the stdout line.
    sys.stdout.write("progress 50%")
    sys.stdout.flush()
    time.sleep(0.3)
    print("[WRONG_INPUT_ERROR] band=100 does not exist in scene.tif", file=sys.stderr, flush=True)
    time.sleep(0.3)
    sys.stdout.write(" done\n")
    sys.stdout.flush()
    sys.exit(4)
elif action == "flood":
    # `long` lines of 100 bytes as fast as it can, then its error as the very last line.
    for i in range(params.get("long", 0)):
        sys.stdout.write("flood %07d %s\n" % (i, "x" * 86))
    sys.stdout.flush()
    print("[WRONG_INPUT_ERROR] the last line, after the flood", file=sys.stderr, flush=True)
    sys.exit(4)
elif action == "error":
    print("working...", flush=True)
    print("[WRONG_INPUT_ERROR] band=100 does not exist in scene.tif", file=sys.stderr, flush=True)
    print("cleaning up", flush=True)
    sys.exit(4)
else:
    sys.exit("unknown action %r" % action)
'''

MANIFEST_PARAMS = {
    "action": {"type": "string", "default": "ok"},
    "marker": {"type": "string", "default": ""},
    "victims": {"type": "array", "default": []},
    "look": {"type": "array", "default": []},
    "token": {"type": "string", "default": "", "secret": True},
    "long": {"type": "integer", "default": 0},
    "forks": {"type": "integer", "default": 3000},
}


def write_hostile(root: Path, *, options: dict | None = None, name: str = "hostile", kind: str = "processing") -> Path:
    """The hostile block folder (UP42 layout: manifest, src/run.py, no blockkit import)."""
    folder = root / name
    (folder / "src").mkdir(parents=True, exist_ok=True)
    manifest = {
        "_up42_specification_version": 2,
        "name": name,
        "type": kind,
        "parameters": MANIFEST_PARAMS,
        "input_capabilities": {} if kind == "data" else {"misc": {"up42_standard": {}}},
        "output_capabilities": {"misc": {"up42_standard": {}}},
    }
    if options:
        manifest["blockkit"] = options
    (folder / "UP42Manifest.json").write_text(json.dumps(manifest))
    (folder / "src" / "run.py").write_text(HOSTILE)
    return folder


def workflow(tmp_path: Path, block: Path, params: dict, *, source: bool = True, extra: str = "") -> Path:
    """A workflow: `src` (writes a.txt) then `evil` with these parameters."""
    lines = ["name: attack", "steps:"]
    if source:
        src = write_hostile(block.parent, name="hostile-src", kind="data")
        lines.append(f"  src: {{block: {json.dumps(str(src))}, params: {{action: source}}}}")
    else:
        lines.insert(0, f"input: {json.dumps(str(_empty_input(tmp_path)))}")
    lines.append(f"  evil: {{block: {json.dumps(str(block))}, params: {json.dumps(params)}{extra}}}")
    path = tmp_path / "attack.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def marked_workflow(tmp_path: Path, action: str, *, source: bool = True, extra: str = "") -> tuple[str, Path]:
    """A new marker, and a `workflow` whose `evil` step (the hostile block, written to `<tmp_path>/blocks`)
    runs `action` tagged with that marker (find its processes with `processes_with(marker)`)."""
    marker = new_marker()
    block = write_hostile(tmp_path / "blocks")
    return marker, workflow(tmp_path, block, {"action": action, "marker": marker}, source=source, extra=extra)


def _empty_input(tmp_path: Path) -> Path:
    folder = tmp_path / "empty-input"
    folder.mkdir(exist_ok=True)
    (folder / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    return folder


def new_marker() -> str:
    """A unique string put in the command line of processes a block leaves behind."""
    return f"blockkit-marker-{uuid.uuid4().hex}"


def processes_with(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line holds the marker."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1) -> bool:
    """Poll until predicate() is true (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def kill_all(pids: list[int]) -> None:
    """Clean up after a failing test: SIGKILL the given processes."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def files_under(folder: Path) -> list[Path]:
    """Every regular file below a folder."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
