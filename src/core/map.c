/*
 * map: FNV-1a hashing, power-of-two bucket arrays, chains through the
 * caller's nodes.
 */
#include "core/map.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"

void map_init(struct map *m, size_t initial_buckets)
{
    size_t n = 16;
    while (n < initial_buckets)
        n *= 2;
    m->buckets = xcalloc(n, sizeof(*m->buckets));
    m->mask = n - 1;
    m->len = 0;
}

void map_free(struct map *m)
{
    free(m->buckets);
    m->buckets = NULL;
}

uint32_t map_hash(const char *key, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 16777619u;
    }
    return h;
}

struct map_node *map_get(const struct map *m, const char *key, size_t len)
{
    uint32_t h = map_hash(key, len);
    for (struct map_node *n = m->buckets[h & m->mask]; n; n = n->next)
        if (n->hash == h && n->key_len == len && memcmp(n->key, key, len) == 0)
            return n;
    return NULL;
}

static void grow(struct map *m)
{
    size_t count = (m->mask + 1) * 2;
    struct map_node **b = xcalloc(count, sizeof(*b));
    for (size_t i = 0; i <= m->mask; i++) {
        struct map_node *n = m->buckets[i], *next;
        for (; n; n = next) {
            next = n->next;
            n->next = b[n->hash & (count - 1)];
            b[n->hash & (count - 1)] = n;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->mask = count - 1;
}

void map_put(struct map *m, struct map_node *n)
{
    n->hash = map_hash(n->key, n->key_len);
    if (m->len + 1 > m->mask + 1)
        grow(m);
    struct map_node **head = &m->buckets[n->hash & m->mask];
    n->next = *head;
    *head = n;
    m->len++;
}

void map_del(struct map *m, struct map_node *n)
{
    struct map_node **pp = &m->buckets[n->hash & m->mask];
    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        m->len--;
    }
}

struct map_node *map_next(const struct map *m, size_t *bucket, struct map_node **next)
{
    if (*next) {
        struct map_node *n = *next;
        *next = n->next;
        return n;
    }
    while (*bucket <= m->mask) {
        struct map_node *n = m->buckets[(*bucket)++];
        if (n) {
            *next = n->next;
            return n;
        }
    }
    return NULL;
}
