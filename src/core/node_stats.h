/*
 * node_stats: this node's figures, sampled once a second by worker 0 and shared by
 * every reader: /stats, each /stats/stream tick, /metrics, and the cluster backend,
 * which publishes them for the other nodes (hub_backend_ops.node_stats_put) and
 * gives back theirs (node_stats_get).
 *
 * The sample holds what needs two points in time: messages in and out per second
 * and the delivery latency of the last second (the difference of the workers'
 * cumulative histograms between two samples). Figures since start are read fresh.
 * Readers take the module's mutex, never a worker's: workers only ever write their
 * own counters (latency.h).
 */
#ifndef HERALD_NODE_STATS_H
#define HERALD_NODE_STATS_H

#include <pthread.h>
#include <stdint.h>

#include "core/latency.h"
#include "core/server.h"

struct node_sample {
    uint64_t time_ms; /* wall clock when it was taken; 0: no sample yet */
    uint64_t uptime_s;
    uint64_t conns[CONN_KINDS], conns_total;
    double in_per_s;  /* publishes accepted by this node per second */
    double out_per_s; /* messages delivered to this node's subscribers per second */
    uint64_t slow_closed;
    struct lat_summary latency; /* deliveries completed in the last second */
};

/* Made by server_start (an empty sample), freed by server_free. */
struct node_stats *node_stats_new(void);
void node_stats_free(struct node_stats *ns);

/* Takes this second's sample (worker 0, once a second) and hands the node's JSON to
 * the backend. */
void node_stats_sample(struct server *srv);
/* The latest sample (any thread). */
void node_stats_last(struct server *srv, struct node_sample *out);
/* Every worker's delivery latency since start, merged (any thread). */
void node_stats_cumulative(struct server *srv, struct lat_snap *out);
/* The connections of every worker by kind. */
void node_stats_connections(struct server *srv, uint64_t conns[CONN_KINDS], uint64_t *total);

/* Appends one node's figures as a JSON object: {"node":…,"time":…,"uptime":…,
 * "connections":{…},"messages_in_per_second":…,"messages_out_per_second":…,
 * "slow_consumers_closed":…,"delivery_latency_ms":{"count",p50,p90,p99,p999,max}}. */
void node_stats_json(const struct node_sample *s, const char *node, struct sbuf *b);
/* Appends the member ,"delivery_latency_ms":{"last_second":{…},"since_start":{…}} of
 * /stats. */
void node_stats_latency_json(struct server *srv, struct sbuf *b);
/* Appends the member ,"nodes":[…]: every live node's last figures, as the backend read
 * them (cluster mode: at most a second old, within their TTL), or this node's alone. */
void node_stats_nodes_json(struct server *srv, struct sbuf *b);
/* Appends the Prometheus histogram herald_delivery_latency_seconds. */
void node_stats_metrics(struct server *srv, struct sbuf *b);

#endif
