// Peer echo server: Bun (uWebSockets inside), the way Bun's docs write one: every text and binary message
// echoed, pings answered by the runtime.
//
//   bun echo.js --listen 127.0.0.1:9005 [--threads 1]
//
// Bun runs JavaScript on one thread; `--threads` is accepted for a uniform command line with the other peers
// and must be 1.
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
const server = Bun.serve({
  hostname: args.host,
  port: args.port,
  fetch(req, server) {
    if (server.upgrade(req)) return;
    return new Response('upgrade required\n', { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 16 * 1024 * 1024,
    idleTimeout: 120,
    message(ws, message) {
      ws.send(message);
    },
  },
});
console.log(`bun echo listening on ${args.host}:${server.port}`);
