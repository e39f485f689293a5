/*
 * herald-bench: shared types of the load generator.
 *
 * One coordinator process (publishers, server sampling, reports) forks
 * worker processes (subscribers); they talk over one socketpair each.
 * Everything a worker reports is a plain struct written raw: the peer is
 * our own fork, so the layout is identical on both sides.
 */
#ifndef HERALD_BENCH_H
#define HERALD_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "hist.h"

#define BENCH_MAX_SERVERS    16
#define BENCH_MAX_PIDS       8
#define BENCH_MAX_PROCS      64
#define BENCH_CONNS_PER_PROC 19000

enum bench_target { TARGET_HERALD, TARGET_NCHAN, TARGET_FLOOR };
enum bench_transport { TR_WS, TR_SSE, TR_POLL, TR_STREAM, TR_PULL, TR_RAW };
enum bench_scenario { SC_IDLE, SC_FANOUT, SC_CONNECT, SC_PUBLISH, SC_GAME, SC_PVP, SC_METERS };

struct bench_addr {
    char host[64];
    int port;
};

struct bench_opts {
    enum bench_scenario scenario;
    enum bench_target target;
    enum bench_transport transport;
    struct bench_addr servers[BENCH_MAX_SERVERS];
    int nservers;
    pid_t server_pids[BENCH_MAX_PIDS];
    int npids;
    int procs; /* worker processes (0: enough for conns) */
    int conns; /* subscribers / users */
    int channels;
    int messages; /* fanout: messages to publish */
    double rate;  /* messages (or bursts) per second; publish: 0 = max */
    int burst;    /* fanout: messages per burst (1 = no burst) */
    int payload;  /* published body size in bytes */
    int publishers;
    double connect_rate; /* new connections per second, all workers together */
    double hold;         /* idle: seconds to hold after connecting */
    double duration;     /* publish / game steady phase seconds */
    double time_scale;   /* game, pull-vs-push */
    int games;
    int game_updates;     /* game: broadcasts per game per 3 s (scaled), default 1 */
    int batch_ms;         /* herald: the channels' delivery window, set with PUT before the run */
    double settle;        /* seconds between "all connected" and first publish */
    double drain;         /* seconds to wait for in-flight deliveries */
    int poll_timeout;     /* long-poll timeout (s) */
    double pull_interval; /* client pull period (s, before scaling) */
    char pvp_clients[64];
    char pvp_intervals[64];
    int pvp_publishes;
    char label[128];
    char chan_prefix[32];
    const char *json_path, *csv_path, *plot_dir;
    int quiet;
    int reconnect; /* herald ws/sse/stream subscribers reconnect and resume (-1: auto = on) */
    /* herald subscriber tokens: --token-secret signs an HS256 token per subscriber (sent as
     * Authorization: Bearer); --token-shared: one token for all (verified once, then cached) */
    const char *token_secret;
    int token_shared;
    int no_user; /* --no-user: herald subscribers ask user=0 (no channel of their token's user) */
    pid_t redis_pids[BENCH_MAX_PIDS]; /* --redis-pid: sampled apart from the server (CPU per
                                         publish) */
    int nredis;
    /* meters: input reports */
    char **inputs;
    int ninputs;
};

/* Cumulative counters; a worker sends its current copy every status tick. */
struct bench_counters {
    uint64_t attempted, connected, failed, closed;
    uint64_t delivered, stale, bytes_in, bytes_out;
    uint64_t requests, responses, http_requests, pings;
    uint64_t handshakes_done;
    uint64_t reconnects;      /* resumed subscriptions (handshake done again after a close) */
    uint64_t reconnect_fails; /* reconnect attempts that failed (retried with backoff) */
    uint64_t lost_users;      /* subscribers closed for good after their first handshake */
    uint64_t ctl_reconnect;   /* herald {"event":"reconnect"} control events seen */
    uint64_t ctl_gap;         /* herald {"event":"gap"} control events seen on resume */
};

/* One subscriber's account for the loss computation (coordinator side). */
struct bench_subrec {
    int32_t chan;
    uint32_t delivered;
    int64_t sub_us; /* handshake completed (subscription live) */
    int64_t end_us; /* disconnected, or end of run */
};

/* Worker -> coordinator messages. */
enum { MSG_STATUS = 1, MSG_RESULT = 2 };
struct bench_status {
    uint32_t type;
    uint32_t worker;
    int64_t at_us;
    struct bench_counters c;
};

/* Coordinator -> worker commands. */
enum { CMD_GO = 'G', CMD_PHASE = 'P', CMD_STOP = 'S' };
struct bench_cmd {
    int32_t op;
    int32_t pad;
    int64_t arg;
};

/* Histograms every worker fills; merged by the coordinator. */
enum {
    H_HANDSHAKE,
    H_REQUEST,
    H_BCAST,
    H_REQUEST_RAMP,
    H_BCAST_RAMP,
    H_PUBLISH,
    H_RECONNECT,
    H_COUNT
};
extern const char *const bench_hist_names[H_COUNT];

struct bench_result {
    struct bench_counters c;
    int64_t first_attempt_us;  /* CLOCK_REALTIME; merged by min */
    int64_t last_handshake_us; /* merged by max */
    struct hist h[H_COUNT];
};

int64_t bench_now_us(void);  /* CLOCK_REALTIME, µs */
int64_t bench_mono_us(void); /* CLOCK_MONOTONIC, µs */
double bench_rand01(void);

/* worker.c: runs one worker's subscribers until CMD_STOP; never returns. */
void worker_main(const struct bench_opts *o, int index, int nworkers, int first_conn, int nconns,
                 int sock) __attribute__((noreturn));

/* The "Authorization: Bearer TOKEN\r\n" line of subscriber conn_id on channel ch when
 * --token-secret is set ("" otherwise): an HS256 JWT granting ch for an hour. */
void proto_token_header(const struct bench_opts *o, int conn_id, const char *ch, char *out,
                        size_t cap);

/* Wire helpers shared by worker and publisher (proto.c). */
int proto_connect(const struct bench_addr *a, int *fd_out); /* 0 or -errno; non-blocking */
int bench_parse_addr(const char *s, struct bench_addr *a);

#endif
