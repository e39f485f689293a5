/*
 * apps: herald as a service for many applications (DESIGN.md §8). An app is a
 * namespace of channels (its hub_tenant: keys "APP~name"), its publish keys (two
 * during a rotation), its subscriber-token secret, its settings and its plan's
 * limits. The unprefixed endpoints are the default app, which is not an entry
 * here: it has the server's own options and no limits.
 *
 * The registry is a table by name behind a read-write lock; lookups (every
 * /apps/{app}/ request, the hub's tenant_of when it creates a channel) take it
 * for reading and return a reference. Changes persist in --state-dir (one JSON
 * file, written atomically).
 *
 * Lock order: the hub lock, then the registry lock (tenant_of runs under the hub
 * lock); the registry never takes the hub lock while holding its own.
 */
#ifndef HERALD_APPS_H
#define HERALD_APPS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth/auth.h"
#include "hub/hub.h"

struct hook_target;

#define PLAN_NAME_MAX 32
#define APP_KEY_LEN   43 /* base64url of 32 random bytes, no padding */
#define APP_MAX_KEYS  2  /* the current publish key and, during a rotation, the previous one */

/* A plan's limits; 0 means none. */
struct plan {
    char name[PLAN_NAME_MAX + 1];
    char description[128];
    uint32_t max_connections;   /* subscriber connections at once */
    uint32_t max_channels;      /* channels in the app's namespace */
    uint32_t max_publish_rate;  /* publishes per second */
    uint32_t max_message_bytes; /* one message's body */
    uint32_t max_history;       /* messages a channel keeps */
};

struct app {
    struct hub_tenant t; /* first: the hub's view (namespace, limits, usage) */
    struct map_node node;
    char name[APP_NAME_MAX + 1];
    char plan[PLAN_NAME_MAX + 1];
    char team[64], user[128];                 /* who asked for it (Tsuru) */
    char keys[APP_MAX_KEYS][APP_KEY_LEN + 1]; /* publish keys; keys[0] is the current one */
    char token_secret[APP_KEY_LEN + 1];
    atomic_bool subscribe_public; /* subscribe policy: public, or tokens (the default for apps) */
    _Atomic uint32_t max_message_bytes, max_publish_rate; /* from the plan */
    uint64_t created_ms;
    atomic_uint_fast64_t rate_window; /* publish rate: (second << 24) | publishes in it */
    atomic_uint_fast64_t rate_refused;
    /* Subscriber policies, made once (token_secret never changes): the one in force
     * depends on subscribe_public. Connections keep a pointer while they hold the app. */
    struct auth_policy policy_token, policy_public;
    /* Its backend hooks' settings (webhook_*), NULL while none was given. Changed and
     * referenced under t.lock; atomic so that apps_hooks sees an app without any with
     * no lock (what a WebSocket publish asks). */
    struct hook_target *_Atomic hooks;
    /* Tsuru apps bound to it (names), comma-separated. */
    char bound[512];
};

static inline struct app *app_of(struct hub_tenant *t)
{
    return t ? container_of(t, struct app, t) : NULL;
}

/* How an app changed, for its store. */
enum apps_put { APPS_PUT_CREATE, APPS_PUT_UPDATE, APPS_PUT_DELETE };

/*
 * Where apps persist: --state-dir on a single node (apps_file_store), Redis in
 * cluster mode. The registry calls put after each change, outside its lock, from
 * any thread; the store calls apps_sync with what it holds (at load, and in
 * cluster mode whenever another node changed something).
 */
struct apps_store {
    /* Start-up: apps_sync with every stored app. Returns 0, or -1 with a message. */
    int (*load)(struct apps_store *s, char *err, size_t errlen);
    /* Records the app `name` (state: apps_state_json; NULL when deleted). Returns 0,
     * APPS_EXISTS (a create whose name is taken), APPS_NOT_FOUND (an update or delete of
     * an app another node deleted), APPS_STATE (not recorded, logged) or APPS_UNAVAILABLE
     * (cluster mode: Redis did not take it; the registry is put back as Redis has it). */
    int (*put)(struct apps_store *s, const char *name, json_t *state, enum apps_put how);
    void (*free)(struct apps_store *s);
};

/* The --state-dir store: a snapshot (apps.json) and an append-only journal (apps.log),
 * each change fsync'ed, compacted into a new snapshot (written atomically). */
struct apps_store *apps_file_store_new(const char *dir);
/* Cluster mode: the store is cluster/redis_apps.c (redis_apps_store_new), wired by main.c. */

/*
 * Reads the plans (--plans, else the built-in ones), loads the apps from `store`
 * (NULL: apps live in memory) and makes the hub resolve app namespaces through the
 * registry. Returns 0, or -1 with a message in err (start-up stops).
 */
int apps_init(struct hub *hub, const struct herald_config *cfg, struct apps_store *store, char *err,
              size_t errlen);
/* An app's stored state (JSON object: name, plan, keys, secret, settings). */
json_t *apps_state_json(const struct app *a);
/* Every app's stored state (an array), read at once (a snapshot for a store). */
json_t *apps_states(void);
/*
 * Makes the registry hold the apps of `states` (an array of stored states): new
 * ones are added, known ones updated; with `complete`, apps not listed are deleted
 * (their channels too). Returns how many apps it added, changed or removed.
 */
size_t apps_sync(json_t *states, bool complete);
void apps_free(void);

/* The app named name[0..len) with a reference (hub_tenant_put), or NULL. */
struct app *apps_get(const char *name, size_t len);
/* The subscriber policy of t's app (auth_set_app_policy's resolver). */
const struct auth_policy *apps_policy(struct hub_tenant *t);
/* The hooks target of app t (a new reference), or NULL: hooks_set_app_target's. */
struct hook_target *apps_hooks(struct hub_tenant *t);
/* Whether name is a valid app name: 1-40 of [a-z0-9-], starting with a letter or digit. */
bool apps_name_valid(const char *name, size_t len);

const struct plan *apps_plan(const char *name);
const struct plan *apps_plans(size_t *n);

/* Errors of the changing calls: what the API answers. */
enum apps_error {
    APPS_OK = 0,
    APPS_EXISTS = -1,   /* 409 */
    APPS_NO_PLAN = -2,  /* 400 */
    APPS_BAD_NAME = -3, /* 400 */
    APPS_NOT_FOUND = -4,
    APPS_STATE = -5,       /* the state directory could not be written: 500 */
    APPS_BAD_SETTING = -6, /* 400, with a message */
    APPS_UNAVAILABLE = -7, /* cluster mode: Redis did not take the change (made nowhere): 503 */
    APPS_FULL = -8,        /* no room for another bound app: 409 */
};

/* Creates an app with fresh keys (subscribe_public > 0: public, else tokens; settings as
 * apps_set_settings, checked already, or NULL), recorded in one write; *out gets a
 * reference. */
int apps_create(const char *name, const char *plan, const char *team, const char *user,
                int subscribe_public, json_t *settings, struct app **out);
/* Changes an app's plan or settings (NULL / negative: unchanged). */
int apps_update(struct app *a, const char *plan, int subscribe_public);
/*
 * Applies settings {"cors_origins","history_size","history_ttl","auto_create"} (each
 * null for the server's own; absent: unchanged), recording them when `store`.
 * Returns 0, APPS_BAD_SETTING with a message in err (nothing changed), or APPS_STATE.
 */
int apps_set_settings(struct app *a, json_t *settings, bool store, char *err, size_t errlen);
/* Whether settings would be accepted by apps_set_settings (nothing changes). */
int apps_check_settings(json_t *settings, char *err, size_t errlen);
/* Adds a new current publish key (the current one stays valid as the previous). */
int apps_rotate_key(struct app *a);
/* Revokes the publish key `key` (current or previous). */
int apps_revoke_key(struct app *a, const char *key, size_t len);
/* Records or forgets a bound Tsuru app. */
int apps_bind(struct app *a, const char *tsuru_app, bool bind);
/*
 * Deletes an app: out of the registry (no new request reaches it), its channels
 * deleted (subscribers get `closed`), its file entry gone.
 */
int apps_delete(struct app *a);
/* Calls fn for each app (registry read-locked: fn must not change the registry). */
void apps_each(void (*fn)(struct app *a, void *arg), void *arg);
size_t apps_count(void);

/* Whether key[0..len) is one of the app's publish keys (constant time). */
bool apps_key_matches(const struct app *a, const char *key, size_t len);
/* Counts a publish against the app's rate; false when the plan's rate is used up. */
bool apps_take_publish(struct app *a);

/* Every app as apps_json (no credentials), sorted by name. */
json_t *apps_list(void);
/* The app as JSON (credentials when `secrets`), with its plan and usage. */
json_t *apps_json(const struct app *a, bool secrets);
json_t *apps_plan_json(const struct plan *p);

#endif
