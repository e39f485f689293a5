/*
 * Unit tests for src/users/users.c and the hub's view of a user's channel: the key
 * (the app's prefix, "#user:", 32 hex digits of SHA-256 of the sub, checked against
 * known digests), that it is a valid key but never a valid channel name, and that
 * clients see it as "#user".
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "hub/hub.h"
#include "users/users.h"

static void test_key_is_the_hash_of_the_sub(void **state)
{
    char k[CHANNEL_KEY_MAX + 1];
    /* sha256("42") = 73475cb40a568e8da8a045ced110137e159f... */
    size_t n = users_key(k, NULL, "42", 2);
    assert_string_equal(k, "#user:73475cb40a568e8da8a045ced110137e");
    assert_int_equal(n, strlen(k));
    assert_int_equal(n, USER_KEY_NAME_LEN);

    struct hub_tenant t = {.prefix = "shop~", .prefix_len = 5};
    n = users_key(k, &t, "42", 2);
    assert_string_equal(k, "shop~#user:73475cb40a568e8da8a045ced110137e");
    assert_int_equal(n, 5 + USER_KEY_NAME_LEN);

    /* any bytes, up to the token's bound, make a key of the same length */
    char sub[USERS_ID_MAX];
    memset(sub, '~', sizeof(sub));
    sub[7] = '\0';
    assert_int_equal(users_key(k, &t, sub, sizeof(sub)), 5 + USER_KEY_NAME_LEN);
    assert_true(hub_channel_key_valid(k, strlen(k)));
}

static void test_key_is_valid_but_not_a_name(void **state)
{
    char k[CHANNEL_KEY_MAX + 1];
    size_t n = users_key(k, NULL, "alice", 5);
    assert_true(hub_channel_key_valid(k, n));
    assert_false(hub_channel_name_valid(k, n));
    assert_true(chan_key_is_user(k, n));
    assert_false(chan_key_is_user("news", 4));
    assert_false(chan_key_is_user("app~news", 8));
    assert_true(chan_key_is_user("app~#user:0", 11));
    /* a key with the tag but not a hash is no key */
    assert_false(hub_channel_key_valid("#user:42", 8));
    assert_false(hub_channel_key_valid("#user:73475CB40A568E8DA8A045CED110137E", 38));
    assert_false(hub_channel_key_valid("#news", 5));
}

static void test_clients_see_user(void **state)
{
    char k[CHANNEL_KEY_MAX + 1];
    struct hub_tenant t = {.prefix = "a~", .prefix_len = 2};
    size_t n = users_key(k, &t, "bob", 3);
    struct slice s = chan_key_name(k, n);
    assert_int_equal(s.len, 5);
    assert_memory_equal(s.data, "#user", 5);
    s = chan_key_name("a~news", 6);
    assert_int_equal(s.len, 4);
    assert_memory_equal(s.data, "news", 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_is_the_hash_of_the_sub),
        cmocka_unit_test(test_key_is_valid_but_not_a_name),
        cmocka_unit_test(test_clients_see_user),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
