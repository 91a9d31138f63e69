// Scenario 1: connect with an HS256 token; a bad signature is terminal (3500, no reconnect); subscribe +
// server API publish; client publish reaches another client with info.user; permission (103) and unknown
// namespace (102) subscribe errors; client publish without permission (103).
// Channels: `news` (no namespace: subscribe allowed, no publish, no history), `chat:*` (history,
// force_recovery, publish for subscribers), `secret:*` (exists, but clients may not subscribe), `nope:*` (no
// such namespace).
import { main, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const is = (who, kind, channel) => (e) => e.who === who && e.kind === kind && (channel === undefined || e.channel === channel);

  // --- connect with a valid token
  const alice = h.client('alice', { token: h.token('alice') });
  alice.connect();
  const ac = await h.waitFor(is('alice', 'connected'), 5000, 'alice connected');
  r.alice_connected = { client: ac.client, transport: ac.transport, state: alice.state };

  // --- bad signature: terminal disconnect 3500, no reconnect
  const mallory = h.client('mallory', { token: h.token('mallory', { secret: 'not-' + h.args.secret }) });
  mallory.connect();
  const md = await h.waitFor(is('mallory', 'disconnected'), 5000, 'mallory disconnected');
  await sleep(1500); // the SDK's minimum reconnect delay is 500 ms: a reconnect would show by now
  r.bad_token = {
    disconnected: { code: md.code, reason: md.reason },
    state: mallory.state,
    sockets_opened: h.sockets('mallory').length,
    socket_close: h.sockets('mallory').map((s) => s.close),
    connected_events: h.count(is('mallory', 'connected')),
    connecting_events: h.count(is('mallory', 'connecting')),
  };

  // --- subscribe + server API publish
  const news = h.sub(alice, 'alice', 'news');
  news.subscribe();
  const ns = await h.waitFor(is('alice', 'subscribed', 'news'), 5000, 'alice subscribed to news');
  r.news_subscribed = { recoverable: ns.recoverable, positioned: ns.positioned, wasRecovering: ns.wasRecovering };
  const apiData = { text: 'hello from the API', n: 1, nested: { list: [1, 2, 3], flag: true, none: null }, utf8: 'zażółć ✓' };
  const pubResp = await h.api('publish', { channel: 'news', data: apiData });
  r.api_publish = pubResp;
  const np = await h.waitFor(is('alice', 'publication', 'news'), 5000, 'alice gets the API publication on news');
  r.news_publication = { data: np.data, info: np.info === undefined ? null : np.info };

  // --- client publish reaches another client, with the publisher's info
  const bob = h.client('bob', { token: h.token('bob') });
  bob.connect();
  const bc = await h.waitFor(is('bob', 'connected'), 5000, 'bob connected');
  const aliceRoom = h.sub(alice, 'alice', 'chat:room1');
  const bobRoom = h.sub(bob, 'bob', 'chat:room1');
  aliceRoom.subscribe();
  bobRoom.subscribe();
  await h.waitFor(is('alice', 'subscribed', 'chat:room1'), 5000, 'alice subscribed to chat:room1');
  await h.waitFor(is('bob', 'subscribed', 'chat:room1'), 5000, 'bob subscribed to chat:room1');
  const bobData = { text: 'hi from bob', seq: 7 };
  r.client_publish_result = await h.bounded(bobRoom.publish(bobData), 5000, 'bob publish');
  const ap = await h.waitFor(is('alice', 'publication', 'chat:room1'), 5000, 'alice gets bob\'s publication');
  r.client_publication = { bob_client: bc.client, data: ap.data, info: ap.info === undefined ? null : ap.info, offset: ap.offset === undefined ? null : ap.offset };
  const bp = await h.waitFor(is('bob', 'publication', 'chat:room1'), 5000, 'bob gets his own publication');
  r.client_publication_to_publisher = { data: bp.data, user: bp.info ? bp.info.user : null };

  // --- client publish where publishing is not allowed (no namespace: no allow_publish_*) -> 103
  try {
    await h.bounded(alice.publish('news', { not: 'allowed' }), 5000, 'alice publish to news');
    r.forbidden_publish = { resolved: true };
  } catch (e) {
    r.forbidden_publish = { code: e.code === undefined ? null : e.code, message: e.message === undefined ? String(e) : e.message };
  }

  // --- subscribe errors: 103 for a namespace without allow_subscribe_for_client, 102 for an unknown namespace
  const secret = h.sub(alice, 'alice', 'secret:x');
  secret.subscribe();
  const su = await h.waitFor(is('alice', 'unsubscribed', 'secret:x'), 5000, 'secret:x unsubscribed');
  r.forbidden_subscribe = { code: su.code, reason: su.reason, state: secret.state };
  const nope = h.sub(alice, 'alice', 'nope:x');
  nope.subscribe();
  const nu = await h.waitFor(is('alice', 'unsubscribed', 'nope:x'), 5000, 'nope:x unsubscribed');
  r.unknown_namespace = { code: nu.code, reason: nu.reason, state: nope.state };

  // --- after the errors: alice still connected on her first socket, still subscribed, still receiving
  await h.api('publish', { channel: 'news', data: { after: 'errors' } });
  await h.waitFor((e) => is('alice', 'publication', 'news')(e) && e.data && e.data.after === 'errors', 5000, 'news publication after the errors');
  r.after_errors = {
    state: alice.state,
    sockets_opened: h.sockets('alice').length,
    news_state: news.state,
    news_publications: h.log.filter(is('alice', 'publication', 'news')).map((e) => e.data),
    subscribe_errors_logged: h.count(is('alice', 'sub-error')),
  };
});
