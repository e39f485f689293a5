/*
 * Unit tests for src/core/config.c: defaults, the value parsers, the three
 * sources and their precedence, --listen lists, bool spellings, every error
 * path (exit code 2 with a message naming the option and its source), and
 * --help listing every option.
 *
 * config_load() writes to stdout and stderr; load() below captures both into
 * `out` by pointing fds 1 and 2 at a temporary file for the call.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"

extern char **environ;

static char out[32768];   /* stdout + stderr of the last load() */
static char cfg_path[64]; /* the temporary config file, if any */
static struct herald_config cfg;

/* Every option the server is written against: each must be in --help. */
static const char *const option_names[] = {
    "listen",         "api-listen",     "workers",          "max-connections",
    "publish-key",    "cors-origins",   "ws-publish",       "heartbeat",
    "close-grace",    "lifetime-min",   "lifetime-max",     "shutdown-timeout",
    "header-timeout", "poll-timeout",   "max-header-bytes", "max-uri-bytes",
    "max-body-bytes", "max-ws-message", "max-outbound",     "max-channels-per-conn",
    "auto-create",    "channel-ttl",    "history-size",     "history-ttl",
    "history-bytes",  "max-channels",   "ws-deflate",       "redis",
    "redis-cluster",  "redis-password", "redis-tls",        "log-level",
    "node-name",
};

static void clear_herald_env(void)
{
    char name[256];

    for (size_t i = 0; environ[i];) {
        if (strncmp(environ[i], "HERALD_", 7) == 0) {
            size_t n = strcspn(environ[i], "=");
            assert_true(n < sizeof(name));
            memcpy(name, environ[i], n);
            name[n] = '\0';
            unsetenv(name); /* environ shifts: look at index i again */
        } else {
            i++;
        }
    }
}

static int setup(void **state)
{
    clear_herald_env();
    cfg_path[0] = '\0';
    out[0] = '\0';
    return 0;
}

static int teardown(void **state)
{
    clear_herald_env();
    if (cfg_path[0])
        unlink(cfg_path);
    return 0;
}

/* Writes `text` to a fresh temporary file whose path is cfg_path. */
static const char *write_config(const char *text)
{
    if (cfg_path[0])
        unlink(cfg_path);
    strcpy(cfg_path, "/tmp/herald-config-test-XXXXXX");
    int fd = mkstemp(cfg_path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return cfg_path;
}

/* config_load(&cfg, "herald", args...) with the args NULL-terminated; output lands in `out`. */
static int load(const char *first, ...)
{
    char *argv[64] = {"herald"};
    int argc = 1;
    va_list ap;

    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *)) {
        assert_true(argc < 63);
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;

    fflush(stdout);
    fflush(stderr);
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    int saved_out = dup(1), saved_err = dup(2);
    dup2(fileno(tmp), 1);
    dup2(fileno(tmp), 2);
    int rc = config_load(&cfg, argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    rewind(tmp);
    size_t n = fread(out, 1, sizeof(out) - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return rc;
}

#define assert_output_has(s)                                                                       \
    do {                                                                                           \
        if (!strstr(out, (s)))                                                                     \
            fail_msg("output lacks \"%s\"; it was:\n%s", (s), out);                                \
    } while (0)

/* ---- defaults ----------------------------------------------------------- */

static void test_defaults(void **state)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    config_defaults(&cfg);
    assert_int_equal(cfg.num_listen, 1);
    assert_string_equal(cfg.listen[0].host, "0.0.0.0");
    assert_int_equal(cfg.listen[0].port, 8080);
    assert_false(cfg.has_api_listen);
    assert_int_equal(cfg.api_listen.port, 0);
    assert_int_equal(cfg.workers, cpus < 1 ? 1 : cpus > 64 ? 64 : cpus);
    assert_int_equal(cfg.max_connections, 0);
    assert_string_equal(cfg.publish_key, "");
    assert_string_equal(cfg.cors_origins, "*");
    assert_false(cfg.ws_publish);
    assert_int_equal(cfg.heartbeat_ms, 30000);
    assert_int_equal(cfg.close_grace_ms, 4000);
    assert_int_equal(cfg.lifetime_min_ms, 120000);
    assert_int_equal(cfg.lifetime_max_ms, 180000);
    assert_int_equal(cfg.shutdown_timeout_ms, 10000);
    assert_int_equal(cfg.header_timeout_ms, 10000);
    assert_int_equal(cfg.poll_timeout_ms, 30000);
    assert_int_equal(cfg.max_header_bytes, 8192);
    assert_int_equal(cfg.max_uri_bytes, 4096);
    assert_int_equal(cfg.max_body_bytes, 1048576);
    assert_int_equal(cfg.max_ws_message, 65536);
    assert_int_equal(cfg.max_outbound, 1048576);
    assert_int_equal(cfg.max_channels_per_conn, 64);
    assert_true(cfg.auto_create);
    assert_int_equal(cfg.channel_ttl_ms, 15 * 60 * 1000);
    assert_int_equal(cfg.history_size, 100);
    assert_int_equal(cfg.history_ttl_ms, 3600 * 1000);
    assert_int_equal(cfg.history_bytes, 1048576);
    assert_int_equal(cfg.max_channels, 1000000);
    assert_true(cfg.ws_deflate);
    assert_string_equal(cfg.redis_url, "");
    assert_string_equal(cfg.redis_cluster, "");
    assert_string_equal(cfg.redis_password, "");
    assert_false(cfg.redis_tls);
    assert_string_equal(cfg.config_file, "");
    assert_int_equal(cfg.log_level, 2);
    assert_string_equal(cfg.node_name, "");
}

static void test_load_without_arguments_gives_defaults(void **state)
{
    struct herald_config def;

    config_defaults(&def);
    assert_int_equal(load(NULL), 0);
    assert_string_equal(out, "");
    assert_memory_equal(&cfg, &def, sizeof(def));
}

/* ---- parsers ------------------------------------------------------------ */

static void test_parse_duration(void **state)
{
    static const struct {
        const char *in;
        uint32_t ms;
    } good[] = {
        {"30s", 30000},
        {"500ms", 500},
        {"2m", 120000},
        {"1h", 3600000},
        {"30", 30000},
        {"0", 0},
        {"0ms", 0},
        {"1H", 3600000},
        {"10MS", 10},
        {"007s", 7000},
        {"4294967295ms", UINT32_MAX},
        {"4294967s", 4294967000u},
        {"1193h", 4294800000u},
    };
    static const char *const bad[] = {
        "",
        "s",
        "abc",
        "10x",
        "-1s",
        "+1s",
        "1.5s",
        " 1s",
        "1s ",
        "1 s",
        "1d",
        "10sec",
        "4294967296ms",
        "4294968s",
        "71583m",
        "1194h",
        "99999999999999999999999",
    };
    uint32_t ms;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ms = 12345;
        if (config_parse_duration(good[i].in, &ms) != 0)
            fail_msg("\"%s\" should parse", good[i].in);
        assert_int_equal(ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (config_parse_duration(bad[i], &ms) != -1)
            fail_msg("\"%s\" should be refused", bad[i]);
    }
}

static void test_parse_size(void **state)
{
    static const struct {
        const char *in;
        uint32_t n;
    } good[] = {
        {"8192", 8192},
        {"0", 0},
        {"8k", 8192},
        {"8K", 8192},
        {"8KiB", 8192},
        {"8kb", 8192},
        {"1m", 1048576},
        {"1M", 1048576},
        {"1MiB", 1048576},
        {"3g", 3221225472u},
        {"1GiB", 1073741824},
        {"100b", 100},
        {"4294967295", UINT32_MAX},
    };
    static const char *const bad[] = {
        "", "k", "1.5k", "-1", "8 k", "8KiBs", "8x", "4294967296", "4194304k", "4096m", "4g",
    };
    uint32_t n;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        n = 12345;
        if (config_parse_size(good[i].in, &n) != 0)
            fail_msg("\"%s\" should parse", good[i].in);
        assert_int_equal(n, good[i].n);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (config_parse_size(bad[i], &n) != -1)
            fail_msg("\"%s\" should be refused", bad[i]);
    }
}

static void test_parse_addr(void **state)
{
    static const struct {
        const char *in, *host;
        uint16_t port;
    } good[] = {
        {"0.0.0.0:8080", "0.0.0.0", 8080},
        {"127.0.0.1:1", "127.0.0.1", 1},
        {":9000", "", 9000},
        {"9000", "", 9000},
        {"*:80", "", 80},
        {"localhost:65535", "localhost", 65535},
        {"LocalHost:81", "localhost", 81},
        {"[::1]:8080", "::1", 8080},
        {"[::]:8080", "::", 8080},
        {"[2001:db8::42]:443", "2001:db8::42", 443},
    };
    static const char *const bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        ":0",
        "0",
        "70000",
        "1.2.3:80",
        "256.0.0.1:80",
        "::1:8080",
        "[::1]",
        "[::1]8080",
        "[1.2.3.4]:80",
        "[::1:80",
        "example.com:80",
        "127.0.0.1:80x",
        "127.0.0.1:-1",
        "host name:80",
    };
    struct config_addr a;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (config_parse_addr(good[i].in, &a) != 0)
            fail_msg("\"%s\" should parse", good[i].in);
        assert_string_equal(a.host, good[i].host);
        assert_int_equal(a.port, good[i].port);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (config_parse_addr(bad[i], &a) != -1)
            fail_msg("\"%s\" should be refused", bad[i]);
    }
}

/* ---- flags ---------------------------------------------------------------- */

static void test_flag_forms(void **state)
{
    assert_int_equal(load("--heartbeat", "1m", "--max-body-bytes=2MiB", "--workers", "3",
                          "--log-level=debug", "--publish-key", "s3cret", "--node-name=n1",
                          "--history-size=7", "--max-connections", "500", NULL),
                     0);
    assert_int_equal(cfg.heartbeat_ms, 60000);
    assert_int_equal(cfg.max_body_bytes, 2 * 1048576);
    assert_int_equal(cfg.workers, 3);
    assert_int_equal(cfg.log_level, 3);
    assert_string_equal(cfg.publish_key, "s3cret");
    assert_string_equal(cfg.node_name, "n1");
    assert_int_equal(cfg.history_size, 7);
    assert_int_equal(cfg.max_connections, 500);

    /* The last of a repeated non-list flag wins; "--x=" gives an empty string. */
    assert_int_equal(load("--heartbeat", "1m", "--heartbeat=2s", "--cors-origins=", NULL), 0);
    assert_int_equal(cfg.heartbeat_ms, 2000);
    assert_string_equal(cfg.cors_origins, "");

    /* Values that look like flags are fine after '='. */
    assert_int_equal(load("--publish-key=--not-a-flag", NULL), 0);
    assert_string_equal(cfg.publish_key, "--not-a-flag");

    const char *levels[] = {"error", "warn", "info", "debug", "WARNING"};
    const int want[] = {0, 1, 2, 3, 1};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(load("--log-level", levels[i], NULL), 0);
        assert_int_equal(cfg.log_level, want[i]);
    }
}

static void test_bool_forms(void **state)
{
    static const char *const yes[] = {"true", "1", "yes", "on", "TRUE", "Yes", "ON"};
    static const char *const no[] = {"false", "0", "no", "off", "FALSE", "No", "Off"};
    char arg[64];

    assert_int_equal(load("--ws-publish", NULL), 0);
    assert_true(cfg.ws_publish);
    assert_int_equal(load("--ws-publish", "--no-auto-create", "--no-ws-deflate", NULL), 0);
    assert_true(cfg.ws_publish);
    assert_false(cfg.auto_create);
    assert_false(cfg.ws_deflate);
    assert_int_equal(load("--ws-publish", "--no-ws-publish", NULL), 0);
    assert_false(cfg.ws_publish);
    assert_int_equal(load("--no-auto-create", "--auto-create", NULL), 0);
    assert_true(cfg.auto_create);

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        snprintf(arg, sizeof(arg), "--ws-publish=%s", yes[i]);
        assert_int_equal(load(arg, NULL), 0);
        assert_true(cfg.ws_publish);
        assert_int_equal(load("--redis-tls", yes[i], NULL), 0);
        assert_true(cfg.redis_tls);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        snprintf(arg, sizeof(arg), "--auto-create=%s", no[i]);
        assert_int_equal(load(arg, NULL), 0);
        assert_false(cfg.auto_create);
        assert_int_equal(load("--ws-deflate", no[i], "--heartbeat", "5s", NULL), 0);
        assert_false(cfg.ws_deflate);
        assert_int_equal(cfg.heartbeat_ms, 5000);
    }

    setenv("HERALD_WS_PUBLISH", "on", 1);
    setenv("HERALD_AUTO_CREATE", "0", 1);
    assert_int_equal(load(NULL), 0);
    assert_true(cfg.ws_publish);
    assert_false(cfg.auto_create);
}

/* ---- sources and precedence --------------------------------------------------- */

static void test_precedence(void **state)
{
    write_config("heartbeat = 10s\n"
                 "workers 3\n"
                 "history-size = 7\n"
                 "log-level = debug\n"
                 "ws-publish = true\n");
    setenv("HERALD_HEARTBEAT", "20s", 1);
    setenv("HERALD_WORKERS", "4", 1);
    setenv("HERALD_WS_PUBLISH", "false", 1);

    /* file < env < flags, and options no source sets keep their defaults */
    assert_int_equal(load("--config", cfg_path, "--heartbeat", "40s", NULL), 0);
    assert_string_equal(cfg.config_file, cfg_path);
    assert_int_equal(cfg.heartbeat_ms, 40000);
    assert_int_equal(cfg.workers, 4);
    assert_false(cfg.ws_publish);
    assert_int_equal(cfg.history_size, 7);
    assert_int_equal(cfg.log_level, 3);
    assert_int_equal(cfg.max_outbound, 1048576);

    /* without the flag, env wins over the file */
    assert_int_equal(load("--config", cfg_path, NULL), 0);
    assert_int_equal(cfg.heartbeat_ms, 20000);

    /* without env, the file wins over the defaults */
    unsetenv("HERALD_HEARTBEAT");
    unsetenv("HERALD_WORKERS");
    unsetenv("HERALD_WS_PUBLISH");
    assert_int_equal(load("--config=", NULL), 0); /* an empty --config reads nothing */
    assert_int_equal(cfg.heartbeat_ms, 30000);
    assert_string_equal(cfg.config_file, "");
    assert_int_equal(load("--config", cfg_path, NULL), 0);
    assert_int_equal(cfg.heartbeat_ms, 10000);
    assert_int_equal(cfg.workers, 3);
    assert_true(cfg.ws_publish);

    /* a flag placed before --config still wins over the file */
    assert_int_equal(load("--workers=2", "--config", cfg_path, NULL), 0);
    assert_int_equal(cfg.workers, 2);
}

static void test_config_from_env_and_flag(void **state)
{
    char other[64];

    write_config("history-size = 11\n");
    strcpy(other, cfg_path);
    cfg_path[0] = '\0';
    write_config("history-size = 22\n");

    setenv("HERALD_CONFIG", other, 1);
    assert_int_equal(load(NULL), 0);
    assert_int_equal(cfg.history_size, 11);
    assert_string_equal(cfg.config_file, other);

    /* --config overrides HERALD_CONFIG */
    assert_int_equal(load("--config", cfg_path, NULL), 0);
    assert_int_equal(cfg.history_size, 22);
    assert_string_equal(cfg.config_file, cfg_path);

    /* the last --config wins */
    assert_int_equal(load("--config", cfg_path, "--config", other, NULL), 0);
    assert_int_equal(cfg.history_size, 11);
    unlink(other);
}

static void test_env_names(void **state)
{
    setenv("HERALD_PUBLISH_KEY", "k", 1);
    setenv("HERALD_MAX_BODY_BYTES", "2k", 1);
    setenv("HERALD_MAX_CHANNELS_PER_CONN", "5", 1);
    setenv("HERALD_API_LISTEN", "127.0.0.1:9090", 1);
    setenv("HERALD_REDIS_CLUSTER", "a:7000, b:7001", 1);
    setenv("HERALD_LOG_LEVEL", "error", 1);
    setenv("HERALD_CLOSE_GRACE", "1500ms", 1);
    assert_int_equal(load(NULL), 0);
    assert_string_equal(cfg.publish_key, "k");
    assert_int_equal(cfg.max_body_bytes, 2048);
    assert_int_equal(cfg.max_channels_per_conn, 5);
    assert_true(cfg.has_api_listen);
    assert_string_equal(cfg.api_listen.host, "127.0.0.1");
    assert_int_equal(cfg.api_listen.port, 9090);
    assert_string_equal(cfg.redis_cluster, "a:7000,b:7001");
    assert_int_equal(cfg.log_level, 0);
    assert_int_equal(cfg.close_grace_ms, 1500);

    /* an empty address turns the API listener back off */
    assert_int_equal(load("--api-listen=", NULL), 0);
    assert_false(cfg.has_api_listen);
}

static void test_config_file_syntax(void **state)
{
    write_config("# a comment\n"
                 "\n"
                 "   \t\n"
                 "heartbeat=15s\n"
                 "  close-grace   2s   # trailing comment\n"
                 "publish_key = ab#cd\n"
                 "redis-password = \"  spaced # not a comment \\\"q\\\" \"  # comment\n"
                 "ws-publish\n"
                 "auto-create = off\n"
                 "Node-Name = edge-1\r\n"
                 "cors-origins = https://a.example , http://b.example:8080\n"
                 "max-outbound 2MiB");
    assert_int_equal(load("--config", cfg_path, NULL), 0);
    assert_int_equal(cfg.heartbeat_ms, 15000);
    assert_int_equal(cfg.close_grace_ms, 2000);
    assert_string_equal(cfg.publish_key, "ab#cd");
    assert_string_equal(cfg.redis_password, "  spaced # not a comment \"q\" ");
    assert_true(cfg.ws_publish);
    assert_false(cfg.auto_create);
    assert_string_equal(cfg.node_name, "edge-1");
    assert_string_equal(cfg.cors_origins, "https://a.example,http://b.example:8080");
    assert_int_equal(cfg.max_outbound, 2 * 1048576);
}

static void test_listen(void **state)
{
    assert_int_equal(load("--listen", "127.0.0.1:9001", NULL), 0);
    assert_int_equal(cfg.num_listen, 1);
    assert_string_equal(cfg.listen[0].host, "127.0.0.1");
    assert_int_equal(cfg.listen[0].port, 9001);

    assert_int_equal(
        load("--listen", "127.0.0.1:9001", "--listen=[::1]:9002", "--listen", ":9003", NULL), 0);
    assert_int_equal(cfg.num_listen, 3);
    assert_string_equal(cfg.listen[1].host, "::1");
    assert_int_equal(cfg.listen[1].port, 9002);
    assert_string_equal(cfg.listen[2].host, "");
    assert_int_equal(cfg.listen[2].port, 9003);

    /* env: a comma list, replacing the file's; flags replace env's */
    write_config("listen = 10.0.0.1:1\n"
                 "listen = 10.0.0.1:2, 10.0.0.1:3\n");
    assert_int_equal(load("--config", cfg_path, NULL), 0);
    assert_int_equal(cfg.num_listen, 3);
    assert_int_equal(cfg.listen[2].port, 3);

    setenv("HERALD_LISTEN", "127.0.0.1:7001, 127.0.0.1:7002", 1);
    assert_int_equal(load("--config", cfg_path, NULL), 0);
    assert_int_equal(cfg.num_listen, 2);
    assert_string_equal(cfg.listen[0].host, "127.0.0.1");
    assert_int_equal(cfg.listen[0].port, 7001);
    assert_int_equal(cfg.listen[1].port, 7002);

    assert_int_equal(load("--config", cfg_path, "--listen", "127.0.0.2:1", NULL), 0);
    assert_int_equal(cfg.num_listen, 1);
    assert_string_equal(cfg.listen[0].host, "127.0.0.2");

    /* up to CONFIG_MAX_LISTEN, no more */
    unsetenv("HERALD_LISTEN");
    assert_int_equal(load("--listen", ":1", "--listen", ":2", "--listen", ":3", "--listen", ":4",
                          "--listen", ":5", "--listen", ":6", "--listen", ":7", "--listen", ":8",
                          NULL),
                     0);
    assert_int_equal(cfg.num_listen, CONFIG_MAX_LISTEN);
    assert_int_equal(load("--listen", ":1", "--listen", ":2", "--listen", ":3", "--listen", ":4",
                          "--listen", ":5", "--listen", ":6", "--listen", ":7", "--listen", ":8",
                          "--listen", ":9", NULL),
                     2);
    assert_output_has("at most 8");
    setenv("HERALD_LISTEN", ":1,:2,:3,:4,:5,:6,:7,:8,:9", 1);
    assert_int_equal(load(NULL), 2);
    assert_output_has("HERALD_LISTEN");

    /* duplicates and bad entries */
    unsetenv("HERALD_LISTEN");
    assert_int_equal(load("--listen", ":1", "--listen", "*:1", NULL), 2);
    assert_output_has("listed twice");
    assert_int_equal(load("--listen", ":1,,:2", NULL), 2);
    assert_int_equal(load("--listen", "nope", NULL), 2);
    assert_output_has("herald: invalid value \"nope\" for --listen (from the command line)");
    setenv("HERALD_LISTEN", "", 1);
    assert_int_equal(load(NULL), 2);
}

static void test_redis(void **state)
{
    assert_int_equal(load("--redis", "redis://:pw@10.0.0.5:6379/2", NULL), 0);
    assert_string_equal(cfg.redis_url, "redis://:pw@10.0.0.5:6379/2");
    assert_false(cfg.redis_tls);
    assert_int_equal(load("--redis", "rediss://cache.internal:6380", NULL), 0);
    assert_true(cfg.redis_tls);
    assert_int_equal(load("--redis-cluster", "10.0.0.1:7000,10.0.0.2:7000", "--redis-password",
                          "pw", "--redis-tls", NULL),
                     0);
    assert_string_equal(cfg.redis_cluster, "10.0.0.1:7000,10.0.0.2:7000");
    assert_string_equal(cfg.redis_password, "pw");
    assert_true(cfg.redis_tls);
}

/* ---- errors --------------------------------------------------------------- */

static void test_unknown_and_malformed_flags(void **state)
{
    assert_int_equal(load("--foo", NULL), 2);
    assert_string_equal(out, "herald: unknown option --foo (see herald --help)\n");
    assert_int_equal(load("--foo=bar", NULL), 2);
    assert_string_equal(out, "herald: unknown option --foo (see herald --help)\n");
    assert_int_equal(load("-x", NULL), 2);
    assert_output_has("unknown option -x");
    assert_int_equal(load("--", NULL), 2);
    assert_int_equal(load("--no-heartbeat", NULL), 2); /* --no- only for bools */
    assert_output_has("unknown option --no-heartbeat");
    assert_int_equal(load("--no-ws-publish=1", NULL), 2);
    assert_output_has("--no-ws-publish takes no value");
    assert_int_equal(load("--help=1", NULL), 2);
    assert_int_equal(load("stray", NULL), 2);
    assert_output_has("unexpected argument \"stray\"");
    assert_int_equal(load("--heartbeat", NULL), 2);
    assert_output_has("option --heartbeat needs a value");
    assert_int_equal(load("--publish-key", "--workers", "2", NULL), 2);
    assert_output_has("option --publish-key needs a value");
    assert_int_equal(load("--config", NULL), 2);
    assert_output_has("option --config needs a value");
    assert_int_equal(load("--ws-publish", "maybe", NULL), 2);
    assert_output_has("invalid value \"maybe\" for --ws-publish");
}

static void test_invalid_values(void **state)
{
    static const struct {
        const char *arg, *message;
    } cases[] = {
        {"--heartbeat=abc", "herald: invalid value \"abc\" for --heartbeat (from the command "
                            "line): expected a duration such as 30s, 500ms, 2m\n"},
        {"--heartbeat=99ms", "must be between 100ms and 1h"},
        {"--heartbeat=2h", "must be between 100ms and 1h"},
        {"--workers=0", "for --workers (from the command line): must be between 1 and 64"},
        {"--workers=65", "must be between 1 and 64"},
        {"--workers=-1", "must be between 1 and 64"},
        {"--workers=two", "expected a whole number"},
        {"--workers=99999999999999999999999", "expected a whole number"},
        {"--max-connections=-5", "--max-connections"},
        {"--history-size=0", "for --history-size (from the command line): must be between 1 and"},
        {"--max-channels-per-conn=0", "--max-channels-per-conn"},
        {"--max-body-bytes=1x", "expected a size such as 8192, 64k, 1MiB"},
        {"--max-header-bytes=100", "must be between 1KiB and 1MiB"},
        {"--max-body-bytes=2GiB", "must be between 1 and 1GiB"},
        {"--channel-ttl=0", "must be between 1s and 720h"},
        {"--log-level=loud", "expected one of error, warn, info, debug"},
        {"--api-listen=1.2.3.4", "for --api-listen"},
        {"--cors-origins=example.com", "for --cors-origins"},
        {"--cors-origins=https://a.example,,*", "for --cors-origins"},
        {"--redis=http://x:1", "expected redis://"},
        {"--redis-cluster=a:7000,b", "for --redis-cluster"},
        {"--redis-cluster=:7000", "for --redis-cluster"},
        {"--node-name=a b", "for --node-name"},
        {"--node-name=0123456789012345678901234567890123456789012345678901234567890123",
         "too long (at most 63 bytes)"},
        {"--ws-deflate=2", "expected true or false"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (load(cases[i].arg, NULL) != 2)
            fail_msg("%s should be refused", cases[i].arg);
        assert_output_has(cases[i].message);
    }
    /* bounds are printed in a form the parser reads back */
    assert_int_equal(load("--channel-ttl=720h", NULL), 0);
    assert_int_equal(load("--max-header-bytes=1MiB", "--heartbeat=100ms", NULL), 0);
}

static void test_invalid_env_and_file_name_their_source(void **state)
{
    setenv("HERALD_HEARTBEAT", "abc", 1);
    assert_int_equal(load(NULL), 2);
    assert_string_equal(out, "herald: invalid value \"abc\" for --heartbeat (from "
                             "HERALD_HEARTBEAT): expected a duration such as 30s, 500ms, 2m\n");
    /* a valid flag does not hide a broken env var */
    assert_int_equal(load("--heartbeat", "5s", NULL), 2);
    unsetenv("HERALD_HEARTBEAT");

    setenv("HERALD_WORKERS", "", 1);
    assert_int_equal(load(NULL), 2);
    assert_output_has("(from HERALD_WORKERS)");
    unsetenv("HERALD_WORKERS");

    char want[160];
    write_config("# ok\nheartbeat = 1s\nhistory-size = many\n");
    assert_int_equal(load("--config", cfg_path, NULL), 2);
    snprintf(want, sizeof(want), "for --history-size (from %s:3): expected a whole number",
             cfg_path);
    assert_output_has(want);

    write_config("heartbeat = 1s\n\nhartbeat = 2s\n");
    assert_int_equal(load("--config", cfg_path, NULL), 2);
    snprintf(want, sizeof(want), "herald: %s:3: unknown option \"hartbeat\"", cfg_path);
    assert_output_has(want);

    write_config("heartbeat: 1s\n");
    assert_int_equal(load("--config", cfg_path, NULL), 2);
    snprintf(want, sizeof(want), "herald: %s:1: expected \"name = value\"", cfg_path);
    assert_output_has(want);

    write_config("publish-key = \"unterminated\n");
    assert_int_equal(load("--config", cfg_path, NULL), 2);
    assert_output_has("expected \"name = value\"");

    write_config("publish-key = \"x\" trailing\n");
    assert_int_equal(load("--config", cfg_path, NULL), 2);

    write_config("config = /etc/other.conf\n");
    assert_int_equal(load("--config", cfg_path, NULL), 2);
    assert_output_has("\"config\" cannot be set in a config file");

    write_config("heartbeat\n"); /* only bools may omit the value */
    assert_int_equal(load("--config", cfg_path, NULL), 2);
    assert_output_has("invalid value \"\" for --heartbeat");

    assert_int_equal(load("--config", "/nonexistent/herald.conf", NULL), 2);
    assert_output_has("herald: cannot read config file \"/nonexistent/herald.conf\"");
    setenv("HERALD_CONFIG", "/nonexistent/other.conf", 1);
    assert_int_equal(load(NULL), 2);
    assert_output_has("/nonexistent/other.conf");
}

static void test_secrets_are_not_echoed(void **state)
{
    char key[400];

    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    memcpy(key, "topsecret", 9);
    setenv("HERALD_PUBLISH_KEY", key, 1);
    assert_int_equal(load(NULL), 2);
    assert_output_has("for --publish-key (from HERALD_PUBLISH_KEY): too long (at most 255 bytes)");
    assert_null(strstr(out, "topsecret"));
    unsetenv("HERALD_PUBLISH_KEY");

    assert_int_equal(load("--redis", "http://:topsecret@host", NULL), 2);
    assert_null(strstr(out, "topsecret"));
    assert_int_equal(load("--redis-password", "topsecret\x01", NULL), 2);
    assert_output_has("control character");
    assert_null(strstr(out, "topsecret"));
}

static void test_cross_field_checks(void **state)
{
    assert_int_equal(load("--lifetime-min", "5m", NULL), 2);
    assert_output_has("--lifetime-max 3m (from the default) must not be less than "
                      "--lifetime-min 5m (from the command line)");
    setenv("HERALD_LIFETIME_MAX", "1m", 1);
    assert_int_equal(load(NULL), 2);
    assert_output_has("(from HERALD_LIFETIME_MAX)");
    assert_int_equal(load("--lifetime-min=30s", NULL), 0);
    assert_int_equal(load("--lifetime-min=1m", NULL), 0); /* equal is fine */
    assert_int_equal(load("--lifetime-min=0", NULL), 0);  /* 0 disables */
    unsetenv("HERALD_LIFETIME_MAX");

    char want[160];
    write_config("\nlifetime-min = 10m\n");
    assert_int_equal(load("--config", cfg_path, NULL), 2);
    snprintf(want, sizeof(want), "--lifetime-min 10m (from %s:2)", cfg_path);
    assert_output_has(want);
    assert_int_equal(load("--config", cfg_path, "--lifetime-max=10m", NULL), 0);

    setenv("HERALD_REDIS", "redis://127.0.0.1:6379", 1);
    assert_int_equal(load("--redis-cluster", "127.0.0.1:7000", NULL), 2);
    assert_output_has("--redis (from HERALD_REDIS) and --redis-cluster (from the command line) "
                      "cannot both be set");
    assert_int_equal(load("--redis=", "--redis-cluster", "127.0.0.1:7000", NULL), 0);
}

/* ---- help and version ------------------------------------------------------- */

static void check_help_text(const char *text)
{
    char want[96];

    for (size_t i = 0; i < sizeof(option_names) / sizeof(option_names[0]); i++) {
        const char *name = option_names[i];
        char flag[64], bool_flag[64];
        snprintf(flag, sizeof(flag), "  --%s ", name);
        snprintf(bool_flag, sizeof(bool_flag), "  --[no-]%s ", name);
        if (!strstr(text, flag) && !strstr(text, bool_flag))
            fail_msg("--help lacks option --%s", name);
        char env[64] = "HERALD_";
        for (size_t j = 0; name[j]; j++)
            env[7 + j] = name[j] == '-' ? '_' : (char)(name[j] - 32 * (name[j] >= 'a'));
        env[7 + strlen(name)] = '\0';
        snprintf(want, sizeof(want), "(env %s, default ", env);
        if (!strstr(text, want))
            fail_msg("--help lacks %s", want);
    }
    assert_non_null(strstr(text, "--config FILE"));
    assert_non_null(strstr(text, "--help"));
    assert_non_null(strstr(text, "--version"));
    assert_non_null(strstr(text, "--[no-]ws-publish"));
    assert_non_null(strstr(text, "(env HERALD_MAX_BODY_BYTES, default 1MiB)"));
    assert_non_null(strstr(text, "(env HERALD_LISTEN, default 0.0.0.0:8080)"));
}

static void test_help(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    assert_non_null(f);
    config_print_help(f);
    fclose(f);
    check_help_text(text);
    free(text);

    assert_int_equal(load("--help", NULL), 1);
    check_help_text(out);
    assert_int_equal(load("-h", NULL), 1);
    check_help_text(out);
    /* --help wins over values that would be invalid, since none is applied */
    assert_int_equal(load("--heartbeat", "abc", "--help", NULL), 1);
}

static void test_version(void **state)
{
    assert_int_equal(load("--version", NULL), 1);
    assert_string_equal(out, "herald 0.1.0\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_without_arguments_gives_defaults, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_parse_duration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_addr, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bool_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_from_env_and_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_file_syntax, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_and_malformed_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_env_and_file_name_their_source, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_secrets_are_not_echoed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cross_field_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version, setup, teardown),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
