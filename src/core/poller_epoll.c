/*
 * poller_epoll: edge-triggered epoll. Every fd is registered once for both
 * directions (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET) so no epoll_ctl is ever
 * needed when a socket's write queue fills or drains.
 */
#include "core/poller.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

int poller_init(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int poller_add(int pfd, int fd, uint32_t events, void *data)
{
    struct epoll_event ev = {.events = EPOLLET | EPOLLRDHUP, .data.ptr = data};
    if (events & POLLER_IN)
        ev.events |= EPOLLIN;
    if (events & POLLER_OUT)
        ev.events |= EPOLLOUT;
    return epoll_ctl(pfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int poller_del(int pfd, int fd)
{
    return epoll_ctl(pfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

int poller_poll(int pfd, struct poller_event *out, int max, int timeout_ms)
{
    struct epoll_event evs[256];
    if (max > 256)
        max = 256;
    int n = epoll_wait(pfd, evs, max, timeout_ms);
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        uint32_t e = evs[i].events, r = 0;
        if (e & (EPOLLIN | EPOLLRDHUP))
            r |= POLLER_IN;
        if (e & EPOLLOUT)
            r |= POLLER_OUT;
        if (e & (EPOLLERR | EPOLLHUP))
            r |= POLLER_ERR | POLLER_IN;
        out[i].data = evs[i].data.ptr;
        out[i].events = r;
    }
    return n;
}
