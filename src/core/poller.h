/*
 * poller: the OS readiness backend behind four functions. Only epoll exists
 * today; callers never see epoll types or #ifdefs.
 */
#ifndef HERALD_POLLER_H
#define HERALD_POLLER_H

#include <stdint.h>

#define POLLER_IN  1u
#define POLLER_OUT 2u
#define POLLER_ERR 4u /* error or hang-up */

struct poller_event {
    void *data;
    uint32_t events; /* POLLER_* */
};

/* Returns the backend fd (>= 0) or -errno. */
int poller_init(void);
/* Registers fd edge-triggered for `events` with `data` returned by poll. 0 or -errno. */
int poller_add(int pfd, int fd, uint32_t events, void *data);
/* Unregisters fd (closing it does that too). 0 or -errno. */
int poller_del(int pfd, int fd);
/* Waits up to timeout_ms (-1 forever). Returns the number of events or -errno (-EINTR ok). */
int poller_poll(int pfd, struct poller_event *out, int max, int timeout_ms);

#endif
