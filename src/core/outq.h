/*
 * outq: a connection's outbound queue. A ring of items, each a slice of bytes
 * borrowed from a refcounted owner (a shared, already-framed message) or a
 * small per-connection copy; written out with one writev per batch.
 *
 * An empty queue owns no memory: the ring is freed when the last item is
 * written, so an idle connection costs only this struct. Counters are 32-bit
 * (items) and 64-bit (bytes); the caps that keep them small are the callers'
 * (see conn_send and conn_deliver_bytes in server.h).
 */
#ifndef HERALD_OUTQ_H
#define HERALD_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/ref.h"

struct out_item {
    struct ref *owner; /* one reference held by the queue; NULL for static bytes */
    const char *data;
    uint32_t len;
    bool glued;   /* continues the item before it: dropped only together with it */
    bool stamped; /* a live message's frame (owner: its struct msg): counts in the latency */
};

struct outq {
    struct out_item *items; /* ring of cap items, NULL when empty */
    uint32_t head, len, cap;
    uint32_t off;   /* bytes of the head item already written */
    uint64_t bytes; /* bytes not yet written */
};

static inline bool outq_empty(const struct outq *q)
{
    return q->len == 0;
}

/* The i-th item from the head (i < q->len). */
static inline struct out_item *outq_at(const struct outq *q, uint32_t i)
{
    return &q->items[(q->head + i) % q->cap];
}

/* Appends data[0..len); takes a new reference on owner (may be NULL: static bytes).
 * len 0 is ignored. Can't fail (out of memory aborts). */
void outq_push(struct outq *q, struct ref *owner, const char *data, uint32_t len);
/* Appends a private copy of data[0..len). */
void outq_push_copy(struct outq *q, const void *data, size_t len);
/* Marks the last item as the continuation of the one before it (one frame or event
 * in several items): outq_truncate never keeps the first without the rest. */
void outq_glue_last(struct outq *q);
/* Fills up to max iovecs with the unwritten bytes from the head. Returns the count. */
int outq_iov(const struct outq *q, struct iovec *iov, int max);
/* Records that n bytes (n <= q->bytes) were written: finished items are released. */
void outq_consume(struct outq *q, uint64_t n);
/* Drops the items from index `keep` on, except a partly written head item and what is
 * glued to a kept item (a peer must never see half a frame). */
void outq_truncate(struct outq *q, uint32_t keep);
/* Moves every item of src to the end of dst, references included; src ends empty. */
void outq_splice(struct outq *dst, struct outq *src);
/* Releases everything (partly written or not) and the ring. */
void outq_clear(struct outq *q);

#endif
