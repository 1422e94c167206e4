/*
 * device/ppu/ppu.h - the PPU backend's entry points, for device/dev.c (the
 * factory) alone.  Plain C on this side; the .cu files behind it.
 */
#ifndef CINFER_DEVICE_PPU_PPU_H
#define CINFER_DEVICE_PPU_PPU_H

#include <stddef.h>

#include "device/dev.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * 0 when a usable device is present (compute capability 8.0 or later), else
 * -ENODEV with a one-line message in err saying why (no driver, no device,
 * too old).  Cheap: starts no context beyond what the runtime needs.
 */
int dev_ppu_probe(char *err, size_t errlen);

/* Creates the PPU backend on device 0; 0, -ENODEV or -ENOMEM with a message. */
int dev_ppu_create(const struct dev_config *cfg, struct dev *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
