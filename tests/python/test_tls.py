"""TLS (wss:// and https://) end to end: tetherd started with `--tls-cert` / `--tls-key` (the test
certificates in tests/certs: ca.crt is the test CA, localhost.crt its leaf for DNS:localhost, IP:127.0.0.1,
IP:::1; reloaded.crt another leaf of that CA, CN "localhost reloaded"; other-ca.crt an unrelated CA), talked
to by TLS stacks nobody here wrote: Python's `ssl` (OpenSSL) under `websockets` and raw sockets, Node's `ws`
(tests/node/tls_echo.mjs), headless Chromium and the centrifuge-python SDK; plus tether-load (this project's
client role, on rustls) for 500 connections at once.

What is checked: exact echoes of every size class over wss:// with and without permessage-deflate; clean
closes both ways, TLS close_notify included; the plaintext-HTTP answer on the TLS port; handshakes that
stall, arrive fragmented, or are garbage; certificates the client does not trust; session resumption; the
certificate reload on SIGHUP (new connections get the new certificate, open ones keep going, a bad file
keeps the old one); 500 tether-load connections, with and without a handshake cap per loop iteration; the
gateway over wss://.

Needs: node >= 18 and `bash tests/node/setup.sh` for the `ws` test, Debian's `chromium` for the browser
test, the tether-load binary ($TETHER_LOAD_BIN, else target/{release,debug}/tether-load) for the load tests.
Every wait is bounded, and every process started here is killed at the end of its test.
"""

import asyncio
import base64
import hashlib
import http.client
import http.server
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import types
import urllib.parse
import warnings

import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from chromium_util import page_report
from tetherd_proc import ROOT, Tetherd, run_bounded
from ws_raw import client_frame

CERTS = ROOT / "tests" / "certs"
CA = CERTS / "ca.crt"
LEAF_CRT, LEAF_KEY = CERTS / "localhost.crt", CERTS / "localhost.key"
RELOADED_CRT, RELOADED_KEY = CERTS / "reloaded.crt", CERTS / "reloaded.key"
OTHER_CA = CERTS / "other-ca.crt"
NODE_DIR = ROOT / "tests" / "node"

PLAIN_HTTP_BODY = b"This port speaks TLS: use https:// or wss://\n"
RELOADED_LINE = "TLS certificate reloaded"
NOT_RELOADED_LINE = "TLS certificate not reloaded; the old one stays"
# Every size class of a WebSocket frame length: 7-bit, 16-bit (126..65535), 64-bit; and 1 MB, which spans
# many TLS records (16 KiB of plaintext at most each) and many receive buffers.
SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20]


# --- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture
def tetherd():
    """Starts tetherd with a certificate (`cert`, `key`: the localhost leaf unless given) and the extra
    flags; every one started is killed when the test ends."""
    started: list[Tetherd] = []

    def start(*args: str, cert=LEAF_CRT, key=LEAF_KEY) -> Tetherd:
        srv = Tetherd("--tls-cert", str(cert), "--tls-key", str(key), *args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def port_of(srv: Tetherd) -> int:
    return int(srv.addr.rsplit(":", 1)[1])


def client_ctx(cafile=CA, **versions) -> ssl.SSLContext:
    """A verifying client context that trusts `cafile` only (hostname checked)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    for attr, value in versions.items():
        setattr(ctx, attr, value)
    return ctx


def common_name(peercert: dict) -> str:
    return dict(rdn[0] for rdn in peercert["subject"])["commonName"]


def text_of(n: int) -> str:
    """Text of exactly `n` UTF-8 bytes with multi-byte characters (so records and frames split inside them),
    compressible (so a deflate connection sends it compressed)."""
    unit = "wss über TLS ✓ 🐎 ".encode()
    reps = n // len(unit)
    return (unit * reps + b"a" * (n - reps * len(unit))).decode()


def messages() -> list:
    out: list = []
    for n in SIZES:
        out += [text_of(n), os.urandom(n)]
    return out


def describe(m) -> str:
    return f"{type(m).__name__} of {len(m.encode() if isinstance(m, str) else m)} bytes"


async def echo(ws, msgs, timeout: float = 15):
    """Sends each message and checks its echo before the next."""
    for m in msgs:
        await ws.send(m)
        got = await asyncio.wait_for(ws.recv(), timeout)
        assert type(got) is type(m) and got == m, f"echo of a {describe(m)} came back as a {describe(got)}"


def metrics(srv: Tetherd) -> dict:
    """/metrics over https (verified against the test CA): {name: value} of the shard="total" series, with
    `name{reason}` for the closes by reason. The fetch is itself a TLS connection (counted while it is open)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port_of(srv), context=client_ctx(), timeout=10)
    try:
        # Connection: close, so the server ends this connection itself right after the answer (a kept-alive one
        # would count as open until the server has read our FIN, and gauges are compared between fetches).
        conn.request("GET", "/metrics", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, f"/metrics answered {resp.status}: {body[:200]}"
    finally:
        conn.close()
    out = {}
    for line in body.splitlines():
        m = re.match(r'^tether_(\w+)\{(?:reason="(\w+)",)?shard="total"\} (\d+)$', line)
        if m:
            out[m[1] + (f"{{{m[2]}}}" if m[2] else "")] = int(m[3])
    return out


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    """Polls `pred` until it returns something true (returned), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def wait_metric(srv: Tetherd, name: str, expected: int, timeout: float = 10) -> dict:
    """Waits until metric `name` is `expected` (the server counts after the client has seen the end)."""
    last = {}

    def check():
        nonlocal last
        last = metrics(srv)
        return last if last.get(name) == expected else None

    try:
        return wait_until(check, timeout, f"metric {name} == {expected}")
    except AssertionError:
        raise AssertionError(f"metric {name} is {last.get(name)}, expected {expected}; all: {last}\n"
                             f"tetherd log:\n" + "\n".join(srv.log[-20:])) from None


def read_to_eof(sock: socket.socket, limit: float) -> tuple[bytes, str]:
    """Everything `sock` receives until EOF: (bytes, 'eof'), or 'reset', or 'timeout' after `limit` s."""
    got = b""
    deadline = time.monotonic() + limit
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return got, "timeout"
        except ConnectionResetError:
            return got, "reset"
        if not chunk:
            return got, "eof"
        got += chunk


def client_hello() -> bytes:
    """The first flight of a real TLS client (OpenSSL's ClientHello for localhost), via a memory BIO."""
    outgoing = ssl.MemoryBIO()
    obj = client_ctx().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16 and len(hello) > 100, hello[:16]
    return hello


UPGRADE = (
    b"GET /raw HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
ACCEPT = b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


class RawTls:
    """A TLS client over a plain socket through OpenSSL's memory BIOs, so the test sees and shapes every byte
    on the wire: `send_wire` is where the ciphertext goes out (overridable to fragment it), and `read_all`
    tells how the server ended the stream (its close_notify, a bare EOF, or an alert)."""

    def __init__(self, port: int, send_wire=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = client_ctx().wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.send_wire = send_wire or self.sock.sendall

    def handshake(self):
        for _ in range(100):
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                data = self.sock.recv(65536)
                assert data, "the server closed during the TLS handshake"
                self.incoming.write(data)
        else:
            raise AssertionError("TLS handshake did not finish")
        self.flush()
        return self

    def flush(self):
        data = self.outgoing.read()
        if data:
            self.send_wire(data)

    def send(self, plain: bytes):
        self.obj.write(plain)
        self.flush()

    def read_all(self, limit: float = 10) -> tuple[bytes, str]:
        """Plaintext until the stream ends, and how: 'close_notify' (then TCP EOF), 'eof' (TCP EOF without a
        close_notify), 'alert: ...' (an error), or 'timeout'."""
        plain = b""
        deadline = time.monotonic() + limit
        while True:
            try:
                data = self.obj.read(65536)
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLWantReadError:
                data = None
            except ssl.SSLError as e:
                return plain, f"alert: {e}"
            if data == b"":  # the peer's close_notify: then only the TCP FIN may follow
                rest, how = read_to_eof(self.sock, max(0.1, deadline - time.monotonic()))
                return plain, "close_notify" if how == "eof" and not rest else f"close_notify, then {how} {rest!r}"
            if data:
                plain += data
                continue
            if time.monotonic() > deadline:
                return plain, "timeout"
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return plain, "timeout"
            except ConnectionResetError:
                return plain, "reset"
            if not data:
                return plain, "eof"
            self.incoming.write(data)

    def close(self):
        self.sock.close()


def tether_load_bin() -> pathlib.Path:
    env = os.environ.get("TETHER_LOAD_BIN")
    if env:
        if not os.path.isfile(env):
            pytest.fail(f"TETHER_LOAD_BIN={env} is not a file")
        return pathlib.Path(env)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("release", "debug"):
        if (target / profile / "tether-load").is_file():
            return target / profile / "tether-load"
    pytest.fail("tether-load not found: set TETHER_LOAD_BIN or `cargo build --release -p tether-load`")


# --- 1. Python websockets over wss:// ----------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None])
def test_python_websockets_echo_over_wss(tetherd, compression):
    srv = tetherd()
    msgs = messages()
    burst = [text_of(300 + i) if i % 2 else os.urandom(3000 + i) for i in range(20)]

    async def go():
        # The URL names the address; the certificate is checked against the name "localhost" (its DNS SAN).
        async with connect(f"wss://127.0.0.1:{port_of(srv)}/py", ssl=client_ctx(), server_hostname="localhost",
                           compression=compression, max_size=None, open_timeout=10, close_timeout=10,
                           ping_interval=None) as ws:
            ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            peer = ws.transport.get_extra_info("peercert")
            version = ws.transport.get_extra_info("ssl_object").version()
            await echo(ws, msgs)
            # Twenty messages in flight at once: echoed whole and in order.
            for m in burst:
                await ws.send(m)
            for i, m in enumerate(burst):
                got = await asyncio.wait_for(ws.recv(), 15)
                assert got == m, f"burst message {i}: a {describe(m)} came back as a {describe(got)}"
            await ws.close(1000, "bye")
            return ext, peer, version, ws

    ext, peer, version, ws = run_bounded(go(), 60)
    assert common_name(peer) == "localhost", peer
    assert version in ("TLSv1.3", "TLSv1.2"), version
    if compression:
        assert ext.startswith("permessage-deflate"), f"Sec-WebSocket-Extensions: {ext!r}"
    else:
        assert ext == "", f"no offer, yet Sec-WebSocket-Extensions: {ext!r}"
    # Our Close 1000 went out first and the server answered with 1000.
    assert ws.protocol.close_sent is not None and ws.protocol.close_sent.code == 1000, ws.protocol.close_sent
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000, ws.protocol.close_rcvd
    assert ws.protocol.close_rcvd_then_sent is False
    wait_until(lambda: [line for line in srv.close_lines() if " code=1000 " in line and "initiator=peer" in line],
               10, "tetherd's close line code=1000 initiator=peer")
    closes = srv.close_lines()
    assert len(closes) == 1, closes
    m = metrics(srv)
    assert m["messages_in_total"] == len(msgs) + len(burst), m
    assert m["tls_failures_total"] == 0, m


def test_server_initiated_close_over_wss_is_clean(tetherd):
    """SIGTERM: tetherd sends Close 1001 over TLS, the client answers, tetherd exits 0 after the drain."""
    srv = tetherd("--drain-timeout", "5s")

    async def go():
        async with connect(f"wss://localhost:{port_of(srv)}/", ssl=client_ctx(), open_timeout=10,
                           close_timeout=10, ping_interval=None) as ws:
            await echo(ws, ["before the drain"])
            srv.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 10)
            return ws

    ws = run_bounded(go(), 30)
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None and (rcvd.code, rcvd.reason) == (1001, "server shutting down"), rcvd
    assert ws.protocol.close_rcvd_then_sent is True  # the server's Close first, ours answered it
    assert srv.proc.wait(timeout=15) == 0, "\n".join(srv.log[-20:])


def test_tls12_and_the_ip_address_name(tetherd):
    srv = tetherd()

    async def one(url, ctx, **kwargs):
        async with connect(url, ssl=ctx, open_timeout=10, close_timeout=10, ping_interval=None, **kwargs) as ws:
            await echo(ws, [text_of(70000), os.urandom(70000)])
            return ws.transport.get_extra_info("ssl_object").version()

    port = port_of(srv)
    # TLS 1.2 (the server offers 1.3 and 1.2).
    assert run_bounded(one(f"wss://localhost:{port}/", client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)),
                       20) == "TLSv1.2"
    # The name checked is the address itself: the certificate's IP SAN 127.0.0.1 (no SNI is sent for it).
    assert run_bounded(one(f"wss://127.0.0.1:{port}/", client_ctx()), 20) == "TLSv1.3"


def test_session_resumption(tetherd):
    """A session from one connection resumes on the next (TLS 1.3 tickets, TLS 1.2 session ids / tickets),
    and the resumed connection serves requests."""
    srv = tetherd()
    port = port_of(srv)
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_ctx(maximum_version=version)
        session = None
        for attempt in range(3):
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="localhost", session=session) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                got, how = read_to_eof(s, 10)
                assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nok\n"), (version, got, how)
                if attempt:
                    assert s.session_reused, f"{version.name}: attempt {attempt} did not resume its session"
                session = s.session
    assert metrics(srv)["tls_failures_total"] == 0


def test_https_requests_share_one_kept_alive_connection(tetherd):
    """HTTP/1.1 keep-alive inside TLS: three requests on one connection (the stdlib's client keeps its socket
    only while the server keeps the connection), answered in order."""
    srv = tetherd()
    conn = http.client.HTTPSConnection("127.0.0.1", port_of(srv), context=client_ctx(), timeout=10)
    try:
        sockets = []
        for path, status in (("/healthz", 200), ("/nope", 404), ("/healthz", 200)):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert (resp.status, resp.getheader("Connection")) == (status, "keep-alive"), (path, resp.status, body)
            sockets.append(conn.sock)
        assert sockets[0] is not None and all(s is sockets[0] for s in sockets), "a new connection per request"
    finally:
        conn.close()


# --- 2. Node ws over wss:// ----------------------------------------------------------------------------------


def run_node_tls(url: str, ca, deflate: bool) -> dict:
    node = os.environ.get("NODE_BIN") or shutil.which("node")
    if not node:
        pytest.fail("node not found on PATH (or set NODE_BIN): run `bash tests/node/setup.sh`")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").is_file():
        pytest.fail("tests/node/node_modules is missing: run `bash tests/node/setup.sh` first")
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_EXTRA_CA_CERTS", "NODE_TLS_REJECT_UNAUTHORIZED")}
    p = subprocess.run(
        [node, str(NODE_DIR / "tls_echo.mjs"), json.dumps({"url": url, "ca": str(ca) if ca else None,
                                                            "deflate": deflate})],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=40, env=env,
    )
    lines = p.stdout.strip().splitlines()
    assert lines, f"no output (exit {p.returncode}); stderr: {p.stderr[-2000:]}"
    out = json.loads(lines[-1])
    out["returncode"] = p.returncode
    out["stderr"] = p.stderr[-2000:]
    return out


@pytest.mark.parametrize("deflate", [True, False], ids=["deflate", "no-deflate"])
def test_node_ws_echo_over_wss(tetherd, deflate):
    srv = tetherd()
    url = f"wss://localhost:{port_of(srv)}/node"
    out = run_node_tls(url, CA, deflate)
    why = f"{out}\ntetherd log:\n" + "\n".join(srv.log[-20:])
    assert out["ok"] and out["returncode"] == 0, why
    assert out["echoed"] == out["expected"] == 14 and out["code"] == 1000, why
    assert out["peer"]["cn"] == "localhost" and out["peer"]["authorized"] is True, why
    assert out["peer"]["protocol"] == "TLSv1.3", why
    if deflate:
        assert out["extensions"].startswith("permessage-deflate"), why
    else:
        assert out["extensions"] == "", why
    wait_until(lambda: [line for line in srv.close_lines() if " code=1000 " in line and "initiator=peer" in line],
               10, "tetherd's close line code=1000 initiator=peer")


def test_node_ws_without_the_ca_refuses_the_server(tetherd):
    """The negative control of the test above: without `ca`, Node does not trust the test CA."""
    srv = tetherd()
    out = run_node_tls(f"wss://localhost:{port_of(srv)}/node", None, True)
    assert not out["ok"] and out["echoed"] == 0, out
    # OpenSSL's verdict on a leaf whose issuer is not among the roots (the server sends the leaf only).
    assert out["error"].split()[0] in ("UNABLE_TO_VERIFY_LEAF_SIGNATURE", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"), out
    # Node checks the certificate once the TLS handshake is over, then drops the socket without an alert: to
    # the server, a connection that went away before its upgrade request.
    m = wait_metric(srv, "closed_by_reason_total{abnormal}", 1)
    assert m["messages_in_total"] == 0 and m["websockets_open"] == 0, m


# --- 3. Chromium over wss:// ---------------------------------------------------------------------------------

BROWSER_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>tether wss test</title>
<pre id="out">running</pre>
<script>
// Opens the wss:// URL in ?ws=, sends text and binary messages (one over 64 KiB each, one empty), checks each
// echo, closes with 1000 and POSTs what it saw to /report.
const q = new URLSearchParams(location.search);
const report = { events: [], extensions: null, protocol: null, echoed: 0, mismatch: null, code: null, clean: null };
let reported = false;
function done(outcome) {
  if (reported) return;
  reported = true;
  report.outcome = outcome;
  document.getElementById("out").textContent = outcome;
  fetch("/report", { method: "POST", body: JSON.stringify(report) });
}
setTimeout(() => done("timeout"), Number(q.get("deadline_ms") || 20000));
function randomBytes(n) {
  const a = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(a.subarray(i, Math.min(n, i + 65536)));
  return a;
}
const sent = ["hello over wss", "", "wss über TLS ✓ 🐎 ".repeat(5000), randomBytes(1), randomBytes(200000),
              new TextEncoder().encode("x".repeat(100000))];
function same(want, got) {
  if (typeof want === "string") return typeof got === "string" && got === want;
  if (!(got instanceof ArrayBuffer) || got.byteLength !== want.byteLength) return false;
  const g = new Uint8Array(got);
  for (let i = 0; i < want.length; i++) if (g[i] !== want[i]) return false;
  return true;
}
const ws = new WebSocket(q.get("ws"));
ws.binaryType = "arraybuffer";
ws.onopen = () => {
  report.events.push("open");
  report.extensions = ws.extensions;
  report.protocol = ws.protocol;
  for (const m of sent) ws.send(m);
};
ws.onmessage = (e) => {
  const want = sent[report.echoed];
  if (!same(want, e.data)) {
    report.mismatch = `message ${report.echoed}: ${typeof e.data} ${e.data.length ?? e.data.byteLength}`;
    ws.close(4000, "mismatch");
    return;
  }
  report.echoed += 1;
  if (report.echoed === sent.length) ws.close(1000, "done");
};
ws.onerror = () => report.events.push("error");
ws.onclose = (e) => {
  report.events.push(`close:${e.code}`);
  report.code = e.code;
  report.clean = e.wasClean;
  done(report.echoed === sent.length ? "done" : "failed");
};
</script>
"""


def spki_sha256(cert_pem: pathlib.Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a certificate, what Chromium's
    --ignore-certificate-errors-spki-list takes: the 7th field of the TBSCertificate (6th without a version)."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.read_text())

    def tlv(at: int) -> tuple[int, int, int]:
        tag, n = der[at], der[at + 1]
        at += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(der[at:at + k], "big")
            at += k
        return tag, at, at + n

    _, tbs_at, _ = tlv(0)
    _, at, tbs_end = tlv(tbs_at)
    fields = []
    while at < tbs_end:
        tag, _, end = tlv(at)
        fields.append((tag, at, end))
        at = end
    if fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    _, start, end = fields[5]  # serial, signature, issuer, validity, subject, subjectPublicKeyInfo
    return base64.b64encode(hashlib.sha256(der[start:end]).digest()).decode()


class PageServer:
    """Loopback HTTP server: / answers BROWSER_PAGE, POST /report queues the page's JSON report."""

    def __init__(self):
        self.reports: "queue.Queue[dict]" = queue.Queue()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status, ctype, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.split("?")[0] == "/":
                    self.answer(200, "text/html; charset=utf-8", BROWSER_PAGE.encode())
                else:
                    self.answer(404, "text/plain", b"not found\n")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/report":
                    outer.reports.put(json.loads(body))
                self.answer(200, "text/plain", b"thanks\n")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_chromium_echo_over_wss(tetherd):
    srv = tetherd()
    pages = PageServer()
    ws_url = f"wss://localhost:{port_of(srv)}/browser"
    url = f"{pages.origin}/?" + urllib.parse.urlencode({"ws": ws_url, "deadline_ms": 20000})
    # Chromium does not know the test CA: it is told to let through a chain that holds exactly this key (any
    # other key, e.g. reloaded.crt's, is still refused: the page then reports an error and a 1006).
    try:
        report = page_report(url, pages.reports, 40, [f"--ignore-certificate-errors-spki-list={spki_sha256(LEAF_CRT)}"],
                             prefix="tether-tls-chromium-", context=lambda: "tetherd log:\n" + "\n".join(srv.log[-20:]))
    finally:
        pages.close()
    why = f"page report: {report}\ntetherd log:\n" + "\n".join(srv.log[-20:])
    assert report["outcome"] == "done", why
    assert report["echoed"] == 6 and report["mismatch"] is None, why
    assert report["events"] == ["open", "close:1000"], why
    assert report["code"] == 1000 and report["clean"] is True, why
    # Chromium offers permessage-deflate with client_max_window_bits; tetherd's default (shared) mode answers.
    assert report["extensions"].startswith("permessage-deflate"), why
    assert "server_no_context_takeover" in report["extensions"], why
    wait_until(lambda: [line for line in srv.close_lines() if " code=1000 " in line and "initiator=peer" in line],
               10, "tetherd's close line code=1000 initiator=peer")
    m = metrics(srv)
    assert m["tls_handshakes_total"] >= 2 and m["tls_failures_total"] == 0, m  # the browser's, and this fetch


# --- 4. plaintext on the TLS port ----------------------------------------------------------------------------


def test_plaintext_http_on_the_tls_port_gets_400(tetherd):
    srv = tetherd()
    port = port_of(srv)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got, how = read_to_eof(s, 10)
    assert how == "eof", (got, how)
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 400 Bad Request", got
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    assert headers[b"connection"] == b"close", got
    assert headers[b"content-length"] == str(len(PLAIN_HTTP_BODY)).encode(), got
    assert body == PLAIN_HTTP_BODY, got

    # A ws:// client (websockets, plain TCP) on the TLS port: the same 400, so the upgrade fails clearly.
    async def plain_ws():
        with pytest.raises(InvalidStatus) as err:
            async with connect(f"ws://127.0.0.1:{port}/", open_timeout=10):
                pass
        return err.value.response

    resp = run_bounded(plain_ws(), 20)
    assert resp.status_code == 400 and resp.body == PLAIN_HTTP_BODY, (resp.status_code, resp.body)
    m = wait_metric(srv, "tls_plain_http_total", 2)
    assert m["tls_failures_total"] == 0, m


# --- 5. stalled, fragmented and garbage handshakes ---------------------------------------------------------


def test_stalled_handshakes_are_closed_at_the_deadline(tetherd):
    srv = tetherd("--handshake-timeout", "1s")
    port = port_of(srv)
    baseline = metrics(srv)["connections_open"]  # this fetch's own connection
    hello = client_hello()
    # Stalls: 20 bytes of a ClientHello; a whole ClientHello and then silence (the server has answered with its
    # flight and waits for the client's Finished); a finished TLS handshake with no HTTP request.
    partial = socket.create_connection(("127.0.0.1", port), timeout=10)
    partial.sendall(hello[:20])
    whole = socket.create_connection(("127.0.0.1", port), timeout=10)
    whole.sendall(hello)
    silent = RawTls(port).handshake()
    try:
        got_partial, how_partial = read_to_eof(partial, 10)
        got_whole, how_whole = read_to_eof(whole, 10)
        plain_silent, how_silent = silent.read_all(10)
    finally:
        partial.close()
        whole.close()
        silent.close()
    assert (got_partial, how_partial) == (b"", "eof"), "20 bytes of a ClientHello: closed, nothing sent"
    assert how_whole == "eof" and got_whole[:3] == b"\x16\x03\x03", f"a whole ClientHello: {got_whole[:16]} {how_whole}"
    # Past the TLS handshake, the upgrade deadline is answered as on plain TCP, encrypted, then close_notify.
    assert plain_silent.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), plain_silent
    assert how_silent == "close_notify", how_silent
    m = wait_metric(srv, "handshake_timeouts_total", 3)
    wait_metric(srv, "connections_open", baseline)
    assert m["tls_handshakes_total"] >= 2, m  # the silent one and the metrics fetches


def sslv2_client_hello() -> bytes:
    """An SSLv2-format ClientHello (what very old clients sent first): 2-byte header with the top bit set."""
    ciphers = bytes.fromhex("0700c0" "050080" "030080" "010080" "060040" "040080" "020080")
    body = b"\x01\x03\x01" + struct.pack("!HHH", len(ciphers), 0, 16) + ciphers + os.urandom(16)
    return struct.pack("!H", 0x8000 | len(body)) + body


def test_garbage_is_closed_and_the_server_keeps_serving(tetherd):
    srv = tetherd()  # the handshake deadline is 10 s: a close before it is the garbage's doing
    port = port_of(srv)
    payloads = {
        "random bytes": b"\x00" + os.urandom(300),
        "a record longer than TLS allows": b"\x16\x03\x01\xff\xff" + bytes(64),
        "application data before any handshake": b"\x17\x03\x03\x00\x10" + os.urandom(16),
        "a handshake record that is not a ClientHello": b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
        "an SSLv2-format ClientHello": sslv2_client_hello(),
    }
    for name, payload in payloads.items():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(payload)
            got, how = read_to_eof(s, 5)
        assert how in ("eof", "reset"), f"{name}: still open after 5 s ({got[:16]!r})"
        assert not got or got[0] == 0x15, f"{name}: answered {got[:32]!r} (only a TLS alert may come back)"
    m = wait_metric(srv, "tls_failures_total", len(payloads))
    assert m["handshake_timeouts_total"] == 0, m

    async def good():
        async with connect(f"wss://localhost:{port}/", ssl=client_ctx(), open_timeout=10, ping_interval=None) as ws:
            await echo(ws, ["still serving", os.urandom(100000)])

    run_bounded(good(), 20)
    assert srv.proc.poll() is None


def test_fragmented_handshake_and_trickled_records(tetherd):
    """The ClientHello split over three TLS records, and every byte the client sends (handshake, upgrade,
    frames, close) trickled 7 bytes per TCP segment: the server reassembles all of it."""
    srv = tetherd()

    hello_split = False

    def trickle(data: bytes):
        nonlocal hello_split
        if not hello_split:  # the first flight is the ClientHello record: re-cut it into three records
            hello_split = True
            ln = struct.unpack("!H", data[3:5])[0]
            body, rest = data[5:5 + ln], data[5 + ln:]
            cuts = [0, 40, 41, ln]
            data = b"".join(data[:3] + struct.pack("!H", b - a) + body[a:b] for a, b in zip(cuts, cuts[1:])) + rest
        for i in range(0, len(data), 7):
            raw.sock.sendall(data[i:i + 7])
            time.sleep(0.0005)

    raw = RawTls(port_of(srv), send_wire=trickle)
    try:
        raw.handshake()
        payload = os.urandom(2000)
        raw.send(UPGRADE + client_frame(0x2, payload) + client_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        plain, how = raw.read_all(20)
    finally:
        raw.close()
    head, _, frames = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and ACCEPT in head, plain[:200]
    echo_frame = b"\x82\x7e" + struct.pack("!H", len(payload)) + payload
    assert frames.startswith(echo_frame), frames[:40]
    close = frames[len(echo_frame):]
    assert close[0] == 0x88 and close[2:4] == b"\x03\xe8" and len(close) == 2 + close[1], close  # Close 1000
    assert how == "close_notify", how


def test_pipelined_upgrade_and_frames_in_one_record(tetherd):
    """The upgrade request, a text frame and a Close in one TLS record right after the handshake: 101, the
    echo and the Close answer in order, then the server's close_notify."""
    srv = tetherd()
    raw = RawTls(port_of(srv)).handshake()
    try:
        raw.send(UPGRADE + client_frame(0x1, b"pipelined") + client_frame(0x8, struct.pack("!H", 1000)))
        plain, how = raw.read_all(10)
    finally:
        raw.close()
    head, _, frames = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and ACCEPT in head, plain[:200]
    assert frames == b"\x81\x09pipelined\x88\x02\x03\xe8", frames
    assert how == "close_notify", how


def test_one_byte_records_and_an_oversized_request(tetherd):
    """Every plaintext byte in a TLS record of its own (upgrade, a 500-byte frame, a Close): reassembled; and an
    upgrade request past --max-handshake-size is answered 431 inside TLS, then close_notify."""
    srv = tetherd("--max-handshake-size", "1KiB")
    port = port_of(srv)
    raw = RawTls(port).handshake()
    try:
        payload = os.urandom(500)
        for b in UPGRADE + client_frame(0x2, payload) + client_frame(0x8, struct.pack("!H", 1000)):
            raw.obj.write(bytes([b]))
        raw.flush()
        plain, how = raw.read_all(10)
    finally:
        raw.close()
    head, _, frames = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and ACCEPT in head, plain[:200]
    assert frames == b"\x82\x7e" + struct.pack("!H", 500) + payload + b"\x88\x02\x03\xe8", frames[:40]
    assert how == "close_notify", how

    raw = RawTls(port).handshake()
    try:
        raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
        plain, how = raw.read_all(10)
    finally:
        raw.close()
    assert plain.startswith(b"HTTP/1.1 431 "), plain[:100]
    assert how == "close_notify", how


def test_server_pings_over_wss(tetherd):
    """tetherd's keepalive inside TLS: a client that answers pings (websockets does, by itself) stays through
    them; one that never answers gets Close 1011 "pong timeout", then the server's close_notify."""
    srv = tetherd("--ping-interval", "500ms", "--pong-timeout", "2s")
    port = port_of(srv)
    deaf = RawTls(port).handshake()
    try:
        deaf.send(UPGRADE)

        async def answering():
            async with connect(f"wss://localhost:{port}/", ssl=client_ctx(), open_timeout=10, ping_interval=None) as ws:
                await asyncio.sleep(2.2)  # about 4 server pings at a 500 ms interval
                await echo(ws, ["still here"])

        run_bounded(answering(), 20)
        plain, how = deaf.read_all(10)
    finally:
        deaf.close()
    head, _, frames = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), plain[:100]
    assert frames[:1] == b"\x89", f"the deaf client got no ping first: {frames[:20]!r}"
    assert frames.endswith(b"\x88\x0e\x03\xf3pong timeout"), frames[-40:]
    assert how == "close_notify", how
    m = wait_metric(srv, "pong_timeouts_total", 1)
    assert m["pongs_received_total"] >= 2 and m["pings_sent_total"] >= m["pongs_received_total"], m


def test_corrupted_record_closes_with_an_alert(tetherd):
    srv = tetherd()
    raw = RawTls(port_of(srv)).handshake()
    try:
        raw.obj.write(UPGRADE)
        record = bytearray(raw.outgoing.read())
        record[-3] ^= 0x01  # inside the AEAD tag
        raw.sock.sendall(bytes(record))
        plain, how = raw.read_all(10)
    finally:
        raw.close()
    assert b"101" not in plain, plain
    assert how.startswith("alert:") or how in ("eof", "reset"), how
    wait_metric(srv, "tls_failures_total", 1)
    assert srv.proc.poll() is None


def test_client_close_notify_is_answered_with_close_notify(tetherd):
    """RFC 8446 section 6.1 (and RFC 5246 7.2.1): each party MUST send a close_notify before closing its write
    side. A client that ends its TLS session with close_notify (an open WebSocket, no Close frame) gets the
    server's close_notify before the TCP FIN."""
    srv = tetherd()
    raw = RawTls(port_of(srv)).handshake()
    try:
        raw.send(UPGRADE)
        head = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in head and time.monotonic() < deadline:
            try:
                head += raw.obj.read(65536)
            except ssl.SSLWantReadError:
                raw.incoming.write(raw.sock.recv(65536))
        assert head.startswith(b"HTTP/1.1 101 "), head
        with pytest.raises(ssl.SSLWantReadError):
            raw.obj.unwrap()  # our close_notify goes out; then we wait for the server's
        raw.flush()
        plain, how = raw.read_all(10)
    finally:
        raw.close()
    assert how == "close_notify", f"after the client's close_notify the server ended with: {how} ({plain!r})"


# --- 6. clients that do not trust the server -----------------------------------------------------------------


def test_untrusted_and_misnamed_clients_fail_and_are_counted(tetherd):
    srv = tetherd()
    port = port_of(srv)
    other = client_ctx(OTHER_CA)
    with pytest.raises(ssl.SSLCertVerificationError) as err:
        with other.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"):
            pass
    assert err.value.verify_code == 20, err.value  # unable to get local issuer certificate
    # Trusted issuer, wrong name.
    with pytest.raises(ssl.SSLCertVerificationError) as err:
        with client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                      server_hostname="tether.example"):
            pass
    assert err.value.verify_code == 62, err.value  # hostname mismatch
    # Both clients sent their alert (unknown CA, bad certificate): the server counted two TLS failures.
    wait_metric(srv, "tls_failures_total", 2)

    # websockets over asyncio: the same refusal. (asyncio's TLS transport closes without sending its alert, so
    # the server sees a connection that ended mid-handshake, not a TLS failure: not counted.)
    async def ws_untrusted():
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(f"wss://localhost:{port}/", ssl=other, open_timeout=10):
                pass

    run_bounded(ws_untrusted(), 20)
    assert srv.proc.poll() is None

    async def good():
        async with connect(f"wss://localhost:{port}/", ssl=client_ctx(), open_timeout=10, ping_interval=None) as ws:
            await echo(ws, ["trusted"])

    run_bounded(good(), 20)
    m = wait_metric(srv, "connections_open", 1)  # the fetch itself: nothing left over
    assert m["tls_failures_total"] == 2, m


def test_tls11_client_hello_is_refused_with_an_alert(tetherd):
    """The server speaks TLS 1.2 and 1.3 only: a TLS 1.1 ClientHello gets a fatal alert and a close."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        outgoing = ssl.MemoryBIO()
        obj = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
        obj.do_handshake()
    except ssl.SSLWantReadError:
        hello = outgoing.read()
    except (ValueError, ssl.SSLError) as e:
        pytest.skip(f"this OpenSSL cannot make a TLS 1.1 ClientHello: {e}")
    srv = tetherd()
    with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=10) as s:
        s.sendall(hello)
        got, how = read_to_eof(s, 10)
    assert how in ("eof", "reset"), (got, how)
    # One alert record: level fatal (2), protocol_version (70) or handshake_failure (40).
    assert got[:1] == b"\x15" and got[5:6] == b"\x02" and got[6] in (70, 40), got
    wait_metric(srv, "tls_failures_total", 1)


# --- 7. certificate reload on SIGHUP ------------------------------------------------------------------------


def test_sighup_reloads_the_certificate(tetherd, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"

    def install(crt_text: str, key_text: str):
        # As certificate tools do: write aside, rename over.
        for path, text in ((cert, crt_text), (key, key_text)):
            tmp = path.with_suffix(".new")
            tmp.write_text(text)
            os.replace(tmp, path)

    install(LEAF_CRT.read_text(), LEAF_KEY.read_text())
    srv = tetherd(cert=cert, key=key)
    port = port_of(srv)

    def count(line: str) -> int:
        return sum(1 for entry in srv.log if line in entry)

    async def wait_log(line: str, n: int):
        deadline = time.monotonic() + 10
        while count(line) < n:
            assert time.monotonic() < deadline, f"no {n}x {line!r} in tetherd's log:\n" + "\n".join(srv.log[-20:])
            await asyncio.sleep(0.05)

    async def hup_and_wait(line: str):
        before_ok, before_err = count(RELOADED_LINE), count(NOT_RELOADED_LINE)
        srv.proc.send_signal(signal.SIGHUP)
        await wait_log(line, (before_ok if line == RELOADED_LINE else before_err) + 1)
        await asyncio.sleep(0.1)  # exactly one line per SIGHUP: no second one follows
        assert (count(RELOADED_LINE), count(NOT_RELOADED_LINE)) == (
            (before_ok + 1, before_err) if line == RELOADED_LINE else (before_ok, before_err + 1)
        ), "\n".join(srv.log[-20:])

    async def new_connection_cn() -> str:
        async with connect(f"wss://localhost:{port}/new", ssl=client_ctx(), open_timeout=10, ping_interval=None) as ws:
            await echo(ws, ["new connection"])
            return common_name(ws.transport.get_extra_info("peercert"))

    async def go():
        async with connect(f"wss://localhost:{port}/a", ssl=client_ctx(), open_timeout=10, close_timeout=10,
                           ping_interval=None) as a:
            assert common_name(a.transport.get_extra_info("peercert")) == "localhost"
            await echo(a, ["a before", os.urandom(70000)])

            install(RELOADED_CRT.read_text(), RELOADED_KEY.read_text())
            await hup_and_wait(RELOADED_LINE)
            assert await new_connection_cn() == "localhost reloaded"
            await echo(a, ["a after the reload", os.urandom(70000)])  # the open one keeps its session

            # Bad files: each SIGHUP logs one error and the reloaded certificate stays in force.
            bad = [
                (RELOADED_CRT.read_text(), "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"),
                (RELOADED_CRT.read_text(), LEAF_KEY.read_text()),  # a key that is not the certificate's
                ("not a certificate\n", RELOADED_KEY.read_text()),
            ]
            for crt_text, key_text in bad:
                install(crt_text, key_text)
                await hup_and_wait(NOT_RELOADED_LINE)
                assert await new_connection_cn() == "localhost reloaded"
            key.unlink()  # a missing file
            await hup_and_wait(NOT_RELOADED_LINE)
            assert await new_connection_cn() == "localhost reloaded"

            # Good files again: reloading still works after the failures.
            install(LEAF_CRT.read_text(), LEAF_KEY.read_text())
            await hup_and_wait(RELOADED_LINE)
            assert await new_connection_cn() == "localhost"
            await echo(a, ["a at the end"])
            await a.close(1000)
            return a

    a = run_bounded(go(), 60)
    assert a.protocol.close_rcvd is not None and a.protocol.close_rcvd.code == 1000
    errors = [line for line in srv.log if NOT_RELOADED_LINE in line]
    assert len(errors) == 4 and all(" ERROR " in line for line in errors), errors
    assert srv.proc.poll() is None


# --- 8. tether-load over wss:// -----------------------------------------------------------------------------


def run_load(tmp_path, port: int, *args: str) -> dict:
    report = tmp_path / f"load-{time.monotonic_ns()}.json"
    cmd = [str(tether_load_bin()), "run", "--url", f"wss://localhost:{port}/", "--tls-ca", str(CA),
           *args, "--quiet", "--strict", "--json", str(report)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    why = f"{' '.join(cmd)}\nexit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    assert report.is_file(), f"no report: {why}"
    return {"report": json.loads(report.read_text()), "code": p.returncode, "why": why}


def check_load(run: dict, connections: int, messages: bool):
    r, why = run["report"], run["why"]
    assert run["code"] == 0, why  # --strict: no failed, dropped or unclean connection
    assert r["connections"]["established"] == connections and r["connections"]["failed"] == 0, why
    assert r["connections"]["errors"] == {}, why
    assert r["messages"]["final_sent"] == r["messages"]["final_echoed"] == connections, why
    if messages:
        assert r["messages"]["sent"] > 0 and r["messages"]["echoed"] == r["messages"]["sent"], why
        assert r["pings"]["sent"] > 0 and r["pings"]["answered"] == r["pings"]["sent"], why
    assert r["drops"]["total"] == 0, why
    assert r["closes"] == {"clean": connections, "unclean": 0, "left_open": 0}, why


def test_tether_load_over_wss(tetherd, tmp_path):
    srv = tetherd()
    run = run_load(tmp_path, port_of(srv), "--connections", "500", "--rate", "1000", "--duration", "2s",
                   "--ping-interval", "1s", "--message-rate", "2", "--final-echo")
    check_load(run, 500, messages=True)
    m = metrics(srv)
    assert m["tls_handshakes_total"] >= 501 and m["tls_failures_total"] == 0, m


def test_tether_load_with_one_tls_handshake_step_per_loop(tetherd, tmp_path):
    srv = tetherd("--tls-handshakes-per-loop", "1", "--shards", "1")
    # All 500 at once (20,000/s, tether-load's default): many ClientHellos wait in the one shard's loop together.
    run = run_load(tmp_path, port_of(srv), "--connections", "500", "--rate", "20000", "--duration", "1s",
                   "--ping-interval", "0", "--final-echo")
    check_load(run, 500, messages=False)
    m = metrics(srv)
    assert m["tls_handshakes_total"] >= 501 and m["tls_failures_total"] == 0, m
    assert m["tls_handshakes_deferred_total"] > 0, f"500 handshakes, one step per loop, none deferred: {m}"
    assert m["handshake_timeouts_total"] == 0, m


# --- 9. the gateway over wss:// ------------------------------------------------------------------------------


def test_gateway_sdk_over_wss(tmp_path):
    from cent import Client as ApiClient, PublishRequest

    from gateway_util import API_KEY, BASE_CONFIG, Harness, call_api, subscribed, unique

    config = tmp_path / "gateway.json"
    config.write_text(json.dumps(BASE_CONFIG))
    srv = Tetherd("--gateway", str(config), "--tls-cert", str(LEAF_CRT), "--tls-key", str(LEAF_KEY))
    try:
        port = port_of(srv)
        gw = types.SimpleNamespace(ws_url=f"wss://localhost:{port}/connection/websocket", addr=srv.addr)
        session = requests.Session()
        session.trust_env = False
        session.verify = str(CA)
        api = ApiClient(f"https://localhost:{port}/api", API_KEY, timeout=5, session=session)
        channel = unique("chat:tls")

        async def go():
            async with Harness(gw) as h:
                alice, rec_a = await h.connected("alice", ssl_context=client_ctx())
                bob, rec_b = await h.connected("bob", ssl_context=client_ctx())
                sub_a, _ = await subscribed(alice, rec_a, channel)
                sub_b, _ = await subscribed(bob, rec_b, channel)
                await asyncio.wait_for(sub_b.publish({"from": "bob", "text": "über wss ✓" * 200}), 10)
                await call_api(api, PublishRequest(channel=channel, data={"from": "api"}))
                pubs = await rec_a.wait("publication", channel, count=2, timeout=10)
                return [p.pub.data for p in pubs], [p.pub.offset for p in pubs]

        data, offsets = run_bounded(go(), 40)
        assert data == [{"from": "bob", "text": "über wss ✓" * 200}, {"from": "api"}], data
        assert offsets == [1, 2], offsets
        m = metrics(srv)
        assert m["tls_failures_total"] == 0 and m["tls_handshakes_total"] >= 3, m
    finally:
        srv.stop()
