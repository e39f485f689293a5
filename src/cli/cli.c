/*
 * cli: the commands of `herald <command>`. See cli.h and docs/cli.md.
 *
 * Each command parses its options from a table (so --help prints the same
 * table), resolves the server and keys from flags, then the environment a
 * Tsuru-bound app has (HERALD_URL, HERALD_PUBLISH_URL, HERALD_PUBLISH_KEY,
 * HERALD_TOKEN_SECRET, HERALD_APP, HERALD_ADMIN_KEY), then defaults, and talks
 * to herald over cli_http. `sub` reads the SSE stream: its `id:` lines are the
 * connection's cursor in whatever form the server uses (one id, or one per
 * channel on a Redis Cluster), so a reconnect resumes exactly where it was.
 */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth/token.h"
#include "cli/cli_http.h"
#include "core/config.h"

#define DEFAULT_URL "http://localhost:8080"
#define ERR_MAX     1024

/* ---- options ---------------------------------------------------------------------- */

struct opts {
    const char *url, *key, *app, *admin_key, *event, *token, *since, *prefix, *limit, *type;
    const char *secret, *sub, *channels, *publish, *ttl, *plan, *count, *timeout;
    const char *cacert, *subscribe, *settings, *after, *info;
    bool pretty, public_, insecure, help;
    int nargs;
    char *args[8];
};

struct opt_def {
    const char *name, *meta, *help;
    size_t field;      /* offsetof(struct opts, …) */
    const char *alias; /* another name for it, or NULL */
};

#define O(f) offsetof(struct opts, f)
/* meta NULL: a flag (bool). --server is DESIGN §11's name for --url. */
static const struct opt_def opt_url = {
    .name = "url", .meta = "URL", .alias = "server", .help = "herald's base URL", .field = O(url)};
static const struct opt_def opt_key = {
    .name = "key", .meta = "KEY", .help = "publish key (HERALD_PUBLISH_KEY)", .field = O(key)};
static const struct opt_def opt_app = {
    .name = "app", .meta = "APP", .help = "the app (HERALD_APP): /apps/APP/…", .field = O(app)};
static const struct opt_def opt_pretty = {
    .name = "pretty", .help = "indent the JSON", .field = O(pretty)};
static const struct opt_def opt_timeout = {.name = "timeout",
                                           .meta = "DURATION",
                                           .help =
                                               "give up after this long (10s; sub: run this long)",
                                           .field = O(timeout)};
static const struct opt_def opt_admin = {.name = "admin-key",
                                         .meta = "KEY",
                                         .help = "admin key (HERALD_ADMIN_KEY)",
                                         .field = O(admin_key)};
static const struct opt_def opt_cacert = {
    .name = "cacert",
    .meta = "FILE",
    .help = "https: trust the CAs in this PEM file (HERALD_CACERT)",
    .field = O(cacert)};
static const struct opt_def opt_insecure = {
    .name = "insecure",
    .help = "https: skip verifying the certificate (unsafe: for tests)",
    .field = O(insecure)};

struct command {
    const char *name, *usage, *summary;
    const char *url_env; /* where the server comes from without --url (then HERALD_URL) */
    int (*run)(struct opts *o);
    int min_args, max_args;
    const struct opt_def *opts[16]; /* NULL-ended */
};

static const char *prog = "herald";
static const struct command *cmd;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s %s: ", prog, cmd->name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nUsage: %s %s\n(%s %s --help for more)\n", prog, cmd->usage, prog, cmd->name);
    return CLI_EXIT_USAGE;
}

static void print_help(const struct command *c)
{
    printf("Usage: %s %s\n%s\n\nOptions:\n", prog, c->usage, c->summary);
    for (int i = 0; c->opts[i]; i++) {
        const struct opt_def *d = c->opts[i];
        char flag[64];
        snprintf(flag, sizeof(flag), "--%s%s%s%s%s", d->name, d->alias ? ", --" : "",
                 d->alias ? d->alias : "", d->meta ? " " : "", d->meta ? d->meta : "");
        printf("  %-24s %s\n", flag, d->help);
    }
    printf("  %-24s %s\n", "-h, --help", "print this help and exit");
    if (c->url_env)
        printf("\nServer: --url, else $%s%s, else %s.\n", c->url_env,
               strcmp(c->url_env, "HERALD_URL") ? ", else $HERALD_URL" : "", DEFAULT_URL);
    printf("Exit codes: 0 done, 1 the server said no (its error on stderr), 2 usage error,\n"
           "3 cannot reach the server (or TLS failed), 4 sub --timeout before --count "
           "messages,\n5 over a limit or busy (429, 503): try again later. See docs/cli.md.\n");
}

/* Whether name[0..n) is `want` (NULL: no name). */
static bool opt_is(const char *want, const char *name, size_t n)
{
    return want && strlen(want) == n && memcmp(want, name, n) == 0;
}

static int parse_opts(const struct command *c, int argc, char **argv, struct opts *o)
{
    bool dashdash = false;
    for (int i = 2; i < argc; i++) {
        char *a = argv[i];
        if (dashdash || a[0] != '-' || strcmp(a, "-") == 0) {
            if (o->nargs == (int)(sizeof(o->args) / sizeof(o->args[0])) || o->nargs == c->max_args)
                return usage_error("unexpected argument \"%s\"", a);
            o->args[o->nargs++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            dashdash = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            o->help = true;
            continue;
        }
        const char *name = a + (a[1] == '-' ? 2 : 1), *eq = strchr(name, '=');
        size_t n = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt_def *d = NULL;
        for (int k = 0; c->opts[k] && !d; k++)
            if (opt_is(c->opts[k]->name, name, n) || opt_is(c->opts[k]->alias, name, n))
                d = c->opts[k];
        if (!d)
            return usage_error("unknown option %.*s", (int)(n + (size_t)(name - a)), a);
        if (!d->meta) {
            if (eq)
                return usage_error("--%s takes no value", d->name);
            *(bool *)((char *)o + d->field) = true;
            continue;
        }
        const char *v = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
        if (!v)
            return usage_error("--%s needs a value (%s)", d->name, d->meta);
        *(const char **)((char *)o + d->field) = v;
    }
    if (o->help)
        return 0;
    if (o->nargs < c->min_args)
        return usage_error("missing argument");
    return 0;
}

static const char *env_or(const char *v, const char *env)
{
    const char *e = v ? v : getenv(env);
    return e && *e ? e : NULL;
}

/* ---- talking to the server ---------------------------------------------------------- */

struct target {
    struct cli_url url;
    char auth[600]; /* "Authorization: Bearer KEY\r\n" or "" */
    int timeout_ms;
};

static int duration_ms(const char *s, const char *what, int *out)
{
    uint32_t ms;
    if (config_parse_duration(s, &ms) < 0 || ms > INT_MAX)
        return usage_error("--%s \"%s\" is not a duration (30s, 1500ms, 2m, 1h)", what, s);
    *out = (int)ms;
    return 0;
}

/*
 * The base URL: --url, then the command's variable (cmd->url_env), then
 * HERALD_URL, then the default; with an app, its prefix (replacing a trailing
 * /apps/NAME, which is how Tsuru gives HERALD_URL); for https, whom to trust.
 * Fills t; 0 or a usage error.
 */
static int resolve(struct target *t, const struct opts *o, const char *key)
{
    const char *base = env_or(o->url, cmd->url_env);
    if (!base)
        base = env_or(NULL, "HERALD_URL");
    if (!base)
        base = DEFAULT_URL;
    char err[ERR_MAX];
    if (cli_url_parse(base, &t->url, err, sizeof(err)) < 0)
        return usage_error("%s", err);
    const char *app = env_or(o->app, "HERALD_APP");
    if (app) {
        char *p = strstr(t->url.path, "/apps/");
        if (p && !strchr(p + 6, '/'))
            *p = '\0';
        struct sbuf b = {0};
        sbuf_printf(&b, "%s/apps/", t->url.path);
        cli_url_encode(&b, app, NULL);
        if (b.len >= sizeof(t->url.path)) {
            sbuf_free(&b);
            return usage_error("the app name is too long");
        }
        memcpy(t->url.path, b.data, b.len + 1);
        sbuf_free(&b);
    }
    t->auth[0] = '\0';
    if (key) {
        if (strlen(key) > 500 || strpbrk(key, "\r\n"))
            return usage_error("the key is not a key (over 500 bytes, or a line break)");
        snprintf(t->auth, sizeof(t->auth), "Authorization: Bearer %s\r\n", key);
    }
    t->url.insecure = o->insecure;
    t->url.cafile = env_or(o->cacert, "HERALD_CACERT");
    if (t->url.cafile && access(t->url.cafile, R_OK) < 0)
        return usage_error("cannot read the CA file %s: %s", t->url.cafile, strerror(errno));
    t->timeout_ms = 10000;
    if (o->timeout && duration_ms(o->timeout, "timeout", &t->timeout_ms) != 0)
        return CLI_EXIT_USAGE;
    return 0;
}

static int unreachable(const struct target *t, const char *err)
{
    fprintf(stderr, "%s %s: %s (server %s://%s:%s)\n", prog, cmd->name, err,
            t->url.tls ? "https" : "http", t->url.host, t->url.port);
    return CLI_EXIT_UNREACHABLE;
}

/* Prints a JSON answer to stdout (indented with --pretty; as sent otherwise). */
static void print_json(const struct opts *o, const char *body, size_t len)
{
    json_t *j = o->pretty ? json_loadb(body, len, JSON_DECODE_ANY, NULL) : NULL;
    char *s = j ? json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY) : NULL;
    if (s) {
        puts(s);
    } else {
        fwrite(body, 1, len, stdout);
        if (len == 0 || body[len - 1] != '\n')
            putchar('\n');
    }
    free(s);
    json_decref(j);
}

/* The server said no: its answer (the JSON error) on stderr, and what to check. */
static int refused(const struct target *t, int status, const char *body, size_t len)
{
    fwrite(body, 1, len, stderr);
    if (len == 0 || body[len - 1] != '\n')
        fputc('\n', stderr);
    bool apps = strcmp(cmd->name, "apps") == 0, later = status == 429 || status == 503;
    const char *hint =
        status == 401 || status == 403
            ? (apps                            ? "check --admin-key (HERALD_ADMIN_KEY)"
               : strcmp(cmd->name, "sub") == 0 ? "check --token (mint one with herald token)"
                                               : "check --key (HERALD_PUBLISH_KEY)")
        : status == 404
            ? (apps ? "check the app's name (herald apps list) and --url" : "check --url and --app")
        : later ? "over a limit (named above) or busy: try again later"
                : NULL;
    fprintf(stderr, "%s %s: the server answered %d%s%s\n", prog, cmd->name, status,
            hint ? ": " : "", hint ? hint : "");
    return later ? CLI_EXIT_LATER : CLI_EXIT_REFUSED;
}

/* One request; prints the answer; the exit code. */
static int call(const struct opts *o, const struct target *t, const char *method, const char *path,
                const char *extra, const char *body, size_t len)
{
    char err[ERR_MAX], headers[1024];
    snprintf(headers, sizeof(headers), "%s%s", t->auth, extra ? extra : "");
    int status;
    struct sbuf ans;
    int rc = cli_http_fetch(&t->url, method, path, headers, body, len, t->timeout_ms, &status, &ans,
                            err, sizeof(err));
    if (rc < 0)
        rc = unreachable(t, err);
    else if (status < 200 || status > 299)
        rc = refused(t, status, ans.data, ans.len);
    else if (ans.len)
        print_json(o, ans.data, ans.len);
    sbuf_free(&ans);
    return rc;
}

/* ---- pub, channels, stats ------------------------------------------------------------ */

static int read_stdin(struct sbuf *b)
{
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0)
        sbuf_add(b, buf, n);
    return ferror(stdin) ? -1 : 0;
}

static int cmd_pub(struct opts *o)
{
    struct target t;
    int rc = resolve(&t, o, env_or(o->key, "HERALD_PUBLISH_KEY"));
    if (rc)
        return rc;
    struct sbuf data = {0}, path = {0}, hdr = {0};
    sbuf_adds(&data, "");
    if (o->nargs < 2 || strcmp(o->args[1], "-") == 0) {
        if (o->nargs < 2 && isatty(STDIN_FILENO))
            return usage_error("give the message as DATA, or - (or a pipe) for stdin");
        if (read_stdin(&data) < 0) {
            fprintf(stderr, "%s pub: cannot read stdin: %s\n", prog, strerror(errno));
            sbuf_free(&data);
            return CLI_EXIT_USAGE;
        }
    } else {
        sbuf_adds(&data, o->args[1]);
    }
    const char *type = o->type;
    if (!type || strcmp(type, "auto") == 0) {
        json_t *j = json_loadb(data.data, data.len, JSON_DECODE_ANY, NULL);
        type = j ? "json" : "text";
        json_decref(j);
    }
    if (strcmp(type, "json") == 0)
        sbuf_adds(&hdr, "Content-Type: application/json\r\n");
    else if (strcmp(type, "text") == 0)
        sbuf_adds(&hdr, "Content-Type: text/plain; charset=utf-8\r\n");
    else if (strcmp(type, "binary") == 0)
        sbuf_adds(&hdr, "Content-Type: application/octet-stream\r\n");
    else
        rc = usage_error("--type is auto, json, text or binary");
    if (o->event && strpbrk(o->event, "\r\n"))
        rc = usage_error("--event must be one line");
    if (!rc) {
        if (o->event)
            sbuf_printf(&hdr, "Herald-Event: %s\r\n", o->event);
        sbuf_adds(&path, "/pub/");
        cli_url_encode(&path, o->args[0], NULL);
        rc = call(o, &t, "POST", path.data, hdr.data, data.data, data.len);
    }
    sbuf_free(&data);
    sbuf_free(&path);
    sbuf_free(&hdr);
    return rc;
}

/* Appends "?name=value" (or "&…" after the first), value percent-encoded; NULL: nothing. */
static void add_query(struct sbuf *path, const char *name, const char *value)
{
    if (!value)
        return;
    sbuf_printf(path, "%s%s=", strchr(path->data, '?') ? "&" : "?", name);
    cli_url_encode(path, value, NULL);
}

static int cmd_channels(struct opts *o)
{
    struct target t;
    int rc = resolve(&t, o, env_or(o->key, "HERALD_PUBLISH_KEY"));
    if (rc)
        return rc;
    struct sbuf path = {0};
    sbuf_adds(&path, "/api/channels");
    add_query(&path, "prefix", o->prefix);
    add_query(&path, "limit", o->limit);
    add_query(&path, "after", o->after);
    rc = call(o, &t, "GET", path.data, NULL, NULL, 0);
    sbuf_free(&path);
    return rc;
}

static int cmd_stats(struct opts *o)
{
    struct target t;
    int rc = resolve(&t, o, env_or(o->key, "HERALD_PUBLISH_KEY"));
    return rc ? rc : call(o, &t, "GET", "/stats", NULL, NULL, 0);
}

/* ---- apps ------------------------------------------------------------------------------ */

/* The verbs of `herald apps`: how many words follow the verb, and what they are. */
static const struct apps_verb {
    const char *name, *args;
    int nargs;
} apps_verbs[] = {
    {"list", "", 0},        {"plans", "", 0},           {"create", " NAME", 1},
    {"show", " NAME", 1},   {"update", " NAME", 1},     {"delete", " NAME", 1},
    {"rotate", " NAME", 1}, {"revoke", " NAME KEY", 2},
};

/* The body of create and update: name (create), plan, subscribe, settings; NULL after a
 * usage error (printed). */
static json_t *apps_body(const struct opts *o, const char *name)
{
    json_t *j = name ? json_pack("{s:s}", "name", name) : json_object();
    if (o->plan)
        json_object_set_new(j, "plan", json_string(o->plan));
    const char *subscribe = o->public_ ? "public" : o->subscribe;
    if (o->public_ && o->subscribe && strcmp(o->subscribe, "public") != 0) {
        usage_error("--public is --subscribe public; give one of them");
        goto bad;
    }
    if (subscribe && strcmp(subscribe, "public") && strcmp(subscribe, "token")) {
        usage_error("--subscribe is token (subscribers need a token) or public");
        goto bad;
    }
    if (subscribe)
        json_object_set_new(j, "subscribe", json_string(subscribe));
    if (o->settings) {
        json_error_t e;
        json_t *set = json_loads(o->settings, 0, &e);
        if (!json_is_object(set)) {
            json_decref(set);
            usage_error("--settings is a JSON object, e.g. '{\"auto_create\":false}'%s%s",
                        set ? "" : ": ", set ? "" : e.text);
            goto bad;
        }
        json_object_set_new(j, "settings", set);
    }
    return j;
bad:
    json_decref(j);
    return NULL;
}

static int cmd_apps(struct opts *o)
{
    const char *admin = env_or(o->admin_key, "HERALD_ADMIN_KEY");
    struct opts root = *o;
    root.app = NULL; /* the admin API lives at the server's root */
    struct target t;
    int rc = resolve(&t, &root, admin);
    if (rc)
        return rc;
    char *p = strstr(t.url.path, "/apps/"); /* Tsuru's HERALD_URL names an app */
    if (p && !strchr(p + 6, '/'))
        *p = '\0';
    const char *verb = o->args[0];
    const struct apps_verb *v = NULL;
    for (size_t i = 0; i < sizeof(apps_verbs) / sizeof(apps_verbs[0]) && !v; i++)
        if (strcmp(verb, apps_verbs[i].name) == 0)
            v = &apps_verbs[i];
    if (!v)
        return usage_error("unknown apps command \"%s\" (list, plans, create, show, update, "
                           "delete, rotate, revoke)",
                           verb);
    if (o->nargs - 1 != v->nargs)
        return usage_error("it is apps %s%s", v->name, v->args);
    bool writes = strcmp(verb, "create") == 0 || strcmp(verb, "update") == 0;
    if (!writes && (o->plan || o->public_ || o->subscribe || o->settings))
        return usage_error("--plan, --subscribe, --public and --settings go with apps create "
                           "and apps update");
    if ((o->limit || o->after) && strcmp(verb, "list") != 0)
        return usage_error("--limit and --after go with apps list");
    if (strcmp(verb, "update") == 0 && !o->plan && !o->public_ && !o->subscribe && !o->settings)
        return usage_error("apps update changes --plan, --subscribe or --settings: give one");
    if (!admin)
        return usage_error("no admin key: give --admin-key KEY or set HERALD_ADMIN_KEY");
    struct sbuf path = {0};
    sbuf_adds(&path, strcmp(verb, "plans") == 0 ? "/admin/plans" : "/admin/apps");
    if (v->nargs > 0 && strcmp(verb, "create") != 0) {
        sbuf_adds(&path, "/");
        cli_url_encode(&path, o->args[1], NULL);
    }
    static const char json_type[] = "Content-Type: application/json\r\n";
    if (strcmp(verb, "delete") == 0) {
        rc = call(o, &t, "DELETE", path.data, NULL, NULL, 0);
    } else if (strcmp(verb, "rotate") == 0) {
        sbuf_adds(&path, "/keys");
        rc = call(o, &t, "POST", path.data, NULL, "", 0);
    } else if (strcmp(verb, "revoke") == 0) {
        sbuf_adds(&path, "/keys/");
        cli_url_encode(&path, o->args[2], NULL);
        rc = call(o, &t, "DELETE", path.data, NULL, NULL, 0);
    } else if (writes) {
        json_t *j = apps_body(o, strcmp(verb, "create") == 0 ? o->args[1] : NULL);
        char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        rc = !j ? CLI_EXIT_USAGE
                : call(o, &t, strcmp(verb, "create") == 0 ? "POST" : "PATCH", path.data, json_type,
                       body, strlen(body));
        free(body);
        json_decref(j);
    } else {
        add_query(&path, "limit", o->limit);
        add_query(&path, "after", o->after);
        rc = call(o, &t, "GET", path.data, NULL, NULL, 0);
    }
    sbuf_free(&path);
    return rc;
}

/* ---- token ----------------------------------------------------------------------------- */

/* "a,b.*" as a JSON array of strings. */
static json_t *list_of(const char *s)
{
    json_t *a = json_array();
    while (s && *s) {
        size_t n = strcspn(s, ",");
        if (n)
            json_array_append_new(a, json_stringn(s, n));
        s += n + (s[n] == ',');
    }
    return a;
}

static int cmd_token(struct opts *o)
{
    const char *secret = env_or(o->secret, "HERALD_TOKEN_SECRET");
    if (!secret)
        return usage_error("no secret: give --secret SECRET or set HERALD_TOKEN_SECRET (an "
                           "app's token_secret, or the server's --token-secret)");
    int ttl_ms = 3600 * 1000;
    if (o->ttl && duration_ms(o->ttl, "ttl", &ttl_ms) != 0)
        return CLI_EXIT_USAGE;
    if (ttl_ms < 1000)
        return usage_error("--ttl must be 1s at least");
    json_int_t now = (json_int_t)time(NULL);
    json_t *claims = json_pack("{s:I,s:I}", "iat", now, "exp", now + ttl_ms / 1000);
    if (o->sub)
        json_object_set_new(claims, "sub", json_string(o->sub));
    if (o->channels)
        json_object_set_new(claims, "channels", list_of(o->channels));
    if (o->publish)
        json_object_set_new(claims, "publish", list_of(o->publish));
    int rc = CLI_EXIT_OK;
    if (o->info) {
        json_t *info = json_loads(o->info, JSON_DECODE_ANY, NULL);
        if (info)
            json_object_set_new(claims, "info", info);
        else
            rc = usage_error("--info is JSON, e.g. '{\"name\":\"Alice\"}'");
    }
    const char *bad = NULL;
    const char *keys[2] = {"channels", "publish"};
    for (int k = 0; k < 2; k++) {
        json_t *l = json_object_get(claims, keys[k]);
        for (size_t i = 0; i < json_array_size(l) && !bad; i++) {
            json_t *p = json_array_get(l, i);
            if (!token_pattern_valid(json_string_value(p), json_string_length(p)))
                bad = json_string_value(p);
        }
    }
    if (bad && !rc)
        rc = usage_error("\"%s\" is not a channel pattern (names, '*' for one segment, a last "
                         "'**', {sub})",
                         bad);
    if (o->sub && !json_object_get(claims, "sub"))
        rc = usage_error("--sub must be UTF-8");
    if (!rc) {
        char *text = json_dumps(claims, JSON_COMPACT);
        struct token_verifier *v = token_verifier_hs256(secret, strlen(secret), 0);
        char *jwt = token_mint_hs256(v, text, strlen(text));
        puts(jwt);
        free(jwt);
        free(text);
        token_verifier_free(v);
    }
    json_decref(claims);
    return rc;
}

/* ---- sub ------------------------------------------------------------------------------- */

struct sub_state {
    const struct opts *o;
    char cursor[512]; /* the last SSE id: where a reconnect resumes */
    long count, got;
    struct sbuf line;             /* a partial line of the stream */
    char ev_id[512], ev_name[64]; /* fields of the event being read */
    struct sbuf ev_data;          /* its data */
    bool reconnect_asked;         /* the server said it would close */
};

/* An event ended (blank line): print it, remember its id. 1 when --count is reached. */
static int sub_dispatch(struct sub_state *s)
{
    if (s->ev_id[0])
        snprintf(s->cursor, sizeof(s->cursor), "%s", s->ev_id);
    if (s->ev_data.len) {
        json_t *j = json_loadb(s->ev_data.data, s->ev_data.len, 0, NULL);
        const char *event = json_string_value(json_object_get(j, "event"));
        if (event && (strcmp(event, "reconnect") == 0 || strcmp(event, "error") == 0)) {
            /* transport business: we resume by ourselves */
            fprintf(stderr, "%s sub: %s; resuming from %s\n", prog, s->ev_data.data,
                    s->cursor[0] ? s->cursor : "now");
            s->reconnect_asked = true;
        } else {
            print_json(s->o, s->ev_data.data, s->ev_data.len);
            if (fflush(stdout) != 0)
                exit(errno == EPIPE ? CLI_EXIT_OK : CLI_EXIT_UNREACHABLE);
            if (event && strcmp(event, "message") == 0)
                s->got++;
        }
        json_decref(j);
    }
    s->ev_id[0] = s->ev_name[0] = '\0';
    s->ev_data.len = 0;
    return s->count > 0 && s->got >= s->count;
}

/* One line of the event stream (without its LF). 1 when --count is reached. */
static int sub_line(struct sub_state *s, char *l, size_t n)
{
    if (n && l[n - 1] == '\r')
        l[--n] = '\0';
    if (n == 0)
        return sub_dispatch(s);
    if (l[0] == ':')
        return 0; /* comment: a heartbeat */
    char *colon = memchr(l, ':', n);
    char *v = colon ? colon + 1 + (colon[1] == ' ') : l + n;
    size_t vl = (size_t)(l + n - v);
    size_t fl = colon ? (size_t)(colon - l) : n;
    if (fl == 4 && memcmp(l, "data", 4) == 0) {
        if (s->ev_data.len)
            sbuf_add(&s->ev_data, "\n", 1);
        sbuf_add(&s->ev_data, v, vl);
    } else if (fl == 2 && memcmp(l, "id", 2) == 0 && vl < sizeof(s->ev_id)) {
        memcpy(s->ev_id, v, vl);
        s->ev_id[vl] = '\0';
    }
    return 0;
}

/*
 * One connection: 1 when --count is reached, 0 when the stream ended or broke
 * (reconnect), or an exit code (negated) when the server refused.
 */
static int sub_once(struct sub_state *s, const struct target *t, const char *channels,
                    int64_t deadline_ms, bool first, char *err, size_t errsize)
{
    struct sbuf path = {0};
    sbuf_adds(&path, "/sse?channels=");
    cli_url_encode(&path, channels, ",");
    add_query(&path, "since", s->cursor[0] ? s->cursor : NULL);
    add_query(&path, "token", s->o->token);
    int64_t left = deadline_ms - (int64_t)now_ms();
    /* An idle stream still gets a heartbeat every --heartbeat (30 s by default). */
    int idle = 75000;
    struct cli_conn *c;
    int rc = cli_http_open(&t->url, "GET", path.data, "Accept: text/event-stream\r\n", NULL, 0,
                           left < idle ? (left > 0 ? (int)left : 1) : idle, &c, err, errsize);
    sbuf_free(&path);
    if (rc < 0)
        return first ? -CLI_EXIT_UNREACHABLE : 0;
    int status = cli_http_head(c)->status;
    if (status != 200) {
        struct sbuf body = {0};
        char buf[4096];
        long n;
        while ((n = cli_http_read(c, buf, sizeof(buf), 2000, err, errsize)) > 0)
            sbuf_add(&body, buf, (size_t)n);
        cli_http_close(c);
        /* overloaded or draining: try again later; anything else is an answer */
        if (status == 503 || status == 502 || status == 504) {
            snprintf(err, errsize, "the server answered %d", status);
            sbuf_free(&body);
            return 0;
        }
        rc = refused(t, status, body.data ? body.data : "", body.len);
        sbuf_free(&body);
        return -rc;
    }
    s->line.len = s->ev_data.len = 0;
    s->ev_id[0] = '\0';
    s->reconnect_asked = false;
    char buf[16384];
    for (;;) {
        left = deadline_ms - (int64_t)now_ms();
        if (left <= 0)
            break;
        long n = cli_http_read(c, buf, sizeof(buf), left < idle ? (int)left : idle, err, errsize);
        if (n <= 0) {
            if (n == 0)
                snprintf(err, errsize, "the server ended the stream");
            break;
        }
        for (long i = 0; i < n; i++) {
            if (buf[i] != '\n') {
                sbuf_add(&s->line, &buf[i], 1);
                continue;
            }
            sbuf_add(&s->line, "", 0);
            int done = sub_line(s, s->line.data ? s->line.data : (char *)"", s->line.len);
            s->line.len = 0;
            if (done) {
                cli_http_close(c);
                return 1;
            }
        }
    }
    cli_http_close(c);
    return 0;
}

static int cmd_sub(struct opts *o)
{
    struct target t;
    int rc = resolve(&t, o, NULL);
    if (rc)
        return rc;
    struct sub_state s = {.o = o};
    if (o->since)
        snprintf(s.cursor, sizeof(s.cursor), "%s", o->since);
    if (o->count) {
        char *end;
        s.count = strtol(o->count, &end, 10);
        if (*end || s.count < 1)
            return usage_error("--count is a number of messages, 1 or more");
    }
    if (o->token && strpbrk(o->token, "\r\n"))
        return usage_error("--token must be one line");
    struct sbuf channels = {0}; /* CHANNEL… joined with commas: the server's list */
    for (int i = 0; i < o->nargs; i++)
        sbuf_printf(&channels, "%s%s", i ? "," : "", o->args[i]);
    int64_t deadline = o->timeout ? (int64_t)now_ms() + t.timeout_ms : INT64_MAX / 2;
    char err[ERR_MAX];
    int backoff = 100;
    for (bool first = true;; first = false) {
        err[0] = '\0';
        int64_t started = (int64_t)now_ms();
        rc = sub_once(&s, &t, channels.data, deadline, first, err, sizeof(err));
        if (rc == 1 || rc < 0)
            break;
        if ((int64_t)now_ms() >= deadline)
            break;
        if (rc == 0 && first && err[0] && !s.reconnect_asked && s.got == 0 &&
            strstr(err, "cannot") == err) {
            rc = -CLI_EXIT_UNREACHABLE;
            break;
        }
        /* a connection that lived a while starts the backoff over */
        if ((int64_t)now_ms() - started > 10000 || s.reconnect_asked)
            backoff = 100;
        int wait = s.reconnect_asked ? 0 : backoff / 2 + rand() % (backoff / 2 + 1);
        if (!s.reconnect_asked)
            fprintf(stderr, "%s sub: %s; reconnecting in %d ms from %s\n", prog,
                    err[0] ? err : "disconnected", wait, s.cursor[0] ? s.cursor : "now");
        backoff = backoff < 5000 ? backoff * 2 : 5000;
        int64_t until = (int64_t)now_ms() + wait;
        if (until > deadline)
            until = deadline;
        while ((int64_t)now_ms() < until)
            usleep(10000);
    }
    sbuf_free(&s.line);
    sbuf_free(&s.ev_data);
    sbuf_free(&channels);
    if (rc == -CLI_EXIT_UNREACHABLE)
        return unreachable(&t, err);
    if (rc < 0)
        return -rc;
    return rc == 0 && s.count > 0 ? CLI_EXIT_TIMEOUT : CLI_EXIT_OK;
}

/* ---- bench ----------------------------------------------------------------------------- */

static int cmd_bench(int argc, char **argv)
{
    char self[PATH_MAX], path[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        fprintf(stderr, "%s bench: cannot find herald's own path: %s\n", prog, strerror(errno));
        return CLI_EXIT_USAGE;
    }
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    snprintf(path, sizeof(path), "%s/herald-bench", self);
    argv[1] = path;
    execv(path, argv + 1);
    fprintf(stderr,
            "%s bench: cannot run %s: %s (herald bench runs the herald-bench next to herald; "
            "build it with `make`)\n",
            prog, path, strerror(errno));
    return CLI_EXIT_USAGE;
}

/* ---- the table ------------------------------------------------------------------------- */

static const struct opt_def opt_event = {
    .name = "event", .meta = "NAME", .help = "the message's event name (type)", .field = O(event)};
static const struct opt_def opt_type = {
    .name = "type",
    .meta = "TYPE",
    .help = "auto (JSON if DATA parses as JSON, else text), json, text, binary",
    .field = O(type)};
static const struct opt_def opt_token = {
    .name = "token", .meta = "JWT", .help = "subscriber token (herald token)", .field = O(token)};
static const struct opt_def opt_since = {.name = "since",
                                         .meta = "CURSOR",
                                         .help = "resume after this id (0: history)",
                                         .field = O(since)};
static const struct opt_def opt_count = {
    .name = "count", .meta = "N", .help = "exit after N messages", .field = O(count)};
static const struct opt_def opt_prefix = {
    .name = "prefix", .meta = "P", .help = "only channels starting with P", .field = O(prefix)};
static const struct opt_def opt_limit = {
    .name = "limit", .meta = "N", .help = "at most N in a page", .field = O(limit)};
static const struct opt_def opt_after = {.name = "after",
                                         .meta = "NAME",
                                         .help =
                                             "the page after NAME (the previous page's \"next\")",
                                         .field = O(after)};
static const struct opt_def opt_plan = {.name = "plan",
                                        .meta = "PLAN",
                                        .help = "create, update: the plan (apps plans)",
                                        .field = O(plan)};
static const struct opt_def opt_subscribe = {
    .name = "subscribe",
    .meta = "POLICY",
    .help = "create, update: token (subscribers need one) or public",
    .field = O(subscribe)};
static const struct opt_def opt_public = {
    .name = "public", .help = "create, update: --subscribe public", .field = O(public_)};
static const struct opt_def opt_settings = {
    .name = "settings",
    .meta = "JSON",
    .help = "create, update: settings to set, e.g. '{\"auto_create\":false}'",
    .field = O(settings)};
static const struct opt_def opt_secret = {.name = "secret",
                                          .meta = "SECRET",
                                          .help = "HS256 secret (HERALD_TOKEN_SECRET)",
                                          .field = O(secret)};
static const struct opt_def opt_sub = {
    .name = "sub", .meta = "USER", .help = "the user id (\"sub\")", .field = O(sub)};
static const struct opt_def opt_channels = {.name = "channels",
                                            .meta = "P,P…",
                                            .help = "may subscribe to (patterns)",
                                            .field = O(channels)};
static const struct opt_def opt_publish = {.name = "publish",
                                           .meta = "P,P…",
                                           .help = "may publish to over WebSocket",
                                           .field = O(publish)};
static const struct opt_def opt_info = {.name = "info",
                                        .meta = "JSON",
                                        .help = "what presence shows of the user (1 KiB at most)",
                                        .field = O(info)};
static const struct opt_def opt_ttl = {
    .name = "ttl", .meta = "DURATION", .help = "valid for (default 1h)", .field = O(ttl)};

static const struct command commands[] = {
    {"pub",
     "pub [OPTIONS] CHANNEL [DATA|-]",
     "Publishes DATA (or stdin) to CHANNEL and prints herald's answer ({\"id\":…}).",
     "HERALD_PUBLISH_URL",
     cmd_pub,
     1,
     2,
     {&opt_url, &opt_key, &opt_app, &opt_event, &opt_type, &opt_cacert, &opt_insecure, &opt_timeout,
      &opt_pretty}},
    {"sub",
     "sub [OPTIONS] CHANNEL[,CHANNEL…] [CHANNEL…]",
     "Subscribes and prints one JSON envelope per line, gap and closed events too.\n"
     "A dropped connection is resumed from the last id, with backoff.",
     "HERALD_URL",
     cmd_sub,
     1,
     8,
     {&opt_url, &opt_app, &opt_token, &opt_since, &opt_count, &opt_cacert, &opt_insecure,
      &opt_timeout, &opt_pretty}},
    {"channels",
     "channels [OPTIONS]",
     "Lists channels (GET /api/channels).",
     "HERALD_PUBLISH_URL",
     cmd_channels,
     0,
     0,
     {&opt_url, &opt_key, &opt_app, &opt_prefix, &opt_limit, &opt_after, &opt_cacert, &opt_insecure,
      &opt_timeout, &opt_pretty}},
    {"stats",
     "stats [OPTIONS]",
     "Prints herald's counters (GET /stats).",
     "HERALD_PUBLISH_URL",
     cmd_stats,
     0,
     0,
     {&opt_url, &opt_key, &opt_app, &opt_cacert, &opt_insecure, &opt_timeout, &opt_pretty}},
    {"apps",
     "apps list|plans|create NAME|show NAME|update NAME|delete NAME|rotate NAME|revoke NAME "
     "KEY [OPTIONS]",
     "Manages apps through the admin API (/admin/apps, /admin/plans).\n"
     "create (with a plan), list, show, update (plan, subscribe policy, settings), delete;\n"
     "rotate makes a new publish key (the old one works until revoked), revoke KEY ends one;\n"
     "plans lists the plans.",
     "HERALD_ADMIN_URL",
     cmd_apps,
     1,
     3,
     {&opt_url, &opt_admin, &opt_plan, &opt_subscribe, &opt_public, &opt_settings, &opt_limit,
      &opt_after, &opt_cacert, &opt_insecure, &opt_timeout, &opt_pretty}},
    {"token",
     "token [OPTIONS]",
     "Prints a subscriber token: an HS256 JWT signed with the secret.",
     NULL,
     cmd_token,
     0,
     0,
     {&opt_secret, &opt_sub, &opt_channels, &opt_publish, &opt_info, &opt_ttl}},
    {"bench",
     "bench [herald-bench OPTIONS]",
     "Runs herald-bench (docs/bench.md).",
     NULL,
     NULL,
     0,
     0,
     {NULL}},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

bool cli_handles(const char *arg)
{
    return arg[0] != '-'; /* the server takes no positional arguments */
}

void cli_print_commands(void *out)
{
    FILE *f = out;
    fprintf(f, "\nCommands: herald COMMAND [OPTION]... is a client of a running herald\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-10s %.*s\n", commands[i].name, (int)strcspn(commands[i].summary, "\n"),
                commands[i].summary);
    fprintf(f, "herald COMMAND --help (or herald help COMMAND) describes one; see docs/cli.md.\n");
}

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0)
            return &commands[i];
    return NULL;
}

static int unknown_command(const char *name)
{
    fprintf(stderr, "%s: unknown command \"%s\"\n", prog, name);
    cli_print_commands(stderr);
    fprintf(stderr, "Without a command herald runs the server (herald --help lists its "
                    "options).\n");
    return CLI_EXIT_USAGE;
}

int cli_main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)(now_ms() ^ (uint64_t)getpid()));
    cmd = find_command(argv[1]);
    if (!cmd && strcmp(argv[1], "help") != 0)
        return unknown_command(argv[1]);
    if (!cmd) { /* help [COMMAND] */
        if (argc < 3) {
            config_print_help(stdout);
            cli_print_commands(stdout);
            return CLI_EXIT_OK;
        }
        cmd = find_command(argv[2]);
        if (!cmd)
            return unknown_command(argv[2]);
        if (!cmd->run) { /* bench: herald-bench's own help */
            char *args[] = {argv[0], argv[2], (char *)"--help", NULL};
            return cmd_bench(3, args);
        }
        print_help(cmd);
        return CLI_EXIT_OK;
    }
    if (!cmd->run)
        return cmd_bench(argc, argv);
    struct opts o = {0};
    int rc = parse_opts(cmd, argc, argv, &o);
    if (rc)
        return rc;
    if (o.help) {
        print_help(cmd);
        return CLI_EXIT_OK;
    }
    return cmd->run(&o);
}
