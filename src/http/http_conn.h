/*
 * http_conn: HTTP/1.1 on a connection: request framing (Content-Length,
 * chunked, 100-continue, pipelining), limits with clear JSON errors, routing
 * to the API and the subscriber transports, and response helpers.
 */
#ifndef HERALD_HTTP_CONN_H
#define HERALD_HTTP_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include "core/server.h"
#include "http/http_parser.h"

#define HTTP_KEEPALIVE_IDLE_MS 75000

/* Everything a handler needs about the request being answered. */
struct http_ctx {
    struct conn *c;
    const struct http_request *req;
    char *body; /* writable, not NUL-terminated */
    size_t body_len;
    bool cors; /* the request came from an allowed Origin (or * allows all) */
    const char *origin;
    size_t origin_len;
};

/*
 * Queues a complete response. `headers` are extra header lines, each ending in
 * CRLF (may be NULL). Decides keep-alive (and closes after the write when not).
 */
void http_respond(struct http_ctx *x, int status, const char *content_type, const char *headers,
                  const char *body, size_t body_len);
/* Queues a JSON error {"error": error, "detail": detail}. */
void http_error(struct http_ctx *x, int status, const char *error, const char *detail_fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Response status line and the common headers (CORS included), without the blank line. */
void http_head(struct http_ctx *x, struct sbuf *b, int status, const char *content_type);
const char *http_reason(int status);
/* Whether Origin is allowed by --cors-origins. */
bool http_origin_allowed(const struct herald_config *cfg, const char *origin, size_t len);

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

/* Route handlers (api/api.c and the transport sources). */
void api_handle(struct http_ctx *x);
void ws_handle_upgrade(struct http_ctx *x);
void sse_handle(struct http_ctx *x);
void stream_handle(struct http_ctx *x);
void longpoll_handle(struct http_ctx *x);

#endif
