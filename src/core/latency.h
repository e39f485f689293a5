/*
 * latency: a log-bucketed histogram of durations in microseconds (HDR-style),
 * cheap enough to record every delivery of every message.
 *
 * Values below 32 µs have a bucket each; above, every power of two is split in
 * 32 buckets, so a bucket's width is at most 1/32 of its lower bound (a reported
 * value is at most 3.2 % above the true one). The last bucket ends at 2^26 µs
 * (67 s): longer values count there.
 *
 * A struct lat_hist is written by one thread only (a worker, lat_record) and read
 * by any: its counters are atomics that the owner updates with a relaxed load
 * and store (no read-modify-write, so recording costs what plain stores cost),
 * and readers merge them into a plain struct lat_snap with relaxed loads. A
 * reader may see one recording half done (its count without its sum): the
 * figures are statistics, not accounts.
 */
#ifndef HERALD_LATENCY_H
#define HERALD_LATENCY_H

#include <stdatomic.h>
#include <stdint.h>

#define LAT_SUB_BITS 5
#define LAT_SUB      (1u << LAT_SUB_BITS)
#define LAT_TOP_BITS 26 /* values up to 2^26 - 1 µs have a bucket of their own width */
#define LAT_BUCKETS  ((LAT_TOP_BITS - LAT_SUB_BITS + 1) * LAT_SUB)

struct lat_hist {
    atomic_uint_fast64_t count[LAT_BUCKETS];
    atomic_uint_fast64_t n, sum_us, max_us;
};

/* A merged copy: any number of histograms added up, or the difference of two times. */
struct lat_snap {
    uint64_t count[LAT_BUCKETS];
    uint64_t n, sum_us, max_us;
};

/* What a dashboard shows, in µs: the count and the percentiles (0 when n is 0). */
struct lat_summary {
    uint64_t n, p50, p90, p99, p999, max;
};

/* The bucket of v µs. */
static inline unsigned lat_bucket(uint64_t v)
{
    if (v >= (1ull << LAT_TOP_BITS))
        return LAT_BUCKETS - 1;
    if (v < LAT_SUB)
        return (unsigned)v;
    unsigned shift = (unsigned)(63 - __builtin_clzll(v)) - LAT_SUB_BITS;
    return (shift + 1) * LAT_SUB + (unsigned)(v >> shift) - LAT_SUB;
}

/* The largest value (µs) that falls in bucket i. */
uint64_t lat_bucket_max(unsigned i);

/* Counts one value of us µs. Only the histogram's owner thread may call it. */
static inline void lat_record(struct lat_hist *h, uint64_t us)
{
    atomic_uint_fast64_t *c = &h->count[lat_bucket(us)];
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&h->n, atomic_load_explicit(&h->n, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&h->sum_us, atomic_load_explicit(&h->sum_us, memory_order_relaxed) + us,
                          memory_order_relaxed);
    if (us > atomic_load_explicit(&h->max_us, memory_order_relaxed))
        atomic_store_explicit(&h->max_us, us, memory_order_relaxed);
}

/* Adds h's counts to s (any thread). */
void lat_snap_add(struct lat_snap *s, const struct lat_hist *h);
/* out = now - before (before an earlier snapshot of the same histograms): what was
 * recorded in between. Its max is the upper bound of the highest bucket that grew,
 * at most now's max. out may be now. */
void lat_snap_diff(struct lat_snap *out, const struct lat_snap *now, const struct lat_snap *before);
/* The value (µs) at quantile q (0 < q <= 1): the upper bound of the bucket that holds
 * the ceil(q * n)-th smallest value, at most the max. 0 when s is empty. */
uint64_t lat_snap_quantile(const struct lat_snap *s, double q);
/* How many values are at most us µs, to the histogram's resolution: the counts of the
 * buckets whose values are all <= us (a bucket that holds us and larger values is left
 * out: the count is low by at most that bucket's). */
uint64_t lat_snap_at_most(const struct lat_snap *s, uint64_t us);
void lat_snap_summary(const struct lat_snap *s, struct lat_summary *out);

#endif
