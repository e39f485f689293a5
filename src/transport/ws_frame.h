/*
 * ws_frame: RFC 6455 framing for a server, with no I/O and no allocation
 * (except the permessage-deflate helpers, which own a zlib stream).
 *
 * The connection code reads bytes, asks ws_frame_parse() what the next frame
 * is, unmasks the payload in place, and validates text with the incremental
 * UTF-8 checker across fragments. Outgoing frames are a header from
 * ws_frame_header() followed by the (shared, already framed once) payload.
 */
#ifndef HERALD_WS_FRAME_H
#define HERALD_WS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close status codes we send (RFC 6455 §7.4.1). */
enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_INVALID_DATA = 1007, /* e.g. invalid UTF-8 in a text message */
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_TRY_AGAIN = 1013,
    WS_CLOSE_TOKEN = 4001,       /* herald: the subscriber's token expired or never came */
    WS_CLOSE_HOOK_DENIED = 4403, /* herald: the app's backend refused the connection */
    WS_CLOSE_APP_GONE = 4404,    /* herald: the connection's app was deleted */
    WS_CLOSE_APP_LIMIT = 4429,   /* herald: the app's plan allows no more (DESIGN.md §8) */
    WS_CLOSE_HOOK_FAILED = 4503, /* herald: the app's backend did not answer its connect hook */
};

/* Negative results of ws_frame_parse(); each maps to a close code via ws_error_close_code(). */
enum ws_error {
    WS_ERR_RSV = -1,          /* RSV bit set that no extension negotiated -> 1002 */
    WS_ERR_OPCODE = -2,       /* reserved opcode -> 1002 */
    WS_ERR_UNMASKED = -3,     /* client frame without mask -> 1002 */
    WS_ERR_CONTROL_LEN = -4,  /* control frame payload > 125 -> 1002 */
    WS_ERR_CONTROL_FRAG = -5, /* control frame with FIN=0 -> 1002 */
    WS_ERR_LEN_ENCODING = -6, /* non-minimal length, or 64-bit length with MSB set -> 1002 */
    WS_ERR_TOO_BIG = -7,      /* payload > max_payload -> 1009 */
};

struct ws_frame {
    bool fin;
    bool rsv1; /* "compressed" when permessage-deflate is on (first frame of a message only) */
    uint8_t opcode;
    uint8_t mask[4];
    uint64_t payload_len;
    size_t header_len; /* 2..14 */
};

/*
 * Parses a client-to-server frame header at buf[0..len). Returns the header
 * length (> 0) when the whole header is present, 0 when more bytes are
 * needed, or a negative enum ws_error. `allow_rsv1` is true when
 * permessage-deflate was negotiated (RSV1 is then allowed on data frames that
 * start a message, never on control or continuation frames). `max_payload`
 * bounds payload_len. Requires the MASK bit. Does not look at the payload.
 *
 * Errors are reported as soon as the bytes proving them are present, so any
 * prefix of a header gives 0 or the same error as the whole header. *f is
 * written only on success. The parser cannot know whether a TEXT/BINARY frame
 * starts a message: the caller must still reject a TEXT/BINARY frame while a
 * fragmented message is open, and a CONT frame when none is (both 1002).
 */
int ws_frame_parse(const uint8_t *buf, size_t len, struct ws_frame *f, bool allow_rsv1,
                   uint64_t max_payload);

/*
 * XORs data[0..len) with the mask; `offset` is the position of data[0] within
 * the frame payload (so a payload can be unmasked in pieces). Word-at-a-time;
 * data needs no alignment. Can't fail.
 */
void ws_unmask(uint8_t *data, size_t len, const uint8_t mask[4], uint64_t offset);

/*
 * Writes an unmasked server frame header for a payload of `payload_len` bytes
 * into out (at least 10 bytes). Returns the header length (2, 4 or 10).
 * payload_len must be < 2^63 (asserted). Can't fail.
 */
size_t ws_frame_header(uint8_t *out, uint8_t opcode, bool fin, bool rsv1, uint64_t payload_len);

/* Maps a negative enum ws_error to the close code to send (1011 for anything else). */
uint16_t ws_error_close_code(int err);
/* A static description of an enum ws_error; never NULL. */
const char *ws_strerror(int err);

/*
 * Whether a close code received from a peer is valid on the wire
 * (RFC 6455 §7.4: 1000-1003, 1007-1011 (and 1012-1014 as registered), 3000-4999).
 */
bool ws_close_code_valid(uint16_t code);

/*
 * Incremental UTF-8 validation (Hoehrmann-style DFA) so text can be checked
 * across fragments and read boundaries. Zero-initialise. ws_utf8_feed returns
 * false as soon as the bytes so far cannot be the start of valid UTF-8
 * (overlongs, surrogates, > U+10FFFF rejected); the state then stays
 * rejected. ws_utf8_complete is true when the bytes so far end on a character
 * boundary: check it when the message's FIN frame has been fed (a sequence cut
 * off at the end of a message is invalid, 1007). Runs of ASCII are checked 8
 * bytes at a time.
 */
struct ws_utf8 {
    uint32_t state;
};
bool ws_utf8_feed(struct ws_utf8 *v, const uint8_t *data, size_t len);
bool ws_utf8_complete(const struct ws_utf8 *v);
/* One-shot helper: whether data[0..len) is complete valid UTF-8. */
bool ws_utf8_valid(const uint8_t *data, size_t len);

/*
 * Computes Sec-WebSocket-Accept for a client key: base64(SHA-1(key + GUID)).
 * `key` must be the trimmed header value; returns 0 and writes a NUL-terminated
 * 28-character string into out[29], or -1 when the key is not the base64 of
 * 16 bytes (24 chars ending in "==") -> the handshake is answered 400.
 * key is borrowed; nothing is kept.
 */
int ws_accept_key(const char *key, size_t key_len, char out[29]);

/*
 * permessage-deflate (RFC 7692).
 *
 * herald compresses each outgoing message once and shares the compressed frame
 * with every subscriber, so it always answers with server_no_context_takeover.
 * It also always asks for client_no_context_takeover (allowed by §7.1.1.1 even
 * when the client did not offer it), so one inflater per worker thread serves
 * every connection: no per-connection zlib state.
 *
 * ws_pmd_negotiate() reads a Sec-WebSocket-Extensions request header (may list
 * several offers, and other extensions) and returns true if an acceptable
 * permessage-deflate offer is present; it writes the response header value
 * (NUL-terminated, e.g. "permessage-deflate; server_no_context_takeover;
 * client_no_context_takeover") into out[out_size]. Offers with parameters we do
 * not know, duplicated parameters or invalid values are skipped (RFC 7692 §5).
 * Parameter values may be tokens or quoted-strings; names compare
 * case-insensitively. A header with a syntax error before an acceptable offer
 * gives false (no compression). Also false when out_size is too small (128 is
 * always enough). client_max_window_bits is accepted and not answered, so the
 * client may use any window: the inflater uses 15 bits.
 *
 * If the accepted offer has server_max_window_bits=N, the response echoes it
 * and every message sent on that connection must be compressed with at most
 * N window bits: use ws_pmd_negotiate_bits() to learn N, and a deflater from
 * ws_deflater_new_window(level, N). A frame compressed with a larger window
 * must not be shared with such a connection.
 */
bool ws_pmd_negotiate(const char *ext, size_t ext_len, char *out, size_t out_size);
/*
 * As ws_pmd_negotiate(); on success also sets *server_window_bits (8..15; 15
 * when the client set no limit) if server_window_bits is not NULL.
 */
bool ws_pmd_negotiate_bits(const char *ext, size_t ext_len, char *out, size_t out_size,
                           int *server_window_bits);

struct ws_deflater; /* opaque; owns a zlib deflate stream */
struct ws_inflater; /* opaque; owns a zlib inflate stream */

/*
 * A deflater with a 15-bit window at zlib `level` (-1..9). Returns NULL for an
 * invalid level; aborts when out of memory. The caller owns the result and
 * frees it with ws_deflater_free() (NULL is a no-op). Not thread-safe: one per
 * worker thread.
 */
struct ws_deflater *ws_deflater_new(int level);
/* As ws_deflater_new() with a window of window_bits (8..15, else NULL). */
struct ws_deflater *ws_deflater_new_window(int level, int window_bits);
void ws_deflater_free(struct ws_deflater *d);
/*
 * Compresses in[0..in_len) as one message with a fresh context (raw deflate,
 * Z_SYNC_FLUSH, trailing 00 00 ff ff removed, §7.2.1). Writes to out, which must
 * hold ws_deflate_bound(in_len) bytes. Returns the compressed length, or -1 on a
 * zlib error (or when the bound exceeds 4 GiB). An empty message compresses to
 * the single byte 0x00 (§7.2.3.6). in and out are borrowed.
 */
long ws_deflate_message(struct ws_deflater *d, const uint8_t *in, size_t in_len, uint8_t *out);
size_t ws_deflate_bound(size_t in_len);

/* As ws_deflater_new(): aborts when out of memory, caller frees, one per thread. */
struct ws_inflater *ws_inflater_new(void);
void ws_inflater_free(struct ws_inflater *i);
/*
 * Decompresses one whole compressed message (the concatenated payloads of its
 * frames) with a fresh context, appending the 00 00 ff ff tail itself. Writes at
 * most out_size bytes. Returns the decompressed length, -1 on corrupt data,
 * -2 when the output would exceed out_size (-> close 1009). Data that ends
 * inside a DEFLATE block is corrupt; bytes after a final block (BFINAL=1) are
 * ignored; an empty payload is an empty message. out_size above 4 GiB counts
 * as 4 GiB. On error out holds garbage. in and out are borrowed.
 */
long ws_inflate_message(struct ws_inflater *i, const uint8_t *in, size_t in_len, uint8_t *out,
                        size_t out_size);

#endif
