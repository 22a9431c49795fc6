// The tree-attention kernel on a GPU: writes the new rows' K/V into the cache, then one warp per
// (query row, head) runs the phases of kernel.cuh. Built by CMakeLists.txt into the TensorRT plugin
// library, and compiled without a GPU by the tests (nvcc -c) so that it at least builds everywhere.
#include <cuda_runtime.h>

#include "kernel.cuh"

namespace {

using eaglex::kWarp;
constexpr int kWarpsPerBlock = 4;

template <typename T>
__global__ void write_kv_kernel(eaglex::Params p) {
    int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index < p.rows * p.kv_heads * p.head_dim) eaglex::write_kv<T>(p, index, *p.cache_len);
}

template <typename T, int kElems>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp) tree_attention_kernel(eaglex::Params p) {
    extern __shared__ float shared[];
    int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    int pair = blockIdx.x * kWarpsPerBlock + warp;
    if (pair >= p.rows * p.num_heads) return;  // the whole warp leaves together
    float* query = shared + warp * eaglex::warp_scratch<kElems>();
    float* scores = query + kElems * kWarp;

    eaglex::RowAttention<T, kElems> row(p, pair, *p.cache_len, *p.mask_start);
    eaglex::LaneState<kElems> state;
    row.load_query(lane, query);
    row.init(state);
    __syncwarp();
    for (int base = 0; base < row.total; base += kWarp) {
        scores[lane] = row.score(lane, base, query);
        __syncwarp();
        row.accumulate(state, lane, base, scores);
        __syncwarp();  // the next block overwrites the scores
    }
    row.store(state, lane);
}

template <typename T, int kElems>
cudaError_t launch_attention(eaglex::Params const& p, cudaStream_t stream) {
    int pairs = p.rows * p.num_heads;
    int blocks = (pairs + kWarpsPerBlock - 1) / kWarpsPerBlock;
    size_t shared = sizeof(float) * kWarpsPerBlock * eaglex::warp_scratch<kElems>();
    tree_attention_kernel<T, kElems><<<blocks, kWarpsPerBlock * kWarp, shared, stream>>>(p);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch(eaglex::Params const& p, cudaStream_t stream) {
    int elements = p.rows * p.kv_heads * p.head_dim;
    write_kv_kernel<T><<<(elements + 255) / 256, 256, 0, stream>>>(p);
    if (cudaError_t error = cudaGetLastError()) return error;
    switch ((p.head_dim + kWarp - 1) / kWarp) {
        case 1: return launch_attention<T, 1>(p, stream);
        case 2: return launch_attention<T, 2>(p, stream);
        case 3: return launch_attention<T, 3>(p, stream);
        case 4: return launch_attention<T, 4>(p, stream);
        case 5: return launch_attention<T, 5>(p, stream);
        case 6: return launch_attention<T, 6>(p, stream);
        case 7: return launch_attention<T, 7>(p, stream);
        default: return launch_attention<T, 8>(p, stream);
    }
}

}  // namespace

extern "C" int eaglex_tree_attention_cuda(int dtype, const void* query, const void* key, const void* value,
    void* key_cache, void* value_cache, void* out, const int32_t* cache_len, const int32_t* mask_start,
    const int32_t* tree_mask, int rows, int words, int num_heads, int kv_heads, int head_dim, int capacity,
    float scale, void* stream) {
    eaglex::Params p{query, key, value, key_cache, value_cache, out, cache_len, mask_start, tree_mask, rows, words,
        num_heads, kv_heads, head_dim, capacity, scale};
    if (!eaglex::valid(p)) return -1;
    auto s = static_cast<cudaStream_t>(stream);
    switch (dtype) {
        case EAGLEX_FLOAT32: return launch<float>(p, s);
        case EAGLEX_FLOAT16: return launch<__half>(p, s);
        case EAGLEX_BFLOAT16: return launch<__nv_bfloat16>(p, s);
        default: return -1;
    }
}
