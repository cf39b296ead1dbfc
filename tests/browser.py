"""Headless Chromium for the tests that check what a page really shows (the HTML reports)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def chromium_or_skip() -> str:
    """The Chromium binary; the test skips, saying how to install it, where there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return found


def run_chromium(chromium: str, profile: Path, *args: str) -> str:
    """One headless Chromium run with a throwaway profile; its stdout."""
    command = [chromium, *FLAGS, "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


def probe_page(chromium: str, page: Path, profile: Path) -> Any:
    """What a page's probe script reported on load: the JSON it left in <pre id="probe">."""
    dom = run_chromium(chromium, profile, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    return json.loads(dom[start : dom.index("</pre>", start)])
