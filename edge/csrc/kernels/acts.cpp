// Activation preparation (acts.h) over the definitions in scalar/reference.cpp.
#include "kernels/acts.h"

namespace edge {

void ActBuffers::reserve(int64_t tokens, int64_t k) {
  const size_t n = (size_t)tokens, padded = (size_t)(token_groups(tokens) * TOKEN_GROUP);
  q_.assign(n * k, 0);
  qu_.assign(n * k, 0);
  scale_.assign(n, 0.f);
  zero_.assign(n, 0);
  bq_.assign(n * k, 0);
  bscale_.assign(n * k / ACT_BLOCK + 1, 0.f);
  bsum_.assign(n * k / ACT_BLOCK + 1, 0);
  bcorr_.assign(n * k / ACT_BLOCK + 1, 0.f);
  tq_.assign(padded * k, 0);
  tnbsum_.assign(padded * k / ACT_BLOCK + 1, 0);
  tscale_.assign(padded * k / ACT_BLOCK + 1, 0.f);
}

void ActBuffers::quantize_tokens(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t i0,
                                 int64_t i1) {
  if (i0 >= i1) return;
  quantize_acts(x + i0 * ldx, i1 - i0, k, ldx, q_.data() + i0 * k, qu_.data() + i0 * k,
                scale_.data() + i0, zero_.data() + i0);
}

void ActBuffers::quantize_blocks(decltype(Kernels::quantize_blocks) quantize, const float* x,
                                 int64_t ldx, int64_t m, int64_t k, int64_t i0, int64_t i1) {
  if (i0 >= i1) return;
  const int64_t nb = k / ACT_BLOCK;
  quantize(x + i0 * ldx, i1 - i0, k, ldx, bq_.data() + i0 * k, bscale_.data() + i0 * nb,
           bsum_.data() + i0 * nb, bcorr_.data() + i0 * nb);
  if (m > 1)  // prompt batches: the tile form too (each caller regroups its own tokens)
    interleave_act_blocks(bq_.data(), bscale_.data(), bsum_.data(), m, k, i0, i1, tq_.data(),
                          tnbsum_.data(), tscale_.data());
}

QActs ActBuffers::tokens(int64_t m, int64_t k) const {
  return QActs{.q = q_.data(), .qu = qu_.data(), .scale = scale_.data(), .zero = zero_.data(),
               .m = m, .k = k, .block = 0};
}

QActs ActBuffers::blocks(int64_t m, int64_t k) const {
  QActs a{.q = bq_.data(), .scale = bscale_.data(), .bsum = bsum_.data(), .bcorr = bcorr_.data(),
          .m = m, .k = k, .block = ACT_BLOCK};
  if (m > 1) {
    a.qt = tq_.data();
    a.tnbsum = tnbsum_.data();
    a.tscale = tscale_.data();
  }
  return a;
}

int64_t ActBuffers::bytes() const {
  return (int64_t)(q_.size() * 3 + tq_.size() + bscale_.size() * 16);
}

}  // namespace edge
