// Server API actions as centrifuge-js sees them:
//  subscribe: API `subscribe` {user, channel} -> a server-side subscription: the client-level `subscribed`
//             event for the channel, and API publications there arrive as client-level `publication`s.
//  unsubscribe (client-side sub): API `unsubscribe` -> the Subscription goes `unsubscribed` with code 2000
//             and is not resubscribed; the connection stays up.
//  unsubscribe (server-side sub): client-level `unsubscribed` for that channel.
//  broadcast: one API call, two channels, both delivered.
//  wrong API key: HTTP 401.
import { main, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const is = (who, kind, channel) => (e) => e.who === who && e.kind === kind && (channel === undefined || e.channel === channel);

  const sam = h.client('sam', { token: h.token('sam') });
  const news = h.sub(sam, 'sam', 'news');
  news.subscribe();
  sam.connect();
  await h.waitFor(is('sam', 'connected'), 5000, 'sam connected');
  await h.waitFor(is('sam', 'subscribed', 'news'), 5000, 'sam subscribed to news');

  // --- server-side subscribe
  r.api_subscribe = await h.api('subscribe', { user: 'sam', channel: 'chat:server-side' });
  const ss = await h.waitFor(is('sam', 'server-subscribed', 'chat:server-side'), 5000, 'client-level subscribed for chat:server-side');
  r.server_subscribed = { channel: ss.channel, recoverable: ss.recoverable, positioned: ss.positioned };
  await h.apiOk('publish', { channel: 'chat:server-side', data: { to: 'server-side sub' } });
  const sp = await h.waitFor(is('sam', 'server-publication', 'chat:server-side'), 5000, 'client-level publication');
  r.server_publication = { data: sp.data, offset: sp.offset ?? null };

  // --- broadcast to a client-side and a server-side subscription
  r.broadcast = await h.api('broadcast', { channels: ['news', 'chat:server-side'], data: { bc: 1 } });
  await h.waitFor((e) => is('sam', 'publication', 'news')(e) && e.data && e.data.bc === 1, 5000, 'broadcast on news');
  await h.waitFor((e) => is('sam', 'server-publication', 'chat:server-side')(e) && e.data && e.data.bc === 1, 5000, 'broadcast on chat:server-side');

  // --- server-side unsubscribe of a client-side subscription
  const mark = h.log.length;
  r.api_unsubscribe = await h.api('unsubscribe', { user: 'sam', channel: 'news' });
  const un = await h.waitFor(is('sam', 'unsubscribed', 'news'), 5000, 'news unsubscribed by the server', mark);
  await sleep(1000); // a resubscribe (codes >= 2500 only) would show by now
  r.client_sub_unsubscribed = {
    code: un.code, reason: un.reason, state: news.state,
    resubscribes: h.log.slice(mark).filter((e) => is('sam', 'subscribed', 'news')(e) || is('sam', 'subscribing', 'news')(e)).length,
  };

  // --- server-side unsubscribe of the server-side subscription
  const mark2 = h.log.length;
  r.api_unsubscribe_server_side = await h.api('unsubscribe', { user: 'sam', channel: 'chat:server-side' });
  await h.waitFor(is('sam', 'server-unsubscribed', 'chat:server-side'), 5000, 'client-level unsubscribed for chat:server-side', mark2);
  await h.apiOk('publish', { channel: 'chat:server-side', data: { after: 'unsubscribe' } });
  await h.apiOk('publish', { channel: 'news', data: { after: 'unsubscribe' } });
  await sleep(500);
  r.after_unsubscribes = {
    publications_after: h.log.slice(mark2).filter((e) => (e.kind === 'publication' || e.kind === 'server-publication') && e.who === 'sam').length,
    state: sam.state,
    sockets_opened: h.sockets('sam').length,
  };

  // --- wrong API key
  const bad = await h.api('publish', { channel: 'news', data: { x: 1 } }, { key: 'not-the-key' });
  r.wrong_key_status = bad.status;
});
