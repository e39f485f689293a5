/*
 * http_conn: reading requests off a connection and answering them.
 *
 * Input is handled in place: the head is re-parsed from the start of the
 * request each time bytes arrive (cheap: heads are small), a Content-Length
 * body is awaited whole, and a chunked body is decoded in place behind the
 * head. The request's route is checked as soon as its head is complete, so a
 * request that will be refused (no credentials, wrong origin, wrong method) is
 * answered before its body is read. Requests are answered in order; a
 * pipelined request is not parsed while earlier answers wait to be written
 * (conn_may_parse), so a client that does not read makes us hold little.
 */
#include "http/http_conn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "core/log.h"
#include "http/router.h"

CONN_PROTO_FITS(struct http_state);

enum {
    HTTPF_UNREAD_BODY = CF_PROTO_FIRST, /* answering a request whose body will not be read */
};

static inline struct http_state *hstate(struct conn *c)
{
    return CONN_PROTO(c, struct http_state);
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}

void http_head(struct http_ctx *x, struct sbuf *b, int status, const char *content_type)
{
    sbuf_printf(b, "HTTP/1.1 %d %s\r\nServer: herald\r\n", status, http_reason(status));
    if (content_type)
        sbuf_printf(b, "Content-Type: %s\r\n", content_type);
    if (x->cors) {
        sbuf_adds(b, "Access-Control-Allow-Origin: ");
        if (x->origin)
            sbuf_add(b, x->origin, x->origin_len);
        else
            sbuf_adds(b, "*");
        sbuf_adds(b, "\r\n");
    }
    if (x->cors || x->vary)
        sbuf_adds(b, "Vary: Origin\r\n");
}

const char *http_connection_header(const struct http_ctx *x, bool keep)
{
    if (!keep)
        return "Connection: close\r\n";
    /* HTTP/1.0 closes by default: a kept connection is said to be kept. */
    return x->req && x->req->minor_version == 0 ? "Connection: keep-alive\r\n" : "";
}

void http_respond(struct http_ctx *x, int status, const char *content_type, const char *headers,
                  const char *body, size_t body_len)
{
    struct conn *c = x->c;
    bool keep = http_keep_alive(x);
    struct sbuf b = {0};
    http_head(x, &b, status, content_type);
    if (headers)
        sbuf_adds(&b, headers);
    /* RFC 9110 §8.6: a 204 carries no Content-Length (nor a body). */
    if (status != 204)
        sbuf_printf(&b, "Content-Length: %zu\r\n", body_len);
    sbuf_printf(&b, "%s\r\n", http_connection_header(x, keep));
    if (!(x->req && x->req->method_id == HTTP_M_HEAD))
        sbuf_add(&b, body, body_len);
    conn_send_copy(c, b.data, b.len);
    sbuf_free(&b);
    if (!keep)
        conn_close_after_write(c);
}

/* {"error": error, ["limit": limit,] "detail": detail} */
static void error_v(struct http_ctx *x, int status, const char *error, const char *limit,
                    const char *fmt, va_list ap)
{
    char detail[512];
    vsnprintf(detail, sizeof(detail), fmt, ap);
    struct sbuf b = {0};
    sbuf_adds(&b, "{\"error\":");
    sbuf_add_json_str(&b, error, strlen(error));
    if (limit) {
        sbuf_adds(&b, ",\"limit\":");
        sbuf_add_json_str(&b, limit, strlen(limit));
    }
    sbuf_adds(&b, ",\"detail\":");
    sbuf_add_json_str(&b, detail, strlen(detail));
    sbuf_adds(&b, "}\n");
    const char *extra = NULL;
    if (status == 401)
        extra = "WWW-Authenticate: Bearer realm=\"herald\", Basic realm=\"herald\"\r\n";
    else if (status == 429)
        extra = "Retry-After: 1\r\n";
    http_respond(x, status, "application/json", extra, b.data, b.len);
    sbuf_free(&b);
}

void http_error(struct http_ctx *x, int status, const char *error, const char *detail_fmt, ...)
{
    va_list ap;
    va_start(ap, detail_fmt);
    error_v(x, status, error, NULL, detail_fmt, ap);
    va_end(ap);
}

void http_limit_error(struct http_ctx *x, int status, const char *limit, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_v(x, status, "limit_exceeded", limit, fmt, ap);
    va_end(ap);
}

int http_hub_status(int err)
{
    switch (err) {
    case HUB_ERR_NOT_FOUND: return 404;
    case HUB_ERR_TOO_MANY_FOR_ADDR:
    case HUB_ERR_APP_CHANNELS:
    case HUB_ERR_APP_RATE: return 429;
    case HUB_ERR_NO_APP: return 404;
    case HUB_ERR_TOO_MANY:
    case HUB_ERR_TOO_MANY_EPHEMERAL:
    case HUB_ERR_TOO_MANY_PATTERNS:
    case HUB_ERR_BACKEND: return 503;
    case HUB_ERR_PRESENCE_OFF: return 409;
    }
    return 400;
}

void http_hub_error(struct http_ctx *x, int err, const char *name, size_t name_len)
{
    const char *limit = hub_error_limit(err);
    if (limit)
        return http_limit_error(x, http_hub_status(err), limit, "%s", hub_strerror(err));
    if (name) { /* a key: the client named the channel only */
        struct slice nm = chan_key_name(name, name_len);
        name = nm.data;
        name_len = nm.len;
    }
    http_error(x, http_hub_status(err), hub_error_name(err), "%s%s%.*s", hub_strerror(err),
               name ? ": " : "", name ? (int)MIN(name_len, (size_t)CHANNEL_NAME_MAX) : 0,
               name ? name : "");
}

bool http_keep_alive(const struct http_ctx *x)
{
    /* Framing errors are answered without a request (x->req NULL): we cannot tell
     * where the next request would start, so the connection closes. */
    bool unread = x->c->ops == &http_conn_ops && (x->c->flags & HTTPF_UNREAD_BODY);
    return x->req && x->req->keep_alive && !unread && !(x->c->flags & (CF_EOF | CF_CLOSE_AFTER)) &&
           !atomic_load(&conn_server(x->c)->shutdown);
}

static bool tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/*
 * Says which line of a head the parser refused and why, for the error's detail: the
 * parser only answers "malformed". A diagnosis of the bytes, not a second parser: it
 * names the first rule of RFC 9112 the head breaks.
 */
static void diagnose_syntax(const char *p, size_t n, char *out, size_t size)
{
    size_t line = 1, i = 0;
    while (i < n) {
        size_t start = i, end = i;
        while (end < n && p[end] != '\n')
            end++;
        if (end == n)
            break; /* the head ends before this line does */
        size_t len = end - start;
        if (len && p[end - 1] == '\r')
            len--;
        const char *l = p + start;
        if (len == 0)
            break; /* the blank line: the head is over */
        for (size_t k = 0; k < len; k++)
            if (l[k] == '\r') {
                snprintf(out, size, "line %zu has a CR that is not followed by LF", line);
                return;
            }
        if (line == 1) {
            size_t m = 0;
            while (m < len && tchar((unsigned char)l[m]))
                m++;
            const char *sp2 = m < len ? memchr(l + m + 1, ' ', len - m - 1) : NULL;
            if (m == 0 || m == len || l[m] != ' ' || !sp2 || sp2 == l + m + 1 ||
                (size_t)(l + len - sp2 - 1) != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) {
                snprintf(out, size,
                         "the request line must be 'METHOD /path HTTP/1.1', with single spaces "
                         "and no control characters");
                return;
            }
        } else {
            const char *colon = memchr(l, ':', len);
            if (l[0] == ' ' || l[0] == '\t') {
                snprintf(out, size,
                         "header line %zu starts with whitespace: folded lines (obs-fold) are not "
                         "accepted, put each field on one line",
                         line);
                return;
            }
            if (!colon) {
                snprintf(out, size, "header line %zu has no ':' between name and value", line);
                return;
            }
            for (const char *k = l; k < colon; k++)
                if (!tchar((unsigned char)*k)) {
                    snprintf(out, size,
                             "header line %zu: the field name has '%s' in it (names are tokens, "
                             "with no whitespace before the ':')",
                             line, *k == ' ' || *k == '\t' ? "whitespace" : "a character");
                    return;
                }
            for (const char *k = colon + 1; k < l + len; k++)
                if ((unsigned char)*k < 0x20 && *k != '\t') {
                    snprintf(out, size, "header line %zu has a control character in its value",
                             line);
                    return;
                }
        }
        i = end + 1;
        line++;
    }
    snprintf(out, size, "the request head does not follow RFC 9112");
}

static void parse_error(struct conn *c, int err, const struct herald_config *cfg, const char *p,
                        size_t n)
{
    struct http_ctx x = {.c = c};
    switch (err) {
    case HTTP_ERR_HEADERS_TOO_BIG:
        http_error(&x, 431, "headers_too_large",
                   "the request head is over %u bytes or has more than %d header lines; send "
                   "fewer or smaller headers",
                   cfg->max_header_bytes, HTTP_MAX_HEADERS);
        break;
    case HTTP_ERR_URI_TOO_LONG:
        http_error(&x, 414, "uri_too_long", "the request target is over %u bytes",
                   cfg->max_uri_bytes);
        break;
    case HTTP_ERR_VERSION:
        http_error(&x, 505, "http_version", "only HTTP/1.0 and HTTP/1.1 are supported");
        break;
    case HTTP_ERR_BAD_ENCODING:
        http_error(&x, 501, "transfer_encoding",
                   "only 'Transfer-Encoding: chunked' is supported for request bodies");
        break;
    case HTTP_ERR_BAD_LENGTH:
        http_error(&x, 400, "bad_length",
                   "Content-Length is malformed, repeated with different values, or sent "
                   "together with Transfer-Encoding");
        break;
    default: {
        char why[160];
        diagnose_syntax(p, n, why, sizeof(why));
        http_error(&x, 400, "bad_request", "malformed HTTP request: %s", why);
    }
    }
    conn_close_after_write(c);
}

static void dispatch(struct conn *c, const struct http_request *req, const struct http_route *route,
                     char *body, size_t body_len)
{
    atomic_fetch_add_explicit(&c->w->ctr.requests, 1, memory_order_relaxed);
    struct http_ctx x = {.c = c, .req = req, .body = body, .body_len = body_len};
    if (http_route_prepare(&x, route))
        route->handle(&x);
    http_ctx_done(&x);
}

static void on_request_done(struct conn *c)
{
    if (c->ops != &http_conn_ops)
        return;                    /* handed to another protocol: conn->proto is its state now */
    hub_tenant_unbind(&c->tenant); /* answered as plain HTTP: no app's subscriber */
    memset(hstate(c), 0, sizeof(struct http_state));
    if (!(c->flags & CF_CLOSE_AFTER))
        conn_timer_start(c, HTTP_KEEPALIVE_IDLE_MS);
}

/*
 * Body of the request at p[0..n) whose head is hs->head_len bytes. Returns
 * the request's total length when the body is complete (body set), 0 when
 * more input is needed, or -1 after answering an error. For chunked bodies
 * *keep_from is set when the decoded prefix has been moved to the end of p.
 */
static long read_body(struct conn *c, const struct http_request *req, char *p, size_t n,
                      char **body, size_t *body_len, size_t *keep_from)
{
    struct http_state *hs = hstate(c);
    const struct herald_config *cfg = conn_cfg(c);
    struct http_ctx x = {.c = c}; /* framing errors close the connection */
    if (req->chunked) {
        if (!hs->raw_off)
            hs->raw_off = hs->body_end = hs->head_len;
        size_t dlen = n - hs->raw_off;
        long r = http_chunked_decode(&hs->chunked, p + hs->raw_off, &dlen, cfg->max_body_bytes);
        memmove(p + hs->body_end, p + hs->raw_off, dlen);
        hs->body_end += (uint32_t)dlen;
        hs->raw_off = hs->body_end;
        if (r == HTTP_CHUNK_TOO_BIG) {
            http_error(&x, 413, "body_too_large",
                       "the request body is over %u bytes (--max-body-bytes)", cfg->max_body_bytes);
            return -1;
        }
        if (r == HTTP_CHUNK_ERROR) {
            http_error(&x, 400, "bad_chunked_body", "the chunked request body is malformed");
            return -1;
        }
        if (r == HTTP_CHUNK_INCOMPLETE) {
            /* Keep head + decoded body, flush against the end of the input. */
            memmove(p + n - hs->body_end, p, hs->body_end);
            *keep_from = n - hs->body_end;
            return 0;
        }
        *body = p + hs->head_len;
        *body_len = hs->body_end - hs->head_len;
        return (long)(n - (size_t)r);
    }
    uint64_t cl = req->content_length > 0 ? (uint64_t)req->content_length : 0;
    if (n < hs->head_len + cl)
        return 0;
    *body = p + hs->head_len;
    *body_len = cl;
    return (long)(hs->head_len + cl);
}

static bool has_body(const struct http_request *req)
{
    return req->chunked || req->content_length > 0;
}

/* Checks framing limits once the head is known. Returns false after answering an error
 * (the connection then closes: where the next request starts is unknown). */
static bool check_framing(struct conn *c, const struct http_request *req)
{
    const struct herald_config *cfg = conn_cfg(c);
    struct http_ctx x = {.c = c}; /* framing errors close the connection */
    size_t hosts = 0;
    for (size_t i = 0; i < req->num_headers; i++)
        hosts += req->headers[i].name_len == 4 && strncasecmp(req->headers[i].name, "Host", 4) == 0;
    if ((req->minor_version == 1 && hosts == 0) || hosts > 1) {
        http_error(&x, 400, hosts ? "bad_request" : "missing_host",
                   hosts ? "a request has exactly one Host header"
                         : "HTTP/1.1 requests need a Host header");
        return false;
    }
    if (req->method_id == HTTP_M_POST && req->content_length < 0 && !req->chunked) {
        http_error(&x, 411, "length_required",
                   "POST needs a Content-Length or 'Transfer-Encoding: chunked'");
        return false;
    }
    const struct http_header *expect = http_find_header(req, "Expect");
    if (expect && req->minor_version == 1 && !req->expect_continue) {
        http_error(&x, 417, "expectation_failed",
                   "the only expectation herald meets is 'Expect: 100-continue'");
        return false;
    }
    if (req->content_length > (int64_t)cfg->max_body_bytes) {
        http_error(&x, 413, "body_too_large",
                   "the request body is %lld bytes; the limit is %u (--max-body-bytes)",
                   (long long)req->content_length, cfg->max_body_bytes);
        return false;
    }
    return true;
}

/*
 * Everything decided on a complete head: framing, then the route's checks (an
 * answer now means the body is never read). Returns the route, or NULL when the
 * request was answered; *close tells whether the connection must then end.
 */
static const struct http_route *check_head(struct conn *c, const struct http_request *req,
                                           size_t have, bool *close)
{
    *close = true;
    if (!check_framing(c, req))
        return NULL;
    struct http_ctx x = {.c = c, .req = req};
    /* Refused now, its body is never read: where the next request starts is unknown, so
     * the answer says Connection: close. */
    if (has_body(req))
        c->flags |= HTTPF_UNREAD_BODY;
    const struct http_route *route = http_route_check(&x);
    http_ctx_done(&x);
    c->flags &= ~(uint32_t)(HTTPF_UNREAD_BODY | CF_TRUSTED);
    if (!route) {
        *close = has_body(req);
        return NULL;
    }
    if (route->guard)
        c->flags |= CF_TRUSTED; /* it passed: its body counts against the publishers' budget */
    struct http_state *hs = hstate(c);
    if (req->expect_continue && has_body(req) && !hs->sent_continue &&
        have < hs->head_len + (size_t)MAX(req->content_length, 0) + (req->chunked ? 1 : 0)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        conn_send(c, NULL, cont, sizeof(cont) - 1);
        hs->sent_continue = true;
    }
    return route;
}

static long http_on_read(struct conn *c, char *buf, size_t len)
{
    const struct herald_config *cfg = conn_cfg(c);
    const struct http_limits limits = {cfg->max_header_bytes, cfg->max_uri_bytes};
    size_t off = 0;
    while (off < len && c->ops == &http_conn_ops && conn_may_parse(c)) {
        char *p = buf + off;
        size_t n = len - off;
        struct http_state *hs = hstate(c);
        struct http_request req;
        if (!hs->started) {
            /* One deadline per request: trickling bytes does not extend it. */
            hs->started = true;
            conn_timer_start(c, cfg->header_timeout_ms);
        }
        int r = http_parse_request(p, n, 0, &req, &limits);
        if (r == HTTP_INCOMPLETE)
            break;
        if (r < 0) {
            parse_error(c, r, cfg, p, n);
            return (long)len;
        }
        if (hs->head_len == 0) {
            hs->head_len = (uint32_t)r;
            bool close;
            hs->route = check_head(c, &req, n, &close);
            if (!hs->route) {
                if (close) {
                    conn_close_after_write(c);
                    return (long)len;
                }
                off += (size_t)r;
                on_request_done(c);
                continue;
            }
        }
        char *body = NULL;
        size_t body_len = 0, keep_from = 0;
        long total = read_body(c, &req, p, n, &body, &body_len, &keep_from);
        if (total < 0) {
            conn_close_after_write(c);
            return (long)len;
        }
        if (total == 0) {
            off += keep_from;
            break;
        }
        conn_timer_stop(c);
        dispatch(c, &req, hs->route, body, body_len);
        if (c->flags & CF_RETRY) {
            /* Waiting for the backend: keep this request to re-run it as it is. */
            memset(hs, 0, sizeof(*hs));
            break;
        }
        off += (size_t)total;
        on_request_done(c);
        if (c->ops != &http_conn_ops && off < len && !(c->flags & CF_READ_PAUSED)) {
            /* Bytes right behind a handshake belong to the new protocol (WebSocket frames). */
            if (!c->ops->on_read)
                return (long)len;
            long used = c->ops->on_read(c, buf + off, len - off);
            return used < 0 ? used : (long)off + used;
        }
    }
    return (long)off;
}

static void http_on_open(struct conn *c)
{
    conn_timer_start(c, conn_cfg(c)->header_timeout_ms);
}

static void http_on_timer(struct conn *c)
{
    if (hstate(c)->started) {
        struct http_ctx x = {.c = c};
        http_error(&x, 408, "request_timeout",
                   "the request was not received completely within %u ms (--header-timeout)",
                   conn_cfg(c)->header_timeout_ms);
        conn_close_after_write(c);
    } else {
        conn_close(c); /* idle keep-alive connection */
    }
}

static void http_on_shutdown(struct conn *c)
{
    if (!hstate(c)->started && outq_empty(&c->out) && !(c->flags & CF_READ_PAUSED))
        conn_close(c); /* idle: nothing to finish */
    /* An in-flight request is answered with Connection: close. */
}

static void http_on_busy(struct conn *c)
{
    struct http_ctx x = {.c = c};
    http_error(&x, 503, "server_busy",
               "the server holds its maximum of buffered input (--max-input-memory); retry "
               "shortly");
    conn_close_after_write(c);
}

const struct conn_ops http_conn_ops = {
    .kind = CONN_HTTP,
    .on_open = http_on_open,
    .on_read = http_on_read,
    .on_timer = http_on_timer,
    .on_shutdown = http_on_shutdown,
    .on_busy = http_on_busy,
};

void http_resume_requests(struct conn *c)
{
    assert(c->ops == &http_conn_ops);
    if (!(c->flags & CF_CLOSE_AFTER))
        conn_timer_start(c, HTTP_KEEPALIVE_IDLE_MS);
    conn_resume_input(c);
}

/* ---- asynchronous answers ---------------------------------------------------- */

void http_async_begin(struct http_async *a, struct http_ctx *x)
{
    memset(a, 0, sizeof(*a));
    a->inline_x = x;
}

void http_async_started(struct http_async *a)
{
    struct http_ctx *x = a->inline_x;
    a->inline_x = NULL;
    if (a->done)
        return;
    /* The answer comes later: keep the connection and stop reading requests. */
    a->deferred = true;
    a->c = x->c;
    a->keep_alive = x->req->keep_alive;
    a->head = x->req->method_id == HTTP_M_HEAD;
    a->minor_version = x->req->minor_version;
    a->cors = x->cors;
    a->origin = x->origin ? xstrndup(x->origin, x->origin_len) : NULL;
    conn_hold(a->c);
    a->c->flags |= CF_READ_PAUSED;
    conn_timer_stop(a->c);
}

struct http_ctx *http_async_ctx(struct http_async *a)
{
    a->done = true;
    if (a->inline_x)
        return a->inline_x;
    if (!conn_release(a->c)) {
        a->c = NULL; /* the client went away meanwhile */
        return NULL;
    }
    a->req = (struct http_request){.keep_alive = a->keep_alive,
                                   .minor_version = a->minor_version,
                                   .method_id = a->head ? HTTP_M_HEAD : HTTP_M_GET};
    a->x = (struct http_ctx){.c = a->c,
                             .req = &a->req,
                             .cors = a->cors,
                             .origin = a->origin,
                             .origin_len = a->origin ? strlen(a->origin) : 0};
    return &a->x;
}

bool http_async_finish(struct http_async *a)
{
    if (!a->deferred)
        return false; /* inline: the handler frees after http_async_started */
    free(a->origin);
    if (a->c) {
        a->c->flags &= ~(uint32_t)CF_READ_PAUSED;
        http_resume_requests(a->c);
    }
    return true;
}
