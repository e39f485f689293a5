// herald.js: the browser and Node client of herald (https://github.com/…/herald).
// No dependencies. WebSocket, then SSE, then long-poll, with fallback; resumes from
// the last id on every reconnect; gap/closed surfaced as events; tokens with refresh.
// With {shared: true} the tabs of an origin share one connection (herald-shared.js,
// loaded only then). docs/client-js.md describes it; docs/api.md the wire protocol.

const ORDER = ['websocket', 'sse', 'poll'];
// The channel of the connection's own user (a token's `sub`): messages herald sends to
// the user ("users" in a publish) arrive with this channel name. Not a channel the
// server takes in a subscribe: it comes with the connection (docs/interactive.md#users).
const USER = '#user';
const wire = (chans) => chans.filter((c) => c !== USER);
// An Error carrying herald's error code (`error`, also as `code`) and the answer's fields.
const fail = (m) => Object.assign(new Error(m.detail || m.error), m, { code: m.error });

// Cursors are ids ("123") or per-channel vectors ("123.-4.7": the first channel's
// position, then each next one's difference from it), in the order of `chans`.
function parseCursor(cursor, chans) {
  const parts = String(cursor).split('.');
  if (parts.some((p) => !/^-?\d+$/.test(p))) return null;
  const first = BigInt(parts[0]);
  return chans.map((c, i) => [c, i && parts.length > 1 ? first + BigInt(parts[i] || 0) : first]);
}

// A JWT's claims (not verified: herald does that), or null.
function jwtClaims(token) {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return null;
  }
}

const jwtExp = (token) => jwtClaims(token)?.exp * 1000 || 0;

class Emitter {
  constructor() {
    this._h = {};
  }
  on(type, fn) {
    (this._h[type] ||= new Set()).add(fn);
    return this;
  }
  off(type, fn) {
    this._h[type]?.delete(fn);
    return this;
  }
  _emit(type, ev) {
    for (const fn of this._h[type] || []) {
      try {
        fn(ev);
      } catch (e) {
        setTimeout(() => { throw e; });
      }
    }
  }
}

export class Subscription extends Emitter {
  constructor(herald, channels, opts) {
    super();
    this.herald = herald;
    this.channels = channels;
    for (const [k, type] of [['onMessage', 'message'], ['onGap', 'gap'], ['onClosed', 'closed'], ['onError', 'error'], ['onJoin', 'join'], ['onLeave', 'leave']])
      if (opts[k]) this.on(type, opts[k]);
  }
  close() {
    this.herald._unsubscribe(this);
  }
  // for await (const env of sub) …: messages as an async iterator.
  async *[Symbol.asyncIterator]() {
    const queue = [];
    let wake = null;
    const fn = (m) => { queue.push(m); wake?.(); };
    const end = () => wake?.();
    this.on('message', fn).on('end', end);
    try {
      for (;;) {
        while (queue.length) yield queue.shift();
        if (this.closed) return;
        await new Promise((ok) => (wake = ok));
        wake = null;
      }
    } finally {
      this.off('message', fn).off('end', end);
    }
  }
}

export class Herald extends Emitter {
  // new Herald('https://push.example.com', {app, token | getToken, transports})
  // or new Herald({url, app, token, getToken, transports, …}).
  constructor(url, opts = {}) {
    super();
    if (typeof url === 'object') ({ url, ...opts } = url);
    const g = globalThis;
    this.opts = { minDelay: 250, maxDelay: 10000, openTimeout: 5000, pollTimeout: 25, rpcTimeout: 10000, ...opts };
    this.base = String(url || g.location?.origin || '').replace(/\/$/, '') + (opts.app ? '/apps/' + encodeURIComponent(opts.app) : '');
    this.WebSocket = opts.WebSocket || g.WebSocket;
    this.fetch = opts.fetch || g.fetch?.bind(g);
    this.transports = (opts.transports || ORDER).map((t) => (t === 'longpoll' ? 'poll' : t)).filter((t) => ORDER.includes(t));
    this.transport = null; // the transport in use while connected
    this.role = null; // with `shared`: 'leader' (holds the tabs' connection) or 'follower'
    this.token = opts.token || null;
    this._subs = new Set();
    this._pos = new Map(); // channel -> last id (BigInt)
    this._perChannel = false; // the server gave per-channel cursors: ids are not global
    this._ti = 0; // index in this.transports
    this._failures = 0;
    this._worked = new Set();
    this._refs = new Map();
    this._ref = 0;
    this._timer = null;
    this._conn = null;
  }

  subscribe(channels, opts = {}) {
    if (typeof channels === 'string') channels = [channels];
    const sub = new Subscription(this, channels, opts);
    if (opts.since != null) {
      const p = parseCursor(opts.since, channels);
      if (!p) throw new Error('herald: bad cursor ' + opts.since);
      for (const [c, id] of p) if (!this._pos.has(c)) this._pos.set(c, id);
    }
    const added = wire(channels.filter((c) => !this._channels().includes(c)));
    this._subs.add(sub);
    if (this._closed) this._closed = false;
    const tabs = this._tabs();
    if (tabs) {
      tabs.then((s) => s?.update());
      return sub;
    }
    // (#user needs no op: the user's messages come with the connection.)
    if (added.length && this._conn?.ws && this._conn.open) this._subOp(added);
    else if (added.length || !this._conn) this._restart(0);
    return sub;
  }

  // Publishes over the WebSocket (the server must run with --ws-publish; the key is
  // the publish key, or the token's `publish` grants apply). Resolves {id, subscribers}.
  publish(channel, data, opts = {}) {
    return this._call('publish', [channel, data, opts], { op: 'publish', channel, data, ...(opts.event && { event: opts.event }), ...(opts.key && { key: opts.key }) });
  }

  // Calls the app's backend (its `rpc` hook) over the WebSocket: resolves with the
  // answer's data, rejects with an Error whose `error` is herald's code (rpc_error,
  // hook_failed, too_many_rpc…) or the client's (rpc_needs_websocket, not_connected,
  // disconnected, timeout). Never re-sent: a call may not be idempotent.
  rpc(method, data = null, opts = {}) {
    return this._call('rpc', [method, data, opts], { op: 'rpc', method, data }, opts.timeout ?? this.opts.rpcTimeout);
  }

  close() {
    this._closed = true;
    for (const s of this._subs) s.closed = true;
    for (const s of this._subs) s._emit('end');
    this._subs.clear();
    this._shared?.then((s) => s?.close());
    this._shared = null;
    this._stop();
    clearTimeout(this._timer);
    clearTimeout(this._refresh);
  }

  // The cursor of the channels given (all held ones by default), to store and pass back
  // as `since` later.
  cursor(chans = this._channels()) {
    return this._cursor(chans);
  }

  // ---- internals ---------------------------------------------------------

  _channels() {
    const all = [];
    for (const s of this._subs) for (const c of s.channels) if (!all.includes(c)) all.push(c);
    return all;
  }

  _unsubscribe(sub) {
    if (!this._subs.delete(sub)) return;
    sub.closed = true;
    sub._emit('end'); // wakes an async iterator
    if (this._shared) return this._shared.then((s) => s?.update());
    const left = this._channels();
    const gone = wire(sub.channels.filter((c) => !left.includes(c)));
    if (!left.length) return this._stop();
    if (!gone.length) return;
    if (this._conn?.ws && this._conn.open) this._send({ op: 'unsubscribe', channels: gone });
    else this._restart(0);
  }

  // With `shared` where the browser has BroadcastChannel and Web Locks: this tab's part
  // in the origin's shared connection (a promise; null once sharing failed to start, and
  // the tab has its own connection then). Without them: false, a connection of our own.
  _tabs() {
    const g = globalThis;
    if (!this.opts.shared || !g.BroadcastChannel || !g.navigator?.locks) return false;
    return (this._shared ||= import('./herald-shared.js')
      .then((m) => m.share(this, jwtClaims))
      .catch((e) => {
        this.opts.shared = false;
        this._shared = null;
        this._emit('error', { error: 'shared', detail: String(e) });
        this._restart(0);
      }));
  }

  _cursor(chans) {
    let max = null;
    for (const id of this._pos.values()) if (max === null || id > max) max = id;
    const ids = chans.map((c) => this._pos.get(c) ?? max);
    if (ids[0] == null) return undefined;
    if (ids.every((id) => id === ids[0])) return String(ids[0]);
    return [ids[0], ...ids.slice(1).map((id) => id - ids[0])].join('.');
  }

  _advance(cursor, chans, onlyUnknown) {
    const p = cursor != null && parseCursor(cursor, chans);
    if (!p) return;
    if (String(cursor).includes('.') && chans.length > 1) this._perChannel = true;
    for (const [c, id] of p) if (!onlyUnknown || !this._pos.has(c)) if (!(this._pos.get(c) > id)) this._pos.set(c, id);
  }

  _url(path, params) {
    const q = new URLSearchParams();
    for (const k in params) if (params[k] != null && params[k] !== '') q.set(k, params[k]);
    if (this.opts.presence) q.set('presence', 1);
    if (this.token) q.set('token', this.token);
    return `${this.base}/${path}?${q}`.replace(/%2C/g, ',');
  }

  _stop() {
    const c = this._conn;
    this._conn = null;
    this.transport = null;
    if (!c) return;
    c.dead = true;
    try {
      c.ws?.close(1000);
      c.abort?.abort();
    } catch {}
    for (const [, p] of this._refs) p.reject(fail({ error: 'disconnected', detail: 'herald: the connection closed before the answer came' }));
    this._refs.clear();
  }

  // Drops the connection and connects again after `delay` ms.
  _restart(delay) {
    this._stop();
    clearTimeout(this._timer);
    if (this._closed || !this._subs.size) return;
    this._timer = setTimeout(() => this._connect(), delay);
  }

  async _connect() {
    if (this._closed || !this._subs.size) return;
    if (this.opts.getToken && (!this.token || this._staleToken || (jwtExp(this.token) && jwtExp(this.token) < Date.now() + 1000))) {
      try {
        this.token = await this.opts.getToken();
        this._staleToken = false;
        this._scheduleRefresh();
      } catch (e) {
        this._emit('error', { error: 'token', detail: String(e) });
        return this._restart(this.opts.maxDelay / 2);
      }
    }
    if (this._closed || this._conn) return;
    const t = this.transports[this._ti % this.transports.length];
    // The channels whose positions move together (one ordered stream): a WebSocket's
    // user channel comes with the upgrade and its channels with the subscribe op, two
    // replays, so there the user's position moves only with its own messages. SSE and
    // long-poll name the user's place last in their cursor once the client knows of one.
    const w = wire(this._channels());
    const chans = t !== 'websocket' && (this._pos.has(USER) || jwtClaims(this.token || '')?.sub) ? [...w, USER] : w;
    const conn = (this._conn = { t, chans, w, open: false });
    if (t === 'websocket' && this.WebSocket) this._ws(conn);
    else if (t === 'sse' && this.fetch && globalThis.ReadableStream) this._sse(conn);
    else if (t === 'poll' && this.fetch) this._poll(conn);
    else this._failed(conn);
  }

  _opened(conn) {
    if (conn.dead || conn.open) return;
    conn.open = true;
    clearTimeout(conn.timer);
    this._failures = 0;
    this._worked.add(conn.t);
    this.transport = conn.t;
    this._emit('open', { transport: conn.t });
  }

  // A connection ended. One that never opened, on a transport that never worked here,
  // is taken for blocked (a proxy that kills upgrades, buffers or refuses): the next
  // transport is tried at once. Otherwise reconnect: `now` (the server asked us to)
  // or after a jittered exponential backoff.
  _failed(conn, now) {
    if (conn && (conn.dead || conn !== this._conn)) return;
    const wasOpen = conn?.open;
    this._stop();
    if (wasOpen) this._emit('disconnect', { transport: conn.t });
    else if (this.opts.getToken) this._staleToken = true;
    if (!wasOpen && conn && !this._worked.has(conn.t) && ++this._ti % this.transports.length) return this._restart(0);
    if (now) return this._restart(0);
    const d = Math.min(this.opts.maxDelay, this.opts.minDelay * 2 ** this._failures++);
    this._restart(d / 2 + (Math.random() * d) / 2);
  }

  // One server event (envelope or control), from any transport.
  _event(conn, m) {
    if (conn.dead) return;
    const subsOf = (c) => [...this._subs].filter((s) => s.channels.includes(c));
    switch (m.event) {
      case 'message': {
        const id = BigInt(m.id);
        if (this._pos.get(m.channel) >= id) return; // had it already
        this._pos.set(m.channel, id);
        if (!this._perChannel && conn.chans.includes(m.channel)) for (const c of conn.chans) if (!(this._pos.get(c) > id)) this._pos.set(c, id);
        for (const s of subsOf(m.channel)) s._emit('message', m);
        return;
      }
      case 'join':
      case 'leave': // presence (live only: no position)
        for (const s of subsOf(m.channel)) s._emit(m.event, m);
        return;
      case 'gap':
        for (const s of subsOf(m.channel)) s._emit('gap', m);
        return this._emit('gap', m);
      case 'closed':
        // The channel was deleted (or expired): say so, and hold it again (a channel of
        // that name published to later reaches us, resuming from our cursor).
        for (const s of subsOf(m.channel)) s._emit('closed', m);
        if (!subsOf(m.channel).length || m.channel === USER) return;
        if (conn.ws) this._subOp([m.channel]);
        else if (conn.t === 'sse') this._restart(0);
        return;
      case 'reconnect':
        conn.reconnect = true;
        return this._emit('reconnect', m);
      case 'expired':
        this._staleToken = true;
        conn.reconnect = true;
        return this._emit('expired', m);
      case 'subscribed':
        this._advance(m.cursor, m.channels, true);
        break;
      case 'error':
        if (/^token_/.test(m.error)) this._staleToken = true;
        if (m.ref != null) break; // the answer of a call: its promise rejects (if it still waits)
        for (const s of m.channel ? subsOf(m.channel) : this._subs) s._emit('error', m);
        this._emit('error', m);
        break;
    }
    const p = m.ref != null && this._refs.get(m.ref);
    if (p) {
      this._refs.delete(m.ref);
      m.event === 'error' ? p.reject(fail(m)) : p.resolve(m);
    }
  }

  _send(op) {
    this._conn.ws.send(JSON.stringify(op));
  }

  // Subscribes channels on the WebSocket from their cursor (presence=1 on the URL covers
  // only the URL's channels: an op asks for its own).
  _subOp(channels) {
    this._send({ op: 'subscribe', channels, since: this._cursor(channels), ...(this.opts.presence && { presence: true }) });
  }

  // An op answered under its ref (publish, rpc) on the open WebSocket; with shared tabs,
  // the leader's (`name` and `args` are the method to call there). Refs are unique for
  // the client's life, so an answer can never reach another call.
  _call(name, args, op, ms) {
    const tabs = this._tabs();
    if (tabs) return tabs.then((s) => (s ? s.call(name, args) : this[name](...args)));
    const c = this._conn;
    if (!c?.ws || !c.open)
      return Promise.reject(fail(c?.open || !this.transports.includes('websocket')
        ? { error: name + '_needs_websocket', detail: `herald: ${name} needs a WebSocket; this connection is ${c?.t || 'not over one'}` }
        : { error: 'not_connected', detail: `herald: ${name} needs an open WebSocket: wait for the 'open' event` }));
    return new Promise((resolve, reject) => {
      const ref = ++this._ref;
      const t = ms && setTimeout(() => this._refs.delete(ref) && reject(fail({ error: 'timeout', detail: `herald: no answer to ${name} within ${ms} ms` })), ms);
      const done = (f) => (v) => (clearTimeout(t), f(v));
      this._refs.set(ref, { resolve: done((m) => resolve(m.event === 'reply' ? m.data : m)), reject: done(reject) });
      this._send({ ...op, ref });
    });
  }

  _scheduleRefresh() {
    clearTimeout(this._refresh);
    const exp = jwtExp(this.token);
    if (!exp || !this.opts.getToken) return;
    const left = exp - Date.now();
    this._refresh = setTimeout(async () => {
      try {
        this.token = await this.opts.getToken();
        const c = this._conn;
        if (c?.ws && c.open) this._send({ op: 'refresh', token: this.token });
        else if (c?.open) this._restart(0); // SSE and streams carry the token on the URL
        this._scheduleRefresh();
      } catch (e) {
        this._emit('error', { error: 'token', detail: String(e) });
      }
    }, Math.max(1000, left - Math.min(30000, left / 5)));
  }

  _ws(conn) {
    // The user's messages resume from the URL's cursor (the upgrade subscribes them).
    const url = this._url('ws', { since: this._cursor([USER]) }).replace(/^http/, 'ws');
    let ws;
    try {
      ws = conn.ws = new this.WebSocket(url);
    } catch {
      return this._failed(conn);
    }
    conn.timer = setTimeout(() => this._failed(conn), this.opts.openTimeout);
    ws.onopen = () => {
      if (conn.dead) return ws.close(1000); // given up on (openTimeout): no longer ours
      // One op for every channel: its `subscribed` answer gives the starting cursor. It
      // goes before what 'open' handlers send (an rpc there finds the channels held).
      if (conn.w.length) this._subOp(conn.w);
      this._opened(conn);
    };
    ws.onmessage = (e) => this._event(conn, JSON.parse(e.data));
    ws.onclose = (e) => {
      if (e.code === 4001) this._staleToken = true;
      this._failed(conn, conn.reconnect || e.code === 4001);
    };
    ws.onerror = () => {};
  }

  async _sse(conn) {
    conn.abort = new AbortController();
    conn.timer = setTimeout(() => this._failed(conn), this.opts.openTimeout);
    try {
      const url = this._url('sse', { channels: conn.w.join(','), lastEventId: this._cursor(conn.chans) });
      const r = await this.fetch(url, { signal: conn.abort.signal, headers: { accept: 'text/event-stream' } });
      if (!r.ok || !/event-stream/.test(r.headers.get('content-type'))) {
        if (r.status === 401) this._staleToken = true;
        return this._failed(conn);
      }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '', id = null, data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done || conn.dead) break;
        this._opened(conn); // the first bytes (":ok") came through
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, '');
          buf = buf.slice(nl + 1);
          if (line === '') {
            if (data.length) {
              const m = JSON.parse(data.join('\n'));
              this._event(conn, m);
              if (id && m.event === 'message') this._advance(id, conn.chans);
            } else if (id && this._cursor(conn.chans) === undefined) {
              // A request without a cursor gets one in its first block (no data): a
              // stream that ends before its first message resumes from there.
              this._advance(id, conn.chans);
            }
            id = null;
            data = [];
          } else if (line.startsWith('id:')) id = line.slice(3).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
      }
    } catch {}
    this._failed(conn, conn.reconnect);
  }

  async _poll(conn) {
    conn.abort = new AbortController();
    let first = true;
    while (!conn.dead) {
      const url = this._url('poll', { channels: conn.w.join(','), since: this._cursor(conn.chans), timeout: first ? 0 : this.opts.pollTimeout });
      let body;
      try {
        const r = await this.fetch(url, { signal: conn.abort.signal });
        if (!r.ok) {
          if (r.status === 401) this._staleToken = true;
          return this._failed(conn);
        }
        body = await r.json();
      } catch {
        return this._failed(conn);
      }
      first = false;
      this._opened(conn);
      for (const m of body.messages) this._event(conn, m);
      this._advance(body.cursor, conn.chans);
      if (conn.reconnect || (this._staleToken && this.opts.getToken)) return this._failed(conn, true);
    }
  }
}

export default Herald;
