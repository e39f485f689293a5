/*
 * pattern: channel-name patterns, the one grammar and matcher that token grants
 * (src/auth/token.c) and pattern subscriptions (src/hub/patsub.c) share.
 *
 * A pattern is a channel name whose dot-separated segments may be wildcards: a
 * segment "*" matches exactly one non-empty segment, a last segment "**" one or
 * more (the rest of the name). A grant may also name "{sub}", which stands for
 * the token's user id. Nothing here allocates or does I/O: bytes in, answer out.
 */
#ifndef HERALD_PATTERN_H
#define HERALD_PATTERN_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Whether pat[0..len) is a well-formed grant pattern: segments of channel-name
 * characters ([A-Za-z0-9_.:@/-]) or "{sub}", "*" segments, and "**" only as the
 * last segment. A plain channel name is a pattern too. No length limit here.
 */
bool pattern_valid(const char *pat, size_t len);

/*
 * Whether s[0..len) is a subscription pattern: a well-formed pattern of at most
 * 128 bytes (a channel name's limit) with at least one wildcard segment and no
 * "{sub}".
 */
bool pattern_is_subscription(const char *s, size_t len);

/* Whether the pattern pat[0..len) has a wildcard first segment ("**", "*.x"): it
 * matches channels of every name. */
bool pattern_is_broad(const char *pat, size_t len);

/*
 * Whether the channel name[0..nlen) matches the pattern pat[0..plen). "{sub}"
 * stands for the user id sub[0..sublen), compared as plain bytes, and only when
 * it is one segment's worth of channel-name characters (no '.', no '*'):
 * otherwise a pattern naming {sub} matches nothing. Other bytes match themselves.
 */
bool pattern_match(const char *pat, size_t plen, const char *sub, size_t sublen, const char *name,
                   size_t nlen);

/*
 * Whether the grant pattern grant[0..glen) (with {sub} as in pattern_match) covers
 * the subscription pattern pat[0..plen): every channel name pat matches, the grant
 * matches too. So "scores.**" covers "scores.*" and "scores.a.**"; "scores.*"
 * covers "scores.*" but not "scores.**"; "scores.a" covers no pattern. A plain
 * name is covered when the grant matches it.
 */
bool pattern_covers(const char *grant, size_t glen, const char *sub, size_t sublen, const char *pat,
                    size_t plen);

#endif
