"""The gateway as a library (server/examples/embedded_gateway.rs): a program runs `GatewayServer` on a port
of its own beside its axum app, and also mounts the gateway's endpoint on the app's own port (the app answers
the upgrade, `GatewayServer::admit` checks it, `adopt` takes the socket); its `Authorizer` reads the
program's session cookie at the upgrade and decides subscriptions, and the app publishes through the
gateway's API in process. Driven by the stock Centrifugo Python SDK (centrifuge-python), which sends the
cookie as an upgrade header."""

import asyncio
import json
import urllib.request

import pytest
import websockets
import websockets.exceptions
from centrifuge import Client, ClientState, SubscriptionState

from example_util import App
from gateway_util import ClientEvents, Recorder, SubEvents, subscribed


@pytest.fixture
def app():
    a = App("embedded_gateway", listen=("127.0.0.1:0", "127.0.0.1:0"))
    yield a
    a.stop()


def post(app, path, body):
    req = urllib.request.Request(f"http://{app.addr}{path}", data=body.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.mark.parametrize("endpoint", ["gateway port", "app port"])
def test_app_routes_cookie_auth_subscribe_decisions_and_in_process_publish(app, endpoint):
    assert app.ws_url and app.ws_url.endswith("/connection/websocket"), app.ws_url
    ws_url = app.ws_url if endpoint == "gateway port" else f"ws://{app.addr}/connection/websocket"
    with urllib.request.urlopen(f"http://{app.addr}/hello", timeout=10) as r:
        assert r.read() == b"hello from the app\n"

    async def run():
        # No session cookie: the Authorizer refuses the upgrade itself (HTTP 401).
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            await websockets.connect(ws_url, open_timeout=10)
        assert e.value.response.status_code == 401

        rec = Recorder("alice")
        c = Client(ws_url, events=ClientEvents(rec), headers={"Cookie": "session=alice"})
        try:
            # No token: the cookie made the connection alice's.
            await asyncio.wait_for(c.connect(), 10)
            await rec.wait("connected", timeout=10)
            assert c.state == ClientState.CONNECTED

            news, _ = await subscribed(c, rec, "news")
            _, _ = await subscribed(c, rec, "user:alice")
            # Another user's channel: the Authorizer denies it (error 103, permission denied).
            bob = c.new_subscription("user:bob", events=SubEvents(rec, "user:bob"))
            await asyncio.wait_for(bob.subscribe(), 5)
            await rec.wait("unsubscribed", "user:bob", timeout=5)
            assert bob.state == SubscriptionState.UNSUBSCRIBED, rec.dump()
            assert any(getattr(e, "code", None) == 103 for e in rec.of("unsubscribed", "user:bob")), rec.dump()

            # The app publishes through the gateway's API in process; the subscriber gets it, with its offset.
            status, result = post(app, "/publish/news", '{"text": "from the app"}')
            assert status == 200 and result.get("offset") == 1, result
            pub = (await rec.wait("publication", "news", timeout=5))[0]
            assert pub.pub.data == {"text": "from the app"}
            assert pub.pub.offset == 1

            # The user's own channel (allowed for alice only) gets the app's publication too.
            status, result = post(app, "/publish/user:alice", '"just for alice"')
            assert status == 200, result
            pub = (await rec.wait("publication", "user:alice", timeout=5))[0]
            assert pub.pub.data == "just for alice"
            assert news.state == SubscriptionState.SUBSCRIBED
        finally:
            await c.disconnect()

    asyncio.run(run())
