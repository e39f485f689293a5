/*
 * redis_payload: the message codec of cluster mode (see redis_payload.h for the
 * format). Every length read from outside is checked against what is left before it
 * is used, and every name and body against what its kind promises, since the
 * decoded message goes out to subscribers as JSON and SSE lines.
 */
#include "cluster/redis_payload.h"

#include <inttypes.h>

#include <jansson.h>

#include "transport/ws_frame.h"

void redis_payload_build(struct sbuf *b, const struct slice *channels, size_t n,
                         const struct publish_req *req, uint64_t time_ms)
{
    char kind = req->base64 ? 'B' : req->kind == PUB_TEXT ? 'T' : 'J';
    struct slice raw = req->raw; /* as published: 'J' data is derived from it */
    sbuf_printf(b, "%c %" PRIu64 " %zu %zu %u\n", kind, time_ms, n, req->event ? req->event_len : 0,
                raw.len);
    for (size_t i = 0; i < n; i++) {
        sbuf_add(b, channels[i].data, channels[i].len);
        sbuf_add(b, "\n", 1);
    }
    if (req->event)
        sbuf_add(b, req->event, req->event_len);
    sbuf_add(b, raw.data, raw.len);
}

/* A decimal number at *p (before end), at most max, then `sep`: advances *p past sep.
 * Returns 0 or -1. */
static int take_number(const char **p, const char *end, uint64_t max, char sep, uint64_t *out)
{
    const char *s = *p;
    const char *stop = memchr(s, sep, (size_t)(end - s));
    if (!stop || redis_payload_parse_id(s, (size_t)(stop - s), out) < 0 || *out > max)
        return -1;
    *p = stop + 1;
    return 0;
}

int redis_payload_parse_id(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len < 1 || len > 20 || (s[0] == '0' && len > 1))
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* What api.c makes of a binary body: EVP_EncodeBlock's base64, '=' padded, no newlines. */
static bool base64_valid(const char *s, size_t len)
{
    if (len % 4)
        return false;
    size_t pad = len && s[len - 1] == '=' ? (len > 1 && s[len - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < len - pad; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return false;
    }
    return true;
}

static bool json_valid(const char *s, size_t len)
{
    json_error_t err;
    json_t *doc = json_loadb(s, len, JSON_DECODE_ANY, &err);
    json_decref(doc);
    return doc != NULL;
}

/* The body's JSON form, for kind J, T or B; false when raw is not what kind says. */
static bool body_decode(char kind, const char *raw, size_t len, struct publish_req *req,
                        struct sbuf *data)
{
    switch (kind) {
    case 'J':
        if (!json_valid(raw, len))
            return false;
        req->kind = PUB_JSON;
        sbuf_reserve(data, len + 1);
        data->len = json_strip_ws(data->data, raw, len);
        break;
    case 'T':
        if (!ws_utf8_valid((const uint8_t *)raw, len))
            return false;
        req->kind = PUB_TEXT;
        sbuf_add_json_str(data, raw, len);
        break;
    case 'B':
        if (!base64_valid(raw, len))
            return false;
        req->kind = PUB_BINARY;
        req->base64 = true;
        sbuf_add(data, "\"", 1);
        sbuf_add(data, raw, len);
        sbuf_add(data, "\"", 1);
        break;
    default: return false;
    }
    req->data_json = (struct slice){data->data, (uint32_t)data->len};
    return true;
}

int redis_payload_parse(const char *p, size_t len, struct hub_entry *e, struct sbuf *data)
{
    const char *end = p + len;
    uint64_t nch, evl, rawl;
    memset(e, 0, sizeof(*e));
    if (len < 2 || p[1] != ' ')
        return -1;
    char kind = p[0];
    p += 2;
    if (take_number(&p, end, UINT64_MAX, ' ', &e->time_ms) < 0 ||
        take_number(&p, end, REDIS_PAYLOAD_MAX_CHANNELS, ' ', &nch) < 0 || nch < 1 ||
        take_number(&p, end, 64, ' ', &evl) < 0 ||
        take_number(&p, end, UINT32_MAX, '\n', &rawl) < 0)
        return -1;
    for (size_t i = 0; i < nch; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl || !hub_channel_key_valid(p, (size_t)(nl - p)))
            return -1;
        e->channels[i] = (struct slice){p, (uint32_t)(nl - p)};
        p = nl + 1;
    }
    e->nchannels = nch;
    /* Both lengths are bounded, so the sum cannot wrap. */
    if ((uint64_t)(end - p) != evl + rawl)
        return -1;
    if (evl) {
        if (!hub_event_name_valid(p, evl))
            return -1;
        e->req.event = p;
        e->req.event_len = evl;
    }
    p += evl;
    e->req.raw = (struct slice){p, (uint32_t)rawl};
    return body_decode(kind, p, rawl, &e->req, data) ? 0 : -1;
}

int redis_payload_parse_window(const char *p, size_t len, struct channel_opts *o)
{
    static const char head[] = "X window ";
    size_t hl = sizeof(head) - 1;
    /* memchr, not strchr, which would take a NUL for one of the three */
    if (len < hl + 3 || memcmp(p, head, hl) != 0 || p[len - 2] != ' ' ||
        !memchr("01-", p[len - 1], 3))
        return -1;
    /* '-': never set on the channel, so the app's default, which the cache already has */
    uint64_t ms = 0;
    bool has_ms = !(len - hl - 2 == 1 && p[hl] == '-');
    if (has_ms && (redis_payload_parse_id(p + hl, len - hl - 2, &ms) < 0 || ms > BATCH_MS_MAX))
        return -1;
    *o = (struct channel_opts){.has_batch_ms = has_ms,
                               .batch_ms = (uint32_t)ms,
                               .has_conflate = p[len - 1] != '-',
                               .conflate = p[len - 1] == '1'};
    return 0;
}

bool redis_payload_json_canonical(const char *p, size_t len)
{
    json_t *v = json_loadb(p, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
    char *again = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    bool ok = again && strlen(again) == len && memcmp(again, p, len) == 0;
    free(again);
    json_decref(v);
    return ok;
}

int redis_payload_parse_presence(const char *p, size_t len, struct redis_presence_event *ev)
{
    bool join = len > 7 && memcmp(p, "X join ", 7) == 0;
    bool leave = !join && len > 8 && memcmp(p, "X leave ", 8) == 0;
    if (!join && !leave)
        return -1;
    const char *s = p + (join ? 7 : 8), *end = p + len;
    const char *sp = memchr(s, ' ', (size_t)(end - s));
    uint64_t n;
    if (!sp || redis_payload_parse_id(s, (size_t)(sp - s), &n) < 0 || n < 1 ||
        n > PRESENCE_USER_MAX || n > (uint64_t)(end - sp - 1))
        return -1;
    const char *info = sp + 1 + n;
    size_t il = (size_t)(end - info);
    if (il > PRESENCE_INFO_MAX)
        return -1;
    /* It goes into every watcher's stream as it is: JSON text, one line, canonical. */
    if (il && !redis_payload_json_canonical(info, il))
        return -1;
    *ev = (struct redis_presence_event){
        .join = join, .user = {sp + 1, (uint32_t)n}, .info = {info, (uint32_t)il}};
    return 0;
}

int redis_payload_parse_presence_opt(const char *p, size_t len, bool *on)
{
    if (len != 12 || memcmp(p, "X presence ", 11) != 0 || (p[11] != '0' && p[11] != '1'))
        return -1;
    *on = p[11] == '1';
    return 0;
}

enum redis_bus_kind redis_payload_parse_bus(const char *p, size_t len, struct hub_entry *e,
                                            struct sbuf *data)
{
    if (len == 8 && memcmp(p, "X closed", 8) == 0)
        return REDIS_BUS_CLOSED;
    struct channel_opts o;
    if (redis_payload_parse_window(p, len, &o) == 0)
        return REDIS_BUS_WINDOW;
    struct redis_presence_event ev;
    if (redis_payload_parse_presence(p, len, &ev) == 0)
        return REDIS_BUS_PRESENCE;
    bool on;
    if (redis_payload_parse_presence_opt(p, len, &on) == 0)
        return REDIS_BUS_PRESENCE_OPT;
    const char *sp = memchr(p, ' ', len);
    uint64_t seq;
    if (!sp || redis_payload_parse_id(p, (size_t)(sp - p), &seq) < 0 || seq == 0 ||
        redis_payload_parse(sp + 1, len - (size_t)(sp + 1 - p), e, data) < 0)
        return REDIS_BUS_BAD;
    e->seq = seq;
    return REDIS_BUS_MESSAGE;
}

int redis_payload_parse_entry(const redisReply *entry, struct hub_entry *e, struct sbuf *data)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING ||
        entry->element[1]->type != REDIS_REPLY_ARRAY)
        return -1;
    const redisReply *id = entry->element[0], *fields = entry->element[1], *payload = NULL;
    uint64_t seq;
    if (id->len < 3 || memcmp(id->str + id->len - 2, "-0", 2) != 0 ||
        redis_payload_parse_id(id->str, id->len - 2, &seq) < 0 || seq == 0 || fields->elements % 2)
        return -1;
    for (size_t i = 0; i < fields->elements; i += 2) {
        const redisReply *f = fields->element[i], *v = fields->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            return -1;
        if (f->len == 1 && f->str[0] == 'p')
            payload = v;
    }
    if (!payload || redis_payload_parse(payload->str, payload->len, e, data) < 0)
        return -1;
    e->seq = seq;
    return 0;
}
