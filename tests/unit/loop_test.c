/*
 * Unit tests for src/core/loop.c: the timer heap (deadline order, stop,
 * restart, stop from inside another timer's callback, 20k random deadlines),
 * the poll wait bounded by the next timer, cross-thread loop_wake, the
 * after_poll hook and readiness callbacks.
 *
 * Most timer tests arm timers while loop->now is set BACK ms in the past, so
 * the next loop_run_once(loop, 0), which refreshes now from the clock, finds
 * every one of them due in a single pass and the heap alone decides the order.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/loop.h"
#include "core/poller.h"

#define BACK   10000u  /* ms the clock is wound back before arming "due" timers */
#define FUTURE 600000u /* a deadline no test reaches */

struct ttimer {
    struct timer t;
    int id;
    int fired;
    struct ttimer *victim; /* stopped (or restarted) by this one's callback */
    uint64_t restart_ms;   /* restart the victim with this delay instead of stopping it */
};

static struct loop loop;
static int order[32768]; /* ids in firing order */
static uint64_t whens[32768];
static int nfired;

static int setup(void **state)
{
    nfired = 0;
    return loop_init(&loop);
}

static int teardown(void **state)
{
    loop_free(&loop);
    return 0;
}

static void record_cb(struct loop *l, struct timer *t)
{
    struct ttimer *tt = container_of(t, struct ttimer, t);
    assert_ptr_equal(l, &loop);
    assert_false(timer_armed(t)); /* unarmed before its callback runs */
    assert_true(t->node.key <= l->now);
    tt->fired++;
    order[nfired] = tt->id;
    whens[nfired] = t->node.key;
    nfired++;
    if (tt->victim) {
        if (tt->restart_ms)
            timer_start(l, &tt->victim->t, tt->restart_ms);
        else
            timer_stop(l, &tt->victim->t);
    }
}

static void tt_init(struct ttimer *tt, int id)
{
    memset(tt, 0, sizeof(*tt));
    timer_init(&tt->t, record_cb);
    tt->id = id;
}

/* Winds loop.now back so that timers armed with after < BACK are due now. */
static void wind_back(void)
{
    loop.now = now_ms() - BACK;
}

static void test_timers_fire_in_deadline_order(void **state)
{
    struct ttimer t[100];
    wind_back();
    /* Arm in a scrambled order: id i gets deadline 50 * i. */
    for (int k = 0; k < 100; k++) {
        int i = (k * 37) % 100;
        tt_init(&t[i], i);
        timer_start(&loop, &t[i].t, 50u * (unsigned)i);
        assert_true(timer_armed(&t[i].t));
    }
    assert_int_equal(loop.timers.len, 100);
    loop_run_once(&loop, 0);
    assert_int_equal(nfired, 100);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(order[i], i);
        assert_int_equal(t[i].fired, 1);
        assert_false(timer_armed(&t[i].t));
    }
    assert_int_equal(loop.timers.len, 0);
    /* Nothing fires twice. */
    loop_run_once(&loop, 0);
    assert_int_equal(nfired, 100);
}

static void test_timer_not_yet_due_waits(void **state)
{
    struct ttimer later, soon;
    tt_init(&later, 1);
    tt_init(&soon, 2);
    loop.now = now_ms();
    timer_start(&loop, &later.t, FUTURE);
    loop_run_once(&loop, 0);
    assert_int_equal(nfired, 0);
    assert_true(timer_armed(&later.t));

    /* The poll wait is bounded by the next deadline, not by max_wait_ms. */
    timer_start(&loop, &soon.t, 30);
    uint64_t start = now_ms();
    for (int i = 0; i < 10 && !soon.fired; i++)
        loop_run_once(&loop, 5000);
    uint64_t took = now_ms() - start;
    assert_int_equal(soon.fired, 1);
    assert_int_equal(later.fired, 0);
    assert_true(took >= 29);
    assert_true(took < 2000);
    timer_stop(&loop, &later.t);
    assert_int_equal(loop.timers.len, 0);
}

static void test_timer_stop(void **state)
{
    struct ttimer t[5];
    wind_back();
    for (int i = 0; i < 5; i++) {
        tt_init(&t[i], i);
        timer_start(&loop, &t[i].t, 100u * (unsigned)i);
    }
    timer_stop(&loop, &t[2].t); /* middle */
    timer_stop(&loop, &t[0].t); /* root */
    timer_stop(&loop, &t[4].t); /* last slot */
    assert_false(timer_armed(&t[2].t));
    timer_stop(&loop, &t[2].t); /* stopping twice is harmless */
    struct ttimer never;
    tt_init(&never, 99);
    timer_stop(&loop, &never.t); /* so is stopping a timer never armed */
    assert_int_equal(loop.timers.len, 2);
    loop_run_once(&loop, 0);
    assert_int_equal(nfired, 2);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 3);
    assert_int_equal(t[0].fired + t[2].fired + t[4].fired, 0);
}

static void test_timer_restart_moves(void **state)
{
    struct ttimer a, b, c, d;
    tt_init(&a, 1);
    tt_init(&b, 2);
    tt_init(&c, 3);
    tt_init(&d, 4);
    wind_back();
    timer_start(&loop, &a.t, 10);
    timer_start(&loop, &b.t, 20);
    timer_start(&loop, &c.t, 30);
    timer_start(&loop, &d.t, 40);
    timer_start(&loop, &a.t, 35);            /* later */
    timer_start(&loop, &d.t, 5);             /* earlier */
    timer_start(&loop, &b.t, BACK + FUTURE); /* out of reach */
    assert_int_equal(loop.timers.len, 4);    /* restarting never duplicates */
    loop_run_once(&loop, 0);
    assert_int_equal(nfired, 3);
    assert_int_equal(order[0], 4);
    assert_int_equal(order[1], 3);
    assert_int_equal(order[2], 1);
    assert_int_equal(b.fired, 0);
    assert_true(timer_armed(&b.t));
    timer_stop(&loop, &b.t);
}

static void test_timer_stop_inside_callback(void **state)
{
    struct ttimer t[6];
    for (int i = 0; i < 6; i++)
        tt_init(&t[i], i);
    t[1].victim = &t[4]; /* 1 stops 4, which is due in the same pass */
    t[2].victim = &t[0]; /* 2 stops 0, which already fired: harmless */
    t[3].victim = &t[5]; /* 3 pushes 5 out of reach */
    t[3].restart_ms = BACK + FUTURE;
    wind_back();
    for (int i = 0; i < 6; i++)
        timer_start(&loop, &t[i].t, 10u * (unsigned)i);
    loop_run_once(&loop, 0);
    assert_int_equal(nfired, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(order[i], i);
    assert_int_equal(t[4].fired, 0);
    assert_false(timer_armed(&t[4].t));
    assert_int_equal(t[5].fired, 0);
    assert_true(timer_armed(&t[5].t));
    assert_int_equal(loop.timers.len, 1);
    timer_stop(&loop, &t[5].t);
}

#define NRANDOM 20000

/* Heap invariant: every parent is due no later than its children, slots agree. */
static void check_heap(void)
{
    assert_true(heap_valid(&loop.timers));
}

static void test_many_random_timers_pop_sorted(void **state)
{
    struct ttimer *t = calloc(NRANDOM, sizeof(*t));
    assert_non_null(t);
    srand(12345);
    wind_back();
    for (int i = 0; i < NRANDOM; i++) {
        tt_init(&t[i], i);
        timer_start(&loop, &t[i].t, (uint64_t)rand() % BACK);
    }
    check_heap();
    /* Stop a third and move another third, all from the middle of the heap. */
    for (int i = 0; i < NRANDOM; i += 3)
        timer_stop(&loop, &t[i].t);
    for (int i = 1; i < NRANDOM; i += 3)
        timer_start(&loop, &t[i].t, (uint64_t)rand() % BACK);
    check_heap();
    int expect = NRANDOM - (NRANDOM + 2) / 3;
    assert_int_equal(loop.timers.len, expect);
    loop_run_once(&loop, 0);
    assert_int_equal(nfired, expect);
    for (int i = 1; i < nfired; i++)
        assert_true(whens[i - 1] <= whens[i]);
    for (int i = 0; i < NRANDOM; i++)
        assert_int_equal(t[i].fired, i % 3 ? 1 : 0);
    assert_int_equal(loop.timers.len, 0);
    free(t);
}

struct waker {
    atomic_int wakes;
    pthread_t thread; /* the thread on_wake must run in */
    bool wrong_thread;
};

static void on_wake(struct loop *l, void *arg)
{
    struct waker *w = arg;
    if (!pthread_equal(pthread_self(), w->thread))
        w->wrong_thread = true;
    atomic_fetch_add(&w->wakes, 1);
}

static void *wake_thread(void *arg)
{
    usleep(20000); /* let the main thread block in poll first */
    loop_wake(arg);
    return NULL;
}

static void test_loop_wake_from_thread(void **state)
{
    struct waker w = {.thread = pthread_self()};
    loop.on_wake = on_wake;
    loop.on_wake_arg = &w;
    /* Settle first: a fresh loop may run on_wake spuriously (see below). */
    loop_run_once(&loop, 0);
    loop_run_once(&loop, 0);
    int before = atomic_load(&w.wakes);
    pthread_t th;
    /* Timed from before the thread exists: its 20 ms sleep cannot start earlier. */
    uint64_t start = now_ms();
    assert_int_equal(pthread_create(&th, NULL, wake_thread, &loop), 0);
    for (int i = 0; i < 20 && atomic_load(&w.wakes) == before; i++)
        loop_run_once(&loop, 5000);
    uint64_t took = now_ms() - start;
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&w.wakes), before + 1);
    assert_false(w.wrong_thread);
    assert_true(took >= 15);  /* it was the thread's wake that ended the wait ... */
    assert_true(took < 4000); /* ... and it did interrupt the poll */
}

/* on_wake runs because some thread called loop_wake: not on a loop's first pass. */
static void test_on_wake_not_run_without_wake(void **state)
{
    struct waker w = {.thread = pthread_self()};
    loop.on_wake = on_wake;
    loop.on_wake_arg = &w;
    loop_run_once(&loop, 0);
    loop_run_once(&loop, 0);
    assert_int_equal(atomic_load(&w.wakes), 0);
}

/* A burst of wakes runs on_wake once, and the passes after it do not run it again. */
static void test_on_wake_once_per_wake_burst(void **state)
{
    struct waker w = {.thread = pthread_self()};
    loop.on_wake = on_wake;
    loop.on_wake_arg = &w;
    loop_run_once(&loop, 0);
    loop_run_once(&loop, 0);
    int before = atomic_load(&w.wakes);
    loop_wake(&loop);
    loop_wake(&loop);
    loop_wake(&loop);
    loop_run_once(&loop, 1000);
    assert_int_equal(atomic_load(&w.wakes), before + 1);
    loop_run_once(&loop, 0);
    loop_run_once(&loop, 0);
    assert_int_equal(atomic_load(&w.wakes), before + 1);
}

struct pass_log {
    int after_polls;
    int timers_at_after_poll; /* nfired seen by the last after_poll */
};

static void after_poll(struct loop *l, void *arg)
{
    struct pass_log *p = arg;
    p->after_polls++;
    p->timers_at_after_poll = nfired;
}

static void test_after_poll_once_per_pass(void **state)
{
    struct pass_log p = {0};
    loop.after_poll = after_poll;
    loop.after_poll_arg = &p;
    loop_run_once(&loop, 0);
    assert_int_equal(p.after_polls, 1);
    struct ttimer t[3];
    wind_back();
    for (int i = 0; i < 3; i++) {
        tt_init(&t[i], i);
        timer_start(&loop, &t[i].t, (unsigned)i);
    }
    loop_run_once(&loop, 0);
    assert_int_equal(p.after_polls, 2);
    assert_int_equal(p.timers_at_after_poll, 3); /* after the pass's timers */
    loop_run_once(&loop, 0);
    assert_int_equal(p.after_polls, 3);
}

struct pipe_io {
    struct io io;
    int calls;
    uint32_t events;
};

static void pipe_cb(struct loop *l, struct io *io, uint32_t events)
{
    struct pipe_io *p = container_of(io, struct pipe_io, io);
    p->calls++;
    p->events |= events;
}

static void test_io_readiness(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    struct pipe_io p = {.io = {.fd = fds[0], .cb = pipe_cb}};
    assert_int_equal(loop_add(&loop, &p.io), 0);
    loop_run_once(&loop, 0);
    assert_int_equal(p.calls, 0); /* nothing to read yet */
    assert_int_equal(write(fds[1], "x", 1), 1);
    loop_run_once(&loop, 1000);
    assert_int_equal(p.calls, 1);
    assert_true(p.events & POLLER_IN);
    loop_del(&loop, &p.io);
    assert_int_equal(write(fds[1], "y", 1), 1);
    loop_run_once(&loop, 0);
    assert_int_equal(p.calls, 1); /* no callbacks after loop_del */
    close(fds[0]);
    close(fds[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_timers_fire_in_deadline_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_not_yet_due_waits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_restart_moves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_stop_inside_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_random_timers_pop_sorted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_wake_from_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_on_wake_not_run_without_wake, setup, teardown),
        cmocka_unit_test_setup_teardown(test_on_wake_once_per_wake_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_after_poll_once_per_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_io_readiness, setup, teardown),
    };
    return cmocka_run_group_tests_name("loop", tests, NULL, NULL);
}
