/*
 * tls: OpenSSL on the worker loops (see tls.h for the contract).
 *
 * Choices, and why:
 *   - TLS 1.2 and 1.3 only; for 1.2, ECDHE with AEAD ciphers only. No
 *     renegotiation (a client could make us do handshakes on one connection for
 *     ever). ALPN: http/1.1, the one protocol herald speaks; a client that offers
 *     ALPN without it gets the no_application_protocol alert.
 *   - Resumption both ways: OpenSSL's server session cache (TLS 1.2 session ids,
 *     at most SESSION_CACHE entries, shared by the workers through the one
 *     context) and session tickets (TLS 1.2 and 1.3, one per handshake).
 *   - SSL_MODE_RELEASE_BUFFERS: an idle connection holds no record buffers
 *     (about 34 KiB each otherwise), only the session state.
 *   - Writes: the outbound queue's slices are gathered into one record (16 KiB,
 *     a thread-local buffer) per SSL_write, so many small items leave as one
 *     record. When the socket is full, OpenSSL keeps the encrypted record and the
 *     call must be repeated with the same bytes: they are copied into a buffer of
 *     the connection's own (at most one record) until the retry succeeds. The
 *     queue consumes them at once, so its caps (back-pressure, --max-outbound)
 *     see at most one record less than is unsent.
 */
#include "core/tls.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/poller.h"
#include "core/util.h"

#define RECORD_BYTES     16384
#define SESSION_CACHE    20480
#define PATH_BYTES       512
#define EXPIRY_WARN_DAYS 14

enum tls_state {
    TLS_READ_WANTS_WRITE = 1u << 0, /* SSL_read needs the socket to take bytes */
    TLS_WRITE_WANTS_READ = 1u << 1, /* SSL_write needs bytes from the peer */
    TLS_BROKEN = 1u << 2,           /* a fatal error: no close_notify */
    TLS_SHUT = 1u << 3,             /* close_notify sent */
    TLS_DONE = 1u << 4,             /* the handshake completed (and was counted) */
};

/* What /stats and /metrics show: one TLS configuration per process. */
static atomic_uint_fast64_t st_open, st_handshakes, st_resumed, st_failed;

void tls_stats(struct tls_stats *out)
{
    out->connections = atomic_load(&st_open);
    out->handshakes = atomic_load(&st_handshakes);
    out->resumed = atomic_load(&st_resumed);
    out->failed = atomic_load(&st_failed);
}

struct tls_server {
    pthread_mutex_t lock; /* guards ctx: a reload swaps it while workers take references */
    SSL_CTX *ctx;
    char cert_file[PATH_BYTES], key_file[PATH_BYTES];
};

struct tls_conn {
    SSL *ssl;
    char *wbuf; /* the record an SSL_write must be repeated with, or NULL */
    uint32_t wlen;
    uint32_t state; /* enum tls_state */
};

/* Counts the handshake once it completed. */
static void note_handshake(struct tls_conn *t)
{
    if ((t->state & TLS_DONE) || !SSL_is_init_finished(t->ssl))
        return;
    t->state |= TLS_DONE;
    atomic_fetch_add_explicit(&st_handshakes, 1, memory_order_relaxed);
    if (SSL_session_reused(t->ssl))
        atomic_fetch_add_explicit(&st_resumed, 1, memory_order_relaxed);
}

/* ---- certificates -------------------------------------------------------------- */

/* OpenSSL's reasons for the failure (this thread's error queue, emptied) into buf. */
static const char *openssl_why(char *buf, size_t len)
{
    unsigned long e;
    size_t used = 0;
    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0 && used + 2 < len) {
        const char *reason = ERR_reason_error_string(e);
        if (ERR_SYSTEM_ERROR(e))
            reason = strerror(ERR_GET_REASON(e));
        if (!reason || strstr(buf, reason))
            continue;
        int k = snprintf(buf + used, len - used, "%s%s", used ? "; " : "", reason);
        if (k < 0)
            break;
        used += (size_t)k < len - used ? (size_t)k : len - used - 1;
    }
    ERR_clear_error();
    if (!buf[0])
        snprintf(buf, len, "unknown OpenSSL error");
    return buf;
}

static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    return 0; /* an encrypted key fails to load rather than prompting on a terminal */
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, http11, sizeof(http11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* only other protocols (h2 alone): refuse */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Whether path can be opened for reading; logs why not. */
static bool readable(const char *path, const char *what, const char *flag, const char *verb)
{
    FILE *f = fopen(path, "r");
    if (f) {
        fclose(f);
        return true;
    }
    log_error("%s: cannot read the TLS %s \"%s\" (%s): %s; give a readable PEM file", verb, what,
              path, flag, strerror(errno));
    return false;
}

/* Warns about a certificate that clients will refuse now or soon (herald serves it
 * anyway: the operator may have a reason, and a stopped node serves nobody). */
static void warn_validity(X509 *x, const char *file, const char *until)
{
    int days = 0, secs = 0;
    if (!x)
        return;
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0)
        log_warn("the TLS certificate in %s expired on %s: clients refuse it; renew it and send "
                 "SIGHUP",
                 file, until);
    else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
        log_warn("the TLS certificate in %s is not valid yet: clients refuse it until then", file);
    else if (ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x)) && days < EXPIRY_WARN_DAYS)
        log_warn("the TLS certificate in %s expires in %d day%s (%s): renew it and send SIGHUP",
                 file, days, days == 1 ? "" : "s", until);
}

/* Logs which certificate is now served: subject, serial and expiry. */
static void log_certificate(SSL_CTX *ctx, const char *verb, const char *file)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    char subject[256] = "?", serial[80] = "?", until[64] = "?";
    if (x) {
        X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof(subject));
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        if (hex)
            snprintf(serial, sizeof(serial), "%s", hex);
        OPENSSL_free(hex);
        BN_free(bn);
        BIO *b = BIO_new(BIO_s_mem());
        if (b && ASN1_TIME_print(b, X509_get0_notAfter(x))) {
            int n = BIO_read(b, until, sizeof(until) - 1);
            until[n > 0 ? n : 0] = '\0';
        }
        BIO_free(b);
    }
    log_info("%s TLS certificate %s (serial %s, valid until %s) from %s", verb, subject, serial,
             until, file);
    warn_validity(x, file, until);
}

/* A server context for the files, or NULL after logging why (verb: "start-up", "SIGHUP"). */
static SSL_CTX *ctx_new(const struct tls_server *ts, const char *verb)
{
    const char *key = ts->key_file[0] ? ts->key_file : ts->cert_file;
    const char *key_flag = ts->key_file[0] ? "--tls-key" : "--tls-cert, no --tls-key";
    char why[512];
    if (!readable(ts->cert_file, "certificate", "--tls-cert", verb) ||
        !readable(key, "private key", key_flag, verb))
        return NULL;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        log_error("%s: cannot create a TLS context: %s", verb, openssl_why(why, sizeof(why)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"herald", 6);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, SESSION_CACHE);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (SSL_CTX_use_certificate_chain_file(ctx, ts->cert_file) != 1) {
        log_error("%s: \"%s\" (--tls-cert) holds no usable certificate: %s; give the server's "
                  "certificate in PEM, followed by its chain",
                  verb, ts->cert_file, openssl_why(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 &&
        ERR_GET_REASON(ERR_peek_last_error()) != X509_R_KEY_VALUES_MISMATCH) {
        log_error("%s: \"%s\" (%s) holds no usable private key: %s; give the certificate's key "
                  "in PEM, unencrypted",
                  verb, key, key_flag, openssl_why(why, sizeof(why)));
        goto fail;
    }
    /* A key of another certificate fails either above (OpenSSL compares them as it
     * loads the key) or here: one message for both. */
    if (ERR_peek_last_error() || SSL_CTX_check_private_key(ctx) != 1) {
        log_error("%s: the private key \"%s\" does not match the certificate \"%s\": %s; give the "
                  "key the certificate was issued for",
                  verb, key, ts->cert_file, openssl_why(why, sizeof(why)));
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

struct tls_server *tls_server_new(const char *cert_file, const char *key_file)
{
    struct tls_server *ts = xcalloc(1, sizeof(*ts));
    pthread_mutex_init(&ts->lock, NULL);
    snprintf(ts->cert_file, sizeof(ts->cert_file), "%s", cert_file);
    snprintf(ts->key_file, sizeof(ts->key_file), "%s", key_file ? key_file : "");
    ts->ctx = ctx_new(ts, "cannot start");
    if (!ts->ctx) {
        tls_server_free(ts);
        return NULL;
    }
    log_certificate(ts->ctx, "serving", ts->cert_file);
    return ts;
}

int tls_server_reload(struct tls_server *ts)
{
    SSL_CTX *ctx = ctx_new(ts, "SIGHUP");
    if (!ctx) {
        log_error("SIGHUP: still serving the previous TLS certificate; fix the file and send "
                  "SIGHUP again");
        return -1;
    }
    pthread_mutex_lock(&ts->lock);
    SSL_CTX *old = ts->ctx;
    ts->ctx = ctx;
    pthread_mutex_unlock(&ts->lock);
    SSL_CTX_free(old); /* live sessions hold their own references */
    log_certificate(ctx, "SIGHUP: now serving", ts->cert_file);
    return 0;
}

void tls_server_free(struct tls_server *ts)
{
    if (!ts)
        return;
    SSL_CTX_free(ts->ctx);
    pthread_mutex_destroy(&ts->lock);
    free(ts);
}

/* ---- connections --------------------------------------------------------------- */

struct tls_conn *tls_conn_new(struct tls_server *ts, int fd)
{
    pthread_mutex_lock(&ts->lock);
    SSL *ssl = SSL_new(ts->ctx); /* takes its own reference on the context */
    pthread_mutex_unlock(&ts->lock);
    if (!ssl || !SSL_set_fd(ssl, fd)) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_accept_state(ssl);
    struct tls_conn *t = xcalloc(1, sizeof(*t));
    t->ssl = ssl;
    atomic_fetch_add_explicit(&st_open, 1, memory_order_relaxed);
    return t;
}

void tls_shutdown(struct tls_conn *t)
{
    if (t->state & (TLS_BROKEN | TLS_SHUT) || t->wlen || !SSL_is_init_finished(t->ssl))
        return;
    t->state |= TLS_SHUT;
    SSL_shutdown(t->ssl); /* non-blocking: what the socket does not take is lost */
    ERR_clear_error();
}

void tls_conn_free(struct tls_conn *t)
{
    if (!t)
        return;
    note_handshake(t);
    atomic_fetch_sub_explicit(&st_open, 1, memory_order_relaxed);
    if (!(t->state & TLS_DONE)) /* garbage, no common version, a silent client, a timeout */
        atomic_fetch_add_explicit(&st_failed, 1, memory_order_relaxed);
    tls_shutdown(t);
    SSL_free(t->ssl);
    free(t->wbuf);
    free(t);
}

/*
 * Maps a failed SSL_read (reading) or SSL_write (ret <= 0) to read(2)'s terms:
 * -1 with errno EAGAIN when the call waits for the socket (a wait in the other
 * direction is remembered for tls_events), 0 at a clean end of the stream, else
 * -1 with errno set.
 */
static ssize_t ssl_failed(struct tls_conn *t, int ret, bool reading)
{
    int saved = errno;
    int err = SSL_get_error(t->ssl, ret);
    switch (err) {
    case SSL_ERROR_WANT_READ:
        if (!reading)
            t->state |= TLS_WRITE_WANTS_READ;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        if (reading)
            t->state |= TLS_READ_WANTS_WRITE;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL:
        t->state |= TLS_BROKEN;
        ERR_clear_error();
        if (!saved)
            return 0; /* EOF in the middle of a record or handshake */
        errno = saved;
        return -1;
    default: {
        char why[256];
        t->state |= TLS_BROKEN;
        openssl_why(why, sizeof(why));
        log_debug("TLS: closing a connection: %s", why);
        errno = EPROTO;
        return -1;
    }
    }
}

ssize_t tls_read(struct tls_conn *t, void *buf, size_t cap)
{
    t->state &= ~(uint32_t)TLS_READ_WANTS_WRITE;
    if (t->state & TLS_BROKEN) {
        errno = EPROTO;
        return -1;
    }
    errno = 0;
    int n = SSL_read(t->ssl, buf, (int)MIN(cap, (size_t)INT_MAX));
    note_handshake(t);
    return n > 0 ? n : ssl_failed(t, n, true);
}

/* SSL_write of buf[0..len): true when written, false with *blocked or errno set. */
static bool write_record(struct tls_conn *t, const char *buf, uint32_t len, bool *blocked)
{
    errno = 0;
    int w = SSL_write(t->ssl, buf, (int)len);
    if (w > 0)
        return true;
    ssize_t r = ssl_failed(t, w, false);
    if (r < 0 && errno == EAGAIN) {
        *blocked = true;
        return false;
    }
    if (r == 0)
        errno = EPIPE;
    t->state |= TLS_BROKEN;
    return false;
}

ssize_t tls_writev(struct tls_conn *t, const struct iovec *iov, int n, bool *blocked)
{
    static _Thread_local char record[RECORD_BYTES];
    *blocked = false;
    t->state &= ~(uint32_t)TLS_WRITE_WANTS_READ;
    if (t->state & TLS_BROKEN) {
        errno = EPIPE;
        return -1;
    }
    if (t->wlen) {
        /* Repeat the call that found the socket full, with the same bytes. */
        if (!write_record(t, t->wbuf, t->wlen, blocked))
            return *blocked ? 0 : -1;
        free(t->wbuf);
        t->wbuf = NULL;
        t->wlen = 0;
    }
    uint32_t len = 0;
    for (int i = 0; i < n && len < RECORD_BYTES; i++) {
        size_t k = MIN(iov[i].iov_len, (size_t)(RECORD_BYTES - len));
        memcpy(record + len, iov[i].iov_base, k);
        len += (uint32_t)k;
    }
    if (!len)
        return 0;
    if (!write_record(t, record, len, blocked)) {
        if (!*blocked)
            return -1;
        /* OpenSSL holds the record, encrypted: the bytes are taken, and the retry
         * (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER) passes the same bytes from here. */
        t->wbuf = xmalloc(len);
        memcpy(t->wbuf, record, len);
        t->wlen = len;
    }
    return len;
}

bool tls_write_pending(const struct tls_conn *t)
{
    return t->wlen != 0;
}

uint32_t tls_events(const struct tls_conn *t, uint32_t events)
{
    if ((events & POLLER_OUT) && (t->state & TLS_READ_WANTS_WRITE))
        events |= POLLER_IN;
    if ((events & POLLER_IN) && (t->state & TLS_WRITE_WANTS_READ))
        events |= POLLER_OUT;
    return events;
}
