/*
 * heap: see heap.h. Slots are 1-based in the nodes, 0-based in the array.
 */
#include "core/heap.h"

#include <stdlib.h>

#include "core/util.h"

static inline void set(struct heap *h, uint32_t i, struct heap_node *n)
{
    h->v[i] = n;
    n->slot = i + 1;
}

static void up(struct heap *h, uint32_t i)
{
    struct heap_node *n = h->v[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (h->v[parent]->key <= n->key)
            break;
        set(h, i, h->v[parent]);
        i = parent;
    }
    set(h, i, n);
}

static void down(struct heap *h, uint32_t i)
{
    struct heap_node *n = h->v[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= h->len)
            break;
        if (child + 1 < h->len && h->v[child + 1]->key < h->v[child]->key)
            child++;
        if (n->key <= h->v[child]->key)
            break;
        set(h, i, h->v[child]);
        i = child;
    }
    set(h, i, n);
}

void heap_push(struct heap *h, struct heap_node *n)
{
    if (h->len == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 1024;
        h->v = xrealloc(h->v, h->cap * sizeof(*h->v));
    }
    set(h, h->len++, n);
    up(h, h->len - 1);
}

void heap_remove(struct heap *h, struct heap_node *n)
{
    if (!n->slot)
        return;
    uint32_t i = n->slot - 1;
    n->slot = 0;
    struct heap_node *last = h->v[--h->len];
    if (last == n)
        return;
    set(h, i, last);
    heap_fix(h, last);
}

void heap_fix(struct heap *h, struct heap_node *n)
{
    up(h, n->slot - 1);
    down(h, n->slot - 1);
}

bool heap_valid(const struct heap *h)
{
    for (uint32_t i = 0; i < h->len; i++)
        if (h->v[i]->slot != i + 1 || (i && h->v[(i - 1) / 2]->key > h->v[i]->key))
            return false;
    return true;
}

void heap_free(struct heap *h)
{
    free(h->v);
    *h = (struct heap){0};
}
