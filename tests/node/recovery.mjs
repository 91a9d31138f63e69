// Scenario 3: recovery. Subscribed in a force_recovery namespace (`chat`), one publication received; the
// server API disconnects the user with a reconnect code (4000); three publications are made through the API
// while the client is away (its reconnect delay is pinned to 2 s); on reconnect the SDK resubscribes with
// recover/offset/epoch and must get `subscribed` {wasRecovering: true, recovered: true} and exactly the three
// missed publications in order, then a live one.
// Then the same on the same Subscription object with unsubscribe() + subscribe() (two missed publications).
import { main, frameMessages, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const channel = h.args.channel || 'chat:recovery';
  const is = (who, kind) => (e) => e.who === who && e.kind === kind && (e.channel === undefined || e.channel === channel);
  const pubsAfter = (from) => h.log.slice(from).filter(is('rita', 'publication')).map((e) => ({ data: e.data, offset: e.offset ?? null }));

  const c = h.client('rita', { token: h.token('rita'), minReconnectDelay: 2000, maxReconnectDelay: 2000 });
  const sub = h.sub(c, 'rita', channel);
  sub.subscribe();
  c.connect();
  const c1 = await h.waitFor(is('rita', 'connected'), 5000, 'connected');
  const s1 = await h.waitFor(is('rita', 'subscribed'), 5000, 'first subscribed');
  r.first_subscribed = { recoverable: s1.recoverable, positioned: s1.positioned, wasRecovering: s1.wasRecovering,
    recovered: s1.recovered, streamPosition: s1.streamPosition || null };
  const epoch = s1.streamPosition ? s1.streamPosition.epoch : null;

  r.publish_1 = await h.apiOk('publish', { channel, data: { n: 1 } });
  await h.waitFor(is('rita', 'publication'), 5000, 'publication 1');

  // Server-side disconnect with a reconnect code.
  const mark = h.log.length;
  r.api_disconnect = await h.api('disconnect', { user: 'rita', disconnect: { code: 4000, reason: 'test' } });
  const away = await h.waitFor(is('rita', 'connecting'), 5000, 'connecting after the API disconnect', mark);
  r.connecting_after_disconnect = { code: away.code, reason: away.reason };
  r.first_socket_close = h.sockets('rita')[0].close;
  const awayAt = Date.now();

  // Three publications while away (the SDK reconnects 2 s after the close).
  r.publish_away = [];
  for (const n of [2, 3, 4]) {
    r.publish_away.push(await h.apiOk('publish', { channel, data: { n } }));
  }
  r.published_away_within_ms = Date.now() - awayAt;

  const c2 = await h.waitFor(is('rita', 'connected'), 8000, 'reconnected', mark);
  const s2 = await h.waitFor(is('rita', 'subscribed'), 5000, 'resubscribed', mark);
  const s2index = h.log.indexOf(s2);
  r.reconnected = { new_client_id: c2.client !== c1.client, sockets_opened: h.sockets('rita').length };
  r.resubscribed = { recoverable: s2.recoverable, positioned: s2.positioned, wasRecovering: s2.wasRecovering,
    recovered: s2.recovered, hasRecoveredPublications: s2.hasRecoveredPublications,
    streamPosition: s2.streamPosition || null };
  // What the SDK asked for on the second socket.
  const sock2 = h.sockets('rita')[1];
  const subCmd = sock2 ? sock2.sent.flatMap(frameMessages).find((m) => m.subscribe) : undefined;
  r.resubscribe_request = subCmd
    ? { recover: subCmd.subscribe.recover ?? null, offset: subCmd.subscribe.offset ?? null, epoch: subCmd.subscribe.epoch ?? null,
        epoch_matches_first: subCmd.subscribe.epoch === epoch }
    : null;

  await h.until(() => pubsAfter(mark).length >= 3, 5000, 'three recovered publications');
  r.publish_live = await h.apiOk('publish', { channel, data: { n: 5, live: true } });
  await h.until(() => pubsAfter(mark).length >= 4, 5000, 'the live publication');
  await sleep(300); // anything extra (a duplicate) would show by now
  r.publications_after_reconnect = pubsAfter(mark);
  r.recovered_pubs_after_subscribed_event =
    h.log.slice(mark).filter(is('rita', 'publication')).every((e) => h.log.indexOf(e) > s2index);
  r.all_publications = pubsAfter(0);

  // --- unsubscribe() + subscribe() on the same Subscription: recovery from its last offset
  const mark2 = h.log.length;
  sub.unsubscribe();
  await h.waitFor(is('rita', 'unsubscribed'), 5000, 'unsubscribed', mark2);
  await sleep(200); // let the unsubscribe command reach the server before publishing
  r.publish_while_unsubscribed = [];
  for (const n of [6, 7]) {
    r.publish_while_unsubscribed.push(await h.apiOk('publish', { channel, data: { n } }));
  }
  const sendsBefore = h.sockets('rita')[1].sent.length;
  sub.subscribe();
  const s3 = await h.waitFor(is('rita', 'subscribed'), 5000, 'subscribed again', mark2);
  const subCmd3 = h.sockets('rita')[1].sent.slice(sendsBefore).flatMap(frameMessages).find((m) => m.subscribe);
  r.resubscribe2_request = subCmd3
    ? { recover: subCmd3.subscribe.recover ?? null, offset: subCmd3.subscribe.offset ?? null, epoch_matches_first: subCmd3.subscribe.epoch === epoch }
    : null;
  r.resubscribed2 = { wasRecovering: s3.wasRecovering, recovered: s3.recovered, streamPosition: s3.streamPosition || null };
  await h.until(() => pubsAfter(mark2).length >= 2, 5000, 'two recovered publications after subscribe()');
  await sleep(300);
  r.publications_after_resubscribe = pubsAfter(mark2);
  r.sockets_opened = h.sockets('rita').length;
});
