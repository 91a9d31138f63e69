"""The example apps (engine/examples, server/examples) as the Python tests start them: found under
$TETHER_EXAMPLES_DIR, else target/{release,debug}/examples; started on ephemeral loopback ports; their first
stdout line names their addresses."""

import os
import pathlib
import select
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def example_bin(name: str) -> pathlib.Path:
    env = os.environ.get("TETHER_EXAMPLES_DIR")
    dirs = [pathlib.Path(env)] if env else []
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    dirs += [target / "release" / "examples", target / "debug" / "examples"]
    for d in dirs:
        if (d / name).is_file():
            return d / name
    raise RuntimeError(f"example {name} not built: cargo build --release -p tether -p tetherd --examples (looked in {dirs})")


class App:
    def __init__(self, name: str, *args: str, listen: tuple = ("--listen", "127.0.0.1:0")):
        self.proc = subprocess.Popen(
            [str(example_bin(name)), *listen, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if "http://" not in line:
            self.stop()
            raise RuntimeError(f"{name} printed no address line (got {line!r})")
        self.addr = line.split("http://", 1)[1].split()[0]
        ws = line.split("ws://", 1)[1].split()[0] if "ws://" in line else None
        self.ws_url = f"ws://{ws}" if ws else None

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
