/*
 * Unit tests for src/hub/hub.c, the in-memory hub: ids (one per publish,
 * shared by the messages of a multi-channel publish), history bounded by count,
 * bytes (what messages really hold) and age, resume from a cursor (exact backlog, gaps, since=0,
 * cursors ahead of the server, de-duplication, the "already held" skip rule),
 * per-worker inboxes, unsubscribe, auto-create and max-channels, name and
 * cursor validation, channel administration and expiry.
 *
 * Every test releases what it takes (backlogs, inbox items, subscriptions) and
 * checks the reference counts it can see, so the ASan build doubles as a leak
 * check of the hub's own accounting.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "core/config.h"
#include "hub/hub.h"
#include "hub/hub_internal.h"
#include "transport/ws_frame.h"

#define NWORKERS 2

static struct herald_config cfg;
static struct hub hub;

static int setup(void **state)
{
    config_defaults(&cfg);
    return hub_init(&hub, &cfg, NWORKERS);
}

static int teardown(void **state)
{
    hub_free(&hub);
    return 0;
}

static struct slice sl(const char *s)
{
    return (struct slice){s, (uint32_t)strlen(s)};
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Publishes `body` (sent as a JSON string) to the n channels; returns the error or 0. */
static int publish_n(const char *const *names, size_t n, const char *body, uint64_t *id,
                     uint32_t *subscribers)
{
    struct slice chans[64];
    for (size_t i = 0; i < n; i++)
        chans[i] = sl(names[i]);
    char json[4096];
    int jl = snprintf(json, sizeof(json), "\"%s\"", body);
    struct publish_req req = {
        .data_json = {json, (uint32_t)jl},
        .raw = sl(body),
    };
    struct publish_result res = {0};
    int err = hub_publish(&hub, chans, n, &req, &res);
    if (id)
        *id = res.id;
    if (subscribers)
        *subscribers = res.subscribers;
    return err;
}

/* Publishes to one channel and returns the id (failing the test on error). */
static uint64_t pub(const char *name, const char *body)
{
    uint64_t id = 0;
    assert_int_equal(publish_n(&name, 1, body, &id, NULL), 0);
    return id;
}

static uint64_t pub2(const char *a, const char *b, const char *body)
{
    const char *names[] = {a, b};
    uint64_t id = 0;
    assert_int_equal(publish_n(names, 2, body, &id, NULL), 0);
    return id;
}

static struct channel *chan(const char *name)
{
    struct map_node *n = map_get(&hub.channels, name, strlen(name));
    return n ? container_of(n, struct channel, node) : NULL;
}

static struct msg *hist(const struct channel *ch, uint32_t i)
{
    assert_true(i < ch->hist_len);
    return ch->hist[(ch->hist_head + i) % ch->hist_cap];
}

static unsigned refs(const struct channel *ch)
{
    return atomic_load(&ch->refs);
}

/* Subscribes connection `held` (on worker w) to names[0..n); returns the hub error or 0. */
static int subscribe(int w, struct list *held, const char *const *names, size_t n, bool has_since,
                     uint64_t since, struct hub_backlog *b, size_t *bad)
{
    struct slice s[64];
    for (size_t i = 0; i < n; i++)
        s[i] = sl(names[i]);
    size_t bad_index = 999;
    struct hub_client cl = {.max_subs = 64};
    int err = hub_subscribe(&hub, w, held, held, s, n, has_since, since, &cl, b, &bad_index);
    if (bad)
        *bad = bad_index;
    return err;
}

static size_t held_count(const struct list *held)
{
    size_t n = 0;
    for (const struct list *p = held->next; p != held; p = p->next)
        n++;
    return n;
}

static struct sub *held_sub(const struct list *held, const char *name)
{
    for (struct list *p = held->next; p != held; p = p->next) {
        struct sub *s = container_of(p, struct sub, conn_link);
        if (strcmp(s->ch->name, name) == 0)
            return s;
    }
    return NULL;
}

/* Adds channel `name` to held's connection (on worker w), without a cursor. */
static void take_on(int w, struct list *held, const char *name)
{
    struct hub_backlog bl;
    assert_int_equal(subscribe(w, held, &name, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
}

static void take_channel(struct list *held, const char *name)
{
    take_on(0, held, name);
}

/* A new connection (on worker 0) holding "a" and "b", subscribed without a cursor. */
static void hold_a_and_b(struct list *held)
{
    list_init(held);
    struct hub_backlog bl;
    const char *names[] = {"a", "b"};
    assert_int_equal(subscribe(0, held, names, 2, false, 0, &bl, NULL), 0);
    assert_int_equal(bl.n, 0);
    hub_backlog_free(&bl);
}

/* What one inbox item said, recorded before its references are released. */
struct seen {
    enum inbox_kind kind;
    uint64_t seq;
    struct channel *ch; /* compare only: may be freed once the item is released */
    uint64_t chan_id;
};

/* Takes worker w's inbox, records up to max items into out, releases every reference. */
static uint32_t drain(int w, struct seen *out, size_t max)
{
    uint32_t n = 0;
    struct inbox_item *items = hub_inbox_take(&hub, w, &n);
    assert_true(n == 0 || items != NULL);
    for (uint32_t i = 0; i < n; i++) {
        if (i < max) {
            out[i] = (struct seen){items[i].kind, items[i].msg ? items[i].msg->seq : 0, items[i].ch,
                                   items[i].ch->id};
            if (items[i].kind == INBOX_MSG)
                assert_int_equal(items[i].msg->chan_id, items[i].ch->id);
        }
        if (items[i].msg)
            ref_put(&items[i].msg->ref);
        hub_channel_put_ref(&hub, items[i].ch);
    }
    free(items);
    return n;
}

static void check_backlog(const struct hub_backlog *b, const uint64_t *want, uint32_t n)
{
    assert_int_equal(b->n, n);
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(b->msgs[i]->seq, want[i]);
}

/* ---- ids and publish --------------------------------------------------- */

static void test_ids_increase_by_one_per_publish(void **state)
{
    uint64_t a1 = pub("a", "1");
    assert_int_equal(a1, hub.boot_seq); /* the first id of this run */
    uint64_t b1 = pub("b", "2");
    uint64_t ab = pub2("a", "b", "3");
    uint64_t c1 = pub("c", "4");
    uint64_t a2 = pub("a", "5");
    assert_int_equal(b1, a1 + 1);
    assert_int_equal(ab, a1 + 2);
    assert_int_equal(c1, a1 + 3);
    assert_int_equal(a2, a1 + 4);
    assert_int_equal(hub.seq, a2);
    assert_int_equal(atomic_load(&hub.stats.published), 5);
    assert_int_equal(atomic_load(&hub.stats.messages), 6);

    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), 0);
    assert_int_equal(info.last_id, a2);
    assert_int_equal(info.oldest_id, a1);
    assert_int_equal(info.messages_total, 3);
    assert_int_equal(info.messages_retained, 3);
    assert_int_equal(hub_channel_get(&hub, "b", 1, &info), 0);
    assert_int_equal(info.last_id, ab);
    assert_int_equal(info.messages_total, 2);
}

static void test_multi_channel_publish_shares_seq(void **state)
{
    const char *names[] = {"x", "y", "z"};
    uint64_t id;
    assert_int_equal(publish_n(names, 3, "hello", &id, NULL), 0);
    struct msg *m[3];
    for (int i = 0; i < 3; i++) {
        struct channel *ch = chan(names[i]);
        assert_non_null(ch);
        assert_int_equal(ch->hist_len, 1);
        m[i] = hist(ch, 0);
        assert_int_equal(m[i]->seq, id);
        assert_int_equal(m[i]->chan_id, ch->id);
        assert_int_equal(atomic_load(&m[i]->ref.refs), 1);
        /* The envelope names its own channel. */
        char want[64];
        snprintf(want, sizeof(want), "\"channel\":\"%s\"", names[i]);
        assert_non_null(memmem(m[i]->envelope.data, m[i]->envelope.len, want, strlen(want)));
    }
    assert_ptr_not_equal(m[0], m[1]);
    assert_ptr_not_equal(m[1], m[2]);
    assert_non_null(m[0]->group);
    assert_ptr_equal(m[0]->group, m[1]->group);
    assert_ptr_equal(m[1]->group, m[2]->group);
    assert_int_equal(m[0]->group->n, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(m[0]->group->chan_ids[i], chan(names[i])->id);
    assert_int_equal(atomic_load(&hub.stats.published), 1);
    assert_int_equal(atomic_load(&hub.stats.messages), 3);

    pub("x", "single");
    assert_null(hist(chan("x"), 1)->group);
}

static void test_publish_rejects_zero_channels(void **state)
{
    struct publish_req req = {.data_json = sl("1"), .raw = sl("1")};
    struct publish_result res;
    uint64_t seq = hub.seq;
    assert_true(hub_publish(&hub, NULL, 0, &req, &res) < 0);
    assert_int_equal(hub.seq, seq);
}

/* ---- history bounds --------------------------------------------------- */

/* The bytes of the messages ch's history holds. */
static uint64_t hist_size_sum(const struct channel *ch)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < ch->hist_len; i++)
        sum += hist(ch, i)->size;
    return sum;
}

static void test_history_size_evicts_oldest(void **state)
{
    cfg.history_size = 3;
    uint64_t id[25];
    char body[16];
    for (int i = 0; i < 5; i++) {
        snprintf(body, sizeof(body), "%d", i);
        id[i] = pub("a", body);
    }
    struct channel *ch = chan("a");
    assert_int_equal(ch->hist_len, 3);
    assert_int_equal(ch->evicted_seq, id[1]);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(hist(ch, i)->seq, id[2 + i]);
    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), 0);
    assert_int_equal(info.messages_retained, 3);
    assert_int_equal(info.oldest_id, id[2]);
    assert_int_equal(info.last_id, id[4]);
    assert_int_equal(info.messages_total, 5);

    /* Many more, wrapping the ring several times: still the newest three, in order. */
    for (int i = 5; i < 25; i++)
        id[i] = pub("a", "x");
    assert_int_equal(ch->hist_len, 3);
    assert_int_equal(ch->evicted_seq, id[21]);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(hist(ch, i)->seq, id[22 + i]);
    assert_int_equal(ch->hist_bytes, hist_size_sum(ch));
}

/*
 * --history-bytes bounds what history really holds: each message's whole allocation
 * (struct and framings), not its body (issue 7: that undercounted 3.9x to 19x).
 */
static void test_history_bytes_keeps_newest(void **state)
{
    uint64_t a = pub("a", "aaaa");
    struct channel *ch = chan("a");
    uint32_t one = hist(ch, 0)->size; /* the same for each 4-byte body below */
    ch->history_bytes = 2 * one + one / 2;
    uint64_t b = pub("a", "bbbb");
    assert_int_equal(ch->hist_len, 2);
    assert_int_equal(ch->hist_bytes, 2 * one);
    uint64_t c = pub("a", "cccc"); /* three do not fit: the oldest goes */
    assert_int_equal(ch->hist_len, 2);
    assert_int_equal(ch->hist_bytes, 2 * one);
    assert_int_equal(ch->evicted_seq, a);
    assert_int_equal(hist(ch, 0)->seq, b);
    assert_int_equal(hist(ch, 1)->seq, c);

    /* A message larger than the whole budget evicts the rest but stays itself. */
    char big[101];
    memset(big, 'z', 100);
    big[100] = '\0';
    uint64_t d = pub("a", big);
    assert_int_equal(ch->hist_len, 1);
    assert_int_equal(hist(ch, 0)->seq, d);
    assert_int_equal(ch->evicted_seq, c);
    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), 0);
    assert_int_equal(info.messages_retained, 1);
    assert_int_equal(info.retained_bytes, hist(ch, 0)->size);
    assert_true(info.retained_bytes > 4 * 100); /* WS, SSE, chunk and raw SSE carry it */
    assert_int_equal(info.oldest_id, d);
}

/*
 * A body of control characters is six times longer in JSON (\u0001), in every
 * framing that carries the envelope: history counts that, and the compressed frame
 * a WebSocket subscriber's worker adds later.
 */
static void test_history_bytes_count_escapes_and_the_deflate_frame(void **state)
{
    char body[1001], json[6010];
    memset(body, 1, 1000);
    body[1000] = '\0';
    size_t jl = 0;
    json[jl++] = '"';
    for (int i = 0; i < 1000; i++)
        jl += (size_t)snprintf(json + jl, 7, "\\u0001");
    json[jl++] = '"';
    struct slice ch = sl("ctl");
    struct publish_req req = {.kind = PUB_TEXT, .data_json = {json, (uint32_t)jl}, .raw = sl(body)};
    struct publish_result res;
    assert_int_equal(hub_publish(&hub, &ch, 1, &req, &res), 0);
    struct channel *c = chan("ctl");
    struct msg *m = hist(c, 0);
    assert_true(m->envelope.len > 6000);
    assert_true(c->hist_bytes >= 3 * 6000 + 1000); /* escaped in three framings, raw in one */
    assert_int_equal(c->hist_bytes, m->size);

    struct ws_deflater *d = ws_deflater_new(6);
    struct slice z = hub_ws_deflate(&hub, m, d);
    assert_true(z.len > 0 && z.len < m->ws.len);
    uint64_t with_frame = m->size + msg_deflate_bytes(m);
    assert_true(msg_deflate_bytes(m) > z.len);
    assert_int_equal(c->hist_bytes, with_frame);
    hub_ws_deflate(&hub, m, d); /* built once, counted once */
    assert_int_equal(c->hist_bytes, with_frame);
    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, "ctl", 3, &info), 0);
    assert_int_equal(info.retained_bytes, with_frame);

    /* Leaving history, it takes all of that with it. */
    c->history_size = 1;
    pub("ctl", "x");
    assert_int_equal(c->hist_len, 1);
    assert_int_equal(c->hist_bytes, hist(c, 0)->size);
    ws_deflater_free(d);
}

static void test_history_age(void **state)
{
    struct channel_opts o = {
        .has_history_ttl = true, .history_ttl_ms = 150, .has_persistent = true, .persistent = true};
    bool created;
    struct channel_info info;
    assert_int_equal(hub_channel_put(&hub, "a", 1, &o, &created, &info), 0);
    uint64_t a1 = pub("a", "1");
    uint64_t a2 = pub("a", "2");
    struct channel *ch = chan("a");
    assert_int_equal(ch->hist_len, 2);
    sleep_ms(250);
    /* A publish trims what aged out before it. */
    uint64_t a3 = pub("a", "3");
    assert_int_equal(ch->hist_len, 1);
    assert_int_equal(hist(ch, 0)->seq, a3);
    assert_int_equal(ch->evicted_seq, a2);

    /* With nothing published, the sweep alone ages history out. */
    sleep_ms(250);
    assert_int_equal(ch->hist_len, 1);
    hub_sweep(&hub);
    assert_ptr_equal(chan("a"), ch); /* persistent: the channel itself stays */
    assert_int_equal(ch->hist_len, 0);
    assert_int_equal(ch->hist_bytes, 0);
    assert_int_equal(ch->evicted_seq, a3);
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), 0);
    assert_int_equal(info.messages_retained, 0);
    assert_int_equal(info.oldest_id, 0);
    assert_int_equal(info.last_id, a3);

    /* A resume from before the aged-out messages is told about the gap. */
    struct list held;
    list_init(&held);
    struct hub_backlog b;
    const char *names[] = {"a"};
    assert_int_equal(subscribe(0, &held, names, 1, true, a1, &b, NULL), 0);
    assert_int_equal(b.n, 0);
    assert_int_equal(b.ngaps, 1);
    assert_ptr_equal(b.gaps[0].ch, ch);
    assert_int_equal(b.gaps[0].oldest, 0);
    hub_backlog_free(&b);
    hub_unsubscribe_all(&hub, 0, &held);
}

/*
 * Age is measured on the wall clock. When it steps back (NTP, a VM resume),
 * messages look as if published in the future; they must not look infinitely
 * old and all be dropped at once.
 */
static void test_history_survives_wall_clock_step_back(void **state)
{
    pub("a", "1");
    struct channel *ch = chan("a");
    hist(ch, 0)->time_ms = wall_ms() + 60000; /* the clock went back a minute since */
    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), 0);
    assert_int_equal(info.messages_retained, 1);
}

/* ---- subscribe and resume ------------------------------------------------ */

static void test_since_inside_history_gives_exactly_the_newer(void **state)
{
    uint64_t id[8];
    id[0] = pub("a", "0");
    id[1] = pub("b", "1");
    id[2] = pub("a", "2");
    id[3] = pub("c", "3"); /* not subscribed */
    id[4] = pub("b", "4");
    id[5] = pub("a", "5");
    id[6] = pub("b", "6");
    id[7] = pub("a", "7");

    struct list held;
    list_init(&held);
    struct hub_backlog b;
    const char *names[] = {"b", "a"};
    assert_int_equal(subscribe(0, &held, names, 2, true, id[2], &b, NULL), 0);
    uint64_t want[] = {id[4], id[5], id[6], id[7]};
    check_backlog(&b, want, 4);
    assert_int_equal(b.ngaps, 0);
    assert_int_equal(b.head_seq, id[7]);
    assert_int_equal(held_count(&held), 2);
    hub_backlog_free(&b);
    assert_int_equal(b.n, 0);
    assert_null(b.msgs);
    /* Backlog references are all returned. */
    assert_int_equal(atomic_load(&hist(chan("a"), 0)->ref.refs), 1);

    /* A cursor at the head: nothing to replay. */
    struct list h2;
    list_init(&h2);
    assert_int_equal(subscribe(1, &h2, names, 2, true, id[7], &b, NULL), 0);
    assert_int_equal(b.n, 0);
    assert_int_equal(b.ngaps, 0);
    hub_backlog_free(&b);

    /* Without a cursor: no backlog at all. */
    struct list h3;
    list_init(&h3);
    assert_int_equal(subscribe(1, &h3, names, 2, false, 0, &b, NULL), 0);
    assert_int_equal(b.n, 0);
    assert_int_equal(b.ngaps, 0);
    hub_backlog_free(&b);

    hub_unsubscribe_all(&hub, 0, &held);
    hub_unsubscribe_all(&hub, 1, &h2);
    hub_unsubscribe_all(&hub, 1, &h3);
    assert_int_equal(refs(chan("a")), 1);
    assert_int_equal(chan("a")->subscribers, 0);
}

static void test_since_older_than_history_reports_gaps(void **state)
{
    cfg.history_size = 3;
    uint64_t a[5], b[5];
    for (int i = 0; i < 5; i++) {
        a[i] = pub("a", "a");
        b[i] = pub("b", "b");
    }
    uint64_t c0 = pub("c", "c");
    struct list held;
    list_init(&held);
    struct hub_backlog bl;
    const char *names[] = {"a", "b", "c"};
    assert_int_equal(subscribe(0, &held, names, 3, true, a[0], &bl, NULL), 0);
    assert_int_equal(bl.ngaps, 2); /* c lost nothing */
    assert_ptr_equal(bl.gaps[0].ch, chan("a"));
    assert_int_equal(bl.gaps[0].oldest, a[2]);
    assert_ptr_equal(bl.gaps[1].ch, chan("b"));
    assert_int_equal(bl.gaps[1].oldest, b[2]);
    uint64_t want[] = {a[2], b[2], a[3], b[3], a[4], b[4], c0};
    check_backlog(&bl, want, 7);
    hub_backlog_free(&bl);
    assert_int_equal(bl.ngaps, 0);
    assert_null(bl.gaps);

    /* A cursor exactly at the newest evicted id has missed nothing. */
    struct list h2;
    list_init(&h2);
    const char *only_a[] = {"a"};
    assert_int_equal(subscribe(1, &h2, only_a, 1, true, a[1], &bl, NULL), 0);
    assert_int_equal(bl.ngaps, 0);
    uint64_t want_a[] = {a[2], a[3], a[4]};
    check_backlog(&bl, want_a, 3);
    hub_backlog_free(&bl);

    hub_unsubscribe_all(&hub, 0, &held);
    hub_unsubscribe_all(&hub, 1, &h2);
}

static void test_since_zero_gives_everything_without_gap(void **state)
{
    cfg.history_size = 2;
    pub("a", "1");
    uint64_t a2 = pub("a", "2");
    uint64_t a3 = pub("a", "3");
    struct list held;
    list_init(&held);
    struct hub_backlog b;
    const char *names[] = {"a"};
    assert_int_equal(subscribe(0, &held, names, 1, true, 0, &b, NULL), 0);
    assert_int_equal(b.ngaps, 0);
    uint64_t want[] = {a2, a3};
    check_backlog(&b, want, 2);
    hub_backlog_free(&b);
    hub_unsubscribe_all(&hub, 0, &held);
}

static void test_since_ahead_of_head_is_a_cursor_error(void **state)
{
    uint64_t a1 = pub("a", "1");
    struct list held;
    list_init(&held);
    struct hub_backlog b;
    const char *names[] = {"a", "new"};
    size_t bad;
    assert_int_equal(subscribe(0, &held, names, 2, true, a1 + 1, &b, &bad), HUB_ERR_CURSOR);
    assert_int_equal(b.n, 0);
    assert_int_equal(b.ngaps, 0);
    assert_true(list_empty(&held));
    assert_int_equal(chan("a")->subscribers, 0);
    assert_null(chan("new")); /* nothing created either */
    assert_int_equal(subscribe(0, &held, names, 2, true, UINT64_MAX, &b, &bad), HUB_ERR_CURSOR);
    assert_true(list_empty(&held));
    assert_int_equal(subscribe(0, &held, names, 2, true, a1, &b, &bad), 0);
    assert_int_equal(held_count(&held), 2);
    hub_backlog_free(&b);
    hub_unsubscribe_all(&hub, 0, &held);
    assert_true(list_empty(&held));
}

static void test_multi_channel_message_once_in_backlog(void **state)
{
    uint64_t start = hub.seq;
    uint64_t x = pub2("a", "b", "both");
    uint64_t y = pub("a", "a");
    uint64_t z = pub("b", "b");
    uint64_t w2 = pub2("b", "a", "both again");
    struct list held;
    list_init(&held);
    struct hub_backlog bl;
    const char *names[] = {"a", "b"};
    assert_int_equal(subscribe(0, &held, names, 2, true, start, &bl, NULL), 0);
    uint64_t want[] = {x, y, z, w2};
    check_backlog(&bl, want, 4);
    hub_backlog_free(&bl);
    /* The dropped duplicates were released too. */
    for (uint32_t i = 0; i < chan("a")->hist_len; i++)
        assert_int_equal(atomic_load(&hist(chan("a"), i)->ref.refs), 1);
    for (uint32_t i = 0; i < chan("b")->hist_len; i++)
        assert_int_equal(atomic_load(&hist(chan("b"), i)->ref.refs), 1);
    hub_unsubscribe_all(&hub, 0, &held);
}

static void test_backlog_skips_what_a_held_channel_delivers_live(void **state)
{
    uint64_t start = pub("b", "before");
    struct list held;
    list_init(&held);
    struct hub_backlog bl;
    const char *a[] = {"a"}, *b[] = {"b"};
    assert_int_equal(subscribe(0, &held, a, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    assert_true(held_sub(&held, "a")->from_seq < start + 1);

    uint64_t x = pub2("a", "b", "both"); /* reaches this connection live through a */
    uint64_t y = pub("b", "only b");
    struct seen s[4];
    assert_int_equal(drain(0, s, 4), 1);
    assert_int_equal(s[0].seq, x);

    assert_int_equal(subscribe(0, &held, b, 1, true, start, &bl, NULL), 0);
    uint64_t want[] = {y};
    check_backlog(&bl, want, 1);
    hub_backlog_free(&bl);

    /* A connection that does not hold a gets it. */
    struct list other;
    list_init(&other);
    assert_int_equal(subscribe(1, &other, b, 1, true, start, &bl, NULL), 0);
    uint64_t want2[] = {x, y};
    check_backlog(&bl, want2, 2);
    hub_backlog_free(&bl);

    /* Nor does one that took a only after the message: it did not get it live. */
    struct list late;
    list_init(&late);
    assert_int_equal(subscribe(1, &late, a, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    assert_int_equal(subscribe(1, &late, b, 1, true, start, &bl, NULL), 0);
    check_backlog(&bl, want2, 2);
    hub_backlog_free(&bl);

    hub_unsubscribe_all(&hub, 0, &held);
    hub_unsubscribe_all(&hub, 1, &other);
    hub_unsubscribe_all(&hub, 1, &late);
    drain(0, s, 0);
    drain(1, s, 0);
    assert_int_equal(refs(chan("a")), 1);
    assert_int_equal(refs(chan("b")), 1);
}

/* The inbox item of worker w's items[0..n) that carries seq on channel `name`. */
static struct msg *item_msg(struct inbox_item *items, uint32_t n, const char *name, uint64_t seq)
{
    for (uint32_t i = 0; i < n; i++)
        if (items[i].kind == INBOX_MSG && items[i].msg->seq == seq &&
            strcmp(items[i].ch->name, name) == 0)
            return items[i].msg;
    fail_msg("no item for %s:%" PRIu64, name, seq);
    return NULL;
}

static void release_items(struct inbox_item *items, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (items[i].msg)
            ref_put(&items[i].msg->ref);
        hub_channel_put_ref(&hub, items[i].ch);
    }
    free(items);
}

static void test_multi_channel_copies_reach_a_connection_once_in_any_order(void **state)
{
    struct list held;
    hold_a_and_b(&held);
    struct sub *sa = held_sub(&held, "a"), *sb = held_sub(&held, "b");
    uint64_t x = pub2("a", "b", "both");
    uint64_t y = pub2("a", "c", "a and c");
    uint64_t z = pub2("a", "b", "both again");
    uint32_t n;
    struct inbox_item *items = hub_inbox_take(&hub, 0, &n);
    assert_int_equal(n, 5); /* a:x b:x a:y a:z b:z (c has no subscriber) */

    /* In publish order: the second copy is dropped. */
    assert_true(hub_sub_takes(&held, sa, item_msg(items, n, "a", x)));
    assert_false(hub_sub_takes(&held, sb, item_msg(items, n, "b", x)));
    /* A shard that is late (Redis Cluster): b's copies come after a's later messages. */
    assert_true(hub_sub_takes(&held, sa, item_msg(items, n, "a", y)));
    assert_true(hub_sub_takes(&held, sa, item_msg(items, n, "a", z)));
    assert_false(hub_sub_takes(&held, sb, item_msg(items, n, "b", z)));
    /* Or early: b's copy first, then a's is dropped. */
    uint64_t v = pub2("a", "b", "third");
    release_items(items, n);
    items = hub_inbox_take(&hub, 0, &n);
    assert_true(hub_sub_takes(&held, sb, item_msg(items, n, "b", v)));
    assert_false(hub_sub_takes(&held, sa, item_msg(items, n, "a", v)));
    release_items(items, n);
    hub_unsubscribe_all(&hub, 0, &held);
}

static void test_a_copy_owed_before_another_channel_was_taken_is_delivered(void **state)
{
    struct list held;
    list_init(&held);
    take_channel(&held, "a");
    uint64_t x = pub2("a", "b", "both"); /* owed through a only: b is not held yet */
    take_channel(&held, "b");
    uint64_t z = pub("b", "later on b");
    uint32_t n;
    struct inbox_item *items = hub_inbox_take(&hub, 0, &n);
    assert_int_equal(n, 2);
    /* b's later message first (a's shard is late): a's copy of x is still owed. */
    assert_true(hub_sub_takes(&held, held_sub(&held, "b"), item_msg(items, n, "b", z)));
    assert_true(hub_sub_takes(&held, held_sub(&held, "a"), item_msg(items, n, "a", x)));
    release_items(items, n);
    hub_unsubscribe_all(&hub, 0, &held);
}

static void test_live_messages_of_a_channel_follow_its_own_last_id(void **state)
{
    /* A new subscription's live bound is its channel's last id, not the hub's. */
    pub("a", "old");
    uint64_t on_b = pub("b", "newer, on another channel");
    struct list held;
    list_init(&held);
    take_channel(&held, "a");
    assert_int_equal(held_sub(&held, "a")->from_seq, chan("a")->last_seq);
    assert_true(held_sub(&held, "a")->from_seq < on_b);
    hub_unsubscribe_all(&hub, 0, &held);
}

/* ---- cluster mode: the node's cache, with a backend that only records ---------- */

static struct {
    int wants, unwants, synced, synced_err, pwants, punwants;
} fake;

static void fake_want(void *be, const char *name, size_t len)
{
    fake.wants++;
}

static void fake_unwant(void *be, const char *name, size_t len)
{
    fake.unwants++;
}

static void fake_synced(struct hub *h, int w, void *conn, int err)
{
    fake.synced++;
    fake.synced_err = err;
}

static void fake_want_pattern(void *be, const char *head, size_t len)
{
    fake.pwants++;
}

static void fake_unwant_pattern(void *be, const char *head, size_t len)
{
    fake.punwants++;
}

static const struct hub_backend_ops fake_ops = {.want = fake_want,
                                                .unwant = fake_unwant,
                                                .want_pattern = fake_want_pattern,
                                                .unwant_pattern = fake_unwant_pattern};

static int setup_cluster(void **state)
{
    setup(state);
    memset(&fake, 0, sizeof(fake));
    hub.be_ops = &fake_ops;
    hub.on_synced = fake_synced;
    return 0;
}

/* A stored message as the backend reads it back (body "m<seq>"). */
static struct hub_entry entry(uint64_t seq, char *buf)
{
    int n = snprintf(buf, 32, "\"m%" PRIu64 "\"", seq);
    struct hub_entry e = {.seq = seq, .time_ms = wall_ms()};
    e.req.data_json = (struct slice){buf, (uint32_t)n};
    e.req.raw = (struct slice){buf + 1, (uint32_t)n - 2};
    return e;
}

static void ingest(const char *name, uint64_t seq)
{
    char buf[32];
    struct hub_entry e = entry(seq, buf);
    struct slice ch = sl(name);
    hub_ingest(&hub, &ch, &ch, 1, seq, e.time_ms, &e.req);
}

/* Subscribes held (worker 0) to "a"; the hub error, HUB_PENDING or 0 (bl then filled). */
static int subscribe_a(struct list *held, struct hub_backlog *bl, size_t *bad)
{
    const char *a[] = {"a"};
    return subscribe(0, held, a, 1, false, 0, bl, bad);
}

/* Subscribes a new connection to "a", which parks it until the cache of "a" is loaded. */
static void park_on_a(struct list *held)
{
    list_init(held);
    struct hub_backlog bl;
    assert_int_equal(subscribe_a(held, &bl, NULL), HUB_PENDING);
}

static void check_cache(const char *name, const uint64_t *want, uint32_t n)
{
    struct channel *ch = chan(name);
    assert_int_equal(ch->hist_len, n);
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(hist(ch, i)->seq, want[i]);
}

/* A new connection subscribes to "a", whose cache loads entries[0..n), then holds it. */
static void hold_loaded_a(struct list *held, const struct hub_entry *entries, size_t n)
{
    park_on_a(held);
    uint64_t last, t = hub_channel_loading(&hub, "a", 1, &last);
    assert_false(hub_channel_loaded(&hub, "a", 1, t, 0, entries, n, 0, NULL));
    struct hub_backlog bl;
    assert_int_equal(subscribe_a(held, &bl, NULL), 0);
    hub_backlog_free(&bl);
}

/* Keeps name's cache loaded with entries[0..n): a connection (held) holds it. */
static void hold_loaded(struct list *held, const char *name, const struct hub_entry *entries,
                        size_t n)
{
    const char *names[] = {name};
    struct hub_backlog bl;
    list_init(held);
    assert_int_equal(subscribe(0, held, names, 1, false, 0, &bl, NULL), HUB_PENDING);
    uint64_t last, t = hub_channel_loading(&hub, name, strlen(name), &last);
    assert_false(hub_channel_loaded(&hub, name, strlen(name), t, 0, entries, n, 0, NULL));
    assert_int_equal(subscribe(0, held, names, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
}

/* On a Redis Cluster ids are per channel: two messages of two channels may share one.
 * A resume gets both; and one message published to both comes once, as the first
 * channel's in the publisher's order, whatever the order of the subscribe. */
static void test_cluster_backlog_tells_messages_that_share_an_id_from_copies(void **state)
{
    char b1[32], b2[32], b3[32], b4[32];
    struct hub_entry a[] = {entry(10, b1), entry(20, b2)}, b[] = {entry(10, b3), entry(20, b4)};
    for (int i = 0; i < 2; i++) { /* id 20: one publish to "b" then "a" */
        struct hub_entry *copy = i ? &b[1] : &a[1];
        copy->channels[0] = sl("b");
        copy->channels[1] = sl("a");
        copy->nchannels = 2;
    }
    struct list ha, hb, held;
    hold_loaded(&ha, "a", a, 2);
    hold_loaded(&hb, "b", b, 2);
    list_init(&held);
    const char *names[] = {"a", "b"};
    struct hub_backlog bl;
    assert_int_equal(subscribe(0, &held, names, 2, true, 5, &bl, NULL), 0);
    assert_int_equal(bl.n, 3);
    assert_int_equal(bl.msgs[0]->seq, 10);
    assert_int_equal(bl.msgs[1]->seq, 10);
    assert_true(bl.msgs[0]->chan_id != bl.msgs[1]->chan_id); /* two messages */
    assert_int_equal(bl.msgs[2]->seq, 20);
    assert_int_equal(bl.msgs[2]->chan_id, chan("b")->id); /* the publisher's first channel */
    hub_backlog_free(&bl);
    hub_unsubscribe_all(&hub, 0, &held);
    hub_unsubscribe_all(&hub, 0, &ha);
    hub_unsubscribe_all(&hub, 0, &hb);
    struct seen s[8];
    drain(0, s, 8);
}

/* A cache that holds no message goes with its last subscriber, and stops following. */
static void test_cluster_cache_without_messages_goes_with_its_last_subscriber(void **state)
{
    struct list held;
    hold_loaded_a(&held, NULL, 0);
    assert_true(chan("a")->ephemeral);
    hub_unsubscribe_all(&hub, 0, &held);
    assert_null(chan("a"));
    assert_int_equal(fake.unwants, 1);

    /* With a message it lingers for long-pollers coming back. */
    char b[32];
    struct hub_entry e[] = {entry(10, b)};
    hold_loaded_a(&held, e, 1);
    assert_false(chan("a")->ephemeral);
    hub_unsubscribe_all(&hub, 0, &held);
    assert_non_null(chan("a"));
    assert_int_equal(fake.unwants, 1);
    struct seen s[2];
    drain(0, s, 2);
}

static void test_cluster_overlapping_loads_keep_live_messages_until_the_last(void **state)
{
    struct list held;
    park_on_a(&held);
    assert_int_equal(fake.wants, 1);
    assert_int_equal(chan("a")->evicted_seq, 0); /* no gap from this node's start-up */
    uint64_t last = 99;
    uint64_t t1 = hub_channel_loading(&hub, "a", 1, &last);
    assert_true(t1 != 0);
    assert_int_equal(last, 0);
    uint64_t t2 = hub_channel_loading(&hub, "a", 1, &last); /* the bus resubscribed */
    ingest("a", 50);                                        /* live, while loading: held */
    char b1[32], b2[32], b3[32];
    struct hub_entry first[] = {entry(10, b1), entry(20, b2)};
    assert_false(hub_channel_loaded(&hub, "a", 1, t1, 0, first, 2, 5, NULL));
    /* The cache serves now (the waiter is woken); live messages wait for the second load. */
    assert_int_equal(fake.synced, 1);
    assert_int_equal(fake.synced_err, 0);
    assert_int_equal(chan("a")->sync, SYNC_FILLING);
    uint64_t want1[] = {10, 20};
    check_cache("a", want1, 2);
    struct hub_entry second[] = {entry(20, b1), entry(30, b2), entry(50, b3)};
    assert_false(hub_channel_loaded(&hub, "a", 1, t2, 0, second, 3, 5, NULL));
    assert_int_equal(chan("a")->sync, SYNC_READY);
    uint64_t want2[] = {10, 20, 30, 50}; /* in order, once each */
    check_cache("a", want2, 4);
    assert_int_equal(chan("a")->evicted_seq, 5);
    /* A reply for a load nobody started is ignored. */
    assert_false(hub_channel_loaded(&hub, "a", 1, t2, HUB_ERR_BACKEND, NULL, 0, 0, NULL));
    assert_int_equal(chan("a")->sync, SYNC_READY);
}

static void test_cluster_failed_gap_fill_is_retried_and_holds_live_messages(void **state)
{
    struct list held;
    park_on_a(&held);
    uint64_t last;
    uint64_t t = hub_channel_loading(&hub, "a", 1, &last);
    char b1[32], b2[32];
    struct hub_entry e[] = {entry(10, b1)};
    assert_false(hub_channel_loaded(&hub, "a", 1, t, 0, e, 1, 0, NULL));
    struct hub_backlog bl;
    assert_int_equal(subscribe_a(&held, &bl, NULL), 0);
    hub_backlog_free(&bl);
    struct seen s[8];
    drain(0, s, 8);

    /* Redis came back: the gap fill fails, the subscriber stays, the backend retries. */
    t = hub_channel_loading(&hub, "a", 1, &last);
    assert_int_equal(last, 10);
    ingest("a", 40);
    assert_true(hub_channel_loaded(&hub, "a", 1, t, HUB_ERR_BACKEND, NULL, 0, 0, NULL));
    assert_int_equal(chan("a")->sync, SYNC_FILLING);
    assert_int_equal(chan("a")->subscribers, 1);
    assert_int_equal(drain(0, s, 8), 0); /* held, not delivered out of order */
    t = hub_channel_loading(&hub, "a", 1, &last);
    struct hub_entry fill[] = {entry(20, b1), entry(40, b2)};
    assert_false(hub_channel_loaded(&hub, "a", 1, t, 0, fill, 2, 0, NULL));
    assert_int_equal(chan("a")->sync, SYNC_READY);
    assert_int_equal(drain(0, s, 8), 2);
    assert_int_equal(s[0].seq, 20);
    assert_int_equal(s[1].seq, 40);
    hub_unsubscribe_all(&hub, 0, &held);
}

static void test_cluster_a_first_load_that_fails_tells_the_waiters(void **state)
{
    struct list held;
    park_on_a(&held);
    uint64_t last;
    uint64_t t = hub_channel_loading(&hub, "a", 1, &last);
    ingest("a", 40);
    assert_false(hub_channel_loaded(&hub, "a", 1, t, HUB_ERR_BACKEND, NULL, 0, 0, NULL));
    assert_int_equal(fake.synced_err, HUB_ERR_BACKEND);
    assert_int_equal(chan("a")->sync, SYNC_FAILED);
    assert_int_equal(chan("a")->nheld, 0); /* released (the ASan build checks) */
    /* Within a second the same error comes back at once, without a new load. */
    size_t bad;
    struct hub_backlog bl;
    assert_int_equal(subscribe_a(&held, &bl, &bad), HUB_ERR_BACKEND);
    assert_int_equal(fake.wants, 1);
}

static void test_cluster_held_live_messages_are_capped_at_the_history_size(void **state)
{
    cfg.history_size = 3;
    struct list held;
    park_on_a(&held);
    uint64_t last;
    uint64_t t = hub_channel_loading(&hub, "a", 1, &last);
    for (uint64_t seq = 10; seq <= 50; seq += 10)
        ingest("a", seq);
    /* Only the newest are kept: the load reads the older ones from the Stream anyway. */
    struct channel *a = chan("a");
    assert_int_equal(a->nheld, 3);
    assert_int_equal(a->held[0]->seq, 30);
    assert_int_equal(a->held[2]->seq, 50);
    char b1[32], b2[32];
    struct hub_entry e[] = {entry(10, b1), entry(20, b2)};
    assert_false(hub_channel_loaded(&hub, "a", 1, t, 0, e, 2, 0, NULL));
    uint64_t want[] = {30, 40, 50};
    check_cache("a", want, 3);
}

static void test_cluster_deleted_channel_is_dropped_and_unwanted(void **state)
{
    struct list held;
    park_on_a(&held);
    uint64_t last;
    uint64_t t = hub_channel_loading(&hub, "a", 1, &last);
    hub_channel_gone(&hub, "a", 1); /* deleted on another node while we load */
    assert_null(chan("a"));
    assert_int_equal(fake.unwants, 1);
    assert_int_equal(fake.synced, 1); /* the parked subscribe starts over */
    assert_int_equal(fake.synced_err, 0);
    assert_false(hub_channel_loaded(&hub, "a", 1, t, 0, NULL, 0, 0, NULL)); /* stale */
    /* Subscribing again wants it afresh. */
    struct hub_backlog bl;
    assert_int_equal(subscribe_a(&held, &bl, NULL), HUB_PENDING);
    assert_int_equal(fake.wants, 2);
    assert_true(hub_channel_loading(&hub, "a", 1, &last) != t);
    struct seen s[4];
    drain(0, s, 4);
    drain(1, s, 4);
}

static void test_subscribe_twice_and_duplicates(void **state)
{
    struct list held;
    list_init(&held);
    struct hub_backlog bl;
    const char *names[] = {"a", "a", "b"};
    assert_int_equal(subscribe(0, &held, names, 3, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    assert_int_equal(held_count(&held), 2);
    assert_int_equal(chan("a")->subscribers, 1);
    const char *again[] = {"b"};
    assert_int_equal(subscribe(0, &held, again, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    assert_int_equal(held_count(&held), 2);
    assert_int_equal(chan("b")->subscribers, 1);
    assert_int_equal(chan("b")->local[0].n, 1);

    /* The per-connection limit counts what is already held; nothing is added on error. */
    struct slice s[2] = {sl("c"), sl("d")};
    size_t bad;
    struct hub_client three = {.max_subs = 3};
    assert_int_equal(hub_subscribe(&hub, 0, &held, &held, s, 2, false, 0, &three, &bl, &bad),
                     HUB_ERR_TOO_MANY_SUBS);
    assert_int_equal(held_count(&held), 2);
    assert_int_equal(hub_subscribe(&hub, 0, &held, &held, s, 1, false, 0, &three, &bl, &bad), 0);
    hub_backlog_free(&bl);
    assert_int_equal(held_count(&held), 3);
    hub_unsubscribe_all(&hub, 0, &held);
}

/*
 * Issue 7: the per-connection limit counted every name of a subscribe, so asking
 * again for channels already held (a client re-sending its list) was refused.
 */
static void test_resubscribing_held_channels_counts_them_once(void **state)
{
    struct list held;
    hold_a_and_b(&held);
    struct slice again[] = {sl("a"), sl("b"), sl("c"), sl("c")};
    struct hub_client three = {.max_subs = 3};
    struct hub_backlog bl;
    size_t bad;
    assert_int_equal(hub_subscribe(&hub, 0, &held, &held, again, 4, false, 0, &three, &bl, &bad),
                     0);
    hub_backlog_free(&bl);
    assert_int_equal(held_count(&held), 3);
    struct slice d[] = {sl("a"), sl("d")};
    assert_int_equal(hub_subscribe(&hub, 0, &held, &held, d, 2, false, 0, &three, &bl, &bad),
                     HUB_ERR_TOO_MANY_SUBS);
    hub_unsubscribe_all(&hub, 0, &held);
}

/* ---- inboxes and unsubscribe ------------------------------------------------ */

struct wake_count {
    int calls;
};

static void count_wake(void *arg)
{
    ((struct wake_count *)arg)->calls++;
}

static void test_publish_fills_the_subscribers_worker_inbox(void **state)
{
    struct wake_count w0 = {0}, w1 = {0};
    hub.inbox[0].wake = count_wake;
    hub.inbox[0].wake_arg = &w0;
    hub.inbox[1].wake = count_wake;
    hub.inbox[1].wake_arg = &w1;

    struct list held;
    hold_a_and_b(&held);
    struct hub_backlog bl;
    const char *names[] = {"a", "b"};
    struct channel *a = chan("a"), *b = chan("b");
    assert_int_equal(a->worker_mask, 1);
    assert_int_equal(b->worker_mask, 1);
    assert_int_equal(refs(a), 2); /* the table and worker 0 */

    const char *one[] = {"a"};
    uint64_t x;
    uint32_t subs;
    assert_int_equal(publish_n(one, 1, "m1", &x, &subs), 0);
    assert_int_equal(subs, 1);
    assert_int_equal(w0.calls, 1);
    uint64_t y;
    assert_int_equal(publish_n(names, 2, "m2", &y, &subs), 0);
    assert_int_equal(subs, 2);
    assert_int_equal(w0.calls, 1); /* woken when the inbox became non-empty, not per item */
    assert_int_equal(w1.calls, 0);
    pub("unrelated", "m3");
    assert_int_equal(refs(a), 2 + 2);                        /* two pending items */
    assert_int_equal(atomic_load(&hist(a, 0)->ref.refs), 2); /* history + item */

    struct seen s[8];
    assert_int_equal(drain(0, s, 8), 3);
    assert_int_equal(s[0].kind, INBOX_MSG);
    assert_int_equal(s[0].seq, x);
    assert_ptr_equal(s[0].ch, a);
    assert_int_equal(s[1].kind, INBOX_MSG);
    assert_int_equal(s[2].kind, INBOX_MSG);
    assert_int_equal(s[1].seq, y);
    assert_int_equal(s[2].seq, y);
    assert_true((s[1].ch == a && s[2].ch == b) || (s[1].ch == b && s[2].ch == a));
    assert_int_equal(drain(1, s, 8), 0);
    assert_int_equal(drain(0, s, 8), 0); /* taking empties it */
    assert_int_equal(refs(a), 2);
    assert_int_equal(atomic_load(&hist(a, 0)->ref.refs), 1);

    /* The next item after a take wakes the worker again. */
    pub("b", "m4");
    assert_int_equal(w0.calls, 2);
    assert_int_equal(drain(0, s, 8), 1);

    /* A subscriber of b on worker 1: each worker gets its own items. */
    struct list h1;
    list_init(&h1);
    const char *only_b[] = {"b"};
    assert_int_equal(subscribe(1, &h1, only_b, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    assert_int_equal(b->worker_mask, 3);
    uint64_t z = pub2("a", "b", "m5");
    assert_int_equal(w1.calls, 1);
    assert_int_equal(drain(0, s, 8), 2);
    assert_int_equal(drain(1, s, 8), 1);
    assert_int_equal(s[0].seq, z);
    assert_ptr_equal(s[0].ch, b);

    hub_unsubscribe_all(&hub, 0, &held);
    hub_unsubscribe_all(&hub, 1, &h1);
    assert_int_equal(refs(a), 1);
    assert_int_equal(refs(b), 1);
}

static void test_unsubscribe_clears_the_worker_bit(void **state)
{
    struct list c1, c2;
    list_init(&c1);
    list_init(&c2);
    struct hub_backlog bl;
    const char *names[] = {"a"};
    assert_int_equal(subscribe(0, &c1, names, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    assert_int_equal(subscribe(0, &c2, names, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    struct channel *a = chan("a");
    assert_int_equal(a->subscribers, 2);
    assert_int_equal(a->local[0].n, 2);
    assert_int_equal(refs(a), 2); /* one reference per worker, not per subscriber */

    hub_unsubscribe(&hub, 0, held_sub(&c1, "a"));
    assert_true(list_empty(&c1));
    assert_int_equal(a->subscribers, 1);
    assert_int_equal(a->worker_mask, 1);
    uint32_t subs;
    assert_int_equal(publish_n(names, 1, "still", NULL, &subs), 0);
    assert_int_equal(subs, 1);
    struct seen s[4];
    assert_int_equal(drain(0, s, 4), 1);

    hub_unsubscribe(&hub, 0, held_sub(&c2, "a"));
    assert_int_equal(a->subscribers, 0);
    assert_int_equal(a->worker_mask, 0);
    assert_int_equal(refs(a), 1);
    assert_int_equal(publish_n(names, 1, "nobody", NULL, &subs), 0);
    assert_int_equal(subs, 0);
    assert_int_equal(drain(0, s, 4), 0);
    assert_int_equal(drain(1, s, 4), 0);
}

/* ---- creation limits and validation ------------------------------------------ */

static void test_auto_create_off(void **state)
{
    cfg.auto_create = false;
    uint64_t seq = hub.seq;
    const char *a[] = {"a"};
    assert_int_equal(publish_n(a, 1, "x", NULL, NULL), HUB_ERR_NOT_FOUND);
    assert_null(chan("a"));
    assert_int_equal(hub.seq, seq);
    assert_int_equal(atomic_load(&hub.stats.published), 0);

    struct list held;
    list_init(&held);
    struct hub_backlog bl;
    size_t bad;
    assert_int_equal(subscribe(0, &held, a, 1, true, 0, &bl, &bad), HUB_ERR_NOT_FOUND);
    assert_int_equal(bad, 0);
    assert_null(chan("a"));

    /* Explicitly created channels work; a missing one among them is named. */
    struct channel_opts o = {0};
    bool created;
    struct channel_info info;
    assert_int_equal(hub_channel_put(&hub, "a", 1, &o, &created, &info), 0);
    assert_true(created);
    const char *both[] = {"a", "missing"};
    assert_int_equal(subscribe(0, &held, both, 2, false, 0, &bl, &bad), HUB_ERR_NOT_FOUND);
    assert_int_equal(bad, 1);
    assert_true(list_empty(&held));
    assert_int_equal(chan("a")->subscribers, 0);
    assert_int_equal(publish_n(both, 2, "x", NULL, NULL), HUB_ERR_NOT_FOUND);
    assert_int_equal(chan("a")->hist_len, 0);
    assert_int_equal(hub.seq, seq);

    assert_int_equal(publish_n(a, 1, "x", NULL, NULL), 0);
    assert_int_equal(subscribe(0, &held, a, 1, true, 0, &bl, &bad), 0);
    assert_int_equal(bl.n, 1);
    hub_backlog_free(&bl);
    hub_unsubscribe_all(&hub, 0, &held);
}

static void test_max_channels(void **state)
{
    cfg.max_channels = 2;
    pub("a", "1");
    pub("b", "2");
    const char *c[] = {"c"};
    assert_int_equal(publish_n(c, 1, "3", NULL, NULL), HUB_ERR_TOO_MANY);
    assert_null(chan("c"));
    struct channel_opts o = {0};
    bool created;
    struct channel_info info;
    assert_int_equal(hub_channel_put(&hub, "c", 1, &o, &created, &info), HUB_ERR_TOO_MANY);
    assert_int_equal(hub.channels.len, 2);

    /* Existing channels are unaffected; freeing a slot lets a new one in. */
    pub("a", "4");
    assert_int_equal(hub_channel_delete(&hub, "b", 1), 0);
    assert_int_equal(publish_n(c, 1, "5", NULL, NULL), 0);
    assert_non_null(chan("c"));
}

/* ---- ephemeral channels (issue 7, item 5) ----------------------------------------- */

/* A channel only subscribed to goes with its last subscriber, on any worker. */
static void test_ephemeral_channel_goes_with_its_last_subscriber(void **state)
{
    struct list c1, c2;
    list_init(&c1);
    list_init(&c2);
    take_on(0, &c1, "e");
    take_on(1, &c2, "e");
    assert_true(chan("e")->ephemeral);
    assert_int_equal(hub.nephemeral, 1);
    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, "e", 1, &info), 0);
    assert_int_equal(info.subscribers, 2);
    assert_int_equal(info.expires_ms, 0); /* no TTL: it goes with its subscribers */
    hub_unsubscribe_all(&hub, 0, &c1);
    assert_non_null(chan("e"));
    hub_unsubscribe_all(&hub, 1, &c2);
    assert_null(chan("e"));
    assert_int_equal(hub.nephemeral, 0);
    assert_int_equal(hub.channels.len, 0);
    assert_int_equal(hub.tombs.len, 0); /* it had no message to remember */
    struct seen s[2];
    assert_int_equal(drain(0, s, 2), 0); /* nobody to tell */
    assert_int_equal(drain(1, s, 2), 0);
}

/* A publish (or a PUT) makes it an ordinary channel, which stays after its subscribers. */
static void test_published_ephemeral_channel_becomes_stored(void **state)
{
    struct list held;
    hold_a_and_b(&held);
    assert_int_equal(hub.nephemeral, 2);
    pub("a", "1");
    struct channel_opts o = {0};
    bool created;
    struct channel_info info;
    assert_int_equal(hub_channel_put(&hub, "b", 1, &o, &created, &info), 0);
    assert_false(created);
    assert_int_equal(hub.nephemeral, 0);
    assert_true(info.expires_ms != 0);
    hub_unsubscribe_all(&hub, 0, &held);
    assert_non_null(chan("a"));
    assert_non_null(chan("b"));
    struct seen s[2];
    drain(0, s, 2);
}

/*
 * Ephemeral channels have a --max-channels budget of their own: subscribers making
 * up names fill it, but publishing to new channels and subscribing to existing
 * ones still work.
 */
static void test_ephemeral_channels_have_their_own_budget(void **state)
{
    cfg.max_channels = 2;
    struct list held, other;
    hold_a_and_b(&held);
    list_init(&other);
    struct hub_backlog bl;
    size_t bad;
    const char *more[] = {"a", "c"};
    assert_int_equal(subscribe(1, &other, more, 2, false, 0, &bl, &bad),
                     HUB_ERR_TOO_MANY_EPHEMERAL);
    assert_int_equal(bad, 1); /* the channel that could not be created */
    assert_true(list_empty(&other));
    pub("p", "1");
    pub("q", "2");
    const char *r[] = {"r"};
    assert_int_equal(publish_n(r, 1, "3", NULL, NULL), HUB_ERR_TOO_MANY);
    const char *existing[] = {"a", "p"};
    assert_int_equal(subscribe(1, &other, existing, 2, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    pub("a", "to a subscribed-only channel"); /* always works: it exists */
    assert_int_equal(hub.nephemeral, 1);
    take_on(1, &other, "c"); /* in a's place */
    hub_unsubscribe_all(&hub, 0, &held);
    hub_unsubscribe_all(&hub, 1, &other);
    assert_null(chan("b"));
    assert_null(chan("c"));
    struct seen s[4];
    drain(0, s, 4);
    drain(1, s, 4);
}

/* A name that had messages keeps its tomb through a life as an ephemeral channel. */
static void test_ephemeral_channel_keeps_the_gap_of_a_deleted_one(void **state)
{
    uint64_t old = pub("t", "1");
    pub("t", "2");
    assert_int_equal(hub_channel_delete(&hub, "t", 1), 0);
    struct list held;
    list_init(&held);
    take_channel(&held, "t");
    hub_unsubscribe_all(&hub, 0, &held);
    assert_null(chan("t"));
    struct hub_backlog bl;
    const char *t[] = {"t"};
    assert_int_equal(subscribe(0, &held, t, 1, true, old, &bl, NULL), 0);
    assert_int_equal(bl.ngaps, 1); /* the second message is gone for good */
    hub_backlog_free(&bl);
    hub_unsubscribe_all(&hub, 0, &held);
}

/* ---- per-address limit (--max-channels-per-ip) --------------------------------- */

/* A limited client at address ip (IPv4 or IPv6 text). */
static struct hub_client client_at(const char *ip)
{
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1)
        ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1)
        ss.ss_family = AF_INET6;
    struct hub_client cl = {.max_subs = 64};
    assert_true(hub_client_set_addr(&cl, &ss));
    cl.limited = true;
    return cl;
}

/* IPv4 and IPv4-mapped IPv6 are one client; an IPv6 client is its /64. */
static void test_client_address_keys(void **state)
{
    struct hub_client a = client_at("192.0.2.7"), b = client_at("::ffff:192.0.2.7");
    assert_memory_equal(a.addr, b.addr, 16);
    struct hub_client c = client_at("2001:db8:1:2:aaaa::1"), d = client_at("2001:db8:1:2:bbbb::2");
    assert_memory_equal(c.addr, d.addr, 16);
    struct hub_client e = client_at("2001:db8:1:3::1");
    assert_memory_not_equal(c.addr, e.addr, 16);
    struct sockaddr_storage unix_sa = {.ss_family = AF_UNIX};
    struct hub_client u = {.limited = true};
    assert_false(hub_client_set_addr(&u, &unix_sa));
    assert_false(u.limited);
}

/* Subscribes conn (worker 0) as client cl to names[0..n); the hub error or 0. */
static int subscribe_as(const struct hub_client *cl, struct list *held, const char *const *names,
                        size_t n, size_t *bad)
{
    struct slice s[64];
    for (size_t i = 0; i < n; i++)
        s[i] = sl(names[i]);
    struct hub_backlog bl;
    int err = hub_subscribe(&hub, 0, held, held, s, n, false, 0, cl, &bl, bad);
    if (!err)
        hub_backlog_free(&bl);
    return err;
}

static void test_max_channels_per_address(void **state)
{
    cfg.max_channels_per_ip = 2;
    struct hub_client a = client_at("192.0.2.1"), b = client_at("192.0.2.2");
    struct list a1, a2, b1;
    list_init(&a1);
    list_init(&a2);
    list_init(&b1);
    const char *two[] = {"x", "y"}, *z[] = {"z"}, *xz[] = {"x", "z"};
    size_t bad = 9;
    assert_int_equal(subscribe_as(&a, &a1, two, 2, &bad), 0);
    assert_int_equal(subscribe_as(&a, &a2, xz, 2, &bad), HUB_ERR_TOO_MANY_FOR_ADDR);
    assert_int_equal(bad, 1); /* z, the one it would create */
    assert_true(list_empty(&a2));
    assert_int_equal(subscribe_as(&a, &a2, two, 2, &bad), 0); /* existing: nothing created */
    assert_int_equal(subscribe_as(&b, &b1, xz, 2, &bad), 0);  /* another address */

    pub("x", "1"); /* x is someone's channel now: a has room for one */
    assert_int_equal(hub.quotas.len, 2);
    const char *w[] = {"w"};
    assert_int_equal(subscribe_as(&a, &a2, w, 1, &bad), 0);
    assert_int_equal(subscribe_as(&a, &a2, z, 1, &bad), 0); /* b created z */
    const char *v[] = {"v"};
    assert_int_equal(subscribe_as(&a, &a2, v, 1, &bad), HUB_ERR_TOO_MANY_FOR_ADDR);

    /* Channels go with their subscribers, and their count with them. */
    hub_unsubscribe_all(&hub, 0, &a1);
    hub_unsubscribe_all(&hub, 0, &a2);
    assert_int_equal(hub.quotas.len, 1); /* b's z */
    hub_unsubscribe_all(&hub, 0, &b1);
    assert_int_equal(hub.quotas.len, 0);
    assert_int_equal(hub.channels.len, 1); /* x */
    struct seen s[4];
    drain(0, s, 4);
}

/*
 * A publish to [new, existing] at the limit minus one creates one channel,
 * which fits: the limit check must count only the channels that are missing,
 * whatever their position in the list.
 */
static void test_max_channels_counts_only_missing_channels(void **state)
{
    cfg.max_channels = 2;
    pub("a", "1");
    const char *existing_last[] = {"b", "a"};
    assert_int_equal(publish_n(existing_last, 2, "2", NULL, NULL), 0);
    assert_non_null(chan("b"));
}

static void test_max_channels_existing_first(void **state)
{
    cfg.max_channels = 2;
    pub("a", "1");
    const char *existing_first[] = {"a", "b"};
    assert_int_equal(publish_n(existing_first, 2, "2", NULL, NULL), 0);
    assert_non_null(chan("b"));
}

static void test_channel_name_valid(void **state)
{
    const char *ok = "azAZ09_.:@/-";
    assert_true(hub_channel_name_valid(ok, strlen(ok)));
    assert_true(hub_channel_name_valid("a", 1));
    assert_true(hub_channel_name_valid("user:42/inbox@eu-west.1", 23));
    char name[200];
    memset(name, 'n', sizeof(name));
    assert_true(hub_channel_name_valid(name, 128));
    assert_false(hub_channel_name_valid(name, 129));
    assert_false(hub_channel_name_valid(name, 200));
    assert_false(hub_channel_name_valid("", 0));
    assert_false(hub_channel_name_valid("abc", 0));

    /* Every byte outside the allowed set, alone and in the middle of a name. */
    for (int c = 0; c < 256; c++) {
        bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       strchr("_.:@/-", c) != NULL;
        if (c == 0)
            allowed = false;
        char one[1] = {(char)c};
        char mid[3] = {'a', (char)c, 'b'};
        assert_int_equal(hub_channel_name_valid(one, 1), allowed);
        assert_int_equal(hub_channel_name_valid(mid, 3), allowed);
    }
    name[127] = ' ';
    assert_false(hub_channel_name_valid(name, 128));
}

static void test_cursor_parse(void **state)
{
    uint64_t v = 7;
    assert_int_equal(hub_cursor_parse("", 0, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(hub_cursor_parse("0", 1, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(hub_cursor_parse("1700000000123456", 16, &v), 0);
    assert_int_equal(v, 1700000000123456ull);
    assert_int_equal(hub_cursor_parse("12345", 2, &v), 0); /* only len bytes */
    assert_int_equal(v, 12);
    assert_int_equal(hub_cursor_parse("18446744073709551615", 20, &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(hub_cursor_parse("00000000000000000001", 20, &v), 0);
    assert_int_equal(v, 1);

    static const char *const bad[] = {
        "18446744073709551616", /* UINT64_MAX + 1 */
        "18446744073709551620",
        "99999999999999999999",
        "184467440737095516150",
        "123456789012345678901234",
        "-1",
        "+1",
        " 1",
        "1 ",
        "12a",
        "a12",
        "0x10",
        "1.5",
        "1e3",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        v = 42;
        assert_int_equal(hub_cursor_parse(bad[i], strlen(bad[i]), &v), HUB_ERR_CURSOR);
        assert_int_equal(v, 42); /* untouched on error */
    }
    assert_int_equal(hub_cursor_parse("1\0"
                                      "2",
                                      3, &v),
                     HUB_ERR_CURSOR);
    assert_non_null(hub_strerror(HUB_ERR_CURSOR));
}

/* ---- channel administration ------------------------------------------------ */

static void test_channel_put_get(void **state)
{
    struct channel_opts o = {
        .has_ttl = true, .ttl_ms = 5000, .has_history_size = true, .history_size = 4};
    bool created = false;
    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), HUB_ERR_NOT_FOUND);
    assert_int_equal(hub_channel_put(&hub, "a", 1, &o, &created, &info), 0);
    assert_true(created);
    assert_string_equal(info.name, "a");
    assert_int_equal(info.ttl_ms, 5000);
    assert_int_equal(info.history_size, 4);
    assert_int_equal(info.history_ttl_ms, cfg.history_ttl_ms); /* not given: the default */
    assert_false(info.persistent);
    assert_int_equal(info.messages_total, 0);
    assert_int_equal(info.last_id, 0);
    assert_true(info.expires_ms >= info.last_active_ms + 5000);

    uint64_t id[6];
    for (int i = 0; i < 6; i++)
        id[i] = pub("a", "xy");
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), 0);
    assert_int_equal(info.messages_total, 6);
    assert_int_equal(info.messages_retained, 4);
    assert_int_equal(info.retained_bytes, hist_size_sum(chan("a")));
    assert_int_equal(info.oldest_id, id[2]);
    assert_int_equal(info.last_id, id[5]);

    /* Updating: persistent, and a smaller history trims at once. */
    struct channel_opts u = {
        .has_persistent = true, .persistent = true, .has_history_size = true, .history_size = 2};
    assert_int_equal(hub_channel_put(&hub, "a", 1, &u, &created, &info), 0);
    assert_false(created);
    assert_true(info.persistent);
    assert_int_equal(info.ttl_ms, 5000);
    assert_int_equal(info.expires_ms, 0);
    assert_int_equal(info.messages_retained, 2);
    assert_int_equal(info.oldest_id, id[4]);
    /* ... and the smaller bound holds for what comes next, in order. */
    uint64_t n1 = pub("a", "z"), n2 = pub("a", "z"), n3 = pub("a", "z");
    struct channel *ch = chan("a");
    assert_int_equal(ch->hist_len, 2);
    assert_int_equal(hist(ch, 0)->seq, n2);
    assert_int_equal(hist(ch, 1)->seq, n3);
    assert_int_equal(ch->evicted_seq, n1);

    /* Growing the history again keeps what is there and admits more. */
    struct channel_opts g = {.has_history_size = true, .history_size = 10};
    assert_int_equal(hub_channel_put(&hub, "a", 1, &g, &created, &info), 0);
    uint64_t more[8];
    for (int i = 0; i < 8; i++)
        more[i] = pub("a", "z");
    assert_int_equal(ch->hist_len, 10);
    assert_int_equal(hist(ch, 0)->seq, n2);
    assert_int_equal(hist(ch, 1)->seq, n3);
    for (uint32_t i = 0; i < 8; i++)
        assert_int_equal(hist(ch, 2 + i)->seq, more[i]);
}

static void test_channel_delete(void **state)
{
    assert_int_equal(hub_channel_delete(&hub, "a", 1), HUB_ERR_NOT_FOUND);
    pub("a", "1");
    pub("a", "2");
    assert_int_equal(hub_channel_delete(&hub, "a", 1), 0);
    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), HUB_ERR_NOT_FOUND);
    assert_null(chan("a"));
    assert_int_equal(hub_channel_delete(&hub, "a", 1), HUB_ERR_NOT_FOUND);
    struct seen s[2];
    assert_int_equal(drain(0, s, 2), 0); /* nobody to tell */

    /* The name can be used again, for a fresh channel. */
    uint64_t id = pub("a", "3");
    assert_int_equal(hub_channel_get(&hub, "a", 1, &info), 0);
    assert_int_equal(info.messages_total, 1);
    assert_int_equal(info.oldest_id, id);
}

static void test_delete_with_subscriber_queues_closed(void **state)
{
    struct list held;
    hold_a_and_b(&held);
    struct channel *a = chan("a");
    uint64_t x = pub("a", "last words");
    assert_int_equal(hub_channel_delete(&hub, "a", 1), 0);
    assert_true(a->deleted); /* still alive: the subscriber holds it */
    assert_null(chan("a"));

    struct seen s[4];
    assert_int_equal(drain(0, s, 4), 2);
    assert_int_equal(s[0].kind, INBOX_MSG);
    assert_int_equal(s[0].seq, x);
    assert_int_equal(s[1].kind, INBOX_CLOSED);
    assert_ptr_equal(s[1].ch, a);
    assert_int_equal(drain(1, s, 4), 0);
    assert_int_equal(refs(a), 1); /* only worker 0's reference is left */

    hub_unsubscribe_all(&hub, 0, &held);
    assert_true(list_empty(&held));
    assert_null(chan("b")); /* only subscribed to: gone with its subscriber */
}

/*
 * hub_free at shutdown releases everything, including a deleted channel that
 * only a pending (never taken) INBOX_CLOSED item still references. Fails under
 * LeakSanitizer only (the release build cannot see a leak).
 */
static void test_free_releases_channels_of_pending_items(void **state)
{
    struct list held;
    list_init(&held);
    struct hub_backlog bl;
    const char *names[] = {"gone"};
    assert_int_equal(subscribe(0, &held, names, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    pub("gone", "pending");
    assert_int_equal(hub_channel_delete(&hub, "gone", 4), 0);
    hub_unsubscribe_all(&hub, 0, &held);
    /* Worker 0 never took its inbox; teardown's hub_free must release it all. */
}

static void put_channel(const char *name)
{
    struct channel_opts o = {0};
    bool created;
    struct channel_info info;
    assert_int_equal(hub_channel_put(&hub, name, strlen(name), &o, &created, &info), 0);
    assert_true(created);
}

static void test_channel_list(void **state)
{
    const char *names[] = {"e", "x:2", "b", "a", "x:1", "d", "c", "x"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        put_channel(names[i]);
    struct channel_info out[16];
    size_t total = 0;

    size_t n = hub_channel_list(&hub, "", 0, NULL, out, 3, &total);
    assert_int_equal(n, 3);
    assert_int_equal(total, 8);
    assert_string_equal(out[0].name, "a");
    assert_string_equal(out[1].name, "b");
    assert_string_equal(out[2].name, "c");

    n = hub_channel_list(&hub, "c", 1, NULL, out, 3, &total);
    assert_int_equal(n, 3);
    assert_string_equal(out[0].name, "d");
    assert_string_equal(out[1].name, "e");
    assert_string_equal(out[2].name, "x");

    n = hub_channel_list(&hub, "x", 1, NULL, out, 3, &total);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].name, "x:1");
    assert_string_equal(out[1].name, "x:2");

    n = hub_channel_list(&hub, "x:2", 3, NULL, out, 3, &total);
    assert_int_equal(n, 0);
    assert_int_equal(total, 8);

    /* after need not be an existing name */
    n = hub_channel_list(&hub, "bb", 2, NULL, out, 2, &total);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].name, "c");
    assert_string_equal(out[1].name, "d");

    n = hub_channel_list(&hub, "", 0, "x:", out, 16, &total);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].name, "x:1");
    assert_string_equal(out[1].name, "x:2");
    n = hub_channel_list(&hub, "x:1", 3, "x", out, 16, &total);
    assert_int_equal(n, 1);
    assert_string_equal(out[0].name, "x:2");

    n = hub_channel_list(&hub, "", 0, NULL, out, 16, &total);
    assert_int_equal(n, 8);
    for (size_t i = 1; i < n; i++)
        assert_true(strcmp(out[i - 1].name, out[i].name) < 0);
    assert_int_equal(hub_channel_list(&hub, "", 0, NULL, out, 0, &total), 0);
    assert_int_equal(total, 8);
}

static void test_channel_list_pages_a_large_table(void **state)
{
    enum { N = 600, PAGE = 7 };
    char name[32];
    /* Insert in a scrambled order. */
    for (int k = 0; k < N; k++) {
        snprintf(name, sizeof(name), "ch-%d", (k * 241) % N);
        put_channel(name);
    }
    struct channel_info page[PAGE];
    static int seen[N];
    memset(seen, 0, sizeof(seen));
    char after[CHANNEL_NAME_MAX + 1] = "";
    size_t total, got = 0, calls = 0;
    for (;;) {
        size_t n = hub_channel_list(&hub, after, strlen(after), NULL, page, PAGE, &total);
        assert_int_equal(total, N);
        for (size_t i = 0; i < n; i++) {
            if (i)
                assert_true(strcmp(page[i - 1].name, page[i].name) < 0);
            assert_true(strcmp(after, page[i].name) < 0);
            seen[atoi(page[i].name + 3)]++;
        }
        got += n;
        calls++;
        if (n < PAGE)
            break;
        strcpy(after, page[n - 1].name);
    }
    assert_int_equal(got, N);
    assert_int_equal(calls, N / PAGE + 1);
    for (int i = 0; i < N; i++)
        assert_int_equal(seen[i], 1);
}

/* ---- expiry ----------------------------------------------------------------- */

static void test_sweep_expires_idle_channels(void **state)
{
    cfg.channel_ttl_ms = 300;
    pub("idle", "1");
    bool created;
    struct channel_info info;
    struct channel_opts forever = {.has_ttl = true, .ttl_ms = 0};
    assert_int_equal(hub_channel_put(&hub, "forever", 7, &forever, &created, &info), 0);
    assert_int_equal(info.expires_ms, 0); /* a TTL of 0 never expires */
    struct channel_opts p = {.has_persistent = true, .persistent = true};
    assert_int_equal(hub_channel_put(&hub, "keep", 4, &p, &created, &info), 0);
    struct list held;
    list_init(&held);
    struct hub_backlog bl;
    const char *names[] = {"watched"};
    assert_int_equal(subscribe(0, &held, names, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    pub("watched", "stored");
    struct seen s[2];
    assert_int_equal(drain(0, s, 2), 1); /* its subscriber's copy */

    hub_sweep(&hub); /* nothing is old enough yet */
    assert_non_null(chan("idle"));
    assert_non_null(chan("watched"));

    sleep_ms(450);
    hub_sweep(&hub);
    assert_null(chan("idle"));
    assert_non_null(chan("keep"));
    assert_non_null(chan("forever"));
    assert_non_null(chan("watched"));
    assert_int_equal(hub.channels.len, 3);
    assert_int_equal(drain(0, s, 2), 0); /* an expired channel had no one to tell */

    /* Once its last subscriber leaves, the TTL counts from then. */
    hub_unsubscribe_all(&hub, 0, &held);
    hub_sweep(&hub);
    assert_non_null(chan("watched"));
    sleep_ms(450);
    hub_sweep(&hub);
    assert_null(chan("watched"));
    assert_non_null(chan("keep"));
}

static void test_sweep_covers_a_large_table(void **state)
{
    enum { N = 10000 };
    struct channel_opts o = {.has_ttl = true, .ttl_ms = 1};
    bool created;
    struct channel_info info;
    char name[32];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        assert_int_equal(hub_channel_put(&hub, name, strlen(name), &o, &created, &info), 0);
    }
    sleep_ms(20);
    /* Expiry follows the deadlines, not a walk of the table: one call takes them all,
     * going on through worker 0's inbox past its time budget (a slow build). */
    hub_sweep(&hub);
    while (hub.expire_posted) {
        uint32_t n;
        struct inbox_item *items = hub_inbox_take(&hub, 0, &n);
        for (uint32_t i = 0; i < n; i++) {
            assert_int_equal(items[i].kind, INBOX_CALL);
            items[i].fn(items[i].arg);
        }
        free(items);
    }
    assert_int_equal(hub.channels.len, 0);
    assert_int_equal(hub.expiry.len, 0);
}

/* The heap's order and each channel's slot, after any mix of operations. */
static void check_expiry_heap(void)
{
    assert_true(heap_valid(&hub.expiry));
}

/*
 * Channels with different TTLs, renewed, made persistent, deleted: each goes at its
 * own deadline, no earlier, and the heap stays a heap.
 */
static void test_expiry_follows_each_channel_deadline(void **state)
{
    enum { N = 600 };
    char name[32];
    bool created;
    struct channel_info info;
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        /* ttl 0 never expires; 1 s, 2 s, 3 s otherwise, by i % 4 */
        struct channel_opts o = {.has_ttl = true, .ttl_ms = (uint32_t)(i % 4) * 1000};
        assert_int_equal(hub_channel_put(&hub, name, strlen(name), &o, &created, &info), 0);
    }
    check_expiry_heap();
    for (int i = 0; i < N; i += 5) { /* some are deleted, some made persistent */
        snprintf(name, sizeof(name), "c%d", i);
        if (i % 2)
            assert_int_equal(hub_channel_delete(&hub, name, strlen(name)), 0);
        struct channel_opts p = {.has_persistent = true, .persistent = true};
        if (!(i % 2))
            assert_int_equal(hub_channel_put(&hub, name, strlen(name), &p, &created, &info), 0);
        check_expiry_heap();
    }
    /* Move every deadline 10 s back: the ones with a TTL are due now. */
    for (uint32_t i = 0; i < hub.expiry.len; i++) {
        container_of(hub.expiry.v[i], struct channel, expiry)->last_active_ms -= 10000;
        hub.expiry.v[i]->key -= 10000;
    }
    pub("c3", "renewed: 3 s from now"); /* its heap key is early: re-keyed, not expired */
    hub_sweep(&hub);
    check_expiry_heap();
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        bool kept = i % 4 == 0 || i % 10 == 0 || i == 3; /* ttl 0, persistent, renewed */
        assert_int_equal(chan(name) != NULL, kept);
    }
    struct channel *c3 = chan("c3"); /* back in the heap with its real deadline */
    assert_true(heap_linked(&c3->expiry) && c3->expiry.key > wall_ms() + 2000);
}

/* A shorter TTL moves the deadline earlier. */
static void test_put_shortens_the_deadline(void **state)
{
    pub("a", "1");
    struct channel_opts o = {.has_ttl = true, .ttl_ms = 1};
    bool created;
    struct channel_info info;
    assert_int_equal(hub_channel_put(&hub, "a", 1, &o, &created, &info), 0);
    sleep_ms(5);
    hub_sweep(&hub);
    assert_null(chan("a"));
}

/*
 * TTLs are measured on the wall clock too: a step back must not make every
 * idle channel look expired (and lose its history) at once.
 */
static void test_sweep_survives_wall_clock_step_back(void **state)
{
    pub("a", "1");
    chan("a")->last_active_ms = wall_ms() + 60000; /* the clock went back a minute since */
    hub_sweep(&hub);
    assert_non_null(chan("a"));
}

/* A channel holds its name in its own allocation, sized to it: the longest fits. */
static void test_longest_channel_name(void **state)
{
    char name[CHANNEL_NAME_MAX + 1];
    memset(name, 'n', CHANNEL_NAME_MAX);
    name[CHANNEL_NAME_MAX] = '\0';
    pub(name, "x");
    struct channel *ch = chan(name);
    assert_int_equal(ch->name_len, CHANNEL_NAME_MAX);
    assert_string_equal(ch->name, name);
    struct channel_info info;
    assert_int_equal(hub_channel_get(&hub, name, CHANNEL_NAME_MAX, &info), 0);
    assert_string_equal(info.name, name);
    pub("n", "a one-byte name");
    assert_string_equal(chan("n")->name, "n");
}

/* Debug builds know which thread holds the hub lock, so *_locked functions can check. */
static void test_the_hub_lock_knows_its_holder(void **state)
{
#ifndef NDEBUG
    assert_null(hub__held);
    hub_lock(&hub);
    assert_ptr_equal(hub__held, &hub);
    HUB_ASSERT_LOCKED(&hub);
    hub_unlock(&hub);
    assert_null(hub__held);
#endif
}

/* A conflated channel replays the newest message of the range that the connection does
 * not get another way: one it gets live through a channel it holds does not count. */
static void test_conflated_resume_is_the_newest_not_had_elsewhere(void **state)
{
    struct channel_opts o = {
        .has_batch_ms = true, .batch_ms = 50, .has_conflate = true, .conflate = true};
    bool created;
    struct channel_info info;
    assert_int_equal(hub_channel_put(&hub, "c", 1, &o, &created, &info), 0);
    struct list held;
    list_init(&held);
    take_channel(&held, "d");
    uint64_t cursor = pub("c", "0");
    pub("c", "1");
    uint64_t newest = pub("c", "2");
    pub2("c", "d", "3"); /* comes live through d */
    pub("d", "4");
    const char *names[] = {"c"};
    struct hub_backlog bl;
    assert_int_equal(subscribe(0, &held, names, 1, true, cursor, &bl, NULL), 0);
    assert_int_equal(bl.n, 1);
    assert_int_equal(bl.msgs[0]->seq, newest);
    hub_backlog_free(&bl);
    /* From the newest message on, nothing is left to replay. */
    struct list other;
    list_init(&other);
    uint64_t last = pub("c", "5");
    assert_int_equal(subscribe(0, &other, names, 1, true, last, &bl, NULL), 0);
    assert_int_equal(bl.n, 0);
    hub_backlog_free(&bl);
    hub_unsubscribe_all(&hub, 0, &held);
    hub_unsubscribe_all(&hub, 0, &other);
}

/* ---- pattern subscriptions (patsub.c) ---------------------------------------------- */

/* A worker's fan-out (server.c), for two connections on worker 0: each delivery is
 * recorded as (connection, seq, channel id) in order. Returns how many there were. */
struct got {
    const struct list *conn;
    uint64_t seq, chan_id;
};
static size_t fan_out(struct got *out, size_t max)
{
    size_t k = 0;
    uint32_t n = 0;
    struct inbox_item *items = hub_inbox_take(&hub, 0, &n);
    for (uint32_t i = 0; i < n; i++) {
        struct inbox_item *it = &items[i];
        if (it->kind == INBOX_MSG && it->ch->local) {
            struct list *head = &it->ch->local[0].subs;
            for (struct list *p = head->next; p != head; p = p->next) {
                struct sub *sb = container_of(p, struct sub, chan_link);
                if (hub_sub_takes(sb->conn, sb, it->msg) && k < max)
                    out[k++] = (struct got){sb->conn, it->msg->seq, it->msg->chan_id};
            }
        }
        if (it->msg)
            ref_put(&it->msg->ref);
        hub_channel_put_ref(&hub, it->ch);
    }
    free(items);
    return k;
}

/* Whether the fan-out recorded exactly `want`, in order. */
static void assert_got(const struct got *g, size_t n, const struct got *want, size_t nwant)
{
    assert_int_equal(n, nwant);
    for (size_t i = 0; i < n; i++) {
        assert_ptr_equal(g[i].conn, want[i].conn);
        assert_int_equal(g[i].seq, want[i].seq);
        assert_int_equal(g[i].chan_id, want[i].chan_id);
    }
}

static void test_pattern_delivers_once_per_connection(void **state)
{
    struct list c1, c2;
    list_init(&c1);
    list_init(&c2);
    take_channel(&c1, "s.a");
    take_channel(&c1, "s.*");
    take_channel(&c1, "s.**");
    take_channel(&c2, "s.*");
    assert_int_equal(hub.patterns.len, 2);
    uint64_t a = pub("s.a", "1");
    uint64_t b = pub("s.b", "2");
    uint64_t deep = pub("s.b.c", "3");
    pub("t.a", "other head");
    uint64_t both = pub2("s.b", "s.a", "4"); /* c1 holds s.a by name: that copy */
    struct got g[16];
    size_t n = fan_out(g, 16);
    struct got want[] = {{&c1, a, chan("s.a")->id},      {&c2, a, chan("s.a")->id},
                         {&c1, b, chan("s.b")->id},      {&c2, b, chan("s.b")->id},
                         {&c1, deep, chan("s.b.c")->id}, {&c2, both, chan("s.b")->id},
                         {&c1, both, chan("s.a")->id}};
    assert_got(g, n, want, ARRAY_LEN(want));
    hub_unsubscribe_all(&hub, 0, &c1);
    hub_unsubscribe_all(&hub, 0, &c2);
    assert_int_equal(hub.patterns.len, 0); /* gone with their last subscriber */
    assert_int_equal(hub.pattern_heads.len, 0);
    pub("s.a", "nobody");
    assert_int_equal(fan_out(g, 16), 0);
}

/* A pattern that starts with a name segment never gets a channel without a dot; one that
 * starts with a wildcard gets every channel it matches, with a dot or without. */
static void test_patterns_with_and_without_a_head(void **state)
{
    struct list c1, c2;
    list_init(&c1);
    list_init(&c2);
    take_channel(&c1, "s.*");
    take_channel(&c1, "s.**");
    take_channel(&c2, "*");
    take_channel(&c2, "**");
    uint64_t head = pub("s", "the head itself");
    uint64_t dot = pub("s.a", "1");
    uint64_t nodot = pub("t", "2");
    struct got g[8];
    size_t n = fan_out(g, 8);
    struct got want[] = {{&c2, head, chan("s")->id},
                         {&c1, dot, chan("s.a")->id},
                         {&c2, dot, chan("s.a")->id},
                         {&c2, nodot, chan("t")->id}};
    assert_got(g, n, want, ARRAY_LEN(want));
    hub_unsubscribe_all(&hub, 0, &c1);
    hub_unsubscribe_all(&hub, 0, &c2);
}

static void test_pattern_resume_merges_in_id_order_with_gaps_and_a_cap(void **state)
{
    cfg.history_size = 2;
    cfg.max_pattern_replay = 3;
    uint64_t cursor = pub("r.a", "0");
    uint64_t a1 = pub("r.a", "1"), b1 = pub("r.b", "1"), a2 = pub("r.a", "2");
    uint64_t c1 = pub("r.c.d", "deeper"), b2 = pub("r.b", "2");
    (void)a1;
    (void)c1;
    struct list held;
    list_init(&held);
    const char *names[] = {"r.*"};
    struct hub_backlog bl;
    assert_int_equal(subscribe(0, &held, names, 1, true, cursor, &bl, NULL), 0);
    /* r.a keeps a1, a2: no gap (the cursor is r.a's 0, evicted); r.b keeps both. The
     * cap keeps the newest 3 of a1 b1 a2 b2 and says so with a gap naming the pattern. */
    assert_int_equal(bl.n, 3);
    assert_int_equal(bl.msgs[0]->seq, b1);
    assert_int_equal(bl.msgs[1]->seq, a2);
    assert_int_equal(bl.msgs[2]->seq, b2);
    assert_int_equal(bl.ngaps, 1);
    assert_int_equal(bl.gaps[0].reason, HUB_GAP_REPLAY_LIMIT);
    assert_string_equal(bl.gaps[0].name, "r.*");
    assert_int_equal(bl.gaps[0].oldest, b1);
    hub_backlog_free(&bl);
    hub_unsubscribe_all(&hub, 0, &held);
    /* A cursor older than what r.a keeps: a gap for r.a, by name. */
    cfg.max_pattern_replay = 100;
    pub("r.a", "3");
    assert_int_equal(subscribe(0, &held, names, 1, true, cursor, &bl, NULL), 0);
    assert_int_equal(bl.ngaps, 1);
    assert_int_equal(bl.gaps[0].reason, HUB_GAP_CHANNEL);
    assert_string_equal(bl.gaps[0].name, "r.a");
    hub_backlog_free(&bl);
    hub_unsubscribe_all(&hub, 0, &held);
}

static void test_channels_with_a_dot_are_indexed_by_head(void **state)
{
    uint64_t cursor = pub("nodot", "0");
    pub("h.a", "1");
    pub("h.b.c", "2");
    pub("k.a", "3");
    assert_int_equal(hub.channel_heads.len, 2); /* "h" and "k"; "nodot" is no pattern's */
    assert_int_equal(hub_channel_delete(&hub, "h.a", 3), 0);
    assert_int_equal(hub_channel_delete(&hub, "h.b.c", 5), 0);
    assert_int_equal(hub_channel_delete(&hub, "k.a", 3), 0);
    /* Their tombs keep the heads: a resume by pattern reads the tombs under its head. */
    assert_int_equal(hub.channel_heads.len, 2);
    uint64_t id = pub("h.z", "6");
    struct list held;
    list_init(&held);
    const char *names[] = {"h.*"};
    struct hub_backlog bl;
    assert_int_equal(subscribe(0, &held, names, 1, true, cursor, &bl, NULL), 0);
    assert_int_equal(bl.n, 1);
    assert_int_equal(bl.msgs[0]->seq, id);
    assert_int_equal(bl.ngaps, 1); /* h.a went; h.b.c is not h.*'s */
    assert_string_equal(bl.gaps[0].name, "h.a");
    hub_backlog_free(&bl);
    hub_unsubscribe_all(&hub, 0, &held);
    /* A head goes with its last channel and tomb (a channel that never had a message
     * leaves no tomb), and a resume by pattern finds a channel made after it went. */
    struct list c;
    list_init(&c);
    take_channel(&c, "e.a");
    assert_int_equal(hub.channel_heads.len, 3);
    hub_unsubscribe_all(&hub, 0, &c);
    assert_int_equal(hub.channel_heads.len, 2);
    cursor = pub("nodot", "7");
    id = pub("e.b", "8");
    const char *e[] = {"e.*"};
    assert_int_equal(subscribe(0, &held, e, 1, true, cursor, &bl, NULL), 0);
    assert_int_equal(bl.n, 1);
    assert_int_equal(bl.msgs[0]->seq, id);
    hub_backlog_free(&bl);
    hub_unsubscribe_all(&hub, 0, &held);
}

static void test_pattern_limits(void **state)
{
    cfg.max_patterns_per_conn = 1;
    cfg.max_patterns = 2;
    struct list c1, c2, c3;
    list_init(&c1);
    list_init(&c2);
    list_init(&c3);
    struct hub_backlog bl;
    size_t bad;
    const char *two[] = {"x.a", "x.*", "y.*"};
    assert_int_equal(subscribe(0, &c1, two, 3, false, 0, &bl, &bad), HUB_ERR_PATTERNS_PER_CONN);
    assert_int_equal(bad, 2);
    assert_int_equal(held_count(&c1), 0); /* nothing subscribed on error */
    take_channel(&c1, "x.*");
    take_channel(&c2, "y.*");
    const char *third = "z.*", *existing = "x.*";
    assert_int_equal(subscribe(0, &c3, &third, 1, false, 0, &bl, &bad), HUB_ERR_TOO_MANY_PATTERNS);
    assert_int_equal(subscribe(0, &c3, &existing, 1, false, 0, &bl, &bad), 0);
    hub_backlog_free(&bl);
    assert_int_equal(hub.patterns.len, 2);
    hub_unsubscribe_all(&hub, 0, &c1);
    hub_unsubscribe_all(&hub, 0, &c2);
    hub_unsubscribe_all(&hub, 0, &c3);
    assert_int_equal(hub.patterns.len, 0);
}

/* A message on the bus for the patterns under head "s" (a PSUBSCRIBE's pmessage). */
static void pingest(const char *name, uint64_t seq)
{
    char buf[32];
    struct hub_entry e = entry(seq, buf);
    struct slice ch = sl(name);
    hub_pattern_ingest(&hub, "s", 1, &ch, &ch, 1, seq, e.time_ms, &e.req);
}

/* Loads the cache of `name` from entries with the ids seqs[0..n). */
static void load_cache(const char *name, const uint64_t *seqs, size_t n)
{
    char bufs[8][32];
    struct hub_entry e[8];
    for (size_t i = 0; i < n; i++)
        e[i] = entry(seqs[i], bufs[i]);
    uint64_t last, t = hub_channel_loading(&hub, name, strlen(name), &last);
    assert_true(t != 0);
    assert_false(hub_channel_loaded(&hub, name, strlen(name), t, 0, e, n, 0, NULL));
}

/*
 * One Redis: a pattern's resume waits for its head (the bus subscription, the index),
 * then for the caches of the channels under it (the index's and those the bus named
 * meanwhile), and replays from them what is at or below the last id the bus brought;
 * what comes later on the bus goes live, once, whichever path brought it first.
 */
static void test_cluster_pattern_resume_then_live_without_a_gap_or_a_repeat(void **state)
{
    struct list c;
    list_init(&c);
    const char *p[] = {"s.*"};
    struct hub_backlog bl;
    assert_int_equal(subscribe(0, &c, p, 1, true, 2, &bl, NULL), HUB_PENDING);
    assert_int_equal(fake.pwants, 1);
    assert_int_equal(hub.patterns.len, 0); /* nothing made while parked */
    /* s.new is not in the index yet: its first message (6) comes on the bus. */
    pingest("s.new", 6);
    struct slice names[] = {sl("s.a"), sl("s.b"), sl("other.a")};
    hub_pattern_synced(&hub, "s", 1, 0, false, 5, names, 3, false);
    assert_int_equal(fake.synced, 1);
    assert_int_equal(subscribe(0, &c, p, 1, true, 2, &bl, NULL), HUB_PENDING);
    assert_int_equal(fake.wants, 3); /* every cache at once: s.a, s.b, s.new */
    load_cache("s.a", (uint64_t[]){1, 4, 5}, 3);
    load_cache("s.b", (uint64_t[]){3}, 1);
    load_cache("s.new", (uint64_t[]){6}, 1);
    ingest("s.a", 7); /* Redis tells channel subscribers before pattern subscribers */
    assert_int_equal(subscribe(0, &c, p, 1, true, 2, &bl, NULL), 0);
    check_backlog(&bl, (uint64_t[]){3, 4, 5, 6}, 4); /* 7 is the bus's to bring */
    hub_backlog_free(&bl);
    pingest("s.a", 7);
    pingest("s.a.x", 8); /* two segments: not s.* */
    pingest("s.b", 9);
    struct got g[8];
    size_t n = fan_out(g, 8);
    struct got want[] = {{&c, 7, chan("s.a")->id}, {&c, 9, chan("s.b")->id}};
    assert_got(g, n, want, ARRAY_LEN(want));
    /* Redis came back: the bus subscription again, and a gap for what it did not bring. */
    hub_pattern_synced(&hub, "s", 1, 0, true, 9, NULL, 0, false);
    uint32_t k;
    struct inbox_item *items = hub_inbox_take(&hub, 0, &k);
    assert_int_equal(k, 1);
    assert_int_equal(items[0].kind, INBOX_CTL);
    ref_put(&items[0].ctl->ref);
    release_items(items, k);
    hub_unsubscribe_all(&hub, 0, &c);
    assert_int_equal(hub.patterns.len, 0);
    /* The head lingers for subscribers that come back, then goes. */
    hub_lock(&hub);
    hub__patsub_sweep_locked(&hub, wall_ms());
    assert_int_equal(hub.pattern_heads.len, 1);
    hub__patsub_sweep_locked(&hub, wall_ms() + CACHE_LINGER_MS);
    hub_unlock(&hub);
    assert_int_equal(hub.pattern_heads.len, 0);
    assert_int_equal(fake.punwants, 1);
}

/* Subscribes held (worker 0) to the pattern pat of head `head`, whose bus subscription
 * the backend then confirms. */
static void take_pattern(struct list *held, const char *pat, const char *head)
{
    struct hub_backlog bl;
    assert_int_equal(subscribe(0, held, &pat, 1, false, 0, &bl, NULL), HUB_PENDING);
    hub_pattern_synced(&hub, head, strlen(head), 0, false, 0, NULL, 0, false);
    assert_int_equal(subscribe(0, held, &pat, 1, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
}

/* At --max-patterns first segments followed, a new one takes the place of one that only
 * lingers, never of one the same subscribe needs (which would leave its pattern off the
 * bus, or the subscribe going round forever). */
static void test_cluster_a_new_head_never_evicts_one_the_subscribe_needs(void **state)
{
    cfg.max_patterns = 3;
    struct list held, gone, c;
    list_init(&held);
    list_init(&gone);
    list_init(&c);
    take_pattern(&held, "y.*", "y");
    take_pattern(&gone, "x.*", "x");
    take_pattern(&gone, "w.*", "w");
    hub_unsubscribe_all(&hub, 0, &gone); /* x and w linger */
    assert_int_equal(hub.pattern_heads.len, 3);
    const char *both[] = {"x.*", "z.*"};
    struct hub_backlog bl;
    assert_int_equal(subscribe(0, &c, both, 2, false, 0, &bl, NULL), HUB_PENDING);
    assert_non_null(map_get(&hub.pattern_heads, "x", 1)); /* needed: kept */
    assert_null(map_get(&hub.pattern_heads, "w", 1));     /* lingering: made room */
    hub_pattern_synced(&hub, "z", 1, 0, false, 0, NULL, 0, false);
    assert_int_equal(subscribe(0, &c, both, 2, false, 0, &bl, NULL), 0);
    hub_backlog_free(&bl);
    assert_int_equal(fake.pwants, 4); /* y, x, w, z: x never again */
    hub_unsubscribe_all(&hub, 0, &c);
    hub_unsubscribe_all(&hub, 0, &held);
}

/* ---- presence (presence.c) ---------------------------------------------------------- */

/* Subscribes the connection `held` (worker 0) to name as `who`. */
static void take_as(struct list *held, const char *name, const struct presence_who *who)
{
    struct slice s = sl(name);
    struct hub_client cl = {.max_subs = 64, .who = who};
    struct hub_backlog bl;
    size_t bad;
    assert_int_equal(hub_subscribe(&hub, 0, held, held, &s, 1, false, 0, &cl, &bl, &bad), 0);
    hub_backlog_free(&bl);
}

/* Worker 0's inbox: the presence events' JSON, joined by '|' into out; every reference
 * released. Returns how many items there were. */
static uint32_t presence_events(char *out, size_t size)
{
    uint32_t n = 0;
    struct inbox_item *items = hub_inbox_take(&hub, 0, &n);
    size_t len = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(items[i].kind, INBOX_PRESENCE);
        len += (size_t)snprintf(out + len, size - len, "%s%.*s", len ? "|" : "",
                                (int)items[i].ctl->json.len, items[i].ctl->json.data);
        ref_put(&items[i].ctl->ref);
        hub_channel_put_ref(&hub, items[i].ch);
    }
    free(items);
    return n;
}

static void got_list(void *arg, int err, struct presence_list *l)
{
    struct presence_list *out = arg;
    memset(out, 0, sizeof(*out));
    out->anonymous = err ? (uint64_t)-err : 0; /* the error, for the caller */
    if (err)
        return;
    out->connections = l->connections;
    out->unlisted = l->unlisted;
    out->anonymous = l->anonymous;
    for (size_t i = 0; i < l->n; i++)
        presence_list_add(out, l->text.data + l->v[i].user_off, l->v[i].user_len, l->v[i].conns,
                          l->v[i].info_len ? l->text.data + l->v[i].info_off : NULL,
                          l->v[i].info_len);
}

/* A user joins with its first connection and leaves with its last (events queued once,
 * with the first connection's info); the anonymous are counted, never named; a
 * subscription counted while the option was on leaves even after it went off. */
static void test_presence_counts_and_events(void **state)
{
    struct channel_opts on = {.has_presence = true, .presence = true};
    struct channel_opts off = {.has_presence = true, .presence = false};
    bool created;
    struct channel_info info;
    assert_int_equal(hub_channel_put(&hub, "room", 4, &on, &created, &info), 0);
    assert_true(info.presence);
    struct list c1, c2, c3;
    list_init(&c1);
    list_init(&c2);
    list_init(&c3);
    const struct presence_who ann = {
        .user = "ann", .user_len = 3, .info = "{\"n\":1}", .info_len = 7, .events = true};
    const struct presence_who ann2 = {
        .user = "ann", .user_len = 3, .info = "{\"n\":2}", .info_len = 7};
    const struct presence_who anon = {.events = true};
    char ev[512];
    take_as(&c1, "room", &ann);
    assert_int_equal(presence_events(ev, sizeof(ev)), 1);
    assert_string_equal(
        ev, "{\"event\":\"join\",\"channel\":\"room\",\"user\":\"ann\",\"info\":{\"n\":1}}");
    take_as(&c2, "room", &ann2);
    take_as(&c3, "room", &anon);
    assert_int_equal(presence_events(ev, sizeof(ev)), 0);
    struct presence_list l;
    hub_presence_get_async(&hub, 0, "room", 4, got_list, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].conns, 2);
    assert_memory_equal(l.text.data + l.v[0].info_off, "{\"n\":1}", 7);
    assert_int_equal(l.anonymous, 1);
    assert_int_equal(l.connections, 3);
    presence_list_free(&l);
    assert_int_equal(hub_channel_put(&hub, "room", 4, &off, &created, &info), 0);
    hub_presence_get_async(&hub, 0, "room", 4, got_list, &l);
    assert_int_equal(l.anonymous, (uint64_t)-HUB_ERR_PRESENCE_OFF);
    hub_unsubscribe_all(&hub, 0, &c1);
    assert_int_equal(presence_events(ev, sizeof(ev)), 0);
    hub_unsubscribe_all(&hub, 0, &c3);
    hub_unsubscribe_all(&hub, 0, &c2);
    assert_int_equal(presence_events(ev, sizeof(ev)), 1);
    assert_string_equal(
        ev, "{\"event\":\"leave\",\"channel\":\"room\",\"user\":\"ann\",\"info\":{\"n\":1}}");
    assert_int_equal(hub_channel_put(&hub, "room", 4, &on, &created, &info), 0);
    hub_presence_get_async(&hub, 0, "room", 4, got_list, &l);
    assert_int_equal(l.n + l.connections + l.anonymous, 0);
    assert_null(chan("room")->present);
    presence_list_free(&l);
    /* a subscription without `who` (a long-poll) is never counted */
    struct list c4;
    list_init(&c4);
    take_channel(&c4, "room");
    assert_null(chan("room")->present);
    hub_unsubscribe_all(&hub, 0, &c4);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_ids_increase_by_one_per_publish),
        T(test_conflated_resume_is_the_newest_not_had_elsewhere),
        T(test_pattern_delivers_once_per_connection),
        T(test_patterns_with_and_without_a_head),
        T(test_pattern_resume_merges_in_id_order_with_gaps_and_a_cap),
        T(test_pattern_limits),
        T(test_channels_with_a_dot_are_indexed_by_head),
        T(test_multi_channel_publish_shares_seq),
        T(test_publish_rejects_zero_channels),
        T(test_history_size_evicts_oldest),
        T(test_history_bytes_keeps_newest),
        T(test_history_bytes_count_escapes_and_the_deflate_frame),
        T(test_history_age),
        T(test_history_survives_wall_clock_step_back),
        T(test_since_inside_history_gives_exactly_the_newer),
        T(test_since_older_than_history_reports_gaps),
        T(test_since_zero_gives_everything_without_gap),
        T(test_since_ahead_of_head_is_a_cursor_error),
        T(test_multi_channel_message_once_in_backlog),
        T(test_backlog_skips_what_a_held_channel_delivers_live),
        T(test_multi_channel_copies_reach_a_connection_once_in_any_order),
        T(test_a_copy_owed_before_another_channel_was_taken_is_delivered),
        T(test_live_messages_of_a_channel_follow_its_own_last_id),
        T(test_subscribe_twice_and_duplicates),
        T(test_resubscribing_held_channels_counts_them_once),
        cmocka_unit_test_setup_teardown(
            test_cluster_cache_without_messages_goes_with_its_last_subscriber, setup_cluster,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_cluster_backlog_tells_messages_that_share_an_id_from_copies, setup_cluster,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_cluster_overlapping_loads_keep_live_messages_until_the_last, setup_cluster,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_cluster_failed_gap_fill_is_retried_and_holds_live_messages, setup_cluster,
            teardown),
        cmocka_unit_test_setup_teardown(test_cluster_a_first_load_that_fails_tells_the_waiters,
                                        setup_cluster, teardown),
        cmocka_unit_test_setup_teardown(
            test_cluster_held_live_messages_are_capped_at_the_history_size, setup_cluster,
            teardown),
        cmocka_unit_test_setup_teardown(test_presence_counts_and_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_deleted_channel_is_dropped_and_unwanted,
                                        setup_cluster, teardown),
        cmocka_unit_test_setup_teardown(
            test_cluster_pattern_resume_then_live_without_a_gap_or_a_repeat, setup_cluster,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_cluster_a_new_head_never_evicts_one_the_subscribe_needs, setup_cluster, teardown),
        T(test_publish_fills_the_subscribers_worker_inbox),
        T(test_unsubscribe_clears_the_worker_bit),
        T(test_auto_create_off),
        T(test_max_channels),
        T(test_ephemeral_channel_goes_with_its_last_subscriber),
        T(test_published_ephemeral_channel_becomes_stored),
        T(test_ephemeral_channels_have_their_own_budget),
        T(test_ephemeral_channel_keeps_the_gap_of_a_deleted_one),
        T(test_client_address_keys),
        T(test_max_channels_per_address),
        T(test_max_channels_counts_only_missing_channels),
        T(test_max_channels_existing_first),
        T(test_channel_name_valid),
        T(test_cursor_parse),
        T(test_channel_put_get),
        T(test_channel_delete),
        T(test_delete_with_subscriber_queues_closed),
        T(test_free_releases_channels_of_pending_items),
        T(test_channel_list),
        T(test_channel_list_pages_a_large_table),
        T(test_sweep_expires_idle_channels),
        T(test_sweep_covers_a_large_table),
        T(test_expiry_follows_each_channel_deadline),
        T(test_put_shortens_the_deadline),
        T(test_sweep_survives_wall_clock_step_back),
        T(test_the_hub_lock_knows_its_holder),
        T(test_longest_channel_name),
    };
#undef T
    return cmocka_run_group_tests_name("hub", tests, NULL, NULL);
}
