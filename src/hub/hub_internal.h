/*
 * hub_internal: what hub.c shares with cache.c (cluster mode's node caches),
 * and nothing else may use. Functions named *_locked run with the hub lock held.
 */
#ifndef HERALD_HUB_INTERNAL_H
#define HERALD_HUB_INTERNAL_H

#include "hub/hub.h"

/* Cluster mode: how long a node keeps the cache of a channel nobody here holds
 * (long-pollers come back), and a cache that holds no message (the subscribes a
 * load woke are on their way back; a failed load answers them from it). */
#define CACHE_LINGER_MS 30000
#define CACHE_RETRY_MS  1000

/* The channel called name, NULL when the table has none. Hub lock held. */
struct channel *hub__lookup(struct hub *hub, const char *name, size_t len);
/* Appends m to ch's history (taking the reference) and hands it to the workers with
 * subscribers, whose bits it adds to *wake_mask, and to the patterns that match ch.
 * Returns the subscribers of those patterns (patsub.c). Hub lock held. */
uint32_t hub__store_locked(struct hub *hub, struct channel *ch, struct msg *m, uint64_t now,
                           uint64_t *wake_mask);
/* Queues m (a new reference) for worker w's subscribers of ch (a pattern, or m's channel);
 * adds w to *wake_mask when its inbox was empty. */
void hub__inbox_push(struct hub_inbox *in, struct msg *m, struct channel *ch, uint64_t *wake_mask,
                     int w);
/* Removes ch from the table; workers holding subscribers get INBOX_CLOSED (their bits
 * go to *wake_mask). Releases the table's reference. Hub lock held. */
void hub__unlink_locked(struct hub *hub, struct channel *ch, uint64_t *wake_mask);
/* Puts ch in the expiry heap, or moves it earlier, when it may expire. Hub lock held. */
void hub__schedule_expiry_locked(struct hub *hub, struct channel *ch);
/* Wakes the workers of mask. Without the hub lock. */
void hub__wake_workers(struct hub *hub, uint64_t mask);
/* Queues an item of `kind` about ch (and ctl, a reference taken) to every worker with
 * subscribers of ch; *wake_mask gets the workers to wake. Hub lock held. */
void hub__notify_workers(struct hub *hub, struct channel *ch, enum inbox_kind kind,
                         struct ctl_frames *ctl, uint64_t *wake_mask);
/* The subscription of `held` (a connection's list) to ch, or NULL. */
struct sub *hub__find_sub(const struct list *held, const struct channel *ch);
/* Whether `held` (a connection's list) holds the channel or pattern called name. */
bool hub__holds_name(const struct list *held, const struct slice *name);
/*
 * The length of the head of a channel or pattern key (the app prefix and the first
 * segment of the name: "APP~scores" of "APP~scores.*"), or 0 when the name has no dot
 * or starts with a wildcard: such a name has no head. A pattern that starts with a
 * name segment has two segments at least, so a channel without a dot matches none.
 */
static inline size_t hub__key_head_len(const char *key, size_t len)
{
    const struct slice name = chan_key_name(key, len);
    const char *dot = name.len && name.data[0] != '*' ? memchr(name.data, '.', name.len) : NULL;
    return dot ? (size_t)(dot - key) : 0;
}

/* The channels (in memory) whose keys have a head, and the tombs of such channels,
 * hub.channel_heads (hub.c): what a pattern's resume reads. */
struct chan_head {
    struct map_node node;
    struct list chans; /* struct channel.head_link */
    struct list tombs; /* struct tomb.head_link */
    char key[];        /* "APP~scores" */
};

/* A deleted or expired channel's last id (in-memory mode; hub.tombs). */
struct tomb {
    struct map_node node;
    struct list fifo;
    struct list head_link; /* in its head's list (a name with a dot) */
    uint64_t last_seq;
    char name[CHANNEL_KEY_MAX + 1];
};

/* The channels of one subscribe and the client's position on each (per-channel cursor). */
struct sub_positions {
    struct channel *const *chs;
    const uint64_t *since; /* NULL: one cursor for all */
    size_t n;
};

/*
 * Adds to b the gap of ch (when `since` is older than what ch retains; with own_name
 * the gap keeps a copy of ch's key instead of borrowing ch) and ch's history after
 * `since`, without what the connection gets through another of its channels (held,
 * pos: may be NULL). Hub lock held.
 */
void hub__backlog_channel_locked(struct channel *ch, uint64_t since, const struct list *held,
                                 const struct sub_positions *pos, bool own_name,
                                 struct hub_backlog *b);
/* Sorts b's messages by id and keeps one copy of each message. */
void hub__backlog_sort_dedup(struct hub_backlog *b);

/* What the subscribes of a client address created (--max-channels-per-ip): room for
 * `more`, counting ch against cl's address, letting it go. Hub lock held. */
bool hub__quota_room(const struct hub *hub, const struct hub_client *cl, size_t more);
void hub__quota_charge(struct hub *hub, const struct hub_client *cl, struct channel *ch);
void hub__quota_release(struct hub *hub, struct channel *ch);

/* ---- patsub.c: pattern subscriptions --------------------------------------------- */

/* Whether the key names a pattern (a '*' is never in a channel name). */
static inline bool hub_key_is_pattern(const char *key, size_t len)
{
    return memchr(key, '*', len) != NULL;
}
/* Before a subscribe places anything: whether its patterns may be held (mode, the
 * connection's and the server's pattern limits, the address's quota). Returns 0 or a
 * hub_error with *bad_index. Hub lock held. */
int hub__patsub_check_locked(struct hub *hub, const struct list *held, const struct slice *names,
                             size_t n, const struct hub_client *cl, size_t *bad_index);
/* Sets chs[i] of every pattern of names[0..n) to its pattern, made if new (checked
 * already: cannot fail). Hub lock held. */
void hub__patsub_resolve_locked(struct hub *hub, const struct slice *names, size_t n,
                                struct channel **chs, const struct hub_client *cl);
/* Adds to b what a subscription to pattern pat resuming from `since` is owed: the
 * histories of the channels it matches (but those the connection holds by name: held,
 * and chs[0..n) of this subscribe), their gaps, and a gap for what the replay cap
 * leaves out. Hub lock held. */
void hub__patsub_backlog_locked(struct hub *hub, struct channel *pat, uint64_t since,
                                const struct list *held, struct channel *const *chs, size_t n,
                                struct hub_backlog *b);
/* Hands m (stored on ch) to the workers with subscribers of the patterns that match
 * ch. Returns those patterns' subscribers. Hub lock held, patterns exist. */
uint32_t hub__patsub_publish_locked(struct hub *hub, struct channel *ch, struct msg *m,
                                    uint64_t *wake_mask);
/* hub_sub_takes for a pattern subscription s. */
bool hub__patsub_takes(const struct list *held, struct sub *s, const struct msg *m);
/* A pattern without subscribers goes (its last reference is the caller's to drop, if it
 * holds one). Hub lock held. */
void hub__patsub_drop_if_unused_locked(struct hub *hub, struct channel *pat);
/* Frees what is left of the registry (exit). */
void hub__patsub_free(struct hub *hub);

/*
 * Cluster mode (one Redis). Before a subscribe places anything: the bus subscriptions
 * of its patterns' heads must be in place and their channels known; parks conn on
 * the first head that is not and returns HUB_PENDING, or an error (*bad_index: its
 * pattern), or 0. Hub lock held.
 */
int hub__patsub_await_heads_locked(struct hub *hub, int w, void *conn, const struct list *held,
                                   const struct slice *names, size_t n, size_t *bad_index);
/* Cluster mode, a resume: the caches of the channels the patterns of chs[0..n) match
 * must be loaded (made if missing, all loads at once). 0, HUB_PENDING (conn parked) or
 * an error (*bad_index: the pattern). Hub lock held. */
int hub__patsub_await_caches_locked(struct hub *hub, int w, void *conn, const struct list *held,
                                    struct channel *const *chs, size_t n, size_t *bad_index);
/* The from_seq of a new subscription to pattern pat: the last id after which its
 * messages come live (the node's; cluster mode: what its head's bus brought). */
uint64_t hub__patsub_live_from_locked(struct hub *hub, const struct channel *pat);
/* The parked subscribes of a node of hub.pattern_heads. Hub lock held. */
struct hub_waiter **hub__patsub_waiters_locked(struct map_node *head);
/* Cluster mode, once a second: patterns a parked subscribe made and never took, and
 * heads without patterns for CACHE_LINGER_MS, go. Hub lock held. */
void hub__patsub_sweep_locked(struct hub *hub, uint64_t now);

/* hub__resolve_locked: resolves names to channels, creating the missing ones when
 * allowed (ephemeral for a subscribe by cl, stored for a publish: cl NULL). Creates
 * nothing on error. Returns 0 or a hub_error (*bad_index: the channel). Hub lock held. */
int hub__resolve_locked(struct hub *hub, const struct slice *names, size_t n, struct channel **chs,
                        const struct hub_client *cl, size_t *bad_index);
/* cache.c: the group of a message from the bus published to channels[0..n) (ids of the
 * channels this node caches), NULL for one channel. Hub lock held. */
struct msg_group *hub__group_for(struct hub *hub, const struct slice *channels, size_t n);
/* cache.c: queues a gap event about ch (a channel or a pattern) to its subscribers: the
 * messages after `since` up to `oldest` (0: none kept, "oldest":null) are lost. Hub lock
 * held. */
void hub__notify_gap_locked(struct hub *hub, struct channel *ch, uint64_t since, uint64_t oldest,
                            uint64_t *wake_mask);
/* cache.c: tells each parked subscribe of the list (freed) to go again, or err. */
void hub__wake_waiters(struct hub *hub, struct hub_waiter *waiters, int err);
/* cache.c: frees the list, waking none (at shutdown: the server frees the parked
 * connections). */
void hub__free_waiters(struct hub_waiter *waiters);

/* ---- presence.c ---------------------------------------------------------------- */

/* s (just placed on ch, which keeps presence) counts as `who`; a join event, if any,
 * goes to the workers of *wake_mask. Hub lock held. */
void hub__presence_join_locked(struct hub *hub, struct channel *ch, struct sub *s,
                               const struct presence_who *who, uint64_t *wake_mask);
/* Frees what is left of ch's presence (exit: connections freed after their channels). */
void hub__presence_free(struct channel *ch);
/* s (counted: s->presence) leaves ch's presence. Hub lock held. */
void hub__presence_leave_locked(struct hub *hub, struct channel *ch, struct sub *s,
                                uint64_t *wake_mask);

/* Sets ch's window options (batch_ms, conflate) and presence that o has: what a node's
 * cache follows as well as the channel. Hub lock held. */
void hub__apply_window_opts(struct channel *ch, const struct channel_opts *o);
/* qsort order of struct msg pointers by seq. */
int hub__cmp_msg_seq(const void *a, const void *b);

/*
 * cache.c: before a subscribe adds channels chs[0..n), their caches must be
 * loaded. Starts the loads, parks conn on the first channel still loading and
 * returns HUB_PENDING, or a load's error (*bad_index: its channel), or 0 when all
 * are ready. Hub lock held.
 */
int hub__await_sync_locked(struct hub *hub, int w, void *conn, const struct list *held,
                           struct channel **chs, size_t n, size_t *bad_index);

#endif
