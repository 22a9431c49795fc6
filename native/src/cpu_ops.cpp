// The "eaglex.cpu" custom-op domain: eaglex's own CPU kernels for the nodes the exporter marks
// (packed_matmul.cpp: float32 MatMul by a constant weight; cpu_attention.cpp: GroupQueryAttention;
// int4_matmul.cpp: 4-bit MatMulNBits; each AVX-512 or AVX2). Each marked node is an ONNX function in the
// graph too, so a kernel left out here costs speed, never correctness: its nodes run their function bodies
// on onnxruntime's kernels.
#include <cstdlib>
#include <mutex>
#include <string>

#include "core.h"

namespace eaglex {

namespace {

bool switched_off(const char *variable) {
  const char *choice = std::getenv(variable);
  return choice && std::string(choice) == "onnxruntime";
}

#if defined(__x86_64__)
// How a kernel runs: 0 off (its variable is "onnxruntime", or the CPU has neither AVX-512 nor AVX2 + FMA),
// 1 AVX-512, 2 AVX2 (the variable is "avx2", or the CPU has no AVX-512 and `avx2_by_default`). The float32
// MatMul's AVX2 variant is opt-in: measured only against onnxruntime's AVX-512 GEMM, it loses from 4 rows
// (docs/BENCHMARKS.md, eighth sitting), and onnxruntime's AVX2 GEMM could not be timed beside it.
int mode(const char *variable, bool avx2_by_default = true) {
  bool avx512 = __builtin_cpu_supports("avx512f");
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (switched_off(variable) || !(avx512 || avx2)) return 0;
  const char *choice = std::getenv(variable);
  bool asked = choice && std::string(choice) == "avx2";
  if (asked) return 2;
  return avx512 ? 1 : avx2_by_default ? 2 : 0;
}
#endif

// The domain with the kernels switched on now, null when none is: one per combination, made once and kept
// for the process (onnxruntime keeps a pointer to it in every session that registered it).
OrtCustomOpDomain *domain() {
  static std::mutex guard;
  static Ort::CustomOpDomain *made[3][3][3] = {};
#if defined(__x86_64__)
  int matmul = mode("EAGLEX_PACKED_MATMUL", false);
  int attention = mode("EAGLEX_CPU_ATTENTION"), int4 = mode("EAGLEX_INT4_MATMUL");
#else
  int matmul = 0, attention = 0, int4 = 0;
#endif
  if (!matmul && !attention && !int4) return nullptr;
  std::lock_guard<std::mutex> lock(guard);
  Ort::CustomOpDomain *&d = made[matmul][attention][int4];
  if (!d) {
    d = new Ort::CustomOpDomain("eaglex.cpu");
#if defined(__x86_64__)
    if (matmul) add_packed_matmul(*d, matmul == 2);
    if (attention) add_cpu_attention(*d, attention == 2);
    if (int4) add_int4_matmul(*d, int4 == 2);
#endif
  }
  return *d;
}

}  // namespace

bool cpu_ops_on() { return domain() != nullptr; }

void add_cpu_ops(Ort::SessionOptions &options) {
  if (OrtCustomOpDomain *d = domain()) Ort::ThrowOnError(Ort::GetApi().AddCustomOpDomain(options, d));
}

}  // namespace eaglex

// onnxruntime's entry point for SessionOptions.register_custom_ops_library: the Python runtime registers
// libeaglex.so, so that its sessions run the marked nodes on these kernels too.
extern "C" __attribute__((visibility("default"))) OrtStatus *RegisterCustomOps(OrtSessionOptions *options,
                                                                              const OrtApiBase *api) {
  Ort::InitApi(api->GetApi(ORT_API_VERSION));
  OrtCustomOpDomain *d = eaglex::domain();
  return d ? Ort::GetApi().AddCustomOpDomain(options, d) : nullptr;
}
