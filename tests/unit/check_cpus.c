/*
 * tests/unit/check_cpus.c - util/cpus.h on fake /proc and /sys trees: the
 * cgroup v2 and v1 quotas as containers see them (a cgroup namespace, and
 * the host's view of a nested cgroup), the tightest of a cgroup and its
 * parents, rounding, and a system with no quota.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/suites.h"
#include "util/cpus.h"

static char g_root[64];

/* writes text to root + path, making its directories */
static void put(const char *path, const char *text)
{
    char full[512];
    snprintf(full, sizeof(full), "%s%s", g_root, path);
    for (char *p = full + strlen(g_root) + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            ck_assert(mkdir(full, 0755) == 0 || errno == EEXIST);
            *p = '/';
        }
    FILE *f = fopen(full, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void setup(void)
{
    snprintf(g_root, sizeof(g_root), "/tmp/cinfer-cpus-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_root));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_root);
    ck_assert_int_eq(system(cmd), 0);
}

#define MOUNT_V2 "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"

/* a pod limited to 2 CPUs on a 64-core node: 2 threads, and the log says why */
START_TEST(cgroup_v2_quota_caps_the_affinity)
{
    put("/proc/self/mountinfo", "22 1 8:1 / / rw - ext4 /dev/vda rw\n" MOUNT_V2);
    put("/proc/self/cgroup", "0::/\n");
    put("/sys/fs/cgroup/cpu.max", "200000 100000\n");
    struct util_cpus c;
    util_cpus_usable(g_root, 64, &c);
    ck_assert_int_eq(c.n, 2);
    ck_assert_int_eq(c.affinity, 64);
    ck_assert(c.quota > 1.99 && c.quota < 2.01);
    ck_assert_msg(strstr(c.why, "cpu.max 200000 100000") && strstr(c.why, "affinity 64"), "%s",
                  c.why);
    /* an affinity below the quota wins */
    util_cpus_usable(g_root, 1, &c);
    ck_assert_int_eq(c.n, 1);
}
END_TEST

/* the host's view: the process's cgroup and its parents; the tightest wins */
START_TEST(cgroup_v2_parents_count)
{
    put("/proc/self/mountinfo", MOUNT_V2);
    put("/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
    put("/sys/fs/cgroup/kubepods/cpu.max", "max 100000\n");
    put("/sys/fs/cgroup/kubepods/pod1/cpu.max", "150000 100000\n");
    put("/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "max 100000\n");
    struct util_cpus c;
    util_cpus_usable(g_root, 16, &c);
    ck_assert_int_eq(c.n, 1); /* 1.5 CPUs: one thread, a second would be throttled */
    ck_assert(c.quota > 1.49 && c.quota < 1.51);
    /* a quota below one CPU still gets one thread */
    put("/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "50000 100000\n");
    util_cpus_usable(g_root, 16, &c);
    ck_assert_int_eq(c.n, 1);
    ck_assert(c.quota > 0.49 && c.quota < 0.51);
    /* no quota anywhere: the affinity */
    put("/sys/fs/cgroup/kubepods/pod1/cpu.max", "max 100000\n");
    put("/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "max 100000\n");
    util_cpus_usable(g_root, 16, &c);
    ck_assert_int_eq(c.n, 16);
    ck_assert(c.quota == 0);
    ck_assert_msg(strstr(c.why, "no cgroup CPU quota"), "%s", c.why);
}
END_TEST

/* cgroup v1 (hybrid hosts): cpu.cfs_quota_us / cpu.cfs_period_us of the cpu hierarchy */
START_TEST(cgroup_v1_cfs_quota)
{
    put("/proc/self/mountinfo",
        "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "31 25 0:27 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n"
        "32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n");
    put("/proc/self/cgroup", "5:cpuset:/\n4:cpu,cpuacct:/docker/abc\n0::/\n");
    put("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n");
    put("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    struct util_cpus c;
    util_cpus_usable(g_root, 8, &c);
    ck_assert_int_eq(c.n, 3);
    ck_assert_msg(strstr(c.why, "cfs_quota_us 300000"), "%s", c.why);
    /* a cgroup namespace mounts the process's own cgroup: its files are at the mount */
    put("/proc/self/mountinfo",
        "32 25 0:28 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n");
    put("/proc/self/cgroup", "4:cpu,cpuacct:/\n");
    put("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "100000\n");
    put("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
    util_cpus_usable(g_root, 8, &c);
    ck_assert_int_eq(c.n, 1);
}
END_TEST

/* unreadable or odd files limit nothing; this very process gets at least one CPU */
START_TEST(bad_files_limit_nothing)
{
    put("/proc/self/mountinfo", MOUNT_V2);
    put("/proc/self/cgroup", "0::/x\n");
    put("/sys/fs/cgroup/x/cpu.max", "lots 100000\n");
    struct util_cpus c;
    util_cpus_usable(g_root, 4, &c);
    ck_assert_int_eq(c.n, 4);
    put("/sys/fs/cgroup/x/cpu.max", "100000 0\n");
    util_cpus_usable(g_root, 4, &c);
    ck_assert_int_eq(c.n, 4);
    util_cpus_usable("/nonexistent-root", 4, &c);
    ck_assert_int_eq(c.n, 4);
    util_cpus_usable(NULL, 0, &c);
    ck_assert_int_ge(c.n, 1);
    ck_assert_int_ge(c.affinity, c.n);
}
END_TEST

Suite *cpus_suite(void)
{
    Suite *s = suite_create("cpus");
    TCase *tc = tcase_create("cpus");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, cgroup_v2_quota_caps_the_affinity);
    tcase_add_test(tc, cgroup_v2_parents_count);
    tcase_add_test(tc, cgroup_v1_cfs_quota);
    tcase_add_test(tc, bad_files_limit_nothing);
    suite_add_tcase(s, tc);
    return s;
}
