// x86 kernel sets. Each is compiled with its own target options (no -march flags for the whole
// build) and only chosen at run time when the CPU reports the features.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace edge {
namespace avx2 {
#define X86_VNNI 0
#include "kernels_x86.inc"
#undef X86_VNNI
}  // namespace avx2
const Kernels AVX2_KERNELS = {"avx2", avx2::matmul_f_x86, avx2::matmul_q_x86,
                              avx2::matmul_qb_x86, avx2::dot_x86,
                              avx2::axpy_x86, avx2::scores_x86, avx2::weighted_sum_x86,
                              avx2::exp_sum_x86, avx2::silu_mul_x86,
                              avx2::quantize_blocks_x86};
}  // namespace edge
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
namespace edge {
namespace avx512 {
#define X86_VNNI 1
#include "kernels_x86.inc"
#undef X86_VNNI
}  // namespace avx512
const Kernels AVX512VNNI_KERNELS = {"avx512vnni", avx512::matmul_f_x86, avx512::matmul_q_x86,
                                    avx512::matmul_qb_x86, avx512::dot_x86, avx512::axpy_x86,
                                    avx512::scores_x86, avx512::weighted_sum_x86,
                                    avx512::exp_sum_x86, avx512::silu_mul_x86,
                                    avx512::quantize_blocks_x86};
}  // namespace edge
#pragma GCC pop_options
#endif
