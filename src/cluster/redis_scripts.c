/*
 * redis_scripts: the Lua scripts the cluster backend runs in Redis, and how they are
 * called. Each script is one atomic step of the backend: a publish, the first step
 * of a publish across shards, a load of a channel's history, channel administration,
 * a listing page, a heartbeat. The comment above each says its KEYS and ARGV and
 * what it answers; the key layout is in redis_backend.h.
 *
 * A script call costs Redis about a microsecond per Redis call it makes on top of
 * the command itself, so the publish script (run for every publish) counts its
 * calls; the others run once per subscribe, admin request or heartbeat.
 */
#include "cluster/redis_scripts.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/sha.h>

#include "core/util.h"

/*
 * KEYS: [1] last-id key (string), [2] epoch key, then per channel: stream, options
 * and, on a single Redis, state; on a single Redis last the listing index of the
 * channels' app. ARGV: [1] id hint, [2] payload, [3] auto-create
 * 1/0 (a user's channel, "#user:" in its keys, is always created), [4] default history size, [5]
 * default history ttl ms, [6] default channel ttl ms, [7] now ms, [8] the publish verb, then the
 * bus channel name of each channel. Returns {id, subscribers}, or an error "NOTFOUND <index>".
 *
 * Every call a Lua script makes costs Redis about a microsecond on top of the
 * command, and this one runs for every publish: for one channel it makes six (eight
 * when the keys' expiries move: at most once a second, to 2 s past their ttl, so a
 * channel published to many times a second does not push them every time; the
 * options hash keeps in `exp` when they last moved, by the publisher's clock, and
 * a clock behind that moves them at once).
 * The options hash holds the channel's last id, read with its options; each Stream
 * entry carries in field v the id of the channel's message before it, so XADD can
 * trim (MAXLEN) without reading what it drops: the highest id trimmed is the v of
 * the oldest entry left (load_lua). The state hash is only a deleted channel's
 * tombstone (its last id, so that a channel re-created under the name continues
 * the chain and old cursors get their gap). On a single Redis a channel's first publish
 * (no `created` yet: new, or again after it expired or was deleted) adds it to the
 * listing index in the same step, so that a node that reads the index after it
 * subscribed to a pattern's bus channels either finds the channel there or hears its
 * first message on the bus (src/hub/patsub.c). On a Redis Cluster (SPUBLISH: one
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
    "local n = (#KEYS - (cluster and 2 or 3)) / k\n"
    "local id = tonumber(ARGV[1])\n"
    "local last = redis.call('GET', KEYS[1])\n"
    "if last then id = math.max(id, tonumber(last) + 1) end\n"
    "local opts, prev = {}, {}\n"
    "for i = 1, n do\n"
    "  local o = KEYS[k*i - k + 4]\n"
    "  local opt = redis.call('HMGET', o, 'history_size', 'history_ttl', 'ttl', 'persistent',\n"
    "                         'created', 'last', 'exp')\n"
    "  if not opt[5] and ARGV[3] == '0' and not string.find(o, '#user:', 1, true) and\n"
    "     redis.call('EXISTS', o) == 0 then\n"
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
    /* expiries move at most once a second, to 2 s past the ttl: never early */
    "  local age = tonumber(ARGV[7]) - tonumber(opt[7] or '0')\n"
    "  local push = opt[4] ~= '1' and (age >= 1000 or age < 0)\n"
    "  local f = {'HSET', o, 'active', ARGV[7], 'last', sid}\n"
    "  if not opt[5] then\n"
    "    f[#f + 1] = 'created'; f[#f + 1] = ARGV[7]\n"
    "    if not cluster and not string.find(h, '#', 1, true) then\n" /* users: not listed */
    "      redis.call('ZADD', KEYS[#KEYS], 'NX', 0, string.sub(h, 9, -4))\n"
    "    end\n"
    "  end\n"
    "  if push then f[#f + 1] = 'exp'; f[#f + 1] = ARGV[7] end\n"
    "  redis.call(unpack(f))\n"
    "  if push then\n"
    "    local httl = tonumber(opt[2] or ARGV[5])\n"
    "    redis.call('PEXPIRE', o, math.max(tonumber(opt[3] or ARGV[6]), httl) + 2000)\n"
    "    redis.call('PEXPIRE', h, httl + 2000)\n"
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
 * older than that may have missed messages Redis lost. A gap fill reports it only when the
 * data set began after the node's position (Redis lost its data meanwhile: a message
 * acknowledged just before may have reached no node); otherwise the node's cache holds
 * what it followed live. Both report what Redis trimmed: up to the v of the oldest entry (the first
 * load reads the newest history-size; a gap fill looks at the oldest one), the deleted channel's
 * last id (state hash), or the channel's last id when its whole Stream expired.
 */
static const char load_lua[] =
    "if ARGV[2] == '0' and redis.call('EXISTS', KEYS[2]) == 0 then\n"
    "  return redis.error_reply('NOTFOUND no such channel')\n"
    "end\n"
    "local opt = redis.call('HMGET', KEYS[2], 'history_size', 'history_ttl', 'last', 'batch_ms',\n"
    "                       'conflate', 'presence')\n"
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
    /* a data set begun after what the node followed (a Redis that lost its data): what
     * came in between is gone, acknowledged or not */
    "  if tonumber(ep) - 1 > tonumber(ARGV[1]) then\n"
    "    evicted = math.max(evicted, tonumber(ep) - 1)\n"
    "  end\n"
    "end\n"
    "local last = opt[3] or st[2]\n"
    "if #e == 0 and last and redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  evicted = math.max(evicted, tonumber(last))\n" /* the whole Stream expired */
    "end\n"
    "return {string.format('%d', evicted), hs, e, opt[2] or '', opt[4] or '', opt[5] or '',\n"
    "        opt[6] or ''}\n";

/*
 * KEYS: stream, options, state, counts. ARGV: [1] now ms, [2] mode (get|put|del),
 * [3] default channel ttl ms, [4] default history ttl ms, [5] bus channel,
 * [6] publish verb, [7..13] put: ttl, history_size, history_ttl, persistent, batch_ms,
 * conflate, presence ('' = unchanged). Returns the channel's info as a flat list
 * ({'deleted'} for del). A put that sets batch_ms or conflate tells every node ("X window
 * B C"), one that sets presence "X presence 0|1".
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
    "  local f = {'ttl', 'history_size', 'history_ttl', 'persistent', 'batch_ms', 'conflate',\n"
    "             'presence'}\n"
    "  for i = 1, 7 do\n"
    "    if ARGV[6 + i] ~= '' then redis.call('HSET', o, f[i], ARGV[6 + i]) end\n"
    "  end\n"
    "  if ARGV[11] ~= '' or ARGV[12] ~= '' then\n"
    "    local w = redis.call('HMGET', o, 'batch_ms', 'conflate')\n"
    "    redis.call(ARGV[6], ARGV[5], 'X window ' .. (w[1] or '-') .. ' ' .. (w[2] or '-'))\n"
    "  end\n"
    "  if ARGV[13] ~= '' then redis.call(ARGV[6], ARGV[5], 'X presence ' .. ARGV[13]) end\n"
    "  redis.call('HSET', o, 'active', ARGV[1])\n"
    "  exists = true\n"
    "end\n"
    "if not exists then return redis.error_reply('NOTFOUND no such channel') end\n"
    "local opt = redis.call('HMGET', o, 'ttl', 'history_size', 'history_ttl', 'persistent',\n"
    "                        'created', 'active', 'batch_ms', 'conflate', 'presence')\n"
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
    "        opt[6] or '0', subs, len, added, first, last, pttl, opt[7] or '', opt[8] or '',\n"
    "        opt[9] or ''}\n";

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

/* ---- apps (cluster/redis_apps.c); every key but the gate's in the {apps} slot ---------- */

/* KEYS: the apps hash, the version. ARGV: [1] create|update|delete, [2] name, [3] state
 * JSON. Returns the new version, -1 (create: the name is taken) or -2 (update, delete:
 * no such app). */
static const char apps_put_lua[] =
    "local how, name = ARGV[1], ARGV[2]\n"
    "if how == 'create' then\n"
    "  if redis.call('HSETNX', KEYS[1], name, ARGV[3]) == 0 then return -1 end\n"
    "elseif how == 'update' then\n"
    "  if redis.call('HEXISTS', KEYS[1], name) == 0 then return -2 end\n"
    "  redis.call('HSET', KEYS[1], name, ARGV[3])\n"
    "elseif redis.call('HDEL', KEYS[1], name) == 0 then\n"
    "  return -2\n"
    "end\n"
    "return redis.call('INCR', KEYS[2])\n";

/* KEYS: the apps hash, the version. Returns {version, {name, state, ...}}: one moment's. */
static const char apps_snap_lua[] = "return {redis.call('GET', KEYS[2]) or '0',\n"
                                    "        redis.call('HGETALL', KEYS[1])}\n";

/*
 * A node's connection counts per app, every tick (APPS_TICK_MS). KEYS: the nodes'
 * sorted set (node -> expiry), this node's counts hash, the version. ARGV: [1] node,
 * [2] ttl ms, then app, count pairs (count 0: none any more). Returns {version, app,
 * the sum of the other live nodes' counts, ...}. Expiries are by Redis's clock.
 */
static const char apps_beat_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local me, ttl = ARGV[1], tonumber(ARGV[2])\n"
    "for i = 3, #ARGV - 1, 2 do\n"
    "  if ARGV[i + 1] == '0' then redis.call('HDEL', KEYS[2], ARGV[i])\n"
    "  else redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "redis.call('ZADD', KEYS[1], now + ttl, me)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "local sums = {}\n"
    "for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
    "  if n ~= me then\n"
    "    local h = redis.call('HGETALL', 'herald:{apps}:n:' .. n)\n"
    "    for i = 1, #h - 1, 2 do sums[h[i]] = (sums[h[i]] or 0) + tonumber(h[i + 1]) end\n"
    "  end\n"
    "end\n"
    "local out = {redis.call('GET', KEYS[3]) or '0'}\n"
    "for k, v in pairs(sums) do out[#out + 1] = k; out[#out + 1] = tostring(v) end\n"
    "return out\n";

/*
 * Before a publish to (or a PUT of) an app's channels, on the app's slot. KEYS: the
 * app's listing index, its rate key. ARGV: [1] publishes per second (0: none, and
 * a PUT counts none), [2] channels (0: none), then the channel keys. Refuses with
 * {'rate'} or {'channels', count}; else counts the publish (this second, by Redis's
 * clock), adds new channels to the index (so that other nodes count them at once)
 * and returns {'ok', the app's channel count}.
 */
static const char apps_gate_lua[] =
    "local rate, maxch = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local sec, n = redis.call('TIME')[1], 0\n"
    "if rate > 0 then\n"
    "  local v = redis.call('GET', KEYS[2])\n"
    "  local s, c = string.match(v or '', '^(%d+) (%d+)$')\n"
    "  if s == sec then n = tonumber(c) end\n"
    "  if n >= rate then return {'rate'} end\n"
    "end\n"
    "local card = redis.call('ZCARD', KEYS[1])\n"
    "local new = {}\n"
    "if maxch > 0 then\n"
    "  for i = 3, #ARGV do\n"
    "    if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then new[#new + 1] = ARGV[i] end\n"
    "  end\n"
    "  if #new > 0 and card + #new > maxch then return {'channels', card} end\n"
    "end\n"
    "if rate > 0 then redis.call('SET', KEYS[2], sec .. ' ' .. (n + 1), 'PX', 2000) end\n"
    "for _, k in ipairs(new) do redis.call('ZADD', KEYS[1], 'NX', 0, k) end\n"
    "return {'ok', card + #new}\n";

/* A channel of a deleted app, gone with everything Redis keeps of it. KEYS: stream,
 * options, state, counts and, on a Redis Cluster, its last-id key. ARGV: [1] bus
 * channel, [2] publish verb. Subscribers on every node get `closed`. */
static const char apps_purge_lua[] = "redis.call('DEL', unpack(KEYS))\n"
                                     "redis.call(ARGV[2], ARGV[1], 'X closed')\n"
                                     "return 1\n";

/* ---- presence (cluster/redis_presence.c) ------------------------------------------------- */

/*
 * A node's count of one user (kind 'u'), of its connections without a user ('a') or of
 * its users past the listing cap ('x') on a channel: field "<node identity>\n<kind><user>"
 * of the channel's entries hash. Users' totals over every identity (live or not yet swept)
 * decide the events: a total leaving 0 publishes "X join <n> <user><info>" (and keeps the
 * info), one reaching 0 "X leave …". KEYS: entries, totals, infos. ARGV: [1] identity,
 * [2] kind, [3] user, [4] count (0: none), [5] info, [6] publish verb, [7] bus channel.
 */
static const char presence_set_lua[] =
    "local u = ARGV[3]\n"
    "local f = ARGV[1] .. '\\n' .. ARGV[2] .. u\n"
    "local old = tonumber(redis.call('HGET', KEYS[1], f) or '0')\n"
    "local c = tonumber(ARGV[4])\n"
    "if c > 0 then redis.call('HSET', KEYS[1], f, ARGV[4]) else redis.call('HDEL', KEYS[1], f) "
    "end\n"
    "if ARGV[2] ~= 'u' or c == old then return 0 end\n"
    "local d = c - old\n"
    "local t = redis.call('HINCRBY', KEYS[2], u, d)\n"
    "if t <= 0 then\n"
    "  redis.call('HDEL', KEYS[2], u)\n"
    "  local info = redis.call('HGET', KEYS[3], u) or ''\n"
    "  redis.call('HDEL', KEYS[3], u)\n"
    "  if t - d > 0 then redis.call(ARGV[6], ARGV[7], 'X leave ' .. #u .. ' ' .. u .. info) end\n"
    "elseif t - d <= 0 then\n"
    "  if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], u, ARGV[5]) end\n"
    "  redis.call(ARGV[6], ARGV[7], 'X join ' .. #u .. ' ' .. u .. ARGV[5])\n"
    "end\n"
    "return 1\n";

/* A dead identity's entries on a channel go, with a leave for each user it was the last
 * of. KEYS: entries, totals, infos. ARGV: [1] identity, [2] publish verb, [3] bus channel.
 * Returns how many entries went. */
static const char presence_sweep_lua[] =
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "local pre = ARGV[1] .. '\\n'\n"
    "local n = 0\n"
    "for i = 1, #all, 2 do\n"
    "  local f = all[i]\n"
    "  if string.sub(f, 1, #pre) == pre then\n"
    "    redis.call('HDEL', KEYS[1], f)\n"
    "    n = n + 1\n"
    "    if string.sub(f, #pre + 1, #pre + 1) == 'u' then\n"
    "      local u = string.sub(f, #pre + 2)\n"
    "      local t = redis.call('HINCRBY', KEYS[2], u, -tonumber(all[i + 1]))\n"
    "      if t <= 0 then\n"
    "        redis.call('HDEL', KEYS[2], u)\n"
    "        local info = redis.call('HGET', KEYS[3], u) or ''\n"
    "        redis.call('HDEL', KEYS[3], u)\n"
    "        redis.call(ARGV[2], ARGV[3], 'X leave ' .. #u .. ' ' .. u .. info)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return n\n";

/* A channel's presence without the entries of the identities whose lease expired (ARGV:
 * the reader's last tick saw them so; those it did not see yet count). KEYS: entries,
 * infos, options. Returns {options exist 0/1, option presence ('' unset), anonymous, unlisted,
 * then user, connections, info (or '') per user}. */
static const char presence_read_lua[] =
    "local dead = {}\n"
    "for i = 1, #ARGV do dead[ARGV[i]] = true end\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "local users, order, anon, unl = {}, {}, 0, 0\n"
    "for i = 1, #all, 2 do\n"
    "  local f = all[i]\n"
    "  local nl = string.find(f, '\\n', 1, true)\n"
    "  if nl and not dead[string.sub(f, 1, nl - 1)] then\n"
    "    local kind, c = string.sub(f, nl + 1, nl + 1), tonumber(all[i + 1]) or 0\n"
    "    if kind == 'a' then anon = anon + c\n"
    "    elseif kind == 'x' then unl = unl + c\n"
    "    elseif kind == 'u' then\n"
    "      local u = string.sub(f, nl + 2)\n"
    "      if not users[u] then users[u] = 0; order[#order + 1] = u end\n"
    "      users[u] = users[u] + c\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local out = {redis.call('EXISTS', KEYS[3]), redis.call('HGET', KEYS[3], 'presence') or '',\n"
    "             anon, unl}\n"
    "for _, u in ipairs(order) do\n"
    "  out[#out + 1] = u; out[#out + 1] = users[u]\n"
    "  out[#out + 1] = redis.call('HGET', KEYS[2], u) or ''\n"
    "end\n"
    "return out\n";

/* Every second per node, on the {presence} slot: renews the node's lease (unless it was
 * lost: it expired, or another node swept the identity) and answers which registered
 * identities hold no lease. KEYS: the registry (a set). ARGV: [1] lease key prefix, [2] the
 * node's identity, [3] lease ms, [4] '1' when this identity held a lease before.
 * Returns {lost 0/1, dead identities}. */
static const char presence_tick_lua[] =
    "local mine = ARGV[1] .. ARGV[2]\n"
    "if ARGV[4] == '1' and (redis.call('EXISTS', mine) == 0 or\n"
    "                       redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0) then\n"
    "  return {1, {}}\n"
    "end\n"
    "redis.call('SET', mine, '1', 'PX', ARGV[3])\n"
    "redis.call('SADD', KEYS[1], ARGV[2])\n"
    "local dead = {}\n"
    "for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  if redis.call('EXISTS', ARGV[1] .. n) == 0 then dead[#dead + 1] = n end\n"
    "end\n"
    "return {0, dead}\n";

/* ---- calling them ------------------------------------------------------------------ */

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

/* In the order of enum redis_script. */
static struct script scripts[REDIS_SCRIPT_COUNT] = {
    {.body = publish_lua},        {.body = prepare_lua},       {.body = load_lua},
    {.body = chan_lua},           {.body = list_lua},          {.body = beat_lua},
    {.body = apps_put_lua},       {.body = apps_snap_lua},     {.body = apps_beat_lua},
    {.body = apps_gate_lua},      {.body = apps_purge_lua},    {.body = presence_set_lua},
    {.body = presence_sweep_lua}, {.body = presence_read_lua}, {.body = presence_tick_lua}};

void redis_script_init(void)
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

int redis_script_call(struct redis_bus *bus, enum redis_script which, const char *key,
                      size_t key_len, resp_reply_fn *cb, void *arg, int argc, const char **argv,
                      const size_t *argl)
{
    assert(which >= 0 && which < REDIS_SCRIPT_COUNT && argc >= 1);
    /* One allocation: the call, argv and argl (two slots ahead for the verb and the
     * script), then the bytes of the key and of every argument. */
    size_t n = (size_t)argc + 2, bytes = key_len;
    for (size_t i = 0; i < (size_t)argc; i++)
        bytes += argl ? argl[i] : strlen(argv[i]);
    struct script_call *sc =
        xmalloc(sizeof(*sc) + n * (sizeof(char *) + sizeof(size_t)) + bytes + 1);
    const char **av = (const char **)(sc + 1);
    size_t *al = (size_t *)(av + n);
    char *p = (char *)(al + n);
    *sc = (struct script_call){.bus = bus,
                               .script = &scripts[which],
                               .cb = cb,
                               .arg = arg,
                               .argc = argc,
                               .key_len = key_len,
                               .key = p,
                               .argv = av + 2,
                               .argl = al + 2};
    memcpy(p, key, key_len);
    p += key_len;
    for (size_t i = 0; i < (size_t)argc; i++) {
        al[i + 2] = argl ? argl[i] : strlen(argv[i]);
        memcpy(p, argv[i], al[i + 2]);
        av[i + 2] = p;
        p += al[i + 2];
    }
    int rc = script_send(sc);
    if (rc < 0)
        free(sc);
    return rc;
}

void redis_script_load_all(struct redis_bus *bus)
{
    for (size_t i = 0; i < ARRAY_LEN(scripts); i++) {
        const char *argv[] = {"SCRIPT", "LOAD", scripts[i].body};
        redis_bus_command(bus, NULL, 0, script_ignore, NULL, 3, argv, NULL);
    }
}
