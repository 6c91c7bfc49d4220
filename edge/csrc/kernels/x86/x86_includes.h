// The headers every x86 kernel set and its shared code use, included before the set's target
// options and namespace (x86_helpers.h and x86_kernels.h are included inside them).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/kernels.h"
