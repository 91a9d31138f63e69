"""tetherd's Centrifugo-compatible server HTTP API driven by the stock `cent` 5.x client
(POST /api/<method> with X-API-Key), checked against what centrifuge-python 0.7.x clients see.
Scenarios: /work/shared/GATEWAY-PROTOCOL.md sections 9 and 11 (item 15).
"""

import asyncio
import json
import shutil
import subprocess

import pytest
import requests
from cent import (
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PublishResult,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentApiResponseError, CentUnauthorizedError
from centrifuge import ClientState, SubscriptionState

from gateway_util import API_KEY, Gateway, Harness, call_api, subscribed, unique, until

LIMIT = 45  # seconds, per test


@pytest.fixture(scope="module")
def gw():
    g = Gateway()
    yield g
    g.stop()


def test_wrong_api_key_is_unauthorized(gw):
    ch = unique("news-")
    with pytest.raises(CentUnauthorizedError):
        gw.api("not-the-key").publish(PublishRequest(channel=ch, data={"a": 1}))
    with pytest.raises(CentUnauthorizedError):
        gw.api("").publish(PublishRequest(channel=ch, data={"a": 1}))
    with pytest.raises(CentUnauthorizedError):
        gw.api("not-the-key").info(InfoRequest())
    # The right key works on the same server.
    r = gw.api().publish(PublishRequest(channel=ch, data={"a": 1}))
    assert isinstance(r, PublishResult) and (r.offset, r.epoch) == (0, "")


def _post(gw, method: str, body: bytes, headers: dict, query: str = ""):
    s = requests.Session()
    s.trust_env = False
    return s.post(f"{gw.api_url}/{method}{query}", data=body, headers={"Content-Type": "application/json", **headers}, timeout=5)


def accepted_total(gw) -> int:
    """tetherd's count of accepted TCP connections (this scrape's own included)."""
    s = requests.Session()
    s.trust_env = False
    text = s.get(f"http://{gw.addr}/metrics", headers={"Connection": "close"}, timeout=5).text
    s.close()
    return int(next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith('tether_accepted_total{shard="total"}')))


def test_cent_client_reuses_one_connection_for_many_calls(gw):
    """`cent` keeps its requests session's connection open (HTTP/1.1 keep-alive): 40 publishes through one
    client cost one TCP connection, not 40 handshakes and teardowns."""
    before = accepted_total(gw)
    api = gw.api()
    channel = "hist:" + unique("keepalive")
    for i in range(40):
        assert isinstance(api.publish(PublishRequest(channel=channel, data={"i": i})), PublishResult)
    api._session._session.close()
    # This scrape and the client's one connection (a reconnect or two would still show the reuse).
    used = accepted_total(gw) - before - 1
    assert 1 <= used <= 3, f"40 API calls took {used} connections"
    history = api.history(HistoryRequest(channel=channel, limit=-1))
    assert [p.data["i"] for p in history.publications] == list(range(40))


def test_curl_publish_with_expect_100_continue(gw):
    """curl holds back a body behind `Expect: 100-continue` until the server answers `100 Continue` (or its
    --expect100-timeout passes; 1 s by default). With the timeout at 60 s and the whole call capped at 20 s,
    the publish only succeeds if tetherd sends the interim answer."""
    curl = shutil.which("curl")
    assert curl, "curl is not installed (scripts/test.sh installs it)"
    channel = "hist:" + unique("curl-")
    text = "x" * 4000  # curl itself adds the Expect header past 1 MiB only; here it is asked for
    body = json.dumps({"channel": channel, "data": {"text": text}})
    r = subprocess.run(
        [curl, "-sS", "-v", "--noproxy", "*", "-m", "20", "--expect100-timeout", "60",
         "-H", "Expect: 100-continue", "-H", "Content-Type: application/json", "-H", "X-API-Key: " + API_KEY,
         "--data-binary", "@-", f"{gw.api_url}/publish"],
        input=body.encode(), capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert "< HTTP/1.1 100 Continue" in r.stderr.decode(), r.stderr.decode(errors="replace")
    assert json.loads(r.stdout)["result"]["offset"] == 1, r.stdout
    history = gw.api().history(HistoryRequest(channel=channel, limit=-1))
    assert [p.data["text"] for p in history.publications] == [text]


def test_api_key_in_authorization_header_or_query(gw):
    # Besides X-API-Key (what cent sends), Centrifugo takes `Authorization: apikey KEY` and ?api_key=KEY.
    body = json.dumps({"channel": unique("news-"), "data": {"k": 1}}).encode()
    r = _post(gw, "publish", body, {"Authorization": "apikey " + API_KEY})
    assert (r.status_code, r.json()) == (200, {"result": {}})
    r = _post(gw, "publish", body, {}, query="?api_key=" + API_KEY)
    assert (r.status_code, r.json()) == (200, {"result": {}})
    r = _post(gw, "publish", body, {"Authorization": "apikey wrong"})
    assert r.status_code == 401


def test_api_publish_of_pretty_printed_json_keeps_client_framing(gw):
    # JSON-protocol frames join replies with a newline, so the raw data the API got (here with
    # newlines and indentation inside) must reach the SDK as the same JSON value without breaking it.
    async def go():
        async with Harness(gw) as h:
            a, rec = await h.connected("pete")
            ch = unique("hist:pretty-")
            await subscribed(a, rec, ch)
            body = ('{\n  "channel": "%s",\n  "data": {\n    "text": "line1\\nline2",\n    "list": [\n      1,\n      2\n    ]\n  }\n}' % ch).encode()
            r = await asyncio.to_thread(_post, gw, "publish", body, {"X-API-Key": API_KEY})
            assert r.status_code == 200 and r.json()["result"]["offset"] == 1, r.text
            p = (await rec.wait("publication", ch))[0]
            assert p.pub.data == {"text": "line1\nline2", "list": [1, 2]}
            await call_api(gw.api(), PublishRequest(channel=ch, data={"after": 1}))
            p = (await rec.wait("publication", ch, count=2))[1]
            assert p.pub.data == {"after": 1}
            assert a.state == ClientState.CONNECTED and len(rec.of("connecting")) == 1

    gw.run(go(), LIMIT)


def _history_wrong_epoch(api):
    ch = unique("hist:e-")
    r = api.publish(PublishRequest(channel=ch, data={"a": 1}))
    assert r.offset == 1 and r.epoch != ""
    h = api.history(HistoryRequest(channel=ch, limit=10, since=StreamPosition(offset=0, epoch=r.epoch)))
    assert (h.offset, h.epoch) == (1, r.epoch)
    assert [(p.offset, p.data) for p in h.publications] == [(1, {"a": 1})]
    api.history(HistoryRequest(channel=ch, limit=10, since=StreamPosition(offset=0, epoch="not-the-epoch")))


@pytest.mark.parametrize(
    "call, code, message",
    [
        pytest.param(
            lambda api: api.publish(PublishRequest(channel="nope:room", data={"a": 1})),
            102, "unknown channel", id="publish-unknown-namespace-102",
        ),
        pytest.param(
            lambda api: api.publish(PublishRequest(channel="", data={"a": 1})),
            107, "bad request", id="publish-empty-channel-107",
        ),
        pytest.param(
            lambda api: api.presence(PresenceRequest(channel=unique("hist:p-"))),
            108, "not available", id="presence-off-108",
        ),
        pytest.param(_history_wrong_epoch, 112, "unrecoverable position", id="history-wrong-epoch-112"),
    ],
)
def test_api_error_replies(gw, call, code, message):
    # Centrifugo answers HTTP 200 with {"error": {"code", "message"}}; cent raises CentApiResponseError.
    with pytest.raises(CentApiResponseError) as e:
        call(gw.api())
    assert (e.value.code, e.value.message) == (code, message)


def test_batch_of_two_publishes_gives_two_replies(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            a, rec = await h.connected("alice")
            ch = unique("hist:batch-")
            await subscribed(a, rec, ch)
            res = await call_api(
                api,
                BatchRequest(
                    requests=[
                        PublishRequest(channel=ch, data={"n": 1}),
                        PublishRequest(channel=ch, data={"n": 2}),
                    ]
                ),
            )
            assert len(res.replies) == 2
            assert all(isinstance(r, PublishResult) for r in res.replies), res.replies
            assert [r.offset for r in res.replies] == [1, 2]
            assert res.replies[0].epoch == res.replies[1].epoch != ""
            pubs = await rec.wait("publication", ch, count=2)
            assert [(p.pub.offset, p.pub.data) for p in pubs] == [(1, {"n": 1}), (2, {"n": 2})]

            # Mixed methods in one batch: each reply under its own method.
            chat = unique("chat:batch-")
            await subscribed(a, rec, chat)
            res = await call_api(
                api,
                BatchRequest(
                    requests=[PublishRequest(channel=chat, data={"m": 1}), PresenceStatsRequest(channel=chat)]
                ),
            )
            assert len(res.replies) == 2
            assert isinstance(res.replies[0], PublishResult) and res.replies[0].offset == 1
            assert isinstance(res.replies[1], PresenceStatsResult)
            assert (res.replies[1].num_clients, res.replies[1].num_users) == (1, 1)
            await asyncio.sleep(0.3)
            assert len(rec.of("publication", ch)) == 2 and len(rec.of("publication", chat)) == 1

    gw.run(go(), LIMIT)


def test_broadcast_and_history_remove(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            a, rec = await h.connected("bea")
            hist, plain = unique("hist:bc-"), unique("news-bc-")
            await subscribed(a, rec, hist)
            await subscribed(a, rec, plain)
            res = await call_api(api, BroadcastRequest(channels=[hist, plain], data={"all": True}))
            assert len(res.responses) == 2
            assert [r.error for r in res.responses] == [None, None]
            assert res.responses[0].result.offset == 1 and res.responses[0].result.epoch != ""
            assert (res.responses[1].result.offset, res.responses[1].result.epoch) == (0, "")
            for ch in (hist, plain):
                p = (await rec.wait("publication", ch))[0]
                assert p.pub.data == {"all": True}
            h1 = await call_api(api, HistoryRequest(channel=hist, limit=-1))
            assert [p.data for p in h1.publications] == [{"all": True}]
            await call_api(api, HistoryRemoveRequest(channel=hist))
            h2 = await call_api(api, HistoryRequest(channel=hist, limit=-1))
            assert h2.publications == []
            assert h2.epoch == h1.epoch

    gw.run(go(), LIMIT)


def test_channels_and_info_parse():
    # A server of its own, so the counts are exactly this test's.
    g = Gateway()

    async def go():
        async with Harness(g) as h:
            api = g.api()
            a, rec_a = await h.connected("ann")
            b, rec_b = await h.connected("ben")
            prefix = unique("chat:apich-")
            one, two = prefix + "-one", prefix + "-two"
            await subscribed(a, rec_a, one)
            await subscribed(b, rec_b, one)
            await subscribed(b, rec_b, two)

            res = await call_api(api, ChannelsRequest())
            assert {k: v.num_clients for k, v in res.channels.items()} == {one: 2, two: 1}
            res = await call_api(api, ChannelsRequest(pattern=prefix + "-o*"))
            assert {k: v.num_clients for k, v in res.channels.items()} == {one: 2}

            info = await call_api(api, InfoRequest())
            assert len(info.nodes) == 1
            node = info.nodes[0]
            assert node.uid != "" and node.name != ""
            assert (node.num_clients, node.num_users, node.num_channels) == (2, 2, 2)

            await b.disconnect()

            async def channels():
                r = await call_api(api, ChannelsRequest())
                return {k: v.num_clients for k, v in r.channels.items()}

            await until(channels, {one: 1}, what="channels after ben left")
            info = await call_api(api, InfoRequest())
            assert (info.nodes[0].num_clients, info.nodes[0].num_users, info.nodes[0].num_channels) == (1, 1, 1)

    try:
        g.run(go(), LIMIT)
    finally:
        g.stop()


def test_api_unsubscribe_unsubscribes_sdk_subscription_with_2000(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            a, rec = await h.connected("ursula")
            ch, other = unique("news-u-"), unique("news-u-")
            sub, _ = await subscribed(a, rec, ch)
            sub_other, _ = await subscribed(a, rec, other)
            await call_api(api, UnsubscribeRequest(user="ursula", channel=ch))
            u = (await rec.wait("unsubscribed", ch))[0]
            assert (u.code, u.reason) == (2000, "server unsubscribe")
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            assert sub_other.state == SubscriptionState.SUBSCRIBED
            await call_api(api, PublishRequest(channel=ch, data={"to": "gone"}))
            await call_api(api, PublishRequest(channel=other, data={"to": "other"}))
            p = (await rec.wait("publication", other))[0]
            assert p.pub.data == {"to": "other"}
            await asyncio.sleep(0.3)
            assert rec.of("publication", ch) == []
            assert a.state == ClientState.CONNECTED and len(rec.of("connecting")) == 1
            assert len(rec.of("subscribing", ch)) == 1  # no resubscribe

    gw.run(go(), LIMIT)


def test_api_subscribe_creates_server_side_subscription(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            a, rec = await h.connected("sam")
            plain, chat = unique("srv-"), unique("chat:srv-")

            await call_api(api, SubscribeRequest(user="sam", channel=plain))
            s = (await rec.wait("server_subscribed", plain))[0]
            assert (s.channel, s.recoverable, s.was_recovering, s.recovered) == (plain, False, False, False)
            await call_api(api, PublishRequest(channel=plain, data={"srv": 1}))
            p = (await rec.wait("server_publication", plain))[0]
            assert (p.channel, p.pub.data, p.pub.offset) == (plain, {"srv": 1}, 0)

            await call_api(api, SubscribeRequest(user="sam", channel=chat))
            s = (await rec.wait("server_subscribed", chat))[0]
            assert (s.recoverable, s.positioned) == (True, True)
            assert s.stream_position.offset == 0 and s.stream_position.epoch != ""
            r = await call_api(api, PublishRequest(channel=chat, data={"srv": 2}))
            assert (r.offset, r.epoch) == (1, s.stream_position.epoch)
            p = (await rec.wait("server_publication", chat))[0]
            assert (p.pub.data, p.pub.offset) == ({"srv": 2}, 1)

            await call_api(api, UnsubscribeRequest(user="sam", channel=plain))
            u = (await rec.wait("server_unsubscribed", plain))[0]
            assert u.channel == plain
            await call_api(api, PublishRequest(channel=plain, data={"srv": 3}))
            await asyncio.sleep(0.3)
            assert len(rec.of("server_publication", plain)) == 1
            assert a.state == ClientState.CONNECTED and len(rec.of("connecting")) == 1
            assert rec.of("subscribed") == []  # nothing reached client-side subscription events

    gw.run(go(), LIMIT)


def test_api_disconnect_default_is_terminal_3503(gw):
    async def go():
        async with Harness(gw) as h:
            api = gw.api()
            r1, r2 = await h.relay(), await h.relay()
            c1, rec1 = await h.connected("dora-1", user="dora", url=r1.ws_url)
            c2, rec2 = await h.connected("dora-2", user="dora", url=r2.ws_url)
            # One connection of the user by client id...
            await call_api(api, DisconnectRequest(user="dora", client=c1.client_id))
            d = (await rec1.wait("disconnected"))[0]
            assert (d.code, d.reason) == (3503, "force disconnect")
            await asyncio.sleep(0.5)
            assert c2.state == ClientState.CONNECTED and rec2.of("disconnected") == []
            # ...then all of them.
            await call_api(api, DisconnectRequest(user="dora"))
            d = (await rec2.wait("disconnected"))[0]
            assert (d.code, d.reason) == (3503, "force disconnect")
            await asyncio.sleep(1.5)  # a reconnect would come 0.1-0.2 s after the close
            for c, rec, relay in ((c1, rec1, r1), (c2, rec2, r2)):
                assert c.state == ClientState.DISCONNECTED
                assert relay.count == 1, f"{rec.name} reconnected"
                assert rec.kinds() == ["connecting", "connected", "disconnected"], rec.dump()

    gw.run(go(), LIMIT)
