/*
 * Unit tests for src/core/outq.c: the outbound queue's ring past 65,536 items
 * (its counters used to be 16-bit), byte accounting across partial writes,
 * references taken and released exactly once, truncation that never splits a
 * partly written item, splicing, and no memory held once empty.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/outq.h"

/* An owner that counts how often it was freed. */
static int freed;
static void count_free(struct ref *r)
{
    freed++;
}

static struct ref owner(void)
{
    struct ref r = {.free = count_free};
    atomic_init(&r.refs, 1);
    return r;
}

/* Writes everything out through iovecs, `chunk` bytes per "writev", into out. */
static size_t drain(struct outq *q, char *out, size_t chunk)
{
    size_t total = 0;
    while (!outq_empty(q)) {
        struct iovec iov[64];
        int n = outq_iov(q, iov, 64);
        assert_true(n > 0);
        size_t take = 0;
        for (int i = 0; i < n && take < chunk; i++) {
            size_t k = iov[i].iov_len < chunk - take ? iov[i].iov_len : chunk - take;
            memcpy(out + total + take, iov[i].iov_base, k);
            take += k;
        }
        outq_consume(q, take);
        total += take;
    }
    return total;
}

static void test_past_65536_items_in_order(void **state)
{
    struct outq q = {0};
    enum { N = 70000 };
    static char text[N * 6];
    for (int i = 0; i < N; i++) {
        char item[16];
        snprintf(item, sizeof(item), "%05u,", (unsigned)i % 100000u);
        memcpy(text + i * 6, item, 6);
    }
    for (int i = 0; i < N; i++)
        outq_push(&q, NULL, text + i * 6, 6);
    assert_int_equal(q.len, N);
    assert_int_equal(q.bytes, (uint64_t)N * 6);
    static char out[N * 6];
    assert_int_equal(drain(&q, out, 4099), (size_t)N * 6); /* odd size: partial items */
    assert_memory_equal(out, text, (size_t)N * 6);
    assert_int_equal(q.len, 0);
    assert_int_equal(q.bytes, 0);
    assert_null(q.items); /* an empty queue holds no memory */
}

static void test_references_taken_and_released_once(void **state)
{
    struct ref r = owner();
    freed = 0;
    struct outq q = {0};
    for (int i = 0; i < 10; i++)
        outq_push(&q, &r, "abc", 3);
    assert_int_equal(atomic_load(&r.refs), 11);
    outq_consume(&q, 4); /* one item and one byte of the next */
    assert_int_equal(atomic_load(&r.refs), 10);
    assert_int_equal(q.off, 1);
    outq_clear(&q);
    assert_int_equal(atomic_load(&r.refs), 1);
    assert_int_equal(freed, 0);
    assert_null(q.items);
    ref_put(&r);
    assert_int_equal(freed, 1);
}

static void test_copies_are_owned(void **state)
{
    struct outq q = {0};
    char buf[8] = "hello";
    outq_push_copy(&q, buf, 5);
    memset(buf, 'x', sizeof(buf));
    char out[8] = {0};
    assert_int_equal(drain(&q, out, 2), 5);
    assert_string_equal(out, "hello");
    outq_push_copy(&q, buf, 0); /* nothing queued */
    assert_true(outq_empty(&q));
}

static void test_truncate_keeps_a_partly_written_head(void **state)
{
    struct outq q = {0};
    outq_push(&q, NULL, "head!", 5);
    outq_push(&q, NULL, "two", 3);
    outq_push(&q, NULL, "three", 5);
    outq_consume(&q, 2);
    outq_truncate(&q, 0);
    assert_int_equal(q.len, 1);
    assert_int_equal(q.bytes, 3);
    char out[8] = {0};
    assert_int_equal(drain(&q, out, 100), 3);
    assert_string_equal(out, "ad!");

    outq_push(&q, NULL, "a", 1);
    outq_push(&q, NULL, "bc", 2);
    outq_push(&q, NULL, "def", 3);
    outq_truncate(&q, 2);
    assert_int_equal(q.len, 2);
    assert_int_equal(q.bytes, 3);
    outq_truncate(&q, 0);
    assert_true(outq_empty(&q));
    assert_null(q.items);
}

static void test_splice_moves_items_and_references(void **state)
{
    struct ref r = owner();
    freed = 0;
    struct outq a = {0}, b = {0};
    outq_push(&a, NULL, "A1", 2);
    outq_push(&b, &r, "xB1", 3);
    outq_push(&b, &r, "B2", 2);
    outq_consume(&b, 1); /* splice carries only what is unwritten */
    outq_splice(&a, &b);
    assert_true(outq_empty(&b));
    assert_null(b.items);
    assert_int_equal(a.len, 3);
    assert_int_equal(a.bytes, 6);
    assert_int_equal(atomic_load(&r.refs), 3);
    char out[8] = {0};
    assert_int_equal(drain(&a, out, 3), 6);
    assert_string_equal(out, "A1B1B2");
    assert_int_equal(atomic_load(&r.refs), 1);
    ref_put(&r);
}

static void test_wraparound_with_interleaving(void **state)
{
    /* Push and pop in steps so the ring wraps many times while it grows and shrinks. */
    struct outq q = {0};
    static const char digits[] = "0123456789";
    unsigned next_in = 0, next_out = 0;
    for (int round = 0; round < 2000; round++) {
        int pushes = (round * 7) % 13 + 1;
        for (int i = 0; i < pushes; i++, next_in++)
            outq_push(&q, NULL, &digits[next_in % 10], 1);
        int pops = (round * 5) % 11;
        for (int i = 0; i < pops && !outq_empty(&q); i++, next_out++) {
            struct iovec iov[1];
            assert_int_equal(outq_iov(&q, iov, 1), 1);
            assert_int_equal(((char *)iov[0].iov_base)[0], digits[next_out % 10]);
            outq_consume(&q, 1);
        }
        assert_int_equal(q.len, next_in - next_out);
        assert_int_equal(q.bytes, next_in - next_out);
    }
    outq_clear(&q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_past_65536_items_in_order),
        cmocka_unit_test(test_references_taken_and_released_once),
        cmocka_unit_test(test_copies_are_owned),
        cmocka_unit_test(test_truncate_keeps_a_partly_written_head),
        cmocka_unit_test(test_splice_moves_items_and_references),
        cmocka_unit_test(test_wraparound_with_interleaving),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
