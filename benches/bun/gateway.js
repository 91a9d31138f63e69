// The Bun peer for the fan-out benchmark: the part of Centrifugo's client protocol v2 (JSON) and server API
// that a fan-out run uses (connect, subscribe, publish; POST /api/publish and /api/broadcast), on Bun.serve's
// WebSocket server and its topic pub/sub (uWebSockets' publish: one message to every subscriber of a topic).
// Each publication is encoded once, like tetherd's. It verifies no tokens and keeps no history or presence:
// it is the cheapest server that speaks the protocol, so tetherd is compared with Bun's best case.
//
//   bun gateway.js            (PORT=9101, API_KEY=k, HOST=127.0.0.1)
const port = Number(process.env.PORT || 9101);
const host = process.env.HOST || '127.0.0.1';
const apiKey = process.env.API_KEY || 'k';
let clients = 0;

function publish(channel, data) {
  server.publish(channel, JSON.stringify({ push: { channel, pub: { data } } }));
}

function reply(ws, lines) {
  if (lines.length) ws.send(lines.join('\n'));
}

const server = Bun.serve({
  hostname: host,
  port,
  async fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === '/connection/websocket') {
      if (server.upgrade(req, { data: { connected: false, subs: 0 } })) return;
      return new Response('upgrade failed', { status: 400 });
    }
    if (url.pathname === '/healthz') return new Response('ok\n');
    if (req.method === 'POST' && url.pathname.startsWith('/api/')) {
      if (req.headers.get('x-api-key') !== apiKey) return new Response('Unauthorized', { status: 401 });
      const method = url.pathname.slice(5);
      const body = await req.json();
      if (method === 'publish') {
        publish(body.channel, body.data);
        return Response.json({ result: {} });
      }
      if (method === 'broadcast') {
        for (const channel of body.channels) publish(channel, body.data);
        return Response.json({ result: { responses: body.channels.map(() => ({ result: {} })) } });
      }
      return Response.json({ error: { code: 104, message: 'method not found' } });
    }
    return new Response('not found\n', { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 65536,
    idleTimeout: 120,
    sendPings: true,
    message(ws, message) {
      const out = [];
      for (const line of String(message).split('\n')) {
        if (!line.trim()) continue;
        let cmd;
        try {
          cmd = JSON.parse(line);
        } catch {
          ws.close(3501, 'bad request');
          return;
        }
        if (cmd.connect) {
          ws.data.connected = true;
          clients++;
          out.push(JSON.stringify({ id: cmd.id, connect: { client: crypto.randomUUID(), version: 'bun-peer' } }));
        } else if (!ws.data.connected) {
          ws.close(3501, 'bad request');
          return;
        } else if (cmd.subscribe) {
          ws.subscribe(cmd.subscribe.channel);
          out.push(JSON.stringify({ id: cmd.id, subscribe: {} }));
        } else if (cmd.unsubscribe) {
          ws.unsubscribe(cmd.unsubscribe.channel);
          out.push(JSON.stringify({ id: cmd.id, unsubscribe: {} }));
        } else if (cmd.publish) {
          publish(cmd.publish.channel, cmd.publish.data);
          out.push(JSON.stringify({ id: cmd.id, publish: {} }));
        } else if (cmd.id) {
          out.push(JSON.stringify({ id: cmd.id, error: { code: 104, message: 'method not found' } }));
        }
      }
      reply(ws, out);
    },
    close(ws) {
      if (ws.data.connected) clients--;
    },
  },
});

console.log(`bun gateway listening on ${host}:${server.port}`);
