// History through centrifuge-js, and recovery that cannot succeed.
//  history: five API publications in `chat:history`, then sub.history() with {limit: 0} (position only),
//           {limit: 10}, {limit: -1}, {since, limit}, {limit, reverse}, {since, reverse}; a wrong epoch in
//           `since` -> 112; history on a channel without history (`news`) -> 108; history in `chat` by a client
//           that is not subscribed (allow_history_for_subscriber) -> 103.
//  unrecoverable: namespace `small` (history_size 2, force_recovery); one publication seen, the user is
//           disconnected (4000), four publications made while away -> resubscribe gives
//           {wasRecovering: true, recovered: false}, no replayed publications, and live delivery goes on.
import { main, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const is = (who, kind, channel) => (e) => e.who === who && e.kind === kind && (channel === undefined || e.channel === channel);
  const brief = (res) => ({ offsets: res.publications.map((p) => p.offset ?? null), data: res.publications.map((p) => p.data),
    offset: res.offset, epoch: res.epoch });
  const errOf = async (promise, what) => {
    try {
      await h.bounded(promise, 5000, what);
      return { resolved: true };
    } catch (e) {
      return { code: e.code === undefined ? null : e.code, message: e.message === undefined ? String(e) : e.message };
    }
  };

  const hana = h.client('hana', { token: h.token('hana'), minReconnectDelay: 2000, maxReconnectDelay: 2000 });
  const ch = 'chat:history';
  const sub = h.sub(hana, 'hana', ch);
  sub.subscribe();
  hana.connect();
  const s = await h.waitFor(is('hana', 'subscribed', ch), 5000, 'subscribed to chat:history');
  const epoch = s.streamPosition ? s.streamPosition.epoch : '';
  r.epoch = epoch;
  for (const n of [1, 2, 3, 4, 5]) await h.apiOk('publish', { channel: ch, data: { n } });
  await h.until(() => h.count(is('hana', 'publication', ch)) >= 5, 5000, 'five publications');

  const hist = async (opts, what) => brief(await h.bounded(sub.history(opts), 5000, what));
  r.history = {
    limit0: await hist({ limit: 0 }, 'history limit 0'),
    limit10: await hist({ limit: 10 }, 'history limit 10'),
    all: await hist({ limit: -1 }, 'history limit -1'),
    since2_limit2: await hist({ since: { offset: 2, epoch }, limit: 2 }, 'history since 2 limit 2'),
    reverse_limit2: await hist({ limit: 2, reverse: true }, 'history reverse limit 2'),
    since4_reverse: await hist({ since: { offset: 4, epoch }, limit: 10, reverse: true }, 'history since 4 reverse'),
  };
  r.history_wrong_epoch = await errOf(sub.history({ since: { offset: 1, epoch: 'not-the-epoch' }, limit: 10 }), 'history wrong epoch');
  r.history_not_available = await errOf(hana.history('news', { limit: 10 }), 'history on news');
  const ivan = h.client('ivan', { token: h.token('ivan') });
  ivan.connect();
  await h.waitFor(is('ivan', 'connected'), 5000, 'ivan connected');
  r.history_not_subscribed = await errOf(ivan.history(ch, { limit: 10 }), 'history by a non-subscriber');
  r.presence_not_available = await errOf(hana.presence('news'), 'presence on news');
  r.client_state_after_errors = { state: hana.state, sockets_opened: h.sockets('hana').length };

  // --- unrecoverable position
  const sch = 'small:feed';
  const small = h.sub(hana, 'hana', sch);
  small.subscribe();
  const ss = await h.waitFor(is('hana', 'subscribed', sch), 5000, 'subscribed to small:feed');
  r.small_subscribed = { recoverable: ss.recoverable, positioned: ss.positioned };
  await h.apiOk('publish', { channel: sch, data: { n: 1 } });
  await h.waitFor(is('hana', 'publication', sch), 5000, 'small publication 1');
  const mark = h.log.length;
  await h.api('disconnect', { user: 'hana', disconnect: { code: 4000, reason: 'test' } });
  await h.waitFor(is('hana', 'connecting'), 5000, 'connecting after the API disconnect', mark);
  r.small_published_away = [];
  for (const n of [2, 3, 4, 5]) r.small_published_away.push(await h.apiOk('publish', { channel: sch, data: { n } }));
  const rs = await h.waitFor(is('hana', 'subscribed', sch), 8000, 'resubscribed to small:feed', mark);
  r.small_resubscribed = { wasRecovering: rs.wasRecovering, recovered: rs.recovered, hasRecoveredPublications: rs.hasRecoveredPublications,
    streamPosition: rs.streamPosition || null };
  // chat:history (history 100) recovers fine on the same reconnect, with nothing missed.
  const hs = await h.waitFor(is('hana', 'subscribed', ch), 5000, 'resubscribed to chat:history', mark);
  r.history_channel_resubscribed = { wasRecovering: hs.wasRecovering, recovered: hs.recovered };
  await h.apiOk('publish', { channel: sch, data: { n: 6, live: true } });
  await h.until(() => h.log.slice(mark).filter(is('hana', 'publication', sch)).length >= 1, 5000, 'live publication after failed recovery');
  await sleep(300);
  r.small_publications_after_reconnect = h.log.slice(mark).filter(is('hana', 'publication', sch)).map((e) => ({ data: e.data, offset: e.offset ?? null }));
});
