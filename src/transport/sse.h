/*
 * sse: subscribers on a never-ending HTTP response: Server-Sent Events
 * (GET /sse) and newline-delimited JSON over chunked encoding (GET /stream).
 * Both send the pre-framed bytes of each message (the same for every
 * subscriber) and a heartbeat, and end with a last event.
 */
#ifndef HERALD_SSE_H
#define HERALD_SSE_H

#include "http/http_conn.h"

void sse_handle(struct http_ctx *x);
/*
 * GET /api/tail: the same SSE stream for the holders of the API's credentials (the admin
 * UI's live tail of a channel), checked by the route's guard: no subscriber token, no
 * connect hook, whatever the app's subscribe policy and whichever listener serves the API.
 */
void sse_tail_handle(struct http_ctx *x);
void stream_handle(struct http_ctx *x);

#endif
