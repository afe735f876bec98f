"""Per-step isolation for the process engine: bubblewrap namespaces, an allow-listed environment,
and no process of a step outliving it.

With bubblewrap (`bwrap`, unprivileged), each step runs in its own mount, pid, ipc and uts
namespace (and network namespace unless the manifest asks for the network), with:

* a fresh tmpfs at `/tmp` (also the step's HOME and TMPDIR);
* the step's input read-only at `/tmp/input` (fan-in: each upstream at `/tmp/input/<step>/`),
  its output read-write at `/tmp/output`, its quicklooks read-write at `/tmp/quicklooks`;
* the block folder read-only at `/block` (the working directory);
* the system folders, the Python installation and blockkit read-only; nothing else of the host.

So a block that hard-codes the UP42 paths works, and cannot change anything outside its output.
When the runner dies (even `kill -9`), `--die-with-parent` kills the namespace's init and the
kernel kills every process left in the namespace.

Without bubblewrap the step is a plain child process in its own session: a parent-death signal
kills it with the runner, a watchdog kills its whole process group when the runner dies, and
the group is killed when the step ends.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping

INPUT_DIR = "/tmp/input"
OUTPUT_DIR = "/tmp/output"
QUICKLOOK_DIR = "/tmp/quicklooks"
BLOCK_DIR = "/block"

#: Host variables a step may see (everything else, e.g. BLOCKKIT_KEYSTORE_PASSPHRASE, stays out).
ALLOWED_ENV = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONIOENCODING",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "GDAL_DATA", "PROJ_LIB", "PROJ_DATA", "OMP_NUM_THREADS",
})
ALLOWED_ENV_PREFIXES = ("LC_",)
#: Proxy settings pass only to steps that may use the network.
PROXY_ENV = frozenset({"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"})

#: System folders bound read-only into the namespace when they exist.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys")


def bwrap_path() -> str | None:
    """The bubblewrap executable on PATH, or None."""
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """Why per-step isolation is unavailable here (None: bubblewrap works).

    Asked once per process: bubblewrap must exist and be able to make the namespaces
    (unprivileged user namespaces may be disabled by the kernel or a container runtime).
    """
    if os.environ.get("BLOCKKIT_NO_ISOLATION"):
        return "BLOCKKIT_NO_ISOLATION is set"
    exe = bwrap_path()
    if exe is None:
        return "bubblewrap (bwrap) is not installed; install the 'bubblewrap' package"
    probe = [exe, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
             "--unshare-pid", "--unshare-net", "--die-with-parent", "--", "/bin/sh", "-c", "exit 0"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap cannot run: {exc}"
    if done.returncode != 0:
        why = (done.stderr.decode(errors="replace").strip().splitlines() or ["no reason given"])[-1]
        return f"bubblewrap cannot make namespaces here ({why[:200]})"
    return None


def isolation_available() -> bool:
    """True when steps of the process engine run isolated (bubblewrap usable)."""
    return bwrap_problem() is None


def host_environment(network: bool, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of the runner's environment a step inherits."""
    source = os.environ if environ is None else environ
    env = {}
    for name, value in source.items():
        if name in ALLOWED_ENV or name.startswith(ALLOWED_ENV_PREFIXES) or (network and name in PROXY_ENV):
            env[name] = value
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


#: Folders bubblewrap replaces with an empty tmpfs inside the step.
_TMPFS_DIRS = ("/tmp", "/run", "/var/tmp")


def _under_tmpfs(path: str) -> bool:
    return any(path.startswith(d + "/") for d in _TMPFS_DIRS)


def _readonly_mounts() -> tuple[list[str], list[str]]:
    """bwrap arguments making the host folders a step needs to run Python and blockkit visible, read-only.

    Two lists: the binds that go before the tmpfs mounts, and those of the runner's Python,
    blockkit and import-path folders that lie under a tmpfs folder (a checkout or venv in /tmp),
    which must come after them or the tmpfs would hide them. Nothing else under /tmp is shown.
    """
    import blockkit

    links: list[str] = []
    wanted: list[str] = []
    for name in SYSTEM_DIRS:
        if os.path.islink(name):
            links += ["--symlink", os.readlink(name), name]  # /bin -> usr/bin stays a link
        elif os.path.isdir(name):
            wanted.append(name)
    wanted += [sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).parent),
               str(Path(sys.executable).resolve().parent.parent), str(Path(blockkit.__file__).resolve().parent)]
    wanted += [p for p in sys.path if p]
    roots: list[str] = []
    for raw in sorted({os.path.realpath(p) for p in wanted}, key=len):
        if not os.path.exists(raw) or raw == "/" or raw in ("/tmp", "/proc", "/dev"):
            continue
        if raw.startswith(("/proc/", "/dev/")):
            continue
        if os.path.isfile(raw):
            raw = os.path.dirname(raw)
        if any(raw == r or raw.startswith(r + "/") for r in roots):
            continue
        roots.append(raw)
    early: list[str] = []
    late: list[str] = []
    for root in roots:
        (late if _under_tmpfs(root) else early).extend(["--ro-bind", root, root])
    # Paths as the runner sees them (e.g. a venv's bin/python symlink) must resolve inside too.
    for raw in (sys.prefix, str(Path(sys.executable).parent)):
        if os.path.realpath(raw) != raw and os.path.exists(raw):
            (late if _under_tmpfs(raw) else early).extend(["--ro-bind", raw, raw])
    return early + links, late


def bwrap_command(
    command: list[str],
    *,
    input_dir: Path,
    output_dir: Path,
    quicklook_dir: Path,
    block_dir: Path,
    upstream_dirs: Mapping[str, Path] | None = None,
    network: bool = False,
    readonly: tuple[Path, ...] = (),
) -> list[str]:
    """The bubblewrap command line that runs `command` isolated at the contract paths.

    `readonly` are further host folders the step sees read-only at the same path (a block's
    own virtual environment).
    """
    exe = bwrap_path() or "bwrap"
    args = [exe, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", "blockkit-step", "--unshare-cgroup-try",
            # A runner started as root would otherwise leave the block CAP_SYS_ADMIN & co (remount rw).
            "--cap-drop", "ALL"]
    if not network:
        args.append("--unshare-net")
    early, late = _readonly_mounts()
    args += early
    args += ["--proc", "/proc", "--dev", "/dev"]
    for tmpfs in _TMPFS_DIRS:
        args += ["--tmpfs", tmpfs]
    args += late
    if network:
        # /etc/resolv.conf may point into /run (systemd-resolved).
        args += ["--ro-bind-try", "/run/systemd/resolve", "/run/systemd/resolve"]
    for folder in readonly:  # after the tmpfs mounts, which would hide one under /tmp
        args += ["--ro-bind", str(folder), str(folder)]
    args += ["--ro-bind", str(input_dir.resolve()), INPUT_DIR]
    for name, folder in sorted((upstream_dirs or {}).items()):
        args += ["--ro-bind", str(Path(folder).resolve()), f"{INPUT_DIR}/{name}"]
    args += ["--bind", str(output_dir.resolve()), OUTPUT_DIR,
             "--bind", str(quicklook_dir.resolve()), QUICKLOOK_DIR,
             "--ro-bind", str(block_dir.resolve()), BLOCK_DIR,
             "--chdir", BLOCK_DIR, "--"]
    return args + command


class Watchdog:
    """A tiny process that acts if the runner dies before the step ends (even by `kill -9`).

    It waits on a pipe whose only writer is the runner: a line means "the step ended
    normally, stop watching"; end-of-file without a line means the runner is gone, and it
    runs its action (kill the step's process group, remove the step's container).
    """

    def __init__(self, argv: list[str]) -> None:
        read_fd, self._write_fd = os.pipe()
        try:
            self._proc = subprocess.Popen(
                argv, stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True,
            )
        finally:
            os.close(read_fd)

    @classmethod
    def for_group(cls, pgid: int) -> "Watchdog":
        """Kill process group `pgid` if the runner dies."""
        return cls(["/bin/sh", "-c", 'read x || kill -KILL "-$1"', "blockkit-watchdog", str(pgid)])

    @classmethod
    def for_containers(cls, docker_socket: str, labels: Mapping[str, str]) -> "Watchdog":
        """Remove every container with all these labels if the runner dies.

        `docker_socket` is the daemon's unix socket path, or `tcp:HOST:PORT` for a plain tcp:// daemon.
        """
        return cls([sys.executable, "-S", "-I", "-c", _REMOVE_CONTAINERS, docker_socket,
                    *(f"{key}={value}" for key, value in sorted(labels.items()))])

    def release(self) -> None:
        """The step is over: let the watchdog exit without acting."""
        try:
            os.write(self._write_fd, b"done\n")
        except OSError:
            pass
        os.close(self._write_fd)
        # Not waited for (it may still be starting): the subprocess module reaps it later.
        self._proc.poll()


# Run by `python -S -I -c`: only the standard library, imported after the wait, so it starts in
# milliseconds. The runner's containers (steps, parts, sidecars) are found by its owner
# labels; the list is read again a few times, for containers whose creation was under way.
_REMOVE_CONTAINERS = """
import socket, sys, time
if sys.stdin.readline():
    sys.exit(0)
import json, urllib.parse

def call(method, path):
    if sys.argv[1].startswith("tcp:"):
        host, port = sys.argv[1][4:].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=120)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(120)
        sock.connect(sys.argv[1])
    try:
        sock.sendall(("%s %s HTTP/1.0\\r\\nHost: docker\\r\\n\\r\\n" % (method, path)).encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    head, _, body = b"".join(chunks).partition(b"\\r\\n\\r\\n")
    return head.split(b" ", 2)[1:2] == [b"200"], body

filters = urllib.parse.quote(json.dumps({"label": sys.argv[2:]}))
for pause in (0, 1, 2, 3, 5):
    time.sleep(pause)
    try:
        ok, body = call("GET", "/containers/json?all=1&filters=" + filters)
        for entry in json.loads(body) if ok else []:
            call("DELETE", "/containers/%s?force=1&v=1" % entry["Id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
"""


def kill_group(pgid: int) -> None:
    """SIGKILL every process of a process group (gone already is fine)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
