/*
 * ws: WebSocket subscribers (RFC 6455 server side, RFC 7692 compression).
 *
 * Handshake validation, frame reassembly with UTF-8 checks across fragments,
 * control frames interleaved in fragmented messages, the close handshake
 * (nothing follows a close frame), heartbeats with a pong deadline, and the
 * JSON client ops: subscribe, unsubscribe, ping and (when --ws-publish allows)
 * publish. Server messages are pre-framed once per message by the hub; this
 * module only adds the per-connection replies.
 */
#ifndef HERALD_WS_H
#define HERALD_WS_H

#include "http/http_conn.h"

/* GET /ws: validates the handshake, subscribes to ?channels= if any, upgrades. */
void ws_handle_upgrade(struct http_ctx *x);

#endif
