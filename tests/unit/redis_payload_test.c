/*
 * redis_payload: what build writes, parse reads back (every body kind, events,
 * several channels); and what parse refuses: the crafted bus message of issue 7
 * ("J 1 0 -1 2\nx", which read 2^64-1 bytes of event), lengths that overflow or run
 * past the end, missing newlines, too many channels, numbers with signs or leading
 * zeros, names that are not channel or event names, bodies that are not what their
 * kind says, bus ids of 0, and Stream entries of the wrong shape (built from RESP
 * bytes with hiredis' reader).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "cluster/redis_payload.h"

/* parse over a copy of exactly len bytes, so that ASan catches any read past them */
static int parse(const char *p, size_t len)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, p, len);
    struct hub_entry e;
    struct sbuf data = {0};
    int rc = redis_payload_parse(copy, len, &e, &data);
    if (rc == 0) {
        assert_true(e.nchannels >= 1 && e.nchannels <= REDIS_PAYLOAD_MAX_CHANNELS);
        assert_true(e.req.raw.data >= copy && e.req.raw.data + e.req.raw.len <= copy + len);
        assert_true(e.req.event_len <= EVENT_NAME_MAX);
    }
    sbuf_free(&data);
    free(copy);
    return rc;
}

#define PARSE(lit) parse(lit, sizeof(lit) - 1)

static void test_round_trip(void **state)
{
    struct slice ch[] = {{"news", 4}, {"sport.eu", 8}};
    struct publish_req reqs[] = {
        {.kind = PUB_JSON, .raw = {"{ \"a\": [1, 2] }", 15}},
        {.kind = PUB_TEXT, .raw = {"h\xc3\xa9llo \"x\"", 10}, .event = "score.1", .event_len = 7},
        {.kind = PUB_BINARY, .base64 = true, .raw = {"/w==", 4}},
        {.kind = PUB_TEXT, .raw = {"", 0}},
    };
    const char *want[] = {"{\"a\":[1,2]}", "\"h\xc3\xa9llo \\\"x\\\"\"", "\"/w==\"", "\"\""};
    for (size_t i = 0; i < ARRAY_LEN(reqs); i++) {
        struct sbuf b = {0}, data = {0};
        redis_payload_build(&b, ch, 2, &reqs[i], 1700000000123);
        struct hub_entry e;
        assert_int_equal(redis_payload_parse(b.data, b.len, &e, &data), 0);
        assert_int_equal(e.time_ms, 1700000000123);
        assert_int_equal(e.nchannels, 2);
        assert_memory_equal(e.channels[1].data, "sport.eu", 8);
        assert_int_equal(e.req.kind, reqs[i].kind);
        assert_int_equal(e.req.event_len, reqs[i].event_len);
        assert_int_equal(e.req.raw.len, reqs[i].raw.len);
        assert_int_equal(e.req.data_json.len, strlen(want[i]));
        assert_memory_equal(e.req.data_json.data, want[i], strlen(want[i]));
        /* the bus form: "<id> <payload>" */
        struct sbuf bus = {0}, data2 = {0};
        sbuf_printf(&bus, "%d %.*s", 42, (int)b.len, b.data);
        assert_int_equal(redis_payload_parse_bus(bus.data, bus.len, &e, &data2), REDIS_BUS_MESSAGE);
        assert_int_equal(e.seq, 42);
        sbuf_free(&b);
        sbuf_free(&bus);
        sbuf_free(&data);
        sbuf_free(&data2);
    }
}

static void test_the_crafted_bus_message_is_refused(void **state)
{
    /* Issue 7: parsed with an event length of 2^64-1 (sscanf's %llu takes "-1"), and
     * 0 channels + (2^64-1) + 2 wrapped around to the one byte left. */
    assert_int_equal(PARSE("J 1 0 -1 2\nx"), -1);
    struct hub_entry e;
    struct sbuf data = {0};
    assert_int_equal(redis_payload_parse_bus("7 J 1 0 -1 2\nx", 14, &e, &data), REDIS_BUS_BAD);
    sbuf_free(&data);
}

static void test_lengths(void **state)
{
    assert_int_equal(PARSE("T 1 1 0 2\nch\nab"), 0);
    assert_int_equal(PARSE("T 1 1 0 3\nch\nab"), -1); /* past the end */
    assert_int_equal(PARSE("T 1 1 0 1\nch\nab"), -1); /* bytes left over */
    assert_int_equal(PARSE("T 1 1 1 2\nch\nab"), -1); /* the event takes the body's byte */
    assert_int_equal(PARSE("T 1 1 0 18446744073709551615\nch\nab"), -1);
    assert_int_equal(PARSE("T 1 1 0 18446744073709551616\nch\nab"), -1); /* overflow */
    assert_int_equal(PARSE("T 1 1 18446744073709551614 4\nch\nab"), -1);
    assert_int_equal(PARSE("T 1 1 65 2\nch\nab"), -1); /* longer than any event name */
    assert_int_equal(PARSE("T 1 1 0 4294967296\nch\nab"), -1);
    assert_int_equal(PARSE("T 18446744073709551616 1 0 2\nch\nab"), -1);
    assert_int_equal(PARSE("T 18446744073709551615 1 0 2\nch\nab"), 0);
}

static void test_numbers(void **state)
{
    assert_int_equal(PARSE("T +1 1 0 2\nch\nab"), -1);
    assert_int_equal(PARSE("T -1 1 0 2\nch\nab"), -1);
    assert_int_equal(PARSE("T 1 01 0 2\nch\nab"), -1);
    assert_int_equal(PARSE("T 1 1 00 2\nch\nab"), -1);
    assert_int_equal(PARSE("T 1 1 0  2\nch\nab"), -1);
    assert_int_equal(PARSE("T 1 1 0 2 \nch\nab"), -1);
    assert_int_equal(PARSE("T 1 1 0 0x2\nch\nab"), -1);
    assert_int_equal(PARSE("T  1 1 0 2\nch\nab"), -1);
    assert_int_equal(PARSE("T 1 1 0\nch\nab"), -1); /* a field missing */
    assert_int_equal(PARSE("T 1 1 0 2 3\nch\nab"), -1);
    assert_int_equal(PARSE("T 1 1 0 2"), -1); /* no newline at all */
    assert_int_equal(PARSE(""), -1);
    assert_int_equal(PARSE("T"), -1);
    assert_int_equal(PARSE("X 1 1 0 2\nch\nab"), -1);
    assert_int_equal(PARSE("TT1 1 0 2\nch\nab"), -1);
}

static void test_channels(void **state)
{
    assert_int_equal(PARSE("T 1 0 0 2\nab"), -1);     /* none */
    assert_int_equal(PARSE("T 1 2 0 2\nch\nab"), -1); /* the second has no newline */
    assert_int_equal(PARSE("T 1 1 0 2\nch"), -1);
    assert_int_equal(PARSE("T 1 1 0 2\n\nab"), -1);    /* empty name */
    assert_int_equal(PARSE("T 1 1 0 2\nc h\nab"), -1); /* not a channel name */
    assert_int_equal(PARSE("T 1 1 0 2\nc\"h\nab"), -1);
    struct sbuf b = {0};
    sbuf_printf(&b, "T 1 %d 0 2\n", 65);
    for (int i = 0; i < 65; i++)
        sbuf_printf(&b, "c%d\n", i);
    sbuf_add(&b, "ab", 2);
    assert_int_equal(parse(b.data, b.len), -1); /* too many */
    b.len = 0;
    sbuf_printf(&b, "T 1 %d 0 2\n", 64);
    for (int i = 0; i < 64; i++)
        sbuf_printf(&b, "c%d\n", i);
    sbuf_add(&b, "ab", 2);
    assert_int_equal(parse(b.data, b.len), 0);
    b.len = 0;
    sbuf_printf(&b, "T 1 1 0 2\n");
    for (int i = 0; i < 129; i++)
        sbuf_add(&b, "x", 1);
    sbuf_add(&b, "\nab", 3);
    assert_int_equal(parse(b.data, b.len), -1); /* a name of 129 bytes */
    sbuf_free(&b);
}

static void test_events_and_bodies(void **state)
{
    assert_int_equal(PARSE("T 1 1 4 2\nch\ngoalab"), 0);
    assert_int_equal(PARSE("T 1 1 4 2\nch\ngo\nlab"), -1); /* an SSE line break */
    assert_int_equal(PARSE("T 1 1 4 2\nch\ngo\"lab"), -1);
    assert_int_equal(PARSE("T 1 1 0 2\nch\na\xff"), -1); /* T: not UTF-8 */
    assert_int_equal(PARSE("J 1 1 0 7\nch\n{\"a\":1}"), 0);
    assert_int_equal(PARSE("J 1 1 0 6\nch\n{\"a\":1"), -1); /* J: not JSON */
    assert_int_equal(PARSE("J 1 1 0 8\nch\n1,\"b\":2"),
                     -1); /* ... that would end up in the envelope */
    assert_int_equal(PARSE("J 1 1 0 0\nch\n"), -1);
    assert_int_equal(PARSE("B 1 1 0 4\nch\nAAA="), 0);
    assert_int_equal(PARSE("B 1 1 0 4\nch\nAA\"="), -1); /* B: not base64 */
    assert_int_equal(PARSE("B 1 1 0 3\nch\nAAA"), -1);
    assert_int_equal(PARSE("B 1 1 0 4\nch\nA=AA"), -1);
}

static void test_bus_messages(void **state)
{
    struct hub_entry e;
    struct sbuf data = {0};
    const char *bad[] = {"0 T 1 1 0 2\nch\nab",
                         "-1 T 1 1 0 2\nch\nab",
                         " T 1 1 0 2\nch\nab",
                         "01 T 1 1 0 2\nch\nab",
                         "1T 1 1 0 2\nch\nab",
                         "X closed ",
                         "X window 10001 0",
                         "X window 5 2",
                         "X window 05 1",
                         "X window -5 1",
                         "X window  1",
                         "X window 5 1 ",
                         "X window 5",
                         "X",
                         ""};
    /* The same test decides which info a presence read shows (redis_presence.c). */
    assert_true(redis_payload_json_canonical("{\"a\":1}", 7));
    assert_false(redis_payload_json_canonical("1.0e2", 5));
    assert_false(redis_payload_json_canonical("{\"a\":1,\"a\":1}", 13));
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        assert_int_equal(redis_payload_parse_bus(bad[i], strlen(bad[i]), &e, &data), REDIS_BUS_BAD);
        sbuf_free(&data);
    }
    assert_int_equal(redis_payload_parse_bus("X closed", 8, &e, &data), REDIS_BUS_CLOSED);
    assert_int_equal(redis_payload_parse_bus("X window 3000 1", 15, &e, &data), REDIS_BUS_WINDOW);
    struct channel_opts o;
    assert_int_equal(redis_payload_parse_window("X window 3000 1", 15, &o), 0);
    assert_true(o.has_batch_ms && o.has_conflate && o.conflate);
    assert_int_equal(o.batch_ms, 3000);
    assert_int_equal(redis_payload_parse_window("X window 0 0", 12, &o), 0);
    assert_true(o.batch_ms == 0 && !o.conflate);
    assert_int_equal(redis_payload_parse_window("X window 500 -", 14, &o), 0);
    assert_true(o.has_batch_ms && o.batch_ms == 500 && !o.has_conflate);
    assert_int_equal(redis_payload_parse_window("X window - 1", 12, &o), 0);
    assert_true(!o.has_batch_ms && o.has_conflate && o.conflate);
    assert_int_equal(redis_payload_parse_window("X window -- 1", 13, &o), -1);
    assert_int_equal(redis_payload_parse_window("X window 3 \0", 12, &o), -1); /* fuzz find */
    assert_int_equal(redis_payload_parse_bus("9 T 1 1 0 2\nch\nab", 17, &e, &data),
                     REDIS_BUS_MESSAGE);
    assert_int_equal(e.seq, 9);
    sbuf_free(&data);
}

/* One reply from RESP bytes (free with freeReplyObject). */
static redisReply *reply_of(const char *resp)
{
    redisReader *r = redisReaderCreate();
    void *reply = NULL;
    assert_int_equal(redisReaderFeed(r, resp, strlen(resp)), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    assert_non_null(reply);
    redisReaderFree(r);
    return reply;
}

static int entry(const char *resp)
{
    redisReply *r = reply_of(resp);
    struct hub_entry e;
    struct sbuf data = {0};
    int rc = redis_payload_parse_entry(r, &e, &data);
    if (rc == 0)
        assert_int_equal(e.seq, 5);
    sbuf_free(&data);
    freeReplyObject(r);
    return rc;
}

static void test_stream_entries(void **state)
{
    assert_int_equal(entry("*2\r\n$3\r\n5-0\r\n*2\r\n$1\r\np\r\n$15\r\nT 1 1 0 2\nch\nab\r\n"), 0);
    /* other fields are ignored, in any order */
    assert_int_equal(
        entry("*2\r\n$3\r\n5-0\r\n*4\r\n$1\r\nv\r\n$1\r\n3\r\n$1\r\np\r\n$15\r\nT 1 1 0 "
              "2\nch\nab\r\n"),
        0);
    assert_int_equal(entry("*2\r\n$3\r\n5-1\r\n*2\r\n$1\r\np\r\n$15\r\nT 1 1 0 2\nch\nab\r\n"), -1);
    assert_int_equal(entry("*2\r\n$3\r\n0-0\r\n*2\r\n$1\r\np\r\n$15\r\nT 1 1 0 2\nch\nab\r\n"), -1);
    assert_int_equal(entry("*2\r\n$2\r\n-0\r\n*2\r\n$1\r\np\r\n$15\r\nT 1 1 0 2\nch\nab\r\n"), -1);
    assert_int_equal(entry("*2\r\n:5\r\n*2\r\n$1\r\np\r\n$15\r\nT 1 1 0 2\nch\nab\r\n"), -1);
    assert_int_equal(entry("*2\r\n$3\r\n5-0\r\n*1\r\n$1\r\np\r\n"), -1);
    assert_int_equal(entry("*2\r\n$3\r\n5-0\r\n*2\r\n$1\r\nq\r\n$15\r\nT 1 1 0 2\nch\nab\r\n"), -1);
    assert_int_equal(entry("*2\r\n$3\r\n5-0\r\n*2\r\n$1\r\np\r\n:1\r\n"), -1);
    assert_int_equal(entry("*2\r\n$3\r\n5-0\r\n$1\r\np\r\n"), -1);
    assert_int_equal(entry("*3\r\n$3\r\n5-0\r\n*0\r\n*0\r\n"), -1);
    assert_int_equal(entry("$3\r\n5-0\r\n"), -1);
    assert_int_equal(entry("*2\r\n$3\r\n5-0\r\n*2\r\n$1\r\np\r\n$14\r\nT 1 1 0 2\nch\na\r\n"), -1);
}

/* Presence on the bus: "X join|leave <n> <user><info>", the user any n bytes, the info
 * canonical compact JSON or nothing; "X presence 0|1". */
static void test_bus_presence(void **state)
{
    struct redis_presence_event ev;
    static const char join[] = "X join 5 al ce{\"name\":\"A\",\"n\":[1,2]}";
    assert_int_equal(redis_payload_parse_presence(join, strlen(join), &ev), 0);
    assert_true(ev.join);
    assert_int_equal(ev.user.len, 5);
    assert_memory_equal(ev.user.data, "al ce", 5);
    assert_int_equal(ev.info.len, strlen("{\"name\":\"A\",\"n\":[1,2]}"));
    assert_int_equal(redis_payload_parse_presence("X leave 1 \n", 11, &ev), 0);
    assert_true(!ev.join && ev.user.len == 1 && ev.user.data[0] == '\n' && ev.info.len == 0);
    struct hub_entry e;
    struct sbuf data = {0};
    assert_int_equal(redis_payload_parse_bus(join, strlen(join), &e, &data), REDIS_BUS_PRESENCE);
    assert_int_equal(redis_payload_parse_bus("X presence 1", 12, &e, &data),
                     REDIS_BUS_PRESENCE_OPT);
    bool on = false;
    assert_int_equal(redis_payload_parse_presence_opt("X presence 1", 12, &on), 0);
    assert_true(on);
    assert_int_equal(redis_payload_parse_presence_opt("X presence 0", 12, &on), 0);
    assert_false(on);
    static const char *bad[] = {
        "X join 0 ",                       /* no user */
        "X join 6 alice",                  /* shorter than it says */
        "X join 05 alice",                 /* not canonical */
        "X join 5 alice{\"a\": 1}",        /* info not compact */
        "X join 5 alice{\"a\":1",          /* info not JSON */
        "X join 5 alice{\"a\":1,\"a\":2}", /* duplicate keys */
        "X join 5 alice\n",                /* info with a newline (breaks SSE lines) */
        "X join 5 alice1.0e2",             /* as long as jansson's "100.0", not it */
        "X leave alice",
        "X joins 1 a",
        "X join 257 a",
        "X presence 2",
        "X presence 1 ",
    };
    /* The same test decides which info a presence read shows (redis_presence.c). */
    assert_true(redis_payload_json_canonical("{\"a\":1}", 7));
    assert_false(redis_payload_json_canonical("1.0e2", 5));
    assert_false(redis_payload_json_canonical("{\"a\":1,\"a\":1}", 13));
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        assert_int_equal(redis_payload_parse_bus(bad[i], strlen(bad[i]), &e, &data), REDIS_BUS_BAD);
        sbuf_free(&data);
    }
    /* info at the bound: a JSON string of 1,024 bytes fits, one more does not */
    char big[1100] = "X join 1 u\"";
    size_t n = strlen(big);
    memset(big + n, 'x', 1022);
    big[n + 1022] = '"';
    assert_int_equal(redis_payload_parse_presence(big, n + 1023, &ev), 0);
    assert_int_equal(ev.info.len, 1024);
    memmove(big + n + 1, big + n, 1023);
    big[n] = 'x';
    assert_int_equal(redis_payload_parse_presence(big, n + 1024, &ev), -1);
    sbuf_free(&data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_the_crafted_bus_message_is_refused),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_channels),
        cmocka_unit_test(test_events_and_bodies),
        cmocka_unit_test(test_bus_messages),
        cmocka_unit_test(test_bus_presence),
        cmocka_unit_test(test_stream_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
