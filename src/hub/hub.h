/*
 * hub: channels, their history, subscriptions and the hand-off of published
 * messages to worker threads.
 *
 * Ids: one 64-bit sequence per hub, seeded at start-up with the wall clock in
 * microseconds, so ids are monotonic per channel *and* across channels, and a
 * restart never reuses an id. A single id is therefore a valid cursor over all
 * the channels of a connection ("everything after N"), and every framing of a
 * message, SSE `id:` line included, is the same bytes for every subscriber.
 *
 * Locking: one mutex, the hub lock (hub_lock/hub_unlock), guards the channel
 * table, histories, subscription lists' membership, the expiry heap, the
 * tombstones and the per-address counts. Fan-out does not take it: a publish
 * pushes one reference per channel into the inbox of each worker that has local
 * subscribers (channel->worker_mask), and each worker writes to its own
 * connections. The one exception on the delivery side: the worker that builds a
 * message's deflate frame takes it once to count the frame (hub_ws_deflate).
 * Per-worker state of a channel (channel->local[w]) is only touched by worker w
 * (membership changes happen with the hub lock held, by worker w itself).
 *
 * Lock order: the hub lock, then
 *   - a worker's inbox lock (hub_inbox.lock: storing a message, unlinking a channel),
 *   - in cluster mode, the backend's task-queue lock (the want/unwant calls queue
 *     work: struct rb.qlock in cluster/redis_backend.c).
 * Nothing takes the hub lock while it holds one of those: hub_post, hub_inbox_take
 * and the backend's own queue take theirs alone, and the hub wakes workers
 * (their eventfd) and resumes parked subscribes (on_synced) only after letting
 * the hub lock go. Functions that need the hub lock are named *_locked or say
 * "Hub lock held"; debug builds check it (HUB_ASSERT_LOCKED).
 */
#ifndef HERALD_HUB_H
#define HERALD_HUB_H

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/heap.h"
#include "core/map.h"
#include "core/ref.h"
#include "core/util.h"
#include "hub/msg.h"

#define HUB_MAX_WORKERS  64
#define CHANNEL_NAME_MAX 128
#define EVENT_NAME_MAX   64

/*
 * Namespaces (apps). The hub keys every channel by its *key*: the channel name
 * for the default app, "APP~name" for an app's channel ('~' is never in a
 * name). Everything the hub and the backend store is keyed so (apps never share
 * a channel, a history or a Redis key); what clients see — envelopes, events,
 * channel info — carries the name only (chan_key_name).
 */
#define APP_NAME_MAX    40
#define CHANNEL_NS_SEP  '~'
#define CHANNEL_KEY_MAX (APP_NAME_MAX + 1 + CHANNEL_NAME_MAX)

/*
 * Users (DESIGN.md §12). Messages to a user go to a channel of the user's own in
 * the app's namespace, keyed "[APP~]#user:" and 32 hex digits of SHA-256(sub)
 * (src/users/users.h makes it): '#' is never in a channel name, so no client can
 * name it, and any "sub" (up to 256 bytes of anything) makes a short key that is
 * safe in Redis key names. Clients see such a channel as "#user". It is created by
 * a connection whose token has a "sub" (one per connection, not counted in the
 * per-connection, per-address or the app's channel limits) or by a publish to the
 * user, and kept like any channel (history, expiry, cluster caches).
 */
#define USER_CHAN_MARK    '#'
#define USER_CHAN_NAME    "#user"
#define USER_KEY_TAG      "#user:"
#define USER_KEY_HASH_LEN 32
#define USER_KEY_NAME_LEN (sizeof(USER_KEY_TAG) - 1 + USER_KEY_HASH_LEN)
/* Channels one subscribe may name: --max-channels-per-conn's bound and the user's. */
#define HUB_SUBSCRIBE_MAX 65

/* The name part of a channel key: what clients see ("#user" for a user's channel). */
static inline struct slice chan_key_name(const char *key, size_t len)
{
    const char *sep = memchr(key, CHANNEL_NS_SEP, len);
    struct slice s = sep ? (struct slice){sep + 1, (uint32_t)(len - (size_t)(sep + 1 - key))}
                         : (struct slice){key, (uint32_t)len};
    if (s.len && s.data[0] == USER_CHAN_MARK)
        s.len = sizeof(USER_CHAN_NAME) - 1;
    return s;
}

/* Whether key[0..len) is a user's channel. */
static inline bool chan_key_is_user(const char *key, size_t len)
{
    const char *sep = memchr(key, CHANNEL_NS_SEP, len);
    const char *name = sep ? sep + 1 : key;
    return name < key + len && name[0] == USER_CHAN_MARK;
}

/*
 * An app's share of the hub: its namespace prefix, its limits and its usage.
 * The apps module owns it (embedded in struct app); the hub finds it through
 * hub.tenant_of when it creates a channel with that prefix, and keeps one
 * reference per channel. Channels of the default app have none.
 */
struct hub_tenant {
    atomic_uint refs;
    void (*release)(struct hub_tenant *t); /* the last reference went */
    char prefix[APP_NAME_MAX + 2];         /* "APP~" */
    uint32_t prefix_len;
    /* Settings (lock): each empty or negative means the server's own option. */
    pthread_mutex_t lock;
    char cors_origins[512];                /* who may subscribe from browsers */
    uint32_t history_size, history_ttl_ms; /* defaults of new channels */
    uint32_t batch_ms;                     /* default delivery window of new channels (0: none) */
    bool conflate;                         /* with batch_ms: new channels conflate */
    bool presence;                         /* new channels keep presence */
    int8_t auto_create;                    /* subscribing or publishing creates channels */
    /* Limits, 0 for none (the app's plan; changed at any time). */
    _Atomic uint32_t max_channels, max_history, max_conns;
    /* Usage. */
    atomic_uint channels; /* in the table (changed under the hub lock) */
    atomic_uint conns;
    atomic_uint_fast64_t published, messages, conns_refused;
    /* The app was deleted: its connections may do nothing more (a new app of the same
     * name is another tenant). */
    atomic_bool gone;
    /* Bumped when a publish key is revoked: credentials checked before are stale. */
    atomic_uint creds_epoch;
    /* Cluster mode: the app's connections on the other nodes (as they last reported,
     * see cluster/redis_apps.c) and its channels in Redis (the app's listing index). */
    atomic_uint remote_conns, cluster_channels;
};

/* A connection counted in *slot's app's connections stops being one (NULL: none). */
static inline void hub_tenant_unbind(struct hub_tenant **slot);

/* Writes the key of channel name[0..len) in t's namespace (t NULL: the default app)
 * into out[CHANNEL_KEY_MAX + 1], NUL-terminated; returns its length. */
static inline size_t chan_key_make(char *out, const struct hub_tenant *t, const char *name,
                                   size_t len)
{
    size_t p = t ? t->prefix_len : 0;
    if (len > CHANNEL_NAME_MAX)
        len = CHANNEL_NAME_MAX;
    if (p)
        memcpy(out, t->prefix, p);
    memcpy(out + p, name, len);
    out[p + len] = '\0';
    return p + len;
}

static inline void hub_tenant_get(struct hub_tenant *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

static inline void hub_tenant_put(struct hub_tenant *t)
{
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        t->release(t);
}

static inline void hub_tenant_unbind(struct hub_tenant **slot)
{
    struct hub_tenant *t = *slot;
    if (!t)
        return;
    *slot = NULL;
    atomic_fetch_sub(&t->conns, 1);
    hub_tenant_put(t);
}

struct herald_config;
struct hub_quota;

/* Cluster mode: a channel's local cache of the shared history (see hub_backend). */
enum channel_sync {
    SYNC_NONE = 0, /* in-memory mode: the hub is the source of truth */
    SYNC_PENDING,  /* asked the backend to subscribe and load history */
    SYNC_READY,    /* the cache mirrors the shared history; live messages flow */
    SYNC_FAILED,   /* loading failed (sync_err says why); waiters were told */
    SYNC_FILLING,  /* ready, but re-loading after a bus outage: live messages are held */
};

struct hub_waiter {
    struct hub_waiter *next;
    void *conn;
    int w;
};

struct batch_window;
struct channel_local {
    struct list subs; /* struct sub.chan_link, this worker's subscribers */
    uint32_t n;
    struct batch_window *window; /* batch_ms: the open delivery window (hub/batch.h) */
};

/*
 * A channel. One a subscribe created and nobody published to or PUT is
 * *ephemeral*: it has no messages and no options, it goes as soon as its last
 * subscriber leaves (no TTL), and ephemeral channels have a --max-channels budget
 * of their own, so that subscribers making up names never stop a publish. A
 * publish or a PUT makes it stored. In cluster mode every cache starts ephemeral
 * and becomes stored with its first message: a cache holding none goes with its
 * last subscriber, the others linger (CACHE_LINGER_MS).
 */
struct channel {
    struct map_node node;
    uint64_t id;
    atomic_uint refs; /* hub table + workers with local subs + inbox items */
    uint32_t name_len;
    bool deleted;
    bool ephemeral;
    bool user;                 /* a user's channel (USER_KEY_TAG) */
    bool pattern;              /* a pattern subscription's target, not a channel (patsub.c) */
    bool persistent;           /* an option, with those below */
    bool presence;             /* an option: who is here is kept and told (presence.c) */
    uint8_t sync;              /* cluster mode: enum channel_sync */
    struct hub_quota *quota;   /* the address a subscribe created it for (see hub_client) */
    struct hub_tenant *tenant; /* its app (one reference), NULL: the default app */
    struct heap_node expiry;   /* in hub.expiry; its key is never after the real deadline */
    struct list head_link;     /* in its head's list (hub.channel_heads), a name with a dot */

    /* options */
    uint32_t ttl_ms, history_size, history_ttl_ms, history_bytes;
    uint32_t batch_ms; /* delivery window (hub/batch.h), 0: none */
    bool conflate;     /* a window delivers its newest message only (needs batch_ms) */

    /* history: ring of messages ordered by seq */
    struct msg **hist;
    uint32_t hist_cap, hist_head, hist_len;
    uint64_t hist_bytes;
    uint64_t evicted_seq; /* highest seq no longer retained (gap detection) */
    uint64_t last_seq;
    uint64_t messages; /* published, total */

    uint64_t created_ms;     /* wall */
    uint64_t last_active_ms; /* wall: last publish, subscribe or unsubscribe */
    uint32_t subscribers;    /* all workers; under hub lock */
    uint64_t worker_mask;
    struct channel_local *local; /* [nworkers], NULL until first subscriber */

    /* cluster mode only (and sync, above) */
    int sync_err;               /* hub_error when SYNC_FAILED */
    uint64_t sync_failed_ms;    /* when it failed (a new attempt waits a second) */
    struct hub_waiter *waiters; /* subscribes parked until the cache is ready */
    struct msg **held;          /* live messages that arrived while loading */
    uint32_t nheld;
    uint32_t loads;                /* backend loads in flight (hub_channel_loading) */
    struct chan_presence *present; /* presence.c: who is here, NULL when nobody is counted */

    char name[]; /* name_len bytes and a NUL: a channel costs what its name does */
};

/* A connection's membership in one channel. Owned by the connection. */
struct sub {
    struct list conn_link;
    struct list chan_link;
    struct channel *ch;
    void *conn;
    uint64_t from_seq;  /* live deliveries need seq > from_seq (older came from history) */
    uint64_t after;     /* the connection gets (or got) every message on ch with seq > after */
    uint64_t delivered; /* seq of the last live message handled through this sub (dedup) */
    struct sub_presence *presence; /* counted in ch's presence (presence.c), or NULL */
};

/* What presence.c keeps per counted subscription; the fan-out reads `events`. */
struct sub_presence {
    bool events;                /* the subscriber asked for join/leave events (presence=1) */
    bool anonymous;             /* counted as a connection without a user */
    struct presence_user *user; /* its user's entry; NULL and not anonymous: over the cap */
};

/* Where a subscriber is on s's channel: it has every message up to this id (its
 * cursor, what was replayed, or what came live). See transport_replay. */
static inline uint64_t sub_position(const struct sub *s)
{
    return s->after > s->delivered ? s->after : s->delivered;
}

/*
 * Whether the live message m, arriving through s, goes to s's connection (`held`:
 * its struct sub.conn_link list): not when it came from history already, nor
 * when it is a multi-channel message the connection got through another of its
 * channels (on a Redis Cluster the copies come from different shards, in any
 * order). Records m as handled by s. Worker thread of the connection.
 */
bool hub_sub_takes(const struct list *held, struct sub *s, const struct msg *m);

/* INBOX_PRESENCE: a control event for the subscribers that asked for presence events. */
enum inbox_kind { INBOX_MSG, INBOX_CLOSED, INBOX_CTL, INBOX_CALL, INBOX_PRESENCE };
struct inbox_item {
    enum inbox_kind kind;
    struct msg *msg;        /* INBOX_MSG: one reference owned by the item */
    struct ctl_frames *ctl; /* INBOX_CTL: an event for every subscriber of ch (owned) */
    struct channel *ch;     /* one reference owned by the item: release with hub_channel_put_ref */
    void (*fn)(void *arg);  /* INBOX_CALL: runs on the worker's thread */
    void *arg;
    uint32_t batch_ms; /* INBOX_MSG: ch's window options when the message was stored */
    bool conflate;
};

struct hub_inbox {
    pthread_mutex_t lock;
    struct inbox_item *items;
    uint32_t len, cap;
    void (*wake)(void *arg); /* called (outside the hub lock) when the inbox became non-empty */
    void *wake_arg;
};

struct hub_stats {
    atomic_uint_fast64_t published; /* accepted publishes (one per publish call) */
    atomic_uint_fast64_t messages;  /* messages stored (one per channel) */
    atomic_uint_fast64_t delivered; /* messages written to subscribers */
    atomic_uint_fast64_t bytes_out;
    atomic_uint_fast64_t bytes_in;
    atomic_uint_fast64_t slow_closed;
};

struct hub {
    pthread_mutex_t lock;
    struct map channels;
    uint64_t seq;      /* last assigned id */
    uint64_t boot_seq; /* the first id of this run: cursors below it predate us */
    uint64_t next_chan_id;
    /* Ids order each channel, not the node (a Redis Cluster: one sequence per shard):
     * a subscriber of several channels needs a cursor per channel. */
    bool ids_per_channel;
    const struct herald_config *cfg;
    int nworkers;
    struct hub_inbox inbox[HUB_MAX_WORKERS];
    size_t sweep_bucket;       /* incremental history-trim position */
    struct heap expiry;        /* channels that may expire, by deadline (see hub_sweep) */
    atomic_bool expire_posted; /* more expiry is queued on worker 0 (hub_post) */
    size_t nephemeral;         /* channels in the table that are ephemeral */
    struct map quotas;         /* struct hub_quota by client address */
    struct hub_stats stats;

    /* Pattern subscriptions (patsub.c): struct channel with `pattern` set, by key
     * ("APP~scores.*"), never in `channels`; and the same by the head of the keys they
     * match (struct pat_head: "APP~scores", or "APP~*" for patterns that start with a
     * wildcard), so that a publish looks at the patterns that may match it only. */
    struct map patterns;
    struct map pattern_heads;
    /* In memory, the channels whose names have a dot, by head (struct chan_head): what
     * a pattern's resume walks instead of the whole table. */
    struct map channel_heads;
    uint32_t npatterns_broad; /* patterns starting with a wildcard */

    /* Deleted or expired channels' last ids, so that a channel re-created under the
     * same name still tells old cursors about the gap (in-memory mode; bounded FIFO). */
    struct map tombs;
    struct list tomb_fifo;

    /* The tenant of the app whose keys start with prefix[0..len) ("APP~"), with a
     * reference for the caller, or NULL when there is no such app. Called with the hub
     * lock held: it must not take it. NULL: no apps (every prefixed key is refused). */
    struct hub_tenant *(*tenant_of)(void *arg, const char *prefix, size_t len);
    void *tenant_arg;

    /* cluster mode */
    const struct hub_backend_ops *be_ops; /* NULL: in-memory */
    void *be;
    /* Wakes a parked subscriber (worker thread of w): err 0 = retry now. */
    void (*on_synced)(struct hub *hub, int w, void *conn, int err);
};

/*
 * The hub lock. In debug builds (without NDEBUG) hub_lock records which thread
 * holds it, so that every function that needs it held checks
 * (HUB_ASSERT_LOCKED); in release builds both are the bare mutex.
 */
#ifndef NDEBUG
extern _Thread_local const struct hub *hub__held; /* the hub whose lock this thread holds */
#define HUB_ASSERT_LOCKED(hub) assert(hub__held == (hub))
#else
#define HUB_ASSERT_LOCKED(hub) ((void)(hub))
#endif

static inline void hub_lock(struct hub *hub)
{
    pthread_mutex_lock(&hub->lock);
#ifndef NDEBUG
    assert(!hub__held); /* one hub lock at a time, never twice */
    hub__held = hub;
#endif
}

static inline void hub_unlock(struct hub *hub)
{
#ifndef NDEBUG
    assert(hub__held == hub);
    hub__held = NULL;
#endif
    pthread_mutex_unlock(&hub->lock);
}

/* Error codes (negative) of hub operations; hub_strerror() explains them. */
enum hub_error {
    HUB_ERR_NAME = -1,                 /* channel name invalid */
    HUB_ERR_NOT_FOUND = -2,            /* channel does not exist and auto-create is off */
    HUB_ERR_TOO_MANY = -3,             /* max-channels reached */
    HUB_ERR_CURSOR = -4,               /* cursor malformed or ahead of this server */
    HUB_ERR_TOO_MANY_SUBS = -5,        /* per-connection channel limit */
    HUB_ERR_BACKEND = -6,              /* cluster mode: Redis is unreachable */
    HUB_ERR_TOO_MANY_EPHEMERAL = -7,   /* max-channels ephemeral channels exist (in memory) */
    HUB_ERR_TOO_MANY_FOR_ADDR = -8,    /* max-channels-per-ip: this client address made enough */
    HUB_ERR_APP_CHANNELS = -9,         /* the app's plan allows no more channels */
    HUB_ERR_NO_APP = -10,              /* the channel's app does not exist (deleted) */
    HUB_ERR_APP_RATE = -11,            /* cluster mode: the app's publishes/s are used up */
    HUB_ERR_PATTERNS_PER_CONN = -12,   /* --max-patterns-per-conn */
    HUB_ERR_TOO_MANY_PATTERNS = -13,   /* --max-patterns distinct patterns exist */
    HUB_ERR_PATTERN_UNSUPPORTED = -14, /* a pattern in a mode that cannot give its guarantees */
    HUB_ERR_PRESENCE_OFF = -15,        /* the channel does not keep presence */
};
/* Positive result: the operation continues asynchronously (cluster mode). */
#define HUB_PENDING 1

struct hub;
struct publish_req;
struct publish_result;
struct channel_opts;
struct channel_info;
struct presence_list;

typedef void hub_publish_done(void *arg, int err, const struct publish_result *res);
typedef void hub_info_done(void *arg, int err, const struct channel_info *info, bool created);
typedef void hub_list_done(void *arg, int err, const struct channel_info *infos, size_t n,
                           size_t total);

/*
 * A shared backend (cluster mode: Redis). The hub keeps, per node, a cache of
 * each channel that has local subscribers; the backend stores, orders and
 * distributes messages, and fills caches. Every callback into the caller runs
 * on the caller's worker thread (via hub_post). Calls marked "lock" are made
 * with the hub lock held and must only queue work.
 */
struct hub_backend_ops {
    /* lock: start subscribing to ch on the bus and load its history into the cache. */
    void (*want)(void *be, const char *name, size_t len);
    /* lock: the node has no subscriber left on this channel. */
    void (*unwant)(void *be, const char *name, size_t len);
    /* lock: follow on the bus every channel under the pattern head key[0..len) ("APP~scores":
     * its channels "APP~scores.…"; "APP~*": every channel of the app), and read the
     * listing index for their names; hub_pattern_synced follows, and hub_pattern_ingest
     * for each message. One Redis only (never called where ids are per channel). */
    void (*want_pattern)(void *be, const char *head, size_t len);
    /* lock: the node no longer needs the head. */
    void (*unwant_pattern)(void *be, const char *head, size_t len);
    /* Stores and distributes a message; done(arg, ...) runs later on worker w. */
    void (*publish)(void *be, int w, const struct slice *channels, size_t n,
                    const struct publish_req *req, hub_publish_done *done, void *arg);
    void (*channel_put)(void *be, int w, const char *name, size_t len, const struct channel_opts *o,
                        hub_info_done *done, void *arg);
    void (*channel_get)(void *be, int w, const char *name, size_t len, hub_info_done *done,
                        void *arg);
    void (*channel_delete)(void *be, int w, const char *name, size_t len, hub_info_done *done,
                           void *arg);
    void (*channel_list)(void *be, int w, const char *after, size_t after_len, const char *prefix,
                         size_t max, hub_list_done *done, void *arg);
    /* Cluster-wide view for /stats (may be NULL): appends JSON members to b. */
    void (*stats_json)(void *be, struct sbuf *b);
    /* Once a second (worker 0): this node's figures as a JSON object (node_stats.h), for
     * the other nodes to read. json[0..len) is copied. May be NULL. */
    void (*node_stats_put)(void *be, const char *json, size_t len);
    /* Appends the JSON objects of every live node's last figures, comma-separated, to b
     * and returns how many (0: none read yet). Any thread. While someone asks, the backend
     * reads them once a second (not once per caller). May be NULL. */
    size_t (*node_stats_get)(void *be, struct sbuf *b);
    /* Whether the backend can take publishes now (readiness for /healthz). */
    bool (*ready)(void *be);
    /* lock: this node now has `conns` connections of user[0..user_len) (kind
     * PRESENCE_KIND_USER), without a user (PRESENCE_KIND_ANON) or of users past the cap
     * (PRESENCE_KIND_UNLISTED) on channel name, and chan_conns counted there in all
     * (presence.c); info: the user's, JSON text (may be NULL). Copied. */
    void (*presence_set)(void *be, const char *name, size_t len, char kind, const char *user,
                         size_t user_len, uint32_t conns, const char *info, size_t info_len,
                         uint32_t chan_conns);
    /* Reads the channel's presence, cluster-wide; done runs later on worker w. */
    void (*presence_get)(void *be, int w, const char *name, size_t len,
                         void (*done)(void *arg, int err, struct presence_list *l), void *arg);
};
const char *hub_strerror(int err);
/* Whether *bad_index of a failed hub_subscribe names the channel the error is about: an
 * invalid or unknown name, or one that could not be created (a channel limit). */
bool hub_error_names_channel(int err);
/* The machine-readable name of a hub error ("bad_channel", "channel_not_found"...). */
const char *hub_error_name(int err);
/* The plan limit an error is about ("channels", "publishes_per_second"), or NULL. */
const char *hub_error_limit(int err);

int hub_init(struct hub *hub, const struct herald_config *cfg, int nworkers);
void hub_free(struct hub *hub);

/* Whether key[0..len) is a valid channel key: a name, or "APP~name" (hub.h). */
bool hub_channel_key_valid(const char *key, size_t len);
/* Whether name[0..len) is a valid channel name: 1-128 bytes of [A-Za-z0-9_.:@/-]. */
bool hub_channel_name_valid(const char *name, size_t len);
/* Whether a subscriber may name s[0..len): a channel name or a subscription pattern
 * (pattern_is_subscription, src/hub/pattern.h). */
bool hub_sub_name_valid(const char *s, size_t len);
/* Whether name[0..len) is a valid event name: 1-64 bytes of [A-Za-z0-9_.:-]. */
bool hub_event_name_valid(const char *name, size_t len);

/* Parses a cursor ("" -> 0). Returns 0 or HUB_ERR_CURSOR. */
int hub_cursor_parse(const char *s, size_t len, uint64_t *out);

struct publish_result {
    uint64_t id;
    uint32_t subscribers; /* local subscribers reached, summed over channels */
    const char *detail;   /* on error: what went wrong in the backend's words (e.g. what Redis
                             answered), borrowed for the done call; NULL: hub_strerror's */
};

/*
 * Publishes one message to n channels (names validated by the caller; n >= 1,
 * no duplicates). Stores it in each channel's history before returning, then
 * hands it to the workers. Returns 0 or a negative hub_error (nothing stored).
 * In-memory mode only; callers use hub_publish_async.
 */
int hub_publish(struct hub *hub, const struct slice *channels, size_t n,
                const struct publish_req *req, struct publish_result *res);
/*
 * Publishes in either mode: done(arg, err, res) runs once, inline in memory
 * mode, later on worker w in cluster mode (after the message is stored). req
 * is copied as needed before this returns.
 */
void hub_publish_async(struct hub *hub, int w, const struct slice *channels, size_t n,
                       const struct publish_req *req, hub_publish_done *done, void *arg);

/*
 * Cluster mode: a message from the bus (already stored in Redis) enters this
 * node's caches and goes to local subscribers. `channels` lists all channels
 * of the publish (for multi-channel dedup); `target` is the one it came for.
 */
void hub_ingest(struct hub *hub, const struct slice *target, const struct slice *channels, size_t n,
                uint64_t seq, uint64_t time_ms, const struct publish_req *req);
/* A stored message read back from Redis (history load / gap fill). */
struct hub_entry {
    uint64_t seq, time_ms;
    struct publish_req req;
    struct slice channels[64];
    size_t nchannels;
};
/*
 * Cluster mode: a load of ch that hub_channel_loading started (`token`) is in:
 * ch's retained history after the cache's last id (oldest first), `evicted` the
 * highest id Redis no longer has (gap detection), `opts` (may be NULL) the
 * channel's history options as Redis keeps them; or err < 0. Entries not yet in
 * the cache are delivered live (gap fill after an outage). When the last load in
 * flight is in, the cache is ready (its held live messages follow) or failed, and
 * parked subscribers are woken. Returns true when the backend should load again
 * later: a gap fill failed with HUB_ERR_BACKEND while subscribers hold the
 * channel (they stay, and their live messages are held meanwhile).
 */
bool hub_channel_loaded(struct hub *hub, const char *name, size_t len, uint64_t token, int err,
                        const struct hub_entry *entries, size_t n, uint64_t evicted,
                        const struct channel_opts *opts);
/* Cluster mode: a PUT changed the channel's window options (o: batch_ms, conflate); the
 * node's cache takes them for the messages that follow. */
void hub_channel_window(struct hub *hub, const char *name, size_t len,
                        const struct channel_opts *o);
/* Cluster mode: the channel was deleted elsewhere; subscribers get `closed`. */
void hub_channel_gone(struct hub *hub, const char *name, size_t len);
/* The channels under a pattern head that a resume reads (in cluster mode each a cache
 * the node loads); past it, the pattern's resume says so with a gap (HUB_GAP_REPLAY_LIMIT),
 * so that one resume holds the hub for a bounded time. */
#define HUB_PATTERN_NAMES_MAX 1000
/*
 * Cluster mode (one Redis): the head's bus subscription is in place (err 0), Redis's
 * last id was `last` after that and the listing index then named names[0..n) under it
 * (more: it has more than were read), or
 * want_pattern failed (err < 0); parked subscribes are woken. `again`: the bus
 * subscription was re-established (Redis came back): its patterns' subscribers get a
 * gap, as what was published meanwhile did not come.
 */
void hub_pattern_synced(struct hub *hub, const char *head, size_t hl, int err, bool again,
                        uint64_t last, const struct slice *names, size_t n, bool more);
/* Cluster mode (one Redis): a message from the bus on `target`, a channel under the
 * head (channels, seq, time_ms, req as for hub_ingest), for its patterns' subscribers. */
void hub_pattern_ingest(struct hub *hub, const char *head, size_t hl, const struct slice *target,
                        const struct slice *channels, size_t n, uint64_t seq, uint64_t time_ms,
                        const struct publish_req *req);
/* Cluster mode, at exit (the backend stopped, the workers too): every subscribe still
 * parked on a cache or a pattern head is answered err, so that the server, which runs
 * those answers, frees its connection. */
void hub_fail_parked(struct hub *hub, int err);
/* Cluster mode: the backend is about to (re)load ch: its live messages are held
 * until the load is in. *last_seq gets the last id this node has seen on ch (0:
 * none), from which a gap fill reads. Returns the token to pass to
 * hub_channel_loaded, or 0 when the channel is not wanted. */
uint64_t hub_channel_loading(struct hub *hub, const char *name, size_t len, uint64_t *last_seq);

/*
 * Subscription results: the messages to replay (each a reference owned by the
 * caller), and the gaps to announce before them.
 */
/* Why a gap names a pattern rather than one of its channels (docs/api.md#gaps). */
enum hub_gap_reason {
    HUB_GAP_CHANNEL,      /* no reason field: the channel's history no longer reaches back */
    HUB_GAP_REPLAY_LIMIT, /* the replay kept its newest --max-pattern-replay messages, or read
                             HUB_PATTERN_NAMES_MAX channels and not the rest */
    HUB_GAP_GAP_LIMIT,    /* more than HUB_REPLAY_GAPS_MAX channels' gaps: this one says it */
};
/* The per-channel gaps one subscribe's pattern replays give at most; past it a pattern's
 * come as one gap naming the pattern (HUB_GAP_GAP_LIMIT). The most channels a connection
 * can name, so that a pattern tells no more than names would. */
#define HUB_REPLAY_GAPS_MAX 64
struct hub_gap {
    struct channel *ch; /* borrowed; valid while the caller's sub holds it; NULL: see name */
    char *name;         /* owned: the key of the channel (or pattern) the gap is about, when
                           no subscription holds it (found through a pattern) */
    uint32_t name_len;
    uint8_t reason;  /* enum hub_gap_reason: why a pattern's gap names the pattern */
    uint64_t oldest; /* oldest retained (or replayed) id, 0 when none */
    uint64_t since;  /* the client's cursor on ch, older than what is retained */
};
struct hub_backlog {
    struct msg **msgs;
    uint32_t n, cap;
    struct hub_gap *gaps;
    uint32_t ngaps;
    uint64_t head_seq; /* the hub's last id when the subscription took effect */
};
void hub_backlog_free(struct hub_backlog *b);

/*
 * Who subscribes, for the limits on what subscribing may hold and create. The
 * channels a client's subscribes create count against its address (--max-
 * channels-per-ip) while they are ephemeral (in memory) or while the cache exists
 * (cluster mode), so that one address cannot take the budget of channels that
 * only have subscribers for itself.
 */
struct hub_client {
    uint32_t max_subs; /* channels the connection may hold (--max-channels-per-conn) */
    bool limited;      /* what it creates counts against addr */
    uint8_t addr[16];  /* see hub_client_set_addr */
    /* With has_since: the client's position on each named channel (names[i]), a
     * per-channel cursor; NULL: `since` for every channel. */
    const uint64_t *since_each;
    /* Who the connection is, for the presence of the channels that keep it (presence.c);
     * NULL: not counted (a long-poll). */
    const struct presence_who *who;
};

/* A subscriber connection as presence counts it. */
struct presence_who {
    const char *user; /* its user (a token's sub, or the connect hook's); NULL: anonymous */
    size_t user_len;
    const char *info; /* the user's info as JSON text (token "info" or the hook's), or NULL */
    size_t info_len;
    bool events; /* it asked for join/leave events (presence=1) */
};
/*
 * Sets cl->addr from a peer address: IPv4 as IPv4-mapped IPv6, IPv6 cut to its
 * /64 (one end site has a /64 of addresses to pick from). Returns false (and
 * leaves cl unlimited) for other families.
 */
bool hub_client_set_addr(struct hub_client *cl, const void *sockaddr);

/*
 * Subscribes `conn` (on worker `w`) to each named channel or pattern (a key with a
 * wildcard segment: see src/hub/patsub.c; refused in cluster mode) it does not already
 * hold (`held`: its list of struct sub.conn_link). New struct sub nodes are
 * appended to `held`. With `has_since`, fills *backlog with the retained messages
 * after `since` (ordered, de-duplicated, and without those the connection gets
 * live through a channel it already held) and the gaps. `cl` bounds what it may
 * hold and create. On error nothing is subscribed. Returns 0 or a negative
 * hub_error; on error *bad_index names the offending channel.
 */
int hub_subscribe(struct hub *hub, int w, void *conn, struct list *held, const struct slice *names,
                  size_t n, bool has_since, uint64_t since, const struct hub_client *cl,
                  struct hub_backlog *backlog, size_t *bad_index);

/* Removes one subscription (and frees the node). */
void hub_unsubscribe(struct hub *hub, int w, struct sub *s);
/* Removes every subscription in `held`. */
void hub_unsubscribe_all(struct hub *hub, int w, struct list *held);

/* Runs fn(arg) on worker w's thread, soon (thread-safe). */
void hub_post(struct hub *hub, int w, void (*fn)(void *arg), void *arg);

/* Worker side: takes the pending inbox items (caller frees the array with free()). */
struct inbox_item *hub_inbox_take(struct hub *hub, int w, uint32_t *n);

/*
 * Drops the channels whose deadline has passed (in the order of their deadlines,
 * however many channels there are) and, a slice of the table per call, aged-out
 * history. Called about once a second. Takes the hub lock for short stretches and
 * returns after about 10 ms: what is left to expire goes on through worker 0's
 * inbox (hub_post), at that loop's next pass.
 */
void hub_sweep(struct hub *hub);

/* Channel administration (publish API). */
struct channel_opts {
    bool has_ttl, has_persistent, has_history_size, has_history_ttl, has_batch_ms, has_conflate;
    bool has_presence;
    uint32_t ttl_ms, history_size, history_ttl_ms;
    uint32_t batch_ms; /* 0..BATCH_MS_MAX; 0 also turns conflate off */
    bool persistent, conflate, presence;
};
struct channel_info {
    char name[CHANNEL_NAME_MAX + 1];
    bool persistent, conflate, presence;
    uint32_t ttl_ms, history_size, history_ttl_ms, batch_ms;
    uint32_t subscribers, messages_retained;
    uint64_t messages_total, last_id, oldest_id, created_ms, last_active_ms, expires_ms;
    uint64_t retained_bytes;
};
/* Either mode: done runs once (inline in memory mode, later on worker w otherwise). */
void hub_channel_put_async(struct hub *hub, int w, const char *name, size_t len,
                           const struct channel_opts *o, hub_info_done *done, void *arg);
void hub_channel_get_async(struct hub *hub, int w, const char *name, size_t len,
                           hub_info_done *done, void *arg);
void hub_channel_delete_async(struct hub *hub, int w, const char *name, size_t len,
                              hub_info_done *done, void *arg);
void hub_channel_list_async(struct hub *hub, int w, const char *after, size_t after_len,
                            const char *prefix, size_t max, hub_list_done *done, void *arg);

/* Creates or updates; *created tells which. Returns 0 or a hub_error. */
int hub_channel_put(struct hub *hub, const char *name, size_t len, const struct channel_opts *o,
                    bool *created, struct channel_info *info);
int hub_channel_get(struct hub *hub, const char *name, size_t len, struct channel_info *info);
/* Deletes; subscribers receive a `closed` event. Returns 0 or HUB_ERR_NOT_FOUND. */
int hub_channel_delete(struct hub *hub, const char *name, size_t len);
/*
 * Lists channels: fills up to `max` infos of channels whose names sort after
 * `after` (paging), sorted by name; *total gets the channel count.
 */
size_t hub_channel_list(struct hub *hub, const char *after, size_t after_len, const char *prefix,
                        struct channel_info *out, size_t max, size_t *total);

/*
 * Deletes up to `max` channels whose keys start with prefix (an app's "APP~"), its
 * users' channels (users) or the others; subscribers receive `closed`. Returns how
 * many it deleted: call again until 0.
 */
size_t hub_channel_delete_prefix(struct hub *hub, const char *prefix, bool users, size_t max);

/* The channels in the table, and how many of them are ephemeral (in cluster mode:
 * caches holding no message). */
void hub_channel_counts(struct hub *hub, size_t *total, size_t *ephemeral);

/* The distinct patterns subscribers hold now (src/hub/patsub.c). */
size_t hub_pattern_count(struct hub *hub);

/*
 * Presence (presence.c, docs/interactive.md#presence): who is on a channel that keeps
 * it. Bounds: bytes of a user's id and of its info (users listed per channel:
 * --max-presence-users).
 */
#define PRESENCE_USER_MAX      256
#define PRESENCE_INFO_MAX      1024
#define PRESENCE_KIND_USER     'u'
#define PRESENCE_KIND_ANON     'a'
#define PRESENCE_KIND_UNLISTED 'x'
struct presence_entry {
    uint32_t conns;
    uint32_t user_off, user_len, info_off, info_len; /* in presence_list.text; info_len 0: none */
};
struct presence_list {
    struct presence_entry *v; /* the users, in no order */
    size_t n, cap;
    struct sbuf text;
    uint64_t connections; /* every counted connection, the users' and the others' */
    uint64_t anonymous;   /* connections without a user */
    uint64_t unlisted;    /* connections of users past --max-presence-users */
};
/* Adds a user (its bytes copied) with conns connections and its info (JSON text, may be
 * NULL). Cannot fail. */
void presence_list_add(struct presence_list *l, const char *user, size_t user_len, uint32_t conns,
                       const char *info, size_t info_len);
void presence_list_free(struct presence_list *l);
typedef void hub_presence_done(void *arg, int err, struct presence_list *l);
/*
 * The presence of channel key[0..len): done(arg, 0, list) (the list is the caller's for
 * the call), or HUB_ERR_NOT_FOUND, HUB_ERR_PRESENCE_OFF, HUB_ERR_BACKEND. Either mode:
 * inline in memory mode, later on worker w in cluster mode.
 */
void hub_presence_get_async(struct hub *hub, int w, const char *key, size_t len,
                            hub_presence_done *done, void *arg);
/* A join or leave event of channel key[0..len), user and info (JSON text, may be NULL). */
struct ctl_frames *hub_presence_frames(const char *key, size_t len, bool join, const char *user,
                                       size_t user_len, const char *info, size_t info_len);
/* Cluster mode: another node changed the channel's option presence (the node's cache
 * counts the subscriptions made from now on accordingly). */
void hub_presence_option(struct hub *hub, const char *key, size_t len, bool on);
/* Cluster mode: calls fn(arg, …) with the hub lock held for every count this node keeps
 * (what hub_backend_ops.presence_set was told last), to tell it all again. */
void hub_presence_snapshot(struct hub *hub,
                           void (*fn)(void *arg, const char *name, size_t len, char kind,
                                      const char *user, size_t user_len, uint32_t conns,
                                      const char *info, size_t info_len, uint32_t chan_conns),
                           void *arg);
/* Cluster mode: a join or leave event from the channel's bus, for the local subscribers
 * that asked for presence events. */
void hub_presence_event(struct hub *hub, const char *key, size_t len, bool join, const char *user,
                        size_t user_len, const char *info, size_t info_len);

/* Releases a channel reference (inbox items own one). Lock-free; may free the channel. */
void hub_channel_put_ref(struct hub *hub, struct channel *ch);

/*
 * The permessage-deflate frame of m (msg_ws_deflate), counted, the first time it
 * is built, in the history that holds m: the building worker takes the hub lock
 * once per message for it.
 */
struct slice hub_ws_deflate(struct hub *hub, struct msg *m, void *deflater);

#endif
