/*
 * cluster_map: slot hashing, CLUSTER SLOTS parsing and the cluster router.
 *
 * The router owns a list of nodes (every address it ever heard of: seeds,
 * masters, replicas, MOVED targets; a cluster has few) and a 16384-entry
 * slot -> master table. Commands are kept pre-formatted so a redirect or a
 * retry resends the same bytes. Everything that reacts to failures is
 * asynchronous — a zero-delay reconcile timer for subscriptions, a refresh
 * timer for topology, a timer per retried command — so a resp_conn callback
 * never re-enters the router's own bookkeeping, and frees are deferred to a
 * reap timer like the single-server bus.
 */
#include "cluster/cluster_map.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/map.h"
#include "core/util.h"

#define REFRESH_MIN_GAP_MS   250u /* between two topology refreshes */
#define REFRESH_UNHEALTHY_MS 500u /* periodic refresh while something is broken */
#define RETRY_MIN_MS         25u  /* per-command retry backoff, doubling ... */
#define RETRY_MAX_MS         500u /* ... up to this */

uint16_t cluster_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

uint16_t cluster_keyslot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        /* "{}" is not a tag: the whole key is hashed. */
        if (close && close > open + 1)
            return cluster_crc16(open + 1, (size_t)(close - open - 1)) & (CLUSTER_SLOTS - 1);
    }
    return cluster_crc16(key, len) & (CLUSTER_SLOTS - 1);
}

static bool parse_node(const redisReply *n, const char *self_host, struct cluster_addr *a)
{
    if (n->type != REDIS_REPLY_ARRAY || n->elements < 2 ||
        n->element[0]->type != REDIS_REPLY_STRING || n->element[1]->type != REDIS_REPLY_INTEGER)
        return false;
    const redisReply *h = n->element[0];
    if (h->len >= sizeof(a->host))
        return false;
    /* Redis 7 sends "" (or "?") for "the node you are talking to". */
    if (h->len == 0 || (h->len == 1 && h->str[0] == '?'))
        snprintf(a->host, sizeof(a->host), "%s", self_host);
    else
        snprintf(a->host, sizeof(a->host), "%.*s", (int)h->len, h->str);
    a->port = (int)n->element[1]->integer;
    return a->port > 0 && a->port < 65536;
}

int cluster_parse_slots(const redisReply *r, const char *self_host, struct cluster_shard *out,
                        int max)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements > CLUSTER_SLOTS)
        return -1;
    int n = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER)
            return -1;
        long long start = e->element[0]->integer, end = e->element[1]->integer;
        if (start < 0 || end < start || end >= CLUSTER_SLOTS)
            return -1;
        struct cluster_shard scratch, *s = n < max ? &out[n] : &scratch;
        *s = (struct cluster_shard){.start = (uint16_t)start, .end = (uint16_t)end};
        if (!parse_node(e->element[2], self_host, &s->master))
            return -1;
        for (size_t j = 3; j < e->elements && s->nreplicas < CLUSTER_MAX_REPLICAS; j++)
            if (parse_node(e->element[j], self_host, &s->replica[s->nreplicas]))
                s->nreplicas++;
        n++;
    }
    return n;
}

bool cluster_parse_redirect(const redisReply *r, bool *ask, int *slot, struct cluster_addr *addr)
{
    if (!resp_reply_is_error(r))
        return false;
    const char *p;
    if (r->len > 6 && memcmp(r->str, "MOVED ", 6) == 0) {
        *ask = false;
        p = r->str + 6;
    } else if (r->len > 4 && memcmp(r->str, "ASK ", 4) == 0) {
        *ask = true;
        p = r->str + 4;
    } else {
        return false;
    }
    char *end;
    long s = strtol(p, &end, 10);
    if (end == p || *end != ' ' || s < 0 || s >= CLUSTER_SLOTS)
        return false;
    const char *hp = end + 1, *colon = strrchr(hp, ':');
    if (!colon || (size_t)(colon - hp) >= sizeof(addr->host))
        return false;
    long port = strtol(colon + 1, &end, 10);
    if (port <= 0 || port > 65535 || (*end && *end != ' '))
        return false;
    snprintf(addr->host, sizeof(addr->host), "%.*s", (int)(colon - hp), hp);
    addr->port = (int)port;
    *slot = (int)s;
    return true;
}

/* ---- router state ---- */

struct cnode {
    struct list link;
    struct cluster_router *r;
    char host[64];
    int port;
    char addr[80];
    struct resp_conn *cmd, *sub;
    bool master; /* owns slots in the current topology */
};

enum chan_state { CH_IDLE, CH_SENT, CH_ACTIVE };

struct cchan {
    struct map_node mn; /* first: redis_bus__free_map frees the node pointer */
    uint16_t slot;
    enum chan_state st;
    struct cnode *node; /* where it is sent or active; NULL when idle */
    char name[];
};

struct creq {
    struct list link; /* r->reqs */
    struct cluster_router *r;
    resp_reply_fn *cb;
    void *arg;
    char *cmd;
    size_t len;
    int slot;
    uint64_t deadline;
    unsigned redirects, attempts;
    struct cnode *ask; /* send once to this node with ASKING */
    struct timer retry;
};

struct sub_ctx {
    struct cluster_router *r;
    struct cnode *node;
    size_t len;
    char name[];
};

struct cluster_router {
    struct redis_bus bus; /* first */
    struct loop *loop;
    struct redis_bus_opts opts; /* strings owned */
    struct cnode *slots[CLUSTER_SLOTS];
    struct list nodes, reqs;
    struct map chans;
    size_t nactive, nsent; /* channels CH_ACTIVE, CH_SENT */
    struct timer refresh_timer, reconcile_timer, reap_timer;
    bool refreshing, refresh_again, have_topology, free_requested;
    uint64_t last_refresh, nrefresh, nmoved, nask;
    unsigned refresh_next; /* rotates through the nodes as refresh sources */
    enum redis_bus_status status;
};

static void node_on_ready(struct resp_conn *c, void *arg);
static void node_on_down(struct resp_conn *c, int err, void *arg);
static void node_on_push(struct resp_conn *c, const redisReply *push, void *arg);
static void req_send(struct creq *q);
static void refresh_soon(struct cluster_router *r);
static void reconcile_soon(struct cluster_router *r);

static struct cnode *node_get(struct cluster_router *r, const char *host, int port)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &r->nodes)
    {
        struct cnode *n = container_of(pos, struct cnode, link);
        if (n->port == port && strcmp(n->host, host) == 0)
            return n;
    }
    struct cnode *n = xcalloc(1, sizeof(*n));
    n->r = r;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    snprintf(n->addr, sizeof(n->addr), "%s:%d", host, port);
    list_insert_tail(&r->nodes, &n->link);
    return n;
}

static struct resp_conn *node_conn(struct cnode *n, bool sub)
{
    struct resp_conn **slot = sub ? &n->sub : &n->cmd;
    if (!*slot) {
        char name[96];
        struct resp_conn_opts o =
            redis_bus__conn_opts(&n->r->opts, sub ? "ssub" : "cmd", name, sizeof(name));
        o.db = 0;
        struct resp_conn_callbacks cbs = {
            .on_ready = node_on_ready, .on_down = node_on_down, .on_push = node_on_push, .arg = n};
        *slot = resp_conn_new(n->r->loop, n->host, n->port, &o, &cbs);
    }
    return *slot;
}

static void set_chan(struct cluster_router *r, struct cchan *ch, enum chan_state st,
                     struct cnode *node)
{
    if (ch->st == CH_ACTIVE)
        r->nactive--;
    else if (ch->st == CH_SENT)
        r->nsent--;
    if (st == CH_ACTIVE)
        r->nactive++;
    else if (st == CH_SENT)
        r->nsent++;
    ch->st = st;
    ch->node = st == CH_IDLE ? NULL : node;
}

static void update_status(struct cluster_router *r)
{
    if (r->free_requested)
        return;
    bool any = false, all = r->have_topology;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &r->nodes)
    {
        struct cnode *n = container_of(pos, struct cnode, link);
        if (!n->master)
            continue;
        bool up = n->cmd && resp_conn_ready(n->cmd);
        any |= up;
        all &= up;
    }
    /* A subscription on its way is not a degradation (every new channel has one): a
     * channel that has none (no master known for it, its connection down) is. */
    enum redis_bus_status st = !r->have_topology || !any                      ? REDIS_BUS_DOWN
                               : all && r->nactive + r->nsent == r->chans.len ? REDIS_BUS_UP
                                                                              : REDIS_BUS_DEGRADED;
    redis_bus__set_status(&r->bus, &r->status, st);
}

/* ---- commands ---- */

static void req_finish(struct creq *q, const redisReply *reply, int status)
{
    list_remove(&q->link);
    timer_stop(q->r->loop, &q->retry);
    q->cb(reply, status, q->arg);
    free(q->cmd);
    free(q);
}

static void req_fail(struct creq *q, int status)
{
    const char *msg = resp_strerror(status);
    redisReply rep = {.type = REDIS_REPLY_ERROR, .str = (char *)msg, .len = strlen(msg)};
    req_finish(q, &rep, status);
}

static void req_retry(struct creq *q)
{
    struct cluster_router *r = q->r;
    if (r->free_requested) {
        req_fail(q, RESP_ECANCELED);
        return;
    }
    if (r->loop->now >= q->deadline) {
        req_fail(q, RESP_EDEADLINE);
        return;
    }
    unsigned delay = MIN(RETRY_MIN_MS << MIN(q->attempts, 8u), RETRY_MAX_MS);
    q->attempts++;
    timer_start(r->loop, &q->retry, MIN(delay, q->deadline - r->loop->now));
}

static void req_retry_cb(struct loop *loop, struct timer *t)
{
    req_send(container_of(t, struct creq, retry));
}

static bool error_is(const redisReply *r, const char *prefix)
{
    size_t n = strlen(prefix);
    return r->len >= n && memcmp(r->str, prefix, n) == 0;
}

static void req_reply(const redisReply *reply, int status, void *arg)
{
    struct creq *q = arg;
    struct cluster_router *r = q->r;
    bool ask;
    int slot;
    struct cluster_addr a;
    if (r->free_requested) {
        req_finish(q, reply, status ? RESP_ECANCELED : 0);
    } else if (status < 0) {
        refresh_soon(r);
        req_retry(q);
    } else if (cluster_parse_redirect(reply, &ask, &slot, &a)) {
        if (++q->redirects > CLUSTER_MAX_REDIRECTS) {
            req_fail(q, RESP_EREDIRECT);
            return;
        }
        struct cnode *n = node_get(r, a.host, a.port);
        if (ask) {
            r->nask++;
            q->ask = n;
        } else {
            r->nmoved++;
            r->slots[slot] = n;
            refresh_soon(r);
        }
        req_send(q);
    } else if (resp_reply_is_error(reply) &&
               (error_is(reply, "TRYAGAIN") || error_is(reply, "CLUSTERDOWN") ||
                error_is(reply, "MASTERDOWN") || error_is(reply, "LOADING"))) {
        refresh_soon(r);
        req_retry(q);
    } else {
        req_finish(q, reply, 0);
    }
}

static void ignore_reply(const redisReply *reply, int status, void *arg)
{
}

static void req_send(struct creq *q)
{
    struct cluster_router *r = q->r;
    struct cnode *n = q->ask ? q->ask : r->slots[q->slot];
    if (!n) {
        refresh_soon(r);
        req_retry(q);
        return;
    }
    struct resp_conn *c = node_conn(n, false);
    int rc = RESP_ENOTCONN;
    if (q->ask) {
        const char *argv[] = {"ASKING"};
        rc = resp_command_argv(c, ignore_reply, NULL, 1, argv, NULL);
        q->ask = NULL;
    }
    if (c && (rc == 0 || rc == RESP_ENOTCONN))
        rc = resp_command_formatted(c, req_reply, q, q->cmd, q->len);
    if (rc < 0) {
        refresh_soon(r);
        req_retry(q);
    }
}

int cluster_command_slot(struct cluster_router *r, int slot, resp_reply_fn *cb, void *arg, int argc,
                         const char **argv, const size_t *argvlen)
{
    if (r->free_requested)
        return RESP_ECANCELED;
    if (!cb || argc < 1 || slot < 0 || slot >= CLUSTER_SLOTS)
        return RESP_EINVAL;
    char *buf;
    int len = redisFormatCommandArgv(&buf, argc, argv, argvlen);
    if (len < 0)
        return RESP_EINVAL;
    struct creq *q = xcalloc(1, sizeof(*q));
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    q->cmd = xmalloc((size_t)len);
    memcpy(q->cmd, buf, (size_t)len);
    q->len = (size_t)len;
    redisFreeCommand(buf);
    q->slot = slot;
    q->deadline = now_ms() + r->opts.command_timeout_ms;
    timer_init(&q->retry, req_retry_cb);
    list_insert_tail(&r->reqs, &q->link);
    req_send(q);
    return 0;
}

int cluster_command_key(struct cluster_router *r, const char *key, size_t len, resp_reply_fn *cb,
                        void *arg, int argc, const char **argv, const size_t *argvlen)
{
    return cluster_command_slot(r, key ? cluster_keyslot(key, len) : 0, cb, arg, argc, argv,
                                argvlen);
}

int cluster_spublish(struct cluster_router *r, const char *channel, size_t channel_len,
                     const char *data, size_t len, resp_reply_fn *cb, void *arg)
{
    const char *argv[] = {"SPUBLISH", channel, data};
    size_t lens[] = {8, channel_len, len};
    return cluster_command_key(r, channel, channel_len, cb, arg, 3, argv, lens);
}

/* ---- topology ---- */

/* The channels subscribed (or being subscribed) on n need a new SSUBSCRIBE. */
static void node_idle_chans(struct cluster_router *r, struct cnode *n)
{
    size_t bucket = 0;
    struct map_node *m, *next = NULL;
    while ((m = map_next(&r->chans, &bucket, &next))) {
        struct cchan *ch = container_of(m, struct cchan, mn);
        if (ch->node == n)
            set_chan(r, ch, CH_IDLE, NULL);
    }
}

static void node_drop_conns(struct cluster_router *r, struct cnode *n)
{
    if (n->sub)
        node_idle_chans(r, n);
    /* Deferred by resp_conn when we are inside one of its callbacks. */
    resp_conn_free(n->cmd);
    resp_conn_free(n->sub);
    n->cmd = n->sub = NULL;
}

static void apply_topology(struct cluster_router *r, const struct cluster_shard *shards, int n)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &r->nodes) container_of(pos, struct cnode, link)->master = false;
    memset(r->slots, 0, sizeof(r->slots));
    for (int i = 0; i < n; i++) {
        struct cnode *m = node_get(r, shards[i].master.host, shards[i].master.port);
        m->master = true;
        for (int s = shards[i].start; s <= shards[i].end; s++)
            r->slots[s] = m;
        for (int j = 0; j < shards[i].nreplicas; j++)
            node_get(r, shards[i].replica[j].host, shards[i].replica[j].port);
    }
    list_for_each_safe(pos, tmp, &r->nodes)
    {
        struct cnode *node = container_of(pos, struct cnode, link);
        if (node->master)
            node_conn(node, false); /* connect eagerly: status reports all shards */
        else if (node->cmd || node->sub)
            node_drop_conns(r, node);
    }
    r->have_topology = true;
    r->nrefresh++;
    reconcile_soon(r);
}

static void refresh_done(struct cluster_router *r, bool ok)
{
    r->refreshing = false;
    r->last_refresh = r->loop->now;
    if (!ok)
        r->refresh_next++;
    update_status(r);
    if (!ok || r->refresh_again || r->status != REDIS_BUS_UP) {
        r->refresh_again = false;
        timer_start(r->loop, &r->refresh_timer, ok ? REFRESH_UNHEALTHY_MS : REFRESH_MIN_GAP_MS);
    } else {
        timer_start(r->loop, &r->refresh_timer, r->opts.refresh_interval_ms);
    }
}

static void refresh_reply(const redisReply *reply, int status, void *arg)
{
    struct cnode *node = arg;
    struct cluster_router *r = node->r;
    if (r->free_requested)
        return;
    /* One range per run of slots with one owner: a cluster resharded slot by slot lists
     * thousands. */
    int n = status == 0 ? cluster_parse_slots(reply, node->host, NULL, 0) : -1;
    struct cluster_shard *shards = n > 0 ? xcalloc((size_t)n, sizeof(*shards)) : NULL;
    if (shards)
        cluster_parse_slots(reply, node->host, shards, n);
    if (n <= 0) {
        log_debug("redis cluster: CLUSTER SLOTS from %s failed: %.*s", node->addr, (int)reply->len,
                  reply->str ? reply->str : "");
        refresh_done(r, false);
        return;
    }
    apply_topology(r, shards, n);
    free(shards);
    refresh_done(r, true);
}

static void refresh_start(struct cluster_router *r)
{
    size_t count = 0;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &r->nodes) count++;
    /* Rotate through every known node and seed until one takes the request. */
    for (size_t tries = 0; tries < count; tries++) {
        size_t want = (r->refresh_next + tries) % count, i = 0;
        struct cnode *n = NULL;
        list_for_each_safe(pos, tmp, &r->nodes) if (i++ == want) n =
            container_of(pos, struct cnode, link);
        struct resp_conn *c = node_conn(n, false);
        const char *argv[] = {"CLUSTER", "SLOTS"};
        if (c && resp_command_argv(c, refresh_reply, n, 2, argv, NULL) == 0) {
            r->refresh_next += (unsigned)tries;
            r->refreshing = true;
            return;
        }
    }
    refresh_done(r, false);
}

static void refresh_cb(struct loop *loop, struct timer *t)
{
    struct cluster_router *r = container_of(t, struct cluster_router, refresh_timer);
    if (!r->free_requested)
        refresh_start(r);
}

static void refresh_soon(struct cluster_router *r)
{
    if (r->refreshing) {
        r->refresh_again = true;
        return;
    }
    uint64_t due = r->last_refresh + REFRESH_MIN_GAP_MS;
    uint64_t after = due > r->loop->now ? due - r->loop->now : 0;
    if (!timer_armed(&r->refresh_timer) || r->refresh_timer.node.key > r->loop->now + after)
        timer_start(r->loop, &r->refresh_timer, after);
}

/* ---- sharded pub/sub ---- */

static void sub_reply(const redisReply *reply, int status, void *arg)
{
    struct sub_ctx *x = arg;
    struct cluster_router *r = x->r;
    struct map_node *m = r->free_requested ? NULL : map_get(&r->chans, x->name, x->len);
    struct cchan *ch = m ? container_of(m, struct cchan, mn) : NULL;
    bool ask;
    int slot;
    struct cluster_addr a;
    if (!ch || ch->node != x->node || ch->st != CH_SENT) {
        /* Unsubscribed or moved meanwhile: nothing to do. */
    } else if (status == 0 && reply->type == REDIS_REPLY_ARRAY) {
        set_chan(r, ch, CH_ACTIVE, x->node);
        if (r->bus.cbs.on_subscribed)
            r->bus.cbs.on_subscribed(ch->name, ch->mn.key_len, r->bus.cbs.arg);
        update_status(r);
    } else {
        if (status == 0 && cluster_parse_redirect(reply, &ask, &slot, &a) && !ask) {
            r->nmoved++;
            r->slots[slot] = node_get(r, a.host, a.port);
        } else if (status == 0) {
            log_warn("redis cluster: SSUBSCRIBE %s on %s: %.*s", ch->name, x->node->addr,
                     (int)reply->len, reply->str);
        }
        set_chan(r, ch, CH_IDLE, NULL);
        refresh_soon(r);
        reconcile_soon(r);
    }
    free(x);
}

static int send_sub(struct cluster_router *r, struct cnode *n, const char *verb,
                    const struct cchan *ch)
{
    struct resp_conn *c = node_conn(n, true);
    if (!c)
        return RESP_ENOTCONN;
    size_t len = ch->mn.key_len;
    const char *argv[] = {verb, ch->name};
    size_t lens[] = {strlen(verb), len};
    if (verb[1] == 'U') /* SUNSUBSCRIBE: nobody waits for the confirmation */
        return resp_command_argv(c, ignore_reply, NULL, 2, argv, lens);
    struct sub_ctx *x = xmalloc(sizeof(*x) + len + 1);
    *x = (struct sub_ctx){.r = r, .node = n, .len = len};
    memcpy(x->name, ch->name, len + 1);
    int rc = resp_command_argv(c, sub_reply, x, 2, argv, lens);
    if (rc < 0)
        free(x);
    return rc;
}

static void reconcile(struct cluster_router *r)
{
    size_t bucket = 0;
    struct map_node *m, *next = NULL;
    while ((m = map_next(&r->chans, &bucket, &next))) {
        struct cchan *ch = container_of(m, struct cchan, mn);
        struct cnode *target = r->slots[ch->slot];
        if (!target || (ch->st != CH_IDLE && ch->node == target))
            continue;
        if (ch->st == CH_ACTIVE && ch->node->sub && resp_conn_ready(ch->node->sub))
            send_sub(r, ch->node, "SUNSUBSCRIBE", ch);
        set_chan(r, ch, CH_IDLE, NULL);
        if (send_sub(r, target, "SSUBSCRIBE", ch) == 0)
            set_chan(r, ch, CH_SENT, target);
    }
    update_status(r);
}

static void reconcile_cb(struct loop *loop, struct timer *t)
{
    struct cluster_router *r = container_of(t, struct cluster_router, reconcile_timer);
    if (!r->free_requested)
        reconcile(r);
}

static void reconcile_soon(struct cluster_router *r)
{
    if (!timer_armed(&r->reconcile_timer))
        timer_start(r->loop, &r->reconcile_timer, 0);
}

int cluster_ssubscribe(struct cluster_router *r, const char *channel, size_t len)
{
    if (!len || len > UINT32_MAX || r->free_requested)
        return RESP_EINVAL;
    struct map_node *have = map_get(&r->chans, channel, len);
    if (have)
        return container_of(have, struct cchan, mn)->st == CH_ACTIVE ? 1 : 0;
    struct cchan *ch = xcalloc(1, sizeof(*ch) + len + 1);
    memcpy(ch->name, channel, len);
    ch->mn = (struct map_node){.key = ch->name, .key_len = (uint32_t)len};
    ch->slot = cluster_keyslot(channel, len);
    map_put(&r->chans, &ch->mn);
    reconcile_soon(r);
    return 0;
}

int cluster_sunsubscribe(struct cluster_router *r, const char *channel, size_t len)
{
    struct map_node *m = map_get(&r->chans, channel, len);
    if (!m)
        return 0;
    struct cchan *ch = container_of(m, struct cchan, mn);
    if (ch->st != CH_IDLE && ch->node->sub)
        send_sub(r, ch->node, "SUNSUBSCRIBE", ch);
    set_chan(r, ch, CH_IDLE, NULL);
    map_del(&r->chans, m);
    free(ch);
    update_status(r);
    return 0;
}

/* ---- node connection callbacks ---- */

static void node_on_ready(struct resp_conn *c, void *arg)
{
    struct cnode *n = arg;
    if (c == n->sub)
        reconcile_soon(n->r);
    update_status(n->r);
}

static void node_on_down(struct resp_conn *c, int err, void *arg)
{
    struct cnode *n = arg;
    struct cluster_router *r = n->r;
    if (c == n->sub)
        node_idle_chans(r, n);
    refresh_soon(r);
    update_status(r);
}

static void node_on_push(struct resp_conn *c, const redisReply *p, void *arg)
{
    struct cnode *n = arg;
    struct cluster_router *r = n->r;
    const redisReply *ch = p->element[1];
    if (r->free_requested || ch->type != REDIS_REPLY_STRING)
        return;
    if (resp_reply_str_eq(p->element[0], "smessage")) {
        if (p->element[2]->type == REDIS_REPLY_STRING && r->bus.cbs.on_message)
            r->bus.cbs.on_message(ch->str, ch->len, p->element[2]->str, p->element[2]->len,
                                  r->bus.cbs.arg);
    } else if (resp_reply_str_eq(p->element[0], "sunsubscribe")) {
        /* The server dropped the channel: its slot moved. Find the new owner. */
        struct map_node *m = map_get(&r->chans, ch->str, ch->len);
        struct cchan *cc = m ? container_of(m, struct cchan, mn) : NULL;
        if (cc && cc->node == n)
            set_chan(r, cc, CH_IDLE, NULL);
        refresh_soon(r);
        reconcile_soon(r);
    }
}

/* ---- lifetime ---- */

static void router_reap(struct loop *loop, struct timer *t)
{
    struct cluster_router *r = container_of(t, struct cluster_router, reap_timer);
    struct list *pos, *tmp;
    timer_stop(loop, &r->refresh_timer);
    timer_stop(loop, &r->reconcile_timer);
    list_for_each_safe(pos, tmp, &r->nodes)
    {
        struct cnode *n = container_of(pos, struct cnode, link);
        resp_conn_free(n->cmd); /* pending requests finish with RESP_ECANCELED */
        resp_conn_free(n->sub);
        list_remove(pos);
        free(n);
    }
    list_for_each_safe(pos, tmp, &r->reqs)
        req_fail(container_of(pos, struct creq, link), RESP_ECANCELED);
    redis_bus__free_map(&r->chans);
    free((char *)r->opts.username);
    free((char *)r->opts.password);
    free((char *)r->opts.name);
    resp_tls_opts_free((struct resp_tls_opts *)r->opts.tls);
    free(r);
}

void cluster_router_free(struct cluster_router *r)
{
    if (!r || r->free_requested)
        return;
    r->free_requested = true;
    timer_start(r->loop, &r->reap_timer, 0);
}

static int bus_command(struct redis_bus *bus, const char *key, size_t key_len, resp_reply_fn *cb,
                       void *arg, int argc, const char **argv, const size_t *argvlen)
{
    return cluster_command_key((struct cluster_router *)bus, key, key_len, cb, arg, argc, argv,
                               argvlen);
}

static int bus_publish(struct redis_bus *bus, const char *channel, size_t channel_len,
                       const char *data, size_t len, resp_reply_fn *cb, void *arg)
{
    return cluster_spublish((struct cluster_router *)bus, channel, channel_len, data, len, cb, arg);
}

static int bus_subscribe(struct redis_bus *bus, const char *channel, size_t len)
{
    return cluster_ssubscribe((struct cluster_router *)bus, channel, len);
}

static int bus_unsubscribe(struct redis_bus *bus, const char *channel, size_t len)
{
    return cluster_sunsubscribe((struct cluster_router *)bus, channel, len);
}

static enum redis_bus_status bus_status(const struct redis_bus *bus)
{
    return ((const struct cluster_router *)bus)->status;
}

static void bus_free(struct redis_bus *bus)
{
    cluster_router_free((struct cluster_router *)bus);
}

static const struct redis_bus_ops cluster_ops = {
    .command = bus_command,
    .publish = bus_publish,
    .subscribe = bus_subscribe,
    .unsubscribe = bus_unsubscribe,
    .status = bus_status,
    .free = bus_free,
};

/* Adds every "host:port" of the comma-separated list as a node. Returns how many. */
static int add_seeds(struct cluster_router *r, const char *seeds)
{
    int added = 0;
    const char *p = seeds;
    while (*p) {
        size_t len = strcspn(p, ",");
        char item[96];
        if (len > 0 && len < sizeof(item)) {
            memcpy(item, p, len);
            item[len] = '\0';
            char *colon = strrchr(item, ':'), *end;
            long port = colon ? strtol(colon + 1, &end, 10) : 0;
            if (colon && colon > item && *end == '\0' && port > 0 && port < 65536) {
                *colon = '\0';
                node_get(r, item, (int)port);
                added++;
            }
        }
        p += len + (p[len] == ',');
    }
    return added;
}

static char *copy_opt(const char *s)
{
    return s ? xstrndup(s, strlen(s)) : NULL;
}

struct cluster_router *cluster_router_new(struct loop *loop, const char *seeds,
                                          const struct redis_bus_opts *opts,
                                          const struct redis_bus_callbacks *cbs)
{
    static const struct redis_bus_opts no_opts;
    static const struct redis_bus_callbacks no_cbs;
    struct cluster_router *r = xcalloc(1, sizeof(*r));
    r->bus = (struct redis_bus){.ops = &cluster_ops, .cbs = cbs ? *cbs : no_cbs};
    r->loop = loop;
    list_init(&r->nodes);
    list_init(&r->reqs);
    map_init(&r->chans, 64);
    timer_init(&r->refresh_timer, refresh_cb);
    timer_init(&r->reconcile_timer, reconcile_cb);
    timer_init(&r->reap_timer, router_reap);
    if (add_seeds(r, seeds ? seeds : "") == 0) {
        log_error("redis cluster: no usable seed in \"%s\"", seeds ? seeds : "");
        map_free(&r->chans);
        free(r);
        return NULL;
    }
    opts = opts ? opts : &no_opts;
    r->opts = *opts;
    r->opts.username = copy_opt(opts->username);
    r->opts.password = copy_opt(opts->password);
    r->opts.name = copy_opt(opts->name);
    r->opts.tls = resp_tls_opts_dup(opts->tls);
    if (!r->opts.command_timeout_ms)
        r->opts.command_timeout_ms = 5000;
    if (!r->opts.refresh_interval_ms)
        r->opts.refresh_interval_ms = 10000;
    refresh_start(r);
    return r;
}

struct redis_bus *redis_bus_cluster_new(struct loop *loop, const char *seeds,
                                        const struct redis_bus_opts *opts,
                                        const struct redis_bus_callbacks *cbs)
{
    struct cluster_router *r = cluster_router_new(loop, seeds, opts, cbs);
    return r ? &r->bus : NULL;
}

struct redis_bus *cluster_router_bus(struct cluster_router *r)
{
    return &r->bus;
}

const char *cluster_router_slot_owner(const struct cluster_router *r, int slot)
{
    return slot >= 0 && slot < CLUSTER_SLOTS && r->slots[slot] ? r->slots[slot]->addr : NULL;
}

uint64_t cluster_router_refreshes(const struct cluster_router *r)
{
    return r->nrefresh;
}

size_t cluster_router_subscribed(const struct cluster_router *r, size_t *wanted)
{
    if (wanted)
        *wanted = r->chans.len;
    return r->nactive;
}

uint64_t cluster_router_redirects(const struct cluster_router *r, uint64_t *asks)
{
    if (asks)
        *asks = r->nask;
    return r->nmoved;
}
