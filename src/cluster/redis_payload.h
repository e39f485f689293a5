/*
 * redis_payload: the bytes of a message as herald stores it in Redis and sends it
 * over the bus, both ways. No I/O. Decoding is strict, because every node decodes
 * whatever any client of that Redis wrote: a number with a sign, a length past the
 * end, a name that is not a valid channel or event name, a body that is not what its
 * kind says — the message is refused, never read out of bounds or passed on.
 *
 * Payload (the Stream entry's field p, and the bus message after "<id> "):
 *
 *     "<kind> <time_ms> <nchannels> <event_len> <raw_len>\n" (channel "\n"){nchannels} event raw
 *
 *   kind J: raw is the JSON body as published (the envelope's data is it without
 *   whitespace); T: raw is UTF-8 text (data is it as a JSON string); B: raw is the
 *   base64 of a binary body. Numbers are plain decimal (no sign, no leading zero);
 *   1 to REDIS_PAYLOAD_MAX_CHANNELS channels, each a valid channel name; event_len is
 *   0 or the length of a valid event name; event and raw are the rest, exactly.
 *
 * Bus message (on herald:{ch}:m): "<id> <payload>" with id >= 1, "X closed" (the
 * channel was deleted), or "X window <batch_ms> <0|1>" (a PUT set the channel's
 * delivery window and conflation: every node that caches the channel applies them).
 */
#ifndef HERALD_REDIS_PAYLOAD_H
#define HERALD_REDIS_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "hub/batch.h"
#include "hub/hub.h"

#define REDIS_PAYLOAD_MAX_CHANNELS ARRAY_LEN(((struct hub_entry *)0)->channels)

/* Appends the payload of a publish of req to channels[0..n) (names valid, 1 <= n <=
 * REDIS_PAYLOAD_MAX_CHANNELS) at time_ms. Cannot fail. */
void redis_payload_build(struct sbuf *b, const struct slice *channels, size_t n,
                         const struct publish_req *req, uint64_t time_ms);

/*
 * Decodes a payload into *e: its channels, event and raw body point into p[0..len);
 * the body's JSON form (e->req.data_json) is built in *data, which the caller frees
 * with sbuf_free (also after a failure). e->seq is left 0. Returns 0, or -1 when p is
 * not a payload as above (then *e is not to be used).
 */
int redis_payload_parse(const char *p, size_t len, struct hub_entry *e, struct sbuf *data);

enum redis_bus_kind {
    REDIS_BUS_BAD = -1, /* not a bus message of ours */
    REDIS_BUS_MESSAGE,  /* *e is the message, e->seq its id */
    REDIS_BUS_CLOSED,   /* "X closed": the channel was deleted */
    REDIS_BUS_WINDOW,   /* "X window B C": the channel's batch_ms and conflate changed */
    REDIS_BUS_PRESENCE, /* "X join|leave ...": a user came or went (redis_payload_parse_presence) */
    REDIS_BUS_PRESENCE_OPT, /* "X presence 0|1": the channel's option presence changed */
};
/* A join or leave on the bus (cluster/redis_presence.c): "X join <n> <user><info>", with
 * "leave" for a leave; user is n bytes (1 to PRESENCE_USER_MAX, any bytes), info the rest:
 * nothing, or JSON text as jansson writes it compactly (at most PRESENCE_INFO_MAX bytes). */
struct redis_presence_event {
    bool join;
    struct slice user, info; /* point into the message */
};
/* Whether p[0..len) is JSON text exactly as jansson writes it compactly (one line, no
 * duplicate keys): what a node writes as a user's info. */
bool redis_payload_json_canonical(const char *p, size_t len);
/* Parses a join or leave. Returns 0, or -1 when p[0..len) is not one (nothing is set). */
int redis_payload_parse_presence(const char *p, size_t len, struct redis_presence_event *ev);
/* Parses "X presence 0|1" into *on. Returns 0 or -1. */
int redis_payload_parse_presence_opt(const char *p, size_t len, bool *on);
/* Decodes "X window <batch_ms> <0|1>" (batch_ms plain decimal, at most BATCH_MS_MAX; either
 * may be "-": not set on the channel, the app's default) into o's window options. Returns 0
 * or -1. */
int redis_payload_parse_window(const char *p, size_t len, struct channel_opts *o);
/* Decodes a bus message (see above); *e and *data as for redis_payload_parse. */
enum redis_bus_kind redis_payload_parse_bus(const char *p, size_t len, struct hub_entry *e,
                                            struct sbuf *data);

/*
 * Decodes one entry of an XRANGE / XREVRANGE reply, [id, [field, value, ...]]: the id
 * must be "<seq>-0" with seq >= 1, field p a payload (other fields are ignored). *e
 * (e->seq set) and *data as for redis_payload_parse, pointing into the reply. Returns
 * 0 or -1.
 */
int redis_payload_parse_entry(const redisReply *entry, struct hub_entry *e, struct sbuf *data);

/* Parses a decimal id: 1 to 20 digits, no sign, no leading zero, at most UINT64_MAX.
 * Returns 0 or -1. */
int redis_payload_parse_id(const char *s, size_t len, uint64_t *out);

#endif
