/*
 * Unit tests for cli_url_parse (src/cli/cli_http.c): the base URL every CLI
 * command talks to, taken from --url or the environment (HERALD_URL and
 * friends), so from whatever a user or a platform put there. Good URLs give
 * their parts; hostile ones (no scheme, userinfo, an unbracketed or broken
 * IPv6 literal, a port out of range, control characters that would end up in
 * the request line or the Host header, a query, very long parts) are refused
 * with a sentence that says what is wrong, and never overflow a field.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_http.h"

static void check_ok(const char *s, bool tls, const char *host, const char *port, const char *path)
{
    struct cli_url u;
    char err[512] = "";
    int rc = cli_url_parse(s, &u, err, sizeof(err));
    if (rc != 0)
        fail_msg("\"%s\" refused: %s", s, err);
    assert_int_equal(u.tls, tls);
    assert_string_equal(u.host, host);
    assert_string_equal(u.port, port);
    assert_string_equal(u.path, path);
}

/* s is refused, and the reason contains `why`. */
static void check_bad(const char *s, const char *why)
{
    struct cli_url u;
    char err[512] = "";
    int rc = cli_url_parse(s, &u, err, sizeof(err));
    if (rc != -1)
        fail_msg("\"%.80s\" accepted (host \"%s\" port \"%s\" path \"%s\")", s, u.host, u.port,
                 u.path);
    if (!strstr(err, why))
        fail_msg("\"%.80s\": the reason \"%s\" does not say \"%s\"", s, err, why);
}

static void test_good_urls(void **state)
{
    check_ok("http://localhost:8080", false, "localhost", "8080", "");
    check_ok("http://localhost", false, "localhost", "80", "");
    check_ok("https://push.example.com", true, "push.example.com", "443", "");
    check_ok("https://push.example.com/", true, "push.example.com", "443", "");
    check_ok("HTTPS://Push.Example.com:8443/apps/shop//", true, "Push.Example.com", "8443",
             "/apps/shop");
    check_ok("http://127.0.0.1:1/a/b", false, "127.0.0.1", "1", "/a/b");
    check_ok("http://[::1]:8080", false, "::1", "8080", "");
    check_ok("https://[2001:db8::7]/x", true, "2001:db8::7", "443", "/x");
    check_ok("http://[::ffff:127.0.0.1]:65535", false, "::ffff:127.0.0.1", "65535", "");
    check_ok("http://h:00080", false, "h", "00080", "");
}

static void test_scheme(void **state)
{
    check_bad("localhost:8080", "http://");
    check_bad("//localhost:8080", "http://");
    check_bad("ftp://localhost", "http://");
    check_bad("http:/localhost", "http://");
    check_bad("", "http://");
    check_bad("http://", "no host");
    check_bad("http:///path", "no host");
}

static void test_ports(void **state)
{
    check_bad("http://h:65536", "port");
    check_bad("http://h:99999999999999999999", "port");
    check_bad("http://h:4294967377", "port"); /* 2^32 + 81: wraps to 81 in 32 bits */
    check_bad("http://h:0", "port");
    check_bad("http://h:", "port");
    check_bad("http://h:-1", "port");
    check_bad("http://h:+80", "port");
    check_bad("http://h:80x", "port");
    check_bad("http://h:8 0", "space");
}

static void test_ipv6(void **state)
{
    check_bad("http://::1:8080", "brackets");
    check_bad("http://[::1:8080", "brackets");
    check_bad("http://[]:80", "no host");
    check_bad("http://[::1]junk:80", "after ]");
    check_bad("http://[::1]:", "port");
    check_bad("http://[::1%eth0]:80", "IPv6");
    check_bad("http://[ab]cd]:80", "after ]");
    check_bad("http://[not-v6]:80", "IPv6");
}

static void test_userinfo_query_and_controls(void **state)
{
    check_bad("http://user:pass@localhost:8080", "--key");
    check_bad("http://user@localhost", "--key");
    check_bad("http://localhost:8080?x=1", "query");
    check_bad("http://localhost:8080/a#frag", "query");
    check_bad("http://localhost/a b", "space");
    check_bad("http://local\rhost/", "control");
    check_bad("http://localhost/\r\nX-Injected: 1", "control");
    check_bad("http://localhost/\x7f", "control");
    check_bad("http://local host", "space");
}

static void test_very_long(void **state)
{
    struct cli_url u;
    char err[512];
    size_t n = 70000;
    char *s = malloc(n + 1);
    /* a host longer than any DNS name */
    memcpy(s, "http://", 7);
    memset(s + 7, 'a', n - 7);
    s[n] = '\0';
    assert_int_equal(cli_url_parse(s, &u, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "long"));
    assert_true(strlen(err) < sizeof(err)); /* the reason does not quote 70 kB */
    /* a host of 255 bytes is refused, 253 (DNS's limit) taken */
    memset(s + 7, 'h', 255);
    s[7 + 255] = '\0';
    check_bad(s, "long");
    s[7 + 253] = '\0';
    assert_int_equal(cli_url_parse(s, &u, err, sizeof(err)), 0);
    assert_int_equal(strlen(u.host), 253);
    /* a path longer than the field */
    memcpy(s, "http://h/", 9);
    memset(s + 9, 'p', 2000);
    s[9 + 2000] = '\0';
    check_bad(s, "long");
    /* a bracketed host that never closes, a port of many digits */
    memcpy(s, "http://[", 8);
    memset(s + 8, ':', 5000);
    s[8 + 5000] = '\0';
    check_bad(s, "brackets");
    memcpy(s, "http://h:", 9);
    memset(s + 9, '9', 5000);
    s[9 + 5000] = '\0';
    check_bad(s, "port");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_urls),
        cmocka_unit_test(test_scheme),
        cmocka_unit_test(test_ports),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_userinfo_query_and_controls),
        cmocka_unit_test(test_very_long),
    };
    return cmocka_run_group_tests_name("cli_url", tests, NULL, NULL);
}
