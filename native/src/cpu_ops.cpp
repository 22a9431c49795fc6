// The "eaglex.cpu" custom-op domain: eaglex's own CPU kernels for the nodes the exporter marks
// (packed_matmul.cpp: float32 MatMul by a constant weight, AVX-512; cpu_attention.cpp: GroupQueryAttention,
// AVX-512 or AVX2). Each
// marked node is an ONNX function in the graph too, so a kernel left out here costs speed, never
// correctness: its nodes run their function bodies on onnxruntime's kernels.
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

// The domain with the kernels switched on now, null when none is: one per combination (the MatMul kernel
// on or off; the attention off, on, or its AVX2 variant by EAGLEX_CPU_ATTENTION=avx2), made once and kept
// for the process (onnxruntime keeps a pointer to it in every session that registered it).
OrtCustomOpDomain *domain() {
  static std::mutex guard;
  static Ort::CustomOpDomain *made[2][3] = {};
#if defined(__x86_64__)
  bool matmul = !switched_off("EAGLEX_PACKED_MATMUL") && __builtin_cpu_supports("avx512f");
#else
  bool matmul = false;
#endif
  const char *choice = std::getenv("EAGLEX_CPU_ATTENTION");
  int attention = switched_off("EAGLEX_CPU_ATTENTION") || !cpu_attention_runs() ? 0
                  : choice && std::string(choice) == "avx2"                      ? 2
                                                                                 : 1;
  if (!matmul && !attention) return nullptr;
  std::lock_guard<std::mutex> lock(guard);
  Ort::CustomOpDomain *&d = made[matmul][attention];
  if (!d) {
    d = new Ort::CustomOpDomain("eaglex.cpu");
#if defined(__x86_64__)
    if (matmul) add_packed_matmul(*d), add_int4_matmul(*d);  // float32 and 4-bit weights
#endif
    if (attention) add_cpu_attention(*d);  // it reads EAGLEX_CPU_ATTENTION=avx2 itself
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
