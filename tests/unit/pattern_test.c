/*
 * Unit tests for src/hub/pattern.c: the pattern grammar, matching a channel name
 * (token grants and pattern subscriptions use the same matcher), and whether a
 * grant covers a subscription pattern.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "hub/pattern.h"

static bool M(const char *pat, const char *sub, const char *name)
{
    return pattern_match(pat, strlen(pat), sub, sub ? strlen(sub) : 0, name, strlen(name));
}

static void test_patterns(void **state)
{
    assert_true(M("news", NULL, "news"));
    assert_false(M("news", NULL, "news2"));
    assert_false(M("news", NULL, "new"));
    assert_true(M("chat.*", NULL, "chat.room1"));
    assert_false(M("chat.*", NULL, "chat"));
    assert_false(M("chat.*", NULL, "chat."));
    assert_false(M("chat.*", NULL, "chat.a.b"));
    assert_true(M("*.x", NULL, "a.x"));
    assert_false(M("*.x", NULL, ".x"));
    assert_true(M("feed.**", NULL, "feed.a"));
    assert_true(M("feed.**", NULL, "feed.a.b.c"));
    assert_false(M("feed.**", NULL, "feed"));
    assert_false(M("feed.**", NULL, "feed."));
    assert_false(M("feed.**", NULL, "feeds.a"));
    assert_true(M("**", NULL, "anything.at.all"));
    assert_true(M("a.*.c.**", NULL, "a.b.c.d.e"));
    assert_false(M("a.*.c.**", NULL, "a.b.x.d"));
    assert_true(M("user.{sub}", "alice", "user.alice"));
    assert_false(M("user.{sub}", "alice", "user.bob"));
    assert_false(M("user.{sub}", "alice", "user.alice.x"));
    assert_true(M("user.{sub}.**", "alice", "user.alice.x"));
    assert_true(M("inbox-{sub}", "bob", "inbox-bob"));
    assert_false(M("inbox-{sub}", "bob", "inbox-bo"));
    /* {sub} is one segment's worth of name characters, taken literally, or nothing. */
    assert_false(M("user.{sub}", "a.b", "user.a.b"));
    assert_false(M("user.{sub}.**", "a.b", "user.a.b.c"));
    assert_false(M("user.{sub}", "*", "user.*"));
    assert_false(M("user.{sub}", "*", "user.x"));
    assert_false(M("user.{sub}", "**", "user.x.y"));
    assert_false(M("user.{sub}", "", "user."));
    assert_false(M("user.{sub}", NULL, "user."));
    assert_false(M("user.{sub}", NULL, "user.{sub}"));
    assert_false(M("user.{sub}", "a b", "user.a b"));
    /* Literal "*" inside a name never appears (not a name character) and is no wildcard
     * inside a segment: such patterns are refused. */
    assert_false(pattern_valid("a*", 2));
    assert_false(pattern_valid("**.a", 4));
    assert_false(pattern_valid("a.***", 5));
    assert_false(pattern_valid("{sub", 4));
    assert_false(pattern_valid("", 0));
    assert_true(pattern_valid("a.{sub}.*.**", 12));
    assert_true(pattern_valid("x@y:z/w-v_u", 11));
}

/* Whether grant g (user id sub) covers the subscription pattern p. */
static bool C(const char *g, const char *sub, const char *p)
{
    return pattern_covers(g, strlen(g), sub, sub ? strlen(sub) : 0, p, strlen(p));
}

static void test_covers(void **state)
{
    (void)state;
    assert_true(C("scores.**", NULL, "scores.*"));
    assert_true(C("scores.**", NULL, "scores.**"));
    assert_true(C("scores.**", NULL, "scores.a.**"));
    assert_true(C("scores.**", NULL, "scores.*.x"));
    assert_true(C("scores.*", NULL, "scores.*"));
    assert_false(C("scores.*", NULL, "scores.**")); /* scores.a.b is not granted */
    assert_false(C("scores.a", NULL, "scores.*"));
    assert_false(C("scores.*.**", NULL, "scores.**")); /* scores.a is not granted */
    assert_true(C("scores.*.**", NULL, "scores.*.**"));
    assert_false(C("scores.*", NULL, "*.a"));
    assert_true(C("**", NULL, "**"));
    assert_true(C("**", NULL, "*.a"));
    assert_false(C("*", NULL, "**"));
    assert_true(C("*.a", NULL, "*.a"));
    assert_false(C("*.a", NULL, "*.*"));
    assert_true(C("user.{sub}.**", "alice", "user.alice.*"));
    assert_false(C("user.{sub}.**", "alice", "user.*.x"));
    assert_false(C("user.{sub}", "*", "user.*"));
    assert_false(C("news", NULL, "news.*"));
}

static void test_subscription_patterns(void **state)
{
    (void)state;
    assert_true(pattern_is_subscription("scores.*", 8));
    assert_true(pattern_is_subscription("scores.**", 9));
    assert_true(pattern_is_subscription("**", 2));
    assert_false(pattern_is_subscription("scores", 6)); /* a name, not a pattern */
    assert_false(pattern_is_subscription("user.{sub}.*", 12));
    assert_false(pattern_is_subscription("a.**.b", 6));
    assert_false(pattern_is_subscription("a*", 2));
    char big[130];
    memset(big, 'a', sizeof(big));
    big[127] = '.';
    big[128] = '*';
    assert_false(pattern_is_subscription(big, 129)); /* 129 bytes: too long */
    assert_true(pattern_is_subscription(big + 1, 128));
    assert_true(pattern_is_broad("**", 2));
    assert_true(pattern_is_broad("*.x", 3));
    assert_false(pattern_is_broad("x.*", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_covers),
        cmocka_unit_test(test_subscription_patterns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
