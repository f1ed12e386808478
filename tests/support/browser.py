"""Headless Chromium (Debian's ``chromium``) for looking at a page the way a person would.

``dump_dom`` prints the DOM after the page's scripts (if any could run) have run;
``screenshot`` saves a PNG. The browser gets a fresh profile, no background networking, and a
host resolver that resolves nothing, so a page that tried to reach anything would fail to.
Under CI (``CI`` set) a missing browser fails the test: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def chromium() -> str:
    """The browser's path; fails under CI, skips elsewhere, when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = (
        "chromium is not installed: apt-get install -y --no-install-recommends chromium "
        "(.ci/run does this)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(page: str, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    url = page if "://" in page else "file://" + os.path.abspath(page)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            timeout=timeout,
            check=False,
        )


def dump_dom(page: str) -> str:
    done = _run(page, "--dump-dom")
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-2000:]
    return done.stdout.decode("utf-8")


def screenshot(page: str, png: str, size: tuple[int, int] = (1280, 2000)) -> str:
    done = _run(page, f"--screenshot={os.path.abspath(png)}", f"--window-size={size[0]},{size[1]}")
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-2000:]
    return png
