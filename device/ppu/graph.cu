/*
 * device/ppu/graph.cu - a step as one CUDA graph.
 *
 * A decode step is about ten kernels a layer; launched one by one, a small
 * model waits on the host's launches rather than on the device.  So the ops
 * between set_batch and the next point where the host needs the device (the
 * logits download, an upload, a free, the next set_batch) are captured from
 * the stream into a graph instead of launched, and the graph is launched
 * once.  The host still calls every op (capturing is much cheaper than
 * launching), the device then runs the kernels back to back.
 *
 * Every step is captured anew: its kernels' arguments (the token count, the
 * buffers) are in the capture, nothing is assumed from an earlier step.  An
 * instantiated graph is kept per node count (one for steps with logits, one
 * for steps without, as a rule) and updated in place from the new capture
 * (cudaGraphExecUpdate); when the update is refused (another topology), the
 * graph is instantiated again.  The kernels are the same as without graphs,
 * so are the results, bit for bit; CINFER_PPU_GRAPHS=0 turns graphs off.
 */
#include <errno.h>
#include <stdlib.h>

#include "device/ppu/internal.h"

extern "C" void ppu_capture_begin(struct ppu *p)
{
    if (!p->graphs || p->capturing)
        return;
    if (cudaStreamBeginCapture(p->stream, cudaStreamCaptureModeRelaxed) == cudaSuccess)
        p->capturing = 1;
    else
        (void)cudaGetLastError(); /* this step runs without a graph */
}

/* the kept graph for this node count, updated from g; NULL when none could be */
static cudaGraphExec_t exec_for(struct ppu *p, cudaGraph_t g, size_t nodes, cudaError_t *err)
{
    struct ppu_graph *slot = NULL, *lru = &p->g[0];
    for (int i = 0; i < PPU_GRAPHS; i++) {
        if (p->g[i].exec && p->g[i].nodes == nodes && ppu_graph_update(p->g[i].exec, g)) {
            slot = &p->g[i];
            break;
        }
        if (p->g[i].used < lru->used)
            lru = &p->g[i];
    }
    if (!slot) {
        if (lru->exec)
            cudaGraphExecDestroy(lru->exec);
        lru->exec = NULL;
        cudaError_t e = ppu_graph_instantiate(&lru->exec, g);
        if (e != cudaSuccess) {
            lru->exec = NULL;
            *err = e;
            return NULL;
        }
        lru->nodes = nodes;
        slot = lru;
    }
    slot->used = ++p->clock;
    return slot->exec;
}

extern "C" int ppu_flush(struct ppu *p)
{
    if (!p->capturing)
        return 0;
    p->capturing = 0;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(p->stream, &g);
    size_t nodes = 0;
    if (e == cudaSuccess)
        e = cudaGraphGetNodes(g, NULL, &nodes);
    if (e == cudaSuccess && nodes) {
        cudaGraphExec_t x = exec_for(p, g, nodes, &e);
        if (x)
            e = cudaGraphLaunch(x, p->stream);
    }
    if (g)
        cudaGraphDestroy(g);
    if (e == cudaSuccess && p->n_retired) {
        /* buffers a matmul outgrew during the capture: free once the graph ran */
        e = cudaStreamSynchronize(p->stream);
        for (size_t i = 0; i < p->n_retired; i++)
            cudaFree(p->retired[i]);
        p->n_retired = 0;
    }
    if (e != cudaSuccess) {
        /* the captured ops did not run: this step fails; the next ones run without graphs */
        (void)cudaGetLastError();
        p->graphs = 0;
        p->graph_error = e;
        return -EIO;
    }
    return 0;
}

extern "C" int ppu_retire(struct ppu *p, void *ptr)
{
    if (!ptr)
        return 0;
    if (!p->capturing) {
        cudaFree(ptr);
        return 0;
    }
    if (p->n_retired == p->cap_retired) {
        size_t cap = p->cap_retired ? 2 * p->cap_retired : 4;
        void **r = (void **)realloc(p->retired, cap * sizeof(*r));
        if (!r)
            return -ENOMEM;
        p->retired = r;
        p->cap_retired = cap;
    }
    p->retired[p->n_retired++] = ptr;
    return 0;
}

extern "C" void ppu_graphs_free(struct ppu *p)
{
    if (p->capturing) {
        cudaGraph_t g = NULL;
        p->capturing = 0;
        if (cudaStreamEndCapture(p->stream, &g) == cudaSuccess && g)
            cudaGraphDestroy(g);
        (void)cudaGetLastError();
    }
    cudaStreamSynchronize(p->stream);
    for (size_t i = 0; i < p->n_retired; i++)
        cudaFree(p->retired[i]);
    free(p->retired);
    p->retired = NULL;
    p->n_retired = p->cap_retired = 0;
    for (int i = 0; i < PPU_GRAPHS; i++) {
        if (p->g[i].exec)
            cudaGraphExecDestroy(p->g[i].exec);
        p->g[i].exec = NULL;
    }
}
