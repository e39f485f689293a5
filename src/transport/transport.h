/*
 * transport: what the server core calls into the protocol layers for, and the
 * subscription plumbing shared by WebSocket, SSE, long-poll and streaming
 * (parsing channels/cursors from a request, subscribing, replaying history).
 */
#ifndef HERALD_TRANSPORT_H
#define HERALD_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "core/server.h"

/* Input handlers: consume what they can of buf[0..len), return bytes consumed
 * (the rest is kept for the next read) or -1 to close at once. buf is writable. */
long http_on_read(struct conn *c, char *buf, size_t len);
long ws_on_read(struct conn *c, char *buf, size_t len);
/* Re-runs a WebSocket op that waited for the backend, then kept input. */
void ws_resume(struct conn *c);

/* The connection's multi-purpose timer fired (heartbeat, header/poll timeout, pong grace). */
void transport_on_timer(struct conn *c);
/* The connection reached its maximum lifetime. */
void transport_on_lifetime(struct conn *c);
/* The server is draining: tell the client to reconnect elsewhere and close. */
void transport_on_shutdown(struct conn *c);
/* A channel the connection held was deleted or expired. */
void transport_on_channel_closed(struct conn *c, struct channel *ch);
/* The connection's outbound queue passed max-outbound. */
void transport_on_slow(struct conn *c);

/* Long-poll: turns queued messages into the response (called before a flush). */
void longpoll_complete(struct conn *c);

/* Free transport-owned state of a connection being destroyed. */
void transport_on_free(struct conn *c);

/* ---- shared subscription plumbing ---- */

#define TRANSPORT_MAX_CHANNELS 64

struct sub_request {
    struct slice names[TRANSPORT_MAX_CHANNELS];
    size_t n;
    bool has_since;
    uint64_t since;
    char name_buf[TRANSPORT_MAX_CHANNELS * (CHANNEL_NAME_MAX + 1)];
};

/*
 * Parses a comma-separated, percent-encoded channel list into r (copies names
 * into r->name_buf). Returns 0, or -1 with a message in *err.
 */
int transport_parse_channels(struct sub_request *r, const char *list, size_t len, const char **err);
/* Parses a cursor into r. Returns 0, or -1 with a message in *err. */
int transport_parse_since(struct sub_request *r, const char *s, size_t len, const char **err);

/*
 * Subscribes c to r's channels; *b receives the history to replay (see
 * hub_subscribe). Returns 0 or a negative hub_error (hub_strerror explains it;
 * *bad indexes the channel at fault). Queues nothing.
 */
int transport_subscribe(struct conn *c, const struct sub_request *r, size_t *bad,
                        struct hub_backlog *b);
/* Queues b's gap events and messages framed for c's transport; frees b. */
void transport_replay(struct conn *c, struct hub_backlog *b, uint64_t since);
/* The machine-readable error name of a hub_error ("bad_cursor", ...), and its HTTP status. */
const char *transport_error_name(int err);
int transport_error_status(int err);
/*
 * Subscribes for a request (SSE, stream, long-poll, WebSocket handshake), answering
 * any error itself with its HTTP status and JSON body. Returns 0, or -1 when the
 * request was answered or parked (it is re-run once the channels are ready).
 */
struct http_ctx;
int transport_http_subscribe(struct http_ctx *x, const struct sub_request *r,
                             struct hub_backlog *b);
/* Parks a subscribe that got HUB_PENDING until the hub wakes the connection. */
void transport_park(struct conn *c);

#endif
