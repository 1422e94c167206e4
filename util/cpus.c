/*
 * util/cpus.c - the CPUs this process may use (cpus.h).  The cgroup is found
 * from /proc/self/cgroup and /proc/self/mountinfo: the mount of the cgroup2
 * hierarchy, or of the v1 hierarchy with the cpu controller, gives the
 * directory; its quota files and those of the directories above it up to
 * the mount are read, and the tightest wins.
 */
#include "util/cpus.h"

#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* root + path into out (PATH_MAX-ish buffers; longer paths are not ours to read) */
static int at(const char *root, const char *path, char *out, size_t len)
{
    int n = snprintf(out, len, "%s%s", root ? root : "", path);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

/* root + path opened for reading, or NULL */
static FILE *open_at(const char *root, const char *path)
{
    char full[512];
    return at(root, path, full, sizeof(full)) ? NULL : fopen(full, "r");
}

/* the first line of file path, or -1 */
static int read_line(const char *path, char *line, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *ok = fgets(line, (int)len, f);
    fclose(f);
    if (!ok)
        return -1;
    line[strcspn(line, "\n")] = 0;
    return 0;
}

/* 1 when the comma-separated list has the word w */
static int has_word(const char *list, const char *w)
{
    size_t n = strlen(w);
    for (const char *p = list; *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && !strncmp(p, w, n))
            return 1;
        p += k;
        p += *p == ',';
    }
    return 0;
}

/*
 * The mount of the hierarchy: v2 (cgroup2) or v1 with the cpu controller.
 * *mnt gets its mount point, *mroot the cgroup directory mounted there.
 */
static int find_mount(const char *root, int v2, char *mnt, size_t mlen, char *mroot, size_t rlen)
{
    FILE *f = open_at(root, "/proc/self/mountinfo");
    if (!f)
        return -1;
    char line[1024];
    int found = -1;
    while (found && fgets(line, sizeof(line), f)) {
        char r[256], m[256];
        if (sscanf(line, "%*s %*s %*s %255s %255s", r, m) != 2)
            continue;
        const char *sep = strstr(line, " - ");
        if (!sep)
            continue;
        char fstype[32], src[64], opts[256] = "";
        if (sscanf(sep + 3, "%31s %63s %255s", fstype, src, opts) < 2)
            continue;
        if (v2 ? !strcmp(fstype, "cgroup2") : !strcmp(fstype, "cgroup") && has_word(opts, "cpu")) {
            snprintf(mnt, mlen, "%s", m);
            snprintf(mroot, rlen, "%s", r);
            found = 0;
        }
    }
    fclose(f);
    return found;
}

/* this process's cgroup path in the v2 hierarchy ("0::/x") or the v1 one with cpu */
static int find_cgroup(const char *root, int v2, char *cg, size_t len)
{
    FILE *f = open_at(root, "/proc/self/cgroup");
    if (!f)
        return -1;
    char line[1024];
    int found = -1;
    while (found && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c1 = *c2 = 0; /* line: the hierarchy id, c1 + 1: its controllers */
        int ok = v2 ? !strcmp(line, "0") && !c1[1] : has_word(c1 + 1, "cpu");
        if (ok) {
            snprintf(cg, len, "%s", c2 + 1);
            found = 0;
        }
    }
    fclose(f);
    return found;
}

/* the quota of one directory in CPUs, 0 for none; *desc says what was read */
static double dir_quota(const char *dir, int v2, char *desc, size_t dlen)
{
    char path[1100], line[128];
    if (v2) {
        snprintf(path, sizeof(path), "%s/cpu.max", dir);
        if (read_line(path, line, sizeof(line)))
            return 0;
        char q[32];
        long long period;
        if (sscanf(line, "%31s %lld", q, &period) != 2 || !strcmp(q, "max") || period <= 0)
            return 0;
        char *end;
        long long quota = strtoll(q, &end, 10);
        if (*end || quota <= 0)
            return 0;
        snprintf(desc, dlen, "cgroup v2 cpu.max %lld %lld", quota, period);
        return (double)quota / (double)period;
    }
    long long quota, period;
    snprintf(path, sizeof(path), "%s/cpu.cfs_quota_us", dir);
    if (read_line(path, line, sizeof(line)) || sscanf(line, "%lld", &quota) != 1 || quota <= 0)
        return 0;
    snprintf(path, sizeof(path), "%s/cpu.cfs_period_us", dir);
    if (read_line(path, line, sizeof(line)) || sscanf(line, "%lld", &period) != 1 || period <= 0)
        return 0;
    snprintf(desc, dlen, "cgroup v1 cpu.cfs_quota_us %lld / cpu.cfs_period_us %lld", quota, period);
    return (double)quota / (double)period;
}

/* the tightest quota of the process's cgroup and those above it, in hierarchy v2 or v1 */
static double hierarchy_quota(const char *root, int v2, char *desc, size_t dlen)
{
    char mnt[256], mroot[256], cg[512];
    if (find_mount(root, v2, mnt, sizeof(mnt), mroot, sizeof(mroot)) ||
        find_cgroup(root, v2, cg, sizeof(cg)))
        return 0;
    /* the cgroup's path below the mount (the mount shows mroot and what is under it) */
    const char *rel = cg;
    size_t rl = strlen(mroot);
    if (strcmp(mroot, "/") && !strncmp(cg, mroot, rl) && (cg[rl] == '/' || !cg[rl]))
        rel = cg + rl;
    else if (strcmp(mroot, "/"))
        rel = ""; /* a cgroup namespace's view: the mount is the process's own cgroup */
    char base[512], dir[1024];
    if (at(root, mnt, base, sizeof(base)) ||
        snprintf(dir, sizeof(dir), "%s%s", base, strcmp(rel, "/") ? rel : "") >= (int)sizeof(dir))
        return 0;
    double best = 0;
    size_t bl = strlen(base);
    for (;;) {
        char d[160];
        double q = dir_quota(dir, v2, d, sizeof(d));
        if (q > 0 && (best == 0 || q < best)) {
            best = q;
            snprintf(desc, dlen, "%s", d);
        }
        char *slash = strrchr(dir, '/');
        if (strlen(dir) <= bl || !slash || (size_t)(slash - dir) < bl)
            break;
        *slash = 0;
    }
    return best;
}

void util_cpus_usable(const char *root, int affinity, struct util_cpus *out)
{
    memset(out, 0, sizeof(*out));
    if (affinity <= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        affinity = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
        if (affinity <= 0) {
            long n = sysconf(_SC_NPROCESSORS_ONLN);
            affinity = n > 0 ? (int)n : 1;
        }
    }
    out->affinity = affinity;
    char d2[160] = "", d1[160] = "";
    double q2 = hierarchy_quota(root, 1, d2, sizeof(d2));
    double q1 = hierarchy_quota(root, 0, d1, sizeof(d1));
    double q = q2 > 0 && (q1 <= 0 || q2 <= q1) ? q2 : q1;
    const char *desc = q == q2 && q2 > 0 ? d2 : d1;
    out->quota = q;
    int n = affinity;
    char aff[32];
    snprintf(aff, sizeof(aff), "affinity %d CPU%s", affinity, affinity == 1 ? "" : "s");
    if (q > 0) {
        int qn = (int)floor(q + 1e-9);
        if (qn < 1)
            qn = 1;
        if (qn < n)
            n = qn;
        snprintf(out->why, sizeof(out->why), "%.31s, %.159s (%.2f CPUs)", aff, desc, q);
    } else {
        snprintf(out->why, sizeof(out->why), "%.31s, no cgroup CPU quota", aff);
    }
    out->n = n;
}
