"""The tetherd process the Python tests talk to: found as the Rust tests find it ($TETHERD_BIN, else
target/release/tetherd, else target/debug/tetherd, relative to the workspace root or $CARGO_TARGET_DIR),
started on an ephemeral loopback port with its stderr collected."""

import asyncio
import os
import pathlib
import select
import signal
import subprocess
import threading

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tetherd_bin() -> pathlib.Path:
    env = os.environ.get("TETHERD_BIN")
    if env:
        path = pathlib.Path(env)
        if not path.is_file():
            raise RuntimeError(f"TETHERD_BIN={env} is not a file")
        return path
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("release", "debug"):
        path = target / profile / "tetherd"
        if path.is_file():
            return path
    raise RuntimeError(
        "tetherd binary not found: set TETHERD_BIN or build it with "
        f"`cargo build --release -p tetherd` (looked in {target}/{{release,debug}}/tetherd)"
    )


class Tetherd:
    """A running tetherd on an ephemeral loopback port; stderr collected in `self.log`."""

    def __init__(self, *args: str, listen: str = "127.0.0.1:0"):
        # A developer's TETHER_* settings must not change what the tests run against.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env.update(RUST_LOG=os.environ.get("TETHERD_LOG", "info"), NO_COLOR="1")
        self.proc = subprocess.Popen(
            [str(tetherd_bin()), "--listen", listen, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.log: list[str] = []
        stderr = threading.Thread(target=self._drain_stderr, daemon=True)
        stderr.start()
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        prefix = "tetherd listening on "
        if not line.startswith(prefix):
            self.stop()
            # Its last words (e.g. "Address already in use", which callers retry on) reach `log` through the
            # reader thread: wait for it to read to the end, or the message could miss them.
            stderr.join(timeout=5)
            raise RuntimeError(f"tetherd did not print its listening line (got {line!r}): {self.log[-20:]}")
        self.addr = line[len(prefix):].strip()
        threading.Thread(target=self._drain_stdout, daemon=True).start()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def _drain_stdout(self):
        for _ in self.proc.stdout:
            pass

    def url(self, path: str = "/") -> str:
        return f"ws://{self.addr}{path}"

    def rss_kib(self) -> int:
        """The process's resident memory (VmRSS), KiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def close_lines(self) -> list[str]:
        return [line for line in self.log if " code=" in line and " initiator=" in line]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def run_bounded(coro, limit: float):
    """Runs a coroutine with an overall limit (seconds) so no test can hang."""

    async def bounded():
        return await asyncio.wait_for(coro, limit)

    return asyncio.run(bounded())
