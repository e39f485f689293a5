/*
 * server: worker threads (one event loop each, SO_REUSEPORT listeners), the
 * connection object, its outbound queue of shared buffers, and fan-out of hub
 * messages to a worker's own connections.
 *
 * The server knows no protocol. A connection carries a table of handlers
 * (struct conn_ops) set by the protocol module that owns it now, as nginx
 * connections carry theirs: a listener hands new connections to the table it
 * was given (HTTP), and HTTP hands an upgraded connection to WebSocket, SSE,
 * long-poll or streaming. Each module keeps its per-connection state in
 * conn->proto, storage the server does not interpret.
 *
 * Memory per idle connection is the point of this file: a connection owns no
 * buffer while it is idle. Reads go to the worker's scratch buffer; only an
 * unfinished request or frame is copied into a buffer of the connection's own.
 * The outbound queue holds references to shared, already-framed bytes and is
 * released as soon as it drains.
 *
 * Threads: a connection is only ever touched by the worker that accepted it
 * (conn_* functions assert that in debug builds). Other threads reach it
 * through hub_post() on that worker.
 */
#ifndef HERALD_SERVER_H
#define HERALD_SERVER_H

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/latency.h"
#include "core/loop.h"
#include "core/outq.h"
#include "hub/batch.h"
#include "hub/hub.h"

/* What a connection is, for counting (stats, metrics). */
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
    CF_READ_PAUSED = 1u << 7,   /* the protocol waits (backend, held poll): parse nothing */
    CF_INPUT_WAIT = 1u << 8,    /* parsing stopped because the output is backed up */
    CF_EOF = 1u << 9,           /* peer shut down its write side */
    CF_LINGER = 1u << 10,       /* our side is shut; discard input until EOF or close grace */
    CF_RETRY = 1u << 11,        /* the request waits for the backend: keep it, re-run it later */
    CF_ZOMBIE = 1u << 12,       /* closed while the backend holds it: freed on the last release */
    CF_SEALED = 1u << 13,       /* the last bytes are queued (a close frame): nothing may follow */
    CF_PARSING = 1u << 14,      /* inside ops->on_read (debug check against re-entry) */
    CF_TRUSTED = 1u << 15,      /* the input now being received comes with credentials */
    CF_IN_TRUSTED_POOL = 1u << 16, /* its input buffer is charged to the credentialed pool */
    CF_READ_LATER = 1u << 17,      /* on its worker's read_later list */
    CF_TLS = 1u << 18,             /* accepted on a TLS listener (https://, wss://) */
    /* Bits from CF_PROTO_FIRST up belong to the protocol module that owns the connection
     * (its flags are cleared when conn_set_ops hands the connection to another). */
    CF_PROTO_FIRST = 1u << 20,
};
#define CF_PROTO_MASK (~(CF_PROTO_FIRST - 1u))

/* Bytes of per-connection protocol state (struct http_state, ws_state, poll_state...). */
#define CONN_PROTO_BYTES 64
/* Parsing stops while this much output waits to be written, and resumes below half. */
#define CONN_OUT_PAUSE_BYTES (64u * 1024u)

struct conn;
struct ctl_frames;
struct tls_conn;
struct tls_server;

/*
 * A protocol's handlers for the connections it owns. Called on the owning worker's
 * thread, never for a connection already closing (CF_CLOSING). NULL entries
 * mean "nothing to do" unless said otherwise.
 */
struct conn_ops {
    enum conn_kind kind;
    /* A listener accepted the connection (the server's accept_ops only). */
    void (*on_open)(struct conn *c);
    /* Consumes what it can of buf[0..len) (writable): returns the bytes used (the
     * rest is kept and offered again with more) or -1 to close at once. Loops over
     * several requests or frames check conn_may_parse() before each one. NULL:
     * input is read and dropped (the client has nothing to say). */
    long (*on_read)(struct conn *c, char *buf, size_t len);
    /* The connection's timer (conn_timer_start) fired. */
    void (*on_timer)(struct conn *c);
    /* The lifetime drawn by conn_start_lifetime is over. */
    void (*on_lifetime)(struct conn *c);
    /* The server drains (SIGTERM): finish or tell the client to go elsewhere. NULL: close. */
    void (*on_shutdown)(struct conn *c);
    /* A delivery would pass --max-outbound (slow consumer). NULL: close. */
    void (*on_slow)(struct conn *c);
    /* Input buffers of all connections reached --max-input-memory: refuse. NULL: close. */
    void (*on_busy)(struct conn *c);
    /* The request parked with conn_park() may run again. NULL: conn_resume_input(). */
    void (*on_resume)(struct conn *c);
    /* Before the connection's end-of-pass flush (a long-poll builds its answer). */
    void (*before_flush)(struct conn *c);
    /* A hub message or control event for a subscriber. */
    void (*deliver)(struct conn *c, struct msg *m);
    void (*deliver_ctl)(struct conn *c, struct ctl_frames *f);
    /* A channel the connection held was deleted (its subscription is gone already). */
    void (*on_channel_closed)(struct conn *c, struct channel *ch);
    /* The connection is being freed: release protocol state. */
    void (*on_free)(struct conn *c);
};

struct worker;

/*
 * State a module keeps for a connection's whole life, whichever protocol owns it
 * (the hooks module's session: its id, user and what its backend said). Embed it
 * first in the module's struct; the server calls free when it frees the connection,
 * before the connection's subscriptions go.
 */
struct conn_attach {
    void (*free)(struct conn *c, struct conn_attach *a);
};

struct conn {
    struct io io;
    struct worker *w;
    const struct conn_ops *ops;
    struct tls_conn *tls; /* the TLS session on a TLS listener's connection, else NULL */
    uint16_t holds;       /* backend operations in flight that will come back to this connection */
    uint32_t flags;
    char *in; /* unconsumed input, NULL when none */
    uint32_t in_len, in_cap;
    uint32_t in_charged;   /* bytes of `in` counted against --max-input-memory */
    uint32_t replay_slack; /* history replay may pass max-outbound by this much until drained */
    struct outq out;
    struct timer timer;         /* header timeout / heartbeat / poll timeout / pong grace */
    struct timer life;          /* maximum lifetime (reconnect dither) */
    struct list link;           /* worker's dirty or closing list */
    struct list all;            /* worker's connection list */
    struct list subs;           /* struct sub.conn_link */
    struct hub_tenant *tenant;  /* a subscriber's app (a reference, counted in its conns) */
    struct conn_attach *attach; /* a module's state for the connection's life, or NULL */
    union {
        uint64_t align;
        void *ptr;
        unsigned char bytes[CONN_PROTO_BYTES];
    } proto; /* the owning protocol's state; zeroed by conn_set_ops */
};

/* The owning protocol's state, as its own type: CONN_PROTO(c, struct ws_state). */
#define CONN_PROTO(c, type) ((type *)(void *)(c)->proto.bytes)
#define CONN_PROTO_FITS(type)                                                                      \
    _Static_assert(sizeof(type) <= CONN_PROTO_BYTES, #type " does not fit in conn->proto")

struct worker_counters {
    atomic_uint_fast64_t conns[CONN_KINDS];
    atomic_uint_fast64_t accepted;
    atomic_uint_fast64_t requests;
};

struct listener {
    struct io io;
    uint32_t flags; /* CF_API | CF_PUBLIC | CF_TLS */
};

struct server;
struct node_stats;

struct worker {
    int id;
    struct server *srv;
    struct loop loop;
    pthread_t thread;
    struct listener listeners[2 * CONFIG_MAX_LISTEN + 2]; /* plain and TLS, and the API's */
    int nlisteners;
    struct list dirty;
    struct list closing;
    struct list conns;
    char *scratch;
    size_t scratch_size;
    struct timer tick;         /* once a second: channel sweep (worker 0), shutdown progress */
    struct timer accept_retry; /* accepting stopped at EMFILE: try again */
    struct batch_set batches;  /* open delivery windows (channel option batch_ms) */
    struct timer batch_timer;  /* at the earliest window's deadline */
    bool accept_paused;
    uint64_t accept_warned_ms;
    struct conn **read_later; /* connections with input left for the next pass (held) */
    uint32_t nread_later, read_later_cap;
    bool draining;
    uint64_t drain_deadline;
    struct worker_counters ctr;
    /* The message fan-out delivers now: the items its deliveries queue are stamped (their
     * writing counts in `latency`). NULL otherwise (a history replay, an answer). */
    struct ref *live;
    /* Delivery latency of this worker's live messages, from their arrival on the node to
     * the write that completed their frame (written by this thread only, see latency.h). */
    struct lat_hist latency;
};

struct server {
    struct herald_config cfg;
    struct hub hub;
    struct worker *workers;
    int nworkers;
    atomic_bool shutdown;
    uint64_t started_ms;
    /* The handlers of a newly accepted connection (HTTP). Set before server_start. */
    const struct conn_ops *accept_ops;
    /* The certificate of the TLS listeners (NULL without any). SIGHUP: server_reload_tls. */
    struct tls_server *tls;
    /* Called once every listener is bound and before any connection is accepted. */
    void (*on_listening)(struct server *srv);
    /* Input buffers charged to --max-input-memory: [0] anonymous clients, [1] clients
     * with credentials (CF_TRUSTED). */
    atomic_uint_fast64_t input_bytes[2];
    atomic_uint_fast64_t conns_open; /* all workers' connections (--max-connections) */
    /* The figures sampled once a second (node_stats.h), made by server_start. */
    struct node_stats *stats;
};

/* Creates the workers and their listeners. Returns 0, or -errno after logging why. */
int server_start(struct server *srv);
/* Reads the TLS certificate and key again (SIGHUP): new handshakes use them, live
 * connections keep theirs. Returns 0, -1 after logging why (the old ones stay), or 1
 * when there are no TLS listeners. */
int server_reload_tls(struct server *srv);
/* Asks every worker to drain and stop (async-signal-safe). */
void server_request_shutdown(struct server *srv);
/*
 * Waits for the workers to finish draining: their threads exit, their loops stay, so
 * that a thread still answering them (the cluster backend) may go on posting to the
 * hub's inboxes until it stops. Then server_free.
 */
void server_join(struct server *srv);
/* Runs what was posted to the workers after they stopped, then frees them. Nothing may
 * post to them any more (the hub stays: the caller frees it). */
void server_free(struct server *srv);

/* ---- connection API used by the protocol modules ----------------------------- */

/* Hands the connection to another protocol: counts it under ops->kind, clears the
 * protocol's flags and zeroes conn->proto. The old owner must have released its state. */
void conn_set_ops(struct conn *c, const struct conn_ops *ops);

/*
 * Queues an answer to the connection's own input: bytes owned by `owner` (a
 * reference is taken) or static bytes (owner NULL). Answers are not capped one by
 * one: input is not parsed while CONN_OUT_PAUSE_BYTES wait (conn_may_parse), so at
 * most one answer queues up behind that. Nothing is queued once the connection is
 * sealed or closing.
 */
void conn_send(struct conn *c, struct ref *owner, const char *data, uint32_t len);
/* Queues a private copy of data. */
void conn_send_copy(struct conn *c, const void *data, size_t len);
/*
 * Queues a delivery (a message or control event the client did not ask for just
 * now): when it would pass --max-outbound behind unsent bytes, ops->on_slow runs
 * instead (the slow consumer is cut) and false is returned. A connection whose
 * queue is empty accepts one delivery of any size.
 */
bool conn_deliver_bytes(struct conn *c, struct ref *owner, const char *data, uint32_t len);
/* Whether owner is the message the worker's fan-out is delivering live now: a protocol
 * that queues it elsewhere first (a held long-poll) stamps its item (out_item.stamped). */
static inline bool conn_delivering_live(const struct conn *c, const struct ref *owner);
/* Queues an answer item as conn_send does, keeping its stamp (a long-poll's collected
 * messages). */
void conn_send_item(struct conn *c, const struct out_item *it);
/* Runs ops->before_flush and the flush at the end of this loop pass, even when
 * nothing is queued yet (a long-poll that collected messages). */
void conn_want_flush(struct conn *c);
/* Queues a copy of data that ends the item queued just before it (one event in two
 * items): dropping the queue never keeps one without the other. */
void conn_send_copy_glued(struct conn *c, const void *data, size_t len);
/* Marks the connection for closing at the end of this loop pass. */
void conn_close(struct conn *c);
/* Closes once everything queued has been written (bounded by close grace). */
void conn_close_after_write(struct conn *c);
/* Nothing may be queued after what is queued now (a WebSocket close frame). */
void conn_seal(struct conn *c);
/* Drops every queued item not yet partly written (slow consumer cut-off). */
void conn_drop_queue(struct conn *c);

/*
 * Whether the protocol may parse (and answer) more input now: not while the
 * connection is closing or paused (CF_READ_PAUSED), nor while its output is
 * backed up (then parsing resumes by itself once the client reads).
 */
bool conn_may_parse(struct conn *c);
/* Frees the input buffer when nothing is buffered. */
void conn_trim_input(struct conn *c);
/* Runs the input handler over kept input, then reads the socket again (pipelining,
 * after a pause): in the worker's next loop pass, after the other connections had
 * their turn. */
void conn_resume_input(struct conn *c);

/*
 * Keeps the connection struct alive for an asynchronous backend operation
 * (cluster mode): a connection closed meanwhile becomes a zombie (socket
 * closed, subscriptions gone) and is freed by the last conn_release().
 * conn_release() returns false when the connection is gone (zombie): the
 * caller must not touch it further.
 */
void conn_hold(struct conn *c);
bool conn_release(struct conn *c);
/* Parks a request until the backend is ready (channels syncing): the request is
 * left unconsumed and the hub's on_synced wake-up runs ops->on_resume. Takes a hold. */
void conn_park(struct conn *c);
/* Ends a conn_park() (its hold) from the connection's worker: ops->on_resume re-runs
 * the request unless the connection went meanwhile (then it may be freed). */
void conn_unpark(struct conn *c);

/* Brackets a history replay: the slow-consumer cap applies to live messages
 * only, so a client can always resume from a history larger than the cap. */
void conn_replay_begin(struct conn *c);
void conn_replay_end(struct conn *c);
/* Starts the lifetime timer (uniform in [lifetime_min, lifetime_max]). */
void conn_start_lifetime(struct conn *c);
/* When the lifetime timer fires (the loop's monotonic ms), 0 when it is not armed. */
uint64_t conn_lifetime_end(const struct conn *c);
/* Re-arms the lifetime timer to fire at `at` (the loop's monotonic ms; now if past):
 * a protocol may end a connection earlier than its lifetime (a token's expiry). */
void conn_lifetime_at(struct conn *c, uint64_t at);
/* The worker loop's clock (monotonic ms, refreshed once per pass). */
uint64_t conn_now(const struct conn *c);
void conn_timer_start(struct conn *c, uint64_t after_ms);
void conn_timer_stop(struct conn *c);

/* Internal to src/core (conn.c and server.c). */
void conn__mark_dirty(struct conn *c);
void conn__flush_dirty(struct conn *c);
void conn__on_writable(struct conn *c);
void conn__read(struct conn *c);
void conn__resume_parked(struct conn *c);
void conn__timer_cb(struct loop *loop, struct timer *t);
void conn__life_cb(struct loop *loop, struct timer *t);
void conn__free(struct conn *c);
/* Parses kept input and reads the socket in the worker's next pass (its read budget is
 * spent, or its input was paused); conn__resume_now is what that pass runs. */
void worker__read_later(struct conn *c);
void conn__resume_now(struct conn *c);
/* The worker whose thread this is (NULL on other threads). */
extern _Thread_local struct worker *worker__current;

#ifndef NDEBUG
/* The calling thread is the connection's worker (debug builds). */
bool conn_on_own_worker(const struct conn *c);
#define CONN_ASSERT_OWNER(c) assert(conn_on_own_worker(c))
#else
#define CONN_ASSERT_OWNER(c) ((void)0)
#endif

static inline struct server *conn_server(const struct conn *c)
{
    return c->w->srv;
}
static inline const struct herald_config *conn_cfg(const struct conn *c)
{
    return &c->w->srv->cfg;
}
static inline int conn_worker_id(const struct conn *c)
{
    return c->w->id;
}
static inline struct hub *conn_hub(const struct conn *c)
{
    return &c->w->srv->hub;
}
static inline bool conn_delivering_live(const struct conn *c, const struct ref *owner)
{
    return owner && owner == c->w->live;
}

#endif
