/*
 * Unit tests for src/auth/token.c: JWT verification (HS256, RS256, ES256 with
 * keys made here by OpenSSL, and tokens signed here independently of the code
 * under test), its refusals (other algorithms, "none", HS256 signed with the
 * RS256 public key, expiry and skew, malformed parts, oversize), grant
 * patterns, and the cache of verified tokens.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/token.h"
#include "core/util.h"

static const char secret[] = "s3cret-for-tests";
static EVP_PKEY *rsa_key, *ec_key, *rsa_small;
static char rsa_pem[4096], ec_pem[1024], small_pem[1024];

static void b64url(struct sbuf *b, const void *data, size_t len)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        char out[4] = {abc[v >> 18], abc[(v >> 12) & 63], abc[(v >> 6) & 63], abc[v & 63]};
        sbuf_add(b, out, len - i >= 3 ? 4 : len - i + 1);
    }
}

/* Signs header.claims with alg ("HS256" with key bytes, "RS256"/"ES256" with pkey,
 * "none": no signature). Returns a malloc'd token. */
static char *sign(const char *header, const char *claims, const char *alg, const void *key,
                  size_t key_len, EVP_PKEY *pkey)
{
    struct sbuf b = {0};
    b64url(&b, header, strlen(header));
    sbuf_add(&b, ".", 1);
    b64url(&b, claims, strlen(claims));
    unsigned char sig[512];
    size_t sig_len = 0;
    if (strcmp(alg, "HS256") == 0) {
        unsigned int l = 0;
        HMAC(EVP_sha256(), key, (int)key_len, (unsigned char *)b.data, b.len, sig, &l);
        sig_len = l;
    } else if (pkey) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        unsigned char der[512];
        size_t der_len = sizeof(der);
        assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey), 1);
        assert_int_equal(EVP_DigestSign(md, der, &der_len, (unsigned char *)b.data, b.len), 1);
        EVP_MD_CTX_free(md);
        if (strcmp(alg, "ES256") == 0) {
            const unsigned char *p = der;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
            memset(sig, 0, 64);
            BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32);
            BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32);
            ECDSA_SIG_free(es);
            sig_len = 64;
        } else {
            memcpy(sig, der, der_len);
            sig_len = der_len;
        }
    }
    sbuf_add(&b, ".", 1);
    b64url(&b, sig, sig_len);
    return b.data;
}

static char *hs(const char *claims)
{
    return sign("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", claims, "HS256", secret, strlen(secret),
                NULL);
}

static int64_t now;

/* Claims expiring in an hour, with sub and grants. */
static char claims_buf[512];
static const char *good_claims(void)
{
    snprintf(claims_buf, sizeof(claims_buf),
             "{\"sub\":\"alice\",\"exp\":%lld,\"iat\":%lld,\"channels\":[\"news\",\"user.{sub}\","
             "\"chat.*\",\"feed.**\"],\"publish\":[\"chat.{sub}\"]}",
             (long long)now + 3600, (long long)now);
    return claims_buf;
}

static void pem_of(EVP_PKEY *k, char *out, size_t size)
{
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, k);
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    assert_true(n > 0 && (size_t)n < size);
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
    BIO_free(bio);
}

static int setup(void **state)
{
    now = (int64_t)time(NULL);
    rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    rsa_small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    if (!rsa_key || !ec_key || !rsa_small)
        return -1;
    pem_of(rsa_key, rsa_pem, sizeof(rsa_pem));
    pem_of(ec_key, ec_pem, sizeof(ec_pem));
    pem_of(rsa_small, small_pem, sizeof(small_pem));
    return 0;
}

static int teardown(void **state)
{
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(rsa_small);
    token_cache_clear();
    return 0;
}

static int verify(const struct token_verifier *v, const char *jwt, struct token **t)
{
    const char *why = NULL;
    int e = token_verify(v, jwt, strlen(jwt), now, t, &why);
    if (e)
        assert_non_null(why);
    return e;
}

static void test_hs256_valid(void **state)
{
    struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 30);
    char *jwt = hs(good_claims());
    struct token *t;
    assert_int_equal(verify(v, jwt, &t), 0);
    assert_string_equal(t->sub, "alice");
    assert_int_equal(t->exp, now + 3600);
    assert_int_equal(t->nchannels, 4);
    assert_int_equal(t->npublish, 1);
    assert_true(token_grants(t, TOKEN_GRANT_SUBSCRIBE, "news", 4));
    assert_true(token_grants(t, TOKEN_GRANT_SUBSCRIBE, "user.alice", 10));
    assert_false(token_grants(t, TOKEN_GRANT_SUBSCRIBE, "user.bob", 8));
    assert_true(token_grants(t, TOKEN_GRANT_PUBLISH, "chat.alice", 10));
    assert_false(token_grants(t, TOKEN_GRANT_PUBLISH, "news", 4));
    token_put(t);
    free(jwt);
    token_verifier_free(v);
}

/* "info" is kept as compact JSON text next to the sub; over TOKEN_MAX_INFO the token is
 * refused, and null is no info. */
static void test_info_claim(void **state)
{
    struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 30);
    char claims[2048];
    snprintf(claims, sizeof(claims),
             "{\"sub\":\"bo\",\"exp\":%lld,\"info\": {\"name\" : \"Bo\", \"n\": [1, 2]}}",
             (long long)now + 60);
    char *jwt = hs(claims);
    struct token *t;
    assert_int_equal(verify(v, jwt, &t), 0);
    assert_string_equal(t->sub, "bo");
    assert_string_equal(t->info, "{\"name\":\"Bo\",\"n\":[1,2]}");
    assert_int_equal(t->info_len, strlen(t->info));
    token_put(t);
    free(jwt);
    snprintf(claims, sizeof(claims), "{\"exp\":%lld,\"info\":null}", (long long)now + 60);
    jwt = hs(claims);
    assert_int_equal(verify(v, jwt, &t), 0);
    assert_null(t->info);
    assert_null(t->sub);
    token_put(t);
    free(jwt);
    /* 1,024 bytes is the bound: "x" * 1022 in quotes fits, one more does not */
    for (int extra = 0; extra < 2; extra++) {
        int n = snprintf(claims, sizeof(claims), "{\"exp\":%lld,\"info\":\"", (long long)now + 60);
        memset(claims + n, 'x', (size_t)(1022 + extra));
        snprintf(claims + n + 1022 + extra, sizeof(claims) - (size_t)n - 1022 - (size_t)extra,
                 "\"}");
        jwt = hs(claims);
        const char *why = NULL;
        int e = token_verify(v, jwt, strlen(jwt), now, &t, &why);
        if (!extra) {
            assert_int_equal(e, 0);
            assert_int_equal(t->info_len, 1024);
            token_put(t);
        } else {
            assert_int_equal(e, TOKEN_E_INVALID);
            assert_non_null(strstr(why, "1024 bytes"));
        }
        free(jwt);
    }
    token_verifier_free(v);
}

/* What is wrong with an exp is said: absent, not a date, or a number past 64 bits. */
static void test_exp_errors_say_what_is_wrong(void **state)
{
    struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 30);
    const struct {
        const char *claims, *says;
    } cases[] = {
        {"{\"sub\":\"a\"}", "has no \"exp\""},
        {"{\"exp\":1e300}", "not a date"},
        {"{\"exp\":-5}", "not a date"},
        {"{\"exp\":\"soon\"}", "not a date"},
        {"{\"exp\":9223372036854775808}", "fit 64 bits"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *jwt = hs(cases[i].claims);
        struct token *t = NULL;
        const char *why = NULL;
        assert_int_equal(token_verify(v, jwt, strlen(jwt), now, &t, &why), TOKEN_E_INVALID);
        assert_non_null(strstr(why, cases[i].says));
        free(jwt);
    }
    token_verifier_free(v);
}

static void test_hs256_wrong_signature(void **state)
{
    struct token_verifier *v = token_verifier_hs256("other-secret", 12, 30);
    char *jwt = hs(good_claims());
    struct token *t;
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    assert_null(t);
    token_verifier_free(v);
    /* A claims part swapped under a valid signature. */
    v = token_verifier_hs256(secret, strlen(secret), 30);
    char *other = hs("{\"exp\":99999999999,\"channels\":[\"**\"]}");
    char *d1 = strchr(jwt, '.'), *d2 = strchr(d1 + 1, '.');
    char *o1 = strchr(other, '.'), *o2 = strchr(o1 + 1, '.');
    struct sbuf b = {0};
    sbuf_add(&b, jwt, (size_t)(d1 - jwt));
    sbuf_add(&b, o1, (size_t)(o2 - o1));
    sbuf_adds(&b, d2);
    assert_int_equal(verify(v, b.data, &t), TOKEN_E_INVALID);
    sbuf_free(&b);
    free(other);
    free(jwt);
    token_verifier_free(v);
}

static void test_alg_mismatch_and_none(void **state)
{
    struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 30);
    struct token *t;
    /* The right HMAC, but the header claims another algorithm. */
    char *jwt = sign("{\"alg\":\"HS384\"}", good_claims(), "HS256", secret, strlen(secret), NULL);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    jwt = sign("{\"alg\":\"none\"}", good_claims(), "none", NULL, 0, NULL);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    jwt = sign("{\"typ\":\"JWT\"}", good_claims(), "HS256", secret, strlen(secret), NULL);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    jwt = sign("{\"alg\":\"HS256\",\"crit\":[\"x\"],\"x\":1}", good_claims(), "HS256", secret,
               strlen(secret), NULL);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    /* Duplicate "alg" keys: refused rather than guessing which one counts. */
    jwt = sign("{\"alg\":\"none\",\"alg\":\"HS256\"}", good_claims(), "HS256", secret,
               strlen(secret), NULL);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    /* An RS256 token to an HS256 verifier. */
    jwt = sign("{\"alg\":\"RS256\"}", good_claims(), "RS256", NULL, 0, rsa_key);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    token_verifier_free(v);
}

static void test_rs256_and_key_confusion(void **state)
{
    char err[256];
    struct token_verifier *v =
        token_verifier_pem(rsa_pem, strlen(rsa_pem), TOKEN_ALG_NONE, 30, err, sizeof(err));
    assert_non_null(v);
    assert_int_equal(token_verifier_alg(v), TOKEN_ALG_RS256);
    struct token *t;
    char *jwt =
        sign("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", good_claims(), "RS256", NULL, 0, rsa_key);
    assert_int_equal(verify(v, jwt, &t), 0);
    assert_string_equal(t->sub, "alice");
    token_put(t);
    free(jwt);
    /* The classic confusion: HS256 with the public key's bytes as the HMAC secret. */
    jwt = sign("{\"alg\":\"HS256\"}", good_claims(), "HS256", rsa_pem, strlen(rsa_pem), NULL);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    /* Signed by another key (the EC one can't, so another RSA signature: the ES256 key's
     * token with its alg rewritten is refused too). */
    jwt = sign("{\"alg\":\"RS256\"}", good_claims(), "ES256", NULL, 0, ec_key);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    token_verifier_free(v);
}

static void test_es256(void **state)
{
    char err[256];
    struct token_verifier *v =
        token_verifier_pem(ec_pem, strlen(ec_pem), TOKEN_ALG_NONE, 30, err, sizeof(err));
    assert_non_null(v);
    assert_int_equal(token_verifier_alg(v), TOKEN_ALG_ES256);
    struct token *t;
    /* Many signatures: r or s with leading zero bytes must convert too. */
    for (int i = 0; i < 50; i++) {
        char *jwt = sign("{\"alg\":\"ES256\"}", good_claims(), "ES256", NULL, 0, ec_key);
        assert_int_equal(verify(v, jwt, &t), 0);
        token_put(t);
        /* A DER signature (what OpenSSL makes) is not a JWS one. */
        if (i == 0) {
            char *rs = sign("{\"alg\":\"ES256\"}", good_claims(), "RS256", NULL, 0, ec_key);
            assert_int_equal(verify(v, rs, &t), TOKEN_E_INVALID);
            free(rs);
        }
        free(jwt);
    }
    char *jwt = sign("{\"alg\":\"RS256\"}", good_claims(), "RS256", NULL, 0, rsa_key);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    jwt = sign("{\"alg\":\"HS256\"}", good_claims(), "HS256", ec_pem, strlen(ec_pem), NULL);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    token_verifier_free(v);
}

static void test_verifier_keys(void **state)
{
    char err[256];
    assert_null(
        token_verifier_pem(small_pem, strlen(small_pem), TOKEN_ALG_NONE, 30, err, sizeof(err)));
    assert_non_null(strstr(err, "2048"));
    assert_null(
        token_verifier_pem(rsa_pem, strlen(rsa_pem), TOKEN_ALG_ES256, 30, err, sizeof(err)));
    assert_non_null(strstr(err, "RS256"));
    assert_null(token_verifier_pem("junk", 4, TOKEN_ALG_NONE, 30, err, sizeof(err)));
    assert_non_null(strstr(err, "PUBLIC KEY"));
    assert_null(
        token_verifier_pem_file("/nonexistent/key.pem", TOKEN_ALG_NONE, 30, err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/key.pem"));
    struct token_verifier *v =
        token_verifier_pem(ec_pem, strlen(ec_pem), TOKEN_ALG_ES256, 30, err, sizeof(err));
    assert_non_null(v);
    token_verifier_free(v);
    assert_int_equal(token_alg_parse("RS256"), TOKEN_ALG_RS256);
    assert_int_equal(token_alg_parse("none"), TOKEN_ALG_NONE);
}

static void test_time_claims(void **state)
{
    struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 30);
    struct token_verifier *v0 = token_verifier_hs256(secret, strlen(secret), 0);
    struct token *t;
    char c[256];
    char *jwt = hs("{\"sub\":\"a\"}");
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID); /* no exp */
    free(jwt);
    jwt = hs("{\"exp\":\"tomorrow\"}");
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    snprintf(c, sizeof(c), "{\"exp\":%lld}", (long long)now - 100);
    jwt = hs(c);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_EXPIRED);
    free(jwt);
    /* Expired 10 s ago: within a 30 s skew, not within none. */
    snprintf(c, sizeof(c), "{\"exp\":%lld}", (long long)now - 10);
    jwt = hs(c);
    assert_int_equal(verify(v, jwt, &t), 0);
    assert_true(token_expired(v0, t, now));
    assert_false(token_expired(v, t, now));
    token_put(t);
    assert_int_equal(verify(v0, jwt, &t), TOKEN_E_EXPIRED);
    free(jwt);
    /* Fractional NumericDate. */
    snprintf(c, sizeof(c), "{\"exp\":%lld.5}", (long long)now + 60);
    jwt = hs(c);
    assert_int_equal(verify(v0, jwt, &t), 0);
    assert_int_equal(t->exp, now + 60);
    token_put(t);
    free(jwt);
    /* nbf in the future: refused beyond the skew, taken within it. */
    snprintf(c, sizeof(c), "{\"exp\":%lld,\"nbf\":%lld}", (long long)now + 600,
             (long long)now + 120);
    jwt = hs(c);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    snprintf(c, sizeof(c), "{\"exp\":%lld,\"nbf\":%lld}", (long long)now + 600,
             (long long)now + 10);
    jwt = hs(c);
    assert_int_equal(verify(v, jwt, &t), 0);
    token_put(t);
    assert_int_equal(verify(v0, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    snprintf(c, sizeof(c), "{\"exp\":%lld,\"iat\":%lld}", (long long)now + 600,
             (long long)now + 300);
    jwt = hs(c);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    token_verifier_free(v);
    token_verifier_free(v0);
}

static void test_malformed(void **state)
{
    struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 30);
    struct token *t;
    const char *why;
    assert_int_equal(token_verify(v, "", 0, now, &t, &why), TOKEN_E_MISSING);
    const char *bad[] = {
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "eyJhbGciOiJIUzI1NiJ9.e30=.AAAA", /* padding */
        "eyJhbGciOiJIUzI1NiJ9.e30+.AAAA", /* '+' is base64, not base64url */
        "eyJhbGciOiJIUzI1NiJ9.e31.AAAA",  /* non-zero unused bits */
        "eyJhbGciOiJIUzI1NiJ9.e.AAAA",    /* impossible length */
        "WyJIUzI1NiJd.e30.AAAA",          /* header ["HS256"]: not an object */
        "bm90IGpzb24.e30.AAAA",           /* header "not json" */
        "eyJhbGciOiJIUzI1NiJ9.e30.",      /* empty signature */
        "eyJhbGciOiJIUzI1NiJ9.e30.AA AA", /* a space */
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        assert_int_equal(verify(v, bad[i], &t), TOKEN_E_INVALID);
    /* Claims that are not an object, behind a valid signature. */
    char *jwt = hs("[1,2]");
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    char c[256];
    const char *bad_claims[] = {
        "\"channels\":\"news\"",  "\"channels\":[1]",
        "\"channels\":[\"a**\"]", "\"channels\":[\"**.a\"]",
        "\"channels\":[\"a b\"]", "\"channels\":[\"{su}\"]",
        "\"publish\":[\"\"]",     "\"sub\":42",
        "\"sub\":\"a\\u0000b\"",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad_claims); i++) {
        snprintf(c, sizeof(c), "{\"exp\":%lld,%s}", (long long)now + 60, bad_claims[i]);
        jwt = hs(c);
        assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
        free(jwt);
    }
    /* Oversize: refused by length before anything else. */
    struct sbuf big = {0};
    sbuf_printf(&big, "{\"exp\":%lld,\"channels\":[", (long long)now + 60);
    for (int i = 0; i < 1000; i++)
        sbuf_printf(&big, "%s\"channel.%d\"", i ? "," : "", i);
    sbuf_adds(&big, "]}");
    jwt = hs(big.data);
    assert_true(strlen(jwt) > TOKEN_MAX_BYTES);
    assert_int_equal(verify(v, jwt, &t), TOKEN_E_INVALID);
    free(jwt);
    sbuf_free(&big);
    token_verifier_free(v);
}

/* The grammar and the matcher are src/hub/pattern.c's (tests/unit/pattern_test.c); the
 * token's own rule is the length bound. */
static void test_pattern_bound(void **state)
{
    (void)state;
    char pat[TOKEN_MAX_PATTERN + 2];
    memset(pat, 'a', sizeof(pat));
    assert_true(token_pattern_valid(pat, TOKEN_MAX_PATTERN));
    assert_false(token_pattern_valid(pat, TOKEN_MAX_PATTERN + 1));
    assert_false(token_pattern_valid("a*", 2));
}

static void test_cache(void **state)
{
    token_cache_clear();
    struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 0);
    struct token_verifier *other = token_verifier_hs256(secret, strlen(secret), 0);
    char c[128];
    snprintf(c, sizeof(c), "{\"exp\":%lld,\"sub\":\"x\"}", (long long)now + 100);
    char *jwt = hs(c);
    struct token *t1, *t2, *t3;
    const char *why;
    assert_int_equal(token_check(v, jwt, strlen(jwt), now, &t1, &why), 0);
    assert_int_equal(token_cache_size(), 1);
    assert_int_equal(token_check(v, jwt, strlen(jwt), now + 1, &t2, &why), 0);
    assert_ptr_equal(t1, t2); /* a hit: the very same verified token */
    /* Another verifier (another app's secret, even if equal) does not share entries. */
    assert_int_equal(token_check(other, jwt, strlen(jwt), now, &t3, &why), 0);
    assert_ptr_not_equal(t1, t3);
    assert_int_equal(token_cache_size(), 2);
    token_put(t3);
    /* Past exp the entry is dropped and the token refused. */
    assert_int_equal(token_check(v, jwt, strlen(jwt), now + 101, &t3, &why), TOKEN_E_EXPIRED);
    assert_int_equal(token_cache_size(), 1);
    token_put(t1);
    token_put(t2);
    free(jwt);
    /* Bad tokens are not cached. */
    for (int i = 0; i < 100; i++) {
        snprintf(c, sizeof(c), "eyJhbGciOiJIUzI1NiJ9.e30.AAAA%04d", i);
        assert_int_not_equal(token_check(v, c, strlen(c), now, &t1, &why), 0);
    }
    assert_int_equal(token_cache_size(), 1);
    /* Many valid tokens: the cache stays within its bound. */
    for (int i = 0; i < TOKEN_CACHE_ENTRIES + 2000; i++) {
        snprintf(c, sizeof(c), "{\"exp\":%lld,\"sub\":\"u%d\"}", (long long)now + 100, i);
        jwt = hs(c);
        assert_int_equal(token_check(v, jwt, strlen(jwt), now, &t1, &why), 0);
        token_put(t1);
        free(jwt);
    }
    assert_true(token_cache_size() <= TOKEN_CACHE_ENTRIES);
    assert_true(token_cache_size() > TOKEN_CACHE_ENTRIES / 2);
    token_cache_clear();
    assert_int_equal(token_cache_size(), 0);
    token_verifier_free(v);
    token_verifier_free(other);
}

/* What herald mints is what the independent signer above makes, and verifies. */
static void test_mint_hs256(void **state)
{
    struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 30);
    const char *claims = good_claims();
    char *mine = token_mint_hs256(v, claims, strlen(claims));
    char *theirs = hs(claims);
    assert_string_equal(mine, theirs);
    struct token *t;
    assert_int_equal(verify(v, mine, &t), 0);
    assert_string_equal(t->sub, "alice");
    token_put(t);
    /* another secret refuses it */
    struct token_verifier *other = token_verifier_hs256("other-secret", 12, 30);
    assert_int_equal(verify(other, mine, &t), TOKEN_E_INVALID);
    /* every length of claims (base64url's three tails) round-trips (a sub: 1 to 3 bytes) */
    for (int n = 1; n <= 3; n++) {
        char c[64];
        snprintf(c, sizeof(c), "{\"exp\":%lld,\"sub\":\"%.*s\"}", (long long)now + 60, n, "abc");
        char *jwt = token_mint_hs256(v, c, strlen(c));
        assert_int_equal(verify(v, jwt, &t), 0);
        assert_int_equal(t->sub_len, (uint32_t)n);
        token_put(t);
        free(jwt);
    }
    free(mine);
    free(theirs);
    token_verifier_free(other);
    token_verifier_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hs256_valid),
        cmocka_unit_test(test_mint_hs256),
        cmocka_unit_test(test_info_claim),
        cmocka_unit_test(test_hs256_wrong_signature),
        cmocka_unit_test(test_exp_errors_say_what_is_wrong),
        cmocka_unit_test(test_alg_mismatch_and_none),
        cmocka_unit_test(test_rs256_and_key_confusion),
        cmocka_unit_test(test_es256),
        cmocka_unit_test(test_verifier_keys),
        cmocka_unit_test(test_time_claims),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_pattern_bound),
        cmocka_unit_test(test_cache),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
