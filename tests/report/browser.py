"""Headless Chromium driven over the DevTools protocol, standard library only.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from fd 3 and
writes replies and events to fd 4, each message a JSON object terminated by a NUL byte (the
transport Puppeteer and Playwright use). No websocket library and no TCP port are needed.

What a page load records, so tests can truly check it:
- console messages (``Runtime.consoleAPICalled``), uncaught exceptions (``Runtime.exceptionThrown``)
  and browser log entries (``Log.entryAdded``: CSP violations, failed loads, ...);
- every request the page makes (``Network.requestWillBeSent``) and every one that failed
  (``Network.loadingFailed``); with ``block_network=True`` the ``Fetch`` domain intercepts all
  requests and fails every one that is not the page itself or a ``data:`` URL, so nothing can
  leave even if the page tried.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-extensions", "--disable-sync", "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLoad:
    """What happened while one page was loaded and measured."""

    url: str
    console: list[dict] = field(default_factory=list)
    exceptions: list[dict] = field(default_factory=list)
    log_entries: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)
    screenshot: bytes = b""
    load_seconds: float = 0.0
    navigated_at: float = 0.0  # time.monotonic() when navigation started

    @property
    def errors(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions and error/warning log entries, as text."""
        out = [f"console.{m.get('type')}: {m.get('args')}" for m in self.console if m.get("type") in ("error", "warning", "assert")]
        out += [f"exception: {e.get('exceptionDetails', {}).get('text')}" for e in self.exceptions]
        out += [f"log {e['entry'].get('level')}: {e['entry'].get('text')} {e['entry'].get('url', '')}"
                for e in self.log_entries if e["entry"].get("level") in ("error", "warning")]
        return out


class Chromium:
    """One headless browser; use as a context manager."""

    def __init__(self, executable: str, *, timeout: float = 60.0):
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="deltalens-chromium-")
        cmd_read, self._cmd_write = os.pipe()
        self._res_read, res_write = os.pipe()

        def child_fds() -> None:  # runs in the child: put the pipe ends on fds 3 and 4
            a, b = os.dup(cmd_read), os.dup(res_write)
            os.dup2(a, 3, inheritable=True)
            os.dup2(b, 4, inheritable=True)

        self._proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "about:blank"],
            close_fds=False, preexec_fn=child_fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(cmd_read)
        os.close(res_write)
        self._buf = b""
        self._next_id = 0
        self._events: list[dict] = []

    # -- transport -------------------------------------------------------------------------
    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_write, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _recv(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._res_read], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._res_read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe (did it crash?)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its reply; events that arrive meanwhile are kept."""
        mid = self._send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._events.append(msg)

    def _pump_until(self, predicate, deadline: float) -> None:
        while not any(predicate(e) for e in self._events):
            self._events.append(self._recv(deadline))

    # -- page loading ----------------------------------------------------------------------
    def load(self, path: Path, *, width: int, height: int = 900, mobile: bool = False,
             block_network: bool = True, measure_js: str = "({})", full_page: bool = True) -> PageLoad:
        """Open ``path`` in a fresh tab at ``width`` CSS px, wait for load, measure and screenshot
        (the whole page, or with ``full_page=False`` the first ``height`` px). ``load_seconds`` is
        the time from navigation to the load event."""
        url = Path(path).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self._events.clear()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", {}, session)
        if block_network:
            self.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}, session)
        result = PageLoad(url=url)
        started = result.navigated_at = time.monotonic()
        self._send("Page.navigate", {"url": url}, session)
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            msg = self._recv(deadline)
            self._events.append(msg)
            if msg.get("method") == "Fetch.requestPaused" and msg.get("sessionId") == session:
                req = msg["params"]["request"]["url"]
                if req == url or req.startswith("data:"):
                    self._send("Fetch.continueRequest", {"requestId": msg["params"]["requestId"]}, session)
                else:
                    result.blocked.append(req)
                    self._send("Fetch.failRequest", {"requestId": msg["params"]["requestId"],
                                                     "errorReason": "BlockedByClient"}, session)
            if msg.get("method") == "Page.loadEventFired" and msg.get("sessionId") == session:
                result.load_seconds = time.monotonic() - started
                break
            seen += 1
        # let late events (image decode errors, console output after load) arrive
        self.call("Runtime.evaluate", {"expression": "new Promise(r => requestAnimationFrame(() => setTimeout(r, 200)))",
                                       "awaitPromise": True}, session)
        # measure_js may be a promise (an async measurement): awaited before it is serialized
        value = self.call("Runtime.evaluate", {"expression": f"(async () => JSON.stringify(await ({measure_js})))()",
                                               "returnByValue": True,
                                               "awaitPromise": True}, session)
        if "exceptionDetails" in value:
            raise RuntimeError(f"measurement script failed: {value['exceptionDetails']}")
        result.measurements = json.loads(value["result"]["value"])
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page}, session)
        result.screenshot = base64.b64decode(shot["data"])
        for e in self._events:
            if e.get("sessionId") != session:
                continue
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled":
                result.console.append({"type": params.get("type"),
                                       "args": [a.get("value", a.get("description")) for a in params.get("args", [])]})
            elif method == "Runtime.exceptionThrown":
                result.exceptions.append(params)
            elif method == "Log.entryAdded":
                result.log_entries.append(params)
            elif method == "Network.requestWillBeSent":
                result.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                result.failed.append(params)
        self.call("Target.closeTarget", {"targetId": target})
        return result

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._cmd_write, self._res_read):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
