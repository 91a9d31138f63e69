"""A WebSocket server nobody on this team wrote (Python `websockets`), for tether-load's tests.

Modes:
  echo            echo every message
  close1008 K     echo; the first K connections are closed with 1008 after 1 s
  abort K         echo; the first K connections have their TCP connection aborted (no close frame) after 1 s
Prints "listening on 127.0.0.1:PORT" once ready.
"""
import asyncio
import sys

from websockets.asyncio.server import serve

mode = sys.argv[1] if len(sys.argv) > 1 else "echo"
kill = int(sys.argv[2]) if len(sys.argv) > 2 else 0
seen = 0


async def handler(ws):
    global seen
    seen += 1
    if seen <= kill:
        async def killer():
            await asyncio.sleep(1.0)
            if mode == "close1008":
                await ws.close(code=1008, reason="policy: test kill")
            elif mode == "abort":
                ws.transport.abort()
        asyncio.get_running_loop().create_task(killer())
    try:
        async for message in ws:
            await ws.send(message)
    except Exception:
        pass


async def main():
    async with serve(handler, "127.0.0.1", 0, ping_interval=None, max_size=None, backlog=4096) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await asyncio.Future()


asyncio.run(main())
