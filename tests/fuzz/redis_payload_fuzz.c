/*
 * redis_payload_fuzz: libFuzzer target for the cluster-mode message codec
 * (src/cluster/redis_payload.c), which every node runs on whatever any client of
 * the shared Redis published on the bus or wrote into a Stream.
 *
 * The input is decoded as a payload and as a bus message. Beyond "no crash, no
 * sanitizer report" it checks the contract: what parses points inside the input,
 * stays within the limits (channels, event length) and passes the name checks; and
 * the format is canonical, so building the decoded message again gives back the
 * very same bytes (a second spelling of one message would be a parser bug).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "cluster/redis_payload.h"

static void check_entry(const char *buf, size_t len, const struct hub_entry *e)
{
    CHECK(e->nchannels >= 1 && e->nchannels <= REDIS_PAYLOAD_MAX_CHANNELS);
    for (size_t i = 0; i < e->nchannels; i++) {
        CHECK(inside(e->channels[i].data, e->channels[i].len, buf, len));
        CHECK(hub_channel_key_valid(e->channels[i].data, e->channels[i].len));
    }
    CHECK(!e->req.event || (inside(e->req.event, e->req.event_len, buf, len) &&
                            hub_event_name_valid(e->req.event, e->req.event_len)));
    CHECK(inside(e->req.raw.data, e->req.raw.len, buf, len));
    CHECK(e->req.data_json.data && e->req.data_json.len >= 1);
    /* Canonical: the decoded message builds back into the same bytes. */
    struct sbuf again = {0};
    redis_payload_build(&again, e->channels, e->nchannels, &e->req, e->time_ms);
    CHECK(again.len == len && memcmp(again.data, buf, len) == 0);
    sbuf_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1); /* exactly size bytes: ASan sees any overread */
    memcpy(buf, data, size);
    struct hub_entry e;
    struct sbuf json = {0};
    if (redis_payload_parse(buf, size, &e, &json) == 0) {
        CHECK(e.seq == 0);
        check_entry(buf, size, &e);
    }
    sbuf_free(&json);
    enum redis_bus_kind k = redis_payload_parse_bus(buf, size, &e, &json);
    CHECK(k >= REDIS_BUS_BAD && k <= REDIS_BUS_PRESENCE_OPT);
    if (k == REDIS_BUS_MESSAGE) {
        const char *sp = memchr(buf, ' ', size);
        CHECK(sp && e.seq >= 1);
        check_entry(sp + 1, size - (size_t)(sp + 1 - buf), &e);
    }
    if (k == REDIS_BUS_CLOSED)
        CHECK(size == 8 && memcmp(buf, "X closed", 8) == 0);
    struct channel_opts o;
    if (redis_payload_parse_window(buf, size, &o) == 0) {
        /* Canonical: "X window <ms|-> <0|1|->" built back from what was decoded. */
        CHECK(k == REDIS_BUS_WINDOW && (!o.has_batch_ms || o.batch_ms <= BATCH_MS_MAX));
        char text[40], conf = !o.has_conflate ? '-' : o.conflate ? '1' : '0';
        int n = o.has_batch_ms ? snprintf(text, sizeof(text), "X window %u %c", o.batch_ms, conf)
                               : snprintf(text, sizeof(text), "X window - %c", conf);
        CHECK((size_t)n == size && memcmp(text, buf, size) == 0);
    } else {
        CHECK(k != REDIS_BUS_WINDOW);
    }
    struct redis_presence_event ev;
    if (redis_payload_parse_presence(buf, size, &ev) == 0) {
        /* Canonical: "X join|leave <n> <user><info>" built back from what was decoded. */
        CHECK(k == REDIS_BUS_PRESENCE);
        CHECK(inside(ev.user.data, ev.user.len, buf, size) && ev.user.len >= 1 &&
              ev.user.len <= PRESENCE_USER_MAX);
        CHECK(inside(ev.info.data, ev.info.len, buf, size) && ev.info.len <= PRESENCE_INFO_MAX);
        struct sbuf again = {0};
        sbuf_printf(&again, "X %s %u ", ev.join ? "join" : "leave", ev.user.len);
        sbuf_add(&again, ev.user.data, ev.user.len);
        sbuf_add(&again, ev.info.data, ev.info.len);
        CHECK(again.len == size && memcmp(again.data, buf, size) == 0);
        sbuf_free(&again);
    } else {
        CHECK(k != REDIS_BUS_PRESENCE);
    }
    bool on;
    if (redis_payload_parse_presence_opt(buf, size, &on) == 0)
        CHECK(k == REDIS_BUS_PRESENCE_OPT && size == 12 && buf[11] == (on ? '1' : '0'));
    else
        CHECK(k != REDIS_BUS_PRESENCE_OPT);
    sbuf_free(&json);
    uint64_t id;
    if (redis_payload_parse_id(buf, size, &id) == 0) {
        char text[24];
        int n = snprintf(text, sizeof(text), "%llu", (unsigned long long)id);
        CHECK((size_t)n == size && memcmp(text, buf, size) == 0);
    }
    free(buf);
    return 0;
}
