/*
 * cluster_map: Redis Cluster routing. Key -> slot (CRC16/XMODEM with {hash tag}
 * rules), CLUSTER SLOTS -> slot -> master/replica addresses, and a router
 * that keeps one command connection (and, for sharded pub/sub, one subscriber
 * connection) per master and sends each command to the master owning its
 * slot. The router follows -MOVED (updates the slot, refreshes the topology
 * in the background, resends) and -ASK (ASKING + the command on the given node,
 * once), and retries -TRYAGAIN, -CLUSTERDOWN and lost connections with backoff
 * until the command's deadline, refreshing the topology from any reachable
 * node or seed. The topology is also refreshed periodically.
 *
 * Sharded pub/sub: cluster_ssubscribe() keeps one SSUBSCRIBE per channel on
 * the master owning the channel's slot and moves it after -MOVED, an
 * unsolicited "sunsubscribe" push (slot migrated), a failover or any topology
 * change; "smessage" pushes from every shard reach one callback.
 *
 * The router is also a struct redis_bus (redis_bus_cluster_new), which is how
 * the hub uses it; the cluster_* calls are the typed API underneath, and the
 * introspection calls exist for tests and /stats.
 */
#ifndef HERALD_CLUSTER_MAP_H
#define HERALD_CLUSTER_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster/redis_bus.h"

#define CLUSTER_SLOTS         16384
#define CLUSTER_MAX_REPLICAS  8
#define CLUSTER_MAX_REDIRECTS 16

uint16_t cluster_crc16(const char *buf, size_t len);
/* The slot of key: CRC16 of the first non-empty {hash tag} if any, else of the key. */
uint16_t cluster_keyslot(const char *key, size_t len);

struct cluster_addr {
    char host[64];
    int port;
};

struct cluster_shard {
    uint16_t start, end; /* inclusive slot range */
    struct cluster_addr master;
    int nreplicas;
    struct cluster_addr replica[CLUSTER_MAX_REPLICAS];
};

/*
 * Parses a CLUSTER SLOTS reply (no I/O). An empty host in the reply means the
 * node that answered: `self_host` is used. Returns the number of slot ranges in
 * the reply (at most CLUSTER_SLOTS), of which the first `max` are written to out
 * (call again with room for all when it is more), or -1 if the reply is malformed.
 */
int cluster_parse_slots(const redisReply *r, const char *self_host, struct cluster_shard *out,
                        int max);
/* Parses "-MOVED 3999 127.0.0.1:6381" / "-ASK ...". Returns true and fills slot/addr. */
bool cluster_parse_redirect(const redisReply *r, bool *ask, int *slot, struct cluster_addr *addr);

struct cluster_router;

/* seeds: "host:port,host:port,..." (copied). NULL if the list is empty or malformed. */
struct cluster_router *cluster_router_new(struct loop *loop, const char *seeds,
                                          const struct redis_bus_opts *opts,
                                          const struct redis_bus_callbacks *cbs);
/* Deferred like redis_bus_free (safe inside callbacks). */
void cluster_router_free(struct cluster_router *r);
struct redis_bus *cluster_router_bus(struct cluster_router *r);

/*
 * Sends a command to the master owning `slot` (or key's slot). argv copied.
 * Returns 0 (cb runs exactly once, later) or a negative RESP_E* (cb never
 * runs). Redirections and retries are invisible to cb, which sees the final
 * reply, or status RESP_EDEADLINE / RESP_EREDIRECT / RESP_ECANCELED.
 */
int cluster_command_slot(struct cluster_router *r, int slot, resp_reply_fn *cb, void *arg, int argc,
                         const char **argv, const size_t *argvlen);
int cluster_command_key(struct cluster_router *r, const char *key, size_t len, resp_reply_fn *cb,
                        void *arg, int argc, const char **argv, const size_t *argvlen);
/* SPUBLISH channel data. */
int cluster_spublish(struct cluster_router *r, const char *channel, size_t channel_len,
                     const char *data, size_t len, resp_reply_fn *cb, void *arg);
/* Keeps channel SSUBSCRIBEd on its shard from now on (idempotent). 1 when it is
 * subscribed already (no on_subscribed follows, unless it is re-established), 0 when
 * a subscription is under way, or RESP_EINVAL. */
int cluster_ssubscribe(struct cluster_router *r, const char *channel, size_t len);
int cluster_sunsubscribe(struct cluster_router *r, const char *channel, size_t len);

/* Introspection. "host:port" of slot's master as the router believes, or NULL. */
const char *cluster_router_slot_owner(const struct cluster_router *r, int slot);
/* Successful topology refreshes so far. */
uint64_t cluster_router_refreshes(const struct cluster_router *r);
/* Channels confirmed subscribed / wanted. */
size_t cluster_router_subscribed(const struct cluster_router *r, size_t *wanted);
/* MOVED and ASK replies followed so far. */
uint64_t cluster_router_redirects(const struct cluster_router *r, uint64_t *asks);

#endif
