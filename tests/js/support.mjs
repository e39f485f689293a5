// What the JS client's tests share: a real herald (started, restarted, stopped by the
// test), an independent publisher (plain HTTP), a tiny WebSocket client for Node (Node
// 18/20 have none built in; browsers do) and a proxy that blocks transports.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const HERALD_BIN = process.env.HERALD_BIN || path.join(root, 'build/herald');
export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

export async function freePort() {
  const s = net.createServer();
  await new Promise((ok) => s.listen(0, '127.0.0.1', ok));
  const { port } = s.address();
  await new Promise((ok) => s.close(ok));
  return port;
}

export async function until(fn, ms = 15000, what = 'condition') {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// A herald on its own port; restart() stops it (SIGKILL by default, or SIGTERM) and
// starts it again on the same port.
export class HeraldServer {
  constructor(args = []) {
    this.args = args;
  }
  // The first start takes another port when its one was taken; a restart keeps it.
  async start() {
    for (let tries = 0; ; tries++) {
      try {
        return await this._start();
      } catch (e) {
        if (this.started || tries === 2) throw e;
        this.port = null;
      }
    }
  }
  async _start() {
    this.port ||= await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    const proc = (this.proc = spawn(HERALD_BIN, ['--listen', `127.0.0.1:${this.port}`, '--workers', '2', '--log-level', 'error', ...this.args], { stdio: ['ignore', 'ignore', 'inherit'] }));
    const exited = new Promise((ok) => proc.once('exit', () => ok(true)));
    // Ready when /healthz answers while our process runs: another test's herald may have
    // taken the port between freePort() and our bind (ours then exits).
    await until(async () => (await fetch(this.url + '/healthz').catch(() => null))?.ok && proc.exitCode === null, 10000, 'herald to start');
    if (await Promise.race([exited, sleep(100)])) throw new Error(`herald exited at start on port ${this.port}`);
    this.started = true;
    return this;
  }
  // SIGTERM: herald drains and exits 0 (and a sanitizer build reports leaks); SIGKILL
  // after 20 s.
  async stop(signal = 'SIGTERM') {
    if (!this.proc || this.proc.exitCode !== null) return;
    const done = new Promise((ok) => this.proc.once('exit', ok));
    this.proc.kill(signal);
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 20000);
    await done;
    clearTimeout(t);
  }
  async restart(signal) {
    await this.stop(signal);
    await this.start();
  }
  async publish(channel, data) {
    const r = await fetch(`${this.url}/api/publish`, { method: 'POST', body: JSON.stringify({ channel, data }) });
    if (r.status !== 201) throw new Error(`publish: ${r.status} ${await r.text()}`);
    return r.json();
  }
  async subscribers(channel) {
    const r = await fetch(`${this.url}/api/channels/${channel}`);
    return r.ok ? (await r.json()).subscribers : 0;
  }
  async deleteChannel(channel) {
    return (await fetch(`${this.url}/api/channels/${channel}`, { method: 'DELETE' })).status;
  }
}

// A minimal RFC 6455 client with the browser's WebSocket surface (onopen, onmessage,
// onclose, send, close): text frames, ping/pong, close. Enough for herald's JSON frames.
export class NodeWebSocket {
  constructor(url) {
    const u = new URL(url.replace(/^ws/, 'http'));
    const key = crypto.randomBytes(16).toString('base64');
    this.readyState = 0;
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search, headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': key } });
    req.on('upgrade', (res, sock, head) => {
      this.sock = sock;
      this.readyState = 1;
      this.buf = head;
      sock.on('data', (d) => this._data(d));
      sock.on('close', () => this._closed(1006, ''));
      sock.on('error', () => {});
      this.onopen?.({});
      if (head.length) this._data(Buffer.alloc(0));
    });
    req.on('response', (res) => { res.resume(); this._closed(1006, ''); });
    req.on('error', () => this._closed(1006, ''));
    req.end();
  }
  _closed(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.sock?.destroy();
    this.onerror?.({});
    setImmediate(() => this.onclose?.({ code, reason }));
  }
  _frame(op, payload) {
    const n = payload.length;
    const hdr = n < 126 ? Buffer.from([0x80 | op, 0x80 | n]) : n < 65536 ? Buffer.from([0x80 | op, 0xfe, n >> 8, n & 255]) : Buffer.concat([Buffer.from([0x80 | op, 0xff]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; })()]);
    const mask = crypto.randomBytes(4);
    const body = Buffer.from(payload);
    for (let i = 0; i < n; i++) body[i] ^= mask[i & 3];
    this.sock.write(Buffer.concat([hdr, mask, body]));
  }
  send(text) {
    if (this.readyState === 1) this._frame(1, Buffer.from(text));
  }
  close(code = 1000) {
    if (this.readyState !== 1) return;
    const b = Buffer.alloc(2);
    b.writeUInt16BE(code);
    this._frame(8, b);
    this.readyState = 2;
    setTimeout(() => this._closed(code, ''), 100);
  }
  _data(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      const b = this.buf;
      if (b.length < 2) return;
      let n = b[1] & 127, off = 2;
      if (n === 126) { if (b.length < 4) return; n = b.readUInt16BE(2); off = 4; }
      else if (n === 127) { if (b.length < 10) return; n = Number(b.readBigUInt64BE(2)); off = 10; }
      if (b.length < off + n) return;
      const op = b[0] & 15, payload = b.subarray(off, off + n);
      this.buf = b.subarray(off + n);
      if (op === 1) { if (this.readyState === 1) this.onmessage?.({ data: payload.toString() }); }
      else if (op === 9) this.readyState === 1 && this._frame(10, payload);
      else if (op === 8) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        if (this.readyState === 1) this._frame(8, payload.subarray(0, 2));
        return this._closed(code, payload.subarray(2).toString());
      }
    }
  }
}

// An HTTP proxy in front of herald that can refuse WebSocket upgrades (closes the
// connection, as some corporate proxies do) and SSE (answers 502), like a hostile
// network would, and hold requests back (`delay(req)` ms).
// With several targets, each new connection goes to the next (a round-robin balancer).
export async function blockingProxy(target, { websocket = false, sse = false, delay = () => 0 } = {}) {
  const targets = [].concat(target).map((u) => new URL(u));
  let turn = 0;
  const server = http.createServer(async (req, res) => {
    const t = targets[turn++ % targets.length];
    const ms = delay(req); // holds a request back (a slow network)
    if (ms) await sleep(ms);
    if (sse && req.url.includes('/sse')) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      return res.end('proxy: no streaming here');
    }
    const up = http.request({ host: t.hostname, port: t.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  server.on('upgrade', (req, sock, head) => {
    if (websocket) return sock.destroy();
    const t = targets[turn++ % targets.length];
    const up = net.connect(t.port, t.hostname, () => {
      up.write(`${req.method} ${req.url} HTTP/1.1\r\n` + Object.entries(req.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('') + '\r\n');
      up.write(head);
      up.pipe(sock);
      sock.pipe(up);
    });
    up.on('error', () => sock.destroy());
    sock.on('error', () => up.destroy());
  });
  const port = await freePort();
  await new Promise((ok) => server.listen(port, '127.0.0.1', ok));
  server.url = `http://127.0.0.1:${port}`;
  return server;
}

// A test file's kit: herald servers and clients (Node WebSocket, short backoff) that
// are stopped and closed after its tests, by the runner's `after` hook given.
export function kit(after, Herald) {
  const cleanup = [];
  after(async () => {
    for (const f of cleanup.reverse()) await f();
  });
  return {
    cleanup,
    async server(args = []) {
      const s = await new HeraldServer(args).start();
      cleanup.push(() => s.stop());
      return s;
    },
    client(url, opts = {}) {
      const h = new Herald({ url, WebSocket: NodeWebSocket, minDelay: 50, maxDelay: 1000, ...opts });
      cleanup.push(() => h.close());
      return h;
    },
  };
}

// An HS256 JWT of `claims`, signed with `secret`.
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return head + '.' + crypto.createHmac('sha256', secret).update(head).digest('base64url');
}

// Collects what a subscription receives and checks it against what was published.
export function collector(sub) {
  const got = { data: [], gaps: [], closed: [], errors: [] };
  sub.on('message', (m) => got.data.push(m.data));
  sub.on('gap', (m) => got.gaps.push(m));
  sub.on('closed', (m) => got.closed.push(m));
  sub.on('error', (m) => got.errors.push(m));
  return got;
}

// Publishes 0, 1, 2… alternately to the channel `room` and to the user `u1` (a message
// of the room and of u1's messages by turns) at `url`, each retried until herald stores it.
function roomAndUser(url) {
  const p = { n: 0, stopped: false, room: [], user: [] };
  p.done = (async () => {
    while (!p.stopped) {
      const doc = p.n % 2 ? { channels: ['room'], data: p.n } : { users: ['u1'], data: p.n };
      const r = await fetch(`${url}/api/publish`, { method: 'POST', body: JSON.stringify(doc) }).catch(() => null);
      if (r?.status === 201) (p.n % 2 ? p.room : p.user).push(p.n++);
      await sleep(5);
    }
  })();
  p.stop = async () => {
    p.stopped = true;
    await p.done;
  };
  return p;
}

// The client `h` (over transport `t`, its token user u1, on a herald that cuts its
// connections) holds `room` and `#user` while roomAndUser publishes at `pubUrl`, until
// `cuts` disconnects (300 messages for long-poll). Everything arrives once, in order,
// each on its own subscription (not u2's message); prints the figures after `label`.
export async function userSoak(h, t, pubUrl, cuts, label) {
  const room = collector(h.subscribe(['room']));
  const mine = collector(h.subscribe('#user'));
  const envs = [];
  h.subscribe('#user').on('message', (m) => envs.push(m));
  let n = 0;
  h.on('disconnect', () => n++);
  await until(() => h.transport === t && h.cursor(['room']) !== undefined, 10000, `subscribed over ${t}`);
  await fetch(`${pubUrl}/api/publish`, { method: 'POST', body: JSON.stringify({ users: ['u2'], data: 'not yours' }) });
  const pub = roomAndUser(pubUrl);
  const t0 = Date.now();
  while ((t === 'poll' ? pub.n < 300 : n < cuts) && Date.now() - t0 < 60000) await sleep(100);
  await pub.stop();
  await until(() => room.data.length + mine.data.length >= pub.n, 15000, `all ${pub.n} messages`).catch(() => {});
  await sleep(300); // duplicates would come now
  const count = (data, want) => {
    const r = tally(data.map((x) => want.indexOf(x)), want.length);
    return { ...r, stray: data.filter((x) => !want.includes(x)).length };
  };
  const r = count(room.data, pub.room), u = count(mine.data, pub.user);
  console.log(`# #user/${label}: ${pub.n} published (${pub.user.length} to the user), ${n} disconnects; room: lost ${r.lost} duplicated ${r.duplicated}; user: lost ${u.lost} duplicated ${u.duplicated} out of order ${u.outOfOrder}`);
  assert.deepEqual(r, { received: pub.room.length, lost: 0, duplicated: 0, outOfOrder: 0, stray: 0 });
  assert.deepEqual(u, { received: pub.user.length, lost: 0, duplicated: 0, outOfOrder: 0, stray: 0 });
  assert.ok(envs.every((m) => m.channel === '#user'));
  if (t !== 'poll') assert.ok(n >= cuts, `only ${n} disconnects`);
}

// lost and duplicated over a sequence 0..n-1 of published integers
export function tally(data, n) {
  const seen = new Map();
  for (const d of data) seen.set(d, (seen.get(d) || 0) + 1);
  let lost = 0, duplicated = 0, outOfOrder = 0;
  for (let i = 0; i < n; i++) {
    const c = seen.get(i) || 0;
    if (!c && lost < 10) console.log(`# lost ${i}`);
    if (!c) lost++;
    else duplicated += c - 1;
  }
  for (let i = 1; i < data.length; i++) if (data[i] <= data[i - 1]) outOfOrder++;
  return { received: data.length, lost, duplicated, outOfOrder };
}
