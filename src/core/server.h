/*
 * server: worker threads (one event loop each, SO_REUSEPORT listeners), the
 * connection object, its outbound queue of shared buffers, and fan-out of hub
 * messages to a worker's own connections.
 *
 * Memory per idle connection is the point of this file: a connection owns no
 * buffer while it is idle. Reads go to the worker's scratch buffer; only an
 * unfinished request or frame is copied into a buffer of the connection's own.
 * The outbound queue holds references to shared, already-framed bytes and is
 * released as soon as it drains.
 */
#ifndef HERALD_SERVER_H
#define HERALD_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/config.h"
#include "core/loop.h"
#include "http/http_parser.h"
#include "hub/hub.h"
#include "transport/ws_frame.h"

enum conn_kind {
    CONN_HTTP = 0, /* request/response (publish API, admin, and the handshake of the others) */
    CONN_WS,
    CONN_SSE,
    CONN_POLL, /* a long-poll request being held */
    CONN_STREAM,
    CONN_KINDS
};

enum conn_flag {
    CF_CLOSING = 1u << 0,       /* reap after this pass */
    CF_DIRTY = 1u << 1,         /* on the worker's dirty list */
    CF_WRITE_BLOCKED = 1u << 2, /* last write hit EAGAIN; wait for EPOLLOUT */
    CF_CLOSE_AFTER = 1u << 3,   /* close once the queue drains */
    CF_LOOPBACK = 1u << 4,      /* peer is 127.0.0.0/8 or ::1 */
    CF_API = 1u << 5,           /* accepted on a listener that serves the publish API */
    CF_PUBLIC = 1u << 6,        /* accepted on a listener that serves subscribers */
    CF_DEFLATE = 1u << 7,       /* WS permessage-deflate negotiated */
    CF_RAW = 1u << 8,           /* SSE format=raw */
    CF_PING_OUT = 1u << 9,      /* WS ping sent, pong awaited */
    CF_CLOSE_SENT = 1u << 10,   /* WS close frame queued */
    CF_POLL_WAITING = 1u << 11, /* long-poll holding for messages */
    CF_READ_PAUSED = 1u << 12,  /* stop parsing input until the current response is out */
    CF_EOF = 1u << 13,          /* peer shut down its write side */
    CF_KEEPALIVE = 1u << 14,    /* long-poll: the request allowed keep-alive */
    CF_CORS = 1u << 15,         /* long-poll: answer with CORS headers */
    CF_LINGER = 1u << 16,       /* our side is shut; discard input until EOF or close grace */
    CF_RETRY = 1u << 17,        /* the request waits for the backend: keep it, re-run it later */
    CF_PUBLISHER = 1u << 19,    /* WS: the upgrade carried publish credentials (--ws-publish) */
    CF_ZOMBIE = 1u << 18,       /* closed while the backend holds it: freed on the last release */
    CF_SEALED = 1u << 20,       /* the last bytes are queued (WS close frame): nothing may follow */
};

/* One element of the outbound queue: bytes borrowed from a refcounted owner. */
struct out_item {
    struct ref *owner; /* NULL for static bytes */
    const char *data;
    uint32_t len;
};

struct http_state {
    uint32_t head_len; /* 0 until the head is parsed */
    uint32_t body_end; /* chunked: end of decoded body bytes */
    uint32_t raw_off;  /* chunked: start of undecoded input */
    bool started;      /* first bytes of this request seen: its timeout is running */
    bool sent_continue;
    struct http_chunked chunked;
};

struct ws_state {
    uint8_t frag_opcode; /* opcode of the message being reassembled, 0 if none */
    bool frag_compressed;
    struct ws_utf8 utf8;
    char *msg; /* reassembly buffer for fragmented/partial messages */
    uint32_t msg_len;
    char *pending; /* an op waiting for the backend, re-run by ws_resume */
    uint32_t pending_len;
};

struct worker;

struct conn {
    struct io io;
    struct worker *w;
    uint8_t kind;
    uint16_t holds; /* backend operations in flight that will come back to this connection */
    uint32_t flags;
    char *in; /* unconsumed input, NULL when none */
    uint32_t in_len, in_cap;
    struct out_item *q; /* ring, NULL when empty */
    uint16_t q_head, q_len, q_cap;
    uint16_t q_mark; /* long-poll: items before this are earlier responses, not messages */
    uint32_t q_off;  /* bytes of the head item already written */
    uint32_t out_bytes;
    uint32_t replay_slack; /* history replay may pass max-outbound by this much until drained */
    struct timer timer;    /* header timeout / heartbeat / poll timeout / pong grace */
    struct timer life;     /* maximum lifetime (reconnect dither) */
    struct list link;      /* worker's dirty or closing list */
    struct list all;       /* worker's connection list */
    struct list subs;      /* struct sub.conn_link */
    uint64_t live_seq;     /* highest seq delivered live (long-poll cursor) */
    uint64_t cursor;       /* long-poll: cursor to answer when nothing arrives */
    union {
        struct http_state http;
        struct ws_state ws;
        struct {
            char *origin; /* echoed Access-Control-Allow-Origin, NULL for "*" */
        } poll;
    } u;
};

struct worker_counters {
    atomic_uint_fast64_t conns[CONN_KINDS];
    atomic_uint_fast64_t accepted;
    atomic_uint_fast64_t requests;
};

struct listener {
    struct io io;
    uint32_t flags; /* CF_API | CF_PUBLIC */
};

struct server;

struct worker {
    int id;
    struct server *srv;
    struct loop loop;
    pthread_t thread;
    struct listener listeners[CONFIG_MAX_LISTEN + 1];
    int nlisteners;
    struct list dirty;
    struct list closing;
    struct list conns;
    char *scratch;
    size_t scratch_size;
    struct ws_deflater *deflater;
    struct ws_inflater *inflater;
    struct timer tick;         /* once a second: channel sweep (worker 0), shutdown progress */
    struct timer accept_retry; /* accepting stopped at EMFILE: try again */
    bool accept_paused;
    uint64_t accept_warned_ms;
    bool draining;
    uint64_t drain_deadline;
    struct worker_counters ctr;
};

struct server {
    struct herald_config cfg;
    struct hub hub;
    struct worker *workers;
    int nworkers;
    atomic_bool shutdown;
    uint64_t started_ms;
    /* Called once every listener is bound and before any connection is accepted. */
    void (*on_listening)(struct server *srv);
    struct ctl_frames *ctl_reconnect_shutdown;
    struct ctl_frames *ctl_reconnect_lifetime;
};

/* Creates the workers and their listeners. Returns 0, or -errno after logging why. */
int server_start(struct server *srv);
/* Asks every worker to drain and stop (async-signal-safe). */
void server_request_shutdown(struct server *srv);
/*
 * Waits for the workers to finish draining: their threads exit, their loops stay, so
 * that a thread still answering them (the cluster backend) may go on posting to the
 * hub's inboxes until it stops. Then server_free.
 */
void server_join(struct server *srv);
/* Frees the workers. Nothing may post to them any more (the hub stays: the caller frees
 * it, which runs what was posted to them after they stopped). */
void server_free(struct server *srv);

/* ---- connection API used by http, transports and the api ---------------- */

/* Queues bytes owned by `owner` (a reference is taken) or static bytes (owner NULL). */
void conn_send(struct conn *c, struct ref *owner, const char *data, uint32_t len);
/* Queues a copy of data (for small per-connection replies). */
void conn_send_copy(struct conn *c, const void *data, size_t len);
/* Marks the connection for closing at the end of this loop pass. */
void conn_close(struct conn *c);
/* Closes once everything queued has been written (bounded by close grace). */
void conn_close_after_write(struct conn *c);
/* Drops every queued item not yet partly written (slow consumer cut-off). */
void conn_drop_queue(struct conn *c);
/* Drops queued items from index `keep` on (long-poll: the messages after q_mark). */
void conn_drop_queue_from(struct conn *c, uint16_t keep);
void conn_set_kind(struct conn *c, enum conn_kind kind);
/* Frees the input buffer when nothing is buffered. */
void conn_trim_input(struct conn *c);
/* Runs the connection's input handler over input kept while it was busy (pipelining). */
void conn_process_pending(struct conn *c);

/*
 * Keeps the connection struct alive for an asynchronous backend operation
 * (cluster mode): a connection closed meanwhile becomes a zombie (socket
 * closed, subscriptions gone) and is freed by the last conn_release().
 * conn_release() returns false when the connection is gone (zombie): the
 * caller must not touch it further.
 */
void conn_hold(struct conn *c);
bool conn_release(struct conn *c);
/* Parks a request until the backend is ready (channels syncing): the request
 * is left unconsumed and re-run by conn_resume(). */
void conn_park_retry(struct conn *c);
/* Un-parks: re-runs kept input (on the connection's worker thread). */
void conn_resume(struct conn *c);

/* Delivers one hub message to a subscriber connection (framed for its transport). */
void conn_deliver(struct conn *c, struct msg *m);
/* Brackets a history replay: the slow-consumer cap applies to live messages
 * only, so a client can always resume from a history larger than the cap. */
void conn_replay_begin(struct conn *c);
void conn_replay_end(struct conn *c);
/* Delivers a control event (gap, reconnect, closed, error) to a subscriber. */
void conn_deliver_ctl(struct conn *c, struct ctl_frames *f);
/* Starts the lifetime timer (uniform in [lifetime_min, lifetime_max]). */
void conn_start_lifetime(struct conn *c);

static inline struct server *conn_server(const struct conn *c);
static inline const struct herald_config *conn_cfg(const struct conn *c);

struct worker *worker_of(struct conn *c);
static inline struct server *conn_server(const struct conn *c)
{
    return c->w->srv;
}
static inline const struct herald_config *conn_cfg(const struct conn *c)
{
    return &c->w->srv->cfg;
}

#endif
