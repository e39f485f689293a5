/*
 * Unit tests for src/hub/msg.c: the framings a message is built with (envelope,
 * WebSocket, SSE, raw SSE, streaming chunk) and their size, control frames, the
 * lazily built deflate frame (once, however many ask) and multi-channel groups.
 * The ASan build checks that every reference is released.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/util.h"
#include "hub/msg.h"
#include "transport/ws_frame.h"

static struct slice sl(const char *s)
{
    return (struct slice){s, (uint32_t)strlen(s)};
}

/* The framings of one message: every transport's bytes, built once. */
static void test_message_framings(void **state)
{
    const char *json = "{\"k\":[1,2]}";
    struct publish_req req = {
        .data_json = sl(json),
        .raw = sl("line1\r\nline2\nline3\rend"),
        .event = "chat\"x",
        .event_len = 6,
    };
    uint64_t id = 1795463495714811;
    struct msg *m = msg_new("room", 4, 7, id, wall_ms(), &req);
    assert_int_equal(m->seq, id);
    assert_int_equal(m->chan_id, 7);
    assert_null(m->group);
    char want[1024];
    int wl = snprintf(want, sizeof(want),
                      "{\"event\":\"message\",\"channel\":\"room\",\"id\":\"%" PRIu64
                      "\",\"time\":%" PRIu64 ",\"type\":\"chat\\\"x\",\"data\":%s}",
                      id, m->time_ms, json);
    assert_int_equal(m->envelope.len, wl);
    assert_memory_equal(m->envelope.data, want, (size_t)wl);
    assert_true(m->time_ms <= wall_ms() && m->time_ms + 10000 > wall_ms());
    /* One allocation holds the struct and every framing: what history counts. */
    assert_int_equal(m->size, sizeof(*m) + m->ws.len + m->chunk.len + m->sse.len + m->sse_raw.len);

    /* WebSocket: one unmasked final text frame around the envelope. */
    assert_int_equal(m->ws.len, 2 + m->envelope.len);
    assert_int_equal((uint8_t)m->ws.data[0], 0x81);
    assert_int_equal((uint8_t)m->ws.data[1], m->envelope.len);
    assert_memory_equal(m->ws.data + 2, want, (size_t)wl);

    /* SSE: id, event, the envelope as data, blank line. */
    char sse[1200];
    int sse_len =
        snprintf(sse, sizeof(sse), "id: %" PRIu64 "\nevent: chat\"x\ndata: %s\n\n", id, want);
    assert_int_equal(m->sse.len, sse_len);
    assert_memory_equal(m->sse.data, sse, (size_t)sse_len);

    /* SSE raw: the body itself, one data line per line whatever the line ending. */
    sse_len = snprintf(sse, sizeof(sse),
                       "id: %" PRIu64 "\nevent: chat\"x\n"
                       "data: line1\ndata: line2\ndata: line3\ndata: end\n\n",
                       id);
    assert_int_equal(m->sse_raw.len, sse_len);
    assert_memory_equal(m->sse_raw.data, sse, (size_t)sse_len);

    /* HTTP streaming: one chunk of envelope + "\n". */
    char chunk[1200];
    int cl = snprintf(chunk, sizeof(chunk), "%x\r\n%s\n\r\n", (unsigned)wl + 1, want);
    assert_int_equal(m->chunk.len, cl);
    assert_memory_equal(m->chunk.data, chunk, (size_t)cl);

    /* A body ending in a newline keeps it: an empty last data line. */
    ref_put(&m->ref);
    struct publish_req r2 = {.data_json = sl("\"a\\n\""), .raw = sl("a\n")};
    m = msg_new("room", 4, 7, ++id, wall_ms(), &r2);
    sse_len = snprintf(sse, sizeof(sse), "id: %" PRIu64 "\ndata: a\ndata: \n\n", id);
    assert_int_equal(m->sse_raw.len, sse_len);
    assert_memory_equal(m->sse_raw.data, sse, (size_t)sse_len);
    ref_put(&m->ref);
}

static void test_control_frames(void **state)
{
    const char *fields = "\"channel\":\"a\",\"oldest\":\"7\"";
    struct ctl_frames *c = ctl_frames_new("gap", fields, strlen(fields));
    const char *json = "{\"event\":\"gap\",\"channel\":\"a\",\"oldest\":\"7\"}";
    assert_int_equal(c->json.len, strlen(json));
    assert_memory_equal(c->json.data, json, strlen(json));
    assert_int_equal((uint8_t)c->ws.data[0], 0x81);
    assert_int_equal((uint8_t)c->ws.data[1], strlen(json));
    assert_memory_equal(c->ws.data + 2, json, strlen(json));
    char want[256];
    int n = snprintf(want, sizeof(want), "event: gap\ndata: %s\n\n", json);
    assert_int_equal(c->sse.len, n);
    assert_memory_equal(c->sse.data, want, (size_t)n);
    n = snprintf(want, sizeof(want), "%zx\r\n%s\n\r\n", strlen(json) + 1, json);
    assert_int_equal(c->chunk.len, n);
    assert_memory_equal(c->chunk.data, want, (size_t)n);
    ref_put(&c->ref);

    c = ctl_frames_new("closed", "", 0);
    assert_int_equal(c->json.len, strlen("{\"event\":\"closed\"}"));
    assert_memory_equal(c->json.data, "{\"event\":\"closed\"}", c->json.len);
    ref_put(&c->ref);
}

/* The deflate frame is built once, by whichever caller comes first, and counted. */
static void test_deflate_frame_is_built_once(void **state)
{
    char body[2000];
    memset(body, 'a', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    char json[2010];
    int jl = snprintf(json, sizeof(json), "\"%s\"", body);
    struct publish_req req = {.data_json = {json, (uint32_t)jl}, .raw = sl(body)};
    struct msg *m = msg_new("z", 1, 1, 1, wall_ms(), &req);
    assert_int_equal(msg_deflate_bytes(m), 0);
    struct ws_deflater *d = ws_deflater_new(6);
    bool built;
    struct slice a = msg_ws_deflate(m, d, &built);
    assert_true(built);
    assert_true(a.len > 2 && a.len < m->ws.len / 4);
    assert_int_equal((uint8_t)a.data[0], 0xc1); /* FIN, RSV1 (compressed), text */
    assert_true(msg_deflate_bytes(m) > a.len);
    struct slice b = msg_ws_deflate(m, d, &built);
    assert_false(built);
    assert_ptr_equal(a.data, b.data);
    ws_deflater_free(d);
    ref_put(&m->ref);
}

/* A group is shared by the messages of one publish and freed with the last. */
static void test_group_is_shared(void **state)
{
    uint64_t ids[] = {3, 5};
    struct msg_group *g = msg_group_new(ids, 2, 2);
    struct publish_req req = {.data_json = sl("1"), .raw = sl("1")};
    struct msg *a = msg_new("a", 1, 3, 9, wall_ms(), &req),
               *b = msg_new("b", 1, 5, 9, wall_ms(), &req);
    a->group = b->group = g;
    assert_int_equal(g->n, 2);
    assert_int_equal(g->chan_ids[1], 5);
    ref_put(&a->ref);
    assert_int_equal(atomic_load(&g->refs), 1);
    ref_put(&b->ref); /* LeakSanitizer: the group went with b */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_message_framings),
        cmocka_unit_test(test_control_frames),
        cmocka_unit_test(test_deflate_frame_is_built_once),
        cmocka_unit_test(test_group_is_shared),
    };
    return cmocka_run_group_tests_name("msg", tests, NULL, NULL);
}
