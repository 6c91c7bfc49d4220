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
constexpr Kernels NEON_KERNELS = EDGE_KERNEL_TABLE("neon", neon);
}  // namespace edge

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
namespace edge {
namespace neon_dot {
#define NEON_DOT 1
#include "kernels_neon.inc"
#undef NEON_DOT
}  // namespace neon_dot
constexpr Kernels NEON_DOT_KERNELS = EDGE_KERNEL_TABLE("neon-dotprod", neon_dot);
}  // namespace edge
#pragma GCC pop_options
#endif
