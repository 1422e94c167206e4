/*
 * cli/health.c - `cinfer health [URL]`: GET URL (default
 * http://127.0.0.1:$CINFER_PORT/health, port 8080 without it) and exit 0 when the answer is 200, 1 when it
 * is anything else or nothing comes within the timeout, 2 on bad usage.  A
 * container's HEALTHCHECK runs it, so the image needs no curl.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "util/clock.h"

static const char k_health_help[] =
    "usage: cinfer health [options] [URL]\n"
    "GET URL and exit 0 when the server answers 200 (1 otherwise): a probe for\n"
    "containers that have no curl.\n"
    "  URL             http://HOST[:PORT][/PATH] (default http://127.0.0.1:PORT/health,\n"
    "                  PORT from CINFER_PORT or 8080; /health/ready says whether the\n"
    "                  server takes work now)\n"
    "      --timeout S seconds to wait for the answer, 0.1 to 3600 (default 5)\n"
    "  -q, --quiet     print nothing\n"
    "  -h, --help      this help\n";

struct url {
    char host[256], port[8], path[1024];
};

/* http://HOST[:PORT][/PATH], HOST a name, an IPv4 address or [IPv6]; 0 or -1 */
static int parse_url(const char *s, struct url *u)
{
    if (strncmp(s, "http://", 7))
        return -1;
    s += 7;
    const char *h = s, *he;
    if (*s == '[') {
        he = strchr(s, ']');
        if (!he)
            return -1;
        h = s + 1;
        s = he + 1;
    } else {
        s += strcspn(s, ":/");
        he = s;
    }
    size_t hl = (size_t)(he - h);
    if (!hl || hl >= sizeof(u->host))
        return -1;
    memcpy(u->host, h, hl);
    u->host[hl] = 0;
    snprintf(u->port, sizeof(u->port), "80");
    if (*s == ':') {
        s++;
        size_t pl = strspn(s, "0123456789");
        if (!pl || pl > 5 || (s[pl] && s[pl] != '/') || atoi(s) < 1 || atoi(s) > 65535)
            return -1;
        snprintf(u->port, sizeof(u->port), "%.*s", (int)pl, s);
        s += pl;
    }
    if (*s && *s != '/')
        return -1;
    if (strlen(s) >= sizeof(u->path) || strpbrk(s, " \r\n"))
        return -1;
    snprintf(u->path, sizeof(u->path), "%s", *s ? s : "/");
    return 0;
}

/* waits until fd is ready for ev or the deadline passes; 0, or -ETIMEDOUT */
static int wait_fd(int fd, short ev, double deadline)
{
    for (;;) {
        double left = deadline - util_now_s();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = ev};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

/* the HTTP status of GET u, or -errno; *why says what went wrong */
static int get_status(const struct url *u, double timeout, char *why, size_t wlen)
{
    double deadline = util_now_s() + timeout;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int g = getaddrinfo(u->host, u->port, &hints, &ai);
    if (g) {
        snprintf(why, wlen, "cannot resolve %s: %s", u->host, gai_strerror(g));
        return -EHOSTUNREACH;
    }
    int rc = -ECONNREFUSED, fd = -1;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) && errno != EINPROGRESS) {
            rc = -errno;
            close(fd);
            fd = -1;
            continue;
        }
        int err = 0;
        socklen_t el = sizeof(err);
        if ((rc = wait_fd(fd, POLLOUT, deadline)) ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) {
            rc = rc ? rc : -(err ? err : errno);
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        snprintf(why, wlen, "cannot connect to %s port %s: %s", u->host, u->port, strerror(-rc));
        return rc;
    }
    char req[1400];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cinfer-health\r\n"
                     "Connection: close\r\n\r\n",
                     u->path, u->host);
    for (int off = 0; off < n;) {
        if ((rc = wait_fd(fd, POLLOUT, deadline)))
            break;
        ssize_t w = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            rc = -errno;
            break;
        }
        off += w > 0 ? (int)w : 0;
    }
    char resp[64];
    size_t got = 0;
    while (!rc && got < sizeof(resp) - 1 && !memchr(resp, '\n', got)) {
        if ((rc = wait_fd(fd, POLLIN, deadline)))
            break;
        ssize_t r = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
        if (r == 0)
            break;
        if (r < 0 && errno != EAGAIN && errno != EINTR)
            rc = -errno;
        got += r > 0 ? (size_t)r : 0;
    }
    close(fd);
    resp[got] = 0;
    if (rc) {
        snprintf(why, wlen, "no answer from %s port %s: %s", u->host, u->port,
                 rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
        return rc;
    }
    int status;
    if (sscanf(resp, "HTTP/%*d.%*d %d", &status) != 1) {
        snprintf(why, wlen, "not an HTTP answer from %s port %s", u->host, u->port);
        return -EPROTO;
    }
    return status;
}

int cli_health(int argc, char **argv)
{
    enum { O_TIMEOUT = 256 };
    static const struct option opts[] = {
        {"timeout", required_argument, 0, O_TIMEOUT},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    double timeout = 5;
    int quiet = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":qh", opts, NULL)) != -1) {
        switch (c) {
        case O_TIMEOUT:
            if (cli_parse_num(optarg, 0.1, 3600, &timeout))
                return cli_usage("health", "--timeout takes seconds from 0.1 to 3600");
            break;
        case 'q':
            quiet = 1;
            break;
        case 'h':
            fputs(k_health_help, stdout);
            return 0;
        case ':':
            return cli_usage("health", "an option is missing its value");
        default:
            return cli_usage("health", "unknown option");
        }
    }
    if (argc - optind > 1)
        return cli_usage("health", "give at most one URL");
    /* the default follows serve's CINFER_PORT, as in a container that sets it */
    char def[64];
    const char *port = getenv("CINFER_PORT");
    snprintf(def, sizeof(def), "http://127.0.0.1:%s/health",
             port && *port && strspn(port, "0123456789") == strlen(port) && strlen(port) <= 5
                 ? port
                 : "8080");
    const char *s = optind < argc ? argv[optind] : def;
    struct url u;
    if (parse_url(s, &u))
        return cli_usage("health", "the URL must be http://HOST[:PORT][/PATH]");
    char why[512] = "";
    int st = get_status(&u, timeout, why, sizeof(why));
    if (st == 200) {
        if (!quiet)
            printf("%s: 200\n", s);
        return 0;
    }
    if (!quiet) {
        if (st > 0)
            fprintf(stderr, "cinfer health: %s: %d\n", s, st);
        else
            fprintf(stderr, "cinfer health: %s: %s\n", s, why);
    }
    return EXIT_FAILURE;
}
