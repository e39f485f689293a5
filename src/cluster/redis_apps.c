/*
 * redis_apps: apps in cluster mode. The apps store (struct apps_store, apps.h) that
 * keeps them in Redis, and the parts of their plans that hold over every node.
 *
 * Keys (see redis_backend.h for the rest):
 *   herald:{apps}:a           hash: app name -> its state (apps_state_json)
 *   herald:{apps}:v           the version: +1 with every change
 *   herald:{apps}:nodes       sorted set: node -> expiry of its last tick
 *   herald:{apps}:n:NODE      hash: app -> the node's subscriber connections of it
 *   herald:channels:{APP}     the app's listing index (its channels: the channel limit)
 *   herald:rate:{APP}         "<second> <publishes>": the app's publishes this second
 * Everything but the last two is on the {apps} slot; those two share the app's slot.
 *
 * A change (the admin API, on a worker) runs one script that checks and writes the
 * hash and bumps the version, and the worker waits for its answer (at most
 * --redis-timeout): 0, taken (HSETNX: another node made it first), gone, or Redis
 * down (APPS_UNAVAILABLE: 503, the change is made nowhere). Every APPS_TICK_MS each
 * node runs one script that writes its connection counts, reads the sums of the
 * other live nodes' (remote_conns, counted by transport_bind_app) and the version;
 * when the version moved, it reads every app (one moment's snapshot) and makes the
 * registry hold them (apps_sync, complete): a change reaches every node within a
 * tick and a round trip. Publishes and PUTs of an app with a rate or channel limit
 * pass a gate script on the app's slot first (redis_apps__gate): exact over the
 * cluster, for one more round trip. Deleting an app deletes its channels in Redis;
 * each of them announces `closed` on the bus, and every node retires the app's
 * channels when its snapshot no longer lists it.
 *
 * Threads: put runs on workers and waits; everything else on the backend thread.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "apps/apps.h"
#include "cluster/redis_backend.h"
#include "cluster/redis_backend_int.h"
#include "cluster/redis_scripts.h"
#include "core/config.h"
#include "core/log.h"

#define APPS_TICK_MS        250
#define APPS_LOAD_TICK_MS   100  /* until the first snapshot is in */
#define APPS_COUNT_TTL_MS   2000 /* a node's counts outlive its last tick by this */
#define APPS_USAGE_TICKS    4    /* channel counts of busy apps: once a second */
#define APPS_PURGE_AGAIN_MS 2000

#define K_APPS    "herald:{apps}:a"
#define K_VERSION "herald:{apps}:v"
#define K_NODES   "herald:{apps}:nodes"

/* A deleted app's channels, deleted in pages; once more APPS_PURGE_AGAIN_MS later for
 * what nodes that had not heard of the deletion yet published meanwhile. */
struct purge {
    struct purge *next;
    struct rapps *ra;
    uint64_t due; /* loop time of the second pass; 0: running */
    bool second;
    size_t pending;
    bool failed;
    char ixk[REDIS_INDEX_KEY_MAX];
    char app[APP_NAME_MAX + 1];
};

struct rapps {
    struct apps_store s;
    struct rb *rb;
    struct timer tick;
    /* backend thread */
    unsigned ticks;
    uint64_t version; /* of the snapshot applied last */
    bool snapping, beating, stale;
    json_t *known; /* the apps Redis held as this node last knew: name -> state */
    json_t *sent;  /* app -> the count this node wrote last */
    json_t *usage; /* app -> its published counter when its channels were counted */
    struct purge *later;
    /* any thread */
    atomic_bool loaded; /* a snapshot was applied */
    pthread_mutex_t lock;
    pthread_cond_t cond; /* a change answered, or the first snapshot applied */
};

/* ---- changes (a worker waits) ----------------------------------------------------------- */

struct put_task {
    struct task t;
    struct rapps *ra;
    enum apps_put how;
    char *json;
    int rc;
    bool done, abandoned; /* under ra->lock */
    char name[APP_NAME_MAX + 1];
};

static void purge_start(struct rapps *ra, const char *app, bool second);

static void put_finish(struct put_task *pt, int rc)
{
    struct rapps *ra = pt->ra;
    pthread_mutex_lock(&ra->lock);
    pt->rc = rc;
    pt->done = true;
    bool abandoned = pt->abandoned;
    pthread_cond_broadcast(&ra->cond);
    pthread_mutex_unlock(&ra->lock);
    if (abandoned) {
        free(pt->json);
        free(pt);
    }
}

static void put_reply(const redisReply *r, int status, void *arg)
{
    struct put_task *pt = arg;
    struct rapps *ra = pt->ra;
    int rc = 0;
    if (status < 0 || !r || r->type != REDIS_REPLY_INTEGER) {
        log_warn("apps: Redis did not take the change to app %s (%s): answered 503", pt->name,
                 status < 0    ? resp_strerror(status)
                 : r && r->str ? r->str
                               : "unexpected reply");
        rc = APPS_UNAVAILABLE;
        ra->stale = true; /* it may have run after all: read Redis again */
        /* The registry made the change already: back to what Redis has (as known). */
        json_t *prev = json_object_get(ra->known, pt->name);
        if (pt->how == APPS_PUT_UPDATE && prev) {
            json_t *one = json_pack("[O]", prev);
            apps_sync(one, false);
            json_decref(one);
        }
    } else if (r->integer == -1) {
        rc = APPS_EXISTS;
    } else if (r->integer == -2) {
        rc = APPS_NOT_FOUND;
        ra->stale = true; /* another node deleted it: this one learns it now */
    } else if (pt->how == APPS_PUT_DELETE) {
        json_object_del(ra->known, pt->name);
        purge_start(ra, pt->name, false);
    } else {
        json_t *state = json_loads(pt->json ? pt->json : "", 0, NULL);
        if (state)
            json_object_set_new(ra->known, pt->name, state);
    }
    put_finish(pt, rc);
}

static void put_run(struct task *t)
{
    struct put_task *pt = (struct put_task *)t;
    static const char *how[] = {"create", "update", "delete"};
    const char *argv[] = {"2", K_APPS, K_VERSION, how[pt->how], pt->name, pt->json ? pt->json : ""};
    int rc = redis_script_call(pt->ra->rb->bus, REDIS_SCRIPT_APPS_PUT, K_APPS, strlen(K_APPS),
                               put_reply, pt, (int)ARRAY_LEN(argv), argv, NULL);
    if (rc < 0)
        put_reply(NULL, rc, pt);
}

static struct timespec deadline_in(unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static int rapps_put(struct apps_store *s, const char *name, json_t *state, enum apps_put how)
{
    struct rapps *ra = (struct rapps *)s;
    struct put_task *pt = xcalloc(1, sizeof(*pt));
    pt->t.fn = put_run;
    pt->ra = ra;
    pt->how = how;
    snprintf(pt->name, sizeof(pt->name), "%s", name);
    pt->json = state ? json_dumps(state, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    redis_backend__post(ra->rb, &pt->t);
    /* A command answers or fails within --redis-timeout; the margin covers the queue. */
    struct timespec until = deadline_in(ra->rb->cfg->redis_timeout_ms + 1000);
    pthread_mutex_lock(&ra->lock);
    while (!pt->done)
        if (pthread_cond_timedwait(&ra->cond, &ra->lock, &until) == ETIMEDOUT)
            break;
    bool done = pt->done;
    int rc = done ? pt->rc : APPS_UNAVAILABLE;
    pt->abandoned = !done; /* the backend frees it when the answer comes */
    pthread_mutex_unlock(&ra->lock);
    if (done) {
        free(pt->json);
        free(pt);
    } else {
        log_warn("apps: no answer from Redis about app %s in time: answered 503", name);
    }
    return rc;
}

/* ---- snapshots -------------------------------------------------------------------------- */

/*
 * What the registry should hold, from a snapshot: Redis's state of each app, but an
 * app this node changed a moment ago (its change on its way, or made in the registry
 * and not sent yet) keeps its own while Redis still has what this node knew, and an
 * app made here that Redis does not know yet stays.
 */
static json_t *merge(json_t *snap, json_t *known)
{
    json_t *local = json_object(), *states = json_array(), *all = apps_states(), *v;
    size_t i;
    json_array_foreach(all, i, v)
        json_object_set(local, json_string_value(json_object_get(v, "name")), v);
    json_decref(all);
    const char *name;
    json_t *o;
    json_object_foreach(snap, name, o)
    {
        json_t *mine = json_object_get(local, name), *was = json_object_get(known, name);
        bool pending = mine && was && !json_equal(mine, was) && json_equal(o, was);
        json_array_append(states, pending ? mine : o);
    }
    json_object_foreach(local, name,
                        o) if (!json_object_get(snap, name) && !json_object_get(known, name))
        json_array_append(states, o);
    json_decref(local);
    return states;
}

static void snap_reply(const redisReply *r, int status, void *arg)
{
    struct rapps *ra = arg;
    ra->snapping = false;
    if (status < 0 || !r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        if (status == 0 && r && r->type == REDIS_REPLY_ERROR)
            log_warn("apps: reading the apps from Redis failed: %s", r->str);
        return; /* the next tick tries again */
    }
    uint64_t version = redis_backend__reply_u64(r->element[0]);
    const redisReply *h = r->element[1];
    json_t *seen = json_object();
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        json_t *o = json_loadb(h->element[i + 1]->str, h->element[i + 1]->len, 0, NULL);
        if (!json_is_object(o)) {
            log_warn("apps: the state of app %.*s in Redis is not JSON: ignored",
                     (int)h->element[i]->len, h->element[i]->str);
            json_decref(o);
            continue;
        }
        json_object_setn_new(seen, h->element[i]->str, h->element[i]->len, o);
    }
    json_t *states = merge(seen, ra->known);
    size_t changed = apps_sync(states, true);
    if (changed && atomic_load(&ra->loaded))
        log_debug("apps: %zu changes from Redis (version %" PRIu64 ")", changed, version);
    json_decref(states);
    json_decref(ra->known);
    ra->known = seen;
    ra->version = version;
    ra->stale = false;
    if (!atomic_load(&ra->loaded)) {
        pthread_mutex_lock(&ra->lock);
        atomic_store(&ra->loaded, true);
        pthread_cond_broadcast(&ra->cond);
        pthread_mutex_unlock(&ra->lock);
    }
}

static void snapshot(struct rapps *ra)
{
    if (ra->snapping)
        return;
    const char *argv[] = {"2", K_APPS, K_VERSION};
    if (redis_script_call(ra->rb->bus, REDIS_SCRIPT_APPS_SNAP, K_APPS, strlen(K_APPS), snap_reply,
                          ra, 3, argv, NULL) == 0)
        ra->snapping = true;
}

/* ---- the tick: connection counts, the version, channel counts ---------------------------- */

struct beat_arg {
    json_t *now;  /* app -> local connections (apps with some) */
    json_t *sums; /* beat reply: app -> the other nodes' */
};

static void collect_conns(struct app *a, void *arg)
{
    unsigned n = atomic_load(&a->t.conns);
    if (n)
        json_object_set_new(arg, a->name, json_integer(n));
}

static void set_remote(struct app *a, void *arg)
{
    json_t *v = json_object_get(arg, a->name);
    atomic_store(&a->t.remote_conns, v ? (unsigned)json_integer_value(v) : 0);
}

static void beat_reply(const redisReply *r, int status, void *arg)
{
    struct rapps *ra = arg;
    ra->beating = false;
    if (status < 0 || !r || r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        if (status == 0 && r && r->type == REDIS_REPLY_ERROR)
            log_warn("apps: counting connections in Redis failed: %s", r->str);
        return; /* the others' counts stay as last known */
    }
    json_t *sums = json_object();
    for (size_t i = 1; i + 1 < r->elements; i += 2)
        json_object_setn_new(sums, r->element[i]->str, r->element[i]->len,
                             json_integer((json_int_t)redis_backend__reply_u64(r->element[i + 1])));
    apps_each(set_remote, sums);
    json_decref(sums);
    uint64_t version = redis_backend__reply_u64(r->element[0]);
    if (version != ra->version || ra->stale || !atomic_load(&ra->loaded))
        snapshot(ra);
}

static void beat(struct rapps *ra)
{
    if (ra->beating)
        return;
    json_t *now = json_object();
    apps_each(collect_conns, now);
    /* Apps with connections, and those that had some at the last tick (now none). */
    const char *k;
    json_t *v;
    json_object_foreach(ra->sent, k, v) if (!json_object_get(now, k))
        json_object_set_new(now, k, json_integer(0));
    size_t n = json_object_size(now), a = 0;
    const char **argv = xcalloc(6 + 2 * n, sizeof(*argv));
    char(*nums)[16] = xcalloc(n ? n : 1, sizeof(*nums));
    char nodek[REDIS_KEY_MAX], ttl[16];
    snprintf(nodek, sizeof(nodek), "herald:{apps}:n:%s", ra->rb->node);
    snprintf(ttl, sizeof(ttl), "%u", APPS_COUNT_TTL_MS);
    argv[a++] = "3";
    argv[a++] = K_NODES;
    argv[a++] = nodek;
    argv[a++] = K_VERSION;
    argv[a++] = ra->rb->node;
    argv[a++] = ttl;
    size_t i = 0;
    json_object_foreach(now, k, v)
    {
        snprintf(nums[i], sizeof(nums[i]), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        argv[a++] = k;
        argv[a++] = nums[i++];
    }
    if (redis_script_call(ra->rb->bus, REDIS_SCRIPT_APPS_BEAT, K_NODES, strlen(K_NODES), beat_reply,
                          ra, (int)a, argv, NULL) == 0) {
        ra->beating = true;
        /* What Redis holds now: the zeros are gone from it. */
        json_t *sent = json_object();
        json_object_foreach(now, k, v) if (json_integer_value(v)) json_object_set(sent, k, v);
        json_decref(ra->sent);
        ra->sent = sent;
    }
    free(nums);
    free(argv);
    json_decref(now);
}

static void card_reply(const redisReply *r, int status, void *arg)
{
    char *name = arg;
    if (status == 0 && r && r->type == REDIS_REPLY_INTEGER) {
        struct app *a = apps_get(name, strlen(name));
        if (a)
            atomic_store(&a->t.cluster_channels, (unsigned)(r->integer > 0 ? r->integer : 0));
        hub_tenant_put(a ? &a->t : NULL);
    }
    free(name);
}

static void collect_busy(struct app *a, void *arg)
{
    struct rapps *ra = arg;
    json_t *last = json_object_get(ra->usage, a->name);
    json_int_t pub = (json_int_t)atomic_load(&a->t.published);
    if (last && json_integer_value(last) == pub)
        return;
    json_object_set_new(ra->usage, a->name, json_integer(pub));
}

/* The channel counts (GET /admin/apps/{app}) of apps that published here since the last
 * count, or were never counted: gates keep those of limited apps up to date anyway. */
static void count_channels(struct rapps *ra)
{
    json_t *before = json_deep_copy(ra->usage);
    apps_each(collect_busy, ra);
    const char *k;
    json_t *v;
    json_object_foreach(ra->usage, k, v)
    {
        json_t *b = json_object_get(before, k);
        if (b && json_integer_value(b) == json_integer_value(v))
            continue;
        char ixk[REDIS_INDEX_KEY_MAX], key[APP_NAME_MAX + 2];
        snprintf(key, sizeof(key), "%s%c", k, CHANNEL_NS_SEP);
        size_t ixl = redis_backend__index_key(ixk, key, strlen(key));
        const char *argv[] = {"ZCARD", ixk};
        char *name = xmalloc(strlen(k) + 1);
        memcpy(name, k, strlen(k) + 1);
        if (redis_bus_command(ra->rb->bus, ixk, ixl, card_reply, name, 2, argv, NULL) < 0)
            free(name);
    }
    json_decref(before);
}

static void purge_due(struct rapps *ra);

static void tick_cb(struct loop *loop, struct timer *t)
{
    struct rapps *ra = container_of(t, struct rapps, tick);
    bool loaded = atomic_load(&ra->loaded);
    if (!loaded)
        snapshot(ra);
    beat(ra);
    if (loaded && ++ra->ticks % APPS_USAGE_TICKS == 0)
        count_channels(ra);
    purge_due(ra);
    timer_start(loop, t, loaded ? APPS_TICK_MS : APPS_LOAD_TICK_MS);
}

/* ---- deleting an app's channels ---------------------------------------------------------- */

static void purge_page(struct purge *p);

static void purge_done(struct purge *p)
{
    struct rapps *ra = p->ra;
    if (!p->second && !p->failed) { /* once more, for late publishes */
        p->second = true;
        p->due = ra->rb->loop.now + APPS_PURGE_AGAIN_MS;
        p->next = ra->later;
        ra->later = p;
        return;
    }
    if (p->failed)
        log_warn("apps: deleting the channels of deleted app %s in Redis failed; what is left "
                 "expires with its ttl",
                 p->app);
    free(p);
}

static void purge_one_reply(const redisReply *r, int status, void *arg)
{
    struct purge *p = arg;
    if (status < 0 || !r || r->type == REDIS_REPLY_ERROR)
        p->failed = true;
    if (--p->pending)
        return;
    if (p->failed || status == RESP_ECANCELED)
        purge_done(p);
    else
        purge_page(p);
}

static void purge_names_reply(const redisReply *r, int status, void *arg)
{
    struct purge *p = arg;
    struct rb *rb = p->ra->rb;
    if (status < 0 || !r || r->type != REDIS_REPLY_ARRAY) {
        p->failed = true;
        return purge_done(p);
    }
    if (r->elements == 0) { /* all gone: the index and the rate key too */
        char rk[16 + APP_NAME_MAX];
        snprintf(rk, sizeof(rk), "herald:rate:{%s}", p->app);
        const char *argv[] = {"DEL", p->ixk, rk};
        redis_bus_command(rb->bus, p->ixk, strlen(p->ixk), redis_backend__ignore_reply, rb, 3, argv,
                          NULL);
        return purge_done(p);
    }
    p->pending = 2 * r->elements;
    for (size_t i = 0; i < r->elements; i++) {
        const char *nm = r->element[i]->str;
        size_t len = MIN(r->element[i]->len, (size_t)CHANNEL_KEY_MAX);
        char k[5][REDIS_KEY_MAX], m[REDIS_KEY_MAX];
        static const char suffix[] = "hosci";
        for (int j = 0; j < 5; j++)
            redis_backend__key(k[j], sizeof(k[j]), nm, len, suffix[j]);
        redis_backend__key(m, sizeof(m), nm, len, 'm');
        /* One Redis: the last-id key is every channel's (herald:{seq}:i), not the channel's. */
        const char *argv[] = {rb->cluster ? "5" : "4",
                              k[0],
                              k[1],
                              k[2],
                              k[3],
                              k[4],
                              m,
                              rb->cluster ? "SPUBLISH" : "PUBLISH"};
        int argc = (int)ARRAY_LEN(argv);
        if (!rb->cluster) {
            argv[5] = argv[6];
            argv[6] = argv[7];
            argc--;
        }
        if (redis_script_call(rb->bus, REDIS_SCRIPT_APPS_PURGE, k[0], strlen(k[0]), purge_one_reply,
                              p, argc, argv, NULL) < 0)
            purge_one_reply(NULL, RESP_ENOTCONN, p);
        const char *zargv[] = {"ZREM", p->ixk, r->element[i]->str};
        size_t zargl[] = {4, strlen(p->ixk), r->element[i]->len};
        if (redis_bus_command(rb->bus, p->ixk, strlen(p->ixk), purge_one_reply, p, 3, zargv,
                              zargl) < 0)
            purge_one_reply(NULL, RESP_ENOTCONN, p);
    }
}

static void purge_page(struct purge *p)
{
    const char *argv[] = {"ZRANGE", p->ixk, "0", "99"};
    if (redis_bus_command(p->ra->rb->bus, p->ixk, strlen(p->ixk), purge_names_reply, p, 4, argv,
                          NULL) < 0)
        purge_names_reply(NULL, RESP_ENOTCONN, p);
}

static void purge_start(struct rapps *ra, const char *app, bool second)
{
    struct purge *p = xcalloc(1, sizeof(*p));
    p->ra = ra;
    p->second = second;
    snprintf(p->app, sizeof(p->app), "%s", app);
    char key[APP_NAME_MAX + 2];
    snprintf(key, sizeof(key), "%s%c", app, CHANNEL_NS_SEP);
    redis_backend__index_key(p->ixk, key, strlen(key));
    purge_page(p);
}

static void purge_due(struct rapps *ra)
{
    for (struct purge **pp = &ra->later; *pp;) {
        struct purge *p = *pp;
        if (p->due > ra->rb->loop.now) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        p->next = NULL;
        p->due = 0;
        purge_page(p);
    }
}

/* ---- the gate: publishes per second and channels over the cluster ------------------------- */

struct gate {
    struct app *a; /* a reference */
    redis_apps_gate_done *done;
    void *arg;
};

static void gate_reply(const redisReply *r, int status, void *arg)
{
    struct gate *g = arg;
    int err = HUB_ERR_BACKEND;
    if (status == 0 && r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        const char *what = r->element[0]->str;
        if (r->elements == 2)
            atomic_store(&g->a->t.cluster_channels,
                         (unsigned)redis_backend__reply_u64(r->element[1]));
        if (strcmp(what, "ok") == 0) {
            err = 0;
        } else if (strcmp(what, "rate") == 0) {
            err = HUB_ERR_APP_RATE;
            atomic_fetch_add_explicit(&g->a->rate_refused, 1, memory_order_relaxed);
        } else if (strcmp(what, "channels") == 0) {
            err = HUB_ERR_APP_CHANNELS;
        }
    } else if (status == 0 && r && r->type == REDIS_REPLY_ERROR) {
        log_warn("apps: the limits of app %s could not be checked in Redis: %s", g->a->name,
                 r->str);
    }
    g->done(g->arg, err);
    hub_tenant_put(&g->a->t);
    free(g);
}

bool redis_apps__gate(struct rb *rb, const char (*names)[CHANNEL_KEY_MAX + 1], const size_t *lens,
                      size_t n, bool publish, redis_apps_gate_done *done, void *arg)
{
    const char *sep = n ? memchr(names[0], CHANNEL_NS_SEP, lens[0]) : NULL;
    struct app *a = sep ? apps_get(names[0], (size_t)(sep - names[0])) : NULL;
    if (!a)
        return false; /* the default app, or a deleted one (the hub says so) */
    uint32_t rate = publish ? a->max_publish_rate : 0;
    uint32_t maxch = atomic_load(&a->t.max_channels);
    if (!rate && !maxch) {
        hub_tenant_put(&a->t);
        return false;
    }
    char ixk[REDIS_INDEX_KEY_MAX], rk[16 + APP_NAME_MAX], r[16], c[16];
    size_t ixl = redis_backend__index_key(ixk, names[0], lens[0]);
    snprintf(rk, sizeof(rk), "herald:rate:{%s}", a->name);
    snprintf(r, sizeof(r), "%" PRIu32, rate);
    snprintf(c, sizeof(c), "%" PRIu32, maxch);
    size_t argc = 5;
    const char **argv = xcalloc(5 + n, sizeof(*argv));
    size_t *argl = xcalloc(5 + n, sizeof(*argl));
    const char *head[] = {"2", ixk, rk, r, c};
    for (size_t i = 0; i < 5; i++) {
        argv[i] = head[i];
        argl[i] = strlen(head[i]);
    }
    for (size_t i = 0; i < n; i++) {
        if (chan_key_is_user(names[i], lens[i]))
            continue; /* users' channels are not in the plan's count, nor listed */
        argv[argc] = names[i];
        argl[argc++] = lens[i];
    }
    struct gate *g = xcalloc(1, sizeof(*g));
    *g = (struct gate){.a = a, .done = done, .arg = arg};
    if (redis_script_call(rb->bus, REDIS_SCRIPT_APPS_GATE, ixk, ixl, gate_reply, g, (int)argc, argv,
                          argl) < 0)
        gate_reply(NULL, RESP_ENOTCONN, g);
    free(argl);
    free(argv);
    return true;
}

/* ---- the store ------------------------------------------------------------------------------ */

static void start_run(struct task *t)
{
    struct rapps *ra = *(struct rapps **)(t + 1);
    free(t);
    timer_start(&ra->rb->loop, &ra->tick, 0);
}

static int rapps_load(struct apps_store *s, char *err, size_t errlen)
{
    struct rapps *ra = (struct rapps *)s;
    (void)err;
    (void)errlen;
    struct task *t = xcalloc(1, sizeof(*t) + sizeof(ra));
    t->fn = start_run;
    memcpy(t + 1, &ra, sizeof(ra));
    redis_backend__post(ra->rb, t);
    /* The connection to Redis is being made: give it --redis-timeout to bring the apps. */
    struct timespec until = deadline_in(ra->rb->cfg->redis_timeout_ms);
    pthread_mutex_lock(&ra->lock);
    while (!atomic_load(&ra->loaded))
        if (pthread_cond_timedwait(&ra->cond, &ra->lock, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&ra->lock);
    if (!atomic_load(&ra->loaded))
        log_warn("apps: Redis did not answer within --redis-timeout (%u ms), so this node "
                 "knows no app yet: requests to /apps/{app}/ answer 404 and admin changes 503 "
                 "until Redis is up (it is asked again every %u ms)",
                 ra->rb->cfg->redis_timeout_ms, APPS_LOAD_TICK_MS);
    return 0;
}

void redis_apps__stop(struct rb *rb)
{
    if (rb->apps)
        timer_stop(&rb->loop, &rb->apps->tick);
}

static void rapps_free(struct apps_store *s)
{
    struct rapps *ra = (struct rapps *)s;
    while (ra->later) {
        struct purge *p = ra->later;
        ra->later = p->next;
        free(p);
    }
    json_decref(ra->known);
    json_decref(ra->sent);
    json_decref(ra->usage);
    pthread_cond_destroy(&ra->cond);
    pthread_mutex_destroy(&ra->lock);
    free(ra);
}

struct apps_store *redis_apps_store_new(struct hub *hub)
{
    struct rb *rb = hub->be;
    struct rapps *ra = xcalloc(1, sizeof(*ra));
    ra->s.load = rapps_load;
    ra->s.put = rapps_put;
    ra->s.free = rapps_free;
    ra->rb = rb;
    ra->known = json_object();
    ra->sent = json_object();
    ra->usage = json_object();
    timer_init(&ra->tick, tick_cb);
    pthread_mutex_init(&ra->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ra->cond, &ca);
    pthread_condattr_destroy(&ca);
    rb->apps = ra;
    return &ra->s;
}
