/*
 * cli: `herald <command>`, the command-line client in the server's binary:
 * pub, sub, channels, stats, apps, token, bench (docs/cli.md). main() asks
 * cli_is_command() before it parses server options, so `herald` alone, or with
 * flags, is the server as before.
 *
 * Exit codes (CLI_EXIT_*): 0 done; 1 the server said no (its JSON error on
 * stderr); 2 usage error; 3 cannot reach the server (or it broke the
 * connection, or TLS failed); 4 `sub --timeout` ended before `--count`
 * messages; 5 the server is over a limit or busy (429, 503): try again later.
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
    CLI_EXIT_LATER = 5,
};

/*
 * Whether argv[1] is the CLI's: a command, `help`, or any other word (the
 * server takes no positional arguments, so a word there is an unknown command,
 * which cli_main reports). main then hands argv to cli_main.
 */
bool cli_handles(const char *arg);
/* Runs the command argv[1] with its arguments; returns the exit code. */
int cli_main(int argc, char **argv);
/* Prints the list of commands (for the server's --help) to out, a FILE *. */
void cli_print_commands(void *out);

#endif
