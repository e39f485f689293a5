/*
 * url_decode_fuzz: libFuzzer target for http_url_decode, which decodes channel
 * names and query values from request targets. The decode into another buffer and
 * in place give the same bytes; a result is never longer than the input; every
 * byte comes back through a full percent-encoding; and a '%' not followed by two
 * hex digits is refused.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "http/http_parser.h"

static int hex(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The reference decoder: what the result must be (-1: refused). */
static long reference(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        if (n - i < 3 || hex(s[i + 1]) < 0 || hex(s[i + 2]) < 0)
            return -1;
        out[o++] = (char)(hex(s[i + 1]) << 4 | hex(s[i + 2]));
        i += 2;
    }
    return (long)o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    char *src = malloc(size ? size : 1), *out = malloc(size ? size : 1);
    char *ref = malloc(size ? size : 1), *enc = malloc(3 * size + 1);
    memcpy(src, in, size);
    long n = http_url_decode(out, src, size);
    long r = reference(in, size, ref);
    CHECK(n == r);
    CHECK(n >= -1 && n <= (long)size);
    if (n >= 0)
        CHECK(memcmp(out, ref, (size_t)n) == 0);
    /* in place: the same answer */
    long m = http_url_decode(src, src, size);
    CHECK(m == n);
    if (n >= 0)
        CHECK(memcmp(src, ref, (size_t)n) == 0);
    /* every byte percent-encoded decodes back to the input */
    static const char digits[] = "0123456789ABCDEF";
    for (size_t i = 0; i < size; i++) {
        enc[3 * i] = '%';
        enc[3 * i + 1] = digits[(uint8_t)in[i] >> 4];
        enc[3 * i + 2] = digits[(uint8_t)in[i] & 15];
    }
    char *back = malloc(3 * size + 1);
    CHECK(http_url_decode(back, enc, 3 * size) == (long)size);
    CHECK(memcmp(back, in, size) == 0);
    free(back);
    free(enc);
    free(ref);
    free(out);
    free(src);
    return 0;
}
