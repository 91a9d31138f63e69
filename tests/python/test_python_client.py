"""End-to-end tests of tetherd with Python's `websockets` (asyncio client).

Starts the same tetherd binary the Rust tests use: $TETHERD_BIN, else target/release/tetherd, else
target/debug/tetherd (relative to the workspace root, or $CARGO_TARGET_DIR).
"""

import asyncio
import logging
import signal
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from tetherd_proc import Tetherd, run_bounded
TEST_LIMIT = 60  # seconds, per test


@pytest.fixture(scope="module")
def server():
    srv = Tetherd("--ping-interval", "1s", "--pong-timeout", "1s", "--tick", "100ms")
    yield srv
    srv.stop()


def run(coro):
    return run_bounded(coro, TEST_LIMIT)


def client(url: str, **kwargs):
    # proxy=None: never route loopback through an environment proxy.
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 10)
    kwargs.setdefault("max_size", 16 * 1024 * 1024)
    return connect(url, **kwargs)


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), 10)


def test_text_and_binary_echo(server):
    async def go():
        async with client(server.url()) as ws:
            await ws.send("hello from python")
            assert await recv(ws) == "hello from python"
            await ws.send(b"\x00\x01\x02\xff")
            assert await recv(ws) == b"\x00\x01\x02\xff"
            await ws.send("žluťoučký kůň 🐎")
            assert await recv(ws) == "žluťoučký kůň 🐎"
            for i in range(100):
                await ws.send(f"n{i}")
            for i in range(100):
                assert await recv(ws) == f"n{i}"

    run(go())


def test_permessage_deflate_offer_is_declined_or_works(server):
    # websockets offers permessage-deflate by default; tetherd accepts it (shared mode): messages must
    # round-trip either way (test_deflate.py tests the extension itself).
    async def go():
        async with client(server.url(), compression="deflate") as ws:
            await ws.send("compressible " * 100)
            assert await recv(ws) == "compressible " * 100

    run(go())


def test_fragmented_messages_echo(server):
    async def go():
        async with client(server.url(), compression=None) as ws:
            await ws.send(["frag", "mented ", "text"])
            assert await recv(ws) == "fragmented text"
            await ws.send([b"\x01\x02", b"\x03", b"\x04\x05"])
            assert await recv(ws) == b"\x01\x02\x03\x04\x05"

    run(go())


def test_200_kb_echo(server):
    async def go():
        async with client(server.url(), compression=None) as ws:
            blob = bytes((i * 7) % 251 for i in range(200 * 1024))
            await ws.send(blob)
            assert await recv(ws) == blob
            text = "0123456789abcdef" * (200 * 1024 // 16)
            await ws.send(text)
            assert await recv(ws) == text

    run(go())


def test_ping_is_answered(server):
    async def go():
        async with client(server.url(), ping_interval=None) as ws:
            for payload in (b"", b"py-ping", bytes(range(125))):
                pong = await ws.ping(payload)
                latency = await asyncio.wait_for(pong, 10)
                assert latency >= 0
            await ws.send("after ping")
            assert await recv(ws) == "after ping"

    run(go())


def test_clean_close_1000(server):
    async def go():
        async with client(server.url()) as ws:
            await ws.send("bye soon")
            assert await recv(ws) == "bye soon"
            await ws.close(code=1000, reason="python done")
            assert ws.close_code == 1000, f"server answered close with {ws.close_code}"
            # rcvd: the close frame the server sent back.
            assert ws.protocol.close_rcvd is not None
            assert ws.protocol.close_rcvd.code == 1000

    run(go())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any("code=1000" in l and 'reason="python done"' in l for l in server.log):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"no close line for the python client's 1000: {server.log[-10:]}")


def frame_log(name: str) -> tuple[logging.Logger, list[str]]:
    """A logger for one websockets connection that keeps its frame lines ("< PING ...", "> PONG ...")."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(f"tether-test-ws-{name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.handlers = [Collect()]
    return logger, lines


def test_server_pings_arrive_and_idle_connection_survives(server):
    logger, messages = frame_log("idle")

    async def go():
        # No client pings: only the server's pings (answered by websockets) keep it alive.
        async with client(server.url(), ping_interval=None, logger=logger) as ws:
            await asyncio.sleep(3.5)
            assert ws.close_code is None, f"idle connection closed with {ws.close_code}"
            await ws.send("still alive")
            assert await recv(ws) == "still alive"

    run(go())
    pings = [m for m in messages if m.startswith("< PING")]
    pongs = [m for m in messages if m.startswith("> PONG")]
    assert 2 <= len(pings) <= 6, f"expected 2..=6 server pings in 3.5 s with --ping-interval 1s: {pings}"
    assert len(pongs) >= len(pings) - 1, f"websockets did not answer the pings: {pongs}"
    assert not any("pong timeout" in l for l in server.log), "an answering client was timed out"


def test_ping_mode_idle_pings_only_quiet_connections():
    """--ping-mode idle: a connection whose client talks (messages, or websockets' own keepalive pings) is
    not pinged; a silent one is, and survives by answering. The same clients against --ping-mode interval
    are all pinged (the check can fail)."""

    async def clients(srv: Tetherd) -> dict[str, int]:
        async def talker(logger):
            async with client(srv.url(), ping_interval=None, logger=logger) as ws:
                for i in range(12):
                    await ws.send(f"m{i}")
                    assert await recv(ws) == f"m{i}"
                    await asyncio.sleep(0.3)

        async def pinger(logger):
            # websockets' keepalive: a client ping every 0.4 s.
            async with client(srv.url(), ping_interval=0.4, ping_timeout=5, logger=logger) as ws:
                await asyncio.sleep(3.6)
                assert ws.close_code is None

        async def silent(logger):
            async with client(srv.url(), ping_interval=None, logger=logger) as ws:
                await asyncio.sleep(3.6)
                assert ws.close_code is None, f"silent client closed with {ws.close_code}"
                await ws.send("still here")
                assert await recv(ws) == "still here"

        logs = {name: frame_log(name) for name in ("talker", "pinger", "silent")}
        await asyncio.gather(talker(logs["talker"][0]), pinger(logs["pinger"][0]), silent(logs["silent"][0]))
        return {name: sum(1 for m in lines if m.startswith("< PING")) for name, (_, lines) in logs.items()}

    seen = {}
    for mode in ("idle", "interval"):
        srv = Tetherd("--ping-interval", "1s", "--pong-timeout", "1s", "--tick", "100ms", "--ping-mode", mode)
        try:
            seen[mode] = run(clients(srv))
            assert not any("pong timeout" in l for l in srv.log), f"{mode}: an answering client was timed out"
        finally:
            srv.stop()
    # At most one: idle mode never moves a connection's first ping (a random point of its first second).
    assert seen["idle"]["talker"] <= 1 and seen["idle"]["pinger"] <= 1, f"idle mode pinged talkers: {seen}"
    assert 2 <= seen["idle"]["silent"] <= 6, f"idle mode did not ping the silent client: {seen}"
    assert all(2 <= n <= 6 for n in seen["interval"].values()), f"interval mode should ping everyone: {seen}"


def test_silent_peer_is_closed_by_server():
    # A websockets client whose pong answers are suppressed: the server must close it (1011).
    srv = Tetherd("--ping-interval", "1s", "--pong-timeout", "1s", "--tick", "100ms", "--close-timeout", "1s")
    try:

        async def go():
            async with client(srv.url(), ping_interval=None) as ws:
                # Stop websockets from answering pings: drop every Pong frame it tries to send.
                send_frame = ws.protocol.send_frame

                def no_pongs(frame):
                    if frame.opcode is not Opcode.PONG:
                        send_frame(frame)

                ws.protocol.send_frame = no_pongs
                try:
                    await asyncio.wait_for(ws.recv(), 15)
                    pytest.fail("expected the server to close the connection")
                except ConnectionClosed as e:
                    return e.rcvd.code if e.rcvd is not None else None

        code = run(go())
        assert code in (1011, None), f"server closed a silent peer with {code}, want 1011"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("pong timeout" in l for l in srv.log):
            time.sleep(0.1)
        assert any("pong timeout" in l for l in srv.log), f"no pong timeout logged: {srv.log[-10:]}"
    finally:
        srv.stop()


def test_sigterm_sends_1001():
    srv = Tetherd()
    try:

        async def go():
            conns = [await client(srv.url()).__aenter__() for _ in range(5)]
            for ws in conns:
                await ws.send("x")
                assert await recv(ws) == "x"
            srv.proc.send_signal(signal.SIGTERM)
            codes = []
            for ws in conns:
                try:
                    await asyncio.wait_for(ws.recv(), 15)
                except ConnectionClosed as e:
                    codes.append(e.rcvd.code if e.rcvd else None)
            return codes

        codes = run(go())
        assert codes == [1001] * 5, f"close codes after SIGTERM: {codes}"
        assert srv.proc.wait(timeout=20) == 0, "tetherd did not exit 0 after SIGTERM"
    finally:
        srv.stop()
