/*
 * auth: subscriber policies, the token of a request, and the HTTP answers
 * when it falls short. See auth.h.
 */
#include "auth/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "core/util.h"
#include "http/http_parser.h"
#include "hub/hub.h"
#include "hub/pattern.h"

static struct auth_policy default_policy;

int auth_init(const struct herald_config *cfg)
{
    uint32_t skew = cfg->token_skew_ms / 1000;
    enum token_alg alg = TOKEN_ALG_NONE;
    if (cfg->token_alg[0] && (alg = token_alg_parse(cfg->token_alg)) == TOKEN_ALG_NONE) {
        fprintf(stderr, "herald: --token-alg must be HS256, RS256 or ES256, not %s\n",
                cfg->token_alg);
        return -1;
    }
    if (cfg->token_secret[0] && cfg->token_public_key[0]) {
        fprintf(stderr, "herald: set --token-secret (HS256) or --token-public-key (RS256/ES256), "
                        "not both\n");
        return -1;
    }
    if (cfg->token_secret[0]) {
        if (alg != TOKEN_ALG_NONE && alg != TOKEN_ALG_HS256) {
            fprintf(stderr,
                    "herald: --token-secret signs HS256; --token-alg %s needs "
                    "--token-public-key\n",
                    cfg->token_alg);
            return -1;
        }
        default_policy.verifier =
            token_verifier_hs256(cfg->token_secret, strlen(cfg->token_secret), skew);
    } else if (cfg->token_public_key[0]) {
        char err[600];
        default_policy.verifier =
            token_verifier_pem_file(cfg->token_public_key, alg, skew, err, sizeof(err));
        if (!default_policy.verifier) {
            fprintf(stderr, "herald: --token-public-key: %s\n", err);
            return -1;
        }
    } else if (alg != TOKEN_ALG_NONE) {
        fprintf(stderr, "herald: --token-alg needs --token-secret or --token-public-key\n");
        return -1;
    }
    default_policy.subscribe = default_policy.verifier ? AUTH_TOKEN : AUTH_PUBLIC;
    return 0;
}

void auth_free(void)
{
    token_verifier_free(default_policy.verifier);
    default_policy = (struct auth_policy){0};
    token_cache_clear();
}

const char *auth_describe(const struct auth_policy *p)
{
    if (p->subscribe == AUTH_PUBLIC)
        return "subscribing is public: anyone may subscribe to any channel (set "
               "--token-secret or --token-public-key to require tokens)";
    switch (token_verifier_alg(p->verifier)) {
    case TOKEN_ALG_HS256: return "subscribing needs a token signed HS256 with --token-secret";
    case TOKEN_ALG_RS256: return "subscribing needs a token signed RS256 (--token-public-key)";
    default: return "subscribing needs a token signed ES256 (--token-public-key)";
    }
}

const struct auth_policy *auth_default_policy(void)
{
    return &default_policy;
}

static const struct auth_policy *(*app_policy)(struct hub_tenant *t);

void auth_set_app_policy(const struct auth_policy *(*fn)(struct hub_tenant *t))
{
    app_policy = fn;
}

const struct auth_policy *auth_policy_of(struct hub_tenant *t)
{
    static const struct auth_policy no_tokens = {.subscribe = AUTH_TOKEN};
    const struct auth_policy *p = app_policy ? app_policy(t) : NULL;
    return p ? p : &no_tokens; /* no verifier: no token verifies */
}

const struct auth_policy *auth_policy_for(const struct http_ctx *x)
{
    /* An app (x->tenant, the /apps/{app}/ prefix) has its own policy: its token secret
     * and subscribe setting. It never takes the default app's tokens. */
    return x->tenant ? auth_policy_of(x->tenant) : &default_policy;
}

/* ---- where the token is ---------------------------------------------------------- */

static bool jwt_shaped(const char *v, size_t len)
{
    const char *d1 = memchr(v, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(v + len - d1 - 1)) : NULL;
    return d2 && !memchr(d2 + 1, '.', (size_t)(v + len - d2 - 1));
}

/* The value of cookie `name` in a Cookie header (RFC 6265 §4.2.1: "a=b; c=d"). */
static bool cookie_value(const char *h, size_t len, const char *name, const char **v, size_t *vl)
{
    size_t nl = strlen(name);
    size_t i = 0;
    while (i < len) {
        while (i < len && (h[i] == ' ' || h[i] == ';'))
            i++;
        const char *e = memchr(h + i, ';', len - i);
        size_t end = e ? (size_t)(e - h) : len;
        if (end - i > nl && memcmp(h + i, name, nl) == 0 && h[i + nl] == '=') {
            *v = h + i + nl + 1;
            *vl = end - i - nl - 1;
            if (*vl >= 2 && (*v)[0] == '"' && (*v)[*vl - 1] == '"') {
                (*v)++;
                *vl -= 2;
            }
            return true;
        }
        i = end;
    }
    return false;
}

long auth_request_token(const struct http_request *req, char *buf, size_t bufsize, const char **tok)
{
    const char *v;
    size_t vl;
    if (http_query_param(req->query, req->query_len, "token", &v, &vl)) {
        if (!memchr(v, '%', vl)) {
            *tok = v;
            return (long)vl;
        }
        if (vl > 3 * bufsize)
            return -1;
        char *tmp = xmalloc(vl);
        long n = http_url_decode(tmp, v, vl);
        if (n >= 0 && (size_t)n <= bufsize)
            memcpy(buf, tmp, (size_t)n);
        free(tmp);
        if (n < 0 || (size_t)n > bufsize)
            return -1;
        *tok = buf;
        return n;
    }
    const struct http_header *h = http_find_header(req, "Authorization");
    if (h && h->value_len > 7 && strncasecmp(h->value, "Bearer ", 7) == 0) {
        v = h->value + 7;
        vl = h->value_len - 7;
        while (vl && *v == ' ')
            v++, vl--;
        if (jwt_shaped(v, vl)) {
            *tok = v;
            return (long)vl;
        }
    }
    h = http_find_header(req, "Cookie");
    if (h && cookie_value(h->value, h->value_len, "herald_token", &v, &vl)) {
        *tok = v;
        return (long)vl;
    }
    return 0;
}

/* ---- checks --------------------------------------------------------------------------- */

int auth_verify(const struct auth_policy *p, const char *jwt, size_t len, struct token **tok,
                const char **why)
{
    if (!p->verifier) {
        *why = "this app has no token secret: no token is valid";
        return TOKEN_E_INVALID;
    }
    return token_check(p->verifier, jwt, len, (int64_t)(wall_ms() / 1000), tok, why);
}

bool auth_expired(const struct auth_policy *p, const struct token *tok)
{
    return token_expired(p->verifier, tok, (int64_t)(wall_ms() / 1000));
}

uint64_t auth_deadline(const struct auth_policy *p, const struct token *tok, uint64_t mono_now)
{
    /* Valid through second exp + skew: expired from the next second on. */
    int64_t end_ms = (tok->exp + (int64_t)token_verifier_skew(p->verifier) + 1) * 1000;
    int64_t left = end_ms - (int64_t)wall_ms();
    return left > 0 ? mono_now + (uint64_t)left : mono_now;
}

long auth_first_forbidden(const struct token *tok, enum token_grant which,
                          const struct slice *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct slice name = chan_key_name(names[i].data, names[i].len); /* grants name channels */
        if (!token_grants(tok, which, name.data, name.len))
            return (long)i;
    }
    return -1;
}

long auth_first_broad(const struct slice *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct slice name = chan_key_name(names[i].data, names[i].len);
        if (pattern_is_broad(name.data, name.len))
            return (long)i;
    }
    return -1;
}

/* 403 `code` about the channel (or pattern) of key; `fmt` takes its length and bytes. */
static void forbidden(struct http_ctx *x, const char *code, const char *fmt,
                      const struct slice *key)
{
    struct slice bare = chan_key_name(key->data, key->len);
    const struct slice *name = &bare;
    struct sbuf b = {0};
    char detail[CHANNEL_NAME_MAX + 320];
    int dl = snprintf(detail, sizeof(detail), fmt, (int)name->len, name->data);
    sbuf_printf(&b, "{\"error\":\"%s\",\"detail\":", code);
    sbuf_add_json_str(&b, detail, (size_t)MIN((size_t)dl, sizeof(detail) - 1));
    sbuf_adds(&b, ",\"channel\":");
    sbuf_add_json_str(&b, name->data, name->len);
    sbuf_adds(&b, "}\n");
    http_respond(x, 403, "application/json", NULL, b.data, b.len);
    sbuf_free(&b);
}

int auth_http_admit(struct http_ctx *x, const struct auth_policy *p, const struct slice *names,
                    size_t n, struct token **tok)
{
    *tok = NULL;
    if (p->subscribe == AUTH_PUBLIC) {
        long broad = auth_first_broad(names, n);
        if (broad >= 0) {
            forbidden(x, "pattern_forbidden", AUTH_BROAD_DETAIL, &names[broad]);
            return -1;
        }
        return 0;
    }
    char buf[TOKEN_MAX_BYTES];
    const char *jwt = NULL, *why = "";
    long len = auth_request_token(x->req, buf, sizeof(buf), &jwt);
    if (len == 0) {
        if (n == 0)
            return 0; /* a WebSocket may authenticate with an op */
        http_error(x, 401, "token_missing",
                   "subscribing needs a token: send it as ?token=, 'Authorization: Bearer "
                   "TOKEN' or the cookie herald_token");
        return -1;
    }
    int err = len < 0 ? TOKEN_E_INVALID : auth_verify(p, jwt, (size_t)len, tok, &why);
    if (err) {
        http_error(x, 401, token_error_name(err), "%s",
                   len < 0 ? "the token is longer than 8 KiB" : why);
        return -1;
    }
    long bad = auth_first_forbidden(*tok, TOKEN_GRANT_SUBSCRIBE, names, n);
    if (bad >= 0) {
        forbidden(x, "channel_forbidden",
                  "the token does not grant channel %.*s: ask for a token whose \"channels\" "
                  "cover it",
                  &names[bad]);
        token_put(*tok);
        *tok = NULL;
        return -1;
    }
    return 0;
}
