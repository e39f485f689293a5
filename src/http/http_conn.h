/*
 * http_conn: HTTP/1.1 on a connection: request framing (Content-Length,
 * chunked, 100-continue, pipelining), limits with clear JSON errors, handing
 * each request to its route (router.h), and response helpers.
 *
 * Every connection starts as HTTP (http_conn_ops is the server's accept_ops).
 * A route may hand the connection to another protocol (WebSocket, SSE,
 * long-poll, streaming) with conn_set_ops; a long-poll hands it back with
 * http_resume_requests when it is answered.
 */
#ifndef HERALD_HTTP_CONN_H
#define HERALD_HTTP_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include "core/server.h"
#include "http/http_parser.h"

#define HTTP_KEEPALIVE_IDLE_MS 75000

struct http_route;

/* Per-connection state while the connection speaks HTTP (conn->proto). */
struct http_state {
    uint32_t head_len; /* 0 until the head is parsed */
    uint32_t body_end; /* chunked: end of decoded body bytes */
    uint32_t raw_off;  /* chunked: start of undecoded input */
    bool started;      /* first bytes of this request seen: its timeout is running */
    bool sent_continue;
    const struct http_route *route; /* set once the head passed its route's checks */
    struct http_chunked chunked;
};

/* Everything a handler needs about the request being answered. */
struct hub_tenant;

struct http_ctx {
    struct conn *c;
    const struct http_request *req;
    const struct http_route *route;
    /* /apps/{app}/...: the app (a reference, released by http_ctx_done), and the path
     * after its prefix; NULL and the whole path for the default app. */
    struct hub_tenant *tenant;
    const char *path;
    size_t path_len;
    const char *tail; /* ROUTE_PREFIX routes: the path after the prefix */
    size_t tail_len;
    char *body; /* writable, not NUL-terminated */
    size_t body_len;
    bool cors; /* answer with Access-Control-Allow-Origin (origin, or "*" when NULL) */
    bool vary; /* the answer depends on Origin (an origin list): say Vary: Origin */
    const char *origin;
    size_t origin_len;
};

extern const struct conn_ops http_conn_ops;

/* Releases what the router resolved for x (its app). */
void http_ctx_done(struct http_ctx *x);

/*
 * Queues a complete response. `headers` are extra header lines, each ending in
 * CRLF (may be NULL). Decides keep-alive (and closes after the write when not).
 */
void http_respond(struct http_ctx *x, int status, const char *content_type, const char *headers,
                  const char *body, size_t body_len);
/* Queues a JSON error {"error": error, "detail": detail}. */
void http_error(struct http_ctx *x, int status, const char *error, const char *detail_fmt, ...)
    __attribute__((format(printf, 4, 5)));
/*
 * Answers a hub error (enum hub_error) with its HTTP status, its name and its
 * explanation, naming the channel at fault when there is one (name may be NULL).
 * The one place where hub errors become HTTP answers.
 */
void http_hub_error(struct http_ctx *x, int err, const char *name, size_t name_len);
/* Answers {"error":"limit_exceeded","limit":…,"detail":…}: an app's plan said no (a 429
 * carries Retry-After). */
void http_limit_error(struct http_ctx *x, int status, const char *limit, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The HTTP status of a hub error. */
int http_hub_status(int err);
/* Response status line and the common headers (CORS included), without the blank line. */
void http_head(struct http_ctx *x, struct sbuf *b, int status, const char *content_type);
/* Whether a Content-Length response is kept alive (decided by http_respond). */
bool http_keep_alive(const struct http_ctx *x);
/* The Connection header line an answer needs ("" when the default holds). */
const char *http_connection_header(const struct http_ctx *x, bool keep);
const char *http_reason(int status);

/*
 * The connection, handed back to HTTP after a long-poll was answered: the
 * keep-alive timer runs again and pipelined requests are read (on the next
 * flush or read, never from inside an input handler).
 */
void http_resume_requests(struct conn *c);

/*
 * Answering after an asynchronous backend call (cluster mode). Embed a struct
 * http_async in the operation's context; call http_async_begin() before
 * starting the call and http_async_started() right after. The completion may
 * run inline (in-memory mode: nothing is deferred) or later on the
 * connection's worker; there it gets the context to answer on from
 * http_async_ctx() (NULL when the client went away) and ends with
 * http_async_finish(), which resumes pipelined requests.
 */
struct http_async {
    struct http_ctx *inline_x; /* the handler's context while it runs */
    struct conn *c;            /* set when deferred */
    bool done, deferred, keep_alive, head, cors;
    int minor_version;
    char *origin;
    struct http_request req; /* minimal copy for http_respond */
    struct http_ctx x;
};
void http_async_begin(struct http_async *a, struct http_ctx *x);
void http_async_started(struct http_async *a);
struct http_ctx *http_async_ctx(struct http_async *a);
/* Returns true when the caller must free its context now (otherwise the
 * inline handler still owns it and frees it after http_async_started). */
bool http_async_finish(struct http_async *a);

#endif
