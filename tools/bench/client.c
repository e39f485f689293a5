/*
 * herald-bench client engine (see client.h): connection state machines for
 * every subscriber transport and the keep-alive publisher, one epoll loop.
 *
 * Input is read into one shared scratch buffer and consumed in place; only
 * what a state cannot consume yet (a partial head, frame header or chunk-size
 * line) is kept per connection, so an idle subscriber costs its struct only.
 */
#include "client.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SCRATCH_SIZE (256 * 1024)
#define BODY_MAX     (16u << 20)

enum { CH_SIZE, CH_DATA, CH_CRLF, CH_TRAILER };

static void xfail(const char *what)
{
    perror(what);
    abort();
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p)
        xfail("herald-bench: realloc");
    return p;
}

static void buf_append(char **buf, uint32_t *len, uint32_t *cap, const char *p, size_t n)
{
    if (*len + n > *cap) {
        uint32_t nc = *cap ? *cap : 512;
        while (nc < *len + n)
            nc *= 2;
        *buf = xrealloc(*buf, nc);
        *cap = nc;
    }
    memcpy(*buf + *len, p, n);
    *len += (uint32_t)n;
}

static void buf_free(char **buf, uint32_t *len, uint32_t *cap)
{
    free(*buf);
    *buf = NULL;
    *len = *cap = 0;
}

void bench_chan_name(const struct bench_opts *o, int chan, char *out, size_t cap)
{
    snprintf(out, cap, "%s-%d", o->chan_prefix, chan);
}

/* ---- timers: a binary min-heap of connections keyed by timer_at ---- */

static void heap_swap(struct engine *e, int a, int b)
{
    struct conn *t = e->heap[a];
    e->heap[a] = e->heap[b];
    e->heap[b] = t;
    e->heap[a]->heap_idx = a;
    e->heap[b]->heap_idx = b;
}

static void heap_up(struct engine *e, int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (e->heap[p]->timer_at <= e->heap[i]->timer_at)
            break;
        heap_swap(e, i, p);
        i = p;
    }
}

static void heap_down(struct engine *e, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < e->heap_n && e->heap[l]->timer_at < e->heap[m]->timer_at)
            m = l;
        if (r < e->heap_n && e->heap[r]->timer_at < e->heap[m]->timer_at)
            m = r;
        if (m == i)
            return;
        heap_swap(e, i, m);
        i = m;
    }
}

void engine_timer_clear(struct engine *e, struct conn *c)
{
    int i = c->heap_idx;
    if (i < 0)
        return;
    e->heap_n--;
    if (i != e->heap_n) {
        e->heap[i] = e->heap[e->heap_n];
        e->heap[i]->heap_idx = i;
        heap_down(e, i);
        heap_up(e, i);
    }
    c->heap_idx = -1;
    c->timer_at = 0;
}

void engine_timer_set(struct engine *e, struct conn *c, int64_t at)
{
    engine_timer_clear(e, c);
    if (e->heap_n == e->heap_cap) {
        e->heap_cap = e->heap_cap ? 2 * e->heap_cap : 1024;
        e->heap = xrealloc(e->heap, (size_t)e->heap_cap * sizeof *e->heap);
    }
    c->timer_at = at;
    c->heap_idx = e->heap_n;
    e->heap[e->heap_n++] = c;
    heap_up(e, c->heap_idx);
}

int64_t engine_next_timer(const struct engine *e)
{
    return e->heap_n ? e->heap[0]->timer_at : 0;
}

/* ---- engine ---- */

void engine_init(struct engine *e, const struct bench_opts *o)
{
    memset(e, 0, sizeof *e);
    e->o = o;
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    if (e->ep < 0)
        xfail("epoll_create1");
    e->scratch_cap = SCRATCH_SIZE;
    e->scratch = xrealloc(NULL, SCRATCH_SIZE);
    for (int i = 0; i < H_COUNT; i++)
        hist_init(&e->res.h[i]);
    e->phase = 1;
    e->track_ids = o->reconnect > 0 && o->target == TARGET_HERALD;
    engine_refresh_time(e);
}

void engine_refresh_time(struct engine *e)
{
    e->now = bench_now_us();
    e->mono = bench_mono_us();
}

void conn_init(struct conn *c, int id, enum conn_kind kind, int transport, int chan, int server)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->id = id;
    c->kind = (uint8_t)kind;
    c->transport = (uint8_t)transport;
    c->chan = chan;
    c->server = server;
    c->heap_idx = -1;
    c->state = ST_NEW;
}

/* closed (for good, or until its reconnect timer) */
static inline bool conn_gone(const struct conn *c)
{
    return c->state == ST_DEAD || c->state == ST_RECONNECT;
}

static void conn_write(struct engine *e, struct conn *c, const void *data, size_t len)
{
    const char *p = data;
    if (c->wlen == 0) {
        while (len > 0) {
            ssize_t w = write(c->fd, p, len);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    break;
                conn_close(e, c, false);
                return;
            }
            e->res.c.bytes_out += (uint64_t)w;
            p += w;
            len -= (size_t)w;
        }
    }
    if (len > 0)
        buf_append(&c->wbuf, &c->wlen, &c->wcap, p, len);
}

static void conn_flush(struct engine *e, struct conn *c)
{
    uint32_t off = 0;
    while (off < c->wlen) {
        ssize_t w = write(c->fd, c->wbuf + off, c->wlen - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                conn_close(e, c, false);
            break;
        }
        e->res.c.bytes_out += (uint64_t)w;
        off += (uint32_t)w;
    }
    if (conn_gone(c))
        return;
    memmove(c->wbuf, c->wbuf + off, c->wlen - off);
    c->wlen -= off;
    if (c->wlen == 0)
        buf_free(&c->wbuf, &c->wlen, &c->wcap);
}

/* Herald subscribers that lose their connection after the first handshake
 * (lifetime reached, node draining, any close) reconnect and resume from
 * their cursor, so long runs keep their users and the loss count stays exact. */
static bool sub_resumes(const struct engine *e, const struct conn *c)
{
    const struct bench_opts *o = e->o;
    return c->kind == CK_SUB && c->first_done && o->reconnect > 0 && o->target == TARGET_HERALD &&
           (c->transport == TR_WS || c->transport == TR_SSE || c->transport == TR_STREAM);
}

void conn_close(struct engine *e, struct conn *c, bool failed)
{
    if (c->state == ST_DEAD || c->state == ST_RECONNECT)
        return;
    bool again = sub_resumes(e, c);
    if (c->kind == CK_SUB) {
        if (again) {
            if (c->reopen)
                e->res.c.reconnect_fails++;
        } else if (failed) {
            e->res.c.failed++;
        } else if (c->first_done) {
            e->res.c.closed++;
        }
        /* until a resume succeeds, the subscription ends here */
        if (c->sub_us && !c->end_us)
            c->end_us = e->now;
    }
    engine_timer_clear(e, c);
    if (c->fd >= 0) {
        epoll_ctl(e->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = ST_DEAD;
    buf_free(&c->rbuf, &c->rlen, &c->rcap);
    buf_free(&c->wbuf, &c->wlen, &c->wcap);
    buf_free(&c->body, &c->blen, &c->bcap);
    free(c->cursor);
    c->cursor = NULL;
    if (again) {
        /* first retry at once (0-20 ms jitter), then 100 ms doubling up to 2 s */
        int64_t ms = c->retries == 0 ? (int64_t)(20 * bench_rand01())
                                     : (c->retries >= 5 ? 2000 : 100LL << (c->retries - 1));
        if (c->retries < 255)
            c->retries++;
        c->state = ST_RECONNECT;
        engine_timer_set(e, c, e->mono + ms * 1000);
    }
}

/* Reopens a subscriber closed by the server: same channel, same server,
 * same account (sub_us, delivered); the request carries the cursor. */
static void conn_reopen(struct engine *e, struct conn *c)
{
    c->state = ST_NEW;
    c->reopen = 1;
    c->ws_hlen = c->ws_op = c->ws_ctl_len = c->chunk_st = 0;
    c->resp_close = false;
    c->status = 0;
    c->body_left = 0;
    c->ws_left = 0;
    c->ref = 0;
    memset(&c->sc, 0, sizeof c->sc);
    c->id_st = c->id_k = 0;
    c->pending_id = c->id_acc = 0;
    conn_open(e, c);
}

void conn_open(struct engine *e, struct conn *c)
{
    const struct bench_addr *a = &e->o->servers[c->server];
    if (c->kind == CK_SUB && !c->reopen) {
        e->res.c.attempted++;
        if (!e->res.first_attempt_us)
            e->res.first_attempt_us = e->now;
    }
    c->t_start = e->mono;
    int fd, rc = proto_connect(a, &fd);
    if (rc < 0) {
        c->state = ST_CONNECTING;
        conn_close(e, c, true);
        return;
    }
    c->fd = fd;
    c->state = ST_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        conn_close(e, c, true);
}

static void http_date(int64_t us, char *out, size_t cap)
{
    time_t t = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

void conn_poll_request(struct engine *e, struct conn *c)
{
    const struct bench_opts *o = e->o;
    const struct bench_addr *a = &o->servers[c->server];
    char ch[160], req[1024];
    int n;
    bool pull = c->transport == TR_PULL;
    bench_chan_name(o, c->chan, ch, sizeof ch);
    if (o->target == TARGET_HERALD) {
        char tok[768];
        proto_token_header(o, c->id, ch, tok, sizeof tok);
        n = snprintf(req, sizeof req,
                     "GET /poll?channels=%s&timeout=%d%s%s%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n", ch,
                     pull ? 0 : o->poll_timeout, c->cursor ? "&since=" : "",
                     c->cursor ? c->cursor : "", o->no_user ? "&user=0" : "", a->host, a->port,
                     tok);
    } else {
        char ims[96] = "";
        if (!c->cursor && pull) {
            char d[48];
            http_date(c->sub_us ? c->sub_us : e->now, d, sizeof d);
            snprintf(ims, sizeof ims, "If-Modified-Since: %s\r\nIf-None-Match: 0\r\n", d);
        } else if (c->cursor) {
            snprintf(ims, sizeof ims, "If-Modified-Since: %s\r\nIf-None-Match: %s\r\n", c->cursor,
                     c->etag[0] ? c->etag : "0");
        }
        n = snprintf(req, sizeof req, "GET /%s/%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n",
                     pull ? "poll" : "sub", ch, a->host, a->port, ims);
    }
    if (!c->sub_us)
        c->sub_us = e->now;
    c->last_poll = e->mono;
    c->state = ST_HEAD;
    e->res.c.http_requests++;
    conn_write(e, c, req, (size_t)n);
}

static void send_sub_request(struct engine *e, struct conn *c)
{
    const struct bench_opts *o = e->o;
    const struct bench_addr *a = &o->servers[c->server];
    char ch[160], req[2048], tok[768];
    int n = 0;
    bench_chan_name(o, c->chan, ch, sizeof ch);
    bool herald = o->target == TARGET_HERALD;
    proto_token_header(o, c->id, ch, tok, sizeof tok);
    /* a resume: the cursor of the last complete message (0: all retained
     * history; what predates the subscription is counted stale, not delivered) */
    char since[64] = "", last_event_id[64] = "";
    if (herald && o->no_user) /* rides on the query: "since" is the URL's tail */
        snprintf(since, sizeof since, "&user=0");
    if (herald && c->reopen) {
        snprintf(since + strlen(since), sizeof since - strlen(since), "&since=%llu",
                 (unsigned long long)c->last_id);
        snprintf(last_event_id, sizeof last_event_id, "Last-Event-ID: %llu\r\n",
                 (unsigned long long)c->last_id);
    }
    switch (c->transport) {
    case TR_RAW:
        n = snprintf(req, sizeof req, "SUB %s\n", ch);
        c->state = ST_RAW_HELLO;
        break;
    case TR_WS:
        proto_ws_key(c->ws_key);
        n = snprintf(
            req, sizeof req,
            "GET %s%s%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: http://%s:%d\r\n%s\r\n",
            herald ? "/ws?channels=" : "/sub/", ch, since, a->host, a->port, c->ws_key, a->host,
            a->port, tok);
        c->state = ST_HEAD;
        break;
    case TR_SSE:
        n = snprintf(req, sizeof req,
                     "GET %s%s%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n%s%s\r\n",
                     herald ? "/sse?channels=" : "/sub/", ch, herald && o->no_user ? "&user=0" : "",
                     a->host, a->port, last_event_id, tok);
        c->state = ST_HEAD;
        break;
    case TR_STREAM:
        n = snprintf(req, sizeof req, "GET %s%s%s HTTP/1.1\r\nHost: %s:%d\r\n%s%s\r\n",
                     herald ? "/stream?channels=" : "/sub/", ch, since, a->host, a->port,
                     herald ? "" : "TE: chunked\r\n", tok);
        c->state = ST_HEAD;
        break;
    case TR_POLL:
    case TR_PULL: conn_poll_request(e, c); return;
    }
    e->res.c.http_requests += c->transport != TR_RAW;
    conn_write(e, c, req, (size_t)n);
}

static void handshake_done(struct engine *e, struct conn *c)
{
    if (c->reopen) {
        /* resumed: the subscription is continuous from the first sub_us */
        hist_add(&e->res.h[H_RECONNECT], e->mono - c->t_start);
        e->res.c.reconnects++;
        c->reopen = 0;
        c->retries = 0;
        c->end_us = 0;
        if (e->o->scenario == SC_GAME && c->transport == TR_WS) {
            double s = (1 + 29 * bench_rand01()) * e->o->time_scale;
            engine_timer_set(e, c, e->mono + (int64_t)(s * 1e6));
        }
        return;
    }
    hist_add(&e->res.h[H_HANDSHAKE], e->mono - c->t_start);
    e->res.last_handshake_us = e->now;
    e->res.c.connected++;
    e->res.c.handshakes_done++;
    c->first_done = 1;
    if (!c->sub_us)
        c->sub_us = e->now;
    if (e->o->scenario == SC_GAME && c->transport == TR_WS && e->o->target == TARGET_HERALD) {
        double s = (1 + 29 * bench_rand01()) * e->o->time_scale;
        engine_timer_set(e, c, e->mono + (int64_t)(s * 1e6));
    }
}

static void on_connected(struct engine *e, struct conn *c)
{
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        conn_close(e, c, true);
        return;
    }
    if (c->kind == CK_PUB) {
        c->state = ST_IDLE;
        c->first_done = 1;
        return;
    }
    if (c->transport == TR_POLL || c->transport == TR_PULL)
        handshake_done(e, c); /* long-poll: the handshake is the TCP connect */
    send_sub_request(e, c);
}

struct msg_ctx {
    struct engine *e;
    struct conn *c;
};

static void on_message(void *ctx, int64_t t, uint64_t n)
{
    struct msg_ctx *m = ctx;
    struct engine *e = m->e;
    struct conn *c = m->c;
    (void)n;
    if (!c->sub_us || t < c->sub_us) {
        e->res.c.stale++;
        return;
    }
    c->delivered++;
    e->res.c.delivered++;
    if (c->pending_id) {
        c->last_id = c->pending_id; /* this message is complete: resume after it */
        c->pending_id = 0;
    }
    hist_add(&e->res.h[e->phase ? H_BCAST : H_BCAST_RAMP], e->now - t);
}

/* Finds "id":"<digits>" in herald envelopes (the message id, sent before
 * the data); on_message makes it the cursor once that message is complete. */
static void id_scan(struct conn *c, const char *p, size_t n)
{
    static const char pat[] = "\"id\":\"";
    const char *end = p + n;
    while (p < end) {
        if (c->id_st == 1) {
            if (*p >= '0' && *p <= '9') {
                c->id_acc = c->id_acc * 10 + (uint64_t)(*p++ - '0');
                continue;
            }
            c->pending_id = c->id_acc;
            c->id_st = 0;
            c->id_k = 0;
            continue;
        }
        if (c->id_k == 0) {
            const char *q = memchr(p, '"', (size_t)(end - p));
            if (!q)
                return;
            p = q + 1;
            c->id_k = 1;
            continue;
        }
        if (*p != pat[c->id_k]) {
            c->id_k = 0;
            continue; /* re-examine: it may be a quote */
        }
        p++;
        if (pat[++c->id_k] == 0) {
            c->id_st = 1;
            c->id_acc = 0;
        }
    }
}

static void scan(struct engine *e, struct conn *c, const char *p, size_t n)
{
    struct msg_ctx m = {e, c};
    if (e->track_ids)
        id_scan(c, p, n);
    proto_scan_feed(&c->sc, p, n, on_message, &m);
}

static void body_data(struct engine *e, struct conn *c, const char *p, size_t n)
{
    if (c->kind == CK_PUB)
        return;
    if (c->transport == TR_POLL || c->transport == TR_PULL) {
        if (c->blen + n > BODY_MAX) {
            conn_close(e, c, false);
            return;
        }
        buf_append(&c->body, &c->blen, &c->bcap, p, n);
        return;
    }
    scan(e, c, p, n);
}

static void body_end(struct engine *e, struct conn *c)
{
    if (c->kind == CK_PUB) {
        c->state = ST_IDLE;
        if (e->on_pub)
            e->on_pub(e, c, c->status, e->mono - c->t_start);
        if (c->resp_close && c->state == ST_IDLE)
            conn_close(e, c, false);
        return;
    }
    if (c->transport != TR_POLL && c->transport != TR_PULL) {
        conn_close(e, c, false); /* the server ended a stream */
        return;
    }
    e->res.c.responses++;
    if (c->blen) {
        struct proto_scan s = {0};
        struct msg_ctx m = {e, c};
        proto_scan_feed(&s, c->body, c->blen, on_message, &m);
        char cur[256];
        if (e->o->target == TARGET_HERALD &&
            proto_json_str(c->body, c->blen, "cursor", cur, sizeof cur)) {
            free(c->cursor);
            c->cursor = strdup(cur);
        }
    }
    buf_free(&c->body, &c->blen, &c->bcap);
    if (c->resp_close) {
        conn_close(e, c, false);
        return;
    }
    c->state = ST_IDLE;
    if (c->transport == TR_POLL) {
        conn_poll_request(e, c);
    } else {
        int64_t at = c->last_poll + (int64_t)(e->o->pull_interval * e->o->time_scale * 1e6);
        engine_timer_set(e, c, at > e->mono ? at : e->mono);
    }
}

static void on_head(struct engine *e, struct conn *c, const struct proto_head *h)
{
    c->status = h->status;
    c->resp_close = h->close;
    if (c->kind == CK_SUB) {
        switch (c->transport) {
        case TR_WS: {
            char want[32];
            proto_ws_accept(c->ws_key, want);
            if (h->status != 101 || strcmp(want, h->ws_accept) != 0) {
                conn_close(e, c, true);
                return;
            }
            handshake_done(e, c);
            c->state = ST_WS;
            c->ws_hlen = 0;
            return;
        }
        case TR_SSE:
        case TR_STREAM:
            if (h->status != 200) {
                conn_close(e, c, true);
                return;
            }
            handshake_done(e, c);
            break;
        default: /* poll, pull */
            if (h->status == 200 && e->o->target != TARGET_HERALD && h->last_modified[0]) {
                free(c->cursor);
                c->cursor = strdup(h->last_modified);
                snprintf(c->etag, sizeof c->etag, "%s", h->etag);
            } else if (h->status >= 400 && h->status != 408) {
                conn_close(e, c, !c->first_done);
                return;
            }
            break;
        }
    }
    if (h->status == 101 || h->status == 304 || h->status == 204) {
        c->body_left = 0;
        c->state = ST_BODY_CL;
    } else if (h->chunked) {
        c->state = ST_BODY_CHUNK;
        c->chunk_st = CH_SIZE;
    } else if (h->content_length >= 0) {
        c->state = ST_BODY_CL;
        c->body_left = h->content_length;
    } else {
        c->state = ST_BODY_EOF;
    }
    if (c->state == ST_BODY_CL && c->body_left == 0)
        body_end(e, c);
}

void conn_ws_ping_op(struct engine *e, struct conn *c)
{
    char op[96];
    uint8_t fr[128];
    c->ref = ++e->next_ref;
    int n = snprintf(op, sizeof op, "{\"op\":\"ping\",\"ref\":\"%u\"}", c->ref);
    size_t fl = proto_ws_frame(fr, 1, op, (size_t)n);
    c->req_sent = e->mono;
    e->res.c.requests++;
    conn_write(e, c, fr, fl);
}

static void ws_frame_end(struct engine *e, struct conn *c)
{
    uint8_t fr[160];
    size_t n = c->ws_ctl_len;
    switch (c->ws_op) {
    case 9: /* ping: answer with the same payload (RFC 6455 §5.5.3) */
        e->res.c.pings++;
        conn_write(e, c, fr, proto_ws_frame(fr, 10, c->ws_ctl, n));
        break;
    case 8:
        conn_write(e, c, fr, proto_ws_frame(fr, 8, c->ws_ctl, n < 2 ? n : 2));
        conn_close(e, c, false);
        break;
    case 1:
    case 2:
        if (e->track_ids && n > 9 && memcmp(c->ws_ctl, "{\"event\":\"", 10) == 0 &&
            memcmp(c->ws_ctl + 10, "message\"", n - 10 < 8 ? n - 10 : 8) != 0) {
            if (memmem(c->ws_ctl, n, "\"event\":\"reconnect\"", 19))
                e->res.c.ctl_reconnect++;
            else if (memmem(c->ws_ctl, n, "\"event\":\"gap\"", 13))
                e->res.c.ctl_gap++;
        }
        if (c->ref && memmem(c->ws_ctl, n, "\"event\":\"pong\"", 14)) {
            char ref[32];
            if (proto_json_str((char *)c->ws_ctl, n, "ref", ref, sizeof ref) &&
                strtoul(ref, NULL, 10) == c->ref) {
                e->res.c.responses++;
                hist_add(&e->res.h[e->phase ? H_REQUEST : H_REQUEST_RAMP], e->mono - c->req_sent);
                c->ref = 0;
                double s = (1 + 29 * bench_rand01()) * e->o->time_scale;
                engine_timer_set(e, c, e->mono + (int64_t)(s * 1e6));
            }
        }
        break;
    }
}

/* Consumes WebSocket input; returns bytes consumed. */
static size_t ws_process(struct engine *e, struct conn *c, const char *p, size_t avail)
{
    if (c->ws_hlen == 0) {
        if (avail < 2)
            return 0;
        const uint8_t *b = (const uint8_t *)p;
        size_t len7 = b[1] & 0x7f, hl = 2 +
                                        (len7 == 126   ? 2
                                         : len7 == 127 ? 8
                                                       : 0) +
                                        ((b[1] & 0x80) ? 4 : 0);
        if (avail < hl)
            return 0;
        uint64_t len = len7;
        if (len7 == 126)
            len = (uint64_t)b[2] << 8 | b[3];
        else if (len7 == 127)
            for (int i = 0; i < 8; i++)
                len = len << 8 | b[2 + i];
        int op = b[0] & 0x0f;
        if (op != 0)
            c->ws_op = (uint8_t)op;
        if (op != 0 || !(c->ws_op == 1 || c->ws_op == 2))
            c->ws_ctl_len = 0;
        c->ws_left = len;
        c->ws_hlen = 1;
        if (len == 0) {
            c->ws_hlen = 0;
            ws_frame_end(e, c);
        }
        return hl;
    }
    size_t k = avail < c->ws_left ? avail : (size_t)c->ws_left;
    if (c->ws_op == 1 || c->ws_op == 2)
        scan(e, c, p, k);
    size_t room = sizeof c->ws_ctl - c->ws_ctl_len;
    size_t cp = k < room ? k : room;
    memcpy(c->ws_ctl + c->ws_ctl_len, p, cp);
    c->ws_ctl_len = (uint8_t)(c->ws_ctl_len + cp);
    c->ws_left -= k;
    if (c->ws_left == 0) {
        c->ws_hlen = 0;
        ws_frame_end(e, c);
    }
    return k;
}

/* Consumes chunked body input; returns bytes consumed. */
static size_t chunk_process(struct engine *e, struct conn *c, const char *p, size_t avail)
{
    const char *nl;
    switch (c->chunk_st) {
    case CH_SIZE:
        if (!(nl = memchr(p, '\n', avail)))
            return 0;
        c->body_left = strtoll(p, NULL, 16);
        c->chunk_st = c->body_left ? CH_DATA : CH_TRAILER;
        return (size_t)(nl - p) + 1;
    case CH_DATA: {
        size_t k = avail < (size_t)c->body_left ? avail : (size_t)c->body_left;
        body_data(e, c, p, k);
        c->body_left -= (int64_t)k;
        if (c->body_left == 0)
            c->chunk_st = CH_CRLF;
        return k;
    }
    case CH_CRLF:
        if (!(nl = memchr(p, '\n', avail)))
            return 0;
        c->chunk_st = CH_SIZE;
        return (size_t)(nl - p) + 1;
    case CH_TRAILER:
        if (!(nl = memchr(p, '\n', avail)))
            return 0;
        if (nl == p || (nl == p + 1 && p[0] == '\r'))
            body_end(e, c);
        return (size_t)(nl - p) + 1;
    }
    return avail;
}

static size_t conn_process(struct engine *e, struct conn *c, const char *buf, size_t len)
{
    size_t off = 0;
    while (off < len && !conn_gone(c)) {
        const char *p = buf + off;
        size_t avail = len - off, k;
        switch (c->state) {
        case ST_HEAD: {
            struct proto_head h;
            long hl = proto_parse_head(p, avail, &h);
            if (hl == 0)
                return off;
            if (hl < 0) {
                conn_close(e, c, !c->first_done);
                return len;
            }
            off += (size_t)hl;
            on_head(e, c, &h);
            break;
        }
        case ST_BODY_CL:
            k = avail < (size_t)c->body_left ? avail : (size_t)c->body_left;
            body_data(e, c, p, k);
            off += k;
            c->body_left -= (int64_t)k;
            if (c->body_left == 0 && c->state == ST_BODY_CL)
                body_end(e, c);
            break;
        case ST_BODY_CHUNK:
            k = chunk_process(e, c, p, avail);
            if (k == 0)
                return off;
            off += k;
            break;
        case ST_BODY_EOF:
            body_data(e, c, p, avail);
            off = len;
            break;
        case ST_WS:
            k = ws_process(e, c, p, avail);
            if (k == 0)
                return off;
            off += k;
            break;
        case ST_RAW_HELLO: {
            const char *nl = memchr(p, '\n', avail);
            if (!nl)
                return off;
            if (avail < 3 || memcmp(p, "+OK", 3) != 0) {
                conn_close(e, c, true);
                return len;
            }
            handshake_done(e, c);
            c->state = ST_RAW;
            off += (size_t)(nl - p) + 1;
            break;
        }
        case ST_RAW:
            scan(e, c, p, avail);
            off = len;
            break;
        default: /* idle keep-alive connection: nothing expected */ off = len; break;
        }
    }
    return off;
}

static void conn_readable(struct engine *e, struct conn *c)
{
    for (;;) {
        ssize_t r = read(c->fd, e->scratch, e->scratch_cap);
        if (r > 0) {
            e->res.c.bytes_in += (uint64_t)r;
            e->now = bench_now_us();
            e->mono = bench_mono_us();
            if (c->rlen) {
                buf_append(&c->rbuf, &c->rlen, &c->rcap, e->scratch, (size_t)r);
                size_t used = conn_process(e, c, c->rbuf, c->rlen);
                if (conn_gone(c))
                    return;
                memmove(c->rbuf, c->rbuf + used, c->rlen - used);
                c->rlen -= (uint32_t)used;
                if (c->rlen == 0)
                    buf_free(&c->rbuf, &c->rlen, &c->rcap);
            } else {
                size_t used = conn_process(e, c, e->scratch, (size_t)r);
                if (conn_gone(c))
                    return;
                if (used < (size_t)r)
                    buf_append(&c->rbuf, &c->rlen, &c->rcap, e->scratch + used, (size_t)r - used);
            }
            if (c->rlen > (1u << 20)) {
                conn_close(e, c, !c->first_done);
                return;
            }
            continue;
        }
        if (r == 0) {
            if (c->state == ST_BODY_EOF)
                body_end(e, c);
            conn_close(e, c, !c->first_done && c->kind == CK_SUB);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            conn_close(e, c, !c->first_done && c->kind == CK_SUB);
        return;
    }
}

int engine_poll(struct engine *e, int timeout_ms, int extra_fd, bool *extra_ready)
{
    struct epoll_event evs[512];
    int n = epoll_wait(e->ep, evs, 512, timeout_ms);
    engine_refresh_time(e);
    for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (!c) {
            if (extra_ready)
                *extra_ready = true;
            continue;
        }
        if (conn_gone(c))
            continue;
        uint32_t ev = evs[i].events;
        if (c->state == ST_CONNECTING) {
            if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                continue;
            on_connected(e, c);
            if (conn_gone(c))
                continue;
        } else if ((ev & EPOLLOUT) && c->wlen) {
            conn_flush(e, c);
            if (conn_gone(c))
                continue;
        }
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            conn_readable(e, c);
    }
    (void)extra_fd;
    return n;
}

void engine_run_timers(struct engine *e)
{
    while (e->heap_n && e->heap[0]->timer_at <= e->mono) {
        struct conn *c = e->heap[0];
        engine_timer_clear(e, c);
        switch (c->state) {
        case ST_THINK: conn_open(e, c); break;
        case ST_RECONNECT: conn_reopen(e, c); break;
        case ST_WS: conn_ws_ping_op(e, c); break;
        case ST_IDLE:
            if (c->kind == CK_SUB)
                conn_poll_request(e, c);
            break;
        default: break;
        }
    }
}

void conn_publish(struct engine *e, struct conn *c, const char *chan, const char *body, size_t len)
{
    const struct bench_addr *a = &e->o->servers[c->server];
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST /pub/%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     chan, a->host, a->port, len);
    c->t_start = e->mono;
    c->state = ST_HEAD;
    if (c->wlen == 0 && len < 4096) {
        char one[4608];
        memcpy(one, head, (size_t)n);
        memcpy(one + n, body, len);
        conn_write(e, c, one, (size_t)n + len);
    } else {
        conn_write(e, c, head, (size_t)n);
        if (!conn_gone(c))
            conn_write(e, c, body, len);
    }
}
