"""Headless Chromium for the browser tests (test_gateway_js.py, test_tls.py): finding the binary, one
browser in its own session (process group), killed with everything it started on close(), and a page run
that waits for the page's report."""

import os
import pathlib
import queue
import shutil
import signal
import subprocess
import tempfile
import time

import pytest


def chromium_bin() -> str:
    env = os.environ.get("CHROMIUM_BIN")
    if env:
        if not os.path.isfile(env):
            pytest.fail(f"CHROMIUM_BIN={env} is not a file (Debian: apt-get install -y chromium)")
        return env
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.isfile(f"/usr/bin/{name}") else None)
        if found:
            return found
    pytest.fail("Chromium not found (chromium / chromium-browser on PATH or in /usr/bin, or CHROMIUM_BIN): "
                "install Debian's chromium package: apt-get install -y chromium")


class Chromium:
    """Headless Chromium opening `url`, with a profile of its own; `extra_flags` go on its command line."""

    FLAGS = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--mute-audio",
    ]

    def __init__(self, url: str, extra_flags: tuple[str, ...] | list[str] = (), prefix: str = "tether-chromium-"):
        self.profile = tempfile.mkdtemp(prefix=prefix)
        env = dict(os.environ, HOME=self.profile, XDG_CONFIG_HOME=f"{self.profile}/.config",
                   XDG_CACHE_HOME=f"{self.profile}/.cache")
        self.stderr_path = pathlib.Path(self.profile) / "stderr.txt"
        self.stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [chromium_bin(), *self.FLAGS, *extra_flags, f"--user-data-dir={self.profile}/data", url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr_file,
            env=env, start_new_session=True,
        )

    def stderr_tail(self, n=30) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Chromium's crash handler daemonizes out of our group; it names our profile dir on its command line.
        for pid_dir in pathlib.Path("/proc").iterdir():
            if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
                continue
            try:
                if self.profile.encode() in (pid_dir / "cmdline").read_bytes():
                    os.kill(int(pid_dir.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        self.stderr_file.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def page_report(url: str, reports: "queue.Queue[dict]", limit: float, extra_flags=(), prefix="tether-chromium-",
                context=lambda: "") -> dict:
    """Open `url` in headless Chromium and return the first report its page puts in `reports`; the test fails
    if Chromium exits without one or none comes within `limit` seconds (the message shows Chromium's stderr
    and `context()`, e.g. the server's log). The browser is closed either way."""
    browser = Chromium(url, extra_flags, prefix=prefix)
    try:
        deadline = time.monotonic() + limit
        while True:
            try:
                return reports.get(timeout=0.2)
            except queue.Empty:
                pass
            if browser.proc.poll() is not None:
                try:
                    return reports.get(timeout=1)
                except queue.Empty:
                    pytest.fail(f"chromium exited without a report\nchromium stderr:\n{browser.stderr_tail()}\n"
                                f"{context()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no report from the page within {limit} s\nchromium stderr:\n{browser.stderr_tail()}\n"
                            f"{context()}")
    finally:
        browser.close()
