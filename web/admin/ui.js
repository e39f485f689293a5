// herald's admin UI: one page, hash routes, no dependencies. Served by herald itself
// (compiled into the binary) with a Content-Security-Policy that allows this file only.
// The admin key lives in sessionStorage and goes out as "Authorization: Bearer", never
// in a URL; nothing here uses cookies, so another site cannot act through this page.

const main = document.getElementById("main");
const signinForm = document.getElementById("signin");
let key = sessionStorage.getItem("herald-admin-key") || "";
// Signed in with an app's key: everything is that app's (its API under /apps/{app}/).
let app = sessionStorage.getItem("herald-admin-app") || "";
const base = () => (app ? `/apps/${encodeURIComponent(app)}` : "");
let stopPage = () => {};

// ---- small helpers --------------------------------------------------------------------

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const k of kids.flat(Infinity)) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch { doc = { detail: text }; }
  if (!r.ok) {
    const err = new Error((doc && (doc.detail || doc.error)) || `${r.status}`);
    err.status = r.status;
    throw err;
  }
  return doc;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function errorBox(e) {
  return el("p", { class: "error" }, e.message || String(e));
}

const fmt = (n) => (n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : String(Math.round(n)));

// ---- sign in ------------------------------------------------------------------------------

function signedIn() {
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-apps").hidden = !!app;
  route();
}

// The admin key opens /admin/plans; an app's key opens its /apps/{app}/stats.
const checkKey = () => api("GET", app ? `${base()}/stats` : "/admin/plans");

signinForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  key = document.getElementById("key").value;
  app = document.getElementById("app").value.trim();
  try {
    await checkKey();
    sessionStorage.setItem("herald-admin-key", key);
    sessionStorage.setItem("herald-admin-app", app);
    signedIn();
  } catch (e) {
    const p = document.getElementById("signin-error");
    p.hidden = false;
    p.textContent = e.status === 401 ? (app ? `That is not a key of app ${app}.` : "That is not the admin key.")
      : e.status === 404 ? `There is no app ${app}.` : e.message;
  }
});

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem("herald-admin-key");
  sessionStorage.removeItem("herald-admin-app");
  location.hash = "";
  location.reload();
});

// ---- overview: live charts from /stats/stream ----------------------------------------------

const WINDOW = 60; // seconds on a chart

// Appends a second's figure to a chart's values, keeping the last WINDOW.
function push(arr, v) {
  arr.push(v);
  if (arr.length > WINDOW) arr.shift();
}

// Points of values (null: no figure that second) for a w x h box scaled to max, newest at
// the right edge: one polyline per run of figures.
function runs(values, w, h, max) {
  const n = values.length, out = [];
  let cur = [];
  values.forEach((v, j) => {
    if (v === null || v === undefined) {
      if (cur.length) out.push(cur);
      cur = [];
      return;
    }
    cur.push(`${w - ((n - 1 - j) / (WINDOW - 1)) * w},${h - 4 - (v / max) * (h - 8)}`);
  });
  if (cur.length) out.push(cur);
  return out.map((pts) => {
    if (pts.length === 1) { // a lone figure: a short dash, so that it shows
      const [x, y] = pts[0].split(",");
      pts = [`${x - 2},${y}`, pts[0]];
    }
    return pts.join(" ");
  });
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

const lastOf = (values) => values.findLast((v) => v !== null && v !== undefined);

function chart(title, series, { format = fmt, floor = 1, unit = "" } = {}) {
  // series: [{name, values: []}] -> an SVG with one polyline each, and a legend.
  const w = 560, h = 140;
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart" });
  const legend = el("div", { class: "legend" });
  const box = el("section", { class: "card" }, el("h2", {}, title), svg, legend);
  box.series = series;
  box.update = () => {
    const max = Math.max(floor, ...series.flatMap((s) => s.values.filter((v) => v !== null)));
    const top = svgEl("text", { x: 4, y: 12, class: "axis" });
    top.textContent = `${format(max)}${unit}`; // the top of the scale
    svg.replaceChildren(top, ...series.flatMap((s, i) =>
      runs(s.values, w, h, max).map((pts) => svgEl("polyline", { points: pts, class: `s${i}` }))));
    legend.replaceChildren(...series.map((s, i) => {
      const v = lastOf(s.values);
      return el("span", { class: `s${i}` }, `${s.name}: ${v === undefined ? "–" : format(v) + unit}`);
    }));
  };
  return box;
}

// Milliseconds as a dashboard shows them: three decimals below 10 ms.
const fmtMs = (v) => (v < 10 ? v.toFixed(3) : v < 1000 ? v.toFixed(1) : fmt(v));

function sparkline(values, { floor = 1 } = {}) {
  const w = 100, h = 24;
  const max = Math.max(floor, ...values.filter((v) => v !== null));
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, class: "spark" });
  svg.append(...runs(values, w, h, max).map((pts) => svgEl("polyline", { points: pts })));
  return svg;
}

// The nodes of a cluster, one row each, from the stream's "nodes" (what every node wrote in
// Redis in the last seconds): connections, messages in and out per second and the last
// second's p99 delivery latency, with a sparkline of the last minute.
function nodesTable() {
  const body = el("tbody");
  const card = el("section", { class: "card", id: "nodes" }, el("h2", {}, "Nodes"),
    el("table", {}, el("thead", {}, el("tr", {},
      ["node", "connections", "", "messages in/s", "messages out/s", "", "p99 latency", "", "slow cut", "up"]
        .map((t) => el("th", {}, t)))), body));
  card.hidden = true;
  const hist = new Map(); // node -> {conns, out, p99}
  card.update = (list, show) => {
    card.hidden = !show;
    // what other nodes wrote to Redis: a row without the figures it needs is left out
    list = list.filter((n) => n && typeof n.node === "string" && n.connections && n.delivery_latency_ms &&
      typeof n.messages_in_per_second === "number" && typeof n.messages_out_per_second === "number");
    const seen = new Set();
    body.replaceChildren(...list.map((n) => {
      seen.add(n.node);
      let h = hist.get(n.node);
      if (!h) hist.set(n.node, (h = { conns: [], out: [], p99: [], time: 0 }));
      if (n.time !== h.time) { // a new sample of that node
        h.time = n.time;
        push(h.conns, n.connections.total);
        push(h.out, n.messages_out_per_second);
        push(h.p99, n.delivery_latency_ms.count ? n.delivery_latency_ms.p99 : null);
      }
      const c = n.connections, lat = n.delivery_latency_ms;
      return el("tr", { "data-node": n.node },
        el("td", {}, n.node),
        el("td", { class: "conns" }, `${c.total} (WS ${c.websocket}, SSE ${c.sse}, poll ${c.longpoll}, stream ${c.stream})`),
        el("td", {}, sparkline(h.conns)),
        el("td", { class: "in" }, n.messages_in_per_second.toFixed(1)),
        el("td", { class: "out" }, n.messages_out_per_second.toFixed(1)),
        el("td", {}, sparkline(h.out)),
        el("td", { class: "p99" }, lat.count ? `${fmtMs(lat.p99)} ms` : "–"),
        el("td", {}, sparkline(h.p99, { floor: 0.001 })),
        el("td", {}, fmt(n.slow_consumers_closed)),
        el("td", {}, `${n.uptime} s`));
    }));
    for (const name of hist.keys()) if (!seen.has(name)) hist.delete(name);
  };
  return card;
}

// Reads an SSE stream with fetch, so the key goes in a header (EventSource cannot send one),
// and comes back after 2 s from the last id it got (at first: since) when the stream ends or fails.
function follow(path, signal, onEvent, onLost, since = "") {
  (async () => {
    let last = since;
    for (;;) {
      try {
        const sep = path.includes("?") ? "&" : "?";
        const r = await fetch(last ? `${path}${sep}lastEventId=${encodeURIComponent(last)}` : path, {
          headers: { Authorization: `Bearer ${key}` }, signal,
        });
        if (!r.ok) {
          let detail = `${r.status}`;
          try { detail = (await r.json()).detail || detail; } catch { /* not JSON */ }
          throw new Error(detail);
        }
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const ev = { event: "message", data: "" };
            for (const line of buf.slice(0, i).split("\n")) {
              if (line.startsWith("data: ")) ev.data += line.slice(6);
              else if (line.startsWith("event: ")) ev.event = line.slice(7);
              else if (line.startsWith("id: ")) last = ev.id = line.slice(4);
            }
            buf = buf.slice(i + 2);
            onEvent(ev);
          }
        }
        throw new Error("the stream ended");
      } catch (e) {
        if (signal.aborted) return;
        onLost(e);
      }
      await new Promise((res) => setTimeout(res, 2000));
    }
  })();
}

function overview() {
  const nodes = new Map(); // node -> {last, charts}
  const status = el("p", { class: "muted", id: "stream-status" }, "connecting to /stats/stream…");
  const holder = el("div");
  const table = nodesTable();
  show(el("h1", {}, "Overview"), status, table, holder);
  const ctl = new AbortController();

  function nodeView(name) {
    const transports = ["websocket", "sse", "longpoll", "stream"].map((t) => ({ name: t, values: [] }));
    const rates = [{ name: "messages in/s", values: [] }, { name: "messages out/s", values: [] }];
    const latency = [{ name: "p50", values: [] }, { name: "p99", values: [] }];
    const slow = [{ name: "slow consumers cut/s", values: [] }];
    const c1 = chart(`Connections by transport — ${name}`, transports);
    const c2 = chart(`Messages per second — ${name}`, rates);
    const c3 = chart(`Delivery latency, ms (arrival on the node → written to the socket) — ${name}`,
      latency, { format: fmtMs, floor: 0.001, unit: " ms" });
    c3.dataset.chart = "latency";
    const c4 = chart(`Slow consumers cut — ${name}`, slow);
    const totals = el("p", { class: "totals", "data-node": name });
    holder.append(el("div", { class: "node" }, el("h2", {}, `Node ${name}`), totals, c1, c2, c3, c4));
    return { transports, rates, latency, slow, charts: [c1, c2, c3, c4], totals, last: null };
  }

  function onAppStats(s) {
    let n = nodes.get(s.name);
    if (!n) {
      const conns = [{ name: "connections", values: [] }];
      const rates = [{ name: "publishes/s", values: [] }, { name: "messages/s", values: [] }];
      const refused = [{ name: "publishes refused/s", values: [] }, { name: "connections refused/s", values: [] }];
      const c1 = chart(`Subscriber connections — app ${s.name}`, conns);
      const c2 = chart(`Publishes and messages per second — app ${s.name}`, rates);
      const c3 = chart(`Refused by the plan — app ${s.name}`, refused);
      const totals = el("p", { class: "totals" });
      holder.append(el("div", { class: "node" }, el("h2", {}, `App ${s.name}`), totals, c1, c2, c3));
      nodes.set(s.name, (n = { conns, rates, refused, charts: [c1, c2, c3], totals, last: null }));
    }
    const u = s.usage;
    push(n.conns[0].values, u.connections);
    if (n.last) {
      const lu = n.last.usage, dt = Math.max(0.001, (s.time - n.last.time) / 1000);
      push(n.rates[0].values, (u.publishes - lu.publishes) / dt);
      push(n.rates[1].values, (u.messages - lu.messages) / dt);
      push(n.refused[0].values, (u.publishes_refused - lu.publishes_refused) / dt);
      push(n.refused[1].values, (u.connections_refused - lu.connections_refused) / dt);
    }
    n.last = s;
    const lim = (what) => (s.limits && s.limits[what] ? ` of ${s.limits[what]}` : "");
    n.totals.textContent = `plan ${s.plan}: ${u.connections}${lim("connections")} connections, ` +
      `${u.channels}${lim("channels")} channels, ${fmt(u.publishes)} publishes, ${fmt(u.messages)} messages`;
    n.charts.forEach((c) => c.update());
    status.textContent = `live: updated ${new Date(s.time).toLocaleTimeString()}`;
    window.heraldStats = s;
  }

  function onStats(s) {
    if (app)
      return onAppStats(s);
    let n = nodes.get(s.node);
    if (!n) nodes.set(s.node, (n = nodeView(s.node)));
    n.transports.forEach((t) => push(t.values, s.connections[t.name]));
    if (n.last) {
      const dt = Math.max(0.001, (s.time - n.last.time) / 1000);
      push(n.rates[0].values, (s.messages.published - n.last.messages.published) / dt);
      push(n.rates[1].values, (s.messages.delivered - n.last.messages.delivered) / dt);
      push(n.slow[0].values, (s.slow_consumers_closed - n.last.slow_consumers_closed) / dt);
    }
    // the last second's deliveries; a second without any has no figure (a gap, not a 0)
    const lat = s.delivery_latency_ms.last_second;
    push(n.latency[0].values, lat.count ? lat.p50 : null);
    push(n.latency[1].values, lat.count ? lat.p99 : null);
    table.update(s.nodes || [], !!s.cluster || (s.nodes || []).length > 1);
    n.last = s;
    n.totals.textContent = `${s.connections.total} connections (${s.connections.websocket} WebSocket, ` +
      `${s.connections.sse} SSE, ${s.connections.longpoll} long-poll, ${s.connections.stream} stream), ` +
      `${s.channels} channels, ${s.apps} apps, ${fmt(s.messages.published)} published, ` +
      `${fmt(s.messages.delivered)} delivered, up ${s.uptime} s`;
    n.charts.forEach((c) => c.update());
    status.textContent = `live: updated ${new Date(s.time).toLocaleTimeString()}`;
    window.heraldStats = s; // what the browser test reads
  }

  follow(`${base()}/stats/stream`, ctl.signal, (ev) => { if (ev.data) onStats(JSON.parse(ev.data)); },
    (e) => { status.textContent = `stream lost (${e.message}); retrying`; });
  return () => ctl.abort();
}

// ---- apps ------------------------------------------------------------------------------------

async function appsPage() {
  const out = el("div");
  const plans = (await api("GET", "/admin/plans")).plans;
  const name = el("input", { placeholder: "app name (a-z, 0-9, -)", required: "", pattern: "[a-z0-9][a-z0-9\\-]{0,39}" });
  const plan = el("select", {}, plans.map((p) => el("option", { value: p.name }, `${p.name}: ${p.description}`)));
  const pub = el("input", { type: "checkbox" });
  const secrets = el("div");
  const form = el("form", { class: "card", on: { submit: async (ev) => {
    ev.preventDefault();
    try {
      const a = await api("POST", "/admin/apps", { name: name.value, plan: plan.value,
        subscribe: pub.checked ? "public" : "token" });
      secrets.replaceChildren(credentials(a));
      name.value = "";
      load();
    } catch (e) { secrets.replaceChildren(errorBox(e)); }
  } } }, el("h2", {}, "Create an app"), name, plan,
  el("label", {}, pub, " anyone may subscribe (no token)"), el("button", { type: "submit" }, "Create"), secrets);

  async function load() {
    try {
      const doc = await api("GET", "/admin/apps");
      out.replaceChildren(el("table", {},
        el("tr", {}, ["App", "Plan", "Subscribe", "Connections", "Channels", "Publishes", ""].map((h) => el("th", {}, h))),
        doc.apps.map((a) => el("tr", { "data-app": a.name },
          el("td", {}, a.name), el("td", {}, a.plan), el("td", {}, a.subscribe),
          el("td", {}, usage(a, "connections")), el("td", {}, usage(a, "channels")),
          el("td", {}, fmt(a.usage.publishes)),
          el("td", {},
            el("button", { type: "button", on: { click: async () => {
              try { secrets.replaceChildren(credentials(await api("POST", `/admin/apps/${a.name}/keys`))); load(); }
              catch (e) { secrets.replaceChildren(errorBox(e)); }
            } } }, "Rotate key"),
            el("button", { type: "button", class: "danger", on: { click: async () => {
              if (!confirm(`Delete app ${a.name}, its keys and its channels? Subscribers are disconnected.`)) return;
              try { await api("DELETE", `/admin/apps/${a.name}`); load(); }
              catch (e) { secrets.replaceChildren(errorBox(e)); }
            } } }, "Delete"))))));
    } catch (e) { out.replaceChildren(errorBox(e)); }
  }
  show(el("h1", {}, "Apps"), form, out);
  load();
}

function usage(a, what) {
  const max = a.limits ? a.limits[what] : 0;
  return max ? `${a.usage[what]} / ${max}` : String(a.usage[what]);
}

function credentials(a) {
  return el("div", { class: "card secret" },
    el("p", {}, `Credentials of ${a.name}: shown now only, keep them.`),
    el("dl", {}, el("dt", {}, "publish key"), el("dd", {}, el("code", {}, a.publish_key)),
      a.previous_publish_key ? [el("dt", {}, "previous key (valid until revoked)"), el("dd", {}, el("code", {}, a.previous_publish_key))] : [],
      el("dt", {}, "token secret"), el("dd", {}, el("code", {}, a.token_secret))));
}

// ---- channels (the default app) ---------------------------------------------------------------

async function channelsPage(params) {
  const prefix = el("input", { placeholder: "name starts with…", value: params.get("prefix") || "" });
  const out = el("div");
  let sortBySubs = params.get("sort") === "subscribers";
  const after = params.get("after") || "";
  const form = el("form", { on: { submit: (ev) => {
    ev.preventDefault();
    location.hash = `#/channels?prefix=${encodeURIComponent(prefix.value)}`;
  } } }, prefix, el("button", { type: "submit" }, "Search"));
  show(el("h1", {}, app ? `Channels of app ${app}` : "Channels"), form, out);
  try {
    const q = new URLSearchParams({ limit: "50" });
    if (prefix.value) q.set("prefix", prefix.value);
    if (after) q.set("after", after);
    const doc = await api("GET", `${base()}/api/channels?${q}`);
    const rows = [...doc.channels];
    if (sortBySubs) rows.sort((a, b) => b.subscribers - a.subscribers);
    const sortLink = el("a", { href: `#/channels?prefix=${encodeURIComponent(prefix.value)}&sort=${sortBySubs ? "name" : "subscribers"}` },
      sortBySubs ? "sort by name" : "sort by subscribers");
    out.replaceChildren(el("p", { class: "muted" }, `${doc.total} channels`, " · ", sortLink),
      el("table", {}, el("tr", {}, ["Channel", "Subscribers", "Messages", "Last id"].map((h) => el("th", {}, h))),
        rows.map((c) => el("tr", {},
          el("td", {}, el("a", { href: `#/channel/${encodeURIComponent(c.name)}` }, c.name)),
          el("td", {}, c.subscribers), el("td", {}, c.messages), el("td", {}, c.last_id || "–")))),
      doc.next ? el("a", { href: `#/channels?prefix=${encodeURIComponent(prefix.value)}&after=${encodeURIComponent(doc.next)}` }, "next page →") : "");
  } catch (e) { out.replaceChildren(errorBox(e)); }
}

// ---- one channel: options, history, live tail, publish, delete -------------------------------------

function channelPage(name) {
  const info = el("div");
  const tail = el("ol", { id: "tail", class: "tail" });
  const data = el("textarea", { id: "publish-data", placeholder: "message (JSON or text)" });
  const result = el("p", { class: "muted" });
  const enc = encodeURIComponent(name);
  const form = el("form", { id: "publish", class: "card", on: { submit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await fetch(`${base()}/pub/${enc}`, { method: "POST", body: data.value,
        headers: { Authorization: `Bearer ${key}`,
          "Content-Type": /^\s*[[{"]/.test(data.value) ? "application/json" : "text/plain" } });
      const doc = await r.json();
      result.textContent = r.ok ? `published as ${doc.id} to ${doc.subscribers} subscribers` : doc.detail;
    } catch (e) { result.textContent = e.message; }
  } } }, el("h2", {}, "Publish"), data, el("button", { type: "submit" }, "Publish"), result);
  const del = el("button", { type: "button", class: "danger", on: { click: async () => {
    if (!confirm(`Delete channel ${name}? Its subscribers get "closed".`)) return;
    try { await api("DELETE", `${base()}/api/channels/${enc}`); location.hash = "#/channels"; }
    catch (e) { info.append(errorBox(e)); }
  } } }, "Delete channel");
  show(el("h1", {}, `Channel ${name}`), info, form, el("section", { class: "card" }, el("h2", {}, "Live"), tail), del);

  const add = (m) => {
    tail.prepend(el("li", { "data-id": m.id || "" }, el("code", {}, m.id || m.event), " ",
      typeof m.data === "string" ? m.data : JSON.stringify(m.data)));
    while (tail.children.length > 200) tail.lastChild.remove();
  };
  api("GET", `${base()}/api/channels/${enc}`).then((c) => info.replaceChildren(el("dl", { class: "card" },
    Object.entries(c).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null ? "–" : String(v))]))))
    .catch((e) => info.replaceChildren(errorBox(e)));
  // History, then the live messages after it: /api/tail takes the key this page signed in
  // with (no subscriber token, on the API's own listener), and resumes from the last id.
  const ctl = new AbortController();
  follow(`${base()}/api/tail?channels=${enc}`, ctl.signal, (ev) => {
    if (!ev.data) return;
    const d = JSON.parse(ev.data);
    if (ev.event === "message") add(d);
    else if (ev.event === "gap" || ev.event === "closed") add({ event: ev.event, data: d });
  }, (e) => add({ event: "lost", data: `live tail lost (${e.message}); retrying` }), "0");
  return () => ctl.abort();
}

// ---- routing ---------------------------------------------------------------------------------------

function route() {
  stopPage();
  stopPage = () => {};
  if (!key) return;
  const h = location.hash.slice(1) || "/";
  const [path, query] = h.split("?");
  const params = new URLSearchParams(query || "");
  if (path === "/apps" && !app) appsPage();
  else if (path === "/channels") channelsPage(params);
  else if (path.startsWith("/channel/")) stopPage = channelPage(decodeURIComponent(path.slice(9))) || stopPage;
  else stopPage = overview();
}

window.addEventListener("hashchange", route);
if (key) {
  checkKey().then(signedIn, () => { key = ""; sessionStorage.removeItem("herald-admin-key"); });
}
document.body.dataset.ready = "1"; // the handlers are in place (tests wait for it)
