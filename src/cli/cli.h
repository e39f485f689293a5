/*
 * cli: `herald <command>`, the command-line client in the server's binary:
 * pub, sub, channels, stats, apps, token, bench (docs/cli.md). main() asks
 * cli_is_command() before it parses server options, so `herald` alone, or with
 * flags, is the server as before.
 *
 * Exit codes (CLI_EXIT_*): 0 done; 1 the server said no (its JSON error on
 * stderr); 2 usage error; 3 cannot reach the server (or it broke the
 * connection); 4 `sub --timeout` ended before `--count` messages.
 */
#ifndef HERALD_CLI_H
#define HERALD_CLI_H

#include <stdbool.h>

enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_REFUSED = 1,
    CLI_EXIT_USAGE = 2,
    CLI_EXIT_UNREACHABLE = 3,
    CLI_EXIT_TIMEOUT = 4,
};

/* Whether arg names a command (then main hands argv to cli_main). */
bool cli_is_command(const char *arg);
/* Runs the command argv[1] with its arguments; returns the exit code. */
int cli_main(int argc, char **argv);

#endif
