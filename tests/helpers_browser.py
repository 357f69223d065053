"""A headless Chromium driven over the Chrome DevTools Protocol, for the viewer's browser tests and the
README screenshots (scripts/screenshots.py).

Chromium is started with `--remote-debugging-pipe`: CDP messages travel as NUL-terminated JSON over file
descriptors 3 (to the browser) and 4 (from it). That needs only the standard library: no websocket
client, no port to find or to collide with the other test runs on the machine.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

CHROMIUM_MISSING = "chromium not found: run `scripts/system-deps.sh browser` (Debian package 'chromium')"

# Software WebGL so the 3-D scenes render without a GPU; the rest keeps the browser from calling home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(CHROMIUM_MISSING)


def _above_4(fd: int) -> int:
    """`fd` moved to a number above 4, so placing the child's fds 3 and 4 cannot clobber it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class CdpError(RuntimeError):
    pass


class Browser:
    """One Chromium process; `new_page()` opens tabs. Use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 30.0):
        self.width, self.height, self.timeout = width, height, timeout
        self._profile = tempfile.mkdtemp(prefix="lossviz-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = _above_4(to_browser_r), _above_4(from_browser_w)
        # bash (dash cannot name fds above 9) puts the child's pipe ends at the fds Chromium reads (3) and
        # writes (4), then closes the originals.
        launch = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self._process = subprocess.Popen(
            ["/bin/bash", "-c", launch, find_chromium(), *CHROMIUM_FLAGS, "--remote-debugging-pipe",
             f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._listeners: dict[str, list[Callable[[dict], None]]] = {}  # session id -> event handlers
        self._lock = threading.Condition()
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.version = self.send("Browser.getVersion")["product"]

    # -- transport -------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._lock.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._replies[message["id"]] = message
                        self._lock.notify_all()
                else:
                    for listener in list(self._listeners.get(message.get("sessionId", ""), [])):
                        listener(message)

    def send(self, method: str, session_id: str | None = None, **params: Any) -> dict:
        with self._lock:
            self._next_id += 1
            message_id = self._next_id
        message = {"id": message_id, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        with self._write_lock:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._lock:
            while message_id not in self._replies:
                if self._process.poll() is not None:
                    raise CdpError(f"chromium exited ({self._process.returncode}) during {method}")
                if not self._lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise CdpError(f"no reply to {method} within {self.timeout} s")
            reply = self._replies.pop(message_id)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    # -- pages -----------------------------------------------------------------------------------
    def new_page(self) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return Page(self, target, session)

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.send("Browser.close")
            except CdpError:
                pass
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab. Records console errors, uncaught exceptions and every request URL it makes."""

    def __init__(self, browser: Browser, target_id: str, session_id: str):
        self.browser, self.target_id, self.session_id = browser, target_id, session_id
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._loaded = threading.Event()
        browser._listeners[session_id] = [self._on_event]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")
        self.resize(browser.width, browser.height)

    def resize(self, width: int, height: int, scale: float = 1) -> None:
        """Set the viewport in CSS pixels; `scale` > 1 renders sharper screenshots."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=scale,
                  mobile=False)

    def _on_event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Page.loadEventFired":
            self._loaded.set()

    def send(self, method: str, **params: Any) -> dict:
        return self.browser.send(method, session_id=self.session_id, **params)

    def goto(self, url: str, ready: str | None = None, timeout: float = 30.0) -> None:
        """Load `url`, wait for the load event and then for the JS expression `ready` to be truthy."""
        self._loaded.clear()
        self.send("Page.navigate", url=url)
        if not self._loaded.wait(timeout):
            raise CdpError(f"{url} did not finish loading within {timeout} s")
        if ready:
            self.wait_for(ready, timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (promises are awaited); a JS exception raises CdpError."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"timed out waiting for `{expression}`")
            time.sleep(0.1)

    def screenshot(self, clip: dict | None = None) -> bytes:
        """A PNG of the viewport, or of `clip` = {x, y, width, height} in CSS pixels."""
        params: dict[str, Any] = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> None:
        """A left-button mouse drag, as a user rotating a 3-D scene does."""
        (x0, y0), (x1, y1) = start, end
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x0, y=y0)
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", buttons=1,
                  clickCount=1)
        for step in range(1, steps + 1):
            t = step / steps
            self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x0 + t * (x1 - x0),
                      y=y0 + t * (y1 - y0), button="left", buttons=1)
            time.sleep(0.02)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y1, button="left", buttons=0,
                  clickCount=1)

    def press(self, key: str) -> None:
        """Type one printable key (the viewer's shortcuts are single characters)."""
        code = f"Key{key.upper()}" if key.isalpha() else ""
        self.send("Input.dispatchKeyEvent", type="keyDown", key=key, text=key, code=code)
        self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=code)

    def close(self) -> None:
        self.browser._listeners.pop(self.session_id, None)
        self.browser.send("Target.closeTarget", targetId=self.target_id)


def png_pixels(png: bytes) -> np.ndarray:
    """Decode a PNG into an (h, w, 3) float array."""
    from PIL import Image  # pillow comes with torchvision

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def network_urls(urls: list[str]) -> list[str]:
    """The URLs in `urls` that would reach a network (anything but file:, data:, blob: and about:)."""
    return [url for url in urls if not url.startswith(("file:", "data:", "blob:", "about:"))]


def bowl_surface(n: int = 41, span: float = 1.0, seed: int = 0, sharpness: float = 1.0,
                 roughness: float = 0.35, **meta: object):
    """A synthetic 2-D loss surface shaped like a trained minimum: a bowl (narrower with `sharpness`) with
    bumps (`roughness`) and a little noise, plus accuracy and standard error consistent with it."""
    from lossviz.surface import Surface

    rng = np.random.default_rng(seed)
    xs = np.linspace(-span, span, n)
    ys = np.linspace(-span, span, n)
    a, b = np.meshgrid(xs / span, ys / span)  # a[iy, ix] = xs[ix]: the Z[iy, ix] layout
    radius2 = sharpness * (a**2 + 1.6 * b**2)
    loss = 0.25 + 2.6 * (1 - np.exp(-radius2 / 0.18)) + 1.2 * radius2 \
        + roughness * radius2 * np.sin(5 * a + 1.0) * np.cos(4 * b) + 0.01 * rng.random(a.shape)
    loss = np.maximum(loss, 1e-3)
    acc = 100 * np.exp(-loss / 1.5)
    se = 0.05 * loss
    meta = {"model": "lenet5", "dataset": "fashion_mnist", "norm": "filter", "ignore": "biasbn",
            "n_examples": 250, "seed": seed, "model_hash": "0123456789abcdef", **meta}
    return Surface(xs=xs, ys=ys, loss=loss, acc=acc, loss_se=se, example_indices=np.arange(250), meta=meta)
