/*
 * herald-bench worker process: holds up to BENCH_CONNS_PER_PROC subscribers
 * (one process may own at most 20,000 fds here), opens them at its share of
 * the connect rate, reports cumulative counters to the coordinator four
 * times a second, and on CMD_STOP sends its histograms and per-subscriber
 * accounts, then exits. Also the small utilities every process shares.
 */
#include "client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

const char *const bench_hist_names[H_COUNT] = {
    [H_HANDSHAKE] = "handshake",
    [H_REQUEST] = "request",
    [H_BCAST] = "broadcast",
    [H_REQUEST_RAMP] = "request (ramp-up)",
    [H_BCAST_RAMP] = "broadcast (ramp-up)",
    [H_PUBLISH] = "publish",
    [H_RECONNECT] = "reconnect",
};

int64_t bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t bench_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

double bench_rand01(void)
{
    return (double)random() / ((double)RAND_MAX + 1.0);
}

int bench_parse_addr(const char *s, struct bench_addr *a)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof a->host)
        return -1;
    memcpy(a->host, s, (size_t)(colon - s));
    a->host[colon - s] = 0;
    a->port = atoi(colon + 1);
    if (strcmp(a->host, "localhost") == 0)
        strcpy(a->host, "127.0.0.1");
    return a->port > 0 && a->port < 65536 ? 0 : -1;
}

int proto_connect(const struct bench_addr *a, int *fd_out)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
    if (inet_pton(AF_INET, a->host, &sa.sin_addr) != 1)
        return -EINVAL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        int err = -errno;
        close(fd);
        return err;
    }
    *fd_out = fd;
    return 0;
}

static void write_full(int fd, const void *p, size_t n)
{
    const char *q = p;
    while (n > 0) {
        ssize_t w = write(fd, q, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(3); /* coordinator gone: nothing left to report to */
        q += w;
        n -= (size_t)w;
    }
}

static void send_status(struct engine *e, int sock, int index, uint32_t type)
{
    struct bench_status st = {
        .type = type, .worker = (uint32_t)index, .at_us = e->now, .c = e->res.c};
    write_full(sock, &st, sizeof st);
}

static void arrive(struct engine *e, struct conn *c)
{
    if (e->o->scenario == SC_GAME) {
        double think = (1 + 14 * bench_rand01()) * e->o->time_scale;
        c->state = ST_THINK;
        engine_timer_set(e, c, e->mono + (int64_t)(think * 1e6));
        return;
    }
    conn_open(e, c);
}

void worker_main(const struct bench_opts *o, int index, int nworkers, int first, int n, int sock)
{
    static struct engine eng;
    struct engine *e = &eng;
    engine_init(e, o);
    srandom((unsigned)(getpid() ^ bench_now_us()));
    e->phase = o->scenario == SC_GAME ? 0 : 1;
    struct conn *conns = calloc((size_t)(n ? n : 1), sizeof *conns);
    if (!conns)
        abort();
    for (int i = 0; i < n; i++) {
        int id = first + i;
        /* channel id mod C; the server rotates once per round of channels, so
         * every channel has subscribers on every server (cluster fan-out) */
        conn_init(&conns[i], id, CK_SUB, o->transport, id % o->channels,
                  (id / o->channels) % o->nservers);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(e->ep, EPOLL_CTL_ADD, sock, &ev);

    struct bench_cmd cmd;
    if (read(sock, &cmd, sizeof cmd) != (ssize_t)sizeof cmd || cmd.op != CMD_GO)
        _exit(2);
    engine_refresh_time(e);
    int64_t go = e->mono, next_status = e->mono;
    double rate = o->connect_rate > 0 ? o->connect_rate / nworkers : 0;
    int opened = 0;
    bool stop = false;
    while (!stop) {
        int timeout = 250;
        if (opened < n)
            timeout = 1;
        int64_t nt = engine_next_timer(e);
        if (nt) {
            int64_t ms = (nt - e->mono + 999) / 1000;
            if (ms < timeout)
                timeout = ms < 0 ? 0 : (int)ms;
        }
        bool ctl = false;
        engine_poll(e, timeout, sock, &ctl);
        if (ctl) {
            ssize_t r = read(sock, &cmd, sizeof cmd);
            if (r != (ssize_t)sizeof cmd || cmd.op == CMD_STOP)
                stop = true;
            else if (cmd.op == CMD_PHASE)
                e->phase = 1;
        }
        engine_run_timers(e);
        if (opened < n) {
            int due = n;
            if (rate > 0) {
                double d = (double)(e->mono - go) * rate / 1e6 + 1;
                due = d < n ? (int)d : n;
            }
            for (int k = 0; opened < due && k < 256; k++)
                arrive(e, &conns[opened++]);
        }
        if (e->mono >= next_status) {
            send_status(e, sock, index, MSG_STATUS);
            next_status = e->mono + 250000;
        }
    }
    engine_refresh_time(e);
    struct bench_subrec *recs = calloc((size_t)(n ? n : 1), sizeof *recs);
    if (!recs)
        abort();
    for (int i = 0; i < n; i++) {
        struct conn *c = &conns[i];
        recs[i] = (struct bench_subrec){.chan = c->chan,
                                        .delivered = c->delivered,
                                        .sub_us = c->sub_us,
                                        .end_us = c->end_us ? c->end_us : e->now};
    }
    /* Reset (SO_LINGER 0) rather than close: a run leaves no TIME_WAIT
     * entries behind, which would slow the next run's connect() port search
     * on this shared loopback (the next storm would measure them). */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    for (int i = 0; i < n; i++)
        if (conns[i].fd >= 0) {
            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(conns[i].fd);
            conns[i].fd = -1;
        }
    send_status(e, sock, index, MSG_RESULT);
    write_full(sock, &e->res, sizeof e->res);
    uint32_t cnt = (uint32_t)n;
    write_full(sock, &cnt, sizeof cnt);
    write_full(sock, recs, (size_t)n * sizeof *recs);
    _exit(0);
}
