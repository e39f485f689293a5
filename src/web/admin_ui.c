/*
 * admin_ui: the admin UI (web/admin/), compiled into the binary by the Makefile
 * (xxd -i), served on the API listener under /admin/. The page talks to the admin
 * API and /stats/stream with the admin key in an Authorization header; it loads
 * nothing from elsewhere, which its Content-Security-Policy enforces.
 */
#include "web/admin_ui.h"

#include "core/util.h"
#include "http/router.h"

static const char index_html[] = {
#include "admin/index.html.inc"
};
static const char ui_js[] = {
#include "admin/ui.js.inc"
};
static const char ui_css[] = {
#include "admin/ui.css.inc"
};

/* No inline script or style, nothing from another origin, no framing (clickjacking),
 * no sniffing; the key is never in a URL, so no referrer carries it either. */
static const char security_headers[] =
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'\r\n"
    "X-Frame-Options: DENY\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Cache-Control: no-cache\r\n";

static void page(struct http_ctx *x)
{
    http_respond(x, 200, "text/html; charset=utf-8", security_headers, index_html,
                 sizeof(index_html));
}

static void script(struct http_ctx *x)
{
    http_respond(x, 200, "text/javascript; charset=utf-8", security_headers, ui_js, sizeof(ui_js));
}

static void style(struct http_ctx *x)
{
    http_respond(x, 200, "text/css; charset=utf-8", security_headers, ui_css, sizeof(ui_css));
}

static void icon(struct http_ctx *x)
{
    static const char svg[] = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">"
                              "<circle cx=\"8\" cy=\"8\" r=\"7\" fill=\"#2563eb\"/></svg>";
    http_respond(x, 200, "image/svg+xml", security_headers, svg, sizeof(svg) - 1);
}

/* /admin (no slash) goes to the page, so that relative and absolute links agree. */
static void to_page(struct http_ctx *x)
{
    http_respond(x, 308, "text/plain; charset=utf-8", "Location: /admin/\r\n", "/admin/\n", 8);
}

/* The files themselves are not secret (the API they call is): no guard. */
static const struct http_route routes[] = {
    {.path = "/admin", .methods = ROUTE_GET, .flags = ROUTE_API, .handle = to_page},
    {.path = "/admin/", .methods = ROUTE_GET, .flags = ROUTE_API, .handle = page},
    {.path = "/admin/ui.js", .methods = ROUTE_GET, .flags = ROUTE_API, .handle = script},
    {.path = "/admin/ui.css", .methods = ROUTE_GET, .flags = ROUTE_API, .handle = style},
    {.path = "/admin/favicon.svg", .methods = ROUTE_GET, .flags = ROUTE_API, .handle = icon},
};

void admin_ui_init(void)
{
    http_routes_add(routes, ARRAY_LEN(routes));
}
