/*
 * redis_presence: presence across nodes (docs/cluster.md#presence). Each node keeps
 * its own counts (src/hub/presence.c) and tells Redis every change of them; Redis
 * keeps, per channel and on the channel's slot,
 *
 *     herald:{ch}:p   hash "<identity>\n<kind><user>" -> count: every node's counts
 *     herald:{ch}:t   hash user -> total over the identities (joins and leaves)
 *     herald:{ch}:u   hash user -> info (the first connection's, while the user is on)
 *
 * and the scripts that change them publish "X join" / "X leave" on the channel's
 * bus when a user's total leaves or reaches 0, so that every node following the
 * channel tells its subscribers (hub_presence_event).
 *
 * Node leases. A node writes under an *identity*, its name and a random tag
 * ("push-1#9f3c…"), registered in herald:{presence}:nodes, with a lease key
 * herald:{presence}:l:<identity> of LEASE_MS renewed every TICK_MS; the channels
 * it has entries on are listed in herald:{presence}:c:<identity>. The same tick
 * answers which registered identities hold no lease: their entries are ignored by
 * readers from then on (a read passes the dead identities), and swept by every
 * surviving node that sees them (idempotent: an entry goes once, its leaves are
 * published once), channel by channel, after which the identity is unregistered.
 * So a node killed outright has its users leave within LEASE_MS + TICK_MS (plus a
 * Redis round trip per channel): 6 s.
 *
 * A node takes a new identity (and writes all it counts again under it, then
 * drops the old one's lease so that it is swept) when it starts, when its lease was
 * lost (it expired while Redis was away, or another node swept it) and when the
 * bus comes back after an outage (a change written meanwhile may be lost): the
 * old identity's entries count until the new ones are in, so users who stayed
 * neither leave nor join again.
 *
 * Everything here runs on the backend thread but redis_presence__set and __get,
 * which queue tasks.
 */
#include "cluster/redis_backend_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/rand.h>

#include "cluster/redis_payload.h"
#include "cluster/redis_scripts.h"
#include "core/log.h"

#define TICK_MS      1000
#define LEASE_MS     5000
#define REGISTRY_KEY "herald:{presence}:nodes"
#define LEASE_PREFIX "herald:{presence}:l:"
#define INDEX_PREFIX "herald:{presence}:c:"
#define IDENTITY_MAX (64 + 1 + 16 + 1)
#define MAX_DEAD     256

struct indexed_chan {
    struct map_node node;
    char name[];
};

struct rpresence {
    struct rb *rb;
    char ident[IDENTITY_MAX];    /* the identity the node writes under now */
    char old[IDENTITY_MAX];      /* the one it dropped, its lease to delete ("" : none) */
    bool leased;                 /* ident held a lease (a tick renewed it) */
    bool registered;             /* ident was registered with a lease, by a tick or a write */
    bool ticking;                /* a tick is in flight */
    bool resync;                 /* write everything again under a new identity, next tick */
    bool was_down;               /* the bus went down since the last resync */
    char sweeping[IDENTITY_MAX]; /* a dead identity being swept ("" : none) */
    size_t sweep_pending;        /* its channel sweeps in flight */
    bool sweep_failed;
    struct map indexed;         /* struct indexed_chan: channels in ident's index */
    char (*dead)[IDENTITY_MAX]; /* the identities the last tick found without a lease */
    size_t ndead;
    struct timer timer;
};

static struct rpresence *rp_of(struct rb *rb)
{
    return rb->presence;
}

static void new_identity(struct rb *rb)
{
    struct rpresence *rp = rp_of(rb);
    unsigned char tag[8];
    if (RAND_bytes(tag, sizeof(tag)) != 1) /* cannot happen on Linux; the clock will do */
        memcpy(tag, &(uint64_t){wall_us()}, sizeof(tag));
    char hex[17];
    for (size_t i = 0; i < sizeof(tag); i++)
        snprintf(hex + 2 * i, 3, "%02x", tag[i]);
    snprintf(rp->ident, sizeof(rp->ident), "%.64s#%s", rb->node, hex);
    rp->leased = rp->registered = false;
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&rp->indexed, &b, &next))) {
        map_del(&rp->indexed, n);
        free(container_of(n, struct indexed_chan, node));
    }
}

static const char *verb(const struct rb *rb)
{
    return rb->cluster ? "SPUBLISH" : "PUBLISH";
}

/* ---- a node's counts ---------------------------------------------------------------- */

/* Registers ident with a lease, unless a tick did: a node that writes and dies before its
 * first tick is swept too. */
static void ensure_registered(struct rb *rb)
{
    struct rpresence *rp = rp_of(rb);
    if (rp->registered)
        return;
    rp->registered = true;
    char key[sizeof(LEASE_PREFIX) + IDENTITY_MAX], ms[16];
    snprintf(key, sizeof(key), LEASE_PREFIX "%s", rp->ident);
    snprintf(ms, sizeof(ms), "%d", LEASE_MS);
    const char *set[] = {"SET", key, "1", "PX", ms};
    redis_bus_command(rb->bus, key, strlen(key), redis_backend__ignore_reply, rb, 5, set, NULL);
    const char *sadd[] = {"SADD", REGISTRY_KEY, rp->ident};
    redis_bus_command(rb->bus, REGISTRY_KEY, sizeof(REGISTRY_KEY) - 1, redis_backend__ignore_reply,
                      rb, 3, sadd, NULL);
}

/* Keeps ident's index of channels in step: SADD before the first entry on a channel
 * (a node that dies right after still gets swept there), SREM after the last. */
static void index_channel(struct rb *rb, const char *name, size_t len, bool has)
{
    struct rpresence *rp = rp_of(rb);
    struct map_node *n = map_get(&rp->indexed, name, len);
    if (has == (n != NULL))
        return;
    if (has)
        ensure_registered(rb);
    char key[sizeof(INDEX_PREFIX) + IDENTITY_MAX];
    int kl = snprintf(key, sizeof(key), INDEX_PREFIX "%s", rp->ident);
    const char *argv[] = {has ? "SADD" : "SREM", key, name};
    size_t argl[] = {4, (size_t)kl, len};
    redis_bus_command(rb->bus, key, (size_t)kl, redis_backend__ignore_reply, rb, 3, argv, argl);
    if (has) {
        struct indexed_chan *ic = xmalloc(sizeof(*ic) + len + 1);
        memcpy(ic->name, name, len);
        ic->name[len] = '\0';
        ic->node.key = ic->name;
        ic->node.key_len = (uint32_t)len;
        map_put(&rp->indexed, &ic->node);
    } else {
        map_del(&rp->indexed, n);
        free(container_of(n, struct indexed_chan, node));
    }
}

/* Writes one count of this node (see presence_set_lua). Backend thread. */
static void write_count(struct rb *rb, const char *name, size_t len, char kind, const char *user,
                        size_t user_len, uint32_t conns, const char *info, size_t info_len,
                        uint32_t chan_conns)
{
    struct rpresence *rp = rp_of(rb);
    if (chan_conns)
        index_channel(rb, name, len, true);
    char p[REDIS_KEY_MAX], t[REDIS_KEY_MAX], u[REDIS_KEY_MAX], m[REDIS_KEY_MAX], count[16];
    redis_backend__key(p, sizeof(p), name, len, 'p');
    redis_backend__key(t, sizeof(t), name, len, 't');
    redis_backend__key(u, sizeof(u), name, len, 'u');
    redis_backend__key(m, sizeof(m), name, len, 'm');
    snprintf(count, sizeof(count), "%u", conns);
    char k[2] = {kind, '\0'};
    const char *argv[] = {
        "3", p, t, u, rp->ident, k, user ? user : "", count, info ? info : "", verb(rb), m};
    size_t argl[ARRAY_LEN(argv)];
    for (size_t i = 0; i < ARRAY_LEN(argv); i++) /* user and info: bytes, not strings */
        argl[i] = i == 6 ? user_len : i == 8 ? (info ? info_len : 0) : strlen(argv[i]);
    redis_script_call(rb->bus, REDIS_SCRIPT_PRESENCE_SET, p, strlen(p), redis_backend__ignore_reply,
                      rb, (int)ARRAY_LEN(argv), argv, argl);
    if (!chan_conns)
        index_channel(rb, name, len, false);
}

/* One count of this node's, copied: posted to the backend thread by redis_presence__set,
 * or kept for resync. */
struct set_task {
    struct task t;
    struct rb *rb;
    char kind;
    uint32_t conns, chan_conns;
    size_t len, user_len, info_len;
    char *name, *user, *info; /* in the same allocation */
};

static void set_run(struct task *t)
{
    struct set_task *st = container_of(t, struct set_task, t);
    write_count(st->rb, st->name, st->len, st->kind, st->user, st->user_len, st->conns, st->info,
                st->info_len, st->chan_conns);
    free(st);
}

static struct set_task *set_task_new(struct rb *rb, const char *name, size_t len, char kind,
                                     const char *user, size_t user_len, uint32_t conns,
                                     const char *info, size_t info_len, uint32_t chan_conns)
{
    struct set_task *st = xmalloc(sizeof(*st) + len + user_len + info_len + 3);
    *st = (struct set_task){.t.fn = set_run,
                            .rb = rb,
                            .kind = kind,
                            .conns = conns,
                            .chan_conns = chan_conns,
                            .len = len,
                            .user_len = user_len,
                            .info_len = info ? info_len : 0};
    st->name = (char *)(st + 1);
    st->user = st->name + len + 1;
    st->info = st->user + user_len + 1;
    memcpy(st->name, name, len);
    if (user_len)
        memcpy(st->user, user, user_len);
    if (st->info_len)
        memcpy(st->info, info, st->info_len);
    st->name[len] = st->user[user_len] = st->info[st->info_len] = '\0';
    return st;
}

void redis_presence__set(void *be, const char *name, size_t len, char kind, const char *user,
                         size_t user_len, uint32_t conns, const char *info, size_t info_len,
                         uint32_t chan_conns)
{
    struct rb *rb = be;
    struct set_task *st =
        set_task_new(rb, name, len, kind, user, user_len, conns, info, info_len, chan_conns);
    redis_backend__post(rb, &st->t);
}

/* ---- the tick: lease, dead identities, sweeps ------------------------------------------ */

struct snapshot {
    struct rb *rb;
    struct set_task **v;
    size_t n, cap;
};

static void snap_one(void *arg, const char *name, size_t len, char kind, const char *user,
                     size_t user_len, uint32_t conns, const char *info, size_t info_len,
                     uint32_t chan_conns)
{
    struct snapshot *sn = arg;
    if (sn->n == sn->cap)
        sn->v = xrealloc(sn->v, (sn->cap = sn->cap ? sn->cap * 2 : 64) * sizeof(*sn->v));
    sn->v[sn->n++] =
        set_task_new(sn->rb, name, len, kind, user, user_len, conns, info, info_len, chan_conns);
}

/* Everything the node counts, written again under a new identity; the old one's lease
 * goes after it (tick_reply), so that the next tick (of any node) sweeps the old entries. */
static void resync(struct rb *rb)
{
    struct rpresence *rp = rp_of(rb);
    if (rp->leased)
        memcpy(rp->old, rp->ident, sizeof(rp->old));
    new_identity(rb);
    log_info("presence: writing this node's counts as %s", rp->ident);
    struct snapshot sn = {.rb = rb};
    hub_presence_snapshot(rb->hub, snap_one, &sn); /* copied under the hub lock, sent after */
    for (size_t i = 0; i < sn.n; i++)
        set_run(&sn.v[i]->t); /* writes and frees */
    free(sn.v);
}

static void sweep_done(struct rb *rb)
{
    struct rpresence *rp = rp_of(rb);
    if (!rp->sweep_failed) {
        char key[sizeof(INDEX_PREFIX) + IDENTITY_MAX];
        snprintf(key, sizeof(key), INDEX_PREFIX "%s", rp->sweeping);
        const char *del[] = {"DEL", key};
        redis_bus_command(rb->bus, key, strlen(key), redis_backend__ignore_reply, rb, 2, del, NULL);
        const char *srem[] = {"SREM", REGISTRY_KEY, rp->sweeping};
        redis_bus_command(rb->bus, REGISTRY_KEY, sizeof(REGISTRY_KEY) - 1,
                          redis_backend__ignore_reply, rb, 3, srem, NULL);
        log_info("presence: node identity %s held no lease: its entries are swept", rp->sweeping);
    }
    rp->sweeping[0] = '\0';
}

static void sweep_reply(const redisReply *r, int status, void *arg)
{
    struct rb *rb = arg;
    struct rpresence *rp = rp_of(rb);
    if (status || !r || r->type == REDIS_REPLY_ERROR) {
        rp->sweep_failed = true;
        redis_backend__ignore_reply(r, status, rb);
    }
    if (--rp->sweep_pending == 0)
        sweep_done(rb);
}

static void index_reply(const redisReply *r, int status, void *arg)
{
    struct rb *rb = arg;
    struct rpresence *rp = rp_of(rb);
    if (status || !r || r->type != REDIS_REPLY_ARRAY) {
        redis_backend__ignore_reply(r, status, rb);
        rp->sweeping[0] = '\0'; /* the next tick tries again */
        return;
    }
    rp->sweep_failed = false;
    rp->sweep_pending = 1; /* this call's own, released below */
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !hub_channel_key_valid(e->str, e->len))
            continue;
        char p[REDIS_KEY_MAX], t[REDIS_KEY_MAX], u[REDIS_KEY_MAX], m[REDIS_KEY_MAX];
        redis_backend__key(p, sizeof(p), e->str, e->len, 'p');
        redis_backend__key(t, sizeof(t), e->str, e->len, 't');
        redis_backend__key(u, sizeof(u), e->str, e->len, 'u');
        redis_backend__key(m, sizeof(m), e->str, e->len, 'm');
        const char *argv[] = {"3", p, t, u, rp->sweeping, verb(rb), m};
        if (redis_script_call(rb->bus, REDIS_SCRIPT_PRESENCE_SWEEP, p, strlen(p), sweep_reply, rb,
                              (int)ARRAY_LEN(argv), argv, NULL) == 0)
            rp->sweep_pending++;
        else
            rp->sweep_failed = true;
    }
    if (--rp->sweep_pending == 0)
        sweep_done(rb);
}

/* Sweeps the dead identity id (one at a time). */
static void sweep(struct rb *rb, const char *id, size_t len)
{
    struct rpresence *rp = rp_of(rb);
    if (rp->sweeping[0] || len >= IDENTITY_MAX)
        return;
    memcpy(rp->sweeping, id, len);
    rp->sweeping[len] = '\0';
    char key[sizeof(INDEX_PREFIX) + IDENTITY_MAX];
    snprintf(key, sizeof(key), INDEX_PREFIX "%s", rp->sweeping);
    const char *argv[] = {"SMEMBERS", key};
    if (redis_bus_command(rb->bus, key, strlen(key), index_reply, rb, 2, argv, NULL) < 0)
        rp->sweeping[0] = '\0';
}

static void tick_reply(const redisReply *r, int status, void *arg)
{
    struct rb *rb = arg;
    struct rpresence *rp = rp_of(rb);
    rp->ticking = false;
    if (status || !r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        redis_backend__ignore_reply(r, status, rb);
        return;
    }
    if (redis_backend__reply_u64(r->element[0]) == 1) {
        log_warn("presence: this node's lease (%s) was lost while Redis was out of reach: its "
                 "users may have left and joined again",
                 rp->ident);
        rp->leased = false;
        rp->resync = true;
        timer_start(&rb->loop, &rp->timer, 0);
        return;
    }
    rp->leased = rp->registered = true;
    if (rp->old[0]) { /* the new identity's entries are in: the old ones can go */
        char key[sizeof(LEASE_PREFIX) + IDENTITY_MAX];
        snprintf(key, sizeof(key), LEASE_PREFIX "%s", rp->old);
        const char *argv[] = {"DEL", key};
        redis_bus_command(rb->bus, key, strlen(key), redis_backend__ignore_reply, rb, 2, argv,
                          NULL);
        rp->old[0] = '\0';
    }
    const redisReply *dead = r->element[1];
    rp->ndead = 0;
    for (size_t i = 0; i < dead->elements; i++) {
        const redisReply *e = dead->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len >= IDENTITY_MAX ||
            strcmp(e->str, rp->ident) == 0)
            continue;
        if (rp->ndead < MAX_DEAD) {
            memcpy(rp->dead[rp->ndead], e->str, e->len);
            rp->dead[rp->ndead++][e->len] = '\0';
        }
        sweep(rb, e->str, e->len);
    }
}

static void tick_cb(struct loop *loop, struct timer *t)
{
    struct rpresence *rp = container_of(t, struct rpresence, timer);
    struct rb *rb = rp->rb;
    timer_start(loop, t, TICK_MS);
    if (atomic_load(&rb->status) == REDIS_BUS_DOWN || rp->ticking)
        return;
    if (rp->resync) {
        rp->resync = false;
        resync(rb);
    }
    char lease_ms[16];
    snprintf(lease_ms, sizeof(lease_ms), "%d", LEASE_MS);
    const char *argv[] = {"1",       REGISTRY_KEY, LEASE_PREFIX,
                          rp->ident, lease_ms,     rp->leased ? "1" : "0"};
    rp->ticking = redis_script_call(rb->bus, REDIS_SCRIPT_PRESENCE_TICK, REGISTRY_KEY,
                                    sizeof(REGISTRY_KEY) - 1, tick_reply, rb, (int)ARRAY_LEN(argv),
                                    argv, NULL) == 0;
}

void redis_presence__on_status(struct rb *rb, enum redis_bus_status status)
{
    struct rpresence *rp = rp_of(rb);
    if (!rp)
        return;
    if (status == REDIS_BUS_DOWN)
        rp->was_down = true;
    if (status == REDIS_BUS_UP && rp->was_down) {
        /* What was written while it was away may be lost: all of it again. */
        rp->was_down = false;
        rp->resync = true;
        timer_start(&rb->loop, &rp->timer, 0);
    }
}

/* ---- reading --------------------------------------------------------------------------- */

struct get_task {
    struct task t;
    struct rb *rb;
    int w;
    hub_presence_done *done;
    void *arg;
    int err;
    bool opt_set, opt_on, exists;
    struct presence_list list;
    size_t len;
    char name[];
};

static void get_answer(void *arg)
{
    struct get_task *gt = arg;
    gt->done(gt->arg, gt->err, gt->err ? NULL : &gt->list);
    presence_list_free(&gt->list);
    free(gt);
}

static void read_reply(const redisReply *r, int status, void *arg)
{
    struct get_task *gt = arg;
    struct rb *rb = gt->rb;
    gt->err = redis_backend__script_error(rb, r, status, "presence of ", gt->name, NULL, 0);
    if (!gt->err && (r->type != REDIS_REPLY_ARRAY || r->elements < 4 || (r->elements - 4) % 3))
        gt->err = HUB_ERR_BACKEND;
    if (!gt->err) {
        bool presence; /* never PUT on the channel: its app's default */
        bool create;
        uint32_t hs, ht;
        redis_backend__ns_defaults(rb, gt->name, gt->len, &create, &hs, &ht, NULL, NULL, &presence);
        const redisReply *opt = r->element[1];
        if (opt->type == REDIS_REPLY_STRING && opt->len)
            presence = redis_backend__reply_u64(opt) == 1;
        struct presence_list *l = &gt->list;
        l->anonymous = redis_backend__reply_u64(r->element[2]);
        l->unlisted = redis_backend__reply_u64(r->element[3]);
        l->connections = l->anonymous + l->unlisted;
        for (size_t i = 4; i + 2 < r->elements; i += 3) {
            const redisReply *u = r->element[i], *c = r->element[i + 1], *info = r->element[i + 2];
            uint64_t n = redis_backend__reply_u64(c);
            if (u->type != REDIS_REPLY_STRING || !u->len || u->len > PRESENCE_USER_MAX || !n)
                continue;
            /* what any client of the Redis wrote: shown only if it is what a node writes */
            bool ok_info = info->type == REDIS_REPLY_STRING && info->len &&
                           info->len <= PRESENCE_INFO_MAX &&
                           redis_payload_json_canonical(info->str, info->len);
            presence_list_add(l, u->str, u->len, (uint32_t)MIN(n, UINT32_MAX),
                              ok_info ? info->str : NULL, ok_info ? info->len : 0);
            l->connections += n;
        }
        bool exists = redis_backend__reply_u64(r->element[0]) == 1 || l->connections;
        if (!exists)
            gt->err = HUB_ERR_NOT_FOUND;
        else if (!presence)
            gt->err = HUB_ERR_PRESENCE_OFF;
    }
    hub_post(rb->hub, gt->w, get_answer, gt);
}

static void get_run(struct task *t)
{
    struct get_task *gt = container_of(t, struct get_task, t);
    struct rb *rb = gt->rb;
    struct rpresence *rp = rp_of(rb);
    char p[REDIS_KEY_MAX], u[REDIS_KEY_MAX], o[REDIS_KEY_MAX];
    redis_backend__key(p, sizeof(p), gt->name, gt->len, 'p');
    redis_backend__key(u, sizeof(u), gt->name, gt->len, 'u');
    redis_backend__key(o, sizeof(o), gt->name, gt->len, 'o');
    /* Without the identities the last tick found dead (not swept yet). */
    const char **argv = xmalloc((4 + rp->ndead) * sizeof(*argv));
    size_t k = 0;
    argv[k++] = "3";
    argv[k++] = p;
    argv[k++] = u;
    argv[k++] = o;
    for (size_t i = 0; i < rp->ndead; i++)
        argv[k++] = rp->dead[i];
    if (redis_script_call(rb->bus, REDIS_SCRIPT_PRESENCE_READ, p, strlen(p), read_reply, gt, (int)k,
                          argv, NULL) < 0)
        read_reply(NULL, RESP_ENOTCONN, gt);
    free(argv);
}

void redis_presence__get(void *be, int w, const char *name, size_t len, hub_presence_done *done,
                         void *arg)
{
    struct rb *rb = be;
    struct get_task *gt = xcalloc(1, sizeof(*gt) + len + 1);
    gt->t.fn = get_run;
    gt->rb = rb;
    gt->w = w;
    gt->done = done;
    gt->arg = arg;
    gt->len = len;
    memcpy(gt->name, name, len);
    redis_backend__post(rb, &gt->t);
}

/* ---- start / stop ---------------------------------------------------------------------- */

void redis_presence__init(struct rb *rb)
{
    struct rpresence *rp = xcalloc(1, sizeof(*rp));
    rp->rb = rb;
    map_init(&rp->indexed, 16);
    rp->dead = xcalloc(MAX_DEAD, sizeof(*rp->dead));
    timer_init(&rp->timer, tick_cb);
    rb->presence = rp;
    new_identity(rb);
}

void redis_presence__start(struct rb *rb)
{
    timer_start(&rb->loop, &rp_of(rb)->timer, 0);
}

void redis_presence__stop(struct rb *rb)
{
    timer_stop(&rb->loop, &rp_of(rb)->timer);
}

void redis_presence__free(struct rb *rb)
{
    struct rpresence *rp = rp_of(rb);
    if (!rp)
        return;
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&rp->indexed, &b, &next)))
        free(container_of(n, struct indexed_chan, node));
    map_free(&rp->indexed);
    free(rp->dead);
    free(rp);
    rb->presence = NULL;
}
