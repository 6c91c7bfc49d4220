// Run-time choice of kernel set from the CPU's reported features (never from build flags).
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/kernels.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

namespace edge {

const char* isa_name(int isa) {
  switch (isa) {
    case ISA_SCALAR: return "scalar";
    case ISA_AVX2: return "avx2";
    case ISA_AVX512VNNI: return "avx512vnni";
    case ISA_NEON: return "neon";
    case ISA_NEON_DOT: return "neon-dotprod";
  }
  return "unknown";
}

static bool cpu_has(int isa) {
  switch (isa) {
    case ISA_SCALAR: return true;
#if defined(__x86_64__) || defined(_M_X64)
    case ISA_AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ISA_AVX512VNNI:
      return cpu_has(ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__)
    case ISA_NEON: return true;
    case ISA_NEON_DOT:
#if defined(__linux__)
      return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
      return false;
#endif
#endif
    default: return false;
  }
}

const Kernels* kernels_for(int isa) {
  if (!cpu_has(isa)) return nullptr;
  switch (isa) {
    case ISA_SCALAR: return &SCALAR_KERNELS;
#if defined(__x86_64__) || defined(_M_X64)
    case ISA_AVX2: return &AVX2_KERNELS;
    case ISA_AVX512VNNI: return &AVX512VNNI_KERNELS;
#endif
#if defined(__aarch64__)
    case ISA_NEON: return &NEON_KERNELS;
    case ISA_NEON_DOT: return &NEON_DOT_KERNELS;
#endif
  }
  return nullptr;
}

int best_isa() {
  // EDGE_ISA=scalar|avx2|avx512vnni|neon|neon-dotprod caps the choice (for tests and triage).
  // A name that is not an instruction set, or one this CPU does not run, is an error: a typo
  // must not silently measure or test another kernel set.
  const char* want = std::getenv("EDGE_ISA");
  if (want && !*want) want = nullptr;
  int best = ISA_SCALAR;
  std::string names, runs;
  for (int isa = ISA_SCALAR; isa <= ISA_NEON_DOT; isa++) {
    names += std::string(isa == ISA_SCALAR ? "" : ", ") + isa_name(isa);
    if (!kernels_for(isa)) continue;
    runs += std::string(isa == ISA_SCALAR ? "" : ", ") + isa_name(isa);
    best = isa;
    if (want && std::strcmp(want, isa_name(isa)) == 0) return isa;
  }
  if (!want) return best;
  for (int isa = ISA_SCALAR; isa <= ISA_NEON_DOT; isa++)
    if (std::strcmp(want, isa_name(isa)) == 0)
      throw std::invalid_argument(std::string("EDGE_ISA=") + want + ": this CPU does not run " +
                                  want + " (it runs: " + runs + "); unset EDGE_ISA or pick one");
  throw std::invalid_argument(std::string("EDGE_ISA=") + want +
                              " is not an instruction set (one of: " + names + ")");
}

}  // namespace edge
