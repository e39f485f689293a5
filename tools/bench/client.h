/*
 * herald-bench client engine: non-blocking connections on one edge-triggered
 * epoll loop, each speaking one subscriber transport (WebSocket, SSE,
 * long-poll, client pull, NDJSON/chunked stream, raw floor) or acting as a
 * keep-alive HTTP publisher. Used by the workers (subscribers) and by the
 * coordinator (publishers). Connections live in arrays owned by the caller
 * and are never freed while the loop runs, so a closed connection's stale
 * events are simply ignored.
 */
#ifndef HERALD_BENCH_CLIENT_H
#define HERALD_BENCH_CLIENT_H

#include "bench.h"
#include "proto.h"

enum conn_kind { CK_SUB, CK_PUB };
enum conn_state {
    ST_NEW,   /* not opened yet */
    ST_THINK, /* game user thinking before joining */
    ST_CONNECTING,
    ST_HEAD,
    ST_BODY_CL,
    ST_BODY_CHUNK,
    ST_BODY_EOF,
    ST_WS,
    ST_RAW_HELLO,
    ST_RAW,
    ST_IDLE,      /* keep-alive connection between requests */
    ST_RECONNECT, /* closed by the server; reopens on its timer, resuming from last_id */
    ST_DEAD
};

struct conn {
    int fd;
    uint8_t kind, transport, state, chunk_st;
    uint8_t ws_hlen, ws_op, ws_ctl_len, first_done;
    bool resp_close;
    int32_t id, chan, server;
    int status;
    int64_t t_start; /* CLOCK_MONOTONIC µs: connect or request start */
    int64_t sub_us;  /* CLOCK_REALTIME µs when the subscription went live */
    int64_t end_us;
    uint32_t delivered;
    int64_t body_left; /* CL bytes left, or chunk bytes left */
    uint64_t ws_left;
    uint8_t ws_hdr[14];
    uint8_t ws_ctl[128]; /* control frame payload / start of a text frame */
    struct proto_scan sc;
    char *rbuf; /* unconsumed input (partial head/frame/poll body) */
    uint32_t rlen, rcap;
    char *wbuf; /* output the socket did not take yet */
    uint32_t wlen, wcap;
    char *body; /* poll response body being collected */
    uint32_t blen, bcap;
    char *cursor; /* herald poll cursor; nchan: Last-Modified */
    char etag[40];
    char ws_key[25];
    int64_t timer_at; /* 0: none */
    int32_t heap_idx;
    uint32_t ref;        /* game: outstanding ping ref (0: none) */
    int64_t req_sent;    /* mono µs */
    int64_t last_poll;   /* mono µs of the last poll request */
    uint64_t last_id;    /* herald: id of the last complete message (the resume cursor) */
    uint64_t pending_id; /* id seen in the envelope being received */
    uint64_t id_acc;
    uint8_t id_st, id_k; /* envelope id scanner state */
    uint8_t reopen;      /* this connect is a reconnect */
    uint8_t retries;     /* consecutive failed reconnects */
};

struct engine;
typedef void engine_pub_cb(struct engine *e, struct conn *c, int status, int64_t rtt_us);
typedef void engine_timer_cb(struct engine *e, struct conn *c);

struct engine {
    int ep;
    const struct bench_opts *o;
    struct bench_result res;
    int phase;   /* 0: ramp-up, 1: steady (game) */
    int64_t now; /* CLOCK_REALTIME µs, refreshed each loop pass */
    int64_t mono;
    struct conn **heap;
    int heap_n, heap_cap;
    char *scratch;
    size_t scratch_cap;
    uint32_t next_ref;
    bool track_ids; /* herald resume: follow message ids (the cursor) */
    engine_pub_cb *on_pub;
    engine_timer_cb *on_timer; /* game / pull timers */
    void *user;
};

void engine_init(struct engine *e, const struct bench_opts *o);
void engine_refresh_time(struct engine *e);
/* Waits up to timeout_ms and dispatches events; extra_fd events go to
 * *extra_ready (set true). Returns the number of events. */
int engine_poll(struct engine *e, int timeout_ms, int extra_fd, bool *extra_ready);
void engine_run_timers(struct engine *e);
int64_t engine_next_timer(const struct engine *e); /* mono µs, 0 when none */
void engine_timer_set(struct engine *e, struct conn *c, int64_t at_mono);
void engine_timer_clear(struct engine *e, struct conn *c);

void conn_init(struct conn *c, int id, enum conn_kind kind, int transport, int chan, int server);
/* Starts the TCP connect; failures are counted and the conn goes ST_DEAD. */
void conn_open(struct engine *e, struct conn *c);
void conn_close(struct engine *e, struct conn *c, bool failed);
/* Publisher: sends POST /pub/<chan> with body; the answer comes to on_pub. */
void conn_publish(struct engine *e, struct conn *c, const char *chan, const char *body, size_t len);
/* Game: sends {"op":"ping","ref":"<n>"} on an open herald WebSocket. */
void conn_ws_ping_op(struct engine *e, struct conn *c);
/* Pull: sends the next poll request. */
void conn_poll_request(struct engine *e, struct conn *c);

void bench_chan_name(const struct bench_opts *o, int chan, char *out, size_t cap);

#endif
