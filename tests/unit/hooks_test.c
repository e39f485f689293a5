/*
 * Unit tests for src/hooks/hooks.c without a backend: reading an app's webhook_*
 * settings (what is accepted, what is refused with which message, null giving the
 * default back, a partial change keeping the rest), writing them back, the event
 * list of --webhook-events, and the signing key a target falls back to. The calls
 * themselves are tested against a real backend in tests/integration/test_hooks.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "hooks/hooks.h"

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *o = json_loads(s, 0, &e);
    assert_non_null(o);
    return o;
}

/* Applies settings text over *s; returns the function's result, err holds its message. */
static int apply(struct hook_settings *s, const char *text, char *err, size_t errlen)
{
    json_t *o = parse(text);
    err[0] = '\0';
    int rc = hooks_settings_from_json(s, o, err, errlen);
    json_decref(o);
    return rc;
}

static void test_event_lists(void **state)
{
    assert_int_equal(hook_events_parse("connect,disconnect"),
                     (1 << HOOK_CONNECT) | (1 << HOOK_DISCONNECT));
    assert_int_equal(hook_events_parse("connect,subscribe,publish,rpc,disconnect"),
                     HOOK_ALL_EVENTS);
    assert_int_equal(hook_events_parse(""), 0);
    assert_int_equal(hook_events_parse("connect,,rpc"), (1 << HOOK_CONNECT) | (1 << HOOK_RPC));
    assert_int_equal(hook_events_parse("connect,conn"), -1);
    assert_int_equal(hook_events_parse("CONNECT"), -1);
    assert_string_equal(hook_event_name(HOOK_RPC), "rpc");
}

static void test_settings_accepted_and_partial(void **state)
{
    char err[300];
    struct hook_settings s;
    hooks_default_settings(&s);
    assert_int_equal(s.events, HOOK_ALL_EVENTS);
    assert_int_equal(s.url[0], '\0');
    assert_int_equal(
        apply(&s,
              "{\"webhook_url\":\"https://b.example/h\",\"webhook_events\":[\"connect\"],"
              "\"webhook_timeout_ms\":1500,\"webhook_retries\":0,"
              "\"webhook_fail_open\":true,\"webhook_secret\":\"k\"}",
              err, sizeof(err)),
        0);
    assert_string_equal(s.url, "https://b.example/h");
    assert_int_equal(s.events, 1 << HOOK_CONNECT);
    assert_int_equal(s.timeout_ms, 1500);
    assert_int_equal(s.retries, 0);
    assert_true(s.fail_open);
    assert_string_equal(s.secret, "k");
    /* A change of one setting keeps the others; null gives the default back. */
    assert_int_equal(
        apply(&s, "{\"webhook_timeout_ms\":null,\"webhook_events\":null}", err, sizeof(err)), 0);
    assert_string_equal(s.url, "https://b.example/h");
    assert_int_equal(s.timeout_ms, 2000);
    assert_int_equal(s.events, HOOK_ALL_EVENTS);
    assert_true(s.fail_open);
    /* true keeps the secret (what a reader without the secrets was shown). */
    assert_int_equal(apply(&s, "{\"webhook_secret\":true}", err, sizeof(err)), 0);
    assert_string_equal(s.secret, "k");
    json_t *shown = json_object();
    hooks_settings_to_json(&s, shown, false);
    assert_true(json_is_true(json_object_get(shown, "webhook_secret")));
    json_decref(shown);
    assert_int_equal(apply(&s, "{\"webhook_url\":null,\"webhook_secret\":null}", err, sizeof(err)),
                     0);
    assert_int_equal(s.url[0], '\0');
    assert_int_equal(s.secret[0], '\0');
}

static void test_settings_refused(void **state)
{
    static const struct {
        const char *text, *names;
    } bad[] = {
        {"{\"webhook_url\":\"ftp://x\"}", "webhook_url"},
        {"{\"webhook_url\":\"http://a b\"}", "webhook_url"},
        {"{\"webhook_url\":5}", "webhook_url"},
        {"{\"webhook_secret\":\"\"}", "webhook_secret"},
        {"{\"webhook_events\":[\"connect\",\"nope\"]}", "webhook_events"},
        {"{\"webhook_events\":\"connect\"}", "webhook_events"},
        {"{\"webhook_timeout_ms\":5}", "webhook_timeout_ms"},
        {"{\"webhook_timeout_ms\":60001}", "webhook_timeout_ms"},
        {"{\"webhook_retries\":11}", "webhook_retries"},
        {"{\"webhook_fail_open\":\"yes\"}", "webhook_fail_open"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[300];
        struct hook_settings s;
        hooks_default_settings(&s);
        assert_int_equal(apply(&s, bad[i].text, err, sizeof(err)), -1);
        assert_non_null(strstr(err, bad[i].names)); /* the message names the setting */
    }
}

static void test_settings_round_trip_and_key(void **state)
{
    char err[300];
    struct hook_settings s;
    hooks_default_settings(&s);
    assert_int_equal(apply(&s,
                           "{\"webhook_url\":\"http://127.0.0.1:9/x\",\"webhook_events\":"
                           "[\"disconnect\",\"connect\"]}",
                           err, sizeof(err)),
                     0);
    json_t *o = json_object();
    hooks_settings_to_json(&s, o, true);
    assert_string_equal(json_string_value(json_object_get(o, "webhook_url")),
                        "http://127.0.0.1:9/x");
    assert_true(json_is_null(json_object_get(o, "webhook_secret")));
    json_t *ev = json_object_get(o, "webhook_events");
    assert_int_equal(json_array_size(ev), 2);
    assert_string_equal(json_string_value(json_array_get(ev, 0)), "connect");
    struct hook_settings back;
    hooks_default_settings(&back);
    assert_int_equal(hooks_settings_from_json(&back, o, err, sizeof(err)), 0);
    assert_memory_equal(&back, &s, sizeof(s));
    json_decref(o);

    /* The key that signs: the setting, else the fallback (an app's token secret). */
    struct hook_target *t = hook_target_new(&s, "token-secret");
    assert_string_equal(t->key, "token-secret");
    assert_true(hooks_wants(t, HOOK_CONNECT));
    assert_false(hooks_wants(t, HOOK_RPC));
    hook_target_put(t);
    snprintf(s.secret, sizeof(s.secret), "own");
    t = hook_target_new(&s, "token-secret");
    assert_string_equal(t->key, "own");
    hook_target_put(t);
    assert_false(hooks_wants(NULL, HOOK_CONNECT));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_lists),
        cmocka_unit_test(test_settings_accepted_and_partial),
        cmocka_unit_test(test_settings_refused),
        cmocka_unit_test(test_settings_round_trip_and_key),
    };
    return cmocka_run_group_tests_name("hooks", tests, NULL, NULL);
}
