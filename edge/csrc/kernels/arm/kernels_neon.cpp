// Arm kernel sets: baseline NEON (every Armv8-A core) and NEON with the dot product
// instructions (Armv8.2-A dotprod: Cortex-A55/A76 and later, every current phone), the latter
// chosen at run time from the kernel's HWCAP bits.
#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace edge {
namespace neon {
#define NEON_DOT 0
#include "kernels_neon.inc"
#undef NEON_DOT
}  // namespace neon
const Kernels NEON_KERNELS = {"neon", neon::matmul_f_neon, neon::matmul_q_neon,
                              neon::matmul_qb_neon, neon::dot_neon,
                              neon::axpy_neon, neon::scores_neon, neon::weighted_sum_neon,
                              neon::exp_sum_neon, neon::silu_mul_neon,
                              neon::quantize_blocks_neon};
}  // namespace edge

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
namespace edge {
namespace neon_dot {
#define NEON_DOT 1
#include "kernels_neon.inc"
#undef NEON_DOT
}  // namespace neon_dot
const Kernels NEON_DOT_KERNELS = {"neon-dotprod", neon_dot::matmul_f_neon, neon_dot::matmul_q_neon,
                                  neon_dot::matmul_qb_neon, neon_dot::dot_neon, neon_dot::axpy_neon,
                                  neon_dot::scores_neon, neon_dot::weighted_sum_neon,
                                  neon_dot::exp_sum_neon, neon_dot::silu_mul_neon,
                                  neon_dot::quantize_blocks_neon};
}  // namespace edge
#pragma GCC pop_options
#endif
