/*
 * Unit tests for src/core/latency.c: every value falls in the bucket whose bounds
 * hold it, with buckets at most 1/32 of their values wide; quantiles of known
 * distributions within that resolution; merging, differences (the last second's
 * figures) and the Prometheus counts below a bound.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/latency.h"

static void buckets_cover_every_value_once(void **state)
{
    (void)state;
    unsigned prev = 0;
    for (unsigned i = 0; i + 1 < LAT_BUCKETS; i++) {
        uint64_t hi = lat_bucket_max(i);
        assert_int_equal(lat_bucket(hi), i);
        assert_int_equal(lat_bucket(hi + 1), i + 1);
        uint64_t lo = i ? lat_bucket_max(i - 1) + 1 : 0;
        assert_true(hi >= lo);
        /* the relative width: what a reported upper bound may be above a value */
        if (lo)
            assert_true((double)(hi - lo) / (double)lo <= 1.0 / LAT_SUB + 1e-9);
        assert_true(i == 0 || i > prev);
        prev = i;
    }
    assert_int_equal(lat_bucket_max(LAT_BUCKETS - 1), (1ull << LAT_TOP_BITS) - 1);
    assert_int_equal(lat_bucket(UINT64_MAX), LAT_BUCKETS - 1);
    assert_int_equal(lat_bucket(60ull * 1000 * 1000), lat_bucket(60ull * 1000 * 1000 - 1));
    assert_true(lat_bucket(60ull * 1000 * 1000) < LAT_BUCKETS - 1); /* 60 s has a real bucket */
}

static struct lat_hist *hist_new(void)
{
    struct lat_hist *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    return h;
}

static void quantiles_within_resolution(void **state)
{
    (void)state;
    struct lat_hist *h = hist_new();
    for (uint64_t v = 1; v <= 100000; v++)
        lat_record(h, v);
    struct lat_snap s = {0};
    lat_snap_add(&s, h);
    assert_int_equal(s.n, 100000);
    assert_int_equal(s.max_us, 100000);
    assert_int_equal(s.sum_us, 100000ull * 100001 / 2);
    struct lat_summary sum;
    lat_snap_summary(&s, &sum);
    struct {
        uint64_t got, want;
    } q[] = {{sum.p50, 50000}, {sum.p90, 90000}, {sum.p99, 99000}, {sum.p999, 99900}};
    for (size_t i = 0; i < sizeof(q) / sizeof(q[0]); i++) {
        assert_true(q[i].got >= q[i].want);
        assert_true((double)q[i].got <= (double)q[i].want * (1 + 1.0 / LAT_SUB));
    }
    assert_int_equal(sum.max, 100000);
    free(h);
}

static void small_values_are_exact_and_max_caps(void **state)
{
    (void)state;
    struct lat_hist *h = hist_new();
    for (int i = 0; i < 99; i++)
        lat_record(h, 7);
    lat_record(h, 1000);
    struct lat_snap s = {0};
    lat_snap_add(&s, h);
    assert_int_equal(lat_snap_quantile(&s, 0.5), 7);
    assert_int_equal(lat_snap_quantile(&s, 0.99), 7);
    assert_int_equal(lat_snap_quantile(&s, 0.999), 1000); /* the bucket's bound, capped at max */
    assert_int_equal(lat_snap_quantile(&s, 1.0), 1000);
    struct lat_snap empty = {0};
    assert_int_equal(lat_snap_quantile(&empty, 0.5), 0);
    free(h);
}

static void merge_and_diff(void **state)
{
    (void)state;
    struct lat_hist *a = hist_new(), *b = hist_new();
    for (int i = 0; i < 10; i++)
        lat_record(a, 100);
    struct lat_snap before = {0};
    lat_snap_add(&before, a);
    lat_snap_add(&before, b);
    for (int i = 0; i < 10; i++)
        lat_record(b, 5000);
    lat_record(a, 20);
    struct lat_snap now = {0}, d;
    lat_snap_add(&now, a);
    lat_snap_add(&now, b);
    assert_int_equal(now.n, 21);
    assert_int_equal(now.max_us, 5000);
    lat_snap_diff(&d, &now, &before);
    assert_int_equal(d.n, 11);
    assert_int_equal(d.sum_us, 50020);
    assert_int_equal(lat_snap_quantile(&d, 0.05), 20);
    uint64_t p50 = lat_snap_quantile(&d, 0.5);
    assert_true(p50 >= 5000 && p50 <= 5000 + 5000 / LAT_SUB);
    assert_true(d.max_us >= 5000 && d.max_us <= now.max_us);
    /* nothing new: an empty window */
    lat_snap_diff(&d, &now, &now);
    assert_int_equal(d.n, 0);
    assert_int_equal(d.max_us, 0);
    assert_int_equal(lat_snap_quantile(&d, 0.99), 0);
    free(a);
    free(b);
}

static void at_most_counts_below_a_bound(void **state)
{
    (void)state;
    struct lat_hist *h = hist_new();
    lat_record(h, 50);    /* <= 100 µs */
    lat_record(h, 90);    /* <= 100 µs */
    lat_record(h, 900);   /* <= 1 ms */
    lat_record(h, 30000); /* <= 50 ms */
    struct lat_snap s = {0};
    lat_snap_add(&s, h);
    assert_int_equal(lat_snap_at_most(&s, 100), 2);
    assert_int_equal(lat_snap_at_most(&s, 1000), 3);
    assert_int_equal(lat_snap_at_most(&s, 25000), 3);
    assert_int_equal(lat_snap_at_most(&s, 50000), 4);
    assert_int_equal(lat_snap_at_most(&s, 10), 0);
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buckets_cover_every_value_once),
        cmocka_unit_test(quantiles_within_resolution),
        cmocka_unit_test(small_values_are_exact_and_max_caps),
        cmocka_unit_test(merge_and_diff),
        cmocka_unit_test(at_most_counts_below_a_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
