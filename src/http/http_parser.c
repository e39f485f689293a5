/*
 * http_parser: the request-head parser, the in-place chunked decoder and the
 * small URL helpers the router needs. No I/O, no allocation, no global state;
 * every function is safe to call from any worker thread.
 *
 * The head parser works in two passes over bytes that are already in cache:
 * first it looks for the blank line that ends the head (starting near
 * `last_len`, so a head that trickles in is not rescanned from the start),
 * then, only once the head is complete, it parses it in one go. Because the
 * complete head ends in '\n' and no character class below contains '\n', the
 * header loops need no bounds checks: the final LF is a sentinel. While the
 * head is still incomplete only the request line is checked, so that an
 * over-long URI or a bad method is refused before the rest arrives.
 */
#include "http/http_parser.h"

#include <assert.h>
#include <limits.h>
#include <string.h>

enum {
    C_TOKEN = 1,  /* RFC 9110 tchar: method and header names */
    C_VALUE = 2,  /* field-value byte: HTAB, SP, VCHAR, obs-text */
    C_TARGET = 4, /* request-target byte: VCHAR and obs-text */
    C_HEX = 8,
};

/* Generated once; '\n', '\r' and NUL are in no class (the sentinel above relies on it). */
/* clang-format off */
static const uint8_t char_class[256] = {
    0,  0,  0,  0,  0,  0,  0,  0,  0,  2,  0,  0,  0,  0,  0,  0, /* 0x00 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 0x10 */
    2,  7,  6,  7,  7,  7,  7,  7,  6,  6,  7,  7,  6,  7,  7,  6, /* 0x20 */
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 6,  6,  6,  6,  6,  6, /* 0x30 */
    6,  15, 15, 15, 15, 15, 15, 7,  7,  7,  7,  7,  7,  7,  7,  7, /* 0x40 */
    7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  6,  6,  6,  7,  7, /* 0x50 */
    7,  15, 15, 15, 15, 15, 15, 7,  7,  7,  7,  7,  7,  7,  7,  7, /* 0x60 */
    7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  6,  7,  6,  7,  0, /* 0x70 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, /* 0x80 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, /* 0x90 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, /* 0xa0 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, /* 0xb0 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, /* 0xc0 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, /* 0xd0 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, /* 0xe0 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, /* 0xf0 */
};
/* clang-format on */

#define HAS_CLASS(c, cls) (char_class[(unsigned char)(c)] & (cls))

/* Value of a hex digit; only meaningful when HAS_CLASS(c, C_HEX). */
static inline int hex_value(unsigned char c)
{
    return (c & 0xf) + (c >> 6) * 9;
}

static inline unsigned char ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

static bool mem_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
            return false;
    }
    return true;
}

/* Whether s[0..n) equals the NUL-terminated `lit`, ignoring ASCII case. */
static bool str_ieq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && mem_ieq(s, lit, n);
}

#define REPEAT8(b) (0x0101010101010101ull * (b))

/*
 * Skips whole 8-byte words of p[0..end) that hold no byte below `lo` (< 0x80)
 * and no DEL, so long targets and values cost a few instructions per word;
 * the caller's byte loop then finds the exact stop. Bytes >= 0x80 pass.
 * The word tests are exact for "any byte" (Hacker's Delight / bithacks hasless).
 */
static const char *skip_words(const char *p, const char *end, unsigned char lo)
{
    while (end - p >= 8) {
        uint64_t x, y;
        memcpy(&x, p, 8);
        y = x ^ REPEAT8(0x7f);
        if (((x - REPEAT8(lo)) & ~x) & REPEAT8(0x80))
            break;
        if (((y - REPEAT8(0x01)) & ~y) & REPEAT8(0x80))
            break;
        p += 8;
    }
    return p;
}

/*
 * Iterates a #rule list (RFC 9110 §5.6.1): sets *tok to the next non-empty
 * element of *pp..end with OWS trimmed and returns true, or returns false.
 */
static bool next_list_element(const char **pp, const char *end, const char **tok, size_t *tok_len)
{
    const char *p = *pp;

    while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
        p++;
    if (p == end)
        return false;
    const char *start = p;
    while (p < end && *p != ',')
        p++;
    const char *e = p;
    while (e > start && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *tok = start;
    *tok_len = (size_t)(e - start);
    *pp = p;
    return true;
}

/* ---- request head: framing ---------------------------------------------- */

/* RFC 9112 §2.2: a server SHOULD ignore empty lines received before the request-line. */
static size_t skip_empty_lines(const char *buf, size_t len)
{
    size_t i = 0;
    for (;;) {
        if (i < len && buf[i] == '\n')
            i += 1;
        else if (i + 1 < len && buf[i] == '\r' && buf[i + 1] == '\n')
            i += 2;
        else
            return i;
    }
}

/* Offset just past the first "\n\n" or "\n\r\n" in buf[from..end), or 0. */
static size_t find_head_end(const char *buf, size_t from, size_t end)
{
    const char *p = buf + from, *e = buf + end;

    while (p < e && (p = memchr(p, '\n', (size_t)(e - p))) != NULL) {
        if (p + 1 < e && p[1] == '\n')
            return (size_t)(p + 2 - buf);
        if (p + 2 < e && p[1] == '\r' && p[2] == '\n')
            return (size_t)(p + 3 - buf);
        p++;
    }
    return 0;
}

/* ---- request head: request line ----------------------------------------- */

/* Success of the line parsers; distinct from HTTP_INCOMPLETE, which is 0. */
#define LINE_OK 1

/*
 * "HTTP/1.x" then CRLF or LF, bounds-checked because it also runs on partial
 * input. The version is judged as soon as its 8 bytes are in.
 */
static int parse_version(const char *p, const char *end, int *minor_version, const char **next)
{
    static const char tmpl[] = "HTTP/#.#";

    for (size_t i = 0; i < 8; i++) {
        if (p + i == end)
            return HTTP_INCOMPLETE;
        bool ok = tmpl[i] == '#' ? (p[i] >= '0' && p[i] <= '9') : p[i] == tmpl[i];
        if (!ok)
            return HTTP_ERR_SYNTAX;
    }
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return HTTP_ERR_VERSION;
    *minor_version = p[7] - '0';
    p += 8;
    if (p < end && *p == '\r')
        p++;
    if (p == end)
        return HTTP_INCOMPLETE;
    if (*p != '\n')
        return HTTP_ERR_SYNTAX;
    *next = p + 1;
    return LINE_OK;
}

/*
 * method SP request-target SP HTTP-version EOL, from p up to at most end.
 * Returns LINE_OK and sets *next to the first byte after the line, HTTP_INCOMPLETE
 * if end comes first, or an error as soon as the bytes seen prove one.
 */
static int parse_request_line(const char *p, const char *end, struct http_request *req,
                              size_t max_uri, const char **next)
{
    const char *start = p;

    while (p < end && HAS_CLASS(*p, C_TOKEN))
        p++;
    if (p == end)
        return HTTP_INCOMPLETE;
    if (p == start || *p != ' ')
        return HTTP_ERR_SYNTAX;
    req->method = start;
    req->method_len = (size_t)(p - start);

    start = ++p;
    p = skip_words(p, end, 0x21);
    while (p < end && HAS_CLASS(*p, C_TARGET))
        p++;
    if ((size_t)(p - start) > max_uri)
        return HTTP_ERR_URI_TOO_LONG;
    if (p == end)
        return HTTP_INCOMPLETE;
    if (p == start || *p != ' ')
        return HTTP_ERR_SYNTAX;
    req->target = start;
    req->target_len = (size_t)(p - start);

    return parse_version(p + 1, end, &req->minor_version, next);
}

static enum http_method method_id(const char *m, size_t n)
{
    switch (n) {
    case 3:
        if (memcmp(m, "GET", 3) == 0)
            return HTTP_M_GET;
        if (memcmp(m, "PUT", 3) == 0)
            return HTTP_M_PUT;
        break;
    case 4:
        if (memcmp(m, "HEAD", 4) == 0)
            return HTTP_M_HEAD;
        if (memcmp(m, "POST", 4) == 0)
            return HTTP_M_POST;
        break;
    case 5:
        if (memcmp(m, "PATCH", 5) == 0)
            return HTTP_M_PATCH;
        break;
    case 6:
        if (memcmp(m, "DELETE", 6) == 0)
            return HTTP_M_DELETE;
        break;
    case 7:
        if (memcmp(m, "OPTIONS", 7) == 0)
            return HTTP_M_OPTIONS;
        break;
    }
    return HTTP_M_OTHER;
}

/* Sets path/query from p[0..n), which starts with '/' or is empty. */
static void split_path(struct http_request *req, const char *p, size_t n)
{
    const char *q = n ? memchr(p, '?', n) : NULL;

    if (q == NULL) {
        req->path = p;
        req->path_len = n;
        req->query = NULL;
        req->query_len = 0;
    } else {
        req->path = p;
        req->path_len = (size_t)(q - p);
        req->query = q + 1;
        req->query_len = n - req->path_len - 1;
    }
    if (req->path_len == 0) {
        /* absolute-form with an empty path: RFC 9112 §3.2.2 treats it as "/" */
        req->path = "/";
        req->path_len = 1;
    }
}

/* RFC 3986 §3.1: ALPHA / DIGIT / "+" / "-" / "." */
static bool is_scheme_char(unsigned char c)
{
    c = ascii_lower(c);
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

/* origin-form, "*", or absolute-form (scheme "://" authority [path] [?query]). */
static int split_target(struct http_request *req)
{
    const char *t = req->target, *end = t + req->target_len, *p = t;

    if (*t == '/') {
        split_path(req, t, req->target_len);
        return 0;
    }
    if (req->target_len == 1 && *t == '*') {
        req->path = t;
        req->path_len = 1;
        req->query = NULL;
        req->query_len = 0;
        return 0;
    }
    if (ascii_lower((unsigned char)*p) < 'a' || ascii_lower((unsigned char)*p) > 'z')
        return HTTP_ERR_SYNTAX;
    while (p < end && is_scheme_char((unsigned char)*p))
        p++;
    if (end - p < 4 || memcmp(p, "://", 3) != 0)
        return HTTP_ERR_SYNTAX; /* also refuses authority-form (CONNECT host:port) */
    const char *auth = p + 3;
    p = auth;
    while (p < end && *p != '/' && *p != '?')
        p++;
    if (p == auth)
        return HTTP_ERR_SYNTAX;
    split_path(req, p, (size_t)(end - p));
    return 0;
}

/* ---- request head: header fields ---------------------------------------- */

/* What the framing rules need to see across all header lines. */
struct head_flags {
    bool conn_close;
    bool conn_keep_alive;
    bool conn_upgrade;
    bool upgrade_websocket;
    bool expect_continue;
    bool seen_transfer_encoding;
};

/*
 * One "name: value" line at *pp, which is known to lie before the head's final
 * LF; every loop below stops at that LF at the latest.
 */
static int parse_header_line(const char **pp, const char *end, struct http_header *h)
{
    const char *p = *pp, *start = p;

    while (HAS_CLASS(*p, C_TOKEN))
        p++;
    /* refuses obs-fold (line starts with SP/HTAB) and whitespace before ':' */
    if (p == start || *p != ':')
        return HTTP_ERR_SYNTAX;
    h->name = start;
    h->name_len = (size_t)(p - start);

    p++;
    while (*p == ' ' || *p == '\t')
        p++;
    start = p;
    p = skip_words(p, end, 0x20); /* HTAB, rare, is left to the byte loop */
    while (HAS_CLASS(*p, C_VALUE))
        p++;
    const char *vend = p;
    if (*p == '\r')
        p++;
    if (*p != '\n')
        return HTTP_ERR_SYNTAX; /* control byte, NUL, or a bare CR */
    while (vend > start && (vend[-1] == ' ' || vend[-1] == '\t'))
        vend--;
    h->value = start;
    h->value_len = (size_t)(vend - start);
    *pp = p + 1;
    return 0;
}

static int parse_content_length(const char *v, size_t n, int64_t *out)
{
    int64_t x = 0;

    if (n == 0)
        return HTTP_ERR_BAD_LENGTH;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return HTTP_ERR_BAD_LENGTH;
        int d = v[i] - '0';
        if (x > (INT64_MAX - d) / 10)
            return HTTP_ERR_BAD_LENGTH;
        x = x * 10 + d;
    }
    *out = x;
    return 0;
}

/* Content-Length and Transfer-Encoding, the same rules for requests and responses. */
static int apply_framing_header(int64_t *content_length, bool *chunked, const struct http_header *h,
                                struct head_flags *f)
{
    int64_t cl;

    if (h->name_len == 14 && mem_ieq(h->name, "content-length", 14)) {
        if (parse_content_length(h->value, h->value_len, &cl) < 0)
            return HTTP_ERR_BAD_LENGTH;
        if (*content_length >= 0 && *content_length != cl)
            return HTTP_ERR_BAD_LENGTH;
        *content_length = cl;
    } else if (h->name_len == 17 && mem_ieq(h->name, "transfer-encoding", 17)) {
        /* a second field would make the coding list "chunked, ..." */
        if (f->seen_transfer_encoding || !str_ieq(h->value, h->value_len, "chunked"))
            return HTTP_ERR_BAD_ENCODING;
        f->seen_transfer_encoding = true;
        *chunked = true;
    }
    return 0;
}

/* One pass over the Connection options we act on. */
static void apply_connection(const struct http_header *h, struct head_flags *f)
{
    const char *p = h->value, *end = h->value + h->value_len, *tok;
    size_t n;

    while (next_list_element(&p, end, &tok, &n)) {
        if (n == 5 && mem_ieq(tok, "close", 5))
            f->conn_close = true;
        else if (n == 10 && mem_ieq(tok, "keep-alive", 10))
            f->conn_keep_alive = true;
        else if (n == 7 && mem_ieq(tok, "upgrade", 7))
            f->conn_upgrade = true;
    }
}

static int apply_header(struct http_request *req, const struct http_header *h, struct head_flags *f)
{
    switch (h->name_len) {
    case 6:
        if (mem_ieq(h->name, "expect", 6) && str_ieq(h->value, h->value_len, "100-continue"))
            f->expect_continue = true;
        return 0;
    case 7:
        if (mem_ieq(h->name, "upgrade", 7) &&
            http_header_has_token(h->value, h->value_len, "websocket"))
            f->upgrade_websocket = true;
        return 0;
    case 10:
        if (mem_ieq(h->name, "connection", 10))
            apply_connection(h, f);
        return 0;
    case 14:
    case 17: return apply_framing_header(&req->content_length, &req->chunked, h, f);
    default: return 0;
    }
}

/* Cross-header rules, once every field has been seen. */
static int finish_head(struct http_request *req, const struct head_flags *f)
{
    bool v11 = req->minor_version == 1;

    /* RFC 9112 §6.3: CL with TE is a smuggling attempt; TE in 1.0 is faulty framing */
    if (req->chunked && (req->content_length >= 0 || !v11))
        return HTTP_ERR_BAD_LENGTH;
    req->keep_alive = !f->conn_close && (v11 || f->conn_keep_alive);
    /* RFC 9110 §10.1.1 and §7.8: 1.0 requests' Expect and Upgrade are ignored */
    req->expect_continue = v11 && f->expect_continue;
    req->upgrade_websocket = v11 && f->upgrade_websocket && f->conn_upgrade;
    return 0;
}

/* Parses the complete head buf[skip..head_len), which ends in "\n\r?\n". */
static int parse_head(const char *buf, size_t skip, size_t head_len, struct http_request *req,
                      const struct http_limits *limits)
{
    struct head_flags f = {0};
    const char *p;
    int r;

    r = parse_request_line(buf + skip, buf + head_len, req, limits->max_uri_bytes, &p);
    assert(r != HTTP_INCOMPLETE); /* the line ends at or before the final LF */
    if (r != LINE_OK)
        return r < 0 ? r : HTTP_ERR_SYNTAX;
    r = split_target(req);
    if (r < 0)
        return r;
    req->method_id = method_id(req->method, req->method_len);
    req->num_headers = 0;
    req->content_length = -1;
    req->chunked = false;

    for (;;) {
        if (*p == '\n' || (*p == '\r' && p[1] == '\n'))
            break;
        if (req->num_headers == HTTP_MAX_HEADERS)
            return HTTP_ERR_HEADERS_TOO_BIG;
        struct http_header *h = &req->headers[req->num_headers++];
        r = parse_header_line(&p, buf + head_len, h);
        if (r == 0)
            r = apply_header(req, h, &f);
        if (r < 0)
            return r;
    }
    assert(p + (*p == '\r' ? 2 : 1) == buf + head_len);
    r = finish_head(req, &f);
    return r < 0 ? r : (int)head_len;
}

/*
 * The head is not complete yet: refuse it now if the request line already
 * shows an error (re-checked only until a call has seen the whole line), or
 * if the limit is already reached without a blank line.
 */
static int check_partial(const char *buf, size_t len, size_t last_len, size_t skip, size_t max_head,
                         struct http_request *req, const struct http_limits *limits)
{
    size_t cap = len < max_head ? len : max_head;
    const char *nl = memchr(buf + skip, '\n', cap - skip);
    const char *next;

    /* a lone CR at the start may still become an empty line */
    bool lone_cr = cap - skip == 1 && buf[skip] == '\r';

    if (!lone_cr && (nl == NULL || (size_t)(nl - buf) >= last_len)) {
        int r = parse_request_line(buf + skip, buf + cap, req, limits->max_uri_bytes, &next);
        if (r < 0)
            return r;
    }
    return len >= max_head ? HTTP_ERR_HEADERS_TOO_BIG : HTTP_INCOMPLETE;
}

int http_parse_request(const char *buf, size_t len, size_t last_len, struct http_request *req,
                       const struct http_limits *limits)
{
    /* the head length is returned as an int */
    size_t max_head = limits->max_header_bytes < INT_MAX ? limits->max_header_bytes : INT_MAX;
    size_t cap = len < max_head ? len : max_head;
    size_t skip, from, head_len;

    if (len == 0)
        return HTTP_INCOMPLETE;
    skip = skip_empty_lines(buf, cap);
    /* a terminator may straddle the previous end: back up by its length */
    from = (last_len <= len && last_len >= skip + 3) ? last_len - 3 : skip;
    head_len = find_head_end(buf, from, cap);
    if (head_len == 0)
        return check_partial(buf, len, last_len, skip, max_head, req, limits);
    return parse_head(buf, skip, head_len, req, limits);
}

/* ---- response head (herald's own clients: the CLI) ------------------------------ */

/* "HTTP/1.x SP 3DIGIT [SP reason] EOL" at the start of a complete head (which ends in LF). */
static int parse_status_line(const char *p, const char *end, struct http_response *resp,
                             const char **next)
{
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
        return HTTP_ERR_SYNTAX;
    resp->minor_version = p[7] - '0';
    p += 9;
    for (int i = 0; i < 3; i++)
        if (p[i] < '0' || p[i] > '9' || (i == 0 && (p[0] < '1' || p[0] > '5')))
            return HTTP_ERR_SYNTAX;
    resp->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    p += 3;
    const char *rend = eol[-1] == '\r' ? eol - 1 : eol;
    if (p < rend && *p++ != ' ')
        return HTTP_ERR_SYNTAX;
    resp->reason = p;
    resp->reason_len = 0;
    for (; p < rend; p++, resp->reason_len++)
        if (!HAS_CLASS(*p, C_VALUE))
            return HTTP_ERR_SYNTAX;
    *next = eol + 1;
    return LINE_OK;
}

int http_parse_response(const char *buf, size_t len, struct http_response *resp,
                        size_t max_header_bytes)
{
    size_t max_head = max_header_bytes < INT_MAX ? max_header_bytes : INT_MAX;
    size_t cap = len < max_head ? len : max_head;
    size_t head_len = find_head_end(buf, 0, cap);
    if (head_len == 0)
        return len >= max_head ? HTTP_ERR_HEADERS_TOO_BIG : HTTP_INCOMPLETE;

    struct head_flags f = {0};
    const char *p, *end = buf + head_len;
    int r = parse_status_line(buf, end, resp, &p);
    if (r != LINE_OK)
        return r;
    resp->num_headers = 0;
    resp->content_length = -1;
    resp->chunked = false;
    while (!(*p == '\n' || (*p == '\r' && p[1] == '\n'))) {
        if (resp->num_headers == HTTP_MAX_HEADERS)
            return HTTP_ERR_HEADERS_TOO_BIG;
        struct http_header *h = &resp->headers[resp->num_headers++];
        r = parse_header_line(&p, end, h);
        if (r == 0 && h->name_len == 10 && mem_ieq(h->name, "connection", 10))
            apply_connection(h, &f);
        else if (r == 0)
            r = apply_framing_header(&resp->content_length, &resp->chunked, h, &f);
        if (r < 0)
            return r;
    }
    if (resp->chunked && (resp->content_length >= 0 || resp->minor_version == 0))
        return HTTP_ERR_BAD_LENGTH;
    resp->keep_alive = !f.conn_close && (resp->minor_version == 1 || f.conn_keep_alive);
    return (int)head_len;
}

/* ---- lookups ------------------------------------------------------------ */

static const struct http_header *find_header(const struct http_header *hs, size_t num,
                                             const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; i < num; i++)
        if (hs[i].name_len == n && mem_ieq(hs[i].name, name, n))
            return &hs[i];
    return NULL;
}

const struct http_header *http_find_header(const struct http_request *req, const char *name)
{
    return find_header(req->headers, req->num_headers, name);
}

const struct http_header *http_response_header(const struct http_response *resp, const char *name)
{
    return find_header(resp->headers, resp->num_headers, name);
}

bool http_header_has_token(const char *value, size_t value_len, const char *token)
{
    const char *p = value, *end = value + value_len, *tok;
    size_t n = strlen(token), tok_len;

    while (next_list_element(&p, end, &tok, &tok_len)) {
        if (tok_len == n && mem_ieq(tok, token, n))
            return true;
    }
    return false;
}

const char *http_strerror(int err)
{
    switch (err) {
    case HTTP_INCOMPLETE: return "incomplete request head";
    case HTTP_ERR_SYNTAX: return "malformed request";
    case HTTP_ERR_HEADERS_TOO_BIG: return "request header fields too large";
    case HTTP_ERR_URI_TOO_LONG: return "request-target too long";
    case HTTP_ERR_VERSION: return "HTTP version not supported";
    case HTTP_ERR_BAD_LENGTH: return "invalid or conflicting message framing";
    case HTTP_ERR_BAD_ENCODING: return "unsupported transfer coding";
    default: return "unknown HTTP parser error";
    }
}

/* ---- chunked body (RFC 9112 §7.1) ---------------------------------------- */

enum chunk_state {
    CS_SIZE = 0,     /* hex digits of chunk-size (zero-initialised start state) */
    CS_SIZE_WS,      /* BWS after the size, before ';' or EOL */
    CS_EXT,          /* chunk-ext, ignored up to EOL */
    CS_SIZE_LF,      /* CR seen at the end of the size line */
    CS_DATA,         /* `remaining` data bytes to copy */
    CS_DATA_CR,      /* EOL after the data */
    CS_DATA_LF,      /* CR seen after the data */
    CS_TRAILER,      /* start of a trailer line or of the final empty line */
    CS_TRAILER_LINE, /* inside a trailer field, ignored */
    CS_TRAILER_LF,   /* CR seen inside a trailer line */
    CS_END_LF,       /* CR of the final empty line seen */
    CS_DONE,
};

static bool is_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

static int end_size_line(struct http_chunked *dec)
{
    dec->hex_digits = 0;
    dec->state = dec->remaining ? CS_DATA : CS_TRAILER;
    return 0;
}

/* The size line: digits, optional BWS, optional extensions, EOL. */
static int chunk_size_step(struct http_chunked *dec, unsigned char c, uint64_t max_body)
{
    switch (dec->state) {
    case CS_SIZE:
        if (HAS_CLASS(c, C_HEX)) {
            if (dec->remaining >> 60)
                return HTTP_CHUNK_ERROR; /* more than 64 bits */
            dec->remaining = dec->remaining << 4 | (uint64_t)hex_value(c);
            if (dec->hex_digits < UINT8_MAX)
                dec->hex_digits++;
            return 0;
        }
        if (dec->hex_digits == 0)
            return HTTP_CHUNK_ERROR;
        if (dec->total > max_body || dec->remaining > max_body - dec->total)
            return HTTP_CHUNK_TOO_BIG;
        /* the size is complete; c is the first byte after it */
        /* fall through */
    case CS_SIZE_WS:
        dec->state = CS_SIZE_WS;
        if (c == ' ' || c == '\t')
            return 0;
        /* fall through */
    case CS_EXT:
        if (c == '\n')
            return end_size_line(dec);
        if (c == '\r') {
            dec->state = CS_SIZE_LF;
            return 0;
        }
        if (dec->state == CS_SIZE_WS && c != ';')
            return HTTP_CHUNK_ERROR;
        dec->state = CS_EXT;
        return is_ctl(c) ? HTTP_CHUNK_ERROR : 0;
    case CS_SIZE_LF: return c == '\n' ? end_size_line(dec) : HTTP_CHUNK_ERROR;
    default: assert(!"not a size-line state"); return HTTP_CHUNK_ERROR;
    }
}

/* Everything but the data bytes themselves, one byte at a time. */
static int chunk_step(struct http_chunked *dec, unsigned char c, uint64_t max_body)
{
    switch (dec->state) {
    case CS_DATA_CR:
        if (c == '\r') {
            dec->state = CS_DATA_LF;
            return 0;
        }
        /* LF-only line endings are accepted */
        /* fall through */
    case CS_DATA_LF:
        if (c != '\n')
            return HTTP_CHUNK_ERROR;
        dec->state = CS_SIZE;
        return 0;
    case CS_TRAILER:
        if (c == '\n' || c == '\r') {
            dec->state = c == '\n' ? CS_DONE : CS_END_LF;
            return 0;
        }
        dec->state = CS_TRAILER_LINE;
        /* fall through */
    case CS_TRAILER_LINE:
        if (c == '\n' || c == '\r') {
            dec->state = c == '\n' ? CS_TRAILER : CS_TRAILER_LF;
            return 0;
        }
        return is_ctl(c) ? HTTP_CHUNK_ERROR : 0;
    case CS_TRAILER_LF:
    case CS_END_LF:
        if (c != '\n')
            return HTTP_CHUNK_ERROR;
        dec->state = dec->state == CS_END_LF ? CS_DONE : CS_TRAILER;
        return 0;
    default: return chunk_size_step(dec, c, max_body);
    }
}

long http_chunked_decode(struct http_chunked *dec, char *buf, size_t *len, uint64_t max_body)
{
    size_t in = 0, out = 0, n = *len;

    while (in < n && dec->state != CS_DONE) {
        if (dec->state == CS_DATA) {
            size_t take = n - in;
            if (take > dec->remaining)
                take = (size_t)dec->remaining;
            if (out != in)
                memmove(buf + out, buf + in, take);
            in += take;
            out += take;
            dec->remaining -= take;
            dec->total += take;
            if (dec->remaining == 0)
                dec->state = CS_DATA_CR;
            continue;
        }
        int r = chunk_step(dec, (unsigned char)buf[in++], max_body);
        if (r < 0) {
            *len = out;
            return r;
        }
    }
    *len = out;
    return dec->state == CS_DONE ? (long)(n - in) : HTTP_CHUNK_INCOMPLETE;
}

/* ---- URL helpers -------------------------------------------------------- */

long http_url_decode(char *dst, const char *src, size_t src_len)
{
    size_t i = 0, o = 0;

    while (i < src_len) {
        const char *pct = memchr(src + i, '%', src_len - i);
        size_t run = pct ? (size_t)(pct - (src + i)) : src_len - i;
        if (dst + o != src + i)
            memmove(dst + o, src + i, run);
        i += run;
        o += run;
        if (pct == NULL)
            break;
        if (src_len - i < 3 || !HAS_CLASS(src[i + 1], C_HEX) || !HAS_CLASS(src[i + 2], C_HEX))
            return -1;
        dst[o++] = (char)(hex_value((unsigned char)src[i + 1]) << 4 |
                          hex_value((unsigned char)src[i + 2]));
        i += 3;
    }
    return (long)o;
}

bool http_query_param(const char *query, size_t query_len, const char *name, const char **value,
                      size_t *value_len)
{
    const char *p = query, *end;
    size_t n = strlen(name);

    if (query == NULL)
        return false;
    end = query + query_len;
    for (;;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *seg_end = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(seg_end - p));
        const char *key_end = eq ? eq : seg_end;
        if ((size_t)(key_end - p) == n && memcmp(p, name, n) == 0) {
            *value = eq ? eq + 1 : seg_end;
            *value_len = (size_t)(seg_end - *value);
            return true;
        }
        if (amp == NULL)
            return false;
        p = amp + 1;
    }
}
