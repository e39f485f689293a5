/*
 * longpoll: held long-poll requests. See longpoll.h.
 *
 * While a poll is held the connection belongs to this module: what arrives
 * for it collects in its own queue of envelopes (not in the connection's
 * outbound queue, which may still hold earlier pipelined answers), and the
 * requests pipelined behind it are not parsed. The answer is built at the end
 * of the loop pass in which the first message came, so messages published
 * together leave together; then the connection is HTTP again.
 */
#include "transport/longpoll.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "auth/auth.h"
#include "transport/transport.h"

enum {
    POLLF_KEEPALIVE = CF_PROTO_FIRST,    /* the request allowed keep-alive */
    POLLF_HEAD = CF_PROTO_FIRST << 1,    /* a HEAD request: no body in the answer */
    POLLF_FULL = CF_PROTO_FIRST << 2,    /* the answer reached --max-outbound */
    POLLF_CORS = CF_PROTO_FIRST << 3,    /* answer with CORS headers */
    POLLF_VARY = CF_PROTO_FIRST << 4,    /* the answer depends on Origin */
    POLLF_HTTP10 = CF_PROTO_FIRST << 5,  /* an HTTP/1.0 request */
    POLLF_EXPIRES = CF_PROTO_FIRST << 6, /* the timer is the token's expiry, not the timeout */
};

struct poll_state {
    struct outq pending; /* envelopes of the answer: messages and control events */
    char *origin;        /* Access-Control-Allow-Origin to echo; NULL: "*" or none */
    uint64_t cursor;     /* the cursor when no message comes: the head when subscribing */
    uint64_t last_seq;   /* highest message id in pending */
    uint64_t *pos;       /* per-channel cursor (ids per channel): position of each sub */
};
CONN_PROTO_FITS(struct poll_state);

static inline struct poll_state *pstate(struct conn *c)
{
    return CONN_PROTO(c, struct poll_state);
}

static const char messages_open[] = "{\"messages\":[";
static const char comma[] = ",";

/* Queues the answer, hands the connection back to HTTP and reads what was
 * pipelined behind the poll. */
static void poll_complete(struct conn *c)
{
    struct poll_state *st = pstate(c);
    char tail[TRANSPORT_CURSOR_MAX + 32];
    int tail_len;
    if (st->pos) {
        size_t n = 0;
        for (struct list *p = c->subs.next; p != &c->subs; p = p->next, n++) {
            const struct sub *s = container_of(p, struct sub, conn_link);
            if (!(c->flags & POLLF_FULL)) /* all the backlog is in: live starts at from_seq */
                st->pos[n] = MAX(st->pos[n], s->from_seq);
        }
        char cur[TRANSPORT_CURSOR_MAX];
        size_t cl = transport_format_cursor(cur, sizeof(cur), st->pos, n);
        tail_len = snprintf(tail, sizeof(tail), "],\"cursor\":\"%.*s\"}\n", (int)cl, cur);
    } else {
        uint64_t cursor = (c->flags & POLLF_FULL) ? st->last_seq : MAX(st->cursor, st->last_seq);
        tail_len = snprintf(tail, sizeof(tail), "],\"cursor\":\"%" PRIu64 "\"}\n", cursor);
    }
    uint64_t body_len = sizeof(messages_open) - 1 + st->pending.bytes + (uint64_t)tail_len;
    if (st->pending.len > 1)
        body_len += st->pending.len - 1;

    struct http_request req = {.keep_alive = (c->flags & POLLF_KEEPALIVE) != 0,
                               .minor_version = (c->flags & POLLF_HTTP10) ? 0 : 1,
                               .method_id = (c->flags & POLLF_HEAD) ? HTTP_M_HEAD : HTTP_M_GET};
    struct http_ctx x = {.c = c,
                         .req = &req,
                         .cors = (c->flags & POLLF_CORS) != 0,
                         .vary = (c->flags & POLLF_VARY) != 0,
                         .origin = st->origin,
                         .origin_len = st->origin ? strlen(st->origin) : 0};
    struct outq body = st->pending;
    char *origin = st->origin;
    st->pending = (struct outq){0};
    free(st->pos);
    st->pos = NULL;
    hub_unsubscribe_all(conn_hub(c), conn_worker_id(c), &c->subs);
    hub_tenant_unbind(&c->tenant); /* answered: no longer one of its app's subscribers */
    conn_timer_stop(c);

    bool keep = http_keep_alive(&x);
    struct sbuf b = {0};
    http_head(&x, &b, 200, "application/json");
    sbuf_printf(&b, "Cache-Control: no-cache, no-store\r\nContent-Length: %" PRIu64 "\r\n%s\r\n",
                body_len, http_connection_header(&x, keep));
    conn_send_copy(c, b.data, b.len);
    sbuf_free(&b);
    if (!(c->flags & POLLF_HEAD)) {
        conn_send(c, NULL, messages_open, sizeof(messages_open) - 1);
        for (uint32_t i = 0; i < body.len; i++) {
            const struct out_item *it = outq_at(&body, i);
            if (i)
                conn_send(c, NULL, comma, 1);
            conn_send_item(c, it); /* a live message's stamp goes with it */
        }
        conn_send_copy(c, tail, (size_t)tail_len);
    }
    outq_clear(&body);
    free(origin);

    c->flags &= ~(uint32_t)CF_READ_PAUSED;
    conn_set_ops(c, &http_conn_ops);
    if (!keep) {
        conn_close_after_write(c);
        return;
    }
    http_resume_requests(c);
}

static void poll_deliver(struct conn *c, struct msg *m)
{
    struct poll_state *st = pstate(c);
    if (c->flags & POLLF_FULL)
        return; /* the next poll gets it, from history */
    /* At least one message per answer, whatever gap events came before it (a resume's
     * gaps are bounded: see hub_gap): an answer of gaps alone would have no cursor to
     * continue from. */
    if (st->last_seq &&
        st->pending.bytes + st->pending.len + m->envelope.len > conn_cfg(c)->max_outbound) {
        c->flags |= POLLF_FULL;
        return;
    }
    outq_push(&st->pending, &m->ref, m->envelope.data, m->envelope.len);
    if (conn_delivering_live(c, &m->ref))
        outq_at(&st->pending, st->pending.len - 1)->stamped = true;
    st->last_seq = MAX(st->last_seq, m->seq);
    size_t i = 0;
    for (struct list *p = c->subs.next; st->pos && p != &c->subs; p = p->next, i++) {
        const struct channel *ch = container_of(p, struct sub, conn_link)->ch;
        if (ch->id == m->chan_id || ch->pattern) /* a pattern: ids order all it matches */
            st->pos[i] = MAX(st->pos[i], m->seq);
    }
    conn_want_flush(c); /* answered at the end of this pass */
}

static void poll_deliver_ctl(struct conn *c, struct ctl_frames *f)
{
    outq_push(&pstate(c)->pending, &f->ref, f->json.data, f->json.len);
    conn_want_flush(c);
}

static void poll_before_flush(struct conn *c)
{
    if (!outq_empty(&pstate(c)->pending))
        poll_complete(c);
}

static void poll_end(struct conn *c, struct ctl_frames *f, uint16_t ws_code, const char *reason)
{
    poll_deliver_ctl(c, f); /* the poll is answered with it at the end of the pass */
}

static void poll_on_timer(struct conn *c)
{
    if (c->flags & POLLF_EXPIRES)
        transport_end_expired(c); /* answered with the event at the end of the pass */
    else
        poll_complete(c);
}

static void poll_on_shutdown(struct conn *c)
{
    c->flags &= ~(uint32_t)POLLF_KEEPALIVE;
    transport_on_shutdown(c);
}

static long poll_on_read(struct conn *c, char *buf, size_t len)
{
    return 0; /* requests pipelined behind a held poll wait for its answer */
}

static void poll_on_free(struct conn *c)
{
    outq_clear(&pstate(c)->pending);
    free(pstate(c)->origin);
    free(pstate(c)->pos);
}

static const struct sub_ops poll_ops = {
    .conn =
        {
            .kind = CONN_POLL,
            .on_read = poll_on_read,
            .on_timer = poll_on_timer,
            .on_shutdown = poll_on_shutdown,
            .before_flush = poll_before_flush,
            .deliver = poll_deliver,
            .deliver_ctl = poll_deliver_ctl,
            .on_channel_closed = transport_on_channel_closed,
            .on_free = poll_on_free,
        },
    .end = poll_end,
};

/* Reads ?timeout= (seconds), bounded by --poll-timeout. Returns false after answering. */
static bool poll_timeout(struct http_ctx *x, uint32_t *timeout_ms)
{
    *timeout_ms = conn_cfg(x->c)->poll_timeout_ms;
    const char *v;
    size_t vl;
    if (!http_query_param(x->req->query, x->req->query_len, "timeout", &v, &vl))
        return true;
    uint64_t t;
    if (hub_cursor_parse(v, vl, &t) < 0 || vl == 0) {
        http_error(x, 400, "bad_timeout", "timeout is a whole number of seconds");
        return false;
    }
    if (t < *timeout_ms / 1000u + 1 && t * 1000 < *timeout_ms)
        *timeout_ms = (uint32_t)(t * 1000);
    return true;
}

void longpoll_handle(struct http_ctx *x)
{
    struct conn *c = x->c;
    struct sub_request r;
    uint32_t timeout;
    if (transport_parse_request(x, &r, false) < 0 || !poll_timeout(x, &timeout))
        return;
    struct hub_backlog b;
    struct token *tok;
    const struct auth_policy *policy = auth_policy_for(x);
    if (transport_admit(x, &r, policy, &tok) < 0)
        return;
    /* Each poll is a request: the app's backend hears of it as a `subscribe`. */
    if (transport_hook_admit(x, &r, tok, "poll", HOOK_SUBSCRIBE) < 0) {
        token_put(tok);
        return;
    }
    int sub = transport_http_subscribe(x, &r, &b);
    transport_hook_done(c);
    if (sub < 0) {
        token_put(tok);
        return;
    }
    /* A poll held past its token's expiry is answered then, with an `expired` event. */
    bool expires = false;
    if (tok) {
        uint64_t left = auth_deadline(policy, tok, conn_now(c)) - conn_now(c);
        expires = left < timeout;
        timeout = expires ? (uint32_t)left : timeout;
        token_put(tok);
    }
    bool keep = x->req->keep_alive && !(c->flags & CF_EOF);
    bool head = x->req->method_id == HTTP_M_HEAD;
    conn_set_ops(c, &poll_ops.conn);
    struct poll_state *st = pstate(c);
    /* Nothing newer than the hub's head when we subscribed was missed: the
     * subscription was in place from then on. */
    st->cursor = r.has_since && r.since > b.head_seq ? r.since : b.head_seq;
    st->origin = x->cors && x->origin ? xstrndup(x->origin, x->origin_len) : NULL;
    c->flags |= CF_READ_PAUSED | (keep ? POLLF_KEEPALIVE : 0) | (head ? POLLF_HEAD : 0) |
                (x->cors ? POLLF_CORS : 0) | (x->vary ? POLLF_VARY : 0) |
                (x->req->minor_version == 0 ? POLLF_HTTP10 : 0) | (expires ? POLLF_EXPIRES : 0);
    if (r.nsince || transport_per_channel_cursor(c)) {
        /* Where the client stands on each channel; what the answer holds moves it on. */
        size_t n = 0;
        for (struct list *p = c->subs.next; p != &c->subs; p = p->next)
            n++;
        st->pos = xmalloc(n * sizeof(*st->pos));
        n = 0;
        for (struct list *p = c->subs.next; p != &c->subs; p = p->next)
            st->pos[n++] = sub_position(container_of(p, struct sub, conn_link));
    }
    transport_replay(c, &b);
    if (outq_empty(&st->pending))
        conn_timer_start(c, timeout);
}
