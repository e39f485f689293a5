/*
 * admin: the admin API over apps and plans (DESIGN.md §8), behind --admin-key.
 *
 *   GET    /admin/plans
 *   GET    /admin/apps                    list with usage
 *   POST   /admin/apps                    {"name", "plan", "subscribe"?} -> 201 with credentials
 *   GET    /admin/apps/{app}              one app, usage against its limits
 *   PATCH  /admin/apps/{app}              {"plan"?, "subscribe"?: "token"|"public"}
 *   DELETE /admin/apps/{app}              the app, its channels and its keys
 *   POST   /admin/apps/{app}/keys         a new publish key; the old one stays valid
 *   DELETE /admin/apps/{app}/keys/{key}   revokes a publish key
 */
#include "apps/admin.h"

#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "apps/apps.h"
#include "http/router.h"

bool admin_guard(struct http_ctx *x)
{
    const struct herald_config *cfg = conn_cfg(x->c);
    if (!cfg->admin_key[0]) {
        http_error(x, 404, "admin_off",
                   "the admin API is off: start herald with --admin-key (or HERALD_ADMIN_KEY)");
        return false;
    }
    if (api_is_admin(x->req, cfg))
        return true;
    api_unauthorized(x, "the admin key", "the admin key");
    return false;
}

void admin_respond_json(struct http_ctx *x, int status, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    size_t n = strlen(text);
    text = xrealloc(text, n + 2);
    text[n++] = '\n';
    http_respond(x, status, "application/json", "Cache-Control: no-store\r\n", text, n);
    free(text);
}

void admin_apps_error(struct http_ctx *x, int err, const char *name)
{
    switch (err) {
    case APPS_EXISTS:
        return http_error(x, 409, "app_exists", "an app named \"%s\" exists already", name);
    case APPS_NO_PLAN:
        return http_error(x, 400, "bad_plan", "no such plan; GET /admin/plans lists them");
    case APPS_BAD_NAME:
        return http_error(x, 400, "bad_app_name",
                          "app names are 1-%d bytes of lowercase letters, digits and '-', not "
                          "starting with '-'",
                          APP_NAME_MAX);
    case APPS_NOT_FOUND: return http_error(x, 404, "not_found", "no such key or app");
    case APPS_STATE:
        return http_error(x, 500, "state_not_saved",
                          "the change is made but could not be written to --state-dir (see the "
                          "server log); it holds until a restart");
    case APPS_UNAVAILABLE:
        return http_error(x, 503, "apps_store_unavailable",
                          "Redis did not take the change, so it was made on no node (see the "
                          "server log: Redis is down or too slow); retry when Redis is up");
    }
    http_error(x, 500, "internal", "unexpected error %d", err);
}

static void plans(struct http_ctx *x)
{
    size_t n;
    const struct plan *p = apps_plans(&n);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, apps_plan_json(&p[i]));
    admin_respond_json(x, 200, json_pack("{s:o}", "plans", arr));
}

/* GET /admin/apps[?limit=N&after=NAME]: a page of apps by name (1000 by default). */
static void list(struct http_ctx *x)
{
    const struct http_request *r = x->req;
    const char *v;
    size_t vl, limit = 1000;
    char after[APP_NAME_MAX + 1] = "";
    if (http_query_param(r->query, r->query_len, "limit", &v, &vl)) {
        char *end;
        char num[12];
        snprintf(num, sizeof(num), "%.*s", (int)MIN(vl, sizeof(num) - 1), v);
        unsigned long l = strtoul(num, &end, 10);
        if (!vl || *end || l < 1 || l > 10000)
            return http_error(x, 400, "bad_limit", "limit is 1 to 10000");
        limit = l;
    }
    if (http_query_param(r->query, r->query_len, "after", &v, &vl)) {
        if (!apps_name_valid(v, vl))
            return http_error(x, 400, "bad_after", "after is an app name");
        memcpy(after, v, vl);
    }
    json_t *all = apps_list();
    size_t total = json_array_size(all);
    json_t *page = json_array();
    for (size_t i = 0; i < total && json_array_size(page) < limit; i++) {
        json_t *a = json_array_get(all, i);
        if (strcmp(json_string_value(json_object_get(a, "name")), after) > 0)
            json_array_append(page, a);
    }
    size_t n = json_array_size(page);
    json_t *last = n ? json_object_get(json_array_get(page, n - 1), "name") : NULL;
    bool more =
        n == limit && last &&
        strcmp(json_string_value(last),
               json_string_value(json_object_get(json_array_get(all, total - 1), "name"))) != 0;
    json_t *next = more ? json_incref(last) : json_null();
    json_decref(all);
    admin_respond_json(
        x, 200, json_pack("{s:o,s:I,s:o}", "apps", page, "total", (json_int_t)total, "next", next));
}

/* The JSON object of a body; answers 400 and returns NULL otherwise. */
static json_t *body_object(struct http_ctx *x)
{
    json_error_t jerr;
    json_t *doc = json_loadb(x->body, x->body_len, 0, &jerr);
    if (!json_is_object(doc)) {
        json_decref(doc);
        http_error(x, 400, "bad_json",
                   "the body is a JSON object, e.g. {\"name\":\"myapp\","
                   "\"plan\":\"free\"}");
        return NULL;
    }
    return doc;
}

/* Answers 400 and returns false when doc has a member not in `known` (NULL-ended) or
 * an empty "plan". */
static bool only_known(struct http_ctx *x, json_t *doc, const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach(doc, key, v)
    {
        bool ok = false;
        for (const char *const *k = known; *k && !ok; k++)
            ok = strcmp(key, *k) == 0;
        if (!ok) {
            char list[128] = "";
            for (const char *const *k = known; *k; k++)
                snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                         k == known ? "" : ", ", *k);
            http_error(x, 400, "bad_app", "unknown member \"%s\" (known: %s)", key, list);
            return false;
        }
    }
    json_t *plan = json_object_get(doc, "plan");
    if (json_is_string(plan) && json_string_length(plan) == 0) {
        http_error(x, 400, "bad_plan",
                   "\"plan\" names a plan (GET /admin/plans); leave it out "
                   "for the first one");
        return false;
    }
    return true;
}

/* "subscribe": "token" | "public" -> 0/1; -1 absent; -2 bad (answered). */
static int subscribe_setting(struct http_ctx *x, json_t *doc)
{
    json_t *v = json_object_get(doc, "subscribe");
    if (!v)
        return -1;
    const char *s = json_string_value(v);
    if (s && strcmp(s, "token") == 0)
        return 0;
    if (s && strcmp(s, "public") == 0)
        return 1;
    http_error(x, 400, "bad_option", "\"subscribe\" is \"token\" or \"public\"");
    return -2;
}

static void create(struct http_ctx *x)
{
    json_t *doc = body_object(x);
    if (!doc)
        return;
    static const char *const known[] = {"name", "plan", "subscribe", "settings", NULL};
    if (!only_known(x, doc, known))
        return json_decref(doc);
    const char *name = json_string_value(json_object_get(doc, "name"));
    json_t *plan = json_object_get(doc, "plan");
    int sub = subscribe_setting(x, doc);
    if (sub == -2)
        return json_decref(doc);
    if (!name || (plan && !json_is_string(plan))) {
        json_decref(doc);
        return http_error(x, 400, "bad_app",
                          "give \"name\" (and optionally \"plan\", \"subscribe\")");
    }
    /* Settings are checked before anything is made. */
    json_t *settings = json_object_get(doc, "settings");
    if (settings && !json_is_object(settings)) {
        json_decref(doc);
        return http_error(x, 400, "bad_setting", "\"settings\" is an object");
    }
    struct app *a = NULL;
    char why[300] = "";
    int err = settings ? apps_check_settings(settings, why, sizeof(why)) : 0;
    if (!err)
        err = apps_create(name, json_string_value(plan), NULL, NULL, sub, settings, &a);
    if (err == APPS_BAD_SETTING) {
        http_error(x, 400, "bad_setting", "%s", why);
    } else if (err && !a) {
        admin_apps_error(x, err, name);
    } else {
        json_t *o = apps_json(a, true);
        admin_respond_json(x, 201, o);
    }
    hub_tenant_put(a ? &a->t : NULL);
    json_decref(doc);
}

static void one(struct http_ctx *x, struct app *a, const char *rest, size_t rest_len)
{
    int m = x->req->method_id;
    if (rest_len == 0) {
        if (m == HTTP_M_GET || m == HTTP_M_HEAD)
            return admin_respond_json(x, 200, apps_json(a, false));
        if (m == HTTP_M_DELETE) {
            int err = apps_delete(a);
            return err ? admin_apps_error(x, err, a->name)
                       : admin_respond_json(x, 200, json_pack("{s:s}", "deleted", a->name));
        }
        if (m == HTTP_M_PATCH) {
            json_t *doc = body_object(x);
            if (!doc)
                return;
            static const char *const known[] = {"plan", "subscribe", "settings", NULL};
            if (!only_known(x, doc, known))
                return json_decref(doc);
            json_t *plan = json_object_get(doc, "plan");
            json_t *settings = json_object_get(doc, "settings");
            int sub = subscribe_setting(x, doc);
            int err = 0;
            char why[300];
            if (sub != -2 && plan && !json_is_string(plan)) {
                sub = -2;
                http_error(x, 400, "bad_plan", "\"plan\" is a plan's name");
            } else if (sub != -2 && settings && !json_is_object(settings)) {
                sub = -2;
                http_error(x, 400, "bad_setting", "\"settings\" is an object");
            }
            if (sub != -2 && plan && !apps_plan(json_string_value(plan)))
                err = APPS_NO_PLAN;
            if (sub != -2 && !err && settings &&
                (err = apps_set_settings(a, settings, false, why, sizeof(why))) != 0) {
                sub = -2;
                http_error(x, 400, "bad_setting", "%s", why);
            }
            if (sub != -2 && !err)
                err = apps_update(a, json_string_value(plan), sub);
            json_decref(doc);
            if (sub == -2)
                return;
            return err ? admin_apps_error(x, err, a->name)
                       : admin_respond_json(x, 200, apps_json(a, false));
        }
    } else if (rest_len == 5 && memcmp(rest, "/keys", 5) == 0 && m == HTTP_M_POST) {
        int err = apps_rotate_key(a);
        return err ? admin_apps_error(x, err, a->name)
                   : admin_respond_json(x, 201, apps_json(a, true));
    } else if (rest_len > 6 && memcmp(rest, "/keys/", 6) == 0 && m == HTTP_M_DELETE) {
        int err = apps_revoke_key(a, rest + 6, rest_len - 6);
        return err ? admin_apps_error(x, err, a->name)
                   : admin_respond_json(x, 200, apps_json(a, false));
    }
    http_error(x, 405, "method_not_allowed",
               "/admin/apps/{app} takes GET, PATCH and DELETE; /admin/apps/{app}/keys POST; "
               "/admin/apps/{app}/keys/{key} DELETE");
}

static void apps_path(struct http_ctx *x)
{
    const char *name = x->tail;
    const char *slash = memchr(name, '/', x->tail_len);
    size_t len = slash ? (size_t)(slash - name) : x->tail_len;
    struct app *a = apps_get(name, len);
    if (!a)
        return http_error(x, 404, "app_not_found", "no app named \"%.*s\"",
                          (int)MIN(len, (size_t)APP_NAME_MAX + 8), name);
    one(x, a, name + len, x->tail_len - len);
    hub_tenant_put(&a->t);
}

static void apps_root(struct http_ctx *x)
{
    if (x->req->method_id == HTTP_M_POST)
        return create(x);
    list(x);
}

static const struct http_route routes[] = {
    {.path = "/admin/plans",
     .methods = ROUTE_GET,
     .flags = ROUTE_API,
     .guard = admin_guard,
     .handle = plans},
    {.path = "/admin/apps",
     .methods = ROUTE_GET | ROUTE_POST,
     .flags = ROUTE_API,
     .guard = admin_guard,
     .handle = apps_root},
    {.path = "/admin/apps/",
     .methods = ROUTE_GET | ROUTE_POST | ROUTE_PATCH | ROUTE_DELETE,
     .flags = ROUTE_API | ROUTE_PREFIX,
     .guard = admin_guard,
     .handle = apps_path},
};

void admin_init(void)
{
    http_routes_add(routes, ARRAY_LEN(routes));
}
