/*
 * redis_nodes: every node's figures for every other node (/stats?nodes=1 and the
 * admin UI's per-node table, through /stats/stream).
 *
 * Once a second worker 0 hands the node's own figures (a JSON object, node_stats.h)
 * to redis_nodes__put; the backend thread writes them with one
 *     SET herald:{nodestats}:<node> <json> EX 3
 * so that a node that stops is gone within 3 s. Reading costs nothing until someone
 * asks: redis_nodes__get (any thread) answers from the last list read and marks the
 * list wanted; while it is wanted (asked for in the last WANTED_MS), each put also
 * reads the live nodes, ZRANGEBYSCORE herald:nodes (the heartbeats) then one MGET of
 * their keys. The hash tag puts every node's key on one slot of a Redis Cluster, so
 * the MGET is one command on one shard. However many viewers a node serves, that is
 * two reads a second.
 *
 * What another node wrote is checked before it is passed on (a JSON object with a
 * "node" string, at most NODE_JSON_MAX bytes, at most MAX_NODES of them): whoever can
 * write to Redis cannot make a reader's /stats invalid JSON or unbounded.
 */
#include "cluster/redis_backend_int.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/util.h"

#define NODES_TTL     "3" /* seconds a node's figures live after it wrote them */
#define NODES_TTL_MS  3000
#define WANTED_MS     3000
#define MAX_NODES     256
#define NODE_JSON_MAX 4096
#define NODES_KEY     "herald:{nodestats}:"

struct rnodes {
    pthread_mutex_t lock; /* guards list, count, read_ms (workers read them) */
    struct sbuf list;     /* the objects, comma-separated */
    size_t count;
    uint64_t read_ms;               /* wall clock of the read that made the list */
    atomic_uint_fast64_t wanted_ms; /* last time a reader asked (wall ms) */
    bool reading;                   /* a read is in flight (backend thread) */
};

struct put_task {
    struct task t;
    struct rb *rb;
    size_t len;
    char json[];
};

static struct rnodes *rnodes(struct rb *rb)
{
    return rb->nodes;
}

static void mget_reply(const redisReply *r, int status, void *arg)
{
    struct rb *rb = arg;
    struct rnodes *rn = rnodes(rb);
    rn->reading = false;
    if (status || !r || r->type != REDIS_REPLY_ARRAY) {
        redis_backend__ignore_reply(r, status, rb);
        return;
    }
    struct sbuf list = {0};
    size_t count = 0;
    for (size_t i = 0; i < r->elements && count < MAX_NODES; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len > NODE_JSON_MAX)
            continue; /* expired (nil): that node stopped */
        json_t *o = json_loadb(e->str, e->len, JSON_REJECT_DUPLICATES, NULL);
        bool ok = json_is_object(o) && json_is_string(json_object_get(o, "node"));
        json_decref(o);
        if (!ok)
            continue;
        if (count++)
            sbuf_add(&list, ",", 1);
        sbuf_add(&list, e->str, e->len);
    }
    pthread_mutex_lock(&rn->lock);
    sbuf_free(&rn->list);
    rn->list = list;
    rn->count = count;
    rn->read_ms = wall_ms();
    pthread_mutex_unlock(&rn->lock);
}

static void zrange_reply(const redisReply *r, int status, void *arg)
{
    struct rb *rb = arg;
    if (status || !r || r->type != REDIS_REPLY_ARRAY || !r->elements) {
        rnodes(rb)->reading = false;
        redis_backend__ignore_reply(r, status, rb);
        return;
    }
    size_t n = r->elements;
    const char **argv = xmalloc((n + 1) * sizeof(*argv));
    size_t *lens = xmalloc((n + 1) * sizeof(*lens));
    char **keys = xmalloc(n * sizeof(*keys));
    argv[0] = "MGET";
    lens[0] = 4;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        struct sbuf key = {0};
        sbuf_adds(&key, NODES_KEY);
        sbuf_add(&key, e->str, e->len);
        keys[k] = key.data;
        argv[k + 1] = key.data;
        lens[k + 1] = key.len;
        k++;
    }
    if (!k ||
        redis_bus_command(rb->bus, argv[1], lens[1], mget_reply, rb, (int)k + 1, argv, lens) < 0)
        rnodes(rb)->reading = false;
    for (size_t i = 0; i < k; i++)
        free(keys[i]);
    free(keys);
    free(lens);
    free(argv);
}

static void put_run(struct task *t)
{
    struct put_task *pt = container_of(t, struct put_task, t);
    struct rb *rb = pt->rb;
    struct rnodes *rn = rnodes(rb);
    struct sbuf key = {0};
    sbuf_adds(&key, NODES_KEY);
    sbuf_adds(&key, rb->node);
    const char *argv[] = {"SET", key.data, pt->json, "EX", NODES_TTL};
    size_t lens[] = {3, key.len, pt->len, 2, sizeof(NODES_TTL) - 1};
    redis_bus_command(rb->bus, key.data, key.len, redis_backend__ignore_reply, rb, 5, argv, lens);
    sbuf_free(&key);
    uint64_t now = wall_ms();
    if (!rn->reading && now - atomic_load(&rn->wanted_ms) < WANTED_MS) {
        char from[24];
        snprintf(from, sizeof(from), "%" PRIu64, now);
        const char *zargv[] = {"ZRANGEBYSCORE", "herald:nodes", from, "+inf", "LIMIT", "0", "256"};
        rn->reading =
            redis_bus_command(rb->bus, "herald:nodes", 12, zrange_reply, rb, 7, zargv, NULL) == 0;
    }
    free(pt);
}

void redis_nodes__put(struct rb *rb, const char *json, size_t len)
{
    struct put_task *pt = xmalloc(sizeof(*pt) + len);
    pt->t.fn = put_run;
    pt->rb = rb;
    pt->len = len;
    memcpy(pt->json, json, len);
    redis_backend__post(rb, &pt->t);
}

size_t redis_nodes__get(struct rb *rb, struct sbuf *b)
{
    struct rnodes *rn = rnodes(rb);
    uint64_t now = wall_ms();
    atomic_store(&rn->wanted_ms, now);
    pthread_mutex_lock(&rn->lock);
    /* A list read longer ago than a node's TTL may hold nodes that are gone. */
    size_t count = now - rn->read_ms <= NODES_TTL_MS ? rn->count : 0;
    if (count)
        sbuf_add(b, rn->list.data, rn->list.len);
    pthread_mutex_unlock(&rn->lock);
    return count;
}

void redis_nodes__init(struct rb *rb)
{
    struct rnodes *rn = xcalloc(1, sizeof(*rn));
    pthread_mutex_init(&rn->lock, NULL);
    rb->nodes = rn;
}

void redis_nodes__free(struct rb *rb)
{
    struct rnodes *rn = rnodes(rb);
    if (!rn)
        return;
    sbuf_free(&rn->list);
    pthread_mutex_destroy(&rn->lock);
    free(rn);
    rb->nodes = NULL;
}
