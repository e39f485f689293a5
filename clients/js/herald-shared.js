// herald-shared.js: one herald connection for all the tabs of an origin. herald.js
// imports it only for `new Herald(url, {shared: true})` in a browser that has
// BroadcastChannel and Web Locks; docs/client-js.md#sharing-one-connection-across-tabs.
//
// The tabs that use the same herald URL, app and token identity form a group. A Web
// Lock elects its leader: the lock's holder keeps ONE connection (a private Herald)
// subscribed to the union of the group's channels, and forwards each event over a
// BroadcastChannel to the tabs whose channels it concerns. Every tab keeps its own
// position per channel and drops a message it already has. When the leader's tab
// closes or dies the browser releases its lock, the next tab in the lock's queue
// leads: it asks every tab for its channels and positions, and connects from the
// oldest position of each channel, so each tab gets what it missed, once, in order.
// Each tab also holds a lock of its own, which the leader waits for: granted, it
// means that tab is gone, and its channels leave the connection.

const COLLECT_MS = 100; // how long a new leader gathers the tabs' positions

// A herald.js Herald `h` joins its group; `claims` decodes a JWT. Resolves to this
// tab's part: update() when its channels change, publish(), close().
export async function share(h, claims) {
  const o = h.opts;
  let group = o.shared;
  if (group === true) {
    // Tabs share only with tabs whose token says the same (its times aside).
    if (!h.token && o.getToken) h.token = await o.getToken();
    const { exp, iat, nbf, jti, ...who } = claims(h.token || '') || {};
    group = JSON.stringify(who);
  }
  const name = `herald ${h.base} ${group}`;
  const me = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const ac = new AbortController(); // close() withdraws our requests still waiting
  const lock = (n, fn) => navigator.locks.request(n, { signal: ac.signal }, fn).catch(() => {});
  let done = false, stop;
  const stopped = new Promise((ok) => (stop = ok));
  // Our own lock first: the leader watches it from our first 'hi' on. Refused (Web Locks
  // refuse every request of an opaque origin, e.g. a sandboxed iframe), sharing cannot
  // start: herald.js gives the tab a connection of its own.
  await new Promise((ok, fail) => navigator.locks.request(`${name} tab ${me}`, { signal: ac.signal }, () => (ok(), stopped)).catch(fail));
  const bc = new BroadcastChannel(name);
  const post = (m) => bc.postMessage(m);
  let inner = null, tabs = null, batch = null; // the leader's: its connection, the group
  const pubs = new Map(); // a follower's calls (publish, rpc) waiting for the leader's answer
  let ref = 0;

  // This tab's channels and its position on each.
  const state = () => {
    const chans = h._channels(), pos = {};
    for (const c of chans) if (h._pos.has(c)) pos[c] = String(h._pos.get(c));
    return { t: 'hi', from: me, chans, pos };
  };

  // An event of one of this tab's channels, from the leader.
  const deliver = (type, m) => {
    const at = h._pos.get(m.channel);
    if (type === 'message') {
      const id = BigInt(m.id);
      if (at >= id) return; // had it already (a new leader's replay)
      h._pos.set(m.channel, id);
    }
    // The connection went back for another tab (or a new leader for the tab furthest
    // behind): a tab that has a message herald still keeps missed nothing.
    if (type === 'gap' && m.oldest != null && at >= BigInt(m.oldest)) return;
    for (const s of h._subs) if (m.channel == null || s.channels.includes(m.channel)) s._emit(type, m);
    if (type === 'gap' || type === 'error') h._emit(type, m);
  };
  const send = (to, type, m) => (to === me ? deliver(type, m) : post({ t: 'ev', to, type, m }));

  const failPubs = () => {
    for (const [, p] of pubs) p.reject(Object.assign(new Error('herald: the leader changed before the answer came'), { error: 'disconnected', code: 'disconnected' }));
    pubs.clear();
  };

  // Leader: a tab is behind the connection on a channel it already carries (a tab that
  // missed messages while leaders changed, or asked for `since`): the connection has to
  // start that channel over from the tab's position. Returns whether so.
  const lower = ({ chans, pos }) => {
    let again = false;
    for (const c of chans) {
      if (pos[c] == null) continue;
      const p = BigInt(pos[c]), q = inner._pos.get(c);
      if (q != null && q <= p) continue;
      inner._pos.set(c, p);
      if (q != null && inner._channels().includes(c)) again = true;
    }
    return again;
  };

  // Leader: a tab's channels (its first or a changed set; none when it left).
  const join = (m) => {
    const { from, chans } = m, old = tabs.get(from);
    if (!old && from !== me) lock(`${name} tab ${from}`, () => leave(from)); // granted: it is gone
    const again = lower(m);
    const sub = chans.length ? inner.subscribe(chans) : null;
    for (const type of ['message', 'gap', 'closed', 'error', 'join', 'leave']) sub?.on(type, (ev) => send(from, type, ev));
    old?.sub?.close();
    // A channel no tab holds any more: whoever takes it later starts from its own position.
    for (const c of old?.chans || []) if (!inner._channels().includes(c)) inner._pos.delete(c);
    tabs.set(from, { sub, chans });
    if (again) inner._restart(0);
    if (!old && inner.transport) post({ t: 'h', to: from, type: 'open', ev: { transport: inner.transport }, tr: inner.transport });
  };
  const leave = (from) => {
    if (done || !tabs.has(from)) return;
    join({ from, chans: [], pos: {} });
    tabs.delete(from);
  };

  bc.onmessage = ({ data: m }) => {
    if (done || (m.to && m.to !== me)) return;
    switch (m.t) {
      case 'ev':
        return deliver(m.type, m.m);
      case 'h': // the connection's own events: open, disconnect, reconnect, expired, error
        h.transport = m.tr;
        return h._emit(m.type, m.ev);
      case 'who': // a new leader
        failPubs();
        return post(state());
      case 'ack': {
        const p = pubs.get(m.ref);
        pubs.delete(m.ref);
        return p && (m.err ? p.reject(Object.assign(new Error(m.err.message), m.err)) : p.resolve(m.ok));
      }
    }
    if (!tabs) return; // the rest is for the leader
    if (m.t === 'hi') batch ? batch.set(m.from, m) : join(m);
    else if (m.t === 'bye') leave(m.from);
    else if (m.t === 'call')
      inner[m.name](...m.args).then(
        (ok) => post({ t: 'ack', to: m.from, ref: m.ref, ok }),
        (e) => post({ t: 'ack', to: m.from, ref: m.ref, err: { ...e, message: e.message } }),
      );
  };

  h.role = 'follower';
  lock(`${name} leader`, () => {
    if (done) return;
    h.role = 'leader';
    inner = new h.constructor(h.base, { ...o, app: null, shared: false, token: h.token });
    inner._perChannel = true; // tabs know positions per channel: keep them so
    for (const type of ['open', 'disconnect', 'reconnect', 'expired', 'error'])
      inner.on(type, (ev) => {
        if (type === 'error' && ev.event) return; // the server's: they reach the tabs by channel
        h.transport = inner.transport;
        h._emit(type, ev);
        post({ t: 'h', type, ev, tr: inner.transport });
      });
    tabs = new Map();
    batch = new Map([[me, state()]]);
    failPubs();
    post({ t: 'who' });
    setTimeout(() => {
      const all = [...batch.values()];
      batch = null;
      if (done) return;
      for (const m of all) lower(m);
      for (const m of all) join(m);
    }, COLLECT_MS);
    return stopped;
  });

  return {
    update() {
      if (done) return;
      if (!tabs) post(state());
      else if (batch) batch.set(me, state());
      else join(state());
    },
    // publish or rpc through the leader's connection (`name`: which, `args`: its arguments)
    call(name, args) {
      if (tabs) return inner[name](...args);
      return new Promise((resolve, reject) => {
        pubs.set(++ref, { resolve, reject });
        post({ t: 'call', from: me, ref, name, args });
      });
    },
    close() {
      if (done) return;
      post({ t: 'bye', from: me });
      done = true;
      stop();
      ac.abort();
      inner?.close();
      failPubs();
      bc.close();
      h.role = null;
      h.transport = null;
    },
  };
}
