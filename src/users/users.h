/*
 * users: user-targeted delivery (DESIGN.md §12). A connection's user is its
 * token's "sub"; messages to a user go to the user's channel in the app's
 * namespace (see USER_KEY_TAG in hub/hub.h), which every connection with a user
 * holds from its start. This module makes the key of that channel; the transports
 * add it to what a connection subscribes to, and the publish API to what a publish
 * with "users" targets. Everything else (history, resume, one delivery per
 * connection, cluster mode) is the hub's ordinary channel machinery.
 */
#ifndef HERALD_USERS_H
#define HERALD_USERS_H

#include <stddef.h>

#include "hub/hub.h"

/* Bytes of a user id ("sub"): the token's own bound. */
#define USERS_ID_MAX 256

/*
 * Writes the key of user sub[0..len)'s channel in t's namespace (t NULL: the
 * default app) into out[CHANNEL_KEY_MAX + 1], NUL-terminated; returns its length.
 * sub may hold any bytes (1 to USERS_ID_MAX, checked by the caller). Cannot fail.
 */
size_t users_key(char *out, const struct hub_tenant *t, const char *sub, size_t len);

#endif
