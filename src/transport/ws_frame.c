/*
 * ws_frame: RFC 6455 frame headers, masking, UTF-8 validation, the opening
 * handshake key, close codes, and RFC 7692 permessage-deflate.
 *
 * Everything up to the permessage-deflate section is pure: it reads
 * (buf, len), writes into caller memory and never allocates or does I/O. The
 * deflater and inflater own a zlib stream each; they are created once per
 * worker thread and reset for every message (no context takeover in either
 * direction), so no zlib state lives in a connection.
 */
#include "transport/ws_frame.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <zlib.h>

/* ------------------------------------------------------------------------ */
/* Frame header (RFC 6455 §5.2)                                             */
/* ------------------------------------------------------------------------ */

#define WS_FIN  0x80
#define WS_RSV1 0x40
#define WS_RSV2 0x20
#define WS_RSV3 0x10
#define WS_MASK 0x80

static bool opcode_is_control(uint8_t op)
{
    return (op & 0x8) != 0;
}

static bool opcode_is_known(uint8_t op)
{
    return op <= WS_OP_BINARY || (op >= WS_OP_CLOSE && op <= WS_OP_PONG);
}

/* Checks the first byte alone: RSV bits and opcode. */
static int check_byte0(uint8_t b0, bool allow_rsv1)
{
    uint8_t op = b0 & 0x0f;

    if (!opcode_is_known(op))
        return WS_ERR_OPCODE;
    if (b0 & (WS_RSV2 | WS_RSV3))
        return WS_ERR_RSV;
    /* RFC 7692 §6.1: RSV1 only on the first frame of a data message. */
    if ((b0 & WS_RSV1) && (!allow_rsv1 || op == WS_OP_CONT || opcode_is_control(op)))
        return WS_ERR_RSV;
    if (opcode_is_control(op) && !(b0 & WS_FIN))
        return WS_ERR_CONTROL_FRAG;
    return 0;
}

/* Checks the second byte given the first: mask bit and control length. */
static int check_byte1(uint8_t b0, uint8_t b1)
{
    if (!(b1 & WS_MASK))
        return WS_ERR_UNMASKED;
    if (opcode_is_control(b0 & 0x0f) && (b1 & 0x7f) > 125)
        return WS_ERR_CONTROL_LEN;
    return 0;
}

static uint64_t load_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;

    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/*
 * Errors are reported as soon as the bytes that prove them are present, so a
 * prefix of a header yields either 0 or the same error as the whole header.
 */
int ws_frame_parse(const uint8_t *buf, size_t len, struct ws_frame *f, bool allow_rsv1,
                   uint64_t max_payload)
{
    int err;

    if (len < 1)
        return 0;
    if ((err = check_byte0(buf[0], allow_rsv1)) < 0)
        return err;
    if (len < 2)
        return 0;
    if ((err = check_byte1(buf[0], buf[1])) < 0)
        return err;

    uint8_t len7 = buf[1] & 0x7f;
    size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
    size_t header_len = 2 + ext + 4;

    if (len < 2 + ext)
        return 0;
    uint64_t plen = ext ? load_be(buf + 2, ext) : len7;
    /* §5.2: "the minimal number of bytes MUST be used to encode the length". */
    if (ext == 2 && plen < 126)
        return WS_ERR_LEN_ENCODING;
    if (ext == 8 && (plen >> 63 || plen <= 0xffff))
        return WS_ERR_LEN_ENCODING;
    if (plen > max_payload)
        return WS_ERR_TOO_BIG;
    if (len < header_len)
        return 0;

    *f = (struct ws_frame){
        .fin = (buf[0] & WS_FIN) != 0,
        .rsv1 = (buf[0] & WS_RSV1) != 0,
        .opcode = buf[0] & 0x0f,
        .payload_len = plen,
        .header_len = header_len,
    };
    memcpy(f->mask, buf + 2 + ext, 4);
    return (int)header_len;
}

void ws_unmask(uint8_t *data, size_t len, const uint8_t mask[4], uint64_t offset)
{
    uint8_t m[8];
    uint64_t word, chunk;
    size_t i = 0;

    for (size_t k = 0; k < 8; k++)
        m[k] = mask[(offset + k) & 3];
    memcpy(&word, m, 8);
    /* 8 is a multiple of 4, so the rotated mask stays in phase per word. */
    for (; len - i >= 8; i += 8) {
        memcpy(&chunk, data + i, 8);
        chunk ^= word;
        memcpy(data + i, &chunk, 8);
    }
    for (size_t k = 0; i < len; i++, k++)
        data[i] ^= m[k];
}

size_t ws_frame_header(uint8_t *out, uint8_t opcode, bool fin, bool rsv1, uint64_t payload_len)
{
    assert(payload_len >> 63 == 0);
    out[0] = (uint8_t)((fin ? WS_FIN : 0) | (rsv1 ? WS_RSV1 : 0) | (opcode & 0x0f));
    if (payload_len < 126) {
        out[1] = (uint8_t)payload_len;
        return 2;
    }
    if (payload_len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(payload_len >> (56 - 8 * i));
    return 10;
}

uint16_t ws_error_close_code(int err)
{
    switch (err) {
    case WS_ERR_TOO_BIG: return WS_CLOSE_TOO_BIG;
    case WS_ERR_RSV:
    case WS_ERR_OPCODE:
    case WS_ERR_UNMASKED:
    case WS_ERR_CONTROL_LEN:
    case WS_ERR_CONTROL_FRAG:
    case WS_ERR_LEN_ENCODING: return WS_CLOSE_PROTOCOL;
    default: return WS_CLOSE_INTERNAL; /* not a ws_error: our bug */
    }
}

const char *ws_strerror(int err)
{
    switch (err) {
    case WS_ERR_RSV: return "reserved bit set";
    case WS_ERR_OPCODE: return "reserved opcode";
    case WS_ERR_UNMASKED: return "client frame not masked";
    case WS_ERR_CONTROL_LEN: return "control frame payload longer than 125";
    case WS_ERR_CONTROL_FRAG: return "fragmented control frame";
    case WS_ERR_LEN_ENCODING: return "non-minimal or invalid payload length";
    case WS_ERR_TOO_BIG: return "payload too big";
    default: return "unknown websocket error";
    }
}

bool ws_close_code_valid(uint16_t code)
{
    if (code >= 1000 && code <= 1003)
        return true;
    /* 1004 reserved, 1005/1006/1015 must never be on the wire (§7.4.1). */
    if (code >= 1007 && code <= 1014)
        return true;
    return code >= 3000 && code <= 4999;
}

/* ------------------------------------------------------------------------ */
/* UTF-8 (RFC 3629 §4), as a DFA over byte classes                          */
/* ------------------------------------------------------------------------ */

enum utf8_state {
    U_ACCEPT = 0, /* on a character boundary; must be 0 (zero-initialised) */
    U_REJECT,     /* sticky */
    U_CONT1,      /* one more 80..BF */
    U_CONT2,      /* two more 80..BF */
    U_CONT3,      /* three more 80..BF */
    U_E0,         /* after E0: A0..BF (no overlongs) */
    U_ED,         /* after ED: 80..9F (no surrogates) */
    U_F0,         /* after F0: 90..BF (no overlongs) */
    U_F4,         /* after F4: 80..8F (nothing above U+10FFFF) */
};

/*
 * Byte classes: 0 ASCII, 1 80..8F, 2 90..9F, 3 A0..BF, 4 C2..DF, 5 E0,
 * 6 E1..EC/EE..EF, 7 ED, 8 F0, 9 F1..F3, 10 F4, 11 never valid (C0 C1 F5..FF).
 */
static const uint8_t utf8_class[256] = {
    0,  0,  0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 00 */
    0,  0,  0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 10 */
    0,  0,  0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 20 */
    0,  0,  0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 30 */
    0,  0,  0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 40 */
    0,  0,  0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 50 */
    0,  0,  0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 60 */
    0,  0,  0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 70 */
    1,  1,  1, 1, 1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  /* 80 */
    2,  2,  2, 2, 2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 90 */
    3,  3,  3, 3, 3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  /* A0 */
    3,  3,  3, 3, 3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  /* B0 */
    11, 11, 4, 4, 4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* C0 */
    4,  4,  4, 4, 4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* D0 */
    5,  6,  6, 6, 6,  6,  6,  6,  6,  6,  6,  6,  6,  7,  6,  6,  /* E0 */
    8,  9,  9, 9, 10, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, /* F0 */
};

/* Next state, indexed by state and byte class (columns in class order). */
#define R_ U_REJECT
static const uint8_t utf8_next[9][12] = {
    [U_ACCEPT] = {U_ACCEPT, R_, R_, R_, U_CONT1, U_E0, U_CONT2, U_ED, U_F0, U_CONT3, U_F4, R_},
    [U_REJECT] = {R_, R_, R_, R_, R_, R_, R_, R_, R_, R_, R_, R_},
    [U_CONT1] = {R_, U_ACCEPT, U_ACCEPT, U_ACCEPT, R_, R_, R_, R_, R_, R_, R_, R_},
    [U_CONT2] = {R_, U_CONT1, U_CONT1, U_CONT1, R_, R_, R_, R_, R_, R_, R_, R_},
    [U_CONT3] = {R_, U_CONT2, U_CONT2, U_CONT2, R_, R_, R_, R_, R_, R_, R_, R_},
    [U_E0] = {R_, R_, R_, U_CONT1, R_, R_, R_, R_, R_, R_, R_, R_},
    [U_ED] = {R_, U_CONT1, U_CONT1, R_, R_, R_, R_, R_, R_, R_, R_, R_},
    [U_F0] = {R_, R_, U_CONT2, U_CONT2, R_, R_, R_, R_, R_, R_, R_, R_},
    [U_F4] = {R_, U_CONT2, R_, R_, R_, R_, R_, R_, R_, R_, R_, R_},
};
#undef R_

/* Returns the index of the first byte at or after i that may be non-ASCII. */
static size_t skip_ascii(const uint8_t *data, size_t i, size_t len)
{
    uint64_t w;

    while (len - i >= 8) {
        memcpy(&w, data + i, 8);
        if (w & UINT64_C(0x8080808080808080))
            break;
        i += 8;
    }
    return i;
}

bool ws_utf8_feed(struct ws_utf8 *v, const uint8_t *data, size_t len)
{
    uint32_t s = v->state;
    size_t i = 0;

    assert(s <= U_F4);
    while (i < len && s != U_REJECT) {
        if (s == U_ACCEPT) {
            i = skip_ascii(data, i, len);
            if (i == len)
                break;
        }
        s = utf8_next[s][utf8_class[data[i++]]];
    }
    v->state = s;
    return s != U_REJECT;
}

bool ws_utf8_complete(const struct ws_utf8 *v)
{
    return v->state == U_ACCEPT;
}

bool ws_utf8_valid(const uint8_t *data, size_t len)
{
    struct ws_utf8 v = {0};

    return ws_utf8_feed(&v, data, len) && ws_utf8_complete(&v);
}

/* ------------------------------------------------------------------------ */
/* Opening handshake (RFC 6455 §4.2.2)                                      */
/* ------------------------------------------------------------------------ */

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static bool is_base64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/*
 * 16 bytes encode to 22 base64 characters plus "==". The 4 bits that the last
 * character carries beyond the 16 bytes are not checked: decoders ignore them.
 */
static bool key_is_16_bytes(const char *key, size_t key_len)
{
    if (key_len != 24 || key[22] != '=' || key[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!is_base64_char(key[i]))
            return false;
    return true;
}

int ws_accept_key(const char *key, size_t key_len, char out[29])
{
    uint8_t buf[24 + sizeof(ws_guid) - 1];
    uint8_t digest[SHA_DIGEST_LENGTH];

    if (!key_is_16_bytes(key, key_len))
        return -1;
    memcpy(buf, key, 24);
    memcpy(buf + 24, ws_guid, sizeof(ws_guid) - 1);
    SHA1(buf, sizeof(buf), digest);
    /* EVP_EncodeBlock writes 28 characters and a NUL for 20 bytes. */
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* permessage-deflate negotiation (RFC 7692 §5, §7.1)                       */
/* ------------------------------------------------------------------------ */

/*
 * Sec-WebSocket-Extensions grammar (RFC 6455 §9.1, HTTP list rules):
 *   list      = [ extension ] *( OWS "," OWS [ extension ] )
 *   extension = token *( OWS ";" OWS param )
 *   param     = token [ OWS "=" OWS ( token / quoted-string ) ]
 */
struct lex {
    const char *p;
    const char *end;
};

static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void lex_ows(struct lex *l)
{
    while (l->p < l->end && (*l->p == ' ' || *l->p == '\t'))
        l->p++;
}

/* Skips OWS, then consumes c if it is next. */
static bool lex_eat(struct lex *l, char c)
{
    lex_ows(l);
    if (l->p < l->end && *l->p == c) {
        l->p++;
        return true;
    }
    return false;
}

/* Skips OWS, then reads a token; returns its length (0: no token here). */
static size_t lex_token(struct lex *l, const char **tok)
{
    lex_ows(l);
    *tok = l->p;
    while (l->p < l->end && is_tchar((unsigned char)*l->p))
        l->p++;
    return (size_t)(l->p - *tok);
}

/*
 * Reads a quoted-string after its opening quote, unescaping into buf[cap].
 * Returns the unescaped length (may exceed cap: then buf holds a prefix), or
 * -1 when the string is not terminated or holds a control character.
 */
static long lex_quoted(struct lex *l, char *buf, size_t cap)
{
    size_t n = 0;

    while (l->p < l->end) {
        unsigned char c = (unsigned char)*l->p++;
        if (c == '"')
            return (long)n;
        if (c == '\\') {
            if (l->p == l->end)
                return -1;
            c = (unsigned char)*l->p++;
        }
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return -1;
        if (n < cap)
            buf[n] = (char)c;
        n++;
    }
    return -1;
}

/* Reads a param value (token or quoted-string) into buf[cap]; as lex_quoted. */
static long lex_value(struct lex *l, char *buf, size_t cap)
{
    const char *tok;
    size_t n;

    if (lex_eat(l, '"'))
        return lex_quoted(l, buf, cap);
    n = lex_token(l, &tok);
    if (n == 0)
        return -1;
    memcpy(buf, tok, n < cap ? n : cap);
    return (long)n;
}

static bool ascii_ieq(const char *a, size_t a_len, const char *lit)
{
    size_t n = strlen(lit);

    if (a_len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lit[i])
            return false;
    }
    return true;
}

/* RFC 7692 §7.1.2: decimal 8..15 without leading zeros. */
static int parse_window_bits(const char *v, long n)
{
    if (n == 1 && v[0] >= '8' && v[0] <= '9')
        return v[0] - '0';
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + v[1] - '0';
    return -1;
}

enum pmd_param {
    PMD_SERVER_NCT = 1 << 0,
    PMD_CLIENT_NCT = 1 << 1,
    PMD_SERVER_MWB = 1 << 2,
    PMD_CLIENT_MWB = 1 << 3,
};

struct pmd_offer {
    unsigned seen;   /* enum pmd_param bits */
    int server_bits; /* server_max_window_bits, 0 when absent */
    bool ok;         /* all params known and valid so far */
};

static enum pmd_param pmd_param_id(const char *name, size_t n)
{
    if (ascii_ieq(name, n, "server_no_context_takeover"))
        return PMD_SERVER_NCT;
    if (ascii_ieq(name, n, "client_no_context_takeover"))
        return PMD_CLIENT_NCT;
    if (ascii_ieq(name, n, "server_max_window_bits"))
        return PMD_SERVER_MWB;
    if (ascii_ieq(name, n, "client_max_window_bits"))
        return PMD_CLIENT_MWB;
    return 0;
}

/* val_len < 0: the param had no value. Returns whether the param is acceptable. */
static bool pmd_apply(struct pmd_offer *o, const char *name, size_t name_len, const char *val,
                      long val_len)
{
    enum pmd_param id = pmd_param_id(name, name_len);

    if (id == 0 || (o->seen & id))
        return false;
    o->seen |= id;
    switch (id) {
    case PMD_SERVER_NCT:
    case PMD_CLIENT_NCT: return val_len < 0;
    case PMD_SERVER_MWB:
        o->server_bits = val_len < 0 ? -1 : parse_window_bits(val, val_len);
        return o->server_bits > 0;
    case PMD_CLIENT_MWB: return val_len < 0 || parse_window_bits(val, val_len) > 0;
    }
    return false;
}

/*
 * Parses one extension (name and params). Returns -1 on a syntax error, 1 when
 * it is an acceptable permessage-deflate offer (filled into *o), 0 otherwise.
 */
static int parse_extension(struct lex *l, struct pmd_offer *o)
{
    const char *name, *pname;
    size_t name_len = lex_token(l, &name), pname_len;
    char val[8];

    if (name_len == 0)
        return -1;
    *o = (struct pmd_offer){.ok = ascii_ieq(name, name_len, "permessage-deflate")};
    while (lex_eat(l, ';')) {
        long val_len = -1;
        if ((pname_len = lex_token(l, &pname)) == 0)
            return -1;
        if (lex_eat(l, '=') && (val_len = lex_value(l, val, sizeof(val))) < 0)
            return -1;
        if (o->ok)
            o->ok = pmd_apply(o, pname, pname_len, val, val_len);
    }
    return o->ok ? 1 : 0;
}

static bool pmd_response(const struct pmd_offer *o, char *out, size_t out_size)
{
    int n;

    if (o->server_bits > 0)
        n = snprintf(out, out_size,
                     "permessage-deflate; server_no_context_takeover; "
                     "client_no_context_takeover; server_max_window_bits=%d",
                     o->server_bits);
    else
        n = snprintf(out, out_size,
                     "permessage-deflate; server_no_context_takeover; "
                     "client_no_context_takeover");
    return n > 0 && (size_t)n < out_size;
}

bool ws_pmd_negotiate_bits(const char *ext, size_t ext_len, char *out, size_t out_size,
                           int *server_window_bits)
{
    struct lex l = {.p = ext, .end = ext + ext_len};
    struct pmd_offer o;

    for (;;) {
        if (lex_eat(&l, ','))
            continue; /* empty list element */
        if (l.p == l.end)
            return false;
        int r = parse_extension(&l, &o);
        lex_ows(&l);
        if (r < 0 || (l.p != l.end && *l.p != ','))
            return false;
        if (r > 0) {
            if (!pmd_response(&o, out, out_size))
                return false;
            if (server_window_bits)
                *server_window_bits = o.server_bits > 0 ? o.server_bits : 15;
            return true;
        }
    }
}

bool ws_pmd_negotiate(const char *ext, size_t ext_len, char *out, size_t out_size)
{
    return ws_pmd_negotiate_bits(ext, ext_len, out, out_size, NULL);
}

/* ------------------------------------------------------------------------ */
/* permessage-deflate compression (RFC 7692 §7.2)                           */
/* ------------------------------------------------------------------------ */

static const uint8_t pmd_tail[4] = {0x00, 0x00, 0xff, 0xff};

struct ws_deflater {
    z_stream z;
};

struct ws_inflater {
    z_stream z;
};

struct ws_deflater *ws_deflater_new_window(int level, int window_bits)
{
    struct ws_deflater *d;
    int rc;

    if (window_bits < 8 || window_bits > 15)
        return NULL;
    /*
     * zlib refuses a raw 256-byte window, but a 512-byte one never emits a
     * distance above 512 - 262 (MAX_DIST), which an 8-bit window can decode.
     */
    if (window_bits == 8)
        window_bits = 9;
    d = calloc(1, sizeof(*d));
    if (d == NULL)
        abort();
    rc = deflateInit2(&d->z, level, Z_DEFLATED, -window_bits, 8, Z_DEFAULT_STRATEGY);
    if (rc == Z_MEM_ERROR)
        abort();
    if (rc != Z_OK) {
        free(d);
        return NULL;
    }
    return d;
}

struct ws_deflater *ws_deflater_new(int level)
{
    return ws_deflater_new_window(level, 15);
}

void ws_deflater_free(struct ws_deflater *d)
{
    if (d == NULL)
        return;
    deflateEnd(&d->z);
    free(d);
}

/*
 * zlib's conservative deflateBound() (window_bits < 15 can't always fall back
 * to stored blocks), plus the empty stored block of Z_SYNC_FLUSH and slack.
 */
size_t ws_deflate_bound(size_t in_len)
{
    return in_len + ((in_len + 7) >> 3) + ((in_len + 63) >> 6) + 5 + 8;
}

long ws_deflate_message(struct ws_deflater *d, const uint8_t *in, size_t in_len, uint8_t *out)
{
    z_stream *z = &d->z;
    size_t bound = ws_deflate_bound(in_len);
    size_t n;

    if (bound > UINT_MAX || bound > LONG_MAX || deflateReset(z) != Z_OK)
        return -1;
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)in_len;
    z->next_out = out;
    z->avail_out = (uInt)bound;
    /* With room left after Z_SYNC_FLUSH, all input is consumed and flushed. */
    if (deflate(z, Z_SYNC_FLUSH) != Z_OK || z->avail_in != 0 || z->avail_out == 0)
        return -1;
    n = bound - z->avail_out;
    if (n < 4 || memcmp(out + n - 4, pmd_tail, 4) != 0)
        return -1;
    return (long)(n - 4);
}

struct ws_inflater *ws_inflater_new(void)
{
    struct ws_inflater *i = calloc(1, sizeof(*i));
    int rc;

    if (i == NULL)
        abort();
    /* 15 decodes any window a client may use (RFC 7692 §7.1.2.2). */
    rc = inflateInit2(&i->z, -15);
    if (rc == Z_MEM_ERROR)
        abort();
    if (rc != Z_OK) {
        free(i);
        return NULL;
    }
    return i;
}

void ws_inflater_free(struct ws_inflater *i)
{
    if (i == NULL)
        return;
    inflateEnd(&i->z);
    free(i);
}

/* State of one ws_inflate_message() call. */
struct inflate_run {
    z_stream *z;
    uint8_t spill; /* receives output past out_size, only to detect it */
    bool ended;    /* the stream had a final block; the rest is ignored */
    bool boundary; /* the last inflate() stopped between two blocks */
};

/*
 * Inflates z->next_in[0..avail_in) block by block (Z_BLOCK, so that the end
 * state tells whether the data stopped on a block boundary). Once the caller's
 * buffer is full, inflate is offered a 1-byte spill buffer: any byte written
 * there means the message is too big. No probe at a block boundary: nothing
 * is pending there, and a call would move zlib past the boundary state.
 * Returns 0, -1 on corrupt data or -2.
 */
static int inflate_drain(struct inflate_run *r)
{
    z_stream *z = r->z;

    while (!r->ended && (z->avail_in > 0 || (z->avail_out == 0 && !r->boundary))) {
        if (z->avail_out == 0) {
            z->next_out = &r->spill;
            z->avail_out = 1;
        }
        int rc = inflate(z, Z_BLOCK);
        /* data_type bit 128: stopped right after a block (zlib.h, Z_BLOCK). */
        r->boundary = (z->data_type & 128) != 0;
        if (z->next_out == &r->spill + 1)
            return -2;
        if (rc == Z_STREAM_END)
            r->ended = true;
        else if (rc == Z_BUF_ERROR && z->avail_in == 0)
            return 0; /* needs more input */
        else if (rc == Z_MEM_ERROR)
            abort();
        else if (rc != Z_OK)
            return -1; /* Z_DATA_ERROR, or no progress with input left */
    }
    return 0;
}

static int inflate_feed(struct inflate_run *r, const uint8_t *in, size_t len)
{
    while (len > 0 && !r->ended) {
        uInt n = len > UINT_MAX ? UINT_MAX : (uInt)len;
        r->z->next_in = (Bytef *)in;
        r->z->avail_in = n;
        int rc = inflate_drain(r);
        if (rc < 0)
            return rc;
        in += n;
        len -= n;
    }
    return 0;
}

long ws_inflate_message(struct ws_inflater *i, const uint8_t *in, size_t in_len, uint8_t *out,
                        size_t out_size)
{
    struct inflate_run r = {.z = &i->z};
    z_stream *z = &i->z;
    size_t cap = out_size > UINT_MAX ? UINT_MAX : out_size;
    int rc;

    if (cap > LONG_MAX)
        cap = LONG_MAX;
    /* An empty payload is an empty message (nothing to inflate). */
    if (in_len == 0)
        return 0;
    if (inflateReset(z) != Z_OK)
        return -1;
    z->next_out = out;
    z->avail_out = (uInt)cap;
    if ((rc = inflate_feed(&r, in, in_len)) < 0 || (rc = inflate_feed(&r, pmd_tail, 4)) < 0)
        return rc;
    /* Data that stops inside a block is truncated. */
    if (!r.ended && !r.boundary)
        return -1;
    if (z->next_out == &r.spill)
        return (long)cap;
    return (long)(cap - z->avail_out);
}
