/*
 * sse: Server-Sent Events and HTTP streaming subscribers. See sse.h.
 */
#include "transport/sse.h"

#include <inttypes.h>
#include <stdio.h>

#include <stdlib.h>

#include "auth/auth.h"
#include "hooks/session.h"
#include "transport/transport.h"

enum {
    SSEF_RAW = CF_PROTO_FIRST,          /* format=raw: data is the bare body */
    SSEF_CURSORS = CF_PROTO_FIRST << 1, /* the client resumed with a per-channel cursor */
};

/* Per-connection state (conn->proto) of both transports. */
struct sse_state {
    struct sub_auth auth;
};
CONN_PROTO_FITS(struct sse_state);

static struct sub_auth *sse_auth(struct conn *c)
{
    return &CONN_PROTO(c, struct sse_state)->auth;
}

static void sse_on_free(struct conn *c)
{
    transport_auth_free(c);
}

static const char sse_heartbeat[] = ":\n\n";
static const char stream_heartbeat[] = "1\r\n\n\r\n"; /* an empty NDJSON line */
static const char stream_end[] = "0\r\n\r\n";

/* ---- SSE ------------------------------------------------------------------------ */

/*
 * With per-channel ids (Redis Cluster) a subscriber of several channels needs a
 * cursor of its own: the message's shared lines go out without their id line and
 * the blank line that ends the event, then "id: <this connection's cursor>" ends
 * it. A browser takes the id with the event, in one piece (an event is dispatched
 * at its blank line), so Last-Event-ID never runs ahead of what it received.
 */
static void sse_deliver_cursor(struct conn *c, struct msg *m, struct slice s)
{
    const char *nl = memchr(s.data, '\n', s.len);
    size_t idline = nl ? (size_t)(nl - s.data) + 1 : 0; /* "id: N\n" */
    if (!conn_deliver_bytes(c, &m->ref, s.data + idline, (uint32_t)(s.len - idline - 1)))
        return;
    char line[TRANSPORT_CURSOR_MAX + 8] = "id: ";
    size_t n = transport_conn_cursor(c, line + 4, sizeof(line) - 6);
    memcpy(line + 4 + n, "\n\n", 2);
    conn_send_copy_glued(c, line, 4 + n + 2);
}

/*
 * A subscriber that gave no cursor gets one at once, as the id of the block that
 * sets its retry delay (a block with no data): EventSource keeps it as its
 * lastEventId without dispatching anything, so a reconnect before the first message
 * resumes from the subscription's start, not from whenever it reconnects. `head` is
 * the hub's last id when the subscription took effect. Writes "id: CURSOR\n\n" at
 * out (the "retry:" line's end), within size.
 */
static void start_cursor(struct conn *c, uint64_t head, char *out, size_t size)
{
    char cur[TRANSPORT_CURSOR_MAX];
    if (transport_per_channel_cursor(c)) {
        if (!transport_conn_cursor(c, cur, sizeof(cur)))
            return;
    } else {
        uint64_t pos = head;
        for (struct list *p = c->subs.next; p != &c->subs; p = p->next)
            pos = MAX(pos, sub_position(container_of(p, struct sub, conn_link)));
        snprintf(cur, sizeof(cur), "%" PRIu64, pos);
    }
    snprintf(out, size, "id: %s\n\n", cur);
}

static void sse_deliver(struct conn *c, struct msg *m)
{
    struct slice s = (c->flags & SSEF_RAW) ? m->sse_raw : m->sse;
    if ((c->flags & SSEF_CURSORS) || transport_per_channel_cursor(c))
        return sse_deliver_cursor(c, m, s);
    conn_deliver_bytes(c, &m->ref, s.data, s.len);
}

static void sse_deliver_ctl(struct conn *c, struct ctl_frames *f)
{
    conn_deliver_bytes(c, &f->ref, f->sse.data, f->sse.len);
}

static void sse_on_timer(struct conn *c)
{
    conn_send(c, NULL, sse_heartbeat, sizeof(sse_heartbeat) - 1);
    conn_timer_start(c, conn_cfg(c)->heartbeat_ms);
}

static void sse_end(struct conn *c, struct ctl_frames *f, uint16_t ws_code, const char *reason)
{
    hook_session_ending(c, reason);
    sse_deliver_ctl(c, f);
    conn_close_after_write(c);
}

static const struct sub_ops sse_ops = {
    .conn =
        {
            .kind = CONN_SSE,
            .on_timer = sse_on_timer,
            .on_lifetime = transport_on_lifetime,
            .on_shutdown = transport_on_shutdown,
            .on_slow = transport_on_slow,
            .deliver = sse_deliver,
            .deliver_ctl = sse_deliver_ctl,
            .on_channel_closed = transport_on_channel_closed,
            .on_free = sse_on_free,
        },
    .end = sse_end,
    .auth = sse_auth,
};

/* ---- streaming -------------------------------------------------------------------- */

static void stream_deliver(struct conn *c, struct msg *m)
{
    conn_deliver_bytes(c, &m->ref, m->chunk.data, m->chunk.len);
}

static void stream_deliver_ctl(struct conn *c, struct ctl_frames *f)
{
    conn_deliver_bytes(c, &f->ref, f->chunk.data, f->chunk.len);
}

static void stream_on_timer(struct conn *c)
{
    conn_send(c, NULL, stream_heartbeat, sizeof(stream_heartbeat) - 1);
    conn_timer_start(c, conn_cfg(c)->heartbeat_ms);
}

static void stream_end_with(struct conn *c, struct ctl_frames *f, uint16_t ws_code,
                            const char *reason)
{
    hook_session_ending(c, reason);
    stream_deliver_ctl(c, f);
    conn_send(c, NULL, stream_end, sizeof(stream_end) - 1);
    conn_close_after_write(c);
}

static const struct sub_ops stream_ops = {
    .conn =
        {
            .kind = CONN_STREAM,
            .on_timer = stream_on_timer,
            .on_lifetime = transport_on_lifetime,
            .on_shutdown = transport_on_shutdown,
            .on_slow = transport_on_slow,
            .deliver = stream_deliver,
            .deliver_ctl = stream_deliver_ctl,
            .on_channel_closed = transport_on_channel_closed,
            .on_free = sse_on_free,
        },
    .end = stream_end_with,
    .auth = sse_auth,
};

/* ---- handlers ------------------------------------------------------------------------ */

static const char TAIL[] = "tail"; /* admit_and_subscribe's transport for sse_tail_handle */

/* Admits (the token, then the app's connect hook) and subscribes a request with its
 * user's channel, answering when it may not; 0 with *tok and *b. */
static int admit_and_subscribe(struct http_ctx *x, struct sub_request *r, const char *transport,
                               struct token **tok, struct hub_backlog *b)
{
    if (transport == TAIL) { /* the route's guard took the API's credentials */
        *tok = NULL;
        if (transport_has_channels(x, r) < 0)
            return -1;
        if (!transport_cursor_fits(r, NULL, false)) { /* as transport_admit: no user's, no hook's */
            http_error(x, 400, "bad_cursor", "%s", transport_cursor_mismatch);
            return -1;
        }
        return transport_http_subscribe(x, r, b);
    }
    if (transport_admit(x, r, auth_policy_for(x), tok) < 0)
        return -1;
    r->persistent = true; /* presence counts it (the admin UI's tail is no subscriber) */
    r->tok = *tok;
    if (transport_hook_admit(x, r, *tok, transport, HOOK_CONNECT) < 0 ||
        transport_http_subscribe(x, r, b) < 0) {
        token_put(*tok);
        return -1;
    }
    return 0;
}

/* Sends the head of a never-ending response and hands the connection to ops, which
 * keeps the token tok (a reference) until it expires. */
static void start_stream(struct http_ctx *x, const struct sub_ops *ops, const char *ctype,
                         const char *extra, const char *first, struct token *tok)
{
    struct conn *c = x->c;
    struct sbuf b = {0};
    http_head(x, &b, 200, ctype);
    sbuf_adds(&b, "Cache-Control: no-cache, no-store\r\nX-Accel-Buffering: no\r\n");
    if (extra)
        sbuf_adds(&b, extra);
    sbuf_adds(&b, "\r\n");
    sbuf_adds(&b, first);
    conn_set_ops(c, &ops->conn);
    conn_send_copy(c, b.data, b.len);
    sbuf_free(&b);
    transport_start(c);
    transport_auth_start(c, auth_policy_for(x), tok, false);
}

static void sse_start(struct http_ctx *x, const char *transport)
{
    struct sub_request r;
    if (transport_parse_request(x, &r, true) < 0)
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
    struct token *tok;
    if (admit_and_subscribe(x, &r, transport, &tok, &b) < 0)
        return;
    /* The stream body is delimited by the connection's end (no chunking), so
     * every subscriber gets the very same pre-framed bytes. `retry` asks the
     * browser to come back after 3 s rather than its default. */
    char first[TRANSPORT_CURSOR_MAX + 40] = ":ok\n\nretry: 3000\n\n";
    if (!r.has_since || r.since_implied) /* a cursor from the start (see start_cursor) */
        start_cursor(x->c, b.head_seq, first + 17, sizeof(first) - 17);
    start_stream(x, &sse_ops, "text/event-stream; charset=utf-8", "Connection: keep-alive\r\n",
                 first, tok);
    if (raw)
        x->c->flags |= SSEF_RAW;
    if (r.nsince) /* it keeps positions per channel: give it its cursor in that form */
        x->c->flags |= SSEF_CURSORS;
    transport_replay(x->c, &b);
}

void sse_handle(struct http_ctx *x)
{
    sse_start(x, "sse");
}

void sse_tail_handle(struct http_ctx *x)
{
    sse_start(x, TAIL);
}

void stream_handle(struct http_ctx *x)
{
    struct sub_request r;
    if (transport_parse_request(x, &r, false) < 0)
        return;
    if (x->req->minor_version == 0)
        return http_error(x, 505, "http_version", "/stream needs HTTP/1.1 (chunked encoding)");
    struct hub_backlog b;
    struct token *tok;
    if (admit_and_subscribe(x, &r, "stream", &tok, &b) < 0)
        return;
    start_stream(x, &stream_ops, "application/x-ndjson", "Transfer-Encoding: chunked\r\n", "", tok);
    transport_replay(x->c, &b);
}
