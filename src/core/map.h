/*
 * map: an intrusive chained hash map keyed by byte strings. The caller embeds
 * a struct map_node in its own struct and owns the key bytes (the node only
 * points at them). Grows by doubling at load factor 1; never shrinks below its
 * initial size. Not thread-safe: the owner serialises access.
 */
#ifndef HERALD_MAP_H
#define HERALD_MAP_H

#include <stddef.h>
#include <stdint.h>

struct map_node {
    struct map_node *next;
    const char *key; /* borrowed from the containing object */
    uint32_t key_len;
    uint32_t hash;
};

struct map {
    struct map_node **buckets;
    size_t mask; /* bucket count - 1 (a power of two) */
    size_t len;
};

void map_init(struct map *m, size_t initial_buckets);
void map_free(struct map *m); /* frees the bucket array only */
uint32_t map_hash(const char *key, size_t len);
struct map_node *map_get(const struct map *m, const char *key, size_t len);
/* Inserts n (key must not be present). n->key/key_len must be set. */
void map_put(struct map *m, struct map_node *n);
/* Removes n (which must be present). */
void map_del(struct map *m, struct map_node *n);
/* Iteration: *cursor starts at 0; returns NULL at the end. Safe against deleting the returned node.
 */
struct map_node *map_next(const struct map *m, size_t *bucket, struct map_node **next);

#endif
