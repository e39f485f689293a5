/*
 * token: subscriber tokens — JSON Web Tokens (RFC 7519) in the JWS compact form
 * (RFC 7515), signed HS256, RS256 or ES256 (RFC 7518), verified with OpenSSL,
 * and the channel grants they carry.
 *
 * Verification is strict: the header's "alg" must be the verifier's own (so
 * "none", and an HS256 token made with an RS256 public key as its secret, are
 * refused), "crit" is refused, "exp" is required, "nbf" and "iat" are honoured,
 * each within the verifier's clock skew; base64url without padding only; at
 * most TOKEN_MAX_BYTES. Claims kept: "sub" (the user id), "channels" and
 * "publish" (grant patterns, see src/hub/pattern.h), and "info" (what presence
 * shows of the user, any JSON value up to TOKEN_MAX_INFO bytes compact).
 *
 * Verified tokens are cached (token_check) under the SHA-256 of the verifier's
 * id and the token, until their "exp": a client that reconnects with the same
 * token costs one hash. The cache holds valid tokens only, TOKEN_CACHE_ENTRIES
 * at most (the least recently used go first), so a flood of bad tokens does
 * not grow it. It is shared by every thread (striped locks).
 */
#ifndef HERALD_TOKEN_H
#define HERALD_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/ref.h"

#define TOKEN_MAX_BYTES      8192 /* a longer token is refused before any work */
#define TOKEN_MAX_PATTERN    256  /* bytes of one grant pattern */
#define TOKEN_MAX_SUB        256  /* bytes of "sub" */
#define TOKEN_MAX_INFO       1024 /* bytes of "info" as compact JSON (PRESENCE_INFO_MAX) */
#define TOKEN_CACHE_ENTRIES  8192
#define TOKEN_DEFAULT_SKEW_S 30

enum token_alg { TOKEN_ALG_NONE = 0, TOKEN_ALG_HS256, TOKEN_ALG_RS256, TOKEN_ALG_ES256 };

/* Errors (negative), named after the API's error codes (token_error_name). */
enum token_error {
    TOKEN_E_MISSING = -1, /* no token where one is needed */
    TOKEN_E_INVALID = -2, /* malformed, bad signature, other alg, not valid yet */
    TOKEN_E_EXPIRED = -3, /* past "exp" (plus the skew) */
};

/* Which grant a channel is checked against. */
enum token_grant { TOKEN_GRANT_SUBSCRIBE, TOKEN_GRANT_PUBLISH };

/* A verified token: immutable and reference-counted (token_put), shared by the
 * cache and the connections that presented it. */
struct token {
    struct ref ref;
    int64_t exp;      /* seconds since the epoch */
    const char *sub;  /* NUL-terminated; NULL when the token has no "sub" */
    uint32_t sub_len; /* 0 when sub is NULL */
    const char *info; /* "info" as compact JSON text (presence), NUL-terminated; NULL: none */
    uint32_t info_len;
    uint32_t nchannels, npublish;
    const char **channels; /* patterns, NUL-terminated */
    const char **publish;
};

struct token_verifier;

/*
 * An HS256 verifier for `secret` (copied; 1 byte at least), accepting clocks
 * off by skew_s seconds. Never NULL.
 */
struct token_verifier *token_verifier_hs256(const void *secret, size_t len, uint32_t skew_s);
/*
 * A verifier for the PEM public key ("BEGIN PUBLIC KEY") in pem[0..len): RS256
 * for an RSA key of 2048 bits or more, ES256 for an EC P-256 key. `alg` forces
 * one (and must fit the key); TOKEN_ALG_NONE picks it from the key. Returns
 * NULL with the reason in err[0..errsize) when the key is unusable.
 */
struct token_verifier *token_verifier_pem(const char *pem, size_t len, enum token_alg alg,
                                          uint32_t skew_s, char *err, size_t errsize);
/* Like token_verifier_pem, reading the key from a file. */
struct token_verifier *token_verifier_pem_file(const char *path, enum token_alg alg,
                                               uint32_t skew_s, char *err, size_t errsize);
/* Frees v (NULL is fine). Tokens it verified stay valid; its cache entries become
 * unreachable (their key names v's id) and age out. */
void token_verifier_free(struct token_verifier *v);
enum token_alg token_verifier_alg(const struct token_verifier *v);
uint32_t token_verifier_skew(const struct token_verifier *v);

/* "HS256", "RS256", "ES256" ("none" for TOKEN_ALG_NONE). */
const char *token_alg_name(enum token_alg alg);
/* TOKEN_ALG_* of a name like "RS256" (case as in JWS), TOKEN_ALG_NONE if unknown. */
enum token_alg token_alg_parse(const char *name);
/* "token_missing", "token_invalid", "token_expired". */
const char *token_error_name(int err);

/*
 * Verifies the compact JWS jwt[0..len) at time `now` (seconds since the epoch).
 * Returns 0 with a new reference in *out, or a negative enum token_error with a
 * static sentence in *why (what is wrong and what to do). No cache.
 */
int token_verify(const struct token_verifier *v, const char *jwt, size_t len, int64_t now,
                 struct token **out, const char **why);
/* token_verify through the cache of verified tokens. Thread-safe. */
int token_check(const struct token_verifier *v, const char *jwt, size_t len, int64_t now,
                struct token **out, const char **why);
/* Whether t is past its "exp" at `now` for verifier v (its skew). */
bool token_expired(const struct token_verifier *v, const struct token *t, int64_t now);
/*
 * Mints a token (what `herald token` prints): the compact JWS of header
 * {"alg":"HS256","typ":"JWT"} and the claims JSON text claims[0..len) (the
 * caller's, taken as is), signed with the secret of v, an HS256 verifier: a
 * shared secret signs as it verifies. Returns a new NUL-terminated string the
 * caller frees (free()). Can't fail (aborts when out of memory).
 */
char *token_mint_hs256(const struct token_verifier *v, const char *claims, size_t len);
/* Drops a reference (NULL is fine). */
void token_put(struct token *t);
static inline struct token *token_get(struct token *t)
{
    ref_get(&t->ref);
    return t;
}

/* Whether t grants `which` on the channel name[0..len), or on every channel the
 * subscription pattern name[0..len) matches (pattern_covers, src/hub/pattern.h). */
bool token_grants(const struct token *t, enum token_grant which, const char *name, size_t len);

/* Whether pat[0..len) is a well-formed grant pattern of at most TOKEN_MAX_PATTERN bytes
 * (what token_verify accepts; pattern_valid). */
bool token_pattern_valid(const char *pat, size_t len);

/* Entries in the cache now (tests, stats). */
size_t token_cache_size(void);
/* Empties the cache (tests; exit). */
void token_cache_clear(void);

#endif
