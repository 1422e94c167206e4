/*
 * device/ppu/vendor.h - every difference between toolchains in one place.
 *
 * The PPU backend is CUDA C.  It builds with NVIDIA's nvcc (and runs on
 * NVIDIA GPUs) and with T-Head's ppu-clang, which takes CUDA 12.x source at
 * the sm_80 level: no wgmma, TMA or thread-block clusters, so nothing here
 * or in the kernels uses them.  The runtime API names are the same on both;
 * what differs (the device name we report, error strings, how much of the
 * free memory may be taken) is decided here.
 */
#ifndef CINFER_DEVICE_PPU_VENDOR_H
#define CINFER_DEVICE_PPU_VENDOR_H

#include <cuda_runtime.h>

#ifdef CINFER_PPU_THEAD
#define PPU_VENDOR "T-Head PPU"
#else
#define PPU_VENDOR "CUDA"
#endif

/* The share of free device memory the KV pool may take by default (the rest: activations). */
#define PPU_FREE_MEM_SHARE 0.85

/* A runtime error as text (both toolchains have cudaGetErrorString). */
static inline const char *ppu_err_str(cudaError_t e)
{
    return cudaGetErrorString(e);
}

/*
 * Free and total device memory; some driver stacks report more free memory
 * than a process can take: never more than the total.
 */
static inline cudaError_t ppu_mem_info(size_t *free_b, size_t *total_b)
{
    cudaError_t e = cudaMemGetInfo(free_b, total_b);
    if (e == cudaSuccess && *free_b > *total_b)
        *free_b = *total_b;
    return e;
}

/*
 * Graphs: CUDA 12 changed cudaGraphInstantiate and cudaGraphExecUpdate; the
 * PPU toolchain follows CUDA 12.  ppu_graph_update: 1 when exec now runs g,
 * 0 when the update was refused (another topology: instantiate anew).
 */
static inline cudaError_t ppu_graph_instantiate(cudaGraphExec_t *exec, cudaGraph_t g)
{
#if CUDART_VERSION >= 12000
    return cudaGraphInstantiate(exec, g, 0);
#else
    return cudaGraphInstantiate(exec, g, NULL, NULL, 0);
#endif
}

static inline int ppu_graph_update(cudaGraphExec_t exec, cudaGraph_t g)
{
#if CUDART_VERSION >= 12000
    cudaGraphExecUpdateResultInfo info;
    cudaError_t e = cudaGraphExecUpdate(exec, g, &info);
#else
    cudaGraphNode_t bad;
    cudaGraphExecUpdateResult res;
    cudaError_t e = cudaGraphExecUpdate(exec, g, &bad, &res);
#endif
    if (e != cudaSuccess)
        (void)cudaGetLastError();
    return e == cudaSuccess;
}

/* The least compute capability the kernels need (sm_80: cp.async-free, dp4a, f16 math). */
#define PPU_MIN_CC_MAJOR 8

#endif
