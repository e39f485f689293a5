/*
 * node_stats: the once-a-second sample of this node's figures and their JSON and
 * Prometheus forms. See node_stats.h.
 */
#include "core/node_stats.h"

#include <inttypes.h>
#include <stdlib.h>

struct node_stats {
    pthread_mutex_t lock;
    struct node_sample last;
    struct lat_snap prev; /* the workers' cumulative histograms at the last sample */
    uint64_t prev_us, prev_published, prev_delivered;
};

struct node_stats *node_stats_new(void)
{
    struct node_stats *ns = xcalloc(1, sizeof(*ns));
    pthread_mutex_init(&ns->lock, NULL);
    ns->prev_us = mono_us(); /* the first sample's rates count from the start */
    return ns;
}

void node_stats_free(struct node_stats *ns)
{
    if (!ns)
        return;
    pthread_mutex_destroy(&ns->lock);
    free(ns);
}

void node_stats_connections(struct server *srv, uint64_t conns[CONN_KINDS], uint64_t *total)
{
    *total = 0;
    for (int k = 0; k < CONN_KINDS; k++)
        conns[k] = 0;
    for (int i = 0; i < srv->nworkers; i++)
        for (int k = 0; k < CONN_KINDS; k++) {
            uint64_t n = atomic_load(&srv->workers[i].ctr.conns[k]);
            conns[k] += n;
            *total += n;
        }
}

void node_stats_cumulative(struct server *srv, struct lat_snap *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < srv->nworkers; i++)
        lat_snap_add(out, &srv->workers[i].latency);
}

static double per_second(uint64_t now, uint64_t before, uint64_t us)
{
    return now > before && us ? (double)(now - before) * 1e6 / (double)us : 0;
}

void node_stats_sample(struct server *srv)
{
    struct node_stats *ns = srv->stats;
    struct hub_stats *hs = &srv->hub.stats;
    struct lat_snap *now = xmalloc(sizeof(*now));
    node_stats_cumulative(srv, now);
    struct node_sample s = {.time_ms = wall_ms(),
                            .uptime_s = (wall_ms() - srv->started_ms) / 1000,
                            .slow_closed = atomic_load(&hs->slow_closed)};
    node_stats_connections(srv, s.conns, &s.conns_total);
    uint64_t us = mono_us(), published = atomic_load(&hs->published),
             delivered = atomic_load(&hs->delivered);

    pthread_mutex_lock(&ns->lock);
    uint64_t span = us - ns->prev_us;
    s.in_per_s = per_second(published, ns->prev_published, span);
    s.out_per_s = per_second(delivered, ns->prev_delivered, span);
    struct lat_snap *window = xmalloc(sizeof(*window));
    lat_snap_diff(window, now, &ns->prev);
    lat_snap_summary(window, &s.latency);
    ns->prev = *now;
    ns->prev_us = us;
    ns->prev_published = published;
    ns->prev_delivered = delivered;
    ns->last = s;
    pthread_mutex_unlock(&ns->lock);
    free(window);
    free(now);

    struct hub *hub = &srv->hub;
    if (hub->be_ops && hub->be_ops->node_stats_put) {
        struct sbuf b = {0};
        node_stats_json(&s, srv->cfg.node_name, &b);
        hub->be_ops->node_stats_put(hub->be, b.data, b.len);
        sbuf_free(&b);
    }
}

void node_stats_last(struct server *srv, struct node_sample *out)
{
    pthread_mutex_lock(&srv->stats->lock);
    *out = srv->stats->last;
    pthread_mutex_unlock(&srv->stats->lock);
}

static void summary_json(struct sbuf *b, const struct lat_summary *l)
{
    sbuf_printf(b,
                "{\"count\":%" PRIu64 ",\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
                "\"max\":%.3f}",
                l->n, l->p50 / 1e3, l->p90 / 1e3, l->p99 / 1e3, l->p999 / 1e3, l->max / 1e3);
}

void node_stats_json(const struct node_sample *s, const char *node, struct sbuf *b)
{
    sbuf_adds(b, "{\"node\":");
    sbuf_add_json_str(b, node, strlen(node));
    sbuf_printf(b,
                ",\"time\":%" PRIu64 ",\"uptime\":%" PRIu64 ",\"connections\":{\"total\":%" PRIu64
                ",\"websocket\":%" PRIu64 ",\"sse\":%" PRIu64 ",\"longpoll\":%" PRIu64
                ",\"stream\":%" PRIu64 ",\"http\":%" PRIu64
                "},\"messages_in_per_second\":%.1f,\"messages_out_per_second\":%.1f,"
                "\"slow_consumers_closed\":%" PRIu64 ",\"delivery_latency_ms\":",
                s->time_ms, s->uptime_s, s->conns_total, s->conns[CONN_WS], s->conns[CONN_SSE],
                s->conns[CONN_POLL], s->conns[CONN_STREAM], s->conns[CONN_HTTP], s->in_per_s,
                s->out_per_s, s->slow_closed);
    summary_json(b, &s->latency);
    sbuf_adds(b, "}");
}

void node_stats_latency_json(struct server *srv, struct sbuf *b)
{
    struct node_sample s;
    node_stats_last(srv, &s);
    struct lat_snap *all = xmalloc(sizeof(*all));
    node_stats_cumulative(srv, all);
    struct lat_summary total;
    lat_snap_summary(all, &total);
    free(all);
    sbuf_adds(b, ",\"delivery_latency_ms\":{\"last_second\":");
    summary_json(b, &s.latency);
    sbuf_adds(b, ",\"since_start\":");
    summary_json(b, &total);
    sbuf_adds(b, "}");
}

void node_stats_nodes_json(struct server *srv, struct sbuf *b)
{
    struct hub *hub = &srv->hub;
    sbuf_adds(b, ",\"nodes\":[");
    if (!hub->be_ops || !hub->be_ops->node_stats_get || !hub->be_ops->node_stats_get(hub->be, b)) {
        struct node_sample s;
        node_stats_last(srv, &s);
        node_stats_json(&s, srv->cfg.node_name, b);
    }
    sbuf_adds(b, "]");
}

void node_stats_metrics(struct server *srv, struct sbuf *b)
{
    /* Prometheus's default buckets, with finer ones below 5 ms where deliveries are. */
    static const uint64_t le_us[] = {100,     250,     500,     1000,    2500,   5000,
                                     10000,   25000,   50000,   100000,  250000, 500000,
                                     1000000, 2500000, 5000000, 10000000};
    struct lat_snap *all = xmalloc(sizeof(*all));
    node_stats_cumulative(srv, all);
    sbuf_adds(b, "# HELP herald_delivery_latency_seconds Time from a message's arrival on this "
                 "node to the write that handed its frame to a subscriber's socket.\n"
                 "# TYPE herald_delivery_latency_seconds histogram\n");
    for (size_t i = 0; i < ARRAY_LEN(le_us); i++)
        sbuf_printf(b, "herald_delivery_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                    le_us[i] / 1e6, lat_snap_at_most(all, le_us[i]));
    /* The count from the buckets themselves: a recording half seen must not make +Inf
     * smaller than a bucket below it. */
    uint64_t n = lat_snap_at_most(all, UINT64_MAX);
    sbuf_printf(b,
                "herald_delivery_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64
                "\nherald_delivery_latency_seconds_sum %.6f\n"
                "herald_delivery_latency_seconds_count %" PRIu64 "\n",
                n, all->sum_us / 1e6, n);
    free(all);
}
