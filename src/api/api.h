/*
 * api: the publish and admin HTTP API (publish, channels, stats, metrics,
 * health) and publisher authentication. The JSON publish path is shared with
 * WebSocket clients' {"op":"publish"} when --ws-publish allows it.
 */
#ifndef HERALD_API_H
#define HERALD_API_H

#include <jansson.h>
#include <stdbool.h>

#include "core/server.h"
#include "http/http_conn.h"

/* A prepared publish: target channels and the body, validated and ready for hub_publish. */
struct api_pub {
    struct slice channels[64];
    size_t n;
    char *data_json; /* owned */
    size_t data_len;
    const char *raw; /* points into data_json or the JSON document */
    bool text;       /* data is a JSON string: raw is its text */
    size_t raw_len;
    const char *event;
    size_t event_len;
    char *keys; /* owned: the channels' keys in an app's namespace (channels[] point here) */
};

/*
 * Validates one JSON publish object {"channel"|"channels", "data", "event"?}
 * into *p (which borrows strings from obj: keep obj alive until published with hub_publish_async).
 * Returns 0, or -1 with a static message in *err.
 */
int api_pub_from_json(json_t *obj, struct api_pub *p, const struct hub_tenant *t, const char **err);
void api_pub_free(struct api_pub *p);

/*
 * Whether the request may use the publish API: its Authorization (Bearer, or
 * the HTTP Basic password) matches --publish-key, or no key is set and the
 * client is on loopback. Answers nothing.
 */
bool api_may_publish(const struct http_request *req, const struct conn *c,
                     struct hub_tenant *tenant);
/* Answers 401 unauthorized: the credentials sent do not match `keys`, or none were sent
 * (then it says to send `key`, as Bearer or the HTTP Basic password). */
void api_unauthorized(struct http_ctx *x, const char *keys, const char *key);
/* Whether the request carries the --admin-key. */
bool api_is_admin(const struct http_request *req, const struct herald_config *cfg);
/*
 * An app's plan on a publish of `bytes` (t NULL: the default app, no limits): 0
 * when it may go (counted), else the HTTP status (413, 429) with the limit's name
 * and a detail.
 */
int api_app_publish_check(struct hub_tenant *t, size_t bytes, const char **limit, char *detail,
                          size_t size);

/* Whether `key` (e.g. from a WebSocket op) is the publish key. False when none is set. */
bool api_key_matches(const struct herald_config *cfg, struct hub_tenant *tenant, const char *key,
                     size_t len);

/* The guard of the publish and channel API (a route's guard): the app's keys under
 * /apps/{app}/, else the publish key (or loopback without one); answers 401/403. */
bool api_guard(struct http_ctx *x);

/* Registers the API's routes (publish, channels, stats, metrics, health). Start-up, once. */
void api_init(void);

#endif
