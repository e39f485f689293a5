/*
 * herald-bench: the coordinator. Parses the command line, forks the worker
 * processes that hold the subscribers, publishes over keep-alive HTTP,
 * samples the server process(es) from /proc, drives each scenario's phases,
 * merges the workers' results and hands them to the reports.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include "client.h"
#include "report.h"

#define MAX_PUBLISHERS 256

struct sample {
    double cpu_s;
    double redis_cpu_s; /* --redis-pid processes */
    double machine_s;   /* busy CPU seconds of the whole machine (/proc/stat) */
    double bench_s;     /* this bench's own processes (coordinator and workers) */
    long rss_kb;
    long fds;
    int missing; /* sampled pids that no longer exist */
};

struct pubrec {
    int64_t *t;
    uint32_t n, cap;
};

struct coord {
    const struct bench_opts *o;
    struct run *run;
    struct engine e;
    int nw;
    int socks[BENCH_MAX_PROCS];
    pid_t pids[BENCH_MAX_PROCS];
    struct bench_counters wc[BENCH_MAX_PROCS];
    struct bench_counters agg;
    struct conn pubs[MAX_PUBLISHERS];
    int npubs;
    /* publishing */
    bool publishing;
    double pub_rate; /* messages/s, 0 = as fast as publishers go */
    int burst;
    uint64_t pub_target; /* 0: until stopped */
    uint64_t pub_sent, pub_done;
    int64_t pub_start;
    struct pubrec *log; /* per channel: send times of acknowledged publishes */
    int nchan;
    char *body;
    /* sampling */
    int64_t go, next_sample;
    struct sample last_sample;
    uint64_t last_deliv, last_pub;
    int64_t last_sample_mono;
};

static volatile sig_atomic_t interrupted;
static void on_sigint(int s)
{
    (void)s;
    interrupted = 1;
}

/* ---- /proc sampling ---- */

/* CPU seconds of a process: the sum of its threads' run time from
 * /proc/PID/task/TID/schedstat (nanoseconds, exact), or, when that is not
 * available, utime + stime from /proc/PID/stat (10 ms ticks). */
static double proc_cpu_s(pid_t pid, bool *missing)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        double ns = 0;
        int ok = 0;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            char tp[96];
            snprintf(tp, sizeof tp, "/proc/%d/task/%.20s/schedstat", (int)pid, de->d_name);
            FILE *t = fopen(tp, "r");
            unsigned long long run = 0;
            if (t) {
                if (fscanf(t, "%llu", &run) == 1)
                    ok++;
                fclose(t);
            }
            ns += (double)run;
        }
        closedir(d);
        if (ok && ns > 0)
            return ns / 1e9;
    }
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        *missing = true;
        return 0;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    /* fields after ")": state(3) ... utime(14) stime(15) */
    if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
        return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    return 0;
}

static pid_t bench_pids[BENCH_MAX_PROCS];
static int nbench_pids;

/* Busy CPU seconds of the machine: every state but idle and iowait. */
static double machine_busy_s(void)
{
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[10] = {0};
    if (!f)
        return 0;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8)
        return 0;
    /* user nice system idle iowait irq softirq steal (guest is inside user) */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static bool sample_server(const struct bench_opts *o, struct sample *s)
{
    memset(s, 0, sizeof *s);
    {
        bool gone = false;
        s->machine_s = machine_busy_s();
        s->bench_s = proc_cpu_s(getpid(), &gone);
        for (int i = 0; i < nbench_pids; i++)
            s->bench_s += proc_cpu_s(bench_pids[i], &gone);
    }
    for (int i = 0; i < o->nredis; i++) {
        bool gone = false;
        s->redis_cpu_s += proc_cpu_s(o->redis_pids[i], &gone);
    }
    if (o->npids == 0)
        return false;
    for (int i = 0; i < o->npids; i++) {
        char path[64], buf[4096];
        bool gone = false;
        s->cpu_s += proc_cpu_s(o->server_pids[i], &gone);
        if (gone) {
            s->missing++;
            continue;
        }
        FILE *f;
        snprintf(path, sizeof path, "/proc/%d/status", (int)o->server_pids[i]);
        if ((f = fopen(path, "r"))) {
            while (fgets(buf, sizeof buf, f))
                if (strncmp(buf, "VmRSS:", 6) == 0)
                    s->rss_kb += strtol(buf + 6, NULL, 10);
            fclose(f);
        }
        snprintf(path, sizeof path, "/proc/%d/fd", (int)o->server_pids[i]);
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                    s->fds++;
            closedir(d);
        }
    }
    return true;
}

/* The whole machine over a window: what the server, Redis and this bench
 * used, and the rest ("other": processes that are none of them). */
static void machine_window(struct run *r, const struct sample *a, const struct sample *b)
{
    r->machine_window_s = b->machine_s - a->machine_s;
    r->bench_window_s = b->bench_s - a->bench_s;
}

/* TcpExt ListenOverflows from /proc/net/netstat: connections completed by
 * the client that found the server's accept queue full (machine-wide). */
static long long listen_overflows(void)
{
    FILE *f = fopen("/proc/net/netstat", "r");
    char names[8192], vals[8192];
    long long v = -1;
    if (!f)
        return -1;
    while (fgets(names, sizeof names, f) && fgets(vals, sizeof vals, f)) {
        if (strncmp(names, "TcpExt:", 7) != 0)
            continue;
        char *sn, *sv;
        char *n = strtok_r(names, " \n", &sn), *x = strtok_r(vals, " \n", &sv);
        while (n && x) {
            if (strcmp(n, "ListenOverflows") == 0) {
                v = atoll(x);
                break;
            }
            n = strtok_r(NULL, " \n", &sn);
            x = strtok_r(NULL, " \n", &sv);
        }
        break;
    }
    fclose(f);
    return v;
}

/* ---- workers ---- */

static void send_cmd(struct coord *k, int op)
{
    struct bench_cmd c = {.op = op};
    for (int i = 0; i < k->nw; i++)
        if (write(k->socks[i], &c, sizeof c) != (ssize_t)sizeof c)
            fprintf(stderr, "herald-bench: worker %d: command lost\n", i);
}

static void read_statuses(struct coord *k)
{
    struct bench_status st;
    for (int i = 0; i < k->nw; i++) {
        while (recv(k->socks[i], &st, sizeof st, MSG_DONTWAIT | MSG_PEEK) == (ssize_t)sizeof st &&
               st.type == MSG_STATUS) {
            if (recv(k->socks[i], &st, sizeof st, MSG_WAITALL) != (ssize_t)sizeof st)
                break;
            k->wc[i] = st.c;
        }
    }
    memset(&k->agg, 0, sizeof k->agg);
    for (int i = 0; i < k->nw; i++) {
        const uint64_t *src = (const uint64_t *)&k->wc[i];
        uint64_t *dst = (uint64_t *)&k->agg;
        for (size_t j = 0; j < sizeof k->agg / sizeof(uint64_t); j++)
            dst[j] += src[j];
    }
}

static bool read_full(int fd, void *p, size_t n)
{
    char *q = p;
    while (n > 0) {
        ssize_t r = read(fd, q, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        q += r;
        n -= (size_t)r;
    }
    return true;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t count_range(const struct pubrec *p, int64_t lo, int64_t hi)
{
    /* p->t is sorted: count entries in [lo, hi) */
    uint32_t a = 0, b = p->n;
    while (a < b) {
        uint32_t m = (a + b) / 2;
        if (p->t[m] < lo)
            a = m + 1;
        else
            b = m;
    }
    uint32_t lo_i = a;
    b = p->n;
    while (a < b) {
        uint32_t m = (a + b) / 2;
        if (p->t[m] < hi)
            a = m + 1;
        else
            b = m;
    }
    return a - lo_i;
}

static void collect_results(struct coord *k)
{
    struct run *r = k->run;
    for (int c = 0; c < k->nchan; c++)
        if (k->log[c].n)
            qsort(k->log[c].t, k->log[c].n, sizeof(int64_t), cmp_i64);
    for (int i = 0; i < k->nw; i++) {
        struct bench_status st;
        for (;;) {
            if (!read_full(k->socks[i], &st, sizeof st)) {
                fprintf(stderr, "herald-bench: worker %d died without a result\n", i);
                goto next;
            }
            if (st.type == MSG_RESULT)
                break;
        }
        static struct bench_result wr;
        if (!read_full(k->socks[i], &wr, sizeof wr))
            goto next;
        const uint64_t *src = (const uint64_t *)&wr.c;
        uint64_t *dst = (uint64_t *)&r->r.c;
        for (size_t j = 0; j < sizeof wr.c / sizeof(uint64_t); j++)
            dst[j] += src[j];
        for (int h = 0; h < H_COUNT; h++)
            hist_merge(&r->r.h[h], &wr.h[h]);
        if (wr.first_attempt_us &&
            (!r->r.first_attempt_us || wr.first_attempt_us < r->r.first_attempt_us))
            r->r.first_attempt_us = wr.first_attempt_us;
        if (wr.last_handshake_us > r->r.last_handshake_us)
            r->r.last_handshake_us = wr.last_handshake_us;
        uint32_t cnt;
        if (!read_full(k->socks[i], &cnt, sizeof cnt))
            goto next;
        struct bench_subrec *recs = malloc((size_t)(cnt ? cnt : 1) * sizeof *recs);
        if (!recs || !read_full(k->socks[i], recs, (size_t)cnt * sizeof *recs)) {
            free(recs);
            goto next;
        }
        for (uint32_t j = 0; j < cnt; j++) {
            if (!recs[j].sub_us || recs[j].chan < 0 || recs[j].chan >= k->nchan)
                continue;
            uint64_t exp = count_range(&k->log[recs[j].chan], recs[j].sub_us, recs[j].end_us);
            r->expected += exp;
            r->counted += recs[j].delivered;
            r->subs_accounted++;
            if (recs[j].delivered < exp)
                r->lost += exp - recs[j].delivered;
            else
                r->extra += recs[j].delivered - exp;
        }
        free(recs);
    next:
        close(k->socks[i]);
    }
    for (int i = 0; i < k->nw; i++)
        waitpid(k->pids[i], NULL, 0);
}

static int spawn_workers(struct coord *k)
{
    const struct bench_opts *o = k->o;
    int n = o->conns;
    int procs = o->procs > 0 ? o->procs : (n + BENCH_CONNS_PER_PROC - 1) / BENCH_CONNS_PER_PROC;
    if (n == 0)
        procs = 0;
    if (procs > BENCH_MAX_PROCS || (procs > 0 && (n + procs - 1) / procs > BENCH_CONNS_PER_PROC)) {
        fprintf(stderr, "herald-bench: %d connections need more than %d processes of %d\n", n,
                BENCH_MAX_PROCS, BENCH_CONNS_PER_PROC);
        return -1;
    }
    k->run->procs = procs;
    fflush(NULL);
    for (int i = 0; i < procs; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
            return -1;
        int first = (int)((long)n * i / procs), last = (int)((long)n * (i + 1) / procs);
        pid_t pid = fork();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            close(sv[0]);
            for (int j = 0; j < i; j++)
                close(k->socks[j]);
            signal(SIGINT, SIG_IGN);
            worker_main(o, i, procs, first, last - first, sv[1]);
        }
        close(sv[1]);
        k->socks[i] = sv[0];
        k->pids[i] = pid;
        bench_pids[i] = pid;
        nbench_pids = i + 1;
    }
    k->nw = procs;
    return 0;
}

/* ---- publishing ---- */

static void on_pub(struct engine *e, struct conn *c, int status, int64_t rtt)
{
    struct coord *k = e->user;
    k->pub_done++;
    c->ref = 0;
    if (status >= 200 && status < 300) {
        k->run->pub_ok++;
        hist_add(&k->run->r.h[H_PUBLISH], rtt);
        struct pubrec *p = &k->log[c->chan];
        if (p->n == p->cap) {
            p->cap = p->cap ? 2 * p->cap : 256;
            p->t = realloc(p->t, p->cap * sizeof *p->t);
            if (!p->t)
                abort();
        }
        p->t[p->n++] = c->sub_us;
    } else {
        k->run->pub_fail++;
    }
}

static void pub_pump(struct coord *k)
{
    const struct bench_opts *o = k->o;
    for (int i = 0; i < k->npubs; i++) {
        struct conn *c = &k->pubs[i];
        if (c->state == ST_DEAD) {
            if (c->ref) {
                k->pub_done++; /* the request in flight died with its connection */
                k->run->pub_fail++;
            }
            conn_init(c, i, CK_PUB, 0, 0, i % o->nservers);
            conn_open(&k->e, c);
        }
    }
    if (!k->publishing)
        return;
    uint64_t due = UINT64_MAX;
    if (k->pub_rate > 0) {
        double el = (double)(k->e.mono - k->pub_start) / 1e6;
        due = ((uint64_t)(el * k->pub_rate / k->burst) + 1) * (uint64_t)k->burst;
    }
    if (k->pub_target && due > k->pub_target)
        due = k->pub_target;
    for (int i = 0; i < k->npubs && k->pub_sent < due; i++) {
        struct conn *c = &k->pubs[i];
        if (c->state != ST_IDLE)
            continue;
        char ch[160];
        int chan = (int)(k->pub_sent % (uint64_t)k->nchan);
        bench_chan_name(o, chan, ch, sizeof ch);
        engine_refresh_time(&k->e);
        size_t len = proto_body(k->body, (size_t)o->payload, k->e.now, k->pub_sent + 1);
        c->chan = chan;
        c->sub_us = k->e.now; /* publisher: send time of the request in flight */
        c->status = 0;
        c->ref = 1;
        k->pub_sent++;
        k->run->pub_bytes += len;
        conn_publish(&k->e, c, ch, k->body, len);
    }
}

static void pub_start(struct coord *k, double rate, int burst, uint64_t target)
{
    k->publishing = true;
    k->pub_rate = rate;
    k->burst = burst > 0 ? burst : 1;
    k->pub_target = target;
    k->pub_start = k->e.mono;
}

/* ---- the loop ---- */

static void coord_sample(struct coord *k)
{
    struct run *r = k->run;
    struct sample s;
    bool ok = sample_server(k->o, &s);
    double dt = (double)(k->e.mono - k->last_sample_mono) / 1e6;
    if (dt <= 0)
        dt = 1;
    if (r->npoints < RUN_MAX_POINTS) {
        struct run_point *p = &r->pts[r->npoints++];
        p->t = (double)(k->e.mono - k->go) / 1e6;
        p->connected = k->agg.connected - k->agg.closed;
        p->deliv_s = (double)(k->agg.delivered - k->last_deliv) / dt;
        p->pub_s = (double)(r->pub_ok - k->last_pub) / dt;
        p->rss_mb = ok ? (double)s.rss_kb / 1024.0 : 0;
        p->cpu_pct = ok ? 100.0 * (s.cpu_s - k->last_sample.cpu_s) / dt : 0;
        p->fds = s.fds;
    }
    if (ok && s.missing && !r->server_gone) {
        r->server_gone = true;
        fprintf(stderr, "\nherald-bench: a sampled server process exited during the run\n");
    }
    if (ok) {
        if (s.rss_kb > r->rss_max_kb)
            r->rss_max_kb = s.rss_kb;
        if (s.fds > r->fds_max)
            r->fds_max = s.fds;
    }
    k->last_sample = s;
    k->last_deliv = k->agg.delivered;
    k->last_pub = r->pub_ok;
    k->last_sample_mono = k->e.mono;
}

static void coord_step(struct coord *k, int timeout_ms)
{
    engine_poll(&k->e, timeout_ms, -1, NULL);
    read_statuses(k);
    pub_pump(k);
    if (k->e.mono >= k->next_sample) {
        coord_sample(k);
        k->next_sample += 1000000;
        if (!k->o->quiet) {
            const struct run_point *p = &k->run->pts[k->run->npoints - 1];
            fprintf(stderr,
                    "\r[%6.1fs] conn %llu/%d fail %llu | deliv %llu (%.0f/s) | pub %llu (%.0f/s) | "
                    "srv %.1f MB "
                    "%.0f%% cpu   ",
                    p->t, (unsigned long long)k->agg.connected, k->o->conns,
                    (unsigned long long)k->agg.failed, (unsigned long long)k->agg.delivered,
                    p->deliv_s, (unsigned long long)k->run->pub_ok, p->pub_s, p->rss_mb,
                    p->cpu_pct);
        }
    }
}

static void coord_for(struct coord *k, double secs)
{
    int64_t until = k->e.mono + (int64_t)(secs * 1e6);
    while (k->e.mono < until && !interrupted)
        coord_step(k, 10);
}

/* Runs until every subscriber connected or failed, or progress stalls. */
static void coord_wait_connected(struct coord *k)
{
    uint64_t last = 0;
    int64_t last_change = k->e.mono;
    while (!interrupted && k->agg.connected + k->agg.failed < (uint64_t)k->o->conns) {
        coord_step(k, 10);
        uint64_t now = k->agg.connected + k->agg.failed;
        if (now != last) {
            last = now;
            last_change = k->e.mono;
        } else if (k->e.mono - last_change > 15000000) {
            fprintf(stderr, "\nherald-bench: connecting stalled at %llu of %d\n",
                    (unsigned long long)now, k->o->conns);
            break;
        }
    }
}

/* Runs until deliveries stop growing for `quiet` seconds (or max secs). */
static int64_t coord_drain(struct coord *k, double quiet, double max)
{
    int64_t start = k->e.mono, last_change = k->e.mono;
    uint64_t last = k->agg.delivered;
    while (!interrupted && k->e.mono - start < (int64_t)(max * 1e6)) {
        coord_step(k, 10);
        if (k->agg.delivered != last) {
            last = k->agg.delivered;
            last_change = k->e.mono;
        } else if (k->e.mono - last_change > (int64_t)(quiet * 1e6)) {
            break;
        }
    }
    return last_change;
}

static void coord_wait_published(struct coord *k)
{
    while (!interrupted && k->pub_done < k->pub_target)
        coord_step(k, 5);
    k->publishing = false;
}

static bool wait_publishers(struct coord *k)
{
    int64_t until = k->e.mono + 5000000;
    for (;;) {
        int ready = 0;
        for (int i = 0; i < k->npubs; i++)
            ready += k->pubs[i].state == ST_IDLE;
        if (ready == k->npubs)
            return true;
        if (k->e.mono > until || interrupted)
            return false;
        engine_poll(&k->e, 10, -1, NULL);
    }
}

/* One measured run of o->scenario (pull-vs-push calls it per configuration). */
static int run_once(const struct bench_opts *o, struct run *r)
{
    static struct coord kk;
    struct coord *k = &kk;
    memset(k, 0, sizeof *k);
    memset(r, 0, sizeof *r);
    r->o = *o;
    snprintf(r->label, sizeof r->label, "%s", o->label);
    for (int i = 0; i < H_COUNT; i++)
        hist_init(&r->r.h[i]);
    k->o = o;
    k->run = r;
    k->nchan = o->channels;
    k->log = calloc((size_t)k->nchan, sizeof *k->log);
    k->body = malloc((size_t)o->payload + 128);
    if (!k->log || !k->body)
        abort();
    engine_init(&k->e, o);
    k->e.on_pub = on_pub;
    k->e.user = k;

    struct sample s0, s1;
    r->sampled = sample_server(o, &s0);
    r->rss_base_kb = s0.rss_kb;
    k->last_sample = s0;

    bool needs_pub = o->scenario == SC_FANOUT || o->scenario == SC_PUBLISH ||
                     o->scenario == SC_GAME || o->scenario == SC_PVP;
    k->npubs = needs_pub ? (o->publishers < MAX_PUBLISHERS ? o->publishers : MAX_PUBLISHERS) : 0;
    for (int i = 0; i < k->npubs; i++) {
        conn_init(&k->pubs[i], i, CK_PUB, 0, 0, i % o->nservers);
        conn_open(&k->e, &k->pubs[i]);
    }
    if (k->npubs && !wait_publishers(k)) {
        fprintf(stderr, "herald-bench: publishers could not connect to %s:%d\n", o->servers[0].host,
                o->servers[0].port);
        return -1;
    }
    if (spawn_workers(k) < 0)
        return -1;
    engine_refresh_time(&k->e);
    struct sample sgo;
    sample_server(o, &sgo);
    long long lo0 = listen_overflows();
    r->redis_sampled = o->nredis > 0;
    k->go = k->last_sample_mono = k->e.mono;
    k->next_sample = k->go + 1000000;
    send_cmd(k, CMD_GO);

    int64_t t0;
    switch (o->scenario) {
    case SC_IDLE:
    case SC_CONNECT:
        coord_wait_connected(k);
        r->connect_secs = (double)(k->e.mono - k->go) / 1e6;
        if (o->scenario == SC_IDLE) {
            coord_for(k, o->settle);
            sample_server(o, &s0);
            t0 = k->e.mono;
            coord_for(k, o->hold);
            sample_server(o, &s1);
            r->server_gone |= s1.missing > 0;
            r->window_secs = (double)(k->e.mono - t0) / 1e6;
            r->cpu_window_s = s1.cpu_s - s0.cpu_s;
            machine_window(r, &s0, &s1);
            r->cpu_idle_pct = r->window_secs > 0 ? 100 * r->cpu_window_s / r->window_secs : 0;
        } else {
            /* the storm's window: GO -> every subscriber connected or failed */
            sample_server(o, &s1);
            r->window_secs = r->connect_secs;
            r->cpu_window_s = s1.cpu_s - sgo.cpu_s;
            machine_window(r, &sgo, &s1);
            r->redis_cpu_window_s = s1.redis_cpu_s - sgo.redis_cpu_s;
            r->server_gone |= s1.missing > 0;
            coord_for(k, o->settle);
            sample_server(o, &s1);
        }
        r->rss_conn_kb = s1.rss_kb;
        r->fds_conn = s1.fds;
        break;
    case SC_FANOUT:
    case SC_PVP:
        coord_wait_connected(k);
        r->connect_secs = (double)(k->e.mono - k->go) / 1e6;
        coord_for(k, o->settle);
        sample_server(o, &s0);
        r->rss_conn_kb = s0.rss_kb;
        r->fds_conn = s0.fds;
        {
            uint64_t d0 = k->agg.delivered;
            t0 = k->e.mono;
            if (o->scenario == SC_FANOUT)
                pub_start(k, o->rate, o->burst, (uint64_t)o->messages);
            else
                pub_start(k, 1.0 / (o->duration * o->time_scale), 1, (uint64_t)o->messages);
            coord_wait_published(k);
            double quiet = o->transport == TR_PULL ? 2.5 * o->pull_interval * o->time_scale : 1.0;
            if (quiet < 1.0)
                quiet = 1.0;
            int64_t last = coord_drain(k, quiet, o->drain + quiet);
            sample_server(o, &s1);
            r->window_secs = (double)(last - t0) / 1e6;
            r->deliv_window = k->agg.delivered - d0;
            r->cpu_window_s = s1.cpu_s - s0.cpu_s;
            machine_window(r, &s0, &s1);
            r->redis_cpu_window_s = s1.redis_cpu_s - s0.redis_cpu_s;
            r->pub_window = r->pub_ok;
        }
        break;
    case SC_PUBLISH:
        coord_wait_connected(k);
        r->connect_secs = (double)(k->e.mono - k->go) / 1e6;
        sample_server(o, &s0);
        t0 = k->e.mono;
        pub_start(k, o->rate, 1, 0);
        coord_for(k, o->duration);
        k->publishing = false;
        while (!interrupted && k->pub_done < k->pub_sent &&
               k->e.mono - t0 < (int64_t)((o->duration + 5) * 1e6))
            coord_step(k, 5);
        sample_server(o, &s1);
        r->window_secs = (double)(k->e.mono - t0) / 1e6;
        r->cpu_window_s = s1.cpu_s - s0.cpu_s;
        machine_window(r, &s0, &s1);
        r->redis_cpu_window_s = s1.redis_cpu_s - s0.redis_cpu_s;
        r->pub_window = r->pub_ok;
        r->deliv_window = k->agg.delivered;
        break;
    case SC_GAME: {
        /* every game channel gets --game-updates broadcasts every 3 s (scaled) */
        pub_start(k, (double)o->channels * o->game_updates / (3.0 * o->time_scale), 1, 0);
        coord_wait_connected(k);
        r->ramp_secs = r->connect_secs = (double)(k->e.mono - k->go) / 1e6;
        send_cmd(k, CMD_PHASE);
        sample_server(o, &s0);
        r->rss_conn_kb = s0.rss_kb;
        r->fds_conn = s0.fds;
        uint64_t d0 = k->agg.delivered, pub0 = k->run->pub_ok;
        t0 = k->e.mono;
        coord_for(k, o->duration);
        k->publishing = false;
        /* a delivery window holds the last updates up to batch_ms: quiet means longer */
        double window = o->batch_ms / 1000.0;
        coord_drain(k, 1.0 + window, 3.0 + 3.0 * o->time_scale + window);
        sample_server(o, &s1);
        r->window_secs = (double)(k->e.mono - t0) / 1e6;
        r->deliv_window = k->agg.delivered - d0;
        r->cpu_window_s = s1.cpu_s - s0.cpu_s;
        machine_window(r, &s0, &s1);
        r->redis_cpu_window_s = s1.redis_cpu_s - s0.redis_cpu_s;
        r->pub_window = k->run->pub_ok - pub0;
        break;
    }
    default: break;
    }
    coord_sample(k);
    if (!o->quiet)
        fprintf(stderr, "\n");
    send_cmd(k, CMD_STOP);
    collect_results(k);
    long long lo1 = listen_overflows();
    r->listen_overflows = lo0 >= 0 && lo1 >= lo0 ? lo1 - lo0 : -1;
    if (r->r.last_handshake_us > r->r.first_attempt_us && r->r.first_attempt_us)
        r->connect_secs = (double)(r->r.last_handshake_us - r->r.first_attempt_us) / 1e6;
    r->r.c.bytes_in += 0;
    for (int i = 0; i < k->npubs; i++)
        conn_close(&k->e, &k->pubs[i], false);
    close(k->e.ep);
    for (int c = 0; c < k->nchan; c++)
        free(k->log[c].t);
    free(k->log);
    free(k->body);
    free(k->e.scratch);
    free(k->e.heap);
    return interrupted ? -1 : 0;
}

/* ---- channel options ---- */

/* PUT /api/channels/NAME {"batch_ms":N} on the first server, one blocking request per
 * channel (cluster nodes share the options). Returns 0, or -1 after saying why. */
static int set_windows(const struct bench_opts *o)
{
    const struct bench_addr *a = &o->servers[0];
    for (int c = 0; c < o->channels; c++) {
        char name[96], req[512], resp[512];
        bench_chan_name(o, c, name, sizeof name);
        char body[40];
        int bl = snprintf(body, sizeof body, "{\"batch_ms\":%d}", o->batch_ms);
        int rl = snprintf(req, sizeof req,
                          "PUT /api/channels/%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: "
                          "application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
                          name, a->host, a->port, bl, body);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
        ssize_t n = -1;
        if (fd >= 0 && inet_pton(AF_INET, a->host, &sa.sin_addr) == 1 &&
            connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && write(fd, req, (size_t)rl) == rl)
            n = read(fd, resp, sizeof resp - 1);
        if (fd >= 0)
            close(fd);
        if (n < 12 || memcmp(resp, "HTTP/1.1 20", 11) != 0) {
            resp[n > 0 ? n : 0] = '\0';
            fprintf(stderr,
                    "herald-bench: setting batch_ms on %s at %s:%d failed (%s); is herald "
                    "listening there, with its API on that port?\n",
                    name, a->host, a->port, n > 0 ? resp : strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* ---- command line ---- */

static void usage(FILE *f)
{
    fputs(
        "usage: herald-bench SCENARIO [options]\n"
        "\n"
        "scenarios:\n"
        "  idle          hold --conns subscribers for --hold s: server RSS per connection, idle "
        "CPU\n"
        "  fanout        --conns subscribers on --channels channels; --messages messages at "
        "--rate/s,\n"
        "                --payload bytes; --burst K publishes K messages at once (rate stays "
        "msgs/s)\n"
        "  connect       connection storm at --connect-rate: handshakes/s and handshake latency\n"
        "  publish       --publishers keep-alive publishers for --duration s (--rate 0 = flat "
        "out)\n"
        "  game          the Instamrkt game: users arrive at --connect-rate, think 1-15 s, join "
        "one of\n"
        "                --channels games over WebSocket, send a {\"op\":\"ping\"} request every "
        "1-30 s;\n"
        "                each game gets a broadcast every 3 s; all times x --time-scale;\n"
        "                --duration s of steady phase after the last user joined\n"
        "  pull-vs-push  PushUp: client pull (every --pull-interval s) vs long-poll, for each of\n"
        "                --pvp-clients and --pvp-intervals (publish interval s), x --time-scale\n"
        "  meters        scalability meters (CRUM SPM SLM SEC ESR ESS) from JSON reports given as\n"
        "                arguments, in order of increasing load\n"
        "\n"
        "target:\n"
        "  --target herald|nchan|floor    protocol spoken (default herald)\n"
        "  --server HOST:PORT             repeatable: connections spread round-robin (default "
        "127.0.0.1:8080)\n"
        "  --transport ws|sse|poll|stream|pull   subscriber transport (default ws; floor: raw "
        "TCP)\n"
        "  --server-pid PID               repeatable: sample /proc/PID (CPU, RSS, fds) every "
        "second\n"
        "  --redis-pid PID                repeatable: sample Redis's CPU apart (CPU per published "
        "message)\n"
        "  --no-reconnect                 herald subscribers do not reconnect when the server "
        "closes them\n"
        "                                 (default: ws/sse/stream reconnect and resume from their "
        "last id)\n"
        "  --token-secret S               herald subscribers send an HS256 token (Bearer) signed "
        "with S,\n"
        "                                 each its own (verified by herald once each)\n"
        "  --token-shared                 with --token-secret: one token for all (herald's cache)\n"
        "  --channel-prefix P             channels are named P-0, P-1... (default hbPID-TIME, a "
        "run's own)\n"
        "  --no-user                      herald subscribers send user=0: no subscription to "
        "their\n"
        "                                 token user's channel (docs/interactive.md)\n"
        "  --batch-ms MS                  herald: PUT {\"batch_ms\":MS} on every channel before "
        "the run\n"
        "                                 (delivery windows, docs/api.md; 0 to 10000)\n"
        "load:\n"
        "  --conns N          subscribers / users (default 1000; game 2000; publish 0)\n"
        "  --procs N          worker processes (default: ceil(N / 19000))\n"
        "  --connect-rate R   connections/s, all workers together (default 2000; 0 = no limit)\n"
        "  --channels C       channels (default 1; game: games, default 10)\n"
        "  --messages M       fanout: messages to publish (default 100)\n"
        "  --rate R           fanout: messages/s (default 10); publish: 0 = max (default 0)\n"
        "  --burst K          fanout: messages per burst (default 1)\n"
        "  --payload B        body size in bytes (default 100; minimum ~50)\n"
        "  --publishers P     keep-alive publisher connections (default 1; publish: 4)\n"
        "  --hold S           idle: seconds to hold (default 10)\n"
        "  --duration S       publish / game steady phase seconds (default 10 / 30)\n"
        "  --time-scale X     game and pull-vs-push time factor (default 0.2 / 0.1)\n"
        "  --game-updates K   game: broadcasts per game every 3 s (default 1, the study's batched "
        "load;\n"
        "                     more: one update per event, what a server-side window gathers)\n"
        "  --settle S         pause between connected and measuring (default 1)\n"
        "  --drain S          max wait for in-flight deliveries (default 5)\n"
        "  --poll-timeout S   long-poll timeout asked of herald (default 50)\n"
        "  --pull-interval S  client pull period before scaling (default 1)\n"
        "  --pvp-clients L    pull-vs-push client counts (default 10,100,1000)\n"
        "  --pvp-intervals L  pull-vs-push publish intervals, s before scaling (default 10,30,50)\n"
        "  --pvp-publishes N  publishes per pull-vs-push configuration (default 4)\n"
        "output:\n"
        "  --label NAME       run name in reports (default SCENARIO-TARGET-TRANSPORT)\n"
        "  --json FILE  --csv FILE  --plot DIR   (PNG plots need gnuplot)\n"
        "  --quiet            no progress line\n"
        "\n"
        "Latency: handshake = connect start to 101/200 (long-poll: TCP connect); request = WS op\n"
        "round trip; broadcast = receive time - the \"t\" the publisher put in the body.\n"
        "See docs/bench.md.\n",
        f);
}

static int parse_list(const char *s, double *out, int max)
{
    int n = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok && n < max; tok = strtok(NULL, ","))
        out[n++] = atof(tok);
    return n;
}

static int parse_opts(int argc, char **argv, struct bench_opts *o)
{
    static const struct option lo[] = {
        {"target", 1, 0, 't'},       {"server", 1, 0, 's'},        {"transport", 1, 0, 'T'},
        {"server-pid", 1, 0, 'p'},   {"conns", 1, 0, 'n'},         {"procs", 1, 0, 'P'},
        {"connect-rate", 1, 0, 'c'}, {"channels", 1, 0, 'C'},      {"messages", 1, 0, 'm'},
        {"rate", 1, 0, 'r'},         {"burst", 1, 0, 'b'},         {"payload", 1, 0, 'B'},
        {"publishers", 1, 0, 'u'},   {"hold", 1, 0, 'H'},          {"duration", 1, 0, 'd'},
        {"time-scale", 1, 0, 'x'},   {"settle", 1, 0, 'S'},        {"drain", 1, 0, 'D'},
        {"poll-timeout", 1, 0, 'o'}, {"pull-interval", 1, 0, 'i'}, {"pvp-clients", 1, 0, 1},
        {"pvp-intervals", 1, 0, 2},  {"pvp-publishes", 1, 0, 3},   {"label", 1, 0, 'l'},
        {"json", 1, 0, 'j'},         {"csv", 1, 0, 'v'},           {"plot", 1, 0, 'g'},
        {"quiet", 0, 0, 'q'},        {"help", 0, 0, 'h'},          {"redis-pid", 1, 0, 4},
        {"reconnect", 0, 0, 5},      {"no-reconnect", 0, 0, 6},    {"token-shared", 0, 0, 8},
        {"token-secret", 1, 0, 7},   {"no-user", 0, 0, 9},         {"game-updates", 1, 0, 11},
        {"batch-ms", 1, 0, 12},      {"channel-prefix", 1, 0, 13}, {0, 0, 0, 0},
    };
    int ch, chans = -1, pubs = -1;
    double rate = -1, dur = -1, scale = -1;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 't':
            if (strcmp(optarg, "herald") == 0)
                o->target = TARGET_HERALD;
            else if (strcmp(optarg, "nchan") == 0)
                o->target = TARGET_NCHAN;
            else if (strcmp(optarg, "floor") == 0)
                o->target = TARGET_FLOOR;
            else
                return fprintf(stderr, "herald-bench: unknown target %s\n", optarg), -1;
            break;
        case 's':
            if (o->nservers == BENCH_MAX_SERVERS ||
                bench_parse_addr(optarg, &o->servers[o->nservers]) < 0)
                return fprintf(stderr, "herald-bench: bad --server %s\n", optarg), -1;
            o->nservers++;
            break;
        case 'T': {
            static const char *names[] = {"ws", "sse", "poll", "stream", "pull", "raw"};
            int k = 0;
            while (k < 6 && strcmp(names[k], optarg) != 0)
                k++;
            if (k == 6)
                return fprintf(stderr, "herald-bench: unknown transport %s\n", optarg), -1;
            o->transport = (enum bench_transport)k;
            break;
        }
        case 'p':
            if (o->npids < BENCH_MAX_PIDS)
                o->server_pids[o->npids++] = atoi(optarg);
            break;
        case 'n': o->conns = atoi(optarg); break;
        case 'P': o->procs = atoi(optarg); break;
        case 'c': o->connect_rate = atof(optarg); break;
        case 'C': chans = atoi(optarg); break;
        case 'm': o->messages = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'b': o->burst = atoi(optarg); break;
        case 'B': o->payload = atoi(optarg); break;
        case 'u': pubs = atoi(optarg); break;
        case 'H': o->hold = atof(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'x': scale = atof(optarg); break;
        case 'S': o->settle = atof(optarg); break;
        case 'D': o->drain = atof(optarg); break;
        case 'o': o->poll_timeout = atoi(optarg); break;
        case 'i': o->pull_interval = atof(optarg); break;
        case 1: snprintf(o->pvp_clients, sizeof o->pvp_clients, "%s", optarg); break;
        case 2: snprintf(o->pvp_intervals, sizeof o->pvp_intervals, "%s", optarg); break;
        case 3: o->pvp_publishes = atoi(optarg); break;
        case 'l': snprintf(o->label, sizeof o->label, "%s", optarg); break;
        case 'j': o->json_path = optarg; break;
        case 'v': o->csv_path = optarg; break;
        case 'g': o->plot_dir = optarg; break;
        case 'q': o->quiet = 1; break;
        case 4:
            if (o->nredis < BENCH_MAX_PIDS)
                o->redis_pids[o->nredis++] = atoi(optarg);
            break;
        case 5: o->reconnect = 1; break;
        case 6: o->reconnect = 0; break;
        case 7: o->token_secret = optarg; break;
        case 8: o->token_shared = 1; break;
        case 9: o->no_user = 1; break;
        case 11: o->game_updates = atoi(optarg); break;
        case 12: o->batch_ms = atoi(optarg); break;
        case 13: snprintf(o->chan_prefix, sizeof o->chan_prefix, "%s", optarg); break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (o->nservers == 0)
        bench_parse_addr("127.0.0.1:8080", &o->servers[o->nservers++]);
    if (o->reconnect < 0)
        o->reconnect = 1;
    if (o->target == TARGET_FLOOR)
        o->transport = TR_RAW;
    else if (o->transport == TR_RAW)
        return fprintf(stderr, "herald-bench: raw transport is the floor's only\n"), -1;
    bool game = o->scenario == SC_GAME;
    if (o->conns < 0)
        o->conns = o->scenario == SC_PUBLISH ? 0 : game ? 2000 : 1000;
    o->channels = chans > 0 ? chans : game ? 10 : 1;
    o->rate = rate >= 0 ? rate : o->scenario == SC_PUBLISH ? 0 : 10;
    o->publishers = pubs > 0 ? pubs : o->scenario == SC_PUBLISH ? 4 : 1;
    o->duration = dur > 0 ? dur : game ? 30 : 10;
    o->time_scale = scale > 0 ? scale : game ? 0.2 : 0.1;
    if (o->scenario == SC_GAME && o->target != TARGET_FLOOR)
        o->transport = TR_WS;
    if (o->burst > 1 && pubs <= 0)
        o->publishers = o->burst < 16 ? o->burst : 16;
    if (o->payload < 48)
        o->payload = 48;
    if (o->game_updates < 1)
        o->game_updates = 1;
    if (o->batch_ms < 0 || o->batch_ms > 10000)
        return fprintf(stderr, "herald-bench: --batch-ms is 0 to 10000 (herald's limit)\n"), -1;
    if (o->batch_ms && o->target != TARGET_HERALD)
        return fprintf(stderr, "herald-bench: --batch-ms is a herald channel option\n"), -1;
    if (!o->label[0] && o->scenario == SC_PVP)
        snprintf(o->label, sizeof o->label, "pvp-%s", bench_target_name(o->target));
    else if (!o->label[0])
        snprintf(o->label, sizeof o->label, "%s-%s-%s", bench_scenario_name(o->scenario),
                 bench_target_name(o->target), bench_transport_name(o->transport));
    for (int i = optind; i < argc; i++) {
        o->inputs = realloc(o->inputs, (size_t)(o->ninputs + 1) * sizeof *o->inputs);
        o->inputs[o->ninputs++] = argv[i];
    }
    return 0;
}

static int pvp_main(struct bench_opts *o)
{
    double clients[16], intervals[16];
    int nc = parse_list(o->pvp_clients, clients, 16),
        ni = parse_list(o->pvp_intervals, intervals, 16);
    struct run *runs[128];
    int nr = 0, rc = 0;
    char base[64];
    snprintf(base, sizeof base, "%.40s", o->label);
    for (int c = 0; c < nc && rc == 0; c++)
        for (int i = 0; i < ni && rc == 0; i++)
            for (int m = 0; m < 2 && rc == 0; m++) {
                struct bench_opts q = *o;
                q.conns = (int)clients[c];
                q.duration = intervals[i]; /* publish interval, before scaling */
                q.messages = o->pvp_publishes;
                q.transport = m == 0 ? TR_PULL : TR_POLL;
                q.procs = 0;
                snprintf(q.label, sizeof q.label, "%s-%s-c%d-i%g", base, m == 0 ? "pull" : "push",
                         q.conns, intervals[i]);
                q.scenario = SC_PVP;
                struct run *r = calloc(1, sizeof *r);
                if (!r)
                    abort();
                fprintf(stderr, "== %s\n", q.label);
                rc = run_once(&q, r);
                snprintf(r->mode, sizeof r->mode, "%s", m == 0 ? "pull" : "push");
                runs[nr++] = r;
            }
    printf("\npull-vs-push (%s; times x %g; MPT unscaled = MPT / scale)\n",
           bench_target_name(o->target), o->time_scale);
    printf("%-6s %8s %10s %12s %12s %14s %8s %10s %10s\n", "mode", "clients", "interval_s",
           "NT_bytes", "requests", "MPT_ms", "RMP_%", "MPT_unsc_s", "SMU_MB");
    for (int i = 0; i < nr; i++) {
        struct run *r = runs[i];
        double mpt = hist_mean(&r->r.h[H_BCAST]) / 1000.0;
        printf("%-6s %8d %10g %12llu %12llu %14.1f %8.1f %10.2f %10.1f\n", r->mode, r->o.conns,
               r->o.duration, (unsigned long long)(r->r.c.bytes_in + r->r.c.bytes_out),
               (unsigned long long)r->r.c.http_requests, mpt,
               r->expected ? 100.0 * (double)r->counted / (double)r->expected : 0,
               mpt / 1000.0 / r->o.time_scale, (double)r->rss_max_kb / 1024.0);
    }
    report_outputs(o, runs, nr);
    for (int i = 0; i < nr; i++)
        free(runs[i]);
    return rc;
}

int main(int argc, char **argv)
{
    static struct bench_opts o = {
        .conns = -1,
        .connect_rate = 2000,
        .messages = 100,
        .burst = 1,
        .payload = 100,
        .hold = 10,
        .settle = 1,
        .drain = 5,
        .poll_timeout = 50,
        .pull_interval = 1,
        .pvp_publishes = 4,
        .reconnect = -1,
        .pvp_clients = "10,100,1000",
        .pvp_intervals = "10,30,50",
    };
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    static const char *sc[] = {"idle", "fanout",       "connect", "publish",
                               "game", "pull-vs-push", "meters"};
    int s = 0;
    while (s < 7 && strcmp(sc[s], argv[1]) != 0)
        s++;
    if (s == 7) {
        fprintf(stderr, "herald-bench: unknown scenario %s (try --help)\n", argv[1]);
        return 2;
    }
    o.scenario = (enum bench_scenario)s;
    snprintf(o.chan_prefix, sizeof o.chan_prefix, "hb%d-%lld", (int)getpid() % 100000,
             (long long)(bench_now_us() / 1000000 % 100000));
    if (parse_opts(argc - 1, argv + 1, &o) < 0)
        return 2;
    if (o.scenario == SC_METERS)
        return meters_main(&o);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (o.scenario == SC_PVP)
        return pvp_main(&o) == 0 ? 0 : 1;
    if (o.batch_ms && set_windows(&o) < 0)
        return 1;
    struct run *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    int rc = run_once(&o, r);
    report_table(r, stdout);
    report_outputs(&o, &r, 1);
    free(r);
    return rc == 0 ? 0 : 1;
}
