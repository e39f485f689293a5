/*
 * cli_http: the small blocking HTTP/1.1 client of the CLI (herald pub, sub,
 * channels, stats, apps). One request per connection ("Connection: close"),
 * http:// over a plain socket or https:// over OpenSSL (the system's CA store,
 * which honours SSL_CERT_FILE, or the CA file the caller names; the
 * certificate must be valid for the URL's host, a name or an IP address). Response heads are read
 * with herald's own parser (http_parse_response), chunked bodies with its decoder.
 *
 * Errors: functions return 0, or CLI_HTTP_E_CONNECT (cannot resolve, connect,
 * handshake: the server is unreachable) or CLI_HTTP_E_IO (the connection failed,
 * timed out or answered something that is not HTTP) with a sentence in the
 * caller's err buffer.
 */
#ifndef HERALD_CLI_HTTP_H
#define HERALD_CLI_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/util.h"
#include "http/http_parser.h"

enum {
    CLI_HTTP_E_CONNECT = -1,
    CLI_HTTP_E_IO = -2,
};

/*
 * A base URL: scheme, host, port and path prefix (no trailing '/'); and, for
 * https, whom to trust, which the caller sets after cli_url_parse: cafile (a
 * PEM file of CAs, borrowed; NULL: the system's store, which honours
 * SSL_CERT_FILE and SSL_CERT_DIR) or insecure (no verification at all).
 */
struct cli_url {
    bool tls;
    char host[256];
    char port[8];
    char path[1024];
    const char *cafile;
    bool insecure;
};

/*
 * Parses "http[s]://host[:port][/prefix]" (scheme case-insensitive, IPv6 hosts
 * in brackets, trailing slashes dropped). Refuses, with -1 and a sentence in
 * err that says what is wrong, what a base URL cannot hold: another scheme or
 * none, user:password@, a port outside 1-65535, a ?query or #fragment, spaces
 * and control characters (they would end up in the request line or the Host
 * header), a host over 253 bytes or a path over 1023. 0 on success.
 */
int cli_url_parse(const char *s, struct cli_url *u, char *err, size_t errsize);

struct cli_conn;

/*
 * Connects to u and sends "METHOD u->path+target", `headers` (zero or more
 * "Name: value\r\n" lines, may be NULL) and body[0..len), then reads the
 * response head. Every read and write waits at most timeout_ms. Returns 0 with
 * a connection in *out (cli_http_close it) whose head is cli_http_head(*out).
 */
int cli_http_open(const struct cli_url *u, const char *method, const char *target,
                  const char *headers, const void *body, size_t len, int timeout_ms,
                  struct cli_conn **out, char *err, size_t errsize);
/* The response head; pointers valid until cli_http_close. */
const struct http_response *cli_http_head(const struct cli_conn *c);
/*
 * Reads body bytes (chunked decoded) into buf[0..cap), waiting at most
 * timeout_ms. Returns the count (> 0), 0 at the end of the body, or a
 * CLI_HTTP_E_* error.
 */
long cli_http_read(struct cli_conn *c, char *buf, size_t cap, int timeout_ms, char *err,
                   size_t errsize);
/* Closes c (NULL is fine). */
void cli_http_close(struct cli_conn *c);

/*
 * cli_http_open, then the whole body (at most 64 MiB) into *body (a fresh
 * sbuf, NUL-terminated; sbuf_free it, also on error); *status gets the status.
 */
int cli_http_fetch(const struct cli_url *u, const char *method, const char *target,
                   const char *headers, const void *body, size_t len, int timeout_ms, int *status,
                   struct sbuf *out, char *err, size_t errsize);

/* Appends s percent-encoded (everything but unreserved characters and `keep`). */
void cli_url_encode(struct sbuf *b, const char *s, const char *keep);

#endif
