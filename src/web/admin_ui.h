/*
 * admin_ui: the admin UI's page, script and style under /admin/ (see admin_ui.c and
 * docs/admin-ui.md).
 */
#ifndef HERALD_ADMIN_UI_H
#define HERALD_ADMIN_UI_H

/* Registers the /admin/ routes of the UI. Start-up, once. */
void admin_ui_init(void);

#endif
