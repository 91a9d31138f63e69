"""Echo server on Python `websockets` (>= 13): the reference server for checking this Autobahn setup.

    python3 tests/autobahn/run.py --agent websockets -- python3 tests/autobahn/websockets_echo.py {port}

permessage-deflate is on (the websockets default); messages up to 32 MiB (the 9.* cases send 16 MiB).
"""
import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except Exception:
        pass


async def main(port):
    async with serve(echo, "127.0.0.1", port, max_size=2**25, compression="deflate"):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
