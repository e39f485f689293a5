/*
 * patsub: pattern subscriptions (channels=scores.* or scores.**). A pattern a
 * connection subscribes to is a struct channel with `pattern` set that is never
 * in the channel table: it has subscribers (struct sub, per-worker lists, a
 * worker mask) like a channel, and no history. So the transports, the fan-out
 * and the cursors treat a pattern subscription as one more subscription.
 *
 * Registry: hub.patterns by key ("APP~scores.*"), and hub.pattern_heads, the
 * same by the head of the channel keys they can match (the app prefix and the
 * first segment, "APP~scores"; "APP~*" for a pattern that starts with a
 * wildcard). A publish with no pattern registered costs one test
 * (hub__store_locked); with patterns, one table lookup per channel whose name
 * has a dot (one more when patterns starting with a wildcard exist) and a match
 * against the patterns of that head only.
 *
 * Ids: patterns need one id order across channels (a single node, or one Redis
 * server); hub_subscribe refuses them where ids are per channel. A pattern
 * subscription's from_seq is the node's last id when it took effect: every
 * later message of a matching channel comes live, everything before from the
 * backlog (hub__patsub_backlog_locked).
 *
 * One Redis (cluster mode): a head is a bus subscription, PSUBSCRIBE
 * herald:{APP~scores.*}:m (herald:{APP~*}:m for the wildcard-first patterns),
 * so the node hears every channel under the head, those it follows and those it
 * does not, those made after the subscribe too. Live: a pattern gets its
 * messages from there (hub_pattern_ingest), never from the node's caches, so
 * they come in the bus's order, which is id order. A head is ready once Redis
 * confirmed the PSUBSCRIBE and the app's listing index named the channels under
 * it (head.names; a channel's first publish adds it to the index in the same
 * script, so a channel the index did not name comes on the bus afterwards and
 * joins head.names from there). Resume: the subscribe loads the caches of the
 * matching names (parked until they are in, like a subscribe by name) and
 * replays from them what is at or below head.last_seq, the last id the bus
 * brought for the head; later ones come live. Redis sends a publish to a
 * channel's subscribers before its pattern subscribers, on the one connection,
 * so a cache holds every message of its channel up to head.last_seq.
 *
 * Once per connection: a message reaches a connection through a pattern only
 * when no subscription of the connection by name takes it (one of its channels
 * held by name with from_seq below its id), and through one pattern only (a
 * pattern that delivered it has it as `delivered`).
 */
#include <stddef.h>
#include <stdlib.h>

#include "core/config.h"
#include "hub/hub.h"
#include "hub/hub_internal.h"
#include "hub/pattern.h"

/* A channel key under a head (cluster mode). */
struct head_name {
    struct map_node node;
    char key[];
};

/* The patterns whose keys share a head (see above). */
struct pat_head {
    struct map_node node;
    uint32_t n, cap;
    struct channel **pats;
    /* cluster mode (one Redis) */
    uint8_t sync;               /* enum channel_sync: PENDING, READY or FAILED */
    int sync_err;               /* when FAILED */
    uint64_t changed_ms;        /* wall: it failed, or it became empty (swept after that) */
    uint64_t last_seq;          /* the last id the bus brought for the head */
    struct hub_waiter *waiters; /* subscribes parked until it is ready */
    struct map names;           /* struct head_name: the channels under it */
    bool names_full;            /* more than HUB_PATTERN_NAMES_MAX */
    char key[APP_NAME_MAX + 1 + CHANNEL_NAME_MAX + 1];
};

/* Writes the head of the wildcard-first patterns of key's app ("APP~*") into out. */
static size_t broad_head(const char *key, size_t len, char *out)
{
    size_t p = (size_t)(chan_key_name(key, len).data - key);
    memcpy(out, key, p);
    out[p] = '*';
    return p + 1;
}

/* The head of the pattern key[0..len), made when `make` and there is none (else NULL). */
static struct pat_head *head_of(struct hub *hub, const char *pkey, size_t len, bool make)
{
    char buf[APP_NAME_MAX + 2];
    size_t hl = hub__key_head_len(pkey, len);
    const char *key = hl ? pkey : buf;
    if (!hl)
        hl = broad_head(pkey, len, buf);
    struct map_node *n = map_get(&hub->pattern_heads, key, hl);
    if (n || !make)
        return n ? container_of(n, struct pat_head, node) : NULL;
    struct pat_head *h = xcalloc(1, sizeof(*h));
    memcpy(h->key, key, hl);
    h->node.key = h->key;
    h->node.key_len = (uint32_t)hl;
    map_init(&h->names, 16);
    map_put(&hub->pattern_heads, &h->node);
    return h;
}

static void head_free(struct hub *hub, struct pat_head *h)
{
    map_del(&hub->pattern_heads, &h->node);
    hub__free_waiters(h->waiters); /* hub_free only */
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&h->names, &b, &next))) {
        map_del(&h->names, n);
        free(container_of(n, struct head_name, node));
    }
    map_free(&h->names);
    free(h->pats);
    free(h);
}

static void head_add(struct hub *hub, struct channel *pat)
{
    struct pat_head *h = head_of(hub, pat->name, pat->name_len, true);
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 4;
        h->pats = xrealloc(h->pats, h->cap * sizeof(*h->pats));
    }
    h->pats[h->n++] = pat;
}

static void head_remove(struct hub *hub, struct channel *pat)
{
    struct pat_head *h = head_of(hub, pat->name, pat->name_len, false);
    assert(h);
    for (uint32_t i = 0; i < h->n; i++)
        if (h->pats[i] == pat) {
            h->pats[i] = h->pats[--h->n];
            break;
        }
    if (h->n)
        return;
    if (hub->be_ops)
        h->changed_ms = wall_ms(); /* lingers for resumes that come back (patsub_sweep) */
    else
        head_free(hub, h);
}

static struct channel *pattern_lookup(struct hub *hub, const struct slice *key)
{
    struct map_node *n = map_get(&hub->patterns, key->data, key->len);
    return n ? container_of(n, struct channel, node) : NULL;
}

int hub__patsub_check_locked(struct hub *hub, const struct list *held, const struct slice *names,
                             size_t n, const struct hub_client *cl, size_t *bad_index)
{
    HUB_ASSERT_LOCKED(hub);
    uint32_t have = 0;
    size_t fresh = 0, first_fresh = 0;
    for (const struct list *p = held->next; p != held; p = p->next)
        have += container_of(p, struct sub, conn_link)->ch->pattern;
    for (size_t i = 0; i < n; i++) {
        if (!hub_key_is_pattern(names[i].data, names[i].len))
            continue;
        *bad_index = i;
        /* Ids per channel (a Redis Cluster, whose sharded pub/sub has no patterns either):
         * neither the live stream nor a resume could be complete. */
        if (hub->ids_per_channel)
            return HUB_ERR_PATTERN_UNSUPPORTED;
        if (hub__holds_name(held, &names[i]))
            continue;
        if (++have > hub->cfg->max_patterns_per_conn)
            return HUB_ERR_PATTERNS_PER_CONN;
        if (!pattern_lookup(hub, &names[i]) && !fresh++)
            first_fresh = i;
    }
    *bad_index = first_fresh;
    if (fresh && hub->patterns.len + fresh > hub->cfg->max_patterns)
        return HUB_ERR_TOO_MANY_PATTERNS;
    if (fresh && !hub__quota_room(hub, cl, fresh))
        return HUB_ERR_TOO_MANY_FOR_ADDR;
    return 0;
}

void hub__patsub_resolve_locked(struct hub *hub, const struct slice *names, size_t n,
                                struct channel **chs, const struct hub_client *cl)
{
    HUB_ASSERT_LOCKED(hub);
    for (size_t i = 0; i < n; i++) {
        if (!hub_key_is_pattern(names[i].data, names[i].len))
            continue;
        if ((chs[i] = pattern_lookup(hub, &names[i])))
            continue;
        struct channel *pat = xcalloc(1, sizeof(*pat) + names[i].len + 1);
        memcpy(pat->name, names[i].data, names[i].len);
        pat->name_len = names[i].len;
        pat->node.key = pat->name;
        pat->node.key_len = names[i].len;
        pat->id = ++hub->next_chan_id;
        atomic_init(&pat->refs, 1); /* the registry's */
        pat->pattern = true;
        pat->created_ms = pat->last_active_ms = wall_ms();
        map_put(&hub->patterns, &pat->node);
        head_add(hub, pat);
        if (!hub__key_head_len(pat->name, pat->name_len))
            hub->npatterns_broad++;
        hub__quota_charge(hub, cl, pat); /* an address may not hold every pattern */
        chs[i] = pat;
    }
}

void hub__patsub_drop_if_unused_locked(struct hub *hub, struct channel *pat)
{
    HUB_ASSERT_LOCKED(hub);
    if (pat->subscribers || pat->deleted)
        return;
    pat->deleted = true;
    map_del(&hub->patterns, &pat->node);
    head_remove(hub, pat);
    if (!hub__key_head_len(pat->name, pat->name_len))
        hub->npatterns_broad--;
    hub__quota_release(hub, pat);
    hub_channel_put_ref(hub, pat);
}

size_t hub_pattern_count(struct hub *hub)
{
    hub_lock(hub);
    size_t n = hub->patterns.len;
    hub_unlock(hub);
    return n;
}

void hub__patsub_free(struct hub *hub)
{
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&hub->patterns, &b, &next))) {
        struct channel *pat = container_of(n, struct channel, node);
        map_del(&hub->patterns, n);
        head_remove(hub, pat);
        hub_channel_put_ref(hub, pat);
    }
    map_free(&hub->patterns);
    b = 0;
    next = NULL;
    while ((n = map_next(&hub->pattern_heads, &b, &next)))
        head_free(hub, container_of(n, struct pat_head, node)); /* cluster mode's lingering */
    map_free(&hub->pattern_heads);
}

/* ---- publish ----------------------------------------------------------------------- */

/* Whether pattern pat matches the channel key[0..len) (a key under pat's head). */
static bool pat_matches(const struct channel *pat, struct slice name)
{
    const struct slice p = chan_key_name(pat->name, pat->name_len);
    return pattern_match(p.data, p.len, NULL, 0, name.data, name.len);
}

/* Hands m to the subscribers of h's patterns that match the channel key[0..len). */
static uint32_t publish_head(struct hub *hub, const struct pat_head *h, const char *key, size_t len,
                             struct msg *m, uint64_t *wake_mask)
{
    const struct slice name = chan_key_name(key, len);
    uint32_t reached = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        struct channel *pat = h->pats[i];
        if (!pat->worker_mask || !pat_matches(pat, name))
            continue;
        uint64_t mask = pat->worker_mask;
        for (int w = 0; mask; w++, mask >>= 1)
            if (mask & 1)
                hub__inbox_push(&hub->inbox[w], m, pat, wake_mask, w);
        reached += pat->subscribers;
    }
    return reached;
}

static uint32_t publish_head_key(struct hub *hub, const char *head, size_t hl, struct channel *ch,
                                 struct msg *m, uint64_t *wake_mask)
{
    struct map_node *n = map_get(&hub->pattern_heads, head, hl);
    return n ? publish_head(hub, container_of(n, struct pat_head, node), ch->name, ch->name_len, m,
                            wake_mask)
             : 0;
}

uint32_t hub__patsub_publish_locked(struct hub *hub, struct channel *ch, struct msg *m,
                                    uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    /* A user's channel is that user's connections' only (no name matches it). In cluster
     * mode the patterns get their messages from the bus (hub_pattern_ingest). */
    if (ch->user || hub->be_ops)
        return 0;
    size_t hl = hub__key_head_len(ch->name, ch->name_len); /* 0: one segment, no head's */
    uint32_t reached = hl ? publish_head_key(hub, ch->name, hl, ch, m, wake_mask) : 0;
    if (hub->npatterns_broad) {
        char buf[APP_NAME_MAX + 2];
        reached +=
            publish_head_key(hub, buf, broad_head(ch->name, ch->name_len, buf), ch, m, wake_mask);
    }
    return reached;
}

static bool in_group(const struct msg *m, uint64_t chan_id)
{
    for (uint32_t g = 0; m->group && g < m->group->n; g++)
        if (m->group->chan_ids[g] == chan_id)
            return true;
    return false;
}

bool hub__patsub_takes(const struct list *held, struct sub *s, const struct msg *m)
{
    if (m->seq <= s->from_seq)
        return false; /* before the subscription: the backlog's */
    for (const struct list *p = held->next; p != held; p = p->next) {
        const struct sub *t = container_of(p, struct sub, conn_link);
        if (t->ch->pattern) {
            /* Ids are the node's: one id, one message, whichever copy of it. */
            if (t->delivered == m->seq)
                return false;
        } else if (m->seq > t->from_seq && (t->ch->id == m->chan_id || in_group(m, t->ch->id))) {
            return false; /* a subscription by name takes (or took) it */
        }
    }
    s->delivered = m->seq;
    return true;
}

/* ---- resume ------------------------------------------------------------------------ */

static bool held_by_name(const struct list *held, struct channel *const *chs, size_t n,
                         const struct channel *ch)
{
    for (size_t i = 0; i < n; i++)
        if (chs[i] == ch)
            return true;
    return hub__find_sub(held, ch) != NULL;
}

static void add_gap(struct hub_backlog *b, const char *key, size_t len, uint64_t since,
                    uint64_t oldest, enum hub_gap_reason reason)
{
    b->gaps = xrealloc(b->gaps, (b->ngaps + 1) * sizeof(*b->gaps));
    b->gaps[b->ngaps++] = (struct hub_gap){.name = xstrndup(key, len),
                                           .name_len = (uint32_t)len,
                                           .reason = (uint8_t)reason,
                                           .oldest = oldest,
                                           .since = since};
}

/* Keeps mine's per-channel gaps within `room`: past it they are dropped, and from then on
 * each one as it comes (*collapsed: one gap naming the pattern says it instead). */
static void bound_gaps(struct hub_backlog *mine, uint32_t room, bool *collapsed)
{
    if (!*collapsed && mine->ngaps <= room)
        return;
    for (uint32_t i = 0; i < mine->ngaps; i++)
        free(mine->gaps[i].name);
    mine->ngaps = 0;
    *collapsed = true;
}

/* What a pattern's resume reads, channels or tombs: those under the pattern's head
 * (hub.channel_heads), or all of them (`all`) for a pattern that starts with a wildcard
 * (token holders only). */
struct walk {
    struct list *list, *at; /* the head's list, or NULL */
    struct map *all;        /* else the whole map */
    size_t bucket, link_off, node_off;
    struct map_node *next;
};

static struct walk walk_start(struct hub *hub, const struct channel *pat, bool tombs)
{
    struct walk w = {
        .link_off = tombs ? offsetof(struct tomb, head_link) : offsetof(struct channel, head_link),
        .node_off = tombs ? offsetof(struct tomb, node) : offsetof(struct channel, node)};
    size_t hl = hub__key_head_len(pat->name, pat->name_len);
    if (!hl) {
        w.all = tombs ? &hub->tombs : &hub->channels;
        return w;
    }
    struct map_node *n = map_get(&hub->channel_heads, pat->name, hl);
    if (n) {
        struct chan_head *h = container_of(n, struct chan_head, node);
        w.list = tombs ? &h->tombs : &h->chans;
        w.at = w.list->next;
    }
    return w;
}

/* The next channel or tomb of the walk, NULL at its end. */
static void *walk_next(struct walk *w)
{
    if (w->all) {
        struct map_node *n = map_next(w->all, &w->bucket, &w->next);
        return n ? (char *)n - w->node_off : NULL;
    }
    if (!w->list || w->at == w->list)
        return NULL;
    struct list *l = w->at;
    w->at = l->next;
    return (char *)l - w->link_off;
}

/* Whether the channel key[0..len) is of pat's app and matches it (p: pat's name, plen:
 * its app prefix's length). A user's channel matches no pattern. */
static bool key_matches(const struct channel *pat, struct slice p, size_t plen, const char *key,
                        size_t len)
{
    const struct slice name = chan_key_name(key, len);
    return !chan_key_is_user(key, len) && (size_t)(name.data - key) == plen &&
           memcmp(key, pat->name, plen) == 0 &&
           pattern_match(p.data, p.len, NULL, 0, name.data, name.len);
}

/* What the pattern's replay reads from ch (one of its channels). */
static void backlog_of(struct channel *pat, struct slice p, size_t plen, struct channel *ch,
                       uint64_t since, const struct list *held, struct channel *const *chs,
                       size_t n, struct hub_backlog *mine)
{
    if (key_matches(pat, p, plen, ch->name, ch->name_len) && !held_by_name(held, chs, n, ch))
        hub__backlog_channel_locked(ch, since, held, NULL, true, mine);
}

/* Cluster mode: the backlog from the caches of the channels under pat's head (loaded by
 * hub__patsub_await_caches_locked), up to what the bus brought (later ones come live). */
static void backlog_cached(struct hub *hub, struct channel *pat, struct slice p, size_t plen,
                           uint64_t since, const struct list *held, struct channel *const *chs,
                           size_t n, struct hub_backlog *mine, uint32_t room, bool *collapsed)
{
    const struct pat_head *h = head_of(hub, pat->name, pat->name_len, false);
    size_t b = 0;
    struct map_node *node, *next = NULL;
    while ((node = map_next(&h->names, &b, &next))) {
        struct channel *ch = hub__lookup(hub, node->key, node->key_len);
        if (ch && (ch->sync == SYNC_READY || ch->sync == SYNC_FILLING)) {
            backlog_of(pat, p, plen, ch, since, held, chs, n, mine);
            bound_gaps(mine, room, collapsed);
        }
    }
    uint32_t kept = 0;
    for (uint32_t i = 0; i < mine->n; i++) {
        if (mine->msgs[i]->seq > h->last_seq)
            ref_put(&mine->msgs[i]->ref);
        else
            mine->msgs[kept++] = mine->msgs[i];
    }
    mine->n = kept;
}

void hub__patsub_backlog_locked(struct hub *hub, struct channel *pat, uint64_t since,
                                const struct list *held, struct channel *const *chs, size_t n,
                                struct hub_backlog *b)
{
    HUB_ASSERT_LOCKED(hub);
    const struct slice p = chan_key_name(pat->name, pat->name_len);
    const size_t plen = (size_t)(p.data - pat->name); /* the app prefix: "APP~" or "" */
    struct hub_backlog mine = {0};
    /* The per-channel gaps of one subscribe's patterns are bounded (HUB_REPLAY_GAPS_MAX),
     * and so are the channels one resume reads (HUB_PATTERN_NAMES_MAX): the hub is held
     * for a bounded time, and a connection queues a bounded replay. */
    uint32_t room = b->ngaps < HUB_REPLAY_GAPS_MAX ? HUB_REPLAY_GAPS_MAX - b->ngaps : 0;
    bool collapsed = false, cut = false;
    if (hub->be_ops) {
        backlog_cached(hub, pat, p, plen, since, held, chs, n, &mine, room, &collapsed);
        /* More channels under the head than a resume loads: said, never skipped. */
        cut = head_of(hub, pat->name, pat->name_len, false)->names_full;
    } else {
        struct walk w = walk_start(hub, pat, false);
        struct channel *ch;
        for (uint32_t read = 0; (ch = walk_next(&w)); read++) {
            if (read == HUB_PATTERN_NAMES_MAX) {
                cut = true;
                break;
            }
            backlog_of(pat, p, plen, ch, since, held, chs, n, &mine);
            bound_gaps(&mine, room, &collapsed);
        }
        /* Channels deleted or expired since the cursor lost what they had. */
        w = walk_start(hub, pat, true);
        const struct tomb *t;
        for (uint32_t read = 0; since && (t = walk_next(&w)); read++) {
            if (read == HUB_PATTERN_NAMES_MAX) {
                cut = true;
                break;
            }
            if (t->last_seq > since && key_matches(pat, p, plen, t->name, t->node.key_len)) {
                add_gap(&mine, t->name, t->node.key_len, since, 0, HUB_GAP_CHANNEL);
                bound_gaps(&mine, room, &collapsed);
            }
        }
        /* A cursor from before this node started: channels it no longer has may have held
         * messages for it (each matching channel that exists reports its own gap). */
        if (since && since < hub->boot_seq - 1 && mine.ngaps == 0 && !collapsed && !cut)
            add_gap(b, pat->name, pat->name_len, since, 0, HUB_GAP_CHANNEL);
    }
    if (cut)
        add_gap(b, pat->name, pat->name_len, since, 0, HUB_GAP_REPLAY_LIMIT);
    if (collapsed)
        add_gap(b, pat->name, pat->name_len, since, 0, HUB_GAP_GAP_LIMIT);
    /* A message that also went to a channel this subscribe names comes through that
     * subscription (as it does live), so that the copy replayed is the one live gives. */
    uint32_t kept = 0;
    for (uint32_t i = 0; i < mine.n; i++) {
        struct msg *m = mine.msgs[i];
        bool named = false;
        for (size_t k = 0; k < n && m->group && !named; k++)
            named = !chs[k]->pattern && in_group(m, chs[k]->id);
        if (named)
            ref_put(&m->ref);
        else
            mine.msgs[kept++] = m;
    }
    mine.n = kept;
    hub__backlog_sort_dedup(&mine);
    uint32_t cap = hub->cfg->max_pattern_replay, drop = mine.n > cap ? mine.n - cap : 0;
    if (drop) /* the newest `cap`: what is left out is said, never skipped silently */
        add_gap(b, pat->name, pat->name_len, since, mine.msgs[drop]->seq, HUB_GAP_REPLAY_LIMIT);
    for (uint32_t i = 0; i < drop; i++)
        ref_put(&mine.msgs[i]->ref);
    if (mine.ngaps) {
        b->gaps = xrealloc(b->gaps, (b->ngaps + mine.ngaps) * sizeof(*b->gaps));
        memcpy(b->gaps + b->ngaps, mine.gaps, mine.ngaps * sizeof(*b->gaps));
        b->ngaps += mine.ngaps;
    }
    uint32_t keep = mine.n - drop;
    if (keep && b->n + keep > b->cap) {
        b->cap = b->n + keep;
        b->msgs = xrealloc(b->msgs, b->cap * sizeof(*b->msgs));
    }
    if (keep)
        memcpy(b->msgs + b->n, mine.msgs + drop, keep * sizeof(*b->msgs));
    b->n += keep;
    free(mine.msgs);
    free(mine.gaps);
}

/* ---- cluster mode (one Redis): the bus side ------------------------------------------- */

/* Whether the channel key[0..len) is under h (see above), a user's channel never. */
static bool under_head(const struct pat_head *h, const char *key, size_t len)
{
    size_t hl = h->node.key_len;
    if (chan_key_is_user(key, len))
        return false;
    if (h->key[hl - 1] == '*') /* a wildcard-first head: every channel of its app */
        return (size_t)(chan_key_name(key, len).data - key) == hl - 1 &&
               memcmp(key, h->key, hl - 1) == 0;
    return hub__key_head_len(key, len) == hl && memcmp(key, h->key, hl) == 0;
}

static void name_add(struct pat_head *h, const char *key, size_t len)
{
    if (map_get(&h->names, key, len))
        return;
    if (h->names.len >= HUB_PATTERN_NAMES_MAX) {
        h->names_full = true;
        return;
    }
    struct head_name *hn = xmalloc(sizeof(*hn) + len);
    memcpy(hn->key, key, len);
    hn->node = (struct map_node){.key = hn->key, .key_len = (uint32_t)len};
    map_put(&h->names, &hn->node);
}

/* Whether h holds nothing and waits for nothing: it only lingers. */
static bool head_idle(const struct pat_head *h)
{
    return !h->n && !h->waiters && h->sync != SYNC_PENDING;
}

static void head_drop(struct hub *hub, struct pat_head *h)
{
    hub->be_ops->unwant_pattern(hub->be, h->key, h->node.key_len);
    head_free(hub, h);
}

/* Whether one of the patterns of names[0..n) is under h. */
static bool head_named(struct hub *hub, const struct pat_head *h, const struct slice *names,
                       size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (hub_key_is_pattern(names[i].data, names[i].len) &&
            head_of(hub, names[i].data, names[i].len, false) == h)
            return true;
    return false;
}

/* Drops a lingering head that none of names[0..n) (a subscribe's) needs, if there is one. */
static bool drop_idle_head(struct hub *hub, const struct slice *names, size_t n)
{
    size_t b = 0;
    struct map_node *node, *next = NULL;
    while ((node = map_next(&hub->pattern_heads, &b, &next))) {
        struct pat_head *h = container_of(node, struct pat_head, node);
        if (head_idle(h) && !head_named(hub, h, names, n)) {
            head_drop(hub, h);
            return true;
        }
    }
    return false;
}

int hub__patsub_await_heads_locked(struct hub *hub, int w, void *conn, const struct list *held,
                                   const struct slice *names, size_t n, size_t *bad_index)
{
    HUB_ASSERT_LOCKED(hub);
    uint64_t now = wall_ms();
    for (size_t i = 0; i < n; i++) {
        if (!hub_key_is_pattern(names[i].data, names[i].len) || hub__holds_name(held, &names[i]))
            continue;
        *bad_index = i;
        struct pat_head *h = head_of(hub, names[i].data, names[i].len, false);
        if (!h) {
            /* A head is a bus subscription, and lingers: bounded like the patterns; a
             * lingering one makes room. */
            if (hub->pattern_heads.len >= hub->cfg->max_patterns && !drop_idle_head(hub, names, n))
                return HUB_ERR_TOO_MANY_PATTERNS;
            h = head_of(hub, names[i].data, names[i].len, true);
            h->changed_ms = now;
        }
        if (h->sync == SYNC_READY)
            continue;
        if (h->sync == SYNC_FAILED && now - h->changed_ms < CACHE_RETRY_MS)
            return h->sync_err;
        if (h->sync != SYNC_PENDING) {
            h->sync = SYNC_PENDING;
            hub->be_ops->want_pattern(hub->be, h->key, h->node.key_len);
        }
        struct hub_waiter *wt = xmalloc(sizeof(*wt));
        *wt = (struct hub_waiter){.next = h->waiters, .conn = conn, .w = w};
        h->waiters = wt;
        return HUB_PENDING;
    }
    return 0;
}

/* Tells the subscribers of h's patterns that the bus lost messages after h's last id. */
static void gap_all_locked(struct hub *hub, struct pat_head *h, uint64_t *wake_mask)
{
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->pats[i]->worker_mask)
            hub__notify_gap_locked(hub, h->pats[i], h->last_seq, 0, wake_mask);
    }
}

void hub_pattern_synced(struct hub *hub, const char *head, size_t hl, int err, bool again,
                        uint64_t last, const struct slice *names, size_t n, bool more)
{
    uint64_t wake_mask = 0;
    struct hub_waiter *waiters = NULL;
    hub_lock(hub);
    struct map_node *node = map_get(&hub->pattern_heads, head, hl);
    struct pat_head *h = node ? container_of(node, struct pat_head, node) : NULL;
    if (h && again && h->sync == SYNC_READY)
        gap_all_locked(hub, h, &wake_mask);
    if (h && err) {
        h->sync = SYNC_FAILED;
        h->sync_err = err;
        h->changed_ms = wall_ms();
    } else if (h) {
        for (size_t i = 0; i < n; i++)
            if (under_head(h, names[i].data, names[i].len))
                name_add(h, names[i].data, names[i].len);
        h->names_full |= more;
        h->last_seq = MAX(h->last_seq, last); /* what came before is in the channels' Streams */
        h->sync = SYNC_READY;
        h->changed_ms = wall_ms();
    }
    if (h) {
        waiters = h->waiters;
        h->waiters = NULL;
    }
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
    hub__wake_waiters(hub, waiters, err);
}

void hub_pattern_ingest(struct hub *hub, const char *head, size_t hl, const struct slice *target,
                        const struct slice *channels, size_t n, uint64_t seq, uint64_t time_ms,
                        const struct publish_req *req)
{
    uint64_t wake_mask = 0;
    hub_lock(hub);
    struct map_node *node = map_get(&hub->pattern_heads, head, hl);
    struct pat_head *h = node ? container_of(node, struct pat_head, node) : NULL;
    if (h && under_head(h, target->data, target->len)) {
        h->last_seq = MAX(h->last_seq, seq);
        name_add(h, target->data, target->len);
        const struct slice name = chan_key_name(target->data, target->len);
        bool wanted = false;
        for (uint32_t i = 0; i < h->n && !wanted; i++)
            wanted = h->pats[i]->worker_mask && pat_matches(h->pats[i], name);
        if (wanted) {
            /* A channel this node follows: its id, so that a subscription by name wins. */
            struct channel *ch = hub__lookup(hub, target->data, target->len);
            struct msg *m = msg_new(target->data, target->len, ch ? ch->id : 0, seq, time_ms, req);
            m->group = hub__group_for(hub, channels, n);
            publish_head(hub, h, target->data, target->len, m, &wake_mask);
            ref_put(&m->ref);
        }
    }
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
}

int hub__patsub_await_caches_locked(struct hub *hub, int w, void *conn, const struct list *held,
                                    struct channel *const *chs, size_t n, size_t *bad_index)
{
    HUB_ASSERT_LOCKED(hub);
    static const struct hub_client no_quota; /* the pattern's, not the client's */
    uint64_t now = wall_ms();
    struct channel *park = NULL;
    for (size_t i = 0; i < n; i++) {
        struct channel *pat = chs[i];
        if (!pat->pattern || hub__find_sub(held, pat))
            continue;
        const struct slice p = chan_key_name(pat->name, pat->name_len);
        const size_t plen = (size_t)(p.data - pat->name);
        const struct pat_head *h = head_of(hub, pat->name, pat->name_len, false);
        size_t b = 0;
        struct map_node *node, *next = NULL;
        while ((node = map_next(&h->names, &b, &next))) {
            if (!key_matches(pat, p, plen, node->key, node->key_len))
                continue;
            *bad_index = i;
            struct channel *ch = hub__lookup(hub, node->key, node->key_len);
            if (!ch) {
                struct slice key = {node->key, node->key_len};
                size_t bad;
                int err = hub__resolve_locked(hub, &key, 1, &ch, &no_quota, &bad);
                if (err)
                    return err;
                hub__schedule_expiry_locked(hub, ch); /* a cache nobody subscribes to */
            }
            if (ch->sync == SYNC_READY || ch->sync == SYNC_FILLING ||
                (ch->sync == SYNC_FAILED && ch->sync_err == HUB_ERR_NOT_FOUND))
                continue; /* ready, or gone (deleted): nothing to replay */
            if (ch->sync == SYNC_FAILED && now - ch->sync_failed_ms < CACHE_RETRY_MS)
                return ch->sync_err;
            if (ch->sync != SYNC_PENDING) { /* every load at once; the subscribe waits once */
                ch->sync = SYNC_PENDING;
                hub->be_ops->want(hub->be, ch->name, ch->name_len);
            }
            if (!park)
                park = ch;
        }
    }
    if (!park)
        return 0;
    struct hub_waiter *wt = xmalloc(sizeof(*wt));
    *wt = (struct hub_waiter){.next = park->waiters, .conn = conn, .w = w};
    park->waiters = wt;
    return HUB_PENDING;
}

struct hub_waiter **hub__patsub_waiters_locked(struct map_node *head)
{
    return &container_of(head, struct pat_head, node)->waiters;
}

uint64_t hub__patsub_live_from_locked(struct hub *hub, const struct channel *pat)
{
    HUB_ASSERT_LOCKED(hub);
    return hub->be_ops ? head_of(hub, pat->name, pat->name_len, false)->last_seq : hub->seq;
}

void hub__patsub_sweep_locked(struct hub *hub, uint64_t now)
{
    HUB_ASSERT_LOCKED(hub);
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&hub->patterns, &b, &next))) {
        struct channel *pat = container_of(n, struct channel, node);
        if (!pat->subscribers && now - pat->created_ms >= CACHE_RETRY_MS)
            hub__patsub_drop_if_unused_locked(hub, pat);
    }
    b = 0;
    next = NULL;
    while ((n = map_next(&hub->pattern_heads, &b, &next))) {
        struct pat_head *h = container_of(n, struct pat_head, node);
        if (head_idle(h) && now - h->changed_ms >= CACHE_LINGER_MS)
            head_drop(hub, h);
    }
}
