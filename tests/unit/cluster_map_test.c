/*
 * cluster_map: keyslot vectors and redirect parsing (pure), then a real
 * 3-master + 3-replica Redis Cluster created by the test: routing of 1,000
 * keys, MOVED after a slot migration (with a sharded subscription that has to
 * follow the slot), ASK during a migration, sharded pub/sub on every shard,
 * and a failover (a master SIGKILLed, its replica promoted, the router and
 * its SSUBSCRIBEs recover). Independent checks use hiredis' blocking client.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "cluster/cluster_map.h"
#include "support/redis_spawn.h"
#include "core/loop.h"

static struct redis_cluster_procs cl;
static struct loop loop;
static struct cluster_router *router;

struct inbox {
    int messages, subscribed, status_changes;
    enum redis_bus_status status;
    char last_channel[64], last_data[64];
};
static struct inbox inbox;

static void on_message(const char *ch, size_t chlen, const char *data, size_t len, void *arg)
{
    struct inbox *in = arg;
    in->messages++;
    snprintf(in->last_channel, sizeof(in->last_channel), "%.*s", (int)chlen, ch);
    snprintf(in->last_data, sizeof(in->last_data), "%.*s", (int)len, data);
}

static void on_subscribed(const char *ch, size_t chlen, void *arg)
{
    ((struct inbox *)arg)->subscribed++;
}

static void on_status(enum redis_bus_status st, void *arg)
{
    struct inbox *in = arg;
    in->status = st;
    in->status_changes++;
}

/* Runs the loop until pred(arg) holds or timeout_ms passes. */
static bool run_until(bool (*pred)(void *), void *arg, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    while (!pred(arg) && now_ms() < end)
        loop_run_once(&loop, 20);
    return pred(arg);
}

static bool wait_count(const int *counter, int want, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    while (*counter < want && now_ms() < end)
        loop_run_once(&loop, 20);
    return *counter >= want;
}

static bool all_subscribed(void *arg)
{
    size_t wanted;
    size_t got = cluster_router_subscribed(router, &wanted);
    return got == wanted;
}

static bool bus_up(void *arg)
{
    return redis_bus_status(cluster_router_bus(router)) == REDIS_BUS_UP;
}

struct result {
    int done, status, type;
    long long integer;
    char str[64];
};

static void store_result(const redisReply *r, int status, void *arg)
{
    struct result *res = arg;
    res->done++;
    res->status = status;
    res->type = r->type;
    res->integer = r->integer;
    if (r->str)
        snprintf(res->str, sizeof(res->str), "%.*s", (int)r->len, r->str);
}

/* Sends one command for key through the router and waits for its reply. */
static struct result route(const char *key, int argc, const char **argv)
{
    struct result res = {0};
    assert_int_equal(
        cluster_command_key(router, key, strlen(key), store_result, &res, argc, argv, NULL), 0);
    assert_true(wait_count(&res.done, 1, 15000));
    return res;
}

static int port_of(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    return colon ? atoi(colon + 1) : -1;
}

static void node_id(int port, char *out, size_t size)
{
    redisReply *r = redis_spawn_cmd(port, "CLUSTER MYID");
    assert_non_null(r);
    snprintf(out, size, "%.*s", (int)r->len, r->str);
    freeReplyObject(r);
}

static void ok_cmd(redisReply *r)
{
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("redis: %s", r->str);
    freeReplyObject(r);
}

/* Another master than `port`. */
static int other_master(int port)
{
    for (int s = 0; s < CLUSTER_SLOTS; s += 100) {
        const char *o = cluster_router_slot_owner(router, s);
        if (o && port_of(o) != port)
            return port_of(o);
    }
    fail_msg("no other master");
    return -1;
}

/* ---- pure ---- */

static void test_keyslot_vectors(void **state)
{
    assert_int_equal(cluster_crc16("123456789", 9), 0x31C3);
    assert_int_equal(cluster_keyslot("foo", 3), 12182);
    assert_int_equal(cluster_keyslot("bar", 3), 5061);
    const char *a = "{user1000}.following", *b = "{user1000}.followers";
    assert_int_equal(cluster_keyslot(a, strlen(a)), cluster_keyslot(b, strlen(b)));
    assert_int_equal(cluster_keyslot(a, strlen(a)), cluster_keyslot("user1000", 8));
    /* "{}" is no tag; only the first "{...}" counts; "{" without "}" hashes all. */
    assert_int_equal(cluster_keyslot("foo{}{bar}", 10), cluster_crc16("foo{}{bar}", 10) & 16383);
    assert_int_equal(cluster_keyslot("foo{{bar}}zap", 13), cluster_keyslot("{bar", 4));
    assert_int_equal(cluster_keyslot("foo{bar}{zap}", 13), cluster_keyslot("bar", 3));
    assert_int_equal(cluster_keyslot("foo{bar", 7), cluster_crc16("foo{bar", 7) & 16383);
    assert_int_equal(cluster_keyslot("", 0), 0);
}

static void test_parse_redirect(void **state)
{
    bool ask;
    int slot;
    struct cluster_addr a;
    redisReply moved = {.type = REDIS_REPLY_ERROR, .str = "MOVED 3999 127.0.0.1:6381"};
    moved.len = strlen(moved.str);
    assert_true(cluster_parse_redirect(&moved, &ask, &slot, &a));
    assert_false(ask);
    assert_int_equal(slot, 3999);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 6381);
    redisReply askr = {.type = REDIS_REPLY_ERROR, .str = "ASK 12 ::1:7000"};
    askr.len = strlen(askr.str);
    assert_true(cluster_parse_redirect(&askr, &ask, &slot, &a));
    assert_true(ask);
    assert_string_equal(a.host, "::1");
    redisReply bad = {.type = REDIS_REPLY_ERROR, .str = "MOVED 99999 h:1"};
    bad.len = strlen(bad.str);
    assert_false(cluster_parse_redirect(&bad, &ask, &slot, &a));
    redisReply other = {.type = REDIS_REPLY_ERROR, .str = "ERR nope"};
    other.len = strlen(other.str);
    assert_false(cluster_parse_redirect(&other, &ask, &slot, &a));
}

/* ---- real cluster ---- */

static void test_routing_1000_keys(void **state)
{
    assert_true(run_until(bus_up, NULL, 10000));
    assert_true(cluster_router_refreshes(router) >= 1);
    struct result results[1000] = {{0}};
    char keys[1000][24];
    int done = 0;
    for (int i = 0; i < 1000; i++) {
        snprintf(keys[i], sizeof(keys[i]), "key:%d", i);
        const char *argv[] = {"SET", keys[i], keys[i]};
        assert_int_equal(cluster_command_key(router, keys[i], strlen(keys[i]), store_result,
                                             &results[i], 3, argv, NULL),
                         0);
    }
    uint64_t end = now_ms() + 10000;
    while (now_ms() < end) {
        done = 0;
        for (int i = 0; i < 1000; i++)
            done += results[i].done;
        if (done == 1000)
            break;
        loop_run_once(&loop, 20);
    }
    assert_int_equal(done, 1000);
    for (int i = 0; i < 1000; i++)
        assert_string_equal(results[i].str, "OK");
    uint64_t asks, moved = cluster_router_redirects(router, &asks);
    assert_int_equal(moved, 0); /* every key went straight to its master */
    /* Independently: the keys are spread over the three masters. */
    long long total = 0;
    int masters = 0;
    for (int i = 0; i < cl.n; i++) {
        redisReply *r = redis_spawn_cmd(cl.node[i].port, "ROLE");
        bool master = r && resp_reply_str_eq(r->element[0], "master");
        freeReplyObject(r);
        if (!master)
            continue;
        masters++;
        r = redis_spawn_cmd(cl.node[i].port, "DBSIZE");
        assert_true(r->integer > 200);
        total += r->integer;
        freeReplyObject(r);
    }
    assert_int_equal(masters, 3);
    assert_int_equal(total, 1000);
    struct result got = route("key:777", 2, (const char *[]){"GET", "key:777"});
    assert_string_equal(got.str, "key:777");
}

static void test_sharded_pubsub(void **state)
{
    /* One channel per master. */
    char names[3][32];
    int found = 0, ports[3] = {0};
    for (int i = 0; found < 3 && i < 1000; i++) {
        char name[32];
        snprintf(name, sizeof(name), "chan:%d", i);
        int port = port_of(cluster_router_slot_owner(router, cluster_keyslot(name, strlen(name))));
        bool seen = false;
        for (int j = 0; j < found; j++)
            seen |= ports[j] == port;
        if (!seen) {
            ports[found] = port;
            snprintf(names[found++], sizeof(names[0]), "%s", name);
        }
    }
    assert_int_equal(found, 3);
    int subscribed0 = inbox.subscribed;
    for (int i = 0; i < 3; i++)
        assert_int_equal(cluster_ssubscribe(router, names[i], strlen(names[i])), 0);
    /* Wanted, not yet subscribed: on_subscribed is still to come. */
    assert_int_equal(cluster_ssubscribe(router, names[0], strlen(names[0])), 0);
    assert_true(wait_count(&inbox.subscribed, subscribed0 + 3, 5000));
    assert_true(run_until(all_subscribed, NULL, 1000));
    assert_int_equal(cluster_ssubscribe(router, names[0], strlen(names[0])), 1);
    int m0 = inbox.messages;
    for (int i = 0; i < 3; i++) {
        /* Independent publisher, straight to the owning master. */
        redisReply *r = redis_spawn_cmd(ports[i], "SPUBLISH %s hello-%d", names[i], i);
        assert_int_equal(r->integer, 1);
        freeReplyObject(r);
    }
    assert_true(wait_count(&inbox.messages, m0 + 3, 3000));
    /* And through the router. */
    struct result pub = {0};
    assert_int_equal(
        cluster_spublish(router, names[1], strlen(names[1]), "via-router", 10, store_result, &pub),
        0);
    assert_true(wait_count(&inbox.messages, m0 + 4, 3000));
    assert_int_equal(pub.integer, 1);
    assert_string_equal(inbox.last_channel, names[1]);
    assert_string_equal(inbox.last_data, "via-router");
    assert_int_equal(cluster_sunsubscribe(router, names[2], strlen(names[2])), 0);
    size_t wanted;
    cluster_router_subscribed(router, &wanted);
    assert_int_equal(wanted, 2);
}

/* Moves `slot` from its master to dst_port: IMPORTING/MIGRATING, MIGRATE keys, then
 * (if finish) SETSLOT NODE on every master. */
static void migrate_slot(int slot, int src_port, int dst_port, bool finish)
{
    char src_id[64], dst_id[64];
    node_id(src_port, src_id, sizeof(src_id));
    node_id(dst_port, dst_id, sizeof(dst_id));
    ok_cmd(redis_spawn_cmd(dst_port, "CLUSTER SETSLOT %d IMPORTING %s", slot, src_id));
    ok_cmd(redis_spawn_cmd(src_port, "CLUSTER SETSLOT %d MIGRATING %s", slot, dst_id));
    redisReply *keys = redis_spawn_cmd(src_port, "CLUSTER GETKEYSINSLOT %d 1000", slot);
    for (size_t i = 0; i < keys->elements; i++)
        ok_cmd(redis_spawn_cmd(src_port, "MIGRATE 127.0.0.1 %d %s 0 5000", dst_port,
                               keys->element[i]->str));
    freeReplyObject(keys);
    if (!finish)
        return;
    for (int i = 0; i < cl.n; i++) {
        if (!cl.node[i].pid)
            continue;
        redisReply *r = redis_spawn_cmd(cl.node[i].port, "ROLE");
        bool master = r && resp_reply_str_eq(r->element[0], "master");
        freeReplyObject(r);
        if (master)
            ok_cmd(redis_spawn_cmd(cl.node[i].port, "CLUSTER SETSLOT %d NODE %s", slot, dst_id));
    }
}

static void test_moved_after_migration(void **state)
{
    const char *key = "{moved}key", *chan = "{moved}chan";
    int slot = cluster_keyslot(key, strlen(key));
    int src = port_of(cluster_router_slot_owner(router, slot)), dst = other_master(src);
    route(key, 3, (const char *[]){"SET", key, "v1"});
    assert_int_equal(cluster_ssubscribe(router, chan, strlen(chan)), 0);
    assert_true(run_until(all_subscribed, NULL, 5000));
    int subscribed0 = inbox.subscribed;
    uint64_t moved0 = cluster_router_redirects(router, NULL);

    migrate_slot(slot, src, dst, true);
    /* The stale table sends GET to src, which answers -MOVED. */
    struct result got = route(key, 2, (const char *[]){"GET", key});
    assert_int_equal(got.status, 0);
    assert_string_equal(got.str, "v1");
    assert_true(cluster_router_redirects(router, NULL) > moved0);
    assert_int_equal(port_of(cluster_router_slot_owner(router, slot)), dst);
    /* The sharded subscription followed the slot (sunsubscribe push or MOVED). */
    assert_true(wait_count(&inbox.subscribed, subscribed0 + 1, 5000));
    assert_true(run_until(all_subscribed, NULL, 5000));
    int m0 = inbox.messages;
    redisReply *r = redis_spawn_cmd(dst, "SPUBLISH %s after-move", chan);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    assert_true(wait_count(&inbox.messages, m0 + 1, 3000));
    assert_string_equal(inbox.last_data, "after-move");
}

static void test_ask_during_migration(void **state)
{
    const char *key = "{asking}key";
    int slot = cluster_keyslot(key, strlen(key));
    int src = port_of(cluster_router_slot_owner(router, slot)), dst = other_master(src);
    route(key, 3, (const char *[]){"SET", key, "v2"});
    uint64_t asks0;
    cluster_router_redirects(router, &asks0);
    migrate_slot(slot, src, dst, false); /* the key now lives on dst; src still owns the slot */
    struct result got = route(key, 2, (const char *[]){"GET", key});
    assert_string_equal(got.str, "v2");
    uint64_t asks;
    cluster_router_redirects(router, &asks);
    assert_true(asks > asks0);
    /* ASK does not change the table. */
    assert_int_equal(port_of(cluster_router_slot_owner(router, slot)), src);
    migrate_slot(slot, src, dst, true);
    got = route(key, 2, (const char *[]){"GET", key});
    assert_string_equal(got.str, "v2");
}

static void test_failover(void **state)
{
    const char *key = "{failover}key", *chan = "{failover}chan";
    int slot = cluster_keyslot(key, strlen(key));
    int victim = port_of(cluster_router_slot_owner(router, slot));
    route(key, 3, (const char *[]){"SET", key, "before"});
    assert_int_equal(cluster_ssubscribe(router, chan, strlen(chan)), 0);
    assert_true(run_until(all_subscribed, NULL, 5000));
    /* Let the replica catch up before killing its master. */
    ok_cmd(redis_spawn_cmd(victim, "WAIT 1 2000"));
    int subscribed0 = inbox.subscribed;
    for (int i = 0; i < cl.n; i++)
        if (cl.node[i].port == victim)
            redis_spawn_stop(&cl.node[i], SIGKILL);
    uint64_t t0 = now_ms();
    /* A write issued right away retries across the failover until its deadline. */
    struct result set = {0};
    const char *argv[] = {"SET", key, "after"};
    assert_int_equal(
        cluster_command_key(router, key, strlen(key), store_result, &set, 3, argv, NULL), 0);
    assert_true(wait_count(&inbox.subscribed, subscribed0 + 1, 20000));
    assert_true(run_until(all_subscribed, NULL, 5000));
    int owner = port_of(cluster_router_slot_owner(router, slot));
    assert_int_not_equal(owner, victim);
    printf("failover: resubscribed on %d after %llu ms\n", owner,
           (unsigned long long)(now_ms() - t0));
    assert_true(wait_count(&set.done, 1, 15000));
    struct result got = route(key, 2, (const char *[]){"GET", key});
    /* The early SET either landed after promotion or hit its deadline; both are told. */
    if (set.status == 0)
        assert_string_equal(got.str, "after");
    else
        assert_int_equal(set.status, RESP_EDEADLINE);
    int m0 = inbox.messages;
    struct result pub = {0};
    assert_int_equal(
        cluster_spublish(router, chan, strlen(chan), "survived", 8, store_result, &pub), 0);
    assert_true(wait_count(&inbox.messages, m0 + 1, 5000));
    assert_string_equal(inbox.last_data, "survived");
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    if (loop_init(&loop) < 0 || redis_spawn_cluster(&cl, 3, 1) < 0)
        return -1;
    loop_run_once(&loop, 0); /* refresh loop->now after the slow cluster start */
    char seeds[64];
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d,127.0.0.1:%d", cl.node[0].port, cl.node[1].port);
    struct redis_bus_callbacks cbs = {.on_message = on_message,
                                      .on_subscribed = on_subscribed,
                                      .on_status = on_status,
                                      .arg = &inbox};
    struct redis_bus_opts opts = {.name = "cluster-test", .command_timeout_ms = 8000};
    router = cluster_router_new(&loop, seeds, &opts, &cbs);
    return router ? 0 : -1;
}

static int teardown(void **state)
{
    cluster_router_free(router);
    loop_run_once(&loop, 0);
    redis_spawn_cleanup();
    loop_free(&loop);
    return 0;
}

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_keyslot_vectors),
        cmocka_unit_test(test_parse_redirect),
    };
    const struct CMUnitTest live[] = {
        cmocka_unit_test(test_routing_1000_keys),
        cmocka_unit_test(test_sharded_pubsub),
        cmocka_unit_test(test_moved_after_migration),
        cmocka_unit_test(test_ask_during_migration),
        cmocka_unit_test(test_failover),
    };
    int failed = cmocka_run_group_tests_name("cluster_map_pure", pure, NULL, NULL);
    return failed + cmocka_run_group_tests_name("cluster_map_live", live, setup, teardown);
}
