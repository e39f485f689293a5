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

/* The patterns whose keys share a head (see above). */
struct pat_head {
    struct map_node node;
    uint32_t n, cap;
    struct channel **pats;
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

/* The group of pat's head, made when `make` and there is none (else NULL). */
static struct pat_head *head_of(struct hub *hub, const struct channel *pat, bool make)
{
    char buf[APP_NAME_MAX + 2];
    size_t hl = hub__key_head_len(pat->name, pat->name_len);
    const char *key = hl ? pat->name : buf;
    if (!hl)
        hl = broad_head(pat->name, pat->name_len, buf);
    struct map_node *n = map_get(&hub->pattern_heads, key, hl);
    if (n || !make)
        return n ? container_of(n, struct pat_head, node) : NULL;
    struct pat_head *h = xcalloc(1, sizeof(*h));
    memcpy(h->key, key, hl);
    h->node.key = h->key;
    h->node.key_len = (uint32_t)hl;
    map_put(&hub->pattern_heads, &h->node);
    return h;
}

static void head_add(struct hub *hub, struct channel *pat)
{
    struct pat_head *h = head_of(hub, pat, true);
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 4;
        h->pats = xrealloc(h->pats, h->cap * sizeof(*h->pats));
    }
    h->pats[h->n++] = pat;
}

static void head_remove(struct hub *hub, struct channel *pat)
{
    struct pat_head *h = head_of(hub, pat, false);
    assert(h);
    for (uint32_t i = 0; i < h->n; i++)
        if (h->pats[i] == pat) {
            h->pats[i] = h->pats[--h->n];
            break;
        }
    if (h->n == 0) {
        map_del(&hub->pattern_heads, &h->node);
        free(h->pats);
        free(h);
    }
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
        /* Ids per channel (a Redis Cluster) or channels loaded from elsewhere (cluster
         * mode): neither the live stream nor a resume could be complete. */
        if (hub->be_ops)
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
    map_free(&hub->pattern_heads);
}

/* ---- publish ----------------------------------------------------------------------- */

/* Hands m to the subscribers of the patterns under head[0..hl) that match ch. */
static uint32_t publish_head(struct hub *hub, const char *head, size_t hl, struct channel *ch,
                             struct msg *m, uint64_t *wake_mask)
{
    struct map_node *n = map_get(&hub->pattern_heads, head, hl);
    if (!n)
        return 0;
    const struct pat_head *h = container_of(n, struct pat_head, node);
    const struct slice name = chan_key_name(ch->name, ch->name_len);
    uint32_t reached = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        struct channel *pat = h->pats[i];
        const struct slice p = chan_key_name(pat->name, pat->name_len);
        if (!pat->worker_mask || !pattern_match(p.data, p.len, NULL, 0, name.data, name.len))
            continue;
        uint64_t mask = pat->worker_mask;
        for (int w = 0; mask; w++, mask >>= 1)
            if (mask & 1)
                hub__inbox_push(&hub->inbox[w], m, pat, wake_mask, w);
        reached += pat->subscribers;
    }
    return reached;
}

uint32_t hub__patsub_publish_locked(struct hub *hub, struct channel *ch, struct msg *m,
                                    uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    if (ch->user)
        return 0; /* a user's channel is that user's connections' only (no name matches it) */
    size_t hl = hub__key_head_len(ch->name, ch->name_len); /* 0: one segment, no head's */
    uint32_t reached = hl ? publish_head(hub, ch->name, hl, ch, m, wake_mask) : 0;
    if (hub->npatterns_broad) {
        char buf[APP_NAME_MAX + 2];
        reached +=
            publish_head(hub, buf, broad_head(ch->name, ch->name_len, buf), ch, m, wake_mask);
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
                    uint64_t oldest, bool limit)
{
    b->gaps = xrealloc(b->gaps, (b->ngaps + 1) * sizeof(*b->gaps));
    b->gaps[b->ngaps++] = (struct hub_gap){.name = xstrndup(key, len),
                                           .name_len = (uint32_t)len,
                                           .replay_limit = limit,
                                           .oldest = oldest,
                                           .since = since};
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

void hub__patsub_backlog_locked(struct hub *hub, struct channel *pat, uint64_t since,
                                const struct list *held, struct channel *const *chs, size_t n,
                                struct hub_backlog *b)
{
    HUB_ASSERT_LOCKED(hub);
    const struct slice p = chan_key_name(pat->name, pat->name_len);
    const size_t plen = (size_t)(p.data - pat->name); /* the app prefix: "APP~" or "" */
    struct hub_backlog mine = {0};
    uint32_t gaps_before = b->ngaps;
    struct walk w = walk_start(hub, pat, false);
    struct channel *ch;
    while ((ch = walk_next(&w)))
        if (key_matches(pat, p, plen, ch->name, ch->name_len) && !held_by_name(held, chs, n, ch))
            hub__backlog_channel_locked(ch, since, held, NULL, true, &mine);
    /* Channels deleted or expired since the cursor lost what they had. */
    w = walk_start(hub, pat, true);
    const struct tomb *t;
    while (since && (t = walk_next(&w)))
        if (t->last_seq > since && key_matches(pat, p, plen, t->name, t->node.key_len))
            add_gap(b, t->name, t->node.key_len, since, 0, false);
    /* A cursor from before this node started: channels it no longer has may have held
     * messages for it (each matching channel that exists reports its own gap). */
    if (since && since < hub->boot_seq - 1 && mine.ngaps == 0 && b->ngaps == gaps_before)
        add_gap(b, pat->name, pat->name_len, since, 0, false);
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
        add_gap(b, pat->name, pat->name_len, since, mine.msgs[drop]->seq, true);
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
