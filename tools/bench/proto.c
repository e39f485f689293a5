/*
 * herald-bench wire helpers (see proto.h). Only what a load generator needs:
 * response heads, masked client frames and the body scanner.
 */
#include "proto.h"

#include "core/util.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "bench.h"

static void copy_value(const char *v, const char *eol, char *out, size_t cap)
{
    while (v < eol && (*v == ' ' || *v == '\t'))
        v++;
    while (eol > v && (eol[-1] == ' ' || eol[-1] == '\t' || eol[-1] == '\r'))
        eol--;
    size_t n = (size_t)(eol - v);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, v, n);
    out[n] = 0;
}

long proto_parse_head(const char *buf, size_t len, struct proto_head *h)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end)
        return len > 65536 ? -1 : 0;
    if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0)
        return -1;
    memset(h, 0, sizeof *h);
    h->content_length = -1;
    h->status = atoi(buf + 9);
    const char *line = memchr(buf, '\n', (size_t)(end - buf)) + 1;
    while (line < end + 2) {
        const char *eol = memchr(line, '\n', (size_t)(end + 2 - line));
        if (!eol)
            break;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            const char *v = colon + 1;
            char val[64];
            if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0)
                h->content_length = strtoll(v, NULL, 10);
            else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                copy_value(v, eol, val, sizeof val);
                h->chunked = strcasestr(val, "chunked") != NULL;
            } else if (nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
                copy_value(v, eol, val, sizeof val);
                h->close = strcasestr(val, "close") != NULL;
            } else if (nlen == 20 && strncasecmp(line, "sec-websocket-accept", 20) == 0)
                copy_value(v, eol, h->ws_accept, sizeof h->ws_accept);
            else if (nlen == 13 && strncasecmp(line, "last-modified", 13) == 0)
                copy_value(v, eol, h->last_modified, sizeof h->last_modified);
            else if (nlen == 4 && strncasecmp(line, "etag", 4) == 0)
                copy_value(v, eol, h->etag, sizeof h->etag);
        }
        line = eol + 1;
    }
    return (long)(end - buf) + 4;
}

void proto_ws_accept(const char *key, char *out)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char cat[128];
    unsigned char md[SHA_DIGEST_LENGTH];
    int n = snprintf(cat, sizeof cat, "%s%s", key, guid);
    SHA1((unsigned char *)cat, (size_t)n, md);
    EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
}

void proto_ws_key(char out[25])
{
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof raw) != 1)
        for (int i = 0; i < 16; i++)
            raw[i] = (unsigned char)rand();
    EVP_EncodeBlock((unsigned char *)out, raw, 16);
}

size_t proto_ws_frame(uint8_t *out, int opcode, const void *payload, size_t len)
{
    size_t o = 0;
    out[o++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        out[o++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        out[o++] = 0x80 | 126;
        out[o++] = (uint8_t)(len >> 8);
        out[o++] = (uint8_t)len;
    } else {
        out[o++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            out[o++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint8_t mask[4];
    uint32_t r = (uint32_t)rand();
    memcpy(mask, &r, 4);
    memcpy(out + o, mask, 4);
    o += 4;
    const uint8_t *p = payload;
    for (size_t i = 0; i < len; i++)
        out[o + i] = p[i] ^ mask[i & 3];
    return o + len;
}

enum { SC_SEEK, SC_LIT1, SC_T, SC_LIT2, SC_N, SC_LIT3, SC_PAD };
static const char lit1[] = "{\"t\":", lit2[] = ",\"n\":", lit3[] = ",\"pad\":\"";

void proto_scan_feed(struct proto_scan *s, const char *p, size_t len, proto_scan_cb *cb, void *ctx)
{
    const char *end = p + len;
    while (p < end) {
        char ch = *p;
        if (ch == '\\') {
            p++;
            continue;
        }
        switch (s->st) {
        case SC_SEEK: {
            const char *b = memchr(p, '{', (size_t)(end - p));
            if (!b)
                return;
            p = b + 1;
            s->st = SC_LIT1;
            s->k = 1;
            continue;
        }
        case SC_LIT1:
        case SC_LIT2:
        case SC_LIT3: {
            const char *lit = s->st == SC_LIT1 ? lit1 : s->st == SC_LIT2 ? lit2 : lit3;
            if (ch != lit[s->k]) {
                s->st = SC_SEEK;
                continue; /* re-examine this byte: it may open a body */
            }
            p++;
            if (lit[++s->k] == 0) {
                s->st = s->st == SC_LIT1 ? SC_T : s->st == SC_LIT2 ? SC_N : SC_PAD;
                if (s->st == SC_T)
                    s->t = 0;
                else if (s->st == SC_N)
                    s->n = 0;
            }
            continue;
        }
        case SC_T:
        case SC_N:
            if (ch >= '0' && ch <= '9') {
                if (s->st == SC_T)
                    s->t = s->t * 10 + (ch - '0');
                else
                    s->n = s->n * 10 + (uint64_t)(ch - '0');
                p++;
                continue;
            }
            s->st = s->st == SC_T ? SC_LIT2 : SC_LIT3;
            s->k = 0;
            continue;
        case SC_PAD: {
            const char *q = memchr(p, '"', (size_t)(end - p));
            if (!q)
                return;
            p = q + 1;
            s->st = SC_SEEK;
            cb(ctx, s->t, s->n);
            continue;
        }
        }
    }
}

size_t proto_body(char *out, size_t size, int64_t t_us, uint64_t n)
{
    int head = snprintf(out, 64, "{\"t\":%lld,\"n\":%llu,\"pad\":\"", (long long)t_us,
                        (unsigned long long)n);
    size_t len = (size_t)head + 2 > size ? (size_t)head + 2 : size;
    if ((size_t)head + 2 > size) {
        /* Too small to pad: emit the minimal body (caller sized out for it). */
        out[head] = '"';
        out[head + 1] = '}';
        out[head + 2] = 0;
        return (size_t)head + 2;
    }
    memset(out + head, 'x', len - (size_t)head - 2);
    out[len - 2] = '"';
    out[len - 1] = '}';
    out[len] = 0;
    return len;
}

bool proto_json_str(const char *buf, size_t len, const char *key, char *out, size_t cap)
{
    char pat[64];
    int pl = snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = memmem(buf, len, pat, (size_t)pl);
    if (!p)
        return false;
    p += pl;
    const char *q = memchr(p, '"', (size_t)(buf + len - p));
    if (!q)
        return false;
    copy_value(p, q, out, cap);
    return true;
}

void proto_token_header(const struct bench_opts *o, int conn_id, const char *ch, char *out,
                        size_t cap)
{
    out[0] = 0;
    if (!o->token_secret)
        return;
    char claims[256], tok[640];
    long exp = (long)time(NULL) + 3600;
    /* Shared: one token (same bytes) for every subscriber; else each its own sub. */
    int n = o->token_shared ? snprintf(claims, sizeof claims,
                                       "{\"sub\":\"bench\",\"exp\":%ld,"
                                       "\"channels\":[\"**\"]}",
                                       (exp / 3600) * 3600 + 3600)
                            : snprintf(claims, sizeof claims,
                                       "{\"sub\":\"u%d\",\"exp\":%ld,"
                                       "\"channels\":[\"%s\"]}",
                                       conn_id, exp, ch);
    size_t t =
        base64url_encode(tok, (const unsigned char *)"{\"alg\":\"HS256\",\"typ\":\"JWT\"}", 27);
    tok[t++] = '.';
    t += base64url_encode(tok + t, (const unsigned char *)claims, (size_t)n);
    unsigned char mac[32];
    unsigned ml = 0;
    HMAC(EVP_sha256(), o->token_secret, (int)strlen(o->token_secret), (unsigned char *)tok, t, mac,
         &ml);
    tok[t++] = '.';
    t += base64url_encode(tok + t, mac, ml);
    snprintf(out, cap, "Authorization: Bearer %.*s\r\n", (int)t, tok);
}
