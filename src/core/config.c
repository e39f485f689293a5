/*
 * config: turns defaults, a config file, HERALD_* environment variables and
 * the command line into one struct herald_config, in that order of increasing
 * precedence.
 *
 * Everything is driven by options[] below: one row per option gives its name
 * (the flag, the config-file key, and after upper-casing the env var), its
 * type, where it lives in the struct, its default as text, its bounds and its
 * --help line. Defaults are parsed by the same code as user input, so a bad
 * default fails loudly in config_defaults() instead of shipping. Adding an
 * option means adding a field to config.h and one row here; nothing else.
 *
 * Nothing here allocates beyond getline() while reading the config file, and
 * nothing keeps pointers into argv, the environment or the file.
 */
#include "core/config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define HERALD_VERSION "0.1.0"

#define MS_SECOND 1000
#define MS_MINUTE (60 * MS_SECOND)
#define MS_HOUR   (60 * MS_MINUTE)
#define MS_DAY    (24 * (int64_t)MS_HOUR)
#define KIB       1024
#define MIB       (1024 * KIB)
#define GIB       (1024 * (int64_t)MIB)

enum opt_type {
    OPT_BOOL,      /* bool */
    OPT_INT,       /* int, within [min, max] */
    OPT_COUNT,     /* uint32_t, within [min, max] */
    OPT_DURATION,  /* uint32_t milliseconds, within [min, max] */
    OPT_SIZE,      /* uint32_t bytes, within [min, max] */
    OPT_STRING,    /* char[size], NUL-terminated, no control characters */
    OPT_ADDR,      /* struct config_addr; aux = offset of its "is set" bool */
    OPT_ADDR_LIST, /* struct config_addr[size / sizeof]; aux = offset of its int count */
    OPT_LOG_LEVEL, /* int 0..3 */
};

/* Extra validation for a string option: may normalise `value` in place. NULL or the reason. */
typedef const char *string_check_fn(char *value);

struct config_option {
    const char *section; /* set on the first row of each --help section */
    const char *name;
    enum opt_type type;
    size_t offset, size, aux;
    const char *def;      /* default as text; NULL when config_defaults() computes it */
    const char *def_text; /* what --help shows when def is NULL */
    int64_t min, max;     /* for INT, COUNT, DURATION (ms) and SIZE (bytes) */
    const char *metavar;  /* for STRING */
    const char *help;
    string_check_fn *check; /* for STRING, optional */
    bool secret;            /* never echo the value in messages */
};

#define FIELD(f)                                                                                   \
    .offset = offsetof(struct herald_config, f), .size = sizeof(((struct herald_config *)0)->f)
#define AUX(f) .aux = offsetof(struct herald_config, f)

static string_check_fn check_origins, check_redis_url, check_host_port_list, check_node_name,
    check_server_name;

static const struct config_option options[] = {
    {.section = "Network",
     .name = "listen",
     .type = OPT_ADDR_LIST,
     FIELD(listen),
     AUX(num_listen),
     .def = "0.0.0.0:8080",
     .help = "address to accept clients on; repeat the flag (or give a comma list) for up to 8"},
    {.name = "api-listen",
     .type = OPT_ADDR,
     FIELD(api_listen),
     AUX(has_api_listen),
     .def = "",
     .help = "separate listener for the publish and admin API; empty: the main listeners"},
    {.name = "listen-tls",
     .type = OPT_ADDR_LIST,
     FIELD(listen_tls),
     AUX(num_listen_tls),
     .def = "",
     .help = "address to accept clients on over TLS (https://, wss://), like --listen; needs "
             "--tls-cert"},
    {.name = "api-listen-tls",
     .type = OPT_ADDR,
     FIELD(api_listen_tls),
     AUX(has_api_listen_tls),
     .def = "",
     .help = "separate listener for the publish and admin API over TLS; empty: none"},
    {.name = "tls-cert",
     .type = OPT_STRING,
     FIELD(tls_cert),
     .def = "",
     .metavar = "FILE",
     .help = "PEM certificate of the TLS listeners, followed by its chain; SIGHUP reloads it"},
    {.name = "tls-key",
     .type = OPT_STRING,
     FIELD(tls_key),
     .def = "",
     .metavar = "FILE",
     .help = "PEM private key of --tls-cert (unencrypted); empty: the key is in the --tls-cert "
             "file"},
    {.name = "workers",
     .type = OPT_INT,
     FIELD(workers),
     .def_text = "number of online CPUs",
     .min = 1,
     .max = 64,
     .help = "worker threads, one event loop each"},
    {.name = "max-connections",
     .type = OPT_INT,
     FIELD(max_connections),
     .def = "0",
     .min = 0,
     .max = 100000000,
     .help = "client connections per node; 0: as many as RLIMIT_NOFILE allows"},

    {.section = "Publishing and browsers",
     .name = "publish-key",
     .type = OPT_STRING,
     FIELD(publish_key),
     .def = "",
     .metavar = "KEY",
     .secret = true,
     .help = "key publishers send (HTTP Basic or Bearer); empty: only loopback clients publish"},
    {.name = "cors-origins",
     .type = OPT_STRING,
     FIELD(cors_origins),
     .def = "*",
     .metavar = "LIST",
     .check = check_origins,
     .help = "comma list of origins allowed to subscribe from browsers (CORS and WebSocket); * = "
             "any"},
    {.name = "api-cors-origins",
     .type = OPT_STRING,
     FIELD(api_cors_origins),
     .def = "",
     .metavar = "LIST",
     .check = check_origins,
     .help = "comma list of origins whose browser pages may call the publish and admin API "
             "(CORS); empty = same-origin requests only"},
    {.name = "ws-publish",
     .type = OPT_BOOL,
     FIELD(ws_publish),
     .def = "false",
     .help = "allow {\"op\":\"publish\"} over WebSocket"},

    {.section = "Apps (tenants)",
     .name = "admin-key",
     .type = OPT_STRING,
     FIELD(admin_key),
     .def = "",
     .metavar = "KEY",
     .secret = true,
     .help = "key of the admin API (/admin/...) and the Tsuru service API (/resources/...), sent "
             "as Bearer or HTTP Basic password; empty: both are off"},
    {.name = "state-dir",
     .type = OPT_STRING,
     FIELD(state_dir),
     .def = "",
     .metavar = "DIR",
     .help = "directory where apps are kept across restarts (single node; cluster mode keeps "
             "them in Redis); empty: apps live in memory only"},
    {.name = "plans",
     .type = OPT_STRING,
     FIELD(plans_file),
     .def = "",
     .metavar = "FILE",
     .help = "JSON file of plans and their limits; empty: the built-in plans (GET /admin/plans)"},
    {.name = "public-url",
     .type = OPT_STRING,
     FIELD(public_url),
     .def = "",
     .metavar = "URL",
     .help = "base URL subscribers reach herald at, given to apps (HERALD_URL); empty: "
             "http:// (https:// over TLS) and the Host the request named"},
    {.name = "api-url",
     .type = OPT_STRING,
     FIELD(api_url),
     .def = "",
     .metavar = "URL",
     .help = "base URL of the publish API, given to apps (HERALD_PUBLISH_URL); empty: as "
             "--public-url"},

    {.section = "Subscriber tokens",
     .name = "token-secret",
     .type = OPT_STRING,
     FIELD(token_secret),
     .def = "",
     .metavar = "SECRET",
     .secret = true,
     .help = "subscribers need a JWT signed HS256 with this secret; empty (and no "
             "--token-public-key): subscribing is public"},
    {.name = "token-public-key",
     .type = OPT_STRING,
     FIELD(token_public_key),
     .def = "",
     .metavar = "FILE",
     .help = "PEM public key: subscribers need a JWT signed RS256 (RSA key) or ES256 (P-256 key)"},
    {.name = "token-alg",
     .type = OPT_STRING,
     FIELD(token_alg),
     .def = "",
     .metavar = "ALG",
     .help = "the one algorithm tokens may use (HS256, RS256, ES256); empty: from the key"},
    {.name = "token-skew",
     .type = OPT_DURATION,
     FIELD(token_skew_ms),
     .def = "30s",
     .min = 0,
     .max = MS_HOUR,
     .help = "clock difference allowed when checking a token's exp, nbf and iat"},

    {.section = "Connection lifetime",
     .name = "heartbeat",
     .type = OPT_DURATION,
     FIELD(heartbeat_ms),
     .def = "30s",
     .min = 100,
     .max = MS_HOUR,
     .help = "interval of WebSocket pings and SSE heartbeat comments"},
    {.name = "close-grace",
     .type = OPT_DURATION,
     FIELD(close_grace_ms),
     .def = "4s",
     .min = 100,
     .max = 10 * MS_MINUTE,
     .help = "time a WebSocket client has to answer a ping before it is closed"},
    {.name = "lifetime-min",
     .type = OPT_DURATION,
     FIELD(lifetime_min_ms),
     .def = "120s",
     .min = 0,
     .max = 7 * MS_DAY,
     .help = "shortest connection lifetime before the server asks for a reconnect; 0: unlimited"},
    {.name = "lifetime-max",
     .type = OPT_DURATION,
     FIELD(lifetime_max_ms),
     .def = "180s",
     .min = 0,
     .max = 7 * MS_DAY,
     .help = "longest connection lifetime; each one is drawn from [lifetime-min, lifetime-max]"},
    {.name = "shutdown-timeout",
     .type = OPT_DURATION,
     FIELD(shutdown_timeout_ms),
     .def = "10s",
     .min = 0,
     .max = MS_HOUR,
     .help = "on SIGTERM, time clients get to leave before they are closed"},
    {.name = "header-timeout",
     .type = OPT_DURATION,
     FIELD(header_timeout_ms),
     .def = "10s",
     .min = 100,
     .max = MS_HOUR,
     .help = "time a client has to send complete request headers"},
    {.name = "poll-timeout",
     .type = OPT_DURATION,
     FIELD(poll_timeout_ms),
     .def = "30s",
     .min = 100,
     .max = MS_HOUR,
     .help = "longest a long-poll request is held open"},

    {.section = "Limits",
     .name = "max-header-bytes",
     .type = OPT_SIZE,
     FIELD(max_header_bytes),
     .def = "8KiB",
     .min = KIB,
     .max = MIB,
     .help = "largest request line plus headers"},
    {.name = "max-uri-bytes",
     .type = OPT_SIZE,
     FIELD(max_uri_bytes),
     .def = "4KiB",
     .min = 256,
     .max = MIB,
     .help = "longest request URI"},
    {.name = "max-body-bytes",
     .type = OPT_SIZE,
     FIELD(max_body_bytes),
     .def = "1MiB",
     .min = 1,
     .max = GIB,
     .help = "largest publish request body"},
    {.name = "max-input-memory",
     .type = OPT_SIZE,
     FIELD(max_input_memory),
     .def = "128MiB",
     .min = MIB,
     .max = 3 * GIB,
     .help = "input buffered across all connections (request bodies, WebSocket frames) before "
             "new large input is refused with 503"},
    {.name = "max-ws-message",
     .type = OPT_SIZE,
     FIELD(max_ws_message),
     .def = "64KiB",
     .min = KIB,
     .max = GIB,
     .help = "largest WebSocket message a client may send"},
    {.name = "max-outbound",
     .type = OPT_SIZE,
     FIELD(max_outbound),
     .def = "1MiB",
     .min = 4 * KIB,
     .max = GIB,
     .help = "unsent bytes queued per connection before a slow consumer is closed"},
    {.name = "max-channels-per-conn",
     .type = OPT_COUNT,
     FIELD(max_channels_per_conn),
     .def = "64",
     .min = 1,
     .max = 65536,
     .help = "channels one connection may subscribe to"},
    {.name = "max-channels-per-ip",
     .type = OPT_COUNT,
     FIELD(max_channels_per_ip),
     .def = "1000",
     .min = 0,
     .max = 100000000,
     .help = "channels that only have subscribers one client address (IPv6: its /64) may have "
             "created; 0: no limit"},
    {.name = "max-patterns-per-conn",
     .type = OPT_COUNT,
     FIELD(max_patterns_per_conn),
     .def = "8",
     .min = 0,
     .max = 64,
     .help = "pattern subscriptions (channels=scores.*) one connection may hold; 0: none"},
    {.name = "max-patterns",
     .type = OPT_COUNT,
     FIELD(max_patterns),
     .def = "10000",
     .min = 0,
     .max = 1000000,
     .help = "distinct subscription patterns the server holds at once (each also counts "
             "against --max-channels-per-ip of the address that brought it)"},
    {.name = "max-presence-users",
     .type = OPT_COUNT,
     FIELD(max_presence_users),
     .def = "10000",
     .min = 1,
     .max = 1000000,
     .help = "users a channel with presence lists (per node); the connections of more users "
             "are counted as unlisted"},
    {.name = "max-pattern-replay",
     .type = OPT_COUNT,
     FIELD(max_pattern_replay),
     .def = "1000",
     .min = 1,
     .max = 1000000,
     .help = "messages a pattern subscription replays on resume at most (the newest; a gap "
             "event tells what was left out)"},
    {.name = "limit-loopback",
     .type = OPT_BOOL,
     FIELD(limit_loopback),
     .def = "false",
     .help = "apply --max-channels-per-ip to loopback clients too (off: a proxy on the same host "
             "makes every client one loopback address)"},

    {.section = "Backend hooks (the default app; apps set webhook_* settings)",
     .name = "webhook-url",
     .type = OPT_STRING,
     FIELD(webhook_url),
     .def = "",
     .metavar = "URL",
     .help = "the default app's backend: herald POSTs signed JSON events (connect, subscribe, "
             "publish, rpc, disconnect) to it; empty: no hooks"},
    {.name = "webhook-secret",
     .type = OPT_STRING,
     FIELD(webhook_secret),
     .def = "",
     .metavar = "SECRET",
     .secret = true,
     .help = "key of the HMAC-SHA256 in X-Herald-Signature; empty: --token-secret"},
    {.name = "webhook-events",
     .type = OPT_STRING,
     FIELD(webhook_events),
     .def = "connect,subscribe,publish,rpc,disconnect",
     .metavar = "LIST",
     .help = "the events the default app's backend gets (comma list)"},
    {.name = "webhook-timeout",
     .type = OPT_DURATION,
     FIELD(webhook_timeout_ms),
     .def = "2s",
     .min = 10,
     .max = MS_MINUTE,
     .help = "a hook request without an answer by then fails (apps: webhook_timeout_ms)"},
    {.name = "webhook-retries",
     .type = OPT_COUNT,
     FIELD(webhook_retries),
     .def = "2",
     .min = 0,
     .max = 10,
     .help = "extra attempts of a failed publish or disconnect notification, with backoff from "
             "200 ms (apps: webhook_retries)"},
    {.name = "webhook-fail-open",
     .type = OPT_BOOL,
     FIELD(webhook_fail_open),
     .def = "false",
     .help = "a connect or subscribe hook that fails lets the client in (default: the client "
             "gets 503 hook_failed)"},
    {.name = "hook-queue-ip",
     .type = OPT_COUNT,
     FIELD(hook_queue_ip),
     .def = "100",
     .min = 0,
     .max = 10000000,
     .help = "hook calls one client address may have waiting (connects, subscribes, rpc; an IPv6 "
             "client counts as its /64), at most; more are refused for that client only. "
             "Loopback clients are exempt unless --limit-loopback; 0: no limit"},
    {.name = "client-publish-rate",
     .type = OPT_COUNT,
     FIELD(client_publish_rate),
     .def = "20",
     .min = 0,
     .max = 1000000,
     .help = "publishes per second one WebSocket connection may make with its token's publish "
             "grant (more get an error event, the connection stays); 0: no limit"},
    {.name = "rpc-inflight",
     .type = OPT_COUNT,
     FIELD(rpc_inflight),
     .def = "16",
     .min = 1,
     .max = 1024,
     .help = "rpc ops one WebSocket connection may have waiting for the backend at once"},
    {.name = "hook-connections",
     .type = OPT_COUNT,
     FIELD(hook_connections),
     .def = "16",
     .min = 1,
     .max = 1024,
     .help = "keep-alive connections to one backend, at most (more calls wait for one); rpc "
             "and notifications may hold all but a quarter, kept for connect and subscribe"},
    {.name = "hook-queue",
     .type = OPT_COUNT,
     FIELD(hook_queue),
     .def = "10000",
     .min = 1,
     .max = 10000000,
     .help = "hook calls waiting or in flight in the process, at most; past it a connect is "
             "refused with 503 and a notification dropped (counted in /stats); rpc calls "
             "may fill three quarters of it and of --hook-queue-app"},
    {.name = "hook-queue-app",
     .type = OPT_COUNT,
     FIELD(hook_queue_app),
     .def = "1000",
     .min = 1,
     .max = 10000000,
     .help = "hook calls waiting or in flight for one app, at most"},

    {.section = "Channels and history",
     .name = "auto-create",
     .type = OPT_BOOL,
     FIELD(auto_create),
     .def = "true",
     .help = "create channels on first publish or subscribe"},
    {.name = "channel-ttl",
     .type = OPT_DURATION,
     FIELD(channel_ttl_ms),
     .def = "15m",
     .min = MS_SECOND,
     .max = 30 * MS_DAY,
     .help = "a channel with no subscribers and no publish for this long is deleted"},
    {.name = "history-size",
     .type = OPT_COUNT,
     FIELD(history_size),
     .def = "100",
     .min = 1,
     .max = 1000000,
     .help = "messages kept per channel"},
    {.name = "history-ttl",
     .type = OPT_DURATION,
     FIELD(history_ttl_ms),
     .def = "1h",
     .min = MS_SECOND,
     .max = 30 * MS_DAY,
     .help = "age at which a message leaves history"},
    {.name = "history-bytes",
     .type = OPT_SIZE,
     FIELD(history_bytes),
     .def = "1MiB",
     .min = KIB,
     .max = GIB,
     .help = "bytes of history kept per channel"},
    {.name = "max-channels",
     .type = OPT_COUNT,
     FIELD(max_channels),
     .def = "1000000",
     .min = 1,
     .max = 100000000,
     .help = "channels per node; creating more fails"},
    {.name = "ws-deflate",
     .type = OPT_BOOL,
     FIELD(ws_deflate),
     .def = "true",
     .help = "offer permessage-deflate compression to WebSocket clients"},

    {.section = "Cluster",
     .name = "redis",
     .type = OPT_STRING,
     FIELD(redis_url),
     .def = "",
     .metavar = "URL",
     .check = check_redis_url,
     .secret = true,
     .help =
         "shared Redis, redis://[:password@]host:port[/db] (rediss:// = TLS); empty: in-memory"},
    {.name = "redis-cluster",
     .type = OPT_STRING,
     FIELD(redis_cluster),
     .def = "",
     .metavar = "HOST:PORT,...",
     .check = check_host_port_list,
     .help = "Redis Cluster seed nodes, comma list (sharded pub/sub); excludes --redis"},
    {.name = "redis-password",
     .type = OPT_STRING,
     FIELD(redis_password),
     .def = "",
     .metavar = "PASSWORD",
     .secret = true,
     .help = "password for Redis AUTH"},
    {.name = "redis-timeout",
     .type = OPT_DURATION,
     FIELD(redis_timeout_ms),
     .def = "3s",
     .min = 100,
     .max = MS_MINUTE,
     .help = "a Redis that does not answer for this long is down: waiting commands get 503"},
    {.name = "cluster-heartbeat",
     .type = OPT_DURATION,
     FIELD(cluster_heartbeat_ms),
     .def = "5s",
     .min = 100,
     .max = MS_MINUTE,
     .help = "how often a node writes its subscriber counts to Redis; a count lives 3 intervals"},
    {.name = "redis-tls",
     .type = OPT_BOOL,
     FIELD(redis_tls),
     .def = "false",
     .help = "connect to Redis over TLS (every node of a --redis-cluster)"},
    {.name = "redis-tls-ca",
     .type = OPT_STRING,
     FIELD(redis_tls_ca),
     .def = "",
     .metavar = "FILE",
     .help = "PEM CA certificates that sign the Redis certificate; empty: the system store"},
    {.name = "redis-tls-cert",
     .type = OPT_STRING,
     FIELD(redis_tls_cert),
     .def = "",
     .metavar = "FILE",
     .help = "PEM client certificate for Redis servers that check clients (mutual TLS)"},
    {.name = "redis-tls-key",
     .type = OPT_STRING,
     FIELD(redis_tls_key),
     .def = "",
     .metavar = "FILE",
     .help = "PEM private key of --redis-tls-cert; empty: the key is in that file"},
    {.name = "redis-tls-insecure",
     .type = OPT_BOOL,
     FIELD(redis_tls_insecure),
     .def = "false",
     .help = "do not verify the Redis certificate or its name (testing only)"},
    {.name = "redis-tls-server-name",
     .type = OPT_STRING,
     FIELD(redis_tls_server_name),
     .def = "",
     .metavar = "NAME",
     .check = check_server_name,
     .help = "name (or IP) the Redis certificate must carry, also sent as SNI; empty: the host"},

    {.section = "Other",
     .name = "log-level",
     .type = OPT_LOG_LEVEL,
     FIELD(log_level),
     .def = "info",
     .help = "error, warn, info or debug"},
    {.name = "node-name",
     .type = OPT_STRING,
     FIELD(node_name),
     .def = "",
     .metavar = "NAME",
     .check = check_node_name,
     .help = "this node's name in stats and logs; empty: hostname:port"},
};

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};

/* ---- value parsers ---------------------------------------------------- */

/* Reads a run of decimal digits (at least one) into *out, refusing anything above `cap`. */
static const char *parse_digits(const char *s, uint64_t cap, uint64_t *out)
{
    uint64_t v = 0;

    if (!isdigit((unsigned char)*s))
        return NULL;
    for (; isdigit((unsigned char)*s); s++) {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (cap - d) / 10)
            return NULL;
        v = v * 10 + d;
    }
    *out = v;
    return s;
}

int config_parse_duration(const char *s, uint32_t *out_ms)
{
    static const struct {
        const char *suffix;
        uint32_t ms;
    } units[] = {{"", MS_SECOND}, {"ms", 1}, {"s", MS_SECOND}, {"m", MS_MINUTE}, {"h", MS_HOUR}};
    uint64_t v;
    const char *rest = parse_digits(s, UINT32_MAX, &v);

    if (!rest)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(rest, units[i].suffix) == 0) {
            if (v * units[i].ms > UINT32_MAX)
                return -1;
            *out_ms = (uint32_t)(v * units[i].ms);
            return 0;
        }
    }
    return -1;
}

int config_parse_size(const char *s, uint32_t *out)
{
    static const struct {
        const char *suffix;
        uint32_t mult;
    } units[] = {{"", 1},
                 {"b", 1},
                 {"k", KIB},
                 {"kb", KIB},
                 {"kib", KIB},
                 {"m", MIB},
                 {"mb", MIB},
                 {"mib", MIB},
                 {"g", (uint32_t)GIB},
                 {"gb", (uint32_t)GIB},
                 {"gib", (uint32_t)GIB}};
    uint64_t v;
    const char *rest = parse_digits(s, UINT32_MAX, &v);

    if (!rest)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(rest, units[i].suffix) == 0) {
            if (v * units[i].mult > UINT32_MAX)
                return -1;
            *out = (uint32_t)(v * units[i].mult);
            return 0;
        }
    }
    return -1;
}

static int parse_port(const char *s, uint16_t *out)
{
    uint64_t v;
    const char *rest = parse_digits(s, 65535, &v);

    if (!rest || *rest || v == 0)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

int config_parse_addr(const char *s, struct config_addr *out)
{
    char host[sizeof(out->host)];
    const char *port;
    size_t hlen;
    unsigned char bin[16];

    memset(out, 0, sizeof(*out));
    if (!*s)
        return -1;
    if (s[strspn(s, "0123456789")] == '\0') /* "8080" */
        return parse_port(s, &out->port);
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return -1;
        hlen = (size_t)(rb - s - 1);
        if (hlen >= sizeof(host))
            return -1;
        memcpy(host, s + 1, hlen);
        host[hlen] = '\0';
        if (inet_pton(AF_INET6, host, bin) != 1)
            return -1;
        port = rb + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s))) /* IPv6 needs brackets */
            return -1;
        hlen = (size_t)(colon - s);
        if (hlen >= sizeof(host))
            return -1;
        memcpy(host, s, hlen);
        host[hlen] = '\0';
        if (strcmp(host, "*") == 0)
            host[0] = '\0';
        else if (strcasecmp(host, "localhost") == 0)
            strcpy(host, "localhost");
        else if (host[0] && inet_pton(AF_INET, host, bin) != 1)
            return -1;
        port = colon + 1;
    }
    if (parse_port(port, &out->port) < 0)
        return -1;
    memcpy(out->host, host, hlen + 1);
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Accepts an optional '-' then digits; bounds are checked by the caller. */
static int parse_int(const char *s, int64_t *out)
{
    uint64_t v;
    bool neg = *s == '-';
    const char *rest = parse_digits(s + neg, (uint64_t)INT64_MAX, &v);

    if (!rest || *rest)
        return -1;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* ---- formatting ------------------------------------------------------- */

static const char *fmt_duration(char *buf, size_t len, int64_t ms)
{
    if (ms == 0)
        snprintf(buf, len, "0s");
    else if (ms % MS_HOUR == 0)
        snprintf(buf, len, "%" PRId64 "h", ms / MS_HOUR);
    else if (ms % MS_MINUTE == 0)
        snprintf(buf, len, "%" PRId64 "m", ms / MS_MINUTE);
    else if (ms % MS_SECOND == 0)
        snprintf(buf, len, "%" PRId64 "s", ms / MS_SECOND);
    else
        snprintf(buf, len, "%" PRId64 "ms", ms);
    return buf;
}

static const char *fmt_size(char *buf, size_t len, int64_t n)
{
    if (n != 0 && n % GIB == 0)
        snprintf(buf, len, "%" PRId64 "GiB", n / GIB);
    else if (n != 0 && n % MIB == 0)
        snprintf(buf, len, "%" PRId64 "MiB", n / MIB);
    else if (n != 0 && n % KIB == 0)
        snprintf(buf, len, "%" PRId64 "KiB", n / KIB);
    else
        snprintf(buf, len, "%" PRId64, n);
    return buf;
}

/* Formats a bound of option `o` the way a user would write it. */
static const char *fmt_bound(char *buf, size_t len, const struct config_option *o, int64_t v)
{
    if (o->type == OPT_DURATION)
        return fmt_duration(buf, len, v);
    if (o->type == OPT_SIZE)
        return fmt_size(buf, len, v);
    snprintf(buf, len, "%" PRId64, v);
    return buf;
}

/* ---- string checks ---------------------------------------------------- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Rewrites a comma list in place without the blanks around its items, so the
 * server can split on ',' alone. Returns false when an item is empty.
 */
static bool tidy_list(char *s)
{
    char *w = s;
    const char *r = s;

    if (!*s)
        return true;
    for (;;) {
        while (is_space(*r))
            r++;
        const char *start = r;
        while (*r && *r != ',')
            r++;
        const char *end = r;
        while (end > start && is_space(end[-1]))
            end--;
        if (end == start)
            return false;
        memmove(w, start, (size_t)(end - start));
        w += end - start;
        if (!*r)
            break;
        *w++ = ',';
        r++;
    }
    *w = '\0';
    return true;
}

const char *config_check_origins(char *v)
{
    return check_origins(v);
}

static const char *check_origins(char *v)
{
    if (!tidy_list(v))
        return "expected a comma list of origins such as https://example.com, or *";
    for (const char *p = v; *p;) {
        size_t n = strcspn(p, ",");
        bool ok = (n == 1 && *p == '*');
        for (size_t i = 0; i + 3 <= n && !ok; i++)
            ok = memcmp(p + i, "://", 3) == 0;
        if (!ok || memchr(p, ' ', n))
            return "each origin must be * or scheme://host[:port], such as https://example.com";
        p += n + (p[n] == ',');
    }
    return NULL;
}

static const char *check_redis_url(char *v)
{
    const char *rest;

    if (!*v)
        return NULL;
    if (strncmp(v, "redis://", 8) == 0)
        rest = v + 8;
    else if (strncmp(v, "rediss://", 9) == 0)
        rest = v + 9;
    else
        return "expected redis://[:password@]host:port[/db] or rediss://...";
    const char *at = strrchr(rest, '@');
    if (at)
        rest = at + 1;
    if (!*rest || *rest == '/' || *rest == ':' || strchr(rest, ' '))
        return "the URL names no host: expected redis://[:password@]host:port[/db]";
    return NULL;
}

static const char *check_host_port_list(char *v)
{
    const char *why = "expected a comma list of host:port such as 10.0.0.1:7000,10.0.0.2:7000";

    if (!tidy_list(v))
        return why;
    for (const char *p = v; *p;) {
        size_t n = strcspn(p, ",");
        char item[300];
        if (n >= sizeof(item))
            return why;
        memcpy(item, p, n);
        item[n] = '\0';
        char *colon = strrchr(item, ':');
        uint16_t port;
        if (!colon || colon == item || strchr(item, ' ') || parse_port(colon + 1, &port) < 0)
            return why;
        p += n + (p[n] == ',');
    }
    return NULL;
}

static const char *check_node_name(char *v)
{
    for (const char *p = v; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("._:@-", *p))
            return "use letters, digits and . _ : @ - only";
    }
    return NULL;
}

static const char *check_server_name(char *v)
{
    for (const char *p = v; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr(".-_:*", *p))
            return "expected a host name or an IP address";
    }
    return NULL;
}

/* ---- applying one value ----------------------------------------------- */

static void *field(struct herald_config *cfg, size_t offset)
{
    return (char *)cfg + offset;
}

static const char *check_range(const struct config_option *o, int64_t v, char *why, size_t len)
{
    char lo[32], hi[32];

    if (v >= o->min && v <= o->max)
        return NULL;
    snprintf(why, len, "must be between %s and %s", fmt_bound(lo, sizeof(lo), o, o->min),
             fmt_bound(hi, sizeof(hi), o, o->max));
    return why;
}

/* Appends the comma list `value` to listen[]; `replace` empties it first. */
static const char *set_addr_list(struct herald_config *cfg, const struct config_option *o,
                                 const char *value, bool replace, char *why, size_t len)
{
    struct config_addr *list = field(cfg, o->offset);
    int *count = field(cfg, o->aux);
    int max = (int)(o->size / sizeof(*list));
    char item[128];

    if (replace)
        *count = 0;
    if (!value[strspn(value, " \t")])
        return NULL; /* empty: no listener of this kind */
    for (const char *p = value;;) {
        size_t n = strcspn(p, ",");
        const char *start = p, *end = p + n;
        while (start < end && is_space(*start))
            start++;
        while (end > start && is_space(end[-1]))
            end--;
        if ((size_t)(end - start) >= sizeof(item))
            return "expected ADDR:PORT such as 0.0.0.0:8080, [::]:8080 or :8080";
        memcpy(item, start, (size_t)(end - start));
        item[end - start] = '\0';
        struct config_addr a;
        if (config_parse_addr(item, &a) < 0)
            return "expected ADDR:PORT such as 0.0.0.0:8080, [::]:8080 or :8080 "
                   "(numeric address or localhost; port 1-65535)";
        for (int i = 0; i < *count; i++) {
            if (list[i].port == a.port && strcmp(list[i].host, a.host) == 0) {
                snprintf(why, len, "%s is listed twice", item);
                return why;
            }
        }
        if (*count >= max) {
            snprintf(why, len, "at most %d listeners", max);
            return why;
        }
        list[(*count)++] = a;
        if (!p[n])
            return NULL;
        p += n + 1;
    }
}

/*
 * Parses `value` for option `o` and stores it in *cfg. Returns NULL or the
 * reason it is invalid (static text or formatted into why[len]).
 */
static const char *set_option(struct herald_config *cfg, const struct config_option *o,
                              const char *value, bool replace, char *why, size_t len)
{
    void *p = field(cfg, o->offset);
    uint32_t u;
    int64_t v;
    const char *err;

    switch (o->type) {
    case OPT_BOOL:
        if (parse_bool(value, p) < 0)
            return "expected true or false (or 1/0, yes/no, on/off)";
        return NULL;
    case OPT_INT:
    case OPT_COUNT:
        if (parse_int(value, &v) < 0)
            return "expected a whole number";
        if ((err = check_range(o, v, why, len)))
            return err;
        if (o->type == OPT_INT)
            *(int *)p = (int)v;
        else
            *(uint32_t *)p = (uint32_t)v;
        return NULL;
    case OPT_DURATION:
        if (config_parse_duration(value, &u) < 0)
            return "expected a duration such as 30s, 500ms, 2m";
        if ((err = check_range(o, u, why, len)))
            return err;
        *(uint32_t *)p = u;
        return NULL;
    case OPT_SIZE:
        if (config_parse_size(value, &u) < 0)
            return "expected a size such as 8192, 64k, 1MiB";
        if ((err = check_range(o, u, why, len)))
            return err;
        *(uint32_t *)p = u;
        return NULL;
    case OPT_STRING: {
        char tmp[1024];
        size_t n = strlen(value);
        assert(o->size <= sizeof(tmp));
        if (n >= o->size) {
            snprintf(why, len, "too long (at most %zu bytes)", o->size - 1);
            return why;
        }
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f)
                return "contains a control character";
        }
        memcpy(tmp, value, n + 1);
        if (o->check && (err = o->check(tmp)))
            return err;
        memcpy(p, tmp, strlen(tmp) + 1);
        return NULL;
    }
    case OPT_ADDR: {
        bool *set = field(cfg, o->aux);
        if (!*value) {
            memset(p, 0, o->size);
            *set = false;
            return NULL;
        }
        if (config_parse_addr(value, p) < 0)
            return "expected ADDR:PORT such as 127.0.0.1:8081, [::1]:8081 or :8081 "
                   "(numeric address or localhost; port 1-65535), or empty for none";
        *set = true;
        return NULL;
    }
    case OPT_ADDR_LIST: return set_addr_list(cfg, o, value, replace, why, len);
    case OPT_LOG_LEVEL:
        for (int i = 0; i < 4; i++) {
            if (strcasecmp(value, log_level_names[i]) == 0) {
                *(int *)p = i;
                return NULL;
            }
        }
        if (strcasecmp(value, "warning") == 0) {
            *(int *)p = 1;
            return NULL;
        }
        return "expected one of error, warn, info, debug";
    }
    assert(!"unknown option type");
    return "internal error";
}

static const struct config_option *find_option(const char *name, size_t len)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (strlen(options[i].name) == len && memcmp(options[i].name, name, len) == 0)
            return &options[i];
    }
    return NULL;
}

/* HERALD_ + upper-cased name with '-' -> '_'. */
static void env_name(const struct config_option *o, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "HERALD_%s", o->name);
    for (size_t i = 7; i < n && i < len; i++)
        buf[i] = buf[i] == '-' ? '_' : (char)toupper((unsigned char)buf[i]);
}

/* Catches a row whose type does not match its field, when someone adds an option. */
static bool row_fits_field(const struct config_option *o)
{
    switch (o->type) {
    case OPT_BOOL: return o->size == sizeof(bool);
    case OPT_INT:
    case OPT_LOG_LEVEL: return o->size == sizeof(int);
    case OPT_COUNT:
    case OPT_DURATION:
    case OPT_SIZE: return o->size == sizeof(uint32_t);
    case OPT_STRING: return o->size > 1;
    case OPT_ADDR: return o->size == sizeof(struct config_addr);
    case OPT_ADDR_LIST: return o->size % sizeof(struct config_addr) == 0;
    }
    return false;
}

void config_defaults(struct herald_config *cfg)
{
    char why[128];

    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < N_OPTIONS; i++) {
        bool fits = row_fits_field(&options[i]);
        (void)fits;
        assert(fits);
        if (options[i].def) {
            const char *err = set_option(cfg, &options[i], options[i].def, true, why, sizeof(why));
            (void)err;
            assert(!err && "an option's default does not pass its own validation");
        }
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->workers = cpus < 1 ? 1 : cpus > 64 ? 64 : (int)cpus;
}

/* ---- loading ---------------------------------------------------------- */

enum source { SRC_DEFAULT, SRC_FILE, SRC_ENV, SRC_ARGV };

struct loader {
    struct herald_config *cfg;
    enum source source; /* of the values being applied now */
    unsigned line;      /* of the config file, for SRC_FILE */
    char origin[sizeof(((struct herald_config *)0)->config_file) + 16]; /* of source and line */
    enum source set_by[N_OPTIONS]; /* where each option's value came from ... */
    unsigned set_line[N_OPTIONS];  /* ... and the file line, for cross-field messages */
};

/* Applies one value from the current source. 0, or -1 after printing why not. */
static int apply(struct loader *ld, const struct config_option *o, const char *value)
{
    size_t idx = (size_t)(o - options);
    /* A list option set by a new source starts over; within one source it accumulates. */
    bool replace = ld->set_by[idx] != ld->source;
    char why[160];
    const char *err = set_option(ld->cfg, o, value, replace, why, sizeof(why));

    if (err) {
        if (o->secret)
            fprintf(stderr, "herald: invalid value (not shown) for --%s (from %s): %s\n", o->name,
                    ld->origin, err);
        else
            fprintf(stderr, "herald: invalid value \"%s\" for --%s (from %s): %s\n", value, o->name,
                    ld->origin, err);
        return -1;
    }
    ld->set_by[idx] = ld->source;
    ld->set_line[idx] = ld->line;
    return 0;
}

/*
 * Parses one config-file line in place: `name = value`, `name value`, a bare
 * `name` for a bool, "double quotes" around values with '#' or blanks at the
 * ends, '#' comments. 0, or -1 after printing why not.
 */
static int apply_file_line(struct loader *ld, char *line)
{
    char *p = line, *key, *value;
    size_t klen;
    bool has_eq;

    while (is_space(*p))
        p++;
    if (!*p || *p == '\n' || *p == '\r' || *p == '#')
        return 0;
    key = p;
    while (isalnum((unsigned char)*p) || *p == '-' || *p == '_')
        p++;
    klen = (size_t)(p - key);
    if (klen == 0 || !(is_space(*p) || *p == '=' || *p == '#' || !*p || *p == '\n' || *p == '\r'))
        goto syntax;
    for (size_t i = 0; i < klen; i++)
        key[i] = key[i] == '_' ? '-' : (char)tolower((unsigned char)key[i]);
    while (is_space(*p))
        p++;
    has_eq = *p == '=';
    if (has_eq) {
        *p++ = '\0';
        while (is_space(*p))
            p++;
    }
    key[klen] = '\0';

    if (*p == '"') {
        char *w = value = ++p;
        for (; *p != '"'; p++) {
            if (!*p || *p == '\n' || *p == '\r')
                goto syntax;
            if (*p == '\\' && (p[1] == '"' || p[1] == '\\'))
                p++;
            *w++ = *p;
        }
        *w = '\0';
        for (p++; is_space(*p); p++)
            ;
        if (*p && *p != '#' && *p != '\n' && *p != '\r')
            goto syntax;
    } else {
        value = p;
        /* A '#' starts a comment only after a blank, so keys and URLs may hold one. */
        while (*p && *p != '\n' && *p != '\r' && !(*p == '#' && (p == value || is_space(p[-1]))))
            p++;
        while (p > value && is_space(p[-1]))
            p--;
        *p = '\0';
    }

    const struct config_option *o = find_option(key, klen);
    if (!o) {
        if (strcmp(key, "config") == 0)
            fprintf(stderr, "herald: %s: \"config\" cannot be set in a config file\n", ld->origin);
        else
            fprintf(stderr, "herald: %s: unknown option \"%s\" (see herald --help)\n", ld->origin,
                    key);
        return -1;
    }
    if (o->type == OPT_BOOL && !has_eq && !*value)
        value = "true";
    return apply(ld, o, value);

syntax:
    fprintf(stderr, "herald: %s: expected \"name = value\"\n", ld->origin);
    return -1;
}

static int load_file(struct loader *ld, const char *path)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    int rc = 0;

    if (!f) {
        fprintf(stderr, "herald: cannot read config file \"%s\": %s\n", path, strerror(errno));
        return -1;
    }
    ld->source = SRC_FILE;
    while (getline(&line, &cap, f) >= 0) {
        ld->line = ++lineno;
        snprintf(ld->origin, sizeof(ld->origin), "%s:%u", path, lineno);
        if ((rc = apply_file_line(ld, line)) < 0)
            break;
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "herald: cannot read config file \"%s\": %s\n", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}

static int load_env(struct loader *ld)
{
    ld->source = SRC_ENV;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        env_name(&options[i], ld->origin, sizeof(ld->origin));
        const char *v = getenv(ld->origin);
        if (v && apply(ld, &options[i], v) < 0)
            return -1;
    }
    return 0;
}

/* One command-line argument, resolved against the table. */
struct arg {
    enum { ARG_OPTION, ARG_CONFIG, ARG_HELP, ARG_VERSION } kind;
    const struct config_option *opt; /* for ARG_OPTION */
    const char *value;               /* for ARG_OPTION and ARG_CONFIG; borrowed from argv */
};

/*
 * Reads the argument at argv[*i] (and its value, if separate), advancing *i.
 * 0, or -1 after printing why not. Values are not checked here.
 */
static int next_arg(int argc, char **argv, int *i, struct arg *a)
{
    const char *s = argv[(*i)++];

    if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
        a->kind = ARG_HELP;
        return 0;
    }
    if (strcmp(s, "--version") == 0) {
        a->kind = ARG_VERSION;
        return 0;
    }
    if (s[0] != '-') {
        fprintf(stderr, "herald: unexpected argument \"%s\" (see herald --help)\n", s);
        return -1;
    }
    if (s[1] != '-' || !s[2])
        goto unknown;

    const char *name = s + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    bool negated = false;

    a->kind = ARG_OPTION;
    a->opt = find_option(name, len);
    if (!a->opt && len > 3 && strncmp(name, "no-", 3) == 0) {
        a->opt = find_option(name + 3, len - 3);
        if (!a->opt || a->opt->type != OPT_BOOL)
            goto unknown;
        negated = true;
    }
    if (!a->opt) {
        if (len == 6 && strncmp(name, "config", 6) == 0)
            a->kind = ARG_CONFIG;
        else if ((len == 4 && strncmp(name, "help", 4) == 0) ||
                 (len == 7 && strncmp(name, "version", 7) == 0)) {
            fprintf(stderr, "herald: option --%.*s takes no value\n", (int)len, name);
            return -1;
        } else
            goto unknown;
    }

    if (negated) {
        if (eq) {
            fprintf(stderr, "herald: option --%.*s takes no value\n", (int)len, name);
            return -1;
        }
        a->value = "false";
    } else if (eq) {
        a->value = eq + 1;
    } else if (a->kind == ARG_OPTION && a->opt->type == OPT_BOOL) {
        /* herald takes no positional arguments, so a following non-flag is this flag's value. */
        a->value = (*i < argc && argv[*i][0] != '-') ? argv[(*i)++] : "true";
    } else if (*i < argc && strncmp(argv[*i], "--", 2) != 0) {
        a->value = argv[(*i)++];
    } else {
        fprintf(stderr, "herald: option --%.*s needs a value (see herald --help)\n", (int)len,
                name);
        return -1;
    }
    return 0;

unknown:
    fprintf(stderr, "herald: unknown option %.*s (see herald --help)\n", (int)strcspn(s, "="), s);
    return -1;
}

/* Where option `o` got its value, for messages: "HERALD_X", "FILE:LINE", ... */
static const char *origin_of(const struct loader *ld, const struct config_option *o, char *buf,
                             size_t len)
{
    size_t idx = (size_t)(o - options);

    switch (ld->set_by[idx]) {
    case SRC_DEFAULT: return "the default";
    case SRC_FILE: snprintf(buf, len, "%s:%u", ld->cfg->config_file, ld->set_line[idx]); return buf;
    case SRC_ENV: env_name(o, buf, len); return buf;
    case SRC_ARGV: return "the command line";
    }
    return "?";
}

static int check_cross_fields(const struct loader *ld)
{
    const struct herald_config *cfg = ld->cfg;
    char a[32], b[32], from_a[sizeof(ld->origin)], from_b[sizeof(ld->origin)];

    if (cfg->lifetime_max_ms < cfg->lifetime_min_ms) {
        fprintf(stderr,
                "herald: --lifetime-max %s (from %s) must not be less than --lifetime-min %s "
                "(from %s)\n",
                fmt_duration(a, sizeof(a), cfg->lifetime_max_ms),
                origin_of(ld, find_option("lifetime-max", 12), from_a, sizeof(from_a)),
                fmt_duration(b, sizeof(b), cfg->lifetime_min_ms),
                origin_of(ld, find_option("lifetime-min", 12), from_b, sizeof(from_b)));
        return -1;
    }
    if (cfg->redis_url[0] && cfg->redis_cluster[0]) {
        fprintf(stderr,
                "herald: --redis (from %s) and --redis-cluster (from %s) cannot both be set\n",
                origin_of(ld, find_option("redis", 5), from_a, sizeof(from_a)),
                origin_of(ld, find_option("redis-cluster", 13), from_b, sizeof(from_b)));
        return -1;
    }
    if (!cfg->num_listen && !cfg->num_listen_tls) {
        fprintf(stderr,
                "herald: no listener: --listen (from %s) is empty and no --listen-tls is "
                "set\n",
                origin_of(ld, find_option("listen", 6), from_a, sizeof(from_a)));
        return -1;
    }
    if ((cfg->num_listen_tls || cfg->has_api_listen_tls) && !cfg->tls_cert[0]) {
        fprintf(stderr, "herald: --listen-tls and --api-listen-tls need --tls-cert FILE (and "
                        "--tls-key FILE unless the key is in that file)\n");
        return -1;
    }
    if (cfg->tls_key[0] && !cfg->tls_cert[0]) {
        fprintf(stderr, "herald: --tls-key (from %s) needs --tls-cert\n",
                origin_of(ld, find_option("tls-key", 7), from_a, sizeof(from_a)));
        return -1;
    }
    for (int i = 0; i < cfg->num_listen_tls; i++) {
        const struct config_addr *t = &cfg->listen_tls[i];
        for (int j = 0; j < cfg->num_listen; j++) {
            if (cfg->listen[j].port == t->port && strcmp(cfg->listen[j].host, t->host) == 0) {
                fprintf(stderr,
                        "herald: %s:%u is in both --listen and --listen-tls: one port "
                        "serves either plain HTTP or TLS\n",
                        t->host[0] ? t->host : "*", t->port);
                return -1;
            }
        }
    }
    if (cfg->redis_tls_key[0] && !cfg->redis_tls_cert[0]) {
        fprintf(stderr, "herald: --redis-tls-key (from %s) needs --redis-tls-cert\n",
                origin_of(ld, find_option("redis-tls-key", 13), from_a, sizeof(from_a)));
        return -1;
    }
    return 0;
}

int config_load(struct herald_config *cfg, int argc, char **argv)
{
    struct loader ld = {.cfg = cfg};
    const char *config_path = NULL;
    struct arg a;

    config_defaults(cfg);

    /* First pass: --help, --version, --config and malformed flags, before any value is used. */
    for (int i = 1; i < argc;) {
        if (next_arg(argc, argv, &i, &a) < 0)
            return 2;
        if (a.kind == ARG_HELP) {
            config_print_help(stdout);
            return 1;
        }
        if (a.kind == ARG_VERSION) {
            printf("herald %s\n", HERALD_VERSION);
            return 1;
        }
        if (a.kind == ARG_CONFIG)
            config_path = a.value;
    }
    if (!config_path)
        config_path = getenv("HERALD_CONFIG");
    if (config_path && *config_path) {
        if (strlen(config_path) >= sizeof(cfg->config_file)) {
            fprintf(stderr, "herald: config file path too long: %s\n", config_path);
            return 2;
        }
        strcpy(cfg->config_file, config_path);
        if (load_file(&ld, cfg->config_file) < 0)
            return 2;
    }
    if (load_env(&ld) < 0)
        return 2;

    ld.source = SRC_ARGV;
    snprintf(ld.origin, sizeof(ld.origin), "the command line");
    for (int i = 1; i < argc;) {
        int rc = next_arg(argc, argv, &i, &a);
        assert(rc == 0); /* the first pass would have stopped */
        (void)rc;
        if (a.kind == ARG_OPTION && apply(&ld, a.opt, a.value) < 0)
            return 2;
    }

    if (check_cross_fields(&ld) < 0)
        return 2;
    if (strncmp(cfg->redis_url, "rediss://", 9) == 0)
        cfg->redis_tls = true;
    return 0;
}

/* ---- --help ----------------------------------------------------------- */

static void (*help_footer)(void *out);

void config_set_help_footer(void (*print)(void *out))
{
    help_footer = print;
}

static void print_line(FILE *f, const char *flag, const char *help, const char *env,
                       const char *def)
{
    fprintf(f, "  %-30s %s", flag, help);
    if (env)
        fprintf(f, " (env %s, default %s)", env, def);
    fputc('\n', f);
}

void config_print_help(void *out)
{
    FILE *f = out;
    char flag[64], env[64], def[64];

    fprintf(f,
            "Usage: herald [OPTION]...\n"
            "herald %s, a real-time push server: WebSocket, SSE, long-polling and HTTP "
            "streaming.\n"
            "\n"
            "Every option is also an environment variable (HERALD_ + the name in upper case, "
            "'-' as '_')\n"
            "and a config-file key (\"name = value\"). Flags win over the environment, which "
            "wins over\n"
            "the config file, which wins over the defaults. Durations take ms, s, m or h (a "
            "bare number\n"
            "is seconds); sizes take k/KiB, m/MiB or g/GiB (1024-based).\n",
            HERALD_VERSION);
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct config_option *o = &options[i];
        const char *meta = "";
        switch (o->type) {
        case OPT_BOOL: break;
        case OPT_INT:
        case OPT_COUNT: meta = "N"; break;
        case OPT_DURATION: meta = "DURATION"; break;
        case OPT_SIZE: meta = "SIZE"; break;
        case OPT_STRING: meta = o->metavar; break;
        case OPT_ADDR:
        case OPT_ADDR_LIST: meta = "ADDR:PORT"; break;
        case OPT_LOG_LEVEL: meta = "LEVEL"; break;
        }
        if (o->section)
            fprintf(f, "\n%s:\n", o->section);
        if (o->type == OPT_BOOL)
            snprintf(flag, sizeof(flag), "--[no-]%s", o->name);
        else
            snprintf(flag, sizeof(flag), "--%s %s", o->name, meta);
        env_name(o, env, sizeof(env));
        if (!o->def)
            snprintf(def, sizeof(def), "%s", o->def_text);
        else if (!o->def[0])
            snprintf(def, sizeof(def), "\"\"");
        else
            snprintf(def, sizeof(def), "%s", o->def);
        print_line(f, flag, o->help, env, def);
    }
    print_line(f, "--config FILE", "read options from FILE", "HERALD_CONFIG", "none");
    print_line(f, "-h, --help", "print this help and exit", NULL, NULL);
    print_line(f, "--version", "print the version and exit", NULL, NULL);
    if (help_footer)
        help_footer(out);
}
