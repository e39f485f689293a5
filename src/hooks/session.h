/*
 * session: what the hooks keep per client connection, for its whole life
 * (a struct conn_attach): its id in hook bodies, its user and the info its
 * backend gave, the decisions the connection waits for or got (connect, and one
 * subscribe at a time), its rpc calls in flight and its client-publish rate, and
 * why it ended, for the `disconnect` event sent when it is freed.
 *
 * Everything here runs on the connection's worker. A call to the backend holds the
 * connection (conn_hold): a connection closed meanwhile is not touched again, and
 * the call's done() learns that it went (c is NULL).
 */
#ifndef HERALD_HOOK_SESSION_H
#define HERALD_HOOK_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "core/server.h"
#include "hooks/hooks.h"

enum hook_verdict_state { HV_NONE, HV_WAITING, HV_ALLOW, HV_DENY, HV_FAIL };

/* What the backend said to a connect or subscribe hook. */
struct hook_verdict {
    uint8_t state;    /* enum hook_verdict_state */
    json_t *answer;   /* HV_ALLOW: the backend's object (may be NULL: fail-open) */
    char detail[200]; /* HV_DENY: the backend's reason; HV_FAIL: what went wrong */
};

struct hook_session {
    struct conn_attach base;
    struct hook_target *t; /* the app's target when the connection came (a reference) */
    uint64_t id;
    uint64_t started_ms; /* wall */
    const char *transport;
    char *user;       /* the connect hook's "user", else the token's sub; NULL: anonymous */
    json_t *info;     /* the connect hook's "info", or NULL */
    bool connected;   /* admitted as a subscriber connection: `disconnect` fires at its end */
    uint64_t arrival; /* the hub's last id when the connection came (see transport) */
    struct hook_verdict connect, subscribe;
    uint16_t rpc_inflight;
    uint64_t pub_last_ms; /* client publishes: when the bucket was last filled (0: never) */
    uint64_t pub_tokens;  /* ... what it holds, in thousandths of a publish */
    char reason[96];      /* why it ended ("" : the client went) */
    bool addr_limited;    /* its calls count against its address (--hook-queue-ip) */
    uint8_t addr[16];
};

/* The connection's session, or NULL. */
static inline struct hook_session *hook_session_of(const struct conn *c)
{
    return (struct hook_session *)(void *)c->attach;
}

/* Opens c's session with target t (a reference, taken), for `transport` ("websocket",
 * "sse", "stream", "poll"). user/user_len: the token's sub, or NULL. */
struct hook_session *hook_session_open(struct conn *c, struct hook_target *t, const char *transport,
                                       const char *user, size_t user_len);

/* c's session, opened (with its app's target, which may be NULL) when it has none. */
struct hook_session *hook_session_ensure(struct conn *c, const char *transport, const char *user,
                                         size_t user_len);
/* Takes one client publish from the connection's bucket of `rate` a second (0: no
 * limit): false when it is empty. */
bool hook_session_publish_room(struct hook_session *s, uint32_t rate);

/* A hook body with the connection's fields: {"event","app","node","conn","user",
 * "transport","remote","time"} (plus "info" when the backend gave one). */
json_t *hook_session_body(struct conn *c, struct hook_session *s, enum hook_event ev);

/* The names (not the keys) of channel keys[0..n) as a JSON array, for hook bodies;
 * a user's own channel (users) is left out. */
json_t *hook_channels_json(const struct slice *keys, size_t n);

/*
 * Calls s's backend for c (which is held until the answer): done(c, r, arg) runs on
 * c's worker with c NULL when the connection went meanwhile. `parks`: the caller
 * parks c (conn_park) once this returned 0, and done unparks it; when c went, the
 * park's hold is released here. Returns 0, or HOOK_QUEUE_FULL, HOOK_RPC_FULL or HOOK_ADDR_FULL
 * (done is not called, nothing is held; hook_refusal says why). body is taken.
 */
int hook_session_call(struct conn *c, struct hook_session *s, enum hook_event ev, json_t *body,
                      bool parks,
                      void (*done)(struct conn *c, const struct hook_result *r, void *arg),
                      void *arg);

/* Reads the backend's answer r to a connect or subscribe hook into v: allow (keeping
 * the answer), deny (its reason), or fail (what went wrong; allow with no answer when
 * the target fails open). */
void hook_verdict_set(struct hook_verdict *v, const struct hook_target *t,
                      const struct hook_result *r);
void hook_verdict_clear(struct hook_verdict *v);

/* Remembers why the connection ends (the first reason given wins). */
void hook_session_ending(struct conn *c, const char *reason);

#endif
