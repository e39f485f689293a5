/*
 * hooked: the subscriber transports' side of the backend hooks (src/hooks):
 * a connection or subscription waits (parked, as for a channel that loads)
 * until the app's backend allowed, refused or failed to answer, then the
 * request runs again and reads the verdict. See transport.h.
 *
 * No message is lost while it waits: the hub's last id when the request came
 * is kept, and the subscription starts from it when the client named no cursor.
 */
#include <stdio.h>

#include "auth/token.h"
#include "core/log.h"
#include "hooks/session.h"
#include "transport/transport.h"

/* The cursor of a request that comes now: nothing after it may be lost. In cluster
 * mode ids come from Redis, at least the publishing node's clock in µs: the clock a
 * little back (nodes' clocks are assumed within 250 ms of each other). */
static uint64_t arrival_cursor(struct hub *hub)
{
    if (hub->be_ops)
        return wall_us() - 250000;
    hub_lock(hub);
    uint64_t seq = hub->seq;
    hub_unlock(hub);
    return seq;
}

static void gate_answer(struct conn *c, const struct hook_result *r, void *arg)
{
    if (!c)
        return; /* the client went while its backend thought (and is released) */
    struct hook_session *s = hook_session_of(c);
    struct hook_verdict *v = (uintptr_t)arg == HOOK_CONNECT ? &s->connect : &s->subscribe;
    hook_verdict_set(v, s->t, r);
    conn_unpark(c);
}

bool transport_hooked(struct hub_tenant *t)
{
    struct hook_target *ht = hooks_target_of(t);
    bool on = ht && ht->s.url[0];
    hook_target_put(ht);
    return on;
}

/* Adds the channels an allowing answer names to r. Their cursor: with a per-channel
 * cursor, the position it carries for each in turn (the client had them from this
 * hook before: they follow the named channels and the user's in the cursors it got),
 * else the arrival. */
static void add_extra_channels(struct conn *c, struct hook_session *s, struct sub_request *r,
                               json_t *answer)
{
    json_t *chs = json_object_get(answer, "channels"), *v;
    size_t i;
    if (chs && !json_is_array(chs) && !json_is_null(chs))
        log_warn("hook: the backend's \"channels\" is not a list of channel names: ignored");
    json_array_foreach(chs, i, v)
    {
        if (!json_is_string(v) ||
            !hub_channel_name_valid(json_string_value(v), json_string_length(v))) {
            log_warn("hook: the backend's \"channels\" holds an invalid channel name: ignored");
            continue;
        }
        if (r->n == TRANSPORT_MAX_CHANNELS) {
            log_warn("hook: the backend's \"channels\" takes the connection past %d channels "
                     "(with the ones it named): the last %zu are not subscribed",
                     TRANSPORT_MAX_CHANNELS, json_array_size(chs) - i);
            break;
        }
        size_t before = r->n;
        transport_add_channel(r, c->tenant, json_string_value(v), json_string_length(v));
        if (r->n > before && r->nsince && r->nsince < r->n)
            r->since_each[r->nsince++] = s->arrival;
    }
    if (r->nsince > r->n)
        r->nsince = r->n; /* positions of channels the backend no longer adds: moot */
}

int transport_hook_gate(struct conn *c, struct sub_request *r, const struct token *tok,
                        bool want_user, const char *transport, enum hook_event ev,
                        const struct hook_verdict **out)
{
    struct hook_session *s = hook_session_of(c);
    if (!s) {
        struct hook_target *t = hooks_target_of(c->tenant);
        if (!t || !t->s.url[0]) {
            hook_target_put(t);
            return 0;
        }
        s = hook_session_open(c, t, transport, tok ? tok->sub : NULL, tok ? tok->sub_len : 0);
    }
    s->transport = transport;
    bool conn_event = ev == HOOK_CONNECT;
    if (!hooks_wants(s->t, ev)) {
        s->connected |= conn_event;
        return 0;
    }
    struct hook_verdict *v = conn_event ? &s->connect : &s->subscribe;
    if (v->state == HV_WAITING)
        return -1; /* cannot happen: a waiting request is parked */
    if (v->state == HV_NONE) {
        s->arrival = arrival_cursor(conn_hub(c));
        json_t *body = hook_session_body(c, s, ev);
        json_object_set_new(body, "channels", hook_channels_json(r->names, r->n));
        v->state = HV_WAITING;
        int rc = hook_session_call(c, s, ev, body, true, gate_answer, (void *)(uintptr_t)ev);
        if (rc == 0) {
            conn_park(c); /* the request runs again with the verdict */
            return -1;
        }
        snprintf(v->detail, sizeof(v->detail), "%s", hook_refusal(rc));
        v->state = s->t->s.fail_open ? HV_ALLOW : HV_FAIL;
    }
    if (v->state == HV_ALLOW) {
        json_t *user = json_object_get(v->answer, "user");
        json_t *info = json_object_get(v->answer, "info");
        size_t ul = json_string_length(user);
        if (json_is_string(user) && ul >= 1 && ul <= 256) {
            free(s->user);
            s->user = xstrndup(json_string_value(user), ul);
            /* The backend's user gets the user's messages, unless the token named one. */
            if (want_user && !(tok && tok->sub))
                transport_add_user_named(r, c->tenant, s->user, ul);
        } else if (user) {
            log_warn("hook: the backend's \"user\" is not a string of 1-256 bytes: ignored");
        }
        if (info && !json_is_null(info)) {
            json_decref(s->info);
            s->info = json_incref(info);
        }
        add_extra_channels(c, s, r, v->answer);
        if (!r->has_since && r->n) {
            /* What was published while the backend thought reaches the client. */
            r->has_since = true;
            r->since_implied = true;
            r->since = s->arrival;
        }
        s->connected |= conn_event;
        return 0;
    }
    *out = v;
    return 1;
}

void transport_hook_error(struct sbuf *b, bool denied, enum hook_event ev, const char *detail)
{
    sbuf_printf(b, "\"error\":\"%s\",\"hook\":\"%s\",\"detail\":",
                denied ? "hook_denied" : "hook_failed", hook_event_name(ev));
    sbuf_add_json_str(b, detail, strlen(detail));
}

void transport_hook_refused(struct http_ctx *x, const struct hook_verdict *v, enum hook_event ev)
{
    bool deny = v->state == HV_DENY;
    struct sbuf b = {0};
    sbuf_adds(&b, "{");
    transport_hook_error(&b, deny, ev, v->detail);
    sbuf_adds(&b, "}\n");
    http_respond(x, deny ? 403 : 503, "application/json", NULL, b.data, b.len);
    sbuf_free(&b);
}

int transport_hook_admit(struct http_ctx *x, struct sub_request *r, const struct token *tok,
                         const char *transport, enum hook_event ev)
{
    const struct hook_verdict *v = NULL;
    int rc = transport_hook_gate(x->c, r, tok, transport_wants_user(x->req), transport, ev, &v);
    if (rc <= 0)
        return rc;
    transport_hook_refused(x, v, ev);
    /* A later request on this keep-alive connection asks again. */
    hook_verdict_clear((struct hook_verdict *)v);
    return -1;
}

void transport_hook_done(struct conn *c)
{
    struct hook_session *s = hook_session_of(c);
    if (s && !(c->flags & CF_RETRY))
        hook_verdict_clear(&s->subscribe);
}
