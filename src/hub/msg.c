/*
 * msg: framing a message once for every transport (see msg.h).
 */
#include "hub/msg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "hub/hub.h"
#include "transport/ws_frame.h"

/* A plain refcounted buffer: the deflate frame. */
struct rbuf {
    struct ref ref;
    uint32_t len;
    char data[];
};

static void rbuf_free(struct ref *r)
{
    free(container_of(r, struct rbuf, ref));
}

static struct rbuf *rbuf_new(const void *data, size_t len)
{
    struct rbuf *b = xmalloc(sizeof(*b) + len);
    atomic_init(&b->ref.refs, 1);
    b->ref.free = rbuf_free;
    b->len = (uint32_t)len;
    if (data)
        memcpy(b->data, data, len);
    return b;
}

static void msg_free(struct ref *r)
{
    struct msg *m = container_of(r, struct msg, ref);
    struct rbuf *d = atomic_load(&m->ws_deflate);
    if (d)
        ref_put(&d->ref);
    if (m->group && atomic_fetch_sub(&m->group->refs, 1) == 1)
        free(m->group);
    free(m);
}

/* Appends the SSE data lines for `text` (split on \n, \r\n and \r) to b. */
static void sse_data_lines(struct sbuf *b, const char *text, size_t len)
{
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && text[i] != '\n' && text[i] != '\r')
            continue;
        sbuf_add(b, "data: ", 6);
        sbuf_add(b, text + start, i - start);
        sbuf_add(b, "\n", 1);
        if (i < len && text[i] == '\r' && i + 1 < len && text[i + 1] == '\n')
            i++;
        start = i + 1;
    }
}

/* One allocation: [struct msg][ws header][envelope][chunk][sse][sse_raw]. */
struct msg *msg_new(const char *name, size_t name_len, uint64_t chan_id, uint64_t seq,
                    uint64_t time_ms, const struct publish_req *req)
{
    struct sbuf env = {0};
    char idbuf[24];
    snprintf(idbuf, sizeof(idbuf), "%" PRIu64, seq);
    struct slice nm = chan_key_name(name, name_len); /* clients see the name, not the key */
    sbuf_adds(&env, "{\"event\":\"message\",\"channel\":\"");
    sbuf_add(&env, nm.data, nm.len); /* names never need escaping */
    sbuf_printf(&env, "\",\"id\":\"%s\",\"time\":%" PRIu64, idbuf, time_ms);
    if (req->event) {
        sbuf_adds(&env, ",\"type\":");
        sbuf_add_json_str(&env, req->event, req->event_len);
    }
    if (req->base64)
        sbuf_adds(&env, ",\"encoding\":\"base64\"");
    sbuf_adds(&env, ",\"data\":");
    sbuf_add(&env, req->data_json.data, req->data_json.len);
    sbuf_add(&env, "}", 1);

    uint8_t wsh[10];
    size_t wsh_len = ws_frame_header(wsh, WS_OP_TEXT, true, false, env.len);
    char chh[24];
    int chh_len = snprintf(chh, sizeof(chh), "%zx\r\n", env.len + 1);

    struct sbuf sse = {0};
    sbuf_printf(&sse, "id: %s\n", idbuf);
    if (req->event) {
        sbuf_adds(&sse, "event: ");
        sbuf_add(&sse, req->event, req->event_len);
        sbuf_add(&sse, "\n", 1);
    }
    size_t sse_prefix = sse.len;
    sbuf_add(&sse, "data: ", 6);
    sbuf_add(&sse, env.data, env.len);
    sbuf_add(&sse, "\n\n", 2);
    size_t sse_len = sse.len;
    /* The raw variant repeats the id/event lines: grow first, then copy, as the
     * source is the buffer itself (appending it directly would read freed memory). */
    sbuf_reserve(&sse, sse_prefix + 1);
    memcpy(sse.data + sse.len, sse.data, sse_prefix);
    sse.len += sse_prefix;
    sse_data_lines(&sse, req->raw.data, req->raw.len);
    sbuf_add(&sse, "\n", 1);

    size_t total = wsh_len + env.len + (size_t)chh_len + env.len + 3 + sse.len;
    struct msg *m = xmalloc(sizeof(*m) + total);
    char *p = (char *)(m + 1);
    atomic_init(&m->ref.refs, 1);
    m->ref.free = msg_free;
    m->seq = seq;
    m->time_ms = time_ms;
    m->arrived_us = mono_us();
    m->chan_id = chan_id;
    m->group = NULL;
    m->size = (uint32_t)(sizeof(*m) + total);
    m->deflate_counted = false;
    m->hist_ch = NULL;
    atomic_init(&m->ws_deflate, NULL);

    memcpy(p, wsh, wsh_len);
    memcpy(p + wsh_len, env.data, env.len);
    m->ws = (struct slice){p, (uint32_t)(wsh_len + env.len)};
    m->envelope = (struct slice){p + wsh_len, (uint32_t)env.len};
    p += wsh_len + env.len;
    memcpy(p, chh, (size_t)chh_len);
    memcpy(p + chh_len, env.data, env.len);
    memcpy(p + chh_len + env.len, "\n\r\n", 3);
    m->chunk = (struct slice){p, (uint32_t)((size_t)chh_len + env.len + 3)};
    p += m->chunk.len;
    memcpy(p, sse.data, sse.len);
    m->sse = (struct slice){p, (uint32_t)sse_len};
    m->sse_raw = (struct slice){p + sse_len, (uint32_t)(sse.len - sse_len)};
    sbuf_free(&env);
    sbuf_free(&sse);
    return m;
}

struct msg_group *msg_group_new(const uint64_t *chan_ids, size_t n, unsigned refs)
{
    struct msg_group *g = xmalloc(sizeof(*g) + n * sizeof(uint64_t));
    atomic_init(&g->refs, refs);
    g->n = (uint32_t)n;
    memcpy(g->chan_ids, chan_ids, n * sizeof(uint64_t));
    return g;
}

struct slice msg_ws_deflate(struct msg *m, void *deflater, bool *built)
{
    *built = false;
    struct rbuf *d = atomic_load_explicit(&m->ws_deflate, memory_order_acquire);
    if (!d) {
        size_t bound = ws_deflate_bound(m->envelope.len) + 10;
        uint8_t *tmp = xmalloc(bound);
        long n = ws_deflate_message(deflater, (const uint8_t *)m->envelope.data, m->envelope.len,
                                    tmp + 10);
        if (n < 0) {
            free(tmp);
            return m->ws; /* uncompressed is always acceptable */
        }
        uint8_t hdr[10];
        size_t hl = ws_frame_header(hdr, WS_OP_TEXT, true, true, (uint64_t)n);
        struct rbuf *b = rbuf_new(NULL, hl + (size_t)n);
        memcpy(b->data, hdr, hl);
        memcpy(b->data + hl, tmp + 10, (size_t)n);
        free(tmp);
        struct rbuf *expected = NULL;
        if (atomic_compare_exchange_strong(&m->ws_deflate, &expected, b)) {
            d = b;
            *built = true;
        } else {
            ref_put(&b->ref);
            d = expected;
        }
    }
    return (struct slice){d->data, d->len};
}

size_t msg_deflate_bytes(const struct msg *m)
{
    struct rbuf *d = atomic_load_explicit(&m->ws_deflate, memory_order_acquire);
    return d ? sizeof(*d) + d->len : 0;
}

static void ctl_free(struct ref *r)
{
    free(container_of(r, struct ctl_frames, ref));
}

struct ctl_frames *ctl_frames_new(const char *event, const char *fields_json, size_t fields_len)
{
    struct sbuf j = {0};
    sbuf_printf(&j, "{\"event\":\"%s\"", event);
    if (fields_len) {
        sbuf_add(&j, ",", 1);
        sbuf_add(&j, fields_json, fields_len);
    }
    sbuf_add(&j, "}", 1);
    uint8_t wsh[10];
    size_t wsh_len = ws_frame_header(wsh, WS_OP_TEXT, true, false, j.len);
    char sseh[48];
    int sseh_len = snprintf(sseh, sizeof(sseh), "event: %s\ndata: ", event);
    char chh[24];
    int chh_len = snprintf(chh, sizeof(chh), "%zx\r\n", j.len + 1);
    size_t total = wsh_len + j.len + (size_t)sseh_len + j.len + 2 + (size_t)chh_len + j.len + 3;
    struct ctl_frames *c = xmalloc(sizeof(*c) + total);
    atomic_init(&c->ref.refs, 1);
    c->ref.free = ctl_free;
    char *p = (char *)(c + 1);
    memcpy(p, wsh, wsh_len);
    memcpy(p + wsh_len, j.data, j.len);
    c->ws = (struct slice){p, (uint32_t)(wsh_len + j.len)};
    c->json = (struct slice){p + wsh_len, (uint32_t)j.len};
    p += c->ws.len;
    memcpy(p, sseh, (size_t)sseh_len);
    memcpy(p + sseh_len, j.data, j.len);
    memcpy(p + sseh_len + j.len, "\n\n", 2);
    c->sse = (struct slice){p, (uint32_t)((size_t)sseh_len + j.len + 2)};
    p += c->sse.len;
    memcpy(p, chh, (size_t)chh_len);
    memcpy(p + chh_len, j.data, j.len);
    memcpy(p + chh_len + j.len, "\n\r\n", 3);
    c->chunk = (struct slice){p, (uint32_t)((size_t)chh_len + j.len + 3)};
    sbuf_free(&j);
    return c;
}
