/*
 * conn: one client connection on its worker's loop: reading with back-pressure,
 * the vectored write path, the caps on what it may make us hold, closing, and
 * holds for asynchronous backend operations. What the bytes mean is the
 * business of the protocol that owns the connection (c->ops).
 *
 * Bounds, per connection and in total:
 *   - output: answers to the client's own input are bounded by back-pressure
 *     (nothing is parsed while CONN_OUT_PAUSE_BYTES wait to be written);
 *     deliveries by --max-outbound (a slow consumer is cut); nothing at all
 *     after the connection is sealed.
 *   - input: a protocol keeps at most one unfinished request or frame (its own
 *     limits); while parsing is paused, at most PAUSED_INPUT_MAX more is read
 *     (to notice a peer that goes away), then the socket is left alone and TCP
 *     pushes back; input buffers beyond INPUT_FREE_BYTES per connection count
 *     against --max-input-memory across all connections.
 */
#include "core/server.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/tls.h"

#define IOV_BATCH 64
/* Bytes one connection may read in one readiness event before the others get their
 * turn: a client that writes as fast as we parse (and reads its answers) must not
 * keep its worker to itself. */
#define READ_BUDGET      (256u * 1024u)
#define PAUSED_INPUT_MAX (16u * 1024u)
#define INPUT_FREE_BYTES (16u * 1024u)
#define OUT_RESUME_BYTES (CONN_OUT_PAUSE_BYTES / 2)

#ifndef NDEBUG
bool conn_on_own_worker(const struct conn *c)
{
    return worker__current == c->w;
}
#endif

void conn__mark_dirty(struct conn *c)
{
    if (c->flags & (CF_DIRTY | CF_CLOSING))
        return;
    c->flags |= CF_DIRTY;
    list_insert_tail(&c->w->dirty, &c->link);
}

void conn_want_flush(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    conn__mark_dirty(c);
}

void conn_set_ops(struct conn *c, const struct conn_ops *ops)
{
    CONN_ASSERT_OWNER(c);
    if (c->ops->kind != ops->kind) {
        atomic_fetch_sub(&c->w->ctr.conns[c->ops->kind], 1);
        atomic_fetch_add(&c->w->ctr.conns[ops->kind], 1);
    }
    c->ops = ops;
    c->flags &= ~CF_PROTO_MASK;
    memset(&c->proto, 0, sizeof(c->proto));
}

/* ---- output -------------------------------------------------------------------- */

void conn_send(struct conn *c, struct ref *owner, const char *data, uint32_t len)
{
    CONN_ASSERT_OWNER(c);
    if (c->flags & (CF_CLOSING | CF_SEALED) || len == 0)
        return;
    outq_push(&c->out, owner, data, len);
    conn__mark_dirty(c);
}

void conn_send_copy(struct conn *c, const void *data, size_t len)
{
    CONN_ASSERT_OWNER(c);
    if (c->flags & (CF_CLOSING | CF_SEALED) || len == 0)
        return;
    outq_push_copy(&c->out, data, len);
    conn__mark_dirty(c);
}

void conn_send_copy_glued(struct conn *c, const void *data, size_t len)
{
    uint32_t before = c->out.len;
    conn_send_copy(c, data, len);
    if (c->out.len > before)
        outq_glue_last(&c->out);
}

/* conn_send, and the item it queued counts in the delivery latency when stamped. */
static void send_stamped(struct conn *c, struct ref *owner, const char *data, uint32_t len,
                         bool stamped)
{
    uint32_t before = c->out.len;
    conn_send(c, owner, data, len);
    if (stamped && c->out.len > before)
        outq_at(&c->out, c->out.len - 1)->stamped = true;
}

bool conn_deliver_bytes(struct conn *c, struct ref *owner, const char *data, uint32_t len)
{
    CONN_ASSERT_OWNER(c);
    if (c->flags & (CF_CLOSING | CF_SEALED | CF_CLOSE_AFTER))
        return false;
    /* The cap is on what waits: a client that took everything so far may receive one
     * message larger than the cap. */
    if (c->out.bytes &&
        c->out.bytes + len > (uint64_t)conn_cfg(c)->max_outbound + c->replay_slack) {
        atomic_fetch_add(&conn_hub(c)->stats.slow_closed, 1);
        if (c->ops->on_slow)
            c->ops->on_slow(c);
        else
            conn_close(c);
        return false;
    }
    send_stamped(c, owner, data, len, conn_delivering_live(c, owner));
    return true;
}

void conn_send_item(struct conn *c, const struct out_item *it)
{
    send_stamped(c, it->owner, it->data, it->len, it->stamped);
}

void conn_drop_queue(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    outq_truncate(&c->out, 0); /* a partly written item stays: the peer must see whole frames */
    if (outq_empty(&c->out))
        c->replay_slack = 0;
}

void conn_seal(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    c->flags |= CF_SEALED;
}

void conn_close(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    if (c->flags & CF_CLOSING)
        return;
    if (c->flags & CF_DIRTY)
        list_remove(&c->link);
    c->flags = (c->flags | CF_CLOSING) & ~(uint32_t)CF_DIRTY;
    list_insert_tail(&c->w->closing, &c->link);
}

void conn_close_after_write(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    if (c->flags & CF_CLOSING)
        return;
    c->flags |= CF_CLOSE_AFTER;
    /* A peer that stops reading must not keep us waiting forever. */
    conn_timer_start(c, conn_cfg(c)->close_grace_ms);
    conn__mark_dirty(c);
}

void conn_replay_begin(struct conn *c)
{
    c->replay_slack = UINT32_MAX / 2; /* effectively no cap while replaying */
}

void conn_replay_end(struct conn *c)
{
    /* Live messages may add a full cap on top of what the replay queued. */
    c->replay_slack = c->out.bytes > conn_cfg(c)->max_outbound ? (uint32_t)c->out.bytes : 0;
}

/* Nothing waits to be written: not in the queue, nor a record TLS took. */
static bool conn_out_idle(const struct conn *c)
{
    return outq_empty(&c->out) && !(c->tls && tls_write_pending(c->tls));
}

/* The socket's input, through TLS on a TLS listener's connection: read(2)'s contract,
 * but with TLS a short read does not mean the socket is drained. */
static ssize_t conn_recv(struct conn *c, void *buf, size_t cap)
{
    return c->tls ? tls_read(c->tls, buf, cap) : read(c->io.fd, buf, cap);
}

/* Writes the first of iov[0..n) (n may be 0 with TLS: a record it took). Returns the
 * bytes taken or -1 with errno; *blocked when the socket is full. */
static ssize_t conn_sendv(struct conn *c, const struct iovec *iov, int n, bool *blocked)
{
    if (c->tls)
        return tls_writev(c->tls, iov, n, blocked);
    size_t want = 0;
    for (int i = 0; i < n; i++)
        want += iov[i].iov_len;
    ssize_t w = writev(c->io.fd, iov, n);
    *blocked = w >= 0 && (size_t)w < want; /* a short write means the socket is full */
    return w;
}

/*
 * Counts the delivery latency of the live messages whose frames the write of n more
 * bytes completes (before outq_consume releases them): from the message's arrival on
 * the node to now, when the kernel took the frame's last byte. A frame that waited in
 * the queue behind a full socket counts its wait.
 */
static void count_latency(struct conn *c, uint64_t n)
{
    uint64_t now = 0;
    for (uint32_t i = 0; i < c->out.len; i++) {
        const struct out_item *it = outq_at(&c->out, i);
        uint64_t rest = it->len - (i ? 0 : c->out.off);
        if (n < rest)
            return;
        n -= rest;
        if (!it->stamped)
            continue;
        if (!now)
            now = mono_us();
        uint64_t at = container_of(it->owner, struct msg, ref)->arrived_us;
        lat_record(&c->w->latency, now > at ? now - at : 0);
    }
}

/* Writes as much of the queue as the socket takes. Returns false if the connection closed. */
static bool conn_flush(struct conn *c)
{
    struct iovec iov[IOV_BATCH];
    uint64_t written = 0;
    while (!conn_out_idle(c) && !(c->flags & CF_WRITE_BLOCKED)) {
        int n = outq_iov(&c->out, iov, IOV_BATCH);
        bool blocked;
        ssize_t w = conn_sendv(c, iov, n, &blocked);
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
        count_latency(c, (uint64_t)w);
        outq_consume(&c->out, (uint64_t)w);
        if (blocked)
            c->flags |= CF_WRITE_BLOCKED;
    }
    if (outq_empty(&c->out))
        c->replay_slack = 0;
    if (written)
        atomic_fetch_add_explicit(&conn_hub(c)->stats.bytes_out, written, memory_order_relaxed);
    if (conn_out_idle(c) && (c->flags & CF_CLOSE_AFTER) && !(c->flags & CF_LINGER)) {
        if (c->flags & CF_EOF) {
            conn_close(c);
            return false;
        }
        /* Lingering close: a close() with unread input would send RST and could
         * destroy our last response or close frame on its way to the peer. */
        if (c->tls)
            tls_shutdown(c->tls); /* close_notify: the peer knows nothing was cut */
        shutdown(c->io.fd, SHUT_WR);
        c->flags |= CF_LINGER;
        return true;
    }
    if ((c->flags & CF_INPUT_WAIT) && c->out.bytes < OUT_RESUME_BYTES) {
        c->flags &= ~(uint32_t)CF_INPUT_WAIT;
        conn_resume_input(c); /* the client reads again: so do we */
    }
    return true;
}

/* Writes out a dirty connection's queue (a long-poll builds its answer first). */
void conn__flush_dirty(struct conn *c)
{
    list_remove(&c->link);
    c->flags &= ~(uint32_t)CF_DIRTY;
    if (c->ops->before_flush)
        c->ops->before_flush(c);
    if (!(c->flags & CF_CLOSING))
        conn_flush(c);
}

void conn__on_writable(struct conn *c)
{
    c->flags &= ~(uint32_t)CF_WRITE_BLOCKED;
    if (!conn_out_idle(c))
        conn__mark_dirty(c);
}

/* ---- input ------------------------------------------------------------------------- */

bool conn_may_parse(struct conn *c)
{
    if (c->flags & (CF_CLOSING | CF_CLOSE_AFTER | CF_READ_PAUSED | CF_LINGER))
        return false;
    if (c->out.bytes >= CONN_OUT_PAUSE_BYTES) {
        c->flags |= CF_INPUT_WAIT; /* conn_flush resumes once the client took some */
        return false;
    }
    return true;
}

/* Charges growth of the input buffer to --max-input-memory. False: refused. */
/*
 * The budget input is charged to: one for clients that came with credentials (a
 * publisher's body), one for the others (subscribers' WebSocket frames), so that
 * anonymous clients filling theirs never refuse a publisher. A buffer stays in the
 * pool it was first charged to.
 */
static atomic_uint_fast64_t *input_pool(struct conn *c)
{
    if (!c->in_charged) {
        c->flags &= ~(uint32_t)CF_IN_TRUSTED_POOL;
        if (c->flags & CF_TRUSTED)
            c->flags |= CF_IN_TRUSTED_POOL;
    }
    return &conn_server(c)->input_bytes[(c->flags & CF_IN_TRUSTED_POOL) ? 1 : 0];
}

static bool input_charge(struct conn *c, uint32_t new_cap)
{
    uint32_t want = new_cap > INPUT_FREE_BYTES ? new_cap - INPUT_FREE_BYTES : 0;
    if (want <= c->in_charged)
        return true;
    atomic_uint_fast64_t *pool = input_pool(c);
    uint64_t more = want - c->in_charged;
    uint64_t total = atomic_fetch_add(pool, more) + more;
    if (total > conn_cfg(c)->max_input_memory) {
        atomic_fetch_sub(pool, more);
        return false;
    }
    c->in_charged = want;
    return true;
}

static void input_free(struct conn *c)
{
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    if (c->in_charged) {
        atomic_fetch_sub(input_pool(c), c->in_charged);
        c->in_charged = 0;
    }
}

void conn_trim_input(struct conn *c)
{
    if (c->in && c->in_len == 0)
        input_free(c);
}

static void input_refused(struct conn *c)
{
    if (c->ops->on_busy)
        c->ops->on_busy(c);
    else
        conn_close(c);
}

/* Runs the input handler over buf[0..len) and keeps what it did not consume. */
static bool conn_parse(struct conn *c, char *data, size_t len)
{
    assert(!(c->flags & CF_PARSING)); /* handlers never resume input from inside on_read */
    c->flags |= CF_PARSING;
    long used = c->ops->on_read ? c->ops->on_read(c, data, len) : (long)len;
    c->flags &= ~(uint32_t)CF_PARSING;
    if (used < 0 || (c->flags & CF_CLOSING)) {
        conn_close(c);
        return false;
    }
    size_t rest = len - (size_t)used;
    if (data == c->w->scratch) {
        if (rest) {
            uint32_t cap = (uint32_t)MAX(rest * 2, (size_t)1024);
            if (!input_charge(c, cap)) {
                input_refused(c);
                return false;
            }
            c->in_cap = cap;
            c->in = xmalloc(c->in_cap);
            memcpy(c->in, data + used, rest);
            c->in_len = (uint32_t)rest;
        }
    } else if (c->in == data) {
        memmove(c->in, c->in + used, rest);
        c->in_len = (uint32_t)rest;
        conn_trim_input(c);
    }
    return true;
}

/* Where the next read goes: the end of the connection's own buffer (grown as
 * needed), or the worker's scratch buffer. Returns 0 when nothing should be read
 * now. */
static size_t input_space(struct conn *c, char **buf)
{
    const struct herald_config *cfg = conn_cfg(c);
    bool parsing = conn_may_parse(c);
    if (!c->in) {
        *buf = c->w->scratch;
        return parsing ? c->w->scratch_size : PAUSED_INPUT_MAX;
    }
    if (!parsing && c->in_len >= PAUSED_INPUT_MAX)
        return 0; /* paused with enough kept: leave the rest in the socket */
    if (c->in_len == c->in_cap) {
        size_t limit =
            MAX(cfg->max_header_bytes + cfg->max_body_bytes, cfg->max_ws_message) + 16384u;
        if (c->in_cap >= limit) {
            if (!parsing)
                return 0;
            /* Protocol handlers reject oversize input before this; belt and braces. */
            conn_close(c);
            return 0;
        }
        uint32_t cap = (uint32_t)MIN((size_t)c->in_cap * 2, limit);
        if (!input_charge(c, cap)) {
            input_refused(c);
            return 0;
        }
        c->in_cap = cap;
        c->in = xrealloc(c->in, c->in_cap);
    }
    *buf = c->in + c->in_len;
    return c->in_cap - c->in_len;
}

void conn__read(struct conn *c)
{
    struct worker *w = c->w;
    if (c->flags & (CF_LINGER | CF_CLOSE_AFTER) || !c->ops->on_read) {
        /* Closing, or a client with nothing to say (SSE, streaming): what it sends is
         * read and dropped, whatever waits to be written. */
        for (;;) {
            ssize_t n = conn_recv(c, w->scratch, w->scratch_size);
            if (n > 0 || (n < 0 && errno == EINTR))
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            c->flags |= CF_EOF;
            if ((c->flags & CF_LINGER) || conn_out_idle(c) || n < 0)
                conn_close(c);
            else if (!(c->flags & CF_CLOSE_AFTER))
                conn_close_after_write(c); /* else the flush closes once our bytes are out */
            return;
        }
    }
    size_t taken = 0;
    while (!(c->flags & (CF_CLOSING | CF_LINGER))) {
        if (taken >= READ_BUDGET) {
            worker__read_later(c); /* edge-triggered: no new event would come for the rest */
            return;
        }
        char *buf;
        size_t cap = input_space(c, &buf);
        if (cap == 0)
            return; /* resumed later (conn_resume_input), when parsing may go on */
        ssize_t n = conn_recv(c, buf, cap);
        if (n == 0) {
            c->flags |= CF_EOF;
            if (!conn_out_idle(c))
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
        atomic_fetch_add_explicit(&conn_hub(c)->stats.bytes_in, (uint64_t)n, memory_order_relaxed);
        taken += (size_t)n;
        char *data = c->in ? c->in : w->scratch;
        size_t len = c->in ? c->in_len + (size_t)n : (size_t)n;
        if (c->in)
            c->in_len = (uint32_t)len;
        bool scratch = data == w->scratch;
        if (conn_may_parse(c)) {
            if (!conn_parse(c, data, len))
                return;
        } else if (scratch) {
            /* Paused: keep what came, unparsed, for when it resumes. */
            if (!input_charge(c, (uint32_t)MAX(len, (size_t)1024))) {
                input_refused(c);
                return;
            }
            c->in_cap = (uint32_t)MAX(len, (size_t)1024);
            c->in = xmalloc(c->in_cap);
            memcpy(c->in, data, len);
            c->in_len = (uint32_t)len;
        }
        if ((size_t)n < cap && !c->in && !c->tls)
            return; /* short read: the socket is drained (edge-triggered contract holds) */
    }
}

void conn_resume_input(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    if (c->flags & (CF_CLOSING | CF_LINGER))
        return;
    /* In the worker's next pass, not now: a client that reads its answers as fast as
     * we write them would otherwise keep this pass going (and its worker) to itself. */
    worker__read_later(c);
}

void conn__resume_now(struct conn *c)
{
    if (c->flags & (CF_CLOSING | CF_LINGER) || !conn_may_parse(c))
        return;
    if (c->in && c->in_len && !conn_parse(c, c->in, c->in_len))
        return;
    /* Edge-triggered: what waits in the socket brings no new event. */
    conn__read(c);
}

/* ---- holds and parking --------------------------------------------------------------- */

void conn_hold(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    c->holds++;
}

bool conn_release(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    assert(c->holds > 0);
    c->holds--;
    if (c->flags & CF_ZOMBIE) {
        if (!c->holds)
            free(c);
        return false;
    }
    return !(c->flags & CF_CLOSING);
}

void conn_park(struct conn *c)
{
    CONN_ASSERT_OWNER(c);
    conn_hold(c); /* released by the hub's on_synced wake-up */
    c->flags |= CF_RETRY | CF_READ_PAUSED;
    conn_timer_stop(c);
}

void conn_unpark(struct conn *c)
{
    if (conn_release(c))
        conn__resume_parked(c);
}

void conn__resume_parked(struct conn *c)
{
    if (!(c->flags & CF_READ_PAUSED))
        return;
    c->flags &= ~(uint32_t)(CF_RETRY | CF_READ_PAUSED);
    if (c->ops->on_resume)
        c->ops->on_resume(c);
    else
        conn_resume_input(c);
}

/* ---- timers -------------------------------------------------------------------------- */

void conn_timer_start(struct conn *c, uint64_t after_ms)
{
    CONN_ASSERT_OWNER(c);
    timer_start(&c->w->loop, &c->timer, after_ms);
}

void conn_timer_stop(struct conn *c)
{
    timer_stop(&c->w->loop, &c->timer);
}

void conn__timer_cb(struct loop *loop, struct timer *t)
{
    struct conn *c = container_of(t, struct conn, timer);
    if (c->flags & (CF_CLOSE_AFTER | CF_LINGER) || !c->ops->on_timer) {
        conn_close(c); /* the peer did not take our last bytes within close grace */
        return;
    }
    c->ops->on_timer(c);
}

void conn__life_cb(struct loop *loop, struct timer *t)
{
    struct conn *c = container_of(t, struct conn, life);
    if (c->ops->on_lifetime)
        c->ops->on_lifetime(c);
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

uint64_t conn_lifetime_end(const struct conn *c)
{
    return timer_armed(&c->life) ? c->life.node.key : 0;
}

void conn_lifetime_at(struct conn *c, uint64_t at)
{
    uint64_t now = c->w->loop.now;
    timer_start(&c->w->loop, &c->life, at > now ? at - now : 0);
}

uint64_t conn_now(const struct conn *c)
{
    return c->w->loop.now;
}

/* ---- freeing ------------------------------------------------------------------------- */

/* Frees a closed connection after the loop pass (or leaves a zombie for its holds). */
void conn__free(struct conn *c)
{
    struct worker *w = c->w;
    if (c->flags & CF_ZOMBIE)
        return; /* already torn down; the last conn_release frees it */
    if (c->attach) {
        c->attach->free(c, c->attach);
        c->attach = NULL;
    }
    hub_unsubscribe_all(conn_hub(c), w->id, &c->subs);
    hub_tenant_unbind(&c->tenant);
    timer_stop(&w->loop, &c->timer);
    timer_stop(&w->loop, &c->life);
    if (c->ops->on_free)
        c->ops->on_free(c);
    outq_clear(&c->out);
    input_free(c);
    list_remove(&c->all);
    tls_conn_free(c->tls);
    c->tls = NULL;
    close(c->io.fd);
    atomic_fetch_sub(&w->ctr.conns[c->ops->kind], 1);
    atomic_fetch_sub(&w->srv->conns_open, 1);
    if (c->holds) {
        c->flags |= CF_ZOMBIE;
        return;
    }
    free(c);
}
