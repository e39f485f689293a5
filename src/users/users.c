/*
 * users: the key of a user's channel (see users.h): the app's prefix, the tag
 * "#user:" and the first 16 bytes of SHA-256(sub) in hex. A hash rather than the
 * id itself because a "sub" may be 256 bytes of anything and a key is at most
 * CHANNEL_KEY_MAX bytes that go into Redis key names and hash tags; a
 * cryptographic one because user ids may be chosen by users, and two ids with one
 * key would read each other's messages.
 */
#include "users/users.h"

#include <pthread.h>
#include <stdlib.h>

#include <openssl/evp.h>

static EVP_MD *sha256;
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

/* Fetched once: OpenSSL 3 looks up an implicitly named digest under a lock each time. */
static void sha_fetch(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!sha256)
        abort(); /* an OpenSSL without SHA-256 */
}

size_t users_key(char *out, const struct hub_tenant *t, const char *sub, size_t len)
{
    pthread_once(&sha_once, sha_fetch);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdl = 0;
    if (EVP_Digest(sub, len, md, &mdl, sha256, NULL) != 1 || mdl < USER_KEY_HASH_LEN / 2)
        abort(); /* out of memory inside OpenSSL */
    size_t p = t ? t->prefix_len : 0;
    if (p)
        memcpy(out, t->prefix, p);
    memcpy(out + p, USER_KEY_TAG, sizeof(USER_KEY_TAG) - 1);
    p += sizeof(USER_KEY_TAG) - 1;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < USER_KEY_HASH_LEN / 2; i++) {
        out[p++] = hex[md[i] >> 4];
        out[p++] = hex[md[i] & 15];
    }
    out[p] = '\0';
    return p;
}
