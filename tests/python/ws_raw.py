"""A raw WebSocket client for tests that check what is on the wire (test_deflate.py, test_embed.py,
test_tls.py): the upgrade, masked client frames, the server's frames as they are."""

import base64
import os
import socket
import struct


def handshake(addr: str, extensions: str | None, path: str = "/", extra: tuple[str, ...] = ()):
    """The upgrade request to `addr` (with `extensions` as Sec-WebSocket-Extensions, if any, and `extra`
    header lines); returns the socket, the status line, the headers (lower-case names) and any bytes after
    them."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {addr}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed during the handshake: {head!r}"
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    status, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return sock, status, headers, rest


def client_frame(opcode: int, payload: bytes, rsv1: bool = False, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def read_frame(sock, buf: bytes):
    """(fin, rsv1, opcode, payload, rest) of the next server frame."""

    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            buf += chunk

    need(2)
    b0, b1 = buf[0], buf[1]
    n, off = b1 & 0x7F, 2
    if n == 126:
        need(4)
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        need(10)
        n, off = struct.unpack("!Q", buf[2:10])[0], 10
    need(off + n)
    return bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, buf[off : off + n], buf[off + n :]
