/*
 * resp_conn: socket I/O, pipelining and reply dispatch for one Redis node on
 * our edge-triggered loop. Commands are appended to one output buffer (the
 * handshake first, so AUTH always precedes the owner's commands) and flushed
 * by a zero-delay timer, which coalesces everything queued during one loop
 * pass into few writes. Replies are matched FIFO against the pending list;
 * pub/sub pushes are recognised by shape while the server says we are
 * subscribed. Entry points from the loop bump `depth`, so a free requested by
 * a callback is deferred until the outermost entry point unwinds.
 *
 * TLS sits between the socket and those buffers. OpenSSL reads the socket
 * itself, but writes its records into a memory BIO that we send from
 * (tls_send): it never meets a full socket, so it never stops halfway through
 * a record -- a record left half-written makes the handshake messages that a
 * read may have to send (renegotiation, key update) fail with "bad length".
 * Instead we stop encrypting while the socket is full, and while a
 * renegotiation runs (SSL_read drives it). With an edge-triggered loop every
 * read must stop on "would block" for a later edge to wake us: SSL_read runs
 * until WANT_READ, which also drains the records OpenSSL buffered.
 */
#include "cluster/resp_conn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/poller.h"
#include "core/util.h"

#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 5000u

enum conn_state { ST_CONNECTING, ST_READY, ST_BACKOFF };

struct cmd {
    struct list link;
    resp_reply_fn *cb;
    void *arg;
    uint32_t nreplies;   /* confirmations still expected (subscribe family), else 1 */
    const char *confirm; /* static lowercase confirmation name, NULL for plain commands */
};

struct resp_conn {
    struct loop *loop;
    struct io io;
    struct timer connect_timer; /* connect + handshake deadline; also reports sync errors */
    struct timer retry_timer;   /* backoff before reconnecting */
    struct timer flush_timer;   /* zero-delay: write what this pass queued */
    struct timer reply_timer;   /* reply_timeout_ms: silence while replies are due, idle PING */
    struct sockaddr_storage sa;
    socklen_t salen;
    char *host;
    int port;
    char *addr; /* "host:port" */
    char *username, *password, *name;
    int db;
    unsigned connect_timeout_ms;
    unsigned reply_timeout_ms;
    uint64_t heard_at; /* loop time the server last sent bytes (or a reply became due) */
    size_t max_output;
    struct resp_conn_callbacks cbs;
    struct resp_tls_opts *tls; /* owned; NULL: plain TCP */

    enum conn_state state;
    bool connected;       /* TCP connect finished */
    bool stream_up;       /* RESP bytes may flow: connected and, with TLS, handshake done */
    bool writable;        /* a write may make progress (no "would block" since the last edge) */
    SSL *ssl;             /* with TLS, from the connect attempt until the socket closes */
    BIO *wbio;            /* ssl's output, a memory BIO owned by ssl: records for tls_send */
    bool ssl_broken;      /* a fatal TLS error: no close_notify */
    size_t ssl_retry_len; /* an SSL_write that must be repeated with this length (0: none) */
    int deferred_err;     /* connect failed synchronously; reported by connect_timer */
    int fail_err;         /* set inside dispatch (handshake refused), acted on after it */
    int streak_err;       /* the last failure logged in this reconnect streak */
    char detail[256];     /* OpenSSL's words about the last failure, or "" */
    unsigned attempt;     /* consecutive failures, for the backoff */
    unsigned handshake_left;
    uint64_t rng;

    struct sbuf out;
    size_t out_off;
    redisReader *reader;
    struct list pending;
    size_t npending;
    long long nsub, nssub; /* subscription counts the server reported */

    unsigned depth;
    bool free_requested;
};

const char *resp_strerror(int err)
{
    switch (err) {
    case 0: return "ok";
    case RESP_ENOTCONN: return "redis connection is down";
    case RESP_ELOST: return "redis connection lost before the reply";
    case RESP_ECANCELED: return "redis connection closed by its owner";
    case RESP_ENOBUFS: return "redis output buffer full";
    case RESP_EINVAL: return "invalid redis command";
    case RESP_EPROTO: return "redis protocol error";
    case RESP_ETIMEDOUT: return "redis connect timed out";
    case RESP_EHANDSHAKE: return "redis AUTH/SELECT refused";
    case RESP_EREDIRECT: return "too many redis cluster redirections";
    case RESP_EDEADLINE: return "redis command deadline exceeded";
    case RESP_ETLS: return "redis TLS error";
    case RESP_ETLSVERIFY: return "redis TLS certificate verification failed";
    case RESP_ETLSCONFIG: return "cannot set up TLS to redis";
    case RESP_ENOREPLY: return "redis stopped answering";
    default: return err < 0 && err > -4096 ? strerror(-err) : "unknown redis error";
    }
}

bool resp_reply_is_error(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR;
}

bool resp_reply_str_eq(const redisReply *r, const char *s)
{
    if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS &&
               r->type != REDIS_REPLY_ERROR))
        return false;
    size_t n = strlen(s);
    return r->len == n && memcmp(r->str, s, n) == 0;
}

static void call_failed(resp_reply_fn *cb, void *arg, int status)
{
    const char *msg = resp_strerror(status);
    redisReply r = {.type = REDIS_REPLY_ERROR, .str = (char *)msg, .len = strlen(msg)};
    cb(&r, status, arg);
}

/* Runs every pending callback with `status`; they may queue or free (both deferred). */
static void fail_pending(struct resp_conn *c, int status)
{
    struct list head, *pos, *tmp;
    list_init(&head);
    if (!list_empty(&c->pending)) {
        head = c->pending;
        head.next->prev = &head;
        head.prev->next = &head;
        list_init(&c->pending);
    }
    c->npending = 0;
    list_for_each_safe(pos, tmp, &head)
    {
        struct cmd *cmd = container_of(pos, struct cmd, link);
        list_remove(pos);
        call_failed(cmd->cb, cmd->arg, status);
        free(cmd);
    }
}

static void tls_close(struct resp_conn *c, bool clean);

/* clean: the owner closes a healthy connection (a TLS server is told so). */
static void close_socket(struct resp_conn *c, bool clean)
{
    if (c->ssl)
        tls_close(c, clean);
    if (c->io.fd >= 0) {
        loop_del(c->loop, &c->io);
        close(c->io.fd);
        c->io.fd = -1;
    }
    c->connected = c->stream_up = c->writable = false;
    c->wbio = NULL;
    c->ssl_broken = false;
    c->ssl_retry_len = 0;
    c->out.len = c->out_off = 0;
    c->nsub = c->nssub = 0;
    c->fail_err = 0;
    redisReaderFree(c->reader);
    c->reader = redisReaderCreate();
    timer_stop(c->loop, &c->connect_timer);
    timer_stop(c->loop, &c->flush_timer);
    timer_stop(c->loop, &c->reply_timer);
}

static uint64_t next_rand(struct resp_conn *c)
{
    /* xorshift64: jitter only, not security. */
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

static unsigned backoff_ms(struct resp_conn *c)
{
    unsigned base = BACKOFF_MIN_MS << MIN(c->attempt, 6u);
    base = MIN(base, BACKOFF_MAX_MS);
    c->attempt++;
    /* "Equal jitter": half fixed, half random, so a fleet does not reconnect in step. */
    return base / 2 + (unsigned)(next_rand(c) % (base / 2 + 1));
}

/* Called only from loop entry points (never from inside dispatch or a user call). */
static void conn_fail(struct resp_conn *c, int err)
{
    if (c->state == ST_BACKOFF)
        return;
    bool was_ready = c->state == ST_READY;
    close_socket(c, false);
    c->state = ST_BACKOFF;
    unsigned delay = backoff_ms(c);
    timer_start(c->loop, &c->retry_timer, delay);
    const char *sep = c->detail[0] ? ": " : "";
    /* Once per reconnect streak; a TLS failure also when it is new in the streak (refused
     * while Redis restarts, then a certificate that no longer verifies). */
    bool tls_news = err >= RESP_ETLS && err <= RESP_ETLSCONFIG && err != c->streak_err;
    if (was_ready || c->attempt <= 1 || tls_news)
        log_warn("redis %s (%s): %s%s%s; reconnecting in %u ms", c->addr, c->name ? c->name : "-",
                 resp_strerror(err), sep, c->detail, delay);
    else
        log_debug("redis %s: %s%s%s; retry in %u ms", c->addr, resp_strerror(err), sep, c->detail,
                  delay);
    c->streak_err = err;
    fail_pending(c, err == RESP_ENOREPLY ? RESP_ENOREPLY : RESP_ELOST);
    if (!c->free_requested && c->cbs.on_down)
        c->cbs.on_down(c, err, c->cbs.arg);
}

static void reap(struct resp_conn *c)
{
    c->depth++; /* callbacks below may call resp_conn_free again: ignored */
    close_socket(c, true);
    timer_stop(c->loop, &c->retry_timer);
    fail_pending(c, RESP_ECANCELED);
    redisReaderFree(c->reader);
    sbuf_free(&c->out);
    free(c->host);
    free(c->addr);
    free(c->username);
    free(c->password);
    free(c->name);
    resp_tls_opts_free(c->tls);
    free(c);
}

static void enter(struct resp_conn *c)
{
    c->depth++;
}

/* Unwinds an entry point; c may be gone afterwards. */
static void leave(struct resp_conn *c)
{
    if (--c->depth == 0 && c->free_requested)
        reap(c);
}

void resp_conn_free(struct resp_conn *c)
{
    if (!c || c->free_requested)
        return;
    c->free_requested = true;
    if (c->depth == 0)
        reap(c);
}

static void schedule_flush(struct resp_conn *c)
{
    if (c->stream_up && c->writable && !timer_armed(&c->flush_timer))
        timer_start(c->loop, &c->flush_timer, 0);
}

static int queue_raw(struct resp_conn *c, resp_reply_fn *cb, void *arg, const char *data,
                     size_t len, const char *confirm, uint32_t nreplies)
{
    if (c->free_requested)
        return RESP_ECANCELED;
    if (c->state == ST_BACKOFF)
        return RESP_ENOTCONN;
    if (c->out.len - c->out_off + len > c->max_output)
        return RESP_ENOBUFS;
    if (c->out_off && c->out_off >= c->out.len / 2) {
        memmove(c->out.data, c->out.data + c->out_off, c->out.len - c->out_off);
        c->out.len -= c->out_off;
        c->out_off = 0;
    }
    sbuf_add(&c->out, data, len);
    struct cmd *cmd = xmalloc(sizeof(*cmd));
    *cmd = (struct cmd){.cb = cb, .arg = arg, .nreplies = nreplies, .confirm = confirm};
    list_insert_tail(&c->pending, &cmd->link);
    if (c->npending++ == 0)
        c->heard_at = c->loop->now; /* the silence that counts starts now */
    schedule_flush(c);
    return 0;
}

/* The confirmation each subscribe-family command produces (one per channel). */
static const char *confirm_name(const char *name, size_t len)
{
    static const char *const names[] = {"subscribe",   "psubscribe",   "ssubscribe",
                                        "unsubscribe", "punsubscribe", "sunsubscribe"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        if (strlen(names[i]) == len && strncasecmp(names[i], name, len) == 0)
            return names[i];
    return NULL;
}

int resp_command_argv(struct resp_conn *c, resp_reply_fn *cb, void *arg, int argc,
                      const char **argv, const size_t *argvlen)
{
    if (argc < 1 || !cb)
        return RESP_EINVAL;
    const char *confirm = confirm_name(argv[0], argvlen ? argvlen[0] : strlen(argv[0]));
    /* Without channels the number of confirmations is unknown in advance. */
    if (confirm && argc < 2)
        return RESP_EINVAL;
    char *buf;
    int len = redisFormatCommandArgv(&buf, argc, argv, argvlen);
    if (len < 0)
        return RESP_EINVAL;
    int rc = queue_raw(c, cb, arg, buf, (size_t)len, confirm, confirm ? (uint32_t)argc - 1 : 1);
    redisFreeCommand(buf);
    return rc;
}

int resp_command_formatted(struct resp_conn *c, resp_reply_fn *cb, void *arg, const char *cmd,
                           size_t len)
{
    if (!cb || !len)
        return RESP_EINVAL;
    return queue_raw(c, cb, arg, cmd, len, NULL, 1);
}

static void become_ready(struct resp_conn *c)
{
    c->state = ST_READY;
    c->attempt = 0;
    c->streak_err = 0;
    timer_stop(c->loop, &c->connect_timer);
    c->heard_at = c->loop->now;
    if (c->reply_timeout_ms)
        timer_start(c->loop, &c->reply_timer, c->reply_timeout_ms);
    log_debug("redis %s: ready", c->addr);
    if (c->cbs.on_ready)
        c->cbs.on_ready(c, c->cbs.arg);
}

static void handshake_step(struct resp_conn *c, const redisReply *r, int status, bool fatal)
{
    if (status < 0)
        return; /* the connection is failing already */
    if (fatal && resp_reply_is_error(r)) {
        log_error("redis %s: handshake refused: %.*s", c->addr, (int)r->len, r->str);
        c->fail_err = RESP_EHANDSHAKE;
        return;
    }
    if (--c->handshake_left == 0 && !c->fail_err)
        become_ready(c);
}

static void handshake_required(const redisReply *r, int status, void *arg)
{
    handshake_step(arg, r, status, true);
}

static void handshake_optional(const redisReply *r, int status, void *arg)
{
    handshake_step(arg, r, status, false);
}

static void queue_handshake(struct resp_conn *c)
{
    char dbs[16];
    const char *argv[3];
    c->handshake_left = 0;
    if (c->password) {
        int n = 0;
        argv[n++] = "AUTH";
        if (c->username)
            argv[n++] = c->username;
        argv[n++] = c->password;
        if (resp_command_argv(c, handshake_required, c, n, argv, NULL) == 0)
            c->handshake_left++;
    }
    if (c->db > 0) {
        snprintf(dbs, sizeof(dbs), "%d", c->db);
        argv[0] = "SELECT";
        argv[1] = dbs;
        if (resp_command_argv(c, handshake_required, c, 2, argv, NULL) == 0)
            c->handshake_left++;
    }
    if (c->name && !strpbrk(c->name, " \n")) {
        argv[0] = "CLIENT";
        argv[1] = "SETNAME";
        argv[2] = c->name;
        if (resp_command_argv(c, handshake_optional, c, 3, argv, NULL) == 0)
            c->handshake_left++;
    }
}

static bool is_push(struct resp_conn *c, const redisReply *r)
{
    if ((!c->nsub && !c->nssub) || r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return false;
    const redisReply *kind = r->element[0];
    if (resp_reply_str_eq(kind, "message") || resp_reply_str_eq(kind, "smessage") ||
        (resp_reply_str_eq(kind, "pmessage") && r->elements >= 4))
        return true;
    if (!resp_reply_str_eq(kind, "sunsubscribe"))
        return false;
    /* A sunsubscribe nobody asked for: the server dropped the channel (slot moved). */
    struct cmd *head =
        list_empty(&c->pending) ? NULL : container_of(c->pending.next, struct cmd, link);
    if (head && head->confirm && strcmp(head->confirm, "sunsubscribe") == 0)
        return false;
    if (r->element[2]->type == REDIS_REPLY_INTEGER)
        c->nssub = r->element[2]->integer;
    return true;
}

static void note_confirmation(struct resp_conn *c, const struct cmd *cmd, const redisReply *r)
{
    if (r->elements < 3 || r->element[2]->type != REDIS_REPLY_INTEGER)
        return;
    if (strcmp(cmd->confirm, "ssubscribe") == 0 || strcmp(cmd->confirm, "sunsubscribe") == 0)
        c->nssub = r->element[2]->integer;
    else
        c->nsub = r->element[2]->integer;
}

/* Returns 0, or RESP_EPROTO for a reply nobody asked for. */
static int dispatch_one(struct resp_conn *c, const redisReply *r)
{
    if (is_push(c, r)) {
        if (c->cbs.on_push)
            c->cbs.on_push(c, r, c->cbs.arg);
        return 0;
    }
    if (list_empty(&c->pending))
        return RESP_EPROTO;
    struct cmd *cmd = container_of(c->pending.next, struct cmd, link);
    if (cmd->confirm && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        resp_reply_str_eq(r->element[0], cmd->confirm)) {
        note_confirmation(c, cmd, r);
        if (--cmd->nreplies > 0)
            return 0;
    }
    list_remove(&cmd->link);
    c->npending--;
    cmd->cb(r, 0, cmd->arg);
    free(cmd);
    return 0;
}

/* Dispatches every complete reply; returns 0 or the error to fail the connection with. */
static int dispatch_replies(struct resp_conn *c)
{
    while (!c->free_requested && !c->fail_err) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK)
            return RESP_EPROTO;
        if (!reply)
            return 0;
        int rc = dispatch_one(c, reply);
        freeReplyObject(reply);
        if (rc)
            return rc;
    }
    return c->fail_err;
}

/* ---- TLS ----------------------------------------------------------------------------- */

static void detail_add(struct resp_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Appends to c->detail, ": "-separated, truncating quietly. */
static void detail_add(struct resp_conn *c, const char *fmt, ...)
{
    size_t len = strlen(c->detail);
    if (len + 3 >= sizeof(c->detail))
        return;
    if (len) {
        memcpy(c->detail + len, ": ", 3);
        len += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail + len, sizeof(c->detail) - len, fmt, ap);
    va_end(ap);
}

/* Moves OpenSSL's error queue (this thread's) into c->detail, skipping repeats; a system
 * error (a file that cannot be opened) says all there is to say. */
static void detail_add_openssl(struct resp_conn *c)
{
    unsigned long e, prev = 0;
    while ((e = ERR_get_error()) != 0) {
        if (ERR_SYSTEM_ERROR(e)) {
            detail_add(c, "%s", strerror(ERR_GET_REASON(e)));
            ERR_clear_error();
            return;
        }
        if (ERR_GET_REASON(e) == ERR_GET_REASON(prev) && ERR_GET_LIB(e) == ERR_GET_LIB(prev))
            continue;
        prev = e;
        const char *reason = ERR_reason_error_string(e);
        char code[128];
        if (!reason) {
            ERR_error_string_n(e, code, sizeof(code));
            reason = code;
        }
        detail_add(c, "%s", reason);
    }
}

static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    return 0; /* an encrypted key fails to load rather than prompting on a terminal */
}

/* Loads the files for one connect attempt; NULL with c->detail saying why. */
static SSL_CTX *tls_ctx_new(struct resp_conn *c)
{
    const struct resp_tls_opts *t = c->tls;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A server that dies without close_notify reads as a reset, as over plain TCP (RESP
     * is self-delimiting, so a truncation cannot pass for a complete reply). */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    SSL_CTX_set_verify(ctx, t->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    int trusted = t->insecure  ? 1
                  : t->ca_file ? SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL)
                               : SSL_CTX_set_default_verify_paths(ctx);
    if (!trusted) {
        detail_add(c, "CA file %s", t->ca_file ? t->ca_file : "(the system store)");
        goto fail;
    }
    if (t->cert_file && !SSL_CTX_use_certificate_chain_file(ctx, t->cert_file)) {
        detail_add(c, "certificate file %s", t->cert_file);
        goto fail;
    }
    const char *key = t->key_file ? t->key_file : t->cert_file;
    if (key && (!SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) ||
                !SSL_CTX_check_private_key(ctx))) {
        detail_add(c, "key file %s", key);
        goto fail;
    }
    return ctx;
fail:
    detail_add_openssl(c);
    SSL_CTX_free(ctx);
    return NULL;
}

static const char *tls_name(const struct resp_conn *c)
{
    return c->tls->server_name ? c->tls->server_name : c->host;
}

/* A TLS session for this connect attempt, its peer name set; 0 or RESP_ETLSCONFIG. */
static int tls_session_new(struct resp_conn *c)
{
    ERR_clear_error();
    SSL_CTX *ctx = tls_ctx_new(c);
    if (!ctx)
        return RESP_ETLSCONFIG;
    c->ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the session holds its own reference */
    const char *name = tls_name(c);
    unsigned char bin[16];
    bool is_ip = inet_pton(AF_INET, name, bin) == 1 || inet_pton(AF_INET6, name, bin) == 1;
    X509_VERIFY_PARAM *vp = c->ssl ? SSL_get0_param(c->ssl) : NULL;
    if (vp)
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    /* RFC 6066 section 3: SNI carries host names, never address literals. */
    if (!c->ssl || (!is_ip && !SSL_set_tlsext_host_name(c->ssl, name)) ||
        (!c->tls->insecure && !(is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, name)
                                      : X509_VERIFY_PARAM_set1_host(vp, name, 0)))) {
        detail_add(c, "cannot verify against \"%s\"", name);
        detail_add_openssl(c);
        return RESP_ETLSCONFIG;
    }
    SSL_set_connect_state(c->ssl);
    return 0;
}

/* An SSL call failed for good (ssl_err from SSL_get_error, sys_errno saved after the call):
 * the error to fail the connection with, c->detail saying why. */
static int tls_error(struct resp_conn *c, int ssl_err, int sys_errno)
{
    c->ssl_broken = true;
    if (ssl_err == SSL_ERROR_ZERO_RETURN)
        return -ECONNRESET;
    if (ssl_err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        /* The socket, not TLS: a server that drops us mid-handshake may dislike our cert. */
        if (!c->stream_up)
            detail_add(c, "the connection ended during the TLS handshake");
        return sys_errno ? -sys_errno : -ECONNRESET;
    }
    long vr = SSL_get_verify_result(c->ssl);
    if (!c->stream_up && !c->tls->insecure && vr != X509_V_OK) {
        ERR_clear_error(); /* only says "certificate verify failed" */
        detail_add(c, "%s", X509_verify_cert_error_string(vr));
        if (vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH)
            detail_add(c, "the certificate is not for \"%s\"", tls_name(c));
        return RESP_ETLSVERIFY;
    }
    if (!c->stream_up)
        detail_add(c, "handshake failed");
    detail_add_openssl(c);
    return RESP_ETLS;
}

/* ---- socket I/O ------------------------------------------------------------------------ */

/* Sends the records OpenSSL wrote into its memory BIO, until none is left or the socket is
 * full (then writable is false until the next edge). 0 or -errno. */
static int tls_send(struct resp_conn *c)
{
    char *p;
    long len;
    while (c->writable && (len = BIO_get_mem_data(c->wbio, &p)) > 0) {
        ssize_t n = send(c->io.fd, p, (size_t)len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->writable = false;
            return 0;
        }
        if (n < 0)
            return -errno;
        if (n == len) {
            BIO_reset(c->wbio);
            continue;
        }
        char sink[4096]; /* a memory BIO drops bytes only by reading them */
        for (ssize_t left = n; left > 0;)
            left -= BIO_read(c->wbio, sink, (int)MIN((size_t)left, sizeof(sink)));
    }
    return 0;
}

/* Ends the TLS session; clean: the owner closes a healthy connection, so tell the server
 * (close_notify, one attempt: nobody waits for its answer). */
static void tls_close(struct resp_conn *c, bool clean)
{
    if (clean && c->stream_up && !c->ssl_broken) {
        ERR_clear_error();
        SSL_shutdown(c->ssl);
        tls_send(c);
    }
    ERR_clear_error();
    SSL_free(c->ssl);
    c->ssl = NULL;
    c->wbio = NULL;
}

/* n > 0 bytes, 0 at the end of the stream, -EAGAIN when it would block, or an error. */
static ssize_t stream_read(struct resp_conn *c, char *buf, size_t len)
{
    if (!c->ssl) {
        for (;;) {
            ssize_t n = read(c->io.fd, buf, len);
            if (n >= 0)
                return n;
            if (errno != EINTR)
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
    }
    ERR_clear_error();
    int n = SSL_read(c->ssl, buf, (int)MIN(len, (size_t)INT_MAX));
    int sys_errno = errno;
    int e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
    /* Reading may have written: a renegotiation's or a key update's handshake messages. */
    int rc = tls_send(c);
    if (rc)
        return rc;
    switch (e) {
    case SSL_ERROR_NONE: return n;
    case SSL_ERROR_WANT_READ: return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN: return 0;
    default: return tls_error(c, e, sys_errno);
    }
}

/* Writes the queued output until done or the socket is full. */
static int plain_write(struct resp_conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->io.fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->writable = false;
            return 0;
        } else if (n < 0 && errno != EINTR) {
            return -errno;
        }
    }
    c->out.len = c->out_off = 0;
    return 0;
}

/* Encrypts the queued output while the socket takes the records. During a renegotiation
 * only SSL_read may drive the handshake: OpenSSL accepts the server's application data
 * arriving meanwhile inside SSL_read, but fails SSL_write on it ("unexpected record").
 * The read that completes the handshake comes back here through flush_output. An
 * SSL_write that wants to read all the same stops, and is repeated later with the same
 * length, as OpenSSL requires (the buffer may move: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
 * its bytes stay, we only append). */
static int tls_write(struct resp_conn *c)
{
    int rc = tls_send(c);
    while (!rc && c->writable && c->out_off < c->out.len && !SSL_in_init(c->ssl)) {
        size_t want =
            c->ssl_retry_len ? c->ssl_retry_len : MIN(c->out.len - c->out_off, (size_t)64 << 10);
        assert(want <= c->out.len - c->out_off);
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->out.data + c->out_off, (int)want);
        int sys_errno = errno;
        int e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
        rc = tls_send(c);
        if (e == SSL_ERROR_WANT_READ) {
            c->ssl_retry_len = want;
            return rc;
        }
        if (!rc && e != SSL_ERROR_NONE)
            rc = tls_error(c, e, sys_errno);
        if (!rc) {
            c->ssl_retry_len = 0;
            c->out_off += (size_t)n;
        }
    }
    if (c->out_off == c->out.len)
        c->out.len = c->out_off = 0;
    return rc;
}

/* Reads until it would block (edge-triggered), dispatching replies as they complete. */
static int do_read(struct resp_conn *c)
{
    char buf[16384];
    for (;;) {
        ssize_t n = stream_read(c, buf, sizeof(buf));
        if (n == 0)
            return -ECONNRESET;
        if (n < 0)
            return n == -EAGAIN ? 0 : (int)n;
        c->heard_at = c->loop->now;
        if (redisReaderFeed(c->reader, buf, (size_t)n) != REDIS_OK)
            return RESP_EPROTO;
        int rc = dispatch_replies(c);
        if (rc || c->free_requested)
            return rc;
    }
}

/* Writes, then reads what OpenSSL may hold already if an SSL_write read records: no edge
 * would ever announce those. Such a read may end a renegotiation that held the writes
 * back: write again. (Once: what is still pending then is an incomplete record, whose
 * rest comes with an edge.) */
static int flush_output(struct resp_conn *c)
{
    if (!c->ssl)
        return c->writable ? plain_write(c) : 0;
    int rc = tls_write(c);
    if (!rc && !c->free_requested && SSL_has_pending(c->ssl)) {
        rc = do_read(c);
        if (!rc && !c->free_requested)
            rc = tls_write(c);
    }
    return rc;
}

/* The byte stream is up: queued commands (the handshake first) may go. */
static void stream_ready(struct resp_conn *c)
{
    c->stream_up = c->writable = true;
    if (c->handshake_left == 0)
        become_ready(c);
}

static int tls_handshake(struct resp_conn *c)
{
    ERR_clear_error();
    int n = SSL_connect(c->ssl);
    int sys_errno = errno;
    int e = n == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
    int rc = tls_send(c);
    if (rc || e == SSL_ERROR_WANT_READ)
        return rc; /* it stopped on "would block": the next edge resumes it */
    if (e != SSL_ERROR_NONE)
        return tls_error(c, e, sys_errno);
    log_debug("redis %s: %s, %s", c->addr, SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
    stream_ready(c);
    return 0;
}

static int on_connected(struct resp_conn *c)
{
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(c->io.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        soerr = errno;
    if (soerr)
        return -soerr;
    c->connected = c->writable = true;
    if (c->ssl)
        return tls_handshake(c);
    stream_ready(c);
    return 0;
}

static void io_cb(struct loop *loop, struct io *io, uint32_t events)
{
    struct resp_conn *c = container_of(io, struct resp_conn, io);
    int rc = 0;
    bool in = events & (POLLER_IN | POLLER_ERR), was_up = c->stream_up;
    enter(c);
    if (!c->connected) {
        if (events & (POLLER_OUT | POLLER_ERR))
            rc = on_connected(c);
    } else {
        if (events & POLLER_OUT)
            c->writable = true;
        if (!c->stream_up)
            rc = tls_handshake(c);
    }
    /* A handshake may have left records in the socket whose edge has passed: drain. */
    if (c->ssl && !was_up)
        in = true;
    if (!rc && c->stream_up && !c->free_requested && in)
        rc = do_read(c);
    if (!rc && c->stream_up && !c->free_requested)
        rc = flush_output(c);
    if (rc && !c->free_requested)
        conn_fail(c, rc);
    leave(c);
}

static void flush_cb(struct loop *loop, struct timer *t)
{
    struct resp_conn *c = container_of(t, struct resp_conn, flush_timer);
    enter(c);
    int rc = c->stream_up ? flush_output(c) : 0;
    if (rc)
        conn_fail(c, rc);
    leave(c);
}

static void connect_timeout_cb(struct loop *loop, struct timer *t)
{
    struct resp_conn *c = container_of(t, struct resp_conn, connect_timer);
    enter(c);
    if (!c->deferred_err && c->ssl && c->connected && !c->stream_up)
        detail_add(c, "no answer to the TLS handshake (is the port plain text?)");
    conn_fail(c, c->deferred_err ? c->deferred_err : RESP_ETIMEDOUT);
    leave(c);
}

static void ignore_pong(const redisReply *r, int status, void *arg)
{
}

/*
 * Ready connections only. Replies due and nothing heard for reply_timeout_ms: the
 * server stopped answering. Idle that long: a PING, so that a silent server is
 * noticed without traffic (RESP2 allows PING in subscribe mode too).
 */
static void reply_timeout_cb(struct loop *loop, struct timer *t)
{
    struct resp_conn *c = container_of(t, struct resp_conn, reply_timer);
    uint64_t due = c->heard_at + c->reply_timeout_ms;
    if (loop->now < due) {
        timer_start(loop, t, due - loop->now);
        return;
    }
    if (c->npending) {
        enter(c);
        conn_fail(c, RESP_ENOREPLY);
        leave(c);
        return;
    }
    const char *argv[] = {"PING"};
    resp_command_argv(c, ignore_pong, NULL, 1, argv, NULL); /* restarts heard_at */
    timer_start(loop, t, c->reply_timeout_ms);
}

static int open_socket(struct resp_conn *c)
{
    int fd = socket(c->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* A dead peer without a RST (cable, VM pause) is noticed within about a minute. */
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    int idle = 30, intvl = 10, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    if (connect(fd, (struct sockaddr *)&c->sa, c->salen) < 0 && errno != EINPROGRESS) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (c->ssl) {
        BIO *rbio = BIO_new_socket(fd, BIO_NOCLOSE);
        c->wbio = BIO_new(BIO_s_mem());
        if (!rbio || !c->wbio) {
            BIO_free(rbio);
            BIO_free(c->wbio);
            c->wbio = NULL;
            close(fd);
            detail_add_openssl(c);
            return RESP_ETLS;
        }
        SSL_set_bio(c->ssl, rbio, c->wbio); /* ssl owns both */
    }
    c->io.fd = fd;
    int rc = loop_add(c->loop, &c->io);
    if (rc < 0) {
        close(fd);
        c->io.fd = -1;
    }
    return rc;
}

static void start_connect(struct resp_conn *c)
{
    c->state = ST_CONNECTING;
    c->deferred_err = 0;
    c->detail[0] = '\0';
    queue_handshake(c);
    int rc = c->tls ? tls_session_new(c) : 0;
    if (!rc)
        rc = open_socket(c);
    /* Failures surface through the timer, so callers always see an asynchronous on_down. */
    c->deferred_err = rc;
    timer_start(c->loop, &c->connect_timer, rc ? 0 : c->connect_timeout_ms);
}

static void retry_cb(struct loop *loop, struct timer *t)
{
    struct resp_conn *c = container_of(t, struct resp_conn, retry_timer);
    enter(c);
    start_connect(c);
    leave(c);
}

static int resolve(struct resp_conn *c, const char *host, int port)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)&c->sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&c->sa;
    memset(&c->sa, 0, sizeof(c->sa));
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        c->salen = sizeof(*s4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        c->salen = sizeof(*s6);
        return 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    char ports[16];
    snprintf(ports, sizeof(ports), "%d", port);
    if (getaddrinfo(host, ports, &hints, &res) != 0)
        return -1;
    memcpy(&c->sa, res->ai_addr, res->ai_addrlen);
    c->salen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s ? xstrndup(s, strlen(s)) : NULL;
}

struct resp_tls_opts *resp_tls_opts_dup(const struct resp_tls_opts *t)
{
    if (!t)
        return NULL;
    struct resp_tls_opts *d = xmalloc(sizeof(*d));
    *d = (struct resp_tls_opts){.ca_file = dup_or_null(t->ca_file),
                                .cert_file = dup_or_null(t->cert_file),
                                .key_file = dup_or_null(t->key_file),
                                .server_name = dup_or_null(t->server_name),
                                .insecure = t->insecure};
    return d;
}

void resp_tls_opts_free(struct resp_tls_opts *t)
{
    if (!t)
        return;
    free((char *)t->ca_file);
    free((char *)t->cert_file);
    free((char *)t->key_file);
    free((char *)t->server_name);
    free(t);
}

struct resp_conn *resp_conn_new(struct loop *loop, const char *host, int port,
                                const struct resp_conn_opts *opts,
                                const struct resp_conn_callbacks *cbs)
{
    static const struct resp_conn_opts no_opts;
    static const struct resp_conn_callbacks no_cbs;
    opts = opts ? opts : &no_opts;
    struct resp_conn *c = xcalloc(1, sizeof(*c));
    if (port <= 0 || port > 65535 || resolve(c, host, port) < 0) {
        log_error("redis: cannot resolve %s:%d", host, port);
        free(c);
        return NULL;
    }
    c->loop = loop;
    c->io = (struct io){.fd = -1, .cb = io_cb};
    timer_init(&c->connect_timer, connect_timeout_cb);
    timer_init(&c->retry_timer, retry_cb);
    timer_init(&c->flush_timer, flush_cb);
    timer_init(&c->reply_timer, reply_timeout_cb);
    c->host = dup_or_null(host);
    c->port = port;
    size_t alen = strlen(host) + 16;
    c->addr = xmalloc(alen);
    snprintf(c->addr, alen, "%s:%d", host, port);
    c->username = dup_or_null(opts->username);
    c->password = dup_or_null(opts->password);
    c->name = dup_or_null(opts->name);
    c->db = opts->db;
    c->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : 2000;
    c->reply_timeout_ms = opts->reply_timeout_ms;
    c->max_output = opts->max_output ? opts->max_output : (size_t)64 << 20;
    c->cbs = cbs ? *cbs : no_cbs;
    c->tls = resp_tls_opts_dup(opts->tls);
    c->rng = (now_ms() << 20) ^ (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ull;
    c->reader = redisReaderCreate();
    list_init(&c->pending);
    start_connect(c);
    return c;
}

bool resp_conn_ready(const struct resp_conn *c)
{
    return c->state == ST_READY && !c->free_requested;
}

size_t resp_conn_pending(const struct resp_conn *c)
{
    return c->npending;
}

const char *resp_conn_addr(const struct resp_conn *c)
{
    return c->addr;
}

const char *resp_conn_host(const struct resp_conn *c)
{
    return c->host;
}

int resp_conn_port(const struct resp_conn *c)
{
    return c->port;
}

const char *resp_conn_error_detail(const struct resp_conn *c)
{
    return c->detail;
}
