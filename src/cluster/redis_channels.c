/*
 * redis_channels: channel administration in cluster mode (GET, PUT, DELETE of
 * /api/channels/{name} and the listing), for the hub's backend ops. A channel's
 * options, dates and counts live in Redis, so every node answers the same; each
 * request is one script on the channel's shard (REDIS_SCRIPT_CHANNEL), and the
 * listing reads a page of the herald:channels index, then each channel's info.
 * Requests come from the workers, run on the backend thread, and are answered on
 * the worker that asked (hub_post).
 */
#include "cluster/redis_channels.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "cluster/redis_backend_int.h"
#include "cluster/redis_scripts.h"
#include "core/config.h"
#include "hub/batch.h"

enum chan_mode { CH_GET, CH_PUT, CH_DEL };

struct chan_task {
    struct task t;
    struct rb *rb;
    int w;
    enum chan_mode mode;
    char name[CHANNEL_KEY_MAX + 1];
    size_t len;
    struct channel_opts o;
    hub_info_done *done;
    void *arg;
    int err;
    bool created;
    struct channel_info info;
    /* listing */
    hub_list_done *list_done;
    struct channel_info *infos;
    size_t ninfos, total, pending;
    size_t gone;     /* names of this page whose channel no longer exists */
    bool page_full;  /* the index gave as many names as asked */
    unsigned rounds; /* index pages read for this listing */
    struct chan_task *parent;
};

/* A listing: the index page it asks for, and its chan_task collecting the infos. */
struct list_task {
    struct chan_task ct;
    char after[CHANNEL_KEY_MAX + 1], prefix[CHANNEL_KEY_MAX + 1];
    size_t max;
};

static void info_from_reply(struct chan_task *ct, const redisReply *r)
{
    const struct herald_config *cfg = ct->rb->cfg;
    struct channel_info *i = &ct->info;
    memset(i, 0, sizeof(*i));
    struct slice nm = chan_key_name(ct->name, ct->len); /* what clients named */
    memcpy(i->name, nm.data, nm.len);
    redisReply **e = r->element;
    ct->created = redis_backend__reply_u64(e[0]) == 1;
    i->ttl_ms = e[1]->len ? (uint32_t)redis_backend__reply_u64(e[1]) : cfg->channel_ttl_ms;
    i->history_size = e[2]->len ? (uint32_t)redis_backend__reply_u64(e[2]) : cfg->history_size;
    i->history_ttl_ms = e[3]->len ? (uint32_t)redis_backend__reply_u64(e[3]) : cfg->history_ttl_ms;
    i->persistent = redis_backend__reply_u64(e[4]) == 1;
    i->created_ms = redis_backend__reply_u64(e[5]);
    i->last_active_ms = redis_backend__reply_u64(e[6]);
    i->subscribers = (uint32_t)redis_backend__reply_u64(e[7]);
    i->messages_retained = (uint32_t)redis_backend__reply_u64(e[8]);
    i->messages_total = redis_backend__reply_u64(e[9]);
    i->oldest_id = redis_backend__reply_u64(e[10]);
    i->last_id = redis_backend__reply_u64(e[11]);
    int64_t pttl = e[12]->type == REDIS_REPLY_INTEGER ? e[12]->integer : -1;
    i->expires_ms = pttl > 0 ? wall_ms() + (uint64_t)pttl : 0;
    bool create; /* a window never PUT is the app's default */
    uint32_t hs, ht;
    redis_backend__ns_defaults(ct->rb, ct->name, ct->len, &create, &hs, &ht, &i->batch_ms,
                               &i->conflate, &i->presence);
    if (e[13]->len)
        i->batch_ms = (uint32_t)MIN(redis_backend__reply_u64(e[13]), BATCH_MS_MAX);
    if (e[14]->len)
        i->conflate = redis_backend__reply_u64(e[14]) == 1;
    i->conflate = i->conflate && i->batch_ms;
    if (e[15]->len) /* never PUT: the app's default */
        i->presence = redis_backend__reply_u64(e[15]) == 1;
    i->presence = i->presence && !chan_key_is_user(ct->name, ct->len);
}

static void chan_answer(void *arg)
{
    struct chan_task *ct = arg;
    ct->done(ct->arg, ct->err, ct->err ? NULL : &ct->info, ct->created);
    free(ct);
}

static void list_child_done(struct chan_task *ct);

static void chan_reply(const redisReply *r, int status, void *arg)
{
    struct chan_task *ct = arg;
    ct->err = redis_backend__script_error(ct->rb, r, status, "channel ", ct->name, NULL, 0);
    if (!ct->err && ct->mode != CH_DEL) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 16)
            info_from_reply(ct, r);
        else
            ct->err = HUB_ERR_BACKEND;
    }
    if (ct->parent) {
        list_child_done(ct);
        return;
    }
    /* Keep the listing index in step (another shard in a cluster: its own command). */
    if (!ct->err && ct->mode != CH_GET) {
        char ixk[REDIS_INDEX_KEY_MAX];
        size_t ixl = redis_backend__index_key(ixk, ct->name, ct->len);
        const char *argv[] = {ct->mode == CH_DEL ? "ZREM" : "ZADD", ixk, "0", ct->name};
        if (ct->mode == CH_DEL)
            argv[2] = ct->name;
        redis_bus_command(ct->rb->bus, ixk, ixl, redis_backend__ignore_reply, ct->rb,
                          ct->mode == CH_DEL ? 3 : 4, argv, NULL);
    }
    hub_post(ct->rb->hub, ct->w, chan_answer, ct);
}

static void chan_run(struct task *t)
{
    struct chan_task *ct = (struct chan_task *)t;
    struct rb *rb = ct->rb;
    char h[REDIS_KEY_MAX], o[REDIS_KEY_MAX], s[REDIS_KEY_MAX], c[REDIS_KEY_MAX], m[REDIS_KEY_MAX],
        now[24], ttl[16], httl[16], f[7][24];
    redis_backend__key(h, sizeof(h), ct->name, ct->len, 'h');
    redis_backend__key(o, sizeof(o), ct->name, ct->len, 'o');
    redis_backend__key(s, sizeof(s), ct->name, ct->len, 's');
    redis_backend__key(c, sizeof(c), ct->name, ct->len, 'c');
    redis_backend__key(m, sizeof(m), ct->name, ct->len, 'm');
    snprintf(now, sizeof(now), "%" PRIu64, wall_ms());
    snprintf(ttl, sizeof(ttl), "%u", rb->cfg->channel_ttl_ms);
    snprintf(httl, sizeof(httl), "%u", rb->cfg->history_ttl_ms);
    memset(f, 0, sizeof(f));
    if (ct->o.has_ttl)
        snprintf(f[0], sizeof(f[0]), "%u", ct->o.ttl_ms);
    if (ct->o.has_history_size)
        snprintf(f[1], sizeof(f[1]), "%u", ct->o.history_size);
    if (ct->o.has_history_ttl)
        snprintf(f[2], sizeof(f[2]), "%u", ct->o.history_ttl_ms);
    if (ct->o.has_persistent)
        snprintf(f[3], sizeof(f[3]), "%d", ct->o.persistent ? 1 : 0);
    if (ct->o.has_batch_ms)
        snprintf(f[4], sizeof(f[4]), "%u", ct->o.batch_ms);
    if (ct->o.has_conflate || (ct->o.has_batch_ms && !ct->o.batch_ms)) /* no window: none */
        snprintf(f[5], sizeof(f[5]), "%d", ct->o.conflate && ct->o.batch_ms ? 1 : 0);
    if (ct->o.has_presence)
        snprintf(f[6], sizeof(f[6]), "%d", ct->o.presence ? 1 : 0);
    static const char *modes[] = {"get", "put", "del"};
    const char *argv[] = {"4",
                          h,
                          o,
                          s,
                          c,
                          now,
                          modes[ct->mode],
                          ttl,
                          httl,
                          m,
                          rb->cluster ? "SPUBLISH" : "PUBLISH",
                          f[0],
                          f[1],
                          f[2],
                          f[3],
                          f[4],
                          f[5],
                          f[6]};
    if (redis_script_call(rb->bus, REDIS_SCRIPT_CHANNEL, h, strlen(h), chan_reply, ct,
                          (int)ARRAY_LEN(argv), argv, NULL) < 0)
        chan_reply(NULL, RESP_ENOTCONN, ct);
}

static struct chan_task *chan_task_new(struct rb *rb, int w, enum chan_mode mode, const char *name,
                                       size_t len, hub_info_done *done, void *arg)
{
    struct chan_task *ct = xcalloc(1, sizeof(*ct));
    ct->t.fn = chan_run;
    ct->rb = rb;
    ct->w = w;
    ct->mode = mode;
    memcpy(ct->name, name, len);
    ct->len = len;
    ct->done = done;
    ct->arg = arg;
    return ct;
}

/* A PUT that may create a channel of an app with a channel limit: counted first. */
static void put_gated(void *arg, int err)
{
    struct chan_task *ct = arg;
    if (!err)
        return chan_run(&ct->t);
    ct->err = err;
    hub_post(ct->rb->hub, ct->w, chan_answer, ct);
}

static void put_run(struct task *t)
{
    struct chan_task *ct = (struct chan_task *)t;
    size_t len = ct->len;
    if (!redis_apps__gate(ct->rb, &ct->name, &len, 1, false, put_gated, ct))
        chan_run(t);
}

void redis_channels_put(void *be, int w, const char *name, size_t len, const struct channel_opts *o,
                        hub_info_done *done, void *arg)
{
    struct chan_task *ct = chan_task_new(be, w, CH_PUT, name, len, done, arg);
    ct->o = *o;
    ct->t.fn = put_run;
    redis_backend__post(be, &ct->t);
}

void redis_channels_get(void *be, int w, const char *name, size_t len, hub_info_done *done,
                        void *arg)
{
    redis_backend__post(be, &chan_task_new(be, w, CH_GET, name, len, done, arg)->t);
}

void redis_channels_delete(void *be, int w, const char *name, size_t len, hub_info_done *done,
                           void *arg)
{
    redis_backend__post(be, &chan_task_new(be, w, CH_DEL, name, len, done, arg)->t);
}

/* Listing: names from the index, then each channel's info (missing ones dropped). */
static void list_answer(void *arg)
{
    struct chan_task *ct = arg;
    ct->list_done(ct->arg, ct->err, ct->infos, ct->ninfos, ct->total);
    free(ct->infos);
    free(ct);
}

static void list_run(struct task *t);

static void list_child_done(struct chan_task *child)
{
    struct chan_task *ct = child->parent;
    if (!child->err) {
        ct->infos[ct->ninfos++] = child->info;
    } else if (child->err == HUB_ERR_NOT_FOUND) {
        /* Expired: out of the index, so that listings and totals stop counting it. */
        char ixk[REDIS_INDEX_KEY_MAX];
        size_t ixl = redis_backend__index_key(ixk, child->name, child->len);
        const char *argv[] = {"ZREM", ixk, child->name};
        redis_bus_command(ct->rb->bus, ixk, ixl, redis_backend__ignore_reply, ct->rb, 3, argv,
                          NULL);
        ct->gone++;
    } else {
        ct->err = child->err;
    }
    free(child);
    if (--ct->pending == 0) {
        /* A full index page with expired names in it: read it again (the names are
         * gone from the index now), so that a short page still means the end. */
        if (ct->gone && ct->page_full && !ct->err && ct->rounds < 8) {
            free(ct->infos);
            ct->infos = NULL;
            ct->ninfos = ct->gone = 0;
            list_run(&ct->t);
            return;
        }
        ct->total = ct->total > ct->gone ? ct->total - ct->gone : 0;
        /* Children answer in any order: keep the listing sorted by name. */
        for (size_t i = 1; i < ct->ninfos; i++)
            for (size_t j = i; j > 0 && strcmp(ct->infos[j - 1].name, ct->infos[j].name) > 0; j--) {
                struct channel_info tmp = ct->infos[j];
                ct->infos[j] = ct->infos[j - 1];
                ct->infos[j - 1] = tmp;
            }
        hub_post(ct->rb->hub, ct->w, list_answer, ct);
    }
}

static void list_names_reply(const redisReply *r, int status, void *arg)
{
    struct chan_task *ct = arg;
    if (status < 0 || !r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        ct->err = HUB_ERR_BACKEND;
        hub_post(ct->rb->hub, ct->w, list_answer, ct);
        return;
    }
    ct->total = redis_backend__reply_u64(r->element[0]);
    const redisReply *names = r->element[1];
    ct->page_full = names->elements == container_of(ct, struct list_task, ct)->max;
    ct->rounds++;
    ct->infos = xcalloc(names->elements ? names->elements : 1, sizeof(*ct->infos));
    ct->pending = names->elements;
    if (!ct->pending) {
        hub_post(ct->rb->hub, ct->w, list_answer, ct);
        return;
    }
    for (size_t i = 0; i < names->elements; i++) {
        const redisReply *nm = names->element[i];
        struct chan_task *child = chan_task_new(ct->rb, ct->w, CH_GET, nm->str,
                                                MIN(nm->len, (size_t)CHANNEL_KEY_MAX), NULL, NULL);
        child->parent = ct;
        chan_run(&child->t);
    }
}

static void list_run(struct task *t)
{
    struct list_task *lt = (struct list_task *)t;
    char max[16];
    snprintf(max, sizeof(max), "%zu", lt->max);
    /* An app's listing names its "APP~" prefix: its own index. */
    char ixk[REDIS_INDEX_KEY_MAX];
    size_t ixl = redis_backend__index_key(ixk, lt->prefix, strlen(lt->prefix));
    const char *argv[] = {"1", ixk, lt->after, lt->prefix, max};
    if (redis_script_call(lt->ct.rb->bus, REDIS_SCRIPT_LIST, ixk, ixl, list_names_reply, &lt->ct, 5,
                          argv, NULL) < 0)
        list_names_reply(NULL, RESP_ENOTCONN, &lt->ct);
}

void redis_channels_list(void *be, int w, const char *after, size_t after_len, const char *prefix,
                         size_t max, hub_list_done *done, void *arg)
{
    struct list_task *lt = xcalloc(1, sizeof(*lt));
    lt->ct.t.fn = list_run;
    lt->ct.rb = be;
    lt->ct.w = w;
    lt->ct.list_done = done;
    lt->ct.arg = arg;
    memcpy(lt->after, after, MIN(after_len, (size_t)CHANNEL_KEY_MAX));
    if (prefix)
        snprintf(lt->prefix, sizeof(lt->prefix), "%s", prefix);
    lt->max = max;
    redis_backend__post(be, &lt->ct.t);
}
