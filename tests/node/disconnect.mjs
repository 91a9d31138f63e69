// Scenario 5: the server API `disconnect` with no code closes the user's connections with 3503 "force
// disconnect"; centrifuge-js goes to `disconnected` with that code and does not reconnect. Another user's
// connection is left alone.
import { main, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const is = (who, kind) => (e) => e.who === who && e.kind === kind;

  const dora = h.client('dora', { token: h.token('dora') });
  const erin = h.client('erin', { token: h.token('erin') });
  const doraSub = h.sub(dora, 'dora', 'news');
  doraSub.subscribe();
  dora.connect();
  erin.connect();
  await h.waitFor(is('dora', 'connected'), 5000, 'dora connected');
  await h.waitFor(is('dora', 'subscribed'), 5000, 'dora subscribed');
  await h.waitFor(is('erin', 'connected'), 5000, 'erin connected');

  r.api_disconnect = await h.api('disconnect', { user: 'dora' });
  const d = await h.waitFor(is('dora', 'disconnected'), 5000, 'dora disconnected');
  r.disconnected = { code: d.code, reason: d.reason };
  await sleep(1500); // a reconnect (min delay 500 ms) would show by now
  r.after = {
    state: dora.state,
    sub_state: doraSub.state,
    sockets_opened: h.sockets('dora').length,
    socket_close: h.sockets('dora')[0].close,
    connecting_events: h.count(is('dora', 'connecting')),
    connected_events: h.count(is('dora', 'connected')),
  };
  r.other_user = {
    state: erin.state,
    sockets_opened: h.sockets('erin').length,
    socket_close: h.sockets('erin')[0].close,
    disconnect_events: h.count((e) => e.who === 'erin' && (e.kind === 'disconnected' || e.kind === 'connecting') && e.code !== 0),
  };
});
