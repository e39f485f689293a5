/*
 * admin: the admin API over apps and plans (/admin/..., --admin-key), and what
 * the Tsuru service API shares with it.
 */
#ifndef HERALD_ADMIN_H
#define HERALD_ADMIN_H

#include <jansson.h>
#include <stdbool.h>

#include "http/http_conn.h"

/* Registers the /admin/ routes. Start-up, once. */
void admin_init(void);
/* Route guard: the request carries --admin-key (answers 401, or 404 when it is off). */
bool admin_guard(struct http_ctx *x);
/* Answers with o as compact JSON (takes the reference). */
void admin_respond_json(struct http_ctx *x, int status, json_t *o);
/* Answers an enum apps_error. */
void admin_apps_error(struct http_ctx *x, int err, const char *name);

#endif
