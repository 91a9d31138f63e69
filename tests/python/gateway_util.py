"""Shared pieces of the gateway end-to-end tests (test_gateway_*.py): a tetherd started with
`--gateway CONFIG` (a Centrifugo v6 JSON config), HS256 tokens minted with PyJWT, event recorders for
the centrifuge-python SDK, the `cent` server API client, and a counting TCP relay that shows how many
connections a client opened (reconnect attempts) and can stand in for a restarted server.

The clients are the stock ones, written by nobody here: PyPI `centrifuge-python` 0.7.x (`centrifuge`),
`cent` 5.x and PyJWT. Every wait is bounded.
"""

import asyncio
import contextlib
import copy
import json
import os
import socket
import struct
import tempfile
import time
import uuid
import warnings
from typing import Any, Callable, Optional

import cent
import jwt
import requests
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    SubscriptionEventHandler,
    SubscriptionState,
)

from tetherd_proc import Tetherd, run_bounded

SECRET = "secret"
API_KEY = "api-key"
WS_PATH = "/connection/websocket"

# The namespaces the tests use (all history namespaces: size 100 unless said, ttl 300 s):
#   (none)  subscribe allowed, nothing else (client publish -> 103, no history -> offsets 0)
#   chat    presence, join/leave pushed to all, history, force_recovery, subscriber may publish,
#           see presence and history
#   hist    history without recovery; subscriber may read history (no presence -> 108)
#   small   history_size 2, force_recovery (a gap of 4 cannot be recovered)
#   nohist  subscribe + history permission but no history (history -> 108)
#   opt     presence, join/leave and history without force_*: pushed/recovered only when asked for
#   private no allow_subscribe_for_client (subscribe -> 103)
BASE_CONFIG: dict = {
    "client": {
        "token": {"hmac_secret_key": SECRET},
        "ping_interval": "2s",
        "pong_timeout": "1s",
        "channel_limit": 128,
        "user_connection_limit": 0,
        "allow_anonymous_connect_without_token": False,
    },
    "http_api": {"key": API_KEY},
    "channel": {
        "without_namespace": {"allow_subscribe_for_client": True},
        "namespaces": [
            {
                "name": "chat",
                "presence": True,
                "join_leave": True,
                "force_push_join_leave": True,
                "history_size": 100,
                "history_ttl": "300s",
                "force_recovery": True,
                "allow_subscribe_for_client": True,
                "allow_publish_for_subscriber": True,
                "allow_presence_for_subscriber": True,
                "allow_history_for_subscriber": True,
            },
            {
                "name": "hist",
                "history_size": 100,
                "history_ttl": "300s",
                "allow_subscribe_for_client": True,
                "allow_history_for_subscriber": True,
            },
            {
                "name": "small",
                "history_size": 2,
                "history_ttl": "300s",
                "force_recovery": True,
                "allow_subscribe_for_client": True,
                "allow_history_for_subscriber": True,
            },
            {
                "name": "nohist",
                "allow_subscribe_for_client": True,
                "allow_history_for_subscriber": True,
            },
            {
                "name": "opt",
                "presence": True,
                "join_leave": True,
                "history_size": 10,
                "history_ttl": "300s",
                "allow_subscribe_for_client": True,
                "allow_presence_for_subscriber": True,
                "allow_history_for_subscriber": True,
            },
            {
                "name": "private",
                "presence": True,
                "history_size": 10,
                "history_ttl": "300s",
            },
        ],
    },
}


def unique(prefix: str) -> str:
    """A channel name (or part of one) no other test uses: offsets in a fresh channel start at 1."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def make_token(user: str, secret: str = SECRET, exp_in: Optional[float] = None, **claims: Any) -> str:
    """An HS256 connection token for `user` (claim `sub`); `exp_in` seconds from now sets `exp`
    (negative: already expired)."""
    payload: dict = {"sub": user, **claims}
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    with warnings.catch_warnings():
        # The config's key is the short "secret"; PyJWT >= 2.10 warns about short HMAC keys.
        warnings.simplefilter("ignore")
        return jwt.encode(payload, secret, algorithm="HS256")


def is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except (ValueError, TypeError, AttributeError):
        return False


class Gateway:
    """tetherd running the gateway with a config written to a temporary file. With `tenant`, the same
    config is also tenant NAME (`--tenant`) and `ws_url` / `api_url` are that tenant's routes
    (/t/NAME/...); every gateway gauge then carries `tenant="..."` (`""`: the --gateway one), and it runs
    on the memory engine even under TETHER_TEST_REDIS."""

    def __init__(self, config: Optional[dict] = None, listen: str = "127.0.0.1:0", tenant: Optional[str] = None):
        self.config = copy.deepcopy(config if config is not None else BASE_CONFIG)
        # TETHER_TEST_REDIS=ADDRESS runs the same tests on the Redis engine (one key prefix per gateway,
        # so tests never see each other's channels).
        redis_address = os.environ.get("TETHER_TEST_REDIS")
        if redis_address and "engine" not in self.config and tenant is None:
            self.config["engine"] = {
                "type": "redis",
                "redis": {"address": redis_address, "prefix": unique("t")},
            }
        fd, self.config_path = tempfile.mkstemp(prefix="tetherd-gw-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.config, f)
        tenant_args = ("--tenant", f"{tenant}={self.config_path}") if tenant else ()
        try:
            self.proc = Tetherd("--gateway", self.config_path, *tenant_args, listen=listen)
        except BaseException:
            os.unlink(self.config_path)
            raise
        self.addr = self.proc.addr
        prefix = f"/t/{tenant}" if tenant else ""
        self.ws_url = f"ws://{self.addr}{prefix}{WS_PATH}"
        self.api_url = f"http://{self.addr}{prefix}/api"

    def api(self, key: str = API_KEY) -> cent.Client:
        """The `cent` (sync, requests-based) server API client; environment proxies are ignored."""
        session = requests.Session()
        session.trust_env = False
        return cent.Client(self.api_url, key, timeout=5, session=session)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.proc.log[-n:])

    def stop(self):
        self.proc.stop()
        with contextlib.suppress(OSError):
            os.unlink(self.config_path)

    def run(self, coro, limit: float):
        """run_bounded, printing the server's log tail when the test fails (pytest shows it)."""
        try:
            return run_bounded(coro, limit)
        except BaseException:
            print(f"--- tetherd log (last lines) ---\n{self.log_tail()}")
            raise


async def call_api(api: cent.Client, request: cent.CentRequest):
    """Runs one `cent` call (blocking `requests`) off the event loop, so the SDK clients keep
    handling pings meanwhile."""
    method = getattr(api, request.api_method)
    return await asyncio.wait_for(asyncio.to_thread(method, request), 15)


class Recorder:
    """Everything the SDK reported for one client and its subscriptions, in order: (kind, channel,
    ctx, monotonic time). Kinds: client-level connecting, connected, disconnected, error,
    server_subscribing, server_subscribed, server_unsubscribed, server_publication, server_join,
    server_leave; subscription-level subscribing, subscribed, unsubscribed, publication, join, leave,
    sub_error."""

    def __init__(self, name: str):
        self.name = name
        self.events: list[tuple[str, Optional[str], Any, float]] = []

    def add(self, kind: str, channel: Optional[str], ctx: Any):
        self.events.append((kind, channel, ctx, time.monotonic()))

    def of(self, kind: str, channel: Optional[str] = None) -> list:
        return [c for k, ch, c, _ in self.events if k == kind and (channel is None or ch == channel)]

    def kinds(self, channel: Optional[str] = None) -> list[str]:
        return [k for k, ch, _, _ in self.events if channel is None or ch == channel]

    def dump(self) -> str:
        return "\n".join(f"  {k} {ch or ''} {c!r}" for k, ch, c, _ in self.events)

    async def wait(
        self,
        kind: str,
        channel: Optional[str] = None,
        count: int = 1,
        timeout: float = 5.0,
        pred: Optional[Callable[[Any], bool]] = None,
    ) -> list:
        """Waits until at least `count` events of `kind` (matching `pred`) were seen; returns them all.
        Fails the test (with everything recorded) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = [c for c in self.of(kind, channel) if pred is None or pred(c)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: waited {timeout}s for {count} x {kind!r}"
                    f"{' on ' + channel if channel else ''}, saw {len(found)}; events:\n{self.dump()}"
                )
            await asyncio.sleep(0.01)


class ClientEvents(ClientEventHandler):
    def __init__(self, rec: Recorder):
        self.rec = rec

    async def on_connecting(self, ctx):
        self.rec.add("connecting", None, ctx)

    async def on_connected(self, ctx):
        self.rec.add("connected", None, ctx)

    async def on_disconnected(self, ctx):
        self.rec.add("disconnected", None, ctx)

    async def on_error(self, ctx):
        self.rec.add("error", None, ctx)

    async def on_subscribing(self, ctx):
        self.rec.add("server_subscribing", ctx.channel, ctx)

    async def on_subscribed(self, ctx):
        self.rec.add("server_subscribed", ctx.channel, ctx)

    async def on_unsubscribed(self, ctx):
        self.rec.add("server_unsubscribed", ctx.channel, ctx)

    async def on_publication(self, ctx):
        self.rec.add("server_publication", ctx.channel, ctx)

    async def on_join(self, ctx):
        self.rec.add("server_join", ctx.channel, ctx)

    async def on_leave(self, ctx):
        self.rec.add("server_leave", ctx.channel, ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self, rec: Recorder, channel: str):
        self.rec = rec
        self.channel = channel

    async def on_subscribing(self, ctx):
        self.rec.add("subscribing", self.channel, ctx)

    async def on_subscribed(self, ctx):
        self.rec.add("subscribed", self.channel, ctx)

    async def on_unsubscribed(self, ctx):
        self.rec.add("unsubscribed", self.channel, ctx)

    async def on_publication(self, ctx):
        self.rec.add("publication", self.channel, ctx)

    async def on_join(self, ctx):
        self.rec.add("join", self.channel, ctx)

    async def on_leave(self, ctx):
        self.rec.add("leave", self.channel, ctx)

    async def on_error(self, ctx):
        self.rec.add("sub_error", self.channel, ctx)


class Harness:
    """Creates SDK clients for one test and disconnects them all at the end (also when the test fails
    or runs out of time), so no client keeps reconnecting into the next test."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.clients: list[Client] = []
        self.relays: list["Relay"] = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for c in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.disconnect(), 5)
        for r in self.relays:
            r.close()

    def client(
        self,
        name: str,
        token: Optional[str] = "",
        url: Optional[str] = None,
        user: Optional[str] = None,
        **kwargs: Any,
    ) -> tuple[Client, Recorder]:
        """A not yet connected client; token defaults to a valid one for `user` (default: name);
        pass token=None for no token at all."""
        rec = Recorder(name)
        if token == "":
            token = make_token(user if user is not None else name)
        kwargs.setdefault("proxy", None)
        kwargs.setdefault("timeout", 5.0)
        c = Client(url or self.gw.ws_url, events=ClientEvents(rec), token=token or "", **kwargs)
        self.clients.append(c)
        return c, rec

    async def connected(self, name: str, **kwargs: Any) -> tuple[Client, Recorder]:
        """A client connected with a valid token (waits for `connected`)."""
        c, rec = self.client(name, **kwargs)
        await asyncio.wait_for(c.connect(), 10)
        await rec.wait("connected", timeout=5)
        assert c.state == ClientState.CONNECTED, f"{name}: {c.state}; events:\n{rec.dump()}"
        return c, rec

    async def relay(self, target: Optional[str] = None) -> "Relay":
        r = Relay(target or self.gw.addr)
        await r.start()
        self.relays.append(r)
        return r


async def subscribed(c: Client, rec: Recorder, channel: str, timeout: float = 5.0, **kwargs: Any):
    """A new subscription, subscribed (waits for `subscribed`); returns it and its SubscribedContext."""
    sub = c.new_subscription(channel, events=SubEvents(rec, channel), **kwargs)
    await asyncio.wait_for(sub.subscribe(), timeout)
    ctx = (await rec.wait("subscribed", channel, timeout=timeout))[-1]
    assert sub.state == SubscriptionState.SUBSCRIBED, f"{channel}: {sub.state}; events:\n{rec.dump()}"
    return sub, ctx


class Relay:
    """A TCP relay in front of tetherd: counts the connections a client opens (each reconnect attempt
    is one), and its target can be switched (a "restarted" server on another port)."""

    def __init__(self, target: str):
        self.target = target
        self.count = 0
        self._server: Optional[asyncio.AbstractServer] = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.addr = ""

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}{WS_PATH}"

    async def start(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.addr = f"{host}:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        # A relay task still running when the test's event loop ends is cancelled: it ends quietly.
        with contextlib.suppress(asyncio.CancelledError):
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.count += 1
        host, port = self.target.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    def close(self):
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.close()
        self._writers.clear()


async def until(fetch: Callable[[], Any], expected: Any, timeout: float = 5.0, what: str = "value"):
    """Calls the coroutine function `fetch` until it returns `expected` (presence is eventually
    consistent); returns it, or fails after `timeout` seconds showing the last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = await fetch()
        if got == expected:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: expected {expected!r} within {timeout}s, last got {got!r}")
        await asyncio.sleep(0.05)


class RawClient:
    """A bare `websockets` client speaking the JSON protocol by hand (no SDK in between), for what the
    SDK hides: the exact ping frames, never answering them, a second subscribe of one channel."""

    def __init__(self, url: str):
        self.url = url
        self.ws = None
        self.frames: list[tuple[float, str]] = []  # every text frame received, with its time
        self._next_id = 0

    async def open(self):
        from websockets.asyncio.client import connect

        # No compression (tetherd declines it anyway), no proxy, no WS-level keepalive of its own.
        self.ws = await connect(
            self.url, proxy=None, compression=None, open_timeout=5, close_timeout=2, ping_interval=None
        )
        return self

    async def send(self, *commands: dict):
        await self.ws.send("\n".join(json.dumps(c) for c in commands))

    async def recv_frame(self, timeout: float = 5.0) -> str:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(frame, str), f"JSON protocol must use text frames, got {frame!r}"
        self.frames.append((time.monotonic(), frame))
        return frame

    async def call(self, method: str, params: dict, timeout: float = 5.0) -> dict:
        """Sends one command and returns its reply (pushes and pings that arrive first are kept in
        `frames` and skipped)."""
        self._next_id += 1
        cmd_id = self._next_id
        await self.send({"id": cmd_id, method: params})
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv_frame(max(0.01, deadline - time.monotonic()))
            for line in frame.strip().split("\n"):
                reply = json.loads(line)
                if reply.get("id") == cmd_id:
                    return reply

    async def close(self):
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)


class Peer:
    """A bare `websockets` client speaking the JSON protocol by hand (shared by the hostile-input and tenant
    tests): a reader task answers server pings with `{}`
    (unless `pong=False`), files replies by id and keeps pushes in order (a line too deeply nested for
    Python's json in `unparsed`); the server's close frame is kept."""

    def __init__(self, url: str, pong: bool = True):
        self.url = url
        self.pong = pong
        self.ws = None
        self.replies: dict[int, dict] = {}
        self.reply_ids: list[int] = []
        self.pushes: list[dict] = []
        self.unparsed: list[str] = []  # lines too deeply nested for Python's json
        self.pings = 0
        self.closed = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self._next_id = 0

    async def open(self, sock: Optional[socket.socket] = None, **kwargs):
        kwargs.setdefault("max_size", None)
        self.ws = await ws_connect(
            self.url,
            proxy=None,
            compression=None,
            open_timeout=5,
            close_timeout=2,
            ping_interval=None,
            sock=sock,
            **kwargs,
        )
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self):
        try:
            async for frame in self.ws:
                assert isinstance(frame, str), f"JSON protocol must use text frames, got {frame!r}"
                for line in frame.split("\n"):
                    if line == "{}":
                        self.pings += 1
                        if self.pong:
                            await self.ws.send("{}")
                        continue
                    try:
                        msg = json.loads(line)
                    except RecursionError:
                        self.unparsed.append(line)
                        continue
                    if msg.get("id"):
                        self.replies[msg["id"]] = msg
                        self.reply_ids.append(msg["id"])
                    else:
                        self.pushes.append(msg)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def stop_reading(self):
        """Stops taking frames off the connection (the library's queue fills, then the socket's buffers)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send(self, *commands: dict):
        await self.ws.send("\n".join(json.dumps(c) for c in commands))

    async def reply(self, cmd_id: int, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while cmd_id not in self.replies:
            if self.closed.is_set():
                raise AssertionError(f"closed {self.close_frame()} before the reply to {cmd_id}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply to {cmd_id} within {timeout}s")
            await asyncio.sleep(0.005)
        return self.replies[cmd_id]

    async def call(self, method: str, params: dict, timeout: float = 5.0) -> dict:
        cmd_id = self.next_id()
        await self.send({"id": cmd_id, method: params})
        return await self.reply(cmd_id, timeout)

    async def connect(self, user: str = "", token: Optional[str] = None) -> dict:
        r = await self.call("connect", {"token": token if token is not None else make_token(user or unique("u-"))})
        assert "connect" in r, r
        return r["connect"]

    async def subscribe(self, channel: str, **params) -> dict:
        r = await self.call("subscribe", {"channel": channel, **params})
        assert "subscribe" in r, r
        return r["subscribe"]

    def close_frame(self):
        """(code, reason) of the close frame the server sent, None if none came (yet)."""
        rcvd = self.ws.protocol.close_rcvd if self.ws is not None else None
        return (rcvd.code, rcvd.reason) if rcvd is not None else None

    async def closed_with(self, timeout: float = 5.0):
        """Waits for the server to close; returns its close frame's (code, reason)."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"still open {timeout}s later; replies {self.replies}") from None
        return self.close_frame()

    def write_raw(self, data: bytes):
        """Bytes straight onto the socket, past the library (frames it would refuse to send)."""
        self.ws.transport.write(data)

    def reset(self):
        """An abortive close: SO_LINGER 0, so the kernel sends RST instead of FIN."""
        sock = self.ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.transport.abort()

    def publications(self, channel: str) -> list:
        """The data of every publication pushed on `channel`, in order."""
        return [
            p["push"]["pub"]["data"]
            for p in self.pushes
            if p.get("push", {}).get("channel") == channel and "pub" in p["push"]
        ]

    async def aclose(self):
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 3)
