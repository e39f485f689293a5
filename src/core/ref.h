/*
 * ref: reference-counted immutable allocations (messages, control frames,
 * per-connection copies) and byte slices of them. The outbound queue of every
 * connection holds references, so one framed message serves every subscriber.
 */
#ifndef HERALD_REF_H
#define HERALD_REF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct ref {
    atomic_uint refs;
    void (*free)(struct ref *r); /* called by the last ref_put */
};

static inline void ref_get(struct ref *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

static inline void ref_put(struct ref *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        r->free(r);
}

/* A byte slice, usually of a refcounted owner. */
struct slice {
    const char *data;
    uint32_t len;
};

/* Whether one of list[0..n) has the bytes of s. */
static inline bool slice_in(const struct slice *list, size_t n, const struct slice *s)
{
    for (size_t i = 0; i < n; i++)
        if (list[i].len == s->len && memcmp(list[i].data, s->data, s->len) == 0)
            return true;
    return false;
}

#endif
