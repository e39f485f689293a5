/*
 * server: worker threads, listeners, accept, fan-out from the hub inbox to a
 * worker's own connections, and the graceful drain on SIGTERM. The connection
 * itself (reading, writing, caps, closing) is conn.c; what its bytes mean is
 * the business of the protocol module whose handlers it carries.
 *
 * A pass of a worker's loop: epoll callbacks (reads, which may queue replies;
 * the inbox wakeup, which queues deliveries), timers, then one flush per dirty
 * connection: everything queued for a connection in a pass leaves in one
 * writev, which is what keeps bursts cheap. Connections are freed only after
 * the pass (never inside their own callback).
 */
#include "core/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/node_stats.h"
#include "core/poller.h"
#include "core/tls.h"

#define SCRATCH_SIZE    (64 * 1024)
#define ACCEPT_RETRY_MS 100

_Thread_local struct worker *worker__current;

/* ---- fan-out ----------------------------------------------------------------------- */

/* Delivers the live message m to this worker's subscribers of its channel (head);
 * returns how many connections took it. */
static uint64_t fanout_msg(struct worker *w, struct list *head, struct msg *m)
{
    uint64_t delivered = 0;
    struct list *p, *tmp;
    w->live = &m->ref; /* what the deliveries queue now counts in the latency */
    /* Safe walk: a delivery may cut a slow consumer, which does not unsubscribe
     * it now (freeing waits for the end of the pass), but stay defensive. */
    list_for_each_safe(p, tmp, head)
    {
        struct sub *s = container_of(p, struct sub, chan_link);
        struct conn *c = s->conn;
        if (!hub_sub_takes(&c->subs, s, m) || (c->flags & CF_CLOSING) || !c->ops->deliver)
            continue;
        c->ops->deliver(c, m);
        delivered++;
    }
    w->live = NULL;
    return delivered;
}

/* Delivers what a closed window gathered (hub/batch.h), in one pass: each connection
 * writes the window's messages together. Frees the window. */
static uint64_t flush_window(struct worker *w, struct batch_window *bw)
{
    uint64_t delivered = 0;
    struct channel *ch = bw->ch;
    for (uint32_t i = 0; i < bw->n && ch->local; i++)
        delivered += fanout_msg(w, &ch->local[w->id].subs, bw->msgs[i]);
    batch_window_free(&w->srv->hub, bw);
    return delivered;
}

/* Arms the window timer for the earliest open window. */
static void batch_arm(struct worker *w)
{
    uint64_t deadline;
    if (!batch_next_deadline(&w->batches, &deadline))
        timer_stop(&w->loop, &w->batch_timer);
    else
        timer_start(&w->loop, &w->batch_timer, deadline > w->loop.now ? deadline - w->loop.now : 0);
}

static void batch_timer_cb(struct loop *loop, struct timer *t)
{
    struct worker *w = container_of(t, struct worker, batch_timer);
    uint64_t delivered = 0;
    struct batch_window *bw;
    while ((bw = batch_take_due(&w->batches, loop->now)))
        delivered += flush_window(w, bw);
    if (delivered)
        atomic_fetch_add_explicit(&w->srv->hub.stats.delivered, delivered, memory_order_relaxed);
    batch_arm(w);
}

/* A live message of a channel with a delivery window: gathered, or (a full window)
 * delivered now with what the window holds. Takes the item's message reference. */
static uint64_t fanout_window(struct worker *w, struct inbox_item *it)
{
    size_t max_bytes = w->srv->cfg.max_outbound / 2;
    struct batch_window *full = batch_gather(&w->batches, w->id, it->ch, it->msg, it->batch_ms,
                                             it->conflate, w->loop.now, max_bytes);
    it->msg = NULL;
    return full ? flush_window(w, full) : 0;
}

static void fanout(struct worker *w, struct inbox_item *items, uint32_t n)
{
    struct hub *hub = &w->srv->hub;
    uint64_t delivered = 0;
    bool windows = false;
    for (uint32_t i = 0; i < n; i++) {
        struct inbox_item *it = &items[i];
        if (it->kind == INBOX_CALL) {
            it->fn(it->arg);
            continue;
        }
        struct channel *ch = it->ch;
        struct list *head = ch->local ? &ch->local[w->id].subs : NULL;
        if (it->kind == INBOX_MSG && head && it->batch_ms && !w->draining) {
            delivered += fanout_window(w, it);
            windows = true;
        } else if (it->kind == INBOX_MSG && head) {
            delivered += fanout_msg(w, head, it->msg);
        } else if ((it->kind == INBOX_CTL || it->kind == INBOX_PRESENCE) && head) {
            struct batch_window *bw = batch_take(&w->batches, w->id, ch);
            if (bw) /* an event about the channel comes after what was published before it */
                delivered += flush_window(w, bw);
            bool presence = it->kind == INBOX_PRESENCE; /* to those who asked only */
            for (struct list *p = head->next; p != head; p = p->next) {
                const struct sub *s = container_of(p, struct sub, chan_link);
                struct conn *c = s->conn;
                if (presence && !(s->presence && s->presence->events))
                    continue;
                if (!(c->flags & CF_CLOSING) && c->ops->deliver_ctl)
                    c->ops->deliver_ctl(c, it->ctl);
            }
        } else if (it->kind == INBOX_CLOSED && head) {
            struct batch_window *bw = batch_take(&w->batches, w->id, ch);
            if (bw) /* what the channel published before it closed goes first */
                delivered += flush_window(w, bw);
            struct list *p, *tmp;
            list_for_each_safe(p, tmp, head)
            {
                struct sub *s = container_of(p, struct sub, chan_link);
                struct conn *c = s->conn;
                hub_unsubscribe(hub, w->id, s);
                if (!(c->flags & CF_CLOSING) && c->ops->on_channel_closed)
                    c->ops->on_channel_closed(c, ch);
            }
        }
        if (it->msg)
            ref_put(&it->msg->ref);
        if (it->ctl)
            ref_put(&it->ctl->ref);
        hub_channel_put_ref(hub, ch);
    }
    if (delivered)
        atomic_fetch_add_explicit(&hub->stats.delivered, delivered, memory_order_relaxed);
    if (windows)
        batch_arm(w);
}

static void begin_drain(struct worker *w);

void worker__read_later(struct conn *c)
{
    struct worker *w = c->w;
    if (c->flags & CF_READ_LATER)
        return;
    c->flags |= CF_READ_LATER;
    conn_hold(c); /* it may close meanwhile: the hold keeps the pointer valid */
    if (w->nread_later == w->read_later_cap) {
        w->read_later_cap = w->read_later_cap ? w->read_later_cap * 2 : 16;
        w->read_later = xrealloc(w->read_later, w->read_later_cap * sizeof(*w->read_later));
    }
    w->read_later[w->nread_later++] = c;
    loop_wake(&w->loop); /* the next pass does not wait in epoll */
}

/* Connections whose read budget ran out last pass read on, after the others had
 * their turn. */
static void read_later(struct worker *w)
{
    uint32_t n = w->nread_later;
    if (!n)
        return;
    struct conn **list = w->read_later;
    w->read_later = NULL;
    w->nread_later = w->read_later_cap = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct conn *c = list[i];
        c->flags &= ~(uint32_t)CF_READ_LATER;
        if (!conn_release(c))
            continue;
        conn__resume_now(c);
        if ((c->flags & (CF_DIRTY | CF_CLOSING)) == CF_DIRTY)
            conn__flush_dirty(c);
    }
    free(list);
}

static void on_wake(struct loop *loop, void *arg)
{
    struct worker *w = arg;
    read_later(w);
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
    conn_unpark(arg);
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

/* ---- accepting --------------------------------------------------------------------- */

/*
 * Reads what the client sent and writes the answers now, not after the poll
 * pass: the client waits for them (publish answers, handshakes, replays), and a
 * pass may hold thousands of connections in a storm. Deliveries to subscribers
 * are still coalesced per pass (fanout).
 */
static void conn_read_answer(struct conn *c)
{
    conn__read(c);
    if ((c->flags & (CF_DIRTY | CF_CLOSING)) == CF_DIRTY)
        conn__flush_dirty(c);
}

static void conn_io_cb(struct loop *loop, struct io *io, uint32_t events)
{
    struct conn *c = container_of(io, struct conn, io);
    if (c->flags & CF_CLOSING)
        return;
    if (c->tls)
        events = tls_events(c->tls, events);
    if (events & POLLER_OUT)
        conn__on_writable(c);
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
    if (cfg->max_connections &&
        atomic_load(&w->srv->conns_open) >= (uint64_t)cfg->max_connections) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct tls_conn *tls = NULL;
    if ((l->flags & CF_TLS) && !(tls = tls_conn_new(w->srv->tls, fd))) {
        close(fd);
        return;
    }
    struct conn *c = xcalloc(1, sizeof(*c));
    c->io = (struct io){.fd = fd, .cb = conn_io_cb};
    c->tls = tls;
    c->w = w;
    c->ops = w->srv->accept_ops;
    c->flags = l->flags;
    if (addr_is_loopback(ss))
        c->flags |= CF_LOOPBACK;
    list_init(&c->link);
    list_init(&c->subs);
    timer_init(&c->timer, conn__timer_cb);
    timer_init(&c->life, conn__life_cb);
    list_insert_tail(&w->conns, &c->all);
    atomic_fetch_add(&w->ctr.conns[c->ops->kind], 1);
    atomic_fetch_add(&w->ctr.accepted, 1);
    atomic_fetch_add(&w->srv->conns_open, 1);
    if (loop_add(&w->loop, &c->io) < 0) {
        conn_close(c);
        return;
    }
    if (c->ops->on_open)
        c->ops->on_open(c);
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
                         (int)atomic_load(&w->srv->conns_open));
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

/* The listeners the configuration asks for: their addresses and the flags their
 * connections get. Returns how many (at most 2 * CONFIG_MAX_LISTEN + 2). */
static int listener_plan(const struct herald_config *cfg, const struct config_addr **addrs,
                         uint32_t *flags)
{
    bool api_apart = cfg->has_api_listen || cfg->has_api_listen_tls;
    uint32_t main_flags = CF_PUBLIC | (api_apart ? 0 : CF_API);
    int n = 0;
    for (int i = 0; i < cfg->num_listen; i++, n++) {
        addrs[n] = &cfg->listen[i];
        flags[n] = main_flags;
    }
    for (int i = 0; i < cfg->num_listen_tls; i++, n++) {
        addrs[n] = &cfg->listen_tls[i];
        flags[n] = main_flags | CF_TLS;
    }
    if (cfg->has_api_listen) {
        addrs[n] = &cfg->api_listen;
        flags[n++] = CF_API;
    }
    if (cfg->has_api_listen_tls) {
        addrs[n] = &cfg->api_listen_tls;
        flags[n++] = CF_API | CF_TLS;
    }
    return n;
}

static int worker_listen(struct worker *w)
{
    const struct config_addr *addrs[2 * CONFIG_MAX_LISTEN + 2];
    uint32_t flags[2 * CONFIG_MAX_LISTEN + 2];
    int n = listener_plan(&w->srv->cfg, addrs, flags);
    for (int i = 0; i < n; i++) {
        const struct config_addr *a = addrs[i];
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
        l->flags = flags[i];
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
        conn__flush_dirty(container_of(w->dirty.next, struct conn, link));
    bool freed = false;
    while (!list_empty(&w->closing)) {
        struct conn *c = container_of(w->closing.next, struct conn, link);
        list_remove(&c->link);
        conn__free(c);
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
        /* Read what came before the signal first (its event may be later in this poll
         * pass): a request on its way is answered, not cut as an idle connection. */
        if (!(c->flags & CF_CLOSING))
            conn_read_answer(c);
        if (c->flags & CF_CLOSING)
            continue;
        if (c->ops->on_shutdown)
            c->ops->on_shutdown(c);
        else
            conn_close(c);
    }
}

static void tick_cb(struct loop *loop, struct timer *t)
{
    struct worker *w = container_of(t, struct worker, tick);
    if (w->id == 0 && !w->draining) {
        hub_sweep(&w->srv->hub);
        node_stats_sample(w->srv);
    }
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
    worker__current = w;
    timer_start(&w->loop, &w->tick, 1000);
    while (!(w->draining && list_empty(&w->conns))) {
        loop_run_once(&w->loop, 1000);
        if (atomic_load(&w->srv->shutdown) && !w->draining)
            begin_drain(w);
    }
    timer_stop(&w->loop, &w->tick);
    timer_stop(&w->loop, &w->accept_retry);
    timer_stop(&w->loop, &w->batch_timer);
    /* Every connection is gone: what waited to read again is a zombie its hold frees. */
    for (uint32_t i = 0; i < w->nread_later; i++)
        conn_release(w->read_later[i]);
    free(w->read_later);
    w->read_later = NULL;
    w->nread_later = 0;
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
    timer_init(&w->tick, tick_cb);
    timer_init(&w->accept_retry, accept_retry_cb);
    timer_init(&w->batch_timer, batch_timer_cb);
    srv->hub.inbox[id].wake = hub_wake;
    srv->hub.on_synced = hub_synced;
    srv->hub.inbox[id].wake_arg = w;
    return worker_listen(w);
}

int server_start(struct server *srv)
{
    const struct herald_config *cfg = &srv->cfg;
    if (cfg->num_listen_tls || cfg->has_api_listen_tls) {
        srv->tls = tls_server_new(cfg->tls_cert, cfg->tls_key);
        if (!srv->tls)
            return -EINVAL;
    } else if (cfg->tls_cert[0]) {
        log_warn("--tls-cert is set but no --listen-tls or --api-listen-tls: nothing serves TLS");
    }
    srv->started_ms = wall_ms();
    srv->stats = node_stats_new();
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

int server_reload_tls(struct server *srv)
{
    return srv->tls ? tls_server_reload(srv->tls) : 1;
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
        /* What was posted to the worker after it stopped (the answers of a cluster
         * backend that stopped after it) is taken here, as that worker: its
         * connections are gone, so the calls only release what they hold. */
        uint32_t n;
        struct inbox_item *items = hub_inbox_take(&srv->hub, w->id, &n);
        worker__current = w;
        if (items)
            fanout(w, items, n);
        worker__current = NULL;
        free(items);
        batch_set_free(&srv->hub, &w->batches);
        close_listeners(w);
        loop_free(&w->loop);
        free(w->scratch);
    }
    free(srv->workers);
    node_stats_free(srv->stats);
    srv->stats = NULL;
    tls_server_free(srv->tls);
    srv->tls = NULL;
}
