/*
 * herald-bench reports: the human table (the shape of the Instamrkt client
 * report: durations then percentiles, in ms), JSON, CSV and gnuplot plots.
 */
#include "report.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const double pcts[] = {50, 66, 75, 80, 90, 95, 98, 99, 100};
#define NPCTS (sizeof pcts / sizeof pcts[0])

const char *bench_scenario_name(enum bench_scenario s)
{
    static const char *n[] = {"idle", "fanout",       "connect", "publish",
                              "game", "pull-vs-push", "meters"};
    return n[s];
}

const char *bench_target_name(enum bench_target t)
{
    static const char *n[] = {"herald", "nchan", "floor"};
    return n[t];
}

const char *bench_transport_name(enum bench_transport t)
{
    static const char *n[] = {"ws", "sse", "poll", "stream", "pull", "raw"};
    return n[t];
}

double run_handshakes_per_s(const struct run *r)
{
    return r->connect_secs > 0 ? (double)r->r.c.handshakes_done / r->connect_secs : 0;
}

double run_deliveries_per_s(const struct run *r)
{
    return r->window_secs > 0 ? (double)r->deliv_window / r->window_secs : 0;
}

double run_cpu_per_delivery_us(const struct run *r)
{
    return r->sampled && r->deliv_window ? r->cpu_window_s * 1e6 / (double)r->deliv_window : 0;
}

double run_rss_per_conn_bytes(const struct run *r)
{
    uint64_t n = r->r.c.connected - r->r.c.closed;
    return r->sampled && n ? (double)(r->rss_conn_kb - r->rss_base_kb) * 1024.0 / (double)n : 0;
}

double run_publishes_per_s(const struct run *r)
{
    double w = r->o.scenario == SC_PUBLISH ? r->window_secs : 0;
    return w > 0 ? (double)r->pub_ok / w : 0;
}

double run_loss_pct(const struct run *r)
{
    return r->expected ? 100.0 * (double)r->lost / (double)r->expected : 0;
}

double run_server_cpu_pct(const struct run *r)
{
    return r->sampled && r->window_secs > 0 ? 100.0 * r->cpu_window_s / r->window_secs : 0;
}

double run_handshakes_per_cpu_s(const struct run *r)
{
    return r->o.scenario == SC_CONNECT && r->sampled && r->cpu_window_s > 0
               ? (double)r->r.c.handshakes_done / r->cpu_window_s
               : 0;
}

double run_redis_cpu_per_publish_us(const struct run *r)
{
    return r->redis_sampled && r->pub_window ? r->redis_cpu_window_s * 1e6 / (double)r->pub_window
                                             : 0;
}

static bool request_na(const struct run *r)
{
    return r->o.scenario == SC_GAME && r->o.target != TARGET_HERALD;
}

static void row_durations(FILE *f, const char *name, const struct hist *h, bool na)
{
    if (na) {
        fprintf(f, "  %-22s %9s %9s %9s %9s %9s %11s\n", name, "n/a", "n/a", "n/a", "n/a", "n/a",
                "n/a");
        return;
    }
    fprintf(f, "  %-22s %9.2f %9.2f %9.2f %9.2f %9.2f %11llu\n", name, (double)h->min / 1e3,
            hist_mean(h) / 1e3, hist_stddev(h) / 1e3, (double)hist_percentile(h, 50) / 1e3,
            (double)h->max / 1e3, (unsigned long long)h->count);
}

static void row_pcts(FILE *f, const char *name, const struct hist *h, bool na)
{
    fprintf(f, "  %-22s", name);
    for (size_t i = 0; i < NPCTS; i++) {
        if (na)
            fprintf(f, " %8s", "n/a");
        else
            fprintf(f, " %8.2f", (double)hist_percentile(h, pcts[i]) / 1e3);
    }
    fprintf(f, "\n");
}

static const int table_rows[] = {H_HANDSHAKE,  H_RECONNECT, H_REQUEST_RAMP, H_REQUEST,
                                 H_BCAST_RAMP, H_BCAST,     H_PUBLISH};
static const char *const table_names[] = {
    "Handshaking",         "Reconnect (resume)", "Latency (ramp-up)",  "Latency (req->resp)",
    "Broadcast (ramp-up)", "Broadcast Latency",  "Publish (req->resp)"};

static bool row_shown(const struct run *r, int i)
{
    int h = table_rows[i];
    if (h == H_REQUEST && request_na(r))
        return true;
    return r->r.h[h].count > 0;
}

void report_table(const struct run *r, FILE *f)
{
    const struct bench_counters *c = &r->r.c;
    fprintf(f, "\n== %s: %s, target %s, transport %s, %d conns, %d channel(s), %d worker(s)\n",
            r->label, bench_scenario_name(r->o.scenario), bench_target_name(r->o.target),
            bench_transport_name(r->o.transport), r->o.conns, r->o.channels, r->procs);
    fprintf(f,
            "Online %llu | Time taken %.1f s | Connected %llu | Disconnected %llu | Failed %llu | "
            "Collected from %d\n",
            (unsigned long long)(c->connected - c->closed),
            r->pts[r->npoints ? r->npoints - 1 : 0].t, (unsigned long long)c->connected,
            (unsigned long long)c->closed, (unsigned long long)c->failed, r->procs);
    fprintf(f, "Durations (ms)           %9s %9s %9s %9s %9s %11s\n", "min", "mean", "stddev",
            "median", "max", "sampleCount");
    for (size_t i = 0; i < sizeof table_rows / sizeof *table_rows; i++)
        if (row_shown(r, (int)i))
            row_durations(f, table_names[i], &r->r.h[table_rows[i]],
                          table_rows[i] == H_REQUEST && request_na(r));
    fprintf(f, "Percentile (ms)         ");
    for (size_t i = 0; i < NPCTS; i++)
        fprintf(f, " %7g%%", pcts[i]);
    fprintf(f, "\n");
    for (size_t i = 0; i < sizeof table_rows / sizeof *table_rows; i++)
        if (row_shown(r, (int)i))
            row_pcts(f, table_names[i], &r->r.h[table_rows[i]],
                     table_rows[i] == H_REQUEST && request_na(r));
    if (r->connect_secs > 0)
        fprintf(f, "Connect: %llu handshakes in %.2f s = %.0f/s\n",
                (unsigned long long)c->handshakes_done, r->connect_secs, run_handshakes_per_s(r));
    if (r->pub_ok + r->pub_fail)
        fprintf(f, "Publish: %llu ok, %llu failed, %.0f/s over %.2f s\n",
                (unsigned long long)r->pub_ok, (unsigned long long)r->pub_fail,
                r->o.scenario == SC_PUBLISH
                    ? run_publishes_per_s(r)
                    : (double)r->pub_ok / (r->window_secs > 0 ? r->window_secs : 1),
                r->window_secs);
    if (r->expected || c->delivered)
        fprintf(
            f,
            "Delivery: expected %llu, delivered %llu, lost %llu (%.3f%%), extra %llu, stale %llu; "
            "%.0f deliveries/s over %.2f s\n",
            (unsigned long long)r->expected, (unsigned long long)r->counted,
            (unsigned long long)r->lost, run_loss_pct(r), (unsigned long long)r->extra,
            (unsigned long long)c->stale, run_deliveries_per_s(r), r->window_secs);
    fprintf(f,
            "Client network: in %llu B, out %llu B, %llu HTTP requests, %llu WS pings answered\n",
            (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out,
            (unsigned long long)c->http_requests, (unsigned long long)c->pings);
    if (c->reconnects || c->reconnect_fails || c->ctl_reconnect)
        fprintf(f,
                "Reconnects: %llu resumed (cursor), %llu attempts failed, %llu reconnect events, "
                "%llu gap events\n",
                (unsigned long long)c->reconnects, (unsigned long long)c->reconnect_fails,
                (unsigned long long)c->ctl_reconnect, (unsigned long long)c->ctl_gap);
    if (r->server_gone)
        fprintf(f, "Server: WARNING: a sampled server process exited during the run; its figures "
                   "are void\n");
    if (r->sampled) {
        fprintf(f,
                "Server: RSS %.1f MB idle baseline, %.1f MB loaded (max %.1f MB) = %.0f B per "
                "connection; fds %ld\n",
                (double)r->rss_base_kb / 1024, (double)r->rss_conn_kb / 1024,
                (double)r->rss_max_kb / 1024, run_rss_per_conn_bytes(r),
                r->fds_conn ? r->fds_conn : r->fds_max);
        if (r->o.scenario == SC_IDLE)
            fprintf(f, "Server: idle CPU %.2f%% of a core over %.1f s\n", r->cpu_idle_pct,
                    r->window_secs);
        else if (r->deliv_window)
            fprintf(f,
                    "Server: CPU %.3f s for %llu deliveries = %.2f us per delivery (%.0f "
                    "deliveries per CPU-second)\n",
                    r->cpu_window_s, (unsigned long long)r->deliv_window,
                    run_cpu_per_delivery_us(r),
                    run_cpu_per_delivery_us(r) > 0 ? 1e6 / run_cpu_per_delivery_us(r) : 0);
        else if (r->o.scenario == SC_PUBLISH && r->pub_ok)
            fprintf(f, "Server: CPU %.3f s for %llu publishes = %.2f us per publish\n",
                    r->cpu_window_s, (unsigned long long)r->pub_ok,
                    r->cpu_window_s * 1e6 / (double)r->pub_ok);
        if (r->o.scenario == SC_CONNECT && r->cpu_window_s > 0)
            fprintf(f,
                    "Server: CPU %.3f s for %llu handshakes = %.1f us per handshake (%.0f "
                    "handshakes per CPU-second)\n",
                    r->cpu_window_s, (unsigned long long)c->handshakes_done,
                    r->cpu_window_s * 1e6 / (double)(c->handshakes_done ? c->handshakes_done : 1),
                    run_handshakes_per_cpu_s(r));
        if (r->o.scenario != SC_IDLE && r->window_secs > 0)
            fprintf(f, "Server: %.1f%% of a core over the %.2f s window\n", run_server_cpu_pct(r),
                    r->window_secs);
    } else {
        fprintf(f, "Server: not sampled (give --server-pid)\n");
    }
    if (r->machine_window_s > 0 && r->window_secs > 0) {
        double w = r->window_secs, other = r->machine_window_s - r->bench_window_s -
                                           (r->sampled ? r->cpu_window_s : 0) -
                                           r->redis_cpu_window_s;
        fprintf(f,
                "Machine: %.0f%% of one core busy in the window (server %.0f%%, bench %.0f%%%s, "
                "other processes %.0f%%)\n",
                100 * r->machine_window_s / w, r->sampled ? 100 * r->cpu_window_s / w : 0,
                100 * r->bench_window_s / w, r->redis_sampled ? ", Redis counted apart" : "",
                100 * (other > 0 ? other : 0) / w);
    }
    if (r->listen_overflows > 0)
        fprintf(f,
                "Kernel: %lld listen-queue overflows during the run (handshakes that found the "
                "accept queue full;"
                " each waits for a retransmission, 200 ms or more)\n",
                r->listen_overflows);
    if (r->redis_sampled)
        fprintf(f,
                "Redis: CPU %.3f s over the %.2f s window (%.1f%% of a core) for %llu publishes = "
                "%.1f us per publish\n",
                r->redis_cpu_window_s, r->window_secs,
                r->window_secs > 0 ? 100 * r->redis_cpu_window_s / r->window_secs : 0,
                (unsigned long long)r->pub_window, run_redis_cpu_per_publish_us(r));
}

static json_t *hist_json(const struct hist *h)
{
    json_t *p = json_object();
    for (size_t i = 0; i < NPCTS; i++) {
        char k[16];
        snprintf(k, sizeof k, "%g", pcts[i]);
        json_object_set_new(p, k, json_real((double)hist_percentile(h, pcts[i]) / 1e3));
    }
    return json_pack("{s:f,s:f,s:f,s:f,s:f,s:I,s:o}", "min_ms", (double)h->min / 1e3, "mean_ms",
                     hist_mean(h) / 1e3, "stddev_ms", hist_stddev(h) / 1e3, "median_ms",
                     (double)hist_percentile(h, 50) / 1e3, "max_ms", (double)h->max / 1e3, "count",
                     (json_int_t)h->count, "percentiles_ms", p);
}

json_t *report_json(const struct run *r)
{
    const struct bench_counters *c = &r->r.c;
    json_t *j = json_object();
    json_object_set_new(j, "label", json_string(r->label));
    json_object_set_new(j, "scenario", json_string(bench_scenario_name(r->o.scenario)));
    json_object_set_new(j, "target", json_string(bench_target_name(r->o.target)));
    json_object_set_new(j, "transport", json_string(bench_transport_name(r->o.transport)));
    if (r->mode[0])
        json_object_set_new(j, "mode", json_string(r->mode));
    json_object_set_new(j, "params",
                        json_pack("{s:i,s:i,s:i,s:f,s:i,s:i,s:i,s:f,s:f,s:f,s:i}", "conns",
                                  r->o.conns, "channels", r->o.channels, "messages", r->o.messages,
                                  "rate", r->o.rate, "burst", r->o.burst, "payload", r->o.payload,
                                  "publishers", r->o.publishers, "connect_rate", r->o.connect_rate,
                                  "duration", r->o.duration, "time_scale", r->o.time_scale, "procs",
                                  r->procs));
    json_object_set_new(json_object_get(j, "params"), "servers", json_integer(r->o.nservers));
    json_object_set_new(json_object_get(j, "params"), "game_updates",
                        json_integer(r->o.game_updates));
    json_object_set_new(json_object_get(j, "params"), "batch_ms", json_integer(r->o.batch_ms));
    json_t *cnt = json_object();
    json_object_set_new(cnt, "attempted", json_integer((json_int_t)c->attempted));
    json_object_set_new(cnt, "connected", json_integer((json_int_t)c->connected));
    json_object_set_new(cnt, "failed", json_integer((json_int_t)c->failed));
    json_object_set_new(cnt, "disconnected", json_integer((json_int_t)c->closed));
    json_object_set_new(cnt, "requests", json_integer((json_int_t)c->requests));
    json_object_set_new(cnt, "responses", json_integer((json_int_t)c->responses));
    json_object_set_new(cnt, "http_requests", json_integer((json_int_t)c->http_requests));
    json_object_set_new(cnt, "bytes_in", json_integer((json_int_t)c->bytes_in));
    json_object_set_new(cnt, "bytes_out", json_integer((json_int_t)c->bytes_out));
    json_object_set_new(cnt, "stale", json_integer((json_int_t)c->stale));
    json_object_set_new(cnt, "reconnects", json_integer((json_int_t)c->reconnects));
    json_object_set_new(cnt, "reconnect_fails", json_integer((json_int_t)c->reconnect_fails));
    json_object_set_new(cnt, "reconnect_events", json_integer((json_int_t)c->ctl_reconnect));
    json_object_set_new(cnt, "gap_events", json_integer((json_int_t)c->ctl_gap));
    json_object_set_new(j, "counters", cnt);
    json_t *lat = json_object();
    for (int h = 0; h < H_COUNT; h++)
        if (r->r.h[h].count)
            json_object_set_new(lat, bench_hist_names[h], hist_json(&r->r.h[h]));
    if (request_na(r))
        json_object_set_new(lat, "request", json_string("n/a"));
    json_object_set_new(j, "latency", lat);
    json_object_set_new(j, "delivery",
                        json_pack("{s:I,s:I,s:I,s:I,s:f,s:f,s:I,s:f}", "expected",
                                  (json_int_t)r->expected, "delivered", (json_int_t)r->counted,
                                  "lost", (json_int_t)r->lost, "extra", (json_int_t)r->extra,
                                  "loss_pct", run_loss_pct(r), "deliveries_per_s",
                                  run_deliveries_per_s(r), "window_deliveries",
                                  (json_int_t)r->deliv_window, "window_s", r->window_secs));
    json_object_set_new(j, "connect",
                        json_pack("{s:f,s:f,s:f,s:f}", "connect_s", r->connect_secs,
                                  "handshakes_per_s", run_handshakes_per_s(r), "ramp_s",
                                  r->ramp_secs, "handshakes_per_cpu_s",
                                  run_handshakes_per_cpu_s(r)));
    json_object_set_new(j, "publish",
                        json_pack("{s:I,s:I,s:f,s:I}", "ok", (json_int_t)r->pub_ok, "failed",
                                  (json_int_t)r->pub_fail, "publishes_per_s",
                                  run_publishes_per_s(r), "body_bytes", (json_int_t)r->pub_bytes));
    if (r->sampled) {
        json_t *s = json_pack(
            "{s:I,s:I,s:I,s:f,s:I,s:f,s:f,s:f}", "rss_base_kb", (json_int_t)r->rss_base_kb,
            "rss_loaded_kb", (json_int_t)r->rss_conn_kb, "rss_max_kb", (json_int_t)r->rss_max_kb,
            "rss_per_conn_bytes", run_rss_per_conn_bytes(r), "fds",
            (json_int_t)(r->fds_conn ? r->fds_conn : r->fds_max), "cpu_window_s", r->cpu_window_s,
            "cpu_per_delivery_us", run_cpu_per_delivery_us(r), "idle_cpu_pct", r->cpu_idle_pct);
        json_object_set_new(s, "exited_during_run", json_boolean(r->server_gone));
        json_object_set_new(s, "window_s", json_real(r->window_secs));
        json_object_set_new(s, "cpu_pct", json_real(run_server_cpu_pct(r)));
        json_object_set_new(
            s, "deliveries_per_cpu_s",
            json_real(run_cpu_per_delivery_us(r) > 0 ? 1e6 / run_cpu_per_delivery_us(r) : 0));
        json_object_set_new(j, "server", s);
    }
    json_object_set_new(j, "kernel",
                        json_pack("{s:I}", "listen_overflows", (json_int_t)r->listen_overflows));
    if (r->machine_window_s > 0 && r->window_secs > 0) {
        double w = r->window_secs, other = r->machine_window_s - r->bench_window_s -
                                           (r->sampled ? r->cpu_window_s : 0) -
                                           r->redis_cpu_window_s;
        json_object_set_new(
            j, "machine",
            json_pack("{s:f,s:f,s:f,s:i}", "busy_pct", 100 * r->machine_window_s / w, "bench_pct",
                      100 * r->bench_window_s / w, "other_pct", 100 * (other > 0 ? other : 0) / w,
                      "cores", (int)sysconf(_SC_NPROCESSORS_ONLN)));
    }
    if (r->redis_sampled)
        json_object_set_new(
            j, "redis",
            json_pack("{s:f,s:f,s:I,s:f}", "cpu_window_s", r->redis_cpu_window_s, "cpu_pct",
                      r->window_secs > 0 ? 100 * r->redis_cpu_window_s / r->window_secs : 0,
                      "publishes", (json_int_t)r->pub_window, "cpu_per_publish_us",
                      run_redis_cpu_per_publish_us(r)));
    json_t *series = json_array();
    for (int i = 0; i < r->npoints; i++) {
        const struct run_point *p = &r->pts[i];
        json_array_append_new(series, json_pack("[f,I,f,f,f,f,I]", p->t, (json_int_t)p->connected,
                                                p->deliv_s, p->pub_s, p->rss_mb, p->cpu_pct,
                                                (json_int_t)p->fds));
    }
    json_object_set_new(j, "series_columns",
                        json_pack("[s,s,s,s,s,s,s]", "t_s", "connected", "deliveries_per_s",
                                  "publishes_per_s", "server_rss_mb", "server_cpu_pct",
                                  "server_fds"));
    json_object_set_new(j, "series", series);
    return j;
}

void report_csv_header(FILE *f)
{
    fprintf(f, "label,scenario,target,transport,mode,conns,channels,messages,rate,burst,payload,"
               "publishers,"
               "connected,failed,disconnected,handshakes_per_s,");
    for (int h = 0; h < H_COUNT; h++) {
        fprintf(f, "%s_count,%s_mean_ms,%s_stddev_ms", bench_hist_names[h], bench_hist_names[h],
                bench_hist_names[h]);
        for (size_t i = 0; i < NPCTS; i++)
            fprintf(f, ",%s_p%g_ms", bench_hist_names[h], pcts[i]);
        fprintf(f, ",");
    }
    fprintf(
        f,
        "expected,delivered,lost,loss_pct,deliveries_per_s,publishes_ok,publishes_failed,publishes_"
        "per_s,"
        "bytes_in,bytes_out,http_requests,rss_base_kb,rss_loaded_kb,rss_max_kb,rss_per_conn_bytes,"
        "cpu_window_s,cpu_per_delivery_us,idle_cpu_pct\n");
}

void report_csv_row(const struct run *r, FILE *f)
{
    const struct bench_counters *c = &r->r.c;
    fprintf(f, "%s,%s,%s,%s,%s,%d,%d,%d,%g,%d,%d,%d,%llu,%llu,%llu,%.1f,", r->label,
            bench_scenario_name(r->o.scenario), bench_target_name(r->o.target),
            bench_transport_name(r->o.transport), r->mode, r->o.conns, r->o.channels, r->o.messages,
            r->o.rate, r->o.burst, r->o.payload, r->o.publishers, (unsigned long long)c->connected,
            (unsigned long long)c->failed, (unsigned long long)c->closed, run_handshakes_per_s(r));
    for (int h = 0; h < H_COUNT; h++) {
        const struct hist *x = &r->r.h[h];
        fprintf(f, "%llu,%.3f,%.3f", (unsigned long long)x->count, hist_mean(x) / 1e3,
                hist_stddev(x) / 1e3);
        for (size_t i = 0; i < NPCTS; i++)
            fprintf(f, ",%.3f", (double)hist_percentile(x, pcts[i]) / 1e3);
        fprintf(f, ",");
    }
    fprintf(
        f,
        "%llu,%llu,%llu,%.4f,%.1f,%llu,%llu,%.1f,%llu,%llu,%llu,%ld,%ld,%ld,%.1f,%.3f,%.3f,%.3f\n",
        (unsigned long long)r->expected, (unsigned long long)r->counted,
        (unsigned long long)r->lost, run_loss_pct(r), run_deliveries_per_s(r),
        (unsigned long long)r->pub_ok, (unsigned long long)r->pub_fail, run_publishes_per_s(r),
        (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out,
        (unsigned long long)c->http_requests, r->rss_base_kb, r->rss_conn_kb, r->rss_max_kb,
        run_rss_per_conn_bytes(r), r->cpu_window_s, run_cpu_per_delivery_us(r), r->cpu_idle_pct);
}

void report_plot(const struct run *r, const char *dir)
{
    char path[1024], gp[1024];
    mkdir(dir, 0755);
    int ncdf = 0;
    const int cdf_hists[] = {H_HANDSHAKE, H_REQUEST, H_BCAST, H_PUBLISH};
    for (size_t i = 0; i < 4; i++) {
        const struct hist *h = &r->r.h[cdf_hists[i]];
        if (!h->count)
            continue;
        snprintf(path, sizeof path, "%s/%s-cdf-%s.dat", dir, r->label,
                 bench_hist_names[cdf_hists[i]]);
        FILE *f = fopen(path, "w");
        if (!f)
            continue;
        hist_write_cdf(h, f);
        fclose(f);
        ncdf++;
    }
    snprintf(path, sizeof path, "%s/%s-series.dat", dir, r->label);
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    fprintf(f, "# t_s connected deliveries_per_s publishes_per_s server_rss_mb server_cpu_pct "
               "server_fds\n");
    for (int i = 0; i < r->npoints; i++) {
        const struct run_point *p = &r->pts[i];
        fprintf(f, "%.2f %llu %.1f %.1f %.2f %.1f %ld\n", p->t, (unsigned long long)p->connected,
                p->deliv_s, p->pub_s, p->rss_mb, p->cpu_pct, p->fds);
    }
    fclose(f);
    snprintf(gp, sizeof gp, "%s/%s.gp", dir, r->label);
    if (!(f = fopen(gp, "w")))
        return;
    fprintf(f, "set terminal png size 900,540\nset grid\nset key bottom right\n");
    if (ncdf) {
        fprintf(f, "set output '%s/%s-cdf.png'\nset title '%s: latency CDF'\n", dir, r->label,
                r->label);
        fprintf(f, "set logscale x\nset xlabel 'latency (ms)'\nset ylabel 'fraction'\nplot ");
        int k = 0;
        for (size_t i = 0; i < 4; i++)
            if (r->r.h[cdf_hists[i]].count)
                fprintf(f, "%s'%s/%s-cdf-%s.dat' using 1:2 with steps lw 2 title '%s'",
                        k++ ? ", " : "", dir, r->label, bench_hist_names[cdf_hists[i]],
                        bench_hist_names[cdf_hists[i]]);
        fprintf(f, "\nunset logscale x\n");
    }
    fprintf(f, "set key top left\nset yrange [0:*]\nset y2range [0:*]\n");
    fprintf(f, "set output '%s/%s-throughput.png'\nset title '%s: throughput'\n", dir, r->label,
            r->label);
    fprintf(
        f,
        "set xlabel 'time (s)'\nset ylabel 'per second'\nset y2label 'connections'\nset y2tics\n");
    fprintf(f,
            "plot '%s' using 1:3 with lines lw 2 title 'deliveries/s', '' using 1:4 with lines lw "
            "2 title "
            "'publishes/s', '' using 1:2 axes x1y2 with lines title 'open connections'\n",
            path);
    fprintf(f, "set output '%s/%s-memory.png'\nset title '%s: server memory and CPU'\n", dir,
            r->label, r->label);
    fprintf(f, "set ylabel 'RSS (MB)'\nset y2label 'CPU (%% of a core)'\n");
    fprintf(f,
            "plot '%s' using 1:5 with lines lw 2 title 'server RSS (MB)', '' using 1:6 axes x1y2 "
            "with lines "
            "title 'server CPU %%'\n",
            path);
    fclose(f);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>/dev/null", gp);
    if (system(cmd) != 0)
        fprintf(stderr, "herald-bench: gnuplot failed for %s (is gnuplot installed?)\n", gp);
}

void report_outputs(const struct bench_opts *o, struct run **runs, int n)
{
    if (o->json_path) {
        json_t *arr = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(arr, report_json(runs[i]));
        json_t *top = json_pack("{s:s,s:o}", "tool", "herald-bench", "runs", arr);
        if (json_dump_file(top, o->json_path, JSON_INDENT(1)) < 0)
            fprintf(stderr, "herald-bench: cannot write %s\n", o->json_path);
        json_decref(top);
    }
    if (o->csv_path) {
        FILE *f = fopen(o->csv_path, "w");
        if (f) {
            report_csv_header(f);
            for (int i = 0; i < n; i++)
                report_csv_row(runs[i], f);
            fclose(f);
        } else {
            fprintf(stderr, "herald-bench: cannot write %s: %s\n", o->csv_path, strerror(errno));
        }
    }
    if (o->plot_dir)
        for (int i = 0; i < n; i++)
            report_plot(runs[i], o->plot_dir);
}
