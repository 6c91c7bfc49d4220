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
constexpr Kernels NEON_KERNELS = {
    .name = "neon",
    .matmul_f = neon::matmul_f_neon,
    .matmul_q = neon::matmul_q_neon,
    .matmul_qb = neon::matmul_qb_neon,
    .dot = neon::dot_neon,
    .axpy = neon::axpy_neon,
    .scores = neon::scores_neon,
    .weighted_sum = neon::weighted_sum_neon,
    .exp_sum = neon::exp_sum_neon,
    .silu_mul = neon::silu_mul_neon,
    .quantize_blocks = neon::quantize_blocks_neon,
};
static_assert(complete(NEON_KERNELS), "NEON_KERNELS: every entry set");
}  // namespace edge

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
namespace edge {
namespace neon_dot {
#define NEON_DOT 1
#include "kernels_neon.inc"
#undef NEON_DOT
}  // namespace neon_dot
constexpr Kernels NEON_DOT_KERNELS = {
    .name = "neon-dotprod",
    .matmul_f = neon_dot::matmul_f_neon,
    .matmul_q = neon_dot::matmul_q_neon,
    .matmul_qb = neon_dot::matmul_qb_neon,
    .dot = neon_dot::dot_neon,
    .axpy = neon_dot::axpy_neon,
    .scores = neon_dot::scores_neon,
    .weighted_sum = neon_dot::weighted_sum_neon,
    .exp_sum = neon_dot::exp_sum_neon,
    .silu_mul = neon_dot::silu_mul_neon,
    .quantize_blocks = neon_dot::quantize_blocks_neon,
};
static_assert(complete(NEON_DOT_KERNELS), "NEON_DOT_KERNELS: every entry set");
}  // namespace edge
#pragma GCC pop_options
#endif
