"""Many tenants on one tetherd (issue 12): isolation, per-tenant limits, reload.

tetherd serves the gateway of `--gateway` on /connection/websocket and /api/<method>, and tenant NAME on
/t/NAME/connection/websocket and /t/NAME/api/<method>, each with its own token keys, API key, namespaces,
limits, channels, history and presence. Reload (SIGHUP, or POST /admin/reload with --admin-key) reads the
files again without touching the connections of tenants that stay.

Clients: the stock centrifuge-python SDK and `cent` API client pointed at a tenant's routes, Python
`websockets` speaking the JSON protocol by hand where a test needs the exact reply or close code, PyJWT for
tokens, `requests` for /metrics and the admin endpoint.
"""

import asyncio
import contextlib
import copy
import json
import os
import pathlib
import re
import signal
import subprocess
import tempfile
import time
from typing import Optional

import cent
import pytest
import requests
from centrifuge import Client, ClientState, SubscriptionState
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway_util import (BASE_CONFIG, WS_PATH, ClientEvents, Peer, Recorder, SubEvents, make_token, subscribed,
                          unique)
from tetherd_proc import Tetherd, run_bounded, tetherd_bin

LIMIT = 40  # seconds, per test
ADMIN_KEY = "admin-key"


def tenant_config(secret: str, api_key: str, **client) -> dict:
    c = copy.deepcopy(BASE_CONFIG)
    c["client"]["token"] = {"hmac_secret_key": secret}
    c["client"].update(client)
    c["http_api"] = {"key": api_key}
    return c


def write(path: pathlib.Path, config) -> pathlib.Path:
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


class Node:
    """tetherd with tenant files in a temporary directory (and optionally a --gateway file)."""

    def __init__(self, tenants: dict, gateway: Optional[dict] = None, tenants_dir: bool = False, *extra: str):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tetherd-tenants-"))
        args: list[str] = ["--admin-key", ADMIN_KEY, *extra]
        if gateway is not None:
            args += ["--gateway", str(write(self.dir / "gateway.json", gateway))]
        if tenants_dir:
            self.tdir = self.dir / "tenants"
            self.tdir.mkdir()
            for name, config in tenants.items():
                write(self.tdir / f"{name}.json", config)
            args += ["--tenants-dir", str(self.tdir)]
        else:
            for name, config in tenants.items():
                args += ["--tenant", f"{name}={write(self.dir / f'{name}.json', config)}"]
        self.proc = Tetherd(*args)
        self.addr = self.proc.addr

    def ws_url(self, tenant: Optional[str]) -> str:
        return f"ws://{self.addr}{'' if tenant is None else '/t/' + tenant}{WS_PATH}"

    def api_url(self, tenant: Optional[str]) -> str:
        return f"http://{self.addr}{'' if tenant is None else '/t/' + tenant}/api"

    def api(self, tenant: Optional[str], key: str) -> cent.Client:
        return cent.Client(self.api_url(tenant), key, timeout=5, session=session())

    def post(self, tenant: Optional[str], method: str, body: dict, key: str) -> requests.Response:
        return session().post(f"{self.api_url(tenant)}/{method}", json=body, headers={"X-API-Key": key}, timeout=5)

    def metrics(self) -> str:
        return session().get(f"http://{self.addr}/metrics", timeout=5).text

    def reload(self, key: Optional[str] = ADMIN_KEY, method: str = "POST") -> requests.Response:
        headers = {} if key is None else {"X-Admin-Key": key}
        return session().request(method, f"http://{self.addr}/admin/reload", headers=headers, timeout=10)

    def stop(self):
        self.proc.stop()

    def run(self, coro, limit: float = LIMIT):
        try:
            return run_bounded(coro, limit)
        except BaseException:
            print("--- tetherd log (last lines) ---\n" + "\n".join(self.proc.log[-60:]))
            raise

    def run_then_stop(self, coro, limit: float = LIMIT):
        """`run`, then stop tetherd whatever happened (a test's whole life on its own node)."""
        try:
            return self.run(coro, limit)
        finally:
            self.stop()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the exposition (0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


async def until(check, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# --- isolation ---------------------------------------------------------------------------------------------


def test_tenants_are_isolated_from_each_other_and_from_the_gateway():
    acme = tenant_config("acme-secret", "acme-key")
    globex = tenant_config("globex-secret", "globex-key")
    node = Node({"acme": acme, "globex": globex}, gateway=BASE_CONFIG)

    async def go():
        peers = []
        sdk = None
        try:
            # The stock SDK on a tenant's route.
            rec = Recorder("acme-sdk")
            sdk = Client(node.ws_url("acme"), token=make_token("alice", "acme-secret"), events=ClientEvents(rec),
                         proxy=None, timeout=5.0)
            await asyncio.wait_for(sdk.connect(), 10)
            await rec.wait("connected")
            await subscribed(sdk, rec, "chat:news")

            # The same channel name in globex and in the --gateway gateway.
            g = await Peer(node.ws_url("globex")).open()
            d = await Peer(node.ws_url(None)).open()
            peers += [g, d]
            await g.connect(token=make_token("bob", "globex-secret"))
            await d.connect(token=make_token("carol"))  # gateway_util.SECRET
            for p in (g, d):
                assert "subscribe" in await p.call("subscribe", {"channel": "chat:news"})

            # A publication through acme's API reaches acme's subscriber only.
            await asyncio.to_thread(node.api("acme", "acme-key").publish, cent.PublishRequest(
                channel="chat:news", data={"from": "acme"}))
            await rec.wait("publication", "chat:news")
            assert rec.of("publication", "chat:news")[0].pub.data == {"from": "acme"}
            r = node.post("globex", "publish", {"channel": "chat:news", "data": {"from": "globex"}}, "globex-key")
            assert r.status_code == 200 and "result" in r.json(), r.text
            await until(lambda: g.publications("chat:news"), what="globex publication")
            await asyncio.sleep(0.3)
            assert g.publications("chat:news") == [{"from": "globex"}]
            assert d.publications("chat:news") == [], "the --gateway channel of the same name saw a tenant's"
            assert len(rec.of("publication", "chat:news")) == 1, "acme saw globex's publication"
            # History and presence are per tenant too (offsets start at 1 in each).
            h = node.post("globex", "history", {"channel": "chat:news", "limit": 10}, "globex-key").json()
            assert [p["data"] for p in h["result"]["publications"]] == [{"from": "globex"}], h
            pres = node.post("acme", "presence", {"channel": "chat:news"}, "acme-key").json()["result"]["presence"]
            assert [c["user"] for c in pres.values()] == ["alice"], pres

            # Credentials of one tenant are nothing to another.
            assert node.post("globex", "publish", {"channel": "chat:news", "data": {}}, "acme-key").status_code == 401
            assert node.post(None, "publish", {"channel": "chat:news", "data": {}}, "acme-key").status_code == 401
            x = await Peer(node.ws_url("globex")).open()
            peers.append(x)
            await x.ws.send(json.dumps({"id": 1, "connect": {"token": make_token("alice", "acme-secret")}}))
            assert await x.closed_with() == (3500, "invalid token")

            # An unknown tenant is a 404 before any upgrade, for WebSocket and API alike.
            with pytest.raises(InvalidStatus) as e:
                await ws_connect(node.ws_url("initech"), proxy=None, open_timeout=5)
            assert e.value.response.status_code == 404
            assert node.post("initech", "publish", {"channel": "a", "data": {}}, "acme-key").status_code == 404

            # /metrics: one family per metric, the tenant as a label.
            m = node.metrics()
            assert metric(m, "tether_gateway_connections", tenant="acme", state="authenticated") == 1
            assert metric(m, "tether_gateway_connections", tenant="globex", state="authenticated") == 1
            assert metric(m, "tether_gateway_connections", tenant="", state="authenticated") == 1
            assert metric(m, "tether_gateway_deliveries_total", tenant="acme") == 1
            assert metric(m, "tether_gateway_deliveries_total", tenant="globex") == 1
            assert m.count("# TYPE tether_gateway_connections ") == 1
            await sdk.disconnect()
            sdk = None
        finally:
            if sdk is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sdk.disconnect(), 5)
            for p in peers:
                await p.aclose()

    node.run_then_stop(go())


def test_namespaces_are_per_tenant():
    """A namespace one tenant defines is unknown to another: the stock SDK subscribes to room:x on A, and on
    B its subscription goes to unsubscribed with Centrifugo's 102 "unknown channel" (not retried; the client
    stays connected); B's API publish to room:x is error 102 too."""
    with_room = tenant_config("a-secret", "a-key")
    with_room["channel"]["namespaces"].append({"name": "room", "allow_subscribe_for_client": True})
    without = tenant_config("b-secret", "b-key")  # BASE_CONFIG's namespaces: no "room"
    node = Node({"a": with_room, "b": without})

    async def go():
        clients = []

        async def connected(tenant: str, secret: str) -> tuple[Client, Recorder]:
            rec = Recorder(tenant)
            c = Client(node.ws_url(tenant), token=make_token("alice", secret), events=ClientEvents(rec),
                       proxy=None, timeout=5.0)
            clients.append(c)
            await asyncio.wait_for(c.connect(), 10)
            await rec.wait("connected")
            return c, rec

        try:
            ca, ra = await connected("a", "a-secret")
            await subscribed(ca, ra, "room:x")
            cb, rb = await connected("b", "b-secret")
            sub = cb.new_subscription("room:x", events=SubEvents(rb, "room:x"))
            await asyncio.wait_for(sub.subscribe(), 5)
            ctx = (await rb.wait("unsubscribed", "room:x"))[0]
            assert (ctx.code, ctx.reason) == (102, "unknown channel"), rb.dump()
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            assert rb.of("subscribed", "room:x") == [] and cb.state == ClientState.CONNECTED, rb.dump()

            r = node.post("b", "publish", {"channel": "room:x", "data": {"n": 1}}, "b-key")
            assert r.status_code == 200 and r.json().get("error", {}).get("code") == 102, r.text
            r = node.post("a", "publish", {"channel": "room:x", "data": {"n": 2}}, "a-key")
            assert r.status_code == 200 and "result" in r.json(), r.text
            await ra.wait("publication", "room:x")
            assert [p.pub.data for p in ra.of("publication", "room:x")] == [{"n": 2}]
            # Not temporary: the SDK reported no subscribe error to retry after.
            assert rb.of("sub_error", "room:x") == [] and sub.state == SubscriptionState.UNSUBSCRIBED, rb.dump()
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.disconnect(), 5)

    node.run_then_stop(go())


# --- limits -----------------------------------------------------------------------------------------------


def test_per_tenant_limits_refuse_with_the_right_codes_and_count_them():
    tight = tenant_config(
        "tight-secret", "tight-key",
        connection_limit=2, channel_limit=4, command_rate_limit=10, command_rate_burst=20,
        command_rate_max_pause=0,  # exact answers at once (the pause is tested below)
    )
    tight["websocket"] = {"message_size_limit": 1024}
    roomy = tenant_config("roomy-secret", "roomy-key")  # message_size_limit 65536 (the default)
    node = Node({"tight": tight, "roomy": roomy})

    async def go():
        async with Peers(node) as peers:
            a, b, c = [await peers.open("tight") for _ in range(3)]
            await a.connect(token=make_token("u1", "tight-secret"))
            await b.connect(token=make_token("u2", "tight-secret"))
            # client.connection_limit 2: the third connect is closed 3504 (the SDKs do not reconnect).
            await c.ws.send(json.dumps({"id": 1, "connect": {"token": make_token("u3", "tight-secret")}}))
            assert await c.closed_with() == (3504, "connection limit")
            # ...and a place frees when one goes.
            await b.aclose()
            d = await peers.open("tight")
            await until(lambda: metric(node.metrics(), "tether_gateway_connections", tenant="tight",
                                       state="authenticated") == 1, what="b gone")
            await d.connect(token=make_token("u4", "tight-secret"))

            # client.command_rate_limit 10/s, burst 20: 25 commands at once get 20 answers (the connect
            # took one token) and then 111; the connection stays up.
            chans = [unique("chat:r") for _ in range(25)]
            for i, ch in enumerate(chans):  # one frame each: 25 in one would pass the 1,024-byte limit
                await a.ws.send(json.dumps({"id": 100 + i, "presence_stats": {"channel": ch}}))
            await until(lambda: all(100 + i in a.replies for i in range(25)), what="25 answers")
            codes = [a.replies[100 + i].get("error", {}).get("code") for i in range(25)]
            # (Handled normally: 103, presence_stats needs a subscription in namespace chat.)
            assert codes[:19] == [103] * 19, codes  # connect took one token
            assert codes[19:] == [111] * 6, codes
            assert not a.closed.is_set()
            # A client that keeps going until it owes a whole burst is closed 3013 (SDKs reconnect).
            for i in range(40):
                with contextlib.suppress(ConnectionClosed):
                    await a.ws.send(json.dumps({"id": 200 + i, "presence_stats": {"channel": "chat:x"}}))
            assert await a.closed_with() == (3013, "too many requests")

            # client.channel_limit 4 -> 106 on the fifth.
            for i in range(4):
                assert "subscribe" in await d.call("subscribe", {"channel": unique("chat:l")})
            r = await d.call("subscribe", {"channel": unique("chat:l")})
            assert r["error"]["code"] == 106, r

            # websocket.message_size_limit per tenant: 2,000 bytes is too big for tight (1009), fine for roomy.
            big = json.dumps({"id": 50, "publish": {"channel": "chat:big", "data": {"pad": "x" * 1900}}})
            assert len(big) > 1024
            await d.ws.send(big)
            assert await d.closed_with() == (1009, "message too big")
            r_ = await peers.open("roomy")
            await r_.connect(token=make_token("v", "roomy-secret"))
            await r_.call("subscribe", {"channel": "chat:big"})
            await r_.ws.send(big.replace('"id": 50', '"id": 51'))
            await until(lambda: 51 in r_.replies, what="roomy's answer to 2,000 bytes")
            assert r_.replies[51] == {"id": 51, "publish": {}}, r_.replies[51]

            m = node.metrics()
            for reason in ("connection_limit", "command_rate", "command_rate_close", "channel_limit", "message_size"):
                assert metric(m, "tether_gateway_rejections_total", tenant="tight", reason=reason) >= 1, reason
                assert metric(m, "tether_gateway_rejections_total", tenant="roomy", reason=reason) == 0, reason
            assert "tether_gateway_rejections_total{" in m

    node.run_then_stop(go())


def test_a_command_over_the_rate_pauses_reading_until_the_bucket_refills():
    """client.command_rate_max_pause (Tether's own, default 1s): after a 111 the gateway reads nothing more
    from that connection until its bucket holds a command again, so a command sent right after a 111 waits
    in TCP and is then served, not refused. With the pause off (0) the same command is refused at once."""
    # pong_timeout 4s: a pause is kept under a quarter of it, so the default 1 s cap applies.
    limits = dict(channel_limit=4, command_rate_limit=5, command_rate_burst=10, ping_interval="10s", pong_timeout="4s")
    paced = tenant_config("paced-secret", "paced-key", **limits)
    unpaced = tenant_config("unpaced-secret", "unpaced-key", command_rate_max_pause=0, **limits)
    node = Node({"paced": paced, "unpaced": unpaced})

    async def probe(tenant: str, secret: str) -> tuple[int, float, list]:
        p = await Peer(node.ws_url(tenant)).open()
        try:
            await p.connect(token=make_token("u", secret))  # one token of 10
            for i in range(12):  # one frame each; the bucket runs dry and the last ones get 111
                await p.ws.send(json.dumps({"id": 100 + i, "presence_stats": {"channel": "chat:p"}}))
            await until(lambda: all(100 + i in p.replies for i in range(12)), what="12 answers")
            codes = [p.replies[100 + i].get("error", {}).get("code") for i in range(12)]
            assert 111 in codes, codes
            # The probe must follow a 111. When the burst's last command was read after a pause had ended (the
            # commands came in two reads), the refilled token served it and no pause is in force: one more
            # command is then refused and starts one.
            n = 12
            while codes[-1] != 111:
                assert n < 20, codes
                await p.ws.send(json.dumps({"id": 100 + n, "presence_stats": {"channel": "chat:p"}}))
                await until(lambda: 100 + n in p.replies, what=f"answer {n}")
                codes.append(p.replies[100 + n].get("error", {}).get("code"))
                n += 1
            sent = time.monotonic()
            await p.ws.send(json.dumps({"id": 200, "presence_stats": {"channel": "chat:p"}}))
            await until(lambda: 200 in p.replies, what="the probe's answer")
            assert not p.closed.is_set()
            return p.replies[200].get("error", {}).get("code"), time.monotonic() - sent, codes
        finally:
            await p.aclose()

    async def go():
        code, waited, codes = await probe("paced", "paced-secret")
        paused = metric(node.metrics(), "tether_recv_paused_total", shard="total")
        # Served (103: presence_stats needs a subscription in namespace chat), after the bucket refilled.
        assert code == 103 and waited >= 0.1, (code, waited, codes, paused)
        assert paused >= 1
        code, waited, codes = await probe("unpaced", "unpaced-secret")
        assert code == 111, (code, waited, codes)

    node.run_then_stop(go())


def test_publication_rate_limit_bounds_a_tenant_across_its_connections():
    """client.publication_rate_limit (Tether's own): client publications per second over all of a tenant's
    connections. Four connections, each well under its own command rate, publish 60 times at once: the
    tenant's first 20 a second are published, the rest get 111 (the connections stay up), counted as
    publication_rate; another tenant with no such limit publishes all 60."""
    capped = tenant_config("capped-secret", "capped-key", command_rate_limit=1000, publication_rate_limit=20)
    free = tenant_config("free-secret", "free-key", command_rate_limit=1000)
    node = Node({"capped": capped, "free": free})

    async def burst(tenant: str, secret: str) -> tuple[int, int, list]:
        peers = [await Peer(node.ws_url(tenant)).open() for _ in range(4)]
        try:
            for i, p in enumerate(peers):
                await p.connect(token=make_token(f"u{i}", secret))
                assert "subscribe" in await p.call("subscribe", {"channel": "chat:rate"})
            for i, p in enumerate(peers):
                for j in range(15):
                    await p.ws.send(json.dumps({"id": 1000 + j, "publish": {"channel": "chat:rate", "data": {"n": j}}}))
            await until(lambda: all(1000 + j in p.replies for p in peers for j in range(15)), what="60 answers")
            replies = [p.replies[1000 + j] for p in peers for j in range(15)]
            ok = sum(1 for r in replies if "publish" in r)
            refused = sum(1 for r in replies if r.get("error", {}).get("code") == 111)
            assert all(not p.closed.is_set() for p in peers), "a 111 closed a connection"
            return ok, refused, replies
        finally:
            for p in peers:
                await p.aclose()

    async def go():
        ok, refused, replies = await burst("capped", "capped-secret")
        assert ok + refused == 60, replies
        # 20 in one second; up to 40 if the 60 straddled a second boundary on a slow machine.
        assert 20 <= ok <= 40 and refused >= 20, (ok, refused)
        m = node.metrics()
        assert metric(m, "tether_gateway_rejections_total", tenant="capped", reason="publication_rate") == refused
        assert metric(m, "tether_gateway_rejections_total", tenant="capped", reason="command_rate") == 0
        ok, refused, replies = await burst("free", "free-secret")
        assert (ok, refused) == (60, 0), replies
        assert metric(node.metrics(), "tether_gateway_rejections_total", tenant="free", reason="publication_rate") == 0

    node.run_then_stop(go())


class Peers:
    """The raw peers one test opens on a node's tenant routes, all closed at its end (`async with`)."""

    def __init__(self, node: "Node"):
        self.node = node
        self.all: list[Peer] = []

    async def open(self, tenant: str) -> Peer:
        p = await Peer(self.node.ws_url(tenant)).open()
        self.all.append(p)
        return p

    async def __aenter__(self) -> "Peers":
        return self

    async def __aexit__(self, *exc):
        for p in self.all:
            await p.aclose()


def test_user_connection_limit_is_per_tenant():
    """client.user_connection_limit 1 on one tenant: the same user's second connection there is closed 3504
    and counted as user_connection_limit; another user of that tenant, and the same user on a tenant
    without the limit, connect as usual; a place frees when the user's connection goes."""
    one = tenant_config("one-secret", "one-key", user_connection_limit=1)
    many = tenant_config("many-secret", "many-key")  # user_connection_limit 0 (none)
    node = Node({"one": one, "many": many})

    async def go():
        async with Peers(node) as peers:
            opened = peers.open

            first = await opened("one")
            await first.connect(token=make_token("dave", "one-secret"))
            second = await opened("one")
            await second.ws.send(json.dumps({"id": 1, "connect": {"token": make_token("dave", "one-secret")}}))
            assert await second.closed_with() == (3504, "connection limit")
            assert 1 not in second.replies, second.replies
            await (await opened("one")).connect(token=make_token("erin", "one-secret"))  # another user
            # The same user twice on the tenant without the limit.
            for _ in range(2):
                await (await opened("many")).connect(token=make_token("dave", "many-secret"))
            assert not first.closed.is_set()

            m = node.metrics()
            assert metric(m, "tether_gateway_rejections_total", tenant="one", reason="user_connection_limit") == 1
            assert metric(m, "tether_gateway_rejections_total", tenant="one", reason="connection_limit") == 0
            assert metric(m, "tether_gateway_rejections_total", tenant="many", reason="user_connection_limit") == 0
            assert metric(m, "tether_gateway_connections", tenant="one", state="authenticated") == 2
            assert metric(m, "tether_gateway_connections", tenant="many", state="authenticated") == 2

            # When dave's connection goes, dave may connect to "one" again.
            await first.aclose()
            await until(lambda: metric(node.metrics(), "tether_gateway_connections", tenant="one",
                                       state="authenticated") == 1, what="dave's first connection gone")
            await (await opened("one")).connect(token=make_token("dave", "one-secret"))
            assert metric(node.metrics(), "tether_gateway_rejections_total", tenant="one",
                          reason="user_connection_limit") == 1

    node.run_then_stop(go())


def test_connection_rate_limit_answers_503_before_the_upgrade_and_origins_403():
    rated = tenant_config("s", "k", connection_rate_limit=3, allowed_origins=["https://app.example"])
    other = tenant_config("s", "k")
    node = Node({"rated": rated, "other": other})

    async def go():
        opened, refused = [], []
        try:
            # Start at a fresh second so that the window holds all ten attempts.
            await asyncio.sleep(1.0 - (time.time() % 1.0) + 0.02)
            for _ in range(10):
                try:
                    opened.append(await ws_connect(node.ws_url("rated"), proxy=None, open_timeout=5))
                except InvalidStatus as e:
                    refused.append(e.response.status_code)
            assert 1 <= len(opened) <= 6 and refused and set(refused) == {503}, (len(opened), refused)
            # Another tenant is not limited by it.
            others = [await ws_connect(node.ws_url("other"), proxy=None, open_timeout=5) for _ in range(10)]
            opened += others
            # A second later the window has room again.
            await asyncio.sleep(1.1)
            opened.append(await ws_connect(node.ws_url("rated"), proxy=None, open_timeout=5))
            m = node.metrics()
            assert metric(m, "tether_gateway_rejections_total", tenant="rated", reason="connection_rate") == len(refused)
            assert metric(m, "tether_gateway_rejections_total", tenant="other", reason="connection_rate") == 0

            # client.allowed_origins per tenant: an Origin outside the list is 403 before the upgrade.
            with pytest.raises(InvalidStatus) as e:
                await ws_connect(node.ws_url("rated"), proxy=None, origin="https://evil.example", open_timeout=5)
            assert e.value.response.status_code == 403
            m = node.metrics()
            assert metric(m, "tether_gateway_rejections_total", tenant="rated", reason="origin") == 1
            assert metric(m, "tether_gateway_rejections_total", tenant="other", reason="origin") == 0
            await asyncio.sleep(1.1)
            ok = await ws_connect(node.ws_url("rated"), proxy=None, origin="https://app.example", open_timeout=5)
            opened.append(ok)
            # An allowed Origin is not counted.
            assert metric(node.metrics(), "tether_gateway_rejections_total", tenant="rated", reason="origin") == 1
        finally:
            for ws in opened:
                with contextlib.suppress(Exception):
                    await ws.close()

    node.run_then_stop(go())


# --- reload -----------------------------------------------------------------------------------------------


def test_reload_adds_changes_and_removes_tenants_without_touching_the_others():
    a = tenant_config("a-secret", "a-key")
    b = tenant_config("b-secret", "b-key")
    node = Node({"a": a, "b": b}, tenants_dir=True)

    async def go():
        async with Peers(node) as peers:
            # Admin endpoint: key required, POST only.
            assert node.reload(key=None).status_code == 401
            assert node.reload(key="wrong").status_code == 401
            assert node.reload(method="GET").status_code == 405
            r = node.reload()
            assert r.status_code == 200 and sorted(r.json()["unchanged"]) == ["a", "b"], r.text

            # A subscriber of a that must see every publication through all of this.
            watcher = await peers.open("a")
            await watcher.connect(token=make_token("w", "a-secret"))
            ch = unique("chat:steady-")
            await watcher.call("subscribe", {"channel": ch})
            sent = []

            def publish(tag):
                sent.append(tag)
                r = node.post("a", "publish", {"channel": ch, "data": {"n": tag}}, "a-key")
                assert r.status_code == 200 and "result" in r.json(), r.text
            publish(0)

            bpeer = await peers.open("b")
            await bpeer.connect(token=make_token("x", "b-secret"))

            # Add tenant c by dropping its file in the directory and sending SIGHUP.
            with pytest.raises(InvalidStatus):
                await ws_connect(node.ws_url("c"), proxy=None, open_timeout=5)
            write(node.tdir / "c.json", tenant_config("c-secret", "c-key"))
            node.proc.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while True:
                try:
                    cpeer = await peers.open("c")
                    break
                except InvalidStatus:
                    assert time.monotonic() < deadline, "tenant c never appeared after SIGHUP"
                    await asyncio.sleep(0.1)
            await cpeer.connect(token=make_token("y", "c-secret"))
            publish(1)

            # Change a: a new token secret and a channel limit of 1. Its connections stay (with their
            # subscriptions; history offsets continue) and follow the new config at their next command;
            # new connections need the new secret.
            write(node.tdir / "a.json", tenant_config("a-secret-2", "a-key", channel_limit=1))
            r = node.reload()
            assert r.status_code == 200, r.text
            assert r.json()["changed"] == ["a"] and r.json()["added"] == [] and r.json()["removed"] == [], r.text
            publish(2)
            r = await watcher.call("subscribe", {"channel": unique("chat:second-")})
            assert r.get("error", {}).get("code") == 106, r
            old = await peers.open("a")
            await old.ws.send(json.dumps({"id": 1, "connect": {"token": make_token("w2", "a-secret")}}))
            assert await old.closed_with() == (3500, "invalid token")
            new = await peers.open("a")
            await new.connect(token=make_token("w3", "a-secret-2"))

            # A bad file: rejected with one error line, the config in force stays (b keeps working).
            write(node.tdir / "b.json", "{ this is not json")
            r = node.reload()
            assert r.status_code == 422 and "b" in r.json()["failed"], r.text
            # The line reaches the test through tetherd's stderr and a reader thread: wait for it (bounded).
            await until(
                lambda: any("reload: config rejected" in line and "tenant=b" in line for line in node.proc.log),
                what="the reload's error line",
            )
            assert not bpeer.closed.is_set()
            assert "subscribe" in await bpeer.call("subscribe", {"channel": "chat:b"})
            b2 = await peers.open("b")
            await b2.connect(token=make_token("x2", "b-secret"))
            publish(3)

            # Remove b: its clients are closed 3503 (tenant removed), its routes are gone.
            (node.tdir / "b.json").unlink()
            r = node.reload()
            assert r.status_code == 200 and r.json()["removed"] == ["b"], r.text
            assert await bpeer.closed_with() == (3503, "tenant removed")
            assert await b2.closed_with() == (3503, "tenant removed")
            assert node.post("b", "publish", {"channel": "x", "data": {}}, "b-key").status_code == 404
            publish(4)

            # Through it all the watcher of a stayed connected and got every publication, in order.
            await until(lambda: len(watcher.publications(ch)) == len(sent), what="every publication")
            assert watcher.publications(ch) == [{"n": n} for n in sent]
            assert not watcher.closed.is_set() and not cpeer.closed.is_set() and not new.closed.is_set()
            h = node.post("a", "history", {"channel": ch, "limit": 10}, "a-key").json()["result"]
            assert h["offset"] == len(sent), h

    node.run_then_stop(go())


def reload_lines(node: Node, since: int) -> list[str]:
    """tetherd's reload summary lines (`reload added=[..] changed=[..] ...`) logged after line `since`."""
    return [line for line in node.proc.log[since:] if re.search(r"\breload added=", line)]


async def sighup(node: Node) -> str:
    """Sends tetherd SIGHUP and waits (bounded) for that reload's summary line, which it logs after the
    reload's error lines and after the new tenant table is in force; returns the summary line."""
    since = len(node.proc.log)
    node.proc.proc.send_signal(signal.SIGHUP)
    await until(lambda: reload_lines(node, since), what="the SIGHUP reload's summary line")
    lines = reload_lines(node, since)
    assert len(lines) == 1, lines
    return lines[0]


def test_sighup_rereads_the_files_of_tenant_arguments():
    """--tenant NAME=FILE (not --tenants-dir): SIGHUP reads FILE again. A new token secret is in force for
    new connections at once (the old secret is 3500), and a client of another tenant connected before the
    reload stays connected and gets a publication made after it."""
    node = Node({"a": tenant_config("a-secret", "a-key"), "b": tenant_config("b-secret", "b-key")})

    async def go():
        async with Peers(node) as peers:
            opened = peers.open

            watcher = await opened("b")
            await watcher.connect(token=make_token("w", "b-secret"))
            ch = unique("chat:hup-")
            await watcher.subscribe(ch)
            before = await opened("a")
            await before.connect(token=make_token("x", "a-secret"))

            write(node.dir / "a.json", tenant_config("a-secret-2", "a-key"))
            summary = await sighup(node)
            assert 'changed=["a"]' in summary and "failed=0" in summary and "unchanged=1" in summary, summary

            old = await opened("a")
            await old.ws.send(json.dumps({"id": 1, "connect": {"token": make_token("y", "a-secret")}}))
            assert await old.closed_with() == (3500, "invalid token")
            await (await opened("a")).connect(token=make_token("z", "a-secret-2"))

            r = node.post("b", "publish", {"channel": ch, "data": {"after": "reload"}}, "b-key")
            assert r.status_code == 200 and "result" in r.json(), r.text
            await until(lambda: watcher.publications(ch), what="b's publication after the reload")
            assert watcher.publications(ch) == [{"after": "reload"}]
            assert not watcher.closed.is_set() and not before.closed.is_set()
            assert "subscribe" in await watcher.call("subscribe", {"channel": unique("chat:more-")})

    node.run_then_stop(go())


def test_a_bad_tenant_file_through_sighup_is_one_error_line_and_the_old_config_stays():
    node = Node({"a": tenant_config("a-secret", "a-key")})

    async def go():
        async with Peers(node) as peers:
            opened = peers.open

            before = await opened("a")
            await before.connect(token=make_token("x", "a-secret"))
            write(node.dir / "a.json", "{ this is not json")
            since = len(node.proc.log)
            summary = await sighup(node)
            assert "failed=1" in summary and "changed=[]" in summary, summary
            # The summary comes after every error line of its reload: exactly one, naming the tenant.
            errors = [line for line in node.proc.log[since:] if "reload: config rejected" in line]
            assert len(errors) == 1 and "tenant=a" in errors[0], errors

            # The old config is in force: the old secret connects, the connection from before works.
            await (await opened("a")).connect(token=make_token("y", "a-secret"))
            assert not before.closed.is_set()
            assert "subscribe" in await before.call("subscribe", {"channel": "chat:still"})
            r = node.post("a", "publish", {"channel": "chat:still", "data": {"n": 1}}, "a-key")
            assert r.status_code == 200 and "result" in r.json(), r.text
            await until(lambda: before.publications("chat:still"), what="the publication")

    node.run_then_stop(go())


def test_bad_tenant_arguments_are_one_error_line_and_exit_2():
    d = pathlib.Path(tempfile.mkdtemp(prefix="tetherd-bad-tenant-"))
    good = write(d / "good.json", tenant_config("s", "k"))
    bad = write(d / "bad.json", {"client": {"channel_limit": "many"}})
    for args, needle in [
        (["--tenant", f"a/b={good}"], "tenant name"),
        (["--tenant", f"x={bad}"], "channel_limit"),
        (["--tenant", f"x={good}", "--tenant", f"x={good}"], "named twice"),
        (["--tenant", f"x={d / 'missing.json'}"], "missing.json"),
    ]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        r = subprocess.run([str(tetherd_bin()), "--listen", "127.0.0.1:0", *args], capture_output=True, text=True,
                           timeout=20, env=env, stdin=subprocess.DEVNULL)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.startswith("tetherd:")]
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
