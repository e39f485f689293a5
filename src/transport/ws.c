/*
 * ws: WebSocket subscribers. See ws.h.
 */
#include "transport/ws.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "api/api.h"
#include "auth/auth.h"
#include "core/log.h"
#include "hooks/session.h"
#include "http/router.h"
#include "transport/transport.h"
#include "transport/ws_frame.h"

enum {
    WSF_DEFLATE = CF_PROTO_FIRST,         /* permessage-deflate negotiated */
    WSF_PING_OUT = CF_PROTO_FIRST << 1,   /* a ping went out, its pong is awaited */
    WSF_CLOSE_SENT = CF_PROTO_FIRST << 2, /* our close frame is queued */
    WSF_PUBLISHER = CF_PROTO_FIRST << 3,  /* the upgrade carried publish credentials */
    WSF_FOREIGN = CF_PROTO_FIRST << 4,    /* credentials or loopback, but another origin's page */
    WSF_NO_USER = CF_PROTO_FIRST << 5,    /* user=0: not its user's messages */
};

struct ws_state {
    char *msg;     /* reassembly buffer for fragmented/partial messages */
    char *pending; /* an op waiting for the backend, re-run by ws_on_resume */
    uint32_t msg_len;
    uint32_t pending_len;
    struct ws_utf8 utf8;
    uint8_t frag_opcode; /* opcode of the message being reassembled, 0 if none */
    bool frag_compressed;
    struct sub_auth auth; /* its token and the policy that admitted it */
};
CONN_PROTO_FITS(struct ws_state);

static inline struct ws_state *wstate(struct conn *c)
{
    return CONN_PROTO(c, struct ws_state);
}

static struct sub_auth *ws_auth(struct conn *c)
{
    return &wstate(c)->auth;
}

static const char ws_ping[] = "\x89\x00";
static const struct sub_ops ws_ops;

/* ---- per-worker compression contexts ------------------------------------------- */

struct ws_worker {
    struct ws_deflater *deflater;
    struct ws_inflater *inflater;
};

static pthread_key_t ws_worker_key;
static pthread_once_t ws_worker_once = PTHREAD_ONCE_INIT;

static void ws_worker_free(void *p)
{
    struct ws_worker *w = p;
    ws_deflater_free(w->deflater);
    ws_inflater_free(w->inflater);
    free(w);
}

static void ws_worker_key_init(void)
{
    pthread_key_create(&ws_worker_key, ws_worker_free);
}

/* The calling worker's contexts, made on first use, freed when its thread ends. */
static struct ws_worker *ws_worker(void)
{
    pthread_once(&ws_worker_once, ws_worker_key_init);
    struct ws_worker *w = pthread_getspecific(ws_worker_key);
    if (!w) {
        w = xcalloc(1, sizeof(*w));
        w->deflater = ws_deflater_new(6);
        w->inflater = ws_inflater_new();
        pthread_setspecific(ws_worker_key, w);
    }
    return w;
}

/* ---- sending ---------------------------------------------------------------- */

/* Queues one unfragmented server frame (a per-connection copy: replies are small). */
static void ws_send_frame(struct conn *c, uint8_t opcode, const void *payload, size_t len)
{
    uint8_t hdr[10];
    size_t hl = ws_frame_header(hdr, opcode, true, false, len);
    char *buf = xmalloc(hl + len);
    memcpy(buf, hdr, hl);
    if (len)
        memcpy(buf + hl, payload, len);
    conn_send_copy(c, buf, hl + len);
    free(buf);
}

static void ws_close_with(struct conn *c, uint16_t code, const char *reason)
{
    hook_session_ending(c, reason);
    if (c->flags & WSF_CLOSE_SENT) {
        conn_close_after_write(c);
        return;
    }
    uint8_t payload[125];
    size_t rl = MIN(strlen(reason), sizeof(payload) - 2);
    payload[0] = (uint8_t)(code >> 8);
    payload[1] = (uint8_t)code;
    memcpy(payload + 2, reason, rl);
    ws_send_frame(c, WS_OP_CLOSE, payload, rl + 2);
    c->flags |= WSF_CLOSE_SENT;
    conn_seal(c); /* RFC 6455 5.5.1: no data after a close frame */
    conn_close_after_write(c);
}

/* Sends a JSON reply: {"event":event, <fields>, "ref":ref}. */
static void ws_reply(struct conn *c, const char *event, const char *fields, json_t *ref)
{
    struct sbuf b = {0};
    sbuf_printf(&b, "{\"event\":\"%s\"", event);
    if (fields && *fields) {
        sbuf_add(&b, ",", 1);
        sbuf_adds(&b, fields);
    }
    if (ref) {
        char *r = json_dumps(ref, JSON_COMPACT | JSON_ENCODE_ANY);
        if (r) {
            sbuf_adds(&b, ",\"ref\":");
            sbuf_adds(&b, r);
            free(r);
        }
    }
    sbuf_add(&b, "}", 1);
    ws_send_frame(c, WS_OP_TEXT, b.data, b.len);
    sbuf_free(&b);
}

/* {"event":"error","error":…,["limit":…,]"detail":…}: limit names the app's plan limit. */
static void ws_reply_error_limit(struct conn *c, const char *error, const char *limit,
                                 const char *detail, json_t *ref)
{
    struct sbuf f = {0};
    sbuf_adds(&f, "\"error\":");
    sbuf_add_json_str(&f, error, strlen(error));
    if (limit) {
        sbuf_adds(&f, ",\"limit\":");
        sbuf_add_json_str(&f, limit, strlen(limit));
    }
    sbuf_adds(&f, ",\"detail\":");
    sbuf_add_json_str(&f, detail, strlen(detail));
    ws_reply(c, "error", f.data, ref);
    sbuf_free(&f);
}

static void ws_reply_error(struct conn *c, const char *error, const char *detail, json_t *ref)
{
    ws_reply_error_limit(c, error, NULL, detail, ref);
}

/* {"event":"error","error":"limit_exceeded","limit":…,"detail":…}: the app's plan. */
static void ws_reply_limit(struct conn *c, const char *limit, const char *detail, json_t *ref)
{
    ws_reply_error_limit(c, "limit_exceeded", limit, detail, ref);
}

/* A hub error as an error event, naming the channel (its name, not its key) when the
 * error is about one, and the plan's limit when it is one. */
static void ws_reply_hub_error(struct conn *c, int e, const struct slice *key, json_t *ref)
{
    const char *limit = hub_error_limit(e);
    if (limit)
        return ws_reply_limit(c, limit, hub_strerror(e), ref);
    char detail[512];
    struct slice nm = key && hub_error_names_channel(e) ? chan_key_name(key->data, key->len)
                                                        : (struct slice){"", 0};
    snprintf(detail, sizeof(detail), "%s%s%.*s", hub_strerror(e), nm.len ? ": " : "", (int)nm.len,
             nm.data);
    ws_reply_error(c, hub_error_name(e), detail, ref);
}

/* The backend refused (or failed to answer) hook ev: an error event with ref, and, for
 * the connect hook (`close`), close code 4403 or 4503 with the reason. */
static void ws_hook_refused(struct conn *c, const struct hook_verdict *v, enum hook_event ev,
                            json_t *ref, bool close)
{
    bool deny = v->state == HV_DENY;
    const char *error = deny ? "hook_denied" : "hook_failed";
    struct sbuf f = {0};
    transport_hook_error(&f, deny, ev, v->detail);
    ws_reply(c, "error", f.data, ref);
    sbuf_free(&f);
    if (!close)
        return;
    /* A close reason is at most 123 bytes of UTF-8: cut between characters. */
    char reason[124];
    size_t n = (size_t)snprintf(reason, sizeof(reason), "%s: %s", error, v->detail);
    if (n >= sizeof(reason)) {
        n = sizeof(reason) - 1;
        while (n && ((unsigned char)reason[n] & 0xC0) == 0x80)
            n--;
        reason[n] = '\0';
    }
    ws_close_with(c, deny ? WS_CLOSE_HOOK_DENIED : WS_CLOSE_HOOK_FAILED, reason);
}

/* ---- handshake ---------------------------------------------------------------- */

static void upgrade_required(struct http_ctx *x, const char *detail)
{
    struct sbuf b = {0};
    sbuf_adds(&b, "{\"error\":\"upgrade_required\",\"detail\":");
    sbuf_add_json_str(&b, detail, strlen(detail));
    sbuf_adds(&b, "}\n");
    http_respond(x, 426, "application/json",
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
                 b.data, b.len);
    sbuf_free(&b);
}

void ws_handle_upgrade(struct http_ctx *x)
{
    struct conn *c = x->c;
    const struct http_request *req = x->req;
    const struct herald_config *cfg = conn_cfg(c);
    if (!req->upgrade_websocket)
        return upgrade_required(x, "this endpoint speaks WebSocket: send 'Upgrade: websocket' "
                                   "and 'Connection: Upgrade'");
    if (req->minor_version != 1)
        return http_error(x, 400, "bad_handshake", "WebSocket needs HTTP/1.1");
    const struct http_header *ver = http_find_header(req, "Sec-WebSocket-Version");
    if (!ver || ver->value_len != 2 || memcmp(ver->value, "13", 2) != 0)
        return upgrade_required(x, "only WebSocket version 13 (RFC 6455) is supported");
    const struct http_header *key = http_find_header(req, "Sec-WebSocket-Key");
    char accept[29];
    if (!key || ws_accept_key(key->value, key->value_len, accept) < 0)
        return http_error(x, 400, "bad_handshake",
                          "Sec-WebSocket-Key must be the base64 of 16 random bytes");
    const struct http_header *origin = http_find_header(req, "Origin");
    char obuf[512];
    const char *origins = http_cors_origins(x, obuf, sizeof(obuf));
    if (origin && !http_origin_in(origins, origin->value, origin->value_len))
        return http_error(x, 403, "origin_not_allowed", "Origin %.*s is not in %s",
                          (int)MIN(origin->value_len, 200u), origin->value,
                          x->tenant ? "the app's cors_origins" : "--cors-origins");

    /* Channels on the URL are optional: a client may subscribe with ops later. */
    struct sub_request r;
    memset(&r, 0, offsetof(struct sub_request, name_buf));
    const char *v, *err = NULL;
    size_t vl;
    bool has_channels = http_query_param(req->query, req->query_len, "channels", &v, &vl) ||
                        http_query_param(req->query, req->query_len, "channel", &v, &vl);
    if (has_channels && transport_parse_channels(&r, x->tenant, v, vl, &err) < 0)
        return http_error(x, 400, "bad_channel", "%s", err);
    if (http_query_param(req->query, req->query_len, "since", &v, &vl) &&
        transport_parse_since(&r, v, vl, &err) < 0)
        return http_error(x, 400, "bad_cursor", "%s", err);
    r.persistent = true;
    r.presence_events = transport_wants_presence(req);
    struct hub_backlog b = {0};
    /* Over its app's plan: upgraded and closed with 4429, which a browser can read. */
    bool full = !transport_bind_app(c, x->tenant);
    has_channels &= !full;
    /* An error is answered before the upgrade, as HTTP (the same statuses as SSE). A
     * token on the upgrade is checked even without channels; none is needed until the
     * client subscribes (it may send {"op":"auth"} first). */
    const struct auth_policy *policy = auth_policy_for(x);
    struct token *tok;
    if (auth_http_admit(x, policy, r.names, has_channels ? r.n : 0, &tok) < 0)
        return;
    r.tok = tok;
    if (!has_channels)
        r.n = 0;
    /* A token with a user: its channel from the start, with or without others. */
    bool want_user = transport_wants_user(req);
    if (!full && want_user && transport_add_user(&r, x->tenant, tok))
        has_channels = true;
    if (has_channels && !transport_cursor_fits(&r, x->tenant, true)) {
        token_put(tok);
        return http_error(x, 400, "bad_cursor", "%s", transport_cursor_mismatch);
    }
    /* The app's connect hook: the handshake waits for it (parked, then run again). A
     * refusal is told after the upgrade, as a close code a browser can read. */
    const struct hook_verdict *refused = NULL;
    if (!full &&
        transport_hook_gate(c, &r, tok, want_user, "websocket", HOOK_CONNECT, &refused) < 0) {
        token_put(tok);
        return;
    }
    has_channels = !refused && r.n > 0; /* the backend may have added channels */
    if (has_channels && transport_http_subscribe(x, &r, &b) < 0) {
        token_put(tok);
        return; /* answered, or parked: the handshake is re-run when the channels are ready */
    }

    char ext[128] = "";
    const struct http_header *exts = http_find_header(req, "Sec-WebSocket-Extensions");
    int bits = 15;
    bool deflate = cfg->ws_deflate && exts &&
                   ws_pmd_negotiate_bits(exts->value, exts->value_len, ext, sizeof(ext), &bits);
    /* Frames are compressed once, with a 15-bit window, for every subscriber: a
     * client that limits our window cannot read them, so it gets plain frames. */
    if (bits < 15)
        deflate = false;
    struct sbuf resp = {0};
    sbuf_printf(&resp,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
                accept);
    if (deflate)
        sbuf_printf(&resp, "Sec-WebSocket-Extensions: %s\r\n", ext);
    sbuf_adds(&resp, "\r\n");
    /* Credentials on the upgrade make a publisher; loopback trust only for a request no
     * other origin's page made (a browser on this host would lend it its position). */
    bool credentials = cfg->ws_publish && api_may_publish(req, c, x->tenant);
    bool publisher = credentials && http_origin_may_use_api(x);
    conn_set_ops(c, &ws_ops.conn);
    c->flags &= ~(uint32_t)CF_TRUSTED;
    if (!want_user)
        c->flags |= WSF_NO_USER;
    if (publisher)
        c->flags |= WSF_PUBLISHER | CF_TRUSTED;
    else if (credentials)
        c->flags |= WSF_FOREIGN;
    if (deflate)
        c->flags |= WSF_DEFLATE;
    conn_send_copy(c, resp.data, resp.len);
    sbuf_free(&resp);
    if (full) {
        char detail[160];
        snprintf(detail, sizeof(detail),
                 "the app has the %u subscriber connections its plan allows (limit: connections)",
                 atomic_load(&x->tenant->max_conns));
        ws_reply_limit(c, "connections", detail, NULL);
        token_put(tok);
        return ws_close_with(c, WS_CLOSE_APP_LIMIT, "limit_exceeded: connections");
    }
    if (refused) {
        token_put(tok);
        return ws_hook_refused(c, refused, HOOK_CONNECT, NULL, true);
    }
    transport_start(c);
    /* A publisher (credentials on the upgrade) may stay without a token; a subscriber
     * gets --header-timeout to authenticate. */
    transport_auth_start(c, policy, tok, !publisher);
    if (c->tenant)
        ws_auth(c)->creds_epoch = atomic_load(&c->tenant->creds_epoch);
    if (has_channels)
        transport_replay(c, &b);
}

/* ---- client ops ------------------------------------------------------------------ */

/* The error event of a refused op: token_missing, token_expired, channel_forbidden or
 * pattern_forbidden (then naming `name`, as "channel" too; key may be NULL for the
 * token's codes). */
static void ws_reply_denied(struct conn *c, const char *code, const struct slice *key, json_t *ref)
{
    struct slice bare = key ? chan_key_name(key->data, key->len)
                            : (struct slice){0}; /* the client knows the channel's name */
    const struct slice *name = &bare;
    struct sbuf f = {0}, d = {0};
    if (strcmp(code, "token_missing") == 0)
        sbuf_adds(&d, "this needs a token: send {\"op\":\"auth\",\"token\":\"...\"} first, or "
                      "put it on the URL (?token=)");
    else if (strcmp(code, "token_expired") == 0)
        sbuf_adds(&d, "the token expired: send {\"op\":\"refresh\",\"token\":\"...\"} with a "
                      "new one");
    else if (strcmp(code, "pattern_forbidden") == 0)
        sbuf_printf(&d, AUTH_BROAD_DETAIL, (int)name->len, name->data);
    else
        sbuf_printf(&d, "the token does not grant channel %.*s", (int)name->len, name->data);
    sbuf_adds(&f, "\"error\":");
    sbuf_add_json_str(&f, code, strlen(code));
    sbuf_adds(&f, ",\"detail\":");
    sbuf_add_json_str(&f, d.data, d.len);
    if (strcmp(code, "channel_forbidden") == 0 || strcmp(code, "pattern_forbidden") == 0) {
        sbuf_adds(&f, ",\"channel\":");
        sbuf_add_json_str(&f, name->data, name->len);
    }
    ws_reply(c, "error", f.data, ref);
    sbuf_free(&f);
    sbuf_free(&d);
}

/*
 * {"op":"auth","token":...} and {"op":"refresh","token":...}: verifies the token
 * and makes it the connection's, moving its expiry. A connection that has a token
 * keeps its user: the new token must name the same "sub".
 */
static void op_auth(struct conn *c, json_t *op, json_t *ref, bool refresh)
{
    struct sub_auth *a = ws_auth(c);
    json_t *jt = json_object_get(op, "token");
    if (!a->policy || !a->policy->verifier)
        return ws_reply_error(c, "bad_request",
                              "this server takes no tokens: subscribing is public", ref);
    if (!json_is_string(jt) || json_string_length(jt) == 0)
        return ws_reply_error(c, "token_missing", "send the token as \"token\": \"...\"", ref);
    struct token *tok;
    const char *why;
    int err = auth_verify(a->policy, json_string_value(jt), json_string_length(jt), &tok, &why);
    if (err)
        return ws_reply_error(c, token_error_name(err), why, ref);
    if (a->tok && (!a->tok->sub != !tok->sub ||
                   (tok->sub && (a->tok->sub_len != tok->sub_len ||
                                 memcmp(a->tok->sub, tok->sub, tok->sub_len) != 0)))) {
        token_put(tok);
        return ws_reply_error(c, "token_invalid",
                              "a refresh keeps the user: the new token must have the same "
                              "\"sub\" as the connection's",
                              ref);
    }
    /* A first token with a user: its channel now, from "since" if the op gives one. */
    struct hub_backlog b = {0};
    bool user = tok->sub && !(c->flags & WSF_NO_USER) && !transport_holds_user(c);
    if (user) {
        struct sub_request r;
        memset(&r, 0, offsetof(struct sub_request, name_buf));
        json_t *since = json_object_get(op, "since");
        const char *perr = NULL;
        if (json_is_string(since) &&
            transport_parse_since(&r, json_string_value(since), json_string_length(since), &perr)) {
            token_put(tok);
            return ws_reply_error(c, "bad_cursor", perr, ref);
        }
        transport_add_user(&r, c->tenant, tok);
        if (!transport_cursor_fits(&r, NULL, false)) { /* the user's channel alone */
            token_put(tok);
            return ws_reply_error(c, "bad_cursor", transport_cursor_mismatch, ref);
        }
        size_t bad = 0;
        int e = transport_subscribe(c, &r, &bad, &b);
        if (e) {
            token_put(tok);
            if (e == HUB_PENDING)
                return conn_park(c); /* the op runs again once the user's channel is in */
            return ws_reply_hub_error(c, e, &r.names[0], ref);
        }
    }
    struct sbuf f = {0};
    sbuf_printf(&f, "\"exp\":%lld", (long long)tok->exp);
    if (tok->sub) {
        sbuf_adds(&f, ",\"sub\":");
        sbuf_add_json_str(&f, tok->sub, tok->sub_len);
    }
    struct hook_session *hs = hook_session_of(c);
    if (hs && !hs->user && tok->sub) /* its hooks name the token's user from now on */
        hs->user = xstrndup(tok->sub, tok->sub_len);
    transport_auth_set(c, tok);
    ws_reply(c, refresh ? "refreshed" : "authenticated", f.data, ref);
    sbuf_free(&f);
    if (user)
        transport_replay(c, &b);
}

/* op_channels' answer for a cursor it cannot take (-1: any other mistake). */
enum { OP_BAD_CURSOR = -2 };

/* Reads "channels": [..] or "channel": ".." of an op into r. */
static int op_channels(const struct conn *c, json_t *op, struct sub_request *r, const char **err)
{
    memset(r, 0, offsetof(struct sub_request, name_buf));
    json_t *chs = json_object_get(op, "channels"), *ch = json_object_get(op, "channel");
    json_t *one[1] = {ch};
    if (chs && ch) {
        *err = "name the channels with \"channels\": [...] or \"channel\": \"a\", not both";
        return -1;
    }
    size_t count = json_is_array(chs) ? json_array_size(chs) : (json_is_string(ch) ? 1 : 0);
    if (count == 0) {
        *err = "name channels: \"channels\": [\"a\", \"b\"] or \"channel\": \"a\"";
        return -1;
    }
    if (count > TRANSPORT_MAX_CHANNELS) {
        *err = "at most 64 channels per op";
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        json_t *v = json_is_array(chs) ? json_array_get(chs, i) : one[0];
        if (!json_is_string(v) ||
            !hub_sub_name_valid(json_string_value(v), json_string_length(v))) {
            *err = TRANSPORT_NAME_RULE;
            return -1;
        }
        transport_add_channel(r, c->tenant, json_string_value(v), json_string_length(v));
    }
    json_t *since = json_object_get(op, "since");
    if (json_is_string(since)) {
        if (transport_parse_since(r, json_string_value(since), json_string_length(since), err))
            return OP_BAD_CURSOR;
        /* an op names channels only, never the user; its subscribe hook may add some */
        if (!transport_cursor_fits(r, c->tenant, true)) {
            *err = transport_cursor_mismatch;
            return OP_BAD_CURSOR;
        }
    } else if (json_is_integer(since) && json_integer_value(since) >= 0) {
        r->has_since = true;
        r->since = (uint64_t)json_integer_value(since);
    } else if (since && !json_is_null(since)) {
        *err = "\"since\" is a cursor: the id of the last message you have";
        return -1;
    }
    json_t *presence = json_object_get(op, "presence");
    if (presence && !json_is_boolean(presence) && !json_is_null(presence)) {
        *err = "\"presence\" is true (join and leave events of the channels that keep presence) "
               "or false";
        return -1;
    }
    r->presence_events = json_is_true(presence);
    r->persistent = true;
    return 0;
}

static void op_subscribe(struct conn *c, json_t *op, json_t *ref)
{
    struct sub_request r;
    const char *err;
    int pe = op_channels(c, op, &r, &err);
    if (pe < 0)
        return ws_reply_error(c, pe == OP_BAD_CURSOR ? "bad_cursor" : "bad_request", err, ref);
    size_t bad = 0;
    const char *denied = transport_auth_check(c, TOKEN_GRANT_SUBSCRIBE, r.names, r.n, &bad);
    if (denied)
        return ws_reply_denied(c, denied, &r.names[bad], ref);
    const struct hook_verdict *refused = NULL;
    int h =
        transport_hook_gate(c, &r, ws_auth(c)->tok, false, "websocket", HOOK_SUBSCRIBE, &refused);
    if (h < 0)
        return; /* parked: ws_handle_text keeps the op and ws_on_resume re-runs it */
    if (h > 0) {
        ws_hook_refused(c, refused, HOOK_SUBSCRIBE, ref, false);
        return transport_hook_done(c);
    }
    struct hub_backlog b;
    r.tok = ws_auth(c)->tok;
    int e = transport_subscribe(c, &r, &bad, &b);
    if (e != HUB_PENDING)
        transport_hook_done(c);
    if (e == HUB_PENDING) {
        conn_park(c); /* ws_handle_text keeps the op and ws_on_resume re-runs it */
        return;
    }
    if (e)
        return ws_reply_hub_error(c, e, &r.names[bad], ref);
    struct sbuf f = {0};
    transport_channels_json(&f, &r);
    if (conn_hub(c)->ids_per_channel && r.n > 1) {
        /* Ids order each channel only: where the client stands on each of the op's
         * channels, in their order (a per-channel cursor it can pass back as since). */
        uint64_t pos[TRANSPORT_MAX_CHANNELS];
        for (size_t i = 0; i < r.n; i++) {
            pos[i] = 0;
            for (struct list *p = c->subs.next; p != &c->subs; p = p->next) {
                const struct sub *s = container_of(p, struct sub, conn_link);
                if (s->ch->name_len == r.names[i].len &&
                    memcmp(s->ch->name, r.names[i].data, r.names[i].len) == 0)
                    pos[i] = sub_position(s);
            }
        }
        char cur[TRANSPORT_CURSOR_MAX];
        size_t n = transport_format_cursor(cur, sizeof(cur), pos, r.n);
        sbuf_printf(&f, ",\"cursor\":\"%.*s\"", (int)n, cur);
    } else {
        sbuf_printf(&f, ",\"cursor\":\"%" PRIu64 "\"", b.head_seq);
    }
    ws_reply(c, "subscribed", f.data, ref);
    sbuf_free(&f);
    transport_replay(c, &b);
}

static void op_unsubscribe(struct conn *c, json_t *op, json_t *ref)
{
    struct sub_request r;
    const char *err;
    int pe = op_channels(c, op, &r, &err);
    if (pe < 0)
        return ws_reply_error(c, pe == OP_BAD_CURSOR ? "bad_cursor" : "bad_request", err, ref);
    for (size_t i = 0; i < r.n; i++) {
        struct list *p, *tmp;
        list_for_each_safe(p, tmp, &c->subs)
        {
            struct sub *s = container_of(p, struct sub, conn_link);
            if (s->ch->name_len == r.names[i].len &&
                memcmp(s->ch->name, r.names[i].data, r.names[i].len) == 0)
                hub_unsubscribe(conn_hub(c), conn_worker_id(c), s);
        }
    }
    struct sbuf f = {0};
    transport_channels_json(&f, &r);
    ws_reply(c, "unsubscribed", f.data, ref);
    sbuf_free(&f);
}

struct ws_pub_op {
    struct conn *c;
    json_t *ref;
    bool running;           /* the op is still inside op_publish (inline completion) */
    json_t *notify;         /* the app's `publish` hook body, sent once it is stored */
    struct hook_target *nt; /* ... to this backend (a reference) */
};

static void ws_pub_done(void *arg, int err, const struct publish_result *res)
{
    struct ws_pub_op *p = arg;
    if (p->notify && !err) {
        char id[24];
        snprintf(id, sizeof(id), "%" PRIu64, res->id);
        json_object_set_new(p->notify, "id", json_string(id));
        hook_notify(p->nt, HOOK_PUBLISH, p->notify);
    } else {
        json_decref(p->notify);
    }
    p->notify = NULL;
    hook_target_put(p->nt);
    p->nt = NULL;
    bool alive = p->running || conn_release(p->c);
    if (alive && err) {
        ws_reply_hub_error(p->c, err, NULL, p->ref);
    } else if (alive) {
        char f[96];
        snprintf(f, sizeof(f), "\"id\":\"%" PRIu64 "\",\"subscribers\":%u", res->id,
                 res->subscribers);
        ws_reply(p->c, "published", f, p->ref);
    }
    if (!p->running) {
        json_decref(p->ref);
        free(p);
    } else {
        p->running = false; /* tells op_publish it completed inline */
        p->c = NULL;
    }
}

/* The body of the app's `publish` hook for p (NULL when its backend does not want it):
 * the connection's fields, the channels, the data and the event. */
static json_t *publish_notice(struct conn *c, const struct api_pub *p)
{
    struct hook_session *s = hook_session_of(c);
    if (!s) {
        struct hook_target *t = hooks_target_of(c->tenant);
        if (!hooks_wants(t, HOOK_PUBLISH)) {
            hook_target_put(t);
            return NULL;
        }
        struct token *tok = ws_auth(c)->tok;
        s = hook_session_open(c, t, "websocket", tok ? tok->sub : NULL, tok ? tok->sub_len : 0);
    }
    if (!hooks_wants(s->t, HOOK_PUBLISH))
        return NULL;
    json_t *o = hook_session_body(c, s, HOOK_PUBLISH);
    json_object_set_new(o, "channels", hook_channels_json(p->channels, p->n));
    json_t *data = p->text ? json_stringn(p->raw, p->raw_len)
                           : json_loadb(p->data_json, p->data_len, JSON_DECODE_ANY, NULL);
    json_object_set_new(o, "data", data ? data : json_null());
    if (p->event)
        json_object_set_new(o, "message_event", json_stringn(p->event, p->event_len));
    return o;
}

static void op_publish(struct conn *c, json_t *op, json_t *ref)
{
    if (!conn_cfg(c)->ws_publish)
        return ws_reply_error(c, "forbidden",
                              "publishing over WebSocket is off; the server enables it with "
                              "--ws-publish",
                              ref);
    /* The same rule as the HTTP API: credentials on the upgrade request, or a
     * "key" in the op (browsers cannot set headers on a WebSocket). */
    json_t *key = json_object_get(op, "key");
    bool keyed =
        json_is_string(key) &&
        api_key_matches(conn_cfg(c), c->tenant, json_string_value(key), json_string_length(key));
    /* With tokens, a token whose "publish" grants cover the channels does as well. A key
     * of the app revoked since the upgrade no longer counts. */
    if (c->tenant && ws_auth(c)->creds_epoch != atomic_load(&c->tenant->creds_epoch))
        c->flags &= ~(uint32_t)WSF_PUBLISHER;
    bool creds = (c->flags & WSF_PUBLISHER) || keyed;
    bool by_token = !creds && ws_auth(c)->tok;
    if (!creds && !by_token && (c->flags & WSF_FOREIGN))
        return ws_reply_error(c, "unauthorized",
                              "a page of another origin opened this WebSocket: the credentials or "
                              "loopback address of its upgrade do not make it a publisher; send "
                              "the key as \"key\" in the op, or allow the origin with "
                              "--api-cors-origins",
                              ref);
    if (!creds && !by_token)
        return ws_reply_error(c, "unauthorized",
                              c->tenant ? "publishing to an app needs one of its publish keys: "
                                          "'Authorization: Bearer KEY' on the upgrade or \"key\" "
                                          "in the op (or a token whose \"publish\" covers the "
                                          "channels)"
                              : conn_cfg(c)->publish_key[0]
                                  ? "publishing needs the publish key: send it as "
                                    "'Authorization: Bearer KEY' on the upgrade or as \"key\" in "
                                    "the op"
                                  : "without --publish-key, only loopback clients may publish",
                              ref);
    struct api_pub p;
    const char *err;
    if (api_pub_from_json(op, &p, c->tenant, &err) < 0)
        return ws_reply_error(c, "bad_request", err, ref);
    size_t bad = 0;
    const char *denied =
        by_token ? transport_auth_check(c, TOKEN_GRANT_PUBLISH, p.channels, p.n, &bad) : NULL;
    if (denied) {
        ws_reply_denied(c, denied, &p.channels[bad], ref);
        return api_pub_free(&p);
    }
    const char *limit;
    char detail[200];
    struct token *tok = ws_auth(c)->tok;
    struct hook_session *hs = hook_session_of(c);
    uint32_t rate = conn_cfg(c)->client_publish_rate;
    if (by_token && rate && !hs)
        hs = hook_session_ensure(c, "websocket", tok->sub, tok->sub_len);
    if (by_token && !hook_session_publish_room(hs, rate)) {
        api_pub_free(&p);
        snprintf(detail, sizeof(detail),
                 "a connection publishes at most %u messages a second with its token "
                 "(--client-publish-rate); wait a second",
                 rate);
        return ws_reply_error(c, "rate_limited", detail, ref);
    }
    if (api_app_publish_check(c->tenant, p.data_len, &limit, detail, sizeof(detail))) {
        api_pub_free(&p);
        return ws_reply_limit(c, limit, detail, ref);
    }
    struct publish_req req = {
        .kind = p.text ? PUB_TEXT : PUB_JSON,
        .data_json = {p.data_json, (uint32_t)p.data_len},
        .raw = {p.raw, (uint32_t)p.raw_len},
        .event = p.event,
        .event_len = p.event_len,
    };
    struct ws_pub_op *w = xcalloc(1, sizeof(*w));
    w->c = c;
    w->ref = ref ? json_incref(ref) : NULL;
    w->running = true;
    w->notify = publish_notice(c, &p);
    if (w->notify) {
        w->nt = hook_session_of(c)->t;
        hook_target_get(w->nt);
    }
    hub_publish_async(conn_hub(c), conn_worker_id(c), p.channels, p.n, &req, ws_pub_done, w);
    api_pub_free(&p);
    if (w->c == NULL) { /* completed inline */
        json_decref(w->ref);
        free(w);
        return;
    }
    w->running = false;
    conn_hold(c); /* the answer comes later, on this worker */
}

/* An rpc op waiting for the backend: the answer goes to the op's ref. */
struct ws_rpc {
    json_t *ref;
};

static void rpc_done(struct conn *c, const struct hook_result *r, void *arg)
{
    struct ws_rpc *k = arg;
    if (c) { /* else the client went: nothing to answer */
        hook_session_of(c)->rpc_inflight--;
        json_t *err = json_object_get(r->answer, "error");
        if (r->status != HOOK_OK) {
            struct sbuf f = {0};
            transport_hook_error(&f, false, HOOK_RPC, r->detail);
            ws_reply(c, "error", f.data, k->ref);
            sbuf_free(&f);
        } else if (err && !json_is_null(err)) {
            char *e = json_is_string(err) ? NULL : json_dumps(err, JSON_COMPACT | JSON_ENCODE_ANY);
            const char *detail = e ? e : json_string_value(err);
            ws_reply_error(c, "rpc_error", detail, k->ref);
            free(e);
        } else {
            json_t *data = json_object_get(r->answer, "data");
            char *d = json_dumps(data ? data : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
            struct sbuf f = {0};
            sbuf_printf(&f, "\"data\":%s", d);
            ws_reply(c, "reply", f.data, k->ref);
            sbuf_free(&f);
            free(d);
        }
    }
    json_decref(k->ref);
    free(k);
}

/* {"op":"rpc","method":…,"data":…,"ref":…}: the app's backend answers (hook `rpc`). */
static void op_rpc(struct conn *c, json_t *op, json_t *ref)
{
    json_t *method = json_object_get(op, "method");
    if (!json_is_string(method) || json_string_length(method) == 0 ||
        json_string_length(method) > 128)
        return ws_reply_error(c, "bad_request",
                              "\"method\" is a string of 1-128 bytes: what the backend should do",
                              ref);
    /* With subscriber tokens, the connection's token, valid (it names no channel). */
    size_t bad;
    const char *denied = transport_auth_check(c, TOKEN_GRANT_SUBSCRIBE, NULL, 0, &bad);
    if (denied)
        return ws_reply_denied(c, denied, NULL, ref);
    struct sub_auth *a = ws_auth(c);
    struct hook_session *s = hook_session_ensure(c, "websocket", a->tok ? a->tok->sub : NULL,
                                                 a->tok ? a->tok->sub_len : 0);
    if (!hooks_wants(s->t, HOOK_RPC))
        return ws_reply_error(c, "rpc_unavailable",
                              "this app has no backend for rpc: give it a webhook_url whose events "
                              "include rpc (docs/interactive.md)",
                              ref);
    uint32_t max = conn_cfg(c)->rpc_inflight;
    if (s->rpc_inflight >= max) {
        char detail[160];
        snprintf(detail, sizeof(detail),
                 "%u rpc calls of this connection already wait for the backend "
                 "(--rpc-inflight); send more once they are answered",
                 max);
        return ws_reply_error(c, "too_many_rpc", detail, ref);
    }
    json_t *body = hook_session_body(c, s, HOOK_RPC);
    json_object_set(body, "method", method);
    json_t *data = json_object_get(op, "data");
    json_object_set_new(body, "data", data ? json_incref(data) : json_null());
    struct ws_rpc *k = xcalloc(1, sizeof(*k));
    k->ref = ref ? json_incref(ref) : NULL;
    int rc = hook_session_call(c, s, HOOK_RPC, body, false, rpc_done, k);
    if (rc) {
        json_decref(k->ref);
        free(k);
        return ws_reply_error(c, "hook_failed", hook_refusal(rc), ref);
    }
    s->rpc_inflight++;
}

static void ws_handle_text(struct conn *c, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *op = json_loadb(text, len, 0, &jerr);
    if (!json_is_object(op)) {
        char detail[320];
        snprintf(detail, sizeof(detail), "messages are JSON objects like {\"op\":\"ping\"}%s%s",
                 op ? ", not arrays or plain values" : ": ", op ? "" : jerr.text);
        json_decref(op);
        return ws_reply_error(c, "bad_json", detail, NULL);
    }
    json_t *ref = json_object_get(op, "ref");
    json_t *opv = json_object_get(op, "op");
    const char *name = json_string_value(opv);
    if (c->tenant && atomic_load(&c->tenant->gone)) {
        /* Its app was deleted: whatever now has that name is another tenant. */
        ws_reply_error(c, "app_not_found", "this connection's app was deleted", ref);
        json_decref(op);
        return ws_close_with(c, WS_CLOSE_APP_GONE, "app deleted");
    }
    if (c->tenant) /* the app's subscribe policy now (an admin may have switched it) */
        ws_auth(c)->policy = auth_policy_of(c->tenant);
    if (!name)
        ws_reply_error(c, "bad_request",
                       opv ? "\"op\" is a string: subscribe, unsubscribe, ping, publish, rpc, "
                             "auth or refresh"
                           : "missing \"op\" (subscribe, unsubscribe, ping, publish, rpc, auth, "
                             "refresh)",
                       ref);
    else if (strcmp(name, "ping") == 0)
        ws_reply(c, "pong", NULL, ref);
    else if (strcmp(name, "subscribe") == 0)
        op_subscribe(c, op, ref);
    else if (strcmp(name, "unsubscribe") == 0)
        op_unsubscribe(c, op, ref);
    else if (strcmp(name, "publish") == 0)
        op_publish(c, op, ref);
    else if (strcmp(name, "auth") == 0 || strcmp(name, "refresh") == 0)
        op_auth(c, op, ref, name[0] == 'r');
    else if (strcmp(name, "rpc") == 0)
        op_rpc(c, op, ref);
    else
        ws_reply_error(c, "unknown_op",
                       "known ops: subscribe, unsubscribe, ping, publish, rpc, auth, refresh", ref);
    if (c->flags & CF_RETRY) { /* parked (subscribe, auth): kept for ws_on_resume */
        wstate(c)->pending = xstrndup(text, len);
        wstate(c)->pending_len = (uint32_t)len;
    }
    json_decref(op);
}

/* ---- frames ------------------------------------------------------------------------ */

static void ws_fail(struct conn *c, uint16_t code, const char *reason)
{
    ws_close_with(c, code, reason);
}

static void ws_on_close_frame(struct conn *c, const uint8_t *p, size_t len)
{
    uint16_t code = WS_CLOSE_NORMAL;
    if (len == 1)
        return ws_fail(c, WS_CLOSE_PROTOCOL, "close frame with a 1-byte payload");
    if (len >= 2) {
        code = (uint16_t)(p[0] << 8 | p[1]);
        if (!ws_close_code_valid(code))
            return ws_fail(c, WS_CLOSE_PROTOCOL, "invalid close code");
        if (!ws_utf8_valid(p + 2, len - 2))
            return ws_fail(c, WS_CLOSE_INVALID_DATA, "close reason is not UTF-8");
    }
    if (c->flags & WSF_CLOSE_SENT) {
        conn_close_after_write(c); /* handshake complete once our close frame is out */
        return;
    }
    ws_close_with(c, code, ""); /* echo, then close once it is written */
}

/* A complete data message (already unmasked; compressed when `compressed`). */
static void ws_on_message(struct conn *c, uint8_t opcode, char *data, size_t len, bool compressed)
{
    const struct herald_config *cfg = conn_cfg(c);
    char *plain = data;
    size_t plain_len = len;
    char *tmp = NULL;
    if (compressed) {
        tmp = xmalloc(cfg->max_ws_message);
        long n = ws_inflate_message(ws_worker()->inflater, (const uint8_t *)data, len,
                                    (uint8_t *)tmp, cfg->max_ws_message);
        if (n < 0) {
            free(tmp);
            return n == -2 ? ws_fail(c, WS_CLOSE_TOO_BIG, "message too big")
                           : ws_fail(c, WS_CLOSE_INVALID_DATA, "bad compressed data");
        }
        plain = tmp;
        plain_len = (size_t)n;
        if (opcode == WS_OP_TEXT && !ws_utf8_valid((uint8_t *)plain, plain_len)) {
            free(tmp);
            return ws_fail(c, WS_CLOSE_INVALID_DATA, "text message is not valid UTF-8");
        }
    }
    if (opcode == WS_OP_TEXT)
        ws_handle_text(c, plain, plain_len);
    else
        ws_reply_error(c, "binary_not_supported",
                       "send ops as JSON text messages, e.g. {\"op\":\"ping\"}", NULL);
    free(tmp);
}

static void ws_on_control(struct conn *c, const struct ws_frame *f, uint8_t *p)
{
    switch (f->opcode) {
    case WS_OP_PING: ws_send_frame(c, WS_OP_PONG, p, f->payload_len); break;
    case WS_OP_PONG:
        if (c->flags & WSF_PING_OUT) {
            c->flags &= ~(uint32_t)WSF_PING_OUT;
            conn_timer_start(c, conn_cfg(c)->heartbeat_ms);
        }
        break;
    case WS_OP_CLOSE: ws_on_close_frame(c, p, f->payload_len); break;
    }
}

/* Handles one data frame; returns false when the connection is failing. */
static bool ws_on_data_frame(struct conn *c, const struct ws_frame *f, uint8_t *p)
{
    struct ws_state *ws = wstate(c);
    const struct herald_config *cfg = conn_cfg(c);
    if (f->opcode == WS_OP_CONT && !ws->frag_opcode) {
        ws_fail(c, WS_CLOSE_PROTOCOL, "continuation frame outside a fragmented message");
        return false;
    }
    if (f->opcode != WS_OP_CONT && ws->frag_opcode) {
        ws_fail(c, WS_CLOSE_PROTOCOL, "new message before the fragmented one ended");
        return false;
    }
    bool first = f->opcode != WS_OP_CONT;
    uint8_t opcode = first ? f->opcode : ws->frag_opcode;
    bool compressed = first ? f->rsv1 : ws->frag_compressed;
    if (opcode == WS_OP_TEXT && !compressed) {
        if (first)
            memset(&ws->utf8, 0, sizeof(ws->utf8));
        if (!ws_utf8_feed(&ws->utf8, p, f->payload_len) ||
            (f->fin && !ws_utf8_complete(&ws->utf8))) {
            ws_fail(c, WS_CLOSE_INVALID_DATA, "text message is not valid UTF-8");
            return false;
        }
    }
    if (first && f->fin) {
        ws_on_message(c, opcode, (char *)p, f->payload_len, compressed);
        return true;
    }
    if ((uint64_t)ws->msg_len + f->payload_len > cfg->max_ws_message) {
        ws_fail(c, WS_CLOSE_TOO_BIG, "message too big");
        return false;
    }
    if (first) {
        ws->frag_opcode = opcode;
        ws->frag_compressed = compressed;
    }
    ws->msg = xrealloc(ws->msg, ws->msg_len + f->payload_len + 1);
    memcpy(ws->msg + ws->msg_len, p, f->payload_len);
    ws->msg_len += (uint32_t)f->payload_len;
    if (f->fin) {
        ws_on_message(c, opcode, ws->msg, ws->msg_len, compressed);
        free(ws->msg);
        ws->msg = NULL;
        ws->msg_len = 0;
        ws->frag_opcode = 0;
    }
    return true;
}

static long ws_on_read(struct conn *c, char *buf, size_t len)
{
    const struct herald_config *cfg = conn_cfg(c);
    size_t off = 0;
    /* Once a close frame went either way, nothing more is parsed (conn_may_parse:
     * the connection closes after its last write) and nothing may be sent. */
    while (off < len && conn_may_parse(c)) {
        struct ws_frame f;
        int r = ws_frame_parse((const uint8_t *)buf + off, len - off, &f,
                               (c->flags & WSF_DEFLATE) != 0, cfg->max_ws_message);
        if (r == 0)
            break;
        if (r < 0) {
            ws_fail(c, ws_error_close_code(r), ws_strerror(r));
            return (long)len;
        }
        if (len - off < (size_t)r + f.payload_len)
            break; /* wait for the whole frame */
        uint8_t *p = (uint8_t *)buf + off + r;
        ws_unmask(p, f.payload_len, f.mask, 0);
        off += (size_t)r + f.payload_len;
        if (f.rsv1 && f.opcode == WS_OP_CONT) {
            ws_fail(c, WS_CLOSE_PROTOCOL, "RSV1 on a continuation frame");
            return (long)len;
        }
        if (f.opcode >= WS_OP_CLOSE)
            ws_on_control(c, &f, p);
        else if (!ws_on_data_frame(c, &f, p))
            return (long)len;
    }
    return (long)off;
}

static void ws_on_timer(struct conn *c)
{
    if (c->flags & WSF_PING_OUT) {
        /* No pong within the close grace: the peer is gone or stuck. */
        ws_close_with(c, WS_CLOSE_GOING_AWAY, "ping timeout");
        return;
    }
    conn_send(c, NULL, ws_ping, sizeof(ws_ping) - 1);
    c->flags |= WSF_PING_OUT;
    conn_timer_start(c, conn_cfg(c)->close_grace_ms);
}

/* The op that waited for the backend runs again, then what came after it. */
static void ws_on_resume(struct conn *c)
{
    /* conn_park stopped the heartbeat: it runs again (a ping still out gets its grace). */
    if (!timer_armed(&c->timer))
        conn_timer_start(c, (c->flags & WSF_PING_OUT) ? conn_cfg(c)->close_grace_ms
                                                      : conn_cfg(c)->heartbeat_ms);
    char *op = wstate(c)->pending;
    size_t len = wstate(c)->pending_len;
    wstate(c)->pending = NULL;
    wstate(c)->pending_len = 0;
    if (op) {
        ws_handle_text(c, op, len);
        free(op);
    }
    conn_resume_input(c);
}

static void ws_deliver(struct conn *c, struct msg *m)
{
    struct slice s =
        (c->flags & WSF_DEFLATE) ? hub_ws_deflate(conn_hub(c), m, ws_worker()->deflater) : m->ws;
    conn_deliver_bytes(c, &m->ref, s.data, s.len);
}

static void ws_deliver_ctl(struct conn *c, struct ctl_frames *f)
{
    conn_deliver_bytes(c, &f->ref, f->ws.data, f->ws.len);
}

static void ws_end(struct conn *c, struct ctl_frames *f, uint16_t code, const char *reason)
{
    ws_deliver_ctl(c, f);
    ws_close_with(c, code, reason);
}

static void ws_on_busy(struct conn *c)
{
    ws_close_with(c, WS_CLOSE_TRY_AGAIN, "server busy: try again later");
}

static void ws_on_free(struct conn *c)
{
    free(wstate(c)->msg);
    free(wstate(c)->pending);
    transport_auth_free(c);
}

static const struct sub_ops ws_ops = {
    .conn =
        {
            .kind = CONN_WS,
            .on_read = ws_on_read,
            .on_timer = ws_on_timer,
            .on_lifetime = transport_on_lifetime,
            .on_shutdown = transport_on_shutdown,
            .on_slow = transport_on_slow,
            .on_busy = ws_on_busy,
            .on_resume = ws_on_resume,
            .deliver = ws_deliver,
            .deliver_ctl = ws_deliver_ctl,
            .on_channel_closed = transport_on_channel_closed,
            .on_free = ws_on_free,
        },
    .end = ws_end,
    .auth = ws_auth,
};
