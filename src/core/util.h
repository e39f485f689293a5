/*
 * util: the few things every module uses: out-of-memory-aborting allocation,
 * container_of, intrusive doubly-linked lists, and clocks.
 */
#ifndef HERALD_UTIL_H
#define HERALD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define ARRAY_LEN(a)                    (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)                       ((a) < (b) ? (a) : (b))
#define MAX(a, b)                       ((a) > (b) ? (a) : (b))
#define UNUSED(x)                       (void)(x)

/* Out of memory aborts: this is a server. Sizes a peer controls are checked before. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrndup(const char *s, size_t n);

/* Intrusive circular doubly-linked list; an empty list points at itself. */
struct list {
    struct list *prev, *next;
};

static inline void list_init(struct list *l)
{
    l->prev = l->next = l;
}
static inline bool list_empty(const struct list *l)
{
    return l->next == l;
}
static inline void list_insert_tail(struct list *l, struct list *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}
static inline void list_remove(struct list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
/* Whether n is linked into some list (nodes are list_init'ed when unlinked). */
static inline bool list_linked(const struct list *n)
{
    return n->next != n;
}
#define list_for_each_safe(pos, tmp, head)                                                         \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                               \
         (pos) = (tmp), (tmp) = (pos)->next)

static inline uint64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
/* Monotonic milliseconds (timers). */
static inline uint64_t now_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}
static inline uint64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
/* Monotonic microseconds (delivery latency). */
static inline uint64_t mono_us(void)
{
    return clock_us(CLOCK_MONOTONIC);
}
/* Wall-clock milliseconds since the epoch (message times). */
static inline uint64_t wall_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}
static inline uint64_t wall_us(void)
{
    return clock_us(CLOCK_REALTIME);
}

/* A growable byte string for building responses; aborts on OOM. */
struct sbuf {
    char *data;
    size_t len, cap;
};
void sbuf_reserve(struct sbuf *b, size_t extra);
/* data may point into b itself. */
void sbuf_add(struct sbuf *b, const void *data, size_t len);
void sbuf_adds(struct sbuf *b, const char *s);
void sbuf_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Length (1-4) of the well-formed UTF-8 sequence at s[0..n), n >= 1; 0 if it is not one. */
size_t utf8_seq_len(const unsigned char *s, size_t n);
/* Appends s as a JSON string literal (with quotes), escaping as RFC 8259 requires;
 * bytes that are not UTF-8 become U+FFFD, so the result is always valid JSON text. */
void sbuf_add_json_str(struct sbuf *b, const char *s, size_t len);
void sbuf_free(struct sbuf *b);

/* Bytes base64url_encode writes for n bytes. */
#define BASE64URL_LEN(n) (((n)*4 + 2) / 3)
/* Writes in[0..len) as base64url without padding (RFC 4648 §5) into out, which has room
 * for BASE64URL_LEN(len) bytes; returns the length written. */
size_t base64url_encode(char *out, const void *in, size_t len);

/*
 * Copies validated JSON text without insignificant whitespace (the publisher's
 * exact tokens, on one line, as SSE and NDJSON need). dst holds len bytes.
 * Returns the new length. Can't fail.
 */
size_t json_strip_ws(char *dst, const char *src, size_t len);

/* Whether `given` equals `secret`, in time that depends on slen only (not on where they
 * differ, nor on glen). */
bool ct_equal(const void *given, size_t glen, const void *secret, size_t slen);

#endif
