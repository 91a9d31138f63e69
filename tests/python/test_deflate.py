"""permessage-deflate (RFC 7692) end to end: Python's `websockets` (which offers it by default) against
tetherd's echo in shared mode (the default), dedicated mode and off; hand-made frames for what a library
client would never send (junk offers, a decompression bomb, RSV1 where it does not belong).

Starts tetherd like test_python_client.py ($TETHERD_BIN, else target/release/tetherd, else target/debug/tetherd).
"""

import asyncio
import json
import os
import struct
import time
import zlib

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from ws_raw import client_frame, handshake, read_frame
from tetherd_proc import Tetherd, run_bounded

TEST_LIMIT = 60  # seconds, per test


@pytest.fixture(scope="module")
def shared():
    srv = Tetherd("--max-message-size", "1MiB")
    yield srv
    srv.stop()


def run(coro):
    return run_bounded(coro, TEST_LIMIT)


def client(url: str, **kwargs):
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 10)
    kwargs.setdefault("max_size", 16 * 1024 * 1024)
    return connect(url, **kwargs)


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), 10)


def messages():
    doc = json.dumps({"channel": "news", "data": [{"id": i, "text": "lorem ipsum dolor"} for i in range(40)]})
    return [
        "tiny",  # below the threshold: plain both ways
        "x" * 63,
        "y" * 64,
        doc,
        doc.encode(),
        os.urandom(3000),  # incompressible: the server sends it plain
        "žluťoučký kůň 🐎 " * 500,
        b"\x00" * 900_000,  # compresses to ~1 KB, inflates to just under the 1 MiB limit
    ]


def test_websockets_negotiates_shared_mode_and_echoes(shared):
    async def go():
        async with client(shared.url(), compression="deflate") as ws:
            answer = ws.response.headers["Sec-WebSocket-Extensions"]
            assert answer.startswith("permessage-deflate"), answer
            assert "server_no_context_takeover" in answer and "client_no_context_takeover" in answer, answer
            for _ in range(3):
                for m in messages():
                    await ws.send(m)
                    assert await recv(ws) == m

    run(go())


def test_websockets_without_compression(shared):
    async def go():
        async with client(shared.url(), compression=None) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            for m in messages():
                await ws.send(m)
                assert await recv(ws) == m

    run(go())


def test_window_bits_offers(shared):
    # Every window the client may ask the server to keep to, including 8 (which zlib cannot compress with:
    # the server agrees and sends its messages uncompressed, which websockets accepts).
    async def go():
        for bits in (8, 9, 12, 15):
            factory = ClientPerMessageDeflateFactory(server_max_window_bits=bits, client_max_window_bits=max(bits, 9))
            async with client(shared.url(), compression=None, extensions=[factory]) as ws:
                answer = ws.response.headers["Sec-WebSocket-Extensions"]
                assert f"server_max_window_bits={bits}" in answer, answer
                for m in messages():
                    await ws.send(m)
                    assert await recv(ws) == m

    run(go())


def test_deflate_off_declines():
    srv = Tetherd("--deflate", "off")
    try:
        async def go():
            async with client(srv.url(), compression="deflate") as ws:
                assert "Sec-WebSocket-Extensions" not in ws.response.headers
                await ws.send("compressible " * 100)
                assert await recv(ws) == "compressible " * 100

        run(go())
    finally:
        srv.stop()


def test_dedicated_mode_keeps_context():
    srv = Tetherd("--deflate", "dedicated:10")
    try:
        async def go():
            # websockets offers client_max_window_bits: the server asks for its own window (10).
            async with client(srv.url(), compression="deflate") as ws:
                answer = ws.response.headers["Sec-WebSocket-Extensions"]
                assert "client_max_window_bits=10" in answer and "server_max_window_bits=10" in answer, answer
                assert "no_context_takeover" not in answer, answer
                for _ in range(5):  # the same messages again: context takeover must stay in step
                    for m in messages()[:7]:
                        await ws.send(m)
                        assert await recv(ws) == m
            # A client that asks for no context takeover gets it.
            factory = ClientPerMessageDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True)
            async with client(srv.url(), compression=None, extensions=[factory]) as ws:
                answer = ws.response.headers["Sec-WebSocket-Extensions"]
                assert "server_no_context_takeover" in answer, answer
                for m in messages()[:7]:
                    await ws.send(m)
                    assert await recv(ws) == m

        run(go())
    finally:
        srv.stop()


# --- hand-made frames ------------------------------------------------------------------------------------


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def close_code(sock, buf: bytes) -> int:
    while True:
        _, _, opcode, payload, buf = read_frame(sock, buf)
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0]


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_no_context_takeover=yes",
        "permessage-deflate; server_max_window_bits=010",
        "x-webkit-deflate-frame",
        "permessage-deflate;;;",
        ";,,;=",
    ],
)
def test_junk_offers_are_declined_not_fatal(shared, offer):
    sock, status, headers, rest = handshake(shared.addr, offer)
    try:
        assert status.startswith("HTTP/1.1 101"), status
        assert "sec-websocket-extensions" not in headers, headers
        # Not negotiated: a compressed frame is a protocol error.
        sock.sendall(client_frame(0x1, deflate(b"hello" * 20), rsv1=True))
        assert close_code(sock, rest) == 1002
    finally:
        sock.close()


def test_a_junk_offer_then_a_good_one(shared):
    sock, status, headers, rest = handshake(shared.addr, "permessage-deflate; foo=1, permessage-deflate")
    try:
        assert status.startswith("HTTP/1.1 101"), status
        assert headers["sec-websocket-extensions"].startswith("permessage-deflate"), headers
        text = json.dumps({"hello": "world " * 50}).encode()
        sock.sendall(client_frame(0x1, deflate(text), rsv1=True))
        fin, rsv1, opcode, payload, rest = read_frame(sock, rest)
        assert (fin, rsv1, opcode) == (True, True, 0x1)
        # The server compressed without context: a fresh inflater decodes it.
        assert zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") == text
        # RSV1 on a control frame and on a continuation frame: 1002.
        sock.sendall(client_frame(0x9, b"", rsv1=True))
        assert close_code(sock, rest) == 1002
    finally:
        sock.close()


def test_rsv1_on_a_continuation_is_1002(shared):
    sock, _, headers, rest = handshake(shared.addr, "permessage-deflate")
    try:
        assert "sec-websocket-extensions" in headers
        z = deflate(b"abc" * 100)
        sock.sendall(client_frame(0x1, z[:5], rsv1=True, fin=False) + client_frame(0x0, z[5:], rsv1=True))
        assert close_code(sock, rest) == 1002
    finally:
        sock.close()


def test_decompression_bomb_is_1009_without_memory_growth(shared):
    # ~10 KB that inflates to 10 MB, against a 1 MiB max_message_size: 1009, and the server never holds
    # more than the limit for it.
    bomb = deflate(b"\x00" * (10 << 20))
    assert len(bomb) < 12_000, len(bomb)

    def one(fragmented: bool):
        sock, _, headers, rest = handshake(shared.addr, "permessage-deflate")
        try:
            assert "sec-websocket-extensions" in headers
            if fragmented:
                half = len(bomb) // 2
                sock.sendall(client_frame(0x2, bomb[:half], rsv1=True, fin=False) + client_frame(0x0, bomb[half:]))
            else:
                sock.sendall(client_frame(0x2, bomb, rsv1=True))
            assert close_code(sock, rest) == 1009
        finally:
            sock.close()

    # Warm up first: the first large frame on a ring allocates that ring's pool of large receive buffers
    # (64 x 64 KiB), the first bomb on a shard its inflate buffers, ~20 MiB in all on a fresh server (run
    # alone, this test measured that). Connections spread over the shards and rings, so bombs go in batches
    # until a batch leaves RSS where it was; what grows after that would be the bombs themselves.
    before = shared.rss_kib()
    for _ in range(10):
        for i in range(4):
            one(i % 2 == 1)
        time.sleep(0.1)
        now = shared.rss_kib()
        if now - before < 1024:
            break
        before = now
    before = shared.rss_kib()
    for i in range(20):
        one(i % 2 == 1)
    time.sleep(0.2)
    growth = shared.rss_kib() - before
    # 20 bombs of 10 MB each: had any been inflated whole, the growth would be 10+ MB; capped, each costs at
    # most the 1 MiB limit, transiently (the allocator may keep a few such buffers per shard).
    assert growth < 8192, f"RSS grew by {growth} KiB"
    # The connections after it still work.
    sock, _, _, rest = handshake(shared.addr, "permessage-deflate")
    try:
        sock.sendall(client_frame(0x1, deflate(b"still alive " * 10), rsv1=True))
        _, rsv1, _, payload, _ = read_frame(sock, rest)
        assert rsv1 and zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") == b"still alive " * 10
    finally:
        sock.close()


def test_invalid_utf8_inside_compressed_text_is_1007(shared):
    sock, _, _, rest = handshake(shared.addr, "permessage-deflate")
    try:
        sock.sendall(client_frame(0x1, deflate(b"\xff\xfe" * 100), rsv1=True))
        assert close_code(sock, rest) == 1007
    finally:
        sock.close()
