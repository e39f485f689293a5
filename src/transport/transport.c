/*
 * transport: what WebSocket, SSE, long-poll and HTTP streaming share:
 * reading channels and cursors from a request, subscribing and replaying
 * history (gap events first), and the life-cycle events of a subscriber
 * connection (lifetime, shutdown, deleted channels, slow consumers). The
 * transports themselves are ws.c, sse.c (SSE and streaming) and longpoll.c.
 */
#include "transport/transport.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "auth/auth.h"
#include "core/log.h"
#include "hooks/session.h"
#include "http/router.h"
#include "transport/longpoll.h"
#include "transport/sse.h"
#include "transport/ws.h"
#include "transport/ws_frame.h"
#include "users/users.h"

static struct ctl_frames *reconnect_shutdown, *reconnect_lifetime, *token_expired_ev,
    *token_missing_ev;

static const struct http_route routes[] = {
    {.path = "/ws",
     .methods = ROUTE_GET,
     .flags = ROUTE_SUBSCRIBE | ROUTE_APP,
     .handle = ws_handle_upgrade},
    /* GET only: an answer to HEAD has no body, and these answers are nothing but body. */
    {.path = "/sse",
     .methods = HTTP_METHOD_BIT(HTTP_M_GET),
     .flags = ROUTE_SUBSCRIBE | ROUTE_APP,
     .handle = sse_handle},
    {.path = "/poll",
     .methods = ROUTE_GET,
     .flags = ROUTE_SUBSCRIBE | ROUTE_APP,
     .handle = longpoll_handle},
    {.path = "/stream",
     .methods = HTTP_METHOD_BIT(HTTP_M_GET),
     .flags = ROUTE_SUBSCRIBE | ROUTE_APP,
     .handle = stream_handle},
};

static struct ctl_frames *reconnect_frames(const char *reason)
{
    char fields[64];
    int n = snprintf(fields, sizeof(fields), "\"reason\":\"%s\"", reason);
    return ctl_frames_new("reconnect", fields, (size_t)n);
}

void transport_init(void)
{
    reconnect_shutdown = reconnect_frames("shutdown");
    reconnect_lifetime = reconnect_frames("lifetime");
    static const char expired[] =
        "\"error\":\"token_expired\",\"detail\":\"the token expired: subscribe again with a "
        "new one, or refresh it before it expires ({\\\"op\\\":\\\"refresh\\\"} on a WebSocket)\"";
    token_expired_ev = ctl_frames_new("expired", expired, sizeof(expired) - 1);
    static const char missing[] =
        "\"error\":\"token_missing\",\"detail\":\"no token came in time: send "
        "{\\\"op\\\":\\\"auth\\\",\\\"token\\\":...} first, or put the token on the URL "
        "(?token=)\"";
    token_missing_ev = ctl_frames_new("error", missing, sizeof(missing) - 1);
    http_routes_add(routes, ARRAY_LEN(routes));
}

void transport_free(void)
{
    ref_put(&reconnect_shutdown->ref);
    ref_put(&reconnect_lifetime->ref);
    ref_put(&token_expired_ev->ref);
    ref_put(&token_missing_ev->ref);
}

/* ---- request parsing ----------------------------------------------------- */

static char *key_slot(struct sub_request *r)
{
    return r->name_buf + r->n * (CHANNEL_KEY_MAX + 1);
}

void transport_add_channel(struct sub_request *r, const struct hub_tenant *t, const char *name,
                           size_t len)
{
    char *out = key_slot(r);
    size_t kl = chan_key_make(out, t, name, len);
    for (size_t k = 0; k < r->n; k++)
        if (r->names[k].len == kl && memcmp(r->names[k].data, out, kl) == 0)
            return; /* named twice: once */
    r->names[r->n++] = (struct slice){out, (uint32_t)kl};
}

void transport_channels_json(struct sbuf *b, const struct sub_request *r)
{
    sbuf_adds(b, "\"channels\":[");
    for (size_t i = 0; i < r->n; i++) {
        struct slice nm = chan_key_name(r->names[i].data, r->names[i].len);
        if (i)
            sbuf_add(b, ",", 1);
        sbuf_add_json_str(b, nm.data, nm.len);
    }
    sbuf_add(b, "]", 1);
}

bool transport_bind_app(struct conn *c, struct hub_tenant *t)
{
    if (c->tenant == t)
        return true;
    if (t) {
        uint32_t max = atomic_load_explicit(&t->max_conns, memory_order_relaxed);
        /* Cluster mode: the other nodes' connections count too (as last reported). */
        uint32_t remote = atomic_load_explicit(&t->remote_conns, memory_order_relaxed);
        if (atomic_fetch_add(&t->conns, 1) + remote >= max && max) {
            atomic_fetch_sub(&t->conns, 1);
            atomic_fetch_add_explicit(&t->conns_refused, 1, memory_order_relaxed);
            return false;
        }
        hub_tenant_get(t);
    }
    hub_tenant_unbind(&c->tenant); /* a keep-alive connection that polled another app */
    c->tenant = t;
    return true;
}

int transport_parse_channels(struct sub_request *r, const struct hub_tenant *t, const char *list,
                             size_t len, const char **err)
{
    size_t i = 0;
    r->n = 0;
    while (i <= len) {
        size_t j = i;
        while (j < len && list[j] != ',')
            j++;
        if (j > i) {
            if (r->n == TRANSPORT_MAX_CHANNELS) {
                *err = "too many channels in one request (at most 64)";
                return -1;
            }
            if (j - i > 3 * CHANNEL_NAME_MAX) {
                *err = TRANSPORT_NAME_RULE;
                return -1;
            }
            char tmp[3 * CHANNEL_NAME_MAX];
            long n = http_url_decode(tmp, list + i, j - i);
            if (n < 0 || !hub_sub_name_valid(tmp, (size_t)n)) {
                *err = TRANSPORT_NAME_RULE;
                return -1;
            }
            transport_add_channel(r, t, tmp, (size_t)n);
        }
        i = j + 1;
    }
    if (r->n == 0) {
        *err = "name at least one channel, e.g. ?channels=news or ?channels=a,b";
        return -1;
    }
    return 0;
}

/* The position base+delta, from a signed decimal delta of a per-channel cursor; false
 * when it is malformed or falls outside 0..2^64-1. */
static bool parse_delta(const char *s, size_t len, uint64_t base, uint64_t *out)
{
    bool neg = len && s[0] == '-';
    uint64_t mag;
    if (len == (size_t)neg || hub_cursor_parse(s + neg, len - neg, &mag) < 0 ||
        (neg ? mag > base : mag > UINT64_MAX - base))
        return false;
    *out = neg ? base - mag : base + mag;
    return true;
}

int transport_parse_since(struct sub_request *r, const char *s, size_t len, const char **err)
{
    if (len == 0)
        return 0;
    const char *dot = memchr(s, '.', len);
    uint64_t v;
    if (hub_cursor_parse(s, dot ? (size_t)(dot - s) : len, &v) < 0 || (dot && dot == s)) {
        *err = "the cursor must be a message id (digits) this server gave out, or a "
               "per-channel cursor";
        return -1;
    }
    r->has_since = true;
    r->since = v;
    r->nsince = 0;
    if (!dot)
        return 0;
    /* Per-channel: the first channel's position, then each next one's as a signed
     * difference from it, in the order the channels were named: "ID.-523.0". */
    r->since_each[r->nsince++] = v;
    const char *p = dot + 1, *end = s + len;
    for (;;) {
        const char *e = memchr(p, '.', (size_t)(end - p));
        if (!e)
            e = end;
        if (r->nsince == HUB_SUBSCRIBE_MAX ||
            !parse_delta(p, (size_t)(e - p), v, &r->since_each[r->nsince])) {
            *err = "a per-channel cursor is ID.DELTA.DELTA...: the first channel's id, then "
                   "each next channel's as a signed difference from it";
            return -1;
        }
        r->since = MAX(r->since, r->since_each[r->nsince]);
        r->nsince++;
        if (e == end)
            break;
        p = e + 1;
    }
    if (r->nsince < r->n) { /* more: the user's, the hook's channels (transport_cursor_fits) */
        *err = transport_cursor_mismatch;
        return -1;
    }
    return 0;
}

const char transport_cursor_mismatch[] =
    "a per-channel cursor has one position per channel, in the order the channels are named "
    "(and then one for a connection with a user, and one for each channel the app's backend "
    "added)";

bool transport_cursor_fits(const struct sub_request *r, struct hub_tenant *t, bool hookable)
{
    return r->nsince == 0 || r->nsince == r->n ||
           (r->nsince > r->n && hookable && transport_hooked(t));
}

bool transport_wants_user(const struct http_request *req)
{
    const char *v;
    size_t vl;
    return !http_query_param(req->query, req->query_len, "user", &v, &vl) ||
           !(vl == 1 && v[0] == '0');
}

bool transport_wants_presence(const struct http_request *req)
{
    const char *v;
    size_t vl;
    return http_query_param(req->query, req->query_len, "presence", &v, &vl) && vl == 1 &&
           v[0] == '1';
}

bool transport_add_user(struct sub_request *r, const struct hub_tenant *t, const struct token *tok)
{
    return tok && transport_add_user_named(r, t, tok->sub, tok->sub_len);
}

bool transport_add_user_named(struct sub_request *r, const struct hub_tenant *t, const char *user,
                              size_t len)
{
    if (!user || !len || r->n == HUB_SUBSCRIBE_MAX)
        return false;
    char *out = key_slot(r);
    size_t kl = users_key(out, t, user, len);
    for (size_t k = 0; k < r->n; k++)
        if (r->names[k].len == kl && memcmp(r->names[k].data, out, kl) == 0)
            return true;
    if (r->nsince && r->nsince == r->n) /* a per-channel cursor without the user's place */
        r->since_each[r->nsince++] = r->since;
    r->names[r->n++] = (struct slice){out, (uint32_t)kl};
    return true;
}

bool transport_holds_user(const struct conn *c)
{
    for (const struct list *p = c->subs.next; p != &c->subs; p = p->next)
        if (container_of(p, struct sub, conn_link)->ch->user)
            return true;
    return false;
}

size_t transport_format_cursor(char *out, size_t size, const uint64_t *pos, size_t n)
{
    int len = snprintf(out, size, "%" PRIu64, n ? pos[0] : 0);
    for (size_t i = 1; i < n && len > 0 && (size_t)len < size; i++) {
        int k = pos[i] >= pos[0]
                    ? snprintf(out + len, size - (size_t)len, ".%" PRIu64, pos[i] - pos[0])
                    : snprintf(out + len, size - (size_t)len, ".-%" PRIu64, pos[0] - pos[i]);
        len += k;
    }
    return len > 0 && (size_t)len < size ? (size_t)len : 0;
}

size_t transport_conn_cursor(const struct conn *c, char *out, size_t size)
{
    uint64_t pos[HUB_SUBSCRIBE_MAX];
    size_t n = 0;
    for (const struct list *p = c->subs.next; p != &c->subs && n < ARRAY_LEN(pos); p = p->next)
        pos[n++] = sub_position(container_of(p, struct sub, conn_link));
    return transport_format_cursor(out, size, pos, n);
}

bool transport_per_channel_cursor(const struct conn *c)
{
    /* One channel's ids are ordered anywhere: its message id is the cursor. */
    return conn_hub(c)->ids_per_channel && c->subs.next != &c->subs &&
           c->subs.next->next != &c->subs;
}

/* Reads channels= and the cursor (since=, lastEventId=, Last-Event-ID) from the request. */
int transport_parse_request(struct http_ctx *x, struct sub_request *r, bool sse)
{
    const struct http_request *req = x->req;
    const char *v, *err = NULL;
    size_t vl;
    memset(r, 0, offsetof(struct sub_request, name_buf));
    /* Without channels, the request is for its user's messages (transport_admit). */
    bool named = http_query_param(req->query, req->query_len, "channels", &v, &vl) ||
                 http_query_param(req->query, req->query_len, "channel", &v, &vl);
    if (named && transport_parse_channels(r, x->tenant, v, vl, &err) < 0) {
        http_error(x, 400, "bad_channel", "%s", err);
        return -1;
    }
    const struct http_header *h = sse ? http_find_header(req, "Last-Event-ID") : NULL;
    bool found = false;
    if (h) {
        v = h->value;
        vl = h->value_len;
        found = true;
    } else if (http_query_param(req->query, req->query_len, "since", &v, &vl) ||
               http_query_param(req->query, req->query_len, "lastEventId", &v, &vl) ||
               http_query_param(req->query, req->query_len, "last_event_id", &v, &vl)) {
        found = true;
    }
    if (found && transport_parse_since(r, v, vl, &err) < 0) {
        http_error(x, 400, "bad_cursor", "%s", err);
        return -1;
    }
    r->presence_events = transport_wants_presence(req);
    if (!transport_bind_app(x->c, x->tenant)) {
        transport_app_full(x);
        return -1;
    }
    return 0;
}

int transport_admit(struct http_ctx *x, struct sub_request *r, const struct auth_policy *p,
                    struct token **tok)
{
    if (auth_http_admit(x, p, r->names, r->n, tok) < 0)
        return -1;
    if (transport_wants_user(x->req))
        transport_add_user(r, x->tenant, *tok);
    if (transport_has_channels(x, r) == 0 && transport_cursor_fits(r, x->tenant, true))
        return 0;
    if (r->n)
        http_error(x, 400, "bad_cursor", "%s", transport_cursor_mismatch);
    token_put(*tok);
    *tok = NULL;
    return -1;
}

int transport_has_channels(struct http_ctx *x, const struct sub_request *r)
{
    if (r->n)
        return 0;
    http_error(x, 400, "no_channels",
               "name the channels to subscribe to, e.g. ?channels=news or ?channels=a,b (a "
               "token with a \"sub\" subscribes to its user's messages without any)");
    return -1;
}

void transport_app_full(struct http_ctx *x)
{
    uint32_t max = atomic_load(&x->tenant->max_conns);
    http_limit_error(x, 503, "connections",
                     "the app has the %u subscriber connections its plan allows; retry later or "
                     "move the app to a bigger plan",
                     max);
}

/* ---- subscribing ---------------------------------------------------------- */

static void deliver_gap(struct conn *c, const struct hub_gap *g)
{
    uint64_t since = g->since;
    char fields[CHANNEL_NAME_MAX + 160];
    struct slice nm =
        g->ch ? chan_key_name(g->ch->name, g->ch->name_len) : chan_key_name(g->name, g->name_len);
    int n;
    if (g->oldest)
        n = snprintf(fields, sizeof(fields),
                     "\"channel\":\"%.*s\",\"since\":\"%" PRIu64 "\",\"oldest\":\"%" PRIu64 "\"",
                     (int)nm.len, nm.data, since, g->oldest);
    else
        n = snprintf(fields, sizeof(fields),
                     "\"channel\":\"%.*s\",\"since\":\"%" PRIu64 "\",\"oldest\":null", (int)nm.len,
                     nm.data, since);
    static const char *const reasons[] = {
        [HUB_GAP_REPLAY_LIMIT] = "replay_limit", [HUB_GAP_GAP_LIMIT] = "gap_limit"};
    if (g->reason) /* a gap naming a pattern: why (hub.h, enum hub_gap_reason) */
        n += snprintf(fields + n, sizeof(fields) - (size_t)n, ",\"reason\":\"%s\"",
                      reasons[g->reason]);
    struct ctl_frames *f = ctl_frames_new("gap", fields, (size_t)n);
    c->ops->deliver_ctl(c, f);
    ref_put(&f->ref);
}

int transport_subscribe(struct conn *c, const struct sub_request *r, size_t *bad,
                        struct hub_backlog *b)
{
    const struct herald_config *cfg = conn_cfg(c);
    struct hub_client cl = {.max_subs = cfg->max_channels_per_conn,
                            .since_each = r->nsince ? r->since_each : NULL};
    /* The user's channel comes on top of what a client may name. */
    bool user = transport_holds_user(c);
    for (size_t i = 0; i < r->n && !user; i++)
        user = chan_key_is_user(r->names[i].data, r->names[i].len);
    cl.max_subs += user;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    /* What a client's subscribes create counts against its address (loopback: a proxy
     * on this host would make every client one address, unless asked). */
    if (cfg->max_channels_per_ip && (!(c->flags & CF_LOOPBACK) || cfg->limit_loopback) &&
        getpeername(c->io.fd, (struct sockaddr *)&ss, &sl) == 0)
        cl.limited = hub_client_set_addr(&cl, &ss);
    /* Presence counts the connections that stay, as their user (the connect hook's, else
     * the token's) with its info (the hook's, else the token's). */
    struct presence_who who = {.events = r->presence_events};
    char *info = NULL;
    if (r->persistent) {
        const struct hook_session *hs = hook_session_of(c);
        const struct token *tok = r->tok;
        if (hs && hs->user) {
            who.user = hs->user;
            who.user_len = strlen(hs->user);
        } else if (tok && tok->sub) {
            who.user = tok->sub;
            who.user_len = tok->sub_len;
        }
        if (hs && hs->info)
            info = json_dumps(hs->info, JSON_COMPACT | JSON_ENCODE_ANY);
        if (info) {
            who.info = info;
            who.info_len = strlen(info);
        } else if (tok && tok->info) {
            who.info = tok->info;
            who.info_len = tok->info_len;
        }
        cl.who = &who;
    }
    int err = hub_subscribe(conn_hub(c), conn_worker_id(c), c, &c->subs, r->names, r->n,
                            r->has_since, r->since, &cl, b, bad);
    free(info);
    if (err == 0 && r->since_implied) {
        /* The cursor is the request's arrival (a hook waited), not a position the client
         * had: a channel's gap with nothing retained after it is about a history it never
         * saw (in cluster mode a data set's or slot's epoch begun after the arrival) and
         * goes. One with messages kept (some of what came meanwhile is gone) or a pattern's
         * limit stays. */
        uint32_t kept = 0;
        for (uint32_t i = 0; i < b->ngaps; i++) {
            struct hub_gap *g = &b->gaps[i];
            if (g->reason == HUB_GAP_CHANNEL && !g->oldest)
                free(g->name);
            else
                b->gaps[kept++] = *g;
        }
        b->ngaps = kept;
    }
    return err;
}

void transport_replay(struct conn *c, struct hub_backlog *b)
{
    conn_replay_begin(c);
    /* Each subscription's position advances with what is replayed on its channel, and
     * ends where live messages start, so that a per-channel cursor can be given after
     * every message (SSE id lines) when ids are per channel or the client sent one. */
    for (uint32_t i = 0; i < b->ngaps; i++)
        deliver_gap(c, &b->gaps[i]);
    for (uint32_t i = 0; i < b->n; i++) {
        struct msg *m = b->msgs[i];
        for (struct list *p = c->subs.next; p != &c->subs; p = p->next) {
            struct sub *s = container_of(p, struct sub, conn_link);
            /* A pattern's position: ids order every channel it matches (patsub.c). */
            if ((s->ch->id == m->chan_id || s->ch->pattern) && m->seq > s->delivered)
                s->delivered = m->seq; /* at most from_seq: no effect on live dedup */
        }
        c->ops->deliver(c, m);
    }
    for (struct list *p = c->subs.next; p != &c->subs; p = p->next) {
        struct sub *s = container_of(p, struct sub, conn_link);
        s->delivered = MAX(s->delivered, s->from_seq);
    }
    conn_replay_end(c);
    if (b->n)
        atomic_fetch_add_explicit(&conn_hub(c)->stats.delivered, b->n, memory_order_relaxed);
    hub_backlog_free(b);
}

int transport_http_subscribe(struct http_ctx *x, const struct sub_request *r, struct hub_backlog *b)
{
    size_t bad = 0;
    int err = transport_subscribe(x->c, r, &bad, b);
    if (!err)
        return 0;
    if (err == HUB_PENDING) {
        conn_park(x->c); /* re-run from the start once the channels are ready */
        return -1;
    }
    bool named = hub_error_names_channel(err);
    http_hub_error(x, err, named ? r->names[bad].data : NULL, named ? r->names[bad].len : 0);
    return -1;
}

void transport_start(struct conn *c)
{
    conn_timer_start(c, conn_cfg(c)->heartbeat_ms);
    conn_start_lifetime(c);
}

/* ---- admission: tokens and their expiry ------------------------------------------- */

static struct sub_auth *auth_of(struct conn *c)
{
    return sub_ops_of(c)->auth ? sub_ops_of(c)->auth(c) : NULL;
}

static bool token_policy(const struct sub_auth *a)
{
    return a && a->policy && a->policy->subscribe == AUTH_TOKEN;
}

/* The lifetime timer fires at the first of: the lifetime's end, the token's expiry,
 * the end of the wait for a token. */
static void auth_arm(struct conn *c, struct sub_auth *a)
{
    uint64_t at = a->life_end;
    if (token_policy(a) && a->tok) {
        uint64_t d = auth_deadline(a->policy, a->tok, conn_now(c));
        at = at ? MIN(at, d) : d;
    } else if (token_policy(a) && a->must_auth) {
        uint64_t d = conn_now(c) + conn_cfg(c)->header_timeout_ms;
        at = at ? MIN(at, d) : d;
    }
    if (at)
        conn_lifetime_at(c, at);
}

void transport_auth_start(struct conn *c, const struct auth_policy *p, struct token *tok,
                          bool must_auth)
{
    struct sub_auth *a = auth_of(c);
    assert(a);
    *a = (struct sub_auth){
        .policy = p, .tok = tok, .life_end = conn_lifetime_end(c), .must_auth = must_auth && !tok};
    auth_arm(c, a);
}

void transport_auth_set(struct conn *c, struct token *tok)
{
    struct sub_auth *a = auth_of(c);
    token_put(a->tok);
    a->tok = tok;
    a->must_auth = false;
    auth_arm(c, a);
}

void transport_end_expired(struct conn *c)
{
    sub_ops_of(c)->end(c, token_expired_ev, WS_CLOSE_TOKEN, "token expired");
}

void transport_auth_free(struct conn *c)
{
    struct sub_auth *a = auth_of(c);
    token_put(a->tok);
    a->tok = NULL;
}

const char *transport_auth_check(struct conn *c, int which, const struct slice *names, size_t n,
                                 size_t *bad)
{
    struct sub_auth *a = auth_of(c);
    if (!token_policy(a)) {
        long broad = auth_first_broad(names, n);
        if (broad < 0)
            return NULL;
        *bad = (size_t)broad;
        return "pattern_forbidden";
    }
    if (!a->tok)
        return "token_missing";
    if (auth_expired(a->policy, a->tok))
        return "token_expired";
    long i = auth_first_forbidden(a->tok, (enum token_grant)which, names, n);
    if (i < 0)
        return NULL;
    *bad = (size_t)i;
    return "channel_forbidden";
}

/* ---- life-cycle events ------------------------------------------------------ */

void transport_on_lifetime(struct conn *c)
{
    struct sub_auth *a = auth_of(c);
    if (token_policy(a)) {
        if (a->tok && auth_expired(a->policy, a->tok))
            return transport_end_expired(c);
        if (!a->tok && a->must_auth)
            return sub_ops_of(c)->end(c, token_missing_ev, WS_CLOSE_TOKEN, "no token in time");
        if (!a->life_end || conn_now(c) < a->life_end) {
            auth_arm(c, a); /* the token was refreshed since the timer was set */
            return;
        }
    }
    sub_ops_of(c)->end(c, reconnect_lifetime, WS_CLOSE_GOING_AWAY,
                       "connection lifetime reached: reconnect");
}

void transport_on_shutdown(struct conn *c)
{
    sub_ops_of(c)->end(c, reconnect_shutdown, WS_CLOSE_GOING_AWAY,
                       "server shutting down: reconnect");
}

void transport_on_channel_closed(struct conn *c, struct channel *ch)
{
    char fields[CHANNEL_NAME_MAX + 48];
    struct slice nm = chan_key_name(ch->name, ch->name_len);
    int n = snprintf(fields, sizeof(fields), "\"channel\":\"%.*s\",\"reason\":\"deleted\"",
                     (int)nm.len, nm.data);
    struct ctl_frames *f = ctl_frames_new("closed", fields, (size_t)n);
    /* A WebSocket client may subscribe again; a stream with no channel left is over. */
    if (c->ops->kind == CONN_WS || !list_empty(&c->subs))
        c->ops->deliver_ctl(c, f);
    else
        sub_ops_of(c)->end(c, f, WS_CLOSE_NORMAL, "");
    ref_put(&f->ref);
}

void transport_on_slow(struct conn *c)
{
    /* Unsent messages are dropped: the client resumes from history with its cursor. */
    conn_drop_queue(c);
    char fields[160];
    int n = snprintf(fields, sizeof(fields),
                     "\"error\":\"slow_consumer\",\"detail\":\"more than %u bytes were waiting "
                     "for this client; reconnect and resume from your last id\"",
                     conn_cfg(c)->max_outbound);
    struct ctl_frames *f = ctl_frames_new("error", fields, (size_t)n);
    c->replay_slack = UINT32_MAX / 2; /* the last words get through */
    sub_ops_of(c)->end(c, f, WS_CLOSE_POLICY, "slow consumer: outbound queue over limit");
    ref_put(&f->ref);
}
