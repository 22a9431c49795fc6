// The tree-attention kernel's logic, written once for two builds: kernel.cu runs it on a GPU with one
// warp per (query row, head), kernel_cpu.cc runs the very same functions lane by lane on a CPU so that
// tests can check the kernel against the numpy reference on machines without a GPU.
//
// One warp attends one query row of one head to cache columns [0, P + S), 32 columns per step:
//   phase A: lane i scores column base + i (a dot product with the query held in shared memory),
//            or -inf where the tree mask hides it;
//   phase B: every lane reads the 32 scores, updates the running max and sum (online softmax, float32)
//            and accumulates the value rows into its own head_dim / 32 output elements.
// The warp synchronises between phases (__syncwarp); the CPU build runs each phase for all lanes in turn.
#pragma once

#include <math.h>
#include <stdint.h>

#include "kernel.h"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define EAGLEX_HD __host__ __device__ __forceinline__
#else
#define EAGLEX_HD inline
#endif

namespace eaglex {

constexpr int kWarp = 32;

struct Params {
    const void* query;
    const void* key;
    const void* value;
    void* key_cache;
    void* value_cache;
    void* out;
    const int32_t* cache_len;
    const int32_t* mask_start;
    const int32_t* tree_mask;
    int rows, words, num_heads, kv_heads, head_dim, capacity;
    float scale;
};

EAGLEX_HD float to_float(float x) { return x; }
EAGLEX_HD void from_float(float x, float* out) { *out = x; }
#ifdef __CUDACC__
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void from_float(float x, __half* out) { *out = __float2half_rn(x); }
__device__ __forceinline__ void from_float(float x, __nv_bfloat16* out) { *out = __float2bfloat16_rn(x); }
#endif

// Copies element `index` of the new rows' keys and values (index over S * kv * D) into cache row P + s.
template <typename T>
EAGLEX_HD void write_kv(Params const& p, int index, int cache_len) {
    int kv_width = p.kv_heads * p.head_dim;
    int row = index / kv_width, within = index % kv_width;
    int head = within / p.head_dim, d = within % p.head_dim;
    int slot = cache_len + row;
    if (row >= p.rows || slot >= p.capacity) return;  // out-of-contract calls must not write out of bounds
    long long at = ((long long)head * p.capacity + slot) * p.head_dim + d;
    static_cast<T*>(p.key_cache)[at] = static_cast<const T*>(p.key)[index];
    static_cast<T*>(p.value_cache)[at] = static_cast<const T*>(p.value)[index];
}

// A lane's running state: its kElems output elements (d = lane + 32 e), the running max and sum.
template <int kElems>
struct LaneState {
    float acc[kElems];
    float max_score;
    float sum;
};

template <typename T, int kElems>
struct RowAttention {
    Params const& p;
    int row, head, kv_head, total, start;
    const T* keys;    // this head's cache rows [M, D]
    const T* values;

    EAGLEX_HD RowAttention(Params const& params, int pair, int cache_len, int mask_start)
        : p(params), row(pair / params.num_heads), head(pair % params.num_heads),
          kv_head(head / (params.num_heads / params.kv_heads)),
          total(cache_len + params.rows < params.capacity ? cache_len + params.rows : params.capacity),
          start(mask_start),
          keys(static_cast<const T*>(params.key_cache) + (long long)kv_head * params.capacity * params.head_dim),
          values(static_cast<const T*>(params.value_cache) + (long long)kv_head * params.capacity * params.head_dim) {}

    EAGLEX_HD void load_query(int lane, float* query) const {
        const T* q = static_cast<const T*>(p.query) + ((long long)row * p.num_heads + head) * p.head_dim;
        for (int e = 0; e < kElems; ++e) {
            int d = lane + kWarp * e;
            query[d] = d < p.head_dim ? to_float(q[d]) : 0.0f;
        }
    }

    EAGLEX_HD void init(LaneState<kElems>& s) const {
        for (int e = 0; e < kElems; ++e) s.acc[e] = 0.0f;
        s.max_score = -INFINITY;
        s.sum = 0.0f;
    }

    // Bit (c - start) % 32 of word (c - start) / 32 of this row says whether it sees column c >= start.
    EAGLEX_HD bool visible(int column) const {
        if (column >= total) return false;
        if (column < start) return true;
        int offset = column - start;
        if (offset / kWarp >= p.words) return false;
        uint32_t word = static_cast<uint32_t>(p.tree_mask[(long long)row * p.words + offset / kWarp]);
        return (word >> (offset % kWarp)) & 1u;
    }

    // Phase A: lane's column score (scaled), -inf where hidden.
    EAGLEX_HD float score(int lane, int base, const float* query) const {
        int column = base + lane;
        if (!visible(column)) return -INFINITY;
        const T* k = keys + (long long)column * p.head_dim;
        float dot = 0.0f;
        for (int d = 0; d < p.head_dim; ++d) dot += query[d] * to_float(k[d]);
        return dot * p.scale;
    }

    // Phase B: fold the block's 32 scores into the lane's state and accumulate its value elements.
    EAGLEX_HD void accumulate(LaneState<kElems>& s, int lane, int base, const float* scores) const {
        float block_max = -INFINITY;
        for (int j = 0; j < kWarp; ++j) block_max = fmaxf(block_max, scores[j]);
        if (block_max == -INFINITY) return;  // nothing visible in this block
        float new_max = fmaxf(s.max_score, block_max);
        float correction = expf(s.max_score - new_max);  // 0 on the first visible block
        s.sum *= correction;
        for (int e = 0; e < kElems; ++e) s.acc[e] *= correction;
        for (int j = 0; j < kWarp; ++j) {
            if (scores[j] == -INFINITY) continue;
            float weight = expf(scores[j] - new_max);
            s.sum += weight;
            const T* v = values + (long long)(base + j) * p.head_dim;
            for (int e = 0; e < kElems; ++e) {
                int d = lane + kWarp * e;
                if (d < p.head_dim) s.acc[e] += weight * to_float(v[d]);
            }
        }
        s.max_score = new_max;
    }

    // A row that saw no column gets zeros (plugins/README.md).
    EAGLEX_HD void store(LaneState<kElems> const& s, int lane) const {
        T* o = static_cast<T*>(p.out) + ((long long)row * p.num_heads + head) * p.head_dim;
        float inverse = s.sum > 0.0f ? 1.0f / s.sum : 0.0f;
        for (int e = 0; e < kElems; ++e) {
            int d = lane + kWarp * e;
            if (d < p.head_dim) from_float(s.acc[e] * inverse, &o[d]);
        }
    }
};

// Shared memory floats one warp uses: its query, then the 32 scores of a block.
template <int kElems>
EAGLEX_HD constexpr int warp_scratch() {
    return kElems * kWarp + kWarp;
}

inline bool valid(Params const& p) {
    return p.rows > 0 && p.words > 0 && p.num_heads > 0 && p.kv_heads > 0 && p.num_heads % p.kv_heads == 0
        && p.head_dim > 0 && p.head_dim <= EAGLEX_MAX_HEAD_DIM && p.capacity > 0;
}

}  // namespace eaglex
