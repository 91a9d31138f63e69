// Token lifecycle with centrifuge-js:
//  expired: a connection token whose exp has passed -> connect error 109 "token expired" (a reply, not a close);
//           the SDK calls getToken and reconnects with the fresh token -> connected (two sockets, one getToken).
//  missing: no token at all, anonymous connections not allowed -> close 3501, terminal (no reconnect).
//  refresh: a token expiring in 3 s -> connect result {expires: true, ttl <= 3}; at ttl the SDK calls getToken
//           and sends `refresh`; the server answers {expires: true, ttl ~ 60}; the connection lives on past
//           the first token's exp on its one socket.
import { main, frameMessages, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const is = (who, kind) => (e) => e.who === who && e.kind === kind;
  const now = () => Math.floor(Date.now() / 1000);
  const replies = (label, i) => (h.sockets(label)[i] ? h.sockets(label)[i].received.flatMap(frameMessages).filter((m) => m.id) : []);
  const commands = (label, i) => (h.sockets(label)[i] ? h.sockets(label)[i].sent.flatMap(frameMessages) : []);

  // --- expired token, fresh one from getToken
  let expiredCalls = 0;
  const ella = h.client('ella', {
    token: h.token('ella', { claims: { exp: now() - 60 } }),
    getToken: async () => {
      expiredCalls += 1;
      return h.token('ella', { claims: { exp: now() + 600 } });
    },
  });
  ella.connect();
  await h.waitFor(is('ella', 'connected'), 8000, 'ella connected after refreshing her expired token');
  const firstReply = replies('ella', 0)[0];
  r.expired = {
    first_reply_error: firstReply && firstReply.error ? { code: firstReply.error.code, message: firstReply.error.message } : null,
    first_reply: firstReply || null,
    connect_error_events: h.log.filter((e) => is('ella', 'error')(e) && e.type === 'connect').map((e) => e.error.code),
    get_token_calls: expiredCalls,
    sockets_opened: h.sockets('ella').length,
    state: ella.state,
  };

  // --- no token at all
  const nobody = h.client('nobody', {});
  nobody.connect();
  const nd = await h.waitFor(is('nobody', 'disconnected'), 5000, 'no-token client disconnected');
  await sleep(1200);
  r.missing = {
    disconnected: { code: nd.code, reason: nd.reason },
    state: nobody.state,
    sockets_opened: h.sockets('nobody').length,
    socket_close: h.sockets('nobody')[0].close,
    connected_events: h.count(is('nobody', 'connected')),
  };

  // --- refresh before expiry
  let refreshCalls = 0;
  const firstExp = now() + 3;
  const rory = h.client('rory', {
    token: h.token('rory', { claims: { exp: firstExp } }),
    getToken: async () => {
      refreshCalls += 1;
      return h.token('rory', { claims: { exp: now() + 60 } });
    },
  });
  rory.connect();
  await h.waitFor(is('rory', 'connected'), 5000, 'rory connected');
  const connectReply = replies('rory', 0).find((m) => m.connect);
  r.refresh_connect_result = connectReply ? { expires: connectReply.connect.expires ?? null, ttl: connectReply.connect.ttl ?? null } : null;
  // Past the first token's exp (+2 s): the refresh must have happened, on the same socket.
  await h.until(() => now() >= firstExp + 2, 8000, 'first token expired 2 s ago');
  const refreshCmd = commands('rory', 0).find((m) => m.refresh);
  const refreshReply = refreshCmd ? replies('rory', 0).find((m) => m.id === refreshCmd.id) : undefined;
  r.refresh = {
    get_token_calls: refreshCalls,
    refresh_sent: Boolean(refreshCmd && refreshCmd.refresh.token),
    reply_error: refreshReply && refreshReply.error ? refreshReply.error : null,
    reply: refreshReply && refreshReply.refresh
      ? { expires: refreshReply.refresh.expires ?? null, ttl: refreshReply.refresh.ttl ?? null, has_client: Boolean(refreshReply.refresh.client) }
      : null,
    state: rory.state,
    sockets_opened: h.sockets('rory').length,
    disconnect_events: h.count((e) => e.who === 'rory' && (e.kind === 'disconnected' || (e.kind === 'connecting' && e.code !== 0))),
  };
});
