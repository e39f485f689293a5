/*
 * client_js: the JS client (clients/js/herald.js and herald-shared.js, embedded at
 * build time) served as GET /herald.js and GET /herald-shared.js.
 */
#ifndef HERALD_CLIENT_JS_H
#define HERALD_CLIENT_JS_H

/* Registers GET /herald.js and GET /herald-shared.js. Start-up, once. */
void client_js_init(void);

#endif
