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
#ifdef CINFER_HAVE_PPU
#include "device/ppu/ppu.h"
#endif

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
    if (strcmp(name, "cpu") && strcmp(name, "auto") && strcmp(name, "ppu"))
        return fail(err, errlen, -EINVAL, "unknown device '%s'; choices: auto, cpu, ppu", name);
    if (strcmp(name, "ppu"))
        return 0;
#ifdef CINFER_HAVE_PPU
    return dev_ppu_probe(err, errlen);
#else
    return fail(err, errlen, -ENODEV,
                "device '%s': this build has no PPU backend (only cpu); choices: auto, cpu", name);
#endif
}

int dev_create(const char *name, const struct dev_config *cfg, struct dev *out, char *err,
               size_t errlen)
{
    static const struct dev_config none = {0};
    if (!cfg)
        cfg = &none;
    if (!name || !*name)
        name = "auto";
    memset(out, 0, sizeof(*out));
    if (err && errlen)
        err[0] = '\0';
    int rc = dev_check(name, err, errlen);
    if (rc && strcmp(name, "auto"))
        return rc;
#ifdef CINFER_HAVE_PPU
    if (strcmp(name, "cpu")) { /* ppu, or auto with a device present */
        rc = dev_ppu_create(cfg, out, err, errlen);
        if (!rc || !strcmp(name, "ppu"))
            return rc;
        /* auto: err keeps why the PPU was passed over, for the caller's log */
    }
#endif
    rc = dev_cpu_create(cfg, out);
    if (rc)
        fail(err, errlen, rc, "cannot start the %s backend's worker threads", "cpu");
    return rc;
}

const char *dev_built(void)
{
#ifdef CINFER_HAVE_PPU
    return "cpu ppu";
#else
    return "cpu";
#endif
}

int dev_has_kernels(const char *name, const char *kernels)
{
    if (!strcmp(name, "cpu"))
        return !strcmp(kernels, "scalar") || (!strcmp(kernels, "avx2") && dev_cpu_has_avx2());
    return 0;
}
