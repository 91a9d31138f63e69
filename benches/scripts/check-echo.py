#!/usr/bin/env python3
"""Checks that a peer echo server echoes correctly, with a client nobody here wrote (Python `websockets`).

Usage: python3 benches/scripts/check-echo.py ws://127.0.0.1:9002/
Exits 0 and prints "ok" when: a text and a binary message come back unchanged and with the same type, a
message sent as fragments comes back whole, a 1 MiB binary message comes back, a ping is answered with a pong,
100 pipelined messages come back in order, and the server completes the close handshake with 1000.
"""
import asyncio
import os
import sys

import websockets


async def check(url):
    async with websockets.connect(url, max_size=4 << 20, compression=None) as ws:
        await ws.send("hello, tether")
        assert await ws.recv() == "hello, tether", "text"

        payload = os.urandom(1000)
        await ws.send(payload)
        reply = await ws.recv()
        assert isinstance(reply, bytes) and reply == payload, "binary"

        await ws.send(["frag", "mented ", "text"])  # one message in three frames
        assert await ws.recv() == "fragmented text", "fragmented"

        big = os.urandom(1 << 20)
        await ws.send(big)
        assert await ws.recv() == big, "1 MiB binary"

        pong = await ws.ping(b"are you there")
        latency = await asyncio.wait_for(pong, 5)
        assert latency >= 0, "pong"

        for i in range(100):
            await ws.send(f"message {i}")
        for i in range(100):
            assert await ws.recv() == f"message {i}", f"pipelined {i}"

        await ws.close(1000, "done")
        assert ws.close_code == 1000, f"close code {ws.close_code}"
    print("ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    asyncio.run(asyncio.wait_for(check(sys.argv[1]), 30))
