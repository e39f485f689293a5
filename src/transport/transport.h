/*
 * transport: what the subscriber transports (WebSocket, SSE, long-poll, HTTP
 * streaming) share: reading channels and cursors from a request, subscribing
 * and replaying history (gap events first), and the life-cycle events every
 * subscriber connection gets — lifetime with reconnect dither, shutdown,
 * deleted channels, slow-consumer cut-off — each ended the transport's own way.
 *
 * A transport's connection handlers are a struct sub_ops: the server's
 * conn_ops plus how the transport ends a subscription with a last event. The
 * shared handlers (transport_on_*) find it through c->ops.
 */
#ifndef HERALD_TRANSPORT_H
#define HERALD_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "core/server.h"
#include "hooks/hooks.h"
#include "http/http_conn.h"

struct auth_policy;
struct token;

/* What a subscriber connection holds of its admission (part of its protocol state). */
struct sub_auth {
    const struct auth_policy *policy; /* the request's (auth_policy_for) */
    struct token *tok;                /* a reference; NULL: none (yet) */
    uint64_t life_end;                /* when its lifetime ends (loop ms); 0: never */
    bool must_auth;                   /* no token yet, and it must get one in time */
    uint32_t creds_epoch;             /* its app's creds_epoch when its upgrade was checked */
};

struct sub_ops {
    struct conn_ops conn; /* first member: c->ops points here */
    /* Sends the control event f and ends the subscriber's stream; WebSocket closes
     * with ws_code and reason. */
    void (*end)(struct conn *c, struct ctl_frames *f, uint16_t ws_code, const char *reason);
    /* The connection's admission state; NULL when the transport keeps none (a held
     * long-poll ends by its own timer). */
    struct sub_auth *(*auth)(struct conn *c);
};

static inline const struct sub_ops *sub_ops_of(const struct conn *c)
{
    return (const struct sub_ops *)(const void *)c->ops;
}

/* Registers the subscriber routes (/ws, /sse, /poll, /stream) and builds the shared
 * control frames. Start-up, once. transport_free() releases them at exit. */
void transport_init(void);
void transport_free(void);

/* ---- shared life-cycle handlers (entries of each transport's conn_ops) ---- */

void transport_on_lifetime(struct conn *c);
void transport_on_shutdown(struct conn *c);
void transport_on_channel_closed(struct conn *c, struct channel *ch);
/* The slow-consumer cut: unsent messages are dropped, an error event ends the stream. */
void transport_on_slow(struct conn *c);

/* ---- subscribing ---- */

#define TRANSPORT_MAX_CHANNELS 64
/* What a subscriber may name (hub_sub_name_valid), for error answers. */
#define TRANSPORT_NAME_RULE                                                                        \
    "channel names are 1-128 bytes of letters, digits and _ . : @ / -; a pattern has segments "    \
    "* (one segment) or a last ** (the rest), e.g. scores.* or scores.**"

/* The channels a client names (at most TRANSPORT_MAX_CHANNELS) and, last, its user's. */
struct sub_request {
    struct slice names[HUB_SUBSCRIBE_MAX];
    size_t n;
    bool has_since;
    bool since_implied;                     /* the client gave none: a hook waited */
    uint64_t since;                         /* the cursor; per-channel: its largest */
    uint64_t since_each[HUB_SUBSCRIBE_MAX]; /* a per-channel cursor, names[i]'s */
    size_t nsince;                          /* 0: one cursor for every channel */
    bool persistent;         /* a connection that stays (not a long-poll): presence counts it */
    const struct token *tok; /* its token (borrowed), for presence: the user and its info */
    bool presence_events;    /* presence=1: join/leave events of its presence channels */
    char name_buf[HUB_SUBSCRIBE_MAX * (CHANNEL_KEY_MAX + 1)]; /* the names' keys */
};

/*
 * Parses a comma-separated, percent-encoded channel list into r: the channels'
 * keys in t's namespace (t NULL: the default app), copied into r->name_buf.
 * Returns 0, or -1 with a message in *err.
 */
int transport_parse_channels(struct sub_request *r, const struct hub_tenant *t, const char *list,
                             size_t len, const char **err);
/* Adds the channel name[0..len) (validated) to r as a key of t's namespace. */
void transport_add_channel(struct sub_request *r, const struct hub_tenant *t, const char *name,
                           size_t len);
/*
 * Whether a subscriber request takes its user's messages: yes unless it says
 * user=0 (then the connection gets only the channels it names).
 */
bool transport_wants_user(const struct http_request *req);
/*
 * Adds the channel of tok's user (its "sub") in t's namespace to r, last, when tok
 * has one and r does not hold it yet (DESIGN.md §12). A per-channel cursor gives
 * the user's position after the named channels'; one that has none resumes the
 * user's channel from its largest position. Returns whether r holds it now.
 */
bool transport_add_user(struct sub_request *r, const struct hub_tenant *t, const struct token *tok);
/* transport_add_user for the user user[0..len) (a connect hook's answer). */
bool transport_add_user_named(struct sub_request *r, const struct hub_tenant *t, const char *user,
                              size_t len);
/* Whether a subscriber request asks for presence events (presence=1). */
bool transport_wants_presence(const struct http_request *req);
/* Whether c holds its user's channel. */
bool transport_holds_user(const struct conn *c);
/*
 * Makes c a connection of app t (NULL: the default app), counted against its plan's
 * connections. Returns false, counting nothing, when the plan has none left.
 */
bool transport_bind_app(struct conn *c, struct hub_tenant *t);
/* Answers 503 limit_exceeded "connections" for x's app. */
void transport_app_full(struct http_ctx *x);
/* Appends r's channel names (not keys) as a JSON array member "channels":[…]. */
void transport_channels_json(struct sbuf *b, const struct sub_request *r);
/*
 * Parses a cursor into r, whose channels are parsed already: a message id, or a
 * per-channel cursor "ID.DELTA.DELTA..." (the first channel's position, then each
 * next one's as a signed difference from it, one per channel of r in order, then
 * the user's channel's and those of the channels the app's hook added, in the order
 * the connection got them: the order its cursors list them).
 * Returns 0, or -1 with a message in *err.
 */
int transport_parse_since(struct sub_request *r, const char *s, size_t len, const char **err);
/* Whether r's per-channel cursor (if any) has one position per channel of r, the
 * user's included once it is added (transport_add_user), and more only where a hook
 * may add channels (`hookable`) and t's app has one (transport_hook_gate gives them
 * those positions). */
bool transport_cursor_fits(const struct sub_request *r, struct hub_tenant *t, bool hookable);
extern const char transport_cursor_mismatch[];
/* Formats the per-channel cursor of positions pos[0..n) (a plain id when n is 1) into
 * out; returns its length, 0 if it does not fit. */
size_t transport_format_cursor(char *out, size_t size, const uint64_t *pos, size_t n);
/* The connection's cursor over all its channels, in the order it subscribed to them. */
size_t transport_conn_cursor(const struct conn *c, char *out, size_t size);
/* Whether the connection's cursor must be per channel: ids order each channel only
 * (Redis Cluster) and it holds more than one. */
bool transport_per_channel_cursor(const struct conn *c);
/* Room for a per-channel cursor of TRANSPORT_MAX_CHANNELS positions. */
#define TRANSPORT_CURSOR_MAX (HUB_SUBSCRIBE_MAX * 22)
/*
 * Reads channels= (optional: see transport_admit) and the cursor (since=,
 * lastEventId=, Last-Event-ID when `sse`) of a subscriber request into r. Returns
 * 0, or -1 after answering the error.
 */
int transport_parse_request(struct http_ctx *x, struct sub_request *r, bool sse);

/*
 * Admits a subscriber request (SSE, stream, long-poll) under policy p
 * (auth_http_admit) and adds its user's channel (transport_add_user). Returns 0
 * with *tok a reference (NULL: none), or -1 after answering: 401, 403, or 400 when
 * it names no channel and has no user.
 */
int transport_admit(struct http_ctx *x, struct sub_request *r, const struct auth_policy *p,
                    struct token **tok);
/* 0 when r names a channel (its user's counts), else -1 after answering 400 no_channels:
 * what a request that has no user must name (transport_parse_request leaves it to this). */
int transport_has_channels(struct http_ctx *x, const struct sub_request *r);
/*
 * Subscribes c to r's channels; *b receives the history to replay (see
 * hub_subscribe). Returns 0 or a negative hub_error (*bad indexes the channel at
 * fault), or HUB_PENDING when the channels must load first. Queues nothing.
 */
int transport_subscribe(struct conn *c, const struct sub_request *r, size_t *bad,
                        struct hub_backlog *b);
/*
 * Subscribes for a request (SSE, stream, long-poll, WebSocket handshake), answering
 * any error itself. Returns 0, or -1 when the request was answered or parked (it is
 * re-run once the channels are ready).
 */
int transport_http_subscribe(struct http_ctx *x, const struct sub_request *r,
                             struct hub_backlog *b);
/* Delivers b's gap events and messages through c's transport (ops->deliver); frees b. */
void transport_replay(struct conn *c, struct hub_backlog *b);

/* Starts heartbeats and the lifetime of a subscriber connection that just took over. */
void transport_start(struct conn *c);

/*
 * Starts enforcing policy p on a subscriber connection, after transport_start:
 * takes the reference tok (may be NULL). At the token's expiry the connection
 * gets an `expired` event and ends (WebSocket: close 4001) unless a newer token
 * came (transport_auth_set). With `must_auth` (a token policy, and a WebSocket
 * opened without one) it ends the same way after --header-timeout unless it
 * authenticates.
 */
void transport_auth_start(struct conn *c, const struct auth_policy *p, struct token *tok,
                          bool must_auth);
/* Replaces the connection's token (takes the reference) and moves its expiry. */
void transport_auth_set(struct conn *c, struct token *tok);
/* Sends the `expired` event and ends the subscription the transport's way. */
void transport_end_expired(struct conn *c);
/* Releases the connection's token (its transport's on_free). */
void transport_auth_free(struct conn *c);
/* Whether the connection's token may subscribe / publish on names[0..n) now: 0, or an
 * error code name ("token_missing", "token_expired", "channel_forbidden" or, for a
 * pattern starting with a wildcard without a token policy, "pattern_forbidden", with *bad
 * set). */
const char *transport_auth_check(struct conn *c, int which, const struct slice *names, size_t n,
                                 size_t *bad);

/* ---- backend hooks (hooked.c) ---- */

struct hook_verdict;

/* Whether t's app has a backend hook (webhook_url), whose answers may add channels. */
bool transport_hooked(struct hub_tenant *t);
/*
 * Runs the app's `ev` hook (HOOK_CONNECT, or HOOK_SUBSCRIBE for a long-poll or a
 * WebSocket subscribe op) for c, subscribing to r's channels with token tok (may be
 * NULL) over `transport` ("websocket", "sse", "stream", "poll"). Returns 0 to go on
 * (no hook, or allowed: r may have more channels, and a cursor from when the request
 * came; with want_user, the channel of the user a connect answer names when the token
 * named none), -1 when c is parked until the backend answers (the request or op runs again
 * then, and this reads the verdict), or 1 when the backend refused or failed (*v says
 * how; the caller answers).
 */
int transport_hook_gate(struct conn *c, struct sub_request *r, const struct token *tok,
                        bool want_user, const char *transport, enum hook_event ev,
                        const struct hook_verdict **v);
/* transport_hook_gate for an HTTP request, answering a refusal itself (403 hook_denied,
 * 503 hook_failed): 0 to go on, -1 when answered or parked. */
int transport_hook_admit(struct http_ctx *x, struct sub_request *r, const struct token *tok,
                         const char *transport, enum hook_event ev);
/* A subscribe (op or long-poll) is over, unless it is parked to run again: the next one
 * asks the backend again. */
void transport_hook_done(struct conn *c);
/* Adds the fields "error":"hook_denied"|"hook_failed","hook":EV,"detail":DETAIL to b (the
 * body of an HTTP answer, or of a WebSocket error event). */
void transport_hook_error(struct sbuf *b, bool denied, enum hook_event ev, const char *detail);
/* Answers {"error":"hook_denied"|"hook_failed","hook":…,"detail":…} with 403 or 503. */
void transport_hook_refused(struct http_ctx *x, const struct hook_verdict *v, enum hook_event ev);

#endif
