"""How the process engine starts a block without bubblewrap: no preexec_fn (the runner has threads).

The block still gets SIGKILL when the runner dies (its parent-death signal, set by util-linux
`setpriv` before it execs the block), and a program that does not exist is still one line.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from blockkit.runner._engine import StepSpec
from blockkit.runner._process_engine import EngineError, ProcessEngine

from .blocks import write_block

PDEATHSIG = '''
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
sig = ctypes.c_int(-1)
libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
pgid, sid = os.getpgid(0), os.getsid(0)
json.dump({"type": "FeatureCollection", "features": [], "sig": sig.value, "leader": pgid == os.getpid() == sid},
          open(os.path.join(os.environ["BLOCKKIT_OUTPUT_DIR"], "data.json"), "w"))
'''


def _spec(tmp_path: Path, block: Path, name: str) -> StepSpec:
    (tmp_path / name / "in").mkdir(parents=True)
    return StepSpec(name=name, block_dir=block, image=None, input_dir=tmp_path / name / "in",
                    output_dir=tmp_path / name / "out", quicklook_dir=tmp_path / name / "ql",
                    log_path=tmp_path / name / "s.log")


def test_an_unisolated_block_started_from_threads_dies_with_the_runner(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    if shutil.which("setpriv") is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true but util-linux setpriv is missing")
        pytest.skip("util-linux setpriv not installed (the watchdog alone ends the group)")

    real = subprocess.Popen
    seen_kwargs: list[dict] = []

    def popen(*args, **kwargs):  # the real Popen; only what it was asked is noted
        seen_kwargs.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr("blockkit.runner._process_engine.subprocess.Popen", popen)
    block = write_block(tmp_path / "blocks", "probe", kind="processing", source=PDEATHSIG, params={})
    engine = ProcessEngine(isolate=False)
    specs = [_spec(tmp_path, block, f"s{i}") for i in range(4)]
    results: dict[str, int] = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s.name, engine.run_step(s).exit_code))
               for s in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {s.name: 0 for s in specs}
    started = [kw for kw in seen_kwargs if kw.get("cwd") == block]
    assert len(started) == 4 and all(kw.get("preexec_fn") is None and kw["start_new_session"] for kw in started)
    for spec in specs:
        seen = json.loads((spec.output_dir / "data.json").read_text())
        assert seen["sig"] == 9  # SIGKILL when the runner dies
        assert seen["leader"] is True  # its own session and process group (start_new_session)


def test_an_unisolated_program_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    block = write_block(tmp_path / "blocks", "gone", kind="processing", source="", params={})
    spec = _spec(tmp_path, block, "s")
    spec.command = ["/nonexistent/prog"]
    with pytest.raises(EngineError) as caught:
        ProcessEngine(isolate=False).run_step(spec)
    assert "cannot start '/nonexistent/prog'" in caught.value.message and "\n" not in caught.value.message
