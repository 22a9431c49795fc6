// C entry points of the tree-attention kernel (plugins/README.md has the op's contract).
//
// Pointers are device pointers for the CUDA build (kernel.cu) and host pointers for the CPU build of the
// same code (kernel_cpu.cc). Shapes, batch 1: query and out [S, heads * D]; key and value [S, kv * D];
// key_cache and value_cache [kv, M, D], rows [P, P + S) written first; tree_mask [S, words] int32.
// cache_len (P) and mask_start are one int32 each, read by the kernel, so a captured CUDA graph replays
// with new values.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum EaglexDtype { EAGLEX_FLOAT32 = 0, EAGLEX_FLOAT16 = 1, EAGLEX_BFLOAT16 = 2 };

// The largest head size the kernel handles (each lane of a warp keeps head_dim / 32 values).
#define EAGLEX_MAX_HEAD_DIM 256

// Launches on `stream` (a cudaStream_t); returns 0, or a nonzero cudaError_t / -1 for bad arguments.
int eaglex_tree_attention_cuda(int dtype, const void* query, const void* key, const void* value, void* key_cache,
    void* value_cache, void* out, const int32_t* cache_len, const int32_t* mask_start, const int32_t* tree_mask,
    int rows, int words, int num_heads, int kv_heads, int head_dim, int capacity, float scale, void* stream);

// The same kernel logic run lane by lane on the CPU, float32 only; returns 0, or -1 for bad arguments.
int eaglex_tree_attention_cpu(const float* query, const float* key, const float* value, float* key_cache,
    float* value_cache, float* out, const int32_t* cache_len, const int32_t* mask_start, const int32_t* tree_mask,
    int rows, int words, int num_heads, int kv_heads, int head_dim, int capacity, float scale);

#ifdef __cplusplus
}
#endif
