/*
 * resp_conn: one non-blocking connection to one Redis node, driven by our
 * edge-triggered loop. hiredis is used only to format commands and parse RESP
 * (Debian's 0.14 async API asserts on sharded pub/sub pushes and has no TLS);
 * the socket I/O, TLS (OpenSSL), pipelining, reply dispatch and reconnects
 * are ours.
 *
 * Life of a connection: CONNECTING (TCP connect, with TLS the handshake and
 * certificate check, then AUTH / SELECT / CLIENT SETNAME pipelined ahead of
 * anything the owner queued) -> READY
 * (on_ready) -> on any failure: every pending command's callback gets a
 * synthetic error, on_down runs, and a reconnect is tried after an
 * exponential backoff (100 ms doubling to 5 s, with jitter) -> CONNECTING ...
 *
 * With reply_timeout_ms, a server that stops answering (SIGSTOP, a stalled
 * host, a silent network) is a failure like a reset: when commands wait and
 * nothing has come from the server for that long, the connection fails with
 * RESP_ENOREPLY (pending callbacks get it) and reconnects. An idle connection
 * sends a PING after that long, so the silence is noticed without traffic,
 * subscriber connections included.
 *
 * Subscriptions are not replayed by the connection: the owner re-issues them
 * from on_ready, because only the owner knows which ones are still wanted.
 */
#ifndef HERALD_RESP_CONN_H
#define HERALD_RESP_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct loop;
struct resp_conn;

/* Errors (negative) passed as `status` to reply callbacks and returned by calls. */
enum resp_error {
    RESP_ENOTCONN = -1000, /* down (waiting to reconnect): command not queued */
    RESP_ELOST,            /* the connection failed before the reply arrived */
    RESP_ECANCELED,        /* the connection was freed before the reply arrived */
    RESP_ENOBUFS,          /* the output buffer limit would be exceeded */
    RESP_EINVAL,           /* bad arguments (e.g. UNSUBSCRIBE without channels) */
    RESP_EPROTO,           /* the server sent something we cannot parse */
    RESP_ETIMEDOUT,        /* connect + handshake took longer than connect_timeout_ms */
    RESP_EHANDSHAKE,       /* AUTH or SELECT was refused */
    RESP_EREDIRECT,        /* (router) too many MOVED/ASK redirections */
    RESP_EDEADLINE,        /* (router) gave up retrying at the command's deadline */
    RESP_ETLS,             /* TLS handshake or record error (see resp_conn_error_detail) */
    RESP_ETLSVERIFY,       /* the server's certificate or name did not verify */
    RESP_ETLSCONFIG,       /* cannot load the CA, certificate or key file */
    RESP_ENOREPLY,         /* the server sent nothing for reply_timeout_ms while a reply was due */
};
const char *resp_strerror(int err);

/*
 * Reply callback, called exactly once per queued command. status == 0: the
 * server answered and `reply` is its answer (which may be an error reply).
 * status < 0 (enum resp_error): the command did not complete (it may or may
 * not have run on the server); `reply` is a synthetic REDIS_REPLY_ERROR
 * carrying resp_strerror(status). `reply` is borrowed for the call.
 *
 * For (S|P)SUBSCRIBE and (S|P)UNSUBSCRIBE with N channels the callback runs
 * once, with the last of the N confirmations (or with the error reply).
 */
typedef void resp_reply_fn(const redisReply *reply, int status, void *arg);

/*
 * TLS to the server. The files are read again at every (re)connect, so a
 * replaced certificate is picked up by the next reconnect, and a bad file is
 * a connection failure (RESP_ETLSCONFIG) retried with backoff like any other.
 */
struct resp_tls_opts {
    const char *ca_file;     /* PEM CA bundle to verify against; NULL: the system store */
    const char *cert_file;   /* PEM client certificate chain (mutual TLS); NULL: none */
    const char *key_file;    /* PEM key of cert_file; NULL: in cert_file itself */
    const char *server_name; /* name (or IP) to verify and send as SNI; NULL: the host */
    bool insecure;           /* skip certificate and name verification */
};

/* A deep copy (every string copied), NULL for NULL; free with resp_tls_opts_free. */
struct resp_tls_opts *resp_tls_opts_dup(const struct resp_tls_opts *tls);
void resp_tls_opts_free(struct resp_tls_opts *tls);

struct resp_conn_opts {
    const char *username;            /* copied; NULL: AUTH with the password only */
    const char *password;            /* copied; NULL: no AUTH */
    int db;                          /* SELECT when > 0 */
    unsigned connect_timeout_ms;     /* connect + handshake; 0: 2000 */
    unsigned reply_timeout_ms;       /* silence while replies are due (see above); 0: none */
    const char *name;                /* copied; log prefix and CLIENT SETNAME (if no spaces) */
    size_t max_output;               /* queued-but-unsent bytes; 0: 64 MiB */
    const struct resp_tls_opts *tls; /* copied; NULL: plain TCP */
};

struct resp_conn_callbacks {
    /* Connected and handshake done; (re)subscribe here. */
    void (*on_ready)(struct resp_conn *conn, void *arg);
    /* The connection failed (err: RESP_E* or -errno); pending callbacks have run. */
    void (*on_down)(struct resp_conn *conn, int err, void *arg);
    /*
     * A pub/sub push while subscribed: an array whose first element is
     * "message", "pmessage" or "smessage", or an unsolicited "sunsubscribe"
     * (the server dropped a shard channel whose slot moved). Borrowed.
     */
    void (*on_push)(struct resp_conn *conn, const redisReply *push, void *arg);
    void *arg;
};

/*
 * Creates a connection to host:port and starts connecting at once. Strings in
 * opts are copied; callbacks are copied. A host that is not a numeric address
 * is resolved here, once, with a blocking lookup (start-up time), and the
 * address is reused for reconnects. Returns NULL if host cannot be resolved.
 */
struct resp_conn *resp_conn_new(struct loop *loop, const char *host, int port,
                                const struct resp_conn_opts *opts,
                                const struct resp_conn_callbacks *cbs);

/*
 * Queues a command (pipelined; replies go to callbacks in FIFO order).
 * argv/argvlen are copied (argvlen NULL: strlen of each). Accepted while
 * connecting (sent after the handshake) and while ready. Returns 0 (cb will be
 * called exactly once, never from inside this call) or RESP_ENOTCONN,
 * RESP_ENOBUFS, RESP_EINVAL, RESP_ECANCELED (cb will not be called).
 */
int resp_command_argv(struct resp_conn *conn, resp_reply_fn *cb, void *arg, int argc,
                      const char **argv, const size_t *argvlen);
/*
 * The same for a command already in RESP form (e.g. kept for a resend); it must
 * not be a (un)subscribe command. cmd is copied.
 */
int resp_command_formatted(struct resp_conn *conn, resp_reply_fn *cb, void *arg, const char *cmd,
                           size_t len);

/* Frees the connection; pending callbacks get RESP_ECANCELED. Safe inside any of its
 * callbacks (the free is deferred until the callback returns). NULL is ignored. */
void resp_conn_free(struct resp_conn *conn);

bool resp_conn_ready(const struct resp_conn *conn);
/* Commands queued and not yet answered. */
size_t resp_conn_pending(const struct resp_conn *conn);
/* "host:port" (borrowed, lives as long as conn). */
const char *resp_conn_addr(const struct resp_conn *conn);
const char *resp_conn_host(const struct resp_conn *conn);
int resp_conn_port(const struct resp_conn *conn);
/* What went wrong in the last failure in OpenSSL's words (TLS errors), else ""
 * (borrowed, valid until the next connect attempt). */
const char *resp_conn_error_detail(const struct resp_conn *conn);

/* Reply helpers (NULL-safe). */
bool resp_reply_is_error(const redisReply *r);
/* Whether r is a string/status/error equal to s. */
bool resp_reply_str_eq(const redisReply *r, const char *s);

#endif
