"""The embedding examples (engine/examples/axum.rs and hyper.rs) with Python's `websockets`: the app's own
cookie auth decides who gets a WebSocket, the engine it hands the socket to greets, echoes and keeps the
connection alive with pings that `websockets` answers by itself, and closes a client that stops answering."""

import asyncio
import urllib.request

import pytest
import websockets
import websockets.exceptions

from example_util import App


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
