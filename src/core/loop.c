/*
 * loop: epoll pass, binary min-heap of timers (intrusive: each timer knows its
 * heap slot so stop/restart are O(log n)), and an eventfd for cross-thread
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
    free(loop->heap);
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

/* Heap helpers: slots are 1-based in heap_idx, 0-based in the array. */
static inline void heap_set(struct loop *loop, uint32_t i, struct timer *t)
{
    loop->heap[i] = t;
    t->heap_idx = i + 1;
}

static void heap_up(struct loop *loop, uint32_t i)
{
    struct timer *t = loop->heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (loop->heap[p]->when <= t->when)
            break;
        heap_set(loop, i, loop->heap[p]);
        i = p;
    }
    heap_set(loop, i, t);
}

static void heap_down(struct loop *loop, uint32_t i)
{
    struct timer *t = loop->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= loop->heap_len)
            break;
        if (c + 1 < loop->heap_len && loop->heap[c + 1]->when < loop->heap[c]->when)
            c++;
        if (t->when <= loop->heap[c]->when)
            break;
        heap_set(loop, i, loop->heap[c]);
        i = c;
    }
    heap_set(loop, i, t);
}

void timer_stop(struct loop *loop, struct timer *t)
{
    if (!t->heap_idx)
        return;
    uint32_t i = t->heap_idx - 1;
    t->heap_idx = 0;
    struct timer *last = loop->heap[--loop->heap_len];
    if (last == t)
        return;
    heap_set(loop, i, last);
    heap_up(loop, i);
    heap_down(loop, last->heap_idx - 1);
}

void timer_start(struct loop *loop, struct timer *t, uint64_t after_ms)
{
    timer_stop(loop, t);
    t->when = loop->now + after_ms;
    if (loop->heap_len == loop->heap_cap) {
        loop->heap_cap = loop->heap_cap ? loop->heap_cap * 2 : 1024;
        loop->heap = xrealloc(loop->heap, loop->heap_cap * sizeof(*loop->heap));
    }
    heap_set(loop, loop->heap_len, t);
    loop->heap_len++;
    heap_up(loop, loop->heap_len - 1);
}

static void run_timers(struct loop *loop)
{
    /* Bounded by the timers armed on entry: one that re-arms itself with no delay
     * runs again next pass instead of spinning here. */
    uint32_t budget = loop->heap_len;
    while (budget-- && loop->heap_len && loop->heap[0]->when <= loop->now) {
        struct timer *t = loop->heap[0];
        timer_stop(loop, t);
        t->cb(loop, t);
    }
}

void loop_run_once(struct loop *loop, int max_wait_ms)
{
    struct poller_event evs[256];
    int wait = max_wait_ms;
    if (loop->heap_len) {
        uint64_t due = loop->heap[0]->when;
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
