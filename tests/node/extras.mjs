// More centrifuge-js behaviour against the gateway, one mode per run (args.mode):
//  race:     recovery while publications keep flowing: an API publisher publishes sequentially into
//            `chat:race` for about 3 s while the user is disconnected twice (code 4000, SDK reconnect delay
//            300 ms). On the wire every offset must come exactly once, in order, no pub push for the channel
//            before its subscribe reply (the server buffers live publications during recovery and merges them
//            with the recovered ones), and the SDK must emit each offset exactly once. (The order of the SDK's
//            events is reported but not asserted: centrifuge-js 5.7.4 can dispatch WebSocket messages that
//            arrive in one read concurrently - `_dataReceived` replaces `_dispatchPromise` inside its own `then`
//            - and then emit a live publication before `subscribed` and the recovered ones.)
//  info:     connection token `info` claim -> conn_info in join, presence and client publication info
//            (centrifuge-js exposes it as connInfo).
//  subtoken: subscription tokens: `$chat:private` needs one (103 without), a valid one subscribes; a token
//            grants a namespace without allow_subscribe_for_client (`secret:`); an expired one -> 109 -> the
//            SDK's getToken -> subscribed; a token for another channel -> close 3500.
//  serversubs: server-side subscriptions from the token's `channels` claim, recovered on reconnect through
//            connect.subs.
//  fanout:   200 SDK clients (50 users) subscribe in their connect frames; 10 API publications reach all, in order.
//  limit:    129 subscriptions in one connect frame: 128 subscribed, the last gets 106 (channel_limit 128).
//  options:  subscription options: `since`, `delta: 'fossil'` (ignored by the server), client-asked
//            recoverable/positioned and joinLeave in `room` (granted to subscribers, as Centrifugo does).
//  rpc:      rpc with no RPC proxy -> error 104.
// Each mode's block says more.
import { main, frameMessages, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const is = (who, kind, channel) => (e) => e.who === who && e.kind === kind && (channel === undefined || e.channel === channel);
  const now = () => Math.floor(Date.now() / 1000);
  const errOf = async (promise, what) => {
    try {
      await h.bounded(promise, 5000, what);
      return { resolved: true };
    } catch (e) {
      return { code: e.code === undefined ? null : e.code, message: e.message === undefined ? String(e) : e.message };
    }
  };
  const mode = h.args.mode;

  if (mode === 'race') {
    const ch = h.args.channel || `chat:race-${process.pid}-${Date.now()}`;
    const rex = h.client('rex', { token: h.token('rex'), minReconnectDelay: 300, maxReconnectDelay: 300 });
    const sub = h.sub(rex, 'rex', ch);
    sub.subscribe();
    rex.connect();
    await h.waitFor(is('rex', 'subscribed', ch), 5000, 'subscribed');
    let published = 0;
    let stop = false;
    const publisher = (async () => {
      while (!stop) {
        published += 1;
        const res = await h.apiOk('publish', { channel: ch, data: { n: published } });
        if (res.offset !== published) throw new Error(`publish ${published} got offset ${res.offset}`);
        await sleep(3);
      }
    })();
    publisher.catch(() => {}); // awaited below; this only keeps an early failure from being "unhandled"
    const publishMs = h.args.publish_ms || 3000;
    await sleep(publishMs / 4);
    await h.apiOk('disconnect', { user: 'rex', disconnect: { code: 4000, reason: 'race 1' } });
    await sleep(publishMs / 3);
    await h.apiOk('disconnect', { user: 'rex', disconnect: { code: 4000, reason: 'race 2' } });
    await sleep(publishMs - publishMs / 4 - publishMs / 3);
    stop = true;
    await h.bounded(publisher, 5000, 'publisher to finish');
    const total = published;
    await h.until(() => h.log.some((e) => is('rex', 'publication', ch)(e) && e.offset === total), 8000,
      `the last publication (offset ${total})`).catch(() => {});
    await sleep(300);
    const offsets = h.log.filter(is('rex', 'publication', ch)).map((e) => e.offset ?? null);
    const dataMismatch = h.log.filter(is('rex', 'publication', ch)).filter((e) => !e.data || e.data.n !== e.offset).length;
    const missing = [];
    for (let i = 1; i <= total; i++) if (!offsets.includes(i)) missing.push(i);
    const dups = offsets.filter((o, i) => offsets.indexOf(o) !== i);
    const outOfOrder = offsets.filter((o, i) => i > 0 && o <= offsets[i - 1]).length;
    // Around each place where the order breaks: the offsets, and which events (subscribed...) came in between.
    const pubEvents = h.log.filter(is('rex', 'publication', ch));
    const disorder = [];
    offsets.forEach((o, i) => {
      if (i > 0 && o <= offsets[i - 1] && disorder.length < 5) {
        const from = h.log.indexOf(pubEvents[Math.max(0, i - 4)]);
        const to = h.log.indexOf(pubEvents[Math.min(pubEvents.length - 1, i + 4)]);
        disorder.push(h.log.slice(from, to + 1).filter((e) => e.who === 'rex')
          .map((e) => (e.kind === 'publication' ? `pub:${e.offset}` : `${e.kind}${e.kind === 'subscribed' ? `(recovered=${e.recovered})` : ''}`)));
      }
    });
    // The same, on the wire (what the server controls): per socket, the publications in the subscribe reply and
    // the pub pushes, in the order the frames came; and any pub push that came before the subscribe reply.
    const wire = [];
    let pushesBeforeReply = 0;
    for (const sock of h.sockets('rex')) {
      const subIds = new Set(sock.sent.flatMap(frameMessages).filter((m) => m.subscribe && m.subscribe.channel === ch).map((m) => m.id));
      let replied = false;
      for (const m of sock.received.flatMap(frameMessages)) {
        if (m.id && subIds.has(m.id) && m.subscribe) {
          replied = true;
          for (const p of m.subscribe.publications || []) wire.push(p.offset);
        } else if (m.push && m.push.channel === ch && m.push.pub) {
          if (!replied) pushesBeforeReply += 1;
          wire.push(m.push.pub.offset);
        }
      }
    }
    const wireContiguous = wire.length === total && wire.every((o, i) => o === i + 1);
    r.race = {
      wire_contiguous: wireContiguous,
      wire_count: wire.length,
      wire_breaks: wire.map((o, i) => [i, o]).filter(([i, o]) => o !== i + 1).slice(0, 10),
      wire_pushes_before_subscribe_reply: pushesBeforeReply,
      published: total,
      received: offsets.length,
      missing: missing.slice(0, 50),
      missing_count: missing.length,
      duplicates: dups.slice(0, 50),
      out_of_order: outOfOrder,
      disorder,
      data_mismatch: dataMismatch,
      resubscribes: h.log.filter(is('rex', 'subscribed', ch)).slice(1).map((e) => ({ wasRecovering: e.wasRecovering, recovered: e.recovered })),
      sockets_opened: h.sockets('rex').length,
    };
  } else if (mode === 'info') {
    const ch = 'chat:info';
    const uma = h.client('uma', { token: h.token('uma') });
    const vic = h.client('vic', { token: h.token('vic', { claims: { info: { name: 'Vic', tags: ['a', 'b'] } } }) });
    const us = h.sub(uma, 'uma', ch);
    const vs = h.sub(vic, 'vic', ch);
    us.subscribe();
    uma.connect();
    await h.waitFor(is('uma', 'subscribed', ch), 5000, 'uma subscribed');
    vs.subscribe();
    vic.connect();
    const vc = await h.waitFor(is('vic', 'connected'), 5000, 'vic connected');
    await h.waitFor(is('vic', 'subscribed', ch), 5000, 'vic subscribed');
    const join = await h.waitFor((e) => is('uma', 'join', ch)(e) && e.info && e.info.user === 'vic', 5000, 'uma sees vic join');
    r.vic_client = vc.client;
    r.join_info = join.info;
    const pres = await h.bounded(us.presence(), 5000, 'presence');
    r.presence_vic = pres.clients[vc.client] || null;
    await h.bounded(vs.publish({ from: 'vic' }), 5000, 'vic publish');
    const pub = await h.waitFor(is('uma', 'publication', ch), 5000, 'uma gets vic publication');
    r.publication_info = pub.info || null;
  } else if (mode === 'subtoken') {
    const tia = h.client('tia', { token: h.token('tia') });
    tia.connect();
    await h.waitFor(is('tia', 'connected'), 5000, 'tia connected');
    const subToken = (channel, claims = {}) => h.token('tia', { claims: { channel, ...claims } });

    const noTok = h.sub(tia, 'tia', '$chat:private');
    noTok.subscribe();
    const nu = await h.waitFor(is('tia', 'unsubscribed', '$chat:private'), 5000, '$chat:private without a token');
    r.private_without_token = { code: nu.code, reason: nu.reason };
    tia.removeSubscription(noTok);

    const withTok = h.sub(tia, 'tia', '$chat:private', { token: subToken('$chat:private') });
    withTok.subscribe();
    const ws = await h.waitFor((e) => (is('tia', 'subscribed', '$chat:private')(e) || is('tia', 'unsubscribed', '$chat:private')(e))
      && h.log.indexOf(e) > h.log.indexOf(nu), 5000, '$chat:private with a token');
    r.private_with_token = { kind: ws.kind, code: ws.code ?? null };
    if (ws.kind === 'subscribed') {
      await h.apiOk('publish', { channel: '$chat:private', data: { secret: 1 } });
      const p = await h.waitFor(is('tia', 'publication', '$chat:private'), 5000, 'publication on $chat:private');
      r.private_publication = p.data;
    }

    const granted = h.sub(tia, 'tia', 'secret:granted', { token: subToken('secret:granted') });
    granted.subscribe();
    const gs = await h.waitFor((e) => is('tia', 'subscribed', 'secret:granted')(e) || is('tia', 'unsubscribed', 'secret:granted')(e), 5000,
      'secret:granted with a token');
    r.token_grants_namespace = { kind: gs.kind, code: gs.code ?? null };

    let getTokenCalls = 0;
    const expired = h.sub(tia, 'tia', 'secret:expiring', {
      token: subToken('secret:expiring', { exp: now() - 60 }),
      getToken: async () => {
        getTokenCalls += 1;
        return subToken('secret:expiring', { exp: now() + 600 });
      },
    });
    expired.subscribe();
    const es = await h.waitFor((e) => is('tia', 'subscribed', 'secret:expiring')(e) || is('tia', 'unsubscribed', 'secret:expiring')(e), 8000,
      'secret:expiring with an expired token, then a fresh one');
    r.expired_sub_token = {
      kind: es.kind, code: es.code ?? null, get_token_calls: getTokenCalls,
      errors: h.log.filter((e) => is('tia', 'sub-error', 'secret:expiring')(e)).map((e) => e.error && e.error.code),
    };
    r.tia_after = { state: tia.state, sockets_opened: h.sockets('tia').length };

    // A token for another channel: invalid -> the connection is closed with 3500.
    const wes = h.client('wes', { token: h.token('wes') });
    const wrong = h.sub(wes, 'wes', '$chat:other', { token: h.token('wes', { claims: { channel: '$chat:elsewhere' } }) });
    wrong.subscribe();
    wes.connect();
    const wd = await h.waitFor((e) => e.who === 'wes' && (e.kind === 'disconnected' || e.kind === 'subscribed' || e.kind === 'unsubscribed'), 5000,
      'wes: channel mismatch in the subscription token');
    r.token_channel_mismatch = { kind: wd.kind, code: wd.code ?? null, socket_close: h.sockets('wes')[0] ? h.sockets('wes')[0].close : null };
  } else if (mode === 'serversubs') {
    // Server-side subscriptions from the connection token's `channels` claim, and their recovery on reconnect
    // (the SDK sends connect.subs {channel: {recover, offset, epoch}}; the connect result's subs carry the
    // recovered publications).
    const ch = 'chat:from-token';
    const otto = h.client('otto', { token: h.token('otto', { claims: { channels: [ch, 'news'] } }), minReconnectDelay: 2000, maxReconnectDelay: 2000 });
    otto.connect();
    await h.waitFor(is('otto', 'connected'), 5000, 'connected');
    const s1 = await h.waitFor(is('otto', 'server-subscribed', ch), 5000, `client-level subscribed for ${ch}`);
    await h.waitFor(is('otto', 'server-subscribed', 'news'), 5000, 'client-level subscribed for news');
    r.first = { recoverable: s1.recoverable, wasRecovering: s1.wasRecovering, streamPosition: s1.streamPosition || null };
    const epoch = s1.streamPosition ? s1.streamPosition.epoch : null;
    await h.apiOk('publish', { channel: ch, data: { n: 1 } });
    await h.apiOk('publish', { channel: 'news', data: { n: 'news' } });
    await h.waitFor(is('otto', 'server-publication', ch), 5000, 'publication 1');
    await h.waitFor(is('otto', 'server-publication', 'news'), 5000, 'news publication');
    const mark = h.log.length;
    await h.apiOk('disconnect', { user: 'otto', disconnect: { code: 4000, reason: 'test' } });
    await h.waitFor(is('otto', 'connecting'), 5000, 'connecting', mark);
    for (const n of [2, 3]) await h.apiOk('publish', { channel: ch, data: { n } });
    const s2 = await h.waitFor(is('otto', 'server-subscribed', ch), 8000, 'server-side subscription back', mark);
    const connectCmd = (h.sockets('otto')[1] || { sent: [] }).sent.flatMap(frameMessages).find((m) => m.connect);
    const req = connectCmd && connectCmd.connect.subs ? connectCmd.connect.subs[ch] : undefined;
    r.connect_subs_request = req ? { recover: req.recover ?? null, offset: req.offset ?? null, epoch_matches: req.epoch === epoch } : null;
    r.resubscribed = { wasRecovering: s2.wasRecovering, recovered: s2.recovered };
    await h.until(() => h.log.slice(mark).filter(is('otto', 'server-publication', ch)).length >= 2, 5000, 'two recovered publications');
    await h.apiOk('publish', { channel: ch, data: { n: 4 } });
    await h.until(() => h.log.slice(mark).filter(is('otto', 'server-publication', ch)).length >= 3, 5000, 'live publication');
    await sleep(200);
    r.publications_after = h.log.slice(mark).filter(is('otto', 'server-publication', ch)).map((e) => ({ data: e.data, offset: e.offset ?? null }));
    r.sockets_opened = h.sockets('otto').length;
  } else if (mode === 'fanout') {
    // Many SDK clients at once: N clients each subscribe to `chat:fan` and `news` in their connect frame; ten
    // API publications to chat:fan reach every client, all ten, in order; presence counts them all.
    const n = h.args.clients || 200;
    const ch = 'chat:fan';
    const clients = [];
    for (let i = 0; i < n; i++) {
      const label = `fan${i}`;
      const c = h.client(label, { token: h.token(`user${i % 50}`), timeout: 15000 });
      h.sub(c, label, ch).subscribe();
      h.sub(c, label, 'news').subscribe();
      clients.push(c);
    }
    const t0 = Date.now();
    clients.forEach((c) => c.connect());
    await h.until(() => h.count((e) => e.kind === 'subscribed' && e.channel === ch) >= n, 20000, `${n} clients subscribed to ${ch}`, 50);
    await h.until(() => h.count((e) => e.kind === 'subscribed' && e.channel === 'news') >= n, 5000, `${n} clients subscribed to news`, 50);
    r.subscribe_ms = Date.now() - t0;
    r.api_presence_stats = await h.apiOk('presence_stats', { channel: ch });
    for (let k = 1; k <= 10; k++) await h.apiOk('publish', { channel: ch, data: { k } });
    await h.until(() => h.count((e) => e.kind === 'publication' && e.channel === ch) >= 10 * n, 15000, `all ${10 * n} deliveries`, 50)
      .catch(() => {});
    await sleep(300);
    const per = {};
    for (const e of h.log) if (e.kind === 'publication' && e.channel === ch) (per[e.who] ||= []).push(e.data.k);
    const want = JSON.stringify([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const bad = Object.keys(h.clients).filter((label) => JSON.stringify(per[label] || []) !== want);
    r.fanout = {
      clients: n,
      connected: clients.filter((c) => c.state === 'connected').length,
      deliveries: h.count((e) => e.kind === 'publication' && e.channel === ch),
      clients_with_wrong_sequence: bad.length,
      examples: bad.slice(0, 3).map((label) => ({ label, got: per[label] || [] })),
      reconnects: h.count((e) => e.kind === 'connecting' && e.code !== 0),
    };
    h.frames = {}; // 200 clients' frames are too much to print
  } else if (mode === 'limit') {
    // The default client.channel_limit is 128: a client asking for 129 subscriptions in its connect frame gets
    // 128 of them and error 106 "limit exceeded" for the last one; the connection stays.
    const lim = h.client('lim', { token: h.token('lim') });
    const subs = [];
    for (let i = 0; i < 129; i++) {
      const s = h.sub(lim, 'lim', `news${String(i).padStart(3, '0')}`);
      s.subscribe();
      subs.push(s);
    }
    lim.connect();
    await h.until(() => h.count((e) => e.who === 'lim' && (e.kind === 'subscribed' || e.kind === 'unsubscribed')) >= 129, 10000,
      '129 subscribe outcomes');
    const first = h.sockets('lim')[0];
    r.limit = {
      subscribed: h.count((e) => e.who === 'lim' && e.kind === 'subscribed'),
      unsubscribed: h.log.filter((e) => e.who === 'lim' && e.kind === 'unsubscribed').map((e) => ({ channel: e.channel, code: e.code, reason: e.reason })),
      commands_in_first_frame: first ? frameMessages(first.sent[0] || '').length : 0,
      state: lim.state,
      sockets_opened: h.sockets('lim').length,
    };
    h.frames = {};
  } else if (mode === 'options') {
    // Subscription options that change the subscribe command:
    //  since {offset, epoch}: a fresh Subscription asks to recover from a known position -> it gets exactly
    //    the publications after it (recovered: true);
    //  delta 'fossil': the server may ignore it (no `delta` in the result) -> publications arrive in full;
    //  joinLeave: true in a namespace with join_leave but without force_push_join_leave (`room`) -> this
    //    subscriber gets join/leave pushes, a subscriber that did not ask gets none.
    const ch = 'chat:since';
    for (const n of [1, 2, 3, 4, 5]) await h.apiOk('publish', { channel: ch, data: { n } });
    const hist = await h.apiOk('history', { channel: ch, limit: 0 });
    r.api_history_position = { offset: hist.offset, epoch_present: Boolean(hist.epoch) };
    const sia = h.client('sia', { token: h.token('sia') });
    const since = h.sub(sia, 'sia', ch, { since: { offset: 2, epoch: hist.epoch } });
    since.subscribe();
    const delta = h.sub(sia, 'sia', 'chat:delta', { delta: 'fossil' });
    delta.subscribe();
    sia.connect();
    const ss = await h.waitFor(is('sia', 'subscribed', ch), 5000, 'subscribed with since');
    const subCmd = h.sockets('sia')[0].sent.flatMap(frameMessages).find((m) => m.subscribe && m.subscribe.channel === ch);
    r.since_request = subCmd ? { recover: subCmd.subscribe.recover ?? null, offset: subCmd.subscribe.offset ?? null } : null;
    r.since_subscribed = { wasRecovering: ss.wasRecovering, recovered: ss.recovered };
    await h.until(() => h.count(is('sia', 'publication', ch)) >= 3, 5000, 'three publications after offset 2');
    await sleep(200);
    r.since_publications = h.log.filter(is('sia', 'publication', ch)).map((e) => e.offset ?? null);

    await h.waitFor(is('sia', 'subscribed', 'chat:delta'), 5000, 'subscribed with delta');
    const big = { text: 'z'.repeat(300), n: 1 };
    await h.apiOk('publish', { channel: 'chat:delta', data: big });
    await h.apiOk('publish', { channel: 'chat:delta', data: { ...big, n: 2 } });
    await h.until(() => h.count(is('sia', 'publication', 'chat:delta')) >= 2, 5000, 'two publications with delta asked');
    r.delta_publications = h.log.filter(is('sia', 'publication', 'chat:delta')).map((e) => e.data);
    r.delta_request_sent = h.sockets('sia')[0].sent.flatMap(frameMessages).some((m) => m.subscribe && m.subscribe.delta === 'fossil');

    // recoverable/positioned asked by the client in `room` (history on, allow_history_for_subscriber, no
    // force_recovery/allow_recovery): Centrifugo grants them (the subscriber check counts the subscription being
    // made: OnSubscribe calls hasAccessToHistory(..., forceSubscribed=true)).
    const rec = h.sub(sia, 'sia', 'room:recoverable', { recoverable: true, positioned: true });
    rec.subscribe();
    const rs = await h.waitFor((e) => is('sia', 'subscribed', 'room:recoverable')(e) || is('sia', 'unsubscribed', 'room:recoverable')(e), 5000,
      'room:recoverable subscribe outcome');
    const recCmd = h.sockets('sia')[0].sent.flatMap(frameMessages).find((m) => m.subscribe && m.subscribe.channel === 'room:recoverable');
    r.client_asked_recovery_request = recCmd ? { recoverable: recCmd.subscribe.recoverable ?? null, positioned: recCmd.subscribe.positioned ?? null } : null;
    r.client_asked_recovery = { kind: rs.kind, recoverable: rs.recoverable ?? null, positioned: rs.positioned ?? null,
      offset: rs.streamPosition ? rs.streamPosition.offset : null, epoch_present: Boolean(rs.streamPosition && rs.streamPosition.epoch) };

    const room = 'room:lobby';
    const jay = h.client('jay', { token: h.token('jay') });
    const kay = h.client('kay', { token: h.token('kay') });
    const jaySub = h.sub(jay, 'jay', room, { joinLeave: true });
    const kaySub = h.sub(kay, 'kay', room);
    r.join_leave_request = null;
    jaySub.subscribe();
    jay.connect();
    await h.waitFor(is('jay', 'subscribed', room), 5000, 'jay subscribed with joinLeave');
    const jlCmd = h.sockets('jay')[0].sent.flatMap(frameMessages).find((m) => m.subscribe && m.subscribe.channel === room);
    r.join_leave_request = jlCmd ? { join_leave: jlCmd.subscribe.join_leave ?? null } : null;
    const mark = h.log.length;
    kaySub.subscribe();
    kay.connect();
    const kc = await h.waitFor(is('kay', 'connected'), 5000, 'kay connected');
    await h.waitFor(is('kay', 'subscribed', room), 5000, 'kay subscribed');
    const j = await h.waitFor((e) => is('jay', 'join', room)(e) && e.info && e.info.user === 'kay', 3000, 'jay gets kay\'s join', mark)
      .catch(() => null);
    kaySub.unsubscribe();
    const l = await h.waitFor((e) => is('jay', 'leave', room)(e) && e.info && e.info.user === 'kay', 3000, 'jay gets kay\'s leave', mark)
      .catch(() => null);
    await sleep(300);
    r.join_leave = {
      jay_join: j ? j.info : null, jay_leave: l ? l.info : null, kay_client: kc.client,
      kay_join_leave_events: h.count((e) => e.who === 'kay' && (e.kind === 'join' || e.kind === 'leave')),
    };
  } else if (mode === 'rpc') {
    const ria = h.client('ria', { token: h.token('ria') });
    ria.connect();
    await h.waitFor(is('ria', 'connected'), 5000, 'connected');
    r.rpc = await errOf(ria.rpc('anything', { x: 1 }), 'rpc');
    r.after = { state: ria.state, sockets_opened: h.sockets('ria').length };
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
});
