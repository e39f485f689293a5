// The JS client (clients/js/herald.js) against a real herald: delivery across forced
// disconnects (lifetime end, DELETE of the channel, server restarts) with nothing lost
// or duplicated, transport fallback through a proxy that blocks WebSocket (and SSE),
// tokens with a refresh callback, publish over WebSocket.
//
//   node --test tests/js/            (HERALD_BIN=build/herald by default)
//   HERALD_JS_DISCONNECTS=300 node --test tests/js/   (a longer run)
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { Herald } from '../../clients/js/herald.js';
import { NodeWebSocket, blockingProxy, collector, jwt, kit, sleep, tally, until } from './support.mjs';

const DISCONNECTS = Number(process.env.HERALD_JS_DISCONNECTS || 100);
const { cleanup, server, client } = kit(after, Herald);

// Publishes 0, 1, 2… to `channel` every `every` ms until stopped, retrying each number
// until herald acknowledges it, so that every number is stored. Paused around restarts:
// herald keeps history in memory, so a publish it acknowledges while it drains (after
// its subscribers were told to reconnect) dies with it; that is the server's to fix,
// this test measures the client (docs/client-js.md#what-is-guaranteed).
function publisher(s, channel, every = 5) {
  const p = { n: 0, stopped: false, paused: null };
  p.done = (async () => {
    while (!p.stopped) {
      if (p.paused) await p.paused;
      try {
        await (p.cur = s.publish(channel, p.n));
        p.n++;
      } catch {
        await sleep(20);
      }
      await sleep(every);
    }
  })();
  // Runs `action` (a restart, a DELETE of the channel) once the publish in flight is
  // answered and `got` has everything: what herald acknowledged but had not delivered
  // dies with a restarted node's memory, or with a deleted channel's history.
  p.pauseFor = async (got, action) => {
    let go;
    p.paused = new Promise((ok) => (go = ok));
    await p.cur?.catch(() => {});
    await until(() => got.data.length >= p.n, 10000, 'the client to catch up').catch(() => {});
    await action();
    p.paused = null;
    go();
  };
  p.stop = async () => {
    p.stopped = true;
    await p.done;
  };
  return p;
}

test('websocket: messages of several channels, in order', async () => {
  const s = await server();
  const h = client(s.url);
  const sub = h.subscribe(['a', 'b']);
  const got = collector(sub);
  let opened;
  h.on('open', (e) => (opened = e.transport));
  await until(async () => (await s.subscribers('b')) === 1, 5000, 'the subscription');
  for (let i = 0; i < 10; i++) await s.publish(i % 2 ? 'b' : 'a', i);
  await until(() => got.data.length === 10, 5000, '10 messages');
  assert.equal(opened, 'websocket');
  assert.deepEqual(got.data, [...Array(10).keys()]);
});

// The heart of it: a steady publish stream; the server cuts the client over and over
// (lifetime end every 150-300 ms, a DELETE of the channel now and then, two restarts).
// Everything published arrives once, in order.
async function disconnects(transport, args, proxyOpts, want) {
  const s = await server(['--lifetime-min', '150ms', '--lifetime-max', '300ms', '--poll-timeout', '1s', ...args]);
  let url = s.url;
  if (proxyOpts) {
    const p = await blockingProxy(s.url, proxyOpts);
    cleanup.push(() => new Promise((ok) => { p.closeAllConnections(); p.close(ok); }));
    url = p.url;
  }
  const chan = 'soak-' + transport;
  const h = client(url);
  const got = collector(h.subscribe([chan]));
  const used = new Set();
  let cuts = 0, deletes = 0, restarts = 0, pub;
  h.on('open', (e) => used.add(e.transport));
  h.on('disconnect', () => cuts++);
  if (process.env.HERALD_JS_DEBUG) {
    // The connection's story, printed at the end: what happened around a loss.
    const evs = [];
    h.on('reconnect', (m) => evs.push('reconnect:' + m.reason));
    h.on('error', (m) => evs.push('error:' + m.error));
    h.on('open', (e) => evs.push('open@' + pub?.n));
    h.on('disconnect', () => evs.push('disc'));
    cleanup.push(() => console.log('# events ' + evs.slice(-400).join(' ')));
  }
  await until(async () => (await s.subscribers(chan)) === 1, 10000, 'the subscription');
  pub = publisher(s, chan);
  const t0 = Date.now();
  while (cuts + deletes < want) {
    await sleep(100);
    if (Date.now() - t0 > 240000) break;
    if ((cuts + deletes) % 15 === 7) {
      if (process.env.HERALD_JS_DEBUG) console.log(`# delete at ${pub.n}`);
      await pub.pauseFor(got, () => s.deleteChannel(chan));
      deletes++;
    }
    if (restarts < 2 && cuts + deletes > (restarts + 1) * (want / 3)) {
      if (process.env.HERALD_JS_DEBUG) console.log(`# restart at ${pub.n}`);
      await pub.pauseFor(got, () => s.restart('SIGTERM'));
      restarts++;
    }
  }
  await pub.stop();
  await until(() => got.data.length >= pub.n, 15000, `all ${pub.n} messages`).catch(() => {});
  await sleep(300); // duplicates would come now
  const r = tally(got.data, pub.n);
  const forced = cuts + deletes;
  if (process.env.HERALD_JS_DEBUG) for (const g of got.gaps) console.log('# gap ' + JSON.stringify(g));
  console.log(`# ${transport}: ${pub.n} published, ${r.received} received, lost ${r.lost}, duplicated ${r.duplicated}, out of order ${r.outOfOrder} over ${forced} forced disconnects (${cuts} connection ends incl. ${restarts} restarts, ${deletes} channel deletes, ${got.closed.length} closed events, ${got.gaps.length} gaps)`);
  assert.deepEqual([...used], [transport]);
  assert.equal(r.lost, 0);
  assert.equal(r.duplicated, 0);
  assert.equal(r.outOfOrder, 0);
  assert.ok(forced >= want, `only ${forced} forced disconnects`);
  assert.ok(got.closed.length > 0, 'DELETE of the channel reached the client as `closed`');
}

test(`websocket: nothing lost or duplicated over ${DISCONNECTS} forced disconnects`, { timeout: 300000 }, async () => {
  await disconnects('websocket', [], null, DISCONNECTS);
});

test('websocket blocked by a proxy: SSE, nothing lost or duplicated across disconnects', { timeout: 300000 }, async () => {
  await disconnects('sse', [], { websocket: true }, Math.min(DISCONNECTS, 40));
});

test('websocket and SSE blocked: long-poll, nothing lost or duplicated across deletes and restarts', { timeout: 300000 }, async () => {
  // Long-polls end every answer anyway; the forced ones here are channel deletes and restarts.
  const s = await server(['--poll-timeout', '1s']);
  const p = await blockingProxy(s.url, { websocket: true, sse: true });
  cleanup.push(() => new Promise((ok) => { p.closeAllConnections(); p.close(ok); }));
  const h = client(p.url);
  const got = collector(h.subscribe(['lp']));
  const used = new Set();
  h.on('open', (e) => used.add(e.transport));
  await until(() => used.size, 10000, 'a transport');
  const pub = publisher(s, 'lp');
  for (let i = 0; i < 10; i++) {
    await sleep(150);
    await pub.pauseFor(got, () => s.deleteChannel('lp'));
  }
  await pub.pauseFor(got, () => s.restart('SIGTERM'));
  await sleep(500);
  await pub.stop();
  await until(() => got.data.length >= pub.n, 15000, 'all messages').catch(() => {});
  await sleep(300);
  const r = tally(got.data, pub.n);
  console.log(`# poll: ${pub.n} published, lost ${r.lost}, duplicated ${r.duplicated}, out of order ${r.outOfOrder} (10 deletes, 1 restart)`);
  assert.deepEqual([...used], ['poll']);
  assert.deepEqual(r, { received: pub.n, lost: 0, duplicated: 0, outOfOrder: 0 });
});

test('shared where there are no Web Locks (Node): a connection of its own, as without the option', async () => {
  assert.equal(globalThis.navigator?.locks, undefined, 'this Node has Web Locks: the test means the fallback');
  const s = await server();
  const h = client(s.url, { shared: true });
  const got = collector(h.subscribe(['alone']));
  await until(async () => (await s.subscribers('alone')) === 1, 5000, 'the subscription');
  for (let i = 0; i < 3; i++) await s.publish('alone', i);
  await until(() => got.data.length === 3, 5000, '3 messages');
  assert.deepEqual(got.data, [0, 1, 2]);
  assert.equal(h.role, null);
  assert.equal(h.transport, 'websocket');
});

test('shared where Web Locks refuse (an opaque origin, e.g. a sandboxed iframe): error "shared", then a connection of its own', async () => {
  // The Web Locks spec: request() from an opaque origin returns a promise rejected with
  // a SecurityError, though navigator.locks exists there.
  const had = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  const refuse = () => Promise.reject(new DOMException('opaque origin', 'SecurityError'));
  Object.defineProperty(globalThis, 'navigator', { value: { locks: { request: refuse } }, configurable: true });
  try {
    const s = await server();
    const h = client(s.url, { shared: true });
    const errors = [];
    h.on('error', (e) => errors.push(e));
    const got = collector(h.subscribe(['refused-locks']));
    await until(async () => (await s.subscribers('refused-locks')) === 1, 5000, 'a connection of its own');
    for (let i = 0; i < 3; i++) await s.publish('refused-locks', i);
    await until(() => got.data.length === 3, 5000, '3 messages');
    assert.deepEqual(got.data, [0, 1, 2]);
    assert.deepEqual(errors.map((e) => e.error), ['shared']);
    assert.match(errors[0].detail, /SecurityError|opaque origin/);
    assert.equal(h.role, null);
  } finally {
    if (had) Object.defineProperty(globalThis, 'navigator', had);
    else delete globalThis.navigator;
  }
});

test('SSE: a first connection that ends before any message still resumes from where it began', async () => {
  // The first stream ends (lifetime 300 ms) before anything is published; the proxy holds
  // the reconnect back 500 ms and a message is published meanwhile: it must arrive.
  const s = await server(['--lifetime-min', '300ms', '--lifetime-max', '300ms']);
  let sseRequests = 0;
  const p = await blockingProxy(s.url, { websocket: true, delay: (req) => (req.url.startsWith('/sse') && ++sseRequests > 1 ? 500 : 0) });
  cleanup.push(() => new Promise((ok) => { p.closeAllConnections(); p.close(ok); }));
  const h = client(p.url, { transports: ['sse'] });
  const got = collector(h.subscribe(['first']));
  await until(() => sseRequests === 2, 5000, 'the reconnect');
  await s.publish('first', 'while away');
  await until(() => got.data.length === 1, 5000, 'the message published between the connections');
  assert.deepEqual(got.data, ['while away']);
});

test('gap: a cursor older than the history is reported, then the retained messages', async () => {
  const s = await server();
  await fetch(`${s.url}/api/channels/g`, { method: 'PUT', body: '{"history_size":3}' });
  const ids = [];
  for (let i = 0; i < 6; i++) ids.push((await s.publish('g', i)).id);
  const h = client(s.url);
  const got = collector(h.subscribe(['g'], { since: ids[0] }));
  await until(() => got.data.length === 3, 5000, 'the replay');
  assert.deepEqual(got.data, [3, 4, 5]);
  assert.equal(got.gaps.length, 1);
  assert.equal(got.gaps[0].oldest, ids[3]);
  assert.equal(h.cursor(), ids[5]);
});

for (const transports of [['websocket'], ['sse'], ['poll']]) {
  test(`tokens over ${transports[0]}: getToken is called, expiry brings a new token, nothing lost`, { timeout: 60000 }, async () => {
    const s = await server(['--token-secret', 'sekrit', '--token-skew', '0s', '--poll-timeout', '1s']);
    let calls = 0;
    // Tokens live 3 s: the client refreshes before expiry (or reconnects on `expired`).
    const getToken = async () => {
      calls++;
      return jwt('sekrit', { sub: 'u1', channels: ['t.*'], exp: Math.floor(Date.now() / 1000) + 3 });
    };
    const h = client(s.url, { getToken, transports });
    const got = collector(h.subscribe(['t.1']));
    await until(async () => (await s.subscribers('t.1')) === 1 || h.transport === 'poll', 10000, 'the subscription');
    const pub = publisher(s, 't.1', 20);
    await sleep(7000);
    await pub.stop();
    await until(() => got.data.length >= pub.n, 10000, 'all messages').catch(() => {});
    const r = tally(got.data, pub.n);
    console.log(`# tokens/${transports[0]}: getToken called ${calls} times, ${pub.n} published, lost ${r.lost}, duplicated ${r.duplicated}`);
    assert.ok(calls >= 3, `getToken called ${calls} times in 7 s of 3 s tokens`);
    assert.deepEqual(r, { received: pub.n, lost: 0, duplicated: 0, outOfOrder: 0 });
  });
}

test('a token that does not grant the channel: error event naming it', async () => {
  const s = await server(['--token-secret', 'sekrit']);
  const h = client(s.url, { token: jwt('sekrit', { channels: ['mine'], exp: Math.floor(Date.now() / 1000) + 60 }) });
  const got = collector(h.subscribe(['yours']));
  await until(() => got.errors.length, 5000, 'an error');
  assert.equal(got.errors[0].error, 'channel_forbidden');
  assert.equal(got.errors[0].channel, 'yours');
});

test('publish over WebSocket (--ws-publish) reaches an independent subscriber', async () => {
  const s = await server(['--ws-publish']);
  const h = client(s.url);
  const got = collector(h.subscribe(['pw']));
  await until(() => h.transport === 'websocket', 5000, 'the WebSocket');
  const poll = fetch(`${s.url}/poll?channels=pw&timeout=5`).then((r) => r.json());
  await until(async () => (await s.subscribers('pw')) === 2, 5000, 'the second subscriber');
  const ack = await h.publish('pw', { hi: 1 });
  assert.match(ack.id, /^\d+$/);
  assert.deepEqual((await poll).messages.map((m) => m.data), [{ hi: 1 }]);
  await until(() => got.data.length === 1, 5000, 'its own message');
  await assert.rejects(new Herald({ url: s.url, WebSocket: NodeWebSocket }).publish('pw', 1), /open WebSocket/);
});

test('subscribe and close: unsubscribed channels stop, close() ends the connection', async () => {
  const s = await server();
  const h = client(s.url);
  const a = h.subscribe(['x1']);
  const b = h.subscribe(['x2']);
  const ga = collector(a), gb = collector(b);
  await until(async () => (await s.subscribers('x2')) === 1, 5000, 'both channels');
  a.close();
  await until(async () => (await s.subscribers('x1')) === 0, 5000, 'x1 unsubscribed');
  await s.publish('x1', 'no');
  await s.publish('x2', 'yes');
  await until(() => gb.data.length === 1, 5000, 'x2 message');
  assert.deepEqual(ga.data, []);
  h.close();
  await until(async () => (await s.subscribers('x2')) === 0, 5000, 'connection closed');
});

// A WebSocket that opens only when the test says so (a slow network), else a fake that
// never answers.
class LateWebSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    LateWebSocket.all.push(this);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error('send on a WebSocket that is not open');
    this.sent.push(JSON.parse(text));
  }
  close() {} // like Node's NodeWebSocket before the upgrade: nothing to close yet
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
}

test('a WebSocket that opens after the client gave up on it (openTimeout) is closed, and sends nothing', async () => {
  const errors = [];
  const onError = (e) => errors.push(e);
  process.on('uncaughtException', onError);
  try {
    const h = new Herald({ url: 'http://herald.test', WebSocket: LateWebSocket, transports: ['websocket'], openTimeout: 100, minDelay: 60000 });
    cleanup.push(() => h.close());
    h.subscribe('room');
    await until(() => LateWebSocket.all.length === 1, 2000, 'the first WebSocket');
    const late = LateWebSocket.all[0];
    late.close = () => (late.closed = true);
    await sleep(300); // the client gave up on it and waits (minDelay) to try again
    late.open();
    await sleep(50);
    assert.deepEqual(errors, []);
    assert.deepEqual(late.sent, [], 'a subscribe op on a connection the client dropped');
    assert.equal(late.closed, true, 'the late socket is closed');
    assert.equal(h.transport, null);
  } finally {
    process.off('uncaughtException', onError);
  }
});

test("the subscribe op goes before what an 'open' handler sends (an rpc there finds the channels held)", async () => {
  const h = new Herald({ url: 'http://herald.test', WebSocket: LateWebSocket });
  cleanup.push(() => h.close());
  h.on('open', () => h.rpc('who').catch(() => {}));
  const n = LateWebSocket.all.length;
  h.subscribe('room');
  await until(() => LateWebSocket.all.length === n + 1, 2000, 'a WebSocket');
  const ws = LateWebSocket.all[n];
  ws.open();
  assert.deepEqual(ws.sent.map((o) => o.op), ['subscribe', 'rpc']);
});
