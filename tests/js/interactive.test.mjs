// The JS client's interactive features (docs/client-js.md: rpc, #user, presence)
// against a real herald and a real backend (a Node HTTP server as the app's webhook):
// rpc answered by ref, its errors, its timeout, its end at a disconnect (never re-sent);
// messages to the connection's user, resumed across forced disconnects with nothing
// lost or duplicated on every transport; presence events to the channel's handlers.
//
//   node --test tests/js/interactive.test.mjs      (HERALD_BIN=build/herald by default)
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';

import { Herald } from '../../clients/js/herald.js';
import { NodeWebSocket, collector, freePort, jwt as sign, kit, sleep, until, userSoak } from './support.mjs';

const CUTS = Number(process.env.HERALD_JS_USER_DISCONNECTS || 30);
const SECRET = 'sekrit';
const { cleanup, server, client } = kit(after, Herald);
const jwt = (claims) => sign(SECRET, { exp: Math.floor(Date.now() / 1000) + 600, ...claims });

// The app's backend: answers rpc by method (echo; fail; slow and slowfail: after data.ms), allows
// everything else. `calls` counts the rpc calls it got, by method.
async function backend() {
  const calls = {};
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', async () => {
      const ev = JSON.parse(body);
      let answer = { result: 'allow' };
      if (ev.event === 'rpc') {
        calls[ev.method] = (calls[ev.method] || 0) + 1;
        if (ev.method === 'slow' || ev.method === 'slowfail') await sleep(ev.data.ms);
        answer = /fail/.test(ev.method) ? { error: 'no such room' } : { data: { method: ev.method, got: ev.data, user: ev.user } };
      }
      const out = JSON.stringify(answer);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
      res.end(out);
    });
  });
  const port = await freePort();
  await new Promise((ok) => srv.listen(port, '127.0.0.1', ok));
  cleanup.push(() => new Promise((ok) => { srv.closeAllConnections(); srv.close(ok); }));
  return { url: `http://127.0.0.1:${port}/hook`, calls };
}

// NodeWebSocket that keeps every op the client sends (over all its connections).
const sent = [];
class RecordingWebSocket extends NodeWebSocket {
  send(text) {
    sent.push(JSON.parse(text));
    super.send(text);
  }
}

const hooked = async (args = []) => {
  const b = await backend();
  return { b, s: await server(['--webhook-url', b.url, '--webhook-secret', 'x', '--webhook-events', 'rpc', ...args]) };
};

test('rpc: resolves with the backend data, rejects with its error code; answers matched by ref out of order', async () => {
  const { s } = await hooked(['--token-secret', SECRET]);
  const h = client(s.url, { WebSocket: RecordingWebSocket, token: jwt({ sub: 'ann', channels: ['**'] }) });
  const errors = [];
  h.on('error', (e) => errors.push(e));
  h.subscribe('r');
  await until(() => h.transport === 'websocket', 5000, 'the WebSocket');
  const order = [];
  const slow = h.rpc('slow', { ms: 600 }).then((d) => (order.push('slow'), d));
  const fast = h.rpc('echo', { n: [2] }).then((d) => (order.push('fast'), d));
  const bad = h.rpc('fail').catch((e) => e);
  assert.deepEqual(await fast, { method: 'echo', got: { n: [2] }, user: 'ann' });
  assert.deepEqual(await slow, { method: 'slow', got: { ms: 600 }, user: 'ann' });
  assert.deepEqual(order, ['fast', 'slow']);
  const e = await bad;
  assert.ok(e instanceof Error && e.error === 'rpc_error' && e.code === 'rpc_error' && e.message === 'no such room', e);
  const refs = sent.filter((o) => o.op === 'rpc').map((o) => o.ref);
  assert.equal(new Set(refs).size, refs.length, `refs ${refs}`);
  assert.deepEqual(errors, [], 'a call answered with an error rejects its promise only');
});

test('rpc: a call in flight at a disconnect rejects (disconnected) and is not sent again; refs stay unique', async () => {
  const { b, s } = await hooked();
  sent.length = 0;
  const h = client(s.url, { WebSocket: RecordingWebSocket });
  h.subscribe('r');
  await until(() => h.transport === 'websocket', 5000, 'the WebSocket');
  assert.deepEqual(await h.rpc('echo', 1), { method: 'echo', got: 1, user: null });
  const inflight = h.rpc('slow', { ms: 1500 }).then(() => 'answered', (e) => e);
  await until(() => b.calls.slow === 1, 5000, 'the backend to get the call');
  await s.restart('SIGKILL');
  assert.equal((await inflight).error, 'disconnected');
  await until(() => h.transport === 'websocket', 10000, 'the reconnect');
  assert.deepEqual(await h.rpc('echo', 2), { method: 'echo', got: 2, user: null });
  await sleep(1000);
  assert.equal(b.calls.slow, 1, 'the call was sent again after the reconnect');
  const refs = sent.filter((o) => o.op === 'rpc').map((o) => o.ref);
  assert.equal(refs.length, 3);
  assert.equal(new Set(refs).size, 3, `refs ${refs}`);
});

test('rpc: {timeout} rejects (timeout) when the answer is late; the late answer (a reply or an error) is dropped', async () => {
  const { s } = await hooked();
  const h = client(s.url);
  const errors = [];
  h.on('error', (e) => errors.push(e));
  h.subscribe('r');
  await until(() => h.transport === 'websocket', 5000, 'the WebSocket');
  const t0 = Date.now();
  await assert.rejects(h.rpc('slow', { ms: 800 }, { timeout: 200 }), (e) => e.error === 'timeout');
  assert.ok(Date.now() - t0 < 700, 'rejected at the timeout');
  await assert.rejects(h.rpc('slowfail', { ms: 600 }, { timeout: 100 }), (e) => e.error === 'timeout');
  await sleep(900); // the answers come now, to no one
  assert.deepEqual(errors, []);
  assert.deepEqual(await h.rpc('echo', 3), { method: 'echo', got: 3, user: null });
});

test('rpc and publish need a WebSocket: rpc_needs_websocket over SSE and long-poll, not_connected before it opens', async () => {
  const { s } = await hooked();
  for (const t of ['sse', 'poll']) {
    const h = client(s.url, { transports: [t] });
    h.subscribe('r');
    await until(() => h.transport === t, 5000, t);
    await assert.rejects(h.rpc('echo'), (e) => e.error === 'rpc_needs_websocket' && /needs a WebSocket/.test(e.message));
    await assert.rejects(h.publish('r', 1), (e) => e.error === 'publish_needs_websocket');
  }
  const h = client(s.url);
  await assert.rejects(h.rpc('echo'), (e) => e.error === 'not_connected' && /wait for the 'open' event/.test(e.message));
});

for (const t of ['websocket', 'sse', 'poll']) {
  test(`#user over ${t}: the user's messages (not another user's), resumed across ${CUTS} forced disconnects, nothing lost or duplicated`, { timeout: 120000 }, async () => {
    const s = await server(['--token-secret', SECRET, '--lifetime-min', '150ms', '--lifetime-max', '300ms', '--poll-timeout', '1s', '--history-size', '1000']);
    await userSoak(client(s.url, { transports: [t], token: jwt({ sub: 'u1', channels: ['**'] }) }), t, s.url, CUTS, t);
  });
}

test('#user alone: a connection for the user\'s messages only (no channels on the wire)', async () => {
  const s = await server(['--token-secret', SECRET]);
  for (const t of ['websocket', 'sse', 'poll']) {
    sent.length = 0;
    const h = client(s.url, { transports: [t], WebSocket: RecordingWebSocket, token: jwt({ sub: 'solo', channels: [] }) });
    const got = collector(h.subscribe('#user'));
    const errors = [];
    h.on('error', (e) => errors.push(e));
    await until(() => h.transport === t, 5000, t);
    await sleep(200);
    const r = await fetch(`${s.url}/api/publish`, { method: 'POST', body: JSON.stringify({ users: ['solo'], data: t }) });
    assert.equal(r.status, 201);
    await until(() => got.data.length === 1, 5000, `the user's message over ${t}`);
    assert.deepEqual(got.data, [t]);
    assert.deepEqual(errors, []);
    assert.deepEqual(sent.filter((o) => o.op === 'subscribe'), [], 'no subscribe op for the user');
    h.close();
  }
});

for (const t of ['websocket', 'sse']) {
  test(`presence over ${t}: join/leave reach the handlers of their channel; {presence: true} asks, a client without it gets none`, async () => {
    const s = await server(['--token-secret', SECRET]);
    assert.equal((await fetch(`${s.url}/api/channels/room`, { method: 'PUT', body: '{"presence":true}' })).status, 201);
    const token = (sub) => jwt({ sub, channels: ['**'], info: { name: sub.toUpperCase() } });
    const ann = client(s.url, { transports: [t], presence: true, token: token('ann') });
    const events = [], other = [], plain = [];
    const room = ann.subscribe(['room'], { onLeave: (e) => events.push(e) });
    room.on('join', (e) => events.push(e));
    const annGot = collector(room);
    const news = ann.subscribe(['news']);
    for (const type of ['join', 'leave']) news.on(type, (e) => other.push(e));
    await until(() => events.length === 1, 5000, "ann's own join");
    // cy subscribes without asking: counted (ann sees cy come), told nothing
    const cy = client(s.url, { transports: [t], token: token('cy') });
    cy.subscribe(['room'], { onJoin: (e) => plain.push(e), onLeave: (e) => plain.push(e) });
    await until(() => events.length === 2, 5000, "cy's join");
    const bob = client(s.url, { transports: [t], token: token('bob') });
    const got = collector(bob.subscribe('room'));
    await until(() => events.length === 3, 5000, "bob's join");
    const ack = await s.publish('room', 'hi');
    await until(() => got.data.length === 1 && annGot.data.length === 1, 5000, 'a message as well');
    bob.close();
    await until(() => events.length === 4, 5000, "bob's leave");
    await sleep(200);
    assert.deepEqual(events.map((e) => [e.event, e.channel, e.user, e.info?.name]), [
      ['join', 'room', 'ann', 'ANN'], ['join', 'room', 'cy', 'CY'], ['join', 'room', 'bob', 'BOB'], ['leave', 'room', 'bob', 'BOB']]);
    assert.deepEqual(other, []);
    assert.deepEqual(plain, []);
    assert.equal(ann.cursor(['room']), ack.id, 'presence events move no cursor');
  });
}
