#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (committed; rerun after changing it).

Seeds are small real inputs: upgrade requests as browsers and SDKs send them, frames from RFC 6455, Centrifugo
client commands, tokens signed with the key the `jwt` target verifies with, and connection scripts in the byte
format fuzz/src/lib.rs decodes. Inputs a fuzzer found that once crashed a target are kept in
corpus/<target>/crash-* files, written by hand, not by this script.
"""
import base64
import hashlib
import hmac
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(*lines):
    return "".join(line + "\r\n" for line in lines) + "\r\n"


# ---- http_upgrade --------------------------------------------------------------------------------------
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
write("http_upgrade", "rfc6455", crlf(
    "GET /chat HTTP/1.1", "Host: server.example.com", "Upgrade: websocket", "Connection: Upgrade",
    f"Sec-WebSocket-Key: {KEY}", "Origin: http://example.com", "Sec-WebSocket-Protocol: chat, superchat",
    "Sec-WebSocket-Version: 13"))
write("http_upgrade", "chromium", crlf(
    "GET /connection/websocket?cf_protocol=json HTTP/1.1", "Host: 127.0.0.1:8000", "Connection: Upgrade",
    "Pragma: no-cache", "Cache-Control: no-cache",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Upgrade: websocket", "Origin: http://127.0.0.1:8000", "Sec-WebSocket-Version: 13",
    "Accept-Encoding: gzip, deflate, br, zstd", "Accept-Language: en-US,en;q=0.9",
    "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"))
write("http_upgrade", "tungstenite-pipelined", crlf(
    "GET / HTTP/1.1", "Host: localhost:9001", "Connection: Upgrade", "Upgrade: websocket",
    "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==")
    .encode() + bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]))
write("http_upgrade", "version-12", crlf(
    "GET / HTTP/1.1", "Host: h", "Upgrade: websocket", "Connection: keep-alive, Upgrade",
    f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 12"))
write("http_upgrade", "healthz", crlf("GET /healthz HTTP/1.1", "Host: localhost", "User-Agent: curl/8.5.0",
                                       "Accept: */*"))
body = json.dumps({"method": "publish", "params": {"channel": "news", "data": {"text": "hi"}}})
write("http_upgrade", "api-post", crlf("POST /api HTTP/1.1", "Host: localhost:8000",
                                        "Content-Type: application/json", "X-API-Key: secret",
                                        f"Content-Length: {len(body)}") + body)
write("http_upgrade", "chunked", crlf("POST /api HTTP/1.1", "Host: h", "Transfer-Encoding: chunked") + "5\r\nhello\r\n0\r\n\r\n")
write("http_upgrade", "response-101", crlf(
    "HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
write("http_upgrade", "response-403", crlf("HTTP/1.1 403 Forbidden", "Content-Length: 0"))

# ---- frame ------------------------------------------------------------------------------------------------
write("frame", "text-unmasked", bytes([0x81, 0x05]) + b"Hello")
write("frame", "text-masked", bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]))
write("frame", "fragment-first", bytes([0x01, 0x03]) + b"Hel")
write("frame", "fragment-last", bytes([0x80, 0x02]) + b"lo")
write("frame", "ping-masked", bytes([0x89, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]))
write("frame", "pong", bytes([0x8A, 0x05]) + b"Hello")
write("frame", "binary-256", bytes([0x82, 0x7E, 0x01, 0x00]) + bytes(range(256)))
write("frame", "binary-64k-header", bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]))
write("frame", "close-1000-masked", bytes([0x88, 0x85, 1, 2, 3, 4]) + bytes(
    b ^ [1, 2, 3, 4][i % 4] for i, b in enumerate(struct.pack(">H", 1000) + b"bye")))
# Found by the frame target at once: write_close(999, ...) put code 999 on the wire (now an empty payload).
write("frame", "crash-close-code-999", struct.pack(">H", 999) + b"why")

# ---- conn_server / conn_client: scripts (fuzz/src/lib.rs decodes them) -------------------------------------
# The same scripts serve both roles: Frame ops are masked the way the peer's role requires.


def config(max_message=1024, ping_ms=0, pong_ms=0, close_ms=100, seed=7):
    return struct.pack("<HHHHQ", max_message, ping_ms, pong_ms, close_ms, seed)


def op_bytes(b):
    return bytes([0, len(b)]) + b


def op_frame(head, payload, wrong_mask=False, key=b"\x37\xfa\x21\x3d"):
    return bytes([1, head, int(wrong_mask)]) + key + struct.pack("<H", len(payload)) + payload


def op_deliver(n=0):
    return bytes([2]) + struct.pack("<H", n)


def op_advance(ms):
    return bytes([3]) + struct.pack("<H", ms)


TICK, PING, EOF = bytes([4]), bytes([6]), bytes([8])


def op_send(payload, text=True):
    return bytes([5, int(text)]) + struct.pack("<H", len(payload)) + payload


def op_close(code, reason=b""):
    return bytes([7]) + struct.pack("<H", code) + bytes([len(reason)]) + reason


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


utf8 = "héllo wörld ✓".encode()
scripts = {
    "echo-then-peer-close": config() + op_frame(0x81, b"Hello") + op_deliver() + op_send(b"Hello")
    + op_frame(0x88, close_payload(1000, b"bye")) + op_deliver(),
    "fragmented-utf8-with-ping": config() + op_frame(0x01, utf8[:2]) + op_frame(0x89, b"are you there")
    + op_frame(0x00, utf8[2:9]) + op_frame(0x80, utf8[9:]) + op_deliver(3) + op_deliver(5) + op_deliver(1)
    + op_deliver(0),
    "keepalive-then-pong-timeout": config(ping_ms=100, pong_ms=50) + op_advance(100)
    + op_frame(0x8A, struct.pack(">Q", 1)) + op_deliver() + op_advance(100) + op_advance(60),
    "local-close-handshake": config() + op_close(1000, b"bye") + op_frame(0x81, b"late")
    + op_frame(0x88, close_payload(1000)) + op_deliver(4) + op_deliver(0),
    "local-close-timeout": config(close_ms=50) + op_close(4000, b"custom") + op_advance(49) + TICK
    + op_advance(1),
    "too-big": config(max_message=16) + op_frame(0x02, bytes(10)) + op_frame(0x80, bytes(10)) + op_deliver(),
    "invalid-utf8": config() + op_frame(0x81, b"\xc3\x28") + op_deliver(),
    "eof-mid-frame": config() + op_frame(0x82, bytes(40)) + op_deliver(20) + EOF + op_send(b"x", False),
    "app-ping-rtt": config(ping_ms=1000, pong_ms=500) + PING + op_advance(5)
    + op_frame(0x8A, struct.pack(">Q", 1)) + op_deliver() + op_advance(1000) + TICK,
    "raw-bytes-split-header": config() + op_bytes(bytes([0x82, 0x7E])) + op_deliver(1) + op_deliver(1)
    + op_bytes(bytes([0x00, 0x80]) + b"\x01\x02\x03\x04" + bytes(128)) + op_deliver(3) + op_deliver(0),
    "bad-close-code": config() + op_frame(0x88, close_payload(1005)) + op_deliver(),
}
for name, script in scripts.items():
    write("conn_server", name, script)
    write("conn_client", name, script)

# ---- gateway_command: Centrifugo client protocol v2 (JSON), as centrifuge-js sends it ------------------------
commands = {
    "connect": {"id": 1, "connect": {"token": "eyJhbGciOiJIUzI1NiJ9.e30.x", "name": "js", "version": "5.2.2",
                                     "subs": {"news": {"recover": True, "offset": 3, "epoch": "aBcD"}}}},
    "subscribe": {"id": 2, "subscribe": {"channel": "chat:index", "recover": True, "offset": 17,
                                         "epoch": "xyz", "positioned": True, "join_leave": True}},
    "publish": {"id": 3, "publish": {"channel": "chat:index", "data": {"input": "héllo \u2028 \"q\"\n"}}},
    "presence": {"id": 4, "presence": {"channel": "chat:index"}},
    "presence-stats": {"id": 5, "presence_stats": {"channel": "chat:index"}},
    "history": {"id": 6, "history": {"channel": "chat:index", "limit": 10,
                                     "since": {"offset": 5, "epoch": "xyz"}, "reverse": True}},
    "rpc": {"id": 7, "rpc": {"method": "getCurrentYear", "data": [1, 2.5, None, {"a": "b"}]}},
    "send": {"send": {"data": {"async": "message"}}},
    "refresh": {"id": 8, "refresh": {"token": "t"}},
    "sub-refresh": {"id": 9, "sub_refresh": {"channel": "private", "token": "t"}},
    "unsubscribe": {"id": 10, "unsubscribe": {"channel": "chat:index"}},
}
for name, cmd in commands.items():
    write("gateway_command", name, json.dumps(cmd, ensure_ascii=False))
write("gateway_command", "pong", "{}")
write("gateway_command", "batch", "\n".join(json.dumps(commands[k]) for k in ("connect", "subscribe", "publish"))
      + "\n{}\n")
write("gateway_command", "pretty-data", '{"id":11,"publish":{"channel":"c","data":{\n  "k": [\n 1\r\n]}}}')
write("gateway_command", "ping-v1", '{"id":12,"ping":{}}')

# ---- jwt: tokens signed with the target's key ------------------------------------------------------------
SECRET = b"fuzz-secret"
NOW = 1_700_000_000


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims, alg="HS256"):
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(alg, hashlib.sha256)
    sig = b64(hmac.new(SECRET, f"{header}.{body}".encode(), digest).digest())
    return f"{header}.{body}.{sig}"


def case(verifier, subscribe, mode, text, alg=0):
    flags = verifier | (int(subscribe) << 2) | (mode << 3) | (alg << 5)
    return bytes([flags]) + struct.pack("<Q", NOW) + text.encode()


write("jwt", "connect", case(0, False, 0, token({"sub": "42", "exp": NOW + 3600, "info": {"name": "Ann"},
                                                 "channels": ["news", "chat:index"]})))
write("jwt", "connect-subs", case(0, False, 0, token({"sub": "42", "expire_at": NOW + 60,
                                                      "subs": {"news": {"data": {}}}})))
write("jwt", "subscribe", case(0, True, 0, token({"sub": "42", "channel": "news", "client": "c1",
                                                  "exp": NOW + 10, "info": {"role": "admin"}, "data": [1]})))
write("jwt", "expired", case(0, False, 0, token({"sub": "42", "exp": NOW})))
write("jwt", "aud-iss", case(1, False, 0, token({"sub": "1", "aud": ["x", "aud"], "iss": "iss", "nbf": NOW - 1})))
write("jwt", "user-id-claim", case(2, False, 0, token({"user": {"id": 77}, "exp": NOW + 1.5}, "HS512")))
write("jwt", "rs256-disabled", case(0, False, 0, token({"sub": "42"}, "RS256")))
write("jwt", "none-alg", case(0, False, 0, b64(b'{"alg":"none"}') + "." + b64(b'{"sub":"1"}') + "."))
write("jwt", "signed-text", case(3, True, 2, '{"alg":"HS256","typ":"JWT"}\n{"sub":"x","channel":"c","exp":1e300}'))
write("jwt", "garbage", case(0, False, 0, "a.b.c"))


# ---- deflate: mode byte, offer length, offer, compressed message --------------------------------------------
def raw_deflate(data):
    import zlib
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def deflate_case(mode, offer, body):
    offer = offer.encode()
    return bytes([mode, len(offer)]) + offer + body


doc = json.dumps({"channel": "news", "data": [{"id": i, "text": "lorem ipsum"} for i in range(20)]}).encode()
write("deflate", "shared-websockets", deflate_case(1, "permessage-deflate; client_max_window_bits", raw_deflate(doc)))
write("deflate", "dedicated-10", deflate_case(2 | (2 << 2), "permessage-deflate; client_max_window_bits=12",
                                              raw_deflate(b"hello " * 50)))
write("deflate", "window-8", deflate_case(1, "permessage-deflate; server_max_window_bits=8", raw_deflate(b"abc" * 40)))
write("deflate", "junk-offers", deflate_case(3, "permessage-deflate; foo=1, permessage-deflate; server_max_window_bits=7",
                                             b"\xff\xff\x00\x01"))
write("deflate", "bomb", deflate_case(1, "permessage-deflate", raw_deflate(bytes(1 << 20))))
write("deflate", "final-block", deflate_case(1, "permessage-deflate", __import__("zlib").compress(b"x" * 100)[2:-4]))
write("deflate", "off", deflate_case(0, "permessage-deflate", b"plain"))
