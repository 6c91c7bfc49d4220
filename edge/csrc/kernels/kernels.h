// Kernel interface of the edge runtime: weight views over memory-mapped artifact tensors, the
// per-token int8 activation form, and one table of kernels per instruction set.
//
// Weight layouts (row-major, one row per output feature, K inputs per row):
//   F32 / F16 / BF16   plain values
//   Q8                 int8 values, symmetric (value = q * scale[group])
//   Q8U                uint8 values with a zero point per group (value = (q - zp) * scale)
//   Q4                 4-bit values u in [0, 15], value = (u - zp) * scale; zp = 8 for symmetric
//                      weights (zp == nullptr). Packed 64 values to 32 bytes: byte j holds value
//                      j in its low nibble and value j + 32 in its high nibble, so one 32-byte
//                      load gives two whole runs of 32 (K must be a multiple of 64).
//   F8                 float8 e4m3fn values times scale[group]
//   Q5, Q6             5- / 6-bit values u in [0, 2^b), value = (u - zp) * scale; zp = 16 / 32
//                      for symmetric weights. Each run of 64 values takes 32 bytes of low
//                      nibbles laid out as Q4's, then the high bits: Q6, 16 bytes where byte i
//                      holds bits 4-5 of values i, i + 16, i + 32, i + 48 (bits 0-1, 2-3, 4-5,
//                      6-7); Q5, 8 bytes where bit b of byte i is bit 4 of value i + 8 b. 48 /
//                      40 bytes per 64 values; K must be a multiple of 64, groups of 32.
// Scales are fp16, one per group of `group` consecutive inputs of a row (group == K: per
// channel). Linears whose activations are quantized carry `rowsum`: the sum of each row's
// dequantized weights, which turns the activation zero point into one multiply per row.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace edge {

enum WKind : int {
  W_F32 = 0, W_F16 = 1, W_BF16 = 2, W_Q8 = 3, W_Q8U = 4, W_Q4 = 5, W_F8 = 6, W_Q5 = 7, W_Q6 = 8
};
constexpr int W_LAST = W_Q6;

// Kinds of 4 to 6 bits: a run of 64 values is 32 bytes of low nibbles [+ a high-bit plane].
inline bool low_bit(int kind) { return kind == W_Q4 || kind == W_Q5 || kind == W_Q6; }
inline int kind_bits(int kind) { return kind == W_Q4 ? 4 : kind == W_Q5 ? 5 : kind == W_Q6 ? 6 : 8; }
// Bytes per run of 64 values of a low-bit kind, and the implicit zero point of symmetric rows.
inline int64_t run64_bytes(int kind) { return kind == W_Q4 ? 32 : kind == W_Q5 ? 40 : 48; }
inline int low_bit_zero(int kind) { return 1 << (kind_bits(kind) - 1); }
// Integer kinds the int8-activation products take.
inline bool int_kind(int kind) { return low_bit(kind) || kind == W_Q8 || kind == W_Q8U; }

struct WeightView {
  int kind = W_F32;
  int64_t n = 0, k = 0;   // rows (outputs), inputs
  int64_t group = 0;      // inputs per scale
  const void* data = nullptr;
  const uint16_t* scale = nullptr;  // fp16 (n, k / group); unused for float kinds
  const uint8_t* zp = nullptr;      // (n, k / group) or nullptr
  const float* rowsum = nullptr;    // (n) for activation-quantized use
  int64_t row_bytes() const {
    switch (kind) {
      case W_F32: return k * 4;
      case W_F16: case W_BF16: return k * 2;
      case W_Q8: case W_Q8U: case W_F8: return k;
      case W_Q4: case W_Q5: case W_Q6: return k / 64 * run64_bytes(kind);
    }
    return 0;
  }
  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_bytes(); }
};

// Activations quantized to int8 at run time (quant/schemes/activation.py), in one of two forms.
// Per token, asymmetric:
//   s = (max(x,0) - min(x,0)) / 255, z = clamp(round(-128 - min/s), -128, 127),
//   q = clamp(round(x / s) + z, -128, 127);
//   `qu` holds q + 128 as unsigned bytes (the form x86's u8 x s8 dot products want).
// Per block of ACT_BLOCK values, symmetric (block != 0):
//   s_b = max_b |x| / 127, q = clamp(round(x / s_b), -127, 127); `bsum` = sum of q per block.
constexpr int64_t ACT_BLOCK = 32;
struct QActs {
  const int8_t* q = nullptr;    // (m, k)
  const uint8_t* qu = nullptr;  // (m, k), per-token form
  const float* scale = nullptr; // (m) per token, or (m, k / ACT_BLOCK) per block
  const int32_t* zero = nullptr;// (m), per-token form
  const int32_t* bsum = nullptr;// (m, k / ACT_BLOCK), block form
  const float* bcorr = nullptr; // (m, k / ACT_BLOCK): s_b * bsum_b, block form
  int64_t m = 0, k = 0;
  int64_t block = 0;            // 0: per token; ACT_BLOCK: per block
  // Block form, optional: the same values regrouped for prompt tiles (interleave_act_blocks).
  const int8_t* qt = nullptr;
  const int32_t* tnbsum = nullptr;
  const float* tscale = nullptr;
};

// Prompt-tile form of block activations: tokens in groups of TOKEN_GROUP (the last one padded
// with zero tokens). For group g, block b and step s (4 inputs), the 4 bytes of each of the
// group's tokens in turn at qt + ((g * nb + b) * (ACT_BLOCK / 4) + s) * 4 * TOKEN_GROUP; per
// group and block, the tokens' negated block sums and scales at (g * nb + b) * TOKEN_GROUP of
// tnbsum / tscale. A tile then reads any token's 4 bytes at a constant offset from one pointer.
constexpr int64_t TOKEN_GROUP = 8;
// Prompt products take this form from this many tokens on (fewer do not repay packing a
// panel), and threads split rows in whole panels of the widest kernels.
constexpr int64_t PROMPT_MIN_TOKENS = 8;
// Forward passes of at most this many tokens are steps (a decode token, or the verification of
// a speculative draft: edge/speculative.py DRAFT_TOKENS): their products read each weight row
// once for all the tokens with the decode kernels' arithmetic, and their attention runs query
// by query as decode's does, so every token's logits equal the ones it gets decoded alone.
constexpr int64_t STEP_MAX_TOKENS = 8;
constexpr int64_t PROMPT_PANEL_ROWS = 16;
inline int64_t token_groups(int64_t m) { return (m + TOKEN_GROUP - 1) / TOKEN_GROUP; }

constexpr float ACT_EPS = 1e-10f;  // scale floor, as quant/schemes/activation.py

// One kernel set; tables name their entries (designated initializers, EDGE_KERNEL_TABLE).
struct Kernels {
  const char* name;
  // y[i * ldy + r] = sum_k x[i * ldx + k] * W[r][k] for i < m, r in [r0, r1).
  // scratch: at least scratch_floats(W) floats, private to the calling thread.
  void (*matmul_f)(const WeightView& w, const float* x, int64_t m, int64_t ldx, float* y,
                   int64_t ldy, int64_t r0, int64_t r1, float* scratch);
  // Same with per-token int8 activations: y = s_x * sum_k (q_x - z_x) * W[r][k].
  void (*matmul_q)(const WeightView& w, const QActs& a, float* y, int64_t ldy, int64_t r0,
                   int64_t r1, float* scratch);
  // Same with per-block int8 activations: y = sum_b s_b * sum_{k in b} q_x * W[r][k]
  // (integer weights whose groups are multiples of ACT_BLOCK).
  void (*matmul_qb)(const WeightView& w, const QActs& a, float* y, int64_t ldy, int64_t r0,
                    int64_t r1, float* scratch);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a * x
  // Attention of nq <= MAX_QUERIES queries (the heads of one KV group, for one or several
  // tokens) over n cached positions of width d, each K / V row read once for all of them:
  // out[i][t] = scale * (q[i] . K[t]), K in the tiled layout below;
  // out[i][j] = sum_t p[i][t] * V[t][j], V row-major.
  void (*scores)(const float* const* q, int nq, const float* K, int64_t n, int64_t d, float scale,
                 float* const* out);
  void (*weighted_sum)(const float* const* p, int nq, const float* V, int64_t n, int64_t d,
                       float* const* out);
  // x[i] = exp(x[i] - shift) for i < n, returning their sum (softmax numerators).
  float (*exp_sum)(float* x, int64_t n, float shift);
  // g[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i] (the SwiGLU gate).
  void (*silu_mul)(float* g, const float* u, int64_t n);
  // quantize_acts_blocks (below, the definition) with identical results.
  void (*quantize_blocks)(const float* x, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                          float* scale, int32_t* bsum, float* bcorr);
};

// The table of the kernel set whose namespace `ns` defines every entry under the entry's own
// name: a set that lacks a kernel does not compile, and no entry can land in another's place.
#define EDGE_KERNEL_TABLE(set_name, ns)                                                     \
  Kernels {                                                                                 \
    .name = set_name, .matmul_f = ns::matmul_f, .matmul_q = ns::matmul_q,                   \
    .matmul_qb = ns::matmul_qb, .dot = ns::dot, .axpy = ns::axpy, .scores = ns::scores,     \
    .weighted_sum = ns::weighted_sum, .exp_sum = ns::exp_sum, .silu_mul = ns::silu_mul,     \
    .quantize_blocks = ns::quantize_blocks                                                  \
  }

// The f32 key cache of a head is kept in tiles of KT positions: element j of position t at
// K[(t / KT) * d * KT + j * KT + t % KT], so that a tile's KT scores come from d vector FMAs
// with no horizontal sums (a partial last tile is padded).
constexpr int64_t KT = 16;
constexpr int MAX_QUERIES = 16;
inline int64_t kt_index(int64_t t, int64_t j, int64_t d) { return (t / KT) * d * KT + j * KT + t % KT; }

constexpr int64_t GEMM_ROWS = 4;  // rows dequantized at a time by the prefill path
// Per-thread scratch of the products: GEMM_ROWS dequantized rows, or a prompt panel of up to 16
// rows of bytes with two words per row and block (>= 2 k bytes too).
inline int64_t scratch_floats(int64_t k) { return (GEMM_ROWS > 5 ? GEMM_ROWS : 5) * k + 64; }

// Instruction sets, best last. `kernels_for` falls back to scalar for sets not built or not
// present on this CPU.
enum Isa : int { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512VNNI = 2, ISA_NEON = 3, ISA_NEON_DOT = 4 };
const Kernels* kernels_for(int isa);  // nullptr when this CPU or build lacks it
int best_isa();
const char* isa_name(int isa);

extern const Kernels SCALAR_KERNELS;
#if defined(__x86_64__) || defined(_M_X64)
extern const Kernels AVX2_KERNELS;
extern const Kernels AVX512VNNI_KERNELS;
#endif
#if defined(__aarch64__)
extern const Kernels NEON_KERNELS;
extern const Kernels NEON_DOT_KERNELS;
#endif

// ---------------------------------------------------------------- shared scalar helpers
inline float fp16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; exp--; }
      man &= 0x3ff;
      bits = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
// e4m3fn: read the 7 magnitude bits as an fp16 with exponent bias 15 instead of 7 (subnormals
// included), then multiply by 2^8. The NaN pattern never occurs in our weights.
constexpr float F8_SCALE = 256.0f;
inline float fp8_to_f32(uint8_t b) {
  uint16_t h = (uint16_t)(((b & 0x80) << 8) | ((b & 0x7f) << 7));
  return fp16_to_f32(h) * F8_SCALE;
}

// Dequantize row r of w into out[0..k).
void dequant_row(const WeightView& w, int64_t r, float* out);
// Quantize m rows of x (row stride ldx) to the QActs form; buffers sized m*k / m.
void quantize_acts(const float* x, int64_t m, int64_t k, int64_t ldx, int8_t* q, uint8_t* qu,
                   float* scale, int32_t* zero);
// Quantize m rows in ACT_BLOCK blocks (k a multiple of ACT_BLOCK): q (m*k), scale and bsum
// (m * k / ACT_BLOCK).
void quantize_acts_blocks(const float* x, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                          float* scale, int32_t* bsum, float* bcorr);
// Regroup tokens [i0, i1) of block-quantized activations (m tokens in all) into the prompt-tile
// form; the thread that owns token m - 1 also zeroes the last group's padding.
void interleave_act_blocks(const int8_t* q, const float* scale, const int32_t* bsum, int64_t m,
                           int64_t k, int64_t i0, int64_t i1, int8_t* qt, int32_t* tnbsum,
                           float* tscale);
// Check a view's fields; returns nullptr or a static description of what is wrong.
const char* check_view(const WeightView& w);

}  // namespace edge
