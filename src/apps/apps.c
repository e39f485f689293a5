/*
 * apps: the registry of apps, their plans and their persistence. See apps.h.
 */
#include "apps/apps.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "hooks/hooks.h"
#include "hub/batch.h"

static const struct plan builtin_plans[] = {
    {.name = "free",
     .description = "100 connections, 100 channels, 10 publishes/s, 64 KiB messages",
     .max_connections = 100,
     .max_channels = 100,
     .max_publish_rate = 10,
     .max_message_bytes = 64 * 1024,
     .max_history = 100},
    {.name = "standard",
     .description = "10,000 connections, 10,000 channels, 1,000 publishes/s, 256 KiB messages",
     .max_connections = 10000,
     .max_channels = 10000,
     .max_publish_rate = 1000,
     .max_message_bytes = 256 * 1024,
     .max_history = 1000},
    {.name = "unlimited",
     .description = "no limits but the server's own",
     .max_connections = 0,
     .max_channels = 0,
     .max_publish_rate = 0,
     .max_message_bytes = 0,
     .max_history = 0},
};

static struct {
    pthread_rwlock_t lock;
    struct map apps;
    struct plan *plans;
    size_t nplans;
    struct hub *hub;
    const struct herald_config *cfg;
    struct apps_store *store;
    bool ready;
} reg = {.lock = PTHREAD_RWLOCK_INITIALIZER};

/* ---- names, keys, plans ------------------------------------------------------ */

bool apps_name_valid(const char *name, size_t len)
{
    if (len < 1 || len > APP_NAME_MAX || name[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

/* A fresh random key: 32 bytes from the OpenSSL generator, base64url without padding. */
static void new_key(char out[APP_KEY_LEN + 1])
{
    unsigned char r[32];
    if (RAND_bytes(r, sizeof(r)) != 1)
        abort(); /* the OpenSSL generator cannot fail once seeded */
    _Static_assert(BASE64URL_LEN(sizeof(r)) == APP_KEY_LEN, "a key is 32 random bytes");
    out[base64url_encode(out, r, sizeof(r))] = '\0';
}

const struct plan *apps_plans(size_t *n)
{
    *n = reg.nplans;
    return reg.plans;
}

const struct plan *apps_plan(const char *name)
{
    for (size_t i = 0; i < reg.nplans; i++)
        if (strcmp(reg.plans[i].name, name) == 0)
            return &reg.plans[i];
    return NULL;
}

static int plan_uint(json_t *o, const char *key, uint32_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX) {
        snprintf(err, errlen, "\"%s\" is a whole number from 0 (no limit) up", key);
        return -1;
    }
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

/* --plans FILE: {"plans":[{"name":…,"description":…,"connections":…,"channels":…,
 * "publishes_per_second":…,"message_bytes":…,"history":…}]} (or the bare array). */
static int load_plans(const char *path, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    if (!doc) {
        snprintf(err, errlen, "--plans %s: %s (line %d)", path, jerr.text, jerr.line);
        return -1;
    }
    json_t *arr = json_is_array(doc) ? doc : json_object_get(doc, "plans");
    if (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > 64) {
        snprintf(err, errlen, "--plans %s: expected {\"plans\": [ 1 to 64 plans ]}", path);
        json_decref(doc);
        return -1;
    }
    reg.nplans = json_array_size(arr);
    reg.plans = xcalloc(reg.nplans, sizeof(*reg.plans));
    for (size_t i = 0; i < reg.nplans; i++) {
        json_t *o = json_array_get(arr, i);
        struct plan *p = &reg.plans[i];
        const char *name = json_string_value(json_object_get(o, "name"));
        char why[128] = "";
        if (!json_is_object(o) || !name || !*name || strlen(name) > PLAN_NAME_MAX ||
            apps_plan(name) != NULL) {
            snprintf(why, sizeof(why), "each plan has a unique \"name\" of 1-%d bytes",
                     PLAN_NAME_MAX);
        } else {
            snprintf(p->name, sizeof(p->name), "%s", name);
            const char *d = json_string_value(json_object_get(o, "description"));
            snprintf(p->description, sizeof(p->description), "%s", d ? d : "");
            if (plan_uint(o, "connections", &p->max_connections, why, sizeof(why)) ||
                plan_uint(o, "channels", &p->max_channels, why, sizeof(why)) ||
                plan_uint(o, "publishes_per_second", &p->max_publish_rate, why, sizeof(why)) ||
                plan_uint(o, "message_bytes", &p->max_message_bytes, why, sizeof(why)) ||
                plan_uint(o, "history", &p->max_history, why, sizeof(why)))
                p->name[0] = '\0';
        }
        if (why[0]) {
            snprintf(err, errlen, "--plans %s: plan %zu: %s", path, i + 1, why);
            free(reg.plans);
            reg.plans = NULL;
            json_decref(doc);
            return -1;
        }
    }
    json_decref(doc);
    return 0;
}

static void apply_plan(struct app *a, const struct plan *p)
{
    snprintf(a->plan, sizeof(a->plan), "%s", p->name);
    atomic_store(&a->t.max_channels, p->max_channels);
    atomic_store(&a->t.max_history, p->max_history);
    atomic_store(&a->t.max_conns, p->max_connections);
    atomic_store(&a->max_message_bytes, p->max_message_bytes);
    atomic_store(&a->max_publish_rate, p->max_publish_rate);
}

json_t *apps_plan_json(const struct plan *p)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "name", p->name, "description",
                     p->description, "connections", (json_int_t)p->max_connections, "channels",
                     (json_int_t)p->max_channels, "publishes_per_second",
                     (json_int_t)p->max_publish_rate, "message_bytes",
                     (json_int_t)p->max_message_bytes, "history", (json_int_t)p->max_history);
}

/* ---- the registry ---------------------------------------------------------------- */

static void app_release(struct hub_tenant *t)
{
    struct app *a = app_of(t);
    token_verifier_free(a->policy_token.verifier);
    hook_target_put(a->hooks);
    pthread_mutex_destroy(&t->lock);
    free(a);
}

/* Makes the app's policies once it has its token secret. */
static void make_policies(struct app *a)
{
    if (a->policy_token.verifier || !a->token_secret[0])
        return;
    uint32_t skew = reg.cfg->token_skew_ms / 1000;
    a->policy_token.subscribe = AUTH_TOKEN;
    a->policy_token.verifier = token_verifier_hs256(a->token_secret, strlen(a->token_secret), skew);
    a->policy_public.subscribe = AUTH_PUBLIC;
    a->policy_public.verifier = a->policy_token.verifier;
}

const struct auth_policy *apps_policy(struct hub_tenant *t)
{
    struct app *a = app_of(t);
    return atomic_load(&a->subscribe_public) ? &a->policy_public : &a->policy_token;
}

struct hook_target *apps_hooks(struct hub_tenant *t)
{
    struct app *a = app_of(t);
    if (!atomic_load_explicit(&a->hooks, memory_order_relaxed))
        return NULL;
    pthread_mutex_lock(&t->lock);
    struct hook_target *h = a->hooks;
    if (h)
        hook_target_get(h);
    pthread_mutex_unlock(&t->lock);
    return h;
}

static struct app *app_new(const char *name, size_t len)
{
    struct app *a = xcalloc(1, sizeof(*a));
    memcpy(a->name, name, len);
    snprintf(a->t.prefix, sizeof(a->t.prefix), "%s%c", a->name, CHANNEL_NS_SEP);
    a->t.prefix_len = (uint32_t)len + 1;
    atomic_init(&a->t.refs, 1); /* the registry's */
    pthread_mutex_init(&a->t.lock, NULL);
    a->t.auto_create = -1;
    a->t.release = app_release;
    a->node.key = a->name;
    a->node.key_len = (uint32_t)len;
    a->created_ms = wall_ms();
    return a;
}

struct app *apps_get(const char *name, size_t len)
{
    pthread_rwlock_rdlock(&reg.lock);
    struct map_node *n = reg.ready ? map_get(&reg.apps, name, len) : NULL;
    struct app *a = n ? container_of(n, struct app, node) : NULL;
    if (a)
        hub_tenant_get(&a->t);
    pthread_rwlock_unlock(&reg.lock);
    return a;
}

/* hub.tenant_of: prefix is "APP~". Hub lock held (the registry lock comes after it). */
static struct hub_tenant *tenant_of(void *arg, const char *prefix, size_t len)
{
    (void)arg;
    struct app *a = len ? apps_get(prefix, len - 1) : NULL;
    return a ? &a->t : NULL;
}

size_t apps_count(void)
{
    pthread_rwlock_rdlock(&reg.lock);
    size_t n = reg.ready ? reg.apps.len : 0;
    pthread_rwlock_unlock(&reg.lock);
    return n;
}

void apps_each(void (*fn)(struct app *a, void *arg), void *arg)
{
    pthread_rwlock_rdlock(&reg.lock);
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while (reg.ready && (n = map_next(&reg.apps, &b, &next)))
        fn(container_of(n, struct app, node), arg);
    pthread_rwlock_unlock(&reg.lock);
}

static json_t *app_json_locked(const struct app *a, bool secrets);

static void collect(struct app *a, void *arg)
{
    json_array_append_new(arg, app_json_locked(a, false)); /* apps_each holds the lock */
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "name")),
                  json_string_value(json_object_get(*(json_t *const *)b, "name")));
}

json_t *apps_list(void)
{
    json_t *arr = json_array();
    apps_each(collect, arr);
    size_t n = json_array_size(arr);
    json_t **items = xmalloc((n ? n : 1) * sizeof(*items));
    for (size_t i = 0; i < n; i++)
        items[i] = json_incref(json_array_get(arr, i));
    qsort(items, n, sizeof(*items), cmp_name);
    json_array_clear(arr);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, items[i]);
    free(items);
    return arr;
}

/* ---- persistence --------------------------------------------------------------- */

static int save(const struct app *a, enum apps_put how);

/* The app's settings as JSON (null: the server's own); a webhook_secret only `secrets`
 * (its stored state), else "(set)". */
static json_t *settings_json(struct app *a, bool secrets)
{
    struct hub_tenant *t = &a->t;
    pthread_mutex_lock(&t->lock);
    json_t *o = json_pack(
        "{s:s?,s:o,s:o,s:o}", "cors_origins", t->cors_origins[0] ? t->cors_origins : NULL,
        "history_size", t->history_size ? json_integer(t->history_size) : json_null(),
        "history_ttl", t->history_ttl_ms ? json_integer(t->history_ttl_ms / 1000) : json_null(),
        "auto_create", t->auto_create < 0 ? json_null() : json_boolean(t->auto_create));
    json_object_set_new(o, "batch_ms", t->batch_ms ? json_integer(t->batch_ms) : json_null());
    json_object_set_new(o, "conflate", json_string(t->conflate ? "latest" : "none"));
    json_object_set_new(o, "presence", json_boolean(t->presence));
    if (a->hooks)
        hooks_settings_to_json(&a->hooks->s, o, secrets);
    pthread_mutex_unlock(&t->lock);
    return o;
}

/* One setting: a whole number in [min, max], or null for the server's. */
static int setting_uint(json_t *s, const char *key, uint32_t min, uint32_t max, bool *has,
                        uint32_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(s, key);
    *has = v != NULL;
    if (!v || json_is_null(v)) {
        *out = 0;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "\"%s\" is a whole number from %u to %u, or null", key, min, max);
        return -1;
    }
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

/* The conflate setting: "latest" (with a window: batch_ms in s, or the app's), "none" or
 * null (none). Returns 0 or -1 with err. */
static int setting_conflate(struct app *a, json_t *s, bool has_bms, uint32_t bms, bool *has,
                            bool *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(s, "conflate");
    if (!v)
        return 0;
    const char *str = json_is_string(v) ? json_string_value(v) : json_is_null(v) ? "none" : "";
    if (strcmp(str, "latest") && strcmp(str, "none")) {
        snprintf(err, errlen, "\"conflate\" is \"latest\", \"none\" or null");
        return -1;
    }
    *has = true;
    *out = !strcmp(str, "latest");
    pthread_mutex_lock(&a->t.lock);
    uint32_t window = has_bms ? bms : a->t.batch_ms;
    pthread_mutex_unlock(&a->t.lock);
    if (*out && !window) {
        snprintf(err, errlen,
                 "\"conflate\": \"latest\" keeps the newest message of each delivery window: "
                 "set \"batch_ms\" (1 to %u) too",
                 BATCH_MS_MAX);
        return -1;
    }
    return 0;
}

int apps_set_settings(struct app *a, json_t *s, bool store, char *err, size_t errlen)
{
    static const char *known[] = {"cors_origins", "history_size", "history_ttl", "auto_create",
                                  "batch_ms",     "conflate",     "presence"};
    const char *key;
    json_t *v;
    bool has_hooks = false;
    json_object_foreach(s, key, v)
    {
        bool ok = hooks_is_setting(key);
        has_hooks |= ok;
        for (size_t i = 0; i < ARRAY_LEN(known); i++)
            ok |= strcmp(key, known[i]) == 0;
        if (!ok) {
            snprintf(err, errlen,
                     "unknown setting \"%s\" (known: cors_origins, history_size, history_ttl, "
                     "auto_create, batch_ms, conflate, presence, %s)",
                     key, hooks_setting_names);
            return APPS_BAD_SETTING;
        }
    }
    struct hook_settings whs; /* webhook_* over what the app had */
    if (has_hooks) {
        pthread_mutex_lock(&a->t.lock);
        if (a->hooks)
            whs = a->hooks->s;
        else
            hooks_default_settings(&whs);
        pthread_mutex_unlock(&a->t.lock);
        if (hooks_settings_from_json(&whs, s, err, errlen) < 0)
            return APPS_BAD_SETTING;
    }
    char origins[sizeof(a->t.cors_origins)] = "";
    json_t *o = json_object_get(s, "cors_origins");
    if (o && !json_is_null(o)) {
        const char *why = NULL;
        if (!json_is_string(o) || json_string_length(o) >= sizeof(origins))
            why = "a comma list of origins under 512 bytes";
        else {
            snprintf(origins, sizeof(origins), "%s", json_string_value(o));
            why = config_check_origins(origins);
        }
        if (why) {
            snprintf(err, errlen, "\"cors_origins\": %s", why);
            return APPS_BAD_SETTING;
        }
    }
    json_t *pr = json_object_get(s, "presence");
    if (pr && !json_is_boolean(pr) && !json_is_null(pr)) {
        snprintf(err, errlen, "\"presence\" is true (new channels keep presence), false or null");
        return APPS_BAD_SETTING;
    }
    json_t *ac = json_object_get(s, "auto_create");
    if (ac && !json_is_boolean(ac) && !json_is_null(ac)) {
        snprintf(err, errlen, "\"auto_create\" is true, false or null");
        return APPS_BAD_SETTING;
    }
    bool has_hs, has_ht;
    uint32_t hs, ht;
    if (setting_uint(s, "history_size", 1, 1000000, &has_hs, &hs, err, errlen) ||
        setting_uint(s, "history_ttl", 1, 30u * 86400, &has_ht, &ht, err, errlen))
        return APPS_BAD_SETTING;
    bool has_bms, has_cf = false, cf = false;
    uint32_t bms;
    if (setting_uint(s, "batch_ms", 0, BATCH_MS_MAX, &has_bms, &bms, err, errlen) ||
        setting_conflate(a, s, has_bms, bms, &has_cf, &cf, err, errlen))
        return APPS_BAD_SETTING;
    struct hook_target *hooks = has_hooks ? hook_target_new(&whs, a->token_secret) : NULL;
    struct hub_tenant *t = &a->t;
    pthread_mutex_lock(&t->lock);
    if (o)
        memcpy(t->cors_origins, origins, sizeof(origins));
    if (has_hs)
        t->history_size = hs;
    if (has_ht)
        t->history_ttl_ms = ht * 1000;
    if (has_bms)
        t->batch_ms = bms;
    if (has_cf)
        t->conflate = cf;
    if (!t->batch_ms)
        t->conflate = false; /* conflating needs a window */
    if (ac)
        t->auto_create = json_is_null(ac) ? -1 : json_is_true(ac);
    if (pr)
        t->presence = json_is_true(pr);
    if (hooks) {
        struct hook_target *old = a->hooks;
        a->hooks = hooks; /* calls in flight keep the old one */
        hooks = old;
    }
    pthread_mutex_unlock(&t->lock);
    hook_target_put(hooks);
    return store ? save(a, APPS_PUT_UPDATE) : 0;
}

int apps_check_settings(json_t *settings, char *err, size_t errlen)
{
    struct app *probe = xcalloc(1, sizeof(*probe));
    pthread_mutex_init(&probe->t.lock, NULL);
    int rc = apps_set_settings(probe, settings, false, err, errlen);
    hook_target_put(probe->hooks);
    pthread_mutex_destroy(&probe->t.lock);
    free(probe);
    return rc;
}

/* apps_state_json with the registry lock held. */
static json_t *state_json_locked(const struct app *a)
{
    json_t *keys = json_array();
    for (int i = 0; i < APP_MAX_KEYS; i++)
        if (a->keys[i][0])
            json_array_append_new(keys, json_string(a->keys[i]));
    return json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:s,s:I,s:s,s:o}", "name", a->name, "plan", a->plan,
                     "team", a->team, "user", a->user, "publish_keys", keys, "token_secret",
                     a->token_secret, "subscribe", a->subscribe_public ? "public" : "token",
                     "created", (json_int_t)a->created_ms, "bound", a->bound, "settings",
                     settings_json((struct app *)a, true));
}

json_t *apps_state_json(const struct app *a)
{
    pthread_rwlock_rdlock(&reg.lock);
    json_t *o = state_json_locked(a);
    pthread_rwlock_unlock(&reg.lock);
    return o;
}

static void collect_state(struct app *a, void *arg)
{
    json_array_append_new(arg, state_json_locked(a));
}

json_t *apps_states(void)
{
    json_t *arr = json_array();
    apps_each(collect_state, arr);
    return arr;
}

/* Records a change (state NULL: the app was deleted) in the store. Registry lock not
 * held. Returns 0 or APPS_STATE. */
static int save(const struct app *a, enum apps_put how)
{
    if (!reg.store)
        return 0;
    json_t *state = how == APPS_PUT_DELETE ? NULL : apps_state_json(a);
    int rc = reg.store->put(reg.store, a->name, state, how);
    json_decref(state);
    return rc;
}

static void copy_str(char *dst, size_t size, json_t *v)
{
    snprintf(dst, size, "%s", json_is_string(v) ? json_string_value(v) : "");
}

/* Sets a's fields from its stored state. Registry write lock held (or a is new). */
static void app_set_state(struct app *a, json_t *o)
{
    const char *plan = json_string_value(json_object_get(o, "plan"));
    const struct plan *p = plan ? apps_plan(plan) : NULL;
    if (!p) {
        p = &reg.plans[0];
        log_warn("apps: app %s has plan \"%s\", which --plans does not have: it gets \"%s\"",
                 a->name, plan ? plan : "", p->name);
    }
    apply_plan(a, p);
    copy_str(a->team, sizeof(a->team), json_object_get(o, "team"));
    copy_str(a->user, sizeof(a->user), json_object_get(o, "user"));
    copy_str(a->token_secret, sizeof(a->token_secret), json_object_get(o, "token_secret"));
    if (!a->token_secret[0]) {
        /* Never an app whose tokens nobody can check (nor one that turns public). */
        new_key(a->token_secret);
        log_warn("apps: app %s had no token secret in its stored state: this node made it a new "
                 "one (POST /admin/apps/%s/keys shows it); its tokens must be signed with that",
                 a->name, a->name);
    }
    copy_str(a->bound, sizeof(a->bound), json_object_get(o, "bound"));
    json_t *keys = json_object_get(o, "publish_keys");
    char old[APP_MAX_KEYS][APP_KEY_LEN + 1];
    memcpy(old, a->keys, sizeof(old));
    for (size_t k = 0; k < APP_MAX_KEYS; k++)
        copy_str(a->keys[k], sizeof(a->keys[k]), json_array_get(keys, k));
    for (size_t k = 0; k < APP_MAX_KEYS; k++) /* a key gone (revoked elsewhere) */
        if (old[k][0] && strcmp(old[k], a->keys[0]) != 0 && strcmp(old[k], a->keys[1]) != 0)
            atomic_fetch_add(&a->t.creds_epoch, 1);
    const char *sub = json_string_value(json_object_get(o, "subscribe"));
    a->subscribe_public = sub && strcmp(sub, "public") == 0;
    json_t *created = json_object_get(o, "created");
    if (json_is_integer(created))
        a->created_ms = (uint64_t)json_integer_value(created);
    json_t *settings = json_object_get(o, "settings");
    char why[200];
    if (json_is_object(settings) && apps_set_settings(a, settings, false, why, sizeof(why)))
        log_warn("apps: app %s: stored settings refused: %s", a->name, why);
}

/* Deletes the channels of a (no longer in the registry) and drops the registry's
 * reference. Registry lock not held. */
static void app_retire(struct app *a)
{
    atomic_store(&a->t.gone, true); /* its connections may do nothing more */
    /* Its users' channels last: a stream ends with the last channel it holds, so its
     * subscribers hear about the channels they named first. */
    while (hub_channel_delete_prefix(reg.hub, a->t.prefix, false, 256))
        ;
    while (hub_channel_delete_prefix(reg.hub, a->t.prefix, true, 256))
        ;
    hub_tenant_put(&a->t); /* the registry's reference */
}

size_t apps_sync(json_t *states, bool complete)
{
    size_t changed = 0, i;
    json_t *o;
    struct app **gone = NULL;
    size_t ngone = 0;
    pthread_rwlock_wrlock(&reg.lock);
    json_array_foreach(states, i, o)
    {
        const char *name = json_string_value(json_object_get(o, "name"));
        if (!name || !apps_name_valid(name, strlen(name))) {
            log_warn("apps: stored entry %zu has no valid name: skipped", i);
            continue;
        }
        struct map_node *n = map_get(&reg.apps, name, strlen(name));
        struct app *a = n ? container_of(n, struct app, node) : NULL;
        if (a) { /* unchanged apps are left alone (a cluster syncs them all often) */
            json_t *cur = state_json_locked(a);
            bool same = json_equal(cur, o);
            json_decref(cur);
            if (same)
                continue;
        } else {
            a = app_new(name, strlen(name));
        }
        app_set_state(a, o);
        make_policies(a);
        if (!n)
            map_put(&reg.apps, &a->node);
        changed++;
    }
    if (complete) {
        size_t b = 0;
        struct map_node *n, *next = NULL;
        while ((n = map_next(&reg.apps, &b, &next))) {
            struct app *a = container_of(n, struct app, node);
            bool listed = false;
            json_array_foreach(states, i, o)
            {
                const char *name = json_string_value(json_object_get(o, "name"));
                listed |= name && strcmp(name, a->name) == 0;
            }
            if (listed)
                continue;
            map_del(&reg.apps, n);
            gone = xrealloc(gone, (ngone + 1) * sizeof(*gone));
            gone[ngone++] = a;
        }
    }
    pthread_rwlock_unlock(&reg.lock);
    for (size_t k = 0; k < ngone; k++)
        app_retire(gone[k]);
    free(gone);
    return changed + ngone;
}

int apps_init(struct hub *hub, const struct herald_config *cfg, struct apps_store *store, char *err,
              size_t errlen)
{
    reg.hub = hub;
    reg.cfg = cfg;
    map_init(&reg.apps, 16);
    if (cfg->plans_file[0]) {
        if (load_plans(cfg->plans_file, err, errlen) < 0)
            return -1;
    } else {
        reg.nplans = ARRAY_LEN(builtin_plans);
        reg.plans = xmalloc(sizeof(builtin_plans));
        memcpy(reg.plans, builtin_plans, sizeof(builtin_plans));
    }
    reg.ready = true;
    reg.store = store;
    if (store && store->load(store, err, errlen) < 0)
        return -1;
    hub->tenant_of = tenant_of;
    hub->tenant_arg = NULL;
    if (reg.apps.len)
        log_info("apps: %zu apps loaded", reg.apps.len);
    return 0;
}

void apps_free(void)
{
    /* The store first, outside the registry's lock: its thread may be reading the
     * registry (a snapshot) and is joined. */
    if (reg.store && reg.store->free)
        reg.store->free(reg.store);
    reg.store = NULL;
    pthread_rwlock_wrlock(&reg.lock);
    reg.ready = false;
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&reg.apps, &b, &next))) {
        map_del(&reg.apps, n);
        hub_tenant_put(&container_of(n, struct app, node)->t);
    }
    map_free(&reg.apps);
    free(reg.plans);
    reg.plans = NULL;
    pthread_rwlock_unlock(&reg.lock);
}

/* ---- changes ----------------------------------------------------------------- */

int apps_create(const char *name, const char *plan, const char *team, const char *user,
                int subscribe_public, json_t *settings, struct app **out)
{
    size_t len = strlen(name);
    if (!apps_name_valid(name, len))
        return APPS_BAD_NAME;
    const struct plan *p = plan && *plan ? apps_plan(plan) : &reg.plans[0];
    if (!p)
        return APPS_NO_PLAN;
    struct app *a = app_new(name, len);
    apply_plan(a, p);
    snprintf(a->team, sizeof(a->team), "%s", team ? team : "");
    snprintf(a->user, sizeof(a->user), "%s", user ? user : "");
    new_key(a->keys[0]);
    new_key(a->token_secret);
    make_policies(a);
    atomic_store(&a->subscribe_public, subscribe_public > 0);
    char why[200];
    if (settings && apps_set_settings(a, settings, false, why, sizeof(why))) {
        app_release(&a->t);
        return APPS_BAD_SETTING;
    }
    pthread_rwlock_wrlock(&reg.lock);
    if (map_get(&reg.apps, name, len)) {
        pthread_rwlock_unlock(&reg.lock);
        app_release(&a->t);
        return APPS_EXISTS;
    }
    map_put(&reg.apps, &a->node);
    hub_tenant_get(&a->t);
    pthread_rwlock_unlock(&reg.lock);
    int rc = save(a, APPS_PUT_CREATE);
    if (rc == APPS_EXISTS || rc == APPS_UNAVAILABLE) { /* another node made it first, or
                                                         Redis is down (cluster mode) */
        pthread_rwlock_wrlock(&reg.lock);
        if (map_get(&reg.apps, name, len) == &a->node)
            map_del(&reg.apps, &a->node);
        pthread_rwlock_unlock(&reg.lock);
        hub_tenant_put(&a->t);
        hub_tenant_put(&a->t);
        return rc;
    }
    *out = a;
    log_info("apps: created %s (plan %s)", a->name, a->plan);
    return rc;
}

int apps_update(struct app *a, const char *plan, int subscribe_public)
{
    const struct plan *p = plan ? apps_plan(plan) : NULL;
    if (plan && !p)
        return APPS_NO_PLAN;
    pthread_rwlock_wrlock(&reg.lock);
    if (p)
        apply_plan(a, p);
    if (subscribe_public >= 0)
        atomic_store(&a->subscribe_public, subscribe_public != 0);
    pthread_rwlock_unlock(&reg.lock);
    return save(a, APPS_PUT_UPDATE);
}

int apps_rotate_key(struct app *a)
{
    pthread_rwlock_wrlock(&reg.lock);
    if (a->keys[1][0]) /* the oldest key goes: WebSockets it opened stop publishing */
        atomic_fetch_add(&a->t.creds_epoch, 1);
    memcpy(a->keys[1], a->keys[0], sizeof(a->keys[0]));
    new_key(a->keys[0]);
    pthread_rwlock_unlock(&reg.lock);
    return save(a, APPS_PUT_UPDATE);
}

int apps_revoke_key(struct app *a, const char *key, size_t len)
{
    int rc = APPS_NOT_FOUND;
    pthread_rwlock_wrlock(&reg.lock);
    for (int i = 0; i < APP_MAX_KEYS; i++)
        if (a->keys[i][0] && ct_equal(key, len, a->keys[i], strlen(a->keys[i]))) {
            if (i == 0) /* the previous one, if any, becomes the current one */
                memcpy(a->keys[0], a->keys[1], sizeof(a->keys[0]));
            a->keys[1][0] = '\0';
            atomic_fetch_add(&a->t.creds_epoch, 1); /* WebSockets it opened stop publishing */
            rc = 0;
            break;
        }
    pthread_rwlock_unlock(&reg.lock);
    return rc ? rc : save(a, APPS_PUT_UPDATE);
}

int apps_bind(struct app *a, const char *tsuru_app, bool bind)
{
    size_t tl0 = strlen(tsuru_app);
    for (size_t i = 0; i < tl0; i++) { /* a name, not a line for the log or the list */
        char c = tsuru_app[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return APPS_BAD_NAME;
    }
    if (!tl0 || tl0 > 100)
        return APPS_BAD_NAME;
    pthread_rwlock_wrlock(&reg.lock);
    char out[sizeof(a->bound)] = "";
    size_t olen = 0, tl = strlen(tsuru_app);
    /* Rebuild the list without tsuru_app, then add it when binding. */
    for (const char *p = a->bound; *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (!(n == tl && memcmp(p, tsuru_app, n) == 0) && olen + n + 2 < sizeof(out)) {
            olen += (size_t)snprintf(out + olen, sizeof(out) - olen, "%s%.*s", olen ? "," : "",
                                     (int)n, p);
        }
        p += n + (e != NULL);
    }
    if (bind && olen + tl + 2 >= sizeof(out)) {
        pthread_rwlock_unlock(&reg.lock);
        return APPS_FULL;
    }
    if (bind)
        snprintf(out + olen, sizeof(out) - olen, "%s%s", olen ? "," : "", tsuru_app);
    memcpy(a->bound, out, sizeof(out));
    pthread_rwlock_unlock(&reg.lock);
    return save(a, APPS_PUT_UPDATE);
}

int apps_delete(struct app *a)
{
    pthread_rwlock_wrlock(&reg.lock);
    struct map_node *n = map_get(&reg.apps, a->name, strlen(a->name));
    if (n != &a->node) {
        pthread_rwlock_unlock(&reg.lock);
        return APPS_NOT_FOUND;
    }
    pthread_rwlock_unlock(&reg.lock);
    /* The store first: in cluster mode a Redis that is down leaves the app everywhere. */
    int rc = save(a, APPS_PUT_DELETE);
    if (rc == APPS_UNAVAILABLE)
        return rc;
    pthread_rwlock_wrlock(&reg.lock);
    bool mine = map_get(&reg.apps, a->name, strlen(a->name)) == &a->node;
    if (mine) /* else a sync from the store removed it meanwhile */
        map_del(&reg.apps, &a->node);
    pthread_rwlock_unlock(&reg.lock);
    log_info("apps: deleted %s", a->name);
    if (mine)
        app_retire(a); /* its channels: no request resolves the app any more */
    return rc;
}

/* ---- checks --------------------------------------------------------------------- */

bool apps_key_matches(const struct app *a, const char *key, size_t len)
{
    bool ok = false;
    pthread_rwlock_rdlock(&reg.lock);
    for (int i = 0; i < APP_MAX_KEYS; i++)
        ok |= a->keys[i][0] && ct_equal(key, len, a->keys[i], strlen(a->keys[i]));
    pthread_rwlock_unlock(&reg.lock);
    return ok;
}

bool apps_take_publish(struct app *a)
{
    uint32_t max = atomic_load_explicit(&a->max_publish_rate, memory_order_relaxed);
    atomic_fetch_add_explicit(&a->t.published, 1, memory_order_relaxed);
    if (!max)
        return true;
    uint64_t sec = now_ms() / 1000;
    uint64_t cur = atomic_load_explicit(&a->rate_window, memory_order_relaxed);
    for (;;) {
        uint64_t n = (cur >> 24) == sec ? (cur & 0xffffff) : 0;
        if (n >= max) {
            atomic_fetch_sub_explicit(&a->t.published, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&a->rate_refused, 1, memory_order_relaxed);
            return false;
        }
        uint64_t next = sec << 24 | (n + 1);
        if (atomic_compare_exchange_weak(&a->rate_window, &cur, next))
            return true;
    }
}

/* apps_json with the registry lock held. */
static json_t *app_json_locked(const struct app *a, bool secrets)
{
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:I}", "name", a->name, "plan", a->plan, "team", a->team,
                  "user", a->user, "subscribe", a->subscribe_public ? "public" : "token", "created",
                  (json_int_t)a->created_ms);
    if (secrets) {
        json_object_set_new(o, "publish_key", json_string(a->keys[0]));
        if (a->keys[1][0])
            json_object_set_new(o, "previous_publish_key", json_string(a->keys[1]));
        json_object_set_new(o, "token_secret", json_string(a->token_secret));
    }
    const struct plan *p = apps_plan(a->plan);
    /* Cluster mode: connections and channels over every node; the rest is this node's. */
    bool cluster = reg.hub && reg.hub->be_ops;
    unsigned conns = atomic_load(&a->t.conns) + (cluster ? atomic_load(&a->t.remote_conns) : 0);
    unsigned chans = cluster ? atomic_load(&a->t.cluster_channels) : atomic_load(&a->t.channels);
    json_t *usage =
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "connections", (json_int_t)conns, "channels",
                  (json_int_t)chans, "publishes", (json_int_t)atomic_load(&a->t.published),
                  "messages", (json_int_t)atomic_load(&a->t.messages), "publishes_refused",
                  (json_int_t)atomic_load(&a->rate_refused), "connections_refused",
                  (json_int_t)atomic_load(&a->t.conns_refused));
    if (cluster)
        json_object_set_new(usage, "node_connections", json_integer(atomic_load(&a->t.conns)));
    json_object_set_new(o, "usage", usage);
    if (p)
        json_object_set_new(o, "limits", apps_plan_json(p));
    json_object_set_new(o, "bound_apps", json_string(a->bound));
    json_object_set_new(o, "settings", settings_json((struct app *)a, secrets));
    return o;
}

json_t *apps_json(const struct app *a, bool secrets)
{
    pthread_rwlock_rdlock(&reg.lock);
    json_t *o = app_json_locked(a, secrets);
    pthread_rwlock_unlock(&reg.lock);
    return o;
}
