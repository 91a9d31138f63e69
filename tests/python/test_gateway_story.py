"""The story Tether's gateway exists for, told with the stock clients (centrifuge-python 0.7.x for the
users, `cent` 5.x for the backend): a user sits idle in a chat for a long time and stays connected on
app-level pings alone; the connection then drops (a reconnect code) while the backend keeps
publishing; on reconnect the user gets every missed message, in order, once, then live ones; the other
user in the room sees the first one leave and come back.
"""

import asyncio
import time

from cent import Disconnect, DisconnectRequest, PresenceRequest, PublishRequest
from centrifuge import ClientState, SubscriptionState

from gateway_util import Gateway, Harness, call_api, subscribed, unique

IDLE_SECONDS = 60  # the upper end of the 30-60 s after which proxies and NATs drop quiet flows
LIMIT = IDLE_SECONDS + 60


def test_idle_user_drops_and_recovers_every_missed_message():
    g = Gateway()  # ping every 2 s, pong timeout 1 s (gateway_util.BASE_CONFIG)

    async def go():
        async with Harness(g) as h:
            api = g.api()
            ch = unique("chat:story-")
            relay = await h.relay()  # counts alice's connections
            # alice's reconnect waits 2-3 s, so the backend publishes while she is surely away.
            a, rec_a = await h.connected(
                "alice", url=relay.ws_url, min_reconnect_delay=2.0, max_reconnect_delay=3.0
            )
            b, rec_b = await h.connected("bob")
            first_id = a.client_id
            sub_a, ctx = await subscribed(a, rec_a, ch)
            epoch = ctx.stream_position.epoch
            assert (ctx.recoverable, epoch != "") == (True, True), ctx
            await rec_a.wait("join", ch, pred=lambda j: j.info.user == "alice")
            sub_b, _ = await subscribed(b, rec_b, ch)
            await rec_b.wait("join", ch, pred=lambda j: j.info.user == "bob")
            await rec_a.wait("join", ch, pred=lambda j: j.info.user == "bob")
            b_seen_before = len(rec_b.events)

            def msg(n):
                return {"text": f"message {n}", "n": n}

            r = await call_api(api, PublishRequest(channel=ch, data=msg(1)))
            assert (r.offset, r.epoch) == (1, epoch)
            await rec_a.wait("publication", ch, count=1)
            await rec_b.wait("publication", ch, count=1)

            # alice idles: nothing but the server's pings (every 2 s) and her pongs. The SDK drops a
            # connection after 12 s without a ping, so any gap in them would show as a reconnect.
            started = time.monotonic()
            while time.monotonic() - started < IDLE_SECONDS:
                assert a.state == ClientState.CONNECTED, f"after {time.monotonic() - started:.1f}s:\n{rec_a.dump()}"
                assert sub_a.state == SubscriptionState.SUBSCRIBED, rec_a.dump()
                await asyncio.sleep(0.5)
            assert relay.count == 1, f"alice opened {relay.count} connections during the idle"
            assert a.client_id == first_id
            assert rec_a.of("error") == [] and len(rec_a.of("connecting")) == 1, rec_a.dump()
            assert b.state == ClientState.CONNECTED and len(rec_b.of("connecting")) == 1, rec_b.dump()

            # The connection drops with a reconnect code; the backend publishes meanwhile.
            await call_api(
                api, DisconnectRequest(user="alice", disconnect=Disconnect(code=4001, reason="story: blip"))
            )
            c = (await rec_a.wait("connecting", count=2))[1]
            assert (c.code, c.reason) == (4001, "story: blip")
            await rec_b.wait("leave", ch, pred=lambda e: e.info.user == "alice")
            missed = [await call_api(api, PublishRequest(channel=ch, data=msg(n))) for n in range(2, 7)]
            assert [m.offset for m in missed] == [2, 3, 4, 5, 6]
            assert len(rec_a.of("publication", ch)) == 1, "alice got a publication while away"

            await rec_a.wait("connected", count=2, timeout=10)
            second_id = a.client_id
            assert second_id != first_id
            resub = (await rec_a.wait("subscribed", ch, count=2))[1]
            assert (resub.was_recovering, resub.recovered) == (True, True), resub
            assert resub.stream_position.epoch == epoch
            await rec_a.wait("publication", ch, count=6)
            for n in (7, 8):
                await call_api(api, PublishRequest(channel=ch, data=msg(n)))
            await rec_a.wait("publication", ch, count=8)
            await rec_b.wait("publication", ch, count=8)
            await rec_b.wait("join", ch, pred=lambda e: e.info.user == "alice")
            await asyncio.sleep(0.5)  # room for duplicates to show up

            everything = [msg(n) for n in range(1, 9)]
            for rec in (rec_a, rec_b):
                pubs = rec.of("publication", ch)
                assert [p.pub.data for p in pubs] == everything, rec.name
                assert [p.pub.offset for p in pubs] == list(range(1, 9)), rec.name
            # alice: the missed ones right after the recovered subscribe, before the live ones.
            order = [k for k in rec_a.kinds(ch) if k in ("subscribing", "subscribed", "publication")]
            assert order == ["subscribing", "subscribed", "publication", "subscribing", "subscribed"] + [
                "publication"
            ] * 7
            # bob: alice's leave (old connection), then her join (new connection); nothing else of hers.
            bob_saw = [
                (k, ctx.info.user, ctx.info.client)
                for k, chan, ctx, _ in rec_b.events[b_seen_before:]
                if chan == ch and k in ("join", "leave") and ctx.info.user == "alice"
            ]
            assert bob_saw == [("leave", "alice", first_id), ("join", "alice", second_id)]
            assert relay.count == 2
            assert b.state == ClientState.CONNECTED and len(rec_b.of("connecting")) == 1
            assert sub_b.state == SubscriptionState.SUBSCRIBED

            p = await call_api(api, PresenceRequest(channel=ch))
            assert {k: v.user for k, v in p.presence.items()} == {second_id: "alice", b.client_id: "bob"}

    try:
        g.run(go(), LIMIT)
    finally:
        g.stop()
