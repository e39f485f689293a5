/*
 * server: worker threads, listeners, accept, the read path, the vectored
 * write path, fan-out from the hub inbox, per-connection timers and the
 * graceful drain on SIGTERM.
 *
 * A pass of a worker's loop: epoll callbacks (reads, which may queue replies;
 * the inbox wakeup, which queues deliveries), timers, then one flush per dirty
 * connection: everything queued for a connection in a pass leaves in one
 * writev, which is what keeps bursts cheap. Connections are freed only after
 * the pass (never inside their own callback).
 */
#include "core/server.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/poller.h"
#include "transport/transport.h"

#define SCRATCH_SIZE (64 * 1024)
#define IOV_BATCH    64

#define ACCEPT_RETRY_MS 100

static atomic_uint_fast64_t total_conns;

struct worker *worker_of(struct conn *c)
{
    return c->w;
}

/* ---- output queue ---------------------------------------------------------- */

static void mark_dirty(struct conn *c)
{
    if (c->flags & (CF_DIRTY | CF_CLOSING))
        return;
    c->flags |= CF_DIRTY;
    list_insert_tail(&c->w->dirty, &c->link);
}

static void q_push(struct conn *c, struct ref *owner, const char *data, uint32_t len)
{
    if (c->q_len == c->q_cap) {
        uint16_t cap = c->q_cap ? (uint16_t)MIN(c->q_cap * 2u, 65535u) : 4;
        struct out_item *q = xmalloc(cap * sizeof(*q));
        for (uint16_t i = 0; i < c->q_len; i++)
            q[i] = c->q[(c->q_head + i) % c->q_cap];
        free(c->q);
        c->q = q;
        c->q_cap = cap;
        c->q_head = 0;
    }
    if (owner)
        ref_get(owner);
    c->q[(c->q_head + c->q_len) % c->q_cap] = (struct out_item){owner, data, len};
    c->q_len++;
    c->out_bytes += len;
}

static void q_pop(struct conn *c)
{
    struct out_item *it = &c->q[c->q_head];
    c->out_bytes -= it->len;
    if (it->owner)
        ref_put(it->owner);
    c->q_head = (uint16_t)((c->q_head + 1) % c->q_cap);
    c->q_len--;
    c->q_off = 0;
    if (c->q_len == 0) {
        c->replay_slack = 0;
        free(c->q); /* idle connections hold no queue memory */
        c->q = NULL;
        c->q_cap = c->q_head = 0;
    }
}

void conn_send(struct conn *c, struct ref *owner, const char *data, uint32_t len)
{
    if (c->flags & (CF_CLOSING | CF_SEALED) || len == 0)
        return;
    bool subscriber = c->kind != CONN_HTTP;
    /* The cap is on what waits: a client that took everything so far may receive one
     * message larger than the cap. */
    if (subscriber && !(c->flags & CF_CLOSE_AFTER) && c->out_bytes &&
        ((uint64_t)c->out_bytes + len > (uint64_t)conn_cfg(c)->max_outbound + c->replay_slack ||
         c->q_len >= 65000)) {
        atomic_fetch_add(&c->w->srv->hub.stats.slow_closed, 1);
        c->flags |= CF_CLOSE_AFTER; /* before the callback, so its own sends are not cut */
        transport_on_slow(c);
        return;
    }
    q_push(c, owner, data, len);
    mark_dirty(c);
}

static void owned_free(struct ref *r)
{
    free(r);
}

void conn_send_copy(struct conn *c, const void *data, size_t len)
{
    struct ref *r = xmalloc(sizeof(*r) + len);
    atomic_init(&r->refs, 1);
    r->free = owned_free;
    memcpy(r + 1, data, len);
    conn_send(c, r, (const char *)(r + 1), (uint32_t)len);
    ref_put(r);
}

void conn_drop_queue(struct conn *c)
{
    /* Keep a partly written head item: the peer must see whole frames. */
    conn_drop_queue_from(c, c->q_off ? 1 : 0);
}

void conn_drop_queue_from(struct conn *c, uint16_t keep)
{
    if (keep == 0 && c->q_off)
        keep = 1;
    while (c->q_len > keep) {
        uint16_t last = (uint16_t)((c->q_head + c->q_len - 1) % c->q_cap);
        struct out_item *it = &c->q[last];
        c->out_bytes -= it->len;
        if (it->owner)
            ref_put(it->owner);
        c->q_len--;
    }
    if (c->q_len == 0 && c->q) {
        free(c->q);
        c->q = NULL;
        c->q_cap = c->q_head = 0;
    }
}

void conn_close(struct conn *c)
{
    if (c->flags & CF_CLOSING)
        return;
    if (c->flags & CF_DIRTY)
        list_remove(&c->link);
    c->flags = (c->flags | CF_CLOSING) & ~(uint32_t)CF_DIRTY;
    list_insert_tail(&c->w->closing, &c->link);
}

void conn_close_after_write(struct conn *c)
{
    if (c->flags & CF_CLOSING)
        return;
    c->flags |= CF_CLOSE_AFTER;
    c->flags &= ~(uint32_t)CF_POLL_WAITING;
    /* A peer that stops reading must not keep us waiting forever. */
    timer_start(&c->w->loop, &c->timer, conn_cfg(c)->close_grace_ms);
    mark_dirty(c);
}

void conn_set_kind(struct conn *c, enum conn_kind kind)
{
    atomic_fetch_sub(&c->w->ctr.conns[c->kind], 1);
    atomic_fetch_add(&c->w->ctr.conns[kind], 1);
    c->kind = (uint8_t)kind;
}

void conn_trim_input(struct conn *c)
{
    if (c->in && c->in_len == 0) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

/* Writes as much of the queue as the socket takes. Returns false if the connection closed. */
static bool conn_flush(struct conn *c)
{
    struct iovec iov[IOV_BATCH];
    uint64_t written = 0;
    while (c->q_len && !(c->flags & CF_WRITE_BLOCKED)) {
        int n = 0;
        for (uint16_t i = 0; i < c->q_len && n < IOV_BATCH; i++, n++) {
            const struct out_item *it = &c->q[(c->q_head + i) % c->q_cap];
            uint32_t off = i == 0 ? c->q_off : 0;
            iov[n] = (struct iovec){(void *)(it->data + off), it->len - off};
        }
        ssize_t w = writev(c->io.fd, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->flags |= CF_WRITE_BLOCKED;
                break;
            }
            if (errno == EINTR)
                continue;
            conn_close(c);
            return false;
        }
        written += (uint64_t)w;
        size_t left = (size_t)w;
        while (left && c->q_len) {
            struct out_item *it = &c->q[c->q_head];
            size_t rest = it->len - c->q_off;
            if (left < rest) {
                c->q_off += (uint32_t)left;
                left = 0;
                c->flags |= CF_WRITE_BLOCKED; /* a short write means the socket is full */
                break;
            }
            left -= rest;
            q_pop(c);
        }
    }
    if (written)
        atomic_fetch_add_explicit(&c->w->srv->hub.stats.bytes_out, written, memory_order_relaxed);
    if (c->q_len == 0 && (c->flags & CF_CLOSE_AFTER) && !(c->flags & CF_LINGER)) {
        if (c->flags & CF_EOF) {
            conn_close(c);
            return false;
        }
        /* Lingering close: a close() with unread input would send RST and could
         * destroy our last response or close frame on its way to the peer. */
        shutdown(c->io.fd, SHUT_WR);
        c->flags |= CF_LINGER;
    }
    return true;
}

/* ---- delivery ---------------------------------------------------------- */

void conn_replay_begin(struct conn *c)
{
    c->replay_slack = UINT32_MAX / 2; /* effectively no cap while replaying */
}

void conn_replay_end(struct conn *c)
{
    /* Live messages may add a full cap on top of what the replay queued. */
    c->replay_slack = c->out_bytes > conn_cfg(c)->max_outbound ? c->out_bytes : 0;
}

void conn_deliver(struct conn *c, struct msg *m)
{
    if (c->flags & (CF_CLOSING | CF_CLOSE_AFTER))
        return;
    struct slice s;
    switch (c->kind) {
    case CONN_WS: s = (c->flags & CF_DEFLATE) ? msg_ws_deflate(m, c->w->deflater) : m->ws; break;
    case CONN_SSE: s = (c->flags & CF_RAW) ? m->sse_raw : m->sse; break;
    case CONN_STREAM: s = m->chunk; break;
    case CONN_POLL: s = m->envelope; break;
    default: return;
    }
    conn_send(c, &m->ref, s.data, s.len);
}

void conn_deliver_ctl(struct conn *c, struct ctl_frames *f)
{
    if (c->flags & (CF_CLOSING | CF_CLOSE_AFTER))
        return;
    struct slice s;
    switch (c->kind) {
    case CONN_WS: s = f->ws; break;
    case CONN_SSE: s = f->sse; break;
    case CONN_STREAM: s = f->chunk; break;
    case CONN_POLL: s = f->json; break;
    default: return;
    }
    conn_send(c, &f->ref, s.data, s.len);
}

static void fanout(struct worker *w, struct inbox_item *items, uint32_t n)
{
    struct hub *hub = &w->srv->hub;
    uint64_t delivered = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct inbox_item *it = &items[i];
        if (it->kind == INBOX_CALL) {
            it->fn(it->arg);
            continue;
        }
        struct channel *ch = it->ch;
        struct list *head = ch->local ? &ch->local[w->id].subs : NULL;
        if (it->kind == INBOX_MSG && head) {
            struct msg *m = it->msg;
            for (struct list *p = head->next; p != head; p = p->next) {
                struct sub *s = container_of(p, struct sub, chan_link);
                struct conn *c = s->conn;
                if (!hub_sub_takes(&c->subs, s, m))
                    continue;
                if (m->seq > c->live_seq)
                    c->live_seq = m->seq;
                conn_deliver(c, m);
                delivered++;
            }
        } else if (it->kind == INBOX_CLOSED && head) {
            struct list *p, *tmp;
            list_for_each_safe(p, tmp, head)
            {
                struct sub *s = container_of(p, struct sub, chan_link);
                struct conn *c = s->conn;
                hub_unsubscribe(hub, w->id, s);
                transport_on_channel_closed(c, ch);
            }
        }
        if (it->msg)
            ref_put(&it->msg->ref);
        hub_channel_put_ref(hub, ch);
    }
    if (delivered)
        atomic_fetch_add_explicit(&hub->stats.delivered, delivered, memory_order_relaxed);
}

static void begin_drain(struct worker *w);

static void on_wake(struct loop *loop, void *arg)
{
    struct worker *w = arg;
    uint32_t n;
    struct inbox_item *items = hub_inbox_take(&w->srv->hub, w->id, &n);
    if (items) {
        fanout(w, items, n);
        free(items);
    }
    if (atomic_load(&w->srv->shutdown) && !w->draining)
        begin_drain(w);
}

static void resume_parked(void *arg)
{
    struct conn *c = arg;
    if (conn_release(c))
        conn_resume(c);
}

/* The hub's on_synced: re-run the parked request on its own worker. */
static void hub_synced(struct hub *hub, int w, void *conn, int err)
{
    hub_post(hub, w, resume_parked, conn);
}

static void hub_wake(void *arg)
{
    loop_wake(&((struct worker *)arg)->loop);
}

/* ---- connections --------------------------------------------------------- */

static void conn_timer_cb(struct loop *loop, struct timer *t)
{
    struct conn *c = container_of(t, struct conn, timer);
    if (c->flags & CF_CLOSE_AFTER) {
        conn_close(c); /* the peer did not take our last bytes within close grace */
        return;
    }
    transport_on_timer(c);
}

static void conn_life_cb(struct loop *loop, struct timer *t)
{
    struct conn *c = container_of(t, struct conn, life);
    transport_on_lifetime(c);
}

void conn_start_lifetime(struct conn *c)
{
    const struct herald_config *cfg = conn_cfg(c);
    if (!cfg->lifetime_min_ms)
        return;
    uint32_t span = cfg->lifetime_max_ms - cfg->lifetime_min_ms;
    /* Reconnect dither: spread lifetimes so reconnect storms after a deploy smooth out. */
    uint64_t r = ((uint64_t)(uintptr_t)c * 2654435761u) ^ now_ms() ^ (uint64_t)random();
    uint32_t life = cfg->lifetime_min_ms + (span ? (uint32_t)(r % (span + 1u)) : 0);
    timer_start(&c->w->loop, &c->life, life);
}

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;
    if (c->flags & CF_ZOMBIE)
        return; /* already torn down; the last conn_release frees it */
    hub_unsubscribe_all(&w->srv->hub, w->id, &c->subs);
    timer_stop(&w->loop, &c->timer);
    timer_stop(&w->loop, &c->life);
    transport_on_free(c);
    while (c->q_len)
        q_pop(c);
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    list_remove(&c->all);
    close(c->io.fd);
    atomic_fetch_sub(&w->ctr.conns[c->kind], 1);
    atomic_fetch_sub(&total_conns, 1);
    if (c->holds) {
        c->flags |= CF_ZOMBIE;
        return;
    }
    free(c);
}

void conn_hold(struct conn *c)
{
    c->holds++;
}

bool conn_release(struct conn *c)
{
    assert(c->holds > 0);
    c->holds--;
    if (c->flags & CF_ZOMBIE) {
        if (!c->holds)
            free(c);
        return false;
    }
    return !(c->flags & CF_CLOSING);
}

void conn_park_retry(struct conn *c)
{
    c->flags |= CF_RETRY | CF_READ_PAUSED;
    timer_stop(&c->w->loop, &c->timer);
}

void conn_resume(struct conn *c)
{
    if (!(c->flags & CF_READ_PAUSED))
        return;
    c->flags &= ~(uint32_t)(CF_RETRY | CF_READ_PAUSED);
    if (c->kind == CONN_WS)
        ws_resume(c);
    else
        conn_process_pending(c);
}

static void conn_read(struct conn *c)
{
    struct worker *w = c->w;
    const struct herald_config *cfg = conn_cfg(c);
    if (c->flags & CF_LINGER) {
        for (;;) {
            ssize_t n = read(c->io.fd, w->scratch, w->scratch_size);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                conn_close(c);
                return;
            }
            if (n < 0 && errno == EAGAIN)
                return;
        }
    }
    for (;;) {
        char *buf;
        size_t cap;
        if (c->in) {
            /* Unfinished input: append to it. */
            size_t limit = c->kind == CONN_WS
                               ? cfg->max_ws_message + 64u
                               : cfg->max_header_bytes + cfg->max_body_bytes + 16384u;
            if (c->in_len == c->in_cap) {
                if (c->in_cap >= limit) {
                    /* Protocol handlers reject oversize input before this; belt and braces. */
                    conn_close(c);
                    return;
                }
                c->in_cap = (uint32_t)MIN((size_t)c->in_cap * 2, limit);
                c->in = xrealloc(c->in, c->in_cap);
            }
            buf = c->in + c->in_len;
            cap = c->in_cap - c->in_len;
        } else {
            buf = w->scratch;
            cap = w->scratch_size;
        }
        ssize_t n = read(c->io.fd, buf, cap);
        if (n == 0) {
            c->flags |= CF_EOF;
            if (c->kind == CONN_HTTP && (c->q_len || c->u.http.started))
                conn_close_after_write(c); /* answer what was asked before the half-close */
            else
                conn_close(c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        atomic_fetch_add_explicit(&w->srv->hub.stats.bytes_in, (uint64_t)n, memory_order_relaxed);
        char *data = c->in ? c->in : w->scratch;
        size_t len = c->in ? c->in_len + (size_t)n : (size_t)n;
        if (c->in)
            c->in_len = (uint32_t)len;
        long used;
        switch (c->flags & CF_READ_PAUSED ? CONN_POLL : c->kind) {
        case CONN_HTTP: used = http_on_read(c, data, len); break;
        case CONN_WS: used = ws_on_read(c, data, len); break;
        case CONN_POLL:
            used = 0; /* pipelined requests wait until the poll is answered */
            break;
        default: used = (long)len; /* SSE and streaming clients have nothing to say */
        }
        if (used < 0 || (c->flags & CF_CLOSING)) {
            conn_close(c);
            return;
        }
        /* Keep what was not consumed; the handler may have switched buffers (upgrade). */
        size_t rest = len - (size_t)used;
        if (data == w->scratch) {
            if (rest) {
                c->in_cap = (uint32_t)MAX(rest * 2, (size_t)1024);
                c->in = xmalloc(c->in_cap);
                memcpy(c->in, data + used, rest);
                c->in_len = (uint32_t)rest;
            }
        } else if (c->in == data) {
            memmove(c->in, c->in + used, rest);
            c->in_len = (uint32_t)rest;
            conn_trim_input(c);
        }
        if ((size_t)n < cap && !c->in)
            return; /* short read: the socket is drained (edge-triggered contract holds) */
    }
}

void conn_process_pending(struct conn *c)
{
    if (!c->in || !c->in_len || c->kind != CONN_HTTP)
        return;
    long used = http_on_read(c, c->in, c->in_len);
    if (used < 0) {
        conn_close(c);
        return;
    }
    if (c->in) {
        memmove(c->in, c->in + used, c->in_len - (size_t)used);
        c->in_len -= (uint32_t)used;
        conn_trim_input(c);
    }
}

/* Writes out a dirty connection's queue (completing a long-poll that has messages). */
static void conn_flush_dirty(struct conn *c)
{
    list_remove(&c->link);
    c->flags &= ~(uint32_t)CF_DIRTY;
    if (c->kind == CONN_POLL && (c->flags & CF_POLL_WAITING) && c->q_len > c->q_mark)
        longpoll_complete(c);
    conn_flush(c);
}

/*
 * Reads what the client sent and writes the answers now, not after the poll
 * pass: the client waits for them (publish answers, handshakes, replays), and a
 * pass may hold thousands of connections in a storm. Deliveries to subscribers
 * are still coalesced per pass (fanout).
 */
static void conn_read_answer(struct conn *c)
{
    conn_read(c);
    if ((c->flags & (CF_DIRTY | CF_CLOSING)) == CF_DIRTY)
        conn_flush_dirty(c);
}

static void conn_io_cb(struct loop *loop, struct io *io, uint32_t events)
{
    struct conn *c = container_of(io, struct conn, io);
    if (c->flags & CF_CLOSING)
        return;
    if (events & POLLER_OUT) {
        c->flags &= ~(uint32_t)CF_WRITE_BLOCKED;
        if (c->q_len)
            mark_dirty(c);
    }
    if (events & POLLER_IN)
        conn_read_answer(c);
}

static bool addr_is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr))
            return true;
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
            return a->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

static void accept_one(struct worker *w, struct listener *l, int fd,
                       const struct sockaddr_storage *ss)
{
    const struct herald_config *cfg = &w->srv->cfg;
    if (cfg->max_connections && atomic_load(&total_conns) >= (uint64_t)cfg->max_connections) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = xcalloc(1, sizeof(*c));
    c->io = (struct io){.fd = fd, .cb = conn_io_cb};
    c->w = w;
    c->kind = CONN_HTTP;
    c->flags = l->flags;
    if (addr_is_loopback(ss))
        c->flags |= CF_LOOPBACK;
    list_init(&c->link);
    list_init(&c->subs);
    timer_init(&c->timer, conn_timer_cb);
    timer_init(&c->life, conn_life_cb);
    list_insert_tail(&w->conns, &c->all);
    atomic_fetch_add(&w->ctr.conns[CONN_HTTP], 1);
    atomic_fetch_add(&w->ctr.accepted, 1);
    atomic_fetch_add(&total_conns, 1);
    if (loop_add(&w->loop, &c->io) < 0) {
        conn_close(c);
        return;
    }
    timer_start(&w->loop, &c->timer, cfg->header_timeout_ms);
    /* Edge-triggered: data may already be waiting (it arrived with the handshake). */
    conn_read_answer(c);
}

static void listener_cb(struct loop *loop, struct io *io, uint32_t events)
{
    struct listener *l = container_of(io, struct listener, io);
    struct worker *w = container_of(loop, struct worker, loop);
    /* Edge-triggered: accept until EAGAIN or we would miss the next edge. */
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            accept_one(w, l, fd, &ss);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Out of descriptors (or memory): the clients wait in the listen queue. No
             * new edge will come for them, so accepting resumes by itself as soon as one
             * of our connections closes, or after a short delay (another worker's may). */
            if (!w->accept_paused && w->loop.now >= w->accept_warned_ms + 10000) {
                w->accept_warned_ms = w->loop.now;
                log_warn("out of file descriptors (%d connections open): new connections "
                         "wait in the listen queue; raise the fd limit or run more nodes",
                         (int)atomic_load(&total_conns));
            }
            w->accept_paused = true;
            timer_start(&w->loop, &w->accept_retry, ACCEPT_RETRY_MS);
        }
        break; /* EAGAIN or an error: wait for the next edge */
    }
}

/* ---- listeners ----------------------------------------------------------- */

static int resolve_addr(const struct config_addr *a, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    const char *host = a->host;
    if (!host[0] || strcmp(host, "*") == 0)
        host = "0.0.0.0";
    else if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(a->port);
        *len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(a->port);
        *len = sizeof(*v6);
        return 0;
    }
    return -EINVAL;
}

static int listen_on(const struct config_addr *a)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int err = resolve_addr(a, &ss, &sl);
    if (err)
        return err;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* One listening socket per worker on the same port: the kernel spreads
     * connections across workers with no accept lock. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 4096) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/*
 * Fails with -EADDRINUSE when another process listens on a's address. Our own
 * sockets share the port with SO_REUSEPORT, which would also let a second
 * herald (or anything else using SO_REUSEPORT) silently take half the traffic.
 */
static int probe_exclusive(const struct config_addr *a)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int err = resolve_addr(a, &ss, &sl);
    if (err)
        return err;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    err = bind(fd, (struct sockaddr *)&ss, sl) < 0 ? -errno : 0;
    close(fd);
    return err;
}

static int worker_listen(struct worker *w)
{
    const struct herald_config *cfg = &w->srv->cfg;
    uint32_t main_flags = CF_PUBLIC | (cfg->has_api_listen ? 0 : CF_API);
    for (int i = 0; i <= cfg->num_listen; i++) {
        const struct config_addr *a;
        uint32_t flags;
        if (i < cfg->num_listen) {
            a = &cfg->listen[i];
            flags = main_flags;
        } else if (cfg->has_api_listen) {
            a = &cfg->api_listen;
            flags = CF_API;
        } else {
            break;
        }
        int fd = w->id == 0 ? probe_exclusive(a) : 0;
        if (fd >= 0)
            fd = listen_on(a);
        if (fd < 0) {
            log_error("cannot listen on %s:%u: %s (is another process using the port?)",
                      a->host[0] ? a->host : "0.0.0.0", a->port, strerror(-fd));
            return fd;
        }
        struct listener *l = &w->listeners[w->nlisteners++];
        l->io = (struct io){.fd = fd, .cb = listener_cb};
        l->flags = flags;
        int err = loop_add(&w->loop, &l->io);
        if (err)
            return err;
    }
    return 0;
}

static void close_listeners(struct worker *w)
{
    for (int i = 0; i < w->nlisteners; i++) {
        loop_del(&w->loop, &w->listeners[i].io);
        close(w->listeners[i].io.fd);
    }
    w->nlisteners = 0;
}

/* ---- worker loop --------------------------------------------------------- */

/* Accepts what waits in the listen queues after accepting had to stop (no descriptors). */
static void accept_resume(struct worker *w)
{
    if (!w->accept_paused || w->draining)
        return;
    w->accept_paused = false;
    timer_stop(&w->loop, &w->accept_retry);
    for (int i = 0; i < w->nlisteners; i++)
        listener_cb(&w->loop, &w->listeners[i].io, POLLER_IN);
}

static void accept_retry_cb(struct loop *loop, struct timer *t)
{
    accept_resume(container_of(t, struct worker, accept_retry));
}

static void after_poll(struct loop *loop, void *arg)
{
    struct worker *w = arg;
    while (!list_empty(&w->dirty))
        conn_flush_dirty(container_of(w->dirty.next, struct conn, link));
    bool freed = false;
    while (!list_empty(&w->closing)) {
        struct conn *c = container_of(w->closing.next, struct conn, link);
        list_remove(&c->link);
        conn_free(c);
        freed = true;
    }
    if (freed)
        accept_resume(w); /* a descriptor is free again */
}

static void begin_drain(struct worker *w)
{
    w->draining = true;
    w->drain_deadline = w->loop.now + w->srv->cfg.shutdown_timeout_ms;
    close_listeners(w);
    struct list *p, *tmp;
    list_for_each_safe(p, tmp, &w->conns)
    {
        struct conn *c = container_of(p, struct conn, all);
        transport_on_shutdown(c);
    }
}

static void tick_cb(struct loop *loop, struct timer *t)
{
    struct worker *w = container_of(t, struct worker, tick);
    if (w->id == 0 && !w->draining)
        hub_sweep(&w->srv->hub);
    if (w->draining && loop->now >= w->drain_deadline) {
        struct list *p, *tmp;
        list_for_each_safe(p, tmp, &w->conns)
        {
            conn_close(container_of(p, struct conn, all));
        }
    }
    timer_start(loop, t, w->draining ? 100 : 1000);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char name[16];
    snprintf(name, sizeof(name), "herald-w%d", w->id);
    pthread_setname_np(pthread_self(), name);
    timer_start(&w->loop, &w->tick, 1000);
    while (!(w->draining && list_empty(&w->conns))) {
        loop_run_once(&w->loop, 1000);
        if (atomic_load(&w->srv->shutdown) && !w->draining)
            begin_drain(w);
    }
    timer_stop(&w->loop, &w->tick);
    timer_stop(&w->loop, &w->accept_retry);
    return NULL;
}

static int worker_init(struct server *srv, struct worker *w, int id)
{
    w->id = id;
    w->srv = srv;
    list_init(&w->dirty);
    list_init(&w->closing);
    list_init(&w->conns);
    int err = loop_init(&w->loop);
    if (err)
        return err;
    w->loop.on_wake = on_wake;
    w->loop.on_wake_arg = w;
    w->loop.after_poll = after_poll;
    w->loop.after_poll_arg = w;
    w->scratch_size = SCRATCH_SIZE;
    w->scratch = xmalloc(w->scratch_size);
    w->deflater = ws_deflater_new(6);
    w->inflater = ws_inflater_new();
    timer_init(&w->tick, tick_cb);
    timer_init(&w->accept_retry, accept_retry_cb);
    srv->hub.inbox[id].wake = hub_wake;
    srv->hub.on_synced = hub_synced;
    srv->hub.inbox[id].wake_arg = w;
    return worker_listen(w);
}

int server_start(struct server *srv)
{
    srv->started_ms = wall_ms();
    srv->ctl_reconnect_shutdown =
        ctl_frames_new("reconnect", "\"reason\":\"shutdown\"", strlen("\"reason\":\"shutdown\""));
    srv->ctl_reconnect_lifetime =
        ctl_frames_new("reconnect", "\"reason\":\"lifetime\"", strlen("\"reason\":\"lifetime\""));
    srv->workers = xcalloc((size_t)srv->nworkers, sizeof(*srv->workers));
    for (int i = 0; i < srv->nworkers; i++) {
        int err = worker_init(srv, &srv->workers[i], i);
        if (err)
            return err;
    }
    if (srv->on_listening)
        srv->on_listening(srv);
    for (int i = 0; i < srv->nworkers; i++) {
        int err = pthread_create(&srv->workers[i].thread, NULL, worker_main, &srv->workers[i]);
        if (err) {
            log_error("cannot start worker thread: %s", strerror(err));
            return -err;
        }
    }
    return 0;
}

void server_request_shutdown(struct server *srv)
{
    atomic_store(&srv->shutdown, true);
    for (int i = 0; i < srv->nworkers; i++)
        loop_wake(&srv->workers[i].loop);
}

void server_join(struct server *srv)
{
    for (int i = 0; i < srv->nworkers; i++)
        pthread_join(srv->workers[i].thread, NULL);
}

void server_free(struct server *srv)
{
    for (int i = 0; i < srv->nworkers; i++) {
        struct worker *w = &srv->workers[i];
        close_listeners(w);
        loop_free(&w->loop);
        free(w->scratch);
        ws_deflater_free(w->deflater);
        ws_inflater_free(w->inflater);
    }
    ref_put(&srv->ctl_reconnect_shutdown->ref);
    ref_put(&srv->ctl_reconnect_lifetime->ref);
    free(srv->workers);
}
