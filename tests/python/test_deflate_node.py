"""permessage-deflate with Node's `ws` (tests/node/deflate.mjs) against tetherd's echo: perMessageDeflate on
(ws's default offer: client_max_window_bits) and off, tetherd in shared and dedicated mode.

Needs node >= 18 and `bash tests/node/setup.sh` (scripts/test.sh runs it)."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from tetherd_proc import Tetherd

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "node"


def run_node(url: str, deflate: bool) -> dict:
    node = os.environ.get("NODE_BIN") or shutil.which("node")
    if not node:
        pytest.fail("node not found on PATH (or set NODE_BIN): run `bash tests/node/setup.sh`")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").is_file():
        pytest.fail("tests/node/node_modules is missing: run `bash tests/node/setup.sh` first")
    p = subprocess.run(
        [node, str(NODE_DIR / "deflate.mjs"), json.dumps({"url": url, "deflate": deflate})],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = p.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {p.stderr[-2000:]}"
    out = json.loads(lines[-1])
    assert p.returncode == 0 and out["ok"], f"{out}; stderr: {p.stderr[-2000:]}"
    return out


@pytest.mark.parametrize("mode", ["shared", "dedicated:12", "off"])
def test_node_ws_echo(mode):
    srv = Tetherd("--deflate", mode)
    try:
        on = run_node(srv.url(), True)
        ext = on["extensions"]  # the 101's Sec-WebSocket-Extensions
        if mode == "off":
            assert ext == "", ext
        else:
            assert ext.startswith("permessage-deflate"), ext
            if mode == "shared":
                assert "server_no_context_takeover" in ext and "client_no_context_takeover" in ext, ext
            else:
                assert "server_no_context_takeover" not in ext and "client_max_window_bits=12" in ext, ext
        off = run_node(srv.url(), False)
        assert off["extensions"] == "", off
    finally:
        srv.stop()
