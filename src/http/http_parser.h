/*
 * http_parser: an HTTP/1.1 request parser that does no I/O and no allocation.
 *
 * The caller owns the bytes; every pointer the parser returns points into the
 * caller's buffer and stays valid as long as that buffer does. The head parser
 * is called again from the start of the request each time more bytes arrive
 * (like picohttpparser); `last_len` lets it skip re-scanning for the end of the
 * head. The chunked decoder is a resumable state machine that decodes in place.
 */
#ifndef HERALD_HTTP_PARSER_H
#define HERALD_HTTP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 64

enum http_method {
    HTTP_M_OTHER = 0, /* syntactically valid token we do not route */
    HTTP_M_GET,
    HTTP_M_HEAD,
    HTTP_M_POST,
    HTTP_M_PUT,
    HTTP_M_DELETE,
    HTTP_M_OPTIONS,
};

/* Results of http_parse_request(): > 0 is the head length in bytes. */
enum http_parse_result {
    HTTP_INCOMPLETE = 0,          /* need more bytes */
    HTTP_ERR_SYNTAX = -1,         /* -> 400 */
    HTTP_ERR_HEADERS_TOO_BIG = -2, /* head > limits.max_header_bytes, or > HTTP_MAX_HEADERS -> 431 */
    HTTP_ERR_URI_TOO_LONG = -3,   /* request-target > limits.max_uri_bytes -> 414 */
    HTTP_ERR_VERSION = -4,        /* not HTTP/1.0 or HTTP/1.1 -> 505 */
    HTTP_ERR_BAD_LENGTH = -5,     /* bad/duplicate-conflicting Content-Length, or CL + chunked -> 400 */
    HTTP_ERR_BAD_ENCODING = -6,   /* Transfer-Encoding other than (only) chunked -> 501 */
};

struct http_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading/trailing OWS trimmed */
    size_t value_len;
};

struct http_limits {
    size_t max_header_bytes; /* whole head incl. request line and final CRLFCRLF */
    size_t max_uri_bytes;
};

struct http_request {
    const char *method;
    size_t method_len;
    enum http_method method_id;
    const char *target; /* request-target as sent: path plus optional ?query */
    size_t target_len;
    const char *path; /* target up to (not including) '?' */
    size_t path_len;
    const char *query; /* after '?', or NULL */
    size_t query_len;
    int minor_version; /* 0 or 1 */
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t num_headers;

    /* Derived from the headers while parsing. */
    int64_t content_length; /* -1 when absent */
    bool chunked;           /* Transfer-Encoding: chunked */
    bool keep_alive;        /* HTTP/1.1 default true unless "Connection: close"; 1.0 only with keep-alive */
    bool expect_continue;   /* Expect: 100-continue */
    bool upgrade_websocket; /* Upgrade: websocket (case-insensitive) and Connection has "upgrade" */
};

/*
 * Parses one request head from buf[0..len). Returns the head length (> 0, the
 * offset of the first body byte), HTTP_INCOMPLETE, or a negative
 * enum http_parse_result. `last_len` is the len of the previous call on the same
 * request (0 the first time). On any return other than > 0 the contents of
 * *req are unspecified. Never reads past buf[len-1]. Can't fail otherwise.
 *
 * Accepts: LF or CRLF line endings, any token method, origin-form or
 * absolute-form or "*" targets, header names as RFC 9110 tokens; rejects
 * obs-fold, whitespace before the colon, control characters in values
 * (except HTAB), and NUL anywhere.
 */
int http_parse_request(const char *buf, size_t len, size_t last_len, struct http_request *req,
                       const struct http_limits *limits);

/* Case-insensitive header lookup; returns the first match or NULL. Borrowed pointer into req. */
const struct http_header *http_find_header(const struct http_request *req, const char *name);

/* Whether a comma-separated header value list contains `token` (case-insensitive). */
bool http_header_has_token(const char *value, size_t value_len, const char *token);

/* A short English description of a negative http_parse_result. Static string. */
const char *http_strerror(int err);

/*
 * Resumable in-place chunked body decoder.
 *
 * Zero-initialise, then call with successive slices of the body. The decoded
 * bytes are written back to the start of buf; *len becomes the number of
 * decoded bytes. Returns:
 *   >= 0  the body is complete; the value is the number of bytes that followed
 *         the terminating chunk (and trailers) at the end of the *input*, i.e. the
 *         start of the next pipelined request is at input_len - return value.
 *   HTTP_CHUNK_INCOMPLETE  need more input (all of this input was consumed)
 *   HTTP_CHUNK_ERROR       malformed chunk syntax
 *   HTTP_CHUNK_TOO_BIG     decoded size would pass `max_body`
 */
#define HTTP_CHUNK_INCOMPLETE (-2)
#define HTTP_CHUNK_ERROR (-1)
#define HTTP_CHUNK_TOO_BIG (-3)

struct http_chunked {
    uint64_t remaining; /* bytes left in the current chunk's data */
    uint64_t total;     /* decoded bytes so far */
    uint8_t state;
    uint8_t hex_digits;
};

long http_chunked_decode(struct http_chunked *dec, char *buf, size_t *len, uint64_t max_body);

/*
 * Percent-decodes src into dst (which may equal src). '+' is kept as '+'
 * (paths and our query values are not form-encoded). Returns the decoded
 * length, or -1 on a malformed escape. dst must hold src_len bytes.
 */
long http_url_decode(char *dst, const char *src, size_t src_len);

/*
 * Finds query parameter `name` in query[0..query_len) (which is the part after '?').
 * On success points *value/*value_len at the raw (still percent-encoded) value
 * and returns true. Borrowed pointers into query.
 */
bool http_query_param(const char *query, size_t query_len, const char *name, const char **value,
                      size_t *value_len);

#endif
