/*
 * msg: a published message framed once for every transport, and control events
 * framed the same way. Everything here is immutable once built and reference
 * counted: one framing serves every subscriber, on every worker.
 *
 * A message holds, in one allocation, its JSON envelope and the bytes each
 * transport sends: the WebSocket text frame (header right before the envelope,
 * so they share bytes), the HTTP streaming chunk, the SSE event and the raw SSE
 * event (format=raw). The permessage-deflate frame is built lazily by the first
 * worker with a compressing subscriber and published with a compare-and-swap.
 */
#ifndef HERALD_MSG_H
#define HERALD_MSG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/ref.h"

struct channel;
struct rbuf; /* the deflate frame: a refcounted buffer, msg.c's own */

/*
 * The body of a publish. `data_json` is the value for the envelope's "data"
 * field, already valid JSON (the body itself, or a JSON string); `raw` is the
 * body as sent (for format=raw SSE).
 */
enum pub_kind {
    PUB_JSON = 0, /* data_json is the body (compact JSON) */
    PUB_TEXT,     /* the body is UTF-8 text; data_json is it as a JSON string */
    PUB_BINARY,   /* the body was binary; raw is its base64, data_json that as a JSON string */
};

struct publish_req {
    enum pub_kind kind;
    struct slice data_json;
    struct slice raw;
    const char *event; /* NULL or a validated event name */
    size_t event_len;
    bool base64; /* data_json is a base64 string of a non-UTF-8 body */
};

/* Which channels a multi-channel publish went to (shared by its messages). */
struct msg_group {
    atomic_uint refs; /* one per message that points at it */
    uint32_t n;
    uint64_t chan_ids[];
};

/*
 * One message on one channel. A publish to k channels makes k messages with
 * the same seq (and a shared group), because the envelope names the channel.
 */
struct msg {
    struct ref ref;
    uint64_t seq;
    uint64_t time_ms;    /* wall clock at publish */
    uint64_t arrived_us; /* monotonic, when this node framed it: delivery latency counts from it */
    uint64_t chan_id;
    struct msg_group *group; /* NULL for single-channel publishes; one reference owned */
    uint32_t size;           /* bytes of this allocation: the struct and every framing */
    /* The hub's history accounting, under the hub lock: the channel whose history
     * holds the message (NULL when none does), and whether it counts the deflate frame. */
    bool deflate_counted;
    struct channel *hist_ch;
    struct slice envelope; /* {"event":"message",...} JSON */
    struct slice ws;       /* WS text frame: header + envelope */
    struct slice sse;      /* id:/event:/data: lines + blank line */
    struct slice sse_raw;  /* same with the bare body as data (format=raw) */
    struct slice chunk;    /* chunked-encoding chunk of envelope + "\n" (HTTP streaming) */
    _Atomic(struct rbuf *) ws_deflate;
};

/*
 * Frames a message of channel `name` (name_len bytes; names need no escaping),
 * id `seq`, published at `time_ms`. Returns it with one reference, the caller's;
 * no group. `req` is copied. Cannot fail (out of memory aborts).
 */
struct msg *msg_new(const char *name, size_t name_len, uint64_t chan_id, uint64_t seq,
                    uint64_t time_ms, const struct publish_req *req);

/* A group for a publish to the channels chan_ids[0..n), with `refs` references. */
struct msg_group *msg_group_new(const uint64_t *chan_ids, size_t n, unsigned refs);

/*
 * The permessage-deflate frame of m, built on first use with `deflater` (the
 * calling worker's struct ws_deflater), once however many threads ask. *built
 * tells whether this call built it. When compression fails, the plain frame.
 * The bytes live as long as m.
 */
struct slice msg_ws_deflate(struct msg *m, void *deflater, bool *built);
/* The bytes m's deflate frame holds, 0 until it is built. */
size_t msg_deflate_bytes(const struct msg *m);

/* A control event ({"event":"gap",...}) framed for each transport. */
struct ctl_frames {
    struct ref ref;
    struct slice json, ws, sse, chunk;
};
/* `event` is the event name; `fields_json` the JSON object members after "event" (may be "").
 * Returns it with one reference, the caller's. */
struct ctl_frames *ctl_frames_new(const char *event, const char *fields_json, size_t fields_len);

#endif
