"""A headless Chromium driven over the DevTools protocol on a pipe (no port, no websocket library).

`--remote-debugging-pipe` makes Chromium read commands from fd 3 and write replies and
events to fd 4, each a JSON message ended by a NUL byte. This module opens one page, records
its console errors, exceptions, log errors, dialogs and every request it makes, evaluates
scripts and takes screenshots. Used by tests/report and benchmarks/bench_report.py.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--window-size=1280,1800", "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    """The Chromium executable: $BLOCKKIT_CHROMIUM, else chromium/chromium-browser/google-chrome on PATH."""
    wanted = os.environ.get("BLOCKKIT_CHROMIUM")
    if wanted:
        return wanted if Path(wanted).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    """Chromium failed, answered with an error, or did not answer in time."""


@dataclass
class PageRecord:
    """What a page did: console errors, uncaught exceptions, error log entries, dialogs, requests."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def errors(self) -> list[str]:
        """Every console error, exception and error log entry."""
        return self.console_errors + self.exceptions + self.log_errors


class Chromium:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str, user_data_dir: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="blockkit-chromium-") if user_data_dir is None else None
        profile = Path(self._tmp.name) if self._tmp else user_data_dir
        assert profile is not None
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Move the child's ends out of the way of 3 and 4 before the child maps them there.
        child_in, child_out = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def map_fds() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=map_fds, pass_fds=(3, 4), close_fds=True,
        )
        os.close(child_in)
        os.close(child_out)
        self._write = to_browser_w
        self._read = from_browser_r
        self._next_id = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.record = PageRecord()
        self.session: str | None = None
        self._stderr: list[bytes] = []
        threading.Thread(target=self._reader, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._attach()

    # --- protocol -------------------------------------------------------------------------------

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _reader(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._replies.get(message["id"])
                    if box is not None:
                        box.put(message)
                else:
                    self._on_event(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        rec = self.record
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            rec.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            rec.exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            rec.log_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Page.javascriptDialogOpening":
            rec.dialogs.append(str(params.get("message")))
            self.send("Page.handleJavaScriptDialog", {"accept": False}, wait=False)
        elif method == "Network.requestWillBeSent":
            rec.requests.append(str(params.get("request", {}).get("url")))
        elif method == "Network.loadingFailed":
            rec.failed_requests.append(f"{params.get('errorText')} {params.get('blockedReason') or ''}".strip())
        self.events.put(message)

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             wait: bool = True, timeout: float = 30.0) -> dict[str, Any]:
        """Send one command (to the page session unless session=False) and return its result."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            box: queue.Queue[dict[str, Any]] = queue.Queue()
            self._replies[ident] = box
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        if not wait:
            return {}
        try:
            reply = box.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"no reply to {method} in {timeout} s; chromium said: {self.stderr_tail()}") from None
        finally:
            with self._lock:
                self._replies.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def stderr_tail(self) -> str:
        """The last lines chromium wrote to stderr."""
        return b"".join(self._stderr[-5:]).decode(errors="replace")

    def _attach(self) -> None:
        deadline = time.time() + 30
        while True:
            targets = self.send("Target.getTargets", session=False)["targetInfos"]
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if time.time() > deadline:
                raise BrowserError("chromium opened no page")
            time.sleep(0.1)
        self.session = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    # --- what tests use -------------------------------------------------------------------------

    def open(self, url: str, timeout: float = 30.0) -> None:
        """Navigate and wait for the load event."""
        self._drain_events()
        self.send("Page.navigate", {"url": url})
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if event.get("method") == "Page.loadEventFired":
                return
        raise BrowserError(f"{url} did not load in {timeout} s")

    def _drain_events(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll an expression until it is truthy."""
        deadline = time.time() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.time() > deadline:
                raise BrowserError(f"timed out waiting for {expression}")
            time.sleep(0.05)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """Save a PNG screenshot of the page."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params, timeout=60)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Stop chromium (by its pid) and remove the temporary profile."""
        try:
            self.send("Browser.close", session=False, wait=False)
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._write, self._read):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
