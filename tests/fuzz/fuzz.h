/*
 * fuzz.h: what the libFuzzer targets share. CHECK traps (libFuzzer then saves the
 * input) after saying which contract failed; inside() tells whether [p, p+n) lies
 * within [lo, lo+lo_len).
 */
#ifndef HERALD_FUZZ_H
#define HERALD_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);               \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static inline bool inside(const char *p, size_t n, const char *lo, size_t lo_len)
{
    return p >= lo && n <= lo_len && (size_t)(p - lo) <= lo_len - n;
}

#endif
