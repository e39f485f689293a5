/*
 * Unit tests for cursors as transports read and write them
 * (src/transport/transport.c): one message id, or a per-channel cursor
 * "ID.DELTA..." with one position per channel; round trips at the extremes of
 * 64-bit ids, and every malformed shape refused with a message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "transport/transport.h"

static struct sub_request req(size_t channels)
{
    struct sub_request r;
    memset(&r, 0, sizeof(r));
    r.n = channels;
    return r;
}

static int parse(struct sub_request *r, const char *s)
{
    const char *err = NULL;
    int rc = transport_parse_since(r, s, strlen(s), &err);
    if (rc)
        assert_non_null(err);
    return rc;
}

static void test_plain_id(void **state)
{
    struct sub_request r = req(3);
    assert_int_equal(parse(&r, "1795463495714811"), 0);
    assert_true(r.has_since);
    assert_int_equal(r.since, 1795463495714811ull);
    assert_int_equal(r.nsince, 0); /* one cursor for every channel */
    r = req(1);
    assert_int_equal(parse(&r, ""), 0);
    assert_false(r.has_since);
}

static void test_per_channel(void **state)
{
    struct sub_request r = req(3);
    assert_int_equal(parse(&r, "1000.-200.55"), 0);
    assert_int_equal(r.nsince, 3);
    assert_int_equal(r.since_each[0], 1000);
    assert_int_equal(r.since_each[1], 800);
    assert_int_equal(r.since_each[2], 1055);
    assert_int_equal(r.since, 1055); /* the largest, for the "ahead of us" check */
}

static void test_round_trip(void **state)
{
    const uint64_t cases[][3] = {
        {1, 2, 3},
        {UINT64_MAX, 0, UINT64_MAX - 1},
        {0, UINT64_MAX, 0},
        {1795463495714811ull, 1795463495714811ull - 523, 1795463495714811ull},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        char text[TRANSPORT_CURSOR_MAX];
        size_t n = transport_format_cursor(text, sizeof(text), cases[k], 3);
        assert_true(n > 0);
        text[n] = '\0';
        struct sub_request r = req(3);
        assert_int_equal(parse(&r, text), 0);
        for (int i = 0; i < 3; i++)
            assert_int_equal(r.since_each[i], cases[k][i]);
    }
    /* One channel: a plain id. */
    char text[32];
    uint64_t one = 42;
    size_t n = transport_format_cursor(text, sizeof(text), &one, 1);
    assert_int_equal(n, 2);
    assert_memory_equal(text, "42", 2);
    /* Too small a buffer: 0, nothing half-written relied on. */
    uint64_t big[2] = {UINT64_MAX, 0};
    assert_int_equal(transport_format_cursor(text, 8, big, 2), 0);
}

static void test_sixty_four_channels(void **state)
{
    uint64_t pos[TRANSPORT_MAX_CHANNELS];
    for (int i = 0; i < TRANSPORT_MAX_CHANNELS; i++)
        pos[i] = (i % 2) ? 0 : UINT64_MAX - (uint64_t)i;
    char text[TRANSPORT_CURSOR_MAX];
    size_t n = transport_format_cursor(text, sizeof(text), pos, TRANSPORT_MAX_CHANNELS);
    assert_true(n > 0 && n < sizeof(text));
    text[n] = '\0';
    struct sub_request r = req(TRANSPORT_MAX_CHANNELS);
    assert_int_equal(parse(&r, text), 0);
    assert_memory_equal(r.since_each, pos, sizeof(pos));
}

static void test_malformed(void **state)
{
    const char *bad[] = {
        "1000.",                  /* empty delta */
        ".1000",                  /* no first id */
        "1000..5",                /* empty delta */
        "1000.x",                 /* not a number */
        "1000.+5",                /* no plus sign */
        "1000.-",                 /* sign alone */
        "1000.-1001",             /* below 0 */
        "18446744073709551615.1", /* past 2^64 - 1 */
        "1000",                   /* fine (plain) - checked below */
        "abc",
        "1000.99999999999999999999", /* delta overflows */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sub_request r = req(2);
        int rc = parse(&r, bad[i]);
        if (strcmp(bad[i], "1000") == 0)
            assert_int_equal(rc, 0);
        else
            assert_int_equal(rc, -1);
    }
    struct sub_request r = req(3);
    assert_int_equal(parse(&r, "1.1"), -1); /* two positions for three channels */
}

/* Positions past the channels named (the user's, the hook's channels) parse; where no
 * hook may add channels, transport_cursor_fits refuses more than the channels held. */
static void test_surplus_positions(void **state)
{
    struct sub_request r = req(2);
    assert_int_equal(parse(&r, "1000.5.5.5"), 0);
    assert_int_equal(r.nsince, 4);
    assert_false(transport_cursor_fits(&r, NULL, false));
    r.n = 4;
    assert_true(transport_cursor_fits(&r, NULL, false));
}

/* One position more than the channels named: the user's channel's, last. */
static void test_user_position(void **state)
{
    struct sub_request r = req(2);
    assert_int_equal(parse(&r, "1000.5.-7"), 0);
    assert_int_equal(r.nsince, 3);
    assert_int_equal(r.since_each[2], 993);
    assert_int_equal(r.since, 1005);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_id),          cmocka_unit_test(test_per_channel),
        cmocka_unit_test(test_round_trip),        cmocka_unit_test(test_sixty_four_channels),
        cmocka_unit_test(test_malformed),         cmocka_unit_test(test_user_position),
        cmocka_unit_test(test_surplus_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
