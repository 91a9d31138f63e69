// A server restart (memory engine: history is gone, streams get new epochs) as centrifuge-js sees it.
// This script runs tetherd itself (args.tetherd_bin, args.config, on the fixed args.port): subscribed to
// `chat:restart` with two publications seen, the server is killed (SIGKILL) and started again on the same port;
// the SDK reconnects and resubscribes with recover + the old epoch, and must get
// {wasRecovering: true, recovered: false} with a new epoch at offset 0; live delivery then goes on at offset 1.
import { spawn } from 'node:child_process';
import { main, sleep } from './lib.mjs';

function startTetherd(h, logs) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TETHER_')));
  env.RUST_LOG = process.env.TETHERD_LOG || 'info';
  env.NO_COLOR = '1';
  const child = spawn(h.args.tetherd_bin, ['--listen', `127.0.0.1:${h.args.port}`, '--gateway', h.args.config], {
    env, stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr.on('data', (d) => logs.push(...String(d).split('\n').filter((l) => l)));
  const ready = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += String(d);
      if (out.includes('tetherd listening on ')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`tetherd exited (${code}) before listening: ${logs.slice(-10).join(' | ')}`)));
  });
  return { child, ready };
}

main(async (h) => {
  const r = h.results;
  const ch = 'chat:restart';
  const is = (who, kind) => (e) => e.who === who && e.kind === kind && (e.channel === undefined || e.channel === ch);
  const logs = [];
  const children = [];
  process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));
  r.tetherd_log = logs;

  let srv = startTetherd(h, logs);
  children.push(srv.child);
  await h.bounded(srv.ready, 15000, 'first tetherd listening');

  const rosa = h.client('rosa', { token: h.token('rosa'), minReconnectDelay: 300, maxReconnectDelay: 600 });
  const sub = h.sub(rosa, 'rosa', ch);
  sub.subscribe();
  rosa.connect();
  const s1 = await h.waitFor(is('rosa', 'subscribed'), 5000, 'subscribed');
  const epoch1 = s1.streamPosition ? s1.streamPosition.epoch : null;
  await h.apiOk('publish', { channel: ch, data: { n: 1 } });
  await h.apiOk('publish', { channel: ch, data: { n: 2 } });
  await h.until(() => h.count(is('rosa', 'publication')) >= 2, 5000, 'two publications');

  const mark = h.log.length;
  srv.child.kill('SIGKILL');
  await new Promise((resolve) => (srv.child.exitCode !== null || srv.child.signalCode !== null ? resolve() : srv.child.on('exit', resolve)));
  const away = await h.waitFor(is('rosa', 'connecting'), 5000, 'connecting after the server died', mark);
  r.connecting = { code: away.code, reason: away.reason };

  // Same port again (retry a little in case the old socket lingers).
  for (let attempt = 0; ; attempt++) {
    srv = startTetherd(h, logs);
    children.push(srv.child);
    try {
      await h.bounded(srv.ready, 15000, 'restarted tetherd listening');
      break;
    } catch (e) {
      if (attempt >= 5) throw e;
      await sleep(300);
    }
  }
  const s2 = await h.waitFor(is('rosa', 'subscribed'), 15000, 'resubscribed after the restart', mark);
  const resub = h.sockets('rosa').slice(1).flatMap((s) => s.sent).join('\n');
  r.resubscribed = {
    wasRecovering: s2.wasRecovering, recovered: s2.recovered, hasRecoveredPublications: s2.hasRecoveredPublications,
    offset: s2.streamPosition ? s2.streamPosition.offset : null,
    new_epoch: Boolean(s2.streamPosition && s2.streamPosition.epoch && s2.streamPosition.epoch !== epoch1),
    asked_with_old_epoch: resub.includes(`"epoch":"${epoch1}"`) && resub.includes('"recover":true'),
  };
  r.api_publish_after = await h.apiOk('publish', { channel: ch, data: { n: 'after restart' } });
  await h.waitFor((e) => is('rosa', 'publication')(e) && h.log.indexOf(e) > mark, 5000, 'publication after the restart');
  await sleep(200);
  r.publications_after_restart = h.log.slice(mark).filter(is('rosa', 'publication')).map((e) => ({ data: e.data, offset: e.offset ?? null }));
  r.tetherd_log = logs.slice(-20);
});
