"""Messages up to --max-message-size are echoed whole by tetherd with default flags, seen from Python's
`websockets`: the send-queue bound (--max-send-queue, 4 MiB by default) limits what is queued beyond one
outgoing message, never a single legal message (up to 16 MiB by default) itself.

Starts the same tetherd binary the Rust tests use: $TETHERD_BIN, else target/release/tetherd, else
target/debug/tetherd (relative to the workspace root, or $CARGO_TARGET_DIR).
"""

import asyncio
import random

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tetherd_proc import Tetherd, run_bounded
TEST_LIMIT = 60  # seconds, per test
ECHO_WAIT = 50  # seconds for one echo to arrive (small, busy machines)
MIB = 1024 * 1024
MAX_MESSAGE = 16 * MIB  # tetherd's default --max-message-size


@pytest.fixture
def server():
    srv = Tetherd()  # default flags: max message 16 MiB, max send queue 4 MiB
    yield srv
    srv.stop()


def run(coro):
    return run_bounded(coro, TEST_LIMIT)


def client(url: str):
    # proxy=None: never route loopback through an environment proxy; max_size=None: the client never
    # refuses an echo, so a failure is always the server's.
    return connect(url, proxy=None, open_timeout=10, close_timeout=10, max_size=None, compression=None)


async def echo_of(server, ws, message, what: str):
    """Sends `message` (a str, bytes, or an iterable of fragments) and returns the next message received."""
    try:
        await ws.send(message)
        return await asyncio.wait_for(ws.recv(), ECHO_WAIT)
    except ConnectionClosed as e:
        await asyncio.sleep(0.2)  # let the server's close line reach its log
        pytest.fail(f"{what}: connection closed ({e}); server close lines: {server.close_lines()}")


def random_bytes(n: int, seed: int) -> bytes:
    """Pseudo-random bytes, so that a reordered or shifted echo cannot match."""
    return random.Random(seed).randbytes(n)


PRINTABLE = bytes(32 + b % 95 for b in range(256))


def random_text(n: int, seed: int) -> str:
    return random_bytes(n, seed).translate(PRINTABLE).decode("ascii")


def check_same(got, want, what: str):
    assert type(got) is type(want), f"{what}: got a {type(got).__name__}, expected a {type(want).__name__}"
    assert len(got) == len(want), f"{what}: echo of {len(want)} bytes came back with {len(got)}"
    assert got == want, f"{what}: echo differs"  # never print the payloads


def test_5_mib_binary_echo_then_keeps_echoing(server):
    async def go():
        async with client(server.url()) as ws:
            blob = random_bytes(5 * MIB, 5)
            check_same(await echo_of(server, ws, blob, "5 MiB binary"), blob, "5 MiB binary")
            got = await echo_of(server, ws, "after 5 MiB", "small text after 5 MiB")
            assert got == "after 5 MiB"

    run(go())


def test_16_mib_binary_echo(server):
    async def go():
        async with client(server.url()) as ws:
            blob = random_bytes(MAX_MESSAGE, 16)
            check_same(await echo_of(server, ws, blob, "16 MiB binary"), blob, "16 MiB binary")
            got = await echo_of(server, ws, "after 16 MiB", "small text after 16 MiB")
            assert got == "after 16 MiB"

    run(go())


def test_16_mib_text_in_64_byte_fragments_echo(server):
    """262,144 frames of 64 bytes (Text fin=0, continuations, the last fin=1) come back as one message."""

    async def go():
        async with client(server.url()) as ws:
            text = random_text(MAX_MESSAGE, 64)
            chunks = [text[i:i + 64] for i in range(0, len(text), 64)]
            assert len(chunks) == 262_144
            got = await echo_of(server, ws, chunks, "16 MiB text in 64-byte fragments")
            check_same(got, text, "16 MiB text in 64-byte fragments")
            got = await echo_of(server, ws, "after fragments", "small text after the fragmented message")
            assert got == "after fragments"

    run(go())
