/*
 * router: the table of HTTP routes. Protocol and API modules register their
 * routes at start-up (before the workers run); for each request the router
 * finds the route and applies, in one place, what every route of a kind shares:
 *
 *   - which listener serves it (subscribers on --listen, the API on --api-listen);
 *   - the methods it takes (405 with Allow otherwise) and its CORS preflight;
 *   - the origin policy: subscriber endpoints answer CORS for --cors-origins; the
 *     publish and admin API refuses browser requests from other origins unless
 *     --api-cors-origins names them (a page must not publish through a browser
 *     that can reach herald);
 *   - its guard (credentials), checked on the request head, before a body is read.
 *
 * Adding an endpoint is one row in its module's table; adding a path prefix
 * (such as /apps/{app}/...) is a change here only.
 */
#ifndef HERALD_ROUTER_H
#define HERALD_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/http_conn.h"

enum route_flags {
    ROUTE_SUBSCRIBE = 1u << 0,    /* subscriber endpoint (--listen; CORS per --cors-origins) */
    ROUTE_API = 1u << 1,          /* publish/admin API (--api-listen; same-origin by default) */
    ROUTE_ANY_LISTENER = 1u << 2, /* served on every listener (health checks) */
    ROUTE_PREFIX = 1u << 3,       /* `path` is a prefix; the handler gets the rest in x->tail */
    ROUTE_APP = 1u << 4,          /* also served per app, under /apps/{app}/ */
};

#define HTTP_METHOD_BIT(m) (1u << (m))
#define ROUTE_GET          (HTTP_METHOD_BIT(HTTP_M_GET) | HTTP_METHOD_BIT(HTTP_M_HEAD))
#define ROUTE_POST         HTTP_METHOD_BIT(HTTP_M_POST)
#define ROUTE_PUT          HTTP_METHOD_BIT(HTTP_M_PUT)
#define ROUTE_DELETE       HTTP_METHOD_BIT(HTTP_M_DELETE)
#define ROUTE_PATCH        HTTP_METHOD_BIT(HTTP_M_PATCH)

struct http_route {
    const char *path;
    uint32_t methods; /* ROUTE_GET | ROUTE_POST ... (HEAD goes with GET) */
    uint32_t flags;   /* enum route_flags */
    /* Runs on the request head, before any body is read: answers (401, 403...) and
     * returns false to refuse the request. NULL: anyone may. */
    bool (*guard)(struct http_ctx *x);
    /* Answers the complete request. */
    void (*handle)(struct http_ctx *x);
};

/*
 * How /apps/{app}/ finds its app: resolve(name, len) returns the app's tenant with
 * a reference, or NULL when there is none. Start-up only; without it /apps/ is 404.
 */
void http_set_app_resolver(struct hub_tenant *(*resolve)(const char *name, size_t len));

/* Registers n routes (kept by reference: a static table). Start-up only. */
void http_routes_add(const struct http_route *routes, size_t n);
/* Forgets every route (tests). */
void http_routes_clear(void);

/*
 * Checks a request whose head is complete against its route (listener, method,
 * origin policy, preflight, guard). Returns the route when the request may go on,
 * or NULL after answering it. x->c and x->req are set; x->cors/origin are filled.
 */
const struct http_route *http_route_check(struct http_ctx *x);
/* Fills x->route, x->tenant, x->tail and the CORS fields for a request that passed the
 * check. Returns false after answering when its app went away in between. */
bool http_route_prepare(struct http_ctx *x, const struct http_route *route);

/* Whether the request may use the publish API as far as its Origin goes: none (not
 * a browser), the server's own, or one --api-cors-origins allows. */
bool http_origin_may_use_api(const struct http_ctx *x);
/* The subscriber origin list in effect for x: its app's own (copied into buf), else
 * --cors-origins. */
const char *http_cors_origins(const struct http_ctx *x, char *buf, size_t size);
/* Whether Origin is in the comma list `origins` ("*" matches any). */
bool http_origin_in(const char *origins, const char *origin, size_t len);

#endif
