/*
 * batch: see batch.h. Everything here runs on the window's worker thread.
 */
#include "hub/batch.h"

#include <stdlib.h>

#include "core/util.h"
#include "hub/hub.h"

static struct batch_window *detach(struct batch_set *bs, struct batch_window *bw)
{
    heap_remove(&bs->heap, &bw->node);
    struct channel_local *cl = &bw->ch->local[bw->w];
    if (cl->window == bw)
        cl->window = NULL;
    return bw;
}

struct batch_window *batch_gather(struct batch_set *bs, int w, struct channel *ch, struct msg *m,
                                  uint32_t batch_ms, bool conflate, uint64_t now_ms,
                                  size_t max_bytes)
{
    assert(ch->local);
    struct channel_local *cl = &ch->local[w];
    struct batch_window *bw = cl->window;
    if (!bw) {
        bw = xcalloc(1, sizeof(*bw));
        bw->ch = ch;
        bw->w = w;
        atomic_fetch_add_explicit(&ch->refs, 1, memory_order_relaxed);
        bw->node.key = now_ms + batch_ms;
        heap_push(&bs->heap, &bw->node);
        cl->window = bw;
    }
    if (conflate && bw->n) {
        /* Only the newest of a window goes out; history keeps the others. */
        ref_put(&bw->msgs[0]->ref);
        bw->msgs[0] = m;
        bw->bytes = m->size;
        return NULL;
    }
    if (bw->n == bw->cap) {
        bw->cap = bw->cap ? bw->cap * 2 : 8;
        bw->msgs = xrealloc(bw->msgs, bw->cap * sizeof(*bw->msgs));
    }
    bw->msgs[bw->n++] = m;
    bw->bytes += m->size;
    /* A full window goes now: its subscribers' queues must stay under their cap. */
    if (bw->n >= BATCH_MAX_MSGS || bw->bytes >= max_bytes)
        return detach(bs, bw);
    return NULL;
}

struct batch_window *batch_take_due(struct batch_set *bs, uint64_t now_ms)
{
    struct heap_node *n = heap_min(&bs->heap);
    if (!n || n->key > now_ms)
        return NULL;
    return detach(bs, container_of(n, struct batch_window, node));
}

struct batch_window *batch_take(struct batch_set *bs, int w, struct channel *ch)
{
    struct batch_window *bw = ch->local ? ch->local[w].window : NULL;
    return bw ? detach(bs, bw) : NULL;
}

bool batch_next_deadline(const struct batch_set *bs, uint64_t *deadline)
{
    struct heap_node *n = heap_min(&bs->heap);
    if (n)
        *deadline = n->key;
    return n != NULL;
}

void batch_window_free(struct hub *hub, struct batch_window *bw)
{
    for (uint32_t i = 0; i < bw->n; i++)
        ref_put(&bw->msgs[i]->ref);
    free(bw->msgs);
    hub_channel_put_ref(hub, bw->ch);
    free(bw);
}

void batch_set_free(struct hub *hub, struct batch_set *bs)
{
    struct heap_node *n;
    while ((n = heap_min(&bs->heap)))
        batch_window_free(hub, detach(bs, container_of(n, struct batch_window, node)));
    heap_free(&bs->heap);
}
