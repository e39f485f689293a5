/*
 * batch: delivery windows, the channel options batch_ms and conflate.
 *
 * A channel with batch_ms > 0 does not go to its subscribers message by message:
 * on each worker, the first message that arrives opens a window of batch_ms, and
 * what the window gathered is delivered when it closes, all in one pass of the
 * worker's loop, so that each connection gets the window's messages in one write
 * (the outbound queue's one writev per pass; a long-poll's one answer). With
 * conflate, a window keeps only its newest message. Messages keep their framing
 * and their ids: the wire format is the unbatched one, so clients that know
 * nothing of batching read a batch as messages that came together.
 *
 * A window is per worker and per channel (struct channel_local.window) and is
 * only touched by its worker; the set of a worker's open windows is a heap by
 * deadline that the worker's timer runs (core/server.c). History is not
 * involved: a publish is stored before it reaches a window, so a subscriber that
 * joins or resumes meanwhile gets it from history, and the exactly-once rules of
 * the live path (hub_sub_takes) apply when the window is delivered.
 */
#ifndef HERALD_BATCH_H
#define HERALD_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/heap.h"

/* The longest window a channel may ask for (ms). */
#define BATCH_MS_MAX 10000
/* A window that gathered this many messages is delivered at once (without conflate). */
#define BATCH_MAX_MSGS 1024

struct hub;
struct channel;
struct msg;

struct batch_window {
    struct heap_node node; /* in struct batch_set.heap; key: deadline (monotonic ms) */
    struct channel *ch;    /* one reference, released by batch_window_free */
    int w;                 /* the worker */
    struct msg **msgs;     /* in arrival (= id) order, one reference each */
    uint32_t n, cap;
    size_t bytes; /* the gathered messages' largest framing, summed */
};

/* A worker's open windows. Zeroed memory is an empty set. */
struct batch_set {
    struct heap heap;
};

/*
 * Gathers m (the caller's reference is taken) into ch's window on worker w, opening
 * one that closes batch_ms after now_ms when there is none. With conflate the
 * window keeps m alone. Returns the window, detached from ch and the set, when it
 * is full (BATCH_MAX_MSGS, or max_bytes gathered): the caller delivers it now and
 * frees it. Otherwise NULL. ch->local must exist. Worker w's thread.
 */
struct batch_window *batch_gather(struct batch_set *bs, int w, struct channel *ch, struct msg *m,
                                  uint32_t batch_ms, bool conflate, uint64_t now_ms,
                                  size_t max_bytes);
/* Detaches and returns a window whose deadline is at or before now_ms, NULL when none is. */
struct batch_window *batch_take_due(struct batch_set *bs, uint64_t now_ms);
/* Detaches and returns ch's open window on worker w (the channel closes), or NULL. */
struct batch_window *batch_take(struct batch_set *bs, int w, struct channel *ch);
/* The earliest deadline of the open windows; false when there is none. */
bool batch_next_deadline(const struct batch_set *bs, uint64_t *deadline);
/* Releases a detached window's messages and channel reference, and frees it. */
void batch_window_free(struct hub *hub, struct batch_window *bw);
/* Frees every open window and the set's own memory (worker exit). */
void batch_set_free(struct hub *hub, struct batch_set *bs);

#endif
