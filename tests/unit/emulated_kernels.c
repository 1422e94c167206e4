/*
 * tests/unit/emulated_kernels.c - the kernel builds the tests add to the CPU
 * backend (device/cpu/cpu.c: cpu_kernels_emulated): avx2.c's VNNI build with
 * SIMDe emulating vpdpbusd (Makefile: avx2-vnni_emu.o), so that a CPU without
 * VNNI still checks that code against the other paths, bit for bit.
 */
#include <stddef.h>

#include "device/cpu/kernels.h"

#ifdef CINFER_HAVE_AVX2
extern const struct cpu_kernels cpu_kernels_vnni_emu;
const struct cpu_kernels *const cpu_kernels_emulated[] = {&cpu_kernels_vnni_emu, NULL};
#else
const struct cpu_kernels *const cpu_kernels_emulated[] = {NULL};
#endif
