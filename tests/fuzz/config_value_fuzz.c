/*
 * config_value_fuzz: libFuzzer target for the parsers of option values
 * (config_parse_duration, config_parse_size, config_parse_addr), which read flags,
 * HERALD_* variables and config files. Byte 0 picks the parser, the rest is the
 * value (up to its first NUL, as from a command line). Each answer is checked
 * against a reference, and what parses formats back to the same value.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "core/config.h"

struct unit {
    const char *suffix;
    uint64_t mult;
};

static const struct unit durations[] = {
    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
static const struct unit sizes[] = {{"", 1},          {"b", 1},         {"k", 1 << 10},
                                    {"kb", 1 << 10},  {"kib", 1 << 10}, {"m", 1 << 20},
                                    {"mb", 1 << 20},  {"mib", 1 << 20}, {"g", 1u << 30},
                                    {"gb", 1u << 30}, {"gib", 1u << 30}};

/* Digits, then one of the suffixes (any case); the product fits in 32 bits. */
static int reference(const char *s, const struct unit *u, size_t nu, uint32_t *out)
{
    unsigned __int128 v = 0;
    size_t i = 0;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v > UINT32_MAX)
            return -1;
    }
    if (i == 0)
        return -1;
    for (size_t k = 0; k < nu; k++)
        if (strcasecmp(s + i, u[k].suffix) == 0) {
            if (v * u[k].mult > UINT32_MAX)
                return -1;
            *out = (uint32_t)(v * u[k].mult);
            return 0;
        }
    return -1;
}

/* A duration or size: the reference's answer, and the value formatted back (in ms or
 * bytes, `fmt`) parses to itself. */
static void fuzz_number(const char *s, int (*parse)(const char *, uint32_t *),
                        const struct unit *units, size_t nunits, const char *fmt)
{
    uint32_t got = 0, want = 0;
    int rc = parse(s, &got);
    CHECK(rc == reference(s, units, nunits, &want));
    if (rc == 0) {
        CHECK(got == want);
        char again[32];
        snprintf(again, sizeof(again), fmt, got);
        CHECK(parse(again, &want) == 0 && want == got);
    }
}

static void fuzz_addr(const char *s)
{
    struct config_addr a, b;
    unsigned char bin[16];
    if (config_parse_addr(s, &a) < 0)
        return;
    CHECK(a.port >= 1);
    CHECK(memchr(a.host, '\0', sizeof(a.host)));
    CHECK(a.host[0] == '\0' || strcmp(a.host, "localhost") == 0 ||
          inet_pton(AF_INET, a.host, bin) == 1 || inet_pton(AF_INET6, a.host, bin) == 1);
    char again[96];
    snprintf(again, sizeof(again), strchr(a.host, ':') ? "[%s]:%u" : "%s:%u", a.host, a.port);
    CHECK(config_parse_addr(again, &b) == 0);
    CHECK(b.port == a.port && strcmp(b.host, a.host) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *s = malloc(size);
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    switch (data[0] % 3) {
    case 0:
        fuzz_number(s, config_parse_duration, durations, sizeof(durations) / sizeof(durations[0]),
                    "%ums");
        break;
    case 1: fuzz_number(s, config_parse_size, sizes, sizeof(sizes) / sizeof(sizes[0]), "%u"); break;
    default: fuzz_addr(s); break;
    }
    free(s);
    return 0;
}
