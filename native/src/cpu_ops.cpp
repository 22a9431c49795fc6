// The "eaglex.cpu" custom-op domain: eaglex's own CPU kernels for the nodes the exporter marks
// (packed_matmul.cpp: float32 MatMul by a constant weight, AVX-512; cpu_attention.cpp: GroupQueryAttention
// and int4_matmul.cpp: 4-bit MatMulNBits, each AVX-512 or AVX2). Each marked node is an ONNX function in the
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

// How a kernel with an AVX2 variant runs: 0 off (its variable is "onnxruntime", or the CPU has neither
// instruction set), 1 the CPU's best, 2 AVX2 ("avx2").
int mode(const char *variable, bool runs) {
  const char *choice = std::getenv(variable);
  if (switched_off(variable) || !runs) return 0;
  return choice && std::string(choice) == "avx2" ? 2 : 1;
}

// The domain with the kernels switched on now, null when none is: one per combination, made once and kept
// for the process (onnxruntime keeps a pointer to it in every session that registered it).
OrtCustomOpDomain *domain() {
  static std::mutex guard;
  static Ort::CustomOpDomain *made[2][3][3] = {};
#if defined(__x86_64__)
  bool matmul = !switched_off("EAGLEX_PACKED_MATMUL") && __builtin_cpu_supports("avx512f");
  int attention = mode("EAGLEX_CPU_ATTENTION", cpu_attention_runs());
  int int4 = mode("EAGLEX_INT4_MATMUL", int4_matmul_runs());
#else
  bool matmul = false;
  int attention = 0, int4 = 0;
#endif
  if (!matmul && !attention && !int4) return nullptr;
  std::lock_guard<std::mutex> lock(guard);
  Ort::CustomOpDomain *&d = made[matmul][attention][int4];
  if (!d) {
    d = new Ort::CustomOpDomain("eaglex.cpu");
#if defined(__x86_64__)
    if (matmul) add_packed_matmul(*d);
    if (attention) add_cpu_attention(*d);  // it reads EAGLEX_CPU_ATTENTION=avx2 itself
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
