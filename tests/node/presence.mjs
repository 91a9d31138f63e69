// Scenario 4: presence with join/leave across two SDK clients of different users in a namespace with
// presence + join_leave + force_push_join_leave (`chat`). presence() lists both clients with their users,
// presenceStats() is {numClients: 2, numUsers: 2}; the first subscriber gets a join push for the second (with
// the second's user and client id) and a leave push when the second disconnects; then stats drop to 1/1.
// Then a second connection of the first user: stats {numClients: 2, numUsers: 1}; its unsubscribe() is a leave.
import { main, sleep } from './lib.mjs';

main(async (h) => {
  const r = h.results;
  const channel = 'chat:presence';
  const is = (who, kind) => (e) => e.who === who && e.kind === kind && (e.channel === undefined || e.channel === channel);

  const pat = h.client('pat', { token: h.token('pat') });
  const quin = h.client('quin', { token: h.token('quin') });
  const patSub = h.sub(pat, 'pat', channel);
  const quinSub = h.sub(quin, 'quin', channel);

  patSub.subscribe();
  pat.connect();
  const pc = await h.waitFor(is('pat', 'connected'), 5000, 'pat connected');
  await h.waitFor(is('pat', 'subscribed'), 5000, 'pat subscribed');
  await sleep(200); // pat's own join (if any) comes first; quin's is what we look for

  const mark = h.log.length;
  quinSub.subscribe();
  quin.connect();
  const qc = await h.waitFor(is('quin', 'connected'), 5000, 'quin connected');
  await h.waitFor(is('quin', 'subscribed'), 5000, 'quin subscribed');
  r.clients = { pat: pc.client, quin: qc.client };

  const join = await h.waitFor((e) => is('pat', 'join')(e) && e.info && e.info.user === 'quin', 5000, 'pat gets quin\'s join', mark);
  r.join_seen_by_pat = join.info;
  r.pat_joins = h.log.filter(is('pat', 'join')).map((e) => e.info);

  const presence = await h.bounded(patSub.presence(), 5000, 'presence()');
  r.presence = presence.clients;
  r.presence_stats = await h.bounded(patSub.presenceStats(), 5000, 'presenceStats()');
  r.presence_stats_quin = await h.bounded(quinSub.presenceStats(), 5000, 'quin presenceStats()');
  r.api_presence_stats = await h.apiOk('presence_stats', { channel });
  r.api_presence = await h.apiOk('presence', { channel });

  // quin goes away: pat gets the leave, counts drop.
  const mark2 = h.log.length;
  quin.disconnect();
  const leave = await h.waitFor((e) => is('pat', 'leave')(e) && e.info && e.info.user === 'quin', 5000, 'pat gets quin\'s leave', mark2);
  r.leave_seen_by_pat = leave.info;
  let stats;
  await h.until(async () => {
    stats = await h.bounded(patSub.presenceStats(), 5000, 'presenceStats() after leave');
    return stats.numClients === 1;
  }, 5000, 'presenceStats numClients back to 1', 100);
  r.presence_stats_after_leave = stats;
  r.presence_after_leave = (await h.bounded(patSub.presence(), 5000, 'presence() after leave')).clients;

  // A second connection of the same user: one more client, not one more user; its unsubscribe() is a leave.
  const pat2 = h.client('pat2', { token: h.token('pat') });
  const pat2Sub = h.sub(pat2, 'pat2', channel);
  const mark3 = h.log.length;
  pat2Sub.subscribe();
  pat2.connect();
  const p2c = await h.waitFor(is('pat2', 'connected'), 5000, 'second pat connection');
  await h.waitFor(is('pat2', 'subscribed'), 5000, 'second pat subscribed');
  const j2 = await h.waitFor((e) => is('pat', 'join')(e) && e.info && e.info.client === p2c.client, 5000, 'join of pat\'s second connection', mark3);
  r.second_connection = { client: p2c.client, join: j2.info };
  r.presence_stats_same_user = await h.bounded(patSub.presenceStats(), 5000, 'presenceStats() with two pat connections');
  const mark4 = h.log.length;
  pat2Sub.unsubscribe();
  const l2 = await h.waitFor((e) => is('pat', 'leave')(e) && e.info && e.info.client === p2c.client, 5000, 'leave after unsubscribe()', mark4);
  r.unsubscribe_leave = l2.info;
  await h.until(async () => {
    stats = await h.bounded(patSub.presenceStats(), 5000, 'presenceStats() after unsubscribe');
    return stats.numClients === 1;
  }, 5000, 'presenceStats numClients back to 1 after unsubscribe()', 100);
  r.presence_stats_after_unsubscribe = stats;
  r.pat2_state = pat2.state;
});
