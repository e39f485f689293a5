/*
 * redis_bus: the one interface the hub's Redis backend calls, with two
 * implementations behind a small vtable:
 *
 *   redis_bus_single_new()  one Redis server: a command connection and a
 *                           subscriber connection (SUBSCRIBE / PUBLISH);
 *   redis_bus_cluster_new() a Redis Cluster: slot routing with MOVED/ASK,
 *                           topology refresh and failover handling, sharded
 *                           pub/sub (SSUBSCRIBE / SPUBLISH) — cluster_map.h.
 *
 * Both run on the caller's loop thread and are not thread-safe. The hub keeps
 * no Redis state of its own: it says which channels it wants
 * (redis_bus_subscribe/unsubscribe), and the bus keeps them subscribed across
 * reconnects, failovers and slot moves. Each time a channel's subscription is
 * (re)established, on_subscribed runs: messages published while it was not
 * subscribed were not delivered, so the hub reads the channel's Stream from
 * its last id to fill that gap.
 *
 * Usage:
 *     struct redis_bus *bus = redis_bus_single_new(loop, "127.0.0.1", 6379, &opts, &cbs);
 *     redis_bus_subscribe(bus, "news", 4);
 *     redis_bus_command(bus, "stream:news", 11, on_reply, ctx, argc, argv, NULL);
 *     redis_bus_publish(bus, "news", 4, data, len, on_published, ctx);
 *     ...
 *     redis_bus_free(bus);
 */
#ifndef HERALD_REDIS_BUS_H
#define HERALD_REDIS_BUS_H

#include <stddef.h>

#include "cluster/resp_conn.h"

struct loop;
struct redis_bus;

enum redis_bus_status {
    REDIS_BUS_DOWN = 0, /* commands fail fast (RESP_ENOTCONN) or retry until their deadline */
    REDIS_BUS_DEGRADED, /* (cluster) a master is unreachable, or a wanted channel has no
                           subscription in place or on its way (being recovered) */
    REDIS_BUS_UP,       /* every connection ready; every wanted channel subscribed, or its
                           subscription sent on a live connection */
};

struct redis_bus_callbacks {
    /* A message on a subscribed channel. All pointers borrowed for the call. */
    void (*on_message)(const char *channel, size_t channel_len, const char *data, size_t len,
                       void *arg);
    /* The subscription to channel was (re)established: fill the gap from the Stream. */
    void (*on_subscribed)(const char *channel, size_t channel_len, void *arg);
    /* A message on a channel that matches pattern (a glob this bus psubscribed to): one
     * Redis only. All pointers borrowed for the call. */
    void (*on_pmessage)(const char *pattern, size_t pattern_len, const char *channel,
                        size_t channel_len, const char *data, size_t len, void *arg);
    /* The subscription to pattern was (re)established: what was published meanwhile
     * did not come. */
    void (*on_psubscribed)(const char *pattern, size_t pattern_len, void *arg);
    /* The bus status changed. */
    void (*on_status)(enum redis_bus_status status, void *arg);
    void *arg;
};

struct redis_bus_opts {
    const char *username, *password; /* copied; AUTH on every connection */
    int db;                          /* single mode only (a cluster has db 0) */
    unsigned connect_timeout_ms;     /* 0: 2000 */
    unsigned command_timeout_ms;     /* a connection whose replies are this late fails (see
                                        resp_conn reply_timeout_ms); cluster: also the retry
                                        deadline per command. 0: none (single), 5000 (cluster) */
    unsigned refresh_interval_ms;    /* cluster: periodic topology refresh; 0: 10000 */
    const char *name;                /* copied; CLIENT SETNAME prefix and logs */
    const struct resp_tls_opts *tls; /* copied; TLS on every connection; NULL: plain TCP */
};

struct redis_bus_ops {
    int (*command)(struct redis_bus *bus, const char *key, size_t key_len, resp_reply_fn *cb,
                   void *arg, int argc, const char **argv, const size_t *argvlen);
    int (*publish)(struct redis_bus *bus, const char *channel, size_t channel_len, const char *data,
                   size_t len, resp_reply_fn *cb, void *arg);
    int (*subscribe)(struct redis_bus *bus, const char *channel, size_t channel_len);
    int (*unsubscribe)(struct redis_bus *bus, const char *channel, size_t channel_len);
    /* NULL where the bus has no pattern subscriptions (a Redis Cluster). */
    int (*psubscribe)(struct redis_bus *bus, const char *pattern, size_t pattern_len);
    int (*punsubscribe)(struct redis_bus *bus, const char *pattern, size_t pattern_len);
    enum redis_bus_status (*status)(const struct redis_bus *bus);
    void (*free)(struct redis_bus *bus);
};

/* Embedded first in each implementation. */
struct redis_bus {
    const struct redis_bus_ops *ops;
    struct redis_bus_callbacks cbs;
};

/*
 * Connects to one server. host is resolved once (see resp_conn_new); strings
 * are copied. Returns NULL if host cannot be resolved.
 */
struct redis_bus *redis_bus_single_new(struct loop *loop, const char *host, int port,
                                       const struct redis_bus_opts *opts,
                                       const struct redis_bus_callbacks *cbs);
/* Connects to a cluster through seeds "host:port,host:port,..." (copied). NULL on a bad list. */
struct redis_bus *redis_bus_cluster_new(struct loop *loop, const char *seeds,
                                        const struct redis_bus_opts *opts,
                                        const struct redis_bus_callbacks *cbs);

/*
 * Sends a command that touches `key` (the routing key in cluster mode; ignored
 * by a single server; key NULL: any node). argv copied. Returns 0 (cb runs
 * exactly once, later: see resp_reply_fn) or a negative RESP_E* (cb never runs).
 */
static inline int redis_bus_command(struct redis_bus *bus, const char *key, size_t key_len,
                                    resp_reply_fn *cb, void *arg, int argc, const char **argv,
                                    const size_t *argvlen)
{
    return bus->ops->command(bus, key, key_len, cb, arg, argc, argv, argvlen);
}
/* PUBLISH (single) or SPUBLISH (cluster) data on channel; the same contract as above. */
static inline int redis_bus_publish(struct redis_bus *bus, const char *channel, size_t channel_len,
                                    const char *data, size_t len, resp_reply_fn *cb, void *arg)
{
    return bus->ops->publish(bus, channel, channel_len, data, len, cb, arg);
}
/* Wants channel subscribed from now on (idempotent). 1 when it is subscribed already
 * (no on_subscribed follows, unless the subscription is re-established), 0 when a
 * subscription is under way (on_subscribed follows once it is in place), or
 * RESP_EINVAL. */
static inline int redis_bus_subscribe(struct redis_bus *bus, const char *channel, size_t len)
{
    return bus->ops->subscribe(bus, channel, len);
}
/* No longer wants channel (a channel not subscribed is ignored). 0. */
static inline int redis_bus_unsubscribe(struct redis_bus *bus, const char *channel, size_t len)
{
    return bus->ops->unsubscribe(bus, channel, len);
}
/* Wants the glob pattern psubscribed from now on (idempotent): like redis_bus_subscribe,
 * with on_psubscribed. RESP_EINVAL on a bus without patterns (a Redis Cluster's sharded
 * pub/sub has none). */
static inline int redis_bus_psubscribe(struct redis_bus *bus, const char *pattern, size_t len)
{
    return bus->ops->psubscribe ? bus->ops->psubscribe(bus, pattern, len) : RESP_EINVAL;
}
/* No longer wants pattern (one not psubscribed is ignored). 0. */
static inline int redis_bus_punsubscribe(struct redis_bus *bus, const char *pattern, size_t len)
{
    return bus->ops->punsubscribe ? bus->ops->punsubscribe(bus, pattern, len) : 0;
}
static inline enum redis_bus_status redis_bus_status(const struct redis_bus *bus)
{
    return bus->ops->status(bus);
}
/* Frees the bus (deferred to a zero-delay timer, so safe inside its callbacks); pending
 * command callbacks then get RESP_ECANCELED and no other callback runs. NULL ignored. */
static inline void redis_bus_free(struct redis_bus *bus)
{
    if (bus)
        bus->ops->free(bus);
}

/* Shared by the implementations. */
void redis_bus__set_status(struct redis_bus *bus, enum redis_bus_status *cur,
                           enum redis_bus_status next);
/* Empties and frees a map of channels, each one allocation that starts with its map_node. */
struct map;
void redis_bus__free_map(struct map *m);
/* Resp_conn options for one of the bus's connections ("<name>-<role>"). */
struct resp_conn_opts redis_bus__conn_opts(const struct redis_bus_opts *opts, const char *role,
                                           char *name_buf, size_t name_size);

#endif
