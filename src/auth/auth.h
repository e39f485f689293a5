/*
 * auth: who may subscribe. A subscriber policy (public, or a token verified by
 * the app's verifier), the one function that finds the policy of a request,
 * where a request carries its token (?token=, Authorization: Bearer, the cookie
 * herald_token), and the HTTP answers when it falls short: 401 token_missing,
 * token_invalid, token_expired; 403 channel_forbidden naming the channel.
 *
 * The transports call this module (through this header) before subscribing; the
 * core never does. Tokens themselves (JWT, grants, cache) are src/auth/token.h.
 */
#ifndef HERALD_AUTH_H
#define HERALD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "auth/token.h"
#include "core/config.h"
#include "http/http_conn.h"

enum auth_mode {
    AUTH_PUBLIC = 0, /* anyone may subscribe to any channel (the default app by default) */
    AUTH_TOKEN,      /* subscribers present a token granting the channels */
};

/* How an app's subscribers are admitted. Lives as long as the connections using it. */
struct auth_policy {
    enum auth_mode subscribe;
    struct token_verifier *verifier; /* set with AUTH_TOKEN (and may be with AUTH_PUBLIC) */
};

/*
 * Builds the default app's policy from --token-secret / --token-public-key /
 * --token-alg / --token-skew. Start-up, once. Returns 0, or -1 after printing why
 * to stderr (an unreadable or unusable key).
 */
int auth_init(const struct herald_config *cfg);
void auth_free(void);
/* A line for the start-up log: "subscribing is public ..." or "... needs a token (HS256)". */
const char *auth_describe(const struct auth_policy *p);
/* The default app's policy (the unprefixed endpoints). */
const struct auth_policy *auth_default_policy(void);

/*
 * THE place that says which policy governs a subscriber request: every transport
 * asks it, once per request. Today every request belongs to the default app; with
 * apps, this returns the policy of the app the request's path names.
 */
const struct auth_policy *auth_policy_for(const struct http_ctx *x);
/*
 * How auth_policy_for finds an app's policy: fn(tenant) returns one that lives as
 * long as the tenant does (connections that use it hold the tenant). Start-up.
 */
struct hub_tenant;
void auth_set_app_policy(const struct auth_policy *(*fn)(struct hub_tenant *t));
/* The subscribe policy app t has now. */
const struct auth_policy *auth_policy_of(struct hub_tenant *t);

/*
 * The token a request carries: ?token= (percent-decoded into buf), else
 * "Authorization: Bearer" when its value has a JWT's shape (a publish key sent
 * the same way is not a token), else the cookie herald_token. Returns its
 * length (pointing *tok into the request or buf), 0 when there is none, -1 when
 * it is longer than bufsize.
 */
long auth_request_token(const struct http_request *req, char *buf, size_t bufsize,
                        const char **tok);

/*
 * Admits a subscriber request under policy p to the channels names[0..n): with
 * a token policy the request's token must verify and grant every channel (n may
 * be 0: a WebSocket that names its channels later). A public policy admits
 * anyone, ignoring tokens. Returns 0 with *tok a new reference (NULL when the
 * request carried none), or -1 after answering 401 or 403.
 */
int auth_http_admit(struct http_ctx *x, const struct auth_policy *p, const struct slice *names,
                    size_t n, struct token **tok);

/* Verifies jwt under p at the current time (through the cache). Returns 0 with a new
 * reference in *tok, or a negative enum token_error with a sentence in *why. */
int auth_verify(const struct auth_policy *p, const char *jwt, size_t len, struct token **tok,
                const char **why);
/* Whether tok is past its expiry under p now. */
bool auth_expired(const struct auth_policy *p, const struct token *tok);
/* Monotonic ms (the loop's clock, whose now is `mono_now`) at which tok expires under p. */
uint64_t auth_deadline(const struct auth_policy *p, const struct token *tok, uint64_t mono_now);
/* The index of the first of names[0..n) (channel keys) that tok does not grant
 * `which`, or -1. */
/*
 * A pattern whose first segment is a wildcard ("**", "*.scores") matches every channel
 * of the app: on a public app nobody may subscribe to one; with tokens, whoever's
 * grants cover it (auth_first_forbidden). Returns the index of the first such pattern
 * in names[0..n) (keys), or -1.
 */
long auth_first_broad(const struct slice *names, size_t n);
/* The sentence of the 403 pattern_forbidden answer, a printf format taking the
 * pattern's length and bytes. */
#define AUTH_BROAD_DETAIL                                                                          \
    "the pattern %.*s starts with a wildcard, so it matches every channel of the app: "            \
    "without subscriber tokens a pattern must start with a channel-name segment (e.g. "            \
    "scores.*); with tokens, a token whose channels cover the pattern may subscribe to it"
long auth_first_forbidden(const struct token *tok, enum token_grant which,
                          const struct slice *names, size_t n);

#endif
