// Node's `ws` over wss:// against tetherd's echo. Driven by tests/python/test_tls.py: argv[2] is JSON
// {url, ca, deflate}: `ca` is the PEM file of the CA to trust (null: Node's default roots only), `deflate` the
// client's perMessageDeflate. Prints one JSON line {ok, error, extensions, peer, echoed, expected, code} and
// exits non-zero when something did not match. Bounded at 20 s.
import WebSocket from "ws";
import crypto from "node:crypto";
import fs from "node:fs";

const args = JSON.parse(process.argv[2]);
const result = { ok: false, error: null, extensions: null, peer: null, echoed: 0, expected: 0, code: null };
function finish(ok, error) {
  result.ok = ok;
  result.error = error ?? null;
  console.log(JSON.stringify(result));
  process.exit(ok ? 0 : 1);
}
setTimeout(() => finish(false, "timeout"), 20_000).unref();

// Text of exactly `n` UTF-8 bytes, multi-byte characters included (so records and frames split inside them),
// compressible; binary of `n` random bytes (incompressible: sent as is even with deflate).
function text(n) {
  const unit = Buffer.from("wss über TLS ✓ 🐎 ");
  const buf = Buffer.alloc(n, 0x61);
  let at = 0;
  while (at + unit.length <= n) at += unit.copy(buf, at);
  return buf.toString("utf8");
}
const sizes = [0, 1, 125, 126, 65535, 65536, 256 * 1024];
const sent = [];
for (const n of sizes) {
  sent.push(text(n));
  sent.push(crypto.randomBytes(n));
}
result.expected = sent.length;

function same(a, b) {
  if (typeof a === "string") return typeof b === "string" && a === b;
  return Buffer.isBuffer(b) && Buffer.compare(a, b) === 0;
}

const options = { perMessageDeflate: args.deflate, handshakeTimeout: 10_000 };
if (args.ca) options.ca = fs.readFileSync(args.ca);
const ws = new WebSocket(args.url, options);
ws.on("upgrade", (res) => {
  result.extensions = res.headers["sec-websocket-extensions"] ?? "";
  const sock = res.socket;
  const cert = sock.getPeerCertificate();
  result.peer = { cn: cert?.subject?.CN ?? null, authorized: sock.authorized, protocol: sock.getProtocol() };
});
// One message in flight at a time: each echo is checked before the next goes out.
ws.on("open", () => ws.send(sent[0], { binary: typeof sent[0] !== "string" }));
ws.on("message", (data, isBinary) => {
  const got = isBinary ? Buffer.from(data) : data.toString("utf8");
  const want = sent[result.echoed];
  if (!same(want, got)) {
    finish(false, `message ${result.echoed} (${typeof want}, ${want.length}) came back different (${got.length})`);
  }
  result.echoed += 1;
  if (result.echoed === sent.length) ws.close(1000, "done");
  else ws.send(sent[result.echoed], { binary: typeof sent[result.echoed] !== "string" });
});
ws.on("close", (code) => {
  result.code = code;
  finish(result.echoed === sent.length && code === 1000);
});
ws.on("error", (e) => finish(false, `${e.code ?? ""} ${e.message}`));
