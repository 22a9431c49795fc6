// The CUDA kernel's logic (kernel.cuh) on a CPU: each warp's phases run for its 32 lanes in turn, in the
// order the GPU's __syncwarp() guarantees. For tests against the numpy reference, not for speed.
#include <vector>

#include "kernel.cuh"

namespace {

using eaglex::kWarp;

template <int kElems>
void run_rows(eaglex::Params const& p) {
    int cache_len = *p.cache_len, mask_start = *p.mask_start;
    for (int i = 0; i < p.rows * p.kv_heads * p.head_dim; ++i) eaglex::write_kv<float>(p, i, cache_len);
    std::vector<float> scratch(eaglex::warp_scratch<kElems>());
    float* query = scratch.data();
    float* scores = query + kElems * kWarp;
    eaglex::LaneState<kElems> lanes[kWarp];
    for (int pair = 0; pair < p.rows * p.num_heads; ++pair) {  // one warp each
        eaglex::RowAttention<float, kElems> row(p, pair, cache_len, mask_start);
        for (int lane = 0; lane < kWarp; ++lane) {
            row.load_query(lane, query);
            row.init(lanes[lane]);
        }
        for (int base = 0; base < row.total; base += kWarp) {
            for (int lane = 0; lane < kWarp; ++lane) scores[lane] = row.score(lane, base, query);
            for (int lane = 0; lane < kWarp; ++lane) row.accumulate(lanes[lane], lane, base, scores);
        }
        for (int lane = 0; lane < kWarp; ++lane) row.store(lanes[lane], lane);
    }
}

}  // namespace

extern "C" int eaglex_tree_attention_cpu(const float* query, const float* key, const float* value, float* key_cache,
    float* value_cache, float* out, const int32_t* cache_len, const int32_t* mask_start, const int32_t* tree_mask,
    int rows, int words, int num_heads, int kv_heads, int head_dim, int capacity, float scale) {
    eaglex::Params p{query, key, value, key_cache, value_cache, out, cache_len, mask_start, tree_mask, rows, words,
        num_heads, kv_heads, head_dim, capacity, scale};
    if (!eaglex::valid(p)) return -1;
    switch ((head_dim + kWarp - 1) / kWarp) {
        case 1: run_rows<1>(p); break;
        case 2: run_rows<2>(p); break;
        case 3: run_rows<3>(p); break;
        case 4: run_rows<4>(p); break;
        case 5: run_rows<5>(p); break;
        case 6: run_rows<6>(p); break;
        case 7: run_rows<7>(p); break;
        default: run_rows<8>(p); break;
    }
    return 0;
}
