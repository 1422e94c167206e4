/*
 * device/dev.c - the backend factory: a name ("cpu", "ppu", "auto") and a
 * config in, a struct dev out.  The only file outside a backend's own
 * folder that names its functions.  It does not choose threads or kernels
 * itself: each backend does that from the config.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "device/cpu/cpu.h"
#include "device/dev.h"

static int fail(char *err, size_t errlen, int rc, const char *msg, const char *name)
{
    if (err && errlen)
        snprintf(err, errlen, msg, name);
    return rc;
}

int dev_check(const char *name, char *err, size_t errlen)
{
    if (!name || !*name)
        name = "auto";
    if (!strcmp(name, "ppu"))
        return fail(err, errlen, -ENODEV,
                    "device '%s': this build has no PPU backend (only cpu); choices: auto, cpu",
                    name);
    if (strcmp(name, "cpu") && strcmp(name, "auto"))
        return fail(err, errlen, -EINVAL, "unknown device '%s'; choices: auto, cpu, ppu", name);
    return 0;
}

int dev_create(const char *name, const struct dev_config *cfg, struct dev *out, char *err,
               size_t errlen)
{
    static const struct dev_config none = {0};
    if (!cfg)
        cfg = &none;
    memset(out, 0, sizeof(*out));
    int rc = dev_check(name, err, errlen);
    if (rc)
        return rc;
    /* auto: the PPU once one is built in and present; until then the CPU */
    rc = dev_cpu_create(cfg, out);
    if (rc)
        fail(err, errlen, rc, "cannot start the %s backend's worker threads", "cpu");
    return rc;
}

const char *dev_built(void)
{
    return "cpu";
}

int dev_has_kernels(const char *name, const char *kernels)
{
    if (!strcmp(name, "cpu"))
        return !strcmp(kernels, "scalar") || (!strcmp(kernels, "avx2") && dev_cpu_has_avx2());
    return 0;
}
