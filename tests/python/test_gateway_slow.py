"""A subscriber that stops reading while the gateway fans out to it: its send queue is bounded
(`--max-send-queue`), and when it overflows the connection is closed with Centrifugo's 3008 "slow" (on which
the SDKs reconnect and recover), never grown without bound; the other subscribers keep everything.

Clients: Python `websockets` (raw protocol, so the test controls when it reads) and `cent` for the API."""

import asyncio
import json
import os
import tempfile

import cent
import requests
from cent import PublishRequest
import websockets

from gateway_util import API_KEY, SECRET, make_token
from tetherd_proc import Tetherd, run_bounded

CONFIG = {
    "client": {"token": {"hmac_secret_key": SECRET}},
    "http_api": {"key": API_KEY},
    "channel": {"namespaces": [{"name": "feed", "allow_subscribe_for_client": True}]},
}


async def connect_and_subscribe(url: str, user: str, channel: str, **kwargs):
    # No permessage-deflate: the send-queue bound counts bytes on the wire, and the test's repetitive payloads
    # would compress to almost nothing (tetherd negotiates deflate when offered, as websockets does by default).
    kwargs.setdefault("compression", None)
    ws = await websockets.connect(url, **kwargs)
    await ws.send(
        json.dumps({"id": 1, "connect": {"token": make_token(user)}})
        + "\n"
        + json.dumps({"id": 2, "subscribe": {"channel": channel}})
    )
    replies = []
    while len(replies) < 2:
        frame = await asyncio.wait_for(ws.recv(), 5)
        replies += [json.loads(line) for line in frame.split("\n") if line.strip()]
    assert [r.get("id") for r in replies] == [1, 2], replies
    assert "error" not in replies[1], replies
    return ws


def test_a_subscriber_that_stops_reading_is_closed_3008_and_the_others_get_everything():
    fd, path = tempfile.mkstemp(prefix="tetherd-slow-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(CONFIG, f)
    server = Tetherd("--gateway", path, "--max-send-queue", "256KiB")
    session = requests.Session()
    session.trust_env = False
    api = cent.Client(f"http://{server.addr}/api", API_KEY, timeout=10, session=session)
    url = f"ws://{server.addr}/connection/websocket"
    payload = "x" * 60_000  # each publication about 60 KB on the wire
    publications = 300  # 18 MB in all: far past the kernel's socket buffers plus the 256 KiB queue

    async def go():
        # The slow one reads nothing once subscribed (websockets stops reading when its queue of 1 is full,
        # so the kernel buffers fill and the rest waits in tetherd's send queue).
        slow = await connect_and_subscribe(url, "slow", "feed:1", max_queue=1, max_size=None)
        fast = await connect_and_subscribe(url, "fast", "feed:1", max_size=None)
        got = 0

        async def read_fast():
            nonlocal got
            while got < publications:
                frame = await asyncio.wait_for(fast.recv(), 20)
                got += sum(1 for line in frame.split("\n") if '"pub"' in line)

        reader = asyncio.create_task(read_fast())
        for i in range(publications):
            # Pace the publisher to the reading subscriber (at most 3 publications, ~180 KB, ahead of it,
            # inside its 256 KiB queue), so that on a loaded machine a Python reader that falls behind is not
            # itself the slow consumer; the one that reads nothing still gets all 18 MB queued.
            while got < i - 3 and not reader.done():
                await asyncio.sleep(0.001)
            await asyncio.to_thread(api.publish, PublishRequest(channel="feed:1", data={"i": i, "p": payload}))
        await reader
        assert got == publications, f"the reading subscriber got {got} of {publications}"

        # Now read what the slow one was sent: some publications, then the close.
        with_pubs = 0
        try:
            while True:
                frame = await asyncio.wait_for(slow.recv(), 20)
                with_pubs += sum(1 for line in frame.split("\n") if '"pub"' in line)
        except websockets.ConnectionClosed as e:
            assert e.rcvd is not None, "no close frame: the connection died instead of being closed"
            assert (e.rcvd.code, e.rcvd.reason) == (3008, "slow"), e
        assert 0 < with_pubs < publications, f"the slow subscriber got {with_pubs} of {publications}"
        await fast.close()
        # The close line is written when tetherd frees the connection, a moment after the client saw the
        # Close frame: wait for it (bounded).
        closes = []
        for _ in range(100):
            closes = [line for line in server.log if "code=3008" in line]
            if closes:
                break
            await asyncio.sleep(0.05)
        assert len(closes) == 1 and "user=slow" in closes[0], closes
        assert 'cause="slow_consumer"' in closes[0] or "cause=slow_consumer" in closes[0], closes

    try:
        run_bounded(go(), 120)
    except BaseException:
        print("--- tetherd log ---\n" + "\n".join(server.log[-40:]))
        raise
    finally:
        server.stop()
        os.unlink(path)
