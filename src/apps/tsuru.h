/*
 * tsuru: the Tsuru service API (DESIGN.md §8): Tsuru provisions, binds and removes
 * herald apps as instances of a service. See docs/tsuru.md.
 */
#ifndef HERALD_TSURU_H
#define HERALD_TSURU_H

#include "core/config.h"

/* Registers the /resources routes (on the API listener, behind --admin-key) and warns
 * when the URLs handed to apps cannot be right. Start-up, once. */
void tsuru_init(const struct herald_config *cfg);

#endif
