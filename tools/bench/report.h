/*
 * herald-bench results: one struct run per measured run, printed as the
 * Instamrkt-style table, written as JSON / CSV rows, plotted with gnuplot,
 * and fed to the scalability meters.
 */
#ifndef HERALD_BENCH_REPORT_H
#define HERALD_BENCH_REPORT_H

#include <jansson.h>

#include "bench.h"

#define RUN_MAX_POINTS 4096

struct run_point {
    double t;           /* seconds since GO */
    uint64_t connected; /* open subscribers */
    double deliv_s;     /* deliveries per second over the last interval */
    double pub_s;       /* successful publishes per second */
    double rss_mb;      /* server RSS (sum over sampled pids) */
    double cpu_pct;     /* server CPU, % of one core */
    long fds;           /* server open fds */
};

struct run {
    char label[128];
    char mode[16]; /* pull-vs-push: "pull" or "push" */
    struct bench_opts o;
    struct bench_result r; /* merged; H_PUBLISH from the publishers */
    int procs;
    uint64_t pub_ok, pub_fail, pub_bytes;
    double connect_secs;   /* GO -> every subscriber connected or failed */
    double ramp_secs;      /* game: GO -> every user joined */
    double window_secs;    /* measured window (publishing + drain, or hold) */
    uint64_t deliv_window; /* deliveries inside the window */
    uint64_t expected, counted, lost, extra;
    uint64_t subs_accounted;
    bool sampled;
    bool server_gone; /* a sampled server process exited mid-run */
    long rss_base_kb, rss_conn_kb, rss_max_kb, fds_max, fds_conn;
    double cpu_window_s;     /* server CPU seconds inside the window */
    double cpu_idle_pct;     /* idle: server CPU % of one core while holding */
    bool redis_sampled;      /* --redis-pid given */
    uint64_t pub_window;     /* acknowledged publishes inside the window */
    double machine_window_s; /* busy CPU seconds of the whole machine inside the window */
    double bench_window_s;   /* the bench's own CPU seconds inside the window */
    long long
        listen_overflows; /* TcpExt ListenOverflows during the run (machine-wide), -1: unknown */
    double redis_cpu_window_s; /* Redis CPU seconds inside the window */
    int npoints;
    struct run_point pts[RUN_MAX_POINTS];
};

/* Derived figures (NaN-free: 0 when not measured). */
double run_handshakes_per_s(const struct run *r);
double run_deliveries_per_s(const struct run *r);
double run_cpu_per_delivery_us(const struct run *r);
double run_rss_per_conn_bytes(const struct run *r);
double run_publishes_per_s(const struct run *r);
double run_loss_pct(const struct run *r);
double run_server_cpu_pct(const struct run *r); /* server CPU in the window, % of one core */
double
run_handshakes_per_cpu_s(const struct run *r); /* connect: handshakes per server CPU-second */
double run_redis_cpu_per_publish_us(const struct run *r);

const char *bench_scenario_name(enum bench_scenario s);
const char *bench_target_name(enum bench_target t);
const char *bench_transport_name(enum bench_transport t);

void report_table(const struct run *r, FILE *f);
json_t *report_json(const struct run *r);
void report_csv_header(FILE *f);
void report_csv_row(const struct run *r, FILE *f);
/* Writes <dir>/<label>-{cdf,series}.dat, .gp and runs gnuplot for PNGs. */
void report_plot(const struct run *r, const char *dir);
/* Writes runs to the --json / --csv / --plot outputs of o. */
void report_outputs(const struct bench_opts *o, struct run **runs, int n);

/* Scalability meters over a series of report files (meters.c). */
int meters_main(const struct bench_opts *o);

#endif
