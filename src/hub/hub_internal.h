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
 * subscribers, whose bits it adds to *wake_mask. Hub lock held. */
void hub__store_locked(struct hub *hub, struct channel *ch, struct msg *m, uint64_t now,
                       uint64_t *wake_mask);
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
