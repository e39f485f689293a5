/*
 * redis_backend: the hub's shared backend for cluster mode. Many herald
 * nodes share one Redis (or a Redis Cluster): a publish is stored in the
 * channel's Stream and fanned out over Redis pub/sub (sharded pub/sub on a
 * cluster) before the publisher's 2xx; each node keeps a cache of the channels
 * its own subscribers hold, loaded from the Stream when the first of them
 * arrives and re-filled from it after any outage.
 *
 * Keys, all with the channel as hash tag so one channel lives on one shard:
 *   herald:{ch}:h   Stream of messages, id "<seq>-0", field p = payload, field v =
 *                   the id of the channel's message before it (gap detection)
 *   herald:{ch}:o   hash of channel options (created, persistent, ttl, ...), last id
 *   herald:{ch}:s   a deleted channel's tombstone: last id, evicted (7 days)
 *   herald:{ch}:m   the pub/sub channel carrying the channel's messages
 *   herald:{seq}:i  the last id (one Redis); herald:{ch}:i per channel on a cluster
 *   herald:{seq}:e  the epoch: first id of this data set (one Redis); on a
 *                   cluster herald:{N}:e per slot, N the smallest number on it
 *   herald:channels sorted set of channel names (listing); an app's: herald:channels:{APP}
 *   herald:{ch}:c   hash of subscriber counts: node -> "<count> <expiry ms>"
 *   herald:nodes    sorted set node -> expiry of its last heartbeat
 *   herald:{apps}:* apps and their cluster-wide usage (redis_apps.c)
 *
 * All Redis I/O runs on one thread with its own loop; workers hand it work
 * and get answers back on their own threads (hub_post).
 */
#ifndef HERALD_REDIS_BACKEND_H
#define HERALD_REDIS_BACKEND_H

#include "hub/hub.h"

struct server;

/*
 * Starts the backend thread and connects (asynchronously: a node starts even
 * while Redis is down, answering publishes 503 until it is up). Installs
 * itself as hub->be_ops. Returns 0 or -1 after logging why (bad --redis URL).
 */
int redis_backend_start(struct hub *hub, const struct herald_config *cfg);
/* Stops the thread and frees everything (after the workers have stopped). */
void redis_backend_stop(struct hub *hub);

/*
 * The apps store of cluster mode (redis_apps.c; see struct apps_store in apps/apps.h):
 * apps in Redis, changes on every node within a second, plan limits over the cluster.
 * After redis_backend_start, before apps_init; apps_free frees it.
 */
struct apps_store;
struct apps_store *redis_apps_store_new(struct hub *hub);

#endif
