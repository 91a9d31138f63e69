// Scenario 2: subscriptions created before connect() go out in the SAME WebSocket frame as the connect
// command (centrifuge-js batches them: "connect\nsubscribe\nsubscribe\nsubscribe"); the server must answer
// all four in order, the connect first, and every subscription ends up subscribed and receiving.
import { main, frameMessages, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const is = (who, kind, channel) => (e) => e.who === who && e.kind === kind && (channel === undefined || e.channel === channel);
  const channels = ['news', 'chat:batch1', 'chat:batch2'];

  const c = h.client('batcher', { token: h.token('batcher') });
  const subs = channels.map((ch) => h.sub(c, 'batcher', ch));
  for (const s of subs) s.subscribe();
  c.connect();

  const conn = await h.waitFor(is('batcher', 'connected'), 5000, 'connected');
  for (const ch of channels) {
    await h.waitFor(is('batcher', 'subscribed', ch), 5000, `subscribed to ${ch}`);
  }
  r.connected_client = conn.client;

  const sock = h.sockets('batcher')[0];
  const first = frameMessages(sock.sent[0] || '');
  r.first_frame = first.map((m) => ({
    id: m.id,
    commands: Object.keys(m).filter((k) => k !== 'id'),
    channel: m.subscribe ? m.subscribe.channel : undefined,
    has_token: m.connect ? typeof m.connect.token === 'string' && m.connect.token.length > 0 : undefined,
  }));
  r.frames_sent_before_all_subscribed = sock.sent.length;

  // Every reply the client received, in order, flattened out of the frames they came in.
  const replies = sock.received.flatMap(frameMessages).filter((m) => m.id);
  r.reply_order = replies.map((m) => ({ id: m.id, kinds: Object.keys(m).filter((k) => k !== 'id') }));
  r.received_frames = sock.received.length;

  const subscribed = {};
  for (const ch of channels) {
    const e = h.log.find(is('batcher', 'subscribed', ch));
    subscribed[ch] = { recoverable: e.recoverable, positioned: e.positioned, wasRecovering: e.wasRecovering,
      recovered: e.recovered, streamPosition: e.streamPosition || null };
  }
  r.subscribed = subscribed;
  r.states = Object.fromEntries(subs.map((s) => [s.channel, s.state]));

  // Each subscription receives its own channel's publication, and only that.
  for (const ch of channels) {
    await h.apiOk('publish', { channel: ch, data: { for: ch } });
  }
  for (const ch of channels) {
    await h.waitFor(is('batcher', 'publication', ch), 5000, `publication on ${ch}`);
  }
  await sleep(200);
  r.publications = Object.fromEntries(
    channels.map((ch) => [ch, h.log.filter(is('batcher', 'publication', ch)).map((e) => ({ data: e.data, offset: e.offset ?? null }))])
  );
  r.sockets_opened = h.sockets('batcher').length;
});
