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
    HTTP_M_PATCH,
};

/*
 * Results of http_parse_request(): > 0 is the head length in bytes.
 * HTTP_ERR_HEADERS_TOO_BIG: head > limits.max_header_bytes, or > HTTP_MAX_HEADERS fields.
 * HTTP_ERR_BAD_LENGTH: bad or conflicting duplicate Content-Length, or CL + chunked.
 */
enum http_parse_result {
    HTTP_INCOMPLETE = 0,           /* need more bytes */
    HTTP_ERR_SYNTAX = -1,          /* -> 400 */
    HTTP_ERR_HEADERS_TOO_BIG = -2, /* -> 431 */
    HTTP_ERR_URI_TOO_LONG = -3,    /* request-target > limits.max_uri_bytes -> 414 */
    HTTP_ERR_VERSION = -4,         /* not HTTP/1.0 or HTTP/1.1 -> 505 */
    HTTP_ERR_BAD_LENGTH = -5,      /* -> 400 */
    HTTP_ERR_BAD_ENCODING = -6,    /* Transfer-Encoding other than (only) chunked -> 501 */
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
    bool keep_alive;        /* 1.1: unless "Connection: close"; 1.0: only with keep-alive */
    bool expect_continue;   /* Expect: 100-continue */
    bool upgrade_websocket; /* Upgrade: websocket (case-insensitive) and Connection has "upgrade" */
};

/*
 * Parses one request head from buf[0..len). Returns the head length (> 0, the
 * offset of the first body byte), HTTP_INCOMPLETE, or a negative
 * enum http_parse_result. `last_len` is the len of the previous call on the same
 * request (0 the first time), and must be 0 unless that call returned
 * HTTP_INCOMPLETE. On any return other than > 0 the contents of
 * *req are unspecified. Never reads past buf[len-1]. Can't fail otherwise.
 *
 * Accepts: LF or CRLF line endings, any token method, origin-form or
 * absolute-form or "*" targets, header names as RFC 9110 tokens; rejects
 * obs-fold, whitespace before the colon, control characters in values
 * (except HTAB), and NUL anywhere.
 *
 * Details the caller can rely on:
 * - Empty lines before the request line are skipped (RFC 9112 §2.2); they
 *   count towards the returned head length and towards max_header_bytes.
 * - Exactly one SP separates the request-line parts. Target bytes are VCHAR
 *   or obs-text (>= 0x80); method_id is matched case-sensitively.
 * - path/query: for origin-form, path is the target up to '?'. For "*", path
 *   is "*". For absolute-form ("http://host/p?q") path is "/p" (the authority
 *   is not exposed), and an empty path is the static string "/" (the only
 *   pointer that is not into buf). query is NULL without '?', else non-NULL
 *   (possibly query_len == 0). Authority-form (CONNECT) is HTTP_ERR_SYNTAX.
 * - HTTP_ERR_HEADERS_TOO_BIG is returned as soon as len >= max_header_bytes
 *   and the first max_header_bytes bytes hold no complete head; a head of
 *   exactly max_header_bytes bytes is accepted. HTTP_ERR_URI_TOO_LONG (and
 *   other request-line errors) are returned as soon as the bytes received
 *   prove them; header-field errors only once the head is complete. Heads are
 *   also capped at INT_MAX bytes.
 * - Content-Length must be 1*DIGIT (no sign, no list "5, 5"), <= INT64_MAX;
 *   repeated fields must be identical. Transfer-Encoding must be exactly one
 *   field "chunked" (a second field is HTTP_ERR_BAD_ENCODING). CL together
 *   with chunked, and chunked in an HTTP/1.0 request (RFC 9112 §6.1), are
 *   HTTP_ERR_BAD_LENGTH.
 * - expect_continue needs "Expect: 100-continue" exactly; Expect and Upgrade
 *   are ignored in HTTP/1.0 requests (RFC 9110 §10.1.1, §7.8). Connection
 *   tokens from repeated fields are combined; "close" wins over "keep-alive".
 * - Host is not checked (missing, repeated): that is the caller's job.
 */
int http_parse_request(const char *buf, size_t len, size_t last_len, struct http_request *req,
                       const struct http_limits *limits);

/* Case-insensitive header lookup; returns the first match or NULL. Borrowed pointer into req. */
const struct http_header *http_find_header(const struct http_request *req, const char *name);

/*
 * Whether a comma-separated header value list contains `token` (case-insensitive,
 * OWS around elements ignored, empty elements skipped). An empty token never matches.
 */
bool http_header_has_token(const char *value, size_t value_len, const char *token);

/* A response head, for herald's own HTTP clients (the CLI). Pointers borrow the buffer. */
struct http_response {
    int status; /* 100..599 */
    int minor_version;
    const char *reason; /* may be empty */
    size_t reason_len;
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t num_headers;
    int64_t content_length; /* -1 when absent */
    bool chunked;
    bool keep_alive;
};

/*
 * Parses one response head from buf[0..len): "HTTP/1.x NNN reason" then the
 * header fields, with the request parser's rules for fields, Content-Length
 * and Transfer-Encoding. Returns the head length (> 0), HTTP_INCOMPLETE, or a
 * negative enum http_parse_result (HTTP_ERR_HEADERS_TOO_BIG once len reaches
 * max_header_bytes without a blank line). Leading empty lines are not skipped.
 * Never reads past buf[len-1]; *resp is unspecified unless it returns > 0.
 */
int http_parse_response(const char *buf, size_t len, struct http_response *resp,
                        size_t max_header_bytes);

/* Case-insensitive header lookup in a response; the first match or NULL. */
const struct http_header *http_response_header(const struct http_response *resp, const char *name);

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
 * *len is set to the bytes decoded by this call in every case (including
 * errors; the connection should then be closed). A size line's hex digits are
 * checked against max_body as soon as the size is complete, before any data.
 * LF-only line endings are accepted; bare CR and control bytes in extensions or
 * trailers are HTTP_CHUNK_ERROR; a size over 64 bits is HTTP_CHUNK_ERROR.
 * Once complete, further calls return *len unchanged as trailing bytes (0
 * decoded). `total` is the running decoded size. Chunk extensions and trailer
 * lines are skipped without being stored and are not counted against max_body:
 * the caller should bound the raw bytes (or time) it spends on one body.
 */
#define HTTP_CHUNK_INCOMPLETE (-2)
#define HTTP_CHUNK_ERROR      (-1)
#define HTTP_CHUNK_TOO_BIG    (-3)

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
 * length, or -1 on a malformed escape ('%' not followed by two hex digits);
 * on -1 dst holds a partial result. dst must hold src_len bytes. Note "%00"
 * decodes to a NUL byte: callers that build C strings must check for it.
 */
long http_url_decode(char *dst, const char *src, size_t src_len);

/*
 * Finds query parameter `name` in query[0..query_len) (which is the part after '?').
 * On success points *value and *value_len at the raw (still percent-encoded) value
 * and returns true. Borrowed pointers into query. The name is compared
 * byte-for-byte with the raw (not decoded) key; the first match wins; a key
 * without '=' ("?flag&x=1") matches with an empty value. query may be NULL.
 */
bool http_query_param(const char *query, size_t query_len, const char *name, const char **value,
                      size_t *value_len);

#endif
