/*
 * http_parser_test: unit tests for the request-head parser, the chunked
 * decoder and the URL helpers. Every parse_result and chunk result code is
 * produced at least once; incremental feeding is checked at every split.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_parser.h"

static const struct http_limits default_limits = {
    .max_header_bytes = 8192,
    .max_uri_bytes = 4096,
};

static int parse(const char *s, struct http_request *req)
{
    return http_parse_request(s, strlen(s), 0, req, &default_limits);
}

static int parse_lim(const char *s, struct http_request *req, size_t max_head, size_t max_uri)
{
    struct http_limits lim = {.max_header_bytes = max_head, .max_uri_bytes = max_uri};
    return http_parse_request(s, strlen(s), 0, req, &lim);
}

static void assert_span(const char *p, size_t n, const char *want)
{
    assert_non_null(p);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(p, want, n);
}

/* ---- head parser: accepted input ---------------------------------------- */

static void test_simple_get(void **state)
{
    const char *s = "GET /chan/a?last=5 HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\n"
                    "Accept:  */*  \r\n\r\n";
    struct http_request req;

    assert_int_equal(parse(s, &req), (int)strlen(s));
    assert_span(req.method, req.method_len, "GET");
    assert_int_equal(req.method_id, HTTP_M_GET);
    assert_span(req.target, req.target_len, "/chan/a?last=5");
    assert_span(req.path, req.path_len, "/chan/a");
    assert_span(req.query, req.query_len, "last=5");
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.num_headers, 3);
    assert_span(req.headers[0].name, req.headers[0].name_len, "Host");
    assert_span(req.headers[0].value, req.headers[0].value_len, "example.com");
    assert_span(req.headers[1].name, req.headers[1].name_len, "X-Empty");
    assert_int_equal(req.headers[1].value_len, 0);
    assert_span(req.headers[2].value, req.headers[2].value_len, "*/*");
    assert_int_equal(req.content_length, -1);
    assert_false(req.chunked);
    assert_true(req.keep_alive);
    assert_false(req.expect_continue);
    assert_false(req.upgrade_websocket);
}

static void test_method_ids(void **state)
{
    static const struct {
        const char *m;
        enum http_method id;
    } cases[] = {
        {"GET", HTTP_M_GET},      {"HEAD", HTTP_M_HEAD},      {"POST", HTTP_M_POST},
        {"PUT", HTTP_M_PUT},      {"DELETE", HTTP_M_DELETE},  {"OPTIONS", HTTP_M_OPTIONS},
        {"PATCH", HTTP_M_PATCH},  {"get", HTTP_M_OTHER},      {"GETX", HTTP_M_OTHER},
        {"PATCHX", HTTP_M_OTHER}, {"M-SEARCH", HTTP_M_OTHER},
    };
    char buf[128];
    struct http_request req;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(buf, sizeof(buf), "%s / HTTP/1.1\r\n\r\n", cases[i].m);
        assert_int_equal(parse(buf, &req), (int)strlen(buf));
        assert_int_equal(req.method_id, cases[i].id);
        assert_span(req.method, req.method_len, cases[i].m);
    }
}

static void test_target_forms(void **state)
{
    struct http_request req;

    assert_true(parse("GET /a? HTTP/1.1\r\n\r\n", &req) > 0);
    assert_span(req.path, req.path_len, "/a");
    assert_non_null(req.query);
    assert_int_equal(req.query_len, 0);

    assert_true(parse("GET /a/b HTTP/1.1\r\n\r\n", &req) > 0);
    assert_span(req.path, req.path_len, "/a/b");
    assert_null(req.query);

    assert_true(parse("OPTIONS * HTTP/1.1\r\n\r\n", &req) > 0);
    assert_span(req.path, req.path_len, "*");
    assert_null(req.query);

    assert_true(parse("GET http://example.com:80/x/y?z=1 HTTP/1.1\r\n\r\n", &req) > 0);
    assert_span(req.target, req.target_len, "http://example.com:80/x/y?z=1");
    assert_span(req.path, req.path_len, "/x/y");
    assert_span(req.query, req.query_len, "z=1");

    assert_true(parse("GET HTTPS://example.com HTTP/1.1\r\n\r\n", &req) > 0);
    assert_span(req.path, req.path_len, "/");
    assert_null(req.query);

    assert_true(parse("GET http://h?q HTTP/1.1\r\n\r\n", &req) > 0);
    assert_span(req.path, req.path_len, "/");
    assert_span(req.query, req.query_len, "q");

    /* obs-text is tolerated in the target */
    assert_true(parse("GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", &req) > 0);
    assert_span(req.path, req.path_len, "/caf\xc3\xa9");
}

static void test_lf_only_and_mixed(void **state)
{
    struct http_request req;
    const char *lf = "POST /p HTTP/1.0\nContent-Length: 3\nConnection: keep-alive\n\nabc";
    const char *mixed = "GET / HTTP/1.1\nA: 1\r\nB: 2\n\r\n";

    assert_int_equal(parse(lf, &req), (int)strlen(lf) - 3);
    assert_int_equal(req.minor_version, 0);
    assert_int_equal(req.content_length, 3);
    assert_true(req.keep_alive);
    assert_int_equal(req.num_headers, 2);

    assert_int_equal(parse(mixed, &req), (int)strlen(mixed));
    assert_int_equal(req.num_headers, 2);
    assert_span(req.headers[1].value, req.headers[1].value_len, "2");
}

static void test_leading_empty_lines(void **state)
{
    const char *s = "\r\n\nGET / HTTP/1.1\r\n\r\n";
    struct http_request req;

    assert_int_equal(parse(s, &req), (int)strlen(s));
    assert_span(req.method, req.method_len, "GET");
    assert_int_equal(parse("\r\n", &req), HTTP_INCOMPLETE);
    assert_int_equal(parse("\r\n\r\n", &req), HTTP_INCOMPLETE);
    assert_int_equal(parse("\r\n\r\nGET / HTTP/1.1\r\n", &req), HTTP_INCOMPLETE);
}

static void test_pipelined(void **state)
{
    const char *first = "POST /pub/a HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
    const char *second = "GET /sub/a HTTP/1.1\r\n\r\n";
    char s[256];
    size_t len, off = 0;
    struct http_request req;
    int r;

    snprintf(s, sizeof(s), "%shello%sGET /sub/b HTTP/1.1\r\nConnection: close\r\n\r\n", first,
             second);
    len = strlen(s);
    r = http_parse_request(s, len, 0, &req, &default_limits);
    assert_int_equal(r, (int)strlen(first));
    assert_int_equal(req.method_id, HTTP_M_POST);
    assert_int_equal(req.content_length, 5);
    off = (size_t)r + 5;

    r = http_parse_request(s + off, len - off, 0, &req, &default_limits);
    assert_int_equal(r, (int)strlen(second));
    assert_span(req.path, req.path_len, "/sub/a");
    assert_true(req.keep_alive);
    off += (size_t)r;

    r = http_parse_request(s + off, len - off, 0, &req, &default_limits);
    assert_int_equal((size_t)r, len - off);
    assert_span(req.path, req.path_len, "/sub/b");
    assert_false(req.keep_alive);
}

/* Feeding one byte at a time with last_len must give the same answer as one call. */
static void test_byte_by_byte(void **state)
{
    const char *s = "\r\nPOST /pub/chan?x=%20 HTTP/1.1\r\nHost: h\r\n"
                    "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello";
    size_t len = strlen(s), head = strlen(s) - strlen("5\r\nhello");
    struct http_request req;

    for (size_t n = 1; n <= len; n++) {
        /* last_len is only meaningful after an HTTP_INCOMPLETE */
        size_t last = n - 1 < head ? n - 1 : 0;
        int r = http_parse_request(s, n, last, &req, &default_limits);
        if (n < head) {
            assert_int_equal(r, HTTP_INCOMPLETE);
        } else {
            assert_int_equal(r, (int)head);
            assert_true(req.chunked);
            assert_true(req.expect_continue);
            assert_span(req.query, req.query_len, "x=%20");
        }
        /* the same prefix parsed from scratch agrees */
        assert_int_equal(http_parse_request(s, n, 0, &req, &default_limits), r);
    }
}

/* Two calls, split at every offset, with both LF and CRLF heads. */
static void test_split_every_offset(void **state)
{
    static const char *heads[] = {
        "GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "GET /a HTTP/1.1\nHost: x\n\n",
        "GET /a HTTP/1.1\nHost: x\n\r\n",
    };
    struct http_request req;

    for (size_t h = 0; h < 3; h++) {
        const char *s = heads[h];
        size_t len = strlen(s);
        for (size_t k = 1; k < len; k++) {
            assert_int_equal(http_parse_request(s, k, 0, &req, &default_limits), HTTP_INCOMPLETE);
            assert_int_equal(http_parse_request(s, len, k, &req, &default_limits), (int)len);
            assert_span(req.path, req.path_len, "/a");
        }
    }
    assert_true(req.keep_alive);
}

static void test_header_trimming_and_values(void **state)
{
    const char *s = "GET / HTTP/1.1\r\nA:\tx y\t \r\nB: \xff\x80obs\r\nC:v\r\n\r\n";
    struct http_request req;

    assert_int_equal(parse(s, &req), (int)strlen(s));
    assert_span(req.headers[0].value, req.headers[0].value_len, "x y");
    assert_span(req.headers[1].value, req.headers[1].value_len, "\xff\x80obs");
    assert_span(req.headers[2].value, req.headers[2].value_len, "v");
}

/* ---- head parser: every error ------------------------------------------- */

struct error_case {
    const char *input;
    int want;
};

static void run_error_cases(const struct error_case *cases, size_t n)
{
    struct http_request req;

    for (size_t i = 0; i < n; i++) {
        int r = parse(cases[i].input, &req);
        if (r != cases[i].want)
            print_error("case %zu: %s\n", i, cases[i].input);
        assert_int_equal(r, cases[i].want);
    }
}

static void test_syntax_errors(void **state)
{
    static const struct error_case cases[] = {
        {"GET  / HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET /  HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {" GET / HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"G(T / HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET\t/ HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / http/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1 \r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.10\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET /\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\rX\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET /a\x01 HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET /a\x7f HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET x HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"CONNECT example.com:443 HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET http:/x HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET http:///x HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET 1http://h/ HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nHost : x\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nA: 1\r\n  folded\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\n\tA: 1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\n: novalue\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nNoColon\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nA(b: 1\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nA: x\x7fy\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nA: x\ry\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nA: 1\r\r\n\r\n", HTTP_ERR_SYNTAX},
        {"GET / HTTP/1.1\r\nA: 1\r\n\rX\r\n\r\n", HTTP_ERR_SYNTAX},
        {"\rGET / HTTP/1.1\r\n\r\n", HTTP_ERR_SYNTAX},
        /* early: the request line alone proves it */
        {"G@T", HTTP_ERR_SYNTAX},
        {"GET / HTTX", HTTP_ERR_SYNTAX},
    };
    run_error_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_nul_anywhere(void **state)
{
    const char s[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    char buf[sizeof(s)];
    struct http_request req;

    for (size_t i = 0; i < sizeof(s) - 1; i++) {
        memcpy(buf, s, sizeof(s));
        buf[i] = '\0';
        int r = http_parse_request(buf, sizeof(s) - 1, 0, &req, &default_limits);
        /* NUL in the final "\n\r\n" just leaves the head incomplete */
        if (i >= sizeof(s) - 4)
            assert_true(r == HTTP_INCOMPLETE || r == HTTP_ERR_SYNTAX);
        else
            assert_int_equal(r, HTTP_ERR_SYNTAX);
    }
}

/* Long values and targets are scanned a word at a time: test every byte position. */
static void test_ctl_at_every_position(void **state)
{
    static const unsigned char bad[] = {0x01, 0x1f, 0x7f, 0x00, 0x0b};
    static const unsigned char good[] = {'\t', 0x80, 0xff, '~', ' '};
    char buf[128];
    struct http_request req;

    for (size_t pos = 0; pos < 40; pos++) {
        for (size_t i = 0; i < sizeof(bad); i++) {
            int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: a%040db\r\n\r\n", 0);
            buf[20 + pos] = (char)bad[i];
            assert_int_equal(http_parse_request(buf, (size_t)n, 0, &req, &default_limits),
                             HTTP_ERR_SYNTAX);
            n = snprintf(buf, sizeof(buf), "GET /%040d HTTP/1.1\r\n\r\n", 0);
            buf[5 + pos] = (char)bad[i];
            assert_int_equal(http_parse_request(buf, (size_t)n, 0, &req, &default_limits),
                             HTTP_ERR_SYNTAX);
        }
        for (size_t i = 0; i < sizeof(good); i++) {
            int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: a%040db\r\n\r\n", 0);
            buf[20 + pos] = (char)good[i];
            assert_int_equal(http_parse_request(buf, (size_t)n, 0, &req, &default_limits), n);
            assert_int_equal(req.headers[0].value_len, 42);
            assert_int_equal((unsigned char)req.headers[0].value[pos + 1], good[i]);
        }
    }
}

static void test_version_errors(void **state)
{
    static const struct error_case cases[] = {
        {"GET / HTTP/2.0\r\n\r\n", HTTP_ERR_VERSION}, {"GET / HTTP/1.2\r\n\r\n", HTTP_ERR_VERSION},
        {"GET / HTTP/0.9\r\n\r\n", HTTP_ERR_VERSION}, {"GET / HTTP/3.1\r\n\r\n", HTTP_ERR_VERSION},
        {"GET / HTTP/2.0", HTTP_ERR_VERSION}, /* known before the line ends */
    };
    run_error_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

/* A head of exactly `size` bytes: request line plus one padding header. */
static char *make_head(size_t size)
{
    const char *pre = "GET / HTTP/1.1\r\nX: ";
    char *s = malloc(size + 1);

    assert_non_null(s);
    assert_true(size >= strlen(pre) + 4);
    memcpy(s, pre, strlen(pre));
    memset(s + strlen(pre), 'a', size - strlen(pre) - 4);
    memcpy(s + size - 4, "\r\n\r\n", 5);
    return s;
}

static void test_header_bytes_limit(void **state)
{
    struct http_request req;
    char *at = make_head(100), *past = make_head(101);

    assert_int_equal(parse_lim(at, &req, 100, 50), 100);
    assert_int_equal(parse_lim(past, &req, 100, 50), HTTP_ERR_HEADERS_TOO_BIG);
    /* incomplete: refused as soon as the limit is reached without a blank line */
    assert_int_equal(
        http_parse_request(past, 99, 0, &req,
                           &(struct http_limits){.max_header_bytes = 100, .max_uri_bytes = 50}),
        HTTP_INCOMPLETE);
    assert_int_equal(
        http_parse_request(past, 100, 99, &req,
                           &(struct http_limits){.max_header_bytes = 100, .max_uri_bytes = 50}),
        HTTP_ERR_HEADERS_TOO_BIG);
    /* ... also when fed the whole head and more in one go */
    assert_int_equal(parse_lim(past, &req, 100, 50), HTTP_ERR_HEADERS_TOO_BIG);
    /* the body after a head of exactly the limit does not count */
    char *body = malloc(120);
    memcpy(body, at, 100);
    memset(body + 100, 'b', 19);
    body[119] = '\0';
    assert_int_equal(parse_lim(body, &req, 100, 50), 100);
    free(body);
    free(at);
    free(past);
}

static void test_header_count_limit(void **state)
{
    char buf[2048];
    struct http_request req;
    size_t n;

    for (int count = HTTP_MAX_HEADERS; count <= HTTP_MAX_HEADERS + 1; count++) {
        n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n");
        for (int i = 0; i < count; i++)
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "H%d: v\r\n", i);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\n");
        int r = parse(buf, &req);
        if (count == HTTP_MAX_HEADERS) {
            assert_int_equal(r, (int)n);
            assert_int_equal(req.num_headers, HTTP_MAX_HEADERS);
        } else {
            assert_int_equal(r, HTTP_ERR_HEADERS_TOO_BIG);
        }
    }
}

static void test_uri_limit(void **state)
{
    char buf[256];
    struct http_request req;

    /* target of exactly 20 bytes is fine, 21 is not */
    snprintf(buf, sizeof(buf), "GET /%s HTTP/1.1\r\n\r\n", "1234567890123456789");
    assert_true(parse_lim(buf, &req, 1000, 20) > 0);
    assert_int_equal(req.target_len, 20);
    snprintf(buf, sizeof(buf), "GET /%s HTTP/1.1\r\n\r\n", "12345678901234567890");
    assert_int_equal(parse_lim(buf, &req, 1000, 20), HTTP_ERR_URI_TOO_LONG);
    /* known before the target ends, and before the head limit */
    assert_int_equal(parse_lim("GET /12345678901234567890", &req, 1000, 20), HTTP_ERR_URI_TOO_LONG);
    assert_int_equal(parse_lim("GET /1234567890123456789", &req, 1000, 20), HTTP_INCOMPLETE);
    assert_int_equal(parse_lim("GET /12345678901234567890", &req, 25, 20), HTTP_ERR_URI_TOO_LONG);
}

static void test_uri_limit_incremental(void **state)
{
    const char *s = "GET /0123456789012345678901234567890 HTTP/1.1\r\n\r\n";
    struct http_limits lim = {.max_header_bytes = 1000, .max_uri_bytes = 10};
    struct http_request req;

    /* "GET " + 10 target bytes are fine; the 11th target byte is refused at once */
    for (size_t n = 1; n <= 14; n++)
        assert_int_equal(http_parse_request(s, n, n - 1, &req, &lim), HTTP_INCOMPLETE);
    assert_int_equal(http_parse_request(s, 15, 14, &req, &lim), HTTP_ERR_URI_TOO_LONG);
}

static void test_content_length(void **state)
{
    static const struct error_case cases[] = {
        {"POST / HTTP/1.1\r\nContent-Length: 12a\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n", HTTP_ERR_BAD_LENGTH},
    };
    struct http_request req;

    run_error_cases(cases, sizeof(cases) / sizeof(cases[0]));
    assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n", &req) > 0);
    assert_int_equal(req.content_length, INT64_MAX);
    assert_true(parse("POST / HTTP/1.1\r\nContent-Length:  007 \r\n\r\n", &req) > 0);
    assert_int_equal(req.content_length, 7);
    assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &req) > 0);
    assert_int_equal(req.content_length, 0);
    /* identical duplicates are harmless */
    assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nCONTENT-LENGTH: 5\r\n\r\n", &req) >
                0);
    assert_int_equal(req.content_length, 5);
}

static void test_smuggling(void **state)
{
    static const struct error_case cases[] = {
        {"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
         HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
         HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP_ERR_BAD_LENGTH},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
         HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
         HTTP_ERR_BAD_ENCODING},
        {"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", HTTP_ERR_SYNTAX},
        {"POST / HTTP/1.1\r\nX: 1\r\n Transfer-Encoding: chunked\r\n\r\n", HTTP_ERR_SYNTAX},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\x0b\r\n\r\n", HTTP_ERR_SYNTAX},
    };
    struct http_request req;

    run_error_cases(cases, sizeof(cases) / sizeof(cases[0]));
    assert_true(parse("POST / HTTP/1.1\r\nTransfer-Encoding:  CHUNKED \r\n\r\n", &req) > 0);
    assert_true(req.chunked);
    assert_int_equal(req.content_length, -1);
}

static void test_keep_alive(void **state)
{
    static const struct {
        const char *s;
        bool want;
    } cases[] = {
        {"GET / HTTP/1.1\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", true},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: foo,keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nKeep-Alive: 1\r\n\r\n", false},
    };
    struct http_request req;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_true(parse(cases[i].s, &req) > 0);
        assert_int_equal(req.keep_alive, cases[i].want);
    }
}

static void test_expect_and_upgrade(void **state)
{
    static const struct {
        const char *s;
        bool expect, ws;
    } cases[] = {
        {"POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n", true, false},
        {"POST / HTTP/1.1\r\nExpect: 100-continue, foo\r\n\r\n", false, false},
        {"POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", false, false},
        {"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", false, false},
        {"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", false, true},
        {"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n", false,
         true},
        {"GET / HTTP/1.1\r\nUpgrade: h2c, websocket\r\nConnection: upgrade\r\n\r\n", false, true},
        {"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", false, false},
        {"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", false, false},
        {"GET / HTTP/1.1\r\nUpgrade: websockets\r\nConnection: upgrade\r\n\r\n", false, false},
        {"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgraded\r\n\r\n", false, false},
        {"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", false, false},
    };
    struct http_request req;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_true(parse(cases[i].s, &req) > 0);
        assert_int_equal(req.expect_continue, cases[i].expect);
        assert_int_equal(req.upgrade_websocket, cases[i].ws);
    }
}

static void test_incomplete(void **state)
{
    static const char *cases[] = {
        "G",
        "GET",
        "GET ",
        "GET /",
        "GET / ",
        "GET / HTTP/1.",
        "GET / HTTP/1.1",
        "GET / HTTP/1.1\r",
        "GET / HTTP/1.1\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\r",
        "GET / HTTP/1.1\r\nHost: x\n",
    };
    struct http_request req;

    assert_int_equal(http_parse_request("", 0, 0, &req, &default_limits), HTTP_INCOMPLETE);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(parse(cases[i], &req), HTTP_INCOMPLETE);
}

/* ---- lookups ------------------------------------------------------------ */

static void test_find_header(void **state)
{
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\nX-Id: 1\r\nx-id: 2\r\n\r\n";
    struct http_request req;
    const struct http_header *h;

    assert_true(parse(s, &req) > 0);
    h = http_find_header(&req, "x-ID");
    assert_non_null(h);
    assert_span(h->value, h->value_len, "1");
    h = http_find_header(&req, "HOST");
    assert_span(h->value, h->value_len, "a");
    assert_null(http_find_header(&req, "Hos"));
    assert_null(http_find_header(&req, "Hostx"));
    assert_null(http_find_header(&req, ""));
}

static void test_header_has_token(void **state)
{
    const char *v = " keep-alive ,, Upgrade\t, x ";

    assert_true(http_header_has_token(v, strlen(v), "upgrade"));
    assert_true(http_header_has_token(v, strlen(v), "KEEP-ALIVE"));
    assert_true(http_header_has_token(v, strlen(v), "x"));
    assert_false(http_header_has_token(v, strlen(v), "keep"));
    assert_false(http_header_has_token(v, strlen(v), "alive"));
    assert_false(http_header_has_token(v, strlen(v), ""));
    assert_false(http_header_has_token("", 0, "x"));
    assert_false(http_header_has_token("upgrades", 8, "upgrade"));
    /* only value_len bytes are looked at */
    assert_false(http_header_has_token("upgrade", 6, "upgrade"));
}

static void test_strerror(void **state)
{
    static const int codes[] = {
        HTTP_INCOMPLETE,  HTTP_ERR_SYNTAX,     HTTP_ERR_HEADERS_TOO_BIG, HTTP_ERR_URI_TOO_LONG,
        HTTP_ERR_VERSION, HTTP_ERR_BAD_LENGTH, HTTP_ERR_BAD_ENCODING,
    };
    const char *unknown = http_strerror(-100);

    assert_non_null(unknown);
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        const char *s = http_strerror(codes[i]);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        assert_string_not_equal(s, unknown);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(s, http_strerror(codes[j]));
    }
    assert_string_equal(http_strerror(7), unknown);
}

/* ---- chunked decoder ---------------------------------------------------- */

/* Decodes s in one call; returns the result and copies the output to out. */
static long decode_all(const char *s, size_t n, uint64_t max_body, char *out, size_t *out_len)
{
    struct http_chunked dec = {0};
    char *buf = malloc(n ? n : 1);
    size_t len = n;
    long r;

    memcpy(buf, s, n);
    r = http_chunked_decode(&dec, buf, &len, max_body);
    assert_true(len <= n);
    memcpy(out, buf, len);
    *out_len = len;
    free(buf);
    return r;
}

static long decode_str(const char *s, uint64_t max_body, char *out, size_t *out_len)
{
    return decode_all(s, strlen(s), max_body, out, out_len);
}

static void test_chunked_simple(void **state)
{
    const char *s = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    char out[64];
    size_t n;

    assert_int_equal(decode_all(s, strlen(s), 1000, out, &n), 18);
    assert_int_equal(n, 11);
    assert_memory_equal(out, "hello world", 11);
}

static void test_chunked_ext_trailers_lf(void **state)
{
    const char *s = "A;name=val;x=\"q\"\r\n0123456789\r\n"
                    "1 ;ext\r\n!\r\n"
                    "a\t\r\nabcdefghij\r\n"
                    "0\r\nX-Trailer: 1\r\nOther: two\r\n\r\n";
    const char *lf = "3\nabc\n0\nT: 1\n\n";
    char out[64];
    size_t n;

    assert_int_equal(decode_all(s, strlen(s), 1000, out, &n), 0);
    assert_int_equal(n, 21);
    assert_memory_equal(out, "0123456789!abcdefghij", 21);
    assert_int_equal(decode_all(lf, strlen(lf), 1000, out, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(out, "abc", 3);
    assert_int_equal(decode_str("0\r\n\r\n", 0, out, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(decode_str("000\r\n\r\nX", 0, out, &n), 1);
}

static void test_chunked_byte_by_byte(void **state)
{
    const char *s =
        "4;a=b\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: x\r\n\r\nNEXT";
    size_t len = strlen(s);
    struct http_chunked dec = {0};
    char got[64];
    size_t got_len = 0;
    long r = HTTP_CHUNK_INCOMPLETE;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        size_t n = 1;
        r = http_chunked_decode(&dec, &c, &n, 1000);
        memcpy(got + got_len, &c, n);
        got_len += n;
        if (r >= 0) {
            assert_int_equal(r, 0);
            assert_int_equal(i, len - 5); /* the LF that ends the trailers */
            break;
        }
        assert_int_equal(r, HTTP_CHUNK_INCOMPLETE);
    }
    assert_int_equal(got_len, 23);
    assert_memory_equal(got, "Wikipedia in\r\n\r\nchunks.", 23);
    assert_int_equal(dec.total, 23);
}

static void test_chunked_split_every_offset(void **state)
{
    const char *s = "4;a=b\r\nWiki\r\n5\npedia\n10\r\n0123456789abcdef\r\n0\r\nT: x\r\n\r\nNEXT";
    size_t len = strlen(s);
    const char *want = "Wikipedia0123456789abcdef";

    for (size_t k = 0; k <= len; k++) {
        struct http_chunked dec = {0};
        char buf[128], got[128];
        size_t n1 = k, n2 = len - k, got_len;
        long r;

        memcpy(buf, s, len);
        r = http_chunked_decode(&dec, buf, &n1, 1000);
        memcpy(got, buf, n1);
        got_len = n1;
        if (r >= 0) { /* the split fell inside "NEXT" */
            assert_true(k >= len - 4);
            assert_int_equal(r, (long)k - (long)(len - 4));
            continue;
        }
        assert_int_equal(r, HTTP_CHUNK_INCOMPLETE);
        r = http_chunked_decode(&dec, buf + k, &n2, 1000);
        memcpy(got + got_len, buf + k, n2);
        got_len += n2;
        assert_int_equal(r, 4);
        assert_memory_equal(buf + len - 4, "NEXT", 4);
        assert_int_equal(got_len, strlen(want));
        assert_memory_equal(got, want, got_len);
    }
}

static void test_chunked_errors(void **state)
{
    static const char *bad[] = {
        "\r\n",
        "x\r\n",
        "-1\r\n",
        "5 x\r\nhello\r\n",
        "5\rhello",
        "5\r\nhelloX",
        "5\r\nhello\rX",
        "5;a\x01\r\n",
        "0\r\nT:\x01\r\n",
        "0\r\nT\rX",
        "0\r\n\rX",
        "0x5\r\n",
        "5\r\r\nhello",
        "5 ;\x7f\r\n",
        " 5\r\nhello\r\n",
        "+5\r\nhello\r\n",
        "0\r\n\x02",
    };
    char out[64];
    size_t n;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        long r = decode_all(bad[i], strlen(bad[i]), 1000, out, &n);
        if (r != HTTP_CHUNK_ERROR)
            print_error("case %zu: %s\n", i, bad[i]);
        assert_int_equal(r, HTTP_CHUNK_ERROR);
    }
}

static void test_chunked_size_limits(void **state)
{
    char out[64];
    size_t n;

    /* 17 significant hex digits overflow 64 bits */
    assert_int_equal(decode_str("10000000000000000\r\n", UINT64_MAX, out, &n), HTTP_CHUNK_ERROR);
    assert_int_equal(decode_str("ffffffffffffffff\r\n", UINT64_MAX, out, &n),
                     HTTP_CHUNK_INCOMPLETE);
    assert_int_equal(decode_str("ffffffffffffffff\r\n", 1000, out, &n), HTTP_CHUNK_TOO_BIG);
    /* leading zeros are not significant */
    assert_int_equal(decode_str("00000000000000000000001\r\nx\r\n0\r\n\r\n", 1, out, &n), 0);
    assert_int_equal(n, 1);
    /* max_body exactly reached across chunks, then one past */
    assert_int_equal(decode_str("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 5, out, &n), 0);
    assert_int_equal(n, 5);
    assert_int_equal(decode_str("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 5, out, &n),
                     HTTP_CHUNK_TOO_BIG);
    assert_int_equal(n, 3);
    /* refused before the data arrives, as soon as the size is known */
    assert_int_equal(decode_str("6;", 5, out, &n), HTTP_CHUNK_TOO_BIG);
    assert_int_equal(decode_str("A", 5, out, &n), HTTP_CHUNK_INCOMPLETE);
    assert_int_equal(decode_str("Ab", 5, out, &n), HTTP_CHUNK_INCOMPLETE);
}

static void test_chunked_after_done(void **state)
{
    struct http_chunked dec = {0};
    char buf[] = "0\r\n\r\n";
    char more[] = "GET";
    size_t n = 5, m = 3;

    assert_int_equal(http_chunked_decode(&dec, buf, &n, 10), 0);
    assert_int_equal(n, 0);
    assert_int_equal(http_chunked_decode(&dec, more, &m, 10), 3);
    assert_int_equal(m, 0);
    m = 0;
    dec = (struct http_chunked){0};
    assert_int_equal(http_chunked_decode(&dec, more, &m, 10), HTTP_CHUNK_INCOMPLETE);
}

/* ---- URL helpers -------------------------------------------------------- */

static void test_url_decode(void **state)
{
    char buf[64];
    const char *s = "%41%62c+d%2Fe%2f%7E";
    long r;

    r = http_url_decode(buf, s, strlen(s));
    assert_int_equal(r, 9);
    assert_memory_equal(buf, "Abc+d/e/~", 9);

    strcpy(buf, "a%20b%20%20c");
    r = http_url_decode(buf, buf, strlen(buf));
    assert_int_equal(r, 6);
    assert_memory_equal(buf, "a b  c", 6);

    assert_int_equal(http_url_decode(buf, "", 0), 0);
    assert_int_equal(http_url_decode(buf, "%00", 3), 1);
    assert_int_equal(buf[0], '\0');
    assert_int_equal(http_url_decode(buf, "%ff", 3), 1);
    assert_int_equal((unsigned char)buf[0], 0xff);
}

static void test_url_decode_errors(void **state)
{
    static const char *bad[] = {"%", "%4", "a%", "%4g", "%g4", "%%41", "ok%zz", "%-1", "% 1"};
    char buf[16];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(http_url_decode(buf, bad[i], strlen(bad[i])), -1);
    /* the escape must lie within src_len */
    assert_int_equal(http_url_decode(buf, "%41", 2), -1);
}

static void test_query_param(void **state)
{
    const char *q = "a=1&abc=2&flag&b=x%20y&a=3&=e&c=";
    size_t n = strlen(q);
    const char *v;
    size_t vl;

    assert_true(http_query_param(q, n, "a", &v, &vl));
    assert_span(v, vl, "1");
    assert_true(http_query_param(q, n, "abc", &v, &vl));
    assert_span(v, vl, "2");
    assert_true(http_query_param(q, n, "flag", &v, &vl));
    assert_int_equal(vl, 0);
    assert_true(http_query_param(q, n, "b", &v, &vl));
    assert_span(v, vl, "x%20y");
    assert_true(http_query_param(q, n, "c", &v, &vl));
    assert_int_equal(vl, 0);
    assert_true(http_query_param(q, n, "", &v, &vl));
    assert_span(v, vl, "e");
    assert_false(http_query_param(q, n, "ab", &v, &vl));
    assert_false(http_query_param(q, n, "A", &v, &vl));
    assert_false(http_query_param(q, n, "fla", &v, &vl));
    assert_false(http_query_param(q, n, "x", &v, &vl));
    /* only query_len bytes count */
    assert_false(http_query_param(q, 3, "abc", &v, &vl));
    assert_true(http_query_param(q, 2, "a", &v, &vl));
    assert_int_equal(vl, 0);
    assert_false(http_query_param(NULL, 0, "a", &v, &vl));
    assert_false(http_query_param("", 0, "a", &v, &vl));
    /* names are matched raw, not decoded */
    assert_false(http_query_param("%61=1", 5, "a", &v, &vl));
    assert_true(http_query_param("k=a=b", 5, "k", &v, &vl));
    assert_span(v, vl, "a=b");
}

static void test_query_param_from_request(void **state)
{
    struct http_request req;
    const char *v;
    size_t vl;
    char dec[32];

    assert_true(parse("GET /sub/x?last-id=42&ch=a%2Cb HTTP/1.1\r\n\r\n", &req) > 0);
    assert_true(http_query_param(req.query, req.query_len, "ch", &v, &vl));
    assert_int_equal(http_url_decode(dec, v, vl), 3);
    assert_memory_equal(dec, "a,b", 3);
    assert_true(parse("GET /sub/x HTTP/1.1\r\n\r\n", &req) > 0);
    assert_false(http_query_param(req.query, req.query_len, "ch", &v, &vl));
    assert_true(parse("GET /sub/x?ch=%G1 HTTP/1.1\r\n\r\n", &req) > 0);
    assert_true(http_query_param(req.query, req.query_len, "ch", &v, &vl));
    assert_int_equal(http_url_decode(dec, v, vl), -1);
}

/* ---- response heads (the CLI's client) ------------------------------------ */

static void test_response_head(void **state)
{
    const char *s = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    "Content-Length: 12\r\n\r\n{\"id\":\"1\"}xx";
    struct http_response r;

    assert_int_equal(http_parse_response(s, strlen(s), &r, 8192), (int)(strstr(s, "{") - s));
    assert_int_equal(r.status, 201);
    assert_span(r.reason, r.reason_len, "Created");
    assert_int_equal(r.content_length, 12);
    assert_false(r.chunked);
    assert_true(r.keep_alive);
    assert_span(http_response_header(&r, "content-type")->value,
                http_response_header(&r, "content-type")->value_len, "application/json");
    assert_null(http_response_header(&r, "x-none"));

    s = "HTTP/1.0 200\nTransfer-Encoding: chunked\n\n";
    assert_int_equal(http_parse_response(s, strlen(s), &r, 8192), HTTP_ERR_BAD_LENGTH);
    s = "HTTP/1.1 200\nTransfer-Encoding: chunked\nConnection: close\n\n";
    assert_int_equal(http_parse_response(s, strlen(s), &r, 8192), (int)strlen(s));
    assert_true(r.chunked);
    assert_false(r.keep_alive);
    assert_int_equal(r.reason_len, 0);
    /* every prefix is incomplete */
    for (size_t n = 0; n < strlen(s); n++)
        assert_int_equal(http_parse_response(s, n, &r, 8192), HTTP_INCOMPLETE);
}

static void test_response_errors(void **state)
{
    static const char *bad[] = {
        "HTTP/1.1 20 OK\r\n\r\n",           "HTTP/1.1 200OK\r\n\r\n", "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 600 No\r\n\r\n",          "ICY 200 OK\r\n\r\n",     "HTTP/1.1 200 O\x01K\r\n\r\n",
        "HTTP/1.1 200 OK\r\n x: y\r\n\r\n",
    };
    struct http_response r;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(http_parse_response(bad[i], strlen(bad[i]), &r, 8192), HTTP_ERR_SYNTAX);
    const char *s = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert_int_equal(http_parse_response(s, strlen(s), &r, 8192), HTTP_ERR_BAD_LENGTH);
    s = "HTTP/1.1 200 OK\r\nX: 0123456789\r\n\r\n";
    assert_int_equal(http_parse_response(s, 20, &r, 20), HTTP_ERR_HEADERS_TOO_BIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_method_ids),
        cmocka_unit_test(test_target_forms),
        cmocka_unit_test(test_lf_only_and_mixed),
        cmocka_unit_test(test_leading_empty_lines),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_split_every_offset),
        cmocka_unit_test(test_header_trimming_and_values),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_nul_anywhere),
        cmocka_unit_test(test_ctl_at_every_position),
        cmocka_unit_test(test_version_errors),
        cmocka_unit_test(test_header_bytes_limit),
        cmocka_unit_test(test_header_count_limit),
        cmocka_unit_test(test_uri_limit),
        cmocka_unit_test(test_uri_limit_incremental),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_smuggling),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_expect_and_upgrade),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_find_header),
        cmocka_unit_test(test_header_has_token),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_chunked_simple),
        cmocka_unit_test(test_chunked_ext_trailers_lf),
        cmocka_unit_test(test_chunked_byte_by_byte),
        cmocka_unit_test(test_chunked_split_every_offset),
        cmocka_unit_test(test_chunked_errors),
        cmocka_unit_test(test_chunked_size_limits),
        cmocka_unit_test(test_chunked_after_done),
        cmocka_unit_test(test_url_decode),
        cmocka_unit_test(test_url_decode_errors),
        cmocka_unit_test(test_query_param),
        cmocka_unit_test(test_query_param_from_request),
        cmocka_unit_test(test_response_head),
        cmocka_unit_test(test_response_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
