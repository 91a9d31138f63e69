// Peer echo server: Node.js + the `ws` package, the way its README writes one.
//
//   node echo-ws.js --listen 127.0.0.1:9004 [--threads 1]
//
// Node runs JavaScript on one thread; `--threads` is accepted for a uniform command line with the other
// peers and must be 1 (spreading over cores would mean the cluster module and several listeners, which is a
// different server). `ws` answers pings itself (autoPong, on by default).
//
// Environment (both off by default):
//   TLS_CERT=FILE TLS_KEY=FILE  serve wss://: the WebSocketServer on an `https.createServer({cert, key})`
//   DEFLATE=1                   permessage-deflate (`perMessageDeflate: true`, ws' defaults: messages under
//                               1024 bytes go uncompressed, zlib runs on libuv's thread pool)
'use strict';

const fs = require('fs');
const https = require('https');
const { WebSocketServer } = require('ws');

function parseArgs(argv) {
  const args = { listen: '127.0.0.1:9004', threads: 1 };
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
  args.threads = Number(args.threads);
  if (args.threads !== 1) throw new Error('--threads: node + ws is single-threaded, use 1');
  const colon = args.listen.lastIndexOf(':');
  args.host = args.listen.slice(0, colon).replace(/^\[|\]$/g, '');
  args.port = Number(args.listen.slice(colon + 1));
  return args;
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (error) {
  console.error(`echo-ws: ${error.message}`);
  console.error('usage: node echo-ws.js [--listen ADDR (default 127.0.0.1:9004)] [--threads 1]');
  process.exit(2);
}

const perMessageDeflate = process.env.DEFLATE === '1';
const { TLS_CERT, TLS_KEY } = process.env;
if (!TLS_CERT !== !TLS_KEY) {
  console.error('echo-ws: TLS_CERT and TLS_KEY go together');
  process.exit(2);
}
let server;
let listener;
if (TLS_CERT) {
  listener = https.createServer({ cert: fs.readFileSync(TLS_CERT), key: fs.readFileSync(TLS_KEY) });
  server = new WebSocketServer({ server: listener, perMessageDeflate });
  listener.listen(args.port, args.host);
} else {
  server = new WebSocketServer({ host: args.host, port: args.port, perMessageDeflate });
  listener = server;
}

server.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  socket.on('error', () => {});
});

listener.on('listening', () => {
  const address = listener.address();
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const modes = `${TLS_CERT ? ' (tls)' : ''}${perMessageDeflate ? ' (deflate)' : ''}`;
  console.log(`listening on ${host}:${address.port}${modes}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
