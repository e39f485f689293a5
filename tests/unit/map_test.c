/*
 * Unit tests for src/core/map.c: put/get/del, growth to ten thousand keys,
 * iteration (each node exactly once, also while deleting what it returns),
 * keys whose FNV-1a hashes are equal, and keys that are prefixes of each
 * other or differ only after an embedded NUL.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/map.h"
#include "core/util.h"

struct item {
    struct map_node node;
    char key[32];
    int visits;
};

static void item_set(struct item *it, const char *key, size_t len)
{
    memset(it, 0, sizeof(*it));
    memcpy(it->key, key, len);
    it->node.key = it->key;
    it->node.key_len = (uint32_t)len;
}

static struct item *get(const struct map *m, const char *key, size_t len)
{
    struct map_node *n = map_get(m, key, len);
    return n ? container_of(n, struct item, node) : NULL;
}

static struct item *gets(const struct map *m, const char *key)
{
    return get(m, key, strlen(key));
}

/* Counts the nodes reachable from the bucket array directly. */
static size_t chained(const struct map *m)
{
    size_t n = 0;
    for (size_t b = 0; b <= m->mask; b++)
        for (struct map_node *p = m->buckets[b]; p; p = p->next)
            n++;
    return n;
}

static void test_map_init_rounds_up(void **state)
{
    struct map m;
    map_init(&m, 0);
    assert_int_equal(m.mask + 1, 16);
    assert_int_equal(m.len, 0);
    map_free(&m);
    map_init(&m, 100);
    assert_int_equal(m.mask + 1, 128);
    map_free(&m);
    map_init(&m, 1024);
    assert_int_equal(m.mask + 1, 1024);
    assert_null(map_get(&m, "x", 1));
    map_free(&m);
    assert_null(m.buckets);
}

static void test_map_put_get_del(void **state)
{
    struct map m;
    struct item a, b, c;
    map_init(&m, 0);
    item_set(&a, "alpha", 5);
    item_set(&b, "beta", 4);
    item_set(&c, "gamma", 5);
    map_put(&m, &a.node);
    map_put(&m, &b.node);
    map_put(&m, &c.node);
    assert_int_equal(m.len, 3);
    assert_ptr_equal(gets(&m, "alpha"), &a);
    assert_ptr_equal(gets(&m, "beta"), &b);
    assert_ptr_equal(gets(&m, "gamma"), &c);
    assert_int_equal(a.node.hash, map_hash("alpha", 5));
    assert_null(gets(&m, "delta"));
    assert_null(gets(&m, "Alpha"));
    assert_null(gets(&m, ""));

    map_del(&m, &b.node);
    assert_int_equal(m.len, 2);
    assert_null(gets(&m, "beta"));
    assert_ptr_equal(gets(&m, "alpha"), &a);
    assert_ptr_equal(gets(&m, "gamma"), &c);

    /* A node can go back in after removal. */
    map_put(&m, &b.node);
    assert_ptr_equal(gets(&m, "beta"), &b);
    assert_int_equal(m.len, 3);

    map_del(&m, &a.node);
    map_del(&m, &b.node);
    map_del(&m, &c.node);
    assert_int_equal(m.len, 0);
    assert_int_equal(chained(&m), 0);
    assert_null(gets(&m, "alpha"));
    map_free(&m);
}

static void test_map_hash_is_fnv1a(void **state)
{
    /* Published FNV-1a 32-bit test vectors. */
    assert_int_equal(map_hash("", 0), 0x811c9dc5u);
    assert_int_equal(map_hash("a", 1), 0xe40c292cu);
    assert_int_equal(map_hash("foobar", 6), 0xbf9cf968u);
}

#define MANY 10000

static void test_map_growth(void **state)
{
    struct map m;
    struct item *items = calloc(MANY, sizeof(*items));
    assert_non_null(items);
    map_init(&m, 0);
    char key[32];
    for (int i = 0; i < MANY; i++) {
        int len = snprintf(key, sizeof(key), "key-%d", i);
        item_set(&items[i], key, (size_t)len);
        map_put(&m, &items[i].node);
        assert_int_equal(m.len, (size_t)i + 1);
        /* Load factor stays at most 1 and the bucket count a power of two. */
        assert_true(m.len <= m.mask + 1);
        assert_int_equal(m.mask & (m.mask + 1), 0);
    }
    assert_int_equal(m.mask + 1, 16384);
    assert_int_equal(chained(&m), MANY);
    for (int i = 0; i < MANY; i++) {
        int len = snprintf(key, sizeof(key), "key-%d", i);
        assert_ptr_equal(get(&m, key, (size_t)len), &items[i]);
    }
    assert_null(gets(&m, "key-10000"));
    assert_null(gets(&m, "key-"));

    for (int i = 0; i < MANY; i += 2)
        map_del(&m, &items[i].node);
    assert_int_equal(m.len, MANY / 2);
    assert_int_equal(chained(&m), MANY / 2);
    for (int i = 0; i < MANY; i++) {
        int len = snprintf(key, sizeof(key), "key-%d", i);
        if (i % 2)
            assert_ptr_equal(get(&m, key, (size_t)len), &items[i]);
        else
            assert_null(get(&m, key, (size_t)len));
    }
    map_free(&m);
    free(items);
}

static void fill(struct map *m, struct item *items, int n)
{
    char key[32];
    map_init(m, 0);
    for (int i = 0; i < n; i++) {
        int len = snprintf(key, sizeof(key), "k%d", i);
        item_set(&items[i], key, (size_t)len);
        map_put(m, &items[i].node);
    }
}

static void test_map_iterate_each_once(void **state)
{
    struct map m;
    struct item *items = calloc(1000, sizeof(*items));
    fill(&m, items, 1000);
    size_t b = 0, seen = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&m, &b, &next))) {
        container_of(n, struct item, node)->visits++;
        seen++;
    }
    assert_int_equal(seen, 1000);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(items[i].visits, 1);
    /* Exhausted iterators stay exhausted. */
    assert_null(map_next(&m, &b, &next));
    assert_int_equal(m.len, 1000);

    /* An empty map yields nothing. */
    struct map e;
    map_init(&e, 0);
    b = 0;
    next = NULL;
    assert_null(map_next(&e, &b, &next));
    map_free(&e);
    map_free(&m);
    free(items);
}

static void test_map_iterate_deleting_each(void **state)
{
    struct map m;
    struct item *items = calloc(3000, sizeof(*items));
    fill(&m, items, 3000);
    size_t b = 0, seen = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&m, &b, &next))) {
        container_of(n, struct item, node)->visits++;
        map_del(&m, n);
        n->next = (struct map_node *)0x1; /* the caller may reuse the node at once */
        seen++;
    }
    assert_int_equal(seen, 3000);
    for (int i = 0; i < 3000; i++)
        assert_int_equal(items[i].visits, 1);
    assert_int_equal(m.len, 0);
    assert_int_equal(chained(&m), 0);
    map_free(&m);
    free(items);
}

static void test_map_iterate_deleting_some(void **state)
{
    struct map m;
    struct item *items = calloc(2000, sizeof(*items));
    fill(&m, items, 2000);
    size_t b = 0, seen = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&m, &b, &next))) {
        struct item *it = container_of(n, struct item, node);
        it->visits++;
        if (atoi(it->key + 1) % 3 == 0)
            map_del(&m, n);
        seen++;
    }
    assert_int_equal(seen, 2000);
    assert_int_equal(m.len, 2000 - 667);
    for (int i = 0; i < 2000; i++) {
        assert_int_equal(items[i].visits, 1);
        if (i % 3 == 0)
            assert_null(gets(&m, items[i].key));
        else
            assert_ptr_equal(gets(&m, items[i].key), &items[i]);
    }
    map_free(&m);
    free(items);
}

static void test_map_equal_hashes(void **state)
{
    /* Known FNV-1a 32-bit collisions: same hash, so same bucket at every size. */
    static const char *const pairs[][2] = {
        {"costarring", "liquid"},
        {"declinate", "macallums"},
        {"altarage", "zinke"},
        {"altarages", "zinkes"},
    };
    struct map m;
    struct item items[8];
    map_init(&m, 0);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(map_hash(pairs[i][0], strlen(pairs[i][0])),
                         map_hash(pairs[i][1], strlen(pairs[i][1])));
        item_set(&items[2 * i], pairs[i][0], strlen(pairs[i][0]));
        item_set(&items[2 * i + 1], pairs[i][1], strlen(pairs[i][1]));
        map_put(&m, &items[2 * i].node);
        map_put(&m, &items[2 * i + 1].node);
    }
    assert_int_equal(m.len, 8);
    for (size_t i = 0; i < 8; i++)
        assert_ptr_equal(gets(&m, items[i].key), &items[i]);

    /* Removing either of a colliding pair leaves the other findable. */
    map_del(&m, &items[0].node); /* costarring, inserted first (deeper in the chain) */
    assert_null(gets(&m, "costarring"));
    assert_ptr_equal(gets(&m, "liquid"), &items[1]);
    map_del(&m, &items[3].node); /* macallums, inserted last (chain head) */
    assert_null(gets(&m, "macallums"));
    assert_ptr_equal(gets(&m, "declinate"), &items[2]);
    assert_int_equal(m.len, 6);

    /* They stay apart across growth too. */
    struct item more[40];
    char key[16];
    for (int i = 0; i < 40; i++) {
        int len = snprintf(key, sizeof(key), "filler%d", i);
        item_set(&more[i], key, (size_t)len);
        map_put(&m, &more[i].node);
    }
    assert_true(m.mask + 1 >= 46);
    assert_ptr_equal(gets(&m, "liquid"), &items[1]);
    assert_ptr_equal(gets(&m, "declinate"), &items[2]);
    assert_ptr_equal(gets(&m, "altarage"), &items[4]);
    assert_ptr_equal(gets(&m, "zinke"), &items[5]);
    assert_ptr_equal(gets(&m, "altarages"), &items[6]);
    assert_ptr_equal(gets(&m, "zinkes"), &items[7]);
    assert_null(gets(&m, "costarring"));
    map_free(&m);
}

static void test_map_prefix_keys(void **state)
{
    struct map m;
    struct item a, ab, abc, empty, nul;
    map_init(&m, 0);
    item_set(&abc, "abc", 3);
    item_set(&a, "a", 1);
    item_set(&ab, "ab", 2);
    item_set(&empty, "", 0);
    item_set(&nul, "a\0b", 3);
    map_put(&m, &abc.node);
    map_put(&m, &a.node);
    map_put(&m, &ab.node);
    map_put(&m, &empty.node);
    map_put(&m, &nul.node);
    assert_ptr_equal(gets(&m, "a"), &a);
    assert_ptr_equal(gets(&m, "ab"), &ab);
    assert_ptr_equal(gets(&m, "abc"), &abc);
    assert_ptr_equal(get(&m, "", 0), &empty);
    assert_ptr_equal(get(&m, "a\0b", 3), &nul);
    assert_ptr_equal(get(&m, "abcd", 2), &ab); /* only len bytes are the key */
    assert_null(gets(&m, "abcd"));
    assert_null(get(&m, "a\0c", 3));
    assert_null(get(&m, "a\0", 2));

    map_del(&m, &ab.node);
    assert_null(gets(&m, "ab"));
    assert_ptr_equal(gets(&m, "a"), &a);
    assert_ptr_equal(gets(&m, "abc"), &abc);
    map_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_init_rounds_up),
        cmocka_unit_test(test_map_put_get_del),
        cmocka_unit_test(test_map_hash_is_fnv1a),
        cmocka_unit_test(test_map_growth),
        cmocka_unit_test(test_map_iterate_each_once),
        cmocka_unit_test(test_map_iterate_deleting_each),
        cmocka_unit_test(test_map_iterate_deleting_some),
        cmocka_unit_test(test_map_equal_hashes),
        cmocka_unit_test(test_map_prefix_keys),
    };
    return cmocka_run_group_tests_name("map", tests, NULL, NULL);
}
