/*
 * redis_backend: cluster mode. See redis_backend.h for the key layout.
 *
 * A publish is one Lua script per shard: it checks that the channels may be
 * published to, picks the id (max of the publisher's clock in µs and the last
 * id + 1: with one Redis the last id is global, so ids order every message of
 * the cluster; on a Redis Cluster it is per channel), appends to each
 * channel's Stream, trims it to its history size remembering the highest id
 * trimmed (gap detection), refreshes expiries and publishes on the channel's
 * bus channel — all atomically, before the publisher hears back. What a message
 * looks like in Redis is redis_payload.h's business.
 */
#include "cluster/redis_backend.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "cluster/cluster_map.h"
#include "cluster/redis_bus.h"
#include "cluster/redis_payload.h"
#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"

/* A node's subscriber counts (and its entry in herald:nodes) live this many heartbeats
 * (--cluster-heartbeat) after it wrote them. */
#define COUNT_TTL_BEATS 3

/* ---- scripts ----------------------------------------------------------------- */

/*
 * KEYS: [1] last-id key (string), [2] epoch key, then per channel: stream, options
 * and, on a single Redis, state. ARGV: [1] id hint, [2] payload, [3] auto-create
 * 1/0, [4] default history size, [5] default history ttl ms, [6] default channel
 * ttl ms, [7] now ms, [8] the publish verb, then the bus channel name of each
 * channel. Returns {id, subscribers}, or an error "NOTFOUND <index>".
 *
 * Every call a Lua script makes costs Redis about a microsecond on top of the
 * command, and this one runs for every publish: it makes nine for one channel.
 * The options hash holds the channel's last id, read with its options; each Stream
 * entry carries in field v the id of the channel's message before it, so XADD can
 * trim (MAXLEN) without reading what it drops: the highest id trimmed is the v of
 * the oldest entry left (load_lua). The state hash is only a deleted channel's
 * tombstone (its last id, so that a channel re-created under the name continues
 * the chain and old cursors get their gap). On a Redis Cluster (SPUBLISH: one
 * channel per call) the last-id key is the channel's own and outlives a delete,
 * so it is the tombstone, and the state hash is not passed: a key that does not
 * exist would make every publish wait (TRYAGAIN) while the slot migrates.
 *
 * The epoch key holds the first id of this Redis data set: a Redis that lost its
 * data (restarted without persistence) has none, and the next publish or load
 * sets it, so that older cursors are told about the gap (see load_lua).
 */
static const char publish_lua[] =
    "local cluster = ARGV[8] == 'SPUBLISH'\n"
    "local k = cluster and 2 or 3\n"
    "local n = (#KEYS - 2) / k\n"
    "local id = tonumber(ARGV[1])\n"
    "local last = redis.call('GET', KEYS[1])\n"
    "if last then id = math.max(id, tonumber(last) + 1) end\n"
    "local opts, prev = {}, {}\n"
    "for i = 1, n do\n"
    "  local o = KEYS[k*i - k + 4]\n"
    "  local opt = redis.call('HMGET', o, 'history_size', 'history_ttl', 'ttl', 'persistent',\n"
    "                         'created', 'last')\n"
    "  if not opt[5] and ARGV[3] == '0' and redis.call('EXISTS', o) == 0 then\n"
    "    return redis.error_reply('NOTFOUND ' .. (i - 1))\n"
    "  end\n"
    "  local p = opt[6] or (cluster and last) or\n"
    "            (not cluster and redis.call('HGET', KEYS[k*i - k + 5], 'last')) or '0'\n"
    "  id = math.max(id, tonumber(p) + 1)\n"
    "  opts[i], prev[i] = opt, p\n"
    "end\n"
    /* one Redis: an existing last id is at least the epoch - 1 (load_lua sees to it) */
    "local need_ep = cluster or not last\n"
    "local ep = need_ep and redis.call('GET', KEYS[2])\n"
    "if ep then id = math.max(id, tonumber(ep)) end\n"
    "local sid = string.format('%d', id)\n"
    "redis.call('SET', KEYS[1], sid)\n"
    "if need_ep and not ep then redis.call('SET', KEYS[2], sid) end\n"
    "local subs = 0\n"
    "for i = 1, n do\n"
    "  local h, o, opt = KEYS[k*i - k + 3], KEYS[k*i - k + 4], opts[i]\n"
    "  redis.call('XADD', h, 'MAXLEN', opt[1] or ARGV[4], sid .. '-0', 'p', ARGV[2], 'v', "
    "prev[i])\n"
    "  if opt[5] then\n"
    "    redis.call('HSET', o, 'active', ARGV[7], 'last', sid)\n"
    "  else\n"
    "    redis.call('HSET', o, 'created', ARGV[7], 'active', ARGV[7], 'last', sid)\n"
    "  end\n"
    "  if opt[4] ~= '1' then\n"
    "    local httl = tonumber(opt[2] or ARGV[5])\n"
    "    redis.call('PEXPIRE', o, math.max(tonumber(opt[3] or ARGV[6]), httl))\n"
    "    redis.call('PEXPIRE', h, httl)\n"
    "  end\n"
    "  subs = subs + redis.call(ARGV[8], ARGV[8 + i], sid .. ' ' .. ARGV[2])\n"
    "end\n"
    "return {sid, subs}\n";

/*
 * The first step of a publish to channels on several shards of a Redis Cluster,
 * run on each of them before anything is stored, so that the message gets one id
 * on every channel and a missing channel stops it everywhere.
 * KEYS: the channel's last-id key, epoch key, options. ARGV: [1] auto-create 1/0.
 * Returns the smallest id the channel can take, or "NOTFOUND ...".
 */
static const char prepare_lua[] = "if ARGV[1] == '0' and redis.call('EXISTS', KEYS[3]) == 0 then\n"
                                  "  return redis.error_reply('NOTFOUND no such channel')\n"
                                  "end\n"
                                  "local id = tonumber(redis.call('GET', KEYS[1]) or '0') + 1\n"
                                  "local ep = redis.call('GET', KEYS[2])\n"
                                  "if ep then id = math.max(id, tonumber(ep)) end\n"
                                  "return string.format('%d', id)\n";

/*
 * KEYS: stream, options, state, epoch, and on one Redis the last-id key. ARGV: [1]
 * after id (0: the newest), [2] auto-create 1/0, [3] default history size, [4] the
 * loading node's clock in us. Returns {evicted, history size, entries, history ttl
 * ms or ''} or "NOTFOUND ...".
 *
 * Loading writes nothing about the channel: a channel nobody published to or
 * created exists only while it has subscribers (its counts, `herald:{ch}:c`), so
 * subscribing to made-up names leaves nothing behind in Redis. The load reports
 * as evicted everything before this Redis data set's epoch (the one key it
 * writes, once per data set or slot, with on one Redis the last id raised to
 * just below it: publishes that find a last id do not read the epoch): a cursor
 * older than that may have missed messages Redis lost. A gap fill does not: the node's cache holds what it
 * followed live. Both report what Redis trimmed: up to the v of the oldest entry
 * (the first load reads the newest history-size; a gap fill looks at the oldest
 * one), the deleted channel's last id (state hash), or the channel's last id when
 * its whole Stream expired.
 */
static const char load_lua[] =
    "if ARGV[2] == '0' and redis.call('EXISTS', KEYS[2]) == 0 then\n"
    "  return redis.error_reply('NOTFOUND no such channel')\n"
    "end\n"
    "local opt = redis.call('HMGET', KEYS[2], 'history_size', 'history_ttl', 'last')\n"
    "local hs = tonumber(opt[1] or ARGV[3])\n"
    "local st = redis.call('HMGET', KEYS[3], 'evicted', 'last')\n"
    "local evicted = tonumber(st[1] or '0')\n"
    "local ep = redis.call('GET', KEYS[4])\n"
    "if not ep then\n"
    "  ep = ARGV[4]\n"
    "  redis.call('SET', KEYS[4], ep)\n"
    /* one Redis: publishes that find a last id take no epoch, so it must be below */
    "  if KEYS[5] and tonumber(redis.call('GET', KEYS[5]) or '0') < tonumber(ep) - 1 then\n"
    "    redis.call('SET', KEYS[5], string.format('%d', tonumber(ep) - 1))\n"
    "  end\n"
    "end\n"
    /* what was trimmed before an entry: the id of the message before it (field v) */
    "local function before(entry)\n"
    "  local f = entry[2]\n"
    "  for i = 1, #f - 1, 2 do\n"
    "    if f[i] == 'v' then return tonumber(f[i + 1]) or 0 end\n"
    "  end\n"
    "  return 0\n"
    "end\n"
    "local e\n"
    "if ARGV[1] == '0' then\n"
    "  e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', hs)\n"
    "  evicted = math.max(evicted, tonumber(ep) - 1)\n"
    "  if #e > 0 then evicted = math.max(evicted, before(e[#e])) end\n"
    "else\n"
    "  e = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-0', '+', 'COUNT', hs)\n"
    "  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)\n"
    "  if #first > 0 then evicted = math.max(evicted, before(first[1])) end\n"
    "end\n"
    "local last = opt[3] or st[2]\n"
    "if #e == 0 and last and redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  evicted = math.max(evicted, tonumber(last))\n" /* the whole Stream expired */
    "end\n"
    "return {string.format('%d', evicted), hs, e, opt[2] or ''}\n";

/*
 * KEYS: stream, options, state, counts. ARGV: [1] now ms, [2] mode (get|put|del),
 * [3] default channel ttl ms, [4] default history ttl ms, [5] bus channel,
 * [6] publish verb, [7..10] put: ttl, history_size, history_ttl, persistent
 * ('' = unchanged). Returns the channel's info as a flat list ({'deleted'} for del).
 * A channel nobody published to or created exists while nodes count subscribers
 * of it: `get` answers with their counts, `del` closes them.
 */
static const char chan_lua[] =
    "local h, o, s, c = KEYS[1], KEYS[2], KEYS[3], KEYS[4]\n"
    "local now = tonumber(ARGV[1])\n"
    "local exists = redis.call('EXISTS', o) == 1 or redis.call('EXISTS', h) == 1\n"
    "local created = 0\n"
    "local subs = 0\n"
    "local counts = redis.call('HGETALL', c)\n"
    "for i = 1, #counts, 2 do\n"
    "  local n, exp = string.match(counts[i + 1], '^(%d+) (%d+)$')\n"
    "  if n and tonumber(exp) > now then subs = subs + tonumber(n)\n"
    "  else redis.call('HDEL', c, counts[i]) end\n"
    "end\n"
    /* a channel nobody published to or created exists while nodes count subscribers */
    "if subs > 0 then exists = true end\n"
    "if ARGV[2] == 'del' then\n"
    "  if not exists then return redis.error_reply('NOTFOUND no such channel') end\n"
    "  local last = redis.call('HGET', o, 'last') or redis.call('HGET', s, 'last')\n"
    "  redis.call('DEL', h, o, c)\n"
    "  if last then\n" /* a channel re-created later still reports the gap */
    "    redis.call('HSET', s, 'evicted', last, 'last', last)\n"
    "    redis.call('PEXPIRE', s, 604800000)\n"
    "  end\n"
    "  redis.call(ARGV[6], ARGV[5], 'X closed')\n"
    "  return {'deleted'}\n"
    "end\n"
    "if ARGV[2] == 'put' then\n"
    "  if redis.call('EXISTS', o) == 0 then\n"
    "    redis.call('HSET', o, 'created', ARGV[1]); created = 1\n"
    "  end\n"
    "  local f = {'ttl', 'history_size', 'history_ttl', 'persistent'}\n"
    "  for i = 1, 4 do\n"
    "    if ARGV[6 + i] ~= '' then redis.call('HSET', o, f[i], ARGV[6 + i]) end\n"
    "  end\n"
    "  redis.call('HSET', o, 'active', ARGV[1])\n"
    "  exists = true\n"
    "end\n"
    "if not exists then return redis.error_reply('NOTFOUND no such channel') end\n"
    "local opt = redis.call('HMGET', o, 'ttl', 'history_size', 'history_ttl', 'persistent',\n"
    "                        'created', 'active')\n"
    "if ARGV[2] == 'put' then\n"
    "  if opt[4] == '1' then\n"
    "    redis.call('PERSIST', o); redis.call('PERSIST', s); redis.call('PERSIST', h)\n"
    "  else\n"
    "    local ttl = tonumber(opt[1] or ARGV[3])\n"
    "    redis.call('PEXPIRE', o, math.max(ttl, tonumber(opt[3] or ARGV[4])))\n"
    "  end\n"
    "end\n"
    "local len, first, last, added = 0, '0', '0', 0\n"
    "if redis.call('EXISTS', h) == 1 then\n"
    "  local info = redis.call('XINFO', 'STREAM', h)\n"
    "  for i = 1, #info, 2 do\n"
    "    if info[i] == 'length' then len = info[i + 1] end\n"
    "    if info[i] == 'entries-added' then added = info[i + 1] end\n"
    "    if info[i] == 'first-entry' and info[i + 1] then\n"
    "      first = string.match(info[i + 1][1], '^(%d+)') end\n"
    "    if info[i] == 'last-entry' and info[i + 1] then\n"
    "      last = string.match(info[i + 1][1], '^(%d+)') end\n"
    "  end\n"
    "end\n"
    "local pttl = redis.call('PTTL', o)\n"
    "return {created, opt[1] or '', opt[2] or '', opt[3] or '', opt[4] or '0', opt[5] or '0',\n"
    "        opt[6] or '0', subs, len, added, first, last, pttl}\n";

/* KEYS: the index. ARGV: [1] after ('' = from the start), [2] prefix, [3] max.
 * Returns {total (names with the prefix), names}. */
static const char list_lua[] =
    "local lo = ARGV[1] == '' and '-' or ('(' .. ARGV[1])\n"
    "if ARGV[2] ~= '' then\n"
    "  local p, hi = '[' .. ARGV[2], '[' .. ARGV[2] .. '\\255'\n"
    "  local total = redis.call('ZLEXCOUNT', KEYS[1], p, hi)\n"
    "  if ARGV[1] == '' or ARGV[2] > ARGV[1] then lo = p end\n"
    "  return {total, redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, ARGV[3])}\n"
    "end\n"
    "return {redis.call('ZCARD', KEYS[1]),\n"
    "        redis.call('ZRANGEBYLEX', KEYS[1], lo, '+', 'LIMIT', 0, ARGV[3])}\n";

/* KEYS: counts, options. ARGV: [1] node, [2] "<count> <expiry ms>", [3] counts ttl ms,
 * [4] default channel ttl ms, [5] now ms. The node's count; keeps a channel with
 * subscribers alive. */
static const char beat_lua[] =
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "if redis.call('HGET', KEYS[2], 'persistent') ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 "
    "then\n"
    "  local ttl = tonumber(redis.call('HGET', KEYS[2], 'ttl') or ARGV[4])\n"
    "  redis.call('HSET', KEYS[2], 'active', ARGV[5])\n"
    "  if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end\n"
    "end\n"
    "return 1\n";

/* ---- running scripts: EVALSHA, with EVAL when Redis lacks the script ---------------------- */

/*
 * EVAL sends the script's text with every call, and Redis hashes it (SHA1) every
 * time: for the publish script that was a third of its cost. So each script is
 * called by its SHA1 (EVALSHA), and a Redis that does not have it (restarted,
 * SCRIPT FLUSH, a new master) answers NOSCRIPT: the call is made again as EVAL,
 * which runs it, along with a SCRIPT LOAD, which keeps it (Redis 7.4 may evict the
 * scripts EVAL brought). Scripts are loaded when a single Redis comes up, too.
 */
struct script {
    const char *body;
    char sha[41];
};

static struct script scripts[] = {{.body = publish_lua}, {.body = prepare_lua}, {.body = load_lua},
                                  {.body = chan_lua},    {.body = list_lua},    {.body = beat_lua}};

static void scripts_init(void)
{
    for (size_t i = 0; i < ARRAY_LEN(scripts); i++) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)scripts[i].body, strlen(scripts[i].body), md);
        for (size_t k = 0; k < sizeof(md); k++)
            snprintf(scripts[i].sha + 2 * k, 3, "%02x", md[k]);
    }
}

/* A script call in flight, with a copy of its arguments for the EVAL it may need. */
struct script_call {
    struct redis_bus *bus;
    const struct script *script;
    resp_reply_fn *cb;
    void *arg;
    bool retried;
    int argc; /* argv[0] is the numkeys argument */
    size_t key_len;
    const char *key;
    const char **argv;
    size_t *argl;
};

static void script_ignore(const redisReply *r, int status, void *arg)
{
}

static int script_send(struct script_call *sc);

static void script_reply(const redisReply *r, int status, void *arg)
{
    struct script_call *sc = arg;
    if (status == 0 && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0 &&
        !sc->retried) {
        sc->retried = true;
        const char *argv[] = {"SCRIPT", "LOAD", sc->script->body};
        redis_bus_command(sc->bus, sc->key, sc->key_len, script_ignore, NULL, 3, argv, NULL);
        if (script_send(sc) == 0)
            return;
        r = NULL;
        status = RESP_ENOTCONN;
    }
    sc->cb(r, status, sc->arg);
    free(sc);
}

/* EVALSHA, or EVAL once retried. Returns redis_bus_command's answer. */
static int script_send(struct script_call *sc)
{
    const char **argv = sc->argv - 2;
    size_t *argl = sc->argl - 2;
    argv[0] = sc->retried ? "EVAL" : "EVALSHA";
    argl[0] = strlen(argv[0]);
    argv[1] = sc->retried ? sc->script->body : sc->script->sha;
    argl[1] = strlen(argv[1]);
    return redis_bus_command(sc->bus, sc->key, sc->key_len, script_reply, sc, sc->argc + 2, argv,
                             argl);
}

/*
 * Like redis_bus_command for ("EVAL", body, numkeys, ...): argv[0] is "EVAL", argv[1]
 * the text of one of the scripts above; argl may be NULL. The same contract: 0 (cb
 * runs once, later) or a negative RESP_E* (cb never runs).
 */
static int script_command(struct redis_bus *bus, const char *key, size_t key_len, resp_reply_fn *cb,
                          void *arg, int argc, const char **argv, const size_t *argl)
{
    const struct script *script = NULL;
    for (size_t i = 0; i < ARRAY_LEN(scripts) && !script; i++)
        if (scripts[i].body == argv[1])
            script = &scripts[i];
    assert(script && argc >= 3 && strcmp(argv[0], "EVAL") == 0);
    /* One allocation: the call, argv and argl (two slots ahead for the verb and the
     * script), then the bytes of the key and of every argument from numkeys on. */
    size_t n = (size_t)argc, bytes = key_len;
    for (size_t i = 2; i < n; i++)
        bytes += argl ? argl[i] : strlen(argv[i]);
    struct script_call *sc =
        xmalloc(sizeof(*sc) + n * (sizeof(char *) + sizeof(size_t)) + bytes + 1);
    const char **av = (const char **)(sc + 1);
    size_t *al = (size_t *)(av + n);
    char *p = (char *)(al + n);
    *sc = (struct script_call){.bus = bus,
                               .script = script,
                               .cb = cb,
                               .arg = arg,
                               .argc = argc - 2,
                               .key_len = key_len,
                               .key = p,
                               .argv = av + 2,
                               .argl = al + 2};
    memcpy(p, key, key_len);
    p += key_len;
    for (size_t i = 2; i < n; i++) {
        al[i] = argl ? argl[i] : strlen(argv[i]);
        memcpy(p, argv[i], al[i]);
        av[i] = p;
        p += al[i];
    }
    int rc = script_send(sc);
    if (rc < 0)
        free(sc);
    return rc;
}

/* Loads every script into a Redis that just came up (single server; a cluster's
 * masters get them on their first NOSCRIPT). */
static void scripts_load(struct redis_bus *bus)
{
    for (size_t i = 0; i < ARRAY_LEN(scripts); i++) {
        const char *argv[] = {"SCRIPT", "LOAD", scripts[i].body};
        redis_bus_command(bus, NULL, 0, script_ignore, NULL, 3, argv, NULL);
    }
}

/* ---- state ------------------------------------------------------------------------ */

struct task {
    struct task *next;
    void (*fn)(struct task *t);
};

struct indexed {
    struct map_node node;
    uint64_t at;
    char name[CHANNEL_NAME_MAX + 1];
};

/* A channel whose gap fill failed, loaded again by the reload timer. */
struct reload {
    struct map_node node; /* first: redis_bus__free_map frees the node pointer */
    size_t len;
    char name[CHANNEL_NAME_MAX + 1];
};

#define RELOAD_MS 250

#define STATUS_SETTLE_MS 1000
#define WARN_SLOTS       8
#define WARN_WINDOW_MS   10000

/* A warning logged lately; its repeats in the current window are only counted. */
struct warn_slot {
    char line[320]; /* "" when free */
    uint64_t since; /* loop time the window started */
    unsigned repeats;
};

struct rb {
    struct map indexed;  /* channels recently added to herald:channels */
    struct map reload;   /* struct reload: gap fills to try again */
    struct map follows;  /* struct follow: the channels this node follows on the bus */
    struct list holding; /* follows with bus messages held back (struct follow.holding) */
    struct timer order_timer;
    struct timer reload_timer;
    uint32_t *epoch_tag; /* cluster: per slot, a hash tag on that slot (epoch keys) */
    struct hub *hub;
    const struct herald_config *cfg;
    struct loop loop;
    pthread_t thread;
    atomic_bool stop;
    struct redis_bus *bus;
    bool cluster;
    pthread_mutex_t qlock;
    struct task *q_head, *q_tail;
    struct timer heartbeat;
    uint64_t last_hint;
    char node[64];
    /* cluster view for /stats, refreshed by the heartbeat */
    pthread_mutex_t view_lock;
    uint64_t nodes_alive;
    _Atomic enum redis_bus_status status;
    enum redis_bus_status logged_status; /* the last one logged (initially down, silently) */
    struct timer status_timer;           /* logs a degradation that lasted STATUS_SETTLE_MS */
    struct warn_slot warns[WARN_SLOTS];
    struct timer warn_timer;
};

static struct rb *the_rb; /* one per process */

/* ---- repeated warnings ---------------------------------------------------------------- */

/*
 * A Redis that refuses writes (out of memory) fails every publish and heartbeat the
 * same way: the first warning of a kind is logged, its repeats within WARN_WINDOW_MS
 * are counted, and the count is logged when the window ends ("... (repeated 57
 * times in 5 s)"), one line per window while they go on. Backend thread only.
 */
static void warn_summary(const struct warn_slot *w)
{
    if (w->repeats)
        log_warn("%s (repeated %u time%s in %u s)", w->line, w->repeats, w->repeats == 1 ? "" : "s",
                 WARN_WINDOW_MS / 1000);
}

static void rb_warn(struct rb *rb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rb_warn(struct rb *rb, const char *fmt, ...)
{
    char line[sizeof(rb->warns[0].line)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct warn_slot *w = NULL, *oldest = &rb->warns[0];
    for (size_t i = 0; i < WARN_SLOTS; i++) {
        struct warn_slot *x = &rb->warns[i];
        if (x->line[0] && strcmp(x->line, line) == 0) {
            x->repeats++;
            return;
        }
        if (!x->line[0] && !w)
            w = x;
        if (x->since < oldest->since)
            oldest = x;
    }
    if (!w) {
        w = oldest; /* many kinds at once: the oldest window ends early */
        warn_summary(w);
    }
    memcpy(w->line, line, sizeof(line));
    w->since = rb->loop.now;
    w->repeats = 0;
    log_warn("%s", line);
    if (!timer_armed(&rb->warn_timer))
        timer_start(&rb->loop, &rb->warn_timer, WARN_WINDOW_MS);
}

/* Ends the windows that are over: their counts are logged, quiet ones forgotten. */
static void warn_timer_cb(struct loop *loop, struct timer *t)
{
    struct rb *rb = container_of(t, struct rb, warn_timer);
    uint64_t next = 0;
    for (size_t i = 0; i < WARN_SLOTS; i++) {
        struct warn_slot *w = &rb->warns[i];
        if (!w->line[0])
            continue;
        if (loop->now - w->since >= WARN_WINDOW_MS) {
            warn_summary(w);
            if (!w->repeats) {
                w->line[0] = '\0';
                continue;
            }
            w->repeats = 0; /* they go on: a new window */
            w->since = loop->now;
        }
        uint64_t left = w->since + WARN_WINDOW_MS - loop->now;
        next = next && next < left ? next : left;
    }
    if (next)
        timer_start(loop, t, next);
}

static void index_reset(struct rb *rb)
{
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&rb->indexed, &b, &next))) {
        map_del(&rb->indexed, n);
        free(container_of(n, struct indexed, node));
    }
}

static void rb_post(struct rb *rb, struct task *t)
{
    t->next = NULL;
    pthread_mutex_lock(&rb->qlock);
    bool was_empty = !rb->q_head;
    if (rb->q_tail)
        rb->q_tail->next = t;
    else
        rb->q_head = t;
    rb->q_tail = t;
    pthread_mutex_unlock(&rb->qlock);
    if (was_empty)
        loop_wake(&rb->loop);
}

static void rb_on_wake(struct loop *loop, void *arg)
{
    struct rb *rb = arg;
    pthread_mutex_lock(&rb->qlock);
    struct task *t = rb->q_head;
    rb->q_head = rb->q_tail = NULL;
    pthread_mutex_unlock(&rb->qlock);
    while (t) {
        struct task *next = t->next;
        t->fn(t);
        t = next;
    }
}

/* Key "herald:{name}:<suffix>" into buf. */
static size_t key_of(char *buf, size_t size, const char *name, size_t len, char suffix)
{
    int n = snprintf(buf, size, "herald:{%.*s}:%c", (int)len, name, suffix);
    return (size_t)n;
}

/*
 * The epoch key of the data set that holds channel `name` (see publish_lua): one
 * for a single Redis, one per slot on a Redis Cluster (a script may only touch
 * keys of its channel's slot, and a shard that lost its data lost its slots').
 */
static size_t epoch_key_of(const struct rb *rb, char *buf, size_t size, const char *name,
                           size_t len)
{
    if (!rb->epoch_tag)
        return (size_t)snprintf(buf, size, "herald:{seq}:e");
    return (size_t)snprintf(buf, size, "herald:{%" PRIu32 "}:e",
                            rb->epoch_tag[cluster_keyslot(name, len)]);
}

/* Finds, for every slot, the smallest number whose decimal form hashes to it. */
static uint32_t *epoch_tags_new(void)
{
    uint32_t *tag = xmalloc(CLUSTER_SLOTS * sizeof(*tag));
    bool *seen = xcalloc(CLUSTER_SLOTS, sizeof(*seen));
    size_t found = 0;
    for (uint32_t i = 0; found < CLUSTER_SLOTS; i++) {
        char b[16];
        int n = snprintf(b, sizeof(b), "%" PRIu32, i);
        uint16_t slot = cluster_keyslot(b, (size_t)n);
        if (!seen[slot]) {
            seen[slot] = true;
            tag[slot] = i;
            found++;
        }
    }
    free(seen);
    return tag;
}

/* For writes nobody waits on (index, heartbeat): failures are logged, then retried next
 * time. arg: the struct rb. */
static void ignore_reply(const redisReply *r, int status, void *arg)
{
    if (status == 0 && r && r->type == REDIS_REPLY_ERROR)
        rb_warn(arg, "redis: %s", r->str);
}

/*
 * Whether a script answered "no such channel". Scripts reply "NOTFOUND <detail>":
 * Redis 7 keeps an error's first word as its code only when a space follows, and
 * prefixes a bare word with "ERR " (so "ERR NOTFOUND" is accepted too).
 */
static bool reply_is_notfound(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ERROR)
        return false;
    const char *s = r->str;
    if (strncmp(s, "ERR ", 4) == 0)
        s += 4;
    return strncmp(s, "NOTFOUND", 8) == 0;
}

/*
 * The hub error a script's reply (or its failure) stands for, 0 when it is not an
 * error. Redis's own errors are logged as "redis: <what><name>: <error>". With
 * `detail` (size bytes), what the client should hear when the hub's words for the
 * error do not say it; "" otherwise.
 */
static int script_error(struct rb *rb, const redisReply *r, int status, const char *what,
                        const char *name, char *detail, size_t size)
{
    if (detail)
        detail[0] = '\0';
    if (detail && (status == RESP_ENOREPLY || status == RESP_EDEADLINE))
        snprintf(detail, size,
                 "Redis did not answer within %u ms (--redis-timeout): the command may or may "
                 "not have run, so a retry may store the message twice",
                 rb->cfg->redis_timeout_ms);
    else if (detail && status == RESP_ELOST)
        snprintf(detail, size,
                 "the connection to Redis broke before its answer: the command may or may not "
                 "have run, so a retry may store the message twice");
    if (status < 0 || !r)
        return HUB_ERR_BACKEND;
    if (reply_is_notfound(r))
        return HUB_ERR_NOT_FOUND;
    if (r->type != REDIS_REPLY_ERROR)
        return 0;
    rb_warn(rb, "redis: %s%s: %s", what, name, r->str);
    if (detail && strncmp(r->str, "OOM ", 4) == 0)
        snprintf(detail, size,
                 "Redis is out of memory and refused the command (nothing was "
                 "stored; it needs more maxmemory or fewer keys): %s",
                 r->str);
    else if (detail)
        snprintf(detail, size, "Redis refused the command: %s", r->str);
    return HUB_ERR_BACKEND;
}

/* "herald:{name}:m" -> name. */
static bool bus_channel_name(const char *ch, size_t len, struct slice *name)
{
    if (len < 11 || memcmp(ch, "herald:{", 8) != 0 || memcmp(ch + len - 3, "}:m", 3) != 0)
        return false;
    *name = (struct slice){ch + 8, (uint32_t)(len - 11)};
    return true;
}

/* ---- bus order: a multi-channel message as its first channel's ------------------------ */

/*
 * A message published to several channels comes once per channel, and a connection
 * that holds more than one of them takes the first copy that arrives. With one
 * Redis the copies come in the publisher's order, on one connection; on a Redis
 * Cluster they come from the channels' shards, in any order (the node stores them
 * in order, but the shards' writes to this node race). So a copy is held back while
 * an earlier channel of the same publish that this node follows has not brought its
 * copy yet (its last id is below this one), and for at most ORDER_HOLD_MS (a copy
 * that never comes: that channel's store failed, or took another id). Later
 * messages of the held channel queue behind it, so each channel keeps its order.
 */
#define ORDER_HOLD_MS 100

struct held {
    struct held *next;
    uint64_t since;     /* loop time it came */
    struct hub_entry e; /* points into data and json */
    struct sbuf json;
    char data[];
};

struct follow {
    struct map_node node; /* first: redis_bus__free_map frees the node pointer */
    bool subscribed;      /* its bus subscription is in place (copies will come) */
    uint64_t last;        /* the highest id that came for it on the bus */
    struct held *head, *tail;
    struct list holding; /* in rb->holding while something is held */
    size_t len;
    char name[CHANNEL_NAME_MAX + 1];
};

static struct follow *follow_of(struct rb *rb, const char *name, size_t len)
{
    struct map_node *n = map_get(&rb->follows, name, len);
    return n ? container_of(n, struct follow, node) : NULL;
}

/* Whether e, for `target`, waits for the copy of an earlier channel of its publish. */
static bool must_wait(struct rb *rb, const struct hub_entry *e, const struct follow *target)
{
    for (size_t i = 0; i < e->nchannels; i++) {
        const struct slice *c = &e->channels[i];
        if (c->len == target->len && memcmp(c->data, target->name, c->len) == 0)
            return false;
        const struct follow *f = follow_of(rb, c->data, c->len);
        if (f && f->subscribed && f->last < e->seq)
            return true;
    }
    return false;
}

static void ingest(struct rb *rb, struct follow *f, const struct slice *name,
                   const struct hub_entry *e)
{
    hub_ingest(rb->hub, name, e->channels, e->nchannels, e->seq, e->time_ms, &e->req);
    if (f && e->seq > f->last)
        f->last = e->seq;
}

/* Ingests f's first held message. */
static void release_head(struct rb *rb, struct follow *f)
{
    struct held *h = f->head;
    f->head = h->next;
    if (!f->head) {
        f->tail = NULL;
        list_remove(&f->holding);
    }
    ingest(rb, f, &(struct slice){f->name, (uint32_t)f->len}, &h->e);
    sbuf_free(&h->json);
    free(h);
}

/* Ingests what no longer waits (or waited long enough), until nothing moves. */
static void release_ready(struct rb *rb)
{
    bool moved = true;
    while (moved) {
        moved = false;
        struct list *p, *tmp;
        list_for_each_safe(p, tmp, &rb->holding)
        {
            struct follow *f = container_of(p, struct follow, holding);
            while (f->head && (rb->loop.now - f->head->since >= ORDER_HOLD_MS ||
                               !must_wait(rb, &f->head->e, f))) {
                release_head(rb, f);
                moved = true;
            }
        }
    }
    if (!list_empty(&rb->holding) && !timer_armed(&rb->order_timer))
        timer_start(&rb->loop, &rb->order_timer, ORDER_HOLD_MS);
}

static void order_timer_cb(struct loop *loop, struct timer *t)
{
    release_ready(container_of(t, struct rb, order_timer));
}

static void hold(struct rb *rb, struct follow *f, const char *data, size_t len)
{
    struct held *h = xmalloc(sizeof(*h) + len);
    memcpy(h->data, data, len);
    h->next = NULL;
    h->since = rb->loop.now;
    h->json = (struct sbuf){0};
    if (redis_payload_parse_bus(h->data, len, &h->e, &h->json) != REDIS_BUS_MESSAGE)
        abort(); /* it parsed a moment ago, from the same bytes */
    if (f->tail)
        f->tail->next = h;
    else
        list_insert_tail(&rb->holding, &f->holding);
    f->tail = h;
    if (!f->head)
        f->head = h;
    if (!timer_armed(&rb->order_timer))
        timer_start(&rb->loop, &rb->order_timer, ORDER_HOLD_MS);
}

/* Everything held for f goes in now (f is no longer followed, or was deleted). */
static void release_all(struct rb *rb, struct follow *f)
{
    while (f->head)
        release_head(rb, f);
}

/* ---- bus callbacks (backend thread) --------------------------------------------------- */

static void on_message(const char *channel, size_t channel_len, const char *data, size_t len,
                       void *arg)
{
    struct rb *rb = arg;
    struct slice name;
    if (!bus_channel_name(channel, channel_len, &name))
        return;
    struct follow *f = follow_of(rb, name.data, name.len);
    struct hub_entry e;
    struct sbuf buf = {0};
    switch (redis_payload_parse_bus(data, len, &e, &buf)) {
    case REDIS_BUS_MESSAGE:
        if (f && (f->head || (e.nchannels > 1 && must_wait(rb, &e, f)))) {
            hold(rb, f, data, len);
        } else {
            ingest(rb, f, &name, &e);
            if (!list_empty(&rb->holding))
                release_ready(rb);
        }
        break;
    case REDIS_BUS_CLOSED:
        if (f)
            release_all(rb, f);
        hub_channel_gone(rb->hub, name.data, name.len);
        break;
    case REDIS_BUS_BAD:
        rb_warn(rb, "redis: ignoring a malformed message on %.*s", (int)channel_len, channel);
        break;
    }
    sbuf_free(&buf);
}

static uint64_t reply_u64(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer > 0 ? (uint64_t)r->integer : 0;
    uint64_t v = 0;
    if (r->type == REDIS_REPLY_STRING)
        hub_cursor_parse(r->str, r->len, &v);
    return v;
}

struct load_op {
    struct rb *rb;
    uint64_t token; /* from hub_channel_loading */
    char name[CHANNEL_NAME_MAX + 1];
    size_t len;
};

static int cmp_entry(const void *a, const void *b)
{
    const struct hub_entry *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void index_channel(struct rb *rb, const char *name, size_t len);
static void reload_later(struct rb *rb, const char *name, size_t len);

/* The load failed: subscribers waiting for it hear why, or a gap fill goes again. */
static void load_failed(struct load_op *op, int err)
{
    if (hub_channel_loaded(op->rb->hub, op->name, op->len, op->token, err, NULL, 0, 0, NULL))
        reload_later(op->rb, op->name, op->len);
    free(op);
}

static void load_reply(const redisReply *r, int status, void *arg)
{
    struct load_op *op = arg;
    struct rb *rb = op->rb;
    if (status < 0 || !r || r->type == REDIS_REPLY_ERROR) {
        bool nf = status == 0 && reply_is_notfound(r);
        /* Connection failures are retried quietly: "redis: down" says it once. */
        if (!nf) {
            if (status == 0)
                rb_warn(rb, "redis: loading channel %s failed: %s", op->name, r ? r->str : "");
            else
                log_debug("redis: loading channel %s failed: %s", op->name, resp_strerror(status));
        }
        load_failed(op, nf ? HUB_ERR_NOT_FOUND : HUB_ERR_BACKEND);
        return;
    }
    uint64_t evicted = 0;
    const redisReply *list =
        r->type == REDIS_REPLY_ARRAY && r->elements == 4 ? r->element[2] : NULL;
    if (!list || list->type != REDIS_REPLY_ARRAY) {
        rb_warn(rb, "redis: loading channel %s: unexpected reply", op->name);
        load_failed(op, HUB_ERR_BACKEND);
        return;
    }
    const redisReply *ev = r->element[0];
    if (ev->type == REDIS_REPLY_STRING)
        hub_cursor_parse(ev->str, ev->len, &evicted);
    size_t n = list->elements, k = 0;
    struct hub_entry *entries = xcalloc(n ? n : 1, sizeof(*entries));
    struct sbuf *bufs = xcalloc(n ? n : 1, sizeof(*bufs));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (redis_payload_parse_entry(list->element[i], &entries[k], &bufs[k]) == 0)
            k++;
        else
            bad++;
    }
    if (bad)
        rb_warn(rb, "redis: loading channel %s: %zu malformed entries ignored", op->name, bad);
    qsort(entries, k, sizeof(*entries), cmp_entry); /* XREVRANGE came newest first */
    /* The cache keeps what Redis keeps for this channel, not just the defaults. */
    uint64_t hs = reply_u64(r->element[1]), httl = reply_u64(r->element[3]);
    struct channel_opts o = {.has_history_size = hs > 0,
                             .history_size = (uint32_t)hs,
                             .has_history_ttl = httl > 0,
                             .history_ttl_ms = (uint32_t)httl};
    if (hub_channel_loaded(rb->hub, op->name, op->len, op->token, 0, entries, k, evicted, &o))
        reload_later(rb, op->name, op->len);
    for (size_t i = 0; i < n; i++)
        sbuf_free(&bufs[i]);
    free(bufs);
    free(entries);
    free(op);
}

/* Loads (first time) or gap-fills a channel's cache from its Stream; with `down`
 * (Redis is unreachable) the load fails at once, so that subscribers hear it now. */
static void load_channel(struct rb *rb, const char *name, size_t len, bool down)
{
    uint64_t last = 0, token = hub_channel_loading(rb->hub, name, len, &last);
    if (!token)
        return;
    struct load_op *op = xcalloc(1, sizeof(*op));
    op->rb = rb;
    op->token = token;
    memcpy(op->name, name, len);
    op->len = len;
    if (down) {
        load_reply(NULL, RESP_ENOTCONN, op);
        return;
    }
    char h[160], o[160], s[160], e[64], after[24], hs[16], us[24];
    key_of(h, sizeof(h), name, len, 'h');
    key_of(o, sizeof(o), name, len, 'o');
    key_of(s, sizeof(s), name, len, 's');
    epoch_key_of(rb, e, sizeof(e), name, len);
    snprintf(after, sizeof(after), "%" PRIu64, last);
    snprintf(hs, sizeof(hs), "%u", rb->cfg->history_size);
    snprintf(us, sizeof(us), "%" PRIu64, wall_us());
    /* One Redis: the last-id key too (see load_lua). */
    const char *argv[] = {"EVAL",           load_lua, rb->cluster ? "4" : "5",          h,  o, s, e,
                          "herald:{seq}:i", after,    rb->cfg->auto_create ? "1" : "0", hs, us};
    int argc = (int)ARRAY_LEN(argv);
    if (rb->cluster) { /* no fifth key */
        memmove(&argv[7], &argv[8], 4 * sizeof(*argv));
        argc--;
    }
    if (script_command(rb->bus, h, strlen(h), load_reply, op, argc, argv, NULL) < 0)
        load_reply(NULL, RESP_ENOTCONN, op);
}

/* Gap fills that failed go again after RELOAD_MS (or as soon as Redis is up). */
static void reload_later(struct rb *rb, const char *name, size_t len)
{
    if (!map_get(&rb->reload, name, len)) {
        struct reload *rl = xcalloc(1, sizeof(*rl));
        memcpy(rl->name, name, len);
        rl->len = len;
        rl->node = (struct map_node){.key = rl->name, .key_len = (uint32_t)len};
        map_put(&rb->reload, &rl->node);
    }
    if (!timer_armed(&rb->reload_timer))
        timer_start(&rb->loop, &rb->reload_timer, RELOAD_MS);
}

static void reload_cb(struct loop *loop, struct timer *t)
{
    struct rb *rb = container_of(t, struct rb, reload_timer);
    /* Take the set first: a load that fails at once puts its channel back. */
    size_t n = rb->reload.len, i = 0, b = 0;
    struct reload **all = xmalloc((n ? n : 1) * sizeof(*all));
    struct map_node *node, *next = NULL;
    while ((node = map_next(&rb->reload, &b, &next))) {
        map_del(&rb->reload, node);
        all[i++] = container_of(node, struct reload, node);
    }
    for (i = 0; i < n; i++) {
        load_channel(rb, all[i]->name, all[i]->len, false); /* not wanted any more: nothing */
        free(all[i]);
    }
    free(all);
}

static void on_subscribed(const char *channel, size_t channel_len, void *arg)
{
    struct rb *rb = arg;
    struct slice name;
    if (!bus_channel_name(channel, channel_len, &name))
        return;
    struct follow *f = follow_of(rb, name.data, name.len);
    if (f)
        f->subscribed = true;
    load_channel(rb, name.data, name.len, false);
}

/* Logs the status if the log does not say it yet: the last "redis: ..." line says what
 * /stats says. */
static void log_status(struct rb *rb)
{
    static const char *names[] = {"down", "degraded", "up"};
    static const char *why[] = {
        " (publishes answer 503 until it is back)",
        " (a Redis Cluster master or a subscription is being recovered: publishes to its "
        "channels wait, then answer 503)",
        ""};
    enum redis_bus_status status = rb->status;
    if (status == rb->logged_status)
        return;
    log_msg(status == REDIS_BUS_UP ? LOG_INFO : LOG_WARN, "redis: %s%s", names[status],
            why[status]);
    rb->logged_status = status;
}

static void status_timer_cb(struct loop *loop, struct timer *t)
{
    log_status(container_of(t, struct rb, status_timer));
}

static void on_status(enum redis_bus_status status, void *arg)
{
    struct rb *rb = arg;
    rb->status = status;
    if (status == REDIS_BUS_DOWN) { /* subscriptions are made again, and say so */
        size_t b = 0;
        struct map_node *n, *next = NULL;
        while ((n = map_next(&rb->follows, &b, &next)))
            container_of(n, struct follow, node)->subscribed = false;
    }
    /* A cluster is degraded for a moment while it starts, or reconnects shard by shard:
     * worth a line only if it lasts. */
    if (status == REDIS_BUS_DEGRADED && rb->logged_status != REDIS_BUS_DEGRADED) {
        if (!timer_armed(&rb->status_timer))
            timer_start(&rb->loop, &rb->status_timer, STATUS_SETTLE_MS);
    } else {
        timer_stop(&rb->loop, &rb->status_timer);
        log_status(rb);
    }
    if (status == REDIS_BUS_UP && !rb->cluster)
        scripts_load(rb->bus);
    if (status == REDIS_BUS_UP && rb->reload.len)
        timer_start(&rb->loop, &rb->reload_timer, 0);
}

/* ---- hub backend ops ------------------------------------------------------------------ */

struct want_task {
    struct task t;
    struct rb *rb;
    bool on;
    size_t len;
    char name[CHANNEL_NAME_MAX + 1];
};

static void want_run(struct task *t)
{
    struct want_task *wt = (struct want_task *)t;
    struct rb *rb = wt->rb;
    char m[160];
    size_t ml = key_of(m, sizeof(m), wt->name, wt->len, 'm');
    struct follow *f = follow_of(rb, wt->name, wt->len);
    if (wt->on && !f) {
        f = xcalloc(1, sizeof(*f));
        memcpy(f->name, wt->name, wt->len);
        f->len = wt->len;
        f->node = (struct map_node){.key = f->name, .key_len = (uint32_t)wt->len};
        map_put(&rb->follows, &f->node);
    } else if (!wt->on && f) {
        release_all(rb, f);
        map_del(&rb->follows, &f->node);
        free(f);
    }
    if (wt->on) {
        int rc = redis_bus_subscribe(rb->bus, m, ml);
        /* While Redis is down, subscribers hear so now instead of waiting. Subscribed
         * already (an earlier load failed), no on_subscribed comes: load now. */
        bool down = redis_bus_status(rb->bus) == REDIS_BUS_DOWN;
        if (down || rc == 1)
            load_channel(rb, wt->name, wt->len, down);
    } else {
        redis_bus_unsubscribe(rb->bus, m, ml);
        /* This node's count goes now rather than when it expires: a channel that only
         * had subscribers then leaves nothing in Redis. Sent after any heartbeat that
         * counted them (same thread, same connection for the key). */
        char c[160];
        key_of(c, sizeof(c), wt->name, wt->len, 'c');
        const char *argv[] = {"HDEL", c, rb->node};
        redis_bus_command(rb->bus, c, strlen(c), ignore_reply, rb, 3, argv, NULL);
    }
    free(wt);
}

static void post_want(void *be, const char *name, size_t len, bool on)
{
    struct want_task *wt = xcalloc(1, sizeof(*wt));
    wt->t.fn = want_run;
    wt->rb = be;
    wt->on = on;
    wt->len = len;
    memcpy(wt->name, name, len);
    rb_post(be, &wt->t);
}

static void be_want(void *be, const char *name, size_t len)
{
    post_want(be, name, len, true);
}

static void be_unwant(void *be, const char *name, size_t len)
{
    post_want(be, name, len, false);
}

/* A publish on its way: built on the worker, run on the backend thread. */
struct pub_task {
    struct task t;
    struct rb *rb;
    struct hub *hub; /* pub_answer may run after the backend stopped (hub_free) */
    int w;
    hub_publish_done *done;
    void *arg;
    struct publish_result res;
    int err;
    char detail[256]; /* res.detail */
    size_t n, pending;
    size_t next; /* Redis Cluster: the channel to store next (pub_store_next) */
    struct sbuf payload;
    char names[64][CHANNEL_NAME_MAX + 1];
    size_t lens[64];
    uint64_t hint;
};

/* Channels created by publishing join the listing index (at most once a minute per
 * channel and node: the index is only for listing). Backend thread. */
static void index_channel(struct rb *rb, const char *name, size_t len)
{
    uint64_t now = now_ms();
    if (rb->indexed.len > 100000)
        index_reset(rb);
    struct map_node *n = map_get(&rb->indexed, name, len);
    struct indexed *ix = n ? container_of(n, struct indexed, node) : NULL;
    if (ix && now - ix->at < 60000)
        return;
    if (!ix) {
        ix = xcalloc(1, sizeof(*ix));
        memcpy(ix->name, name, len);
        ix->node.key = ix->name;
        ix->node.key_len = (uint32_t)len;
        map_put(&rb->indexed, &ix->node);
    }
    ix->at = now;
    const char *argv[] = {"ZADD", "herald:channels", "NX", "0", name};
    size_t argl[] = {4, 15, 2, 1, len};
    redis_bus_command(rb->bus, "herald:channels", 15, ignore_reply, rb, 5, argv, argl);
}

static void pub_answer(void *arg)
{
    struct pub_task *pt = arg;
    pt->res.detail = pt->err == HUB_ERR_BACKEND && pt->detail[0] ? pt->detail : NULL;
    if (!pt->err)
        atomic_fetch_add(&pt->hub->stats.published, 1);
    pt->done(pt->arg, pt->err, &pt->res);
    sbuf_free(&pt->payload);
    free(pt);
}

static void pub_store_next(struct pub_task *pt);

/* script_error for a publish: keeps the first detail any of its scripts gave. */
static int pub_error(struct pub_task *pt, const redisReply *r, int status)
{
    char detail[sizeof(pt->detail)];
    int err = script_error(pt->rb, r, status, "publish failed", "", detail, sizeof(detail));
    if (detail[0] && !pt->detail[0])
        memcpy(pt->detail, detail, sizeof(detail));
    return err;
}

static void pub_reply(const redisReply *r, int status, void *arg)
{
    struct pub_task *pt = arg;
    int err = pub_error(pt, r, status);
    if (err) {
        pt->err = err;
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
               r->element[0]->type == REDIS_REPLY_STRING) {
        uint64_t id;
        if (hub_cursor_parse(r->element[0]->str, r->element[0]->len, &id) == 0) {
            if (!pt->res.id || id < pt->res.id)
                pt->res.id = id;
            pt->hint = MAX(pt->hint, id); /* the next channel takes it too, if it can */
        }
        pt->res.subscribers += (uint32_t)r->element[1]->integer;
    } else {
        rb_warn(pt->rb, "redis: publish failed: unexpected reply");
        pt->err = HUB_ERR_BACKEND;
    }
    if (--pt->pending)
        return;
    if (!pt->err && pt->next < pt->n) {
        pub_store_next(pt);
        return;
    }
    for (size_t i = 0; i < pt->n && !pt->err; i++)
        index_channel(pt->rb, pt->names[i], pt->lens[i]);
    hub_post(pt->rb->hub, pt->w, pub_answer, pt);
}

/* The last-id key that orders channel i's messages: one for a single Redis (ids
 * order every message), the channel's own on a Redis Cluster. */
static void last_id_key(const struct pub_task *pt, size_t i, char *buf, size_t size)
{
    if (pt->rb->cluster)
        key_of(buf, size, pt->names[i], pt->lens[i], 'i');
    else
        snprintf(buf, size, "herald:{seq}:i");
}

/* Runs the publish script for channels [from, to) (one shard). */
static int pub_eval(struct pub_task *pt, size_t from, size_t to)
{
    struct rb *rb = pt->rb;
    size_t per = rb->cluster ? 2 : 3; /* keys per channel (see publish_lua) */
    size_t nk = 2 + per * (to - from), argc = 3 + nk + 8 + (to - from);
    const char **argv = xcalloc(argc, sizeof(*argv));
    size_t *argl = xcalloc(argc, sizeof(*argl));
    char(*keys)[160] = xcalloc(nk, sizeof(*keys));
    char numkeys[16], hint[24], hs[16], httl[16], ttl[16], now[24];
    size_t a = 0;
    argv[a++] = "EVAL";
    argv[a++] = publish_lua;
    snprintf(numkeys, sizeof(numkeys), "%zu", nk);
    argv[a++] = numkeys;
    last_id_key(pt, from, keys[0], sizeof(keys[0]));
    epoch_key_of(rb, keys[1], sizeof(keys[1]), pt->names[from], pt->lens[from]);
    for (size_t i = from; i < to; i++) {
        size_t k = 2 + per * (i - from);
        key_of(keys[k], sizeof(keys[k]), pt->names[i], pt->lens[i], 'h');
        key_of(keys[k + 1], sizeof(keys[k + 1]), pt->names[i], pt->lens[i], 'o');
        if (per == 3)
            key_of(keys[k + 2], sizeof(keys[k + 2]), pt->names[i], pt->lens[i], 's');
    }
    for (size_t k = 0; k < nk; k++)
        argv[a++] = keys[k];
    snprintf(hint, sizeof(hint), "%" PRIu64, pt->hint);
    snprintf(hs, sizeof(hs), "%u", rb->cfg->history_size);
    snprintf(httl, sizeof(httl), "%u", rb->cfg->history_ttl_ms);
    snprintf(ttl, sizeof(ttl), "%u", rb->cfg->channel_ttl_ms);
    snprintf(now, sizeof(now), "%" PRIu64, wall_ms());
    argv[a++] = hint;
    argv[a] = pt->payload.data;
    argl[a++] = pt->payload.len;
    argv[a++] = rb->cfg->auto_create ? "1" : "0";
    argv[a++] = hs;
    argv[a++] = httl;
    argv[a++] = ttl;
    argv[a++] = now;
    argv[a++] = rb->cluster ? "SPUBLISH" : "PUBLISH";
    char(*bus)[160] = xcalloc(to - from, sizeof(*bus));
    for (size_t i = from; i < to; i++) {
        key_of(bus[i - from], sizeof(bus[0]), pt->names[i], pt->lens[i], 'm');
        argv[a++] = bus[i - from];
    }
    for (size_t i = 0; i < a; i++)
        if (!argl[i])
            argl[i] = strlen(argv[i]);
    int rc = script_command(rb->bus, keys[2], strlen(keys[2]), pub_reply, pt, (int)a, argv, argl);
    free(bus);
    free(keys);
    free(argl);
    free(argv);
    return rc;
}

/* Stores the message: one script for a single Redis, one per channel on a cluster
 * (each channel lives on its own shard). */
static void pub_store(struct pub_task *pt)
{
    if (pt->rb->cluster) {
        pub_store_next(pt);
        return;
    }
    pt->pending = 1;
    pt->next = pt->n;
    if (pub_eval(pt, 0, pt->n) < 0)
        pub_reply(NULL, RESP_ENOTCONN, pt);
}

/*
 * Redis Cluster: stores the message on the next of its channels. They go one after
 * the other, in the order the publisher gave them: a node that follows several of
 * them receives the copies in that order (from different shards, so only this
 * makes it so), and a connection holding several of them gets the message as the
 * first one's, as with one Redis. One round trip per channel; a failure stops the
 * rest.
 */
static void pub_store_next(struct pub_task *pt)
{
    size_t i = pt->next++;
    pt->pending = 1;
    if (pub_eval(pt, i, i + 1) < 0)
        pub_reply(NULL, RESP_ENOTCONN, pt);
}

static void prepare_reply(const redisReply *r, int status, void *arg)
{
    struct pub_task *pt = arg;
    uint64_t id;
    int err = pub_error(pt, r, status);
    if (!err && (r->type != REDIS_REPLY_STRING || hub_cursor_parse(r->str, r->len, &id) < 0)) {
        rb_warn(pt->rb, "redis: publish failed: unexpected reply");
        err = HUB_ERR_BACKEND;
    }
    if (err)
        pt->err = err == HUB_ERR_NOT_FOUND ? err : (pt->err ? pt->err : err);
    else
        pt->hint = MAX(pt->hint, id);
    if (--pt->pending)
        return;
    if (pt->err)
        hub_post(pt->rb->hub, pt->w, pub_answer, pt); /* nothing was stored */
    else
        pub_store(pt); /* every script takes the id all the channels can take */
}

/*
 * A publish to several channels of a Redis Cluster asks every shard first for the
 * smallest id its channel can take (and whether it exists), then stores it with
 * the largest: one id on every channel (one message for a connection holding
 * several), and all or nothing when a channel is missing. Another publish to one
 * of the channels between the two steps can still push that channel's id higher.
 */
static void pub_prepare(struct pub_task *pt)
{
    pt->pending = pt->n;
    for (size_t i = 0; i < pt->n; i++) {
        char ikey[160], ekey[64], o[160];
        last_id_key(pt, i, ikey, sizeof(ikey));
        epoch_key_of(pt->rb, ekey, sizeof(ekey), pt->names[i], pt->lens[i]);
        key_of(o, sizeof(o), pt->names[i], pt->lens[i], 'o');
        const char *argv[] = {
            "EVAL", prepare_lua, "3", ikey, ekey, o, pt->rb->cfg->auto_create ? "1" : "0"};
        if (script_command(pt->rb->bus, o, strlen(o), prepare_reply, pt, (int)ARRAY_LEN(argv), argv,
                           NULL) < 0)
            prepare_reply(NULL, RESP_ENOTCONN, pt);
    }
}

static void pub_run(struct task *t)
{
    struct pub_task *pt = (struct pub_task *)t;
    if (pt->rb->cluster && pt->n > 1)
        pub_prepare(pt);
    else
        pub_store(pt);
}

static void be_publish(void *be, int w, const struct slice *channels, size_t n,
                       const struct publish_req *req, hub_publish_done *done, void *arg)
{
    struct rb *rb = be;
    struct pub_task *pt = xcalloc(1, sizeof(*pt));
    pt->t.fn = pub_run;
    pt->rb = rb;
    pt->hub = rb->hub;
    pt->w = w;
    pt->done = done;
    pt->arg = arg;
    pt->n = n;
    for (size_t i = 0; i < n; i++) {
        memcpy(pt->names[i], channels[i].data, channels[i].len);
        pt->lens[i] = channels[i].len;
    }
    uint64_t now = wall_ms();
    redis_payload_build(&pt->payload, channels, n, req, now);
    /* The publisher's clock in µs: ids stay close to time across shards. */
    pt->hint = wall_us();
    rb_post(rb, &pt->t);
}

/* ---- channel administration -------------------------------------------------------- */

enum chan_mode { CH_GET, CH_PUT, CH_DEL };

struct chan_task {
    struct task t;
    struct rb *rb;
    int w;
    enum chan_mode mode;
    char name[CHANNEL_NAME_MAX + 1];
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
    char after[CHANNEL_NAME_MAX + 1], prefix[CHANNEL_NAME_MAX + 1];
    size_t max;
};

static void info_from_reply(struct chan_task *ct, const redisReply *r)
{
    const struct herald_config *cfg = ct->rb->cfg;
    struct channel_info *i = &ct->info;
    memset(i, 0, sizeof(*i));
    memcpy(i->name, ct->name, ct->len);
    redisReply **e = r->element;
    ct->created = reply_u64(e[0]) == 1;
    i->ttl_ms = e[1]->len ? (uint32_t)reply_u64(e[1]) : cfg->channel_ttl_ms;
    i->history_size = e[2]->len ? (uint32_t)reply_u64(e[2]) : cfg->history_size;
    i->history_ttl_ms = e[3]->len ? (uint32_t)reply_u64(e[3]) : cfg->history_ttl_ms;
    i->persistent = reply_u64(e[4]) == 1;
    i->created_ms = reply_u64(e[5]);
    i->last_active_ms = reply_u64(e[6]);
    i->subscribers = (uint32_t)reply_u64(e[7]);
    i->messages_retained = (uint32_t)reply_u64(e[8]);
    i->messages_total = reply_u64(e[9]);
    i->oldest_id = reply_u64(e[10]);
    i->last_id = reply_u64(e[11]);
    int64_t pttl = e[12]->type == REDIS_REPLY_INTEGER ? e[12]->integer : -1;
    i->expires_ms = pttl > 0 ? wall_ms() + (uint64_t)pttl : 0;
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
    ct->err = script_error(ct->rb, r, status, "channel ", ct->name, NULL, 0);
    if (!ct->err && ct->mode != CH_DEL) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 13)
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
        const char *argv[] = {ct->mode == CH_DEL ? "ZREM" : "ZADD", "herald:channels", "0",
                              ct->name};
        if (ct->mode == CH_DEL)
            argv[2] = ct->name;
        redis_bus_command(ct->rb->bus, "herald:channels", 15, ignore_reply, ct->rb,
                          ct->mode == CH_DEL ? 3 : 4, argv, NULL);
    }
    hub_post(ct->rb->hub, ct->w, chan_answer, ct);
}

static void chan_run(struct task *t)
{
    struct chan_task *ct = (struct chan_task *)t;
    struct rb *rb = ct->rb;
    char h[160], o[160], s[160], c[160], m[160], now[24], ttl[16], httl[16], f[4][24];
    key_of(h, sizeof(h), ct->name, ct->len, 'h');
    key_of(o, sizeof(o), ct->name, ct->len, 'o');
    key_of(s, sizeof(s), ct->name, ct->len, 's');
    key_of(c, sizeof(c), ct->name, ct->len, 'c');
    key_of(m, sizeof(m), ct->name, ct->len, 'm');
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
    static const char *modes[] = {"get", "put", "del"};
    const char *argv[] = {"EVAL",
                          chan_lua,
                          "4",
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
                          f[3]};
    if (script_command(rb->bus, h, strlen(h), chan_reply, ct, (int)ARRAY_LEN(argv), argv, NULL) < 0)
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

static void be_channel_put(void *be, int w, const char *name, size_t len,
                           const struct channel_opts *o, hub_info_done *done, void *arg)
{
    struct chan_task *ct = chan_task_new(be, w, CH_PUT, name, len, done, arg);
    ct->o = *o;
    rb_post(be, &ct->t);
}

static void be_channel_get(void *be, int w, const char *name, size_t len, hub_info_done *done,
                           void *arg)
{
    rb_post(be, &chan_task_new(be, w, CH_GET, name, len, done, arg)->t);
}

static void be_channel_delete(void *be, int w, const char *name, size_t len, hub_info_done *done,
                              void *arg)
{
    rb_post(be, &chan_task_new(be, w, CH_DEL, name, len, done, arg)->t);
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
        const char *argv[] = {"ZREM", "herald:channels", child->name};
        redis_bus_command(ct->rb->bus, "herald:channels", 15, ignore_reply, ct->rb, 3, argv, NULL);
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
    ct->total = reply_u64(r->element[0]);
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
                                                MIN(nm->len, (size_t)CHANNEL_NAME_MAX), NULL, NULL);
        child->parent = ct;
        chan_run(&child->t);
    }
}

static void list_run(struct task *t)
{
    struct list_task *lt = (struct list_task *)t;
    char max[16];
    snprintf(max, sizeof(max), "%zu", lt->max);
    const char *argv[] = {"EVAL", list_lua, "1", "herald:channels", lt->after, lt->prefix, max};
    if (script_command(lt->ct.rb->bus, "herald:channels", 15, list_names_reply, &lt->ct, 7, argv,
                       NULL) < 0)
        list_names_reply(NULL, RESP_ENOTCONN, &lt->ct);
}

static void be_channel_list(void *be, int w, const char *after, size_t after_len,
                            const char *prefix, size_t max, hub_list_done *done, void *arg)
{
    struct list_task *lt = xcalloc(1, sizeof(*lt));
    lt->ct.t.fn = list_run;
    lt->ct.rb = be;
    lt->ct.w = w;
    lt->ct.list_done = done;
    lt->ct.arg = arg;
    memcpy(lt->after, after, MIN(after_len, (size_t)CHANNEL_NAME_MAX));
    if (prefix)
        snprintf(lt->prefix, sizeof(lt->prefix), "%s", prefix);
    lt->max = max;
    rb_post(be, &lt->ct.t);
}

/* ---- heartbeat: cluster-wide subscriber counts, channel keep-alive ------------------- */

static void heartbeat_cb(struct loop *loop, struct timer *t)
{
    struct rb *rb = container_of(t, struct rb, heartbeat);
    struct hub *hub = rb->hub;
    uint64_t now = wall_ms(), count_ttl = (uint64_t)rb->cfg->cluster_heartbeat_ms * COUNT_TTL_BEATS;
    char val[48], exp[24], ttl[16], nowbuf[24];
    snprintf(val, sizeof(val), "%" PRIu64, now + count_ttl);
    snprintf(exp, sizeof(exp), "%" PRIu64, count_ttl);
    snprintf(ttl, sizeof(ttl), "%u", rb->cfg->channel_ttl_ms);
    snprintf(nowbuf, sizeof(nowbuf), "%" PRIu64, now);
    /* Snapshot the channels with local subscribers, then talk to Redis unlocked. */
    size_t cap = 64, n = 0;
    struct {
        char name[CHANNEL_NAME_MAX + 1];
        size_t len;
        uint32_t subs;
    } *list = xmalloc(cap * sizeof(*list));
    pthread_mutex_lock(&hub->lock);
    size_t b = 0;
    struct map_node *node, *next = NULL;
    while ((node = map_next(&hub->channels, &b, &next))) {
        struct channel *ch = container_of(node, struct channel, node);
        if (!ch->subscribers)
            continue;
        if (n == cap)
            list = xrealloc(list, (cap *= 2) * sizeof(*list));
        memcpy(list[n].name, ch->name, ch->name_len + 1);
        list[n].len = ch->name_len;
        list[n++].subs = ch->subscribers;
    }
    pthread_mutex_unlock(&hub->lock);
    for (size_t i = 0; i < n; i++) {
        char c[160], o[160], count[64];
        key_of(c, sizeof(c), list[i].name, list[i].len, 'c');
        key_of(o, sizeof(o), list[i].name, list[i].len, 'o');
        snprintf(count, sizeof(count), "%u %s", list[i].subs, val);
        const char *argv[] = {"EVAL", beat_lua, "2", c, o, rb->node, count, exp, ttl, nowbuf};
        script_command(rb->bus, c, strlen(c), ignore_reply, rb, 10, argv, NULL);
    }
    free(list);
    /* This node is alive until the expiry it announces. */
    char score[24];
    snprintf(score, sizeof(score), "%" PRIu64, now + count_ttl);
    const char *zargv[] = {"ZADD", "herald:nodes", score, rb->node};
    redis_bus_command(rb->bus, "herald:nodes", 12, ignore_reply, rb, 4, zargv, NULL);
    const char *rargv[] = {"ZREMRANGEBYSCORE", "herald:nodes", "-inf", nowbuf};
    redis_bus_command(rb->bus, "herald:nodes", 12, ignore_reply, rb, 4, rargv, NULL);
    timer_start(loop, t, rb->cfg->cluster_heartbeat_ms);
}

static void be_stats_json(void *be, struct sbuf *b)
{
    struct rb *rb = be;
    static const char *names[] = {"down", "degraded", "up"};
    sbuf_printf(b, ",\"cluster\":{\"backend\":\"%s\",\"redis\":\"%s\"}",
                rb->cluster ? "redis-cluster" : "redis", names[atomic_load(&rb->status)]);
}

static bool be_ready(void *be)
{
    struct rb *rb = be;
    return atomic_load(&rb->status) != REDIS_BUS_DOWN;
}

static const struct hub_backend_ops redis_ops = {
    .ready = be_ready,
    .want = be_want,
    .unwant = be_unwant,
    .publish = be_publish,
    .channel_put = be_channel_put,
    .channel_get = be_channel_get,
    .channel_delete = be_channel_delete,
    .channel_list = be_channel_list,
    .stats_json = be_stats_json,
};

/* ---- start / stop -------------------------------------------------------------------- */

static void *rb_main(void *arg)
{
    struct rb *rb = arg;
    pthread_setname_np(pthread_self(), "herald-redis");
    timer_start(&rb->loop, &rb->heartbeat, 100);
    while (!atomic_load(&rb->stop))
        loop_run_once(&rb->loop, 1000);
    return NULL;
}

/* Parses redis[s]://[[user]:password@]host[:port][/db] (TLS is the caller's business).
 * Returns 0 or -1. */
static int parse_url(const char *url, char *host, size_t host_size, int *port, int *db, char *user,
                     char *password, size_t pw_size)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) == 0)
        p += 8;
    else if (strncmp(p, "rediss://", 9) == 0)
        p += 9;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            snprintf(user, 128, "%.*s", (int)(colon - p), p);
            snprintf(password, pw_size, "%.*s", (int)(at - colon - 1), colon + 1);
        } else {
            snprintf(password, pw_size, "%.*s", (int)(at - p), p);
        }
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    size_t hp = slash ? (size_t)(slash - p) : strlen(p);
    const char *colon = memchr(p, ':', hp);
    size_t hl = colon ? (size_t)(colon - p) : hp;
    if (!hl || hl >= host_size)
        return -1;
    memcpy(host, p, hl);
    host[hl] = '\0';
    *port = colon ? atoi(colon + 1) : 6379;
    *db = slash ? atoi(slash + 1) : 0;
    return *port > 0 && *port < 65536 ? 0 : -1;
}

int redis_backend_start(struct hub *hub, const struct herald_config *cfg)
{
    scripts_init();
    struct rb *rb = xcalloc(1, sizeof(*rb));
    rb->hub = hub;
    rb->cfg = cfg;
    rb->cluster = cfg->redis_cluster[0] != '\0';
    hub->ids_per_channel = rb->cluster;
    map_init(&rb->indexed, 1024);
    map_init(&rb->reload, 64);
    map_init(&rb->follows, 64);
    list_init(&rb->holding);
    timer_init(&rb->order_timer, order_timer_cb);
    timer_init(&rb->reload_timer, reload_cb);
    timer_init(&rb->warn_timer, warn_timer_cb);
    timer_init(&rb->status_timer, status_timer_cb);
    if (rb->cluster)
        rb->epoch_tag = epoch_tags_new();
    snprintf(rb->node, sizeof(rb->node), "%s", cfg->node_name);
    pthread_mutex_init(&rb->qlock, NULL);
    pthread_mutex_init(&rb->view_lock, NULL);
    if (loop_init(&rb->loop) < 0) {
        free(rb);
        return -1;
    }
    rb->loop.on_wake = rb_on_wake;
    rb->loop.on_wake_arg = rb;
    timer_init(&rb->heartbeat, heartbeat_cb);
    char user[128] = "", password[256] = "";
    snprintf(password, sizeof(password), "%s", cfg->redis_password);
    struct redis_bus_opts opts = {.name = rb->node,
                                  .connect_timeout_ms = cfg->redis_timeout_ms,
                                  .command_timeout_ms = cfg->redis_timeout_ms};
    struct resp_tls_opts tls = {
        .ca_file = cfg->redis_tls_ca[0] ? cfg->redis_tls_ca : NULL,
        .cert_file = cfg->redis_tls_cert[0] ? cfg->redis_tls_cert : NULL,
        .key_file = cfg->redis_tls_key[0] ? cfg->redis_tls_key : NULL,
        .server_name = cfg->redis_tls_server_name[0] ? cfg->redis_tls_server_name : NULL,
        .insecure = cfg->redis_tls_insecure};
    if (cfg->redis_tls || strncmp(cfg->redis_url, "rediss://", 9) == 0)
        opts.tls = &tls;
    if (opts.tls && tls.insecure)
        log_warn("--redis-tls-insecure: the Redis certificate and name are NOT verified: anyone "
                 "on the network path can pose as Redis and read or change every message");
    else if (!opts.tls && (tls.ca_file || tls.cert_file || tls.server_name || tls.insecure))
        log_warn("--redis-tls-* options are ignored: TLS to Redis is off (use rediss:// or "
                 "--redis-tls)");
    struct redis_bus_callbacks cbs = {.on_message = on_message,
                                      .on_subscribed = on_subscribed,
                                      .on_status = on_status,
                                      .arg = rb};
    if (rb->cluster) {
        opts.password = password[0] ? password : NULL;
        rb->bus = redis_bus_cluster_new(&rb->loop, cfg->redis_cluster, &opts, &cbs);
    } else {
        char host[256];
        int port, db;
        int rc = parse_url(cfg->redis_url, host, sizeof(host), &port, &db, user, password,
                           sizeof(password));
        if (rc < 0) {
            log_error("--redis %s: expected redis://[:password@]host[:port][/db]", cfg->redis_url);
        } else {
            opts.username = user[0] ? user : NULL;
            opts.password = password[0] ? password : NULL;
            opts.db = db;
            rb->bus = redis_bus_single_new(&rb->loop, host, port, &opts, &cbs);
        }
    }
    if (!rb->bus) {
        loop_free(&rb->loop);
        free(rb);
        return -1;
    }
    hub->be_ops = &redis_ops;
    hub->be = rb;
    the_rb = rb;
    if (pthread_create(&rb->thread, NULL, rb_main, rb) != 0) {
        log_error("cannot start the Redis thread");
        return -1;
    }
    return 0;
}

void redis_backend_stop(struct hub *hub)
{
    struct rb *rb = hub->be;
    if (!rb)
        return;
    atomic_store(&rb->stop, true);
    loop_wake(&rb->loop);
    pthread_join(rb->thread, NULL);
    /* The workers have stopped, their loops not yet freed (server_join): what they asked
     * for is answered through their inboxes, with an error when nothing came from Redis,
     * and server_free runs those answers. Work still queued runs first, so that it is
     * answered too. */
    rb_on_wake(&rb->loop, rb);
    timer_stop(&rb->loop, &rb->heartbeat);
    timer_stop(&rb->loop, &rb->reload_timer);
    timer_stop(&rb->loop, &rb->warn_timer);
    timer_stop(&rb->loop, &rb->status_timer);
    timer_stop(&rb->loop, &rb->order_timer);
    for (size_t i = 0; i < WARN_SLOTS; i++)
        if (rb->warns[i].line[0])
            warn_summary(&rb->warns[i]);
    redis_bus_free(rb->bus);
    /* Let the deferred free run: commands still waiting get RESP_ECANCELED. */
    for (int i = 0; i < 3; i++)
        loop_run_once(&rb->loop, 0);
    assert(!rb->q_head); /* nobody posts to the backend once the workers are gone */
    timer_stop(&rb->loop, &rb->reload_timer);
    loop_free(&rb->loop);
    index_reset(rb);
    map_free(&rb->indexed);
    redis_bus__free_map(&rb->reload);
    size_t b = 0;
    struct map_node *n, *next = NULL;
    while ((n = map_next(&rb->follows, &b, &next))) {
        struct follow *f = container_of(n, struct follow, node);
        for (struct held *h = f->head, *hn; h; h = hn) {
            hn = h->next;
            sbuf_free(&h->json);
            free(h);
        }
    }
    redis_bus__free_map(&rb->follows);
    free(rb->epoch_tag);
    pthread_mutex_destroy(&rb->qlock);
    pthread_mutex_destroy(&rb->view_lock);
    free(rb);
    hub->be = NULL;
    hub->be_ops = NULL;
    the_rb = NULL;
}
