/*
 * resp_conn against a real redis-server started on a free loopback port:
 * commands and error replies, 10k pipelined commands in order, pub/sub push
 * delivery, AUTH/SELECT, the output bound, free inside a callback, and a
 * server killed and restarted (pending callbacks fail, the connection comes
 * back, the owner resubscribes from on_ready). Then the same over TLS, against
 * TLS-only redis-servers with a throwaway CA made with the openssl command
 * line: commands, large pipelines, pub/sub, a restart under the bus, every
 * verification failure (untrusted CA, wrong name or IP, unreadable CA file,
 * a plain-text server), insecure mode, mutual TLS, and a server of our own
 * that renegotiates while the client's socket is full.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/ssl.h>
#include <pthread.h>

#include "cluster/redis_bus.h"
#include "support/redis_spawn.h"
#include "cluster/resp_conn.h"
#include "core/loop.h"

static struct redis_node_proc server;
static struct loop loop;

struct watch {
    int ready, down, last_down_err;
    int pushes;
    char last_channel[64], last_data[64];
    const char *resubscribe; /* channel to SUBSCRIBE from on_ready */
};

struct result {
    int done, status;
    int type;
    long long integer;
    char str[128];
};

static void on_ready(struct resp_conn *c, void *arg);

static void on_down(struct resp_conn *c, int err, void *arg)
{
    struct watch *w = arg;
    w->down++;
    w->last_down_err = err;
}

static void on_push(struct resp_conn *c, const redisReply *r, void *arg)
{
    struct watch *w = arg;
    if (!resp_reply_str_eq(r->element[0], "message"))
        return;
    w->pushes++;
    snprintf(w->last_channel, sizeof(w->last_channel), "%.*s", (int)r->element[1]->len,
             r->element[1]->str);
    snprintf(w->last_data, sizeof(w->last_data), "%.*s", (int)r->element[2]->len,
             r->element[2]->str);
}

static void store_result(const redisReply *r, int status, void *arg)
{
    struct result *res = arg;
    res->done++;
    res->status = status;
    res->type = r->type;
    res->integer = r->integer;
    if (r->str) {
        size_t n = MIN(r->len, sizeof(res->str) - 1);
        memcpy(res->str, r->str, n);
        res->str[n] = '\0';
    }
}

static void ignore_reply(const redisReply *r, int status, void *arg)
{
}

static void on_ready(struct resp_conn *c, void *arg)
{
    struct watch *w = arg;
    w->ready++;
    if (w->resubscribe) {
        const char *argv[] = {"SUBSCRIBE", w->resubscribe};
        assert_int_equal(resp_command_argv(c, ignore_reply, NULL, 2, argv, NULL), 0);
    }
}

static struct resp_conn_callbacks watch_cbs(struct watch *w)
{
    return (struct resp_conn_callbacks){
        .on_ready = on_ready, .on_down = on_down, .on_push = on_push, .arg = w};
}

/* Runs the loop until *counter >= want or timeout_ms passes; returns whether it got there. */
static bool run_until(const int *counter, int want, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    while (*counter < want && now_ms() < end)
        loop_run_once(&loop, 20);
    return *counter >= want;
}

/*
 * Every connection a test makes, until it frees it: a test that fails (cmocka leaves it
 * with a longjmp) would leave connections on the shared loop whose callbacks point into
 * its dead stack frame, and the next tests would crash there instead of reporting. The
 * per-test teardown frees what is left.
 */
static struct resp_conn *live[32];
static int nlive;

static struct resp_conn *tracked_new(struct loop *l, const char *host, int port,
                                     const struct resp_conn_opts *opts,
                                     const struct resp_conn_callbacks *cbs)
{
    struct resp_conn *c = resp_conn_new(l, host, port, opts, cbs);
    if (c && nlive < (int)(sizeof(live) / sizeof(live[0])))
        live[nlive++] = c;
    return c;
}

static void conn_free(struct resp_conn *c)
{
    for (int i = 0; i < nlive; i++)
        if (live[i] == c) {
            live[i] = live[--nlive];
            break;
        }
    resp_conn_free(c);
}

static int free_leftovers(void **state)
{
    while (nlive)
        conn_free(live[0]);
    return 0;
}

static struct resp_conn *connect_ready(struct watch *w, const struct resp_conn_opts *opts)
{
    struct resp_conn_callbacks cbs = watch_cbs(w);
    struct resp_conn *c = tracked_new(&loop, "127.0.0.1", server.port, opts, &cbs);
    assert_non_null(c);
    assert_true(run_until(&w->ready, 1, 5000));
    return c;
}

static void cmd(struct resp_conn *c, struct result *res, int argc, const char **argv)
{
    assert_int_equal(resp_command_argv(c, store_result, res, argc, argv, NULL), 0);
}

static void test_commands(void **state)
{
    struct watch w = {0};
    struct resp_conn *c = connect_ready(&w, &(struct resp_conn_opts){.name = "test-cmd"});
    struct result set = {0}, get = {0}, bad = {0}, bin = {0};
    const char *set_argv[] = {"SET", "k1", "hello"};
    const char *get_argv[] = {"GET", "k1"};
    const char *bad_argv[] = {"INCR", "k1"};
    cmd(c, &set, 3, set_argv);
    cmd(c, &get, 2, get_argv);
    cmd(c, &bad, 2, bad_argv);
    const char *bin_argv[] = {"ECHO", "a\0b\r\n"};
    size_t bin_len[] = {4, 5};
    assert_int_equal(resp_command_argv(c, store_result, &bin, 2, bin_argv, bin_len), 0);
    assert_int_equal(resp_conn_pending(c), 4);
    assert_true(run_until(&bin.done, 1, 2000));
    assert_int_equal(set.status, 0);
    assert_string_equal(set.str, "OK");
    assert_int_equal(get.type, REDIS_REPLY_STRING);
    assert_string_equal(get.str, "hello");
    assert_int_equal(bad.type, REDIS_REPLY_ERROR);
    assert_int_equal(bad.status, 0); /* the server answered: an error reply, not a failure */
    assert_int_equal(bin.integer, 0);
    assert_int_equal(bin.type, REDIS_REPLY_STRING);
    assert_memory_equal(bin.str, "a\0b\r\n", 5);
    const char *empty[] = {"UNSUBSCRIBE"};
    assert_int_equal(resp_command_argv(c, store_result, &bad, 1, empty, NULL), RESP_EINVAL);
    conn_free(c);
}

struct pipeline {
    int done, in_order;
};

static void count_in_order(const redisReply *r, int status, void *arg)
{
    struct pipeline *p = arg;
    if (status == 0 && r->type == REDIS_REPLY_INTEGER && r->integer == p->done + 1)
        p->in_order++;
    p->done++;
}

static void test_pipeline_10k(void **state)
{
    struct watch w = {0};
    struct resp_conn *c = connect_ready(&w, NULL);
    struct result del = {0};
    cmd(c, &del, 2, (const char *[]){"DEL", "counter"});
    struct pipeline p = {0};
    /* The DEL is answered first, then 10k INCRs in order. */
    assert_true(run_until(&del.done, 1, 2000));
    const char *argv[] = {"INCR", "counter"};
    for (int i = 0; i < 10000; i++)
        assert_int_equal(resp_command_argv(c, count_in_order, &p, 2, argv, NULL), 0);
    assert_true(run_until(&p.done, 10000, 20000));
    assert_int_equal(p.in_order, 10000);
    conn_free(c);
}

static void test_pubsub(void **state)
{
    struct watch sub = {0}, pub = {0};
    struct resp_conn *s = connect_ready(&sub, NULL);
    struct resp_conn *p = connect_ready(&pub, NULL);
    struct result confirm = {0}, pong = {0};
    cmd(s, &confirm, 4, (const char *[]){"SUBSCRIBE", "ch1", "ch2", "ch3"});
    assert_true(run_until(&confirm.done, 1, 2000));
    assert_int_equal(confirm.status, 0);
    assert_int_equal(confirm.type, REDIS_REPLY_ARRAY);
    assert_int_equal(resp_conn_pending(s), 0); /* three confirmations, one callback */
    struct result r1 = {0}, r2 = {0};
    cmd(p, &r1, 3, (const char *[]){"PUBLISH", "ch2", "m-one"});
    cmd(p, &r2, 3, (const char *[]){"PUBLISH", "ch3", "m-two"});
    assert_true(run_until(&sub.pushes, 2, 2000));
    assert_int_equal(r1.integer, 1);
    assert_string_equal(sub.last_channel, "ch3");
    assert_string_equal(sub.last_data, "m-two");
    /* PING in subscribe mode is answered ["pong", ""]: a reply, not a push. */
    cmd(s, &pong, 1, (const char *[]){"PING"});
    assert_true(run_until(&pong.done, 1, 2000));
    assert_int_equal(pong.type, REDIS_REPLY_ARRAY);
    struct result unsub = {0};
    cmd(s, &unsub, 3, (const char *[]){"UNSUBSCRIBE", "ch1", "ch2"});
    assert_true(run_until(&unsub.done, 1, 2000));
    assert_int_equal(resp_conn_pending(s), 0);
    conn_free(s);
    conn_free(p);
}

static void test_auth_select(void **state)
{
    redisReply *r = redis_spawn_cmd(server.port, "CONFIG SET requirepass s3cret");
    assert_non_null(r);
    freeReplyObject(r);
    struct watch w = {0}, bad = {0};
    struct resp_conn *c =
        connect_ready(&w, &(struct resp_conn_opts){.password = "s3cret", .db = 3});
    struct result set = {0};
    cmd(c, &set, 3, (const char *[]){"SET", "in-db-3", "yes"});
    assert_true(run_until(&set.done, 1, 2000));
    assert_string_equal(set.str, "OK");
    struct resp_conn_callbacks cbs = watch_cbs(&bad);
    struct resp_conn *b = tracked_new(&loop, "127.0.0.1", server.port,
                                      &(struct resp_conn_opts){.password = "wrong"}, &cbs);
    assert_true(run_until(&bad.down, 1, 3000));
    assert_int_equal(bad.last_down_err, RESP_EHANDSHAKE);
    assert_int_equal(bad.ready, 0);
    conn_free(b);
    /* Reset through the authenticated connection, then check the db independently. */
    struct result reset = {0};
    cmd(c, &reset, 4, (const char *[]){"CONFIG", "SET", "requirepass", ""});
    assert_true(run_until(&reset.done, 1, 2000));
    conn_free(c);
    r = redis_spawn_cmd(server.port, "EXISTS in-db-3");
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
}

struct free_ctx {
    struct resp_conn *c;
    int calls, canceled;
};

static void free_on_first(const redisReply *r, int status, void *arg)
{
    struct free_ctx *f = arg;
    f->calls++;
    if (status == RESP_ECANCELED)
        f->canceled++;
    if (f->calls == 1)
        conn_free(f->c); /* deferred: the remaining callbacks still run once */
}

static void test_free_in_callback_and_bounds(void **state)
{
    struct watch w = {0};
    struct free_ctx f = {0};
    f.c = connect_ready(&w, &(struct resp_conn_opts){.max_output = 4096});
    const char *argv[] = {"PING"};
    for (int i = 0; i < 5; i++)
        assert_int_equal(resp_command_argv(f.c, free_on_first, &f, 1, argv, NULL), 0);
    char big[5000];
    memset(big, 'x', sizeof(big));
    size_t lens[] = {4, sizeof(big)};
    assert_int_equal(
        resp_command_argv(f.c, ignore_reply, NULL, 2, (const char *[]){"ECHO", big}, lens),
        RESP_ENOBUFS);
    assert_true(run_until(&f.calls, 5, 2000));
    assert_int_equal(f.canceled, 4);
}

static void test_nothing_listening(void **state)
{
    struct watch w = {0};
    struct resp_conn_callbacks cbs = watch_cbs(&w);
    int port = redis_spawn_free_port();
    struct resp_conn *c = tracked_new(&loop, "127.0.0.1", port, NULL, &cbs);
    struct result r = {0};
    cmd(c, &r, 1, (const char *[]){"PING"}); /* accepted while connecting */
    assert_true(run_until(&w.down, 1, 3000));
    assert_int_equal(r.done, 1);
    assert_int_equal(r.status, RESP_ELOST);
    assert_int_equal(r.type, REDIS_REPLY_ERROR);
    assert_int_equal(resp_command_argv(c, ignore_reply, NULL, 1, (const char *[]){"PING"}, NULL),
                     RESP_ENOTCONN);
    assert_true(run_until(&w.down, 3, 3000)); /* keeps retrying with backoff */
    assert_int_equal(w.ready, 0);
    conn_free(c);
}

/* A server that stops answering (SIGSTOP) fails the connection after reply_timeout_ms, a
 * waiting command with RESP_ENOREPLY; idle, a subscriber notices through its PING. Both
 * come back when the server resumes. */
static void test_silent_server(void **state)
{
    struct watch w = {0}, ws = {.resubscribe = "quiet"};
    struct resp_conn_opts opts = {.name = "test-silent", .reply_timeout_ms = 300};
    struct resp_conn *c = connect_ready(&w, &opts);
    struct resp_conn *sub = connect_ready(&ws, &opts);
    struct result r = {0};
    assert_int_equal(kill(server.pid, SIGSTOP), 0);
    uint64_t t0 = now_ms();
    cmd(c, &r, 2, (const char *[]){"GET", "k1"});
    bool failed = run_until(&r.done, 1, 3000);
    uint64_t took = now_ms() - t0;
    bool sub_down = run_until(&ws.down, 1, 3000); /* idle: its PING got no answer */
    /* The server runs again before anything is asserted: a failure here must not leave
     * it stopped for the tests that follow. */
    assert_int_equal(kill(server.pid, SIGCONT), 0);
    assert_true(failed);
    assert_int_equal(r.status, RESP_ENOREPLY);
    /* Not before the timeout (less the staleness of the loop's clock, which armed the
     * timer: a pass began before t0); the upper bound leaves room for a sanitizer build
     * on a loaded machine. */
    if (took < 250 || took >= 3000)
        fail_msg("the command failed after %llu ms; the reply timeout is 300 ms",
                 (unsigned long long)took);
    assert_int_equal(w.last_down_err, RESP_ENOREPLY);
    assert_true(sub_down);
    assert_int_equal(ws.last_down_err, RESP_ENOREPLY);
    assert_true(run_until(&w.ready, 2, 10000));
    assert_true(run_until(&ws.ready, 2, 10000));
    struct result again = {0};
    cmd(c, &again, 1, (const char *[]){"PING"});
    assert_true(run_until(&again.done, 1, 2000));
    assert_int_equal(again.status, 0);
    /* A quiet but healthy server is not a silent one: idle PINGs are answered. */
    int downs = w.down;
    uint64_t end = now_ms() + 1000;
    while (now_ms() < end)
        loop_run_once(&loop, 50);
    assert_int_equal(w.down, downs);
    conn_free(c);
    conn_free(sub);
}

static void test_server_restart(void **state)
{
    struct watch sub = {.resubscribe = "news"}, cw = {0};
    struct resp_conn *s = connect_ready(&sub, NULL);
    struct resp_conn *c = connect_ready(&cw, NULL);
    struct result blocked = {0};
    cmd(c, &blocked, 3, (const char *[]){"BLPOP", "never", "0"});
    loop_run_once(&loop, 50);
    redisReply *r = redis_spawn_cmd(server.port, "PUBLISH news before");
    freeReplyObject(r);
    assert_true(run_until(&sub.pushes, 1, 2000));
    int port = server.port;
    redis_spawn_stop(&server, SIGKILL);
    assert_true(run_until(&cw.down, 1, 3000));
    assert_int_equal(blocked.done, 1);
    assert_int_equal(blocked.status, RESP_ELOST);
    assert_true(run_until(&sub.down, 1, 3000));
    uint64_t t0 = now_ms();
    loop_run_once(&loop, 300); /* a few failed reconnects while it is down */
    assert_int_equal(redis_spawn_start(&server, port, false), 0);
    assert_true(run_until(&sub.ready, 2, 8000));
    assert_true(run_until(&cw.ready, 2, 8000));
    assert_true(now_ms() - t0 < 8000);
    /* The owner resubscribed from on_ready: a publish after the restart arrives. */
    for (int i = 0; i < 50 && sub.pushes < 2; i++) {
        r = redis_spawn_cmd(server.port, "PUBLISH news after");
        freeReplyObject(r);
        run_until(&sub.pushes, 2, 100);
    }
    assert_int_equal(sub.pushes, 2);
    assert_string_equal(sub.last_data, "after");
    struct result ok = {0};
    cmd(c, &ok, 1, (const char *[]){"PING"});
    assert_true(run_until(&ok.done, 1, 2000));
    assert_string_equal(ok.str, "PONG");
    conn_free(s);
    conn_free(c);
}

struct bus_inbox {
    int messages, subscribed, ups, downs;
    char last[64];
};

static void bus_message(const char *ch, size_t chlen, const char *data, size_t len, void *arg)
{
    struct bus_inbox *in = arg;
    in->messages++;
    snprintf(in->last, sizeof(in->last), "%.*s=%.*s", (int)chlen, ch, (int)len, data);
}

static void bus_subscribed(const char *ch, size_t chlen, void *arg)
{
    ((struct bus_inbox *)arg)->subscribed++;
}

static void bus_status(enum redis_bus_status st, void *arg)
{
    struct bus_inbox *in = arg;
    if (st == REDIS_BUS_UP)
        in->ups++;
    else
        in->downs++;
}

static void bus_publish(struct redis_bus *bus, const char *ch, const char *data, long long want)
{
    struct result res = {0};
    int rc = redis_bus_publish(bus, ch, strlen(ch), data, strlen(data), store_result, &res);
    if (rc)
        fail_msg("publish %s: %s (status %d)", ch, resp_strerror(rc), (int)redis_bus_status(bus));
    assert_true(run_until(&res.done, 1, 2000));
    assert_int_equal(res.integer, want);
}

/* A single-server bus on 127.0.0.1:port reporting to `in`. */
static struct redis_bus *bus_new(int port, const struct redis_bus_opts *opts, struct bus_inbox *in)
{
    struct redis_bus_callbacks cbs = {.on_message = bus_message,
                                      .on_subscribed = bus_subscribed,
                                      .on_status = bus_status,
                                      .arg = in};
    struct redis_bus *bus = redis_bus_single_new(&loop, "127.0.0.1", port, opts, &cbs);
    assert_non_null(bus);
    return bus;
}

/* The single-server redis_bus: subscriptions survive a server restart. */
static void test_single_bus(void **state)
{
    struct bus_inbox in = {0};
    struct redis_bus *bus = bus_new(server.port, &(struct redis_bus_opts){.name = "bus"}, &in);
    assert_int_equal(redis_bus_subscribe(bus, "alpha", 5), 0);
    assert_int_equal(redis_bus_subscribe(bus, "beta", 4), 0);
    assert_int_equal(redis_bus_subscribe(bus, "beta", 4), 0); /* wanted, not yet subscribed */
    assert_true(run_until(&in.subscribed, 2, 3000));
    assert_int_equal(redis_bus_subscribe(bus, "beta", 4), 1); /* subscribed: no new callback */
    assert_true(run_until(&in.ups, 1, 3000));
    assert_int_equal(redis_bus_status(bus), REDIS_BUS_UP);
    bus_publish(bus, "alpha", "one", 1);
    assert_true(run_until(&in.messages, 1, 2000));
    assert_string_equal(in.last, "alpha=one");
    assert_int_equal(redis_bus_unsubscribe(bus, "beta", 4), 0);
    /* UNSUBSCRIBE (sub connection) and PUBLISH (command connection) race: let it land. */
    int never = 0;
    run_until(&never, 1, 100);
    bus_publish(bus, "beta", "nobody", 0);

    int port = server.port;
    redis_spawn_stop(&server, SIGKILL);
    assert_true(run_until(&in.downs, 1, 3000));
    assert_int_equal(redis_bus_status(bus), REDIS_BUS_DOWN);
    struct result res = {0};
    assert_true(redis_bus_publish(bus, "alpha", 5, "x", 1, store_result, &res) == 0 ||
                redis_bus_status(bus) == REDIS_BUS_DOWN);
    assert_int_equal(redis_spawn_start(&server, port, false), 0);
    assert_true(run_until(&in.ups, 2, 8000));
    assert_true(run_until(&in.subscribed, 3, 3000)); /* alpha again, not beta */
    bus_publish(bus, "alpha", "two", 1);
    assert_true(run_until(&in.messages, 2, 2000));
    assert_string_equal(in.last, "alpha=two");
    redis_bus_free(bus);
    loop_run_once(&loop, 0);
}

/* ---- TLS: a throwaway CA, certificates from the openssl command line, redis-server
 * listening with --port 0 --tls-port P ---------------------------------------------------- */

struct tls_server {
    pid_t pid;
    int port;
    const char *auth_clients; /* --tls-auth-clients */
};

static char tls_dir[64];
static struct tls_server tls_open = {.auth_clients = "no"}, tls_mutual = {.auth_clients = "yes"};

static const char *tls_path(const char *file)
{
    static char paths[8][128];
    static unsigned next;
    char *p = paths[next++ % ARRAY_LEN(paths)];
    snprintf(p, sizeof(paths[0]), "%s/%s", tls_dir, file);
    return p;
}

/* CA, a second CA nobody signed with, a server certificate for redis.test and 127.0.0.1,
 * and a client certificate. EC keys: fast to generate. */
static int tls_make_certs(void)
{
    strcpy(tls_dir, "/tmp/herald-tls-XXXXXX");
    if (!mkdtemp(tls_dir))
        return -1;
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "(cd '%s' && K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes' && "
             "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca && "
             "openssl req -x509 $K -keyout other-ca.key -out other-ca.crt -days 2 "
             "-subj /CN=other-ca && "
             "openssl req $K -keyout server.key -out server.csr -subj /CN=redis.test && "
             "echo 'subjectAltName=DNS:redis.test,IP:127.0.0.1' > server.ext && "
             "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "-days 2 -extfile server.ext -out server.crt && "
             "openssl req $K -keyout client.key -out client.csr -subj /CN=herald-client && "
             "echo 'extendedKeyUsage=clientAuth' > client.ext && "
             "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "-days 2 -extfile client.ext -out client.crt && "
             "cat client.crt client.key > client.pem) >/dev/null 2>&1",
             tls_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Starts (or restarts, on the same port) a TLS-only redis-server; 0 or -1. */
static int tls_server_start(struct tls_server *s)
{
    if (!s->port)
        s->port = redis_spawn_free_port();
    char port[16];
    snprintf(port, sizeof(port), "%d", s->port);
    char *argv[] = {"redis-server",
                    "--port",
                    "0",
                    "--tls-port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--tls-cert-file",
                    (char *)tls_path("server.crt"),
                    "--tls-key-file",
                    (char *)tls_path("server.key"),
                    "--tls-ca-cert-file",
                    (char *)tls_path("ca.crt"),
                    "--tls-auth-clients",
                    (char *)s->auth_clients,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    tls_dir,
                    NULL};
    s->pid = fork();
    if (s->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    for (int i = 0; s->pid > 0 && i < 200; i++) {
        if (port_open(s->port))
            return 0;
        if (waitpid(s->pid, NULL, WNOHANG) == s->pid)
            break;
        usleep(50000);
    }
    return -1;
}

static void tls_server_stop(struct tls_server *s, int sig)
{
    if (s->pid > 0) {
        kill(s->pid, sig);
        waitpid(s->pid, NULL, 0);
    }
    s->pid = 0;
}

static struct resp_conn *tls_conn(struct watch *w, const struct tls_server *s,
                                  const struct resp_tls_opts *tls)
{
    struct resp_conn_callbacks cbs = watch_cbs(w);
    struct resp_conn_opts opts = {.name = "tls-test", .tls = tls};
    struct resp_conn *c = tracked_new(&loop, "127.0.0.1", s->port, &opts, &cbs);
    assert_non_null(c);
    return c;
}

static void test_tls_commands(void **state)
{
    struct watch w = {0};
    struct resp_conn *c =
        tls_conn(&w, &tls_open, &(struct resp_tls_opts){.ca_file = tls_path("ca.crt")});
    assert_true(run_until(&w.ready, 1, 5000));
    struct result set = {0}, get = {0};
    cmd(c, &set, 3, (const char *[]){"SET", "tls-k", "over tls"});
    cmd(c, &get, 2, (const char *[]){"GET", "tls-k"});
    assert_true(run_until(&get.done, 1, 2000));
    assert_string_equal(set.str, "OK");
    assert_string_equal(get.str, "over tls");
    /* Large and many: partial SSL_writes, writes that would block, many records per read. */
    static char big[3 << 20];
    memset(big, 'b', sizeof(big));
    struct result echo = {0};
    size_t lens[] = {4, sizeof(big)};
    assert_int_equal(
        resp_command_argv(c, store_result, &echo, 2, (const char *[]){"ECHO", big}, lens), 0);
    struct pipeline p = {0};
    struct result del = {0};
    cmd(c, &del, 2, (const char *[]){"DEL", "tls-counter"});
    for (int i = 0; i < 10000; i++)
        assert_int_equal(resp_command_argv(c, count_in_order, &p, 2,
                                           (const char *[]){"INCR", "tls-counter"}, NULL),
                         0);
    assert_true(run_until(&p.done, 10000, 20000));
    assert_int_equal(p.in_order, 10000);
    assert_int_equal(echo.status, 0);
    assert_int_equal(echo.type, REDIS_REPLY_STRING);
    assert_int_equal(w.down, 0);
    conn_free(c);
}

static void test_tls_pubsub(void **state)
{
    const struct resp_tls_opts tls = {.ca_file = tls_path("ca.crt")};
    struct watch sub = {0}, pub = {0};
    struct resp_conn *s = tls_conn(&sub, &tls_open, &tls);
    struct resp_conn *p = tls_conn(&pub, &tls_open, &tls);
    assert_true(run_until(&sub.ready, 1, 5000));
    assert_true(run_until(&pub.ready, 1, 5000));
    struct result confirm = {0}, r1 = {0};
    cmd(s, &confirm, 2, (const char *[]){"SUBSCRIBE", "tls-ch"});
    assert_true(run_until(&confirm.done, 1, 2000));
    cmd(p, &r1, 3, (const char *[]){"PUBLISH", "tls-ch", "sealed"});
    assert_true(run_until(&sub.pushes, 1, 2000));
    assert_int_equal(r1.integer, 1);
    assert_string_equal(sub.last_data, "sealed");
    conn_free(s);
    conn_free(p);
}

/* The single-server bus passes TLS to both of its connections; a restarted server is
 * reconnected to and the channels subscribed again. */
static void test_tls_bus_restart(void **state)
{
    struct bus_inbox in = {0};
    const struct resp_tls_opts tls = {.ca_file = tls_path("ca.crt"), .server_name = "redis.test"};
    struct redis_bus *bus =
        bus_new(tls_open.port, &(struct redis_bus_opts){.name = "tls", .tls = &tls}, &in);
    assert_int_equal(redis_bus_subscribe(bus, "gamma", 5), 0);
    assert_true(run_until(&in.subscribed, 1, 5000));
    assert_true(run_until(&in.ups, 1, 3000));
    bus_publish(bus, "gamma", "one", 1);
    assert_true(run_until(&in.messages, 1, 2000));
    tls_server_stop(&tls_open, SIGKILL);
    assert_true(run_until(&in.downs, 1, 3000));
    assert_int_equal(tls_server_start(&tls_open), 0);
    assert_true(run_until(&in.ups, 2, 8000));
    assert_true(run_until(&in.subscribed, 2, 3000));
    bus_publish(bus, "gamma", "two", 1);
    assert_true(run_until(&in.messages, 2, 2000));
    assert_string_equal(in.last, "gamma=two");
    redis_bus_free(bus);
    loop_run_once(&loop, 0);
}

/* A connection that must fail: not ready, on_down(want) at least twice (it keeps retrying),
 * and the detail names the cause. */
static void expect_failure(const struct tls_server *s, int port, const struct resp_tls_opts *tls,
                           int want, const char *detail)
{
    struct watch w = {0};
    struct resp_conn_callbacks cbs = watch_cbs(&w);
    /* Only the case that expects the timeout needs a short one; the others fail as soon as
     * the handshake is done, which takes longer than 500 ms on a loaded machine (TSan). */
    struct resp_conn_opts opts = {
        .name = "tls-fail", .tls = tls, .connect_timeout_ms = want == RESP_ETIMEDOUT ? 500 : 3000};
    struct resp_conn *c = tracked_new(&loop, "127.0.0.1", s ? s->port : port, &opts, &cbs);
    assert_non_null(c);
    assert_true(run_until(&w.down, 2, 10000));
    assert_int_equal(w.ready, 0);
    if (w.last_down_err != want)
        fail_msg("want %s, got %s (%s)", resp_strerror(want), resp_strerror(w.last_down_err),
                 resp_conn_error_detail(c));
    if (!strstr(resp_conn_error_detail(c), detail))
        fail_msg("detail \"%s\" lacks \"%s\"", resp_conn_error_detail(c), detail);
    conn_free(c);
}

static void test_tls_verification_failures(void **state)
{
    /* Signed by a CA we do not trust. */
    expect_failure(&tls_open, 0, &(struct resp_tls_opts){.ca_file = tls_path("other-ca.crt")},
                   RESP_ETLSVERIFY, "self-signed certificate in certificate chain");
    /* The system store does not know our throwaway CA either. */
    expect_failure(&tls_open, 0, &(struct resp_tls_opts){0}, RESP_ETLSVERIFY,
                   "self-signed certificate in certificate chain");
    /* Trusted CA, wrong name. */
    expect_failure(
        &tls_open, 0,
        &(struct resp_tls_opts){.ca_file = tls_path("ca.crt"), .server_name = "other.test"},
        RESP_ETLSVERIFY, "hostname mismatch");
    expect_failure(
        &tls_open, 0,
        &(struct resp_tls_opts){.ca_file = tls_path("ca.crt"), .server_name = "127.0.0.2"},
        RESP_ETLSVERIFY, "IP address mismatch");
    /* Unreadable CA file: a setup failure, retried like any other. */
    expect_failure(&tls_open, 0, &(struct resp_tls_opts){.ca_file = tls_path("missing.crt")},
                   RESP_ETLSCONFIG, "missing.crt: No such file or directory");
    expect_failure(&tls_open, 0, &(struct resp_tls_opts){.ca_file = tls_path("server.ext")},
                   RESP_ETLSCONFIG, "server.ext");
    /* TLS to a plain-text server. */
    expect_failure(NULL, server.port, &(struct resp_tls_opts){.ca_file = tls_path("ca.crt")},
                   RESP_ETIMEDOUT, "TLS handshake");
    /* insecure: the untrusted certificate and the wrong name are accepted. */
    struct watch w = {0};
    struct resp_conn *c = tls_conn(&w, &tls_open,
                                   &(struct resp_tls_opts){.ca_file = tls_path("other-ca.crt"),
                                                           .server_name = "other.test",
                                                           .insecure = true});
    assert_true(run_until(&w.ready, 1, 5000));
    conn_free(c);
}

static void test_tls_mutual(void **state)
{
    /* No client certificate: TLS 1.3 reports the server's refusal after the handshake. */
    struct watch w = {0};
    struct resp_conn *c =
        tls_conn(&w, &tls_mutual, &(struct resp_tls_opts){.ca_file = tls_path("ca.crt")});
    assert_true(run_until(&w.down, 1, 5000));
    assert_int_equal(w.ready, 0);
    assert_true(w.last_down_err == RESP_ETLS || w.last_down_err == -ECONNRESET);
    conn_free(c);
    /* A key that does not match the certificate. */
    expect_failure(&tls_mutual, 0,
                   &(struct resp_tls_opts){.ca_file = tls_path("ca.crt"),
                                           .cert_file = tls_path("client.crt"),
                                           .key_file = tls_path("server.key")},
                   RESP_ETLSCONFIG, "key file");
    /* Certificate and key in separate files, and both in one. */
    const struct resp_tls_opts both[] = {
        {.ca_file = tls_path("ca.crt"),
         .cert_file = tls_path("client.crt"),
         .key_file = tls_path("client.key")},
        {.ca_file = tls_path("ca.crt"), .cert_file = tls_path("client.pem")},
    };
    for (size_t i = 0; i < ARRAY_LEN(both); i++) {
        struct watch ok = {0};
        c = tls_conn(&ok, &tls_mutual, &both[i]);
        assert_true(run_until(&ok.ready, 1, 5000));
        struct result pong = {0};
        cmd(c, &pong, 1, (const char *[]){"PING"});
        assert_true(run_until(&pong.done, 1, 2000));
        assert_string_equal(pong.str, "PONG");
        conn_free(c);
    }
}

/* A TLS 1.2 server of our own (redis-server never renegotiates) that answers PING and
 * renegotiates every 10000 commands while the client keeps writing, after a pause that
 * lets the client's socket fill up: the client's handshake messages then wait for a full
 * socket, its writes wait for the handshake, and the server's PONGs keep arriving in the
 * middle of the handshake. */
struct reneg_server {
    int lfd, port;
    pthread_t thread;
    int served, renegotiations, garbage;
};

static void *reneg_main(void *arg)
{
    struct reneg_server *s = arg;
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_use_certificate_file(ctx, tls_path("server.crt"), SSL_FILETYPE_PEM);
    SSL_CTX_use_PrivateKey_file(ctx, tls_path("server.key"), SSL_FILETYPE_PEM);
    int fd = accept(s->lfd, NULL, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    char in[16384], out[sizeof(in) / 14 * 7];
    size_t have = 0;
    for (int ok = SSL_accept(ssl) == 1; ok;) {
        int n = SSL_read(ssl, in + have, (int)(sizeof(in) - have));
        if (n <= 0)
            break;
        have += (size_t)n;
        size_t used = 0, nout = 0;
        for (; have - used >= 14; used += 14, nout += 7) {
            s->garbage += memcmp(in + used, ping, 14) != 0;
            memcpy(out + nout, "+PONG\r\n", 7);
            if (++s->served % 10000 != 0)
                continue;
            usleep(10000); /* not reading: the client's socket fills up */
            if (SSL_renegotiate(ssl) == 1 && SSL_do_handshake(ssl) == 1)
                s->renegotiations++;
            usleep(10000); /* the client answers the HelloRequest into a full socket */
        }
        memmove(in, in + used, have - used);
        have -= used;
        ok = !nout || SSL_write(ssl, out, (int)nout) > 0;
    }
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    return NULL;
}

static void count_pong(const redisReply *r, int status, void *arg)
{
    struct pipeline *p = arg;
    p->in_order += status == 0 && resp_reply_str_eq(r, "PONG");
    p->done++;
}

static void test_tls_renegotiation(void **state)
{
    struct reneg_server s = {.lfd = socket(AF_INET, SOCK_STREAM, 0)};
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    /* A small window: while the server sleeps the client's socket buffers fill up. */
    int small = 4096;
    setsockopt(s.lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    assert_int_equal(bind(s.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s.lfd, 1), 0);
    assert_int_equal(getsockname(s.lfd, (struct sockaddr *)&sa, &sl), 0);
    s.port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&s.thread, NULL, reneg_main, &s), 0);
    struct watch w = {0};
    struct resp_conn_callbacks cbs = watch_cbs(&w);
    struct resp_conn *c = tracked_new(
        &loop, "127.0.0.1", s.port,
        &(struct resp_conn_opts){.tls = &(struct resp_tls_opts){.ca_file = tls_path("ca.crt")}},
        &cbs);
    assert_true(run_until(&w.ready, 1, 5000));
    struct pipeline p = {0};
    /* Queued faster than the server reads: the client always has output waiting. */
    for (int wave = 0; wave < 4; wave++) {
        for (int i = 0; i < 150000; i++)
            assert_int_equal(
                resp_command_argv(c, count_pong, &p, 1, (const char *[]){"PING"}, NULL), 0);
        loop_run_once(&loop, 0);
    }
    assert_true(run_until(&p.done, 600000, 30000));
    assert_int_equal(p.in_order, 600000);
    assert_int_equal(w.down, 0);
    conn_free(c);
    pthread_join(s.thread, NULL);
    close(s.lfd);
    assert_int_equal(s.garbage, 0);
    assert_true(s.renegotiations > 10);
}

static int tls_setup(void **state)
{
    if (tls_make_certs() < 0 || tls_server_start(&tls_open) < 0 ||
        tls_server_start(&tls_mutual) < 0) {
        fprintf(stderr, "cannot start the TLS redis-servers (in %s)\n", tls_dir);
        return -1;
    }
    return 0;
}

static int tls_teardown(void **state)
{
    tls_server_stop(&tls_open, SIGKILL);
    tls_server_stop(&tls_mutual, SIGKILL);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tls_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    if (loop_init(&loop) < 0 || redis_spawn_start(&server, 0, false) < 0)
        return -1;
    return tls_setup(state);
}

static int teardown(void **state)
{
    int rc = tls_teardown(state);
    redis_spawn_cleanup();
    loop_free(&loop);
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_commands, free_leftovers),
        cmocka_unit_test_teardown(test_pipeline_10k, free_leftovers),
        cmocka_unit_test_teardown(test_pubsub, free_leftovers),
        cmocka_unit_test_teardown(test_auth_select, free_leftovers),
        cmocka_unit_test_teardown(test_free_in_callback_and_bounds, free_leftovers),
        cmocka_unit_test_teardown(test_nothing_listening, free_leftovers),
        cmocka_unit_test_teardown(test_silent_server, free_leftovers),
        cmocka_unit_test_teardown(test_server_restart, free_leftovers),
        cmocka_unit_test_teardown(test_single_bus, free_leftovers),
        cmocka_unit_test_teardown(test_tls_commands, free_leftovers),
        cmocka_unit_test_teardown(test_tls_pubsub, free_leftovers),
        cmocka_unit_test_teardown(test_tls_bus_restart, free_leftovers),
        cmocka_unit_test_teardown(test_tls_verification_failures, free_leftovers),
        cmocka_unit_test_teardown(test_tls_mutual, free_leftovers),
        cmocka_unit_test_teardown(test_tls_renegotiation, free_leftovers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
