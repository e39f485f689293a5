/*
 * Log-linear histogram: see hist.h for the bucket layout.
 */
#include "hist.h"

#include <math.h>
#include <string.h>

void hist_init(struct hist *h)
{
    memset(h, 0, sizeof *h);
}

static int bucket_of(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= 7 */
    if (e > 40)
        return HIST_BUCKETS - 1;
    uint64_t top = v >> (e - 6); /* 64..127 */
    return 2 * HIST_SUB + (e - 7) * HIST_SUB + (int)(top - HIST_SUB);
}

/* Highest value that falls in bucket i. */
static int64_t bucket_high(int i)
{
    if (i < 2 * HIST_SUB)
        return i;
    int e = (i - 2 * HIST_SUB) / HIST_SUB + 7;
    uint64_t top = (uint64_t)((i - 2 * HIST_SUB) % HIST_SUB + HIST_SUB);
    return (int64_t)(((top + 1) << (e - 6)) - 1);
}

void hist_add(struct hist *h, int64_t v)
{
    if (v < 0)
        v = 0;
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (h->count == 0 || v > h->max)
        h->max = v;
    h->count++;
    h->sum += (double)v;
    h->sumsq += (double)v * (double)v;
    h->b[bucket_of((uint64_t)v)]++;
}

void hist_merge(struct hist *d, const struct hist *s)
{
    if (s->count == 0)
        return;
    if (d->count == 0 || s->min < d->min)
        d->min = s->min;
    if (d->count == 0 || s->max > d->max)
        d->max = s->max;
    d->count += s->count;
    d->sum += s->sum;
    d->sumsq += s->sumsq;
    for (int i = 0; i < HIST_BUCKETS; i++)
        d->b[i] += s->b[i];
}

double hist_mean(const struct hist *h)
{
    return h->count ? h->sum / (double)h->count : 0;
}

double hist_stddev(const struct hist *h)
{
    if (h->count < 2)
        return 0;
    double m = hist_mean(h), var = h->sumsq / (double)h->count - m * m;
    return var > 0 ? sqrt(var) : 0;
}

int64_t hist_percentile(const struct hist *h, double pct)
{
    if (h->count == 0)
        return 0;
    if (pct >= 100)
        return h->max;
    uint64_t want = (uint64_t)ceil(pct / 100.0 * (double)h->count), seen = 0;
    if (want == 0)
        want = 1;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            int64_t v = bucket_high(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

void hist_write_cdf(const struct hist *h, FILE *f)
{
    uint64_t seen = 0;
    if (h->count == 0)
        return;
    fprintf(f, "%.3f 0\n", (double)h->min / 1000.0);
    for (int i = 0; i < HIST_BUCKETS; i++) {
        if (!h->b[i])
            continue;
        seen += h->b[i];
        int64_t v = bucket_high(i);
        if (v > h->max)
            v = h->max;
        fprintf(f, "%.3f %.6f\n", (double)v / 1000.0, (double)seen / (double)h->count);
    }
}
