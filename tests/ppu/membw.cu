/*
 * tests/ppu/membw.cu - the device's own memory bandwidth, measured: what a
 * batch-1 decode (one read of every weight a token) is held against.
 *
 *   membw [MiB]     (default 1024)
 *
 * Times 20 device-to-device copies of MiB between two buffers with events
 * after 3 untimed ones, and prints one line, "membw: device-to-device copy
 * <GB/s> GB/s (read + write)": bytes read plus bytes written over the time.
 * Exit 77 (SKIP) where no device is, 1 on a CUDA error.
 */
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

static int bad(const char *what, cudaError_t e)
{
    fprintf(stderr, "membw: %s: %s\n", what, cudaGetErrorString(e));
    return 1;
}

int main(int argc, char **argv)
{
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 1024;
    if (argc > 2 || mib < 1 || mib > 65536) {
        fprintf(stderr, "usage: membw [MiB 1..65536]\n");
        return 2;
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("SKIP: membw: no device\n");
        return 77;
    }
    size_t bytes = (size_t)mib << 20;
    void *a = NULL, *b = NULL;
    cudaError_t e = cudaMalloc(&a, bytes);
    if (e == cudaSuccess)
        e = cudaMalloc(&b, bytes);
    if (e != cudaSuccess)
        return bad("cudaMalloc", e);
    cudaMemset(a, 1, bytes);
    cudaEvent_t t0, t1;
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    const int warm = 3, reps = 20;
    for (int i = 0; i < warm; i++)
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(t0, 0);
    for (int i = 0; i < reps; i++)
        cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(t1, 0);
    if ((e = cudaEventSynchronize(t1)) != cudaSuccess)
        return bad("the copies", e);
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    double gbs = 2.0 * (double)bytes * reps / (ms / 1e3) / 1e9;
    printf("membw: device-to-device copy %.1f GB/s (read + write), %ld MiB x %d in %.2f ms\n", gbs,
           mib, reps, ms);
    cudaFree(a);
    cudaFree(b);
    return 0;
}
