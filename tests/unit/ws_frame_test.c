/*
 * Unit tests for src/transport/ws_frame.c: frame header parsing (every error,
 * every split point), masking, server headers, close codes, UTF-8 (against an
 * independent reference decoder), the handshake key, permessage-deflate
 * negotiation and compression, with the RFC 6455 and RFC 7692 examples.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "transport/ws_frame.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void fill_random(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rng();
}

static const uint8_t rfc_mask[4] = {0x37, 0xfa, 0x21, 0x3d};

/* Builds a masked client frame with raw first byte b0 (FIN/RSV/opcode). */
static size_t client_frame(uint8_t *out, uint8_t b0, const uint8_t mask[4], const void *payload,
                           size_t len)
{
    size_t h = ws_frame_header(out, b0 & 0x0f, false, false, len);

    out[0] = b0;
    out[1] |= 0x80;
    memcpy(out + h, mask, 4);
    memcpy(out + h + 4, payload, len);
    ws_unmask(out + h + 4, len, mask, 0);
    return h + 4 + len;
}

/* Asserts that every proper prefix of buf gives 0 or `want` (an error). */
static void assert_prefixes(const uint8_t *buf, size_t len, int want, bool allow_rsv1, uint64_t max)
{
    struct ws_frame f;

    for (size_t k = 0; k < len; k++) {
        int r = ws_frame_parse(buf, k, &f, allow_rsv1, max);
        if (want > 0)
            assert_int_equal(r, 0);
        else
            assert_true(r == 0 || r == want);
    }
}

/* Parses buf[0..len) whole and split at every byte; returns the full result. */
static int parse_all_ways(const uint8_t *buf, size_t len, struct ws_frame *f, bool allow_rsv1,
                          uint64_t max)
{
    int r = ws_frame_parse(buf, len, f, allow_rsv1, max);

    assert_prefixes(buf, r > 0 ? (size_t)r : len, r, allow_rsv1, max);
    return r;
}

/* ---- ws_frame_parse: RFC 6455 §5.7 examples ---------------------------- */

static void test_parse_rfc_masked_hello(void **state)
{
    uint8_t buf[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    struct ws_frame f;

    assert_int_equal(parse_all_ways(buf, sizeof(buf), &f, false, 125), 6);
    assert_true(f.fin);
    assert_false(f.rsv1);
    assert_int_equal(f.opcode, WS_OP_TEXT);
    assert_int_equal(f.payload_len, 5);
    assert_int_equal(f.header_len, 6);
    assert_memory_equal(f.mask, rfc_mask, 4);
    ws_unmask(buf + 6, 5, f.mask, 0);
    assert_memory_equal(buf + 6, "Hello", 5);
}

static void test_parse_rfc_masked_pong(void **state)
{
    uint8_t buf[] = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    struct ws_frame f;

    assert_int_equal(parse_all_ways(buf, sizeof(buf), &f, false, 1000), 6);
    assert_int_equal(f.opcode, WS_OP_PONG);
    assert_true(f.fin);
    ws_unmask(buf + 6, 5, f.mask, 0);
    assert_memory_equal(buf + 6, "Hello", 5);
}

static void test_parse_rfc_unmasked_examples_rejected(void **state)
{
    /* The §5.7 unmasked examples are server frames: a server must reject them. */
    const uint8_t hello[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    const uint8_t frag1[] = {0x01, 0x03, 0x48, 0x65, 0x6c};
    const uint8_t frag2[] = {0x80, 0x02, 0x6c, 0x6f};
    const uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    struct ws_frame f;

    assert_int_equal(parse_all_ways(hello, sizeof(hello), &f, false, 1000), WS_ERR_UNMASKED);
    assert_int_equal(parse_all_ways(frag1, sizeof(frag1), &f, false, 1000), WS_ERR_UNMASKED);
    assert_int_equal(parse_all_ways(frag2, sizeof(frag2), &f, false, 1000), WS_ERR_UNMASKED);
    assert_int_equal(parse_all_ways(ping, sizeof(ping), &f, false, 1000), WS_ERR_UNMASKED);
}

static void test_parse_rfc_lengths_masked(void **state)
{
    const uint8_t b256[] = {0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4};
    const uint8_t b64k[] = {0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4};
    const uint8_t mask[4] = {1, 2, 3, 4};
    struct ws_frame f;

    assert_int_equal(parse_all_ways(b256, sizeof(b256), &f, false, 1 << 20), 8);
    assert_int_equal(f.payload_len, 256);
    assert_int_equal(f.opcode, WS_OP_BINARY);
    assert_memory_equal(f.mask, mask, 4);
    assert_int_equal(parse_all_ways(b64k, sizeof(b64k), &f, false, 1 << 20), 14);
    assert_int_equal(f.payload_len, 65536);
    assert_int_equal(f.header_len, 14);
    assert_memory_equal(f.mask, mask, 4);
}

static void test_parse_boundaries(void **state)
{
    /* Smallest and largest length in each encoding. */
    const uint8_t l0[] = {0x82, 0x80, 9, 9, 9, 9};
    const uint8_t l125[] = {0x82, 0xfd, 9, 9, 9, 9};
    const uint8_t l126[] = {0x82, 0xfe, 0x00, 0x7e, 9, 9, 9, 9};
    const uint8_t l65535[] = {0x82, 0xfe, 0xff, 0xff, 9, 9, 9, 9};
    const uint8_t l65536[] = {0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9, 9};
    const uint8_t lmax[] = {0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 9, 9, 9, 9};
    struct ws_frame f;

    assert_int_equal(parse_all_ways(l0, sizeof(l0), &f, false, 0), 6);
    assert_int_equal(f.payload_len, 0);
    assert_int_equal(parse_all_ways(l125, sizeof(l125), &f, false, 125), 6);
    assert_int_equal(f.payload_len, 125);
    assert_int_equal(parse_all_ways(l126, sizeof(l126), &f, false, 126), 8);
    assert_int_equal(f.payload_len, 126);
    assert_int_equal(parse_all_ways(l65535, sizeof(l65535), &f, false, 65535), 8);
    assert_int_equal(f.payload_len, 65535);
    assert_int_equal(parse_all_ways(l65536, sizeof(l65536), &f, false, 65536), 14);
    assert_int_equal(f.payload_len, 65536);
    assert_int_equal(parse_all_ways(lmax, sizeof(lmax), &f, false, UINT64_MAX), 14);
    assert_true(f.payload_len == INT64_MAX);
}

static void test_parse_empty_and_incomplete(void **state)
{
    const uint8_t buf[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d};
    struct ws_frame f = {.opcode = 0x7};

    assert_int_equal(ws_frame_parse(buf, 0, &f, false, 100), 0);
    for (size_t k = 1; k < sizeof(buf); k++)
        assert_int_equal(ws_frame_parse(buf, k, &f, false, 100), 0);
    assert_int_equal(f.opcode, 0x7); /* untouched until success */
    /* The payload is not needed. */
    assert_int_equal(ws_frame_parse(buf, sizeof(buf), &f, false, 100), 6);
}

/* ---- ws_frame_parse: every error --------------------------------------- */

static void test_parse_err_rsv(void **state)
{
    const uint8_t rsv2[] = {0xa1, 0x80, 0, 0, 0, 0};
    const uint8_t rsv3[] = {0x91, 0x80, 0, 0, 0, 0};
    const uint8_t rsv1_text[] = {0xc1, 0x80, 0, 0, 0, 0};
    const uint8_t rsv1_bin[] = {0xc2, 0x80, 0, 0, 0, 0};
    const uint8_t rsv1_cont[] = {0xc0, 0x80, 0, 0, 0, 0};
    const uint8_t rsv1_ping[] = {0xc9, 0x80, 0, 0, 0, 0};
    const uint8_t rsv1_close[] = {0xc8, 0x80, 0, 0, 0, 0};
    const uint8_t rsv1_pong[] = {0xca, 0x80, 0, 0, 0, 0};
    const uint8_t rsv1_text_nofin[] = {0x41, 0x80, 0, 0, 0, 0};
    struct ws_frame f;

    for (int allow = 0; allow <= 1; allow++) {
        assert_int_equal(parse_all_ways(rsv2, 6, &f, allow, 100), WS_ERR_RSV);
        assert_int_equal(parse_all_ways(rsv3, 6, &f, allow, 100), WS_ERR_RSV);
        assert_int_equal(parse_all_ways(rsv1_cont, 6, &f, allow, 100), WS_ERR_RSV);
        assert_int_equal(parse_all_ways(rsv1_ping, 6, &f, allow, 100), WS_ERR_RSV);
        assert_int_equal(parse_all_ways(rsv1_close, 6, &f, allow, 100), WS_ERR_RSV);
        assert_int_equal(parse_all_ways(rsv1_pong, 6, &f, allow, 100), WS_ERR_RSV);
    }
    assert_int_equal(parse_all_ways(rsv1_text, 6, &f, false, 100), WS_ERR_RSV);
    assert_int_equal(parse_all_ways(rsv1_bin, 6, &f, false, 100), WS_ERR_RSV);
    assert_int_equal(parse_all_ways(rsv1_text, 6, &f, true, 100), 6);
    assert_true(f.rsv1);
    assert_true(f.fin);
    assert_int_equal(parse_all_ways(rsv1_bin, 6, &f, true, 100), 6);
    assert_true(f.rsv1);
    assert_int_equal(parse_all_ways(rsv1_text_nofin, 6, &f, true, 100), 6);
    assert_true(f.rsv1);
    assert_false(f.fin);
}

static void test_parse_err_opcode(void **state)
{
    struct ws_frame f;

    for (uint8_t op = 0; op < 16; op++) {
        uint8_t buf[] = {(uint8_t)(0x80 | op), 0x80, 1, 2, 3, 4};
        bool known = op <= 2 || (op >= 8 && op <= 10);
        int r = parse_all_ways(buf, sizeof(buf), &f, true, 100);
        assert_int_equal(r, known ? 6 : WS_ERR_OPCODE);
        if (known)
            assert_int_equal(f.opcode, op);
    }
}

static void test_parse_err_unmasked(void **state)
{
    const uint8_t small[] = {0x82, 0x05, 1, 2, 3, 4, 5};
    const uint8_t medium[] = {0x82, 0x7e, 0x01, 0x00};
    const uint8_t empty_close[] = {0x88, 0x00};
    struct ws_frame f;

    assert_int_equal(parse_all_ways(small, sizeof(small), &f, false, 100), WS_ERR_UNMASKED);
    assert_int_equal(parse_all_ways(medium, sizeof(medium), &f, false, 1000), WS_ERR_UNMASKED);
    assert_int_equal(parse_all_ways(empty_close, 2, &f, false, 100), WS_ERR_UNMASKED);
}

static void test_parse_err_control(void **state)
{
    const uint8_t ops[] = {WS_OP_CLOSE, WS_OP_PING, WS_OP_PONG};
    struct ws_frame f;

    for (size_t i = 0; i < ARRAY_LEN(ops); i++) {
        uint8_t ok[] = {(uint8_t)(0x80 | ops[i]), 0x80 | 125, 1, 2, 3, 4};
        uint8_t len126[] = {(uint8_t)(0x80 | ops[i]), 0x80 | 126, 0x00, 0x7e, 1, 2, 3, 4};
        uint8_t len127[] = {(uint8_t)(0x80 | ops[i]), 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 1};
        uint8_t nofin[] = {ops[i], 0x80, 1, 2, 3, 4};

        assert_int_equal(parse_all_ways(ok, sizeof(ok), &f, true, 1000), 6);
        assert_int_equal(f.payload_len, 125);
        assert_int_equal(parse_all_ways(len126, sizeof(len126), &f, true, 1000),
                         WS_ERR_CONTROL_LEN);
        assert_int_equal(parse_all_ways(len127, sizeof(len127), &f, true, 1000),
                         WS_ERR_CONTROL_LEN);
        assert_int_equal(parse_all_ways(nofin, sizeof(nofin), &f, true, 1000), WS_ERR_CONTROL_FRAG);
    }
}

static void test_parse_err_len_encoding(void **state)
{
    const uint8_t e16_0[] = {0x82, 0xfe, 0x00, 0x00, 1, 2, 3, 4};
    const uint8_t e16_125[] = {0x82, 0xfe, 0x00, 0x7d, 1, 2, 3, 4};
    const uint8_t e64_0[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    const uint8_t e64_125[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x7d, 1, 2, 3, 4};
    const uint8_t e64_ffff[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4};
    const uint8_t e64_msb[] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    const uint8_t e64_all[] = {0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2};
    struct ws_frame f;

    assert_int_equal(parse_all_ways(e16_0, sizeof(e16_0), &f, false, UINT64_MAX),
                     WS_ERR_LEN_ENCODING);
    assert_int_equal(parse_all_ways(e16_125, sizeof(e16_125), &f, false, UINT64_MAX),
                     WS_ERR_LEN_ENCODING);
    assert_int_equal(parse_all_ways(e64_0, sizeof(e64_0), &f, false, UINT64_MAX),
                     WS_ERR_LEN_ENCODING);
    assert_int_equal(parse_all_ways(e64_125, sizeof(e64_125), &f, false, UINT64_MAX),
                     WS_ERR_LEN_ENCODING);
    assert_int_equal(parse_all_ways(e64_ffff, sizeof(e64_ffff), &f, false, UINT64_MAX),
                     WS_ERR_LEN_ENCODING);
    assert_int_equal(parse_all_ways(e64_msb, sizeof(e64_msb), &f, false, UINT64_MAX),
                     WS_ERR_LEN_ENCODING);
    assert_int_equal(parse_all_ways(e64_all, sizeof(e64_all), &f, false, UINT64_MAX),
                     WS_ERR_LEN_ENCODING);
    /* A bad encoding is a protocol error even when it is also too big. */
    assert_int_equal(parse_all_ways(e64_msb, sizeof(e64_msb), &f, false, 10), WS_ERR_LEN_ENCODING);
}

static void test_parse_err_too_big(void **state)
{
    const uint8_t l7[] = {0x82, 0x8a, 1, 2, 3, 4};
    const uint8_t l16[] = {0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4};
    const uint8_t l64[] = {0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4};
    struct ws_frame f;

    assert_int_equal(parse_all_ways(l7, sizeof(l7), &f, false, 9), WS_ERR_TOO_BIG);
    assert_int_equal(parse_all_ways(l7, sizeof(l7), &f, false, 10), 6);
    assert_int_equal(parse_all_ways(l7, sizeof(l7), &f, false, 0), WS_ERR_TOO_BIG);
    assert_int_equal(parse_all_ways(l16, sizeof(l16), &f, false, 255), WS_ERR_TOO_BIG);
    assert_int_equal(parse_all_ways(l16, sizeof(l16), &f, false, 256), 8);
    assert_int_equal(parse_all_ways(l64, sizeof(l64), &f, false, UINT32_MAX), WS_ERR_TOO_BIG);
    assert_int_equal(parse_all_ways(l64, sizeof(l64), &f, false, 1ull << 32), 14);
    /* Too big is known before the mask arrives. */
    assert_int_equal(ws_frame_parse(l64, 10, &f, false, 1 << 20), WS_ERR_TOO_BIG);
}

static void test_parse_error_precedence(void **state)
{
    /* Errors in byte 0 win over byte 1; documented order within a byte. */
    const uint8_t op_and_unmasked[] = {0x83, 0x00};
    const uint8_t rsv_and_unmasked[] = {0xa1, 0x00};
    const uint8_t frag_and_len[] = {0x09, 0xfe, 0x00, 0x7e, 1, 2, 3, 4};
    const uint8_t unmasked_ctl_len[] = {0x89, 0x7e, 0x00, 0x7e};
    struct ws_frame f;

    assert_int_equal(ws_frame_parse(op_and_unmasked, 2, &f, false, 100), WS_ERR_OPCODE);
    assert_int_equal(ws_frame_parse(rsv_and_unmasked, 2, &f, false, 100), WS_ERR_RSV);
    assert_int_equal(ws_frame_parse(frag_and_len, 8, &f, false, 100), WS_ERR_CONTROL_FRAG);
    assert_int_equal(ws_frame_parse(unmasked_ctl_len, 4, &f, false, 100), WS_ERR_UNMASKED);
}

/* ---- a stream of frames arriving one byte at a time ------------------- */

struct expect {
    uint8_t b0;
    size_t len;
    uint8_t payload[70000];
};

static void test_parse_stream_every_split(void **state)
{
    static struct expect ex[7];
    static uint8_t wire[300000];
    static uint8_t buf[300000];
    const size_t lens[] = {0, 5, 125, 126, 300, 65535, 65536};
    const uint8_t b0s[] = {0x01, 0x89, 0x00, 0x80, 0xc2, 0x82, 0x82};
    size_t wire_len = 0, have = 0, next = 0, fed = 0;

    for (size_t i = 0; i < ARRAY_LEN(ex); i++) {
        uint8_t mask[4];
        fill_random(mask, 4);
        ex[i].b0 = b0s[i];
        ex[i].len = lens[i];
        fill_random(ex[i].payload, lens[i]);
        wire_len += client_frame(wire + wire_len, b0s[i], mask, ex[i].payload, lens[i]);
    }
    /* Bytes arrive one at a time; after each, consume whatever is complete. */
    while (fed < wire_len) {
        struct ws_frame f;
        buf[have++] = wire[fed++];
        int r = ws_frame_parse(buf, have, &f, true, 1 << 20);
        assert_true(r >= 0);
        if (r == 0 || have - (size_t)r < f.payload_len)
            continue;
        assert_int_equal(f.opcode, ex[next].b0 & 0x0f);
        assert_int_equal(f.fin, (ex[next].b0 & 0x80) != 0);
        assert_int_equal(f.rsv1, (ex[next].b0 & 0x40) != 0);
        assert_int_equal(f.payload_len, ex[next].len);
        /* Unmask in two uneven pieces to exercise the offset. */
        size_t cut = f.payload_len / 3;
        ws_unmask(buf + r, cut, f.mask, 0);
        ws_unmask(buf + r + cut, f.payload_len - cut, f.mask, cut);
        if (f.payload_len)
            assert_memory_equal(buf + r, ex[next].payload, f.payload_len);
        have = 0;
        next++;
    }
    assert_int_equal(next, ARRAY_LEN(ex));
    assert_int_equal(have, 0);
}

/* ---- ws_unmask --------------------------------------------------------- */

static void test_unmask_all_offsets_lengths(void **state)
{
    uint8_t orig[80], data[81], ref[80], mask[4];

    for (int round = 0; round < 20; round++) {
        fill_random(mask, 4);
        fill_random(orig, sizeof(orig));
        for (size_t off = 0; off < 9; off++) {
            for (size_t len = 0; len <= 64; len++) {
                for (size_t i = 0; i < len; i++)
                    ref[i] = orig[i] ^ mask[(off + i) % 4];
                /* data + 1: deliberately misaligned. */
                memcpy(data + 1, orig, len);
                ws_unmask(data + 1, len, mask, off);
                if (len)
                    assert_memory_equal(data + 1, ref, len);
            }
        }
    }
}

static void test_unmask_pieces_and_involution(void **state)
{
    uint8_t orig[1000], a[1000], b[1000], mask[4];

    fill_random(mask, 4);
    fill_random(orig, sizeof(orig));
    memcpy(a, orig, sizeof(a));
    memcpy(b, orig, sizeof(b));
    ws_unmask(a, sizeof(a), mask, 0);
    for (size_t pos = 0; pos < sizeof(b);) {
        size_t n = 1 + rng() % 37;
        if (n > sizeof(b) - pos)
            n = sizeof(b) - pos;
        ws_unmask(b + pos, n, mask, pos);
        pos += n;
    }
    assert_memory_equal(a, b, sizeof(a));
    ws_unmask(a, sizeof(a), mask, 0);
    assert_memory_equal(a, orig, sizeof(a));
    /* Large offsets only matter modulo 4. */
    memcpy(a, orig, 10);
    memcpy(b, orig, 10);
    ws_unmask(a, 10, mask, UINT64_C(0x100000003));
    ws_unmask(b, 10, mask, 3);
    assert_memory_equal(a, b, 10);
}

/* ---- ws_frame_header --------------------------------------------------- */

static void test_header_rfc_examples(void **state)
{
    uint8_t out[10];
    const uint8_t hello[] = {0x81, 0x05};
    const uint8_t frag1[] = {0x01, 0x03};
    const uint8_t frag2[] = {0x80, 0x02};
    const uint8_t ping[] = {0x89, 0x05};
    const uint8_t b256[] = {0x82, 0x7e, 0x01, 0x00};
    const uint8_t b64k[] = {0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0};

    assert_int_equal(ws_frame_header(out, WS_OP_TEXT, true, false, 5), 2);
    assert_memory_equal(out, hello, 2);
    assert_int_equal(ws_frame_header(out, WS_OP_TEXT, false, false, 3), 2);
    assert_memory_equal(out, frag1, 2);
    assert_int_equal(ws_frame_header(out, WS_OP_CONT, true, false, 2), 2);
    assert_memory_equal(out, frag2, 2);
    assert_int_equal(ws_frame_header(out, WS_OP_PING, true, false, 5), 2);
    assert_memory_equal(out, ping, 2);
    assert_int_equal(ws_frame_header(out, WS_OP_BINARY, true, false, 256), 4);
    assert_memory_equal(out, b256, 4);
    assert_int_equal(ws_frame_header(out, WS_OP_BINARY, true, false, 65536), 10);
    assert_memory_equal(out, b64k, 10);
}

static void test_header_lengths_and_bits(void **state)
{
    const uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, UINT32_MAX, INT64_MAX};
    const size_t want[] = {2, 2, 2, 4, 4, 4, 10, 10, 10};
    uint8_t out[14];
    struct ws_frame f;

    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        size_t h = ws_frame_header(out, WS_OP_TEXT, i & 1, i & 2, lens[i]);
        assert_int_equal(h, want[i]);
        assert_int_equal(out[0], 0x01 | ((i & 1) ? 0x80 : 0) | ((i & 2) ? 0x40 : 0));
        assert_int_equal(out[1] & 0x80, 0); /* never masked */
        /* Masked, it is a valid minimal client header with the same fields. */
        out[1] |= 0x80;
        memcpy(out + h, rfc_mask, 4);
        assert_int_equal(ws_frame_parse(out, h + 4, &f, true, UINT64_MAX), (int)(h + 4));
        assert_true(f.payload_len == lens[i]);
        assert_int_equal(f.fin, (i & 1) != 0);
        assert_int_equal(f.rsv1, (i & 2) != 0);
    }
}

/* ---- errors and close codes -------------------------------------------- */

static void test_error_close_codes(void **state)
{
    const int errs[] = {WS_ERR_RSV,         WS_ERR_OPCODE,       WS_ERR_UNMASKED,
                        WS_ERR_CONTROL_LEN, WS_ERR_CONTROL_FRAG, WS_ERR_LEN_ENCODING};

    for (size_t i = 0; i < ARRAY_LEN(errs); i++) {
        assert_int_equal(ws_error_close_code(errs[i]), WS_CLOSE_PROTOCOL);
        assert_non_null(ws_strerror(errs[i]));
        assert_string_not_equal(ws_strerror(errs[i]), ws_strerror(-100));
    }
    assert_int_equal(ws_error_close_code(WS_ERR_TOO_BIG), WS_CLOSE_TOO_BIG);
    assert_string_not_equal(ws_strerror(WS_ERR_TOO_BIG), ws_strerror(-100));
    assert_int_equal(ws_error_close_code(-100), WS_CLOSE_INTERNAL);
    assert_int_equal(ws_error_close_code(0), WS_CLOSE_INTERNAL);
    assert_non_null(ws_strerror(0));
}

static void test_close_code_valid(void **state)
{
    for (uint32_t c = 0; c <= 0xffff; c++) {
        bool want =
            (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
        assert_int_equal(ws_close_code_valid((uint16_t)c), want);
    }
    assert_false(ws_close_code_valid(1004));
    assert_false(ws_close_code_valid(1005));
    assert_false(ws_close_code_valid(1006));
    assert_false(ws_close_code_valid(1015));
    assert_false(ws_close_code_valid(1016));
    assert_false(ws_close_code_valid(2999));
    assert_true(ws_close_code_valid(3000));
    assert_true(ws_close_code_valid(4999));
    assert_false(ws_close_code_valid(5000));
}

/* ---- UTF-8 ------------------------------------------------------------- */

/* Independent reference: decode code points and check them (RFC 3629). */
static bool ref_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t c = s[i];
        size_t need;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i - 1 < need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += need + 1;
    }
    return true;
}

/*
 * Whether s[0..n) (n <= 2) could still become valid UTF-8: reference, by
 * trying every completion with continuation bytes.
 */
static bool ref_utf8_prefix_ok(const uint8_t *s, size_t n)
{
    uint8_t buf[8];

    if (ref_utf8_valid(s, n))
        return true;
    for (size_t extra = 1; extra <= 4 - n; extra++) {
        memcpy(buf, s, n);
        for (uint32_t v = 0; v < (1u << (6 * extra)); v++) {
            for (size_t k = 0; k < extra; k++)
                buf[n + k] = (uint8_t)(0x80 | ((v >> (6 * k)) & 0x3f));
            if (ref_utf8_valid(buf, n + extra))
                return true;
        }
    }
    return false;
}

static void check_utf8(const uint8_t *s, size_t n)
{
    struct ws_utf8 v = {0};
    bool fed = ws_utf8_feed(&v, s, n);
    bool want = ref_utf8_valid(s, n);

    assert_int_equal(ws_utf8_valid(s, n), want);
    assert_int_equal(fed && ws_utf8_complete(&v), want);
}

static void test_utf8_exhaustive_short(void **state)
{
    uint8_t s[3];

    for (uint32_t a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        check_utf8(s, 1);
        for (uint32_t b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            check_utf8(s, 2);
            for (uint32_t c = 0; c < 256; c++) {
                s[2] = (uint8_t)c;
                check_utf8(s, 3);
            }
        }
    }
}

static void test_utf8_four_byte_sweep(void **state)
{
    const uint8_t lasts[] = {0x00, 0x7f, 0x80, 0xbf, 0xc0, 0xff};
    uint8_t s[4];

    for (uint32_t a = 0xf0; a < 0x100; a++)
        for (uint32_t b = 0; b < 256; b++)
            for (uint32_t c = 0x70; c < 0xd0; c++)
                for (size_t d = 0; d < ARRAY_LEN(lasts); d++) {
                    s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = (uint8_t)c, s[3] = lasts[d];
                    check_utf8(s, 4);
                }
}

static void test_utf8_prefix_semantics(void **state)
{
    /* feed() fails exactly when the bytes can no longer start valid UTF-8. */
    uint8_t s[3];

    for (uint32_t a = 0x80; a < 256; a++) {
        for (uint32_t b = 0; b < 256; b += 3) {
            struct ws_utf8 v = {0};
            s[0] = (uint8_t)a, s[1] = (uint8_t)b;
            assert_int_equal(ws_utf8_feed(&v, s, 2), ref_utf8_prefix_ok(s, 2));
        }
    }
}

static void test_utf8_vectors(void **state)
{
    static const struct {
        const char *s;
        bool valid;   /* complete and valid */
        bool feed_ok; /* ws_utf8_feed result */
    } v[] = {
        {"", true, true},
        {"Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!", true, true},
        {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", true, true}, /* kosme */
        {"\x7f", true, true},
        {"\xc2\x80", true, true},
        {"\xdf\xbf", true, true},
        {"\xe0\xa0\x80", true, true},
        {"\xed\x9f\xbf", true, true}, /* U+D7FF */
        {"\xee\x80\x80", true, true}, /* U+E000 */
        {"\xef\xbf\xbf", true, true}, /* U+FFFF */
        {"\xf0\x90\x80\x80", true, true},
        {"\xf4\x8f\xbf\xbf", true, true}, /* U+10FFFF */
        {"\xc0\x80", false, false},       /* overlong NUL */
        {"\xc1\xbf", false, false},
        {"\xe0\x80\x80", false, false},
        {"\xe0\x9f\xbf", false, false},
        {"\xf0\x8f\xbf\xbf", false, false},
        {"\xed\xa0\x80", false, false}, /* U+D800 */
        {"\xed\xbf\xbf", false, false}, /* U+DFFF */
        {"\xed\xa0\x80\xed\xb0\x80", false, false},
        {"\xf4\x90\x80\x80", false, false}, /* U+110000 */
        {"\xf5\x80\x80\x80", false, false},
        {"\xf8\x88\x80\x80\x80", false, false},
        {"\xfe", false, false},
        {"\xff", false, false},
        {"\x80", false, false},
        {"a\xbf", false, false},
        {"\xc2\x41", false, false},
        {"\xe2\x82", false, true}, /* truncated euro sign */
        {"\xf0\x9f\x98", false, true},
        {"\xce", false, true},
        {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
         "edited",
         false, false},
    };

    for (size_t i = 0; i < ARRAY_LEN(v); i++) {
        struct ws_utf8 u = {0};
        const uint8_t *p = (const uint8_t *)v[i].s;
        size_t n = strlen(v[i].s);
        bool ok = ws_utf8_feed(&u, p, n);
        assert_int_equal(ok, v[i].feed_ok);
        assert_int_equal(ok && ws_utf8_complete(&u), v[i].valid);
        assert_int_equal(ws_utf8_valid(p, n), v[i].valid);
        check_utf8(p, n);
    }
}

static void test_utf8_split_feeds(void **state)
{
    /* Every split of a multi-byte string across two and across n feeds. */
    const uint8_t s[] = "a\xc2\xb5\xe2\x82\xac\xf0\x9f\x98\x80z\xf4\x8f\xbf\xbf";
    const size_t n = sizeof(s) - 1;

    for (size_t cut = 0; cut <= n; cut++) {
        struct ws_utf8 v = {0};
        assert_true(ws_utf8_feed(&v, s, cut));
        assert_true(ws_utf8_feed(&v, s + cut, n - cut));
        assert_true(ws_utf8_complete(&v));
    }
    struct ws_utf8 v = {0};
    for (size_t i = 0; i < n; i++) {
        assert_true(ws_utf8_feed(&v, s + i, 1));
        bool boundary =
            i + 1 == 1 || i + 1 == 3 || i + 1 == 6 || i + 1 == 10 || i + 1 == 11 || i + 1 == 15;
        assert_int_equal(ws_utf8_complete(&v), boundary);
    }
    /* An empty feed changes nothing, in the middle of a character too. */
    struct ws_utf8 w = {0};
    assert_true(ws_utf8_feed(&w, s, 2));
    assert_true(ws_utf8_feed(&w, s, 0));
    assert_false(ws_utf8_complete(&w));
    assert_true(ws_utf8_feed(&w, s + 2, 1));
    assert_true(ws_utf8_complete(&w));
}

static void test_utf8_reject_is_sticky(void **state)
{
    struct ws_utf8 v = {0};

    assert_false(ws_utf8_feed(&v, (const uint8_t *)"\xc0\x80", 2));
    assert_false(ws_utf8_feed(&v, (const uint8_t *)"abc", 3));
    assert_false(ws_utf8_feed(&v, (const uint8_t *)"", 0));
    assert_false(ws_utf8_complete(&v));
}

static void test_utf8_ascii_fast_path(void **state)
{
    /* A bad byte or a multi-byte character at every position of long ASCII. */
    uint8_t s[100];

    for (size_t pos = 0; pos < sizeof(s); pos++) {
        memset(s, 'x', sizeof(s));
        s[pos] = 0xff;
        assert_false(ws_utf8_valid(s, sizeof(s)));
        memset(s, 'x', sizeof(s));
        s[pos] = 0x80;
        assert_false(ws_utf8_valid(s, sizeof(s)));
        if (pos + 1 < sizeof(s)) {
            s[pos] = 0xc3, s[pos + 1] = 0xa9;
            assert_true(ws_utf8_valid(s, sizeof(s)));
        }
        memset(s, 'x', sizeof(s));
        s[pos] = 0xe2; /* truncated at the end or broken by ASCII */
        assert_false(ws_utf8_valid(s, sizeof(s)));
    }
    memset(s, 0x7f, sizeof(s));
    assert_true(ws_utf8_valid(s, sizeof(s)));
}

static void test_utf8_random_vs_reference(void **state)
{
    uint8_t s[24];
    static const uint8_t alphabet[] = {0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf,
                                       0xc0, 0xc2, 0xdf, 0xe0, 0xe1, 0xed, 0xee, 0xef,
                                       0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff, 0x20, 0x61};

    for (int round = 0; round < 200000; round++) {
        size_t n = rng() % sizeof(s);
        for (size_t i = 0; i < n; i++)
            s[i] = alphabet[rng() % sizeof(alphabet)];
        check_utf8(s, n);
        /* And fed in random pieces. */
        struct ws_utf8 v = {0};
        bool ok = true;
        for (size_t i = 0; i < n && ok;) {
            size_t k = 1 + rng() % 5;
            k = k > n - i ? n - i : k;
            ok = ws_utf8_feed(&v, s + i, k);
            i += k;
        }
        assert_int_equal(ok && ws_utf8_complete(&v), ref_utf8_valid(s, n));
    }
}

/* ---- ws_accept_key ----------------------------------------------------- */

static void test_accept_key_rfc(void **state)
{
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    char out[29];

    memset(out, 'X', sizeof(out));
    assert_int_equal(ws_accept_key(key, strlen(key), out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_accept_key_invalid(void **state)
{
    const char *bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ=",   /* 23 */
        "dGhlIHNhbXBsZSBub25jZQ===", /* 25 */
        "dGhlIHNhbXBsZSBub25jZQ",    /* no padding */
        "dGhlIHNhbXBsZSBub25jZQab",  /* 18 bytes, no padding */
        "dGhlIHNhbXBsZSBub25jZ===",  /* 15 bytes */
        "dGhlIHNhbXBsZSBub25j*Q==",  /* bad character */
        "dGhlIHNhbXBsZSBu=25jZQ==",  /* padding inside */
        "dGhlIHNhbXBsZSBub25jZQ= ",  /* trailing space: caller trims */
        " dGhlIHNhbXBsZSBub25jZQ=",
        "dGhlIHNhbXBsZSBub25jZQ-_", /* base64url */
    };
    char out[29];

    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        assert_int_equal(ws_accept_key(bad[i], strlen(bad[i]), out), -1);
    /* Length is what counts, not the NUL. */
    assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==xyz", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 23, out), -1);
}

static void test_accept_key_alphabet(void **state)
{
    char key[25] = "AAAAAAAAAAAAAAAAAAAAAA==";
    const char *ok = "ABCXYZabcxyz0189+/";
    char out[29];

    for (const char *c = ok; *c; c++) {
        key[5] = *c;
        assert_int_equal(ws_accept_key(key, 24, out), 0);
        assert_int_equal(strlen(out), 28);
    }
}

/* ---- permessage-deflate negotiation ------------------------------------ */

#define PMD_BASE "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

static bool nego(const char *hdr, char *out, int *bits)
{
    return ws_pmd_negotiate_bits(hdr, strlen(hdr), out, 128, bits);
}

static void test_pmd_accepts(void **state)
{
    static const struct {
        const char *hdr;
        int bits;
    } ok[] = {
        {"permessage-deflate", 15},
        {"permessage-deflate; client_max_window_bits", 15}, /* Chrome */
        {"permessage-deflate; client_max_window_bits=10", 15},
        {"permessage-deflate;client_no_context_takeover;server_no_context_takeover", 15},
        {"  permessage-deflate  ;  server_no_context_takeover  ", 15},
        {"permessage-deflate\t;\tclient_max_window_bits\t=\t8", 15},
        {"PerMessage-Deflate; Client_Max_Window_Bits", 15},
        {", permessage-deflate ,", 15},
        {",,permessage-deflate", 15},
        {"x-webkit-deflate-frame, permessage-deflate", 15},
        {"foo; bar=\"a,b;c\", permessage-deflate", 15},
        {"foo; bar=\"a\\\"b\", permessage-deflate", 15},
        {"permessage-deflate; server_max_window_bits=10", 10},
        {"permessage-deflate; server_max_window_bits=8", 8},
        {"permessage-deflate; server_max_window_bits=15", 15},
        {"permessage-deflate; server_max_window_bits=\"12\"", 12},
        {"permessage-deflate; server_max_window_bits = \"1\\3\"", 13},
        {"permessage-deflate; client_max_window_bits=\"9\"", 15},
        {"permessage-deflate; server_max_window_bits=9; client_max_window_bits, "
         "permessage-deflate",
         9},
    };
    char out[128];

    for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
        int bits = -1;
        if (!nego(ok[i].hdr, out, &bits))
            fail_msg("rejected: %s", ok[i].hdr);
        assert_int_equal(bits, ok[i].bits);
        if (strstr(ok[i].hdr, "server_max_window_bits")) {
            char want[128];
            snprintf(want, sizeof(want), PMD_BASE "; server_max_window_bits=%d", bits);
            assert_string_equal(out, want);
        } else {
            assert_string_equal(out, PMD_BASE);
        }
    }
}

static void test_pmd_rejects(void **state)
{
    const char *bad[] = {
        "",
        "   ",
        ",,,",
        "x-webkit-deflate-frame",
        "deflate-frame",
        "permessage-deflatex",
        "permessage-deflate; foo",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=-9",
        "permessage-deflate; server_max_window_bits=\"\"",
        "permessage-deflate; server_max_window_bits=\"10 \"",
        "permessage-deflate; server_max_window_bits=1000000000000000000010",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=\"\"",
        /* syntax errors */
        "permessage-deflate;",
        "permessage-deflate; ;client_max_window_bits",
        "permessage-deflate; server_max_window_bits=\"10",
        "permessage-deflate; server_max_window_bits=\"10\\",
        "permessage-deflate garbage",
        "permessage-deflate; =10",
        "\"permessage-deflate\"",
        "permessage-deflate; client_max_window_bits=10 11",
        "foo bar, permessage-deflate",
        "foo; bar=\"a, permessage-deflate",
        "permessage-deflate; a=\"\x01\"",
        "permessage-deflate\xc3\xa9",
    };
    char out[128];

    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        if (nego(bad[i], out, NULL))
            fail_msg("accepted: %s", bad[i]);
}

static void test_pmd_fallback_offers(void **state)
{
    char out[128];
    int bits;

    /* A bad first offer falls back to the next one. */
    assert_true(
        nego("permessage-deflate; foo, permessage-deflate; client_max_window_bits", out, &bits));
    assert_string_equal(out, PMD_BASE);
    assert_true(nego("permessage-deflate; server_max_window_bits=20, permessage-deflate; "
                     "server_max_window_bits=11",
                     out, &bits));
    assert_int_equal(bits, 11);
    assert_true(nego("permessage-deflate; server_no_context_takeover; "
                     "server_no_context_takeover, x-foo; a=b, permessage-deflate",
                     out, &bits));
    assert_int_equal(bits, 15);
    /* The first acceptable offer wins even if later ones are malformed. */
    assert_true(nego("permessage-deflate, permessage-deflate; @@@", out, NULL));
}

static void test_pmd_bounds(void **state)
{
    const char *hdr = "permessage-deflate; foo";
    char out[128];
    size_t need = strlen(PMD_BASE) + 1;

    /* ext_len bounds the header; no NUL needed. */
    assert_true(ws_pmd_negotiate(hdr, strlen("permessage-deflate"), out, sizeof(out)));
    assert_false(ws_pmd_negotiate(hdr, strlen(hdr), out, sizeof(out)));
    assert_false(ws_pmd_negotiate(hdr, 0, out, sizeof(out)));
    /* out_size: exactly enough, one short, none. */
    memset(out, 'X', sizeof(out));
    assert_true(ws_pmd_negotiate("permessage-deflate", 18, out, need));
    assert_string_equal(out, PMD_BASE);
    assert_int_equal(out[need], 'X');
    assert_false(ws_pmd_negotiate("permessage-deflate", 18, out, need - 1));
    assert_false(ws_pmd_negotiate("permessage-deflate", 18, out, 0));
    /* The longest response fits in 128. */
    const char *big = "permessage-deflate; server_max_window_bits=15";
    assert_true(ws_pmd_negotiate(big, strlen(big), out, 128));
    assert_true(strlen(out) < 128);
}

/* ---- permessage-deflate compression ------------------------------------ */

static const uint8_t hello_deflated[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};

static void test_deflate_rfc_hello(void **state)
{
    struct ws_deflater *d = ws_deflater_new(Z_DEFAULT_COMPRESSION);
    uint8_t out[64];

    assert_non_null(d);
    assert_true(ws_deflate_bound(5) <= sizeof(out));
    /* Twice: no context is carried from one message to the next. */
    for (int i = 0; i < 2; i++) {
        long n = ws_deflate_message(d, (const uint8_t *)"Hello", 5, out);
        assert_int_equal(n, sizeof(hello_deflated));
        assert_memory_equal(out, hello_deflated, sizeof(hello_deflated));
    }
    ws_deflater_free(d);
}

static void test_deflate_empty(void **state)
{
    struct ws_deflater *d = ws_deflater_new(6);
    struct ws_inflater *inf = ws_inflater_new();
    uint8_t out[32];

    assert_int_equal(ws_deflate_message(d, NULL, 0, out), 1);
    assert_int_equal(out[0], 0x00);
    assert_int_equal(ws_inflate_message(inf, out, 1, out + 8, 8), 0);
    assert_int_equal(ws_inflate_message(inf, NULL, 0, out + 8, 8), 0);
    assert_int_equal(ws_inflate_message(inf, out, 1, NULL, 0), 0);
    ws_deflater_free(d);
    ws_inflater_free(inf);
}

static void test_inflate_rfc_examples(void **state)
{
    /* RFC 7692 §7.2.3.1, .3 (BFINAL), .4 (two blocks), .5 (stored). */
    static const struct {
        uint8_t data[16];
        size_t len;
    } v[] = {
        {{0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}, 7},
        {{0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}, 7},
        {{0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00}, 13},
        {{0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00}, 11},
    };
    struct ws_inflater *inf = ws_inflater_new();
    uint8_t out[16];

    assert_non_null(inf);
    for (size_t i = 0; i < ARRAY_LEN(v); i++) {
        memset(out, 0, sizeof(out));
        assert_int_equal(ws_inflate_message(inf, v[i].data, v[i].len, out, sizeof(out)), 5);
        assert_memory_equal(out, "Hello", 5);
        /* Exactly enough room, then one byte short. */
        assert_int_equal(ws_inflate_message(inf, v[i].data, v[i].len, out, 5), 5);
        assert_memory_equal(out, "Hello", 5);
        assert_int_equal(ws_inflate_message(inf, v[i].data, v[i].len, out, 4), -2);
        assert_int_equal(ws_inflate_message(inf, v[i].data, v[i].len, out, 0), -2);
    }
    ws_inflater_free(inf);
}

static void test_inflate_corrupt(void **state)
{
    static const struct {
        uint8_t data[8];
        size_t len;
    } bad[] = {
        {{0x06}, 1},                         /* BTYPE 11 (reserved) */
        {{0xff, 0xff, 0xff}, 3},             /* dynamic block, bad code lengths */
        {{0x00, 0x05, 0x00, 0x00, 0x00}, 5}, /* stored LEN/NLEN mismatch */
        {{0x00, 0x05, 0x00, 0xfa, 0xff}, 5}, /* stored block cut short */
        {{0xf2, 0x48, 0xcd}, 3},             /* cut inside a Huffman block */
        {{0x02}, 1},                         /* fixed block, no end-of-block */
        {{0x03, 0x02, 0x00}, 3},             /* distance 1 with no history */
    };
    struct ws_inflater *inf = ws_inflater_new();
    uint8_t out[1024];

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        long r = ws_inflate_message(inf, bad[i].data, bad[i].len, out, sizeof(out));
        if (r != -1)
            fail_msg("case %zu: got %ld", i, r);
    }
    /* The inflater is still usable afterwards. */
    assert_int_equal(ws_inflate_message(inf, hello_deflated, 7, out, sizeof(out)), 5);
    ws_inflater_free(inf);
}

static void test_inflate_exact_fit_at_block_end(void **state)
{
    /* A stored block of 7 whose last 4 bytes are the appended tail (found by
     * the fuzzer): output fills exactly as the input ends on a block boundary. */
    const uint8_t in[] = {0x00, 0x07, 0x00, 0xf8, 0xff, 'a', 'b', 'c'};
    const uint8_t want[] = {'a', 'b', 'c', 0x00, 0x00, 0xff, 0xff};
    struct ws_inflater *inf = ws_inflater_new();
    uint8_t out[16];

    assert_int_equal(ws_inflate_message(inf, in, sizeof(in), out, sizeof(out)), 7);
    assert_memory_equal(out, want, 7);
    assert_int_equal(ws_inflate_message(inf, in, sizeof(in), out, 7), 7);
    assert_memory_equal(out, want, 7);
    assert_int_equal(ws_inflate_message(inf, in, sizeof(in), out, 6), -2);
    /* Same with a message that ends exactly on a fixed block's end. */
    const uint8_t bfinal[] = {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
    assert_int_equal(ws_inflate_message(inf, bfinal, 6, out, 5), 5);
    assert_int_equal(ws_inflate_message(inf, bfinal, 6, out, 4), -2);
    ws_inflater_free(inf);
}

static void round_trip(struct ws_deflater *d, struct ws_inflater *inf, const uint8_t *in, size_t n)
{
    size_t bound = ws_deflate_bound(n);
    uint8_t *c = malloc(bound), *out = malloc(n + 1);
    long clen = ws_deflate_message(d, in, n, c);

    assert_true(clen > 0 && (size_t)clen <= bound);
    assert_int_equal(ws_inflate_message(inf, c, (size_t)clen, out, n + 1), n);
    if (n > 0)
        assert_memory_equal(out, in, n);
    assert_int_equal(ws_inflate_message(inf, c, (size_t)clen, out, n), n);
    if (n > 0)
        assert_int_equal(ws_inflate_message(inf, c, (size_t)clen, out, n - 1), -2);
    free(c);
    free(out);
}

static void test_deflate_round_trips(void **state)
{
    static const size_t sizes[] = {1, 2, 5, 100, 1000, 4096, 65536, 300000};
    struct ws_inflater *inf = ws_inflater_new();
    uint8_t *buf = malloc(300000);

    for (int wb = 8; wb <= 15; wb++) {
        for (int level = -1; level <= 9; level += 5) {
            struct ws_deflater *d = ws_deflater_new_window(level, wb);
            assert_non_null(d);
            for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
                fill_random(buf, sizes[i]); /* incompressible */
                round_trip(d, inf, buf, sizes[i]);
                for (size_t k = 0; k < sizes[i]; k++) /* compressible */
                    buf[k] = (uint8_t)("abcab"[rng() % 5] + (k % 1000 == 0));
                round_trip(d, inf, buf, sizes[i]);
            }
            ws_deflater_free(d);
        }
    }
    free(buf);
    ws_inflater_free(inf);
}

/*
 * Inflates raw deflate data with a window of exactly wbits (zlib directly).
 * One output byte per call: zlib only checks distances against its window
 * when the history is not in the current output buffer.
 */
static long raw_inflate_window(const uint8_t *in, size_t n, uint8_t *out, size_t cap, int wbits)
{
    static uint8_t tmp[1 << 17];
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    z_stream z = {0};
    size_t pos = 0;
    int rc = Z_OK;

    assert_true(n + 4 <= sizeof(tmp));
    memcpy(tmp, in, n);
    memcpy(tmp + n, tail, 4);
    assert_int_equal(inflateInit2(&z, -wbits), Z_OK);
    z.next_in = tmp;
    z.avail_in = (uInt)(n + 4);
    while (rc == Z_OK && pos < cap) {
        z.next_out = out + pos;
        z.avail_out = 1;
        rc = inflate(&z, Z_SYNC_FLUSH);
        pos += 1 - z.avail_out;
    }
    inflateEnd(&z);
    return rc == Z_OK || rc == Z_BUF_ERROR || rc == Z_STREAM_END ? (long)pos : -1;
}

static void test_deflate_window_limits(void **state)
{
    /* Repeats at distances up to 40000: a 15-bit window uses them. */
    static uint8_t in[60000], c[80000], out[60000];
    struct ws_deflater *d15 = ws_deflater_new(9);
    long n;

    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)rng();
    memcpy(in + 300, in, 200);
    memcpy(in + 40000, in + 10000, 10000); /* distance 30000 */
    n = ws_deflate_message(d15, in, sizeof(in), c);
    assert_true(n > 0);
    assert_int_equal(raw_inflate_window(c, (size_t)n, out, sizeof(out), 15), sizeof(in));
    assert_int_equal(raw_inflate_window(c, (size_t)n, out, sizeof(out), 8), -1);
    ws_deflater_free(d15);
    /* Compressed with window_bits N, a decoder with exactly N bits suffices. */
    for (int wb = 8; wb <= 15; wb++) {
        struct ws_deflater *d = ws_deflater_new_window(9, wb);
        n = ws_deflate_message(d, in, sizeof(in), c);
        assert_true(n > 0);
        assert_int_equal(raw_inflate_window(c, (size_t)n, out, sizeof(out), wb), sizeof(in));
        assert_memory_equal(out, in, sizeof(in));
        ws_deflater_free(d);
    }
}

static void test_deflater_invalid_args(void **state)
{
    assert_null(ws_deflater_new(10));
    assert_null(ws_deflater_new(-2));
    assert_null(ws_deflater_new_window(6, 7));
    assert_null(ws_deflater_new_window(6, 16));
    ws_deflater_free(NULL);
    ws_inflater_free(NULL);
}

static void test_inflate_bomb_bounded(void **state)
{
    /* 1 MiB of zeros compresses to ~1 KiB; a 64 KiB limit stops it. */
    static uint8_t zeros[1 << 20], c[1 << 21], out[1 << 16];
    struct ws_deflater *d = ws_deflater_new(9);
    struct ws_inflater *inf = ws_inflater_new();
    long n = ws_deflate_message(d, zeros, sizeof(zeros), c);

    assert_true(n > 0 && n < 4096);
    assert_int_equal(ws_inflate_message(inf, c, (size_t)n, out, sizeof(out)), -2);
    ws_deflater_free(d);
    ws_inflater_free(inf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_rfc_masked_hello),
        cmocka_unit_test(test_parse_rfc_masked_pong),
        cmocka_unit_test(test_parse_rfc_unmasked_examples_rejected),
        cmocka_unit_test(test_parse_rfc_lengths_masked),
        cmocka_unit_test(test_parse_boundaries),
        cmocka_unit_test(test_parse_empty_and_incomplete),
        cmocka_unit_test(test_parse_err_rsv),
        cmocka_unit_test(test_parse_err_opcode),
        cmocka_unit_test(test_parse_err_unmasked),
        cmocka_unit_test(test_parse_err_control),
        cmocka_unit_test(test_parse_err_len_encoding),
        cmocka_unit_test(test_parse_err_too_big),
        cmocka_unit_test(test_parse_error_precedence),
        cmocka_unit_test(test_parse_stream_every_split),
        cmocka_unit_test(test_unmask_all_offsets_lengths),
        cmocka_unit_test(test_unmask_pieces_and_involution),
        cmocka_unit_test(test_header_rfc_examples),
        cmocka_unit_test(test_header_lengths_and_bits),
        cmocka_unit_test(test_error_close_codes),
        cmocka_unit_test(test_close_code_valid),
        cmocka_unit_test(test_utf8_exhaustive_short),
        cmocka_unit_test(test_utf8_four_byte_sweep),
        cmocka_unit_test(test_utf8_prefix_semantics),
        cmocka_unit_test(test_utf8_vectors),
        cmocka_unit_test(test_utf8_split_feeds),
        cmocka_unit_test(test_utf8_reject_is_sticky),
        cmocka_unit_test(test_utf8_ascii_fast_path),
        cmocka_unit_test(test_utf8_random_vs_reference),
        cmocka_unit_test(test_accept_key_rfc),
        cmocka_unit_test(test_accept_key_invalid),
        cmocka_unit_test(test_accept_key_alphabet),
        cmocka_unit_test(test_pmd_accepts),
        cmocka_unit_test(test_pmd_rejects),
        cmocka_unit_test(test_pmd_fallback_offers),
        cmocka_unit_test(test_pmd_bounds),
        cmocka_unit_test(test_deflate_rfc_hello),
        cmocka_unit_test(test_deflate_empty),
        cmocka_unit_test(test_inflate_rfc_examples),
        cmocka_unit_test(test_inflate_corrupt),
        cmocka_unit_test(test_inflate_exact_fit_at_block_end),
        cmocka_unit_test(test_deflate_round_trips),
        cmocka_unit_test(test_deflate_window_limits),
        cmocka_unit_test(test_deflater_invalid_args),
        cmocka_unit_test(test_inflate_bomb_bounded),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
