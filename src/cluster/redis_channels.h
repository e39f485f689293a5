/*
 * redis_channels: channel administration on the Redis backend (see redis_channels.c).
 * The four calls are struct hub_backend_ops' channel_put, channel_get,
 * channel_delete and channel_list (same contracts, be the backend): each queues its
 * work for the backend thread and answers on worker w.
 */
#ifndef HERALD_REDIS_CHANNELS_H
#define HERALD_REDIS_CHANNELS_H

#include "hub/hub.h"

void redis_channels_put(void *be, int w, const char *name, size_t len, const struct channel_opts *o,
                        hub_info_done *done, void *arg);
void redis_channels_get(void *be, int w, const char *name, size_t len, hub_info_done *done,
                        void *arg);
void redis_channels_delete(void *be, int w, const char *name, size_t len, hub_info_done *done,
                           void *arg);
void redis_channels_list(void *be, int w, const char *after, size_t after_len, const char *prefix,
                         size_t max, hub_list_done *done, void *arg);

#endif
