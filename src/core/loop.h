/*
 * loop: one event loop per worker thread: readiness callbacks, a timer heap
 * that stays O(log n) with tens of thousands of timers, a wakeup eventfd that
 * other threads poke, and "after poll" hooks that run once per pass (where
 * queued writes are flushed and closed connections are reaped).
 */
#ifndef HERALD_LOOP_H
#define HERALD_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/heap.h"
#include "core/util.h"

struct loop;

struct io {
    int fd;
    void (*cb)(struct loop *loop, struct io *io, uint32_t events); /* POLLER_* */
};

struct timer {
    struct heap_node node; /* key: when it fires (monotonic ms); in loop->timers while armed */
    void (*cb)(struct loop *loop, struct timer *t);
};

struct loop {
    int pfd;
    int wake_fd; /* eventfd */
    struct io wake_io;
    uint64_t now;       /* monotonic ms, refreshed once per pass */
    struct heap timers; /* of struct timer.node */
    bool stop;
    void (*on_wake)(struct loop *loop, void *arg);
    void *on_wake_arg;
    void (*after_poll)(struct loop *loop, void *arg);
    void *after_poll_arg;
};

/* Returns 0 or -errno. */
int loop_init(struct loop *loop);
void loop_free(struct loop *loop);
/* Registers io->fd edge-triggered for reads and writes. 0 or -errno. */
int loop_add(struct loop *loop, struct io *io);
/* Registers io->fd edge-triggered for `events` (POLLER_IN / POLLER_OUT). 0 or -errno. */
int loop_add_events(struct loop *loop, struct io *io, uint32_t events);
void loop_del(struct loop *loop, struct io *io);

static inline void timer_init(struct timer *t, void (*cb)(struct loop *, struct timer *))
{
    t->node = (struct heap_node){0};
    t->cb = cb;
}
static inline bool timer_armed(const struct timer *t)
{
    return heap_linked(&t->node);
}
/* (Re)arms t to fire `after_ms` from loop->now. */
void timer_start(struct loop *loop, struct timer *t, uint64_t after_ms);
void timer_stop(struct loop *loop, struct timer *t);

/* Thread-safe: wakes the loop; its on_wake hook runs in the loop's thread. */
void loop_wake(struct loop *loop);
/* Runs one pass: poll (bounded by the next timer), callbacks, timers, after_poll. */
void loop_run_once(struct loop *loop, int max_wait_ms);

#endif
