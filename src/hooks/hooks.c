/*
 * hooks: the hooks thread and its HTTP client (libcurl's multi interface), the
 * signing of hook bodies, the bounds on what waits, and the counters. See hooks.h.
 *
 * Why a thread of its own rather than curl's sockets on each worker's epoll
 * loop: a worker's loop is edge-triggered and registers every descriptor once,
 * while libcurl asks for level-triggered interest it changes per transfer;
 * one thread driving curl_multi_poll keeps one connection pool per backend for
 * the whole process (not one per worker), and the answer's way back already
 * exists (the worker's inbox, as the Redis backend's answers take). The cost is
 * one eventfd wake-up per answer.
 */
#include "hooks/hooks.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "core/map.h"
#include "core/util.h"
#include "hub/hub.h"

#define HOOK_ANSWER_MAX (64u * 1024u)
#define RETRY_BASE_MS   200u
#define RETRY_MAX_MS    5000u

static const char *const event_names[HOOK_EVENTS] = {"connect", "subscribe", "publish", "rpc",
                                                     "disconnect"};

const char hooks_setting_names[] = "webhook_url, webhook_secret, webhook_events, "
                                   "webhook_timeout_ms, webhook_retries, webhook_fail_open";

struct origin {
    struct map_node node;
    char key[HOOK_URL_MAX]; /* scheme://authority of the backend's URL */
    uint32_t busy;          /* rpc and notifications curl has */
    uint32_t n_waiting;
    struct list waiting; /* struct job (wait), oldest first */
};

struct job {
    struct job *next; /* the submit queue, or the retry list */
    struct hook_target *t;
    enum hook_event ev;
    char *body;
    size_t body_len;
    int w;
    hook_done_fn done; /* NULL: a notification */
    void *arg;
    uint32_t attempt;
    uint64_t due_ms; /* a retry: when (monotonic) */
    uint64_t started_ms;
    struct list active; /* in H.active while curl has it */
    struct origin *o;   /* an rpc or notification: its backend's share (hooks thread) */
    bool holds;         /* it holds one of o's share while curl has it */
    struct list wait;   /* in o->waiting while the share is full */
    uint64_t queued_ms; /* when it began to wait there */
    uint32_t waited_ms; /* how long its attempt waited there (its timeout counts it) */
    bool has_addr;      /* counted against its client's address (--hook-queue-ip) */
    uint8_t addr[16];
    CURL *easy;
    struct curl_slist *hdrs;
    char *resp;
    size_t resp_len;
    bool resp_over;
    char errbuf[CURL_ERROR_SIZE];
    struct hook_result res;
};

static struct {
    struct hub *hub;
    const struct herald_config *cfg;
    struct hook_target *default_target;
    struct hook_target *(*app_target)(struct hub_tenant *t);
    pthread_t thread;
    bool started;
    CURLM *multi;
    pthread_mutex_t lock; /* submit queue and stop */
    struct job *queue, **queue_tail;
    bool stop;
    struct job *retries; /* hooks thread only */
    struct list active;  /* jobs curl has (hooks thread only) */
    struct map origins;  /* struct origin by backend (hooks thread only) */
    atomic_uint pending; /* every job not yet completed */
    pthread_mutex_t addr_lock;
    struct map addrs; /* struct addr_count by client address: calls waiting */
    atomic_uint_fast64_t conn_seq;
    /* counters */
    atomic_uint_fast64_t sent[HOOK_EVENTS];
    atomic_uint_fast64_t ok, timeouts, http_errors, unreachable, bad_answers, retried, dropped,
        refused;
} H = {.lock = PTHREAD_MUTEX_INITIALIZER, .addr_lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- targets and settings ------------------------------------------------------------ */

const char *hook_event_name(enum hook_event ev)
{
    return ev < HOOK_EVENTS ? event_names[ev] : "?";
}

static long event_bit(const char *s, size_t n)
{
    for (int i = 0; i < HOOK_EVENTS; i++)
        if (strlen(event_names[i]) == n && memcmp(event_names[i], s, n) == 0)
            return 1L << i;
    return -1;
}

long hook_events_parse(const char *list)
{
    long mask = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n) {
            long b = event_bit(p, n);
            if (b < 0)
                return -1;
            mask |= b;
        }
        p += n + (e ? 1 : 0);
    }
    return mask;
}

void hooks_default_settings(struct hook_settings *s)
{
    memset(s, 0, sizeof(*s));
    s->events = HOOK_ALL_EVENTS;
    s->timeout_ms = H.cfg ? H.cfg->webhook_timeout_ms : 2000;
    s->retries = H.cfg ? H.cfg->webhook_retries : 2;
}

struct hook_target *hook_target_new(const struct hook_settings *s, const char *fallback_secret)
{
    struct hook_target *t = xcalloc(1, sizeof(*t));
    atomic_init(&t->refs, 1);
    t->s = *s;
    snprintf(t->key, sizeof(t->key), "%s",
             s->secret[0]      ? s->secret
             : fallback_secret ? fallback_secret
                               : "");
    return t;
}

void hook_target_get(struct hook_target *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void hook_target_put(struct hook_target *t)
{
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        free(t);
}

void hooks_set_app_target(struct hook_target *(*fn)(struct hub_tenant *t))
{
    H.app_target = fn;
}

struct hook_target *hooks_target_of(struct hub_tenant *t)
{
    if (t)
        return H.app_target ? H.app_target(t) : NULL;
    if (H.default_target)
        hook_target_get(H.default_target);
    return H.default_target;
}

bool hooks_is_setting(const char *key)
{
    return strncmp(key, "webhook_", 8) == 0 &&
           (strcmp(key + 8, "url") == 0 || strcmp(key + 8, "secret") == 0 ||
            strcmp(key + 8, "events") == 0 || strcmp(key + 8, "timeout_ms") == 0 ||
            strcmp(key + 8, "retries") == 0 || strcmp(key + 8, "fail_open") == 0);
}

/* Why url cannot be a backend's (NULL: it can). */
static const char *url_problem(const char *url, size_t len)
{
    if (len >= HOOK_URL_MAX)
        return "a URL under 512 bytes";
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return "an http:// or https:// URL, e.g. http://127.0.0.1:9000/herald";
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)url[i] <= ' ' || url[i] == 0x7f)
            return "a URL without blanks or control characters";
    return NULL;
}

int hooks_settings_from_json(struct hook_settings *s, json_t *o, char *err, size_t errlen)
{
    struct hook_settings d;
    hooks_default_settings(&d);
    json_t *v;
    if ((v = json_object_get(o, "webhook_url"))) {
        const char *why = json_is_null(v) ? NULL
                          : json_is_string(v)
                              ? url_problem(json_string_value(v), json_string_length(v))
                              : "an http:// or https:// URL, or null";
        if (why) {
            snprintf(err, errlen, "\"webhook_url\" is %s", why);
            return -1;
        }
        snprintf(s->url, sizeof(s->url), "%s", json_is_null(v) ? "" : json_string_value(v));
    }
    if ((v = json_object_get(o, "webhook_secret")) && json_is_true(v))
        v = NULL; /* true: keep it (what a reader without the secrets sees) */
    if (v) {
        if (!json_is_null(v) && (!json_is_string(v) || json_string_length(v) == 0 ||
                                 json_string_length(v) >= HOOK_SECRET_MAX)) {
            snprintf(err, errlen,
                     "\"webhook_secret\" is a string of 1-255 bytes, null (sign with the "
                     "app's token secret) or true (keep it)");
            return -1;
        }
        snprintf(s->secret, sizeof(s->secret), "%s", json_is_null(v) ? "" : json_string_value(v));
    }
    if ((v = json_object_get(o, "webhook_events"))) {
        uint32_t mask = 0;
        size_t i;
        json_t *e;
        if (json_is_null(v))
            mask = d.events;
        else if (!json_is_array(v))
            mask = UINT32_MAX;
        else
            json_array_foreach(v, i, e)
            {
                long b =
                    json_is_string(e) ? event_bit(json_string_value(e), json_string_length(e)) : -1;
                if (b < 0) {
                    mask = UINT32_MAX;
                    break;
                }
                mask |= (uint32_t)b;
            }
        if (mask == UINT32_MAX) {
            snprintf(err, errlen,
                     "\"webhook_events\" is a list of connect, subscribe, publish, "
                     "rpc, disconnect (or null: all of them)");
            return -1;
        }
        s->events = mask;
    }
    if ((v = json_object_get(o, "webhook_timeout_ms"))) {
        if (!json_is_null(v) &&
            (!json_is_integer(v) || json_integer_value(v) < 10 || json_integer_value(v) > 60000)) {
            snprintf(err, errlen,
                     "\"webhook_timeout_ms\" is a whole number from 10 to 60000, or "
                     "null");
            return -1;
        }
        s->timeout_ms = json_is_null(v) ? d.timeout_ms : (uint32_t)json_integer_value(v);
    }
    if ((v = json_object_get(o, "webhook_retries"))) {
        if (!json_is_null(v) &&
            (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 10)) {
            snprintf(err, errlen, "\"webhook_retries\" is a whole number from 0 to 10, or null");
            return -1;
        }
        s->retries = json_is_null(v) ? d.retries : (uint32_t)json_integer_value(v);
    }
    if ((v = json_object_get(o, "webhook_fail_open"))) {
        if (!json_is_null(v) && !json_is_boolean(v)) {
            snprintf(err, errlen, "\"webhook_fail_open\" is true, false or null");
            return -1;
        }
        s->fail_open = json_is_true(v);
    }
    return 0;
}

void hooks_settings_to_json(const struct hook_settings *s, json_t *o, bool with_secret)
{
    json_object_set_new(o, "webhook_url", s->url[0] ? json_string(s->url) : json_null());
    json_object_set_new(o, "webhook_secret",
                        !s->secret[0] ? json_null()
                        : with_secret ? json_string(s->secret)
                                      : json_true());
    json_t *ev = json_array();
    for (int i = 0; i < HOOK_EVENTS; i++)
        if (s->events & (1u << i))
            json_array_append_new(ev, json_string(event_names[i]));
    json_object_set_new(o, "webhook_events", ev);
    json_object_set_new(o, "webhook_timeout_ms", json_integer(s->timeout_ms));
    json_object_set_new(o, "webhook_retries", json_integer(s->retries));
    json_object_set_new(o, "webhook_fail_open", json_boolean(s->fail_open));
}

uint64_t hooks_next_conn_id(void)
{
    return atomic_fetch_add_explicit(&H.conn_seq, 1, memory_order_relaxed);
}

/* ---- calls per client address ----------------------------------------------------------- */

struct addr_count {
    struct map_node node;
    uint8_t addr[16];
    uint32_t n;
};

/* Counts one call of the client at addr (NULL: not counted); false at --hook-queue-ip. */
static bool addr_take(const uint8_t *addr)
{
    uint32_t max = H.cfg->hook_queue_ip;
    if (!addr || !max)
        return true;
    pthread_mutex_lock(&H.addr_lock);
    struct map_node *n = map_get(&H.addrs, (const char *)addr, 16);
    struct addr_count *a = n ? container_of(n, struct addr_count, node) : NULL;
    if (!a) {
        a = xcalloc(1, sizeof(*a));
        memcpy(a->addr, addr, 16);
        a->node.key = (const char *)a->addr;
        a->node.key_len = 16;
        map_put(&H.addrs, &a->node);
    }
    bool room = a->n < max;
    a->n += room;
    pthread_mutex_unlock(&H.addr_lock);
    return room;
}

static void addr_release(const uint8_t *addr)
{
    pthread_mutex_lock(&H.addr_lock);
    struct map_node *n = map_get(&H.addrs, (const char *)addr, 16);
    struct addr_count *a = container_of(n, struct addr_count, node);
    if (--a->n == 0) {
        map_del(&H.addrs, n);
        free(a);
    }
    pthread_mutex_unlock(&H.addr_lock);
}

const char *hook_refusal(int rc)
{
    return rc == HOOK_ADDR_FULL
               ? "too many hook calls of your address wait for the backend (--hook-queue-ip); "
                 "retry once they are answered"
           : rc == HOOK_RPC_FULL
               ? "too many rpc calls wait for the backend (they may fill three quarters of "
                 "--hook-queue and --hook-queue-app); retry later"
               : "too many hook calls wait for the backend (--hook-queue, --hook-queue-app); "
                 "retry later";
}

/* What rpc calls may take of a bound of n (of connections: notifications too): all but a
 * quarter, and at least one left to the others once n is 2 or more. */
static uint32_t rpc_part(uint32_t n)
{
    return n < 2 ? 1 : n - MAX(n / 4, 1u);
}

/* What calls of event ev may fill of a queue bound of max: rpc three quarters of it, so that
 * connect, subscribe and the notifications still find room during an rpc flood. */
static uint32_t queue_bound(enum hook_event ev, uint32_t max)
{
    return ev == HOOK_RPC ? rpc_part(max) : max;
}

/* ---- jobs ----------------------------------------------------------------------------- */

/* The job's attempt leaves curl (if it has one). */
static void job_detach(struct job *j)
{
    if (list_linked(&j->active))
        list_remove(&j->active);
    if (list_linked(&j->wait))
        list_remove(&j->wait);
    if (j->holds)
        j->o->busy--;
    j->holds = false;
    if (j->easy) {
        curl_multi_remove_handle(H.multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
    }
}

/* A completed job (job_complete detached it). */
static void job_free(struct job *j)
{
    curl_slist_free_all(j->hdrs);
    json_decref(j->res.answer);
    hook_target_put(j->t);
    free(j->body);
    free(j->resp);
    free(j);
}

/* On the worker that called: the answer, then the job goes. */
static void job_answer(void *arg)
{
    struct job *j = arg;
    j->done(j->arg, &j->res);
    job_free(j);
}

/* The job is over (no more attempts): counted, then answered on its worker. Hooks
 * thread, or hooks_stop after it ended. */
static void job_complete(struct job *j)
{
    atomic_fetch_sub(&j->t->pending, 1);
    atomic_fetch_sub(&H.pending, 1);
    if (j->has_addr)
        addr_release(j->addr);
    switch (j->res.status) {
    case HOOK_OK: atomic_fetch_add_explicit(&H.ok, 1, memory_order_relaxed); break;
    case HOOK_TIMEOUT: atomic_fetch_add_explicit(&H.timeouts, 1, memory_order_relaxed); break;
    case HOOK_HTTP_STATUS:
        atomic_fetch_add_explicit(&H.http_errors, 1, memory_order_relaxed);
        break;
    case HOOK_UNREACHABLE:
        atomic_fetch_add_explicit(&H.unreachable, 1, memory_order_relaxed);
        break;
    case HOOK_BAD_ANSWER: atomic_fetch_add_explicit(&H.bad_answers, 1, memory_order_relaxed); break;
    default: break;
    }
    if (j->res.status != HOOK_OK && j->res.status != HOOK_STOPPED)
        log_warn("hook %s to %s failed: %s", event_names[j->ev], j->t->s.url, j->res.detail);
    job_detach(j);
    if (j->done)
        hub_post(H.hub, j->w, job_answer, j);
    else
        job_free(j);
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct job *j = arg;
    size_t len = size * n;
    if (j->resp_len + len > HOOK_ANSWER_MAX) {
        j->resp_over = true;
        return 0; /* aborts the transfer (CURLE_WRITE_ERROR) */
    }
    j->resp = xrealloc(j->resp, j->resp_len + len + 1);
    memcpy(j->resp + j->resp_len, p, len);
    j->resp_len += len;
    return len;
}

static void sign(const struct job *j, char out[7 + 64 + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    const char *key = j->t->key;
    HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)j->body, j->body_len, md,
         &mdlen);
    memcpy(out, "sha256=", 7);
    for (unsigned int i = 0; i < mdlen && i < 32; i++)
        snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
}

/* Hooks thread: hands the job's next attempt to curl. */
static void job_start(struct job *j)
{
    char sig[7 + 64 + 1], line[128];
    j->attempt++;
    j->started_ms = now_ms();
    j->resp_len = 0;
    j->resp_over = false;
    j->errbuf[0] = '\0';
    curl_slist_free_all(j->hdrs);
    j->hdrs = NULL;
    j->hdrs = curl_slist_append(j->hdrs, "Content-Type: application/json");
    j->hdrs = curl_slist_append(j->hdrs, "Expect:"); /* no 100-continue round trip */
    snprintf(line, sizeof(line), "X-Herald-Event: %s", event_names[j->ev]);
    j->hdrs = curl_slist_append(j->hdrs, line);
    snprintf(line, sizeof(line), "X-Herald-Timestamp: %" PRIu64, wall_ms() / 1000);
    j->hdrs = curl_slist_append(j->hdrs, line);
    sign(j, sig);
    snprintf(line, sizeof(line), "X-Herald-Signature: %s", sig);
    j->hdrs = curl_slist_append(j->hdrs, line);
    if (j->attempt > 1) {
        snprintf(line, sizeof(line), "X-Herald-Attempt: %u", j->attempt);
        j->hdrs = curl_slist_append(j->hdrs, line);
    }
    CURL *e = curl_easy_init();
    if (!e)
        abort(); /* out of memory */
    j->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, j->t->s.url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)j->body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->hdrs);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(j->t->s.timeout_ms - j->waited_ms));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)j->t->s.timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "herald-hooks");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    atomic_fetch_add_explicit(&H.sent[j->ev], 1, memory_order_relaxed);
    list_insert_tail(&H.active, &j->active);
    curl_multi_add_handle(H.multi, e);
}

static void attempt_over(struct job *j);
static void job_begin(struct job *j);

/* Hooks thread: an attempt ended with code; the job is retried or completed. */
static void job_ended(struct job *j, CURLcode code)
{
    struct hook_result *r = &j->res;
    long status = 0;
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
    r->http_status = status;
    r->elapsed_ms = now_ms() - j->started_ms;
    json_decref(r->answer);
    r->answer = NULL;
    if (code == CURLE_OPERATION_TIMEDOUT) {
        r->status = HOOK_TIMEOUT;
        long sent = 0;
        curl_easy_getinfo(j->easy, CURLINFO_REQUEST_SIZE, &sent);
        if (!sent)
            snprintf(r->detail, sizeof(r->detail),
                     "timeout after %u ms, not sent: no connection to the backend became free "
                     "or opened in time (--hook-connections)",
                     j->t->s.timeout_ms);
        else if (j->waited_ms)
            snprintf(r->detail, sizeof(r->detail),
                     "timeout after %u ms, %u of them waiting for a connection to the backend "
                     "(--hook-connections)",
                     j->t->s.timeout_ms, j->waited_ms);
        else
            snprintf(r->detail, sizeof(r->detail), "timeout after %u ms", j->t->s.timeout_ms);
    } else if (code == CURLE_WRITE_ERROR && j->resp_over) {
        r->status = HOOK_BAD_ANSWER;
        snprintf(r->detail, sizeof(r->detail), "the answer is over %u bytes", HOOK_ANSWER_MAX);
    } else if (code != CURLE_OK) {
        r->status = HOOK_UNREACHABLE;
        snprintf(r->detail, sizeof(r->detail), "cannot reach the backend: %.150s",
                 j->errbuf[0] ? j->errbuf : curl_easy_strerror(code));
    } else if (status < 200 || status > 299) {
        r->status = HOOK_HTTP_STATUS;
        snprintf(r->detail, sizeof(r->detail), "the backend answered HTTP %ld", status);
    } else if (j->resp_len) {
        json_error_t je;
        r->answer = json_loadb(j->resp, j->resp_len, 0, &je);
        if (!json_is_object(r->answer)) {
            json_decref(r->answer);
            r->answer = NULL;
            r->status = HOOK_BAD_ANSWER;
            snprintf(r->detail, sizeof(r->detail), "the backend's answer is not a JSON object");
        } else {
            r->status = HOOK_OK;
        }
    } else {
        r->status = HOOK_OK;
    }
    attempt_over(j);
}

/* Hooks thread: the attempt's result is in j->res; the job is retried or completed. */
static void attempt_over(struct job *j)
{
    struct hook_result *r = &j->res;
    bool again = !j->done && j->attempt <= j->t->s.retries &&
                 (r->status == HOOK_TIMEOUT || r->status == HOOK_UNREACHABLE ||
                  (r->status == HOOK_HTTP_STATUS && r->http_status >= 500));
    if (!again)
        return job_complete(j);
    job_detach(j);
    uint32_t delay = RETRY_BASE_MS << MIN(j->attempt - 1, 8u);
    j->due_ms = now_ms() + MIN(delay, RETRY_MAX_MS);
    atomic_fetch_add_explicit(&H.retried, 1, memory_order_relaxed);
    j->next = H.retries;
    H.retries = j;
}

/* Hooks thread: starts the retries that are due; returns ms until the next one (-1). */
static long run_retries(void)
{
    uint64_t now = now_ms();
    long next = -1;
    struct job **pp = &H.retries;
    while (*pp) {
        struct job *j = *pp;
        if (j->due_ms <= now) {
            *pp = j->next;
            j->next = NULL;
            job_begin(j);
            continue;
        }
        long in = (long)(j->due_ms - now);
        next = next < 0 ? in : MIN(next, in);
        pp = &j->next;
    }
    return next;
}

/* ---- a backend's connections: what rpc and notifications may hold -------------------------- */

/*
 * curl keeps at most --hook-connections connections to one backend (host and port) and
 * queues the rest of the requests. rpc calls and notifications (publish, disconnect) may
 * hold only rpc_share() of them at once: the others are kept for connect and subscribe,
 * which a client waits on to get in. An rpc or notification past its share waits here
 * (in order) instead of in curl, and never longer than its timeout: then it ends as a
 * timeout that says it was never sent.
 */

static bool gating(enum hook_event ev)
{
    return ev == HOOK_CONNECT || ev == HOOK_SUBSCRIBE;
}

/* The connections of one backend that rpc and notifications may hold at once. */
static uint32_t rpc_share(void)
{
    return rpc_part(H.cfg->hook_connections);
}

static struct origin *origin_of(const char *url)
{
    const char *host = strstr(url, "://");
    size_t len = host ? (size_t)(host + 3 - url) + strcspn(host + 3, "/?#") : strlen(url);
    struct map_node *n = map_get(&H.origins, url, len);
    if (n)
        return container_of(n, struct origin, node);
    struct origin *o = xcalloc(1, sizeof(*o));
    memcpy(o->key, url, len);
    list_init(&o->waiting);
    o->node.key = o->key;
    o->node.key_len = (uint32_t)len;
    map_put(&H.origins, &o->node);
    return o;
}

static void job_start(struct job *j);

/* Hooks thread: the job's next attempt goes to curl, or waits for its backend's share. */
static void job_begin(struct job *j)
{
    if (gating(j->ev))
        return job_start(j);
    struct origin *o = j->o = origin_of(j->t->s.url); /* (it may have gone while idle) */
    j->waited_ms = 0;
    if (o->busy < rpc_share() && list_empty(&o->waiting)) {
        o->busy++;
        j->holds = true;
        return job_start(j);
    }
    j->queued_ms = now_ms();
    list_insert_tail(&o->waiting, &j->wait);
    o->n_waiting++;
}

/* Hooks thread: starts what waited and now fits each backend's share, ends what waited past
 * its timeout, forgets idle backends; returns ms until the next of those timeouts (-1).
 * stopping (hooks_stop, after the thread ended and curl's jobs did): ends every job that
 * waits, and forgets every backend. */
static long run_origins(bool stopping)
{
    uint64_t now = now_ms();
    long next = -1;
    size_t bucket = 0;
    struct map_node *n, *tmp = NULL;
    while ((n = map_next(&H.origins, &bucket, &tmp))) {
        struct origin *o = container_of(n, struct origin, node);
        while (!list_empty(&o->waiting)) {
            struct job *j = container_of(o->waiting.next, struct job, wait);
            uint64_t due = j->queued_ms + j->t->s.timeout_ms;
            if (stopping) {
                list_remove(&j->wait);
                o->n_waiting--;
                j->res.status = HOOK_STOPPED;
                snprintf(j->res.detail, sizeof(j->res.detail), "the server is stopping");
                job_complete(j);
            } else if (due > now && o->busy < rpc_share()) {
                list_remove(&j->wait);
                o->n_waiting--;
                o->busy++;
                j->holds = true;
                j->waited_ms = (uint32_t)(now - j->queued_ms);
                job_start(j);
            } else if (due <= now) {
                list_remove(&j->wait);
                o->n_waiting--;
                j->attempt++;
                j->res.status = HOOK_TIMEOUT;
                j->res.http_status = 0;
                j->res.elapsed_ms = now - j->queued_ms;
                snprintf(j->res.detail, sizeof(j->res.detail),
                         "not sent: waited %" PRIu64 " ms for a connection to the backend (rpc "
                         "calls and notifications hold the %u of its --hook-connections they may "
                         "use; %u more wait)",
                         now - j->queued_ms, o->busy, o->n_waiting);
                attempt_over(j);
            } else {
                long in = (long)(due - now);
                next = next < 0 ? in : MIN(next, in);
                break;
            }
        }
        if (stopping || (!o->busy && list_empty(&o->waiting))) {
            map_del(&H.origins, n);
            free(o);
        }
    }
    return next;
}

static void *hooks_main(void *arg)
{
    for (;;) {
        pthread_mutex_lock(&H.lock);
        struct job *q = H.queue;
        H.queue = NULL;
        H.queue_tail = &H.queue;
        bool stop = H.stop;
        pthread_mutex_unlock(&H.lock);
        while (q) {
            struct job *j = q;
            q = q->next;
            j->next = NULL;
            if (stop) {
                j->res.status = HOOK_STOPPED;
                snprintf(j->res.detail, sizeof(j->res.detail), "the server is stopping");
                job_complete(j);
            } else {
                job_begin(j);
            }
        }
        if (stop)
            break;
        long retry_in = run_retries();
        int running = 0;
        curl_multi_perform(H.multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(H.multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            struct job *j = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
            job_ended(j, m->data.result);
        }
        long origins_in = run_origins(false);
        long wait = 1000;
        curl_multi_timeout(H.multi, &wait);
        if (wait < 0 || wait > 1000)
            wait = 1000;
        if (retry_in >= 0)
            wait = MIN(wait, retry_in);
        if (origins_in >= 0)
            wait = MIN(wait, origins_in);
        curl_multi_poll(H.multi, NULL, 0, (int)wait, NULL);
    }
    return NULL;
}

/* ---- calls ----------------------------------------------------------------------------- */

/* Queues a job (counted against addr unless NULL): 0, or HOOK_QUEUE_FULL / HOOK_RPC_FULL /
 * HOOK_ADDR_FULL when a bound is reached (nothing queued, body not taken). */
static int submit(struct hook_target *t, enum hook_event ev, json_t *body, int w, hook_done_fn done,
                  void *arg, const uint8_t *addr)
{
    if (!H.started)
        return HOOK_QUEUE_FULL;
    int full = ev == HOOK_RPC ? HOOK_RPC_FULL : HOOK_QUEUE_FULL;
    if (atomic_fetch_add(&t->pending, 1) >= queue_bound(ev, H.cfg->hook_queue_app)) {
        atomic_fetch_sub(&t->pending, 1);
        return full;
    }
    if (atomic_fetch_add(&H.pending, 1) >= queue_bound(ev, H.cfg->hook_queue)) {
        atomic_fetch_sub(&H.pending, 1);
        atomic_fetch_sub(&t->pending, 1);
        return full;
    }
    if (!addr_take(addr)) {
        atomic_fetch_sub(&H.pending, 1);
        atomic_fetch_sub(&t->pending, 1);
        return HOOK_ADDR_FULL;
    }
    struct job *j = xcalloc(1, sizeof(*j));
    list_init(&j->active);
    list_init(&j->wait);
    hook_target_get(t);
    j->t = t;
    j->ev = ev;
    j->body = json_dumps(body, JSON_COMPACT);
    j->body_len = strlen(j->body);
    j->w = w;
    j->done = done;
    j->arg = arg;
    if (addr) {
        j->has_addr = true;
        memcpy(j->addr, addr, 16);
    }
    pthread_mutex_lock(&H.lock);
    bool stopped = H.stop;
    if (!stopped) {
        *H.queue_tail = j;
        H.queue_tail = &j->next;
    }
    pthread_mutex_unlock(&H.lock);
    if (stopped) {
        j->done = NULL;
        j->res.status = HOOK_STOPPED;
        job_complete(j); /* releases its counts, then frees it */
        return HOOK_QUEUE_FULL;
    }
    curl_multi_wakeup(H.multi);
    return 0;
}

int hook_call(struct hook_target *t, int w, enum hook_event ev, json_t *body, hook_done_fn done,
              void *arg, const uint8_t *addr)
{
    int rc = submit(t, ev, body, w, done, arg, addr);
    json_decref(body);
    if (rc)
        atomic_fetch_add_explicit(&H.refused, 1, memory_order_relaxed);
    return rc;
}

void hook_notify(struct hook_target *t, enum hook_event ev, json_t *body)
{
    if (submit(t, ev, body, -1, NULL, NULL, NULL)) {
        atomic_fetch_add_explicit(&H.dropped, 1, memory_order_relaxed);
        log_debug("hook %s to %s dropped: %u calls wait (--hook-queue, --hook-queue-app)",
                  event_names[ev], t->s.url, atomic_load(&H.pending));
    }
    json_decref(body);
}

/* ---- life ------------------------------------------------------------------------------ */

int hooks_init(struct hub *hub, const struct herald_config *cfg)
{
    H.hub = hub;
    H.cfg = cfg;
    H.queue_tail = &H.queue;
    list_init(&H.active);
    map_init(&H.addrs, 64);
    map_init(&H.origins, 8);
    atomic_store(&H.conn_seq, wall_us());
    if (cfg->webhook_url[0]) {
        struct hook_settings s;
        hooks_default_settings(&s);
        const char *why = url_problem(cfg->webhook_url, strlen(cfg->webhook_url));
        long ev = hook_events_parse(cfg->webhook_events);
        if (why) {
            fprintf(stderr, "herald: --webhook-url must be %s\n", why);
            return -1;
        }
        if (ev < 0) {
            fprintf(stderr, "herald: --webhook-events is a comma list of connect, subscribe, "
                            "publish, rpc, disconnect\n");
            return -1;
        }
        if (!cfg->webhook_secret[0] && !cfg->token_secret[0]) {
            fprintf(stderr, "herald: --webhook-url needs a key to sign hook calls with: set "
                            "--webhook-secret (or --token-secret, used when it is not set)\n");
            return -1;
        }
        snprintf(s.url, sizeof(s.url), "%s", cfg->webhook_url);
        snprintf(s.secret, sizeof(s.secret), "%s", cfg->webhook_secret);
        s.events = (uint32_t)ev;
        s.fail_open = cfg->webhook_fail_open;
        H.default_target = hook_target_new(&s, cfg->token_secret);
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "herald: libcurl did not initialise\n");
        return -1;
    }
    H.multi = curl_multi_init();
    curl_multi_setopt(H.multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)cfg->hook_connections);
    curl_multi_setopt(H.multi, CURLMOPT_MAXCONNECTS, (long)cfg->hook_connections * 4);
    if (pthread_create(&H.thread, NULL, hooks_main, NULL) != 0) {
        fprintf(stderr, "herald: cannot start the hooks thread\n");
        return -1;
    }
    H.started = true;
    return 0;
}

void hooks_stop(void)
{
    if (!H.started)
        return;
    pthread_mutex_lock(&H.lock);
    H.stop = true;
    pthread_mutex_unlock(&H.lock);
    curl_multi_wakeup(H.multi);
    pthread_join(H.thread, NULL);
    H.started = false;
    /* What curl still held, and the retries, end here. */
    for (struct job *j = H.retries, *next; j; j = next) {
        next = j->next;
        j->res.status = HOOK_STOPPED;
        snprintf(j->res.detail, sizeof(j->res.detail), "the server is stopping");
        job_complete(j);
    }
    H.retries = NULL;
    while (!list_empty(&H.active)) {
        struct job *j = container_of(H.active.next, struct job, active);
        j->res.status = HOOK_STOPPED;
        snprintf(j->res.detail, sizeof(j->res.detail), "the server is stopping");
        job_complete(j);
    }
    run_origins(true);
    map_free(&H.origins);
    curl_multi_cleanup(H.multi);
    H.multi = NULL;
    map_free(&H.addrs); /* empty: every call ended */
    hook_target_put(H.default_target);
    H.default_target = NULL;
    curl_global_cleanup();
}

/* ---- counters ---------------------------------------------------------------------------- */

void hooks_stats_json(struct sbuf *b)
{
    sbuf_adds(b, "\"hooks\":{\"sent\":{");
    for (int i = 0; i < HOOK_EVENTS; i++)
        sbuf_printf(b, "%s\"%s\":%" PRIuFAST64, i ? "," : "", event_names[i],
                    atomic_load(&H.sent[i]));
    sbuf_printf(b,
                "},\"ok\":%" PRIuFAST64 ",\"timeouts\":%" PRIuFAST64 ",\"http_errors\":%" PRIuFAST64
                ",\"unreachable\":%" PRIuFAST64 ",\"bad_answers\":%" PRIuFAST64
                ",\"retries\":%" PRIuFAST64 ",\"dropped\":%" PRIuFAST64 ",\"refused\":%" PRIuFAST64
                ",\"pending\":%u}",
                atomic_load(&H.ok), atomic_load(&H.timeouts), atomic_load(&H.http_errors),
                atomic_load(&H.unreachable), atomic_load(&H.bad_answers), atomic_load(&H.retried),
                atomic_load(&H.dropped), atomic_load(&H.refused), atomic_load(&H.pending));
}

void hooks_metrics(struct sbuf *b)
{
    sbuf_adds(b, "# HELP herald_hook_requests_total Hook requests sent to backends (attempts).\n"
                 "# TYPE herald_hook_requests_total counter\n");
    for (int i = 0; i < HOOK_EVENTS; i++)
        sbuf_printf(b, "herald_hook_requests_total{event=\"%s\"} %" PRIuFAST64 "\n", event_names[i],
                    atomic_load(&H.sent[i]));
    sbuf_adds(b, "# HELP herald_hook_results_total Hook calls by how they ended (after retries).\n"
                 "# TYPE herald_hook_results_total counter\n");
    const struct {
        const char *name;
        atomic_uint_fast64_t *v;
    } res[] = {{"ok", &H.ok},
               {"timeout", &H.timeouts},
               {"http_error", &H.http_errors},
               {"unreachable", &H.unreachable},
               {"bad_answer", &H.bad_answers}};
    for (size_t i = 0; i < ARRAY_LEN(res); i++)
        sbuf_printf(b, "herald_hook_results_total{result=\"%s\"} %" PRIuFAST64 "\n", res[i].name,
                    atomic_load(res[i].v));
    sbuf_printf(b,
                "# HELP herald_hook_retries_total Fire-and-forget hook attempts repeated after a "
                "failure.\n# TYPE herald_hook_retries_total counter\nherald_hook_retries_total "
                "%" PRIuFAST64 "\n",
                atomic_load(&H.retried));
    sbuf_printf(b,
                "# HELP herald_hook_dropped_total Hook notifications dropped: the queue was full.\n"
                "# TYPE herald_hook_dropped_total counter\nherald_hook_dropped_total %" PRIuFAST64
                "\n",
                atomic_load(&H.dropped));
    sbuf_printf(b,
                "# HELP herald_hook_refused_total Hook calls refused (the client got an error): "
                "a queue bound was reached.\n# TYPE herald_hook_refused_total counter\n"
                "herald_hook_refused_total %" PRIuFAST64 "\n",
                atomic_load(&H.refused));
    sbuf_printf(b,
                "# HELP herald_hook_pending Hook calls queued, in flight or waiting to retry.\n"
                "# TYPE herald_hook_pending gauge\nherald_hook_pending %u\n",
                atomic_load(&H.pending));
}
