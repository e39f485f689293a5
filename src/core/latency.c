/*
 * latency: the log-bucketed histogram's readers. See latency.h; recording is
 * the inline lat_record.
 */
#include "core/latency.h"

#include <math.h>
#include <string.h>

uint64_t lat_bucket_max(unsigned i)
{
    if (i < 2 * LAT_SUB)
        return i; /* a bucket per value */
    unsigned shift = i / LAT_SUB - 1;
    uint64_t lower = (uint64_t)(i % LAT_SUB + LAT_SUB) << shift;
    return lower + (1ull << shift) - 1;
}

void lat_snap_add(struct lat_snap *s, const struct lat_hist *h)
{
    for (unsigned i = 0; i < LAT_BUCKETS; i++)
        s->count[i] += atomic_load_explicit(&h->count[i], memory_order_relaxed);
    s->n += atomic_load_explicit(&h->n, memory_order_relaxed);
    s->sum_us += atomic_load_explicit(&h->sum_us, memory_order_relaxed);
    uint64_t max = atomic_load_explicit(&h->max_us, memory_order_relaxed);
    if (max > s->max_us)
        s->max_us = max;
}

void lat_snap_diff(struct lat_snap *out, const struct lat_snap *now, const struct lat_snap *before)
{
    uint64_t max = 0, cap = now->max_us;
    for (unsigned i = 0; i < LAT_BUCKETS; i++) {
        /* A reader may have seen a bucket before its owner's store landed; never negative. */
        uint64_t d = now->count[i] > before->count[i] ? now->count[i] - before->count[i] : 0;
        out->count[i] = d;
        if (d)
            max = lat_bucket_max(i);
    }
    out->n = now->n > before->n ? now->n - before->n : 0;
    out->sum_us = now->sum_us > before->sum_us ? now->sum_us - before->sum_us : 0;
    out->max_us = max < cap ? max : cap;
}

uint64_t lat_snap_quantile(const struct lat_snap *s, double q)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < LAT_BUCKETS; i++)
        total += s->count[i];
    if (!total)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)total);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < LAT_BUCKETS; i++) {
        seen += s->count[i];
        if (seen >= rank) {
            uint64_t v = lat_bucket_max(i);
            return s->max_us && v > s->max_us ? s->max_us : v;
        }
    }
    return s->max_us;
}

uint64_t lat_snap_at_most(const struct lat_snap *s, uint64_t us)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < LAT_BUCKETS && lat_bucket_max(i) <= us; i++)
        n += s->count[i];
    return n;
}

void lat_snap_summary(const struct lat_snap *s, struct lat_summary *out)
{
    *out = (struct lat_summary){
        .n = s->n,
        .p50 = lat_snap_quantile(s, 0.5),
        .p90 = lat_snap_quantile(s, 0.9),
        .p99 = lat_snap_quantile(s, 0.99),
        .p999 = lat_snap_quantile(s, 0.999),
        .max = s->max_us,
    };
}
