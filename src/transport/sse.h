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
void stream_handle(struct http_ctx *x);

#endif
