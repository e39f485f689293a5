/*
 * token_fuzz: libFuzzer target for the JWT parser (src/auth/token.c). The input is
 * tried three ways: as a whole token (header, claims and signature as sent by
 * anyone), as the claims of a token this target signs itself (so the claims
 * reader runs behind a valid HS256 signature), and split at its first NUL as a
 * grant pattern and a channel name. Contracts: an accepted token has not expired,
 * its patterns are all well-formed and its sub has no NUL; a malformed pattern is
 * refused; a pattern without '*' or {sub} matches exactly the equal name.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/token.h"
#include "hub/pattern.h"
#include "core/util.h"
#include "fuzz.h"

static const char key[] = "fuzz-secret";
static const int64_t now = 1700000000;

static void check_token(const struct token_verifier *v, const char *jwt, size_t len)
{
    struct token *t = NULL;
    const char *why = NULL;
    int e = token_verify(v, jwt, len, now, &t, &why);
    CHECK((e == 0) == (t != NULL));
    CHECK(e == 0 || why != NULL);
    if (!t)
        return;
    CHECK(!token_expired(v, t, now));
    CHECK(!t->sub || strlen(t->sub) == t->sub_len);
    for (uint32_t i = 0; i < t->nchannels; i++)
        CHECK(token_pattern_valid(t->channels[i], strlen(t->channels[i])));
    for (uint32_t i = 0; i < t->npublish; i++)
        CHECK(token_pattern_valid(t->publish[i], strlen(t->publish[i])));
    token_put(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct token_verifier *v;
    if (!v)
        v = token_verifier_hs256(key, sizeof(key) - 1, 30);
    check_token(v, (const char *)data, size);

    if (size <= 4096) {
        static const char hdr[] = "eyJhbGciOiJIUzI1NiJ9"; /* {"alg":"HS256"} */
        char *jwt = malloc(sizeof(hdr) + size * 4 / 3 + 4 + 64);
        size_t n = sizeof(hdr) - 1;
        memcpy(jwt, hdr, n);
        jwt[n++] = '.';
        n += base64url_encode(jwt + n, data, size);
        unsigned char mac[32];
        unsigned int ml = 0;
        HMAC(EVP_sha256(), key, sizeof(key) - 1, (const unsigned char *)jwt, n, mac, &ml);
        jwt[n++] = '.';
        n += base64url_encode(jwt + n, mac, ml);
        check_token(v, jwt, n);
        free(jwt);
    }

    const uint8_t *nul = memchr(data, 0, size);
    if (nul) {
        const char *pat = (const char *)data, *name = (const char *)nul + 1;
        size_t pl = (size_t)(nul - data), nl = size - pl - 1;
        bool valid = token_pattern_valid(pat, pl);
        bool m = pattern_match(pat, pl, "user", 4, name, nl);
        bool plain = !memchr(pat, '*', pl) && !memchr(pat, '{', pl);
        if (valid && plain)
            CHECK(m == (pl == nl && memcmp(pat, name, pl) == 0));
    }
    return 0;
}
