/*
 * main: runs a CLI command (cli.h) when argv[1] names one; otherwise reads the configuration,
 * starts the hub and the workers, turns SIGTERM/SIGINT into a graceful drain and SIGHUP into a TLS
 * certificate reload. Exit codes: 0 after a clean shutdown, 1 when the server cannot start, 2 for
 * an invalid configuration.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api/api.h"
#include "apps/admin.h"
#include "apps/apps.h"
#include "apps/tsuru.h"
#include "auth/auth.h"
#include "cli/cli.h"
#include "cluster/redis_backend.h"
#include "core/config.h"
#include "core/log.h"
#include "core/server.h"
#include "hooks/hooks.h"
#include "http/http_conn.h"
#include "http/router.h"
#include "transport/sse.h"
#include "transport/transport.h"
#include "web/admin_ui.h"
#include "web/client_js.h"

static struct server srv;

static void on_listening(struct server *s)
{
    const struct herald_config *cfg = &s->cfg;
    const char *api = cfg->has_api_listen || cfg->has_api_listen_tls ? "" : " and publish API";
    for (int i = 0; i < cfg->num_listen; i++)
        log_info("listening on %s:%u (subscribers%s)",
                 cfg->listen[i].host[0] ? cfg->listen[i].host : "0.0.0.0", cfg->listen[i].port,
                 api);
    for (int i = 0; i < cfg->num_listen_tls; i++)
        log_info("listening on %s:%u over TLS (subscribers%s)",
                 cfg->listen_tls[i].host[0] ? cfg->listen_tls[i].host : "0.0.0.0",
                 cfg->listen_tls[i].port, api);
    if (cfg->has_api_listen)
        log_info("publish/admin API on %s:%u",
                 cfg->api_listen.host[0] ? cfg->api_listen.host : "0.0.0.0", cfg->api_listen.port);
    if (cfg->has_api_listen_tls)
        log_info("publish/admin API on %s:%u over TLS",
                 cfg->api_listen_tls.host[0] ? cfg->api_listen_tls.host : "0.0.0.0",
                 cfg->api_listen_tls.port);
    if (!cfg->publish_key[0])
        log_warn("no --publish-key set: the publish and channel API accepts loopback clients "
                 "only (set HERALD_PUBLISH_KEY to publish from elsewhere)");
    log_info("%s", auth_describe(auth_default_policy()));
}

/*
 * Grows the descriptor table to the fd limit now, while the process has one
 * thread. The kernel grows it by doubling as descriptors are opened, and in a
 * process whose threads share it every growth waits for an RCU grace period
 * (expand_fdtable: synchronize_rcu), about 10 ms here: during a connection
 * storm accept4() stalled at fd 256, 512, ... 4096, and handshakes queued
 * behind it. The table never shrinks, so one dup2 to the top does it; it costs
 * about 10 bytes per allowed descriptor.
 */
static void presize_fd_table(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur < 2)
        return;
    int top = (int)MIN(rl.rlim_cur - 1, (rlim_t)(1 << 20));
    if (dup2(STDERR_FILENO, top) == top)
        close(top);
}

/*
 * A route that joins two modules, so it is wired here: the live tail of a channel for
 * the holders of the API's credentials (the admin UI's channel page), an SSE stream
 * served on the API listener whatever the app's subscribe policy.
 */
static const struct http_route tail_route[] = {
    {.path = "/api/tail",
     .methods = HTTP_METHOD_BIT(HTTP_M_GET),
     .flags = ROUTE_API | ROUTE_APP,
     .guard = api_guard,
     .handle = sse_tail_handle},
};

/* /apps/{app}/: the app's share of the hub. */
static struct hub_tenant *resolve_app(const char *name, size_t len)
{
    struct app *a = apps_get(name, len);
    return a ? &a->t : NULL;
}

int main(int argc, char **argv)
{
    /* `herald pub …`, `herald sub …`: the command-line client, not the server */
    if (argc > 1 && cli_handles(argv[1]))
        return cli_main(argc, argv);
    config_set_help_footer(cli_print_commands);
    int rc = config_load(&srv.cfg, argc, argv);
    if (rc == 1)
        return 0;
    if (rc)
        return 2;
    log_level = srv.cfg.log_level;
    if (auth_init(&srv.cfg) < 0)
        return 2;
    if (!srv.cfg.node_name[0]) {
        char host[48] = "herald";
        gethostname(host, sizeof(host) - 1);
        snprintf(srv.cfg.node_name, sizeof(srv.cfg.node_name), "%s:%u", host,
                 srv.cfg.num_listen ? srv.cfg.listen[0].port : srv.cfg.listen_tls[0].port);
    }
    signal(SIGPIPE, SIG_IGN);
    /* SIGTERM, SIGINT and SIGHUP are blocked here, before any thread starts (threads
     * inherit the mask), and taken synchronously by sigwaitinfo() below: no handler
     * races the wait, and no worker is interrupted by them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max; /* take every descriptor we are allowed */
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    presize_fd_table();
    srv.nworkers = srv.cfg.workers;
    hub_init(&srv.hub, &srv.cfg, srv.nworkers);
    /* Before the apps: their webhook settings take the --webhook-* defaults. */
    if (hooks_init(&srv.hub, &srv.cfg) < 0)
        return 2;
    char err[700];
    bool cluster = srv.cfg.redis_url[0] || srv.cfg.redis_cluster[0];
    if (cluster && srv.cfg.state_dir[0]) {
        log_error("--state-dir is for a single node: in cluster mode (--redis, --redis-cluster) "
                  "apps live in Redis, shared by every node; drop --state-dir");
        return 2;
    }
    /* Cluster mode: the backend first, for the apps store keeps the apps in Redis. */
    if (cluster && redis_backend_start(&srv.hub, &srv.cfg) < 0)
        return 2;
    struct apps_store *store = cluster                ? redis_apps_store_new(&srv.hub)
                               : srv.cfg.state_dir[0] ? apps_file_store_new(srv.cfg.state_dir)
                                                      : NULL;
    if (apps_init(&srv.hub, &srv.cfg, store, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return 2;
    }
    http_set_app_resolver(resolve_app);
    auth_set_app_policy(apps_policy);
    hooks_set_app_target(apps_hooks);
    /* Everything an operator must read is logged before the first connection. */
    srv.on_listening = on_listening;
    /* Every connection starts as HTTP; the routes lead to the API and the transports. */
    srv.accept_ops = &http_conn_ops;
    api_init();
    admin_init();
    admin_ui_init();
    tsuru_init(&srv.cfg);
    transport_init();
    http_routes_add(tail_route, ARRAY_LEN(tail_route));
    client_js_init();
    if (server_start(&srv) < 0)
        return 1;
    log_info("herald started: %d worker%s, %s, node %s, fd limit %lu", srv.nworkers,
             srv.nworkers == 1 ? "" : "s",
             !cluster                   ? "in-memory hub"
             : srv.cfg.redis_cluster[0] ? "Redis Cluster backend"
                                        : "Redis backend",
             srv.cfg.node_name, (unsigned long)rl.rlim_cur);

    int sig;
    for (;;) {
        sig = sigwaitinfo(&sigs, NULL);
        if (sig < 0)
            continue; /* EINTR (a debugger, SIGSTOP/SIGCONT) */
        if (sig != SIGHUP)
            break;
        /* The TLS certificate is reloaded (and says so); nothing else is. */
        if (server_reload_tls(&srv) > 0)
            log_info("SIGHUP ignored: herald reloads only the TLS certificate (--tls-cert) and "
                     "has no TLS listener; restart it to change options (SIGTERM drains "
                     "gracefully)");
    }
    log_info("%s received: draining connections (at most %u ms)",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", srv.cfg.shutdown_timeout_ms);
    server_request_shutdown(&srv);
    server_join(&srv);
    /* Hook calls in flight end (their answers go to the stopped workers' inboxes). */
    hooks_stop();
    /* The backend answers the workers through their inboxes until it stops: only then may
     * they be freed. */
    if (cluster)
        redis_backend_stop(&srv.hub);
    server_free(&srv);
    hub_free(&srv.hub);
    apps_free();
    transport_free();
    auth_free();
    log_info("herald stopped");
    return 0;
}
