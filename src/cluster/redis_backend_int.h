/*
 * redis_backend_int: the backend's internals shared by its files (redis_backend.c,
 * the core, and redis_channels.c); nothing else includes it. Everything here runs
 * on the backend thread unless it says otherwise.
 */
#ifndef HERALD_REDIS_BACKEND_INT_H
#define HERALD_REDIS_BACKEND_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cluster/redis_bus.h"
#include "core/loop.h"
#include "core/map.h"
#include "hub/hub.h"

struct herald_config;

/* Work for the backend thread, queued by redis_backend__post; fn runs there, once,
 * and frees the task. */
struct task {
    struct task *next;
    void (*fn)(struct task *t);
};

#define WARN_SLOTS 8

/* A warning logged lately; its repeats in the current window are only counted. */
struct warn_slot {
    char line[320]; /* "" when free */
    uint64_t since; /* loop time the window started */
    unsigned repeats;
};

struct rb {
    struct map indexed;  /* channels recently added to herald:channels */
    struct map reload;   /* struct reload: gap fills to try again */
    struct map follows;  /* struct follow: the channels this node follows on the bus */
    struct map pfollows; /* struct pfollow: the pattern heads it follows (one Redis) */
    struct list holding; /* follows with bus messages held back (struct follow.holding) */
    struct timer order_timer;
    struct timer reload_timer;
    uint32_t *epoch_tag; /* cluster: per slot, a hash tag on that slot (epoch keys) */
    struct hub *hub;
    const struct herald_config *cfg;
    struct loop loop;
    pthread_t thread;
    atomic_bool stop;
    struct redis_bus *bus;
    bool cluster;
    pthread_mutex_t qlock;
    struct task *q_head, *q_tail;
    struct timer heartbeat;
    char node[64];
    _Atomic enum redis_bus_status status;
    enum redis_bus_status logged_status; /* the last one logged (initially down, silently) */
    struct timer status_timer;           /* logs a degradation that lasted STATUS_SETTLE_MS */
    struct warn_slot warns[WARN_SLOTS];
    struct timer warn_timer;
    struct rapps *apps;         /* the apps store (redis_apps.c), when main made one */
    struct rnodes *nodes;       /* every node's figures (redis_nodes.c) */
    struct rpresence *presence; /* the node's presence identity and lease (redis_presence.c) */
};

/* Queues t for the backend thread (any thread). */
void redis_backend__post(struct rb *rb, struct task *t);
/* Writes the key "herald:{name}:<suffix>" into buf; returns its length. */
size_t redis_backend__key(char *buf, size_t size, const char *name, size_t len, char suffix);
/* Room for a channel's Redis key: "herald:{" KEY "}:x" and the longer ones made from it
 * (a Redis Cluster's last-id key). A shorter buffer would cut keys, and two long names of
 * an app would share one. */
#define REDIS_KEY_MAX (CHANNEL_KEY_MAX + 48)
/* The listing index of the namespace of channel key name[0..len): "herald:channels" for
 * the default app, "herald:channels:{APP}" for an app's (its hash tag puts it on one slot
 * with the app's rate key, for the gate script). buf holds REDIS_INDEX_KEY_MAX. */
#define REDIS_INDEX_KEY_MAX (16 + APP_NAME_MAX + 3)
size_t redis_backend__index_key(char *buf, const char *name, size_t len);
/*
 * The hub error a script's reply (or its failure) stands for, 0 when it is not an
 * error. Redis's own errors are logged as "redis: <what><name>: <error>" (repeats
 * counted). With `detail` (size bytes), what the client should hear when the hub's
 * words for the error do not say it; "" otherwise.
 */
int redis_backend__script_error(struct rb *rb, const redisReply *r, int status, const char *what,
                                const char *name, char *detail, size_t size);
/* For writes nobody waits on (index, heartbeat): Redis's errors are logged (repeats
 * counted), then the write is tried again next time. arg: the struct rb. */
void redis_backend__ignore_reply(const redisReply *r, int status, void *arg);
/* An integer reply, or a decimal string reply, as a number; 0 otherwise. */
uint64_t redis_backend__reply_u64(const redisReply *r);
/* What a channel of key's namespace gets unless set on it: its app's settings (auto_create,
 * history and, when batch_ms is not NULL, window defaults, when presence is not NULL its
 * presence; history capped by its plan),
 * else the server's. Any thread; takes the registry's and the app's locks, never the hub's. */
void redis_backend__ns_defaults(struct rb *rb, const char *key, size_t len, bool *auto_create,
                                uint32_t *history_size, uint32_t *history_ttl_ms,
                                uint32_t *batch_ms, bool *conflate, bool *presence);

/*
 * Apps (redis_apps.c). Before a publish (or, publish false, a PUT) to channels of one
 * app whose plan limits publishes per second or channels, the gate counts them over
 * the cluster: false when there is nothing to check (go on at once), else done runs
 * later on the backend thread with 0, HUB_ERR_APP_RATE, HUB_ERR_APP_CHANNELS or
 * HUB_ERR_BACKEND.
 */
typedef void redis_apps_gate_done(void *arg, int err);
bool redis_apps__gate(struct rb *rb, const char (*names)[CHANNEL_KEY_MAX + 1], const size_t *lens,
                      size_t n, bool publish, redis_apps_gate_done *done, void *arg);
/* Stops the apps' timer (redis_backend_stop, the thread gone). */
void redis_apps__stop(struct rb *rb);

/*
 * Every node's figures (redis_nodes.c). put (any thread, once a second): this node's
 * JSON object, copied, written to Redis with a 3 s TTL; then, while readers ask, the
 * live nodes' objects are read back. get (any thread): appends them, comma-separated,
 * and returns how many (0 when none were read in the last 3 s).
 */
void redis_nodes__init(struct rb *rb);
void redis_nodes__put(struct rb *rb, const char *json, size_t len);
size_t redis_nodes__get(struct rb *rb, struct sbuf *b);
/* After the backend thread stopped. */
void redis_nodes__free(struct rb *rb);

/*
 * Presence, cluster-wide (redis_presence.c): the hub_backend_ops presence_set and
 * presence_get, the node's lease and the sweep of dead nodes' entries (a timer of the
 * backend thread, started by init), and what the bus status changes for it.
 */
void redis_presence__init(struct rb *rb);
void redis_presence__set(void *be, const char *name, size_t len, char kind, const char *user,
                         size_t user_len, uint32_t conns, const char *info, size_t info_len,
                         uint32_t chan_conns);
void redis_presence__get(void *be, int w, const char *name, size_t len, hub_presence_done *done,
                         void *arg);
void redis_presence__on_status(struct rb *rb, enum redis_bus_status status);
/* Starts and stops the tick (backend thread). */
void redis_presence__start(struct rb *rb);
void redis_presence__stop(struct rb *rb);
/* After the backend thread stopped. */
void redis_presence__free(struct rb *rb);

#endif
