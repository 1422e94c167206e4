/*
 * cli/cli.h - the subcommands of bin/cinfer: tokenize (main.c), run
 * (run.c), bench (bench.c), serve (serve.c), health (health.c), template (template.c).  Each
 * returns the process exit status: 0, 1 (failure), or 2 (bad input: usage, a model that does not
 * load).
 */
#ifndef CINFER_CLI_CLI_H
#define CINFER_CLI_CLI_H

#define CLI_EXIT_BADINPUT 2

int cli_run(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_health(int argc, char **argv);
int cli_template(int argc, char **argv);

/* Shared by the subcommands: prints "cinfer VERSION". */
void cli_print_version(void);

/* --device's default: CINFER_DEVICE, else "auto". */
const char *cli_default_device(void);

/* Parses a number in [lo, hi]; 0 or -1. */
int cli_parse_num(const char *s, double lo, double hi, double *out);

/*
 * The whole of a file (path NULL: standard input), NUL-terminated, its
 * length in *len; the caller frees it.  NULL with errno set on failure.
 */
char *cli_read_file(const char *path, size_t *len);

/* Prints "cinfer CMD: MSG (try 'cinfer CMD --help')" and returns CLI_EXIT_BADINPUT. */
int cli_usage(const char *cmd, const char *msg);

#endif
