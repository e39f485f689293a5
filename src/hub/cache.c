/*
 * cache: cluster mode's node caches. Each node keeps, in the ordinary hub
 * structures, a cache of every channel its own subscribers hold: loaded from
 * the backend (Redis) when the first subscriber arrives, fed from the bus
 * afterwards, re-filled after an outage. This is the cache's state machine
 * (enum channel_sync): subscribes wait (parked) until it is loaded, live
 * messages are held while a load runs and applied after it in id order, and a
 * channel deleted elsewhere is dropped. See docs/architecture.md, cluster mode.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/util.h"
#include "hub/hub.h"
#include "hub/hub_internal.h"

/*
 * Cluster mode: the caches of the channels a subscribe adds must be loaded
 * first. Starts loading what is not, parks the subscriber on the first channel
 * still loading and returns HUB_PENDING, or a loading error. Hub lock held.
 */
int hub__await_sync_locked(struct hub *hub, int w, void *conn, const struct list *held,
                           struct channel **chs, size_t n, size_t *bad_index)
{
    HUB_ASSERT_LOCKED(hub);
    uint64_t now = wall_ms();
    for (size_t i = 0; i < n; i++) {
        struct channel *ch = chs[i];
        if (ch->pattern || hub__find_sub(held, ch) || ch->sync == SYNC_READY ||
            ch->sync == SYNC_FILLING)
            continue; /* a pattern's are hub__patsub_await_*'s */
        if (ch->sync == SYNC_FAILED && now - ch->sync_failed_ms < 1000) {
            *bad_index = i;
            return ch->sync_err;
        }
        if (ch->sync != SYNC_PENDING) {
            ch->sync = SYNC_PENDING;
            hub->be_ops->want(hub->be, ch->name, ch->name_len);
        }
        struct hub_waiter *wt = xmalloc(sizeof(*wt));
        *wt = (struct hub_waiter){.next = ch->waiters, .conn = conn, .w = w};
        ch->waiters = wt;
        return HUB_PENDING;
    }
    return 0;
}

/* hub_internal.h */
void hub__notify_gap_locked(struct hub *hub, struct channel *ch, uint64_t since, uint64_t oldest,
                            uint64_t *wake_mask)
{
    char fields[CHANNEL_NAME_MAX + 96];
    struct slice nm = chan_key_name(ch->name, ch->name_len);
    int k = snprintf(fields, sizeof(fields), "\"channel\":\"%.*s\",\"since\":\"%" PRIu64 "\",",
                     (int)nm.len, nm.data, since);
    k += oldest ? snprintf(fields + k, sizeof(fields) - (size_t)k, "\"oldest\":\"%" PRIu64 "\"",
                           oldest)
                : snprintf(fields + k, sizeof(fields) - (size_t)k, "\"oldest\":null");
    struct ctl_frames *gap = ctl_frames_new("gap", fields, (size_t)k);
    hub__notify_workers(hub, ch, INBOX_CTL, gap, wake_mask);
    ref_put(&gap->ref);
}

struct msg_group *hub__group_for(struct hub *hub, const struct slice *channels, size_t n)
{
    if (n < 2)
        return NULL;
    uint64_t ids[64];
    n = MIN(n, ARRAY_LEN(ids));
    for (size_t i = 0; i < n; i++) {
        struct channel *c = hub__lookup(hub, channels[i].data, channels[i].len);
        ids[i] = c ? c->id : 0; /* channels this node does not cache never match */
    }
    return msg_group_new(ids, n, 1);
}

/*
 * Keeps a live message that came while the cache loads. Only the newest
 * history-size are kept: the load reads every message after the cache's last id
 * from the Stream anyway, so what is dropped here comes back from there (or was
 * trimmed from it, which the load reports as a gap).
 */
static void hold_msg(struct channel *ch, struct msg *m)
{
    uint32_t cap = MAX(ch->history_size, 1u);
    if (ch->nheld == cap) {
        ref_put(&ch->held[0]->ref);
        memmove(ch->held, ch->held + 1, (ch->nheld - 1) * sizeof(*ch->held));
        ch->nheld--;
    }
    ch->held = xrealloc(ch->held, (ch->nheld + 1) * sizeof(*ch->held));
    ch->held[ch->nheld++] = m;
}

/* Stores m unless the cache already has it; takes the reference. Hub lock held. */
static void apply_locked(struct hub *hub, struct channel *ch, struct msg *m, uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    if (m->seq <= ch->last_seq) {
        ref_put(&m->ref); /* a gap fill and the bus both brought it */
        return;
    }
    if (m->seq > hub->seq)
        hub->seq = m->seq;
    hub__store_locked(hub, ch, m, wall_ms(), wake_mask);
}

void hub_ingest(struct hub *hub, const struct slice *target, const struct slice *channels, size_t n,
                uint64_t seq, uint64_t time_ms, const struct publish_req *req)
{
    uint64_t wake_mask = 0;
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, target->data, target->len);
    if (ch && ch->sync != SYNC_NONE && ch->sync != SYNC_FAILED) {
        struct msg *m = msg_new(ch->name, ch->name_len, ch->id, seq, time_ms, req);
        m->group = hub__group_for(hub, channels, n);
        if (ch->sync == SYNC_PENDING || ch->sync == SYNC_FILLING)
            hold_msg(ch, m);
        else
            apply_locked(hub, ch, m, &wake_mask);
        atomic_fetch_add(&hub->stats.messages, 1);
    }
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
}

uint64_t hub_channel_loading(struct hub *hub, const char *name, size_t len, uint64_t *last_seq)
{
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, name, len);
    uint64_t token = 0;
    if (ch && ch->sync != SYNC_NONE) {
        if (ch->sync == SYNC_READY)
            ch->sync = SYNC_FILLING;
        else if (ch->sync == SYNC_FAILED)
            ch->sync = SYNC_PENDING;
        *last_seq = ch->last_seq;
        ch->loads++;
        token = ch->id;
    }
    hub_unlock(hub);
    return token;
}

static int cmp_held(const void *a, const void *b)
{
    return hub__cmp_msg_seq(a, b);
}

/*
 * Cluster mode: drops the node's cache of a deleted channel (subscribers get
 * `closed`) and stops following it, so that the next subscriber here wants and
 * loads it afresh. Returns the subscribes that waited for the old cache: the
 * caller wakes them to start over. Hub lock held.
 */
static struct hub_waiter *gone_locked(struct hub *hub, struct channel *ch, uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    struct hub_waiter *waiters = ch->waiters;
    ch->waiters = NULL;
    hub->be_ops->unwant(hub->be, ch->name, ch->name_len);
    hub__unlink_locked(hub, ch, wake_mask);
    return waiters;
}

void hub__free_waiters(struct hub_waiter *waiters)
{
    while (waiters) {
        struct hub_waiter *next = waiters->next;
        free(waiters);
        waiters = next;
    }
}

void hub__wake_waiters(struct hub *hub, struct hub_waiter *waiters, int err)
{
    while (waiters) {
        struct hub_waiter *next = waiters->next;
        hub->on_synced(hub, waiters->w, waiters->conn, err);
        free(waiters);
        waiters = next;
    }
}

/* Applies what a load read: options, the eviction mark and the entries. Hub lock held. */
static void apply_load_locked(struct hub *hub, struct channel *ch, const struct hub_entry *entries,
                              size_t n, uint64_t evicted, const struct channel_opts *opts,
                              uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    if (opts && opts->has_history_size)
        ch->history_size = opts->history_size;
    if (opts && opts->has_history_ttl)
        ch->history_ttl_ms = opts->history_ttl_ms;
    if (opts)
        hub__apply_window_opts(ch, opts);
    if (evicted > ch->last_seq && ch->sync == SYNC_FILLING && ch->worker_mask) {
        /* Redis lost messages this node never had (a Redis restarted without its data,
         * a trim while the bus was away): the subscribers here are told, never skipped
         * silently. Queued before the entries, which follow the gap. */
        hub__notify_gap_locked(hub, ch, ch->last_seq, n ? entries[0].seq : 0, wake_mask);
    }
    if (evicted > ch->evicted_seq)
        ch->evicted_seq = evicted;
    for (size_t i = 0; i < n; i++) {
        const struct hub_entry *e = &entries[i];
        struct msg *m = msg_new(ch->name, ch->name_len, ch->id, e->seq, e->time_ms, &e->req);
        m->group = hub__group_for(hub, e->channels, e->nchannels);
        apply_locked(hub, ch, m, wake_mask);
    }
}

bool hub_channel_loaded(struct hub *hub, const char *name, size_t len, uint64_t token, int err,
                        const struct hub_entry *entries, size_t n, uint64_t evicted,
                        const struct channel_opts *opts)
{
    uint64_t wake_mask = 0;
    struct hub_waiter *waiters = NULL;
    bool retry = false;
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, name, len);
    /* A load of a channel that went away (or was re-created since) is of no use. */
    if (!ch || ch->id != token || !ch->loads) {
        hub_unlock(hub);
        return false;
    }
    ch->loads--;
    if (!err)
        apply_load_locked(hub, ch, entries, n, evicted, opts, &wake_mask);
    if (ch->loads) {
        /* A later load is on its way (the bus resubscribed meanwhile): live messages
         * stay held until it is in, so that what it reads comes first. The cache is
         * usable already if this one succeeded. */
        if (!err) {
            ch->sync = SYNC_FILLING;
            waiters = ch->waiters;
            ch->waiters = NULL;
        }
    } else if (err == HUB_ERR_BACKEND && ch->sync == SYNC_FILLING) {
        /* A gap fill for subscribers already here: they stay, their live messages
         * are held, and the backend tries again. */
        retry = true;
    } else if (err == HUB_ERR_NOT_FOUND && ch->sync == SYNC_FILLING) {
        /* Deleted while the bus was away (its `closed` notice was lost with it). */
        waiters = gone_locked(hub, ch, &wake_mask);
        err = 0; /* waiters start over */
        ch = NULL;
    } else {
        if (err) {
            ch->sync = SYNC_FAILED;
            ch->sync_err = err;
            ch->sync_failed_ms = wall_ms();
            for (uint32_t i = 0; i < ch->nheld; i++)
                ref_put(&ch->held[i]->ref);
        } else {
            /* Live messages that came while loading follow, in order, without repeats. */
            if (ch->nheld > 1)
                qsort(ch->held, ch->nheld, sizeof(*ch->held), cmp_held);
            for (uint32_t i = 0; i < ch->nheld; i++)
                apply_locked(hub, ch, ch->held[i], &wake_mask);
            ch->sync = SYNC_READY;
        }
        free(ch->held);
        ch->held = NULL;
        ch->nheld = 0;
        waiters = ch->waiters;
        ch->waiters = NULL;
    }
    if (ch && waiters) {
        /* The woken subscribes come back soon; a failed load answers them from here
         * until then (CACHE_RETRY_MS), and a cache nobody takes goes. */
        ch->last_active_ms = wall_ms();
        hub__schedule_expiry_locked(hub, ch);
    }
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
    hub__wake_waiters(hub, waiters, err);
    return retry;
}

void hub_channel_window(struct hub *hub, const char *name, size_t len, const struct channel_opts *o)
{
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, name, len);
    if (ch)
        hub__apply_window_opts(ch, o);
    hub_unlock(hub);
}

void hub_channel_gone(struct hub *hub, const char *name, size_t len)
{
    uint64_t wake_mask = 0;
    struct hub_waiter *waiters = NULL;
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, name, len);
    if (ch)
        waiters = gone_locked(hub, ch, &wake_mask);
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
    hub__wake_waiters(hub, waiters, 0);
}

/* Moves the waiters of *from to the front of *to. */
static void take_waiters(struct hub_waiter **to, struct hub_waiter **from)
{
    while (*from) {
        struct hub_waiter *wt = *from;
        *from = wt->next;
        wt->next = *to;
        *to = wt;
    }
}

void hub_fail_parked(struct hub *hub, int err)
{
    struct hub_waiter *all = NULL;
    hub_lock(hub);
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&hub->channels, &b, &next)))
        take_waiters(&all, &container_of(n, struct channel, node)->waiters);
    b = 0;
    next = NULL;
    while ((n = map_next(&hub->pattern_heads, &b, &next)))
        take_waiters(&all, hub__patsub_waiters_locked(n));
    hub_unlock(hub);
    hub__wake_waiters(hub, all, err);
}
