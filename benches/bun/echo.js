// Peer echo server: Bun (uWebSockets inside), the way Bun's docs write one: every text and binary message
// echoed, pings answered by the runtime.
//
//   bun echo.js --listen 127.0.0.1:9005 [--threads 1]
//
// Bun runs JavaScript on one thread; `--threads` is accepted for a uniform command line with the other peers
// and must be 1.
//
// Environment (both off by default):
//   TLS_CERT=FILE TLS_KEY=FILE  serve wss:// (Bun.serve's `tls: {cert, key}`, BoringSSL inside)
//   DEFLATE=1                   permessage-deflate (`perMessageDeflate: true`: uWebSockets' shared compressor, no
//                               context takeover) and every echo sent compressed (`ws.send(message, true)`: Bun
//                               compresses a send only when asked)
function parseArgs(argv) {
  const args = { listen: '127.0.0.1:9005', threads: 1 };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split('=', 2);
    if (flag === '--listen' || flag === '--threads') {
      if (value === undefined) value = argv[++i];
      if (value === undefined) throw new Error(`${flag} needs a value`);
      args[flag.slice(2)] = value;
    } else {
      throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (Number(args.threads) !== 1) throw new Error('--threads: Bun runs JavaScript on one thread, use 1');
  const colon = args.listen.lastIndexOf(':');
  args.host = args.listen.slice(0, colon).replace(/^\[|\]$/g, '');
  args.port = Number(args.listen.slice(colon + 1));
  return args;
}

const args = parseArgs(process.argv.slice(2));
const deflate = process.env.DEFLATE === '1';
if (!process.env.TLS_CERT !== !process.env.TLS_KEY) throw new Error('TLS_CERT and TLS_KEY go together');
const tls = process.env.TLS_CERT
  ? { tls: { cert: Bun.file(process.env.TLS_CERT), key: Bun.file(process.env.TLS_KEY) } }
  : {};
const server = Bun.serve({
  hostname: args.host,
  port: args.port,
  ...tls,
  fetch(req, server) {
    if (server.upgrade(req)) return;
    return new Response('upgrade required\n', { status: 426 });
  },
  websocket: {
    perMessageDeflate: deflate,
    maxPayloadLength: 16 * 1024 * 1024,
    idleTimeout: 120,
    message: deflate
      ? (ws, message) => {
          ws.send(message, true);
        }
      : (ws, message) => {
          ws.send(message);
        },
  },
});
console.log(
  `bun echo listening on ${args.host}:${server.port}${process.env.TLS_CERT ? ' (tls)' : ''}${deflate ? ' (deflate)' : ''}`,
);
