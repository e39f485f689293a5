/*
 * libFuzzer target for src/transport/ws_frame.c.
 *
 * Input: byte 0 picks the options (bit 0: RSV1 allowed, bits 1-3: max payload),
 * the rest is used four ways:
 *   1. as a stream of client frames: header parse (every prefix too), unmask
 *      in two pieces, UTF-8 over text messages in random-sized feeds;
 *   2. as a Sec-WebSocket-Extensions header for ws_pmd_negotiate();
 *   3. as a compressed message for ws_inflate_message() with a bounded output,
 *      whose result is re-compressed and inflated back;
 *   4. as a Sec-WebSocket-Key for ws_accept_key().
 * Invariants are checked with __builtin_trap().
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz.h"
#include "transport/ws_frame.h"

#define INFLATE_CAP 4096

static const uint64_t max_payloads[8] = {0, 1, 125, 126, 65535, 65536, 1 << 20, UINT64_MAX};

static struct ws_deflater *deflater;
static struct ws_inflater *inflater;

static uint8_t payload[1 << 16];
static uint8_t whole[1 << 16];

/* Byte-wise UTF-8 feed, to compare with chunked feeds (fast path). */
static bool utf8_bytewise(struct ws_utf8 *v, const uint8_t *p, size_t n)
{
    bool ok = ws_utf8_feed(v, p, 0); /* an empty feed reports the state so far */

    for (size_t i = 0; i < n; i++)
        ok = ws_utf8_feed(v, p + i, 1);
    return ok;
}

static void check_header(const uint8_t *buf, size_t len, int r, const struct ws_frame *f,
                         bool allow_rsv1, uint64_t max)
{
    struct ws_frame g;
    uint8_t hdr[10];

    CHECK(r >= 6 && r <= 14 && (size_t)r <= len && f->header_len == (size_t)r);
    CHECK(f->payload_len <= max && f->payload_len >> 63 == 0);
    CHECK(f->opcode <= WS_OP_BINARY || (f->opcode >= WS_OP_CLOSE && f->opcode <= WS_OP_PONG));
    if (f->opcode >= WS_OP_CLOSE)
        CHECK(f->fin && !f->rsv1 && f->payload_len <= 125);
    if (f->rsv1)
        CHECK(allow_rsv1 && (f->opcode == WS_OP_TEXT || f->opcode == WS_OP_BINARY));
    for (int k = 0; k < r; k++)
        CHECK(ws_frame_parse(buf, (size_t)k, &g, allow_rsv1, max) == 0);
    /* Minimal encodings both ways: the server header is the client one minus the mask. */
    CHECK(ws_frame_header(hdr, f->opcode, f->fin, f->rsv1, f->payload_len) == (size_t)r - 4);
    CHECK(hdr[0] == buf[0] && hdr[1] == (buf[1] & 0x7f));
    CHECK(memcmp(hdr + 2, buf + 2, (size_t)r - 6) == 0);
}

static void check_error(const uint8_t *buf, size_t len, int r, bool allow_rsv1, uint64_t max)
{
    struct ws_frame g;
    uint16_t code = ws_error_close_code(r);

    CHECK(r >= WS_ERR_TOO_BIG && r <= WS_ERR_RSV);
    CHECK(code == (r == WS_ERR_TOO_BIG ? WS_CLOSE_TOO_BIG : WS_CLOSE_PROTOCOL));
    CHECK(ws_strerror(r) != NULL);
    for (size_t k = 0; k < len && k < 14; k++) {
        int p = ws_frame_parse(buf, k, &g, allow_rsv1, max);
        CHECK(p == 0 || p == r);
    }
}

/* Unmasks the available payload in two pieces and checks it against a byte loop. */
static size_t unmask_payload(const uint8_t *src, size_t avail, const struct ws_frame *f,
                             uint8_t split)
{
    size_t n = avail < sizeof(payload) ? avail : sizeof(payload);
    size_t cut = n ? split % (n + 1) : 0;

    memcpy(payload, src, n);
    memcpy(whole, src, n);
    ws_unmask(payload, cut, f->mask, 0);
    ws_unmask(payload + cut, n - cut, f->mask, cut);
    for (size_t i = 0; i < n; i++)
        whole[i] ^= f->mask[i & 3];
    CHECK(memcmp(payload, whole, n) == 0);
    return n;
}

struct text_state {
    bool in_text; /* inside a TEXT message (possibly fragmented) */
    struct ws_utf8 chunked, bytewise;
};

/* Feeds text payloads two ways; a whole one-frame message is also checked one-shot. */
static void feed_text(struct text_state *t, const struct ws_frame *f, size_t n, uint8_t split)
{
    if (f->opcode == WS_OP_TEXT)
        *t = (struct text_state){.in_text = true};
    else if (f->opcode == WS_OP_BINARY)
        t->in_text = false;
    if (!t->in_text || f->opcode >= WS_OP_CLOSE)
        return;
    size_t cut = n ? split % (n + 1) : 0;
    bool a = ws_utf8_feed(&t->chunked, payload, cut);
    a = ws_utf8_feed(&t->chunked, payload + cut, n - cut) && a;
    bool b = utf8_bytewise(&t->bytewise, payload, n);
    CHECK(a == b && t->chunked.state == t->bytewise.state);
    if (f->opcode == WS_OP_TEXT && f->fin && n == f->payload_len)
        CHECK(ws_utf8_valid(payload, n) == (a && ws_utf8_complete(&t->chunked)));
    if (f->fin)
        t->in_text = false;
}

static void fuzz_frames(const uint8_t *data, size_t size, bool allow_rsv1, uint64_t max)
{
    struct text_state text = {0};
    size_t pos = 0;

    while (pos < size) {
        struct ws_frame f;
        const uint8_t *buf = data + pos;
        size_t len = size - pos;
        int r = ws_frame_parse(buf, len, &f, allow_rsv1, max);
        if (r == 0)
            return;
        if (r < 0) {
            check_error(buf, len, r, allow_rsv1, max);
            return;
        }
        check_header(buf, len, r, &f, allow_rsv1, max);
        size_t avail = len - (size_t)r;
        if (avail > f.payload_len)
            avail = (size_t)f.payload_len;
        size_t n = unmask_payload(buf + r, avail, &f, buf[0] ^ buf[1]);
        feed_text(&text, &f, n, f.mask[0]);
        pos += (size_t)r + avail;
    }
}

static void fuzz_negotiate(const uint8_t *data, size_t size)
{
    char out[128];
    int bits = 0;

    if (ws_pmd_negotiate_bits((const char *)data, size, out, sizeof(out), &bits)) {
        CHECK(strnlen(out, sizeof(out)) < sizeof(out));
        CHECK(strncmp(out,
                      "permessage-deflate; server_no_context_takeover; "
                      "client_no_context_takeover",
                      74) == 0);
        CHECK(bits >= 8 && bits <= 15);
        /* A too-small buffer must fail cleanly. */
        CHECK(!ws_pmd_negotiate((const char *)data, size, out, strlen(out)));
    }
}

static void fuzz_inflate(const uint8_t *data, size_t size)
{
    static uint8_t out[INFLATE_CAP], again[INFLATE_CAP];
    static uint8_t packed[INFLATE_CAP + INFLATE_CAP / 4 + 64];
    long n = ws_inflate_message(inflater, data, size, out, sizeof(out));

    CHECK(n >= -2 && n <= INFLATE_CAP);
    if (n < 0)
        return;
    /* Same input, one byte less room: too big unless it was empty. */
    if (n > 0)
        CHECK(ws_inflate_message(inflater, data, size, again, (size_t)n - 1) == -2);
    CHECK(ws_inflate_message(inflater, data, size, again, (size_t)n) == n);
    CHECK(memcmp(out, again, (size_t)n) == 0);
    /* Round trip through our own deflater. */
    CHECK(ws_deflate_bound((size_t)n) <= sizeof(packed));
    long c = ws_deflate_message(deflater, out, (size_t)n, packed);
    CHECK(c > 0 && (size_t)c <= ws_deflate_bound((size_t)n));
    CHECK(ws_inflate_message(inflater, packed, (size_t)c, again, sizeof(again)) == n);
    CHECK(memcmp(out, again, (size_t)n) == 0);
}

static void fuzz_accept_key(const uint8_t *data, size_t size)
{
    char out[29];

    if (ws_accept_key((const char *)data, size < 24 ? size : 24, out) == 0)
        CHECK(size >= 24 && strnlen(out, sizeof(out)) == 28);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (deflater == NULL) {
        deflater = ws_deflater_new(6);
        inflater = ws_inflater_new();
        CHECK(deflater && inflater);
    }
    if (size < 1)
        return 0;
    bool allow_rsv1 = data[0] & 1;
    uint64_t max = max_payloads[(data[0] >> 1) & 7];
    data++, size--;

    fuzz_frames(data, size, allow_rsv1, max);
    fuzz_negotiate(data, size);
    fuzz_inflate(data, size);
    fuzz_accept_key(data, size);
    return 0;
}
