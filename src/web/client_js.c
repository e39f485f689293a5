/*
 * client_js: GET /herald.js, the JS client (clients/js/herald.js), and GET
 * /herald-shared.js, the module it imports when tabs share one connection
 * (clients/js/herald-shared.js), compiled into the binary by the Makefile (xxd -i
 * into gen/client/), so a page can load the client from the herald it talks to,
 * with no CDN and no external fetch.
 */
#include "web/client_js.h"

#include "core/util.h"
#include "http/router.h"

static const char herald_js[] = {
#include "client/herald.js.inc"
};
static const char herald_shared_js[] = {
#include "client/herald-shared.js.inc"
};

/* A script any page may load (and import as a module, which is a CORS request):
 * Access-Control-Allow-Origin: *, whatever --cors-origins says. */
static void script(struct http_ctx *x, const char *body, size_t len)
{
    x->cors = true;
    x->origin = NULL;
    x->origin_len = 0;
    http_respond(x, 200, "text/javascript; charset=utf-8",
                 "Cache-Control: public, max-age=300\r\nX-Content-Type-Options: nosniff\r\n", body,
                 len);
}

static void client_js(struct http_ctx *x)
{
    script(x, herald_js, sizeof(herald_js));
}

static void client_shared_js(struct http_ctx *x)
{
    script(x, herald_shared_js, sizeof(herald_shared_js));
}

static const struct http_route routes[] = {
    {.path = "/herald.js", .methods = ROUTE_GET, .flags = ROUTE_SUBSCRIBE, .handle = client_js},
    {.path = "/herald-shared.js",
     .methods = ROUTE_GET,
     .flags = ROUTE_SUBSCRIBE,
     .handle = client_shared_js},
};

void client_js_init(void)
{
    http_routes_add(routes, ARRAY_LEN(routes));
}
