/*
 * Log-linear latency histogram (HDR-like): exact below 128 µs, then 64
 * linear sub-buckets per power of two (< 1.6 % relative error) up to 2^40 µs.
 * Fixed size, no allocation, so histograms merge by adding counts and travel
 * between processes as raw bytes. Min, max, sum and sum of squares are kept
 * exactly for min/mean/stddev/max.
 */
#ifndef HERALD_BENCH_HIST_H
#define HERALD_BENCH_HIST_H

#include <stdint.h>
#include <stdio.h>

#define HIST_SUB     64
#define HIST_BUCKETS (2 * HIST_SUB + 34 * HIST_SUB)

struct hist {
    uint64_t count;
    int64_t min, max;
    double sum, sumsq;
    uint64_t b[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_add(struct hist *h, int64_t v_us); /* negative values count as 0 */
void hist_merge(struct hist *dst, const struct hist *src);
double hist_mean(const struct hist *h);
double hist_stddev(const struct hist *h);
int64_t hist_percentile(const struct hist *h, double pct); /* pct in [0,100]; 0 if empty */
/* Writes "value_ms cumulative_fraction" lines for a CDF plot. */
void hist_write_cdf(const struct hist *h, FILE *f);

#endif
