/*
 * tsuru: the Tsuru service API (DESIGN.md §8), as Tsuru's service client calls it
 * (tsuru/service/endpoint.go; https://docs.tsuru.io/stable/services/api.html): form
 * bodies (application/x-www-form-urlencoded), JSON answers, HTTP Basic with the admin
 * key as password. A service instance is a herald app (apps.h), ready when it is
 * created: no 202 "pending", no 412 "not ready".
 *
 *   GET    /resources/plans             [{"name","description"}]
 *   POST   /resources                   name, plan, team, user -> 201; 409 exists; 400 plan
 *   GET    /resources/{name}            [{"label","value"}]: plan, usage, URLs
 *   PUT    /resources/{name}            plan (team, description, tags ignored) -> 200
 *   DELETE /resources/{name}            the app, its channels and keys -> 200
 *   GET    /resources/{name}/status     204
 *   POST   /resources/{name}/bind-app   app-name, app-host -> 201 with the app's environment
 *   DELETE /resources/{name}/bind-app   -> 200
 *   POST   /resources/{name}/bind       unit bind (Tsuru calls it per unit): 201, nothing to do
 *   DELETE /resources/{name}/bind       -> 200, nothing to do
 *
 * Errors are herald's JSON {"error","detail"}: Tsuru shows the body it gets as the
 * reason ("invalid response: {...} (code: 400)"), so the detail is written for the
 * Tsuru user. Unknown form fields are ignored (Tsuru adds some over its versions).
 */
#include "apps/tsuru.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apps/admin.h"
#include "apps/apps.h"
#include "core/log.h"
#include "http/router.h"

#define FORM_RAW_MAX 1024 /* a form value longer than this (encoded) is refused */
#define URL_MAX      320

/* ---- the request ------------------------------------------------------------------- */

enum field_flags {
    F_REQUIRED = 1, /* absent or empty: 400 */
    F_TRUNCATE = 2, /* longer than the buffer: cut (informational fields); else 400 */
};

/*
 * Reads form field `name` of the body into out[size] (NUL-terminated, "" when absent):
 * '+' is a space, %XX a byte. Returns false after answering 400 when it is malformed,
 * too long, or required and missing.
 */
static bool field(struct http_ctx *x, const char *name, char *out, size_t size, int flags)
{
    const char *v = NULL;
    size_t vl = 0;
    out[0] = '\0';
    bool found = http_query_param(x->body, x->body_len, name, &v, &vl);
    if (!found || vl == 0) {
        if (!(flags & F_REQUIRED))
            return true;
        http_error(x, 400, "missing_field",
                   "the form has no \"%s\" field; Tsuru sends it (Content-Type: "
                   "application/x-www-form-urlencoded)",
                   name);
        return false;
    }
    char tmp[FORM_RAW_MAX];
    long n = -1;
    if (vl <= sizeof(tmp)) {
        for (size_t i = 0; i < vl; i++)
            tmp[i] = v[i] == '+' ? ' ' : v[i];
        n = http_url_decode(tmp, tmp, vl);
    }
    if (n < 0 || memchr(tmp, '\0', (size_t)n) || ((size_t)n >= size && !(flags & F_TRUNCATE))) {
        http_error(x, 400, "bad_field",
                   "the form field \"%s\" is malformed or longer than %zu bytes (form values "
                   "are percent-encoded, '+' for a space)",
                   name, n < 0 ? MIN(size - 1, sizeof(tmp)) : size - 1);
        return false;
    }
    size_t k = MIN((size_t)n, size - 1);
    memcpy(out, tmp, k);
    out[k] = '\0';
    return true;
}

/* parameters.subscribe (Tsuru's --plan-param subscribe=…): 1 public, 0 token, -1 absent;
 * -2 after answering 400. */
static int subscribe_param(struct http_ctx *x)
{
    char v[16];
    if (!field(x, "parameters.subscribe", v, sizeof(v), 0))
        return -2;
    if (!v[0])
        return -1;
    if (strcmp(v, "public") == 0 || strcmp(v, "token") == 0)
        return v[0] == 'p';
    http_error(x, 400, "bad_parameter",
               "the plan parameter subscribe is \"public\" (anyone may subscribe) or \"token\" "
               "(subscribers need a token signed with HERALD_TOKEN_SECRET), not \"%s\"",
               v);
    return -2;
}

/*
 * Tsuru instance names are [A-Za-z][-A-Za-z0-9_]* of any length, herald app names 1-40
 * of [a-z0-9-]: an instance is the app named by its name lowercased, '_' made '-'
 * ("My_Push" is the app "my-push"). Returns false when the result is no app name, or
 * "plans" (GET /resources/plans lists the plans).
 */
static bool app_name(const char *in, size_t len, char out[APP_NAME_MAX + 1])
{
    if (len == 0 || len > APP_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        out[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c == '_' ? '-' : c;
    }
    out[len] = '\0';
    return apps_name_valid(out, len) && strcmp(out, "plans") != 0;
}

/* The plans' names, comma-separated, for error messages. */
static void plan_names(char *out, size_t size)
{
    size_t n, o = 0;
    const struct plan *p = apps_plans(&n);
    out[0] = '\0';
    for (size_t i = 0; i < n && o < size; i++)
        o += (size_t)snprintf(out + o, size - o, "%s%s", i ? ", " : "", p[i].name);
}

/* Answers an enum apps_error in Tsuru's words where they differ from the admin API's. */
static void tsuru_error(struct http_ctx *x, int err, const char *name, const char *plan)
{
    char plans[256];
    switch (err) {
    case APPS_NO_PLAN:
        plan_names(plans, sizeof(plans));
        return http_error(x, 400, "bad_plan", "herald has no plan \"%s\"; its plans are: %s", plan,
                          plans);
    case APPS_EXISTS:
        return http_error(x, 409, "instance_exists",
                          "herald has an app named \"%s\" already (Tsuru names are lowercased, "
                          "'_' made '-'); choose another instance name",
                          name);
    }
    admin_apps_error(x, err, name);
}

static void bad_name(struct http_ctx *x, const char *name)
{
    http_error(x, 400, "bad_instance_name",
               "\"%.64s\" cannot name a herald instance: use 1-%d letters, digits, '-' and "
               "'_', starting with a letter or digit (herald lowercases it and makes '_' '-'); "
               "\"plans\" is reserved",
               name, APP_NAME_MAX);
}

/* ---- the URLs and the environment ------------------------------------------------ */

/* Whether the Host header may go into a URL as it is: a name or address and a port. */
static bool host_ok(const char *h, size_t len)
{
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = h[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '[' || c == ']'))
            return false;
    }
    return true;
}

/*
 * The base URL of the app's subscriber endpoints (api = false: --public-url) or of its
 * publish API (api = true: --api-url, else as --public-url), with "/apps/{app}"; without
 * either, the Host Tsuru addressed, https:// when it came over TLS. Returns false after answering
 * 400 when there is no usable Host.
 */
static bool app_url(struct http_ctx *x, const char *app, bool api, char out[URL_MAX])
{
    const struct herald_config *cfg = conn_cfg(x->c);
    const char *base = api && cfg->api_url[0] ? cfg->api_url : cfg->public_url;
    if (base[0]) {
        size_t n = strlen(base);
        while (n > 0 && base[n - 1] == '/')
            n--;
        snprintf(out, URL_MAX, "%.*s/apps/%s", (int)n, base, app);
        return true;
    }
    const struct http_header *h = http_find_header(x->req, "Host");
    if (!h || !host_ok(h->value, h->value_len)) {
        http_error(x, 400, "no_public_url",
                   "herald cannot tell the app its URL: the request has no usable Host header; "
                   "start herald with --public-url (and --api-url)");
        return false;
    }
    if (!api && !(x->c->flags & CF_PUBLIC)) {
        /* Asked on the separate API listener: subscribers go to the same host name on the
         * subscriber listener's port (TLS first), not to the API's. */
        const char *v = h->value;
        size_t n = h->value_len;
        const char *end = v[0] == '[' ? memchr(v, ']', n) : NULL;
        const char *colon = memchr(end ? end : v, ':', n - (size_t)((end ? end : v) - v));
        size_t hl = colon ? (size_t)(colon - v) : n;
        bool tls = cfg->num_listen_tls > 0;
        unsigned port = tls ? cfg->listen_tls[0].port : cfg->listen[0].port;
        if (tls || cfg->num_listen > 0) {
            snprintf(out, URL_MAX, "%s://%.*s:%u/apps/%s", tls ? "https" : "http", (int)hl, v, port,
                     app);
            return true;
        }
    }
    snprintf(out, URL_MAX, "%s://%.*s/apps/%s", (x->c->flags & CF_TLS) ? "https" : "http",
             (int)h->value_len, h->value, app);
    return true;
}

static const char *str_of(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* ---- the endpoints ------------------------------------------------------------------ */

static void plans(struct http_ctx *x)
{
    size_t n;
    const struct plan *p = apps_plans(&n);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            arr, json_pack("{s:s,s:s}", "name", p[i].name, "description", p[i].description));
    admin_respond_json(x, 200, arr);
}

static void create(struct http_ctx *x)
{
    char tname[256], plan[PLAN_NAME_MAX + 1], team[64], user[128], name[APP_NAME_MAX + 1];
    if (!field(x, "name", tname, sizeof(tname), F_REQUIRED))
        return;
    if (!app_name(tname, strlen(tname), name))
        return bad_name(x, tname);
    if (!field(x, "plan", plan, sizeof(plan), 0) ||
        !field(x, "team", team, sizeof(team), F_TRUNCATE) ||
        !field(x, "user", user, sizeof(user), F_TRUNCATE))
        return;
    int sub = subscribe_param(x);
    if (sub == -2)
        return;
    if (plan[0] && !apps_plan(plan))
        return tsuru_error(x, APPS_NO_PLAN, name, plan);
    struct app *a = NULL;
    int err = apps_create(name, plan[0] ? plan : NULL, team, user, sub, NULL, &a);
    if (err && !a) {
        tsuru_error(x, err, name, plan);
    } else {
        /* A failed write of --state-dir is logged; the instance exists and serves. */
        admin_respond_json(x, 201, json_pack("{s:s,s:s}", "name", a->name, "plan", a->plan));
    }
    hub_tenant_put(a ? &a->t : NULL);
}

/* "3 of 100", or "3" when the plan has no limit. */
static json_t *usage_value(json_t *usage, json_t *limits, const char *key)
{
    json_int_t used = json_integer_value(json_object_get(usage, key));
    json_int_t max = json_integer_value(json_object_get(limits, key));
    char buf[64];
    if (max > 0)
        snprintf(buf, sizeof(buf), "%lld of %lld", (long long)used, (long long)max);
    else
        snprintf(buf, sizeof(buf), "%lld", (long long)used);
    return json_string(buf);
}

static void add_info(json_t *arr, const char *label, json_t *value)
{
    json_array_append_new(arr, json_pack("{s:s,s:o}", "label", label, "value", value));
}

/* GET /resources/{name}: Tsuru reads [{"label","value"}] with string values. */
static void info(struct http_ctx *x, struct app *a)
{
    char sub_url[URL_MAX], pub_url[URL_MAX];
    if (!app_url(x, a->name, false, sub_url) || !app_url(x, a->name, true, pub_url))
        return;
    json_t *o = apps_json(a, false);
    json_t *usage = json_object_get(o, "usage"), *limits = json_object_get(o, "limits");
    json_int_t published = json_integer_value(json_object_get(usage, "publishes"));
    json_int_t refused = json_integer_value(json_object_get(usage, "publishes_refused"));
    json_int_t max_rate = json_integer_value(json_object_get(limits, "publishes_per_second"));
    json_t *arr = json_array();
    add_info(arr, "App", json_string(a->name));
    add_info(arr, "Plan", json_string(str_of(o, "plan")));
    add_info(arr, "Subscribe", json_string(str_of(o, "subscribe")));
    add_info(arr, "Connections", usage_value(usage, limits, "connections"));
    add_info(arr, "Channels", usage_value(usage, limits, "channels"));
    add_info(arr, "Publishes",
             max_rate ? json_sprintf("%lld (%lld refused over the plan's %lld/s)",
                                     (long long)published, (long long)refused, (long long)max_rate)
                      : json_sprintf("%lld", (long long)published));
    add_info(arr, "Subscriber URL", json_string(sub_url));
    add_info(arr, "Publish URL", json_string(pub_url));
    const char *bound = str_of(o, "bound_apps");
    add_info(arr, "Bound apps", json_string(bound[0] ? bound : "none"));
    json_decref(o);
    admin_respond_json(x, 200, arr);
}

/* PUT /resources/{name}: a plan change (and the subscribe plan parameter). */
static void update(struct http_ctx *x, struct app *a)
{
    char plan[PLAN_NAME_MAX + 1];
    if (!field(x, "plan", plan, sizeof(plan), 0))
        return;
    int sub = subscribe_param(x);
    if (sub == -2)
        return;
    int err = apps_update(a, plan[0] ? plan : NULL, sub);
    if (err && err != APPS_STATE)
        return tsuru_error(x, err, a->name, plan);
    json_t *o = apps_json(a, false); /* read under the registry's lock */
    admin_respond_json(x, 200,
                       json_pack("{s:s,s:O}", "name", a->name, "plan", json_object_get(o, "plan")));
    json_decref(o);
}

/* POST /resources/{name}/bind-app: the environment variables the app gets. */
static void bind_app(struct http_ctx *x, struct app *a)
{
    char app[128], sub_url[URL_MAX], pub_url[URL_MAX];
    if (!field(x, "app-name", app, sizeof(app), F_REQUIRED))
        return;
    if (!app_url(x, a->name, false, sub_url) || !app_url(x, a->name, true, pub_url))
        return;
    int rc = apps_bind(a, app, true); /* a failed write of --state-dir is logged; it holds */
    if (rc == APPS_BAD_NAME)
        return http_error(x, 400, "bad_field",
                          "\"app-name\" is a Tsuru app name: letters, digits, '-', '_', '.'");
    if (rc == APPS_FULL)
        return http_error(x, 409, "too_many_bindings",
                          "instance %s is bound to as many apps as it can record; unbind one",
                          a->name);
    json_t *o = apps_json(a, true);
    json_t *env =
        json_pack("{s:s,s:s,s:s,s:s,s:s}", "HERALD_APP", a->name, "HERALD_URL", sub_url,
                  "HERALD_PUBLISH_URL", pub_url, "HERALD_PUBLISH_KEY", str_of(o, "publish_key"),
                  "HERALD_TOKEN_SECRET", str_of(o, "token_secret"));
    json_decref(o);
    log_info("tsuru: bound %s to app %s", a->name, app);
    admin_respond_json(x, 201, env);
}

static void unbind_app(struct http_ctx *x, struct app *a)
{
    char app[128];
    if (!field(x, "app-name", app, sizeof(app), F_TRUNCATE))
        return;
    if (app[0])
        apps_bind(a, app, false);
    admin_respond_json(x, 200, json_object());
}

static void remove_instance(struct http_ctx *x, struct app *a)
{
    int err = apps_delete(a);
    if (err && err != APPS_STATE)
        return tsuru_error(x, err, a->name, "");
    admin_respond_json(x, 200, json_pack("{s:s}", "deleted", a->name));
}

static bool is(const char *rest, size_t len, const char *what)
{
    return len == strlen(what) && memcmp(rest, what, len) == 0;
}

static void dispatch(struct http_ctx *x, struct app *a, const char *rest, size_t len)
{
    int m = x->req->method_id;
    bool get = m == HTTP_M_GET || m == HTTP_M_HEAD;
    if (len == 0) {
        if (get)
            return info(x, a);
        if (m == HTTP_M_PUT)
            return update(x, a);
        if (m == HTTP_M_DELETE)
            return remove_instance(x, a);
    } else if (is(rest, len, "/status")) {
        if (get) /* ready from its creation on */
            return http_respond(x, 204, NULL, "Cache-Control: no-store\r\n", "", 0);
    } else if (is(rest, len, "/bind-app")) {
        if (m == HTTP_M_POST)
            return bind_app(x, a);
        if (m == HTTP_M_DELETE)
            return unbind_app(x, a);
    } else if (is(rest, len, "/bind")) {
        /* Per-unit binds: herald does not filter by address, so there is nothing to do. */
        if (m == HTTP_M_POST)
            return admin_respond_json(x, 201, json_object());
        if (m == HTTP_M_DELETE)
            return admin_respond_json(x, 200, json_object());
    } else {
        return http_error(x, 404, "not_found",
                          "no such endpoint: /resources/{name} has /status, /bind-app and /bind");
    }
    http_error(x, 405, "method_not_allowed",
               "/resources/{name} takes GET, PUT and DELETE; /status GET; /bind-app and /bind "
               "POST and DELETE");
}

static void resource(struct http_ctx *x)
{
    const char *slash = memchr(x->tail, '/', x->tail_len);
    size_t len = slash ? (size_t)(slash - x->tail) : x->tail_len;
    char raw[APP_NAME_MAX + 1], name[APP_NAME_MAX + 1];
    long n = len <= APP_NAME_MAX ? http_url_decode(raw, x->tail, len) : -1;
    struct app *a = n > 0 && app_name(raw, (size_t)n, name) ? apps_get(name, (size_t)n) : NULL;
    if (!a)
        return http_error(x, 404, "instance_not_found",
                          "herald has no instance \"%.*s\" (it was removed, or never created)",
                          (int)MIN(len, (size_t)64), x->tail);
    dispatch(x, a, x->tail + len, x->tail_len - len);
    hub_tenant_put(&a->t);
}

static const struct http_route routes[] = {
    {.path = "/resources/plans",
     .methods = ROUTE_GET,
     .flags = ROUTE_API,
     .guard = admin_guard,
     .handle = plans},
    {.path = "/resources",
     .methods = ROUTE_POST,
     .flags = ROUTE_API,
     .guard = admin_guard,
     .handle = create},
    {.path = "/resources/",
     .methods = ROUTE_GET | ROUTE_POST | ROUTE_PUT | ROUTE_DELETE,
     .flags = ROUTE_API | ROUTE_PREFIX,
     .guard = admin_guard,
     .handle = resource},
};

void tsuru_init(const struct herald_config *cfg)
{
    http_routes_add(routes, ARRAY_LEN(routes));
    if (cfg->admin_key[0] && cfg->has_api_listen && !cfg->public_url[0])
        log_warn("tsuru: --api-listen is set but --public-url is not: apps bound through the "
                 "Tsuru service API would be given the API listener's address as HERALD_URL; "
                 "set --public-url (and --api-url)");
}
