// Activation preparation: the int8 forms of a batch of activations (QActs, kernels.h) that the
// int8-activation products read, in buffers sized once. The forward pass, the Python bindings
// and the parity program all prepare activations through this one class.
#pragma once
#include <vector>

#include "kernels/kernels.h"

namespace edge {

class ActBuffers {
 public:
  // Room for batches of up to `tokens` tokens of up to `k` inputs, in both forms.
  void reserve(int64_t tokens, int64_t k);

  // Per-token form of tokens [i0, i1) of x: m tokens of k inputs, row stride ldx.
  void quantize_tokens(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t i0, int64_t i1);
  // Per-block form of tokens [i0, i1) through `quantize` (a kernel set's quantize_blocks, bit for
  // bit quantize_acts_blocks); batches of several tokens also get the prompt-tile form. Threads
  // may prepare disjoint token ranges of one batch at the same time.
  void quantize_blocks(decltype(Kernels::quantize_blocks) quantize, const float* x, int64_t ldx,
                       int64_t m, int64_t k, int64_t i0, int64_t i1);

  // Views of a prepared batch of m tokens of k inputs, for the products.
  QActs tokens(int64_t m, int64_t k) const;
  QActs blocks(int64_t m, int64_t k) const;

  // Bytes held, as the model reports its workspace.
  int64_t bytes() const;

 private:
  // per-token form (rows of the batch's k inputs, capacity tokens x max k)
  std::vector<int8_t> q_;        // (tokens, k) int8
  std::vector<uint8_t> qu_;      // (tokens, k) uint8: q + 128
  std::vector<float> scale_;     // (tokens) f32
  std::vector<int32_t> zero_;    // (tokens) int32
  // per-block form (one extra entry so that no buffer is empty)
  std::vector<int8_t> bq_;       // (tokens, k) int8
  std::vector<float> bscale_;    // (tokens, k / ACT_BLOCK) + 1 f32
  std::vector<int32_t> bsum_;    // (tokens, k / ACT_BLOCK) + 1 int32
  std::vector<float> bcorr_;     // (tokens, k / ACT_BLOCK) + 1 f32: bscale * bsum
  // prompt-tile form of the blocks, tokens padded to whole groups of TOKEN_GROUP
  std::vector<int8_t> tq_;       // (padded tokens, k) int8
  std::vector<int32_t> tnbsum_;  // (padded tokens, k / ACT_BLOCK) + 1 int32
  std::vector<float> tscale_;    // (padded tokens, k / ACT_BLOCK) + 1 f32
};

}  // namespace edge
