/*
 * herald-bench wire helpers: HTTP/1.1 response heads, RFC 6455 client
 * frames, and the message scanner. No I/O, no allocation: functions take
 * (buf, len) and report what they consumed or found.
 */
#ifndef HERALD_BENCH_PROTO_H
#define HERALD_BENCH_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct proto_head {
    int status;
    int64_t content_length; /* -1: none */
    bool chunked;
    bool close;
    char ws_accept[40];
    char last_modified[40];
    char etag[40];
};

/* Parses a response head. Returns its length (through the blank line),
 * 0 when more bytes are needed, -1 when it is not an HTTP/1.x response. */
long proto_parse_head(const char *buf, size_t len, struct proto_head *h);

/* Sec-WebSocket-Accept for key (RFC 6455 §4.2.2); out needs 29 bytes. */
void proto_ws_accept(const char *key, char *out);
/* A random 16-byte key, base64 (24 chars + NUL). */
void proto_ws_key(char out[25]);
/* Writes a masked client frame (fin set) into out, which needs len + 14
 * bytes. Returns the frame length. */
size_t proto_ws_frame(uint8_t *out, int opcode, const void *payload, size_t len);

/*
 * The message scanner: finds published bodies {"t":T,"n":N,"pad":"x…"} in a
 * de-framed byte stream whatever wraps them (herald envelope, a JSON string
 * with escaped quotes, an SSE data line, nothing at all). Backslashes are
 * ignored, so `{\"t\":1,…}` matches too. A message counts once its pad's
 * closing quote arrives, i.e. when the whole body was received.
 */
struct proto_scan {
    uint8_t st;
    uint8_t k;
    int64_t t;
    uint64_t n;
};
typedef void proto_scan_cb(void *ctx, int64_t t, uint64_t n);
void proto_scan_feed(struct proto_scan *s, const char *p, size_t len, proto_scan_cb *cb, void *ctx);

/* Formats a published body of exactly size bytes (at least the minimum the
 * fields need) into out (size + 64 bytes). Returns its length. */
size_t proto_body(char *out, size_t size, int64_t t_us, uint64_t n);

/* Finds "key":"value" in buf and copies value (up to cap - 1). */
bool proto_json_str(const char *buf, size_t len, const char *key, char *out, size_t cap);

#endif
