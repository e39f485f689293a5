/*
 * herald-floor: the raw-socket floor herald is measured against.
 *
 * Subscribers connect with plain TCP and send "SUB <channel>\n"; the floor
 * answers "+OK\n" (so the bench can time a handshake round trip). Publishers
 * send "POST /pub/<channel>" over HTTP/1.1 keep-alive; the floor answers
 * 201 with a tiny body and writes the exact body bytes to every subscriber
 * of that channel with one write() each: no framing, no queueing, no
 * coalescing. A subscriber whose socket buffer is full loses the message
 * (counted and printed on exit): the floor measures the cost of the write,
 * nothing else. Single-threaded, edge-triggered epoll.
 *
 * usage: herald-floor [--listen ADDR:PORT]   (default 127.0.0.1:9300)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define FLOOR_RBUF         (256 * 1024)
#define FLOOR_MAX_CHANNELS 4096
#define FLOOR_CHAN_NAME    128

struct floor_conn {
    int fd;
    int chan; /* subscribed channel index, -1 if none */
    bool closing;
    size_t rlen, rcap;
    char *rbuf;                  /* only while a request is incomplete; grows to FLOOR_RBUF */
    struct floor_conn *next_sub; /* intrusive channel list */
    struct floor_conn *prev_sub;
};

struct floor_chan {
    char name[FLOOR_CHAN_NAME + 1];
    struct floor_conn *subs;
    size_t nsubs;
};

static struct floor_chan chans[FLOOR_MAX_CHANNELS];
static int nchans;
static volatile sig_atomic_t stop;
static unsigned long long n_pub, n_write, n_short, n_eagain;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int chan_find(const char *name, size_t len, bool create)
{
    if (len == 0 || len > FLOOR_CHAN_NAME)
        return -1;
    for (int i = 0; i < nchans; i++)
        if (strlen(chans[i].name) == len && memcmp(chans[i].name, name, len) == 0)
            return i;
    if (!create || nchans == FLOOR_MAX_CHANNELS)
        return -1;
    memcpy(chans[nchans].name, name, len);
    chans[nchans].name[len] = 0;
    return nchans++;
}

static void sub_unlink(struct floor_conn *c)
{
    if (c->chan < 0)
        return;
    struct floor_chan *ch = &chans[c->chan];
    if (c->prev_sub)
        c->prev_sub->next_sub = c->next_sub;
    else
        ch->subs = c->next_sub;
    if (c->next_sub)
        c->next_sub->prev_sub = c->prev_sub;
    ch->nsubs--;
    c->chan = -1;
}

static void conn_close(int ep, struct floor_conn *c)
{
    sub_unlink(c);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->rbuf);
    free(c);
}

static void write_all(int fd, const char *p, size_t n)
{
    /* Answers are tiny; a full socket buffer here means a broken publisher. */
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void fanout(int chan, const char *body, size_t len)
{
    n_pub++;
    if (chan < 0)
        return;
    for (struct floor_conn *s = chans[chan].subs; s; s = s->next_sub) {
        ssize_t w = write(s->fd, body, len);
        n_write++;
        if (w < 0 && errno == EAGAIN)
            n_eagain++;
        else if (w >= 0 && (size_t)w < len)
            n_short++;
    }
}

/* Handles as many complete requests/commands as the buffer holds.
 * Returns false when the connection must be closed. */
static bool conn_process(struct floor_conn *c)
{
    size_t off = 0;
    for (;;) {
        char *p = c->rbuf + off;
        size_t avail = c->rlen - off;
        if (avail >= 4 && memcmp(p, "SUB ", 4) == 0) {
            char *nl = memchr(p, '\n', avail);
            if (!nl)
                break;
            size_t nlen = (size_t)(nl - p) - 4;
            if (nlen > 0 && p[4 + nlen - 1] == '\r')
                nlen--;
            int ch = chan_find(p + 4, nlen, true);
            if (ch < 0)
                return false;
            sub_unlink(c);
            c->chan = ch;
            c->prev_sub = NULL;
            c->next_sub = chans[ch].subs;
            if (c->next_sub)
                c->next_sub->prev_sub = c;
            chans[ch].subs = c;
            chans[ch].nsubs++;
            write_all(c->fd, "+OK\n", 4);
            off = (size_t)(nl - c->rbuf) + 1;
            continue;
        }
        char *end = memmem(p, avail, "\r\n\r\n", 4);
        if (!end) {
            if (avail >= 4 && memcmp(p, "SUB ", 4) != 0 && memcmp(p, "POST", 4) != 0 &&
                memcmp(p, "GET ", 4) != 0)
                return false;
            break;
        }
        size_t hlen = (size_t)(end - p) + 4;
        size_t clen = 0;
        for (char *h = memchr(p, '\n', hlen); h && h < end;
             h = memchr(h + 1, '\n', (size_t)(end - h))) {
            if (strncasecmp(h + 1, "content-length:", 15) == 0)
                clen = strtoul(h + 16, NULL, 10);
        }
        if (clen > FLOOR_RBUF - 8192)
            return false;
        if (avail < hlen + clen)
            break;
        if (memcmp(p, "POST /pub/", 10) == 0) {
            char *nm = p + 10, *sp = memchr(nm, ' ', hlen - 10);
            if (!sp)
                return false;
            int ch = chan_find(nm, (size_t)(sp - nm), false);
            fanout(ch, p + hlen, clen);
            char resp[160];
            int n = snprintf(
                resp, sizeof resp,
                "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n{\"subscribers\":%zu}",
                (int)snprintf(NULL, 0, "{\"subscribers\":%zu}", ch < 0 ? 0 : chans[ch].nsubs),
                ch < 0 ? 0 : chans[ch].nsubs);
            write_all(c->fd, resp, (size_t)n);
        } else {
            static const char nf[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
            write_all(c->fd, nf, sizeof nf - 1);
        }
        off += hlen + clen;
    }
    if (off > 0) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    return true;
}

static bool conn_read(struct floor_conn *c)
{
    for (;;) {
        if (c->rlen == c->rcap) {
            /* Idle subscribers hold no buffer: it exists only while needed. */
            if (c->rcap == FLOOR_RBUF)
                return false;
            c->rcap = c->rcap ? 2 * c->rcap : 4096;
            c->rbuf = realloc(c->rbuf, c->rcap);
            if (!c->rbuf)
                abort();
        }
        ssize_t r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (r > 0) {
            c->rlen += (size_t)r;
            if (!conn_process(c))
                return false;
            continue;
        }
        if (r == 0)
            return false;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN && c->rlen == 0) {
            free(c->rbuf);
            c->rbuf = NULL;
            c->rcap = 0;
        }
        return errno == EAGAIN;
    }
}

static int listen_on(const char *spec)
{
    char host[64] = "127.0.0.1";
    int port = 9300;
    const char *colon = strrchr(spec, ':');
    if (colon) {
        snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
        port = atoi(colon + 1);
    } else {
        port = atoi(spec);
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
        perror("herald-floor: bind/listen");
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    const char *spec = "127.0.0.1:9300";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            spec = argv[++i];
        else {
            fprintf(stderr, "usage: herald-floor [--listen ADDR:PORT]\n");
            return strcmp(argv[i], "--help") == 0 ? 0 : 2;
        }
    }
    int lfd = listen_on(spec);
    if (lfd < 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "herald-floor: listening on %s\n", spec);
    struct epoll_event evs[512];
    while (!stop) {
        int n = epoll_wait(ep, evs, 512, 500);
        for (int i = 0; i < n; i++) {
            struct floor_conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0)
                        break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct floor_conn *nc = calloc(1, sizeof *nc);
                    if (!nc)
                        abort();
                    nc->fd = fd;
                    nc->chan = -1;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET,
                                              .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (!conn_read(c) || (evs[i].events & (EPOLLERR | EPOLLHUP)))
                conn_close(ep, c);
        }
    }
    fprintf(stderr,
            "herald-floor: %llu publishes, %llu writes, %llu EAGAIN (dropped), %llu short\n", n_pub,
            n_write, n_eagain, n_short);
    return 0;
}
