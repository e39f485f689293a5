/*
 * Unit tests for src/core/util.c: the growable string (sbuf), JSON string
 * escaping as RFC 8259 §7 requires (quotation mark, reverse solidus and
 * U+0000..U+001F; everything else, UTF-8 included, passes through), and the
 * constant-time comparison's results.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* Escapes s[0..len) into a fresh sbuf and checks the result against `want`. */
static void check_json(const char *s, size_t len, const char *want)
{
    struct sbuf b = {0};
    sbuf_add_json_str(&b, s, len);
    assert_non_null(b.data);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    assert_int_equal(b.data[b.len], '\0'); /* always NUL-terminated */
    sbuf_free(&b);
}

static void test_sbuf_add_and_printf(void **state)
{
    struct sbuf b = {0};
    sbuf_adds(&b, "abc");
    sbuf_add(&b, "defgh", 2);
    sbuf_printf(&b, "-%d-%s", 42, "x");
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "abcde-42-x");
    assert_true(b.cap >= b.len + 1);

    /* Growth far past the first allocation keeps every byte. */
    for (int i = 0; i < 1000; i++)
        sbuf_printf(&b, "%04d", i);
    assert_int_equal(b.len, 10 + 4000);
    char want[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(want, sizeof(want), "%04d", i);
        assert_memory_equal(b.data + 10 + 4 * i, want, 4);
    }
    assert_int_equal(b.data[b.len], '\0');
    sbuf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
}

static void test_json_plain_and_empty(void **state)
{
    check_json("", 0, "\"\"");
    check_json("hello world", 11, "\"hello world\"");
    check_json("a/b<c>&'~\x7f", 10, "\"a/b<c>&'~\x7f\""); /* nothing else needs escaping */
}

static void test_json_quotes_and_backslash(void **state)
{
    check_json("\"", 1, "\"\\\"\"");
    check_json("\\", 1, "\"\\\\\"");
    check_json("say \"hi\" \\o/", 12, "\"say \\\"hi\\\" \\\\o/\"");
    check_json("\"\"\\\\", 4, "\"\\\"\\\"\\\\\\\\\"");
}

static void test_json_control_chars(void **state)
{
    check_json("\n\r\t\b\f", 5, "\"\\n\\r\\t\\b\\f\"");
    check_json("\x01", 1, "\"\\u0001\"");
    check_json("a\x1f"
               "b",
               3, "\"a\\u001fb\"");
    check_json("\x1b[0m", 4, "\"\\u001b[0m\"");
    /* An embedded NUL is data (the length says where the string ends). */
    check_json("a\0b", 3, "\"a\\u0000b\"");

    /* Every control character: exactly one escape, never the raw byte. */
    for (unsigned c = 0; c < 0x20; c++) {
        char in[3] = {'x', (char)c, 'y'};
        struct sbuf b = {0};
        sbuf_add_json_str(&b, in, 3);
        assert_true(b.len == 2 + 2 + 2 || b.len == 2 + 2 + 6);
        assert_int_equal(b.data[0], '"');
        assert_int_equal(b.data[1], 'x');
        assert_int_equal(b.data[2], '\\');
        assert_int_equal(b.data[b.len - 2], 'y');
        assert_int_equal(b.data[b.len - 1], '"');
        for (size_t i = 0; i < b.len; i++)
            assert_true((unsigned char)b.data[i] >= 0x20);
        if (b.len == 12) {
            char want[7];
            snprintf(want, sizeof(want), "\\u%04x", c);
            assert_memory_equal(b.data + 2, want, 6);
        }
        sbuf_free(&b);
    }
}

static void test_json_utf8_untouched(void **state)
{
    const char *s = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80 \xe2\x80\xa8";
    struct sbuf b = {0};
    sbuf_add_json_str(&b, s, strlen(s));
    assert_int_equal(b.len, strlen(s) + 2);
    assert_memory_equal(b.data + 1, s, strlen(s));
    sbuf_free(&b);
}

/* Bytes that are not UTF-8 (peer input echoed in an error) become U+FFFD, one per byte:
 * the JSON text stays valid. */
static void test_json_invalid_utf8_replaced(void **state)
{
    check_json("\xff\xfe\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"");
    check_json("a\xc3", 2, "\"a\\ufffd\"");                                /* truncated sequence */
    check_json("\xc0\xaf", 2, "\"\\ufffd\\ufffd\"");                       /* overlong */
    check_json("\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"");            /* surrogate */
    check_json("\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* > U+10FFFF */
    check_json("\xe2\x82\xacx\xe2\x82", 6, "\"\xe2\x82\xacx\\ufffd\\ufffd\"");
    assert_int_equal(utf8_seq_len((const unsigned char *)"\xf0\x9f\x98\x80", 4), 4);
    assert_int_equal(utf8_seq_len((const unsigned char *)"\xf0\x9f\x98", 3), 0);
    assert_int_equal(utf8_seq_len((const unsigned char *)"\xe0\xa0\x80", 3), 3);
    assert_int_equal(utf8_seq_len((const unsigned char *)"\xe0\x9f\x80", 3), 0);
}

static void test_json_appends_and_long_input(void **state)
{
    /* Appends after existing content, and the result matches a byte-by-byte
     * reference across many buffer growths. */
    struct sbuf b = {0};
    sbuf_adds(&b, "{\"k\":");
    char in[5000];
    struct sbuf want = {0};
    sbuf_adds(&want, "{\"k\":\"");
    for (size_t i = 0; i < sizeof(in); i++) {
        unsigned char c = (unsigned char)((i * 7919u) % 128u);
        in[i] = (char)c;
        if (c == '"')
            sbuf_adds(&want, "\\\"");
        else if (c == '\\')
            sbuf_adds(&want, "\\\\");
        else if (c == '\n')
            sbuf_adds(&want, "\\n");
        else if (c == '\r')
            sbuf_adds(&want, "\\r");
        else if (c == '\t')
            sbuf_adds(&want, "\\t");
        else if (c == '\b')
            sbuf_adds(&want, "\\b");
        else if (c == '\f')
            sbuf_adds(&want, "\\f");
        else if (c < 0x20)
            sbuf_printf(&want, "\\u%04x", c);
        else
            sbuf_add(&want, &in[i], 1);
    }
    sbuf_adds(&want, "\"");
    sbuf_add_json_str(&b, in, sizeof(in));
    assert_int_equal(b.len, want.len);
    assert_memory_equal(b.data, want.data, want.len);
    assert_int_equal(b.data[b.len], '\0');
    sbuf_free(&b);
    sbuf_free(&want);
}

static void test_ct_equal(void **state)
{
    assert_true(ct_equal("secret", 6, "secret", 6));
    assert_false(ct_equal("secret", 6, "secreT", 6));
    assert_false(ct_equal("secret", 6, "Secret", 6));
    assert_false(ct_equal("secret", 6, "secre", 5));
    assert_false(ct_equal("secre", 5, "secret", 6));
    assert_false(ct_equal("secret", 6, "", 0));
    assert_true(ct_equal("", 0, "", 0));
    assert_true(ct_equal("a\0b", 3, "a\0b", 3));
    assert_false(ct_equal("a\0b", 3, "a\0c", 3));
    /* Only the given lengths count, not what follows ... */
    assert_true(ct_equal("abcX", 3, "abcY", 3));
    /* ... and different lengths never match, even over equal bytes. */
    assert_false(ct_equal("abcd", 3, "abcd", 2));
    assert_false(ct_equal("abcd", 2, "abcd", 3));

    char x[1024], y[1024];
    for (size_t i = 0; i < sizeof(x); i++)
        x[i] = y[i] = (char)(i * 31);
    assert_true(ct_equal(x, sizeof(x), y, sizeof(y)));
    y[1023] ^= 1;
    assert_false(ct_equal(x, sizeof(x), y, sizeof(y)));
}

static void test_xstrndup(void **state)
{
    char *p = xstrndup("abcdef", 3);
    assert_string_equal(p, "abc");
    free(p);
    p = xstrndup("", 0);
    assert_string_equal(p, "");
    free(p);
}

/* RFC 4648 §10's vectors, unpadded, and the two characters base64url changes. */
static void test_base64url_encode(void **state)
{
    static const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *want[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    char out[16];
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        size_t n = base64url_encode(out, in[i], strlen(in[i]));
        assert_int_equal(n, BASE64URL_LEN(strlen(in[i])));
        out[n] = '\0';
        assert_string_equal(out, want[i]);
    }
    size_t n = base64url_encode(out, "\xfb\xff", 2);
    out[n] = '\0';
    assert_string_equal(out, "-_8");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64url_encode),
        cmocka_unit_test(test_sbuf_add_and_printf),
        cmocka_unit_test(test_json_plain_and_empty),
        cmocka_unit_test(test_json_quotes_and_backslash),
        cmocka_unit_test(test_json_control_chars),
        cmocka_unit_test(test_json_utf8_untouched),
        cmocka_unit_test(test_json_invalid_utf8_replaced),
        cmocka_unit_test(test_json_appends_and_long_input),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_xstrndup),
    };
    return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
