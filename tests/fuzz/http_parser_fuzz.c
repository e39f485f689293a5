/*
 * http_parser_fuzz: libFuzzer target for the request-head parser, the
 * response-head parser (the CLI's) and the chunked decoder.
 *
 * The input is parsed as a request head with small limits; whatever follows
 * the head (or the whole input, if there is no head) is fed to the chunked
 * decoder. Beyond "no crash, no sanitizer report" it checks the contracts:
 * every returned pointer lies inside the input, lengths are within limits,
 * and splitting the input into two calls (or feeding it byte by byte) gives
 * exactly the answer of one call. A violated contract traps.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "http/http_parser.h"

static const struct http_limits limits = {.max_header_bytes = 300, .max_uri_bytes = 64};
#define MAX_BODY 256

static void check_request(const char *buf, int r, const struct http_request *req)
{
    size_t head = (size_t)r;

    CHECK(head <= limits.max_header_bytes);
    CHECK(req->method_len > 0 && inside(req->method, req->method_len, buf, head));
    CHECK(req->target_len > 0 && req->target_len <= limits.max_uri_bytes);
    CHECK(inside(req->target, req->target_len, buf, head));
    CHECK(inside(req->path, req->path_len, req->target, req->target_len) ||
          (req->path_len == 1 && req->path[0] == '/'));
    if (req->query != NULL)
        CHECK(inside(req->query, req->query_len, req->target, req->target_len));
    CHECK(req->minor_version == 0 || req->minor_version == 1);
    CHECK(req->num_headers <= HTTP_MAX_HEADERS);
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        CHECK(h->name_len > 0 && inside(h->name, h->name_len, buf, head));
        CHECK(inside(h->value, h->value_len, buf, head));
        CHECK(memchr(h->value, '\n', h->value_len) == NULL);
        CHECK(memchr(h->value, '\0', h->value_len) == NULL);
    }
    CHECK(http_find_header(req, "content-length") != NULL || req->content_length == -1);
    CHECK(http_find_header(req, "transfer-encoding") != NULL || !req->chunked);
    CHECK(req->content_length >= -1);
    CHECK(!(req->chunked && req->content_length >= 0));
    CHECK(!req->upgrade_websocket || req->minor_version == 1);
    CHECK(!req->expect_continue || req->minor_version == 1);
}

static void check_query(const struct http_request *req)
{
    const char *v;
    size_t vl;
    char tmp[64];

    if (req->query == NULL)
        return;
    if (http_query_param(req->query, req->query_len, "a", &v, &vl)) {
        CHECK(inside(v, vl, req->query, req->query_len));
        if (vl <= sizeof(tmp)) {
            long d = http_url_decode(tmp, v, vl);
            CHECK(d >= -1 && d <= (long)vl);
        }
    }
}

static void check_head(const char *buf, size_t size)
{
    struct http_request req;
    int r = http_parse_request(buf, size, 0, &req, &limits);

    CHECK(r >= HTTP_ERR_BAD_ENCODING);
    CHECK(r <= 0 || (size_t)r <= size);
    if (r > 0) {
        check_request(buf, r, &req);
        check_query(&req);
        /* the head alone parses to the same length */
        CHECK(http_parse_request(buf, (size_t)r, 0, &req, &limits) == r);
    }

    /* A first call on a prefix either already knows the answer or, with last_len, agrees. */
    size_t k = size ? (size_t)(unsigned char)buf[size / 2] * 7 % (size + 1) : 0;
    int r1 = http_parse_request(buf, k, 0, &req, &limits);
    if (r1 == HTTP_INCOMPLETE)
        CHECK(http_parse_request(buf, size, k, &req, &limits) == r);
    else
        CHECK(r1 == r);

    /* byte by byte: the first non-incomplete answer equals the one-shot answer */
    if (size <= 160) {
        int rb = HTTP_INCOMPLETE;
        for (size_t n = 1; n <= size && rb == HTTP_INCOMPLETE; n++)
            rb = http_parse_request(buf, n, n - 1, &req, &limits);
        CHECK(rb == r);
    }
}

/* The same input as a response head: pointers inside, and every prefix agrees. */
static void check_response(const char *buf, size_t size)
{
    struct http_response resp;
    int r = http_parse_response(buf, size, &resp, limits.max_header_bytes);

    CHECK(r >= HTTP_ERR_BAD_ENCODING && (r <= 0 || (size_t)r <= size));
    if (r > 0) {
        CHECK(resp.status >= 100 && resp.status <= 599);
        CHECK(inside(resp.reason, resp.reason_len, buf, (size_t)r) || resp.reason_len == 0);
        CHECK(resp.num_headers <= HTTP_MAX_HEADERS);
        for (size_t i = 0; i < resp.num_headers; i++)
            CHECK(inside(resp.headers[i].value, resp.headers[i].value_len, buf, (size_t)r));
        CHECK(http_response_header(&resp, "content-length") != NULL || resp.content_length == -1);
        CHECK(!(resp.chunked && resp.content_length >= 0));
    }
    size_t k = size ? (size_t)(unsigned char)buf[0] * 11 % (size + 1) : 0;
    int r1 = http_parse_response(buf, k, &resp, limits.max_header_bytes);
    CHECK(r1 == HTTP_INCOMPLETE || r1 == r || (r1 == HTTP_ERR_HEADERS_TOO_BIG && r < 0));
}

/* Decodes in[0..n) in one call; returns the result, output in out, *out_len. */
static long decode_once(const char *in, size_t n, char *out, size_t *out_len,
                        struct http_chunked *dec)
{
    memcpy(out, in, n);
    *out_len = n;
    return http_chunked_decode(dec, out, out_len, MAX_BODY);
}

static void check_chunked(const char *in, size_t n)
{
    char *a = malloc(n + 1), *b = malloc(n + 1);
    struct http_chunked da = {0}, db = {0};
    size_t la, l1, l2 = 0;
    size_t k = n ? (size_t)(unsigned char)in[0] * 13 % (n + 1) : 0;
    long ra, r1, rb;

    ra = decode_once(in, n, a, &la, &da);
    CHECK(ra >= HTTP_CHUNK_TOO_BIG);
    CHECK(la <= n && da.total == la && da.total <= MAX_BODY);
    if (ra >= 0) {
        CHECK(la + (size_t)ra <= n);
        CHECK(memcmp(a + n - ra, in + n - ra, (size_t)ra) == 0);
    }

    /* the same input in two slices decodes to the same bytes and result */
    memcpy(b, in, n);
    l1 = k;
    r1 = http_chunked_decode(&db, b, &l1, MAX_BODY);
    CHECK(l1 <= k);
    rb = r1;
    if (r1 == HTTP_CHUNK_INCOMPLETE) {
        l2 = n - k;
        rb = http_chunked_decode(&db, b + k, &l2, MAX_BODY);
        CHECK(l2 <= n - k);
    } else if (r1 >= 0) {
        rb = r1 + (long)(n - k);
    }
    CHECK(rb == ra && l1 + l2 == la);
    CHECK(memcmp(a, b, l1) == 0 && memcmp(a + l1, b + k, l2) == 0);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct http_request req;
    int r;

    check_head(buf, size);
    check_response(buf, size);
    r = http_parse_request(buf, size, 0, &req, &limits);
    if (r > 0)
        check_chunked(buf + r, size - (size_t)r);
    else
        check_chunked(buf, size);
    return 0;
}
