// Shared harness for the gateway scenarios in tests/node/*.mjs (driven by tests/python/test_gateway_js.py).
//
// Each scenario script is started as `node SCRIPT.mjs '<json args>'` with args
//   {addr: "127.0.0.1:PORT", api_key: "...", secret: "...", deadline_ms: N}
// and prints exactly one JSON line on stdout when it ends (however it ends):
//   {"ok": bool, "error": null | "message + stack", "results": {...facts the scenario observed...},
//    "log": [...every SDK event, in order...], "frames": {client label: [{sent:[...], received:[...], close}]}}
// The Python driver asserts on `results` (exact values); `log` and `frames` are there to explain failures.
// Every wait is bounded: `waitFor` throws after its timeout, and the whole script gives up at deadline_ms.

import { createHmac } from 'node:crypto';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

export { Centrifuge };

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

/** An HS256 JWT with the given claims (no exp unless given). */
export function mintToken(secret, claims) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = b64url(createHmac('sha256', secret).update(`${header}.${payload}`).digest());
  return `${header}.${payload}.${sig}`;
}

/** A `ws` WebSocket subclass that records, per client label, every socket the SDK opens: the frames it
 * sends and receives (as text) and how it closed. */
function recordingWebSocket(sockets) {
  return class RecordingWebSocket extends WebSocket {
    constructor(address, protocols, options) {
      super(address, protocols, options);
      const rec = { url: String(address), sent: [], received: [], open: false, close: null };
      this._rec = rec;
      sockets.push(rec);
      this.addEventListener('open', () => {
        rec.open = true;
      });
      this.addEventListener('message', (e) => rec.received.push(String(e.data)));
      this.addEventListener('close', (e) => {
        rec.close = { code: e.code, reason: String(e.reason), wasClean: e.wasClean };
      });
      this.addEventListener('error', (e) => {
        rec.error = String(e && e.message ? e.message : e);
      });
    }

    send(data, ...rest) {
      this._rec.sent.push(String(data));
      return super.send(data, ...rest);
    }
  };
}

/** Splits a recorded frame into its JSON commands/replies (`\n`-joined), parsing each. */
export function frameMessages(frame) {
  return frame
    .trim()
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => {
      try {
        return JSON.parse(line);
      } catch (e) {
        return { unparsable: line };
      }
    });
}

export class Harness {
  constructor(args) {
    this.args = args;
    this.addr = args.addr;
    this.wsUrl = `ws://${args.addr}/connection/websocket`;
    this.results = {};
    this.log = [];
    this.frames = {};
    this.clients = {};
    this._waiters = [];
    this._t0 = Date.now();
  }

  token(user, { secret = this.args.secret, claims = {} } = {}) {
    return mintToken(secret, { sub: user, ...claims });
  }

  event(who, kind, data = {}) {
    const entry = { t: Date.now() - this._t0, who, kind, ...data };
    this.log.push(entry);
    for (const w of this._waiters.slice()) {
      if (w.pred(entry)) {
        this._waiters.splice(this._waiters.indexOf(w), 1);
        w.resolve(entry);
      }
    }
  }

  /** Waits for a log entry (already logged at or after index `from`, or future) matching `pred`. */
  waitFor(pred, timeoutMs, what, from = 0) {
    const found = this.log.slice(from).find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve: (e) => { clearTimeout(timer); resolve(e); } };
      const timer = setTimeout(() => {
        this._waiters.splice(this._waiters.indexOf(w), 1);
        reject(new Error(`timeout after ${timeoutMs} ms waiting for: ${what}`));
      }, timeoutMs);
      this._waiters.push(w);
    });
  }

  /** Waits until `cond()` is true, polling. */
  async until(cond, timeoutMs, what, pollMs = 20) {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const v = await cond();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timeout after ${timeoutMs} ms waiting until: ${what}`);
      await sleep(pollMs);
    }
  }

  /** Promise with a bound. */
  async bounded(promise, timeoutMs, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout after ${timeoutMs} ms: ${what}`)), timeoutMs);
    });
    try {
      return await Promise.race([promise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  count(pred) {
    return this.log.filter(pred).length;
  }

  /** A centrifuge-js client whose events are logged under `label`, over a recording `ws` WebSocket. */
  client(label, options = {}) {
    const sockets = [];
    this.frames[label] = sockets;
    const c = new Centrifuge(this.wsUrl, {
      websocket: recordingWebSocket(sockets),
      timeout: 5000,
      ...options,
    });
    c.on('state', (ctx) => this.event(label, 'state', { newState: ctx.newState, oldState: ctx.oldState }));
    c.on('connecting', (ctx) => this.event(label, 'connecting', { code: ctx.code, reason: ctx.reason }));
    c.on('connected', (ctx) => this.event(label, 'connected', { client: ctx.client, transport: ctx.transport, data: ctx.data }));
    c.on('disconnected', (ctx) => this.event(label, 'disconnected', { code: ctx.code, reason: ctx.reason }));
    c.on('error', (ctx) => this.event(label, 'error', { type: ctx.type, error: ctx.error }));
    // Server-side subscriptions (server API `subscribe`, token `channels`) report on the client itself.
    c.on('subscribed', (ctx) => this.event(label, 'server-subscribed', { channel: ctx.channel, recoverable: ctx.recoverable,
      positioned: ctx.positioned, wasRecovering: ctx.wasRecovering, recovered: ctx.recovered, streamPosition: ctx.streamPosition }));
    c.on('subscribing', (ctx) => this.event(label, 'server-subscribing', { channel: ctx.channel }));
    c.on('unsubscribed', (ctx) => this.event(label, 'server-unsubscribed', { channel: ctx.channel }));
    c.on('publication', (ctx) => this.event(label, 'server-publication', { channel: ctx.channel, data: ctx.data, offset: ctx.offset, info: ctx.info }));
    c.on('join', (ctx) => this.event(label, 'server-join', { channel: ctx.channel, info: ctx.info }));
    c.on('leave', (ctx) => this.event(label, 'server-leave', { channel: ctx.channel, info: ctx.info }));
    c.on('message', (ctx) => this.event(label, 'message', { data: ctx.data }));
    this.clients[label] = c;
    return c;
  }

  /** The sockets recorded for a client label. */
  sockets(label) {
    return this.frames[label] || [];
  }

  /** A subscription whose events are logged under `label` with its channel. */
  sub(client, label, channel, options = {}) {
    const s = client.newSubscription(channel, options);
    const ev = (kind, data) => this.event(label, kind, { channel, ...data });
    s.on('subscribing', (ctx) => ev('subscribing', { code: ctx.code, reason: ctx.reason }));
    s.on('subscribed', (ctx) =>
      ev('subscribed', {
        recoverable: ctx.recoverable,
        positioned: ctx.positioned,
        wasRecovering: ctx.wasRecovering,
        recovered: ctx.recovered,
        hasRecoveredPublications: ctx.hasRecoveredPublications,
        streamPosition: ctx.streamPosition,
        data: ctx.data,
      })
    );
    s.on('unsubscribed', (ctx) => ev('unsubscribed', { code: ctx.code, reason: ctx.reason }));
    s.on('publication', (ctx) => ev('publication', { data: ctx.data, info: ctx.info, offset: ctx.offset, tags: ctx.tags }));
    s.on('join', (ctx) => ev('join', { info: ctx.info }));
    s.on('leave', (ctx) => ev('leave', { info: ctx.info }));
    s.on('error', (ctx) => ev('sub-error', { type: ctx.type, error: ctx.error }));
    return s;
  }

  /** POST /api/<method> with the API key. Returns {status, body} (body parsed as JSON when it is). */
  async api(method, body, { key = this.args.api_key, timeoutMs = 5000 } = {}) {
    const res = await fetch(`http://${this.addr}/api/${method}`, {
      method: 'POST',
      headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      parsed = { unparsable: text };
    }
    this.event('api', 'api-call', { method, request: body, status: res.status, response: parsed });
    return { status: res.status, body: parsed };
  }

  /** An API call that must succeed: HTTP 200 and a `result`; returns the result. */
  async apiOk(method, body) {
    const { status, body: resp } = await this.api(method, body);
    if (status !== 200 || resp === null || typeof resp !== 'object' || !('result' in resp)) {
      throw new Error(`API ${method} ${JSON.stringify(body)} -> HTTP ${status} ${JSON.stringify(resp)}`);
    }
    return resp.result;
  }
}

/** An exception or a rejection value as text (the SDK rejects with plain {code, message} objects). */
function describe(e) {
  if (e && e.stack) return e.stack;
  if (e && typeof e === 'object') {
    try {
      return `rejected with ${JSON.stringify(e)}`;
    } catch (_) {
      // fall through
    }
  }
  return String(e);
}

/** Runs a scenario: `fn(harness)`; prints the one JSON line; exits. */
export function main(fn) {
  let args;
  try {
    args = JSON.parse(process.argv[2] || '{}');
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, error: `bad args: ${e}` }) + '\n');
    process.exit(2);
  }
  const h = new Harness(args);
  let done = false;
  const finish = (ok, error) => {
    if (done) return;
    done = true;
    for (const c of Object.values(h.clients)) {
      try {
        c.disconnect();
      } catch (e) {
        // ignore
      }
    }
    const out = { ok, error, results: h.results, log: h.log, frames: h.frames };
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(ok ? 0 : 1));
  };
  process.on('unhandledRejection', (e) => finish(false, `unhandled rejection: ${describe(e)}`));
  process.on('uncaughtException', (e) => finish(false, `uncaught exception: ${describe(e)}`));
  const deadline = setTimeout(
    () => finish(false, `script deadline of ${args.deadline_ms || 30000} ms passed`),
    args.deadline_ms || 30000
  );
  Promise.resolve()
    .then(() => fn(h))
    .then(
      () => finish(true, null),
      (e) => finish(false, describe(e))
    )
    .finally(() => clearTimeout(deadline));
}
