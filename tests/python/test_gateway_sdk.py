"""tetherd's Centrifugo-compatible gateway seen from the stock Python SDK (PyPI `centrifuge-python`
0.7.x), with the stock server API client (`cent` 5.x) publishing and PyJWT minting HS256 tokens.
Scenarios: /work/shared/GATEWAY-PROTOCOL.md section 11 (connect and tokens, subscribe permissions,
publications, presence, join/leave, recovery, history, ping/pong).

Starts the tetherd binary the other Python tests use ($TETHERD_BIN, else target/{release,debug}/tetherd)
with `--gateway CONFIG` (gateway_util.BASE_CONFIG: ping every 2 s, pong timeout 1 s).
"""

import asyncio
import copy
import json
import time

import pytest
from cent import Disconnect, DisconnectRequest, HistoryRequest, PresenceRequest, PresenceStatsRequest, PublishRequest
from centrifuge import ClientState, ReplyError, StreamPosition, SubscriptionState
from websockets.exceptions import ConnectionClosed

from gateway_util import (
    BASE_CONFIG,
    Gateway,
    Harness,
    RawClient,
    SubEvents,
    call_api,
    is_canonical_uuid,
    make_token,
    subscribed,
    unique,
    until,
)

LIMIT = 45  # seconds, per test (the 60 s keepalive test has its own)
# The SDK reconnects 0.1-0.2 s after a lost connection by default; a client that must stay away while
# the test publishes gets 2-3 s instead.
SLOW_RECONNECT = {"min_reconnect_delay": 2.0, "max_reconnect_delay": 3.0}


@pytest.fixture(scope="module")
def gw():
    g = Gateway()
    yield g
    g.stop()


def data_of(pubs):
    return [p.pub.data for p in pubs]


def offsets_of(pubs):
    return [p.pub.offset for p in pubs]


# --- 1. connect and tokens ---------------------------------------------------------------------------


def test_connect_with_valid_token_gets_uuid_client_id(gw):
    async def go():
        async with Harness(gw) as h:
            a, rec_a = await h.connected("alice")
            b, rec_b = await h.connected("bob")
            ctx = rec_a.of("connected")[0]
            assert is_canonical_uuid(ctx.client), f"client id {ctx.client!r} is not a UUID"
            assert a.client_id == ctx.client
            assert is_canonical_uuid(b.client_id) and b.client_id != a.client_id
            assert rec_a.kinds() == ["connecting", "connected"]
            assert rec_a.of("connecting")[0].code == 0  # connect called
            await a.disconnect()
            d = (await rec_a.wait("disconnected"))[0]
            assert (d.code, d.reason) == (0, "disconnect called")
            assert a.state == ClientState.DISCONNECTED
            assert b.state == ClientState.CONNECTED

    gw.run(go(), LIMIT)


@pytest.mark.parametrize(
    "token, code, reason",
    [
        pytest.param(make_token("mallory", secret="not-the-secret"), 3500, "invalid token", id="wrong-secret-3500"),
        pytest.param("not.a.jwt", 3500, "invalid token", id="malformed-3500"),
        pytest.param(None, 3501, "bad request", id="no-token-3501"),
    ],
)
def test_bad_credentials_are_terminal(gw, token, code, reason):
    async def go():
        async with Harness(gw) as h:
            relay = await h.relay()
            c, rec = h.client("mallory", token=token, url=relay.ws_url)
            await asyncio.wait_for(c.connect(), 10)
            d = (await rec.wait("disconnected", timeout=5))[0]
            assert (d.code, d.reason) == (code, reason)
            # Terminal: a reconnect would come 0.1-0.2 s later; give it ten times that.
            await asyncio.sleep(1.5)
            assert c.state == ClientState.DISCONNECTED
            assert relay.count == 1, f"{relay.count} connections: the SDK reconnected"
            assert rec.kinds() == ["connecting", "disconnected"], rec.dump()

    gw.run(go(), LIMIT)


def test_expired_token_is_replaced_through_get_token(gw):
    async def go():
        async with Harness(gw) as h:
            relay = await h.relay()
            calls = []

            async def get_token():
                calls.append(time.monotonic())
                return make_token("carol", exp_in=3600)

            c, rec = h.client(
                "carol", token=make_token("carol", exp_in=-60), get_token=get_token, url=relay.ws_url
            )
            await asyncio.wait_for(c.connect(), 10)
            await rec.wait("connected", timeout=10)
            assert c.state == ClientState.CONNECTED
            assert len(calls) == 1, f"get_token called {len(calls)} times"
            errors = rec.of("error")
            assert len(errors) == 1, rec.dump()
            err = errors[0].error
            assert isinstance(err, ReplyError), rec.dump()
            assert (err.code, err.message) == (109, "token expired")
            # One connection answered 109, the second one connected; nothing since.
            assert relay.count == 2
            assert [k for k in rec.kinds() if k != "error"] == ["connecting", "connected"]

    gw.run(go(), LIMIT)


def test_expiring_token_is_refreshed_and_connection_stays(gw):
    # A token with exp makes the connection expire: the connect result carries expires/ttl, the SDK
    # gets a new token through get_token before then and sends `refresh`; the connection stays.
    async def go():
        async with Harness(gw) as h:
            relay = await h.relay()
            calls = []

            async def get_token():
                calls.append(time.monotonic())
                return make_token("erin", exp_in=3)

            c, rec = await h.connected("erin", token=make_token("erin", exp_in=3), get_token=get_token, url=relay.ws_url)
            first_id = c.client_id
            await asyncio.sleep(8)
            assert len(calls) >= 2, f"get_token called {len(calls)} times in 8 s with 3 s tokens"
            assert c.state == ClientState.CONNECTED, rec.dump()
            assert c.client_id == first_id
            assert relay.count == 1, f"{relay.count} connections"
            assert rec.kinds() == ["connecting", "connected"], rec.dump()

    gw.run(go(), LIMIT)


def test_command_before_connect_is_closed_3501(gw):
    async def go():
        raw = await RawClient(gw.ws_url).open()
        try:
            await raw.send({"id": 1, "subscribe": {"channel": unique("news-")}})
            with pytest.raises(ConnectionClosed) as closed:
                await raw.recv_frame(5)
            rcvd = closed.value.rcvd
            assert rcvd is not None and (rcvd.code, rcvd.reason) == (3501, "bad request"), rcvd
        finally:
            await raw.close()

    gw.run(go(), LIMIT)


def test_user_connection_limit_is_terminal_3504():
    config = copy.deepcopy(BASE_CONFIG)
    config["client"]["user_connection_limit"] = 1
    g = Gateway(config)

    async def go():
        async with Harness(g) as h:
            a, rec_a = await h.connected("lena-1", user="lena")
            relay = await h.relay()
            b, rec_b = h.client("lena-2", user="lena", url=relay.ws_url)
            await asyncio.wait_for(b.connect(), 10)
            d = (await rec_b.wait("disconnected"))[0]
            assert (d.code, d.reason) == (3504, "connection limit")
            await asyncio.sleep(1.0)
            assert relay.count == 1 and b.state == ClientState.DISCONNECTED
            assert a.state == ClientState.CONNECTED
            c, rec_c = await h.connected("otto")  # other users are not limited
            assert c.state == ClientState.CONNECTED

    try:
        g.run(go(), LIMIT)
    finally:
        g.stop()


async def close_of(raw: RawClient, within: float):
    """Reads until the server closes; returns (code, reason, seconds) of its close frame."""
    start = time.monotonic()
    try:
        while True:
            await raw.recv_frame(max(0.01, start + within - time.monotonic()))
    except ConnectionClosed as e:
        rcvd = e.rcvd
        return (rcvd.code, rcvd.reason, time.monotonic() - start) if rcvd else (None, None, time.monotonic() - start)
    except asyncio.TimeoutError:
        pytest.fail(f"still open {within} s later")


def test_protocol_violations_close_the_connection(gw):
    async def malformed():
        raw = await RawClient(gw.ws_url).open()
        try:
            await raw.ws.send("this is not json")
            return (await close_of(raw, 5))[:2]
        finally:
            await raw.close()

    async def oversized():
        # 64 KiB is the default limit of an incoming message; the close is 1009.
        raw = await RawClient(gw.ws_url).open()
        try:
            r = await raw.call("connect", {"token": make_token("big")})
            assert "error" not in r, r
            await raw.send({"id": 2, "publish": {"channel": unique("chat:big-"), "data": {"x": "a" * 100_000}}})
            return (await close_of(raw, 5))[0]  # the SDKs look at the code only
        finally:
            await raw.close()

    async def stale():
        # No connect command within 10 s (client.stale_close_delay): closed as stale.
        raw = await RawClient(gw.ws_url).open()
        try:
            code, reason, took = await close_of(raw, 15)
            assert 9 <= took <= 13, took
            return code, reason
        finally:
            await raw.close()

    async def go():
        got = await asyncio.gather(malformed(), oversized(), stale())
        assert got == [(3501, "bad request"), 1009, (3502, "stale")]

    gw.run(go(), LIMIT)


# --- 2. subscribe and permissions ---------------------------------------------------------------------


def test_subscribe_allowed_channel(gw):
    async def go():
        async with Harness(gw) as h:
            a, rec = await h.connected("alice")
            ch = unique("news-")
            sub, ctx = await subscribed(a, rec, ch)
            assert ctx.channel == ch
            assert (ctx.recoverable, ctx.positioned, ctx.was_recovering, ctx.recovered) == (False, False, False, False)
            assert ctx.stream_position is None
            # A recovery namespace returns the stream position of the (new) stream.
            ch2 = unique("chat:sub-")
            sub2, ctx2 = await subscribed(a, rec, ch2)
            assert (ctx2.recoverable, ctx2.positioned, ctx2.was_recovering, ctx2.recovered) == (True, True, False, False)
            assert ctx2.stream_position.offset == 0
            assert ctx2.stream_position.epoch != ""
            await sub.unsubscribe()
            u = (await rec.wait("unsubscribed", ch))[0]
            assert (u.code, u.reason) == (0, "unsubscribe called")
            assert sub2.state == SubscriptionState.SUBSCRIBED
            assert a.state == ClientState.CONNECTED

    gw.run(go(), LIMIT)


@pytest.mark.parametrize(
    "channel, code, reason",
    [
        pytest.param("nope:room", 102, "unknown channel", id="unknown-namespace-102"),
        pytest.param("private:room", 103, "permission denied", id="forbidden-namespace-103"),
    ],
)
def test_subscribe_refused(gw, channel, code, reason):
    async def go():
        async with Harness(gw) as h:
            a, rec = await h.connected("alice")
            sub = a.new_subscription(channel, events=SubEvents(rec, channel))
            await sub.subscribe()
            u = (await rec.wait("unsubscribed", channel))[0]
            assert (u.code, u.reason) == (code, reason)
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            assert rec.of("subscribed") == []
            # Only the subscription failed: the connection stays up and still subscribes elsewhere.
            await subscribed(a, rec, unique("news-"))
            assert a.state == ClientState.CONNECTED
            assert len(rec.of("connecting")) == 1

    gw.run(go(), LIMIT)


def test_client_publish_without_permission_is_103(gw):
    async def go():
        async with Harness(gw) as h:
            a, rec = await h.connected("alice")
            ch = unique("news-")
            sub, _ = await subscribed(a, rec, ch)
            with pytest.raises(ReplyError) as e:
                await sub.publish({"text": "not allowed"})
            assert (e.value.code, e.value.message) == (103, "permission denied")
            await asyncio.sleep(0.3)
            assert rec.of("publication", ch) == []
            assert sub.state == SubscriptionState.SUBSCRIBED and a.state == ClientState.CONNECTED

    gw.run(go(), LIMIT)


def test_second_subscribe_to_one_channel_is_105(gw):
    # The SDK refuses a duplicate subscription itself, so this one speaks the protocol by hand.
    async def go():
        raw = await RawClient(gw.ws_url).open()
        try:
            r = await raw.call("connect", {"token": make_token("dave")})
            assert "error" not in r, r
            ch = unique("news-")
            r1 = await raw.call("subscribe", {"channel": ch})
            assert "error" not in r1 and "subscribe" in r1, r1
            r2 = await raw.call("subscribe", {"channel": ch})
            assert r2.get("error", {}).get("code") == 105, r2
            assert r2["error"]["message"] == "already subscribed"
            r3 = await raw.call("unsubscribe", {"channel": ch})
            assert r3 == {"id": r3["id"], "unsubscribe": {}}, r3
        finally:
            await raw.close()

    gw.run(go(), LIMIT)


def test_commands_of_one_client_need_a_subscription_in_subscriber_namespaces(gw):
    # chat allows publish/presence/history for subscribers only; private allows nothing.
    async def go():
        async with Harness(gw) as h:
            a, rec = await h.connected("nina")
            for ch in (unique("chat:notsub-"), unique("private:x-")):
                for what, call in (
                    ("publish", lambda: a.publish(ch, {"x": 1})),
                    ("presence", lambda: a.presence(ch)),
                    ("presence_stats", lambda: a.presence_stats(ch)),
                    ("history", lambda: a.history(ch, limit=10)),
                ):
                    with pytest.raises(ReplyError) as e:
                        await call()
                    assert (e.value.code, e.value.message) == (103, "permission denied"), (ch, what)
            assert a.state == ClientState.CONNECTED

    gw.run(go(), LIMIT)


def test_one_frame_with_connect_and_three_subscribes(gw):
    # centrifuge-js sends connect and its subscribes in one frame; each command gets its reply, in order.
    async def go():
        raw = await RawClient(gw.ws_url).open()
        try:
            chans = [unique("news-f-") for _ in range(3)]
            await raw.send(
                {"id": 1, "connect": {"token": make_token("fred")}},
                *({"id": i + 2, "subscribe": {"channel": ch}} for i, ch in enumerate(chans)),
            )
            replies = []
            while len(replies) < 4:
                frame = await raw.recv_frame(5)
                replies += [json.loads(line) for line in frame.strip().split("\n") if line != "{}"]
            assert [r.get("id") for r in replies] == [1, 2, 3, 4], replies
            assert "connect" in replies[0] and all("subscribe" in r for r in replies[1:]), replies
        finally:
            await raw.close()

    gw.run(go(), LIMIT)


def test_channel_limit_is_106(gw):
    # client.channel_limit 128: the 129th subscription of one connection is refused.
    async def go():
        raw = await RawClient(gw.ws_url).open()
        try:
            r = await raw.call("connect", {"token": make_token("lim")})
            assert "error" not in r, r
            prefix = unique("news-lim-")
            await raw.send(*({"id": 100 + i, "subscribe": {"channel": f"{prefix}-{i}"}} for i in range(129)))
            replies = {}
            while len(replies) < 129:
                frame = await raw.recv_frame(5)
                for line in frame.strip().split("\n"):
                    reply = json.loads(line)
                    if reply.get("id"):
                        replies[reply["id"]] = reply
            errors = {i: r["error"] for i, r in replies.items() if "error" in r}
            assert errors == {228: {"code": 106, "message": "limit exceeded"}}, errors
        finally:
            await raw.close()

    gw.run(go(), LIMIT)


def test_subscription_tokens(gw):
    # A namespace without allow_subscribe_for_client still admits a subscription token for the channel
    # and user; an expired one (109) makes the SDK fetch another through the subscription's get_token.
    async def go():
        async with Harness(gw) as h:
            a, rec = await h.connected("tina")
            ch = unique("private:tok-")
            await subscribed(a, rec, ch, token=make_token("tina", channel=ch))
            ch2 = unique("private:tok-")
            calls = []

            async def get_token(channel):
                calls.append(channel)
                return make_token("tina", channel=channel, exp_in=3600)

            _, ctx = await subscribed(
                a, rec, ch2, timeout=10, token=make_token("tina", channel=ch2, exp_in=-60), get_token=get_token
            )
            assert calls == [ch2]
            errs = [e.error for e in rec.of("sub_error", ch2)]
            assert [(e.code, e.message) for e in errs] == [(109, "token expired")], rec.dump()
            assert a.state == ClientState.CONNECTED and len(rec.of("connecting")) == 1

    gw.run(go(), LIMIT)


def test_subscription_token_for_another_channel_is_closed_3500(gw):
    async def go():
        async with Harness(gw) as h:
            a, rec = await h.connected("tom")
            ch = unique("private:tok-")
            sub = a.new_subscription(ch, events=SubEvents(rec, ch), token=make_token("tom", channel=ch + "-other"))
            await sub.subscribe()
            d = (await rec.wait("disconnected"))[0]
            assert (d.code, d.reason) == (3500, "invalid token")

    gw.run(go(), LIMIT)


def test_connection_token_info_and_channels(gw):
    # The token's `info` travels as conn_info (presence, join, publications of that client); its
    # `channels` become server-side subscriptions made at connect.
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            ch, srv = unique("chat:info-"), unique("news-srv-")
            b, rec_b = await h.connected("bob")
            await subscribed(b, rec_b, ch)
            a, rec_a = await h.connected("alice", token=make_token("alice", info={"name": "Alice"}, channels=[srv]))
            s = (await rec_a.wait("server_subscribed", srv))[0]
            assert s.channel == srv
            sub_a, _ = await subscribed(a, rec_a, ch)
            j = (await rec_b.wait("join", ch, pred=lambda e: e.info.user == "alice"))[0]
            assert (j.info.client, j.info.conn_info) == (a.client_id, {"name": "Alice"})
            await sub_a.publish({"hi": 1})
            p = (await rec_b.wait("publication", ch))[0]
            assert (p.pub.info.user, p.pub.info.conn_info) == ("alice", {"name": "Alice"})
            pres = await call_api(api, PresenceRequest(channel=ch))
            assert pres.presence[a.client_id].conn_info == {"name": "Alice"}
            assert pres.presence[b.client_id].conn_info is None
            await call_api(api, PublishRequest(channel=srv, data={"srv": True}))
            sp = (await rec_a.wait("server_publication", srv))[0]
            assert sp.pub.data == {"srv": True}

    gw.run(go(), LIMIT)


def test_rpc_without_handler_is_104(gw):
    async def go():
        async with Harness(gw) as h:
            a, _ = await h.connected("rpc")
            with pytest.raises(ReplyError) as e:
                await a.rpc("anything", {"x": 1})
            assert (e.value.code, e.value.message) == (104, "method not found")
            assert a.state == ClientState.CONNECTED

    gw.run(go(), LIMIT)


# --- 3. publications ----------------------------------------------------------------------------------


def test_cent_publish_reaches_subscriber_with_incrementing_offsets(gw):
    async def go():
        async with Harness(gw) as h:
            a, rec = await h.connected("alice")
            api = gw.api()
            ch = unique("hist:pub-")
            await subscribed(a, rec, ch)
            datas = [
                {"text": "héllo wörld ✓", "n": [1, 2, {"x": None}], "f": 1.5, "b": True},
                [1, "two", 3.25, False, None],
                "a plain string with a\nnewline",
            ]
            results = [await call_api(api, PublishRequest(channel=ch, data=d)) for d in datas]
            assert [r.offset for r in results] == [1, 2, 3]
            epochs = {r.epoch for r in results}
            assert len(epochs) == 1 and "" not in epochs, epochs
            pubs = await rec.wait("publication", ch, count=3)
            assert data_of(pubs) == datas
            assert offsets_of(pubs) == [1, 2, 3]
            assert [p.pub.info for p in pubs] == [None, None, None]  # server API publications carry no info
            # Without history: no position in the result, none on the publication.
            plain = unique("news-")
            await subscribed(a, rec, plain)
            r = await call_api(api, PublishRequest(channel=plain, data={"k": "v"}))
            assert (r.offset, r.epoch) == (0, "")
            p = (await rec.wait("publication", plain))[0]
            assert (p.pub.data, p.pub.offset) == ({"k": "v"}, 0)
            await asyncio.sleep(0.3)
            assert len(rec.of("publication", ch)) == 3 and len(rec.of("publication", plain)) == 1

    gw.run(go(), LIMIT)


def test_client_publish_carries_publisher_info(gw):
    async def go():
        async with Harness(gw) as h:
            a, rec_a = await h.connected("alice")
            b, rec_b = await h.connected("bob")
            ch = unique("chat:pub-")
            sub_a, _ = await subscribed(a, rec_a, ch)
            await subscribed(b, rec_b, ch)
            await sub_a.publish({"text": "hi from alice"})
            for rec in (rec_b, rec_a):  # the publisher gets its own publication too
                p = (await rec.wait("publication", ch))[0].pub
                assert p.data == {"text": "hi from alice"}
                assert p.offset == 1
                assert p.info is not None, f"{rec.name}: publication without info"
                assert (p.info.user, p.info.client) == ("alice", a.client_id)
            await asyncio.sleep(0.3)
            assert len(rec_a.of("publication", ch)) == 1 and len(rec_b.of("publication", ch)) == 1

    gw.run(go(), LIMIT)


# --- 4. presence and join/leave -----------------------------------------------------------------------


def test_presence_from_sdk_and_cent_agree(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            ch = unique("chat:pres-")
            a, rec_a = await h.connected("alice")
            b, rec_b = await h.connected("bob")
            c, rec_c = await h.connected("alice-2", user="alice")  # alice's second connection
            sub_a, _ = await subscribed(a, rec_a, ch)
            await subscribed(b, rec_b, ch)
            await subscribed(c, rec_c, ch)

            async def sdk_view():
                p = await sub_a.presence()
                return {cid: (i.client, i.user) for cid, i in p.clients.items()}

            async def sdk_stats():
                s = await sub_a.presence_stats()
                return (s.num_clients, s.num_users)

            async def cent_view():
                p = await call_api(api, PresenceRequest(channel=ch))
                return {cid: (i.client, i.user) for cid, i in p.presence.items()}

            async def cent_stats():
                s = await call_api(api, PresenceStatsRequest(channel=ch))
                return (s.num_clients, s.num_users)

            everyone = {
                a.client_id: (a.client_id, "alice"),
                b.client_id: (b.client_id, "bob"),
                c.client_id: (c.client_id, "alice"),
            }
            await until(sdk_view, everyone, what="sdk presence")
            assert await cent_view() == everyone
            assert await sdk_stats() == (3, 2)
            assert await cent_stats() == (3, 2)

            await c.disconnect()
            del everyone[c.client_id]
            await until(sdk_view, everyone, what="sdk presence after alice-2 left")
            assert await cent_view() == everyone
            assert await sdk_stats() == (2, 2)
            assert await cent_stats() == (2, 2)

            await b.disconnect()
            del everyone[b.client_id]
            await until(sdk_view, everyone, what="sdk presence after bob left")
            assert await cent_view() == everyone
            assert await sdk_stats() == (1, 1)
            assert await cent_stats() == (1, 1)

            # A namespace without presence: 108.
            hist = unique("hist:nopres-")
            sub_h, _ = await subscribed(a, rec_a, hist)
            with pytest.raises(ReplyError) as e:
                await sub_h.presence()
            assert (e.value.code, e.value.message) == (108, "not available")

    gw.run(go(), LIMIT)


def test_join_and_leave_pushes_carry_user(gw):
    async def go():
        async with Harness(gw) as h:
            ch = unique("chat:jl-")
            a, rec_a = await h.connected("alice")
            b, rec_b = await h.connected("bob")
            c, rec_c = await h.connected("carol")

            def seen():
                return [
                    (k, ctx.info.user, ctx.info.client)
                    for k, chan, ctx, _ in rec_a.events
                    if chan == ch and k in ("join", "leave")
                ]

            await subscribed(a, rec_a, ch)
            await rec_a.wait("join", ch, count=1)  # its own join
            sub_b, _ = await subscribed(b, rec_b, ch)
            await rec_a.wait("join", ch, count=2)
            await sub_b.unsubscribe()
            await rec_a.wait("leave", ch, count=1)
            await subscribed(c, rec_c, ch)
            await rec_a.wait("join", ch, count=3)
            await c.disconnect()  # leaving by disconnect also sends a leave
            await rec_a.wait("leave", ch, count=2)
            await asyncio.sleep(0.3)
            assert seen() == [
                ("join", "alice", a.client_id),
                ("join", "bob", b.client_id),
                ("leave", "bob", b.client_id),
                ("join", "carol", c.client_id),
                ("leave", "carol", c.client_id),
            ]

    gw.run(go(), LIMIT)


def test_join_leave_pushed_only_when_the_subscription_asks(gw):
    # Without force_push_join_leave a subscription gets join/leave pushes only when it subscribes with
    # join_leave=True (and has presence access: allow_presence_for_subscriber).
    async def go():
        async with Harness(gw) as h:
            ch = unique("opt:jl-")
            a, rec_a = await h.connected("amy")
            b, rec_b = await h.connected("bo")
            c, rec_c = await h.connected("cy")
            await subscribed(a, rec_a, ch, join_leave=True)
            await subscribed(b, rec_b, ch)
            sub_c, _ = await subscribed(c, rec_c, ch)
            await sub_c.unsubscribe()
            await rec_a.wait("leave", ch, pred=lambda e: e.info.user == "cy")
            await asyncio.sleep(0.3)
            seen_a = [(k, ctx.info.user) for k, chan, ctx, _ in rec_a.events if chan == ch and k in ("join", "leave")]
            assert seen_a == [("join", "amy"), ("join", "bo"), ("join", "cy"), ("leave", "cy")]
            assert rec_b.of("join") == [] and rec_b.of("leave") == []

    gw.run(go(), LIMIT)


def test_recovery_and_positioning_when_the_subscription_asks(gw):
    # Without force_recovery / force_positioning, Centrifugo turns them on for a subscription that asks
    # (recoverable=True / positioned=True) and may read history (allow_history_for_subscriber).
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            ch = unique("opt:rec-")
            a, rec_a = await h.connected("ray", **SLOW_RECONNECT)
            p, rec_p = await h.connected("pia")
            b, rec_b = await h.connected("bo")
            _, ctx_b = await subscribed(b, rec_b, ch)
            assert (ctx_b.recoverable, ctx_b.positioned, ctx_b.stream_position) == (False, False, None)
            _, ctx_p = await subscribed(p, rec_p, ch, positioned=True)
            assert (ctx_p.recoverable, ctx_p.positioned) == (False, True)
            _, ctx_a = await subscribed(a, rec_a, ch, recoverable=True)
            assert (ctx_a.recoverable, ctx_a.positioned) == (True, True)
            assert ctx_a.stream_position.offset == 0 and ctx_a.stream_position.epoch == ctx_p.stream_position.epoch != ""
            await call_api(api, PublishRequest(channel=ch, data={"n": 1}))
            await rec_a.wait("publication", ch, count=1)
            await force_reconnect(api, rec_a, "ray")
            for n in (2, 3):
                await call_api(api, PublishRequest(channel=ch, data={"n": n}))
            resub = (await rec_a.wait("subscribed", ch, count=2, timeout=10))[1]
            assert (resub.was_recovering, resub.recovered) == (True, True), resub
            await rec_a.wait("publication", ch, count=3)
            await asyncio.sleep(0.3)
            assert [(x.pub.offset, x.pub.data) for x in rec_a.of("publication", ch)] == [(n, {"n": n}) for n in (1, 2, 3)]

    gw.run(go(), LIMIT)


# --- 5./6. recovery -----------------------------------------------------------------------------------


async def force_reconnect(api, rec, user: str, code: int = 3011, reason: str = "test reconnect"):
    """cent.disconnect with a reconnect code; waits until the SDK saw the close (state connecting)."""
    n = len(rec.of("connecting"))
    await call_api(api, DisconnectRequest(user=user, disconnect=Disconnect(code=code, reason=reason)))
    ctx = (await rec.wait("connecting", count=n + 1, timeout=5))[n]
    assert (ctx.code, ctx.reason) == (code, reason)


def test_recovery_after_forced_reconnect(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            ch = unique("chat:rec-")
            relay = await h.relay()
            a, rec = await h.connected("rita", url=relay.ws_url, **SLOW_RECONNECT)
            first_id = a.client_id
            sub, ctx = await subscribed(a, rec, ch)
            epoch = ctx.stream_position.epoch
            r = await call_api(api, PublishRequest(channel=ch, data={"n": 1}))
            assert (r.offset, r.epoch) == (1, epoch)
            await rec.wait("publication", ch, count=1)

            await force_reconnect(api, rec, "rita")
            assert a.state == ClientState.CONNECTING
            missed = [await call_api(api, PublishRequest(channel=ch, data={"n": n})) for n in (2, 3, 4)]
            assert [m.offset for m in missed] == [2, 3, 4]
            assert len(rec.of("publication", ch)) == 1, "a publication arrived while disconnected"

            await rec.wait("connected", count=2, timeout=10)
            resub = (await rec.wait("subscribed", ch, count=2, timeout=5))[1]
            assert (resub.was_recovering, resub.recovered) == (True, True), resub
            assert resub.stream_position.epoch == epoch
            await rec.wait("publication", ch, count=4)
            await call_api(api, PublishRequest(channel=ch, data={"n": 5}))
            await rec.wait("publication", ch, count=5)
            await asyncio.sleep(0.5)  # room for a duplicate to show up
            pubs = rec.of("publication", ch)
            assert data_of(pubs) == [{"n": n} for n in (1, 2, 3, 4, 5)]
            assert offsets_of(pubs) == [1, 2, 3, 4, 5]
            # The recovered publications come after the subscribed event, the live one after them.
            order = [k for k in rec.kinds(ch) if k in ("subscribing", "subscribed", "publication")]
            assert order == ["subscribing", "subscribed", "publication", "subscribing", "subscribed"] + ["publication"] * 4
            assert relay.count == 2
            assert a.client_id != first_id

    gw.run(go(), LIMIT)


def test_recovery_after_unsubscribe_and_subscribe_of_the_same_subscription(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            ch = unique("chat:resub-")
            a, rec = await h.connected("sven")
            sub, ctx = await subscribed(a, rec, ch)
            epoch = ctx.stream_position.epoch
            await call_api(api, PublishRequest(channel=ch, data={"n": 1}))
            await rec.wait("publication", ch, count=1)
            await sub.unsubscribe()
            await rec.wait("unsubscribed", ch)
            for n in (2, 3):
                await call_api(api, PublishRequest(channel=ch, data={"n": n}))
            await sub.subscribe()
            resub = (await rec.wait("subscribed", ch, count=2))[1]
            assert (resub.was_recovering, resub.recovered) == (True, True), resub
            assert resub.stream_position.epoch == epoch
            await rec.wait("publication", ch, count=3)
            await call_api(api, PublishRequest(channel=ch, data={"n": 4}))
            await rec.wait("publication", ch, count=4)
            await asyncio.sleep(0.3)
            pubs = rec.of("publication", ch)
            assert [(p.pub.offset, p.pub.data) for p in pubs] == [(n, {"n": n}) for n in (1, 2, 3, 4)]
            assert a.state == ClientState.CONNECTED and len(rec.of("connecting")) == 1

    gw.run(go(), LIMIT)


def test_unrecoverable_gap_gives_recovered_false_and_live_continues(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            ch = unique("small:gap-")
            a, rec = await h.connected("uma", **SLOW_RECONNECT)
            sub, ctx = await subscribed(a, rec, ch)
            epoch = ctx.stream_position.epoch
            await call_api(api, PublishRequest(channel=ch, data={"n": 1}))
            await rec.wait("publication", ch, count=1)

            await force_reconnect(api, rec, "uma")
            missed = [await call_api(api, PublishRequest(channel=ch, data={"n": n})) for n in (2, 3, 4, 5)]
            assert [m.offset for m in missed] == [2, 3, 4, 5]

            resub = (await rec.wait("subscribed", ch, count=2, timeout=10))[1]
            assert (resub.was_recovering, resub.recovered) == (True, False), resub
            assert resub.stream_position == StreamPosition(offset=5, epoch=epoch)
            await asyncio.sleep(0.5)
            assert offsets_of(rec.of("publication", ch)) == [1], "a partial recovery was delivered"
            await call_api(api, PublishRequest(channel=ch, data={"n": 6}))
            await rec.wait("publication", ch, count=2)
            await asyncio.sleep(0.3)
            pubs = rec.of("publication", ch)
            assert data_of(pubs) == [{"n": 1}, {"n": 6}]
            assert offsets_of(pubs) == [1, 6]

    gw.run(go(), LIMIT)


def test_server_restart_gives_new_epoch_and_recovered_false(gw):
    # The client talks to a relay; the first server is killed and the relay sends the reconnect to a
    # second one (memory engine: its streams have new epochs).
    async def go():
        s1, s2 = Gateway(), Gateway()
        try:
            async with Harness(s1) as h:
                relay = await h.relay(s1.addr)
                ch = unique("chat:restart-")
                a, rec = await h.connected("rob", url=relay.ws_url)
                sub, ctx = await subscribed(a, rec, ch)
                e1 = ctx.stream_position.epoch
                await call_api(s1.api(), PublishRequest(channel=ch, data={"n": 1}))
                await rec.wait("publication", ch, count=1)
                relay.target = s2.addr
                s1.stop()
                await rec.wait("connected", count=2, timeout=10)
                resub = (await rec.wait("subscribed", ch, count=2, timeout=5))[1]
                assert (resub.was_recovering, resub.recovered) == (True, False), resub
                assert resub.stream_position.epoch not in ("", e1)
                r = await call_api(s2.api(), PublishRequest(channel=ch, data={"n": 2}))
                assert (r.offset, r.epoch) == (1, resub.stream_position.epoch)
                await rec.wait("publication", ch, count=2)
                assert data_of(rec.of("publication", ch)) == [{"n": 1}, {"n": 2}]
                assert relay.count == 2
        finally:
            s1.stop()
            s2.stop()

    gw.run(go(), LIMIT)


# --- 7. history ---------------------------------------------------------------------------------------


def test_history_paging_from_sdk(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            ch = unique("chat:hist-")
            for i in range(1, 6):
                await call_api(api, PublishRequest(channel=ch, data={"i": i}))
            a, rec = await h.connected("hana")
            sub, ctx = await subscribed(a, rec, ch)
            epoch = ctx.stream_position.epoch
            assert ctx.stream_position.offset == 5

            async def page(**kw):
                r = await sub.history(**kw)
                assert (r.offset, r.epoch) == (5, epoch), (kw, r)
                for p in r.publications:
                    assert p.data == {"i": p.offset}, (kw, p)
                return [p.offset for p in r.publications]

            assert await page(limit=0) == []
            assert await page(limit=-1) == [1, 2, 3, 4, 5]
            assert await page(limit=10) == [1, 2, 3, 4, 5]
            assert await page(limit=2) == [1, 2]
            assert await page(since=StreamPosition(2, epoch), limit=2) == [3, 4]
            assert await page(since=StreamPosition(4, epoch), limit=2) == [5]
            assert await page(since=StreamPosition(5, epoch), limit=2) == []
            assert await page(limit=2, reverse=True) == [5, 4]
            assert await page(since=StreamPosition(4, epoch), limit=2, reverse=True) == [3, 2]

            # The server API sees the same stream.
            r = await call_api(api, HistoryRequest(channel=ch, limit=-1))
            assert (r.offset, r.epoch) == (5, epoch)
            assert [(p.offset, p.data) for p in r.publications] == [(i, {"i": i}) for i in range(1, 6)]

            with pytest.raises(ReplyError) as e:
                await sub.history(since=StreamPosition(1, "not-the-epoch"), limit=10)
            assert (e.value.code, e.value.message) == (112, "unrecoverable position")
            with pytest.raises(ReplyError) as e:  # reverse from offset 0 means nothing
                await sub.history(since=StreamPosition(0, epoch), limit=2, reverse=True)
            assert (e.value.code, e.value.message) == (107, "bad request")

            off = unique("nohist:h-")
            sub_off, _ = await subscribed(a, rec, off)
            with pytest.raises(ReplyError) as e:
                await sub_off.history(limit=10)
            assert (e.value.code, e.value.message) == (108, "not available")
            assert a.state == ClientState.CONNECTED

    gw.run(go(), LIMIT)


# --- 8. ping/pong -------------------------------------------------------------------------------------

IDLE_SECONDS = 60


def test_python_clients_stay_connected_60s_idle_and_busy(gw):
    # centrifuge-python re-arms its "no ping" timer (ping 2 s + 10 s) only on server pings, and its
    # websockets layer pings every 20 s expecting a pong within 20 s: an idle and a busy client must
    # both keep their first connection through 60 s.
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            relay_idle, relay_busy = await h.relay(), await h.relay()
            idle, rec_idle = await h.connected("idle", url=relay_idle.ws_url)
            busy, rec_busy = await h.connected("busy", url=relay_busy.ws_url)
            quiet, busy_ch = unique("news-quiet-"), unique("hist:busy-")
            await subscribed(idle, rec_idle, quiet)
            await subscribed(busy, rec_busy, busy_ch)
            ids = (idle.client_id, busy.client_id)

            published = 0
            deadline = time.monotonic() + IDLE_SECONDS
            while time.monotonic() < deadline:
                published += 1
                await call_api(api, PublishRequest(channel=busy_ch, data={"n": published}))
                await asyncio.sleep(0.5)
            await rec_busy.wait("publication", busy_ch, count=published, timeout=10)

            for c, rec, relay in ((idle, rec_idle, relay_idle), (busy, rec_busy, relay_busy)):
                assert c.state == ClientState.CONNECTED, rec.dump()
                assert relay.count == 1, f"{rec.name}: {relay.count} connections"
                assert rec.of("error") == [], rec.dump()
                assert len(rec.of("connecting")) == 1 and len(rec.of("connected")) == 1, rec.dump()
                assert [k for k in rec.kinds() if k in ("subscribing", "subscribed", "unsubscribed")] == [
                    "subscribing",
                    "subscribed",
                ], rec.dump()
            assert (idle.client_id, busy.client_id) == ids
            assert offsets_of(rec_busy.of("publication", busy_ch)) == list(range(1, published + 1))
            assert published >= 60, f"only {published} publications in {IDLE_SECONDS} s: the channel was not busy"

    gw.run(go(), IDLE_SECONDS + 40)


def test_raw_client_that_never_answers_pings_is_closed_3012(gw):
    async def go():
        silent = await RawClient(gw.ws_url).open()
        polite = await RawClient(gw.ws_url).open()
        try:
            for raw, user in ((silent, "silent"), (polite, "polite")):
                r = await raw.call("connect", {"token": make_token(user)})
                assert "error" not in r, r
                assert r["connect"]["ping"] == 2 and r["connect"]["pong"] is True, r
                assert is_canonical_uuid(r["connect"]["client"]), r

            async def answer_pings():
                # Answers every ping with the empty command until closed; returns how many it got.
                pings = 0
                while True:
                    frame = await polite.recv_frame(timeout=10)
                    if frame == "{}":
                        pings += 1
                        await polite.send({})

            polite_task = asyncio.ensure_future(answer_pings())

            opened = time.monotonic()
            first_ping = None
            pings = 0
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    left = opened + 10 - time.monotonic()
                    try:
                        frame = await silent.recv_frame(timeout=max(left, 0.01))
                    except asyncio.TimeoutError:
                        pytest.fail(f"a client that never answered {pings} pings is still open 10 s after connect")
                    assert frame == "{}", f"expected only pings on an idle connection, got {frame!r}"
                    pings += 1
                    if first_ping is None:
                        first_ping = time.monotonic()
            closed_at = time.monotonic()
            rcvd = closed.value.rcvd
            assert rcvd is not None, "closed without a close frame"
            assert (rcvd.code, rcvd.reason) == (3012, "no pong")
            assert first_ping is not None, "closed before any ping"
            assert first_ping - opened <= 3.0  # ping interval 2 s
            assert 0.8 <= closed_at - first_ping <= 3.0, closed_at - first_ping  # pong timeout 1 s

            # The one that answers stays; give it a few more ping intervals.
            await asyncio.sleep(6)
            assert not polite_task.done(), polite_task
            polite_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await polite_task
            assert sum(1 for _, f in polite.frames if f == "{}") >= 3
            r = await polite.call("subscribe", {"channel": unique("news-")})
            assert "error" not in r, r
        finally:
            await silent.close()
            await polite.close()

    gw.run(go(), LIMIT)
