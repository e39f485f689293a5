/*
 * hooks: herald's calls to an app's backend (its webhook_url): `connect`,
 * `subscribe`, `publish`, `rpc` and `disconnect` as signed JSON POSTs.
 *
 * One hooks thread runs libcurl's multi interface on its own loop
 * (curl_multi_poll): it keeps a bounded pool of keep-alive connections per
 * backend, times each request out, retries the fire-and-forget events with
 * backoff, and hands each answer back to the worker that asked, through that
 * worker's inbox (hub_post). No worker ever waits on a backend. What waits is
 * bounded twice: per app (--hook-queue-app) and per process (--hook-queue);
 * a call past either bound is refused at once (the caller answers its client)
 * and a notification is dropped, both counted (hooks_stats).
 *
 * A target is an app's webhook settings, immutable and reference-counted: a
 * settings change makes a new one, and calls in flight keep the old one.
 */
#ifndef HERALD_HOOKS_H
#define HERALD_HOOKS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct hub;
struct hub_tenant;
struct herald_config;
struct sbuf;

enum hook_event {
    HOOK_CONNECT,
    HOOK_SUBSCRIBE,
    HOOK_PUBLISH,
    HOOK_RPC,
    HOOK_DISCONNECT,
    HOOK_EVENTS
};
#define HOOK_ALL_EVENTS ((1u << HOOK_EVENTS) - 1)

#define HOOK_URL_MAX    512
#define HOOK_SECRET_MAX 256

/* What an app (or the default app's flags) says about its backend. */
struct hook_settings {
    char url[HOOK_URL_MAX];       /* "" = no hooks */
    char secret[HOOK_SECRET_MAX]; /* "" = sign with the app's token secret */
    uint32_t events;              /* 1 << enum hook_event */
    uint32_t timeout_ms;          /* per request */
    uint32_t retries;             /* extra attempts of the fire-and-forget events */
    bool fail_open;               /* a failed connect/subscribe hook lets the client in */
};

struct hook_target {
    atomic_uint refs;
    struct hook_settings s;    /* as given */
    char key[HOOK_SECRET_MAX]; /* what signs: s.secret, else the fallback */
    atomic_uint pending;       /* calls queued or in flight for this target */
};

/* How a call ended. */
enum hook_status {
    HOOK_OK = 0,      /* 2xx with a JSON object (answer) or an empty body */
    HOOK_TIMEOUT,     /* no answer within timeout_ms */
    HOOK_HTTP_STATUS, /* a status other than 2xx */
    HOOK_UNREACHABLE, /* connection refused, name not found, TLS failure... */
    HOOK_BAD_ANSWER,  /* 2xx but not a JSON object, or over 64 KiB */
    HOOK_QUEUE_FULL,  /* refused before sending: too many calls wait */
    HOOK_ADDR_FULL,   /* refused before sending: too many calls of the client's address wait */
    HOOK_RPC_FULL,    /* refused before sending: rpc calls fill their share of a queue */
    HOOK_STOPPED,     /* the server stops */
};

struct hook_result {
    enum hook_status status;
    long http_status;
    json_t *answer; /* HOOK_OK with a body: the parsed object (borrowed: the callback may
                       json_incref it); else NULL */
    uint64_t elapsed_ms;
    char detail[200]; /* what went wrong, for the client and the log ("timeout after 2000 ms") */
};

/* Runs on the worker that made the call. */
typedef void (*hook_done_fn)(void *arg, const struct hook_result *r);

/* Start-up: the default app's target (from --webhook-*), the hooks thread. Returns 0,
 * or -1 after printing why (a bad --webhook-url). */
int hooks_init(struct hub *hub, const struct herald_config *cfg);
/* After the workers stopped, before they are freed: calls in flight end with
 * HOOK_STOPPED (posted to their workers), notifications not yet sent are dropped. */
void hooks_stop(void);

/* How the target of an app is found: fn(t) returns a new reference or NULL. Start-up. */
void hooks_set_app_target(struct hook_target *(*fn)(struct hub_tenant *t));
/* The target of app t (NULL: the default app), a new reference, or NULL without hooks. */
struct hook_target *hooks_target_of(struct hub_tenant *t);
/* Whether target t (may be NULL) wants event ev. */
static inline bool hooks_wants(const struct hook_target *t, enum hook_event ev)
{
    return t && t->s.url[0] && (t->s.events & (1u << ev));
}

/* A target made of s (copied); fallback_secret signs when s->secret is empty. */
struct hook_target *hook_target_new(const struct hook_settings *s, const char *fallback_secret);
void hook_target_get(struct hook_target *t);
void hook_target_put(struct hook_target *t);

/* The defaults of an app that sets nothing: no url, every event, the server's
 * --webhook-timeout and --webhook-retries, fail closed. */
void hooks_default_settings(struct hook_settings *s);
/* Reads webhook_* members of an app's settings object over *s (null: back to the
 * default). Returns 0, or -1 with a message in err. Knows nothing else. */
int hooks_settings_from_json(struct hook_settings *s, json_t *settings, char *err, size_t errlen);
/* Adds the webhook_* members of s to obj; the secret's value only with_secret (else true
 * when there is one, which hooks_settings_from_json reads as "keep it"). */
void hooks_settings_to_json(const struct hook_settings *s, json_t *obj, bool with_secret);
/* Whether key names a webhook setting. */
bool hooks_is_setting(const char *key);
/* The webhook setting names, comma-separated, for error messages. */
extern const char hooks_setting_names[];

/* The event's name ("connect", ...). */
const char *hook_event_name(enum hook_event ev);
/* Parses a comma list or JSON array of event names into a mask; -1 when one is unknown. */
long hook_events_parse(const char *list);

/*
 * Calls the backend: POSTs body (taken: the call owns it, also on failure) as event ev
 * and runs done(arg, result) on worker w once it ends — a timeout, an error status and
 * an unreachable backend included. addr (16 bytes, see hub_client_set_addr; NULL: not
 * counted) is the client's address, whose calls waiting are bounded by --hook-queue-ip.
 * Returns 0, or HOOK_QUEUE_FULL, HOOK_RPC_FULL or HOOK_ADDR_FULL (done is not called: the caller
 * answers its client at once, with hook_refusal's sentence).
 */
int hook_call(struct hook_target *t, int w, enum hook_event ev, json_t *body, hook_done_fn done,
              void *arg, const uint8_t *addr);
/* What a refused hook_call (its return value) tells the client. */
const char *hook_refusal(int rc);
/* Fire-and-forget: POSTs body (taken), retried up to t's retries with backoff on
 * failure; dropped (and counted) when the queue is full. */
void hook_notify(struct hook_target *t, enum hook_event ev, json_t *body);

/* Process-wide counters, for /stats ("hooks":{...}) and /metrics. */
void hooks_stats_json(struct sbuf *b);
void hooks_metrics(struct sbuf *b);

/* A connection's id in hook bodies: unique on this node (a counter seeded with the
 * clock, so a restart does not reuse one). */
uint64_t hooks_next_conn_id(void);

#endif
