/*
 * cursor_fuzz: libFuzzer target for hub_cursor_parse, which reads the cursors
 * clients send (since=, lastEventId=, Last-Event-ID, the WebSocket op's "since").
 * It must accept exactly the decimal numbers from 0 to 2^64-1 of at most 20
 * digits (and "" as 0), read no byte past len, and agree with a reference.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "hub/hub.h"

/* The reference: every byte a digit, and the value fits (by long division). */
static int reference(const char *s, size_t len, uint64_t *out)
{
    unsigned __int128 v = 0;
    if (len > 20)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > UINT64_MAX)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    uint64_t got = 12345, want = 0;
    int rc = hub_cursor_parse(buf, size, &got), ref = reference(buf, size, &want);
    CHECK((rc == 0) == (ref == 0));
    CHECK(rc == 0 || rc == HUB_ERR_CURSOR);
    if (rc == 0)
        CHECK(got == want);
    else
        CHECK(got == 12345); /* untouched on error */
    free(buf);
    return 0;
}
