/*
 * resp_reply_fuzz: libFuzzer target for what herald makes of Redis's replies. The
 * input is RESP bytes, parsed with hiredis' reader (as resp_conn does); every
 * complete reply then goes through herald's own interpreters of outside replies:
 * CLUSTER SLOTS (cluster_parse_slots), -MOVED/-ASK (cluster_parse_redirect), and
 * Stream entries (redis_payload_parse_entry, on the reply and on each element, as
 * a range reply's entries). Checks: slot ranges within the cluster and all of them
 * counted (only as many written as there is room for), redirects with a valid slot and
 * port, decoded entries with an id and a payload inside the reply.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "cluster/cluster_map.h"
#include "cluster/redis_payload.h"

static void check_slots(const redisReply *r)
{
    struct cluster_shard shards[4];
    int n = cluster_parse_slots(r, "self", shards, (int)ARRAY_LEN(shards));
    CHECK(n >= -1);
    if (n < 0)
        return;
    CHECK(r->type == REDIS_REPLY_ARRAY && (size_t)n == r->elements && n <= CLUSTER_SLOTS);
    for (int i = 0; i < n && i < (int)ARRAY_LEN(shards); i++) {
        const struct cluster_shard *s = &shards[i];
        CHECK(s->start <= s->end && s->end < CLUSTER_SLOTS);
        CHECK(s->master.port > 0 && s->master.port < 65536);
        CHECK(memchr(s->master.host, '\0', sizeof(s->master.host)));
        CHECK(s->nreplicas >= 0 && s->nreplicas <= CLUSTER_MAX_REPLICAS);
    }
}

static void check_redirect(const redisReply *r)
{
    bool ask;
    int slot;
    struct cluster_addr a;
    if (!cluster_parse_redirect(r, &ask, &slot, &a))
        return;
    CHECK(r->type == REDIS_REPLY_ERROR);
    CHECK(slot >= 0 && slot < CLUSTER_SLOTS);
    CHECK(a.port > 0 && a.port < 65536 && memchr(a.host, '\0', sizeof(a.host)));
}

static void check_entry(const redisReply *r)
{
    struct hub_entry e;
    struct sbuf data = {0};
    if (redis_payload_parse_entry(r, &e, &data) == 0) {
        CHECK(e.seq >= 1 && e.nchannels >= 1);
        CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 2);
    }
    sbuf_free(&data);
}

/*
 * Debian's hiredis 0.14 allocates an array's element vector as soon as it reads the
 * count ("*999999999" asks for 8 GB): herald trusts the Redis it connects to on sizes,
 * as on everything else it could make herald hold. Inputs with such counts are skipped.
 */
static bool huge_array(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        if (data[i] != '*')
            continue;
        uint64_t n = 0;
        for (size_t j = i + 1; j < size && data[j] >= '0' && data[j] <= '9' && n <= 100000; j++)
            n = n * 10 + (data[j] - '0');
        if (n > 100000)
            return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (huge_array(data, size))
        return 0;
    redisReader *reader = redisReaderCreate();
    reader->maxbuf = 0;
    if (redisReaderFeed(reader, (const char *)data, size) != REDIS_OK) {
        redisReaderFree(reader);
        return 0;
    }
    for (int i = 0; i < 64; i++) {
        void *reply = NULL;
        if (redisReaderGetReply(reader, &reply) != REDIS_OK || !reply)
            break;
        const redisReply *r = reply;
        check_slots(r);
        check_redirect(r);
        check_entry(r);
        if (r->type == REDIS_REPLY_ARRAY)
            for (size_t j = 0; j < r->elements && j < 64; j++)
                check_entry(r->element[j]);
        freeReplyObject(reply);
    }
    redisReaderFree(reader);
    return 0;
}
