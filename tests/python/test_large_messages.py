"""Messages up to --max-message-size are echoed whole by tetherd with default flags, seen from Python's
`websockets`: the send-queue bound (--max-send-queue, 4 MiB by default) limits what is queued beyond one
outgoing message, never a single legal message (up to 16 MiB by default) itself.

Starts the same tetherd binary the Rust tests use: $TETHERD_BIN, else target/release/tetherd, else
target/debug/tetherd (relative to the workspace root, or $CARGO_TARGET_DIR).
"""

import asyncio
import random
import subprocess
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tetherd_proc import Tetherd, run_bounded, tetherd_bin
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


def moved_large(srv) -> int:
    """tetherd's count of connections moved to the large receive buffers."""
    text = urllib.request.urlopen(f"http://{srv.addr}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('tether_recv_moved_large_total{shard="total"}'):
            return int(float(line.split()[-1]))
    pytest.fail("/metrics has no tether_recv_moved_large_total")


MIXED = [10, 5000, 16384, 100, 70000, 300_000, 3, 65536, 1 << 20, 20000, 4095, 4097, 131_072]


async def mixed_echoes(server, ws, seed: int):
    """Every size of MIXED one at a time, then 150 messages of mixed sizes pipelined in batches (many frames
    in flight at once, split wherever TCP splits them); each echo must equal what was sent, in order."""
    for i, n in enumerate(MIXED):
        blob = random_bytes(n, seed + i)
        check_same(await echo_of(server, ws, blob, f"{n} B"), blob, f"{n} B")
    rng = random.Random(seed)
    blobs = [random_bytes(rng.choice([1, 900, 4096, 17000, 40000, 200_000]), seed + 100 + i) for i in range(150)]
    # In batches of at most 1 MiB: sent back to back, then their echoes read. Unbounded, the echoes of a
    # client that writes faster than it reads would pass the server's send-queue bound (4 MiB: 1008).
    i = 0
    while i < len(blobs):
        batch, size = [], 0
        while i < len(blobs) and size + len(blobs[i]) <= MIB:
            batch.append(blobs[i])
            size += len(blobs[i])
            i += 1
        for b in batch:
            await ws.send(b)
        for b in batch:
            check_same(await asyncio.wait_for(ws.recv(), ECHO_WAIT), b, f"pipelined message of {len(b)} B")


def test_large_frames_move_a_connection_to_the_large_buffers(server):
    """A connection that only sends small frames stays on the small receive buffers; one whose frame spans
    more than one small buffer is moved to the large ones once (its receive cancelled and re-armed there),
    and everything it sent before, during and after the move is echoed whole and in order."""

    async def go():
        async with client(server.url()) as small, client(server.url()) as big:
            for i in range(50):
                got = await echo_of(server, small, random_bytes(300, i), "small")
                check_same(got, random_bytes(300, i), "small")
            assert moved_large(server) == 0, "small frames moved a connection"
            await mixed_echoes(server, big, 1)
            assert moved_large(server) == 1, "the large-frame connection was not moved exactly once"
            check_same(await echo_of(server, small, b"still here", "small after"), b"still here", "small after")
            async with client(server.url()) as big2:
                await mixed_echoes(server, big2, 2)
            assert moved_large(server) == 2

    run(go())


def test_large_frames_without_large_buffers():
    """--recv-large-buffer-size 0: no pool to move to, the same frames reassembled from small buffers."""
    srv = Tetherd("--recv-large-buffer-size", "0")
    try:
        async def go():
            async with client(srv.url()) as ws:
                await mixed_echoes(srv, ws, 3)
            assert moved_large(srv) == 0

        run(go())
    finally:
        srv.stop()


@pytest.mark.parametrize("args, says", [
    (["--recv-large-buffer-size", "4KiB"], "must be larger than recv_buffer_size"),
    (["--recv-large-buffers", "48"], "power of two"),
])
def test_bad_large_buffer_settings_are_refused(args, says):
    proc = subprocess.run([str(tetherd_bin()), "--listen", "127.0.0.1:0", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, "tetherd started with a bad setting"
    assert says in proc.stderr, proc.stderr[-2000:]
