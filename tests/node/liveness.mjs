// Liveness and limits as centrifuge-js sees them.
//  pings: the server's ping interval is 2 s (client.ping_interval); the connect result says {ping: 2, pong: true}.
//         With maxServerPingDelay 1500 the SDK drops the connection if 3.5 s pass without a frame, so an idle
//         client that stays connected for 8 s on one socket proves the server pings on time; the SDK answers
//         each ping `{}` with a pong `{}`, and the server must not close it for a missing pong.
//  size:  a 100 KiB client publish is over the default 64 KiB message size limit: the server closes 1009,
//         which centrifuge-js turns into a terminal disconnect (code 3, "message size limit exceeded").
import { main, frameMessages, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const is = (who, kind) => (e) => e.who === who && e.kind === kind;
  const mode = h.args.mode || 'pings';

  if (mode === 'pings') {
    const pia = h.client('pia', { token: h.token('pia'), maxServerPingDelay: 1500 });
    pia.connect();
    await h.waitFor(is('pia', 'connected'), 5000, 'connected');
    const idleMs = h.args.idle_ms || 8000;
    await sleep(idleMs);
    const sock = h.sockets('pia')[0];
    const received = sock.received.flatMap(frameMessages);
    const sent = sock.sent.flatMap(frameMessages);
    const connect = received.find((m) => m.connect);
    r.pings = {
      connect_ping: connect ? connect.connect.ping ?? null : null,
      connect_pong: connect ? connect.connect.pong ?? null : null,
      pings_received: received.filter((m) => Object.keys(m).length === 0).length,
      pongs_sent: sent.filter((m) => Object.keys(m).length === 0).length,
      idle_ms: idleMs,
      state: pia.state,
      sockets_opened: h.sockets('pia').length,
      socket_close: sock.close,
      no_ping_events: h.count((e) => e.who === 'pia' && e.kind === 'connecting' && e.code !== 0),
    };
  } else if (mode === 'size') {
    const big = h.client('big', { token: h.token('big') });
    const sub = h.sub(big, 'big', 'chat:big');
    sub.subscribe();
    big.connect();
    await h.waitFor((e) => e.who === 'big' && e.kind === 'subscribed', 5000, 'subscribed');
    // A publish that fits goes through first (about 32 KiB).
    const okData = { blob: 'x'.repeat(32 * 1024) };
    await h.bounded(sub.publish(okData), 5000, '32 KiB publish');
    await h.waitFor((e) => e.who === 'big' && e.kind === 'publication', 5000, '32 KiB publication back');
    r.fits = { state: big.state };
    const tooBig = { blob: 'y'.repeat(100 * 1024) };
    sub.publish(tooBig).catch(() => {});
    const d = await h.waitFor((e) => e.who === 'big' && (e.kind === 'disconnected' || (e.kind === 'connecting' && e.code !== 0)), 5000, 'closed after the oversized message');
    await sleep(1200);
    r.too_big = {
      event: { kind: d.kind, code: d.code, reason: d.reason },
      socket_close: h.sockets('big')[0].close,
      state: big.state,
      sockets_opened: h.sockets('big').length,
      big_publications_received: h.log.filter((e) => e.who === 'big' && e.kind === 'publication' && e.data && e.data.blob && e.data.blob[0] === 'y').length,
    };
  }
});
