#!/usr/bin/env python3
"""Does an echo server compress what it sends back? One connection, permessage-deflate offered (no context
takeover either way, as tether-load --deflate offers it), one uncompressed ~1 KB JSON text message sent, and
the echo's first frame header read: RSV1 set = compressed, and its length on the wire.

    deflate-check.py ws://127.0.0.1:PORT/ | wss://127.0.0.1:PORT/ [--ca tests/certs/ca.crt] [--size 1024]

Prints `compressed=yes|no negotiated=<extension header> wire=<payload bytes> of <size>`; exits 1 when the echo
did not come back. Loopback only, bounded by a 5 s timeout."""
import argparse, base64, json, os, socket, ssl, struct, sys, urllib.parse


def document(size):
    events, i = [], 0
    while True:
        e = {"id": 1000003 * i % 999999937, "user": f"user_{i * 37 % 1000}", "type": ["click", "view", "share"][i % 3],
             "score": round(i * 7.31 % 1000, 2), "ok": i % 2 == 0, "city": ["Oslo", "Lima", "Pune"][i % 3],
             "tags": ["socket", "frame"][: 1 + i % 2]}
        if len(json.dumps({"events": events + [e], "note": ""}, separators=(",", ":"))) > size:
            break
        events.append(e)
        i += 1
    doc = {"events": events, "note": ""}
    room = size - len(json.dumps(doc, separators=(",", ":")))
    doc["note"] = ("lorem ipsum dolor sit amet " * (room // 27 + 1))[:room]
    return json.dumps(doc, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--ca")
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    u = urllib.parse.urlsplit(a.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=5)
    if u.scheme == "wss":
        ctx = ssl.create_default_context(cafile=a.ca)
        sock = ctx.wrap_socket(sock, server_hostname=u.hostname)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
                  "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("closed during the upgrade")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    ext = [l.split(b":", 1)[1].strip().decode() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-extensions:")]
    payload = document(a.size)
    mask = os.urandom(4)
    n = len(payload)
    hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    while len(buf) < 4:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("closed before the echo")
        buf += chunk
    b0, b1 = buf[0], buf[1]
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack(">H", buf[2:4])[0]
    print(f"compressed={'yes' if b0 & 0x40 else 'no'} negotiated={ext[0] if ext else '-'} wire={length} of {n}")


main()
