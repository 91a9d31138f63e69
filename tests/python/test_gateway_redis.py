"""Past one machine: three tetherd nodes on one real redis-server (Debian's package), with the stock clients
(centrifuge-python for users, `cent` for the backend). A client on any node sees every publication made
through any node, the same presence and history; one that loses its node recovers on another; a node killed
with SIGKILL leaves no presence behind past the presence TTL; a Redis restart is seen as API errors (never a
silent loss), the nodes reconnect by themselves, and a client whose position is gone gets
`recovered: false` with the new epoch. nginx (least_conn) in front of the three: clients survive a node
restart. Every wait is bounded."""

import asyncio
import copy
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from cent import (
    BroadcastRequest,
    CentApiResponseError,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
)
from centrifuge import ClientState

from gateway_util import BASE_CONFIG, Gateway, Harness, call_api, run_bounded, subscribed, unique, until
from redis_util import RedisCluster, RedisServer, free_port

LIMIT = 90
PRESENCE_TTL = 3


def node_config(redis, prefix: str) -> dict:
    cfg = copy.deepcopy(BASE_CONFIG)
    redis_cfg = {"prefix": prefix, "presence_ttl": f"{PRESENCE_TTL}s", "presence_update_interval": "1s"}
    if isinstance(redis, RedisCluster):
        redis_cfg["cluster_address"] = redis.addresses
    else:
        redis_cfg["address"] = f"redis://{redis.address}"
    cfg["engine"] = {"type": "redis", "redis": redis_cfg}
    return cfg


class Cluster:
    """Three nodes on one Redis (one key prefix per test)."""

    def __init__(self, redis: RedisServer, n: int = 3, ports: list = None):
        self.redis = redis
        self.config = node_config(redis, unique("it"))
        self.nodes = []
        for i in range(n):
            listen = f"127.0.0.1:{ports[i]}" if ports else "127.0.0.1:0"
            self.nodes.append(Gateway(self.config, listen=listen))

    def restart(self, i: int):
        """SIGKILL node i and start it again on the same address. The dead process's listening socket is
        released when the kernel tears its io_uring down, a moment after the process is gone: until then
        the bind fails (EADDRINUSE), and the start is retried (bounded), as a supervisor would."""
        addr = self.nodes[i].addr
        self.nodes[i].stop()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.nodes[i] = Gateway(self.config, listen=addr)
                return
            except RuntimeError as e:
                if "Address already in use" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- node {i} ---\n{n.log_tail(25)}" for i, n in enumerate(self.nodes))

    def run(self, coro, limit: float = LIMIT):
        try:
            return run_bounded(coro, limit)
        except BaseException:
            print(self.logs())
            raise

    def stop(self):
        for n in self.nodes:
            n.stop()


@pytest.fixture(scope="module")
def redis():
    r = RedisServer()
    yield r
    r.close()


@pytest.fixture(scope="module")
def redis_cluster():
    r = RedisCluster()
    yield r
    r.close()


@pytest.fixture(params=["redis", "redis-cluster"])
def cluster(request):
    """Three nodes on one Redis, and (the same tests again) on a Redis Cluster of three masters."""
    c = Cluster(request.getfixturevalue("redis" if request.param == "redis" else "redis_cluster"))
    yield c
    c.stop()


def offsets(rec, ch):
    return [p.pub.offset for p in rec.of("publication", ch)]


def test_publications_presence_history_and_join_leave_cross_nodes(cluster):
    a, b, c = cluster.nodes

    async def go():
        async with Harness(a) as ha, Harness(b) as hb:
            ch = unique("chat:x-")
            alice, rec_a = await ha.connected("alice")
            bob, rec_b = await hb.connected("bob")
            sub_a, ctx = await subscribed(alice, rec_a, ch)
            epoch = ctx.stream_position.epoch
            sub_b, ctx_b = await subscribed(bob, rec_b, ch)
            assert ctx_b.stream_position.epoch == epoch != ""
            # bob's join (made on B) reaches alice on A.
            await rec_a.wait("join", ch, pred=lambda j: j.info.user == "bob")

            # Through node C's API: both get it, with one offset sequence.
            res = await call_api(c.api(), PublishRequest(channel=ch, data={"n": 1}))
            assert (res.offset, res.epoch) == (1, epoch)
            # A client publish on node B.
            await bob.publish(ch, {"n": 2})
            for rec in (rec_a, rec_b):
                pubs = await rec.wait("publication", ch, count=2)
                assert [(p.pub.offset, p.pub.data) for p in pubs] == [(1, {"n": 1}), (2, {"n": 2})]
            assert rec_a.of("publication", ch)[1].pub.info.user == "bob"

            # Presence and presence_stats agree from every node (client on A, API on B and C).
            want = {"alice", "bob"}
            got = await alice.presence(ch)
            assert {i.user for i in got.clients.values()} == want
            for node in (b, c):
                p = await call_api(node.api(), PresenceRequest(channel=ch))
                assert {i.user for i in p.presence.values()} == want
                s = await call_api(node.api(), PresenceStatsRequest(channel=ch))
                assert (s.num_clients, s.num_users) == (2, 2)
            # History from node C's API and from the client on A: the same two, in order.
            h = await call_api(c.api(), HistoryRequest(channel=ch, limit=-1))
            assert [(p.offset, p.data) for p in h.publications] == [(1, {"n": 1}), (2, {"n": 2})]
            hist = await alice.history(ch, limit=-1)
            assert [p.offset for p in hist.publications] == [1, 2]

            # A broadcast through node A to two channels, one of which only bob (on B) is in.
            other = unique("chat:y-")
            await subscribed(bob, rec_b, other)
            await call_api(a.api(), BroadcastRequest(channels=[ch, other], data={"n": 3}))
            await rec_b.wait("publication", other)
            await rec_a.wait("publication", ch, count=3)

            # bob leaves: alice on A sees the leave, presence shrinks everywhere.
            await sub_b.unsubscribe()
            await rec_a.wait("leave", ch, pred=lambda j: j.info.user == "bob")

            async def users():
                p = await call_api(c.api(), PresenceRequest(channel=ch))
                return sorted(i.user for i in p.presence.values())

            await until(users, ["alice"], what="presence after bob left")
            assert offsets(rec_a, ch) == [1, 2, 3], "every publication once, in order"

            if isinstance(cluster.redis, RedisCluster):
                # Many channels: their keys spread over the three masters' slots, and each still works. (40
                # random names leave a master with none about once in 3 million runs; 12 did 2% of the time.)
                names = [unique(f"chat:spread{i}-") for i in range(40)]
                for name in names:
                    await call_api(c.api(), PublishRequest(channel=name, data={"x": 1}))
                counts = cluster.redis.slots_in_use()
                assert all(n > 0 for n in counts), f"keys per master: {counts}"
                for name in names[:3]:
                    await subscribed(alice, rec_a, name)
                    await call_api(b.api(), PublishRequest(channel=name, data={"x": 2}))
                    pubs = await rec_a.wait("publication", name)
                    assert pubs[0].pub.offset == 2

    cluster.run(go())


def test_client_that_loses_its_node_recovers_on_another_in_order(cluster):
    a, b, c = cluster.nodes

    async def go():
        async with Harness(a) as h:
            ch = unique("chat:r-")
            relay = await h.relay(a.addr)
            alice, rec = await h.connected("alice", url=relay.ws_url, min_reconnect_delay=0.5, max_reconnect_delay=1.0)
            await subscribed(alice, rec, ch)
            api = c.api()
            for n in range(1, 4):
                await call_api(api, PublishRequest(channel=ch, data={"n": n}))
            await rec.wait("publication", ch, count=3)

            # Node A dies (SIGKILL): alice's attempts through the relay fail while it still points at A.
            a.proc.proc.send_signal(signal.SIGKILL)
            await rec.wait("connecting", pred=lambda x: x.code != 0, timeout=10)
            # Published while alice is away.
            for n in range(4, 9):
                await call_api(api, PublishRequest(channel=ch, data={"n": n}))
            # Her next connection lands on node B.
            relay.target = b.addr
            resubscribed = await rec.wait("subscribed", ch, count=2, timeout=20)
            assert resubscribed[-1].was_recovering and resubscribed[-1].recovered, resubscribed[-1]
            await call_api(api, PublishRequest(channel=ch, data={"n": 9}))
            pubs = await rec.wait("publication", ch, count=9)
            assert [p.pub.data["n"] for p in pubs] == list(range(1, 10)), "every publication once, in order"
            assert offsets(rec, ch) == list(range(1, 10))
            assert alice.state == ClientState.CONNECTED

    cluster.run(go())


def test_killed_node_leaves_no_presence_past_the_ttl_and_others_do_not_stall(cluster):
    a, b, c = cluster.nodes

    async def go():
        async with Harness(a) as ha, Harness(b) as hb:
            ch = unique("chat:p-")
            carol, rec_c = await ha.connected("carol")
            dave, rec_d = await hb.connected("dave")
            await subscribed(carol, rec_c, ch)
            await subscribed(dave, rec_d, ch)

            async def users():
                p = await call_api(b.api(), PresenceRequest(channel=ch))
                return sorted(i.user for i in p.presence.values())

            await until(users, ["carol", "dave"], what="presence before the kill")
            a.proc.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            # The others keep answering meanwhile (publish and deliver through B and C).
            res = await call_api(c.api(), PublishRequest(channel=ch, data={"after": "kill"}))
            assert res.offset >= 1
            await rec_d.wait("publication", ch)
            # carol's entry expires: nobody refreshes it any more.
            await until(users, ["dave"], timeout=PRESENCE_TTL + 5, what="presence after node A was killed")
            assert time.monotonic() - killed_at <= PRESENCE_TTL + 5
            # dave's entry is refreshed by B all along: still there well past the TTL.
            await asyncio.sleep(PRESENCE_TTL + 1)
            assert await users() == ["dave"]

    cluster.run(go())


@pytest.mark.parametrize("backend", ["redis", "redis_cluster"])
def test_redis_restart_is_an_api_error_then_nodes_reconnect_and_positions_are_lost(backend, request):
    redis = request.getfixturevalue(backend)
    cl = Cluster(redis, n=2)
    a, b = cl.nodes

    async def go():
        async with Harness(a) as h:
            ch = unique("chat:z-")
            alice, rec = await h.connected("alice")
            _, ctx = await subscribed(alice, rec, ch)
            old_epoch = ctx.stream_position.epoch
            api = b.api()
            await call_api(api, PublishRequest(channel=ch, data={"n": 1}))
            await rec.wait("publication", ch)

            redis.stop()
            # While Redis is down a publish fails with a clear error: never a silent loss.
            with pytest.raises(CentApiResponseError) as e:
                await call_api(api, PublishRequest(channel=ch, data={"n": "lost"}))
            assert e.value.code == 100, e.value
            redis.start()  # empty: no persistence

            # The nodes reconnect by themselves (backoff) and resubscribe: a publish through B reaches alice
            # on A again.
            deadline = time.monotonic() + 20
            while True:
                try:
                    res = await call_api(api, PublishRequest(channel=ch, data={"n": 2}))
                    break
                except CentApiResponseError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert res.epoch != old_epoch and res.offset == 1, "the stream began again with a new epoch"
            # Node A resubscribed by itself: live publications reach alice again (the first ones may come
            # before A noticed Redis was back: PUB/SUB is at most once across an outage).
            deadline = time.monotonic() + 15
            n = 2
            while not [p for p in rec.of("publication", ch) if p.pub.data.get("n", 0) >= 2]:
                assert time.monotonic() < deadline, f"no live publication after the restart:\n{rec.dump()}"
                n += 1
                res = await call_api(api, PublishRequest(channel=ch, data={"n": n}))
                await asyncio.sleep(0.3)

            # alice reconnects: her position (epoch) is gone, so recovered is false and she gets the new epoch.
            await alice.disconnect()
            await alice.connect()
            subs = await rec.wait("subscribed", ch, count=2, timeout=10)
            assert subs[-1].was_recovering and not subs[-1].recovered, subs[-1]
            assert subs[-1].stream_position.epoch == res.epoch

    try:
        cl.run(go())
    finally:
        cl.stop()
        if not redis.ping():
            redis.start()


def nginx_bin() -> str:
    path = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.isfile(path):
        raise RuntimeError("nginx not found: apt-get install -y nginx-light (or set NGINX_BIN)")
    return path


class Nginx:
    """nginx in the foreground with `least_conn` over `upstreams`, on a free loopback port."""

    def __init__(self, upstreams: list):
        self.dir = tempfile.mkdtemp(prefix="tether-nginx-")
        d = self.dir
        self.addr = f"127.0.0.1:{free_port()}"
        servers = "\n".join(f"        server {u} max_fails=0;" for u in upstreams)
        version = subprocess.run([nginx_bin(), "-V"], capture_output=True, text=True).stderr
        temp = f"client_body_temp_path {d}/cb; proxy_temp_path {d}/proxy;"
        for module in ("fastcgi", "uwsgi", "scgi"):
            if f"--without-http_{module}_module" not in version:
                temp += f" {module}_temp_path {d}/{module};"
        conf = f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    {temp}
    upstream tetherd {{
        least_conn;
{servers}
    }}
    server {{
        listen {self.addr};
        location / {{
            proxy_pass http://tetherd;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(
            [nginx_bin(), "-p", d + "/", "-c", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        host, port = self.addr.rsplit(":", 1)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {self.error_log()}")
                time.sleep(0.05)

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.parametrize("backend", ["redis", "redis_cluster"])
def test_clients_through_nginx_least_conn_survive_a_node_restart(backend, request):
    redis = request.getfixturevalue(backend)
    ports = [free_port() for _ in range(3)]
    cl = Cluster(redis, ports=ports)
    nginx = Nginx([n.addr for n in cl.nodes])

    async def go():
        async with Harness(cl.nodes[0]) as h:
            url = f"ws://{nginx.addr}/connection/websocket"  # every client connects through nginx
            ch = unique("chat:n-")
            clients = []
            for i in range(6):
                c, rec = await h.connected(f"u{i}", url=url, min_reconnect_delay=0.3, max_reconnect_delay=1.0)
                await subscribed(c, rec, ch)
                clients.append((c, rec))
            # least_conn spread them over the three nodes.
            async def spread():
                counts = []
                for n in cl.nodes:
                    info = await call_api(n.api(), InfoRequest())
                    counts.append(info.nodes[0].num_clients)
                return counts

            counts = await spread()
            assert sum(counts) == 6 and all(n >= 1 for n in counts), counts
            api = cl.nodes[2].api()
            await call_api(api, PublishRequest(channel=ch, data={"n": 1}))
            for _, rec in clients:
                await rec.wait("publication", ch)

            # Node 0 restarts (SIGKILL, then up again on the same port); publications meanwhile.
            cl.nodes[0].proc.proc.send_signal(signal.SIGKILL)
            for n in range(2, 5):
                await call_api(api, PublishRequest(channel=ch, data={"n": n}))
            cl.restart(0)
            await call_api(api, PublishRequest(channel=ch, data={"n": 5}))
            for name, (c, rec) in enumerate(clients):
                pubs = await rec.wait("publication", ch, count=5, timeout=20)
                assert [p.pub.data["n"] for p in pubs] == [1, 2, 3, 4, 5], f"u{name}: every publication once, in order"
                assert c.state == ClientState.CONNECTED

    try:
        cl.run(go())
    except BaseException:
        print(f"--- nginx error log ---\n{nginx.error_log()}")
        raise
    finally:
        nginx.stop()
        cl.stop()
