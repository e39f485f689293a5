/*
 * redis_bus single-server mode: a command connection (commands, PUBLISH) and a
 * subscriber connection (SUBSCRIBE, PSUBSCRIBE), because a RESP2 connection in
 * subscribe mode accepts nothing else. The wanted channels and patterns live in
 * one map (a pattern has a '*', which no channel has); whenever the subscriber
 * connection becomes ready they are all subscribed again, one command per channel
 * or pattern (pipelined), so each confirmation names its channel.
 * Frees are deferred to a zero-delay timer, so the bus may be freed from any
 * of its callbacks.
 */
#include "cluster/redis_bus.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/map.h"
#include "core/util.h"

void redis_bus__set_status(struct redis_bus *bus, enum redis_bus_status *cur,
                           enum redis_bus_status next)
{
    if (*cur == next)
        return;
    *cur = next;
    if (bus->cbs.on_status)
        bus->cbs.on_status(next, bus->cbs.arg);
}

struct resp_conn_opts redis_bus__conn_opts(const struct redis_bus_opts *opts, const char *role,
                                           char *name_buf, size_t name_size)
{
    snprintf(name_buf, name_size, "%s-%s", opts->name ? opts->name : "herald", role);
    return (struct resp_conn_opts){.username = opts->username,
                                   .password = opts->password,
                                   .db = opts->db,
                                   .connect_timeout_ms = opts->connect_timeout_ms,
                                   .reply_timeout_ms = opts->command_timeout_ms,
                                   .name = name_buf,
                                   .tls = opts->tls};
}

void redis_bus__free_map(struct map *m)
{
    size_t bucket = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(m, &bucket, &next))) {
        map_del(m, n);
        free(n);
    }
    map_free(m);
}

struct single_chan {
    struct map_node node; /* first: redis_bus__free_map frees the node pointer */
    bool active;          /* (P)SUBSCRIBE confirmed on the current subscriber connection */
    bool pattern;         /* PSUBSCRIBE */
    char name[];
};

struct single_bus {
    struct redis_bus bus; /* first */
    struct loop *loop;
    struct resp_conn *cmd, *sub;
    struct map chans;
    enum redis_bus_status status;
    struct timer reap_timer;
    bool free_requested;
};

static void single_update_status(struct single_bus *b)
{
    if (b->free_requested)
        return;
    bool up = resp_conn_ready(b->cmd) && resp_conn_ready(b->sub);
    redis_bus__set_status(&b->bus, &b->status, up ? REDIS_BUS_UP : REDIS_BUS_DOWN);
}

static void single_subscribed(const redisReply *r, int status, void *arg)
{
    struct single_bus *b = arg;
    if (status < 0 || b->free_requested)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[1]->type != REDIS_REPLY_STRING) {
        log_warn("redis: SUBSCRIBE refused: %.*s", (int)r->len, r->str ? r->str : "");
        return;
    }
    const redisReply *ch = r->element[1];
    /* Unsubscribed meanwhile: its UNSUBSCRIBE is already queued behind. */
    struct map_node *n = map_get(&b->chans, ch->str, ch->len);
    if (!n)
        return;
    struct single_chan *sc = container_of(n, struct single_chan, node);
    sc->active = true;
    if (sc->pattern && b->bus.cbs.on_psubscribed)
        b->bus.cbs.on_psubscribed(ch->str, ch->len, b->bus.cbs.arg);
    else if (!sc->pattern && b->bus.cbs.on_subscribed)
        b->bus.cbs.on_subscribed(ch->str, ch->len, b->bus.cbs.arg);
}

static void ignore_reply(const redisReply *r, int status, void *arg)
{
}

/* (P)SUBSCRIBE or (P)UNSUBSCRIBE ch, as its kind says. */
static int single_send_sub(struct single_bus *b, bool on, bool pattern, const char *ch, size_t len)
{
    const char *verb =
        on ? (pattern ? "PSUBSCRIBE" : "SUBSCRIBE") : (pattern ? "PUNSUBSCRIBE" : "UNSUBSCRIBE");
    const char *argv[] = {verb, ch};
    size_t lens[] = {strlen(verb), len};
    return resp_command_argv(b->sub, on ? single_subscribed : ignore_reply, b, 2, argv, lens);
}

static void single_on_ready(struct resp_conn *conn, void *arg)
{
    struct single_bus *b = arg;
    if (conn == b->sub) {
        size_t bucket = 0;
        struct map_node *n, *next = NULL;
        while ((n = map_next(&b->chans, &bucket, &next)))
            if (single_send_sub(b, true, container_of(n, struct single_chan, node)->pattern, n->key,
                                n->key_len) < 0)
                log_warn("redis: cannot queue SUBSCRIBE %.*s", (int)n->key_len, n->key);
    }
    single_update_status(b);
}

static void single_on_down(struct resp_conn *conn, int err, void *arg)
{
    struct single_bus *b = arg;
    if (conn == b->sub) {
        size_t bucket = 0;
        struct map_node *n, *next = NULL;
        while ((n = map_next(&b->chans, &bucket, &next)))
            container_of(n, struct single_chan, node)->active = false;
    }
    single_update_status(b);
}

static void single_on_push(struct resp_conn *conn, const redisReply *r, void *arg)
{
    struct single_bus *b = arg;
    if (b->free_requested)
        return;
    if (resp_reply_str_eq(r->element[0], "pmessage")) { /* resp_conn checked: 4 elements */
        const redisReply *p = r->element[1], *ch = r->element[2], *d = r->element[3];
        if (p->type == REDIS_REPLY_STRING && ch->type == REDIS_REPLY_STRING &&
            d->type == REDIS_REPLY_STRING && b->bus.cbs.on_pmessage)
            b->bus.cbs.on_pmessage(p->str, p->len, ch->str, ch->len, d->str, d->len,
                                   b->bus.cbs.arg);
        return;
    }
    if (!resp_reply_str_eq(r->element[0], "message") || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[2]->type != REDIS_REPLY_STRING)
        return;
    if (b->bus.cbs.on_message)
        b->bus.cbs.on_message(r->element[1]->str, r->element[1]->len, r->element[2]->str,
                              r->element[2]->len, b->bus.cbs.arg);
}

static int single_command(struct redis_bus *bus, const char *key, size_t key_len, resp_reply_fn *cb,
                          void *arg, int argc, const char **argv, const size_t *argvlen)
{
    struct single_bus *b = (struct single_bus *)bus;
    if (b->free_requested)
        return RESP_ECANCELED;
    return resp_command_argv(b->cmd, cb, arg, argc, argv, argvlen);
}

static int single_publish(struct redis_bus *bus, const char *channel, size_t channel_len,
                          const char *data, size_t len, resp_reply_fn *cb, void *arg)
{
    const char *argv[] = {"PUBLISH", channel, data};
    size_t lens[] = {7, channel_len, len};
    return single_command(bus, channel, channel_len, cb, arg, 3, argv, lens);
}

static int single_want(struct redis_bus *bus, bool pattern, const char *channel, size_t len)
{
    struct single_bus *b = (struct single_bus *)bus;
    if (!len || len > UINT32_MAX || (memchr(channel, '*', len) != NULL) != pattern)
        return RESP_EINVAL;
    struct map_node *have = map_get(&b->chans, channel, len);
    if (have)
        return container_of(have, struct single_chan, node)->active ? 1 : 0;
    struct single_chan *ch = xmalloc(sizeof(*ch) + len);
    memcpy(ch->name, channel, len);
    ch->node = (struct map_node){.key = ch->name, .key_len = (uint32_t)len};
    ch->active = false;
    ch->pattern = pattern;
    map_put(&b->chans, &ch->node);
    /* Not ready: on_ready subscribes everything in the map. */
    if (resp_conn_ready(b->sub))
        single_send_sub(b, true, pattern, channel, len);
    return 0;
}

static int single_unwant(struct redis_bus *bus, const char *channel, size_t len)
{
    struct single_bus *b = (struct single_bus *)bus;
    struct map_node *n = map_get(&b->chans, channel, len);
    if (!n)
        return 0;
    struct single_chan *ch = container_of(n, struct single_chan, node);
    bool pattern = ch->pattern;
    map_del(&b->chans, n);
    free(ch);
    if (resp_conn_ready(b->sub))
        single_send_sub(b, false, pattern, channel, len);
    return 0;
}

static int single_subscribe(struct redis_bus *bus, const char *channel, size_t len)
{
    return single_want(bus, false, channel, len);
}

static int single_psubscribe(struct redis_bus *bus, const char *pattern, size_t len)
{
    return single_want(bus, true, pattern, len);
}

static enum redis_bus_status single_status(const struct redis_bus *bus)
{
    return ((const struct single_bus *)bus)->status;
}

static void single_reap(struct loop *loop, struct timer *t)
{
    struct single_bus *b = container_of(t, struct single_bus, reap_timer);
    resp_conn_free(b->cmd);
    resp_conn_free(b->sub);
    redis_bus__free_map(&b->chans);
    free(b);
}

static void single_free(struct redis_bus *bus)
{
    struct single_bus *b = (struct single_bus *)bus;
    if (b->free_requested)
        return;
    b->free_requested = true;
    timer_start(b->loop, &b->reap_timer, 0);
}

static const struct redis_bus_ops single_ops = {
    .command = single_command,
    .publish = single_publish,
    .subscribe = single_subscribe,
    .unsubscribe = single_unwant,
    .psubscribe = single_psubscribe,
    .punsubscribe = single_unwant,
    .status = single_status,
    .free = single_free,
};

struct redis_bus *redis_bus_single_new(struct loop *loop, const char *host, int port,
                                       const struct redis_bus_opts *opts,
                                       const struct redis_bus_callbacks *cbs)
{
    static const struct redis_bus_opts no_opts;
    opts = opts ? opts : &no_opts;
    struct single_bus *b = xcalloc(1, sizeof(*b));
    b->bus.ops = &single_ops;
    b->bus.cbs = *cbs;
    b->loop = loop;
    timer_init(&b->reap_timer, single_reap);
    map_init(&b->chans, 64);
    struct resp_conn_callbacks ccbs = {.on_ready = single_on_ready,
                                       .on_down = single_on_down,
                                       .on_push = single_on_push,
                                       .arg = b};
    char name[96];
    struct resp_conn_opts copts = redis_bus__conn_opts(opts, "cmd", name, sizeof(name));
    b->cmd = resp_conn_new(loop, host, port, &copts, &ccbs);
    copts = redis_bus__conn_opts(opts, "sub", name, sizeof(name));
    b->sub = b->cmd ? resp_conn_new(loop, host, port, &copts, &ccbs) : NULL;
    if (!b->sub) {
        resp_conn_free(b->cmd);
        map_free(&b->chans);
        free(b);
        return NULL;
    }
    return &b->bus;
}
