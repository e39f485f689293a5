/*
 * cli_http: a blocking HTTP/1.1 client for the CLI. See cli_http.h.
 *
 * Blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO set before each call keep the
 * code straight-line: a command does one thing at a time, and the only wait
 * that matters (a subscriber's idle stream) is bounded by the timeout.
 */
#include "cli/cli_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define HEAD_MAX (64 * 1024)
#define BODY_MAX (64u << 20)

struct cli_conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    struct http_response head;
    struct http_chunked dec;
    int64_t remaining; /* Content-Length bytes still to come; -1: none given */
    bool last;         /* no more bytes to read: buf holds the rest of the body */
    size_t len, off;   /* buf[off..len): bytes read and not yet handed out */
    char buf[HEAD_MAX];
};

/* Why s is not a base URL: a sentence quoting (the start of) it, and -1. */
static int url_error(char *err, size_t errsize, const char *s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int url_error(char *err, size_t errsize, const char *s, const char *fmt, ...)
{
    int n = snprintf(err, errsize, "the URL \"%.100s%s\" ", s, strlen(s) > 100 ? "…" : "");
    if (n >= 0 && (size_t)n < errsize) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errsize - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* host[0..n) of a bracketed IPv6 literal: hex digits, ':' and (an embedded IPv4) '.'. */
static bool ipv6_chars(const char *host, size_t n)
{
    return n > 1 && strspn(host, "0123456789abcdefABCDEF:.") >= n && memchr(host, ':', n);
}

/*
 * Everything in the URL ends up in the request line or the Host header, so a
 * byte that would break them (a space, CR, LF, any control) is refused rather
 * than escaped: a base URL has none.
 */
int cli_url_parse(const char *s, struct cli_url *u, char *err, size_t errsize)
{
    memset(u, 0, sizeof(*u));
    for (const char *q = s; *q; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f)
            return url_error(err, errsize, s, "has a %s at byte %zu: a base URL has none",
                             *q == ' ' ? "space" : "control character", (size_t)(q - s));
    const char *p;
    if (strncasecmp(s, "http://", 7) == 0) {
        p = s + 7;
    } else if (strncasecmp(s, "https://", 8) == 0) {
        p = s + 8;
        u->tls = true;
    } else {
        return url_error(err, errsize, s,
                         "must start with http:// or https:// (e.g. http://localhost:8080)");
    }
    size_t hl = strcspn(p, "/?#"); /* the authority: host[:port] */
    const char *end = p + hl, *colon;
    if (memchr(p, '@', hl))
        return url_error(err, errsize, s,
                         "has user:password@: give keys with --key or --admin-key "
                         "(HERALD_PUBLISH_KEY, HERALD_ADMIN_KEY) instead");
    const char *host = p;
    size_t n;
    if (*p == '[') {
        const char *rb = memchr(p, ']', hl);
        if (!rb)
            return url_error(err, errsize, s, "opens an IPv6 host without closing its brackets");
        host = p + 1;
        n = (size_t)(rb - host);
        if (rb + 1 < end && rb[1] != ':')
            return url_error(err, errsize, s, "has \"%c\" after ]: only :PORT may follow", rb[1]);
        colon = rb + 1 < end ? rb + 1 : NULL;
        if (n && !ipv6_chars(host, n))
            return url_error(err, errsize, s,
                             "has brackets around something that is not an IPv6 address "
                             "(no zone ids)");
    } else {
        colon = memchr(p, ':', hl);
        n = colon ? (size_t)(colon - p) : hl;
        if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1)))
            return url_error(err, errsize, s,
                             "has an IPv6 host: write it in brackets, http://[::1]:8080");
    }
    if (n == 0)
        return url_error(err, errsize, s, "has no host");
    if (n > 253)
        return url_error(err, errsize, s, "has a host %zu bytes long (253 at most)", n);
    memcpy(u->host, host, n);
    if (colon) {
        size_t pl = (size_t)(end - colon - 1);
        unsigned long port = 0;
        bool digits = pl > 0 && pl <= 5 && strspn(colon + 1, "0123456789") >= pl;
        if (digits)
            port = strtoul(colon + 1, NULL, 10);
        if (!digits || port < 1 || port > 65535)
            return url_error(err, errsize, s, "has a port that is not a number from 1 to 65535");
        memcpy(u->port, colon + 1, pl);
    } else {
        strcpy(u->port, u->tls ? "443" : "80");
    }
    size_t pl = strcspn(end, "?#");
    if (end[pl])
        return url_error(err, errsize, s, "has a ?query or #fragment: a base URL takes neither");
    while (pl > 0 && end[pl - 1] == '/')
        pl--;
    if (pl >= sizeof(u->path))
        return url_error(err, errsize, s, "has a path %zu bytes long (%zu at most)", pl,
                         sizeof(u->path) - 1);
    memcpy(u->path, end, pl);
    return 0;
}

void cli_url_encode(struct sbuf *b, const char *s, const char *keep)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            strchr("-._~", c) || (keep && strchr(keep, c)))
            sbuf_add(b, s, 1);
        else
            sbuf_printf(b, "%%%02X", c);
    }
}

static void set_timeout(int fd, int timeout_ms)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* A connected socket to u (the first address that answers), or -1 with err. */
static int dial(const struct cli_url *u, int timeout_ms, char *err, size_t errsize)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(u->host, u->port, &hints, &res);
    if (rc) {
        snprintf(err, errsize, "cannot resolve %s: %s", u->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, why = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            why = errno;
            continue;
        }
        /* SO_SNDTIMEO bounds connect() too (it then fails with EINPROGRESS) */
        set_timeout(fd, timeout_ms);
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
            why = errno == EINPROGRESS ? ETIMEDOUT : errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errsize, "cannot connect to %s:%s: %s (is herald running there?)", u->host,
                 u->port, strerror(why));
    return fd;
}

static int tls_start(struct cli_conn *c, const struct cli_url *u, char *err, size_t errsize)
{
    unsigned char ip[16];
    bool literal = inet_pton(AF_INET, u->host, ip) == 1 || inet_pton(AF_INET6, u->host, ip) == 1;
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    if (u->cafile) {
        if (SSL_CTX_load_verify_locations(c->ctx, u->cafile, NULL) != 1) {
            unsigned long e = ERR_get_error();
            snprintf(err, errsize,
                     "cannot use %s as the CA file: %s (give a PEM file of CA "
                     "certificates)",
                     u->cafile, e ? ERR_reason_error_string(e) : "unreadable");
            return -1;
        }
    } else {
        SSL_CTX_set_default_verify_paths(c->ctx); /* honours SSL_CERT_FILE, SSL_CERT_DIR */
    }
    SSL_CTX_set_verify(c->ctx, u->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    c->ssl = SSL_new(c->ctx);
    /* SSL_set1_host checks an IP literal against the certificate's IP addresses; SNI
     * carries host names only (RFC 6066 §3). */
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd) || !SSL_set1_host(c->ssl, u->host) ||
        (!literal && !SSL_set_tlsext_host_name(c->ssl, u->host)))
        goto fail;
    if (SSL_connect(c->ssl) == 1)
        return 0;
fail:;
    unsigned long e = ERR_get_error();
    long v = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
        snprintf(err, errsize,
                 "the TLS certificate of %s:%s is not for \"%s\" (%s): give --url the name it "
                 "was issued for",
                 u->host, u->port, u->host, X509_verify_cert_error_string(v));
    else if (v != X509_V_OK)
        snprintf(err, errsize,
                 "the TLS certificate of %s:%s does not verify (%s): --cacert FILE (or "
                 "HERALD_CACERT) names the CA to trust; --insecure skips the check",
                 u->host, u->port, X509_verify_cert_error_string(v));
    else
        snprintf(err, errsize, "TLS handshake with %s:%s failed: %s%s", u->host, u->port,
                 e ? ERR_reason_error_string(e) : "the connection closed",
                 ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER
                     ? " (does that port speak plain http? then the URL is http://)"
                     : "");
    return -1;
}

static long raw_read(struct cli_conn *c, char *buf, size_t cap, int timeout_ms)
{
    set_timeout(c->fd, timeout_ms);
    if (!c->ssl)
        return read(c->fd, buf, cap);
    int n = SSL_read(c->ssl, buf, (int)(cap > INT32_MAX ? INT32_MAX : cap));
    if (n > 0)
        return n;
    int e = SSL_get_error(c->ssl, n);
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (e != SSL_ERROR_SYSCALL || errno == 0)
        errno = e == SSL_ERROR_WANT_READ ? EAGAIN : EPROTO;
    return -1;
}

static int raw_write(struct cli_conn *c, const char *p, size_t len, int timeout_ms)
{
    set_timeout(c->fd, timeout_ms);
    while (len > 0) {
        long n = c->ssl ? SSL_write(c->ssl, p, (int)(len > INT32_MAX ? INT32_MAX : len))
                        : write(c->fd, p, len);
        if (n <= 0) {
            if (n < 0 && errno == EINTR && !c->ssl)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int io_error(char *err, size_t errsize, const char *doing, int e)
{
    snprintf(err, errsize, "%s: %s", doing,
             e == EAGAIN ? "timed out (raise --timeout?)"
             : e == 0    ? "the server closed the connection"
                         : strerror(e));
    return CLI_HTTP_E_IO;
}

static int read_head(struct cli_conn *c, int timeout_ms, char *err, size_t errsize)
{
    for (;;) {
        int r = http_parse_response(c->buf, c->len, &c->head, sizeof(c->buf));
        if (r > 0) {
            c->off = (size_t)r;
            return 0;
        }
        if (r < 0) {
            snprintf(err, errsize, "the server's answer is not HTTP/1.x: %s", http_strerror(r));
            return CLI_HTTP_E_IO;
        }
        long n = raw_read(c, c->buf + c->len, sizeof(c->buf) - c->len, timeout_ms);
        if (n <= 0)
            return io_error(err, errsize, "reading the answer", n == 0 ? 0 : errno);
        c->len += (size_t)n;
    }
}

/* Chunked: decodes buf[off..len) in place; len becomes the end of the decoded bytes. */
static int unchunk(struct cli_conn *c, char *err, size_t errsize)
{
    size_t n = c->len - c->off;
    long r = http_chunked_decode(&c->dec, c->buf + c->off, &n, BODY_MAX);
    if (r < 0 && r != HTTP_CHUNK_INCOMPLETE) {
        snprintf(err, errsize, "the server sent a malformed chunked body");
        return CLI_HTTP_E_IO;
    }
    c->len = c->off + n;
    c->last = r >= 0;
    return 0;
}

int cli_http_open(const struct cli_url *u, const char *method, const char *target,
                  const char *headers, const void *body, size_t len, int timeout_ms,
                  struct cli_conn **out, char *err, size_t errsize)
{
    struct cli_conn *c = xcalloc(1, sizeof(*c));
    c->fd = dial(u, timeout_ms, err, errsize);
    if (c->fd < 0 || (u->tls && tls_start(c, u, err, errsize) < 0)) {
        cli_http_close(c);
        return CLI_HTTP_E_CONNECT;
    }
    struct sbuf req = {0};
    bool v6 = strchr(u->host, ':') != NULL;
    bool dflt = strcmp(u->port, u->tls ? "443" : "80") == 0;
    sbuf_printf(&req, "%s %s%s HTTP/1.1\r\nHost: %s%s%s%s%s\r\n", method, u->path, target,
                v6 ? "[" : "", u->host, v6 ? "]" : "", dflt ? "" : ":", dflt ? "" : u->port);
    sbuf_printf(&req, "User-Agent: herald-cli\r\nConnection: close\r\n%s", headers ? headers : "");
    if (body)
        sbuf_printf(&req, "Content-Length: %zu\r\n", len);
    sbuf_adds(&req, "\r\n");
    if (body)
        sbuf_add(&req, body, len);
    int rc = raw_write(c, req.data, req.len, timeout_ms);
    sbuf_free(&req);
    if (rc < 0)
        rc = io_error(err, errsize, "sending the request", errno);
    else
        rc = read_head(c, timeout_ms, err, errsize);
    if (rc < 0) {
        cli_http_close(c);
        return rc;
    }
    c->remaining = c->head.chunked ? -1 : c->head.content_length;
    /* 1xx, 204 and 304 have no body; HEAD is not used here */
    if (c->head.status < 200 || c->head.status == 204 || c->head.status == 304)
        c->remaining = 0;
    else if (c->head.chunked && unchunk(c, err, errsize) < 0)
        rc = CLI_HTTP_E_IO;
    if (rc < 0) {
        cli_http_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

const struct http_response *cli_http_head(const struct cli_conn *c)
{
    return &c->head;
}

long cli_http_read(struct cli_conn *c, char *buf, size_t cap, int timeout_ms, char *err,
                   size_t errsize)
{
    for (;;) {
        if (c->remaining == 0)
            return 0;
        if (c->off < c->len) {
            size_t n = c->len - c->off;
            if (c->remaining > 0 && (int64_t)n > c->remaining)
                n = (size_t)c->remaining;
            if (n > cap)
                n = cap;
            memcpy(buf, c->buf + c->off, n);
            c->off += n;
            if (c->remaining > 0)
                c->remaining -= (int64_t)n;
            return (long)n;
        }
        if (c->last)
            return 0;
        c->off = c->len = 0;
        long n = raw_read(c, c->buf, sizeof(c->buf), timeout_ms);
        if (n < 0)
            return io_error(err, errsize, "reading the answer", errno);
        if (n == 0) {
            if (c->head.chunked || c->remaining > 0)
                return io_error(err, errsize, "reading the answer", 0);
            c->last = true; /* the body ended with the connection */
            return 0;
        }
        c->len = (size_t)n;
        if (c->head.chunked && unchunk(c, err, errsize) < 0)
            return CLI_HTTP_E_IO;
    }
}

void cli_http_close(struct cli_conn *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

int cli_http_fetch(const struct cli_url *u, const char *method, const char *target,
                   const char *headers, const void *body, size_t len, int timeout_ms, int *status,
                   struct sbuf *out, char *err, size_t errsize)
{
    struct cli_conn *c;
    *out = (struct sbuf){0};
    sbuf_reserve(out, 1);
    out->data[0] = '\0';
    int rc = cli_http_open(u, method, target, headers, body, len, timeout_ms, &c, err, errsize);
    if (rc < 0)
        return rc;
    *status = c->head.status;
    char buf[HEAD_MAX];
    long n;
    while ((n = cli_http_read(c, buf, sizeof(buf), timeout_ms, err, errsize)) > 0) {
        if (out->len + (size_t)n > BODY_MAX) {
            snprintf(err, errsize, "the answer is over %u MiB", BODY_MAX >> 20);
            n = CLI_HTTP_E_IO;
            break;
        }
        sbuf_add(out, buf, (size_t)n);
    }
    cli_http_close(c);
    return n < 0 ? (int)n : 0;
}
