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
    if (!strcmp(name, "cpu"))
        return 0;
#ifdef CINFER_HAVE_PPU
    int rc = dev_ppu_probe(err, errlen);
    if (rc == -ENODEV && !strcmp(name, "auto")) { /* auto: no device is not an error */
        if (err && errlen)
            err[0] = '\0';
        return 0;
    }
    return rc;
#else
    if (!strcmp(name, "auto"))
        return 0;
    return fail(err, errlen, -ENODEV,
                "device '%s': this build has no PPU backend (only cpu); choices: auto, cpu", name);
#endif
}

int dev_kernels_check(const char *name, char *err, size_t errlen)
{
    return dev_cpu_kernels_check(name, err, errlen);
}

const char *dev_kernels_here(void)
{
    return dev_cpu_kernels_here();
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
    if (rc)
        return rc;
    if ((rc = dev_kernels_check(cfg->kernels, err, errlen)))
        return rc;
#ifdef CINFER_HAVE_PPU
    if (strcmp(name, "cpu")) { /* ppu, or auto with a device present */
        rc = dev_ppu_create(cfg, out, err, errlen);
        if (!rc || !strcmp(name, "ppu") || rc != -ENODEV)
            return rc; /* a bad setting is an error for auto too */
        /* auto without a device: err keeps why the PPU was passed over, for the caller's log */
    }
#endif
    rc = dev_cpu_create(cfg, out);
    if (rc)
        fail(err, errlen, rc, "cannot start the %s backend's worker threads", "cpu");
    return rc;
}

int dev_batch_check(const struct dev_batch *b, size_t *n_tab)
{
    int n = b->n, ns = b->n_seq, no = b->n_out;
    if (n < 0 || ns < 0 || no < 0 || no > n || (n && !b->pos) ||
        (ns && (!b->tables || !b->n_blocks)) || (no && !b->out_rows))
        return -EINVAL;
    size_t tab = 0;
    for (int s = 0; s < ns; s++) {
        if (b->n_blocks[s] < 0 || (b->n_blocks[s] && !b->tables[s]))
            return -EINVAL;
        for (int32_t i = 0; i < b->n_blocks[s]; i++)
            if (b->tables[s][i] < 0)
                return -EINVAL;
        tab += (size_t)b->n_blocks[s];
    }
    for (int t = 0; t < n; t++)
        if (b->pos[t] < 0 || (b->seq && (b->seq[t] < 0 || b->seq[t] >= ns)))
            return -EINVAL;
    for (int i = 0; i < no; i++)
        if (b->out_rows[i] < 0 || b->out_rows[i] >= n)
            return -EINVAL;
    *n_tab = tab;
    return 0;
}

void dev_batch_bounds(const struct dev_batch *b, struct dev_seq_bounds *out)
{
    for (int s = 0; s < b->n_seq; s++) {
        out[s] = (struct dev_seq_bounds){b->n_blocks[s], -1, -1};
        for (int32_t i = 0; i < b->n_blocks[s]; i++)
            if (b->tables[s][i] > out[s].max_block)
                out[s].max_block = b->tables[s][i];
    }
    for (int t = 0; b->seq && t < b->n; t++)
        if (b->pos[t] > out[b->seq[t]].max_pos)
            out[b->seq[t]].max_pos = b->pos[t];
}

int dev_batch_fits(const struct dev_seq_bounds *sb, int n_seq, const struct dev_kv *kv)
{
    if (kv->block_size < 1)
        return -EINVAL;
    for (int s = 0; s < n_seq; s++)
        if (sb[s].max_block >= kv->n_blocks || sb[s].max_pos / kv->block_size >= sb[s].n_blocks)
            return -EINVAL;
    return 0;
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
        return !dev_cpu_kernels_check(kernels, NULL, 0);
    return 0;
}
