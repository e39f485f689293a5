/*
 * pattern: the grammar and the matcher of channel-name patterns, shared by
 * token grants and pattern subscriptions. See pattern.h.
 */
#include "hub/pattern.h"

#include <string.h>

#define SUB_MARK     "{sub}"
#define SUB_MARK_LEN 5
#define NAME_MAX_LEN 128 /* CHANNEL_NAME_MAX, without the hub's header */

static bool name_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '.' || ch == ':' || ch == '@' || ch == '/' || ch == '-';
}

bool pattern_valid(const char *pat, size_t len)
{
    if (len == 0)
        return false;
    size_t seg = 0; /* start of the current segment */
    for (size_t i = 0; i <= len; i++) {
        if (i < len && pat[i] != '.')
            continue;
        const char *s = pat + seg;
        size_t sl = i - seg;
        bool stars = (sl == 1 && s[0] == '*') || (sl == 2 && s[0] == '*' && s[1] == '*');
        if (sl == 2 && stars && i != len)
            return false; /* "**" only as the last segment */
        for (size_t k = 0; !stars && k < sl; k++) {
            if (s[k] == '{' && sl - k >= SUB_MARK_LEN && memcmp(s + k, SUB_MARK, SUB_MARK_LEN) == 0)
                k += SUB_MARK_LEN - 1;
            else if (!name_char((unsigned char)s[k]))
                return false;
        }
        seg = i + 1;
    }
    return true;
}

bool pattern_is_subscription(const char *s, size_t len)
{
    /* A '*' is never in a channel name: in a valid pattern it is a wildcard segment. */
    return len <= NAME_MAX_LEN && memchr(s, '*', len) && !memchr(s, '{', len) &&
           pattern_valid(s, len);
}

bool pattern_is_broad(const char *pat, size_t len)
{
    return len && pat[0] == '*';
}

/* Whether sub can stand for {sub}: one segment of channel-name characters. */
static bool sub_substitutable(const char *sub, size_t len)
{
    if (!sub || len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (sub[i] == '.' || !name_char((unsigned char)sub[i]))
            return false;
    return true;
}

/* Whether the literal segment p[0..pl) (with {sub}) equals n[0..nl). */
static bool segment_match(const char *p, size_t pl, const char *sub, size_t sublen, bool sub_ok,
                          const char *n, size_t nl)
{
    size_t j = 0;
    for (size_t k = 0; k < pl; k++) {
        if (p[k] == '{' && pl - k >= SUB_MARK_LEN && memcmp(p + k, SUB_MARK, SUB_MARK_LEN) == 0) {
            if (!sub_ok || nl - j < sublen || memcmp(n + j, sub, sublen) != 0)
                return false;
            j += sublen;
            k += SUB_MARK_LEN - 1;
        } else if (j == nl || n[j++] != p[k]) {
            return false;
        }
    }
    return j == nl;
}

bool pattern_match(const char *pat, size_t plen, const char *sub, size_t sublen, const char *name,
                   size_t nlen)
{
    bool sub_ok = sub_substitutable(sub, sublen);
    size_t pi = 0, ni = 0;
    for (;;) {
        const char *pe = memchr(pat + pi, '.', plen - pi);
        size_t pl = pe ? (size_t)(pe - (pat + pi)) : plen - pi;
        if (!pe && pl == 2 && pat[pi] == '*' && pat[pi + 1] == '*')
            return ni < nlen; /* the rest: one segment or more */
        if (ni > nlen)
            return false; /* the name has no segment left for this one */
        const char *ne = memchr(name + ni, '.', nlen - ni);
        size_t nl = ne ? (size_t)(ne - (name + ni)) : nlen - ni;
        if (pl == 1 && pat[pi] == '*') {
            if (nl == 0)
                return false;
        } else if (!segment_match(pat + pi, pl, sub, sublen, sub_ok, name + ni, nl)) {
            return false;
        }
        ni += nl + 1; /* past the dot (or past the end: nlen + 1) */
        if (!pe)
            return ni == nlen + 1; /* both ended together */
        pi += pl + 1;
    }
}

bool pattern_covers(const char *grant, size_t glen, const char *sub, size_t sublen, const char *pat,
                    size_t plen)
{
    /*
     * Read pat as a name whose segments are symbols: the grant's "*" takes one of its
     * segments (a "*" or a literal one), its "**" the rest, its literal segments only
     * the same literal. That is exact except for a last "**" of pat, which stands for
     * one segment or more: a grant that also matches pat with one more segment
     * (fixed-length grants cannot match both) ends in a "**" that takes them all.
     */
    if (!pattern_match(grant, glen, sub, sublen, pat, plen))
        return false;
    if (plen < 2 || pat[plen - 1] != '*' || pat[plen - 2] != '*')
        return true;
    if (plen > NAME_MAX_LEN)
        return false;
    char longer[NAME_MAX_LEN + 3];
    memcpy(longer, pat, plen);
    memcpy(longer + plen, ".**", 3);
    return pattern_match(grant, glen, sub, sublen, longer, plen + 3);
}
