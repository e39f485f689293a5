/*
 * Scalability meters (Gao, Pattabhiraman, Bai, Tsai 2011, as used by the
 * Instamrkt study) over a series of herald-bench JSON reports taken at
 * increasing load. Each meter is the area of a polygon whose n radii are its
 * inputs at equal angles: A = 1/2 * sin(2*pi/n) * sum x_i * x_(i+1).
 * docs/bench.md lists exactly which report fields feed each radius.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "report.h"

#define MAX_SERIES 256

struct meter_row {
    char label[128];
    double crum, spm, slm, sec, ess;
    double cpu, mem, fd;                /* CRUM radii */
    double ihs, ireq, ibc, mbin, mbout; /* SPM radii */
    double ctl, ual, sdl;               /* SLM radii */
};

static double polygon(const double *x, int n)
{
    if (n < 3)
        return 0;
    double s = 0;
    for (int i = 0; i < n; i++)
        s += x[i] * x[(i + 1) % n];
    return 0.5 * sin(2 * M_PI / n) * s;
}

static double num(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (v && b)
        v = json_object_get(v, b);
    return v && json_is_number(v) ? json_number_value(v) : 0;
}

static double p98_inv(json_t *run, const char *name)
{
    json_t *h = json_object_get(json_object_get(run, "latency"), name);
    if (!h || !json_is_object(h))
        return -1;
    double ms = num(json_object_get(h, "percentiles_ms"), "98", NULL);
    return ms > 0 ? 1000.0 / ms : -1;
}

static double mem_total_kb(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemTotal: %lf kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb > 0 ? kb : 1;
}

static void meter_compute(json_t *run, struct meter_row *m, double memkb, double ncores)
{
    snprintf(m->label, sizeof m->label, "%s", json_string_value(json_object_get(run, "label")));
    json_t *series = json_object_get(run, "series");
    double elapsed = 0;
    if (json_array_size(series))
        elapsed = json_number_value(
            json_array_get(json_array_get(series, json_array_size(series) - 1), 0));
    if (elapsed <= 0)
        elapsed = 1;
    double win = num(run, "delivery", "window_s");
    m->cpu = win > 0 ? num(run, "server", "cpu_window_s") / win / ncores : 0;
    m->mem = num(run, "server", "rss_max_kb") / memkb;
    m->fd = num(run, "server", "fds") / 20000.0;
    double crum_x[3] = {m->cpu, m->mem, m->fd};
    m->crum = polygon(crum_x, 3);

    double x[5];
    int n = 0;
    m->ihs = p98_inv(run, "handshake");
    m->ireq = p98_inv(run, "request");
    m->ibc = p98_inv(run, "broadcast");
    m->mbin = num(run, "counters", "bytes_in") / 1e6 / elapsed;
    m->mbout = num(run, "counters", "bytes_out") / 1e6 / elapsed;
    if (m->ihs > 0)
        x[n++] = m->ihs;
    if (m->ireq > 0)
        x[n++] = m->ireq;
    if (m->ibc > 0)
        x[n++] = m->ibc;
    x[n++] = m->mbin;
    x[n++] = m->mbout;
    m->spm = polygon(x, n);

    m->ctl = m->mbin + m->mbout;
    m->ual = (num(run, "counters", "connected") + num(run, "counters", "responses")) / 1000.0;
    m->sdl = num(run, "delivery", "deliveries_per_s") / 1000.0;
    double slm_x[3] = {m->ctl, m->ual, m->sdl};
    m->slm = polygon(slm_x, 3);
    double sec_x[3] = {m->slm, m->spm, m->crum};
    m->sec = polygon(sec_x, 3);
}

int meters_main(const struct bench_opts *o)
{
    static struct meter_row rows[MAX_SERIES];
    int n = 0;
    double memkb = mem_total_kb(), ncores = (double)sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 0; i < o->ninputs; i++) {
        json_error_t err;
        json_t *top = json_load_file(o->inputs[i], 0, &err);
        if (!top) {
            fprintf(stderr, "herald-bench meters: %s: %s\n", o->inputs[i], err.text);
            return 1;
        }
        json_t *runs = json_object_get(top, "runs"), *run;
        size_t idx;
        json_array_foreach(runs, idx, run)
        {
            if (n < MAX_SERIES)
                meter_compute(run, &rows[n++], memkb, ncores);
        }
        json_decref(top);
    }
    if (n == 0) {
        fprintf(stderr,
                "usage: herald-bench meters REPORT.json... (runs in order of increasing load)\n");
        return 2;
    }
    double sec_min = rows[0].sec, sec_max = rows[0].sec, sl_min = rows[0].slm;
    for (int i = 1; i < n; i++) {
        sec_min = fmin(sec_min, rows[i].sec);
        sec_max = fmax(sec_max, rows[i].sec);
        sl_min = fmin(sl_min, rows[i].slm);
    }
    for (int i = 0; i < n; i++)
        rows[i].ess = sl_min > 0 && sec_min > 0 && rows[i].sec > 0
                          ? (rows[i].slm / sl_min) / (rows[i].sec / sec_min)
                          : 0;
    printf("\nScalability meters (inputs: docs/bench.md)\n");
    printf("%-34s %9s %9s %9s %9s %9s %9s | %6s %6s %6s | %8s %8s %8s %8s %8s | %8s %8s %8s\n",
           "run", "CRUM", "SPM", "SLM", "SEC", "ESS", "", "cpu", "mem", "fd", "1/hs98", "1/req98",
           "1/bc98", "MBin/s", "MBout/s", "CTL", "UAL", "SDL");
    for (int i = 0; i < n; i++) {
        struct meter_row *m = &rows[i];
        printf("%-34s %9.4g %9.4g %9.4g %9.4g %9.4g %9s | %6.3f %6.4f %6.3f | %8.3g %8.3g %8.3g "
               "%8.3g %8.3g | "
               "%8.3g %8.3g %8.3g\n",
               m->label, m->crum, m->spm, m->slm, m->sec, m->ess, "", m->cpu, m->mem, m->fd,
               fmax(m->ihs, 0), fmax(m->ireq, 0), fmax(m->ibc, 0), m->mbin, m->mbout, m->ctl,
               m->ual, m->sdl);
    }
    printf("ESR (SEC_max - SEC_min) = %.4g\n", sec_max - sec_min);
    if (o->json_path) {
        json_t *arr = json_array();
        for (int i = 0; i < n; i++) {
            struct meter_row *m = &rows[i];
            json_array_append_new(
                arr, json_pack("{s:s,s:f,s:f,s:f,s:f,s:f,s:{s:f,s:f,s:f},s:{s:f,s:f,s:f,s:f,s:f},s:"
                               "{s:f,s:f,s:f}}",
                               "label", m->label, "CRUM", m->crum, "SPM", m->spm, "SLM", m->slm,
                               "SEC", m->sec, "ESS", m->ess, "crum_inputs", "cpu", m->cpu, "mem",
                               m->mem, "fd", m->fd, "spm_inputs", "inv_handshake_p98", m->ihs,
                               "inv_request_p98", m->ireq, "inv_broadcast_p98", m->ibc,
                               "mb_in_per_s", m->mbin, "mb_out_per_s", m->mbout, "slm_inputs",
                               "CTL", m->ctl, "UAL", m->ual, "SDL", m->sdl));
        }
        json_t *top = json_pack("{s:o,s:f}", "meters", arr, "ESR", sec_max - sec_min);
        json_dump_file(top, o->json_path, JSON_INDENT(1));
        json_decref(top);
    }
    return 0;
}
