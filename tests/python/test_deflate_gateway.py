"""Compressed fan-out through the gateway: centrifuge-python clients (over `websockets`, which offers
permessage-deflate by default) and one that does not offer it subscribe to a channel; a large compressible
publication through the server API reaches every one of them intact, and tetherd's bytes out show it went
compressed to the clients that negotiated deflate (once per publication, shared by all of them)."""

import asyncio
import json
import re
import urllib.request

from cent import PublishRequest

from gateway_util import Gateway, Harness, Peer, call_api, subscribed, unique

LIMIT = 45


def bytes_out(gw: Gateway) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://{gw.addr}/metrics", timeout=5).read().decode()
    m = re.search(r'^tether_bytes_out_total\{shard="total"\} (\d+)', text, re.M)
    assert m, text[:2000]
    return int(m.group(1))


def test_compressed_fan_out_reaches_every_subscriber():
    gw = Gateway()
    try:
        async def go():
            ch = unique("news-")
            data = {"items": [{"id": i, "title": "the same headline again", "body": "lorem ipsum " * 4} for i in range(60)]}
            size = len(json.dumps(data))
            assert size > 5000
            async with Harness(gw) as h:
                recs = []
                for i in range(6):
                    c, rec = await h.connected(f"deflate{i}")
                    await subscribed(c, rec, ch)
                    recs.append(rec)
                plain = await Peer(gw.ws_url).open()  # a bare websockets client, compression=None
                await plain.connect("plain")
                await plain.subscribe(ch)
                before = bytes_out(gw)
                for _ in range(3):
                    await call_api(gw.api(), PublishRequest(channel=ch, data=data))
                for rec in recs:
                    pubs = await rec.wait("publication", ch, count=3, timeout=10)
                    assert all(p.pub.data == data for p in pubs[:3])
                for _ in range(500):
                    got = [p for p in plain.pushes if p.get("push", {}).get("channel") == ch]
                    if len(got) >= 3:
                        break
                    await asyncio.sleep(0.01)
                assert [p["push"]["pub"]["data"] for p in got] == [data] * 3, plain.pushes
                await plain.ws.close()
                sent = bytes_out(gw) - before
                # Uncompressed, 7 subscribers x 3 publications would be over 21 x size; the one plain client
                # alone takes 3 x size of it (plus the API answers).
                assert sent < 3 * size + 6 * 3 * size // 5, f"{sent} bytes out for 3 x {size}-byte publications"

        gw.run(go(), LIMIT)
    finally:
        gw.stop()
