/*
 * util/cpus.h - how many CPUs this process may really use: its CPU affinity,
 * capped by the CPU quota of its cgroup (v2 cpu.max, v1 cpu.cfs_quota_us /
 * cpu.cfs_period_us, the process's own cgroup and every one above it).  A pod
 * limited to 2 CPUs on a 64-core node gets 2, not 64.
 */
#ifndef CINFER_UTIL_CPUS_H
#define CINFER_UTIL_CPUS_H

#include <stddef.h>

struct util_cpus {
    int n;         /* the CPUs to use, >= 1 */
    int affinity;  /* CPUs in the affinity mask */
    double quota;  /* the tightest cgroup quota in CPUs (quota / period); 0: none */
    char why[640]; /* "affinity 64 CPUs, cgroup v2 cpu.max 200000 100000 (2 CPUs)" */
};

/*
 * Fills *out; always succeeds (what cannot be read limits nothing).  A
 * fractional quota rounds down, to at least 1: 1.5 CPUs gets one thread,
 * since a second would be throttled half the time and the pool would wait
 * for it.  root: NULL for this system, else a directory standing for / (the
 * tests' fake /proc and /sys); affinity: <= 0 to ask the kernel, else taken
 * as the affinity mask's size.
 */
void util_cpus_usable(const char *root, int affinity, struct util_cpus *out);

#endif
