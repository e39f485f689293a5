/*
 * heap: an intrusive binary min-heap on a 64-bit key. The caller embeds a
 * struct heap_node in its own struct (container_of gets it back) and owns it;
 * the heap only holds pointers. Each node knows its slot, so removing a node
 * or moving its key is O(log n). Used for the event loop's timers and the
 * hub's channel expiry. Not thread-safe: the owner serialises access.
 */
#ifndef HERALD_HEAP_H
#define HERALD_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct heap_node {
    uint64_t key;
    uint32_t slot; /* 0: in no heap; else 1 + its index */
};

struct heap {
    struct heap_node **v;
    uint32_t len, cap;
};

static inline bool heap_linked(const struct heap_node *n)
{
    return n->slot != 0;
}

/* The node with the smallest key, NULL when the heap is empty. */
static inline struct heap_node *heap_min(const struct heap *h)
{
    return h->len ? h->v[0] : NULL;
}

/* Adds n, which is in no heap, under n->key. Grows the array (out of memory aborts). */
void heap_push(struct heap *h, struct heap_node *n);
/* Removes n from h; nothing when n is in no heap. */
void heap_remove(struct heap *h, struct heap_node *n);
/* Puts n (in h) back in order after its key changed. */
void heap_fix(struct heap *h, struct heap_node *n);
/* Whether every parent's key is at most its children's and every slot is right. */
bool heap_valid(const struct heap *h);
/* Frees the array (not the nodes). */
void heap_free(struct heap *h);

#endif
