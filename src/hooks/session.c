/*
 * session: the hooks' per-connection state and the connection's side of a hook
 * call (holding the connection, building bodies, reading verdicts). See session.h.
 */
#include "hooks/session.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "hub/hub.h"

static void session_free(struct conn *c, struct conn_attach *a);

struct hook_session *hook_session_open(struct conn *c, struct hook_target *t, const char *transport,
                                       const char *user, size_t user_len)
{
    assert(!c->attach);
    struct hook_session *s = xcalloc(1, sizeof(*s));
    s->base.free = session_free;
    s->t = t;
    s->id = hooks_next_conn_id();
    s->started_ms = wall_ms();
    s->transport = transport;
    if (user)
        s->user = xstrndup(user, user_len);
    /* Loopback is one address for every client behind a proxy on this host. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    struct hub_client cl;
    if ((!(c->flags & CF_LOOPBACK) || conn_cfg(c)->limit_loopback) &&
        getpeername(c->io.fd, (struct sockaddr *)&ss, &sl) == 0 && hub_client_set_addr(&cl, &ss)) {
        s->addr_limited = true;
        memcpy(s->addr, cl.addr, sizeof(s->addr));
    }
    c->attach = &s->base;
    return s;
}

struct hook_session *hook_session_ensure(struct conn *c, const char *transport, const char *user,
                                         size_t user_len)
{
    struct hook_session *s = hook_session_of(c);
    return s ? s : hook_session_open(c, hooks_target_of(c->tenant), transport, user, user_len);
}

bool hook_session_publish_room(struct hook_session *s, uint32_t rate)
{
    if (!rate)
        return true;
    /* A token bucket of `rate` publishes, refilled at `rate` a second (in thousandths of a
     * publish): a burst takes what the bucket holds, whenever it comes. */
    uint64_t now = now_ms(), full = (uint64_t)rate * 1000;
    uint64_t tokens = s->pub_last_ms ? s->pub_tokens + (now - s->pub_last_ms) * rate : full;
    s->pub_last_ms = now;
    s->pub_tokens = MIN(tokens, full);
    if (s->pub_tokens < 1000)
        return false;
    s->pub_tokens -= 1000;
    return true;
}

/* "ip:port" of the peer, or "". */
static void remote_of(const struct conn *c, char *out, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "";
    unsigned port = 0;
    out[0] = '\0';
    if (getpeername(c->io.fd, (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
        snprintf(out, size, "%s:%u", host, port);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        snprintf(out, size, "[%s]:%u", host, port);
    }
}

json_t *hook_session_body(struct conn *c, struct hook_session *s, enum hook_event ev)
{
    char id[24], remote[INET6_ADDRSTRLEN + 10];
    snprintf(id, sizeof(id), "%016" PRIx64, s->id);
    remote_of(c, remote, sizeof(remote));
    const struct hub_tenant *t = c->tenant;
    json_t *o = json_object();
    json_object_set_new(o, "event", json_string(hook_event_name(ev)));
    json_object_set_new(o, "app", t ? json_stringn(t->prefix, t->prefix_len - 1) : json_null());
    json_object_set_new(o, "node", json_string(conn_cfg(c)->node_name));
    json_object_set_new(o, "conn", json_string(id));
    json_object_set_new(o, "user", s->user ? json_string(s->user) : json_null());
    json_object_set_new(o, "transport", json_string(s->transport));
    json_object_set_new(o, "remote", json_string(remote));
    json_object_set_new(o, "time", json_integer((json_int_t)wall_ms()));
    if (s->info)
        json_object_set(o, "info", s->info);
    return o;
}

/* Appends the name of channel key[0..len) to chs, unless it is a user's own channel
 * (the backend knows the user). */
static void add_channel_name(json_t *chs, const char *key, size_t len)
{
    if (chan_key_is_user(key, len))
        return;
    struct slice nm = chan_key_name(key, len);
    json_array_append_new(chs, json_stringn(nm.data, nm.len));
}

json_t *hook_channels_json(const struct slice *keys, size_t n)
{
    json_t *chs = json_array();
    for (size_t i = 0; i < n; i++)
        add_channel_name(chs, keys[i].data, keys[i].len);
    return chs;
}

struct call {
    struct conn *c;
    bool parks; /* the caller parks c (conn_park) until the answer */
    void (*done)(struct conn *c, const struct hook_result *r, void *arg);
    void *arg;
};

static void call_done(void *arg, const struct hook_result *r)
{
    struct call *k = arg;
    bool alive = conn_release(k->c);
    if (!alive && k->parks)
        conn_release(k->c); /* the park's: the request will not run again */
    k->done(alive ? k->c : NULL, r, k->arg);
    free(k);
}

int hook_session_call(struct conn *c, struct hook_session *s, enum hook_event ev, json_t *body,
                      bool parks,
                      void (*done)(struct conn *c, const struct hook_result *r, void *arg),
                      void *arg)
{
    struct call *k = xcalloc(1, sizeof(*k));
    *k = (struct call){.c = c, .parks = parks, .done = done, .arg = arg};
    conn_hold(c);
    int rc = hook_call(s->t, conn_worker_id(c), ev, body, call_done, k,
                       s->addr_limited ? s->addr : NULL);
    if (rc == 0)
        return 0;
    conn_release(c); /* it was held a moment ago: it is still there */
    free(k);
    return rc;
}

void hook_verdict_clear(struct hook_verdict *v)
{
    json_decref(v->answer);
    *v = (struct hook_verdict){0};
}

void hook_verdict_set(struct hook_verdict *v, const struct hook_target *t,
                      const struct hook_result *r)
{
    hook_verdict_clear(v);
    const char *result =
        r->status == HOOK_OK ? json_string_value(json_object_get(r->answer, "result")) : NULL;
    if (result && strcmp(result, "allow") == 0) {
        v->state = HV_ALLOW;
        v->answer = json_incref(r->answer);
        return;
    }
    if (result && strcmp(result, "deny") == 0) {
        const char *why = json_string_value(json_object_get(r->answer, "reason"));
        v->state = HV_DENY;
        snprintf(v->detail, sizeof(v->detail), "%s", why ? why : "the backend said no");
        return;
    }
    if (r->status == HOOK_OK)
        snprintf(v->detail, sizeof(v->detail),
                 "the backend's answer has no \"result\" of \"allow\" or \"deny\"");
    else
        snprintf(v->detail, sizeof(v->detail), "%s", r->detail);
    v->state = t->s.fail_open ? HV_ALLOW : HV_FAIL;
}

void hook_session_ending(struct conn *c, const char *reason)
{
    struct hook_session *s = hook_session_of(c);
    if (s && !s->reason[0])
        snprintf(s->reason, sizeof(s->reason), "%s", reason);
}

/* The connection is being freed: its backend hears of it (disconnect), then the
 * session goes. Its subscriptions are still there, its app too. */
static void session_free(struct conn *c, struct conn_attach *a)
{
    struct hook_session *s = (struct hook_session *)(void *)a;
    if (s->connected && hooks_wants(s->t, HOOK_DISCONNECT)) {
        json_t *o = hook_session_body(c, s, HOOK_DISCONNECT);
        json_t *chs = json_array();
        for (struct list *p = c->subs.next; p != &c->subs; p = p->next) {
            const struct channel *ch = container_of(p, struct sub, conn_link)->ch;
            add_channel_name(chs, ch->name, ch->name_len);
        }
        json_object_set_new(o, "channels", chs);
        json_object_set_new(o, "duration_ms",
                            json_integer((json_int_t)(wall_ms() - s->started_ms)));
        json_object_set_new(o, "reason", json_string(s->reason[0] ? s->reason : "client closed"));
        hook_notify(s->t, HOOK_DISCONNECT, o);
    }
    hook_verdict_clear(&s->connect);
    hook_verdict_clear(&s->subscribe);
    json_decref(s->info);
    free(s->user);
    hook_target_put(s->t);
    free(s);
}
