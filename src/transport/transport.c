/*
 * transport: what WebSocket, SSE, long-poll and HTTP streaming share:
 * reading channels and cursors from a request, subscribing and replaying
 * history (gap events first), and the per-connection timers — heartbeats,
 * lifetime with reconnect dither, shutdown and slow-consumer cut-off.
 * The SSE, streaming and long-poll handlers are here too: each is a few
 * lines on top of the shared parts. WebSocket lives in ws.c.
 */
#include "transport/transport.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "core/log.h"
#include "http/http_conn.h"

void ws_on_timer(struct conn *c);
void ws_close_with(struct conn *c, uint16_t code, const char *reason);

/* ---- request parsing ----------------------------------------------------- */

int transport_parse_channels(struct sub_request *r, const char *list, size_t len, const char **err)
{
    char *out = r->name_buf;
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
                *err = "channel names are 1-128 bytes of letters, digits and _ . : @ / -";
                return -1;
            }
            char tmp[3 * CHANNEL_NAME_MAX];
            long n = http_url_decode(tmp, list + i, j - i);
            if (n < 0 || !hub_channel_name_valid(tmp, (size_t)n)) {
                *err = "channel names are 1-128 bytes of letters, digits and _ . : @ / -";
                return -1;
            }
            bool dup = false;
            for (size_t k = 0; k < r->n && !dup; k++)
                dup =
                    r->names[k].len == (uint32_t)n && memcmp(r->names[k].data, tmp, (size_t)n) == 0;
            if (!dup) {
                memcpy(out, tmp, (size_t)n);
                r->names[r->n++] = (struct slice){out, (uint32_t)n};
                out += n;
            }
        }
        i = j + 1;
    }
    if (r->n == 0) {
        *err = "name at least one channel, e.g. ?channels=news or ?channels=a,b";
        return -1;
    }
    return 0;
}

int transport_parse_since(struct sub_request *r, const char *s, size_t len, const char **err)
{
    if (len == 0)
        return 0;
    uint64_t v;
    if (hub_cursor_parse(s, len, &v) < 0) {
        *err = "the cursor must be a message id (digits) this server gave out";
        return -1;
    }
    r->has_since = true;
    r->since = v;
    return 0;
}

/* Reads channels= and the cursor (since=, lastEventId=, Last-Event-ID) from the request. */
static int parse_sub_request(struct http_ctx *x, struct sub_request *r, bool sse)
{
    const struct http_request *req = x->req;
    const char *v, *err = NULL;
    size_t vl;
    memset(r, 0, offsetof(struct sub_request, name_buf));
    if (!http_query_param(req->query, req->query_len, "channels", &v, &vl) &&
        !http_query_param(req->query, req->query_len, "channel", &v, &vl)) {
        http_error(x, 400, "no_channels",
                   "name the channels to subscribe to, e.g. ?channels=news or ?channels=a,b");
        return -1;
    }
    if (transport_parse_channels(r, v, vl, &err) < 0) {
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
    return 0;
}

/* ---- subscribing ---------------------------------------------------------- */

static void deliver_gap(struct conn *c, const struct hub_gap *g, uint64_t since)
{
    char fields[CHANNEL_NAME_MAX + 128];
    int n;
    if (g->oldest)
        n = snprintf(fields, sizeof(fields),
                     "\"channel\":\"%s\",\"since\":\"%" PRIu64 "\",\"oldest\":\"%" PRIu64 "\"",
                     g->ch->name, since, g->oldest);
    else
        n = snprintf(fields, sizeof(fields),
                     "\"channel\":\"%s\",\"since\":\"%" PRIu64 "\",\"oldest\":null", g->ch->name,
                     since);
    struct ctl_frames *f = ctl_frames_new("gap", fields, (size_t)n);
    conn_deliver_ctl(c, f);
    ref_put(&f->ref);
}

int transport_subscribe(struct conn *c, const struct sub_request *r, size_t *bad,
                        struct hub_backlog *b)
{
    const struct herald_config *cfg = conn_cfg(c);
    struct hub_client cl = {.max_subs = cfg->max_channels_per_conn};
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    /* What a client's subscribes create counts against its address (loopback: a proxy
     * on this host would make every client one address, unless asked). */
    if (cfg->max_channels_per_ip && (!(c->flags & CF_LOOPBACK) || cfg->limit_loopback) &&
        getpeername(c->io.fd, (struct sockaddr *)&ss, &sl) == 0)
        cl.limited = hub_client_set_addr(&cl, &ss);
    return hub_subscribe(&conn_server(c)->hub, c->w->id, c, &c->subs, r->names, r->n, r->has_since,
                         r->since, &cl, b, bad);
}

void transport_replay(struct conn *c, struct hub_backlog *b, uint64_t since)
{
    conn_replay_begin(c);
    for (uint32_t i = 0; i < b->ngaps; i++)
        deliver_gap(c, &b->gaps[i], since);
    for (uint32_t i = 0; i < b->n; i++)
        conn_deliver(c, b->msgs[i]);
    conn_replay_end(c);
    if (b->n)
        atomic_fetch_add_explicit(&conn_server(c)->hub.stats.delivered, b->n, memory_order_relaxed);
    hub_backlog_free(b);
}

int transport_error_status(int err)
{
    switch (err) {
    case HUB_ERR_NOT_FOUND: return 404;
    case HUB_ERR_TOO_MANY_FOR_ADDR: return 429;
    case HUB_ERR_TOO_MANY:
    case HUB_ERR_TOO_MANY_EPHEMERAL:
    case HUB_ERR_BACKEND: return 503;
    }
    return 400;
}

const char *transport_error_name(int err)
{
    switch (err) {
    case HUB_ERR_NAME: return "bad_channel";
    case HUB_ERR_NOT_FOUND: return "channel_not_found";
    case HUB_ERR_TOO_MANY:
    case HUB_ERR_TOO_MANY_EPHEMERAL: return "too_many_channels";
    case HUB_ERR_CURSOR: return "bad_cursor";
    case HUB_ERR_TOO_MANY_SUBS: return "too_many_subscriptions";
    case HUB_ERR_TOO_MANY_FOR_ADDR: return "too_many_channels_per_ip";
    case HUB_ERR_BACKEND: return "backend_unavailable";
    }
    return "bad_request";
}

void transport_park(struct conn *c)
{
    conn_hold(c); /* released by the hub's on_synced wake-up */
    conn_park_retry(c);
}

int transport_http_subscribe(struct http_ctx *x, const struct sub_request *r, struct hub_backlog *b)
{
    size_t bad = 0;
    int err = transport_subscribe(x->c, r, &bad, b);
    if (!err)
        return 0;
    if (err == HUB_PENDING) {
        transport_park(x->c);
        return -1;
    }
    http_error(x, transport_error_status(err), transport_error_name(err), "%s%s%.*s",
               hub_strerror(err), err == HUB_ERR_NOT_FOUND ? ": " : "",
               err == HUB_ERR_NOT_FOUND ? (int)r->names[bad].len : 0, r->names[bad].data);
    return -1;
}

/* ---- SSE and streaming ---------------------------------------------------- */

/* Sends the response head of a never-ending response and becomes `kind`. */
static void start_stream_kind(struct http_ctx *x, enum conn_kind kind, const char *ctype,
                              const char *extra, const char *first)
{
    struct conn *c = x->c;
    struct sbuf b = {0};
    http_head(x, &b, 200, ctype);
    sbuf_adds(&b, "Cache-Control: no-cache, no-store\r\nX-Accel-Buffering: no\r\n");
    if (extra)
        sbuf_adds(&b, extra);
    sbuf_adds(&b, "\r\n");
    sbuf_adds(&b, first);
    conn_set_kind(c, kind);
    conn_send_copy(c, b.data, b.len);
    sbuf_free(&b);
    timer_start(&c->w->loop, &c->timer, conn_cfg(c)->heartbeat_ms);
    conn_start_lifetime(c);
}

void sse_handle(struct http_ctx *x)
{
    struct sub_request r;
    if (parse_sub_request(x, &r, true) < 0)
        return;
    const char *v;
    size_t vl;
    bool raw = false;
    if (http_query_param(x->req->query, x->req->query_len, "format", &v, &vl)) {
        raw = vl == 3 && memcmp(v, "raw", 3) == 0;
        if (!raw && !(vl == 4 && memcmp(v, "json", 4) == 0))
            return http_error(x, 400, "bad_format", "format is 'json' (default) or 'raw'");
    }
    struct hub_backlog b;
    if (transport_http_subscribe(x, &r, &b) < 0)
        return;
    if (raw)
        x->c->flags |= CF_RAW;
    /* The stream body is delimited by the connection's end (no chunking), so
     * every subscriber gets the very same pre-framed bytes. `retry` asks the
     * browser to come back after 3 s rather than its default. */
    start_stream_kind(x, CONN_SSE, "text/event-stream; charset=utf-8", "Connection: keep-alive\r\n",
                      ":ok\n\nretry: 3000\n\n");
    transport_replay(x->c, &b, r.since);
}

void stream_handle(struct http_ctx *x)
{
    struct sub_request r;
    if (parse_sub_request(x, &r, false) < 0)
        return;
    if (x->req->minor_version == 0)
        return http_error(x, 505, "http_version", "/stream needs HTTP/1.1 (chunked encoding)");
    struct hub_backlog b;
    if (transport_http_subscribe(x, &r, &b) < 0)
        return;
    start_stream_kind(x, CONN_STREAM, "application/x-ndjson", "Transfer-Encoding: chunked\r\n", "");
    transport_replay(x->c, &b, r.since);
}

/* ---- long-poll ------------------------------------------------------------ */

void longpoll_handle(struct http_ctx *x)
{
    struct conn *c = x->c;
    struct sub_request r;
    if (parse_sub_request(x, &r, false) < 0)
        return;
    uint32_t timeout = conn_cfg(c)->poll_timeout_ms;
    const char *v;
    size_t vl;
    if (http_query_param(x->req->query, x->req->query_len, "timeout", &v, &vl)) {
        uint64_t t;
        if (hub_cursor_parse(v, vl, &t) < 0 || vl == 0)
            return http_error(x, 400, "bad_timeout", "timeout is a whole number of seconds");
        if (t < timeout / 1000u + 1 && t * 1000 < timeout)
            timeout = (uint32_t)(t * 1000);
    }
    struct hub_backlog b;
    if (transport_http_subscribe(x, &r, &b) < 0)
        return;
    /* Nothing newer than the hub's head when we subscribed was missed: the
     * subscription was in place from then on. */
    c->cursor = r.has_since && r.since > b.head_seq ? r.since : b.head_seq;
    c->live_seq = 0;
    conn_set_kind(c, CONN_POLL);
    c->flags |= CF_POLL_WAITING;
    c->q_mark = c->q_len; /* earlier pipelined responses still queued are not messages */
    if (x->req->keep_alive && !(c->flags & CF_EOF))
        c->flags |= CF_KEEPALIVE;
    /* The union held the HTTP state until now: every member of the poll state is set. */
    c->u.poll.origin = x->cors && x->origin ? xstrndup(x->origin, x->origin_len) : NULL;
    if (x->cors)
        c->flags |= CF_CORS;
    transport_replay(c, &b, r.since);
    if (c->q_len == c->q_mark)
        timer_start(&c->w->loop, &c->timer, timeout);
}

void longpoll_complete(struct conn *c)
{
    struct sbuf body = {0};
    sbuf_adds(&body, "{\"messages\":[");
    for (uint16_t i = c->q_mark; i < c->q_len; i++) {
        const struct out_item *it = &c->q[(c->q_head + i) % c->q_cap];
        if (i > c->q_mark)
            sbuf_add(&body, ",", 1);
        sbuf_add(&body, it->data, it->len);
    }
    uint64_t cursor = MAX(c->cursor, c->live_seq);
    sbuf_printf(&body, "],\"cursor\":\"%" PRIu64 "\"}\n", cursor);
    conn_drop_queue_from(c, c->q_mark);
    c->q_mark = 0;
    hub_unsubscribe_all(&conn_server(c)->hub, c->w->id, &c->subs);
    timer_stop(&c->w->loop, &c->timer);
    c->flags &= ~(uint32_t)CF_POLL_WAITING;
    conn_set_kind(c, CONN_HTTP);
    struct http_request req = {.keep_alive = (c->flags & CF_KEEPALIVE) != 0, .minor_version = 1};
    struct http_ctx x = {.c = c, .req = &req, .cors = (c->flags & CF_CORS) != 0};
    char *origin = c->u.poll.origin;
    if (origin) {
        x.origin = origin;
        x.origin_len = strlen(origin);
    }
    http_respond(&x, 200, "application/json", "Cache-Control: no-cache, no-store\r\n", body.data,
                 body.len);
    free(origin);
    memset(&c->u, 0, sizeof(c->u));
    c->flags &= ~(uint32_t)(CF_KEEPALIVE | CF_CORS);
    sbuf_free(&body);
    if (!(c->flags & CF_CLOSE_AFTER))
        timer_start(&c->w->loop, &c->timer, HTTP_KEEPALIVE_IDLE_MS);
    conn_process_pending(c);
}

/* ---- timers and life-cycle events ---------------------------------------- */

static const char sse_heartbeat[] = ":\n\n";
static const char stream_heartbeat[] = "1\r\n\n\r\n"; /* an empty NDJSON line */
static const char stream_end[] = "0\r\n\r\n";

void transport_on_timer(struct conn *c)
{
    const struct herald_config *cfg = conn_cfg(c);
    switch (c->kind) {
    case CONN_HTTP:
        if (c->u.http.started) {
            struct http_ctx x = {.c = c};
            http_error(&x, 408, "request_timeout",
                       "the request was not received completely within %u ms (--header-timeout)",
                       cfg->header_timeout_ms);
            conn_close_after_write(c);
        } else {
            conn_close(c); /* idle keep-alive connection */
        }
        break;
    case CONN_WS: ws_on_timer(c); break;
    case CONN_SSE:
        conn_send(c, NULL, sse_heartbeat, sizeof(sse_heartbeat) - 1);
        timer_start(&c->w->loop, &c->timer, cfg->heartbeat_ms);
        break;
    case CONN_STREAM:
        conn_send(c, NULL, stream_heartbeat, sizeof(stream_heartbeat) - 1);
        timer_start(&c->w->loop, &c->timer, cfg->heartbeat_ms);
        break;
    case CONN_POLL: longpoll_complete(c); break;
    }
}

/* Sends a control event and ends a subscriber stream. */
static void end_with(struct conn *c, struct ctl_frames *f, uint16_t ws_code, const char *reason)
{
    switch (c->kind) {
    case CONN_WS:
        conn_deliver_ctl(c, f);
        ws_close_with(c, ws_code, reason);
        break;
    case CONN_SSE:
        conn_deliver_ctl(c, f);
        conn_close_after_write(c);
        break;
    case CONN_STREAM:
        conn_deliver_ctl(c, f);
        conn_send(c, NULL, stream_end, sizeof(stream_end) - 1);
        conn_close_after_write(c);
        break;
    case CONN_POLL:
        conn_deliver_ctl(c, f); /* the poll is answered with it at the end of the pass */
        break;
    default: break;
    }
}

void transport_on_lifetime(struct conn *c)
{
    end_with(c, conn_server(c)->ctl_reconnect_lifetime, WS_CLOSE_GOING_AWAY,
             "connection lifetime reached: reconnect");
}

void transport_on_shutdown(struct conn *c)
{
    if (c->flags & CF_CLOSING)
        return;
    if (c->kind == CONN_HTTP) {
        if (!c->u.http.started && !c->q_len)
            conn_close(c); /* idle: nothing to finish */
        return;            /* an in-flight request is answered with Connection: close */
    }
    if (c->kind == CONN_POLL)
        c->flags &= ~(uint32_t)CF_KEEPALIVE;
    end_with(c, conn_server(c)->ctl_reconnect_shutdown, WS_CLOSE_GOING_AWAY,
             "server shutting down: reconnect");
}

void transport_on_channel_closed(struct conn *c, struct channel *ch)
{
    char fields[CHANNEL_NAME_MAX + 48];
    int n = snprintf(fields, sizeof(fields), "\"channel\":\"%s\",\"reason\":\"deleted\"", ch->name);
    struct ctl_frames *f = ctl_frames_new("closed", fields, (size_t)n);
    if (c->kind == CONN_WS || !list_empty(&c->subs))
        conn_deliver_ctl(c, f);
    else
        end_with(c, f, WS_CLOSE_NORMAL, "");
    ref_put(&f->ref);
}

void transport_on_slow(struct conn *c)
{
    if (c->kind == CONN_POLL || c->kind == CONN_HTTP) {
        /* Not a stream: nothing to announce. Closing is deferred to the end of the
         * pass, so the fan-out that brought us here keeps a valid subscriber list. */
        conn_close(c);
        return;
    }
    /* Unsent messages are dropped: the client resumes from history with its cursor. */
    conn_drop_queue(c);
    char fields[160];
    int n = snprintf(fields, sizeof(fields),
                     "\"error\":\"slow_consumer\",\"detail\":\"more than %u bytes were waiting "
                     "for this client; reconnect and resume from your last id\"",
                     conn_cfg(c)->max_outbound);
    struct ctl_frames *f = ctl_frames_new("error", fields, (size_t)n);
    c->flags &= ~(uint32_t)CF_CLOSE_AFTER; /* let the last words through */
    c->replay_slack = UINT32_MAX / 2;
    end_with(c, f, WS_CLOSE_POLICY, "slow consumer: outbound queue over limit");
    ref_put(&f->ref);
}

void transport_on_free(struct conn *c)
{
    if (c->kind == CONN_WS) {
        free(c->u.ws.msg);
        free(c->u.ws.pending);
    } else if (c->kind == CONN_POLL)
        free(c->u.poll.origin);
}
