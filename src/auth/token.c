/*
 * token: JWT verification (HS256, RS256, ES256 with OpenSSL EVP), grant
 * patterns, and the cache of verified tokens. See token.h.
 *
 * The crypto is OpenSSL's; what is ours is the strict reading around it:
 * base64url (RFC 4648 §5, no padding, no stray bits), the header and the
 * claims (jansson), and turning a JWS ES256 signature (r || s, RFC 7518 §3.4)
 * into the DER ECDSA-Sig-Value that EVP expects.
 */
#include "auth/token.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "hub/pattern.h"

struct token_verifier {
    enum token_alg alg;
    uint32_t skew_s;
    uint64_t id;       /* unique in this process: names the verifier in cache keys */
    EVP_MAC_CTX *hmac; /* HS256: keyed once; each verification works on a copy */
    EVP_PKEY *pkey;    /* RS256, ES256 */
};

static atomic_uint_fast64_t next_verifier_id = 1;

/*
 * SHA-256 and HMAC, fetched once. OpenSSL 3 looks an algorithm up in its
 * provider store (under a lock) whenever it is named implicitly (EVP_sha256(),
 * HMAC()): per handshake, across workers, that showed in the connect benchmark.
 */
static EVP_MD *sha256;
static EVP_MAC *hmac_alg;
static pthread_once_t algs_once = PTHREAD_ONCE_INIT;

static void algs_fetch(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!sha256 || !hmac_alg)
        abort(); /* an OpenSSL without SHA-256 */
}

static struct token_verifier *verifier_new(enum token_alg alg, uint32_t skew_s)
{
    pthread_once(&algs_once, algs_fetch);
    struct token_verifier *v = xcalloc(1, sizeof(*v));
    v->alg = alg;
    v->skew_s = skew_s;
    v->id = atomic_fetch_add(&next_verifier_id, 1);
    return v;
}

struct token_verifier *token_verifier_hs256(const void *secret, size_t len, uint32_t skew_s)
{
    assert(len > 0);
    struct token_verifier *v = verifier_new(TOKEN_ALG_HS256, skew_s);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    v->hmac = EVP_MAC_CTX_new(hmac_alg);
    if (!v->hmac || EVP_MAC_init(v->hmac, secret, len, params) != 1)
        abort(); /* out of memory inside OpenSSL */
    return v;
}

/* The algorithm a public key is for, TOKEN_ALG_NONE (with a reason) if none. */
static enum token_alg key_alg(EVP_PKEY *pkey, char *err, size_t errsize)
{
    switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(pkey) < 2048) {
            snprintf(err, errsize, "the RSA key has %d bits: RS256 needs 2048 or more",
                     EVP_PKEY_get_bits(pkey));
            return TOKEN_ALG_NONE;
        }
        return TOKEN_ALG_RS256;
    case EVP_PKEY_EC: {
        char group[64] = "";
        size_t gl = 0;
        if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                            &gl) ||
            strcmp(group, "prime256v1") != 0) {
            snprintf(err, errsize, "the EC key is on curve %s: ES256 needs P-256 (prime256v1)",
                     group[0] ? group : "(unknown)");
            return TOKEN_ALG_NONE;
        }
        return TOKEN_ALG_ES256;
    }
    default:
        snprintf(err, errsize, "the key is neither RSA (RS256) nor EC P-256 (ES256)");
        return TOKEN_ALG_NONE;
    }
}

struct token_verifier *token_verifier_pem(const char *pem, size_t len, enum token_alg alg,
                                          uint32_t skew_s, char *err, size_t errsize)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)MIN(len, (size_t)INT32_MAX));
    EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    if (!pkey) {
        snprintf(err, errsize,
                 "no PEM public key (-----BEGIN PUBLIC KEY-----) found; extract it from the "
                 "private key with: openssl pkey -in key.pem -pubout");
        return NULL;
    }
    enum token_alg by_key = key_alg(pkey, err, errsize);
    if (by_key == TOKEN_ALG_NONE || (alg != TOKEN_ALG_NONE && alg != by_key)) {
        if (by_key != TOKEN_ALG_NONE)
            snprintf(err, errsize, "the key is for %s, not %s", token_alg_name(by_key),
                     token_alg_name(alg));
        EVP_PKEY_free(pkey);
        return NULL;
    }
    struct token_verifier *v = verifier_new(by_key, skew_s);
    v->pkey = pkey;
    return v;
}

struct token_verifier *token_verifier_pem_file(const char *path, enum token_alg alg,
                                               uint32_t skew_s, char *err, size_t errsize)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errsize, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[16384];
    size_t n = fread(buf, 1, sizeof(buf), f);
    bool big = n == sizeof(buf);
    fclose(f);
    if (big) {
        snprintf(err, errsize, "%s is larger than a public key (16 KiB or more)", path);
        return NULL;
    }
    char why[200];
    struct token_verifier *v = token_verifier_pem(buf, n, alg, skew_s, why, sizeof(why));
    if (!v)
        snprintf(err, errsize, "%s: %s", path, why);
    return v;
}

void token_verifier_free(struct token_verifier *v)
{
    if (!v)
        return;
    EVP_MAC_CTX_free(v->hmac); /* cleanses the key */
    EVP_PKEY_free(v->pkey);
    free(v);
}

enum token_alg token_verifier_alg(const struct token_verifier *v)
{
    return v->alg;
}

uint32_t token_verifier_skew(const struct token_verifier *v)
{
    return v->skew_s;
}

const char *token_alg_name(enum token_alg alg)
{
    switch (alg) {
    case TOKEN_ALG_HS256: return "HS256";
    case TOKEN_ALG_RS256: return "RS256";
    case TOKEN_ALG_ES256: return "ES256";
    default: return "none";
    }
}

enum token_alg token_alg_parse(const char *name)
{
    for (enum token_alg a = TOKEN_ALG_HS256; a <= TOKEN_ALG_ES256; a++)
        if (strcmp(name, token_alg_name(a)) == 0)
            return a;
    return TOKEN_ALG_NONE;
}

const char *token_error_name(int err)
{
    switch (err) {
    case TOKEN_E_MISSING: return "token_missing";
    case TOKEN_E_EXPIRED: return "token_expired";
    default: return "token_invalid";
    }
}

/* ---- base64url ------------------------------------------------------------------ */

static int b64url_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

/*
 * Decodes unpadded base64url in[0..len) into out (room for len * 3 / 4 bytes).
 * Returns the decoded length, or -1 for a character outside the alphabet
 * (padding included), an impossible length, or non-zero unused bits (a
 * non-canonical encoding: one token, one spelling).
 */
static long b64url_decode(unsigned char *out, const char *in, size_t len)
{
    if (len % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (long)n;
}

/* ---- patterns --------------------------------------------------------------------- */

/* Appends in[0..len) as unpadded base64url to b. */
static void b64url_encode(struct sbuf *b, const unsigned char *in, size_t len)
{
    sbuf_reserve(b, BASE64URL_LEN(len) + 1);
    b->len += base64url_encode(b->data + b->len, in, len);
    b->data[b->len] = '\0'; /* an sbuf stays a C string */
}

bool token_pattern_valid(const char *pat, size_t len)
{
    return len <= TOKEN_MAX_PATTERN && pattern_valid(pat, len);
}

bool token_grants(const struct token *t, enum token_grant which, const char *name, size_t len)
{
    const char **pats = which == TOKEN_GRANT_PUBLISH ? t->publish : t->channels;
    uint32_t n = which == TOKEN_GRANT_PUBLISH ? t->npublish : t->nchannels;
    bool pattern = memchr(name, '*', len) != NULL; /* a subscription pattern: all it matches */
    for (uint32_t i = 0; i < n; i++)
        if (pattern ? pattern_covers(pats[i], strlen(pats[i]), t->sub, t->sub_len, name, len)
                    : pattern_match(pats[i], strlen(pats[i]), t->sub, t->sub_len, name, len))
            return true;
    return false;
}

/* ---- claims ------------------------------------------------------------------------ */

static void token_free_ref(struct ref *r)
{
    free(container_of(r, struct token, ref));
}

void token_put(struct token *t)
{
    if (t)
        ref_put(&t->ref);
}

/* A NumericDate (RFC 7519 §2): seconds, possibly fractional; false if out of range. */
static bool numeric_date(json_t *v, int64_t *out)
{
    if (!json_is_number(v))
        return false;
    double d = json_number_value(v);
    if (!isfinite(d) || d < 0 || d > 9007199254740992.0) /* 2^53 */
        return false;
    *out = (int64_t)floor(d);
    return true;
}

/* Checks an array of patterns; returns the bytes it needs (strings + pointers) or -1. */
static long patterns_size(json_t *arr)
{
    if (!arr)
        return 0;
    if (!json_is_array(arr))
        return -1;
    long size = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *p = json_array_get(arr, i);
        if (!json_is_string(p) || !token_pattern_valid(json_string_value(p), json_string_length(p)))
            return -1;
        size += (long)(json_string_length(p) + 1 + sizeof(char *));
    }
    return size;
}

/* Copies the patterns of arr: pointers into ptrs, bytes at mem; returns the end of mem. */
static char *copy_patterns(json_t *arr, const char **ptrs, char *mem)
{
    for (size_t i = 0; arr && i < json_array_size(arr); i++) {
        json_t *p = json_array_get(arr, i);
        size_t l = json_string_length(p);
        memcpy(mem, json_string_value(p), l);
        mem[l] = '\0';
        ptrs[i] = mem;
        mem += l + 1;
    }
    return mem;
}

/* Builds the token from verified claims; -1 with *why when they are not what we take. */
static int token_from_claims(json_t *claims, const struct token_verifier *v, int64_t now,
                             struct token **out, const char **why)
{
    int64_t exp, nbf, iat;
    json_t *jsub = json_object_get(claims, "sub");
    json_t *jch = json_object_get(claims, "channels"), *jpub = json_object_get(claims, "publish");
    if (!numeric_date(json_object_get(claims, "exp"), &exp)) {
        *why = json_object_get(claims, "exp")
                   ? "the token's \"exp\" is not a date: a number of seconds since 1970, "
                     "from 0 to 2^53"
                   : "the token has no \"exp\" (expiry, seconds since 1970): herald takes only "
                     "tokens that expire";
        return TOKEN_E_INVALID;
    }
    if (now > exp + (int64_t)v->skew_s) {
        *why = "the token expired (\"exp\" is past): get a new one";
        return TOKEN_E_EXPIRED;
    }
    json_t *jnbf = json_object_get(claims, "nbf"), *jiat = json_object_get(claims, "iat");
    if (jnbf && (!numeric_date(jnbf, &nbf) || nbf > now + (int64_t)v->skew_s)) {
        *why = "the token is not valid yet (\"nbf\" is in the future): check the clocks";
        return TOKEN_E_INVALID;
    }
    if (jiat && (!numeric_date(jiat, &iat) || iat > now + (int64_t)v->skew_s)) {
        *why = "the token was issued in the future (\"iat\"): check the clocks";
        return TOKEN_E_INVALID;
    }
    if (jsub && (!json_is_string(jsub) || json_string_length(jsub) == 0 ||
                 json_string_length(jsub) > TOKEN_MAX_SUB ||
                 strlen(json_string_value(jsub)) != json_string_length(jsub))) {
        *why = "\"sub\" is the user id: a string of 1 to 256 bytes (leave it out for no user)";
        return TOKEN_E_INVALID;
    }
    long chsize = patterns_size(jch), pubsize = patterns_size(jpub);
    if (chsize < 0 || pubsize < 0) {
        *why = "\"channels\" and \"publish\" are arrays of channel names or patterns (segments "
               "separated by '.', '*' = one segment, '**' = the rest, {sub} = the user id)";
        return TOKEN_E_INVALID;
    }
    json_t *jinfo = json_object_get(claims, "info");
    char *info =
        jinfo && !json_is_null(jinfo) ? json_dumps(jinfo, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    size_t infolen = info ? strlen(info) : 0;
    if (infolen > TOKEN_MAX_INFO) {
        free(info);
        *why = "\"info\" (what presence shows of the user) is at most 1024 bytes of JSON: keep "
               "it small, or let the backend's connect hook give it";
        return TOKEN_E_INVALID;
    }
    size_t sublen = jsub ? json_string_length(jsub) : 0;
    /* One allocation: the struct, the pattern pointers, then their bytes, sub and info. */
    struct token *t = xmalloc(sizeof(*t) + (size_t)chsize + (size_t)pubsize +
                              (jsub ? sublen + 1 : 0) + (info ? infolen + 1 : 0));
    *t = (struct token){.exp = exp,
                        .nchannels = jch ? (uint32_t)json_array_size(jch) : 0,
                        .npublish = jpub ? (uint32_t)json_array_size(jpub) : 0};
    atomic_init(&t->ref.refs, 1);
    t->ref.free = token_free_ref;
    t->channels = (const char **)(void *)(t + 1);
    t->publish = t->channels + t->nchannels;
    char *mem = (char *)(t->publish + t->npublish);
    mem = copy_patterns(jch, t->channels, mem);
    mem = copy_patterns(jpub, t->publish, mem);
    if (jsub) {
        memcpy(mem, json_string_value(jsub), sublen);
        mem[sublen] = '\0';
        t->sub = mem;
        t->sub_len = (uint32_t)sublen;
        mem += sublen + 1;
    }
    if (info) {
        memcpy(mem, info, infolen + 1);
        t->info = mem;
        t->info_len = (uint32_t)infolen;
        free(info);
    }
    *out = t;
    return 0;
}

/* ---- signatures ---------------------------------------------------------------------- */

/* HMAC-SHA256 of input[0..len) with v's key into mac (EVP_MAX_MD_SIZE bytes); its length. */
static size_t hs256_mac(const struct token_verifier *v, const char *input, size_t len,
                        unsigned char *mac)
{
    size_t mac_len = 0;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(v->hmac);
    bool ok = ctx && EVP_MAC_update(ctx, (const unsigned char *)input, len) == 1 &&
              EVP_MAC_final(ctx, mac, &mac_len, EVP_MAX_MD_SIZE) == 1;
    EVP_MAC_CTX_free(ctx);
    return ok ? mac_len : 0;
}

static bool verify_hs256(const struct token_verifier *v, const char *input, size_t len,
                         const unsigned char *sig, size_t sig_len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t mac_len = hs256_mac(v, input, len, mac);
    bool ok = mac_len > 0;
    /* Constant time: the comparison must not tell how many leading bytes were right. */
    return ok && sig_len == mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0;
}

static bool verify_pkey(const struct token_verifier *v, const char *input, size_t len,
                        const unsigned char *sig, size_t sig_len)
{
    unsigned char *der = NULL;
    int der_len = 0;
    if (v->alg == TOKEN_ALG_ES256) {
        /* JWS: r and s as 32 big-endian bytes each; EVP takes DER (RFC 7518 §3.4). */
        if (sig_len != 64)
            return false;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
        if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
            BN_free(r);
            BN_free(s);
            ECDSA_SIG_free(es);
            return false;
        }
        der_len = i2d_ECDSA_SIG(es, &der);
        ECDSA_SIG_free(es);
        if (der_len <= 0)
            return false;
        sig = der;
        sig_len = (size_t)der_len;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestVerifyInit(md, NULL, sha256, NULL, v->pkey) == 1 &&
              EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)input, len) == 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ERR_clear_error();
    return ok;
}

/* ---- verification -------------------------------------------------------------------- */

/* Decodes a base64url part and parses it as a JSON object; NULL when it is not one. */
static json_t *json_part(const char *p, size_t len)
{
    unsigned char *buf = xmalloc(len * 3 / 4 + 1);
    long n = b64url_decode(buf, p, len);
    json_t *j =
        n > 0 ? json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL) : NULL;
    free(buf);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

int token_verify(const struct token_verifier *v, const char *jwt, size_t len, int64_t now,
                 struct token **out, const char **why)
{
    *out = NULL;
    if (len == 0) {
        *why = "the token is empty";
        return TOKEN_E_MISSING;
    }
    if (len > TOKEN_MAX_BYTES) {
        *why = "the token is longer than 8 KiB";
        return TOKEN_E_INVALID;
    }
    const char *d1 = memchr(jwt, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(jwt + len - d1 - 1)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', (size_t)(jwt + len - d2 - 1))) {
        *why = "a token is a JWT: three base64url parts separated by dots (header.claims."
               "signature)";
        return TOKEN_E_INVALID;
    }
    json_t *hdr = json_part(jwt, (size_t)(d1 - jwt));
    json_t *alg = hdr ? json_object_get(hdr, "alg") : NULL;
    bool alg_ok =
        json_is_string(alg) && strcmp(json_string_value(alg), token_alg_name(v->alg)) == 0;
    bool crit = hdr && json_object_get(hdr, "crit");
    json_decref(hdr);
    if (!hdr) {
        *why = "the token's header is not base64url-encoded JSON (no padding)";
        return TOKEN_E_INVALID;
    }
    if (!alg_ok) {
        /* The configured algorithm only: never "none", never HS256 with a public key. */
        *why = v->alg == TOKEN_ALG_HS256   ? "the token must be signed HS256 (\"alg\":\"HS256\")"
               : v->alg == TOKEN_ALG_RS256 ? "the token must be signed RS256 (\"alg\":\"RS256\")"
                                           : "the token must be signed ES256 (\"alg\":\"ES256\")";
        return TOKEN_E_INVALID;
    }
    if (crit) {
        *why = "the token's header has \"crit\" extensions, which herald does not know";
        return TOKEN_E_INVALID;
    }
    size_t sig_b64 = (size_t)(jwt + len - d2 - 1);
    unsigned char *sig = xmalloc(sig_b64 * 3 / 4 + 1);
    long sig_len = b64url_decode(sig, d2 + 1, sig_b64);
    size_t input_len = (size_t)(d2 - jwt);
    bool ok = sig_len > 0 &&
              (v->alg == TOKEN_ALG_HS256 ? verify_hs256(v, jwt, input_len, sig, (size_t)sig_len)
                                         : verify_pkey(v, jwt, input_len, sig, (size_t)sig_len));
    free(sig);
    if (!ok) {
        *why = "the token's signature does not match: it was not signed with this server's key";
        return TOKEN_E_INVALID;
    }
    json_t *claims = json_part(d1 + 1, (size_t)(d2 - d1 - 1));
    if (!claims) {
        *why = "the token's claims are not a base64url-encoded JSON object (with numbers "
               "that fit 64 bits)";
        return TOKEN_E_INVALID;
    }
    int err = token_from_claims(claims, v, now, out, why);
    json_decref(claims);
    return err;
}

bool token_expired(const struct token_verifier *v, const struct token *t, int64_t now)
{
    return now > t->exp + (int64_t)v->skew_s;
}

/* ---- the cache ------------------------------------------------------------------------ */

/*
 * Set-associative: a key picks a shard (its own lock) and a set of CACHE_WAYS
 * entries; a new token replaces an empty, expired or least recently used entry of
 * its set. Fixed memory, no rehashing, no list to maintain under the lock.
 */
#define CACHE_SHARDS 16
#define CACHE_WAYS   4
#define CACHE_SETS   (TOKEN_CACHE_ENTRIES / CACHE_SHARDS / CACHE_WAYS)

struct cache_entry {
    unsigned char key[32];
    struct token *tok; /* NULL: empty */
    uint64_t used;     /* the shard's clock when last hit */
};

static struct cache_shard {
    pthread_mutex_t lock;
    uint64_t clock;
    size_t n;
    struct cache_entry *sets; /* CACHE_SETS * CACHE_WAYS, allocated on first insert */
} shards[CACHE_SHARDS] = {[0 ... CACHE_SHARDS - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER}};

static void cache_key(const struct token_verifier *v, const char *jwt, size_t len,
                      unsigned char key[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int kl = 32;
    if (!md || EVP_DigestInit_ex(md, sha256, NULL) != 1 ||
        EVP_DigestUpdate(md, &v->id, sizeof(v->id)) != 1 || EVP_DigestUpdate(md, jwt, len) != 1 ||
        EVP_DigestFinal_ex(md, key, &kl) != 1)
        abort(); /* out of memory inside OpenSSL */
    EVP_MD_CTX_free(md);
}

static struct cache_entry *cache_set(struct cache_shard *sh, const unsigned char key[32])
{
    uint32_t h = (uint32_t)key[1] | (uint32_t)key[2] << 8;
    return sh->sets ? sh->sets + (h % CACHE_SETS) * CACHE_WAYS : NULL;
}

static struct token *cache_get(const struct token_verifier *v, const unsigned char key[32],
                               int64_t now)
{
    struct cache_shard *sh = &shards[key[0] % CACHE_SHARDS];
    struct token *t = NULL, *stale = NULL;
    pthread_mutex_lock(&sh->lock);
    struct cache_entry *set = cache_set(sh, key);
    for (int i = 0; set && i < CACHE_WAYS; i++) {
        struct cache_entry *e = &set[i];
        if (!e->tok || CRYPTO_memcmp(e->key, key, 32) != 0)
            continue;
        if (token_expired(v, e->tok, now)) {
            stale = e->tok;
            e->tok = NULL;
            sh->n--;
        } else {
            t = token_get(e->tok);
            e->used = ++sh->clock;
        }
        break;
    }
    pthread_mutex_unlock(&sh->lock);
    token_put(stale);
    return t;
}

static void cache_put(const struct token_verifier *v, const unsigned char key[32], struct token *t,
                      int64_t now)
{
    struct cache_shard *sh = &shards[key[0] % CACHE_SHARDS];
    struct token *old = NULL;
    pthread_mutex_lock(&sh->lock);
    if (!sh->sets)
        sh->sets = xcalloc(CACHE_SETS * CACHE_WAYS, sizeof(*sh->sets));
    struct cache_entry *set = cache_set(sh, key), *victim = &set[0];
    for (int i = 0; i < CACHE_WAYS; i++) {
        struct cache_entry *e = &set[i];
        if (e->tok && CRYPTO_memcmp(e->key, key, 32) == 0) {
            victim = e; /* another thread verified it meanwhile */
            break;
        }
        /* Expiry is judged with this verifier's skew: the next lookup of another
         * verifier's entry would judge it again anyway. */
        if (!e->tok || token_expired(v, e->tok, now)) {
            victim = e;
            break;
        }
        if (e->used < victim->used)
            victim = e;
    }
    old = victim->tok;
    if (!old)
        sh->n++;
    memcpy(victim->key, key, 32);
    victim->tok = token_get(t);
    victim->used = ++sh->clock;
    pthread_mutex_unlock(&sh->lock);
    token_put(old);
}

int token_check(const struct token_verifier *v, const char *jwt, size_t len, int64_t now,
                struct token **out, const char **why)
{
    if (len == 0 || len > TOKEN_MAX_BYTES)
        return token_verify(v, jwt, len, now, out, why);
    unsigned char key[32];
    cache_key(v, jwt, len, key);
    if ((*out = cache_get(v, key, now)) != NULL)
        return 0;
    int err = token_verify(v, jwt, len, now, out, why);
    if (err == 0)
        cache_put(v, key, *out, now);
    return err;
}

size_t token_cache_size(void)
{
    size_t n = 0;
    for (int s = 0; s < CACHE_SHARDS; s++) {
        pthread_mutex_lock(&shards[s].lock);
        n += shards[s].n;
        pthread_mutex_unlock(&shards[s].lock);
    }
    return n;
}

void token_cache_clear(void)
{
    for (int s = 0; s < CACHE_SHARDS; s++) {
        struct cache_shard *sh = &shards[s];
        pthread_mutex_lock(&sh->lock);
        struct cache_entry *sets = sh->sets;
        sh->sets = NULL;
        sh->n = 0;
        pthread_mutex_unlock(&sh->lock);
        for (int i = 0; sets && i < CACHE_SETS * CACHE_WAYS; i++)
            token_put(sets[i].tok);
        free(sets);
    }
}

/* ---- minting ------------------------------------------------------------------------- */

char *token_mint_hs256(const struct token_verifier *v, const char *claims, size_t len)
{
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    assert(v->alg == TOKEN_ALG_HS256);
    struct sbuf b = {0};
    b64url_encode(&b, (const unsigned char *)header, sizeof(header) - 1);
    sbuf_add(&b, ".", 1);
    b64url_encode(&b, (const unsigned char *)claims, len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t mac_len = hs256_mac(v, b.data, b.len, mac);
    if (mac_len == 0)
        abort(); /* out of memory inside OpenSSL */
    sbuf_add(&b, ".", 1);
    b64url_encode(&b, mac, mac_len);
    return b.data; /* sbuf keeps it NUL-terminated */
}
