/*
 * outq: the outbound queue's ring. See outq.h.
 */
#include "core/outq.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static void copy_free(struct ref *r)
{
    free(r);
}

static void grow(struct outq *q)
{
    uint32_t cap = q->cap ? q->cap * 2 : 4;
    struct out_item *items = xmalloc((size_t)cap * sizeof(*items));
    for (uint32_t i = 0; i < q->len; i++)
        items[i] = *outq_at(q, i);
    free(q->items);
    q->items = items;
    q->cap = cap;
    q->head = 0;
}

/* Idle connections hold no queue memory. */
static void release_if_empty(struct outq *q)
{
    if (q->len)
        return;
    free(q->items);
    q->items = NULL;
    q->cap = q->head = q->off = 0;
}

void outq_push(struct outq *q, struct ref *owner, const char *data, uint32_t len)
{
    if (len == 0)
        return;
    if (q->len == q->cap)
        grow(q);
    if (owner)
        ref_get(owner);
    *outq_at(q, q->len) = (struct out_item){owner, data, len, false, false};
    q->len++;
    q->bytes += len;
}

void outq_push_copy(struct outq *q, const void *data, size_t len)
{
    if (len == 0)
        return;
    struct ref *r = xmalloc(sizeof(*r) + len);
    atomic_init(&r->refs, 1);
    r->free = copy_free;
    memcpy(r + 1, data, len);
    outq_push(q, r, (const char *)(r + 1), (uint32_t)len);
    ref_put(r);
}

int outq_iov(const struct outq *q, struct iovec *iov, int max)
{
    int n = 0;
    for (uint32_t i = 0; i < q->len && n < max; i++, n++) {
        const struct out_item *it = outq_at(q, i);
        uint32_t off = i == 0 ? q->off : 0;
        iov[n] = (struct iovec){(void *)(it->data + off), it->len - off};
    }
    return n;
}

static void pop_head(struct outq *q)
{
    struct out_item *it = &q->items[q->head];
    if (it->owner)
        ref_put(it->owner);
    q->head = (q->head + 1) % q->cap;
    q->len--;
    q->off = 0;
}

void outq_consume(struct outq *q, uint64_t n)
{
    q->bytes -= n;
    while (n && q->len) {
        struct out_item *it = &q->items[q->head];
        uint64_t rest = it->len - q->off;
        if (n < rest) {
            q->off += (uint32_t)n;
            return;
        }
        n -= rest;
        pop_head(q);
    }
    release_if_empty(q);
}

void outq_glue_last(struct outq *q)
{
    if (q->len > 1)
        outq_at(q, q->len - 1)->glued = true;
}

void outq_truncate(struct outq *q, uint32_t keep)
{
    if (keep == 0 && q->off)
        keep = 1;
    while (keep && keep < q->len && outq_at(q, keep)->glued)
        keep++;
    while (q->len > keep) {
        struct out_item *it = outq_at(q, q->len - 1);
        q->bytes -= it->len;
        if (it->owner)
            ref_put(it->owner);
        q->len--;
    }
    release_if_empty(q);
}

void outq_splice(struct outq *dst, struct outq *src)
{
    for (uint32_t i = 0; i < src->len; i++) {
        struct out_item *it = outq_at(src, i);
        uint32_t off = i == 0 ? src->off : 0;
        if (dst->len == dst->cap)
            grow(dst);
        /* The reference moves with the item. */
        *outq_at(dst, dst->len) = (struct out_item){it->owner, it->data + off, it->len - off,
                                                    i ? it->glued : false, it->stamped};
        dst->len++;
        dst->bytes += it->len - off;
    }
    free(src->items);
    *src = (struct outq){0};
}

void outq_clear(struct outq *q)
{
    for (uint32_t i = 0; i < q->len; i++) {
        struct out_item *it = outq_at(q, i);
        if (it->owner)
            ref_put(it->owner);
    }
    q->len = 0;
    q->bytes = 0;
    release_if_empty(q);
}
