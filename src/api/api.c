/*
 * api: publish (raw body and JSON, batches), channel administration, stats,
 * Prometheus metrics and health, behind publisher authentication: a key
 * (HTTP Basic password or Bearer token, compared in constant time) or, with
 * no key configured, loopback clients only.
 */
#include "api/api.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <arpa/inet.h>
#include <openssl/evp.h>
#include <strings.h>

#include "apps/apps.h"
#include "core/log.h"
#include "core/node_stats.h"
#include "core/tls.h"
#include "hooks/hooks.h"
#include "http/router.h"
#include "transport/ws_frame.h"
#include "users/users.h"

/* ---- helpers --------------------------------------------------------------- */

/* Answers with a JSON string literal. */
#define RESPOND_LIT(x, status, headers, lit)                                                       \
    http_respond((x), (status), "application/json", (headers), (lit), sizeof(lit) - 1)

static bool is_json_type(const struct http_request *req)
{
    const struct http_header *h = http_find_header(req, "Content-Type");
    if (!h)
        return false;
    size_t n = h->value_len;
    const char *v = h->value;
    for (size_t i = 0; i < n; i++)
        if (v[i] == ';') {
            n = i;
            break;
        }
    while (n && v[n - 1] == ' ')
        n--;
    if (n == 16 && strncasecmp(v, "application/json", 16) == 0)
        return true;
    return n > 5 && strncasecmp(v + n - 5, "+json", 5) == 0;
}

static bool utf8_valid(const char *s, size_t len)
{
    return ws_utf8_valid((const uint8_t *)s, len);
}

/* ---- authentication ------------------------------------------------------ */

static bool check_key(const char *key, const char *cred, size_t len)
{
    return ct_equal(cred, len, key, strlen(key));
}

bool api_key_matches(const struct herald_config *cfg, struct hub_tenant *tenant, const char *key,
                     size_t len)
{
    if (cfg->admin_key[0] && check_key(cfg->admin_key, key, len))
        return true;
    if (tenant)
        return apps_key_matches(app_of(tenant), key, len);
    return cfg->publish_key[0] && check_key(cfg->publish_key, key, len);
}

/*
 * Whether the Host header names this machine's loopback (or is absent: HTTP/1.0).
 * Loopback trust needs it: a page of evil.example whose name was rebound to
 * 127.0.0.1 reaches us from loopback with its own Host (DNS rebinding).
 */
static bool host_is_loopback(const struct http_request *req)
{
    const struct http_header *h = http_find_header(req, "Host");
    if (!h)
        return true;
    const char *v = h->value;
    size_t n = h->value_len;
    /* host [":" port], the port 1-5 digits (RFC 9110 §7.2): anything else is not ours. */
    const char *colon = v[0] == '[' ? NULL : memchr(v, ':', n);
    if (n && v[0] == '[') {
        const char *end = memchr(v, ']', n);
        if (!end)
            return false;
        colon = end + 1 < v + n ? end + 1 : NULL;
        if (colon && *colon != ':')
            return false;
    }
    if (colon) {
        size_t digits = (size_t)(v + n - colon - 1);
        if (digits < 1 || digits > 5)
            return false;
        for (size_t i = 1; i <= digits; i++)
            if (colon[i] < '0' || colon[i] > '9')
                return false;
        n = (size_t)(colon - v);
    }
    if (n == 5 && memcmp(v, "[::1]", 5) == 0)
        return true;
    char host[64];
    if (n == 0 || n >= sizeof(host))
        return false;
    memcpy(host, v, n);
    host[n] = '\0';
    if (strcasecmp(host, "localhost") == 0 ||
        (n > 10 && strcasecmp(host + n - 10, ".localhost") == 0))
        return true;
    struct in_addr a;
    return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

/*
 * The credential a request carries: the Bearer token, or the HTTP Basic password
 * (RFC 7617: user-id ":" password; the user-id is not checked), decoded into
 * buf[800]. Returns false when there is none.
 */
static bool credential(const struct http_request *req, char *buf, const char **key, size_t *len)
{
    const struct http_header *h = http_find_header(req, "Authorization");
    if (h && h->value_len > 7 && strncasecmp(h->value, "Bearer ", 7) == 0) {
        *key = h->value + 7;
        *len = h->value_len - 7;
        return true;
    }
    if (!h || h->value_len <= 6 || strncasecmp(h->value, "Basic ", 6) != 0 ||
        h->value_len - 6 >= 1024)
        return false;
    int n = EVP_DecodeBlock((unsigned char *)buf, (const unsigned char *)h->value + 6,
                            (int)(h->value_len - 6));
    if (n <= 0)
        return false;
    /* EVP_DecodeBlock counts padding bytes as zeros: trim them. */
    const char *v = h->value + h->value_len;
    n -= (v[-1] == '=') + (v[-2] == '=');
    const char *colon = memchr(buf, ':', (size_t)n);
    if (!colon)
        return false;
    *key = colon + 1;
    *len = (size_t)n - (size_t)(*key - buf);
    return true;
}

bool api_is_admin(const struct http_request *req, const struct herald_config *cfg)
{
    char buf[800];
    const char *key;
    size_t len;
    return cfg->admin_key[0] && credential(req, buf, &key, &len) &&
           check_key(cfg->admin_key, key, len);
}

bool api_may_publish(const struct http_request *req, const struct conn *c,
                     struct hub_tenant *tenant)
{
    const struct herald_config *cfg = conn_cfg(c);
    const char *pk = cfg->publish_key;
    if (api_is_admin(req, cfg))
        return true;
    if (tenant) {
        char buf[800];
        const char *key;
        size_t len;
        return credential(req, buf, &key, &len) && apps_key_matches(app_of(tenant), key, len);
    }
    if (!pk[0])
        return (c->flags & CF_LOOPBACK) && host_is_loopback(req);
    char buf[800];
    const char *key;
    size_t len;
    return credential(req, buf, &key, &len) && check_key(pk, key, len);
}

void api_unauthorized(struct http_ctx *x, const char *keys, const char *key)
{
    if (http_find_header(x->req, "Authorization"))
        http_error(x, 401, "unauthorized", "the credentials do not match %s", keys);
    else
        http_error(x, 401, "unauthorized",
                   "send %s as 'Authorization: Bearer KEY' or as the HTTP Basic password", key);
}

/* An app's API: its publish keys (current or previous) or the admin key. */
static bool app_authorized(struct http_ctx *x)
{
    char buf[800];
    const char *key;
    size_t len;
    if (api_is_admin(x->req, conn_cfg(x->c)) ||
        (credential(x->req, buf, &key, &len) && apps_key_matches(app_of(x->tenant), key, len)))
        return true;
    api_unauthorized(x, "any of the app's publish keys",
                     "the app's publish key (HERALD_PUBLISH_KEY)");
    return false;
}

/* Returns true when the request may use the publish/admin API; answers 401/403 otherwise. */
bool api_guard(struct http_ctx *x)
{
    if (x->tenant)
        return app_authorized(x);
    if (api_may_publish(x->req, x->c, NULL))
        return true;
    if (!conn_cfg(x->c)->publish_key[0] && (x->c->flags & CF_LOOPBACK)) {
        http_error(x, 403, "host_not_allowed",
                   "without --publish-key only loopback clients that address herald as "
                   "localhost, 127.0.0.1 or [::1] may publish (a page whose name resolves to "
                   "127.0.0.1 must not); set HERALD_PUBLISH_KEY to publish by another name");
        return false;
    }
    if (!conn_cfg(x->c)->publish_key[0]) {
        http_error(x, 403, "forbidden",
                   "no --publish-key is configured, so publishing is allowed from loopback only; "
                   "set HERALD_PUBLISH_KEY to publish from other hosts");
        return false;
    }
    api_unauthorized(x, "the publish key", "the publish key");
    return false;
}

int api_app_publish_check(struct hub_tenant *t, size_t bytes, const char **limit, char *detail,
                          size_t size)
{
    struct app *a = app_of(t);
    if (!a)
        return 0;
    uint32_t max = atomic_load_explicit(&a->max_message_bytes, memory_order_relaxed);
    if (max && bytes > max) {
        *limit = "message_bytes";
        snprintf(detail, size, "the message is %zu bytes; the app's plan allows %u", bytes, max);
        return 413;
    }
    if (!apps_take_publish(a)) {
        *limit = "publishes_per_second";
        snprintf(detail, size, "the app's plan allows %u publishes per second; retry in a second",
                 atomic_load_explicit(&a->max_publish_rate, memory_order_relaxed));
        return 429;
    }
    return 0;
}

/* Answers and returns false when the app's plan refuses a publish of `bytes`. */
static bool app_may_publish(struct http_ctx *x, size_t bytes)
{
    const char *limit;
    char detail[200];
    int status = api_app_publish_check(x->tenant, bytes, &limit, detail, sizeof(detail));
    if (status)
        http_limit_error(x, status, limit, "%s", detail);
    return !status;
}

/* ---- publishing -------------------------------------------------------------- */

void api_pub_free(struct api_pub *p)
{
    free(p->data_json);
    p->data_json = NULL;
    free(p->keys);
    p->keys = NULL;
}

/* The channels become keys of t's namespace, and the users' channels follow them
 * (p->keys holds the keys). */
static void pub_make_keys(struct api_pub *p, const struct hub_tenant *t, const struct slice *users,
                          size_t nusers)
{
    if (!t && !nusers)
        return;
    p->keys = xmalloc((p->n + nusers) * (CHANNEL_KEY_MAX + 1));
    for (size_t i = 0; i < p->n + nusers; i++) {
        char *k = p->keys + i * (CHANNEL_KEY_MAX + 1);
        size_t len = i < p->n ? chan_key_make(k, t, p->channels[i].data, p->channels[i].len)
                              : users_key(k, t, users[i - p->n].data, users[i - p->n].len);
        if (i < p->n && !t)
            continue; /* the default app's key is the name */
        p->channels[i] = (struct slice){k, (uint32_t)len};
    }
    p->n += nusers;
}

/* Reads "users" (user ids, each a token's "sub") of a publish into users[], which
 * points into obj; at most `room` of them. Returns how many, or -1 with *err. */
static long pub_users(json_t *obj, struct slice *users, size_t room, const char **err)
{
    json_t *us = json_object_get(obj, "users");
    if (!us)
        return 0;
    if (!json_is_array(us)) {
        *err = "\"users\" is an array of user ids (each a subscriber token's \"sub\")";
        return -1;
    }
    size_t i, n = 0;
    json_t *v;
    json_array_foreach(us, i, v)
    {
        const char *id = json_string_value(v);
        size_t len = json_string_length(v);
        if (!id || len == 0 || len > USERS_ID_MAX || strlen(id) != len) {
            *err = "\"users\" holds user ids: strings of 1 to 256 bytes (a token's \"sub\")";
            return -1;
        }
        struct slice s = {id, (uint32_t)len};
        if (slice_in(users, n, &s))
            continue; /* named twice: once */
        if (n == room) {
            *err = "at most 64 channels and users per message, together: reach more users with "
                   "several messages in one request ({\"messages\":[...]})";
            return -1;
        }
        users[n++] = s;
    }
    return (long)n;
}

static int add_channel(struct api_pub *p, const char *name, size_t len, const char **err)
{
    if (!hub_channel_name_valid(name, len)) {
        *err = "channel names are 1-128 bytes of letters, digits and _ . : @ / -";
        return -1;
    }
    for (size_t i = 0; i < p->n; i++)
        if (p->channels[i].len == len && memcmp(p->channels[i].data, name, len) == 0)
            return 0;
    if (p->n == ARRAY_LEN(p->channels)) {
        *err = "at most 64 channels per message";
        return -1;
    }
    p->channels[p->n++] = (struct slice){name, (uint32_t)len};
    return 0;
}

/* api_pub_from_json; with `users`, a publish may name users too (the HTTP API). */
static int pub_from_json(json_t *obj, struct api_pub *p, const struct hub_tenant *t, bool users,
                         const char **err)
{
    memset(p, 0, sizeof(*p));
    if (!json_is_object(obj)) {
        *err = "each message is a JSON object: {\"channel\":\"news\",\"data\":...}";
        return -1;
    }
    json_t *chs = json_object_get(obj, "channels"), *ch = json_object_get(obj, "channel");
    if (ch && chs) {
        *err = "give \"channel\" or \"channels\", not both";
        return -1;
    }
    if (ch && !json_is_string(ch)) {
        *err = "\"channel\" is a channel name";
        return -1;
    }
    if (ch && add_channel(p, json_string_value(ch), json_string_length(ch), err))
        return -1;
    if (json_is_array(chs)) {
        size_t i;
        json_t *v;
        json_array_foreach(chs, i, v)
        {
            if (!json_is_string(v)) {
                *err = "\"channels\" is an array of channel names";
                return -1;
            }
            if (add_channel(p, json_string_value(v), json_string_length(v), err))
                return -1;
        }
    } else if (chs) {
        *err = "\"channels\" is an array of channel names";
        return -1;
    }
    struct slice ids[ARRAY_LEN(p->channels)];
    long nusers = 0;
    if (!users && json_object_get(obj, "users")) {
        *err = "\"users\" is for the HTTP publish API (POST /api/publish), not WebSocket clients";
        return -1;
    }
    if (users && (nusers = pub_users(obj, ids, ARRAY_LEN(p->channels) - p->n, err)) < 0)
        return -1;
    if (p->n == 0 && nusers == 0) {
        *err = "name the target with \"channel\": \"name\", \"channels\": [\"a\", \"b\"] or "
               "\"users\": [\"42\"]";
        return -1;
    }
    json_t *data = json_object_get(obj, "data");
    if (!data) {
        *err = "the message has no \"data\"";
        return -1;
    }
    json_t *ev = json_object_get(obj, "event");
    if (ev) {
        if (!json_is_string(ev) ||
            !hub_event_name_valid(json_string_value(ev), json_string_length(ev))) {
            *err = "\"event\" is a name of 1-64 letters, digits or _ . : -";
            return -1;
        }
        p->event = json_string_value(ev);
        p->event_len = json_string_length(ev);
    }
    p->data_json = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!p->data_json) {
        *err = "\"data\" could not be encoded";
        return -1;
    }
    p->data_len = strlen(p->data_json);
    pub_make_keys(p, t, ids, (size_t)nusers);
    if (json_is_string(data)) {
        p->text = true;
        p->raw = json_string_value(data);
        p->raw_len = json_string_length(data);
    } else {
        p->raw = p->data_json;
        p->raw_len = p->data_len;
    }
    return 0;
}

int api_pub_from_json(json_t *obj, struct api_pub *p, const struct hub_tenant *t, const char **err)
{
    return pub_from_json(obj, p, t, false, err);
}

/* detail: the backend's own words (struct publish_result), else hub_strerror's and the
 * channel (may be NULL). */
static void publish_error(struct http_ctx *x, int err, const char *detail, const char *channel,
                          size_t len)
{
    if (detail)
        return http_error(x, http_hub_status(err), hub_error_name(err), "%s", detail);
    http_hub_error(x, err, channel, len);
}

static void reply_published(struct http_ctx *x, const struct publish_result *res)
{
    char body[96];
    int n = snprintf(body, sizeof(body), "{\"id\":\"%" PRIu64 "\",\"subscribers\":%u}\n", res->id,
                     res->subscribers);
    http_respond(x, 201, "application/json", NULL, body, (size_t)n);
}

/* One publish waiting for its answer (inline in memory mode). */
struct pub_op {
    struct http_async a;
    char name[CHANNEL_KEY_MAX + 1];
    size_t name_len;
};

static void pub_done(void *arg, int err, const struct publish_result *res)
{
    struct pub_op *op = arg;
    struct http_ctx *x = http_async_ctx(&op->a);
    if (x && err)
        publish_error(x, err, res->detail, op->name, op->name_len);
    else if (x)
        reply_published(x, res);
    if (http_async_finish(&op->a))
        free(op);
}

/* POST /pub/{channel}: the raw body, kept as JSON when it is JSON. */
static void handle_pub(struct http_ctx *x, const char *name, size_t name_len)
{
    struct hub *hub = &conn_server(x->c)->hub;
    if (!hub_channel_name_valid(name, name_len))
        return http_error(x, 400, "bad_channel",
                          "channel names are 1-128 bytes of letters, digits and _ . : @ / -");
    const char *ev = NULL;
    size_t ev_len = 0;
    const struct http_header *eh = http_find_header(x->req, "Herald-Event");
    if (eh) {
        ev = eh->value;
        ev_len = eh->value_len;
    } else if (!http_query_param(x->req->query, x->req->query_len, "event", &ev, &ev_len)) {
        ev = NULL;
    }
    if (ev && !hub_event_name_valid(ev, ev_len))
        return http_error(x, 400, "bad_event", "event names are 1-64 letters, digits or _ . : -");
    if (!app_may_publish(x, x->body_len))
        return;
    struct publish_req req = {
        .raw = {x->body, (uint32_t)x->body_len}, .event = ev, .event_len = ev_len};
    struct sbuf data = {0};
    if (is_json_type(x->req)) {
        json_error_t jerr;
        json_t *doc = json_loadb(x->body, x->body_len, JSON_DECODE_ANY, &jerr);
        if (!doc)
            return http_error(x, 400, "bad_json",
                              "the body is sent as application/json but is not JSON: %s (line "
                              "%d, column %d)",
                              jerr.text, jerr.line, jerr.column);
        json_decref(doc);
        sbuf_reserve(&data, x->body_len + 1);
        data.len = json_strip_ws(data.data, x->body, x->body_len);
    } else if (utf8_valid(x->body, x->body_len)) {
        req.kind = PUB_TEXT;
        sbuf_add_json_str(&data, x->body, x->body_len);
    } else {
        req.kind = PUB_BINARY;
        /* Binary bodies travel as base64 so nothing the publisher sent is lost. */
        sbuf_reserve(&data, 4 * ((x->body_len + 2) / 3) + 3);
        data.data[0] = '"';
        int n = EVP_EncodeBlock((unsigned char *)data.data + 1, (const unsigned char *)x->body,
                                (int)x->body_len);
        data.data[n + 1] = '"';
        data.len = (size_t)n + 2;
        req.base64 = true;
        req.raw = (struct slice){data.data + 1, (uint32_t)n};
    }
    req.data_json =
        (struct slice){data.data ? data.data : "\"\"", (uint32_t)(data.data ? data.len : 2)};
    struct pub_op *op = xmalloc(sizeof(*op));
    op->name_len = chan_key_make(op->name, x->tenant, name, name_len);
    struct slice ch = {op->name, (uint32_t)op->name_len};
    http_async_begin(&op->a, x);
    hub_publish_async(hub, x->c->w->id, &ch, 1, &req, pub_done, op);
    http_async_started(&op->a);
    if (op->a.done && !op->a.deferred)
        free(op);
    sbuf_free(&data);
}

/*
 * POST /api/publish: one message or a batch, published in order, one after the
 * other. In memory mode each publish completes inline: batch_next loops over them
 * (batch_done only records while the loop runs), so a batch costs no stack depth.
 */
struct batch_op {
    struct http_async a;
    json_t *doc;
    struct api_pub *pubs;
    size_t n, next;
    bool batch;
    bool running;  /* batch_next's loop is on the stack */
    bool answered; /* a single message failed and was answered */
    struct sbuf out;
    struct hub_tenant *tenant; /* its app (a reference), NULL: the default app */
};

static void batch_next(struct batch_op *op);

static void batch_free(struct batch_op *op)
{
    for (size_t i = 0; i < op->n; i++)
        api_pub_free(&op->pubs[i]);
    free(op->pubs);
    json_decref(op->doc);
    sbuf_free(&op->out);
    hub_tenant_put(op->tenant);
    free(op);
}

/* The app's plan refused message op->next: answered (single) or recorded (batch). */
static void batch_refused(struct batch_op *op, int status, const char *limit, const char *detail)
{
    api_pub_free(&op->pubs[op->next]);
    if (!op->batch) {
        struct http_ctx *x = http_async_ctx(&op->a);
        if (x)
            http_limit_error(x, status, limit, "%s", detail);
        op->answered = true;
    } else {
        if (op->next)
            sbuf_add(&op->out, ",", 1);
        sbuf_printf(&op->out, "{\"error\":\"limit_exceeded\",\"limit\":\"%s\",\"detail\":", limit);
        sbuf_add_json_str(&op->out, detail, strlen(detail));
        sbuf_add(&op->out, "}", 1);
    }
    op->next++;
}

static void batch_done(void *arg, int err, const struct publish_result *res)
{
    struct batch_op *op = arg;
    api_pub_free(&op->pubs[op->next]);
    if (!op->batch && err) {
        struct http_ctx *x = http_async_ctx(&op->a);
        if (x)
            publish_error(x, err, res->detail, NULL, 0);
        op->answered = true;
    } else {
        if (op->next)
            sbuf_add(&op->out, ",", 1);
        if (err) {
            sbuf_printf(&op->out, "{\"error\":\"%s\",\"detail\":", hub_error_name(err));
            const char *d = res->detail ? res->detail : hub_strerror(err);
            sbuf_add_json_str(&op->out, d, strlen(d));
            sbuf_add(&op->out, "}", 1);
        } else {
            sbuf_printf(&op->out, "{\"id\":\"%" PRIu64 "\",\"subscribers\":%u}", res->id,
                        res->subscribers);
        }
    }
    op->next++;
    if (!op->running)
        batch_next(op); /* it completed later, on the worker: go on from here */
}

static void batch_next(struct batch_op *op)
{
    op->running = true;
    while (op->next < op->n && !op->answered) {
        size_t started = op->next;
        struct api_pub *p = &op->pubs[op->next];
        const char *limit;
        char detail[200];
        int refused =
            api_app_publish_check(op->tenant, p->data_len, &limit, detail, sizeof(detail));
        if (refused) {
            batch_refused(op, refused, limit, detail);
            continue;
        }
        struct publish_req req = {
            .kind = p->text ? PUB_TEXT : PUB_JSON,
            .data_json = {p->data_json, (uint32_t)p->data_len},
            .raw = {p->raw, (uint32_t)p->raw_len},
            .event = p->event,
            .event_len = p->event_len,
        };
        struct conn *c = op->a.inline_x ? op->a.inline_x->c : op->a.c;
        hub_publish_async(&conn_server(c)->hub, c->w->id, p->channels, p->n, &req, batch_done, op);
        if (op->next == started) {
            op->running = false; /* batch_done goes on when it completes */
            return;
        }
    }
    op->running = false;
    /* A failed single message was answered in batch_done, which took the context. */
    struct http_ctx *x = op->answered ? NULL : http_async_ctx(&op->a);
    if (x) {
        sbuf_adds(&op->out, op->batch ? "]}\n" : "\n");
        http_respond(x, 201, "application/json", NULL, op->out.data, op->out.len);
    }
    if (http_async_finish(&op->a))
        batch_free(op);
}

static void handle_api_publish(struct http_ctx *x)
{
    json_error_t jerr;
    json_t *doc = json_loadb(x->body, x->body_len, 0, &jerr);
    if (!doc)
        return http_error(x, 400, "bad_json", "the body is not a JSON object: %s (line %d)",
                          jerr.text, jerr.line);
    json_t *msgs = json_object_get(doc, "messages");
    bool batch = json_is_array(msgs);
    size_t n = batch ? json_array_size(msgs) : 1;
    if (batch && (n == 0 || n > 1000)) {
        json_decref(doc);
        return http_error(x, 400, "bad_batch", "\"messages\" holds 1 to 1000 messages");
    }
    struct batch_op *op = xcalloc(1, sizeof(*op));
    op->doc = doc;
    op->n = n;
    op->batch = batch;
    op->pubs = xcalloc(n, sizeof(*op->pubs));
    if ((op->tenant = x->tenant))
        hub_tenant_get(op->tenant);
    const char *err = NULL;
    size_t bad = 0;
    for (size_t i = 0; i < n && !err; i++)
        if (pub_from_json(batch ? json_array_get(msgs, i) : doc, &op->pubs[i], x->tenant, true,
                          &err))
            bad = i;
    if (err) {
        if (batch)
            http_error(x, 400, "bad_message", "messages[%zu]: %s (nothing was published)", bad,
                       err);
        else
            http_error(x, 400, "bad_message", "%s", err);
        batch_free(op);
        return;
    }
    sbuf_adds(&op->out, batch ? "{\"results\":[" : "");
    http_async_begin(&op->a, x);
    batch_next(op);
    http_async_started(&op->a);
    if (op->a.done && !op->a.deferred)
        batch_free(op);
}

/* ---- channels --------------------------------------------------------------- */

static void info_json(struct sbuf *b, const struct channel_info *i)
{
    sbuf_adds(b, "{\"name\":");
    sbuf_add_json_str(b, i->name, strlen(i->name));
    sbuf_printf(b,
                ",\"persistent\":%s,\"ttl\":%u,\"history_size\":%u,\"history_ttl\":%u,"
                "\"subscribers\":%u,\"messages\":%u,\"bytes\":%" PRIu64
                ",\"messages_total\":%" PRIu64,
                i->persistent ? "true" : "false", i->ttl_ms / 1000, i->history_size,
                i->history_ttl_ms / 1000, i->subscribers, i->messages_retained, i->retained_bytes,
                i->messages_total);
    sbuf_printf(b, ",\"batch_ms\":%u,\"conflate\":\"%s\",\"presence\":%s", i->batch_ms,
                i->conflate ? "latest" : "none", i->presence ? "true" : "false");
    if (i->last_id)
        sbuf_printf(b, ",\"last_id\":\"%" PRIu64 "\"", i->last_id);
    else
        sbuf_adds(b, ",\"last_id\":null");
    if (i->oldest_id)
        sbuf_printf(b, ",\"oldest_id\":\"%" PRIu64 "\"", i->oldest_id);
    else
        sbuf_adds(b, ",\"oldest_id\":null");
    sbuf_printf(b, ",\"created\":%" PRIu64 ",\"last_active\":%" PRIu64, i->created_ms,
                i->last_active_ms);
    if (i->expires_ms)
        sbuf_printf(b, ",\"expires\":%" PRIu64 "}", i->expires_ms);
    else
        sbuf_adds(b, ",\"expires\":null}");
}

static void respond_info(struct http_ctx *x, int status, const struct channel_info *info)
{
    struct sbuf b = {0};
    info_json(&b, info);
    sbuf_add(&b, "\n", 1);
    http_respond(x, status, "application/json", NULL, b.data, b.len);
    sbuf_free(&b);
}

/* A channel operation waiting for its answer (inline in memory mode). */
enum chan_kind { CHAN_PUT, CHAN_GET, CHAN_DELETE };
struct chan_op {
    struct http_async a;
    enum chan_kind kind;
    char name[CHANNEL_KEY_MAX + 1];
};

static struct chan_op *chan_op_new(struct http_ctx *x, const char *name, size_t len,
                                   enum chan_kind kind)
{
    struct chan_op *op = xcalloc(1, sizeof(*op));
    http_async_begin(&op->a, x);
    op->kind = kind;
    memcpy(op->name, name, MIN(len, (size_t)CHANNEL_KEY_MAX));
    return op;
}

static void chan_op_started(struct chan_op *op)
{
    http_async_started(&op->a);
    if (op->a.done && !op->a.deferred)
        free(op);
}

static void chan_done(void *arg, int err, const struct channel_info *info, bool created)
{
    struct chan_op *op = arg;
    struct http_ctx *x = http_async_ctx(&op->a);
    struct slice nm = chan_key_name(op->name, strlen(op->name)); /* what the client named */
    if (!x) {
        /* the client went away */
    } else if (err == HUB_ERR_NOT_FOUND) {
        http_error(x, 404, "channel_not_found", "no channel %.*s", (int)nm.len, nm.data);
    } else if (err) {
        publish_error(x, err, NULL, NULL, 0);
    } else if (op->kind == CHAN_DELETE) {
        struct sbuf b = {0};
        sbuf_adds(&b, "{\"deleted\":");
        sbuf_add_json_str(&b, nm.data, nm.len);
        sbuf_adds(&b, "}\n");
        http_respond(x, 200, "application/json", NULL, b.data, b.len);
        sbuf_free(&b);
    } else {
        respond_info(x, created ? 201 : 200, info);
    }
    if (http_async_finish(&op->a))
        free(op);
}

/* Reads a non-negative integer option (seconds or a count) into *out. */
static int opt_uint(json_t *doc, const char *key, uint64_t min, uint64_t max, bool *has,
                    uint64_t *out, struct http_ctx *x)
{
    json_t *v = json_object_get(doc, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)min ||
        (uint64_t)json_integer_value(v) > max) {
        http_error(x, 400, "bad_option", "\"%s\" is a whole number from %" PRIu64 " to %" PRIu64,
                   key, min, max);
        return -1;
    }
    *has = true;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* Reads a boolean option into *out. Returns 0, or -1 when it answered 400. */
static int opt_bool(json_t *doc, const char *key, bool *has, bool *out, struct http_ctx *x)
{
    json_t *v = json_object_get(doc, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v)) {
        http_error(x, 400, "bad_option", "\"%s\" is true or false", key);
        return -1;
    }
    *has = true;
    *out = json_is_true(v);
    return 0;
}

#define CHANNEL_OPTIONS "ttl, persistent, history_size, history_ttl, batch_ms, conflate, presence"

/* Reads the delivery-window options (hub/batch.h) into o. Returns 0, or -1 when it
 * answered 400. */
static int window_opts(json_t *doc, struct channel_opts *o, struct http_ctx *x)
{
    uint64_t bms = 0;
    if (opt_uint(doc, "batch_ms", 0, BATCH_MS_MAX, &o->has_batch_ms, &bms, x))
        return -1;
    o->batch_ms = (uint32_t)bms;
    json_t *c = json_object_get(doc, "conflate");
    if (!c)
        return 0;
    const char *v = json_is_string(c) ? json_string_value(c) : "";
    if (strcmp(v, "latest") && strcmp(v, "none")) {
        http_error(x, 400, "bad_option", "\"conflate\" is \"latest\" or \"none\"");
        return -1;
    }
    o->has_conflate = true;
    o->conflate = !strcmp(v, "latest");
    if (o->conflate && (!o->has_batch_ms || !o->batch_ms)) {
        http_error(x, 400, "bad_option",
                   "\"conflate\": \"latest\" keeps the newest message of each delivery window: "
                   "give the window in the same request (\"batch_ms\": 1 to %u)",
                   BATCH_MS_MAX);
        return -1;
    }
    return 0;
}

static void handle_channel_put(struct http_ctx *x, const char *name, size_t len)
{
    struct channel_opts o = {0};
    json_t *doc = NULL;
    if (x->body_len) {
        json_error_t jerr;
        doc = json_loadb(x->body, x->body_len, 0, &jerr);
        if (!doc)
            return http_error(x, 400, "bad_json",
                              "the body is not JSON: %s (line %d, column %d); send a JSON object "
                              "of options: " CHANNEL_OPTIONS,
                              jerr.text, jerr.line, jerr.column);
        if (!json_is_object(doc)) {
            json_decref(doc);
            return http_error(x, 400, "bad_json",
                              "the body is a JSON object of options: " CHANNEL_OPTIONS);
        }
        uint64_t ttl = 0, hs = 0, ht = 0;
        if (opt_uint(doc, "ttl", 0, 30u * 86400, &o.has_ttl, &ttl, x) ||
            opt_uint(doc, "history_size", 1, 1000000, &o.has_history_size, &hs, x) ||
            opt_uint(doc, "history_ttl", 0, 30u * 86400, &o.has_history_ttl, &ht, x) ||
            window_opts(doc, &o, x)) {
            json_decref(doc);
            return;
        }
        o.ttl_ms = (uint32_t)(ttl * 1000);
        o.history_size = (uint32_t)hs;
        o.history_ttl_ms = (uint32_t)(ht * 1000);
        if (opt_bool(doc, "persistent", &o.has_persistent, &o.persistent, x) ||
            opt_bool(doc, "presence", &o.has_presence, &o.presence, x)) {
            json_decref(doc);
            return;
        }
        const char *key;
        json_t *val;
        json_object_foreach(doc, key, val)
        {
            if (strcmp(key, "ttl") && strcmp(key, "persistent") && strcmp(key, "history_size") &&
                strcmp(key, "history_ttl") && strcmp(key, "batch_ms") && strcmp(key, "conflate") &&
                strcmp(key, "presence")) {
                http_error(x, 400, "bad_option",
                           "unknown option \"%s\" (known: " CHANNEL_OPTIONS ")", key);
                json_decref(doc);
                return;
            }
        }
        json_decref(doc);
    }
    struct chan_op *op = chan_op_new(x, name, len, CHAN_PUT);
    hub_channel_put_async(&conn_server(x->c)->hub, x->c->w->id, name, len, &o, chan_done, op);
    chan_op_started(op);
}

/* Reads a percent-encoded name parameter into out[CHANNEL_NAME_MAX + 1] (NUL-terminated;
 * *len 0 when absent). Returns 0, or -1 when it is malformed or too long. */
static int query_name(const struct http_request *r, const char *param, char *out, size_t *len)
{
    const char *v;
    size_t vl;
    *len = 0;
    out[0] = '\0';
    if (!http_query_param(r->query, r->query_len, param, &v, &vl))
        return 0;
    char tmp[CHANNEL_NAME_MAX * 3];
    long n = vl <= sizeof(tmp) ? http_url_decode(tmp, v, vl) : -1;
    if (n < 0 || n > CHANNEL_NAME_MAX)
        return -1;
    memcpy(out, tmp, (size_t)n);
    out[n] = '\0';
    *len = (size_t)n;
    return 0;
}

struct list_op {
    struct http_async a;
    size_t limit;
};

static void list_done(void *arg, int err, const struct channel_info *infos, size_t n, size_t total)
{
    struct list_op *op = arg;
    struct http_ctx *x = http_async_ctx(&op->a);
    if (x && err) {
        publish_error(x, err, NULL, NULL, 0);
    } else if (x) {
        struct sbuf b = {0};
        sbuf_adds(&b, "{\"channels\":[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                sbuf_add(&b, ",", 1);
            info_json(&b, &infos[i]);
        }
        sbuf_printf(&b, "],\"total\":%zu,\"next\":", total);
        if (n == op->limit && n)
            sbuf_add_json_str(&b, infos[n - 1].name, strlen(infos[n - 1].name));
        else
            sbuf_adds(&b, "null");
        sbuf_adds(&b, "}\n");
        http_respond(x, 200, "application/json", NULL, b.data, b.len);
        sbuf_free(&b);
    }
    if (http_async_finish(&op->a))
        free(op);
}

static void handle_channel_list(struct http_ctx *x)
{
    const char *v, *after = "", *prefix = NULL;
    size_t vl, after_len = 0;
    size_t limit = 100;
    char prefix_buf[CHANNEL_NAME_MAX + 1], after_buf[CHANNEL_NAME_MAX + 1];
    char prefix_key[CHANNEL_KEY_MAX + 1], after_key[CHANNEL_KEY_MAX + 1];
    const struct http_request *r = x->req;
    if (http_query_param(r->query, r->query_len, "limit", &v, &vl)) {
        uint64_t l;
        if (hub_cursor_parse(v, vl, &l) < 0 || l < 1 || l > 1000)
            return http_error(x, 400, "bad_limit", "limit is 1 to 1000");
        limit = (size_t)l;
    }
    if (query_name(r, "after", after_buf, &after_len) < 0 ||
        (after_len && !hub_channel_name_valid(after_buf, after_len)))
        return http_error(x, 400, "bad_after", "after is a channel name");
    if (after_len) /* a name of this app: its key */
        after_len = chan_key_make(after_key, x->tenant, after_buf, after_len), after = after_key;
    size_t prefix_len = 0;
    /* Only the bytes of names: a prefix never reaches into another app's namespace. */
    if (query_name(r, "prefix", prefix_buf, &prefix_len) < 0 ||
        (prefix_len && !hub_channel_name_valid(prefix_buf, prefix_len)))
        return http_error(x, 400, "bad_prefix", "prefix is the start of a channel name");
    if (prefix_len || x->tenant) /* an app lists its own namespace */
        chan_key_make(prefix_key, x->tenant, prefix_buf, prefix_len), prefix = prefix_key;
    struct list_op *op = xcalloc(1, sizeof(*op));
    op->limit = limit;
    http_async_begin(&op->a, x);
    hub_channel_list_async(&conn_server(x->c)->hub, x->c->w->id, after, after_len, prefix, limit,
                           list_done, op);
    http_async_started(&op->a);
    if (op->a.done && !op->a.deferred)
        free(op);
}

/* ---- presence (docs/interactive.md#presence) ---------------------------------- */

struct presence_op {
    struct http_async a;
    char name[CHANNEL_KEY_MAX + 1];
    size_t limit, after_len;
    char after[PRESENCE_USER_MAX];
};

/* Orders a's user against b[0..bl): bytes, then length. */
static int cmp_user(const struct presence_list *l, const struct presence_entry *a, const char *b,
                    size_t bl)
{
    int c = memcmp(l->text.data + a->user_off, b, MIN((size_t)a->user_len, bl));
    return c ? c : (a->user_len > bl) - (a->user_len < bl);
}

static int cmp_entries(const void *a, const void *b, void *list)
{
    const struct presence_list *l = list;
    const struct presence_entry *y = b;
    return cmp_user(l, a, l->text.data + y->user_off, y->user_len);
}

static void presence_json(struct sbuf *b, struct presence_op *op, struct presence_list *l)
{
    /* Sorted by user so that pages follow each other (?after= the last one's user). */
    if (l->n > 1)
        qsort_r(l->v, l->n, sizeof(*l->v), cmp_entries, l);
    size_t i = 0;
    while (i < l->n && op->after_len && cmp_user(l, &l->v[i], op->after, op->after_len) <= 0)
        i++;
    struct slice nm = chan_key_name(op->name, strlen(op->name));
    sbuf_adds(b, "{\"channel\":");
    sbuf_add_json_str(b, nm.data, nm.len);
    sbuf_adds(b, ",\"users\":[");
    size_t end = MIN(l->n, i + op->limit);
    for (size_t k = i; k < end; k++) {
        const struct presence_entry *e = &l->v[k];
        sbuf_adds(b, k > i ? ",{\"user\":" : "{\"user\":");
        sbuf_add_json_str(b, l->text.data + e->user_off, e->user_len);
        sbuf_printf(b, ",\"connections\":%u", e->conns);
        if (e->info_len) {
            sbuf_adds(b, ",\"info\":");
            sbuf_add(b, l->text.data + e->info_off, e->info_len);
        }
        sbuf_adds(b, "}");
    }
    sbuf_printf(b,
                "],\"total_users\":%zu,\"connections\":%" PRIu64 ",\"anonymous\":%" PRIu64
                ",\"unlisted\":%" PRIu64 ",\"next\":",
                l->n, l->connections, l->anonymous, l->unlisted);
    if (end < l->n)
        sbuf_add_json_str(b, l->text.data + l->v[end - 1].user_off, l->v[end - 1].user_len);
    else
        sbuf_adds(b, "null");
    sbuf_adds(b, "}\n");
}

static void presence_done(void *arg, int err, struct presence_list *l)
{
    struct presence_op *op = arg;
    struct http_ctx *x = http_async_ctx(&op->a);
    if (x && err == HUB_ERR_NOT_FOUND) {
        struct slice nm = chan_key_name(op->name, strlen(op->name));
        http_error(x, 404, "channel_not_found", "no channel %.*s", (int)nm.len, nm.data);
    } else if (x && err) {
        http_hub_error(x, err, op->name, strlen(op->name));
    } else if (x) {
        struct sbuf b = {0};
        presence_json(&b, op, l);
        http_respond(x, 200, "application/json", NULL, b.data, b.len);
        sbuf_free(&b);
    }
    if (http_async_finish(&op->a))
        free(op);
}

/* GET /api/channels/{name}/presence[?limit=N&after=USER] of the channel key[0..len). */
static void handle_presence(struct http_ctx *x, const char *key, size_t len)
{
    const struct http_request *r = x->req;
    const char *v;
    size_t vl;
    uint64_t limit = 100;
    if (http_query_param(r->query, r->query_len, "limit", &v, &vl) &&
        (hub_cursor_parse(v, vl, &limit) < 0 || limit < 1 || limit > 1000))
        return http_error(x, 400, "bad_limit", "limit is 1 to 1000 (users per page)");
    char after[PRESENCE_USER_MAX * 3];
    long alen = 0;
    if (http_query_param(r->query, r->query_len, "after", &v, &vl)) {
        alen = vl <= sizeof(after) ? http_url_decode(after, v, vl) : -1;
        if (alen < 0 || alen > PRESENCE_USER_MAX)
            return http_error(x, 400, "bad_after",
                              "after is a user id (up to 256 bytes, percent-encoded): the "
                              "\"next\" of the page before");
    }
    struct presence_op *op = xcalloc(1, sizeof(*op));
    op->limit = (size_t)limit;
    memcpy(op->after, after, (size_t)alen);
    op->after_len = (size_t)alen;
    memcpy(op->name, key, MIN(len, (size_t)CHANNEL_KEY_MAX));
    http_async_begin(&op->a, x);
    hub_presence_get_async(&conn_server(x->c)->hub, x->c->w->id, key, len, presence_done, op);
    http_async_started(&op->a);
    if (op->a.done && !op->a.deferred)
        free(op);
}

static void handle_channel(struct http_ctx *x, const char *raw, size_t raw_len)
{
    static const char presence[] = "/presence";
    size_t pl = sizeof(presence) - 1;
    /* GET {name}/presence is the channel's presence; a channel whose name ends so is
     * named with its slash encoded (%2F). */
    bool get = x->req->method_id == HTTP_M_GET || x->req->method_id == HTTP_M_HEAD;
    bool of_presence = get && raw_len > pl && memcmp(raw + raw_len - pl, presence, pl) == 0;
    if (of_presence)
        raw_len -= pl;
    char name[CHANNEL_NAME_MAX * 3];
    long n = raw_len <= sizeof(name) ? http_url_decode(name, raw, raw_len) : -1;
    if (n < 0 || !hub_channel_name_valid(name, (size_t)n))
        return http_error(x, 400, "bad_channel",
                          "channel names are 1-128 bytes of letters, digits and _ . : @ / -");
    struct hub *hub = &conn_server(x->c)->hub;
    int w = x->c->w->id;
    char key[CHANNEL_KEY_MAX + 1];
    size_t kl = chan_key_make(key, x->tenant, name, (size_t)n);
    if (of_presence)
        return handle_presence(x, key, kl);
    struct chan_op *op;
    switch (x->req->method_id) {
    case HTTP_M_PUT: return handle_channel_put(x, key, kl);
    case HTTP_M_GET:
    case HTTP_M_HEAD:
        op = chan_op_new(x, key, kl, CHAN_GET);
        hub_channel_get_async(hub, w, key, kl, chan_done, op);
        return chan_op_started(op);
    case HTTP_M_DELETE:
        op = chan_op_new(x, key, kl, CHAN_DELETE);
        hub_channel_delete_async(hub, w, key, kl, chan_done, op);
        return chan_op_started(op);
    default: break; /* the router allows GET, HEAD, PUT and DELETE only */
    }
}

/* ---- stats, metrics, health -------------------------------------------------- */

struct totals {
    uint64_t conns[CONN_KINDS], accepted, requests, total;
};

static void sum_workers(struct server *srv, struct totals *t)
{
    memset(t, 0, sizeof(*t));
    node_stats_connections(srv, t->conns, &t->total);
    for (int i = 0; i < srv->nworkers; i++) {
        struct worker_counters *c = &srv->workers[i].ctr;
        t->accepted += atomic_load(&c->accepted);
        t->requests += atomic_load(&c->requests);
    }
}

/* Per-app routes that anyone may use on the default app: an app's need its key. */
static bool app_guard(struct http_ctx *x)
{
    return !x->tenant || app_authorized(x);
}

/* GET /apps/{app}/stats: the app's usage against its plan. */
static void app_stats(struct http_ctx *x)
{
    json_t *o = apps_json(app_of(x->tenant), false);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    struct sbuf b = {0};
    sbuf_adds(&b, text);
    sbuf_add(&b, "\n", 1);
    free(text);
    http_respond(x, 200, "application/json", "Cache-Control: no-cache\r\n", b.data, b.len);
    sbuf_free(&b);
}

/* The node's figures as /stats gives them (with the subscribers of each channel of the
 * default app when per_channel, and every node's figures when nodes). */
static void stats_json(struct server *srv, struct sbuf *b, bool per_channel, bool nodes)
{
    struct hub_stats *s = &srv->hub.stats;
    struct totals t;
    sum_workers(srv, &t);
    size_t nchannels, nephemeral;
    hub_channel_counts(&srv->hub, &nchannels, &nephemeral);
    sbuf_printf(
        b,
        "{\"node\":\"%s\",\"uptime\":%" PRIu64 ",\"workers\":%d,"
        "\"connections\":{\"total\":%" PRIu64 ",\"websocket\":%" PRIu64 ",\"sse\":%" PRIu64
        ",\"longpoll\":%" PRIu64 ",\"stream\":%" PRIu64 ",\"http\":%" PRIu64
        "},\"accepted\":%" PRIu64 ",\"requests\":%" PRIu64
        ",\"channels\":%zu,\"ephemeral_channels\":%zu,\"patterns\":%zu,\"apps\":%zu,\"messages\":{"
        "\"published\":%" PRIu64 ",\"stored\":%" PRIu64 ",\"delivered\":%" PRIu64
        "},\"bytes\":{\"in\":%" PRIu64 ",\"out\":%" PRIu64 "},\"slow_consumers_closed\":%" PRIu64,
        srv->cfg.node_name, (wall_ms() - srv->started_ms) / 1000, srv->nworkers, t.total,
        t.conns[CONN_WS], t.conns[CONN_SSE], t.conns[CONN_POLL], t.conns[CONN_STREAM],
        t.conns[CONN_HTTP], t.accepted, t.requests, nchannels, nephemeral,
        hub_pattern_count(&srv->hub), apps_count(), (uint64_t)atomic_load(&s->published),
        (uint64_t)atomic_load(&s->messages), (uint64_t)atomic_load(&s->delivered),
        (uint64_t)atomic_load(&s->bytes_in), (uint64_t)atomic_load(&s->bytes_out),
        (uint64_t)atomic_load(&s->slow_closed));
    node_stats_latency_json(srv, b);
    if (nodes)
        node_stats_nodes_json(srv, b);
    if (per_channel) {
        size_t total, max = 1000;
        struct channel_info *infos = xmalloc(max * sizeof(*infos));
        size_t n = hub_channel_list(&srv->hub, "", 0, NULL, infos, max, &total);
        sbuf_adds(b, ",\"channel_subscribers\":{");
        for (size_t i = 0; i < n; i++) {
            if (i)
                sbuf_add(b, ",", 1);
            sbuf_add_json_str(b, infos[i].name, strlen(infos[i].name));
            sbuf_printf(b, ":%u", infos[i].subscribers);
        }
        sbuf_add(b, "}", 1);
        free(infos);
    }
    if (srv->tls) {
        struct tls_stats ts;
        tls_stats(&ts);
        sbuf_printf(b,
                    ",\"tls\":{\"connections\":%" PRIu64 ",\"handshakes\":%" PRIu64
                    ",\"resumed\":%" PRIu64 ",\"failed\":%" PRIu64 "}",
                    ts.connections, ts.handshakes, ts.resumed, ts.failed);
    }
    if (srv->hub.be_ops && srv->hub.be_ops->stats_json)
        srv->hub.be_ops->stats_json(srv->hub.be, b);
    sbuf_add(b, ",", 1);
    hooks_stats_json(b);
    sbuf_adds(b, "}");
}

/* Whether the query turns option `name` on: name=1 (any value but empty or 0). */
static bool query_on(const struct http_ctx *x, const char *name)
{
    const char *v;
    size_t vl;
    return http_query_param(x->req->query, x->req->query_len, name, &v, &vl) && vl &&
           !(vl == 1 && *v == '0');
}

static void handle_stats(struct http_ctx *x)
{
    if (x->tenant)
        return app_stats(x);
    /* Channel names and per-channel figures are admin data: the channel API's credentials. */
    bool per_channel = query_on(x, "channels");
    if (per_channel && !api_guard(x))
        return;
    bool nodes = query_on(x, "nodes");
    struct sbuf b = {0};
    stats_json(conn_server(x->c), &b, per_channel, nodes);
    sbuf_adds(&b, "\n");
    http_respond(x, 200, "application/json", "Cache-Control: no-cache\r\n", b.data, b.len);
    sbuf_free(&b);
}

/* ---- GET /stats/stream: the figures once a second, as Server-Sent Events ----------------
 *
 * For dashboards (the admin UI) and `curl -N`: each event is /stats's object with
 * "time" (wall ms) added, so a reader computes rates from two of them. The stream is
 * on the API listener, behind the API's credentials (a browser sends them with fetch()
 * and a header, never in the URL). The connection does nothing else: what it sends
 * is dropped, and it ends at shutdown or when it cannot keep up. */

#define STATS_STREAM_MS 1000

/* An app's stream (/apps/{app}/stats/stream) holds its app: the app's usage, not the
 * node's figures. */
struct stats_stream {
    struct hub_tenant *tenant; /* a reference; NULL: the node's */
};
CONN_PROTO_FITS(struct stats_stream);

static void stats_stream_tick(struct conn *c)
{
    struct sbuf b = {0};
    sbuf_adds(&b, "data: ");
    struct hub_tenant *t = CONN_PROTO(c, struct stats_stream)->tenant;
    if (t) {
        json_t *o = apps_json(app_of(t), false);
        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        sbuf_adds(&b, text);
        free(text);
    } else {
        stats_json(conn_server(c), &b, false, true);
    }
    b.len--; /* reopen the object for "time" */
    sbuf_printf(&b, ",\"time\":%" PRIu64 "}\n\n", wall_ms());
    conn_send_copy(c, b.data, b.len);
    sbuf_free(&b);
    conn_timer_start(c, STATS_STREAM_MS);
}

static void stats_stream_free(struct conn *c)
{
    hub_tenant_put(CONN_PROTO(c, struct stats_stream)->tenant);
}

static const struct conn_ops stats_stream_ops = {
    .kind = CONN_STREAM,
    .on_timer = stats_stream_tick,
    .on_free = stats_stream_free,
};

static void handle_stats_stream(struct http_ctx *x)
{
    struct conn *c = x->c;
    if (x->req->method_id == HTTP_M_HEAD)
        return http_respond(x, 200, "text/event-stream; charset=utf-8", NULL, "", 0);
    struct sbuf b = {0};
    http_head(x, &b, 200, "text/event-stream; charset=utf-8");
    sbuf_adds(&b, "Cache-Control: no-cache, no-store\r\nX-Accel-Buffering: no\r\n"
                  "Connection: keep-alive\r\n\r\nretry: 3000\n\n");
    conn_set_ops(c, &stats_stream_ops);
    if (x->tenant) {
        hub_tenant_get(x->tenant);
        CONN_PROTO(c, struct stats_stream)->tenant = x->tenant;
    }
    conn_send_copy(c, b.data, b.len);
    sbuf_free(&b);
    stats_stream_tick(c); /* the first figures at once */
}

static void metric(struct sbuf *b, const char *name, const char *type, const char *help, uint64_t v)
{
    sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name, type, name, v);
}

/* Per-app series, label app: at most METRICS_MAX_APPS apps (the cardinality a scraper
 * takes), the first by name; herald_apps counts them all. */
#define METRICS_MAX_APPS 500

static void app_metrics(struct sbuf *b)
{
    json_t *arr = apps_list();
    size_t n = json_array_size(arr);
    metric(b, "herald_apps", "gauge", "Apps (tenants) on this server.", n);
    n = MIN(n, (size_t)METRICS_MAX_APPS);
    static const struct {
        const char *name, *field, *type, *help;
    } series[] = {
        {"herald_app_connections", "connections", "gauge", "Subscriber connections of the app."},
        {"herald_app_channels", "channels", "gauge", "Channels of the app in memory."},
        {"herald_app_publishes_total", "publishes", "counter",
         "Publishes the app's plan let through."},
        {"herald_app_messages_total", "messages", "counter", "Messages stored for the app."},
        {"herald_app_publishes_refused_total", "publishes_refused", "counter",
         "Publishes refused by the app's publish rate."},
        {"herald_app_connections_refused_total", "connections_refused", "counter",
         "Subscriber connections refused by the app's plan."},
    };
    for (size_t s = 0; s < ARRAY_LEN(series) && n; s++) {
        sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", series[s].name, series[s].help,
                    series[s].name, series[s].type);
        for (size_t i = 0; i < n; i++) {
            json_t *a = json_array_get(arr, i);
            json_t *usage = json_object_get(a, "usage");
            sbuf_printf(b, "%s{app=\"%s\"} %" PRIu64 "\n", series[s].name,
                        json_string_value(json_object_get(a, "name")),
                        (uint64_t)json_integer_value(json_object_get(usage, series[s].field)));
        }
    }
    json_decref(arr);
}

static void handle_metrics(struct http_ctx *x)
{
    struct server *srv = conn_server(x->c);
    struct hub_stats *s = &srv->hub.stats;
    struct totals t;
    sum_workers(srv, &t);
    static const char *kinds[CONN_KINDS] = {"http", "websocket", "sse", "longpoll", "stream"};
    struct sbuf b = {0};
    sbuf_adds(&b, "# HELP herald_connections Open client connections by transport.\n"
                  "# TYPE herald_connections gauge\n");
    for (int k = 0; k < CONN_KINDS; k++)
        sbuf_printf(&b, "herald_connections{transport=\"%s\"} %" PRIu64 "\n", kinds[k], t.conns[k]);
    metric(&b, "herald_connections_accepted_total", "counter", "Connections accepted.", t.accepted);
    metric(&b, "herald_http_requests_total", "counter", "HTTP requests handled.", t.requests);
    size_t nchannels, nephemeral;
    hub_channel_counts(&srv->hub, &nchannels, &nephemeral);
    metric(&b, "herald_channels", "gauge", "Channels in memory.", nchannels);
    metric(&b, "herald_channels_ephemeral", "gauge",
           "Channels that only have subscribers (no message, no PUT); counted in herald_channels.",
           nephemeral);
    metric(&b, "herald_patterns", "gauge", "Distinct patterns subscribers hold (channels=x.*).",
           hub_pattern_count(&srv->hub));
    metric(&b, "herald_publishes_total", "counter", "Accepted publish calls.",
           atomic_load(&s->published));
    metric(&b, "herald_messages_stored_total", "counter", "Messages stored (one per channel).",
           atomic_load(&s->messages));
    metric(&b, "herald_messages_delivered_total", "counter",
           "Messages queued to subscribers (live and from history).", atomic_load(&s->delivered));
    metric(&b, "herald_bytes_received_total", "counter", "Bytes read from clients.",
           atomic_load(&s->bytes_in));
    metric(&b, "herald_bytes_sent_total", "counter", "Bytes written to clients.",
           atomic_load(&s->bytes_out));
    metric(&b, "herald_slow_consumers_closed_total", "counter",
           "Subscribers closed because their outbound queue passed --max-outbound.",
           atomic_load(&s->slow_closed));
    metric(&b, "herald_uptime_seconds", "gauge", "Seconds since start.",
           (wall_ms() - srv->started_ms) / 1000);
    metric(&b, "herald_workers", "gauge", "Worker threads.", (uint64_t)srv->nworkers);
    node_stats_metrics(srv, &b);
    if (srv->tls) {
        struct tls_stats ts;
        tls_stats(&ts);
        metric(&b, "herald_tls_connections", "gauge", "Open TLS connections.", ts.connections);
        metric(&b, "herald_tls_handshakes_total", "counter", "Completed TLS handshakes.",
               ts.handshakes);
        metric(&b, "herald_tls_sessions_resumed_total", "counter",
               "TLS handshakes that resumed a session.", ts.resumed);
        metric(&b, "herald_tls_handshakes_failed_total", "counter",
               "TLS connections that ended before their handshake completed.", ts.failed);
    }
    hooks_metrics(&b);
    /* Which apps exist and what they do is admin data: the API's credentials (or
     * loopback trust without --publish-key), as for /stats?channels=1. */
    if (api_may_publish(x->req, x->c, NULL))
        app_metrics(&b);
    http_respond(x, 200, "text/plain; version=0.0.4", NULL, b.data, b.len);
    sbuf_free(&b);
}

static void handle_index(struct http_ctx *x)
{
    static const char body[] =
        "{\"service\":\"herald\",\"endpoints\":{"
        "\"subscribe\":[\"GET /ws?channels=a,b\",\"GET /sse?channels=a,b\","
        "\"GET /poll?channels=a,b&since=CURSOR\",\"GET /stream?channels=a,b\"],"
        "\"publish\":[\"POST /pub/{channel}\",\"POST /api/publish\"],"
        "\"channels\":[\"GET /api/channels\",\"PUT|GET|DELETE /api/channels/{name}\",\"GET "
        "/api/channels/{name}/presence\"],"
        "\"observe\":[\"GET /stats\",\"GET /metrics\",\"GET /healthz\"]}}\n";
    http_respond(x, 200, "application/json", NULL, body, sizeof(body) - 1);
}

static void handle_health(struct http_ctx *x)
{
    struct hub *hub = conn_hub(x->c);
    if (atomic_load(&conn_server(x->c)->shutdown))
        return RESPOND_LIT(x, 503, NULL, "{\"status\":\"draining\"}\n");
    if (hub->be_ops && hub->be_ops->ready && !hub->be_ops->ready(hub->be))
        return RESPOND_LIT(x, 503, NULL,
                           "{\"status\":\"degraded\",\"detail\":\"Redis is unreachable: "
                           "publishes are refused until it is back\"}\n");
    RESPOND_LIT(x, 200, NULL, "{\"status\":\"ok\"}\n");
}

/* POST /pub/{channel}: the name is the rest of the path, percent-encoded. */
static void handle_pub_path(struct http_ctx *x)
{
    char name[CHANNEL_NAME_MAX * 3];
    long n = x->tail_len <= sizeof(name) ? http_url_decode(name, x->tail, x->tail_len) : -1;
    if (n < 0)
        return http_error(x, 400, "bad_channel",
                          "channel names are 1-128 bytes of letters, digits and _ . : @ / -");
    handle_pub(x, name, (size_t)n);
}

static void handle_channel_path(struct http_ctx *x)
{
    handle_channel(x, x->tail, x->tail_len);
}

static const struct http_route routes[] = {
    {.path = "/healthz",
     .methods = ROUTE_GET,
     .flags = ROUTE_ANY_LISTENER,
     .handle = handle_health},
    {.path = "/", .methods = ROUTE_GET, .flags = ROUTE_API, .handle = handle_index},
    {.path = "/api", .methods = ROUTE_GET, .flags = ROUTE_API, .handle = handle_index},
    {.path = "/stats",
     .methods = ROUTE_GET,
     .flags = ROUTE_API | ROUTE_APP,
     .guard = app_guard,
     .handle = handle_stats},
    {.path = "/metrics", .methods = ROUTE_GET, .flags = ROUTE_API, .handle = handle_metrics},
    {.path = "/stats/stream",
     .methods = ROUTE_GET,
     .flags = ROUTE_API | ROUTE_APP,
     .guard = api_guard,
     .handle = handle_stats_stream},
    {.path = "/pub/",
     .methods = ROUTE_POST,
     .flags = ROUTE_API | ROUTE_PREFIX | ROUTE_APP,
     .guard = api_guard,
     .handle = handle_pub_path},
    {.path = "/api/publish",
     .methods = ROUTE_POST,
     .flags = ROUTE_API | ROUTE_APP,
     .guard = api_guard,
     .handle = handle_api_publish},
    {.path = "/api/channels",
     .methods = ROUTE_GET,
     .flags = ROUTE_API | ROUTE_APP,
     .guard = api_guard,
     .handle = handle_channel_list},
    {.path = "/api/channels/",
     .methods = ROUTE_GET | ROUTE_PUT | ROUTE_DELETE,
     .flags = ROUTE_API | ROUTE_PREFIX | ROUTE_APP,
     .guard = api_guard,
     .handle = handle_channel_path},
};

void api_init(void)
{
    http_routes_add(routes, ARRAY_LEN(routes));
}
