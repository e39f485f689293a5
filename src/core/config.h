/*
 * config: herald's options, from three sources with a fixed precedence:
 * command-line flags > HERALD_* environment variables > config file > defaults.
 *
 * Every option is one row of a table (name, type, default, help, bounds) so
 * that --help, the env var name (HERALD_ + upper-cased name with '-' -> '_'),
 * the config-file key (the flag name) and validation all come from one place.
 * An invalid value stops start-up: config_load() prints a message naming the
 * option and the source, and returns 2 (the process exit code).
 */
#ifndef HERALD_CONFIG_H
#define HERALD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_LISTEN 8

struct config_addr {
    char host[64]; /* numeric IPv4/IPv6 (no brackets) or "localhost"; "" means any ("*" is
                      stored as "") */
    uint16_t port; /* 1..65535 */
};

struct herald_config {
    /* network */
    struct config_addr listen[CONFIG_MAX_LISTEN]; /* --listen, repeatable; default 0.0.0.0:8080 */
    int num_listen; /* entries are distinct; 0 only with TLS listeners (--listen "") */
    struct config_addr api_listen; /* --api-listen; port 0 = publish API on the main listeners */
    bool has_api_listen;           /* true iff api_listen was set (then its port is non-zero) */
    struct config_addr listen_tls[CONFIG_MAX_LISTEN]; /* --listen-tls, repeatable; default none */
    int num_listen_tls;                               /* num_listen + num_listen_tls >= 1 */
    struct config_addr api_listen_tls; /* --api-listen-tls: the API's listener over TLS */
    bool has_api_listen_tls;
    char tls_cert[512];  /* --tls-cert, PEM chain; required with a TLS listener */
    char tls_key[512];   /* --tls-key, PEM key; "" = the key is in tls_cert */
    int workers;         /* --workers, default: number of online CPUs; 1..64 */
    int max_connections; /* --max-connections, default 0 = as many as RLIMIT_NOFILE allows */

    /* auth */
    char publish_key[256];       /* --publish-key; "" = loopback-only publishing */
    char cors_origins[1024];     /* --cors-origins, comma list, default "*"; stored without blanks
                                    around commas; each item "*" or "scheme://host[:port]";
                                    "" = no cross-origin subscribers */
    char api_cors_origins[1024]; /* --api-cors-origins, comma list like cors_origins, default "":
                                    browser pages of other origins may not use the API */
    bool ws_publish;        /* --ws-publish, allow {"op":"publish"} over WebSocket; default false */
    char token_secret[256]; /* --token-secret: subscribers need HS256 tokens; "" = none */
    char token_public_key[512]; /* --token-public-key FILE (PEM): RS256/ES256 tokens; "" = none */
    char token_alg[8];          /* --token-alg HS256|RS256|ES256; "" = from the key */
    uint32_t token_skew_ms;     /* --token-skew, clock skew allowed on exp/nbf/iat, default 30s */

    /* apps (tenants) */
    char admin_key[256];  /* --admin-key: the admin API and the Tsuru service API; "" = off */
    char state_dir[512];  /* --state-dir: where apps persist on a single node; "" = memory */
    char plans_file[512]; /* --plans: JSON plans; "" = the built-in ones */
    char public_url[256]; /* --public-url: subscribers' base URL given to apps ("": from Host) */
    char api_url[256];    /* --api-url: the publish API's base URL given to apps ("": from Host) */

    /* connection lifetime, in milliseconds */
    uint32_t heartbeat_ms;        /* --heartbeat, default 30s */
    uint32_t close_grace_ms;      /* --close-grace, default 4s */
    uint32_t lifetime_min_ms;     /* --lifetime-min, default 120s; 0 disables lifetime */
    uint32_t lifetime_max_ms;     /* --lifetime-max, default 180s; >= lifetime_min */
    uint32_t shutdown_timeout_ms; /* --shutdown-timeout, default 10s */
    uint32_t header_timeout_ms;   /* --header-timeout, default 10s */
    uint32_t poll_timeout_ms;     /* --poll-timeout, max long-poll hold, default 30s */

    /* limits, in bytes */
    uint32_t max_header_bytes;      /* --max-header-bytes, default 8 KiB */
    uint32_t max_uri_bytes;         /* --max-uri-bytes, default 4 KiB */
    uint32_t max_body_bytes;        /* --max-body-bytes, default 1 MiB */
    uint32_t max_ws_message;        /* --max-ws-message, default 64 KiB */
    uint32_t max_input_memory;      /* --max-input-memory, input buffered by all connections,
                                       default 128 MiB */
    uint32_t max_outbound;          /* --max-outbound, slow-consumer cap, default 1 MiB */
    uint32_t max_channels_per_conn; /* --max-channels-per-conn, default 64 */
    uint32_t max_channels_per_ip;   /* --max-channels-per-ip, default 1000; 0 = no limit */
    uint32_t max_patterns_per_conn; /* --max-patterns-per-conn, default 8; 0: no patterns */
    uint32_t max_patterns;          /* --max-patterns, distinct ones, default 10,000 */
    uint32_t max_presence_users;    /* --max-presence-users per channel (per node), 10,000 */
    uint32_t max_pattern_replay;    /* --max-pattern-replay, messages, default 1,000 */
    bool limit_loopback;            /* --limit-loopback: per-address limits apply to loopback */

    /* backend hooks (src/hooks): the default app's, and the process's bounds */
    char webhook_url[512];        /* --webhook-url; "" = no hooks for the default app */
    char webhook_secret[256];     /* --webhook-secret; "" = token_secret signs */
    char webhook_events[128];     /* --webhook-events, comma list, default all five */
    uint32_t webhook_timeout_ms;  /* --webhook-timeout, default 2s */
    uint32_t webhook_retries;     /* --webhook-retries, default 2 */
    bool webhook_fail_open;       /* --webhook-fail-open, default false */
    uint32_t client_publish_rate; /* --client-publish-rate, per WS connection per second (token
                                     publishes), default 20; 0 = none */
    uint32_t rpc_inflight;        /* --rpc-inflight, per WS connection, default 16 */
    uint32_t hook_connections;    /* --hook-connections, per backend, default 16 */
    uint32_t hook_queue;          /* --hook-queue, per process, default 10000 */
    uint32_t hook_queue_app;      /* --hook-queue-app, per app, default 1000 */
    uint32_t hook_queue_ip;       /* --hook-queue-ip, per client address, default 100; 0 = none */

    /* channels and history */
    bool auto_create;        /* --auto-create, default true */
    uint32_t channel_ttl_ms; /* --channel-ttl, inactive channel expiry, default 15 min */
    uint32_t history_size;   /* --history-size, messages per channel, default 100 */
    uint32_t history_ttl_ms; /* --history-ttl, default 1 h */
    uint32_t history_bytes;  /* --history-bytes, per channel, default 1 MiB */
    uint32_t max_channels;   /* --max-channels, default 1,000,000 */
    bool ws_deflate;         /* --ws-deflate, offer permessage-deflate, default true */

    /* cluster */
    char redis_url[512];             /* --redis redis://[:password@]host:port[/db]; "" = in-memory.
                                        rediss:// is accepted and sets redis_tls */
    char redis_cluster[1024];        /* --redis-cluster host:port,host:port (no blanks); never set
                                        together with redis_url */
    char redis_password[256];        /* --redis-password */
    uint32_t redis_timeout_ms;       /* --redis-timeout, default 3s: connect, and a Redis that
                                        stops answering (publishes get 503 after it) */
    uint32_t cluster_heartbeat_ms;   /* --cluster-heartbeat, default 5s: a node writes its
                                        subscriber counts this often; they live 3 intervals */
    bool redis_tls;                  /* --redis-tls (every node with --redis-cluster) */
    char redis_tls_ca[512];          /* --redis-tls-ca, PEM CA bundle; "" = the system store */
    char redis_tls_cert[512];        /* --redis-tls-cert, PEM client certificate; "" = none */
    char redis_tls_key[512];         /* --redis-tls-key; "" = the key is in redis_tls_cert. Set
                                        only together with redis_tls_cert */
    bool redis_tls_insecure;         /* --redis-tls-insecure: no certificate or name check */
    char redis_tls_server_name[256]; /* --redis-tls-server-name; "" = each node's host */

    /* misc */
    char config_file[512]; /* --config or HERALD_CONFIG; "" = none was read */
    int log_level;         /* --log-level: error|warn|info|debug -> 0..3, default info */
    char node_name[64];    /* --node-name; "" by default: the server fills in hostname:port */
};

/*
 * Fills *cfg from defaults, the config file (--config or HERALD_CONFIG), the
 * environment and argv, in increasing precedence. Returns 0 on success, 1 when
 * --help or --version was printed (the caller exits 0), or 2 after printing an
 * error that names the option (the caller exits 2). Help and version go to
 * stdout, errors to stderr. argv is only read, and no pointer into argv, the
 * environment or the file is kept. On 1 or 2, *cfg holds no useful values.
 */
int config_load(struct herald_config *cfg, int argc, char **argv);

/* Fills *cfg with the defaults only (used by tests). */
void config_defaults(struct herald_config *cfg);

/* Prints the --help text (every option, its env var and default) to `out` (a FILE *),
 * then what the footer set below prints. */
void config_print_help(void *out);
/* What --help prints after the options (main: the CLI's commands); NULL: nothing. */
void config_set_help_footer(void (*print)(void *out));

/*
 * Parses a duration like "30s", "1500ms", "2m", "1h" or a bare number of
 * seconds into milliseconds. Returns 0 or -1 when malformed or > UINT32_MAX ms.
 */
int config_parse_duration(const char *s, uint32_t *out_ms);
/* Parses a size like "8192", "8k", "8KiB", "1m", "1MiB" into bytes. 0 or -1. */
int config_parse_size(const char *s, uint32_t *out);
/*
 * Parses "host:port", "[v6]:port" or ":port" / "port" (host "" = any; "*" is
 * read as ""). The host must be numeric or "localhost", the port 1..65535. 0 or -1.
 */
int config_parse_addr(const char *s, struct config_addr *out);

/* Tidies a comma list of origins in place (as --cors-origins); NULL when it is valid,
 * else what is wrong with it. */
const char *config_check_origins(char *list);

#endif
