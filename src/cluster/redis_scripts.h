/*
 * redis_scripts: the Lua scripts of the cluster backend (see redis_scripts.c for
 * each one's KEYS, ARGV and answer), called by their SHA1 (EVALSHA). A Redis that
 * lacks a script (restarted, SCRIPT FLUSH, a new master, a slot being imported)
 * answers NOSCRIPT: the call is made again as EVAL, which runs it, with a SCRIPT
 * LOAD, which keeps it (Redis 7.4 may evict what EVAL brought). The caller never
 * sees NOSCRIPT.
 *
 * Usage (backend thread):
 *     redis_script_init();                      // once, before any call
 *     const char *argv[] = {"1", "herald:channels", after, prefix, max};
 *     redis_script_call(bus, REDIS_SCRIPT_LIST, "herald:channels", 15, on_reply, ctx, 5, argv,
 *                       NULL);
 */
#ifndef HERALD_REDIS_SCRIPTS_H
#define HERALD_REDIS_SCRIPTS_H

#include <stddef.h>

#include "cluster/redis_bus.h"

enum redis_script {
    REDIS_SCRIPT_PUBLISH,        /* store and publish a message (one script per shard) */
    REDIS_SCRIPT_PREPARE,        /* across shards: the smallest id a channel can take */
    REDIS_SCRIPT_LOAD,           /* a channel's history, for a node's cache */
    REDIS_SCRIPT_CHANNEL,        /* GET, PUT, DELETE of a channel */
    REDIS_SCRIPT_LIST,           /* a page of the channel listing */
    REDIS_SCRIPT_BEAT,           /* a node's subscriber count of a channel; keeps it alive */
    REDIS_SCRIPT_APPS_PUT,       /* apps: create, update or delete one, bump the version */
    REDIS_SCRIPT_APPS_SNAP,      /* apps: every app and the version, at one moment */
    REDIS_SCRIPT_APPS_BEAT,      /* apps: a node's connections per app; the others' sums */
    REDIS_SCRIPT_APPS_GATE,      /* apps: publishes/s and channels of an app, cluster-wide */
    REDIS_SCRIPT_APPS_PURGE,     /* apps: a deleted app's channel, gone */
    REDIS_SCRIPT_PRESENCE_SET,   /* presence: a node's count of a user on a channel */
    REDIS_SCRIPT_PRESENCE_SWEEP, /* presence: a dead node's entries on a channel, gone */
    REDIS_SCRIPT_PRESENCE_READ,  /* presence: a channel's users as the live nodes count them */
    REDIS_SCRIPT_PRESENCE_TICK,  /* presence: a node's lease, and who else holds one */
    REDIS_SCRIPT_COUNT
};

/* Computes the scripts' SHA1s. Idempotent; call it before the first redis_script_call
 * (not thread-safe against calls running). */
void redis_script_init(void);

/*
 * Runs script `which` with argv[0..argc): numkeys, the keys, the arguments (argl
 * may be NULL: strlen of each); all copied. key routes the call (see
 * redis_bus_command). Returns 0 (cb runs exactly once, later, with the script's
 * answer) or a negative RESP_E* (cb never runs).
 */
int redis_script_call(struct redis_bus *bus, enum redis_script which, const char *key,
                      size_t key_len, resp_reply_fn *cb, void *arg, int argc, const char **argv,
                      const size_t *argl);

/* Loads every script into the Redis behind bus (fire and forget), so that calls find
 * them: for a single Redis that just came up (a cluster's masters get each script
 * with the first NOSCRIPT). */
void redis_script_load_all(struct redis_bus *bus);

#endif
