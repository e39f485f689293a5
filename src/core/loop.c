/*
 * loop: epoll pass, timers in a binary min-heap (core/heap.h: each timer knows
 * its heap slot so stop/restart are O(log n)), and an eventfd for cross-thread
 * wakeups.
 */
#include "core/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/poller.h"

static void wake_cb(struct loop *loop, struct io *io, uint32_t events)
{
    uint64_t v;
    if (!(events & POLLER_IN))
        return;
    /* Drain before running the hook so wakes posted during it are not lost. */
    while (read(io->fd, &v, sizeof(v)) > 0)
        ;
    if (loop->on_wake)
        loop->on_wake(loop, loop->on_wake_arg);
}

int loop_init(struct loop *loop)
{
    *loop = (struct loop){0};
    loop->pfd = poller_init();
    if (loop->pfd < 0)
        return loop->pfd;
    loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->wake_fd < 0) {
        int err = -errno;
        close(loop->pfd);
        return err;
    }
    loop->wake_io = (struct io){.fd = loop->wake_fd, .cb = wake_cb};
    loop->now = now_ms();
    /* Read side only: an eventfd is always writable, which would wake us for nothing. */
    return loop_add_events(loop, &loop->wake_io, POLLER_IN);
}

void loop_free(struct loop *loop)
{
    close(loop->wake_fd);
    close(loop->pfd);
    heap_free(&loop->timers);
}

int loop_add(struct loop *loop, struct io *io)
{
    return loop_add_events(loop, io, POLLER_IN | POLLER_OUT);
}

int loop_add_events(struct loop *loop, struct io *io, uint32_t events)
{
    return poller_add(loop->pfd, io->fd, events, io);
}

void loop_del(struct loop *loop, struct io *io)
{
    poller_del(loop->pfd, io->fd);
}

void loop_wake(struct loop *loop)
{
    uint64_t one = 1;
    ssize_t n = write(loop->wake_fd, &one, sizeof(one));
    (void)n; /* EAGAIN means a wake is already pending */
}

void timer_stop(struct loop *loop, struct timer *t)
{
    heap_remove(&loop->timers, &t->node);
}

void timer_start(struct loop *loop, struct timer *t, uint64_t after_ms)
{
    heap_remove(&loop->timers, &t->node);
    t->node.key = loop->now + after_ms;
    heap_push(&loop->timers, &t->node);
}

static void run_timers(struct loop *loop)
{
    /* Bounded by the timers armed on entry: one that re-arms itself with no delay
     * runs again next pass instead of spinning here. */
    uint32_t budget = loop->timers.len;
    struct heap_node *n;
    while (budget-- && (n = heap_min(&loop->timers)) && n->key <= loop->now) {
        struct timer *t = container_of(n, struct timer, node);
        timer_stop(loop, t);
        t->cb(loop, t);
    }
}

void loop_run_once(struct loop *loop, int max_wait_ms)
{
    struct poller_event evs[256];
    int wait = max_wait_ms;
    if (loop->timers.len) {
        uint64_t due = heap_min(&loop->timers)->key;
        uint64_t cap = max_wait_ms < 0 ? (uint64_t)INT32_MAX : (uint64_t)max_wait_ms;
        int until = due <= loop->now ? 0 : (int)MIN(due - loop->now, cap);
        if (wait < 0 || until < wait)
            wait = until;
    }
    int n = poller_poll(loop->pfd, evs, (int)ARRAY_LEN(evs), wait);
    loop->now = now_ms();
    for (int i = 0; i < n; i++) {
        struct io *io = evs[i].data;
        io->cb(loop, io, evs[i].events);
    }
    run_timers(loop);
    if (loop->after_poll)
        loop->after_poll(loop, loop->after_poll_arg);
}
