/*
 * hub: the in-memory backend. Channel table, per-channel history rings,
 * subscription membership and the per-worker inboxes that carry published
 * messages to the threads that own the subscribers.
 */
#include "hub/hub.h"
#include "hub/hub_internal.h"

#include <netinet/in.h>
#include <stdlib.h>

#include "core/config.h"
#include "core/log.h"
#include "hub/pattern.h"

/* hub_sweep: channels expired per lock hold (about 2 ms), and how long it may keep
 * its worker before it lets the loop run (and goes on at the loop's next pass). */
#define EXPIRE_BATCH    1024
#define SWEEP_BUDGET_MS 10

const char *hub_strerror(int err)
{
    switch (err) {
    case HUB_ERR_NAME: return "channel names are 1-128 bytes of letters, digits and _ . : @ / -";
    case HUB_ERR_NOT_FOUND: return "no such channel (auto-create is off: create it first)";
    case HUB_ERR_TOO_MANY:
        return "the server holds its maximum number of channels (--max-channels); publish to an "
               "existing channel or delete unused ones";
    case HUB_ERR_TOO_MANY_FOR_ADDR:
        return "this client address has created its maximum number of channels by subscribing "
               "(--max-channels-per-ip); existing channels can still be subscribed to";
    case HUB_ERR_TOO_MANY_EPHEMERAL:
        return "the server holds its maximum number of channels that only have subscribers "
               "(--max-channels); channels that were published to can still be subscribed to";
    case HUB_ERR_CURSOR: return "the cursor is not a message id from this server";
    case HUB_ERR_TOO_MANY_SUBS: return "too many channels on one connection";
    case HUB_ERR_BACKEND:
        return "the cluster backend (Redis) is unreachable; nothing was stored, retry shortly";
    case HUB_ERR_APP_CHANNELS:
        return "the app holds as many channels as its plan allows (limit: channels); delete "
               "unused channels or move the app to a bigger plan";
    case HUB_ERR_NO_APP: return "the app does not exist (it was deleted)";
    case HUB_ERR_APP_RATE:
        return "the app's plan allows no more publishes this second, counted over every node "
               "(limit: publishes_per_second); retry in a second or move the app to a bigger "
               "plan";
    case HUB_ERR_PATTERNS_PER_CONN:
        return "too many pattern subscriptions on one connection (--max-patterns-per-conn); "
               "unsubscribe from one, or name channels instead";
    case HUB_ERR_TOO_MANY_PATTERNS:
        return "the server holds its maximum number of distinct patterns (--max-patterns); "
               "patterns others subscribe to already can still be subscribed to";
    case HUB_ERR_PATTERN_UNSUPPORTED:
        return "pattern subscriptions need a single node or one Redis server (--redis): on a "
               "Redis Cluster neither live delivery (sharded pub/sub has no patterns) nor resume "
               "(one cursor per channel) can be complete; subscribe to the channels by name";
    case HUB_ERR_PRESENCE_OFF:
        return "the channel does not keep presence: turn it on with PUT /api/channels/{name} "
               "{\"presence\":true} (or the app setting \"presence\"), before its subscribers "
               "come";
    }
    return "unknown error";
}

bool hub_error_names_channel(int err)
{
    return err == HUB_ERR_NAME || err == HUB_ERR_NOT_FOUND || err == HUB_ERR_TOO_MANY ||
           err == HUB_ERR_TOO_MANY_EPHEMERAL || err == HUB_ERR_TOO_MANY_FOR_ADDR ||
           err == HUB_ERR_APP_CHANNELS || err == HUB_ERR_PATTERNS_PER_CONN ||
           err == HUB_ERR_TOO_MANY_PATTERNS || err == HUB_ERR_PATTERN_UNSUPPORTED;
}

const char *hub_error_limit(int err)
{
    return err == HUB_ERR_APP_CHANNELS ? "channels"
           : err == HUB_ERR_APP_RATE   ? "publishes_per_second"
                                       : NULL;
}

const char *hub_error_name(int err)
{
    switch (err) {
    case HUB_ERR_NAME: return "bad_channel";
    case HUB_ERR_NOT_FOUND: return "channel_not_found";
    case HUB_ERR_TOO_MANY:
    case HUB_ERR_TOO_MANY_EPHEMERAL: return "too_many_channels";
    case HUB_ERR_CURSOR: return "bad_cursor";
    case HUB_ERR_TOO_MANY_SUBS: return "too_many_subscriptions";
    case HUB_ERR_TOO_MANY_FOR_ADDR: return "too_many_channels_per_ip";
    case HUB_ERR_BACKEND: return "backend_unavailable";
    case HUB_ERR_APP_CHANNELS: return "limit_exceeded";
    case HUB_ERR_NO_APP: return "app_not_found";
    case HUB_ERR_APP_RATE: return "limit_exceeded";
    case HUB_ERR_PATTERNS_PER_CONN:
    case HUB_ERR_TOO_MANY_PATTERNS: return "too_many_patterns";
    case HUB_ERR_PATTERN_UNSUPPORTED: return "pattern_unsupported";
    case HUB_ERR_PRESENCE_OFF: return "presence_off";
    }
    return "bad_request";
}

/* Whether s[0..len) is 1 to max bytes of ASCII letters, digits and the bytes of extra. */
static bool name_valid(const char *s, size_t len, size_t max, const char *extra)
{
    if (len < 1 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c && strchr(extra, c));
        if (!ok)
            return false;
    }
    return true;
}

bool hub_channel_name_valid(const char *name, size_t len)
{
    return name_valid(name, len, CHANNEL_NAME_MAX, "_.:@/-");
}

bool hub_sub_name_valid(const char *s, size_t len)
{
    return hub_channel_name_valid(s, len) || pattern_is_subscription(s, len);
}

/* Whether name[0..len) is the name part of a user's channel key: the tag and the hash. */
static bool user_name_valid(const char *name, size_t len)
{
    size_t tl = sizeof(USER_KEY_TAG) - 1;
    if (len != USER_KEY_NAME_LEN || memcmp(name, USER_KEY_TAG, tl) != 0)
        return false;
    for (size_t i = tl; i < len; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return false;
    return true;
}

bool hub_channel_key_valid(const char *key, size_t len)
{
    const char *sep = memchr(key, CHANNEL_NS_SEP, len);
    const char *name = sep ? sep + 1 : key;
    size_t alen = sep ? (size_t)(sep - key) : 0, nlen = len - (size_t)(name - key);
    if (sep && !name_valid(key, alen, APP_NAME_MAX, "-"))
        return false;
    return hub_channel_name_valid(name, nlen) || user_name_valid(name, nlen);
}

bool hub_event_name_valid(const char *name, size_t len)
{
    return name_valid(name, len, EVENT_NAME_MAX, "_.:-");
}

int hub_cursor_parse(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len > 20)
        return HUB_ERR_CURSOR;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return HUB_ERR_CURSOR;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return HUB_ERR_CURSOR;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* ---- channels and tombs by head, for pattern resumes (patsub.c) -------------------- */

/* The entry of head key[0..hl) in hub.channel_heads, made when there is none. */
static struct chan_head *head_get(struct hub *hub, const char *key, size_t hl)
{
    struct map_node *n = map_get(&hub->channel_heads, key, hl);
    if (n)
        return container_of(n, struct chan_head, node);
    struct chan_head *h = xcalloc(1, sizeof(*h) + hl + 1);
    memcpy(h->key, key, hl);
    h->node.key = h->key;
    h->node.key_len = (uint32_t)hl;
    list_init(&h->chans);
    list_init(&h->tombs);
    map_put(&hub->channel_heads, &h->node);
    return h;
}

/* Links `link` (of the channel or tomb called key) into its head's list (`tombs` or
 * chans); a key without a head is not indexed (cluster mode has no patterns). */
static void head_link(struct hub *hub, const char *key, size_t len, struct list *link, bool tomb)
{
    HUB_ASSERT_LOCKED(hub);
    list_init(link);
    size_t hl = hub__key_head_len(key, len);
    if (hub->be_ops || !hl)
        return;
    struct chan_head *h = head_get(hub, key, hl);
    list_insert_tail(tomb ? &h->tombs : &h->chans, link);
}

/* Unlinks what head_link linked; the head goes with its last channel and tomb. Hub
 * lock held (or hub_free). */
static void head_unlink(struct hub *hub, const char *key, size_t len, struct list *link)
{
    if (!list_linked(link))
        return;
    list_remove(link);
    struct map_node *n = map_get(&hub->channel_heads, key, hub__key_head_len(key, len));
    struct chan_head *h = container_of(n, struct chan_head, node);
    if (list_empty(&h->chans) && list_empty(&h->tombs)) {
        map_del(&hub->channel_heads, &h->node);
        free(h);
    }
}

#define MAX_TOMBS 65536

static void tomb_drop(struct hub *hub, struct tomb *t)
{
    map_del(&hub->tombs, &t->node);
    list_remove(&t->fifo);
    head_unlink(hub, t->name, t->node.key_len, &t->head_link);
    free(t);
}

/* Remembers a vanishing channel's last id. Hub lock held. */
static void tomb_put(struct hub *hub, const struct channel *ch)
{
    HUB_ASSERT_LOCKED(hub);
    /* The highest id the name ever had: its last message, or what a channel that only
     * had subscribers inherited from an older tomb. Cluster mode: Redis remembers (the
     * channel's state hash). */
    uint64_t last = MAX(ch->last_seq, ch->evicted_seq);
    if (hub->be_ops || last < hub->boot_seq)
        return;
    struct map_node *n = map_get(&hub->tombs, ch->name, ch->name_len);
    if (n)
        tomb_drop(hub, container_of(n, struct tomb, node));
    if (hub->tombs.len >= MAX_TOMBS)
        tomb_drop(hub, container_of(hub->tomb_fifo.next, struct tomb, fifo));
    struct tomb *t = xcalloc(1, sizeof(*t));
    memcpy(t->name, ch->name, ch->name_len);
    t->node.key = t->name;
    t->node.key_len = ch->name_len;
    t->last_seq = last;
    map_put(&hub->tombs, &t->node);
    list_insert_tail(&hub->tomb_fifo, &t->fifo);
    head_link(hub, t->name, ch->name_len, &t->head_link, true);
}

/* ---- per-address counts of the channels subscribes created ----------------- */

/* How many channels the subscribes of one client address created (see hub_client). */
struct hub_quota {
    struct map_node node;
    uint32_t n;
    char addr[16];
};

bool hub_client_set_addr(struct hub_client *cl, const void *sockaddr)
{
    const struct sockaddr *sa = sockaddr;
    memset(cl->addr, 0, sizeof(cl->addr));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = sockaddr;
        cl->addr[10] = cl->addr[11] = 0xff;
        memcpy(cl->addr + 12, &a->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = sockaddr;
        bool v4 = IN6_IS_ADDR_V4MAPPED(&a->sin6_addr);
        memcpy(cl->addr, &a->sin6_addr, v4 ? 16 : 8);
    } else {
        cl->limited = false;
        return false;
    }
    return true;
}

bool hub__quota_room(const struct hub *hub, const struct hub_client *cl, size_t more)
{
    HUB_ASSERT_LOCKED(hub);
    uint32_t max = hub->cfg->max_channels_per_ip;
    if (!cl || !cl->limited || !max)
        return true;
    struct map_node *n = map_get(&hub->quotas, (const char *)cl->addr, sizeof(cl->addr));
    uint32_t used = n ? container_of(n, struct hub_quota, node)->n : 0;
    return used + more <= max;
}

void hub__quota_charge(struct hub *hub, const struct hub_client *cl, struct channel *ch)
{
    HUB_ASSERT_LOCKED(hub);
    if (!cl || !cl->limited || !hub->cfg->max_channels_per_ip)
        return;
    struct map_node *n = map_get(&hub->quotas, (const char *)cl->addr, sizeof(cl->addr));
    struct hub_quota *q = n ? container_of(n, struct hub_quota, node) : NULL;
    if (!q) {
        q = xcalloc(1, sizeof(*q));
        memcpy(q->addr, cl->addr, sizeof(q->addr));
        q->node.key = q->addr;
        q->node.key_len = sizeof(q->addr);
        map_put(&hub->quotas, &q->node);
    }
    q->n++;
    ch->quota = q;
}

void hub__quota_release(struct hub *hub, struct channel *ch)
{
    HUB_ASSERT_LOCKED(hub);
    struct hub_quota *q = ch->quota;
    if (!q)
        return;
    ch->quota = NULL;
    if (--q->n == 0) {
        map_del(&hub->quotas, &q->node);
        free(q);
    }
}

#ifndef NDEBUG
_Thread_local const struct hub *hub__held;
#endif

int hub_init(struct hub *hub, const struct herald_config *cfg, int nworkers)
{
    memset(hub, 0, sizeof(*hub));
    pthread_mutex_init(&hub->lock, NULL);
    map_init(&hub->channels, 1024);
    map_init(&hub->tombs, 64);
    map_init(&hub->quotas, 64);
    map_init(&hub->patterns, 64);
    map_init(&hub->pattern_heads, 64);
    map_init(&hub->channel_heads, 64);
    list_init(&hub->tomb_fifo);
    hub->cfg = cfg;
    hub->nworkers = nworkers;
    /* Seeded with wall-clock µs: ids stay unique and increasing across restarts
     * as long as we publish less than a million messages per second on average. */
    hub->seq = wall_us();
    hub->boot_seq = hub->seq + 1;
    for (int i = 0; i < nworkers; i++)
        pthread_mutex_init(&hub->inbox[i].lock, NULL);
    return 0;
}

/* ---- channels and history --------------------------------------------- */

struct channel *hub__lookup(struct hub *hub, const char *name, size_t len)
{
    HUB_ASSERT_LOCKED(hub);
    struct map_node *n = map_get(&hub->channels, name, len);
    return n ? container_of(n, struct channel, node) : NULL;
}

/* ---- expiry: a min-heap of the channels that may expire, by deadline -------------
 *
 * Every channel that could expire (no subscriber, no parked subscribe, not
 * persistent) is in the heap, keyed no later than its deadline. Activity only
 * pushes a deadline back, so it does not touch the heap: the sweep finds the key
 * early, and puts the channel back with its real deadline. Hub lock held.
 */

#define NEVER UINT64_MAX

/* When ch expires if nothing happens (wall ms), or NEVER. */
static uint64_t chan_deadline(const struct hub *hub, const struct channel *ch)
{
    HUB_ASSERT_LOCKED(hub);
    if (ch->subscribers || ch->waiters)
        return NEVER;
    if (hub->be_ops) /* a node's cache; expiry of the channel itself is Redis's business */
        return ch->last_active_ms +
               (ch->ephemeral ? CACHE_RETRY_MS : MIN(ch->ttl_ms, CACHE_LINGER_MS));
    if (ch->ephemeral)
        return ch->last_active_ms; /* normally gone with its last subscriber already */
    if (ch->persistent || !ch->ttl_ms)
        return NEVER;
    return ch->last_active_ms + ch->ttl_ms;
}

/* Puts ch in the heap, or moves its key earlier, when it may expire. */
void hub__schedule_expiry_locked(struct hub *hub, struct channel *ch)
{
    HUB_ASSERT_LOCKED(hub);
    uint64_t at = chan_deadline(hub, ch);
    if (at == NEVER || (heap_linked(&ch->expiry) && ch->expiry.key <= at))
        return;
    ch->expiry.key = at;
    if (heap_linked(&ch->expiry))
        heap_fix(&hub->expiry, &ch->expiry);
    else
        heap_push(&hub->expiry, &ch->expiry);
}

/*
 * Room for `more` new channels: stored ones (publish, PUT) and ephemeral ones (a
 * subscribe) have a budget of --max-channels each, so that subscribers making up
 * names never stop a publish. In cluster mode the table is the node's caches, all
 * made by subscribes: one budget. Returns 0 or the error to answer. Hub lock held.
 */
static int chan_room(const struct hub *hub, bool ephemeral, size_t more)
{
    HUB_ASSERT_LOCKED(hub);
    size_t used = hub->channels.len;
    if (!hub->be_ops)
        used = ephemeral ? hub->nephemeral : hub->channels.len - hub->nephemeral;
    if (used + more <= hub->cfg->max_channels)
        return 0;
    return ephemeral && !hub->be_ops ? HUB_ERR_TOO_MANY_EPHEMERAL : HUB_ERR_TOO_MANY;
}

/* The tenant of key's app (a reference for the caller), NULL for the default app;
 * HUB_ERR_NO_APP when the app does not exist. Hub lock held. */
static int chan_tenant(struct hub *hub, const char *key, size_t len, struct hub_tenant **out)
{
    HUB_ASSERT_LOCKED(hub);
    *out = NULL;
    const char *sep = memchr(key, CHANNEL_NS_SEP, len);
    if (!sep)
        return 0;
    *out = hub->tenant_of ? hub->tenant_of(hub->tenant_arg, key, (size_t)(sep - key) + 1) : NULL;
    return *out ? 0 : HUB_ERR_NO_APP;
}

/* Room in key's app for `more` new channels (they all have its prefix). Hub lock held. */
static int tenant_room(struct hub *hub, const char *key, size_t len, size_t more)
{
    struct hub_tenant *t;
    int err = chan_tenant(hub, key, len, &t);
    if (t) {
        uint32_t max = atomic_load_explicit(&t->max_channels, memory_order_relaxed);
        if (max && t->channels + more > max)
            err = HUB_ERR_APP_CHANNELS;
        hub_tenant_put(t);
    }
    return err;
}

/* A channel of t no longer in the table. Hub lock held. */
static void tenant_uncount(struct hub *hub, struct channel *ch)
{
    HUB_ASSERT_LOCKED(hub);
    if (ch->tenant && !ch->user)
        ch->tenant->channels--;
}

/* Creates a channel; the caller checked chan_room and tenant_room. Hub lock held. */
static struct channel *chan_create(struct hub *hub, const char *name, size_t len, bool ephemeral)
{
    HUB_ASSERT_LOCKED(hub);
    const struct herald_config *cfg = hub->cfg;
    struct channel *ch = xcalloc(1, sizeof(*ch) + len + 1);
    chan_tenant(hub, name, len, &ch->tenant); /* the reference is the channel's */
    memcpy(ch->name, name, len);
    ch->name_len = (uint32_t)len;
    ch->node.key = ch->name;
    ch->node.key_len = (uint32_t)len;
    ch->id = ++hub->next_chan_id;
    atomic_init(&ch->refs, 1);
    ch->ttl_ms = cfg->channel_ttl_ms;
    ch->history_size = cfg->history_size;
    ch->history_ttl_ms = cfg->history_ttl_ms;
    ch->history_bytes = cfg->history_bytes;
    ch->user = chan_key_is_user(name, len);
    if (ch->tenant) {
        struct hub_tenant *t = ch->tenant;
        t->channels += !ch->user;     /* users' channels are not in the plan's count */
        pthread_mutex_lock(&t->lock); /* the app's defaults (after the hub lock) */
        if (t->history_size)
            ch->history_size = t->history_size;
        if (t->history_ttl_ms)
            ch->history_ttl_ms = t->history_ttl_ms;
        ch->batch_ms = t->batch_ms;
        ch->conflate = t->conflate && t->batch_ms;
        ch->presence = t->presence && !ch->user; /* a user's own channel has one user */
        pthread_mutex_unlock(&t->lock);
        uint32_t hmax = atomic_load_explicit(&t->max_history, memory_order_relaxed);
        if (hmax && ch->history_size > hmax)
            ch->history_size = hmax;
    }
    /* In memory, cursors from before this process started may have missed messages
     * we no longer know about; anything newer is complete. In cluster mode the cache
     * learns what Redis has lost when it loads (hub_channel_loaded). */
    ch->evicted_seq = hub->be_ops ? 0 : hub->boot_seq - 1;
    struct map_node *tn = map_get(&hub->tombs, name, len);
    if (tn) {
        /* Same name as a channel that vanished: its messages are gone for good. */
        struct tomb *t = container_of(tn, struct tomb, node);
        ch->evicted_seq = MAX(ch->evicted_seq, t->last_seq);
        tomb_drop(hub, t);
    }
    ch->created_ms = ch->last_active_ms = wall_ms();
    ch->ephemeral = ephemeral;
    hub->nephemeral += ephemeral;
    map_put(&hub->channels, &ch->node);
    head_link(hub, ch->name, ch->name_len, &ch->head_link, false);
    if (!ephemeral) /* an ephemeral one gets its subscriber at once */
        hub__schedule_expiry_locked(hub, ch);
    return ch;
}

/* A publish, a PUT or (cluster mode) a first message makes a channel stored. Hub lock held. */
static void chan_make_stored(struct hub *hub, struct channel *ch)
{
    HUB_ASSERT_LOCKED(hub);
    if (!hub->be_ops)
        hub__quota_release(hub, ch); /* someone else's channel now (cluster: see hub_client) */
    if (!ch->ephemeral)
        return;
    ch->ephemeral = false;
    hub->nephemeral--;
    if (!ch->deleted)
        hub__schedule_expiry_locked(hub, ch);
}

/* Milliseconds from t to now; 0 if the wall clock stepped back past t. */
static inline uint64_t age_ms(uint64_t now, uint64_t t)
{
    return now > t ? now - t : 0;
}

/* What a message in history counts against --history-bytes: all it holds. Hub lock held. */
static uint64_t msg_held_bytes(const struct msg *m)
{
    return m->size + (m->deflate_counted ? msg_deflate_bytes(m) : 0);
}

static void hist_drop_oldest(struct channel *ch)
{
    struct msg *m = ch->hist[ch->hist_head];
    ch->hist[ch->hist_head] = NULL;
    ch->hist_head = (ch->hist_head + 1) % ch->hist_cap;
    ch->hist_len--;
    ch->hist_bytes -= msg_held_bytes(m);
    m->hist_ch = NULL;
    if (m->seq > ch->evicted_seq)
        ch->evicted_seq = m->seq;
    ref_put(&m->ref);
}

static inline struct msg *hist_at(const struct channel *ch, uint32_t i)
{
    return ch->hist[(ch->hist_head + i) % ch->hist_cap];
}

/* Evicts by age, count and bytes (the newest message is kept even if over). */
static void hist_trim(struct channel *ch, uint64_t now)
{
    while (ch->hist_len && age_ms(now, hist_at(ch, 0)->time_ms) > ch->history_ttl_ms)
        hist_drop_oldest(ch);
    while (ch->hist_len > ch->history_size)
        hist_drop_oldest(ch);
    while (ch->hist_len > 1 && ch->hist_bytes > ch->history_bytes)
        hist_drop_oldest(ch);
}

struct slice hub_ws_deflate(struct hub *hub, struct msg *m, void *deflater)
{
    bool built;
    struct slice s = msg_ws_deflate(m, deflater, &built);
    if (!built)
        return s;
    /* Once per message: the frame it now holds counts in the history that holds it. */
    hub_lock(hub);
    struct channel *ch = m->hist_ch;
    if (ch && !m->deflate_counted) {
        m->deflate_counted = true;
        ch->hist_bytes += msg_held_bytes(m) - m->size;
        hist_trim(ch, wall_ms());
    }
    hub_unlock(hub);
    return s;
}

static void hist_resize(struct channel *ch, uint32_t cap)
{
    struct msg **h = xcalloc(cap, sizeof(*h));
    for (uint32_t i = 0; i < ch->hist_len; i++)
        h[i] = hist_at(ch, i);
    free(ch->hist);
    ch->hist = h;
    ch->hist_cap = cap;
    ch->hist_head = 0;
}

static void hist_append(struct channel *ch, struct msg *m, uint64_t now)
{
    if (ch->hist_len == ch->hist_cap) {
        if (ch->hist_cap >= ch->history_size && ch->hist_len)
            hist_drop_oldest(ch);
        else
            hist_resize(ch, MIN(MAX(ch->hist_cap * 2, 4u), MAX(ch->history_size, 1u)));
    }
    ch->hist[(ch->hist_head + ch->hist_len) % ch->hist_cap] = m;
    ch->hist_len++;
    m->hist_ch = ch;
    m->deflate_counted = atomic_load(&m->ws_deflate) != NULL;
    ch->hist_bytes += msg_held_bytes(m);
    ch->last_seq = m->seq;
    hist_trim(ch, now);
}

static void chan_release(struct hub *hub, struct channel *ch)
{
    if (atomic_fetch_sub_explicit(&ch->refs, 1, memory_order_acq_rel) != 1)
        return;
    while (ch->hist_len)
        hist_drop_oldest(ch);
    free(ch->hist);
    for (uint32_t i = 0; i < ch->nheld; i++)
        ref_put(&ch->held[i]->ref);
    free(ch->held);
    hub__free_waiters(ch->waiters);
    free(ch->local);
    hub__presence_free(ch);
    hub_tenant_put(ch->tenant);
    free(ch);
}

void hub_channel_put_ref(struct hub *hub, struct channel *ch)
{
    chan_release(hub, ch);
}

/* Removes a channel from the table; workers holding subscribers get INBOX_CLOSED. */
void hub__unlink_locked(struct hub *hub, struct channel *ch, uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    tomb_put(hub, ch);
    map_del(&hub->channels, &ch->node);
    head_unlink(hub, ch->name, ch->name_len, &ch->head_link);
    tenant_uncount(hub, ch);
    heap_remove(&hub->expiry, &ch->expiry);
    ch->deleted = true;
    chan_make_stored(hub, ch); /* out of the ephemeral count */
    hub__quota_release(hub, ch);
    hub__notify_workers(hub, ch, INBOX_CLOSED, NULL, wake_mask);
    chan_release(hub, ch);
}

void hub__notify_workers(struct hub *hub, struct channel *ch, enum inbox_kind kind,
                         struct ctl_frames *ctl, uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    for (int w = 0; w < hub->nworkers; w++) {
        if (!(ch->worker_mask & (1ull << w)))
            continue;
        struct hub_inbox *in = &hub->inbox[w];
        atomic_fetch_add(&ch->refs, 1);
        if (ctl)
            ref_get(&ctl->ref);
        pthread_mutex_lock(&in->lock);
        if (in->len == in->cap) {
            in->cap = in->cap ? in->cap * 2 : 64;
            in->items = xrealloc(in->items, in->cap * sizeof(*in->items));
        }
        in->items[in->len++] = (struct inbox_item){.kind = kind, .ch = ch, .ctl = ctl};
        if (in->len == 1)
            *wake_mask |= 1ull << w;
        pthread_mutex_unlock(&in->lock);
    }
}

void hub__wake_workers(struct hub *hub, uint64_t mask)
{
    for (int w = 0; mask; w++, mask >>= 1)
        if ((mask & 1) && hub->inbox[w].wake)
            hub->inbox[w].wake(hub->inbox[w].wake_arg);
}

/* Frees every entry of m (each allocated alone, its map_node at node_offset) and m. */
static void free_entries(struct map *m, size_t node_offset)
{
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(m, &b, &next))) {
        map_del(m, n);
        free((char *)n - node_offset);
    }
    map_free(m);
}

void hub_free(struct hub *hub)
{
    hub__patsub_free(hub);
    /* Pending inbox items hold message and channel references: drop them first,
     * so that every channel (deleted ones too) is freed by its last reference. */
    for (int w = 0; w < hub->nworkers; w++) {
        struct hub_inbox *in = &hub->inbox[w];
        for (uint32_t i = 0; i < in->len; i++) {
            if (in->items[i].msg)
                ref_put(&in->items[i].msg->ref);
            if (in->items[i].ctl)
                ref_put(&in->items[i].ctl->ref);
            if (in->items[i].ch)
                chan_release(hub, in->items[i].ch);
        }
        free(in->items);
        pthread_mutex_destroy(&in->lock);
    }
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&hub->channels, &b, &next))) {
        map_del(&hub->channels, n);
        struct channel *ch = container_of(n, struct channel, node);
        if (ch->tenant && !ch->user)
            ch->tenant->channels--;
        chan_release(hub, ch);
    }
    map_free(&hub->channels);
    heap_free(&hub->expiry);
    while (!list_empty(&hub->tomb_fifo))
        tomb_drop(hub, container_of(hub->tomb_fifo.next, struct tomb, fifo));
    map_free(&hub->tombs);
    free_entries(&hub->channel_heads, offsetof(struct chan_head, node));
    free_entries(&hub->quotas, offsetof(struct hub_quota, node));
    pthread_mutex_destroy(&hub->lock);
}

/* ---- publish ------------------------------------------------------------ */

void hub__inbox_push(struct hub_inbox *in, struct msg *m, struct channel *ch, uint64_t *wake_mask,
                     int w)
{
    pthread_mutex_lock(&in->lock);
    if (in->len == in->cap) {
        in->cap = in->cap ? in->cap * 2 : 64;
        in->items = xrealloc(in->items, in->cap * sizeof(*in->items));
    }
    ref_get(&m->ref);
    atomic_fetch_add_explicit(&ch->refs, 1, memory_order_relaxed);
    in->items[in->len++] = (struct inbox_item){
        .kind = INBOX_MSG, .msg = m, .ch = ch, .batch_ms = ch->batch_ms, .conflate = ch->conflate};
    if (in->len == 1)
        *wake_mask |= 1ull << w;
    pthread_mutex_unlock(&in->lock);
}

/* Whether a missing channel key may be created: its app's setting, else the server's.
 * Hub lock held. */
static bool auto_create(struct hub *hub, const char *key, size_t len)
{
    struct hub_tenant *t;
    chan_tenant(hub, key, len, &t);
    int8_t v = -1;
    if (t) {
        pthread_mutex_lock(&t->lock);
        v = t->auto_create;
        pthread_mutex_unlock(&t->lock);
        hub_tenant_put(t);
    }
    return v < 0 ? hub->cfg->auto_create : v != 0;
}

/* hub_internal.h */
int hub__resolve_locked(struct hub *hub, const struct slice *names, size_t n, struct channel **chs,
                        const struct hub_client *cl, size_t *bad_index)
{
    HUB_ASSERT_LOCKED(hub);
    bool subscribe = cl != NULL;
    /* A user's channel always exists for the asking, and counts in neither the app's
     * plan nor the subscriber's address: only in --max-channels. */
    size_t missing = 0, first_missing = 0, counted = 0, first_counted = 0;
    for (size_t i = 0; i < n; i++) {
        if (hub_key_is_pattern(names[i].data, names[i].len)) {
            chs[i] = NULL; /* hub__patsub_resolve_locked's */
            continue;
        }
        chs[i] = hub__lookup(hub, names[i].data, names[i].len);
        if (chs[i] || slice_in(names, i, &names[i]))
            continue; /* a name given twice is created once */
        bool user = chan_key_is_user(names[i].data, names[i].len);
        if (!hub->be_ops && !user && !auto_create(hub, names[i].data, names[i].len)) {
            *bad_index = i; /* in cluster mode, loading the cache checks existence */
            return HUB_ERR_NOT_FOUND;
        }
        if (!missing++)
            first_missing = i;
        if (!user && !counted++)
            first_counted = i;
    }
    int err = missing ? chan_room(hub, subscribe, missing) : 0;
    size_t at = first_missing;
    if (!err && counted) {
        at = first_counted;
        err = tenant_room(hub, names[at].data, names[at].len, counted);
        if (!err && !hub__quota_room(hub, cl, counted))
            err = HUB_ERR_TOO_MANY_FOR_ADDR;
    }
    if (err) {
        *bad_index = at;
        return err;
    }
    for (size_t i = 0; i < n; i++) {
        if (chs[i] || hub_key_is_pattern(names[i].data, names[i].len) ||
            (chs[i] = hub__lookup(hub, names[i].data, names[i].len)))
            continue;
        chs[i] = chan_create(hub, names[i].data, names[i].len, subscribe);
        if (!chs[i]->user)
            hub__quota_charge(hub, cl, chs[i]);
    }
    return 0;
}

/* Appends m to ch's history (taking the reference) and hands it to the workers
 * with subscribers. Hub lock held. */
uint32_t hub__store_locked(struct hub *hub, struct channel *ch, struct msg *m, uint64_t now,
                           uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    chan_make_stored(hub, ch);
    ch->messages++;
    ch->last_active_ms = now;
    uint64_t mask = ch->worker_mask;
    for (int w = 0; mask; w++, mask >>= 1)
        if (mask & 1)
            hub__inbox_push(&hub->inbox[w], m, ch, wake_mask, w);
    hist_append(ch, m, now);
    /* Nothing more to do while nobody subscribes to a pattern: one load and a branch. */
    return hub->patterns.len ? hub__patsub_publish_locked(hub, ch, m, wake_mask) : 0;
}

int hub_publish(struct hub *hub, const struct slice *channels, size_t n,
                const struct publish_req *req, struct publish_result *res)
{
    struct channel *chs[64];
    if (n == 0 || n > ARRAY_LEN(chs))
        return HUB_ERR_NAME;
    uint64_t wake_mask = 0, now = wall_ms();
    hub_lock(hub);
    size_t bad;
    int err = hub__resolve_locked(hub, channels, n, chs, NULL, &bad);
    if (err) {
        hub_unlock(hub);
        return err;
    }
    uint64_t seq = ++hub->seq;
    struct msg_group *group = NULL;
    if (n > 1) {
        uint64_t ids[ARRAY_LEN(chs)];
        for (size_t i = 0; i < n; i++)
            ids[i] = chs[i]->id;
        group = msg_group_new(ids, n, (unsigned)n);
    }
    res->id = seq;
    res->subscribers = 0;
    for (size_t i = 0; i < n; i++) {
        struct msg *m = msg_new(chs[i]->name, chs[i]->name_len, chs[i]->id, seq, now, req);
        if (chs[i]->tenant)
            atomic_fetch_add_explicit(&chs[i]->tenant->messages, 1, memory_order_relaxed);
        m->group = group;
        res->subscribers += chs[i]->subscribers;
        res->subscribers += hub__store_locked(hub, chs[i], m, now, &wake_mask);
    }
    hub_unlock(hub);
    atomic_fetch_add(&hub->stats.published, 1);
    atomic_fetch_add(&hub->stats.messages, n);
    hub__wake_workers(hub, wake_mask);
    return 0;
}

void hub_post(struct hub *hub, int w, void (*fn)(void *arg), void *arg)
{
    struct hub_inbox *in = &hub->inbox[w];
    bool wake;
    pthread_mutex_lock(&in->lock);
    if (in->len == in->cap) {
        in->cap = in->cap ? in->cap * 2 : 64;
        in->items = xrealloc(in->items, in->cap * sizeof(*in->items));
    }
    in->items[in->len++] = (struct inbox_item){.kind = INBOX_CALL, .fn = fn, .arg = arg};
    wake = in->len == 1;
    pthread_mutex_unlock(&in->lock);
    if (wake && in->wake)
        in->wake(in->wake_arg);
}

struct inbox_item *hub_inbox_take(struct hub *hub, int w, uint32_t *n)
{
    struct hub_inbox *in = &hub->inbox[w];
    pthread_mutex_lock(&in->lock);
    struct inbox_item *items = in->items;
    *n = in->len;
    in->items = NULL;
    in->len = in->cap = 0;
    pthread_mutex_unlock(&in->lock);
    return items;
}

/* ---- subscribe ------------------------------------------------------------ */

void hub_backlog_free(struct hub_backlog *b)
{
    for (uint32_t i = 0; i < b->n; i++)
        ref_put(&b->msgs[i]->ref);
    free(b->msgs);
    for (uint32_t i = 0; i < b->ngaps; i++)
        free(b->gaps[i].name);
    free(b->gaps);
    memset(b, 0, sizeof(*b));
}

static bool held_channel(const struct list *held, uint64_t chan_id, uint64_t seq)
{
    const struct list *p;
    for (p = held->next; p != held; p = p->next) {
        const struct sub *s = container_of(p, struct sub, conn_link);
        if (s->ch->id == chan_id && seq > s->after)
            return true; /* replayed or delivered live through that channel */
    }
    return false;
}

/* Whether another of the connection's subscriptions delivered its copy of m. */
static bool delivered_elsewhere(const struct list *held, const struct sub *s, const struct msg *m)
{
    for (const struct list *p = held->next; p != held; p = p->next) {
        const struct sub *t = container_of(p, struct sub, conn_link);
        /* Each channel keeps its order, and t's copy of m (same seq) passed its
         * from_seq: t delivered that copy before any later message. */
        if (t == s || t->delivered < m->seq || m->seq <= t->from_seq)
            continue;
        for (uint32_t g = 0; g < m->group->n; g++)
            if (m->group->chan_ids[g] == t->ch->id)
                return true;
    }
    return false;
}

bool hub_sub_takes(const struct list *held, struct sub *s, const struct msg *m)
{
    if (s->ch->pattern)
        return hub__patsub_takes(held, s, m);
    if (m->seq <= s->from_seq)
        return false; /* came from history already */
    bool dup = m->group && delivered_elsewhere(held, s, m);
    s->delivered = m->seq;
    return !dup;
}

int hub__cmp_msg_seq(const void *a, const void *b)
{
    const struct msg *x = *(struct msg *const *)a, *y = *(struct msg *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Whether the client has m through another channel of this subscribe: its position
 * there is at or past m, and a multi-channel message is one message. */
static bool had_elsewhere(const struct sub_positions *pos, const struct channel *ch,
                          uint64_t chan_id, uint64_t seq)
{
    if (!pos || !pos->since)
        return false;
    for (size_t j = 0; j < pos->n; j++)
        if (pos->chs[j] != ch && pos->chs[j]->id == chan_id && pos->since[j] >= seq)
            return true;
    return false;
}

/* Collects ch's history after `since` into b, skipping what `held` delivers live and
 * what the client has through another of the channels it subscribes to now; with
 * newest_only, the newest such message alone. */
static void collect_history(struct channel *ch, uint64_t since, const struct list *held,
                            const struct sub_positions *pos, bool newest_only,
                            struct hub_backlog *b)
{
    for (uint32_t k = 0; k < ch->hist_len; k++) {
        struct msg *m = hist_at(ch, newest_only ? ch->hist_len - 1 - k : k);
        if (m->seq <= since) {
            if (newest_only)
                break; /* the rest is older still */
            continue;
        }
        bool skip = false;
        if (m->group)
            for (uint32_t g = 0; g < m->group->n && !skip; g++)
                skip = m->group->chan_ids[g] != ch->id &&
                       (held_channel(held, m->group->chan_ids[g], m->seq) ||
                        had_elsewhere(pos, ch, m->group->chan_ids[g], m->seq));
        if (skip)
            continue;
        if (b->n == b->cap) {
            b->cap = b->cap ? b->cap * 2 : 32;
            b->msgs = xrealloc(b->msgs, b->cap * sizeof(*b->msgs));
        }
        ref_get(&m->ref);
        b->msgs[b->n++] = m;
        if (newest_only)
            break;
    }
}

void hub__apply_window_opts(struct channel *ch, const struct channel_opts *o)
{
    if (o->has_batch_ms)
        ch->batch_ms = o->batch_ms;
    if (o->has_conflate)
        ch->conflate = o->conflate;
    if (!ch->batch_ms)
        ch->conflate = false; /* conflating needs a window */
    if (o->has_presence)
        ch->presence = o->presence && !ch->user;
}

void hub__backlog_channel_locked(struct channel *ch, uint64_t since, const struct list *held,
                                 const struct sub_positions *pos, bool own_name,
                                 struct hub_backlog *b)
{
    hist_trim(ch, wall_ms());
    /* since == 0 asks for all retained history: nothing older was promised. */
    if (since && since < ch->evicted_seq) {
        b->gaps = xrealloc(b->gaps, (b->ngaps + 1) * sizeof(struct hub_gap));
        struct hub_gap *g = &b->gaps[b->ngaps++];
        *g = (struct hub_gap){.ch = own_name ? NULL : ch,
                              .oldest = ch->hist_len ? hist_at(ch, 0)->seq : 0,
                              .since = since};
        if (own_name) {
            g->name = xstrndup(ch->name, ch->name_len);
            g->name_len = ch->name_len;
        }
    }
    /* A conflated channel's replay is what a live subscriber ends up with: the newest
     * message of the range. */
    collect_history(ch, since, held, pos, ch->conflate, b);
}

/* Where a message's channel stands in the channel list of its publish. */
static uint32_t group_index(const struct msg *m)
{
    for (uint32_t g = 0; m->group && g < m->group->n; g++)
        if (m->group->chan_ids[g] == m->chan_id)
            return g;
    return 0;
}

/* By id; copies of one multi-channel message by their channel's place in the publish,
 * so that the replay keeps the copy a live delivery gives (the first channel of the
 * message's list that the connection holds). */
static int cmp_backlog(const void *a, const void *b)
{
    const struct msg *x = *(struct msg *const *)a, *y = *(struct msg *const *)b;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    uint32_t gx = group_index(x), gy = group_index(y);
    return gx < gy ? -1 : gx > gy;
}

/* Whether y is a copy of x's message: the same id, and y's channel one of x's publish
 * (on a Redis Cluster two messages of different channels may share an id). */
static bool same_message(const struct msg *x, const struct msg *y)
{
    if (x == y)
        return true; /* a channel's history reached twice: by name and by a pattern */
    for (uint32_t g = 0; x->seq == y->seq && x->group && g < x->group->n; g++)
        if (x->group->chan_ids[g] == y->chan_id)
            return true;
    return false;
}

/* Sorts the backlog by id and keeps one copy of each message (the first kept, see
 * cmp_backlog). */
void hub__backlog_sort_dedup(struct hub_backlog *b)
{
    if (b->n < 2)
        return;
    qsort(b->msgs, b->n, sizeof(*b->msgs), cmp_backlog);
    uint32_t out = 1;
    for (uint32_t i = 1; i < b->n; i++) {
        struct msg *m = b->msgs[i];
        bool dup = false;
        for (uint32_t k = out; k > 0 && b->msgs[k - 1]->seq == m->seq && !dup; k--)
            dup = same_message(b->msgs[k - 1], m);
        if (dup)
            ref_put(&m->ref);
        else
            b->msgs[out++] = m;
    }
    b->n = out;
}

static uint32_t count_list(const struct list *l)
{
    uint32_t n = 0;
    for (const struct list *p = l->next; p != l; p = p->next)
        n++;
    return n;
}

bool hub__holds_name(const struct list *held, const struct slice *name)
{
    for (const struct list *p = held->next; p != held; p = p->next) {
        const struct channel *ch = container_of(p, struct sub, conn_link)->ch;
        if (ch->name_len == name->len && memcmp(ch->name, name->data, name->len) == 0)
            return true;
    }
    return false;
}

/* Whether holding names[0..n) too keeps the connection within max channels: the ones
 * it holds already and names given twice count once. Worker thread of the connection. */
static bool subs_fit(const struct list *held, const struct slice *names, size_t n, uint32_t max)
{
    uint32_t have = count_list(held);
    if (have + n <= max)
        return true;
    for (size_t i = 0; i < n; i++)
        if (!hub__holds_name(held, &names[i]) && !slice_in(names, i, &names[i]) && ++have > max)
            return false;
    return true;
}

struct sub *hub__find_sub(const struct list *held, const struct channel *ch)
{
    for (struct list *p = held->next; p != held; p = p->next) {
        struct sub *s = container_of(p, struct sub, conn_link);
        if (s->ch == ch)
            return s;
    }
    return NULL;
}

/*
 * The cursor a new subscription starts from: nothing on chs up to it is owed to
 * the client. In memory and on one Redis ids are global, so it is the hub's last
 * id; on a Redis Cluster ids are per channel, and another channel's ids being
 * ahead must not hide these channels' next messages. Hub lock held.
 */
static uint64_t head_seq(const struct hub *hub, struct channel *const *chs, size_t n)
{
    HUB_ASSERT_LOCKED(hub);
    if (!hub->be_ops)
        return hub->seq;
    uint64_t head = 0;
    for (size_t i = 0; i < n; i++)
        head = MAX(head, MAX(chs[i]->last_seq, chs[i]->evicted_seq));
    return head;
}

int hub_subscribe(struct hub *hub, int w, void *conn, struct list *held, const struct slice *names,
                  size_t n, bool has_since, uint64_t since, const struct hub_client *cl,
                  struct hub_backlog *backlog, size_t *bad_index)
{
    struct channel *chs[HUB_SUBSCRIBE_MAX];
    memset(backlog, 0, sizeof(*backlog));
    if (n > ARRAY_LEN(chs) || !subs_fit(held, names, n, cl->max_subs)) {
        *bad_index = 0;
        return HUB_ERR_TOO_MANY_SUBS;
    }
    hub_lock(hub);
    /* In cluster mode another node may be ahead of us: its cursors are valid. */
    if (has_since && since > hub->seq && !hub->be_ops) {
        hub_unlock(hub);
        *bad_index = 0;
        return HUB_ERR_CURSOR;
    }
    int err = hub__patsub_check_locked(hub, held, names, n, cl, bad_index);
    if (!err && hub->be_ops) /* their bus subscriptions first: nothing made while parked */
        err = hub__patsub_await_heads_locked(hub, w, conn, held, names, n, bad_index);
    if (!err)
        err = hub__resolve_locked(hub, names, n, chs, cl, bad_index);
    if (!err)
        hub__patsub_resolve_locked(hub, names, n, chs, cl);
    if (!err && hub->be_ops)
        err = hub__await_sync_locked(hub, w, conn, held, chs, n, bad_index);
    if (!err && hub->be_ops && has_since) /* a pattern's resume reads the channels' caches */
        err = hub__patsub_await_caches_locked(hub, w, conn, held, chs, n, bad_index);
    if (err) {
        hub_unlock(hub);
        return err;
    }
    uint64_t now = wall_ms(), wake_mask = 0;
    backlog->head_seq = head_seq(hub, chs, n);
    struct list added;
    list_init(&added);
    const struct sub_positions pos = {chs, has_since ? cl->since_each : NULL, n};
    for (size_t i = 0; i < n; i++) {
        struct channel *ch = chs[i];
        if (hub__find_sub(held, ch) || hub__find_sub(&added, ch))
            continue;
        if (pos.since)
            since = pos.since[i];
        if (has_since && ch->pattern)
            hub__patsub_backlog_locked(hub, ch, since, held, chs, n, backlog);
        else if (has_since)
            hub__backlog_channel_locked(ch, since, held, &pos, false, backlog);
        if (!ch->local) {
            ch->local = xcalloc((size_t)hub->nworkers, sizeof(*ch->local));
            for (int k = 0; k < hub->nworkers; k++)
                list_init(&ch->local[k].subs);
        }
        struct sub *s = xmalloc(sizeof(*s));
        s->ch = ch;
        s->conn = conn;
        /* Live deliveries are what ch gets after its last stored message (inbox items in
         * flight are stored already). Never re-deliver what the client says it has: its
         * cursor may be ahead of this node in cluster mode. With a cursor, what was
         * evicted (or came before a Redis data set's epoch) the client has been told of
         * by a gap, or had no position in (a hook's arrival): the positions it gets from
         * here on start past it, so that a reconnect is not told of it again. */
        s->from_seq = has_since ? MAX(MAX(ch->last_seq, ch->evicted_seq), since) : ch->last_seq;
        if (ch->pattern) /* ids order every channel (patsub.c): any one's next is live */
            s->from_seq = MAX(hub__patsub_live_from_locked(hub, ch), has_since ? since : 0);
        s->after = has_since ? since : s->from_seq;
        s->delivered = 0;
        s->presence = NULL;
        list_insert_tail(&ch->local[w].subs, &s->chan_link);
        list_insert_tail(&added, &s->conn_link);
        if (ch->local[w].n++ == 0) {
            ch->worker_mask |= 1ull << w;
            atomic_fetch_add(&ch->refs, 1);
        }
        ch->subscribers++;
        ch->last_active_ms = now;
        if (ch->presence && cl->who)
            hub__presence_join_locked(hub, ch, s, cl->who, &wake_mask);
    }
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
    /* Append the new nodes to the connection's list. */
    while (!list_empty(&added)) {
        struct list *p = added.next;
        list_remove(p);
        list_insert_tail(held, p);
    }
    hub__backlog_sort_dedup(backlog);
    return 0;
}

/* An ephemeral channel goes with its last subscriber (a parked subscribe keeps it).
 * Returns true when ch went (it may be freed). */
static bool drop_if_unused(struct hub *hub, struct channel *ch)
{
    HUB_ASSERT_LOCKED(hub);
    if (!ch->ephemeral || ch->deleted || ch->subscribers || ch->waiters)
        return false;
    uint64_t wake_mask = 0; /* no subscriber left: nobody to tell */
    if (hub->be_ops)
        hub->be_ops->unwant(hub->be, ch->name, ch->name_len);
    hub__unlink_locked(hub, ch, &wake_mask);
    return true;
}

static void unsubscribe_locked(struct hub *hub, int w, struct sub *s, uint64_t now,
                               uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    struct channel *ch = s->ch;
    list_remove(&s->chan_link);
    list_remove(&s->conn_link);
    if (s->presence) /* after its removal: the leaving connection is not told */
        hub__presence_leave_locked(hub, ch, s, wake_mask);
    free(s);
    ch->subscribers--;
    ch->last_active_ms = now;
    bool last_here = --ch->local[w].n == 0;
    if (last_here)
        ch->worker_mask &= ~(1ull << w);
    /* Before this worker's reference goes: a deleted channel is out of the table, and
     * that reference may be its last. A pattern goes with its last subscriber. */
    if (ch->pattern)
        hub__patsub_drop_if_unused_locked(hub, ch);
    else if (!drop_if_unused(hub, ch) && !ch->deleted)
        hub__schedule_expiry_locked(hub, ch);
    if (last_here)
        chan_release(hub, ch);
}

void hub_unsubscribe(struct hub *hub, int w, struct sub *s)
{
    uint64_t wake_mask = 0;
    hub_lock(hub);
    unsubscribe_locked(hub, w, s, wall_ms(), &wake_mask);
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
}

void hub_unsubscribe_all(struct hub *hub, int w, struct list *held)
{
    if (list_empty(held))
        return;
    uint64_t now = wall_ms(), wake_mask = 0;
    hub_lock(hub);
    while (!list_empty(held))
        unsubscribe_locked(hub, w, container_of(held->next, struct sub, conn_link), now,
                           &wake_mask);
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
}

/* ---- expiry --------------------------------------------------------------- */

/*
 * Expires what is due, oldest deadline first, EXPIRE_BATCH channels per lock hold.
 * Returns whether more is due. Hub lock held.
 */
static bool expire_due(struct hub *hub, uint64_t now, uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    for (int n = 0; n < EXPIRE_BATCH; n++) {
        struct heap_node *top = heap_min(&hub->expiry);
        if (!top || top->key > now)
            return false;
        struct channel *ch = container_of(top, struct channel, expiry);
        uint64_t at = chan_deadline(hub, ch);
        if (at == NEVER) {
            heap_remove(&hub->expiry, top); /* back when it may expire again */
        } else if (at > now) {
            top->key = at; /* it was active since it was put here */
            heap_fix(&hub->expiry, top);
        } else {
            log_debug("channel %s expired", ch->name);
            if (hub->be_ops) /* the node's cache: stop following the bus */
                hub->be_ops->unwant(hub->be, ch->name, ch->name_len);
            hub__unlink_locked(hub, ch, wake_mask);
        }
    }
    return true;
}

/* Trims aged-out history in the next `count` buckets of the table (history is also
 * trimmed whenever it is read). Hub lock held. */
static void trim_slice(struct hub *hub, uint64_t now, size_t count)
{
    HUB_ASSERT_LOCKED(hub);
    size_t buckets = hub->channels.mask + 1, b = hub->sweep_bucket;
    if (b >= buckets)
        b = 0;
    while (count-- && b < buckets)
        for (struct map_node *n = hub->channels.buckets[b++]; n; n = n->next)
            hist_trim(container_of(n, struct channel, node), now);
    hub->sweep_bucket = b;
}

static void expire_more(void *arg);

/*
 * Expires what is due. The lock is let go between batches, so that publishes and
 * subscribes go on meanwhile, and after SWEEP_BUDGET_MS the rest waits for the next
 * pass of worker 0's loop (its own connections go on too), not for the next tick.
 */
static void expire(struct hub *hub)
{
    uint64_t start = now_ms(), now = wall_ms();
    bool more = true;
    while (more && now_ms() - start < SWEEP_BUDGET_MS) {
        uint64_t wake_mask = 0;
        hub_lock(hub);
        more = expire_due(hub, now, &wake_mask);
        hub_unlock(hub);
        hub__wake_workers(hub, wake_mask);
    }
    if (more && !atomic_exchange(&hub->expire_posted, true))
        hub_post(hub, 0, expire_more, hub);
}

static void expire_more(void *arg)
{
    struct hub *hub = arg;
    atomic_store(&hub->expire_posted, false);
    expire(hub);
}

void hub_sweep(struct hub *hub)
{
    uint64_t now = wall_ms();
    expire(hub);
    if (hub->be_ops) {
        hub_lock(hub);
        hub__patsub_sweep_locked(hub, now);
        hub_unlock(hub);
    }
    /* A full pass over the table every ten calls or so, however large it is. */
    size_t slice = MAX((hub->channels.mask + 1) / 10, (size_t)EXPIRE_BATCH);
    for (size_t done = 0; done < slice; done += EXPIRE_BATCH) {
        hub_lock(hub);
        trim_slice(hub, now, EXPIRE_BATCH);
        hub_unlock(hub);
    }
}

/* ---- administration ------------------------------------------------------ */

static void fill_info(const struct channel *ch, struct channel_info *info)
{
    memset(info, 0, sizeof(*info));
    struct slice nm = chan_key_name(ch->name, ch->name_len);
    memcpy(info->name, nm.data, nm.len);
    info->persistent = ch->persistent;
    info->ttl_ms = ch->ttl_ms;
    info->history_size = ch->history_size;
    info->history_ttl_ms = ch->history_ttl_ms;
    info->batch_ms = ch->batch_ms;
    info->conflate = ch->conflate;
    info->presence = ch->presence;
    info->subscribers = ch->subscribers;
    info->messages_retained = ch->hist_len;
    info->retained_bytes = ch->hist_bytes;
    info->messages_total = ch->messages;
    info->last_id = ch->last_seq;
    info->oldest_id = ch->hist_len ? hist_at(ch, 0)->seq : 0;
    info->created_ms = ch->created_ms;
    info->last_active_ms = ch->last_active_ms;
    /* An ephemeral channel does not expire: it goes with its last subscriber. */
    info->expires_ms =
        (ch->persistent || !ch->ttl_ms || ch->ephemeral) ? 0 : ch->last_active_ms + ch->ttl_ms;
}

int hub_channel_put(struct hub *hub, const char *name, size_t len, const struct channel_opts *o,
                    bool *created, struct channel_info *info)
{
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, name, len);
    *created = !ch;
    int err = ch ? 0 : chan_room(hub, false, 1);
    if (!err && !ch)
        err = tenant_room(hub, name, len, 1);
    if (err) {
        hub_unlock(hub);
        return err;
    }
    if (!ch)
        ch = chan_create(hub, name, len, false);
    chan_make_stored(hub, ch);
    if (o->has_ttl)
        ch->ttl_ms = o->ttl_ms;
    if (o->has_persistent)
        ch->persistent = o->persistent;
    if (o->has_history_size) {
        uint32_t hmax =
            ch->tenant ? atomic_load_explicit(&ch->tenant->max_history, memory_order_relaxed) : 0;
        ch->history_size = hmax && o->history_size > hmax ? hmax : o->history_size;
    }
    if (o->has_history_ttl)
        ch->history_ttl_ms = o->history_ttl_ms;
    hub__apply_window_opts(ch, o);
    ch->last_active_ms = wall_ms();       /* PUT renews the TTL */
    hub__schedule_expiry_locked(hub, ch); /* the TTL may be shorter, or persistent off */
    hist_trim(ch, ch->last_active_ms);
    if (ch->hist_cap > ch->history_size && ch->history_size)
        hist_resize(ch, MAX(ch->history_size, ch->hist_len));
    fill_info(ch, info);
    hub_unlock(hub);
    return 0;
}

int hub_channel_get(struct hub *hub, const char *name, size_t len, struct channel_info *info)
{
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, name, len);
    if (ch) {
        hist_trim(ch, wall_ms());
        fill_info(ch, info);
    }
    hub_unlock(hub);
    return ch ? 0 : HUB_ERR_NOT_FOUND;
}

int hub_channel_delete(struct hub *hub, const char *name, size_t len)
{
    uint64_t wake_mask = 0;
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, name, len);
    if (ch)
        hub__unlink_locked(hub, ch, &wake_mask);
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
    return ch ? 0 : HUB_ERR_NOT_FOUND;
}

size_t hub_channel_delete_prefix(struct hub *hub, const char *prefix, bool users, size_t max)
{
    size_t plen = strlen(prefix), n = 0, b = 0;
    uint64_t wake_mask = 0;
    struct map_node *node, *next = NULL;
    hub_lock(hub);
    while (n < max && (node = map_next(&hub->channels, &b, &next))) {
        struct channel *ch = container_of(node, struct channel, node);
        if (ch->user == users && ch->name_len >= plen && memcmp(ch->name, prefix, plen) == 0) {
            hub__unlink_locked(hub, ch, &wake_mask);
            n++;
        }
    }
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
    return n;
}

void hub_channel_counts(struct hub *hub, size_t *total, size_t *ephemeral)
{
    hub_lock(hub);
    *total = hub->channels.len;
    *ephemeral = hub->nephemeral;
    hub_unlock(hub);
}

static int cmp_info_name(const void *a, const void *b)
{
    return strcmp(((const struct channel_info *)a)->name, ((const struct channel_info *)b)->name);
}

size_t hub_channel_list(struct hub *hub, const char *after, size_t after_len, const char *prefix,
                        struct channel_info *out, size_t max, size_t *total)
{
    /* Keep the `max` smallest names greater than `after`: a bounded selection,
     * so listing a huge table costs one pass and no big allocation. `prefix` and
     * `after` are keys: an app's listing gives its "APP~" prefix, and a key with a
     * namespace past the prefix belongs to another app (the default app's listing). */
    size_t n = 0, plen = prefix ? strlen(prefix) : 0;
    char after_z[CHANNEL_KEY_MAX + 1] = "";
    memcpy(after_z, after, MIN(after_len, (size_t)CHANNEL_KEY_MAX));
    hub_lock(hub);
    *total = 0;
    size_t b = 0;
    struct map_node *node, *next = NULL;
    while ((node = map_next(&hub->channels, &b, &next))) {
        struct channel *ch = container_of(node, struct channel, node);
        if (plen && strncmp(ch->name, prefix, plen) != 0)
            continue;
        if (memchr(ch->name + plen, CHANNEL_NS_SEP, ch->name_len - plen) || ch->user)
            continue; /* another app's, or a user's (not a channel anyone can name) */
        (*total)++;   /* the channels this listing pages through (matching the prefix) */
        if (after_len && strcmp(ch->name, after_z) <= 0)
            continue;
        const char *nm = chan_key_name(ch->name, ch->name_len).data; /* what infos hold */
        if (n < max) {
            fill_info(ch, &out[n++]);
            if (n == max)
                qsort(out, n, sizeof(*out), cmp_info_name);
            continue;
        }
        if (max == 0 || strcmp(nm, out[max - 1].name) >= 0)
            continue;
        /* Insert in order, dropping the largest. */
        size_t pos = max - 1;
        while (pos > 0 && strcmp(out[pos - 1].name, nm) > 0) {
            out[pos] = out[pos - 1];
            pos--;
        }
        fill_info(ch, &out[pos]);
    }
    hub_unlock(hub);
    if (n < max)
        qsort(out, n, sizeof(*out), cmp_info_name);
    return n;
}

/* ---- either mode ------------------------------------------------------------ */

void hub_publish_async(struct hub *hub, int w, const struct slice *channels, size_t n,
                       const struct publish_req *req, hub_publish_done *done, void *arg)
{
    if (hub->be_ops) {
        hub->be_ops->publish(hub->be, w, channels, n, req, done, arg);
        return;
    }
    struct publish_result res = {0};
    int err = hub_publish(hub, channels, n, req, &res);
    done(arg, err, &res);
}

void hub_channel_put_async(struct hub *hub, int w, const char *name, size_t len,
                           const struct channel_opts *o, hub_info_done *done, void *arg)
{
    if (hub->be_ops)
        return hub->be_ops->channel_put(hub->be, w, name, len, o, done, arg);
    struct channel_info info;
    bool created = false;
    int err = hub_channel_put(hub, name, len, o, &created, &info);
    done(arg, err, &info, created);
}

void hub_channel_get_async(struct hub *hub, int w, const char *name, size_t len,
                           hub_info_done *done, void *arg)
{
    if (hub->be_ops)
        return hub->be_ops->channel_get(hub->be, w, name, len, done, arg);
    struct channel_info info;
    int err = hub_channel_get(hub, name, len, &info);
    done(arg, err, &info, false);
}

void hub_channel_delete_async(struct hub *hub, int w, const char *name, size_t len,
                              hub_info_done *done, void *arg)
{
    if (hub->be_ops)
        return hub->be_ops->channel_delete(hub->be, w, name, len, done, arg);
    int err = hub_channel_delete(hub, name, len);
    done(arg, err, NULL, false);
}

void hub_channel_list_async(struct hub *hub, int w, const char *after, size_t after_len,
                            const char *prefix, size_t max, hub_list_done *done, void *arg)
{
    if (hub->be_ops)
        return hub->be_ops->channel_list(hub->be, w, after, after_len, prefix, max, done, arg);
    struct channel_info *infos = xmalloc(MAX(max, (size_t)1) * sizeof(*infos));
    size_t total;
    size_t n = hub_channel_list(hub, after, after_len, prefix, infos, max, &total);
    done(arg, 0, infos, n, total);
    free(infos);
}
