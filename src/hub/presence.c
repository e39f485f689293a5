/*
 * presence: who is on a channel (DESIGN.md §12, docs/interactive.md#presence). A
 * channel with the option `presence` counts its subscriber connections of the
 * persistent transports (WebSocket, SSE, HTTP streaming; a long-poll is never
 * counted): per user (a token's "sub", or the connect hook's user) with the
 * user's info, and the connections without a user as one anonymous count.
 * Subscribers that asked for them (presence=1) get a `join` event when a user's
 * first connection arrives and a `leave` when its last goes; the events are live
 * only (never in history, never replayed).
 *
 * Everything here runs under the hub lock, called by hub_subscribe and the
 * unsubscribes: a counted subscription carries its struct sub_presence, so that
 * its leave undoes exactly what its join did, whatever the channel's option says
 * meanwhile. Bounds: --max-presence-users users listed per channel (the connections
 * of further users are counted as `unlisted`, without events), PRESENCE_INFO_MAX
 * bytes of info per user.
 *
 * Cluster mode: this node's counts are kept the same way, and every change of a
 * user's count on this node goes to the backend (hub_backend_ops.presence_set),
 * which keeps the cluster-wide view in Redis and sends the join and leave events
 * on the channel's bus (hub_presence_event) — this node sends none itself.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/config.h"
#include "hub/hub.h"
#include "hub/hub_internal.h"

struct presence_user {
    struct map_node node;
    uint32_t conns;
    uint32_t user_len, info_len;
    char *info; /* JSON text, NULL: none */
    char user[];
};

struct chan_presence {
    struct map users;   /* struct presence_user by user */
    uint32_t conns;     /* every counted connection */
    uint32_t anonymous; /* connections without a user */
    uint32_t unlisted;  /* connections of users past --max-presence-users */
};

/* The fields of a join or leave event of channel key[0..len): "channel","user"[,"info"]. */
static void event_fields(struct sbuf *b, const char *key, size_t len, const char *user,
                         size_t user_len, const char *info, size_t info_len)
{
    struct slice nm = chan_key_name(key, len);
    sbuf_adds(b, "\"channel\":");
    sbuf_add_json_str(b, nm.data, nm.len);
    sbuf_adds(b, ",\"user\":");
    sbuf_add_json_str(b, user, user_len);
    if (info && info_len) {
        sbuf_adds(b, ",\"info\":");
        sbuf_add(b, info, info_len);
    }
}

struct ctl_frames *hub_presence_frames(const char *key, size_t len, bool join, const char *user,
                                       size_t user_len, const char *info, size_t info_len)
{
    struct sbuf f = {0};
    event_fields(&f, key, len, user, user_len, info, info_len);
    struct ctl_frames *ev = ctl_frames_new(join ? "join" : "leave", f.data, f.len);
    sbuf_free(&f);
    return ev;
}

/* Queues ev for the subscribers of ch that asked for presence events. Hub lock held. */
static void notify_locked(struct hub *hub, struct channel *ch, struct ctl_frames *ev,
                          uint64_t *wake_mask)
{
    if (!ch->deleted)
        hub__notify_workers(hub, ch, INBOX_PRESENCE, ev, wake_mask);
    ref_put(&ev->ref);
}

/* Cluster mode: tells the backend this node's count of u (kind PRESENCE_KIND_USER, u set)
 * or of the anonymous or unlisted connections (n). */
static void backend_set(struct hub *hub, const struct channel *ch, char kind,
                        const struct presence_user *u, uint32_t n)
{
    if (!hub->be_ops || !hub->be_ops->presence_set)
        return;
    const struct chan_presence *p = ch->present;
    uint32_t all = p ? p->conns : 0;
    if (u)
        hub->be_ops->presence_set(hub->be, ch->name, ch->name_len, kind, u->user, u->user_len,
                                  u->conns, u->info, u->info_len, all);
    else
        hub->be_ops->presence_set(hub->be, ch->name, ch->name_len, kind, NULL, 0, n, NULL, 0, all);
}

void hub__presence_join_locked(struct hub *hub, struct channel *ch, struct sub *s,
                               const struct presence_who *who, uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    struct chan_presence *p = ch->present;
    if (!p) {
        p = ch->present = xcalloc(1, sizeof(*p));
        map_init(&p->users, 8);
    }
    struct sub_presence *sp = xcalloc(1, sizeof(*sp));
    sp->events = who->events;
    s->presence = sp;
    p->conns++;
    if (!who->user || !who->user_len) {
        sp->anonymous = true;
        p->anonymous++;
        backend_set(hub, ch, PRESENCE_KIND_ANON, NULL, p->anonymous);
        return;
    }
    size_t ul = MIN(who->user_len, (size_t)PRESENCE_USER_MAX);
    struct map_node *n = map_get(&p->users, who->user, ul);
    struct presence_user *u = n ? container_of(n, struct presence_user, node) : NULL;
    if (!u && p->users.len >= hub->cfg->max_presence_users) {
        p->unlisted++;
        backend_set(hub, ch, PRESENCE_KIND_UNLISTED, NULL, p->unlisted);
        return;
    }
    if (u) {
        sp->user = u;
        u->conns++;
        backend_set(hub, ch, PRESENCE_KIND_USER, u, 0);
        return;
    }
    u = xcalloc(1, sizeof(*u) + ul + 1);
    memcpy(u->user, who->user, ul);
    u->user_len = (uint32_t)ul;
    u->node.key = u->user;
    u->node.key_len = (uint32_t)ul;
    if (who->info && who->info_len && who->info_len <= PRESENCE_INFO_MAX) {
        u->info = xstrndup(who->info, who->info_len);
        u->info_len = (uint32_t)who->info_len;
    }
    u->conns = 1;
    map_put(&p->users, &u->node);
    sp->user = u;
    if (hub->be_ops) /* the backend tells every node, this one too */
        return backend_set(hub, ch, PRESENCE_KIND_USER, u, 0);
    notify_locked(hub, ch,
                  hub_presence_frames(ch->name, ch->name_len, true, u->user, u->user_len, u->info,
                                      u->info_len),
                  wake_mask);
}

void hub__presence_leave_locked(struct hub *hub, struct channel *ch, struct sub *s,
                                uint64_t *wake_mask)
{
    HUB_ASSERT_LOCKED(hub);
    struct sub_presence *sp = s->presence;
    struct chan_presence *p = ch->present;
    s->presence = NULL;
    assert(p && p->conns);
    p->conns--;
    struct presence_user *u = sp->user;
    if (u) {
        u->conns--;
        backend_set(hub, ch, PRESENCE_KIND_USER, u, 0);
        if (!u->conns) {
            map_del(&p->users, &u->node);
            if (!hub->be_ops)
                notify_locked(hub, ch,
                              hub_presence_frames(ch->name, ch->name_len, false, u->user,
                                                  u->user_len, u->info, u->info_len),
                              wake_mask);
            free(u->info);
            free(u);
        }
    } else if (sp->anonymous) {
        p->anonymous--;
        backend_set(hub, ch, PRESENCE_KIND_ANON, NULL, p->anonymous);
    } else {
        p->unlisted--;
        backend_set(hub, ch, PRESENCE_KIND_UNLISTED, NULL, p->unlisted);
    }
    free(sp);
    if (!p->conns)
        hub__presence_free(ch);
}

void hub__presence_free(struct channel *ch)
{
    struct chan_presence *p = ch->present;
    if (!p)
        return;
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&p->users, &b, &next))) {
        struct presence_user *u = container_of(n, struct presence_user, node);
        free(u->info);
        free(u);
    }
    map_free(&p->users);
    free(p);
    ch->present = NULL;
}

void presence_list_add(struct presence_list *l, const char *user, size_t user_len, uint32_t conns,
                       const char *info, size_t info_len)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    struct presence_entry *e = &l->v[l->n++];
    e->conns = conns;
    e->user_off = (uint32_t)l->text.len;
    e->user_len = (uint32_t)user_len;
    sbuf_add(&l->text, user, user_len);
    e->info_off = (uint32_t)l->text.len;
    e->info_len = info ? (uint32_t)info_len : 0;
    if (e->info_len)
        sbuf_add(&l->text, info, info_len);
}

void presence_list_free(struct presence_list *l)
{
    free(l->v);
    sbuf_free(&l->text);
    memset(l, 0, sizeof(*l));
}

/* Fills l with ch's presence. Hub lock held. */
static void list_locked(const struct channel *ch, struct presence_list *l)
{
    const struct chan_presence *p = ch->present;
    if (!p)
        return;
    l->connections = p->conns;
    l->anonymous = p->anonymous;
    l->unlisted = p->unlisted;
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&p->users, &b, &next))) {
        const struct presence_user *u = container_of(n, struct presence_user, node);
        presence_list_add(l, u->user, u->user_len, u->conns, u->info, u->info_len);
    }
}

void hub_presence_get_async(struct hub *hub, int w, const char *key, size_t len,
                            hub_presence_done *done, void *arg)
{
    if (hub->be_ops && hub->be_ops->presence_get)
        return hub->be_ops->presence_get(hub->be, w, key, len, done, arg);
    struct presence_list l = {0};
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, key, len);
    int err = !ch ? HUB_ERR_NOT_FOUND : !ch->presence ? HUB_ERR_PRESENCE_OFF : 0;
    if (!err)
        list_locked(ch, &l);
    hub_unlock(hub);
    done(arg, err, err ? NULL : &l);
    presence_list_free(&l);
}

void hub_presence_event(struct hub *hub, const char *key, size_t len, bool join, const char *user,
                        size_t user_len, const char *info, size_t info_len)
{
    uint64_t wake_mask = 0;
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, key, len);
    if (ch && ch->worker_mask)
        notify_locked(hub, ch, hub_presence_frames(key, len, join, user, user_len, info, info_len),
                      &wake_mask);
    hub_unlock(hub);
    hub__wake_workers(hub, wake_mask);
}

void hub_presence_option(struct hub *hub, const char *key, size_t len, bool on)
{
    hub_lock(hub);
    struct channel *ch = hub__lookup(hub, key, len);
    if (ch)
        ch->presence = on && !ch->user;
    hub_unlock(hub);
}

void hub_presence_snapshot(struct hub *hub,
                           void (*fn)(void *arg, const char *name, size_t len, char kind,
                                      const char *user, size_t user_len, uint32_t conns,
                                      const char *info, size_t info_len, uint32_t chan_conns),
                           void *arg)
{
    hub_lock(hub);
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&hub->channels, &b, &next))) {
        const struct channel *ch = container_of(n, struct channel, node);
        const struct chan_presence *p = ch->present;
        if (!p)
            continue;
        if (p->anonymous)
            fn(arg, ch->name, ch->name_len, PRESENCE_KIND_ANON, NULL, 0, p->anonymous, NULL, 0,
               p->conns);
        if (p->unlisted)
            fn(arg, ch->name, ch->name_len, PRESENCE_KIND_UNLISTED, NULL, 0, p->unlisted, NULL, 0,
               p->conns);
        size_t ub = 0;
        struct map_node *un, *unext = NULL;
        while ((un = map_next(&p->users, &ub, &unext))) {
            const struct presence_user *u = container_of(un, struct presence_user, node);
            fn(arg, ch->name, ch->name_len, PRESENCE_KIND_USER, u->user, u->user_len, u->conns,
               u->info, u->info_len, p->conns);
        }
    }
    hub_unlock(hub);
}
