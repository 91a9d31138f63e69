"""The embedding examples (engine/examples/axum.rs and hyper.rs) with Python's `websockets`: the app's own
cookie auth decides who gets a WebSocket, the engine it hands the socket to greets, echoes and keeps the
connection alive with pings that `websockets` answers by itself, and closes a client that stops answering."""

import asyncio
import urllib.request

import pytest
import websockets
import websockets.exceptions

from example_util import App
from ws_raw import client_frame, handshake, read_frame


@pytest.fixture(params=["axum", "hyper"])
def app(request):
    a = App(request.param, "--ping-interval", "200ms", "--pong-timeout", "400ms")
    a.name = request.param
    yield a
    a.stop()


def test_plain_route_and_auth(app):
    with urllib.request.urlopen(f"http://{app.addr}/hello", timeout=10) as r:
        assert r.status == 200
        assert r.read() == f"hello from {app.name}\n".encode()

    async def refused():
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            await websockets.connect(f"ws://{app.addr}/ws", open_timeout=10)
        return e.value.response.status_code

    assert asyncio.run(refused()) == 401


def test_adopted_connection_echoes_and_survives_pings(app):
    async def run():
        async with websockets.connect(
            f"ws://{app.addr}/ws", additional_headers={"Cookie": "session=demo"}, open_timeout=10, ping_interval=None
        ) as ws:
            assert await asyncio.wait_for(ws.recv(), 10) == "hello demo"
            await ws.send("one")
            assert await asyncio.wait_for(ws.recv(), 10) == "one"
            await ws.send(b"\x00\x01binary")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x01binary"
            # Ten ping intervals, four pong deadlines: `websockets` answers the engine's pings by itself.
            await asyncio.sleep(2)
            await ws.send("after the pings")
            assert await asyncio.wait_for(ws.recv(), 10) == "after the pings"
            await ws.close(1000, "done")
            return ws.close_code

    assert asyncio.run(run()) == 1000


def test_client_that_stops_answering_pings_is_closed_by_the_pong_deadline(app):
    async def run():
        ws = await websockets.connect(
            f"ws://{app.addr}/ws", additional_headers={"Cookie": "session=demo"}, open_timeout=10, ping_interval=None
        )
        assert await asyncio.wait_for(ws.recv(), 10) == "hello demo"
        # Stop reading and answering: pause the transport so the library sees no ping and sends no pong.
        ws.transport.pause_reading()
        await asyncio.sleep(2)
        ws.transport.resume_reading()
        with pytest.raises(websockets.exceptions.ConnectionClosed) as e:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        return e.value.rcvd.code if e.value.rcvd else None

    assert asyncio.run(run()) == 1011


@pytest.mark.parametrize("offer", [None, "permessage-deflate; client_max_window_bits"])
def test_adopted_connection_keeps_the_deflate_the_app_agreed(app, offer):
    """The app answers the offer as the engine would (engine/examples/common: `deflate::accept_offer`) and hands
    the agreement over with `adopt_negotiated`: the engine then compresses what it sends (RSV1, far fewer bytes
    for a compressible message) and inflates what it gets. Without an offer: no extension, plain frames."""
    import zlib

    s, status, headers, buf = handshake(app.addr, offer, path="/ws", extra=("Cookie: session=demo",))
    assert " 101 " in status, status
    try:
        ext = headers.get("sec-websocket-extensions")
        if offer:
            assert ext and ext.startswith("permessage-deflate") and "server_no_context_takeover" in ext, headers
        else:
            assert ext is None, headers
        fin, rsv1, op, payload, buf = read_frame(s, buf)
        assert (fin, op, payload) == (True, 1, b"hello demo")  # under the 64-byte threshold: plain
        message = b'{"event":"tick","data":"' + b"abc" * 700 + b'"}'
        s.sendall(client_frame(0x1, message))
        fin, rsv1, op, payload, buf = read_frame(s, buf)
        assert fin and op == 1
        if offer:
            assert rsv1, "the echo of a 2 KB compressible message went out uncompressed"
            assert len(payload) < len(message) // 10, len(payload)
            assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == message
        else:
            assert not rsv1 and payload == message
    finally:
        s.close()
