"""Headless Chromium for the UI tests, driven over the DevTools protocol (CDP).

The Debian ``chromium`` binary (no Playwright browser downloads: there is no network for
them) and the ``websockets`` client already installed with Prefect: a page is opened, and
its visible text polled until what a user must see is there (or a timeout), then a
screenshot is written as a test artifact.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

# Without the background-networking flags Chromium floods the closed network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    """The Chromium binary, installed with apt when missing and allowed (root); else None."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, check=False
        )
    return shutil.which("chromium")


class Browser:
    """One headless Chromium process with a fresh profile; :meth:`text` loads a page."""

    def __init__(self, binary: str, profile: Path):
        self.profile = profile
        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        self.port = int(port_file.read_text().split()[0])

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def page(self, url: str, wait_for: list[str], timeout: float, screenshot: Path) -> str:
        """Open ``url``; return the page's visible text once it contains every string of
        ``wait_for`` (or at ``timeout``); write a PNG screenshot to ``screenshot``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as response:
            targets = json.load(response)
        socket_url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
        return asyncio.run(self._page(socket_url, url, wait_for, timeout, screenshot))

    async def _page(
        self, socket_url: str, url: str, wait_for: list[str], timeout: float, screenshot: Path
    ) -> str:
        import websockets

        ids = itertools.count(1)
        async with websockets.connect(socket_url, max_size=64 * 2**20) as socket:

            async def call(method: str, **params) -> dict:
                call_id = next(ids)
                await socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
                while True:
                    message = json.loads(await socket.recv())
                    if message.get("id") == call_id:
                        return message.get("result", {})

            await call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            text = ""
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                found = await call(
                    "Runtime.evaluate",
                    expression="document.body ? document.body.innerText : ''",
                    returnByValue=True,
                )
                text = found.get("result", {}).get("value") or ""
                if all(item in text for item in wait_for):
                    await asyncio.sleep(1)  # let late requests (error toasts) land
                    found = await call(
                        "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
                    )
                    text = found.get("result", {}).get("value") or text
                    break
            shot = await call("Page.captureScreenshot", format="png")
            if "data" in shot:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            return text


def new_profile() -> Path:
    return Path(tempfile.mkdtemp(prefix="chromium-profile-"))
