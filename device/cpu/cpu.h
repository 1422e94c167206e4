/*
 * device/cpu/cpu.h - the CPU backend's own entry points, for device/dev.c
 * (the factory) alone: everything else makes a backend with dev_create().
 */
#ifndef CINFER_DEVICE_CPU_CPU_H
#define CINFER_DEVICE_CPU_CPU_H

#include "device/dev.h"

/*
 * Creates the CPU backend; 0, or -ENOMEM / -errno from thread creation.
 * cfg->kernels must have passed dev_cpu_kernels_check (dev_create sees to it).
 */
int dev_cpu_create(const struct dev_config *cfg, struct dev *out);

/* 0 when dev_config.kernels names a path this build and CPU have, else -EINVAL and why. */
int dev_cpu_kernels_check(const char *name, char *err, size_t errlen);

/*
 * The paths this build has and this CPU runs, the one auto takes last:
 * "scalar avx2", "scalar avx2 avx512 avx512vnni", ...
 */
const char *dev_cpu_kernels_here(void);

#endif
