/*
 * longpoll: GET /poll. Answers at once with every retained message after the
 * cursor, or holds the request until a message arrives or the timeout passes.
 * The answer is {"messages":[envelopes...],"cursor":"N"}: the envelopes are
 * the messages' shared bytes (referenced, never copied), at most
 * --max-outbound of them; when that cuts an answer short, its cursor is the
 * last message it holds, so the next poll goes on from there.
 */
#ifndef HERALD_LONGPOLL_H
#define HERALD_LONGPOLL_H

#include "http/http_conn.h"

void longpoll_handle(struct http_ctx *x);

#endif
