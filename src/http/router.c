/*
 * router: finding a request's route and the checks every route of a kind
 * shares. See router.h.
 */
#include "http/router.h"

#include "hub/hub.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define MAX_TABLES 8

static struct {
    const struct http_route *routes;
    size_t n;
} tables[MAX_TABLES];
static size_t ntables;
static struct hub_tenant *(*app_resolver)(const char *name, size_t len);

void http_set_app_resolver(struct hub_tenant *(*resolve)(const char *name, size_t len))
{
    app_resolver = resolve;
}

void http_ctx_done(struct http_ctx *x)
{
    hub_tenant_put(x->tenant);
    x->tenant = NULL;
}

#define APPS_PREFIX "/apps/"

/*
 * Sets x->path (and x->tenant) for the request: /apps/{app}/rest is the app's
 * "/rest". Returns false after answering when the app does not exist.
 */
static bool resolve_app(struct http_ctx *x)
{
    const struct http_request *req = x->req;
    x->path = req->path;
    x->path_len = req->path_len;
    size_t n = sizeof(APPS_PREFIX) - 1;
    if (req->path_len <= n || memcmp(req->path, APPS_PREFIX, n) != 0 || !app_resolver)
        return true;
    const char *name = req->path + n;
    const char *slash = memchr(name, '/', req->path_len - n);
    size_t len = slash ? (size_t)(slash - name) : req->path_len - n;
    x->tenant = app_resolver(name, len);
    if (x->tenant && !slash) {
        http_error(x, 404, "not_found",
                   "name an endpoint of app \"%.*s\": /apps/%.*s/sse, /ws, /poll, /stream, "
                   "/pub/{channel}, /api/publish, /api/channels, /stats",
                   (int)len, name, (int)len, name);
        return false;
    }
    if (!x->tenant) {
        http_error(x, 404, "app_not_found",
                   "no app named \"%.*s\" on this server: check HERALD_URL, or create the app "
                   "(POST /admin/apps)",
                   (int)MIN(len, (size_t)APP_NAME_MAX + 8), name);
        return false;
    }
    x->path = slash;
    x->path_len = req->path_len - (size_t)(slash - req->path);
    return true;
}

void http_routes_add(const struct http_route *routes, size_t n)
{
    assert(ntables < MAX_TABLES);
    tables[ntables].routes = routes;
    tables[ntables].n = n;
    ntables++;
}

void http_routes_clear(void)
{
    ntables = 0;
}

/* The route of a path: an exact match, else the longest matching prefix route. */
static const struct http_route *find(const char *path, size_t len)
{
    const struct http_route *best = NULL;
    size_t best_len = 0;
    for (size_t t = 0; t < ntables; t++) {
        for (size_t i = 0; i < tables[t].n; i++) {
            const struct http_route *r = &tables[t].routes[i];
            size_t n = strlen(r->path);
            if (r->flags & ROUTE_PREFIX) {
                if (len >= n && memcmp(path, r->path, n) == 0 && n > best_len) {
                    best = r;
                    best_len = n;
                }
            } else if (len == n && memcmp(path, r->path, n) == 0) {
                return r;
            }
        }
    }
    return best;
}

bool http_origin_in(const char *origins, const char *origin, size_t len)
{
    const char *p = origins;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if ((t - p == 1 && *p == '*') ||
            ((size_t)(t - p) == len && strncasecmp(p, origin, len) == 0))
            return true;
        p = e;
    }
    return false;
}

const char *http_cors_origins(const struct http_ctx *x, char *buf, size_t size)
{
    const char *list = conn_cfg(x->c)->cors_origins;
    struct hub_tenant *t = x->tenant;
    if (!t)
        return list;
    pthread_mutex_lock(&t->lock);
    bool own = t->cors_origins[0] != '\0';
    if (own) {
        size_t n = MIN(strlen(t->cors_origins), size - 1);
        memcpy(buf, t->cors_origins, n);
        buf[n] = '\0';
    }
    pthread_mutex_unlock(&t->lock);
    return own ? buf : list;
}

/* Whether Origin names the server itself as the request addressed it (scheme://Host,
 * https on a TLS listener). */
static bool same_origin(const struct http_ctx *x, const struct http_header *o)
{
    const struct http_header *host = http_find_header(x->req, "Host");
    if (!host)
        return false;
    const char *scheme = (x->c->flags & CF_TLS) ? "https://" : "http://";
    size_t s = strlen(scheme), n = o->value_len;
    if (n < s || strncasecmp(o->value, scheme, s) != 0)
        return false;
    return n - s == host->value_len && strncasecmp(o->value + s, host->value, n - s) == 0;
}

/* "GET, POST": the methods of a route (HEAD goes without saying), OPTIONS when it
 * answers preflights. */
static size_t methods_text(uint32_t methods, bool options, char *out, size_t size)
{
    static const char *names[] = {
        [HTTP_M_GET] = "GET",     [HTTP_M_HEAD] = "HEAD",     [HTTP_M_POST] = "POST",
        [HTTP_M_PUT] = "PUT",     [HTTP_M_DELETE] = "DELETE", [HTTP_M_OPTIONS] = "OPTIONS",
        [HTTP_M_PATCH] = "PATCH",
    };
    size_t len = 0;
    out[0] = '\0';
    for (int m = HTTP_M_GET; m <= HTTP_M_PATCH; m++) {
        if (m == HTTP_M_HEAD || (m == HTTP_M_OPTIONS ? !options : !(methods & HTTP_METHOD_BIT(m))))
            continue;
        int k = snprintf(out + len, size - len, "%s%s", len ? ", " : "", names[m]);
        if (k < 0 || (size_t)k >= size - len)
            break;
        len += (size_t)k;
    }
    return len;
}

static void method_not_allowed(struct http_ctx *x, const struct http_route *r)
{
    char allow[80], hdr[112];
    bool options = (r->flags & ROUTE_SUBSCRIBE) ||
                   ((r->flags & ROUTE_API) && conn_cfg(x->c)->api_cors_origins[0]);
    methods_text(r->methods, options, allow, sizeof(allow));
    snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", allow);
    struct sbuf b = {0};
    sbuf_adds(&b, "{\"error\":\"method_not_allowed\",\"detail\":");
    char detail[400];
    snprintf(detail, sizeof(detail), "%.*s supports %s", (int)MIN(x->req->path_len, (size_t)200),
             x->req->path, allow);
    sbuf_add_json_str(&b, detail, strlen(detail));
    sbuf_adds(&b, "}\n");
    http_respond(x, 405, "application/json", hdr, b.data, b.len);
    sbuf_free(&b);
}

bool http_origin_may_use_api(const struct http_ctx *x)
{
    const struct http_header *o = http_find_header(x->req, "Origin");
    return !o || same_origin(x, o) ||
           http_origin_in(conn_cfg(x->c)->api_cors_origins, o->value, o->value_len);
}

/* Sets x->cors and x->origin for an allowed cross-origin request. */
static void allow_origin(struct http_ctx *x, const char *policy, const struct http_header *o)
{
    x->cors = true;
    if (strcmp(policy, "*") != 0) {
        x->origin = o->value;
        x->origin_len = o->value_len;
    }
}

static void preflight(struct http_ctx *x, const struct http_route *r)
{
    char allow[80], hdrs[320];
    methods_text(r->methods, true, allow, sizeof(allow));
    snprintf(hdrs, sizeof(hdrs),
             "Access-Control-Allow-Methods: %s\r\n"
             "Access-Control-Allow-Headers: %s\r\n"
             "Access-Control-Max-Age: 86400\r\n",
             allow,
             r->flags & ROUTE_SUBSCRIBE ? "Authorization, Last-Event-ID"
                                        : "Authorization, Content-Type, Herald-Event");
    http_respond(x, 204, NULL, hdrs, "", 0);
}

/*
 * The origin policy. Subscriber endpoints: CORS headers for --cors-origins (a
 * request without Origin is not a cross-origin browser request: it gets "*" only
 * when that is the policy). The API: requests without Origin (curl, servers) and
 * same-origin ones are fine; other origins only when --api-cors-origins allows,
 * since a browser would otherwise send them with its user's network position
 * (loopback trust) or cached credentials. Returns false after answering.
 */
static bool origin_allowed(struct http_ctx *x, const struct http_route *r)
{
    const struct herald_config *cfg = conn_cfg(x->c);
    const struct http_header *o = http_find_header(x->req, "Origin");
    if (r->flags & ROUTE_SUBSCRIBE) {
        char buf[sizeof(((struct hub_tenant *)0)->cors_origins)];
        const char *list = http_cors_origins(x, buf, sizeof(buf)); /* the app's, or ours */
        x->vary = strcmp(list, "*") != 0; /* the answer depends on Origin */
        if (o && http_origin_in(list, o->value, o->value_len))
            allow_origin(x, list, o);
        else if (!o)
            x->cors = strcmp(list, "*") == 0;
        return true;
    }
    if (!(r->flags & ROUTE_API) || !o || same_origin(x, o))
        return true;
    if (http_origin_in(cfg->api_cors_origins, o->value, o->value_len)) {
        allow_origin(x, cfg->api_cors_origins, o);
        return true;
    }
    return false;
}

static bool check_origin(struct http_ctx *x, const struct http_route *r)
{
    if (origin_allowed(x, r))
        return true;
    const struct http_header *o = http_find_header(x->req, "Origin");
    http_error(x, 403, "cross_origin",
               "browser pages from %.*s may not use the publish and admin API; call it from "
               "your server, or allow the origin with --api-cors-origins",
               (int)MIN(o->value_len, (size_t)200), o->value);
    return false;
}

const struct http_route *http_route_check(struct http_ctx *x)
{
    const struct http_request *req = x->req;
    struct conn *c = x->c;
    if (!resolve_app(x))
        return NULL;
    const struct http_route *r = find(x->path, x->path_len);
    if (r && x->tenant && !(r->flags & ROUTE_APP))
        r = NULL;
    if (!r) {
        http_error(x, 404, "not_found",
                   "no endpoint %.*s; see /api for the list (subscribe: /ws /sse /poll "
                   "/stream; publish: POST /pub/{channel}; an app's under /apps/{app}/)",
                   (int)MIN(req->path_len, (size_t)200), req->path);
        return NULL;
    }
    if (!(r->flags & ROUTE_ANY_LISTENER)) {
        if ((r->flags & ROUTE_SUBSCRIBE) && !(c->flags & CF_PUBLIC)) {
            http_error(x, 404, "not_found",
                       "subscribers connect to the public listener, not the API one");
            return NULL;
        }
        if ((r->flags & ROUTE_API) && !(c->flags & CF_API)) {
            http_error(x, 404, "not_found",
                       "the publish and admin API is served on the --api-listen address");
            return NULL;
        }
    }
    if (!check_origin(x, r))
        return NULL;
    if (req->method_id == HTTP_M_OPTIONS) {
        if ((r->flags & ROUTE_API) && !x->cors)
            http_error(x, 403, "cross_origin",
                       "the publish and admin API answers no CORS preflight unless "
                       "--api-cors-origins allows the origin");
        else
            preflight(x, r);
        return NULL;
    }
    if (!(r->methods & HTTP_METHOD_BIT(req->method_id))) {
        method_not_allowed(x, r);
        return NULL;
    }
    if (r->guard && !r->guard(x))
        return NULL;
    return r;
}

bool http_route_prepare(struct http_ctx *x, const struct http_route *route)
{
    if (!resolve_app(x))
        return false;
    /* The app is found again by name: when it was deleted (and maybe made again) since
     * the head passed, its credentials are checked again, against what has the name now. */
    if (x->tenant && route->guard && !route->guard(x))
        return false;
    x->route = route;
    size_t n = strlen(route->path);
    if (route->flags & ROUTE_PREFIX) {
        x->tail = x->path + n;
        x->tail_len = x->path_len - n;
    }
    x->cors = false;
    x->origin = NULL;
    x->origin_len = 0;
    origin_allowed(x, route); /* it passed on the head: this fills the CORS fields */
    return true;
}
