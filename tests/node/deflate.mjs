// permessage-deflate with Node's `ws` (perMessageDeflate on, its default client offer; and off) against
// tetherd's echo. Driven by tests/python/test_deflate_node.py: argv[2] is JSON {url, deflate}. Prints one JSON
// line {ok, extensions, echoed} and exits non-zero on any mismatch. Bounded at 30 s.
import WebSocket from "ws";
import crypto from "node:crypto";

const args = JSON.parse(process.argv[2]);
setTimeout(() => {
  console.log(JSON.stringify({ ok: false, error: "timeout" }));
  process.exit(2);
}, 30_000).unref();

function messages() {
  const doc = JSON.stringify({ channel: "news", data: Array.from({ length: 40 }, (_, i) => ({ id: i, text: "lorem ipsum" })) });
  return [
    "tiny",
    "y".repeat(64),
    doc,
    Buffer.from(doc),
    crypto.randomBytes(3000),
    "žluťoučký kůň 🐎 ".repeat(500),
    Buffer.alloc(500_000, 7),
  ];
}

function same(a, b) {
  if (typeof a === "string") return typeof b === "string" && a === b;
  return Buffer.isBuffer(b) && Buffer.compare(a, b) === 0;
}

const ws = new WebSocket(args.url, { perMessageDeflate: args.deflate });
const sent = [];
for (let round = 0; round < 3; round++) sent.push(...messages());
let echoed = 0;
let answer = ""; // the 101's Sec-WebSocket-Extensions
ws.on("upgrade", (res) => {
  answer = res.headers["sec-websocket-extensions"] ?? "";
});
ws.on("open", () => {
  for (const m of sent) ws.send(m, { binary: typeof m !== "string" });
});
ws.on("message", (data, isBinary) => {
  const got = isBinary ? Buffer.from(data) : data.toString("utf8");
  const want = sent[echoed];
  if (!same(want, got)) {
    console.log(JSON.stringify({ ok: false, error: `message ${echoed} differs`, extensions: answer }));
    process.exit(1);
  }
  echoed += 1;
  if (echoed === sent.length) ws.close(1000, "done");
});
ws.on("close", (code) => {
  const ok = echoed === sent.length && code === 1000;
  console.log(JSON.stringify({ ok, code, echoed, extensions: answer }));
  process.exit(ok ? 0 : 1);
});
ws.on("error", (e) => {
  console.log(JSON.stringify({ ok: false, error: String(e) }));
  process.exit(1);
});
