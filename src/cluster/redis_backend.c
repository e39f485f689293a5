/*
 * redis_backend: the core of cluster mode (the key layout is in redis_backend.h).
 * It runs one thread with its own loop, where all Redis I/O happens: workers hand
 * it work through a queue (redis_backend__post) and get their answers back on
 * their own threads (hub_post). Here: publishing (one script per shard, see
 * redis_scripts.c; the bytes of a message are redis_payload.c's), following
 * channels on the bus and loading their history into the node's cache, putting
 * the copies of a multi-channel message in order, the heartbeat that keeps the
 * cluster-wide subscriber counts, Redis's status for /stats and /healthz, and
 * warnings that repeat. Channel administration is redis_channels.c.
 */
#include "cluster/redis_backend.h"
#include "cluster/redis_backend_int.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cluster/cluster_map.h"
#include "cluster/redis_bus.h"
#include "cluster/redis_channels.h"
#include "cluster/redis_payload.h"
#include "cluster/redis_scripts.h"
#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"

/* A node's subscriber counts (and its entry in herald:nodes) live this many heartbeats
 * (--cluster-heartbeat) after it wrote them. */
#define COUNT_TTL_BEATS 3

struct indexed {
    struct map_node node;
    uint64_t at;
    char name[CHANNEL_KEY_MAX + 1];
};

/* A channel whose gap fill failed, loaded again by the reload timer. */
struct reload {
    struct map_node node; /* first: redis_bus__free_map frees the node pointer */
    size_t len;
    char name[CHANNEL_KEY_MAX + 1];
};

#define RELOAD_MS 250

#define STATUS_SETTLE_MS 1000
#define WARN_WINDOW_MS   10000

/* ---- repeated warnings ---------------------------------------------------------------- */

/*
 * A Redis that refuses writes (out of memory) fails every publish and heartbeat the
 * same way: the first warning of a kind is logged, its repeats within WARN_WINDOW_MS
 * are counted, and the count is logged when the window ends ("... (repeated 57
 * times in 5 s)"), one line per window while they go on. Backend thread only.
 */
static void warn_summary(const struct warn_slot *w)
{
    if (w->repeats)
        log_warn("%s (repeated %u time%s in %u s)", w->line, w->repeats, w->repeats == 1 ? "" : "s",
                 WARN_WINDOW_MS / 1000);
}

static void rb_warn(struct rb *rb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rb_warn(struct rb *rb, const char *fmt, ...)
{
    char line[sizeof(rb->warns[0].line)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct warn_slot *w = NULL, *oldest = &rb->warns[0];
    for (size_t i = 0; i < WARN_SLOTS; i++) {
        struct warn_slot *x = &rb->warns[i];
        if (x->line[0] && strcmp(x->line, line) == 0) {
            x->repeats++;
            return;
        }
        if (!x->line[0] && !w)
            w = x;
        if (x->since < oldest->since)
            oldest = x;
    }
    if (!w) {
        w = oldest; /* many kinds at once: the oldest window ends early */
        warn_summary(w);
    }
    memcpy(w->line, line, sizeof(line));
    w->since = rb->loop.now;
    w->repeats = 0;
    log_warn("%s", line);
    if (!timer_armed(&rb->warn_timer))
        timer_start(&rb->loop, &rb->warn_timer, WARN_WINDOW_MS);
}

/* Ends the windows that are over: their counts are logged, quiet ones forgotten. */
static void warn_timer_cb(struct loop *loop, struct timer *t)
{
    struct rb *rb = container_of(t, struct rb, warn_timer);
    uint64_t next = 0;
    for (size_t i = 0; i < WARN_SLOTS; i++) {
        struct warn_slot *w = &rb->warns[i];
        if (!w->line[0])
            continue;
        if (loop->now - w->since >= WARN_WINDOW_MS) {
            warn_summary(w);
            if (!w->repeats) {
                w->line[0] = '\0';
                continue;
            }
            w->repeats = 0; /* they go on: a new window */
            w->since = loop->now;
        }
        uint64_t left = w->since + WARN_WINDOW_MS - loop->now;
        next = next && next < left ? next : left;
    }
    if (next)
        timer_start(loop, t, next);
}

static void index_reset(struct rb *rb)
{
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&rb->indexed, &b, &next))) {
        map_del(&rb->indexed, n);
        free(container_of(n, struct indexed, node));
    }
}

void redis_backend__post(struct rb *rb, struct task *t)
{
    t->next = NULL;
    pthread_mutex_lock(&rb->qlock);
    bool was_empty = !rb->q_head;
    if (rb->q_tail)
        rb->q_tail->next = t;
    else
        rb->q_head = t;
    rb->q_tail = t;
    pthread_mutex_unlock(&rb->qlock);
    if (was_empty)
        loop_wake(&rb->loop);
}

static void rb_on_wake(struct loop *loop, void *arg)
{
    struct rb *rb = arg;
    pthread_mutex_lock(&rb->qlock);
    struct task *t = rb->q_head;
    rb->q_head = rb->q_tail = NULL;
    pthread_mutex_unlock(&rb->qlock);
    while (t) {
        struct task *next = t->next;
        t->fn(t);
        t = next;
    }
}

/* Key "herald:{name}:<suffix>" into buf. */
size_t redis_backend__index_key(char *buf, const char *name, size_t len)
{
    const char *sep = memchr(name, CHANNEL_NS_SEP, len);
    int n =
        sep ? snprintf(buf, REDIS_INDEX_KEY_MAX, "herald:channels:{%.*s}", (int)(sep - name), name)
            : snprintf(buf, REDIS_INDEX_KEY_MAX, "herald:channels");
    return (size_t)n;
}

size_t redis_backend__key(char *buf, size_t size, const char *name, size_t len, char suffix)
{
    int n = snprintf(buf, size, "herald:{%.*s}:%c", (int)len, name, suffix);
    return (size_t)n;
}

/*
 * The epoch key of the data set that holds channel `name` (see publish_lua): one
 * for a single Redis, one per slot on a Redis Cluster (a script may only touch
 * keys of its channel's slot, and a shard that lost its data lost its slots').
 */
void redis_backend__ns_defaults(struct rb *rb, const char *key, size_t len, bool *auto_create,
                                uint32_t *history_size, uint32_t *history_ttl_ms,
                                uint32_t *batch_ms, bool *conflate, bool *presence)
{
    bool user = chan_key_is_user(key, len); /* a user's channel exists for the asking */
    *auto_create = rb->cfg->auto_create || user;
    *history_size = rb->cfg->history_size;
    *history_ttl_ms = rb->cfg->history_ttl_ms;
    if (batch_ms)
        *batch_ms = 0, *conflate = false;
    if (presence)
        *presence = false;
    const char *sep = memchr(key, CHANNEL_NS_SEP, len);
    struct hub *hub = rb->hub;
    struct hub_tenant *t = sep && hub->tenant_of
                               ? hub->tenant_of(hub->tenant_arg, key, (size_t)(sep - key) + 1)
                               : NULL;
    if (!t)
        return;
    pthread_mutex_lock(&t->lock);
    if (t->auto_create >= 0)
        *auto_create = t->auto_create != 0 || user;
    if (t->history_size)
        *history_size = t->history_size;
    if (t->history_ttl_ms)
        *history_ttl_ms = t->history_ttl_ms;
    if (batch_ms)
        *batch_ms = t->batch_ms, *conflate = t->conflate && t->batch_ms;
    if (presence)
        *presence = t->presence;
    pthread_mutex_unlock(&t->lock);
    uint32_t hmax = atomic_load_explicit(&t->max_history, memory_order_relaxed);
    if (hmax && *history_size > hmax)
        *history_size = hmax;
    hub_tenant_put(t);
}

static size_t epoch_key_of(const struct rb *rb, char *buf, size_t size, const char *name,
                           size_t len)
{
    if (!rb->epoch_tag)
        return (size_t)snprintf(buf, size, "herald:{seq}:e");
    return (size_t)snprintf(buf, size, "herald:{%" PRIu32 "}:e",
                            rb->epoch_tag[cluster_keyslot(name, len)]);
}

/* Finds, for every slot, the smallest number whose decimal form hashes to it. */
static uint32_t *epoch_tags_new(void)
{
    uint32_t *tag = xmalloc(CLUSTER_SLOTS * sizeof(*tag));
    bool *seen = xcalloc(CLUSTER_SLOTS, sizeof(*seen));
    size_t found = 0;
    for (uint32_t i = 0; found < CLUSTER_SLOTS; i++) {
        char b[16];
        int n = snprintf(b, sizeof(b), "%" PRIu32, i);
        uint16_t slot = cluster_keyslot(b, (size_t)n);
        if (!seen[slot]) {
            seen[slot] = true;
            tag[slot] = i;
            found++;
        }
    }
    free(seen);
    return tag;
}

/* For writes nobody waits on (index, heartbeat): failures are logged, then retried next
 * time. arg: the struct rb. */
void redis_backend__ignore_reply(const redisReply *r, int status, void *arg)
{
    if (status == 0 && r && r->type == REDIS_REPLY_ERROR)
        rb_warn(arg, "redis: %s", r->str);
}

/*
 * Whether a script answered "no such channel". Scripts reply "NOTFOUND <detail>":
 * Redis 7 keeps an error's first word as its code only when a space follows, and
 * prefixes a bare word with "ERR " (so "ERR NOTFOUND" is accepted too).
 */
static bool reply_is_notfound(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ERROR)
        return false;
    const char *s = r->str;
    if (strncmp(s, "ERR ", 4) == 0)
        s += 4;
    return strncmp(s, "NOTFOUND", 8) == 0;
}

/*
 * The hub error a script's reply (or its failure) stands for, 0 when it is not an
 * error. Redis's own errors are logged as "redis: <what><name>: <error>". With
 * `detail` (size bytes), what the client should hear when the hub's words for the
 * error do not say it; "" otherwise.
 */
int redis_backend__script_error(struct rb *rb, const redisReply *r, int status, const char *what,
                                const char *name, char *detail, size_t size)
{
    if (detail)
        detail[0] = '\0';
    if (detail && (status == RESP_ENOREPLY || status == RESP_EDEADLINE))
        snprintf(detail, size,
                 "Redis did not answer within %u ms (--redis-timeout): the command may or may "
                 "not have run, so a retry may store the message twice",
                 rb->cfg->redis_timeout_ms);
    else if (detail && status == RESP_ELOST)
        snprintf(detail, size,
                 "the connection to Redis broke before its answer: the command may or may not "
                 "have run, so a retry may store the message twice");
    if (status < 0 || !r)
        return HUB_ERR_BACKEND;
    if (reply_is_notfound(r))
        return HUB_ERR_NOT_FOUND;
    if (r->type != REDIS_REPLY_ERROR)
        return 0;
    rb_warn(rb, "redis: %s%s: %s", what, name, r->str);
    if (detail && strncmp(r->str, "OOM ", 4) == 0)
        snprintf(detail, size,
                 "Redis is out of memory and refused the command (nothing was "
                 "stored; it needs more maxmemory or fewer keys): %s",
                 r->str);
    else if (detail)
        snprintf(detail, size, "Redis refused the command: %s", r->str);
    return HUB_ERR_BACKEND;
}

/* "herald:{name}:m" -> name. */
static bool bus_channel_name(const char *ch, size_t len, struct slice *name)
{
    if (len < 11 || memcmp(ch, "herald:{", 8) != 0 || memcmp(ch + len - 3, "}:m", 3) != 0)
        return false;
    *name = (struct slice){ch + 8, (uint32_t)(len - 11)};
    return true;
}

/* ---- bus order: a multi-channel message as its first channel's ------------------------ */

/*
 * A message published to several channels comes once per channel, and a connection
 * that holds more than one of them takes the first copy that arrives. With one
 * Redis the copies come in the publisher's order, on one connection; on a Redis
 * Cluster they come from the channels' shards, in any order (the node stores them
 * in order, but the shards' writes to this node race). So a copy is held back while
 * an earlier channel of the same publish that this node follows has not brought its
 * copy yet (its last id is below this one), and for at most ORDER_HOLD_MS (a copy
 * that never comes: that channel's store failed, or took another id). Later
 * messages of the held channel queue behind it, so each channel keeps its order.
 */
#define ORDER_HOLD_MS 100

struct held {
    struct held *next;
    uint64_t since;     /* loop time it came */
    struct hub_entry e; /* points into data and json */
    struct sbuf json;
    char data[];
};

struct follow {
    struct map_node node; /* first: redis_bus__free_map frees the node pointer */
    bool subscribed;      /* its bus subscription is in place (copies will come) */
    uint64_t last;        /* the highest id that came for it on the bus */
    struct held *head, *tail;
    struct list holding; /* in rb->holding while something is held */
    size_t len;
    char name[CHANNEL_KEY_MAX + 1];
};

static struct follow *follow_of(struct rb *rb, const char *name, size_t len)
{
    struct map_node *n = map_get(&rb->follows, name, len);
    return n ? container_of(n, struct follow, node) : NULL;
}

/* Whether e, for `target`, waits for the copy of an earlier channel of its publish. */
static bool must_wait(struct rb *rb, const struct hub_entry *e, const struct follow *target)
{
    for (size_t i = 0; i < e->nchannels; i++) {
        const struct slice *c = &e->channels[i];
        if (c->len == target->len && memcmp(c->data, target->name, c->len) == 0)
            return false;
        const struct follow *f = follow_of(rb, c->data, c->len);
        if (f && f->subscribed && f->last < e->seq)
            return true;
    }
    return false;
}

static void ingest(struct rb *rb, struct follow *f, const struct slice *name,
                   const struct hub_entry *e)
{
    hub_ingest(rb->hub, name, e->channels, e->nchannels, e->seq, e->time_ms, &e->req);
    if (f && e->seq > f->last)
        f->last = e->seq;
}

/* Ingests f's first held message. */
static void release_head(struct rb *rb, struct follow *f)
{
    struct held *h = f->head;
    f->head = h->next;
    if (!f->head) {
        f->tail = NULL;
        list_remove(&f->holding);
    }
    ingest(rb, f, &(struct slice){f->name, (uint32_t)f->len}, &h->e);
    sbuf_free(&h->json);
    free(h);
}

/* Ingests what no longer waits (or waited long enough), until nothing moves. */
static void release_ready(struct rb *rb)
{
    bool moved = true;
    while (moved) {
        moved = false;
        struct list *p, *tmp;
        list_for_each_safe(p, tmp, &rb->holding)
        {
            struct follow *f = container_of(p, struct follow, holding);
            while (f->head && (rb->loop.now - f->head->since >= ORDER_HOLD_MS ||
                               !must_wait(rb, &f->head->e, f))) {
                release_head(rb, f);
                moved = true;
            }
        }
    }
    if (!list_empty(&rb->holding) && !timer_armed(&rb->order_timer))
        timer_start(&rb->loop, &rb->order_timer, ORDER_HOLD_MS);
}

static void order_timer_cb(struct loop *loop, struct timer *t)
{
    release_ready(container_of(t, struct rb, order_timer));
}

static void hold(struct rb *rb, struct follow *f, const char *data, size_t len)
{
    struct held *h = xmalloc(sizeof(*h) + len);
    memcpy(h->data, data, len);
    h->next = NULL;
    h->since = rb->loop.now;
    h->json = (struct sbuf){0};
    if (redis_payload_parse_bus(h->data, len, &h->e, &h->json) != REDIS_BUS_MESSAGE)
        abort(); /* it parsed a moment ago, from the same bytes */
    if (f->tail)
        f->tail->next = h;
    else
        list_insert_tail(&rb->holding, &f->holding);
    f->tail = h;
    if (!f->head)
        f->head = h;
    if (!timer_armed(&rb->order_timer))
        timer_start(&rb->loop, &rb->order_timer, ORDER_HOLD_MS);
}

/* Everything held for f goes in now (f is no longer followed, or was deleted). */
static void release_all(struct rb *rb, struct follow *f)
{
    while (f->head)
        release_head(rb, f);
}

/* ---- bus callbacks (backend thread) --------------------------------------------------- */

static void on_message(const char *channel, size_t channel_len, const char *data, size_t len,
                       void *arg)
{
    struct rb *rb = arg;
    struct slice name;
    if (!bus_channel_name(channel, channel_len, &name))
        return;
    struct follow *f = follow_of(rb, name.data, name.len);
    struct hub_entry e;
    struct sbuf buf = {0};
    switch (redis_payload_parse_bus(data, len, &e, &buf)) {
    case REDIS_BUS_MESSAGE:
        if (f && (f->head || (e.nchannels > 1 && must_wait(rb, &e, f)))) {
            hold(rb, f, data, len);
        } else {
            ingest(rb, f, &name, &e);
            if (!list_empty(&rb->holding))
                release_ready(rb);
        }
        break;
    case REDIS_BUS_CLOSED:
        if (f)
            release_all(rb, f);
        hub_channel_gone(rb->hub, name.data, name.len);
        break;
    case REDIS_BUS_WINDOW: {
        struct channel_opts o;
        if (redis_payload_parse_window(data, len, &o) == 0)
            hub_channel_window(rb->hub, name.data, name.len, &o);
        break;
    }
    case REDIS_BUS_PRESENCE: {
        struct redis_presence_event pe;
        if (redis_payload_parse_presence(data, len, &pe) == 0)
            hub_presence_event(rb->hub, name.data, name.len, pe.join, pe.user.data, pe.user.len,
                               pe.info.data, pe.info.len);
        break;
    }
    case REDIS_BUS_PRESENCE_OPT: {
        bool on;
        if (redis_payload_parse_presence_opt(data, len, &on) == 0)
            hub_presence_option(rb->hub, name.data, name.len, on);
        break;
    }
    case REDIS_BUS_BAD:
        rb_warn(rb, "redis: ignoring a malformed message on %.*s", (int)channel_len, channel);
        break;
    }
    sbuf_free(&buf);
}

uint64_t redis_backend__reply_u64(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer > 0 ? (uint64_t)r->integer : 0;
    uint64_t v = 0;
    if (r->type == REDIS_REPLY_STRING)
        hub_cursor_parse(r->str, r->len, &v);
    return v;
}

struct load_op {
    struct rb *rb;
    uint64_t token; /* from hub_channel_loading */
    char name[CHANNEL_KEY_MAX + 1];
    size_t len;
};

static int cmp_entry(const void *a, const void *b)
{
    const struct hub_entry *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void index_channel(struct rb *rb, const char *name, size_t len);
static void reload_later(struct rb *rb, const char *name, size_t len);

/* The load failed: subscribers waiting for it hear why, or a gap fill goes again. */
static void load_failed(struct load_op *op, int err)
{
    if (hub_channel_loaded(op->rb->hub, op->name, op->len, op->token, err, NULL, 0, 0, NULL))
        reload_later(op->rb, op->name, op->len);
    free(op);
}

static void load_reply(const redisReply *r, int status, void *arg)
{
    struct load_op *op = arg;
    struct rb *rb = op->rb;
    if (status < 0 || !r || r->type == REDIS_REPLY_ERROR) {
        bool nf = status == 0 && reply_is_notfound(r);
        /* Connection failures are retried quietly: "redis: down" says it once. */
        if (!nf) {
            if (status == 0)
                rb_warn(rb, "redis: loading channel %s failed: %s", op->name, r ? r->str : "");
            else
                log_debug("redis: loading channel %s failed: %s", op->name, resp_strerror(status));
        }
        load_failed(op, nf ? HUB_ERR_NOT_FOUND : HUB_ERR_BACKEND);
        return;
    }
    uint64_t evicted = 0;
    const redisReply *list =
        r->type == REDIS_REPLY_ARRAY && r->elements == 7 ? r->element[2] : NULL;
    if (!list || list->type != REDIS_REPLY_ARRAY) {
        rb_warn(rb, "redis: loading channel %s: unexpected reply", op->name);
        load_failed(op, HUB_ERR_BACKEND);
        return;
    }
    const redisReply *ev = r->element[0];
    if (ev->type == REDIS_REPLY_STRING)
        hub_cursor_parse(ev->str, ev->len, &evicted);
    size_t n = list->elements, k = 0;
    struct hub_entry *entries = xcalloc(n ? n : 1, sizeof(*entries));
    struct sbuf *bufs = xcalloc(n ? n : 1, sizeof(*bufs));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (redis_payload_parse_entry(list->element[i], &entries[k], &bufs[k]) == 0)
            k++;
        else
            bad++;
    }
    if (bad)
        rb_warn(rb, "redis: loading channel %s: %zu malformed entries ignored", op->name, bad);
    qsort(entries, k, sizeof(*entries), cmp_entry); /* XREVRANGE came newest first */
    /* The cache keeps what Redis keeps for this channel, not just the defaults. */
    uint64_t hs = redis_backend__reply_u64(r->element[1]),
             httl = redis_backend__reply_u64(r->element[3]);
    /* A window never PUT is the app's default, which the cache took when it was made. */
    uint64_t bms = redis_backend__reply_u64(r->element[4]);
    struct channel_opts o = {.has_history_size = hs > 0,
                             .history_size = (uint32_t)hs,
                             .has_history_ttl = httl > 0,
                             .history_ttl_ms = (uint32_t)httl,
                             .has_batch_ms = r->element[4]->len > 0,
                             .batch_ms = (uint32_t)MIN(bms, BATCH_MS_MAX),
                             .has_conflate = r->element[5]->len > 0,
                             .conflate = redis_backend__reply_u64(r->element[5]) == 1,
                             .has_presence = r->element[6]->len > 0,
                             .presence = redis_backend__reply_u64(r->element[6]) == 1};
    if (hub_channel_loaded(rb->hub, op->name, op->len, op->token, 0, entries, k, evicted, &o))
        reload_later(rb, op->name, op->len);
    for (size_t i = 0; i < n; i++)
        sbuf_free(&bufs[i]);
    free(bufs);
    free(entries);
    free(op);
}

/* Loads (first time) or gap-fills a channel's cache from its Stream; with `down`
 * (Redis is unreachable) the load fails at once, so that subscribers hear it now. */
static void load_channel(struct rb *rb, const char *name, size_t len, bool down)
{
    uint64_t last = 0, token = hub_channel_loading(rb->hub, name, len, &last);
    if (!token)
        return;
    struct load_op *op = xcalloc(1, sizeof(*op));
    op->rb = rb;
    op->token = token;
    memcpy(op->name, name, len);
    op->len = len;
    if (down) {
        load_reply(NULL, RESP_ENOTCONN, op);
        return;
    }
    char h[REDIS_KEY_MAX], o[REDIS_KEY_MAX], s[REDIS_KEY_MAX], e[64], after[24], hs[16], us[24];
    redis_backend__key(h, sizeof(h), name, len, 'h');
    redis_backend__key(o, sizeof(o), name, len, 'o');
    redis_backend__key(s, sizeof(s), name, len, 's');
    epoch_key_of(rb, e, sizeof(e), name, len);
    snprintf(after, sizeof(after), "%" PRIu64, last);
    bool create;
    uint32_t hsize, httl_ms;
    redis_backend__ns_defaults(rb, name, len, &create, &hsize, &httl_ms, NULL, NULL, NULL);
    snprintf(hs, sizeof(hs), "%u", hsize);
    snprintf(us, sizeof(us), "%" PRIu64, wall_us());
    /* One Redis: the last-id key too (see load_lua). */
    const char *argv[] = {rb->cluster ? "4" : "5", h,  o, s, e, "herald:{seq}:i", after,
                          create ? "1" : "0",      hs, us};
    int argc = (int)ARRAY_LEN(argv);
    if (rb->cluster) { /* no fifth key */
        memmove(&argv[5], &argv[6], 4 * sizeof(*argv));
        argc--;
    }
    if (redis_script_call(rb->bus, REDIS_SCRIPT_LOAD, h, strlen(h), load_reply, op, argc, argv,
                          NULL) < 0)
        load_reply(NULL, RESP_ENOTCONN, op);
}

/* Gap fills that failed go again after RELOAD_MS (or as soon as Redis is up). */
static void reload_later(struct rb *rb, const char *name, size_t len)
{
    if (!map_get(&rb->reload, name, len)) {
        struct reload *rl = xcalloc(1, sizeof(*rl));
        memcpy(rl->name, name, len);
        rl->len = len;
        rl->node = (struct map_node){.key = rl->name, .key_len = (uint32_t)len};
        map_put(&rb->reload, &rl->node);
    }
    if (!timer_armed(&rb->reload_timer))
        timer_start(&rb->loop, &rb->reload_timer, RELOAD_MS);
}

static void reload_cb(struct loop *loop, struct timer *t)
{
    struct rb *rb = container_of(t, struct rb, reload_timer);
    /* Take the set first: a load that fails at once puts its channel back. */
    size_t n = rb->reload.len, i = 0, b = 0;
    struct reload **all = xmalloc((n ? n : 1) * sizeof(*all));
    struct map_node *node, *next = NULL;
    while ((node = map_next(&rb->reload, &b, &next))) {
        map_del(&rb->reload, node);
        all[i++] = container_of(node, struct reload, node);
    }
    for (i = 0; i < n; i++) {
        load_channel(rb, all[i]->name, all[i]->len, false); /* not wanted any more: nothing */
        free(all[i]);
    }
    free(all);
}

static void on_subscribed(const char *channel, size_t channel_len, void *arg)
{
    struct rb *rb = arg;
    struct slice name;
    if (!bus_channel_name(channel, channel_len, &name))
        return;
    struct follow *f = follow_of(rb, name.data, name.len);
    if (f)
        f->subscribed = true;
    load_channel(rb, name.data, name.len, false);
}

/* ---- pattern heads (one Redis): PSUBSCRIBE herald:{head.*}:m ------------------------- */

/* A pattern head this node follows (hub_backend_ops.want_pattern). */
struct pfollow {
    struct map_node node; /* first: redis_bus__free_map frees the node pointer */
    bool confirmed;       /* its PSUBSCRIBE was confirmed once (a later one: re-established) */
    size_t hl;            /* the head's length: glob is "herald:{" head ".*}:m" or "*}:m" */
    char glob[];
};

/* The bus glob of head[0..hl): "herald:{APP~scores.*}:m", or for a wildcard-first head
 * ("APP~*") "herald:{APP~*}:m". Channel names and app names have no glob characters. */
static size_t glob_of(char *buf, size_t size, const char *head, size_t hl)
{
    bool broad = head[hl - 1] == '*';
    return (size_t)snprintf(buf, size, "herald:{%.*s%s}:m", (int)hl, head, broad ? "" : ".*");
}

/* The head of a glob that glob_of made; false for anything else. */
static bool head_of_glob(const char *glob, size_t len, struct slice *head)
{
    if (len < 12 || memcmp(glob, "herald:{", 8) != 0 || memcmp(glob + len - 3, "}:m", 3) != 0)
        return false;
    size_t hl = len - 11;
    if (hl >= 2 && glob[8 + hl - 2] == '.' && glob[8 + hl - 1] == '*')
        hl -= 2;
    *head = (struct slice){glob + 8, (uint32_t)hl};
    return true;
}

struct index_read {
    struct rb *rb;
    bool again;
    uint64_t last; /* the last id Redis gave, read before the index */
    size_t hl;
    char head[CHANNEL_KEY_MAX + 1];
};

static void index_read_reply(const redisReply *r, int status, void *arg)
{
    struct index_read *ir = arg;
    int err = redis_backend__script_error(ir->rb, r, status, "reading the listing index for ",
                                          ir->head, NULL, 0);
    if (!err && r->type != REDIS_REPLY_ARRAY)
        err = HUB_ERR_BACKEND;
    size_t n = err ? 0 : MIN(r->elements, (size_t)HUB_PATTERN_NAMES_MAX), k = 0;
    struct slice *names = xcalloc(n ? n : 1, sizeof(*names));
    for (size_t i = 0; i < n; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING)
            names[k++] = (struct slice){r->element[i]->str, (uint32_t)r->element[i]->len};
    hub_pattern_synced(ir->rb->hub, ir->head, ir->hl, err, ir->again, ir->last, names, k,
                       !err && r->elements > HUB_PATTERN_NAMES_MAX);
    free(names);
    free(ir);
}

/* The last id is in: the index now (every message up to that id is in a channel it
 * names, and every later one comes on the bus). */
static void last_id_reply(const redisReply *r, int status, void *arg)
{
    struct index_read *ir = arg;
    if (redis_backend__script_error(ir->rb, r, status, "reading the last id for ", ir->head, NULL,
                                    0)) {
        index_read_reply(NULL, RESP_ENOTCONN, ir);
        return;
    }
    ir->last = redis_backend__reply_u64(r);
    const char *head = ir->head;
    size_t hl = ir->hl;
    char ixk[REDIS_INDEX_KEY_MAX], lo[CHANNEL_KEY_MAX + 4], hi[CHANNEL_KEY_MAX + 4], max[16];
    size_t ixl = redis_backend__index_key(ixk, head, hl);
    if (head[hl - 1] == '*') { /* the app's index holds its channels only */
        snprintf(lo, sizeof(lo), "-");
        snprintf(hi, sizeof(hi), "+");
    } else { /* "head." up to "head/": '/' follows '.' */
        snprintf(lo, sizeof(lo), "[%.*s.", (int)hl, head);
        snprintf(hi, sizeof(hi), "(%.*s/", (int)hl, head);
    }
    snprintf(max, sizeof(max), "%d", HUB_PATTERN_NAMES_MAX + 1);
    const char *argv[] = {"ZRANGEBYLEX", ixk, lo, hi, "LIMIT", "0", max};
    if (redis_bus_command(ir->rb->bus, ixk, ixl, index_read_reply, ir, 7, argv, NULL) < 0)
        index_read_reply(NULL, RESP_ENOTCONN, ir);
}

/* The head's bus subscription is in place: Redis's last id, then the listing index for
 * the names of its channels (a channel's first publish adds it in the publish script,
 * see publish_lua), then the hub hears it is ready. */
static void read_index(struct rb *rb, const char *head, size_t hl, bool again)
{
    struct index_read *ir = xcalloc(1, sizeof(*ir));
    ir->rb = rb;
    ir->again = again;
    ir->hl = hl;
    memcpy(ir->head, head, hl);
    const char *argv[] = {"GET", "herald:{seq}:i"};
    if (redis_bus_command(rb->bus, argv[1], strlen(argv[1]), last_id_reply, ir, 2, argv, NULL) < 0)
        index_read_reply(NULL, RESP_ENOTCONN, ir);
}

static void on_psubscribed(const char *glob, size_t len, void *arg)
{
    struct rb *rb = arg;
    struct map_node *n = map_get(&rb->pfollows, glob, len);
    if (!n)
        return;
    struct pfollow *pf = container_of(n, struct pfollow, node);
    read_index(rb, pf->glob + 8, pf->hl, pf->confirmed);
    pf->confirmed = true;
}

static void on_pmessage(const char *glob, size_t glob_len, const char *channel, size_t channel_len,
                        const char *data, size_t len, void *arg)
{
    struct rb *rb = arg;
    struct slice head, name;
    if (!head_of_glob(glob, glob_len, &head) || !bus_channel_name(channel, channel_len, &name))
        return;
    struct hub_entry e;
    struct sbuf buf = {0};
    /* A closed channel's or a window's notice is its subscribers' by name; a malformed
     * message is reported by on_message, which gets it too or ignores it as nobody's. */
    if (redis_payload_parse_bus(data, len, &e, &buf) == REDIS_BUS_MESSAGE)
        hub_pattern_ingest(rb->hub, head.data, head.len, &name, e.channels, e.nchannels, e.seq,
                           e.time_ms, &e.req);
    sbuf_free(&buf);
}

struct want_task {
    struct task t;
    struct rb *rb;
    bool on, pattern;
    size_t len;
    char name[CHANNEL_KEY_MAX + 1]; /* a channel's key, or a pattern head */
};

/* want_run of a pattern head: its glob on the bus, then the index (read_index). */
static void pwant_run(struct want_task *pt)
{
    struct rb *rb = pt->rb;
    char glob[CHANNEL_KEY_MAX + 16];
    size_t gl = glob_of(glob, sizeof(glob), pt->name, pt->len);
    struct map_node *n = map_get(&rb->pfollows, glob, gl);
    if (!pt->on) {
        if (n) {
            map_del(&rb->pfollows, n);
            free(container_of(n, struct pfollow, node));
        }
        redis_bus_punsubscribe(rb->bus, glob, gl);
    } else {
        if (!n) {
            struct pfollow *pf = xcalloc(1, sizeof(*pf) + gl + 1);
            memcpy(pf->glob, glob, gl);
            pf->hl = pt->len;
            pf->node = (struct map_node){.key = pf->glob, .key_len = (uint32_t)gl};
            map_put(&rb->pfollows, &pf->node);
        }
        int rc = redis_bus_psubscribe(rb->bus, glob, gl);
        /* While Redis is down, subscribers hear so now; subscribed already (an earlier
         * index read failed), no on_psubscribed comes: read now. */
        if (rc < 0 || redis_bus_status(rb->bus) == REDIS_BUS_DOWN)
            hub_pattern_synced(rb->hub, pt->name, pt->len, HUB_ERR_BACKEND, false, 0, NULL, 0,
                               false);
        else if (rc == 1)
            read_index(rb, pt->name, pt->len, false);
    }
}

/* Logs the status if the log does not say it yet: the last "redis: ..." line says what
 * /stats says. */
static void log_status(struct rb *rb)
{
    static const char *names[] = {"down", "degraded", "up"};
    static const char *why[] = {
        " (publishes answer 503 until it is back)",
        " (a Redis Cluster master or a subscription is being recovered: publishes to its "
        "channels wait, then answer 503)",
        ""};
    enum redis_bus_status status = rb->status;
    if (status == rb->logged_status)
        return;
    log_msg(status == REDIS_BUS_UP ? LOG_INFO : LOG_WARN, "redis: %s%s", names[status],
            why[status]);
    rb->logged_status = status;
}

static void status_timer_cb(struct loop *loop, struct timer *t)
{
    log_status(container_of(t, struct rb, status_timer));
}

static void on_status(enum redis_bus_status status, void *arg)
{
    struct rb *rb = arg;
    rb->status = status;
    if (status == REDIS_BUS_DOWN) { /* subscriptions are made again, and say so */
        size_t b = 0;
        struct map_node *n, *next = NULL;
        while ((n = map_next(&rb->follows, &b, &next)))
            container_of(n, struct follow, node)->subscribed = false;
    }
    /* A cluster is degraded for a moment while it starts, or reconnects shard by shard:
     * worth a line only if it lasts. */
    if (status == REDIS_BUS_DEGRADED && rb->logged_status != REDIS_BUS_DEGRADED) {
        if (!timer_armed(&rb->status_timer))
            timer_start(&rb->loop, &rb->status_timer, STATUS_SETTLE_MS);
    } else {
        timer_stop(&rb->loop, &rb->status_timer);
        log_status(rb);
    }
    if (status == REDIS_BUS_UP && !rb->cluster)
        redis_script_load_all(rb->bus);
    if (status == REDIS_BUS_UP && rb->reload.len)
        timer_start(&rb->loop, &rb->reload_timer, 0);
    redis_presence__on_status(rb, status);
}

/* ---- hub backend ops ------------------------------------------------------------------ */

static void want_run(struct task *t)
{
    struct want_task *wt = (struct want_task *)t;
    struct rb *rb = wt->rb;
    if (wt->pattern) {
        pwant_run(wt);
        free(wt);
        return;
    }
    char m[REDIS_KEY_MAX];
    size_t ml = redis_backend__key(m, sizeof(m), wt->name, wt->len, 'm');
    struct follow *f = follow_of(rb, wt->name, wt->len);
    if (wt->on && !f) {
        f = xcalloc(1, sizeof(*f));
        memcpy(f->name, wt->name, wt->len);
        f->len = wt->len;
        f->node = (struct map_node){.key = f->name, .key_len = (uint32_t)wt->len};
        map_put(&rb->follows, &f->node);
    } else if (!wt->on && f) {
        release_all(rb, f);
        map_del(&rb->follows, &f->node);
        free(f);
    }
    if (wt->on) {
        int rc = redis_bus_subscribe(rb->bus, m, ml);
        /* While Redis is down, subscribers hear so now instead of waiting. Subscribed
         * already (an earlier load failed), no on_subscribed comes: load now. */
        bool down = redis_bus_status(rb->bus) == REDIS_BUS_DOWN;
        if (down || rc == 1)
            load_channel(rb, wt->name, wt->len, down);
    } else {
        redis_bus_unsubscribe(rb->bus, m, ml);
        /* This node's count goes now rather than when it expires: a channel that only
         * had subscribers then leaves nothing in Redis. Sent after any heartbeat that
         * counted them (same thread, same connection for the key). */
        char c[REDIS_KEY_MAX];
        redis_backend__key(c, sizeof(c), wt->name, wt->len, 'c');
        const char *argv[] = {"HDEL", c, rb->node};
        redis_bus_command(rb->bus, c, strlen(c), redis_backend__ignore_reply, rb, 3, argv, NULL);
    }
    free(wt);
}

static void post_want(void *be, const char *name, size_t len, bool on, bool pattern)
{
    struct want_task *wt = xcalloc(1, sizeof(*wt));
    wt->t.fn = want_run;
    wt->rb = be;
    wt->on = on;
    wt->pattern = pattern;
    wt->len = len;
    memcpy(wt->name, name, len);
    redis_backend__post(be, &wt->t);
}

static void be_want(void *be, const char *name, size_t len)
{
    post_want(be, name, len, true, false);
}

static void be_unwant(void *be, const char *name, size_t len)
{
    post_want(be, name, len, false, false);
}

static void be_want_pattern(void *be, const char *head, size_t len)
{
    post_want(be, head, len, true, true);
}

static void be_unwant_pattern(void *be, const char *head, size_t len)
{
    post_want(be, head, len, false, true);
}

/* A publish on its way: built on the worker, run on the backend thread. */
struct pub_task {
    struct task t;
    struct rb *rb;
    struct hub *hub; /* pub_answer may run after the backend stopped (hub_free) */
    int w;
    hub_publish_done *done;
    void *arg;
    struct publish_result res;
    int err;
    char detail[256]; /* res.detail */
    size_t n, pending;
    size_t next; /* Redis Cluster: the channel to store next (pub_store_next) */
    struct sbuf payload;
    char names[64][CHANNEL_KEY_MAX + 1];
    size_t lens[64];
    uint64_t hint;
};

/* Channels created by publishing join the listing index (at most once a minute per
 * channel and node: the index is only for listing). Backend thread. */
static void index_channel(struct rb *rb, const char *name, size_t len)
{
    uint64_t now = now_ms();
    if (rb->indexed.len > 100000)
        index_reset(rb);
    struct map_node *n = map_get(&rb->indexed, name, len);
    struct indexed *ix = n ? container_of(n, struct indexed, node) : NULL;
    if (ix && now - ix->at < 60000)
        return;
    if (!ix) {
        ix = xcalloc(1, sizeof(*ix));
        memcpy(ix->name, name, len);
        ix->node.key = ix->name;
        ix->node.key_len = (uint32_t)len;
        map_put(&rb->indexed, &ix->node);
    }
    ix->at = now;
    char ixk[REDIS_INDEX_KEY_MAX];
    size_t ixl = redis_backend__index_key(ixk, name, len);
    const char *argv[] = {"ZADD", ixk, "NX", "0", name};
    size_t argl[] = {4, ixl, 2, 1, len};
    redis_bus_command(rb->bus, ixk, ixl, redis_backend__ignore_reply, rb, 5, argv, argl);
}

static void pub_answer(void *arg)
{
    struct pub_task *pt = arg;
    pt->res.detail = pt->err == HUB_ERR_BACKEND && pt->detail[0] ? pt->detail : NULL;
    if (!pt->err)
        atomic_fetch_add(&pt->hub->stats.published, 1);
    pt->done(pt->arg, pt->err, &pt->res);
    sbuf_free(&pt->payload);
    free(pt);
}

static void pub_store_next(struct pub_task *pt);

/* script_error for a publish: keeps the first detail any of its scripts gave. */
static int pub_error(struct pub_task *pt, const redisReply *r, int status)
{
    char detail[sizeof(pt->detail)];
    int err = redis_backend__script_error(pt->rb, r, status, "publish failed", "", detail,
                                          sizeof(detail));
    if (detail[0] && !pt->detail[0])
        memcpy(pt->detail, detail, sizeof(detail));
    return err;
}

static void pub_reply(const redisReply *r, int status, void *arg)
{
    struct pub_task *pt = arg;
    int err = pub_error(pt, r, status);
    if (err) {
        pt->err = err;
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
               r->element[0]->type == REDIS_REPLY_STRING) {
        uint64_t id;
        if (hub_cursor_parse(r->element[0]->str, r->element[0]->len, &id) == 0) {
            if (!pt->res.id || id < pt->res.id)
                pt->res.id = id;
            pt->hint = MAX(pt->hint, id); /* the next channel takes it too, if it can */
        }
        pt->res.subscribers += (uint32_t)r->element[1]->integer;
    } else {
        rb_warn(pt->rb, "redis: publish failed: unexpected reply");
        pt->err = HUB_ERR_BACKEND;
    }
    if (--pt->pending)
        return;
    if (!pt->err && pt->next < pt->n) {
        pub_store_next(pt);
        return;
    }
    for (size_t i = 0; i < pt->n && !pt->err; i++)
        if (!chan_key_is_user(pt->names[i], pt->lens[i])) /* nobody lists users */
            index_channel(pt->rb, pt->names[i], pt->lens[i]);
    hub_post(pt->rb->hub, pt->w, pub_answer, pt);
}

/* The last-id key that orders channel i's messages: one for a single Redis (ids
 * order every message), the channel's own on a Redis Cluster. */
static void last_id_key(const struct pub_task *pt, size_t i, char *buf, size_t size)
{
    if (pt->rb->cluster)
        redis_backend__key(buf, size, pt->names[i], pt->lens[i], 'i');
    else
        snprintf(buf, size, "herald:{seq}:i");
}

/* Runs the publish script for channels [from, to) (one shard). */
static int pub_eval(struct pub_task *pt, size_t from, size_t to)
{
    struct rb *rb = pt->rb;
    size_t per = rb->cluster ? 2 : 3; /* keys per channel (see publish_lua) */
    size_t nk = 2 + per * (to - from) + !rb->cluster, argc = 1 + nk + 8 + (to - from);
    const char **argv = xcalloc(argc, sizeof(*argv));
    size_t *argl = xcalloc(argc, sizeof(*argl));
    char(*keys)[REDIS_KEY_MAX] = xcalloc(nk, sizeof(*keys));
    char numkeys[16], hint[24], hs[16], httl[16], ttl[16], now[24];
    size_t a = 0;
    snprintf(numkeys, sizeof(numkeys), "%zu", nk);
    argv[a++] = numkeys;
    last_id_key(pt, from, keys[0], sizeof(keys[0]));
    epoch_key_of(rb, keys[1], sizeof(keys[1]), pt->names[from], pt->lens[from]);
    for (size_t i = from; i < to; i++) {
        size_t k = 2 + per * (i - from);
        redis_backend__key(keys[k], sizeof(keys[k]), pt->names[i], pt->lens[i], 'h');
        redis_backend__key(keys[k + 1], sizeof(keys[k + 1]), pt->names[i], pt->lens[i], 'o');
        if (per == 3)
            redis_backend__key(keys[k + 2], sizeof(keys[k + 2]), pt->names[i], pt->lens[i], 's');
    }
    if (!rb->cluster) /* one Redis: the listing index (the channels are of one app) */
        redis_backend__index_key(keys[nk - 1], pt->names[from], pt->lens[from]);
    for (size_t k = 0; k < nk; k++)
        argv[a++] = keys[k];
    snprintf(hint, sizeof(hint), "%" PRIu64, pt->hint);
    bool create; /* the channels of one publish are of one app */
    uint32_t hsize, httl_ms;
    redis_backend__ns_defaults(rb, pt->names[from], pt->lens[from], &create, &hsize, &httl_ms, NULL,
                               NULL, NULL);
    snprintf(hs, sizeof(hs), "%u", hsize);
    snprintf(httl, sizeof(httl), "%u", httl_ms);
    snprintf(ttl, sizeof(ttl), "%u", rb->cfg->channel_ttl_ms);
    snprintf(now, sizeof(now), "%" PRIu64, wall_ms());
    argv[a++] = hint;
    argv[a] = pt->payload.data;
    argl[a++] = pt->payload.len;
    argv[a++] = create ? "1" : "0";
    argv[a++] = hs;
    argv[a++] = httl;
    argv[a++] = ttl;
    argv[a++] = now;
    argv[a++] = rb->cluster ? "SPUBLISH" : "PUBLISH";
    char(*bus)[REDIS_KEY_MAX] = xcalloc(to - from, sizeof(*bus));
    for (size_t i = from; i < to; i++) {
        redis_backend__key(bus[i - from], sizeof(bus[0]), pt->names[i], pt->lens[i], 'm');
        argv[a++] = bus[i - from];
    }
    for (size_t i = 0; i < a; i++)
        if (!argl[i])
            argl[i] = strlen(argv[i]);
    int rc = redis_script_call(rb->bus, REDIS_SCRIPT_PUBLISH, keys[2], strlen(keys[2]), pub_reply,
                               pt, (int)a, argv, argl);
    free(bus);
    free(keys);
    free(argl);
    free(argv);
    return rc;
}

/* Stores the message: one script for a single Redis, one per channel on a cluster
 * (each channel lives on its own shard). */
static void pub_store(struct pub_task *pt)
{
    if (pt->rb->cluster) {
        pub_store_next(pt);
        return;
    }
    pt->pending = 1;
    pt->next = pt->n;
    if (pub_eval(pt, 0, pt->n) < 0)
        pub_reply(NULL, RESP_ENOTCONN, pt);
}

/*
 * Redis Cluster: stores the message on the next of its channels. They go one after
 * the other, in the order the publisher gave them: a node that follows several of
 * them receives the copies in that order (from different shards, so only this
 * makes it so), and a connection holding several of them gets the message as the
 * first one's, as with one Redis. One round trip per channel; a failure stops the
 * rest.
 */
static void pub_store_next(struct pub_task *pt)
{
    size_t i = pt->next++;
    pt->pending = 1;
    if (pub_eval(pt, i, i + 1) < 0)
        pub_reply(NULL, RESP_ENOTCONN, pt);
}

static void prepare_reply(const redisReply *r, int status, void *arg)
{
    struct pub_task *pt = arg;
    uint64_t id;
    int err = pub_error(pt, r, status);
    if (!err && (r->type != REDIS_REPLY_STRING || hub_cursor_parse(r->str, r->len, &id) < 0)) {
        rb_warn(pt->rb, "redis: publish failed: unexpected reply");
        err = HUB_ERR_BACKEND;
    }
    if (err)
        pt->err = err == HUB_ERR_NOT_FOUND ? err : (pt->err ? pt->err : err);
    else
        pt->hint = MAX(pt->hint, id);
    if (--pt->pending)
        return;
    if (pt->err)
        hub_post(pt->rb->hub, pt->w, pub_answer, pt); /* nothing was stored */
    else
        pub_store(pt); /* every script takes the id all the channels can take */
}

/*
 * A publish to several channels of a Redis Cluster asks every shard first for the
 * smallest id its channel can take (and whether it exists), then stores it with
 * the largest: one id on every channel (one message for a connection holding
 * several), and all or nothing when a channel is missing. Another publish to one
 * of the channels between the two steps can still push that channel's id higher.
 */
static void pub_prepare(struct pub_task *pt)
{
    pt->pending = pt->n;
    for (size_t i = 0; i < pt->n; i++) {
        char ikey[REDIS_KEY_MAX], ekey[64], o[REDIS_KEY_MAX];
        last_id_key(pt, i, ikey, sizeof(ikey));
        epoch_key_of(pt->rb, ekey, sizeof(ekey), pt->names[i], pt->lens[i]);
        redis_backend__key(o, sizeof(o), pt->names[i], pt->lens[i], 'o');
        bool create;
        uint32_t hsize, httl_ms;
        redis_backend__ns_defaults(pt->rb, pt->names[i], pt->lens[i], &create, &hsize, &httl_ms,
                                   NULL, NULL, NULL);
        const char *argv[] = {"3", ikey, ekey, o, create ? "1" : "0"};
        if (redis_script_call(pt->rb->bus, REDIS_SCRIPT_PREPARE, o, strlen(o), prepare_reply, pt,
                              (int)ARRAY_LEN(argv), argv, NULL) < 0)
            prepare_reply(NULL, RESP_ENOTCONN, pt);
    }
}

static void pub_go(struct pub_task *pt)
{
    if (pt->rb->cluster && pt->n > 1)
        pub_prepare(pt);
    else
        pub_store(pt);
}

/* The app's plan, counted over the cluster, let the publish through (or not). */
static void pub_gated(void *arg, int err)
{
    struct pub_task *pt = arg;
    if (!err)
        return pub_go(pt);
    pt->err = err;
    hub_post(pt->hub, pt->w, pub_answer, pt); /* nothing was stored */
}

static void pub_run(struct task *t)
{
    struct pub_task *pt = (struct pub_task *)t;
    if (!redis_apps__gate(pt->rb, pt->names, pt->lens, pt->n, true, pub_gated, pt))
        pub_go(pt);
}

static void be_publish(void *be, int w, const struct slice *channels, size_t n,
                       const struct publish_req *req, hub_publish_done *done, void *arg)
{
    struct rb *rb = be;
    struct pub_task *pt = xcalloc(1, sizeof(*pt));
    pt->t.fn = pub_run;
    pt->rb = rb;
    pt->hub = rb->hub;
    pt->w = w;
    pt->done = done;
    pt->arg = arg;
    pt->n = n;
    for (size_t i = 0; i < n; i++) {
        memcpy(pt->names[i], channels[i].data, channels[i].len);
        pt->lens[i] = channels[i].len;
    }
    uint64_t now = wall_ms();
    redis_payload_build(&pt->payload, channels, n, req, now);
    /* The publisher's clock in µs: ids stay close to time across shards. */
    pt->hint = wall_us();
    redis_backend__post(rb, &pt->t);
}

/* ---- heartbeat: cluster-wide subscriber counts, channel keep-alive ------------------- */

static void heartbeat_cb(struct loop *loop, struct timer *t)
{
    struct rb *rb = container_of(t, struct rb, heartbeat);
    struct hub *hub = rb->hub;
    uint64_t now = wall_ms(), count_ttl = (uint64_t)rb->cfg->cluster_heartbeat_ms * COUNT_TTL_BEATS;
    char val[48], exp[24], ttl[16], nowbuf[24];
    snprintf(val, sizeof(val), "%" PRIu64, now + count_ttl);
    snprintf(exp, sizeof(exp), "%" PRIu64, count_ttl);
    snprintf(ttl, sizeof(ttl), "%u", rb->cfg->channel_ttl_ms);
    snprintf(nowbuf, sizeof(nowbuf), "%" PRIu64, now);
    /* Snapshot the channels with local subscribers, then talk to Redis unlocked. */
    size_t cap = 64, n = 0;
    struct {
        char name[CHANNEL_KEY_MAX + 1];
        size_t len;
        uint32_t subs;
    } *list = xmalloc(cap * sizeof(*list));
    hub_lock(hub);
    size_t b = 0;
    struct map_node *node, *next = NULL;
    while ((node = map_next(&hub->channels, &b, &next))) {
        struct channel *ch = container_of(node, struct channel, node);
        if (!ch->subscribers)
            continue;
        if (n == cap)
            list = xrealloc(list, (cap *= 2) * sizeof(*list));
        memcpy(list[n].name, ch->name, ch->name_len + 1);
        list[n].len = ch->name_len;
        list[n++].subs = ch->subscribers;
    }
    hub_unlock(hub);
    for (size_t i = 0; i < n; i++) {
        char c[REDIS_KEY_MAX], o[REDIS_KEY_MAX], count[64];
        redis_backend__key(c, sizeof(c), list[i].name, list[i].len, 'c');
        redis_backend__key(o, sizeof(o), list[i].name, list[i].len, 'o');
        snprintf(count, sizeof(count), "%u %s", list[i].subs, val);
        const char *argv[] = {"2", c, o, rb->node, count, exp, ttl, nowbuf};
        redis_script_call(rb->bus, REDIS_SCRIPT_BEAT, c, strlen(c), redis_backend__ignore_reply, rb,
                          8, argv, NULL);
    }
    free(list);
    /* This node is alive until the expiry it announces. */
    char score[24];
    snprintf(score, sizeof(score), "%" PRIu64, now + count_ttl);
    const char *zargv[] = {"ZADD", "herald:nodes", score, rb->node};
    redis_bus_command(rb->bus, "herald:nodes", 12, redis_backend__ignore_reply, rb, 4, zargv, NULL);
    const char *rargv[] = {"ZREMRANGEBYSCORE", "herald:nodes", "-inf", nowbuf};
    redis_bus_command(rb->bus, "herald:nodes", 12, redis_backend__ignore_reply, rb, 4, rargv, NULL);
    timer_start(loop, t, rb->cfg->cluster_heartbeat_ms);
}

static void be_stats_json(void *be, struct sbuf *b)
{
    struct rb *rb = be;
    static const char *names[] = {"down", "degraded", "up"};
    sbuf_printf(b, ",\"cluster\":{\"backend\":\"%s\",\"redis\":\"%s\"}",
                rb->cluster ? "redis-cluster" : "redis", names[atomic_load(&rb->status)]);
}

static void be_node_stats_put(void *be, const char *json, size_t len)
{
    redis_nodes__put(be, json, len);
}

static size_t be_node_stats_get(void *be, struct sbuf *b)
{
    return redis_nodes__get(be, b);
}

static bool be_ready(void *be)
{
    struct rb *rb = be;
    return atomic_load(&rb->status) != REDIS_BUS_DOWN;
}

static const struct hub_backend_ops redis_ops = {
    .ready = be_ready,
    .want = be_want,
    .unwant = be_unwant,
    .want_pattern = be_want_pattern,
    .unwant_pattern = be_unwant_pattern,
    .publish = be_publish,
    .channel_put = redis_channels_put,
    .channel_get = redis_channels_get,
    .channel_delete = redis_channels_delete,
    .channel_list = redis_channels_list,
    .stats_json = be_stats_json,
    .node_stats_put = be_node_stats_put,
    .node_stats_get = be_node_stats_get,
    .presence_set = redis_presence__set,
    .presence_get = redis_presence__get,
};

/* ---- start / stop -------------------------------------------------------------------- */

static void *rb_main(void *arg)
{
    struct rb *rb = arg;
    pthread_setname_np(pthread_self(), "herald-redis");
    timer_start(&rb->loop, &rb->heartbeat, 100);
    redis_presence__start(rb);
    while (!atomic_load(&rb->stop))
        loop_run_once(&rb->loop, 1000);
    return NULL;
}

/* Parses redis[s]://[[user]:password@]host[:port][/db] (TLS is the caller's business).
 * Returns 0 or -1. */
static int parse_url(const char *url, char *host, size_t host_size, int *port, int *db, char *user,
                     char *password, size_t pw_size)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) == 0)
        p += 8;
    else if (strncmp(p, "rediss://", 9) == 0)
        p += 9;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            snprintf(user, 128, "%.*s", (int)(colon - p), p);
            snprintf(password, pw_size, "%.*s", (int)(at - colon - 1), colon + 1);
        } else {
            snprintf(password, pw_size, "%.*s", (int)(at - p), p);
        }
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    size_t hp = slash ? (size_t)(slash - p) : strlen(p);
    const char *colon = memchr(p, ':', hp);
    size_t hl = colon ? (size_t)(colon - p) : hp;
    if (!hl || hl >= host_size)
        return -1;
    memcpy(host, p, hl);
    host[hl] = '\0';
    *port = colon ? atoi(colon + 1) : 6379;
    *db = slash ? atoi(slash + 1) : 0;
    return *port > 0 && *port < 65536 ? 0 : -1;
}

int redis_backend_start(struct hub *hub, const struct herald_config *cfg)
{
    redis_script_init();
    struct rb *rb = xcalloc(1, sizeof(*rb));
    rb->hub = hub;
    rb->cfg = cfg;
    rb->cluster = cfg->redis_cluster[0] != '\0';
    hub->ids_per_channel = rb->cluster;
    map_init(&rb->indexed, 1024);
    map_init(&rb->reload, 64);
    map_init(&rb->follows, 64);
    map_init(&rb->pfollows, 16);
    list_init(&rb->holding);
    timer_init(&rb->order_timer, order_timer_cb);
    timer_init(&rb->reload_timer, reload_cb);
    timer_init(&rb->warn_timer, warn_timer_cb);
    timer_init(&rb->status_timer, status_timer_cb);
    if (rb->cluster)
        rb->epoch_tag = epoch_tags_new();
    snprintf(rb->node, sizeof(rb->node), "%s", cfg->node_name);
    pthread_mutex_init(&rb->qlock, NULL);
    if (loop_init(&rb->loop) < 0) {
        free(rb);
        return -1;
    }
    rb->loop.on_wake = rb_on_wake;
    rb->loop.on_wake_arg = rb;
    timer_init(&rb->heartbeat, heartbeat_cb);
    redis_nodes__init(rb);
    redis_presence__init(rb);
    char user[128] = "", password[256] = "";
    snprintf(password, sizeof(password), "%s", cfg->redis_password);
    struct redis_bus_opts opts = {.name = rb->node,
                                  .connect_timeout_ms = cfg->redis_timeout_ms,
                                  .command_timeout_ms = cfg->redis_timeout_ms};
    struct resp_tls_opts tls = {
        .ca_file = cfg->redis_tls_ca[0] ? cfg->redis_tls_ca : NULL,
        .cert_file = cfg->redis_tls_cert[0] ? cfg->redis_tls_cert : NULL,
        .key_file = cfg->redis_tls_key[0] ? cfg->redis_tls_key : NULL,
        .server_name = cfg->redis_tls_server_name[0] ? cfg->redis_tls_server_name : NULL,
        .insecure = cfg->redis_tls_insecure};
    if (cfg->redis_tls || strncmp(cfg->redis_url, "rediss://", 9) == 0)
        opts.tls = &tls;
    if (opts.tls && tls.insecure)
        log_warn("--redis-tls-insecure: the Redis certificate and name are NOT verified: anyone "
                 "on the network path can pose as Redis and read or change every message");
    else if (!opts.tls && (tls.ca_file || tls.cert_file || tls.server_name || tls.insecure))
        log_warn("--redis-tls-* options are ignored: TLS to Redis is off (use rediss:// or "
                 "--redis-tls)");
    struct redis_bus_callbacks cbs = {.on_message = on_message,
                                      .on_subscribed = on_subscribed,
                                      .on_pmessage = on_pmessage,
                                      .on_psubscribed = on_psubscribed,
                                      .on_status = on_status,
                                      .arg = rb};
    if (rb->cluster) {
        opts.password = password[0] ? password : NULL;
        rb->bus = redis_bus_cluster_new(&rb->loop, cfg->redis_cluster, &opts, &cbs);
    } else {
        char host[256];
        int port, db;
        int rc = parse_url(cfg->redis_url, host, sizeof(host), &port, &db, user, password,
                           sizeof(password));
        if (rc < 0) {
            log_error("--redis %s: expected redis://[:password@]host[:port][/db]", cfg->redis_url);
        } else {
            opts.username = user[0] ? user : NULL;
            opts.password = password[0] ? password : NULL;
            opts.db = db;
            rb->bus = redis_bus_single_new(&rb->loop, host, port, &opts, &cbs);
        }
    }
    if (!rb->bus) {
        loop_free(&rb->loop);
        redis_nodes__free(rb);
        redis_presence__free(rb);
        free(rb);
        return -1;
    }
    hub->be_ops = &redis_ops;
    hub->be = rb;
    if (pthread_create(&rb->thread, NULL, rb_main, rb) != 0) {
        log_error("cannot start the Redis thread");
        return -1;
    }
    return 0;
}

void redis_backend_stop(struct hub *hub)
{
    struct rb *rb = hub->be;
    if (!rb)
        return;
    atomic_store(&rb->stop, true);
    loop_wake(&rb->loop);
    pthread_join(rb->thread, NULL);
    /* The workers have stopped, their loops not yet freed (server_join): what they asked
     * for is answered through their inboxes, with an error when nothing came from Redis,
     * and server_free runs those answers. Work still queued runs first, so that it is
     * answered too. */
    rb_on_wake(&rb->loop, rb);
    timer_stop(&rb->loop, &rb->heartbeat);
    redis_presence__stop(rb);
    timer_stop(&rb->loop, &rb->reload_timer);
    timer_stop(&rb->loop, &rb->warn_timer);
    timer_stop(&rb->loop, &rb->status_timer);
    timer_stop(&rb->loop, &rb->order_timer);
    redis_apps__stop(rb);
    for (size_t i = 0; i < WARN_SLOTS; i++)
        if (rb->warns[i].line[0])
            warn_summary(&rb->warns[i]);
    redis_bus_free(rb->bus);
    /* Let the deferred free run: commands still waiting get RESP_ECANCELED. */
    for (int i = 0; i < 3; i++)
        loop_run_once(&rb->loop, 0);
    assert(!rb->q_head); /* nobody posts to the backend once the workers are gone */
    /* A subscription Redis never confirmed (a Redis that stopped answering) has no load
     * to fail: what waits for it is answered here. */
    hub_fail_parked(hub, HUB_ERR_BACKEND);
    timer_stop(&rb->loop, &rb->reload_timer);
    loop_free(&rb->loop);
    index_reset(rb);
    map_free(&rb->indexed);
    redis_bus__free_map(&rb->reload);
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&rb->follows, &b, &next))) {
        struct follow *f = container_of(n, struct follow, node);
        for (struct held *h = f->head, *hn; h; h = hn) {
            hn = h->next;
            sbuf_free(&h->json);
            free(h);
        }
    }
    redis_bus__free_map(&rb->follows);
    redis_bus__free_map(&rb->pfollows);
    free(rb->epoch_tag);
    redis_nodes__free(rb);
    redis_presence__free(rb);
    pthread_mutex_destroy(&rb->qlock);
    free(rb);
    hub->be = NULL;
    hub->be_ops = NULL;
}
