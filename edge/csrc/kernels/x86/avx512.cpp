// The AVX-512 VNNI kernel set (Ice Lake, Sapphire Rapids, Zen 4 and later): 256-bit integer dot
// products through AVX-512VL (what Zen 4 and most Intel cores run at full rate), 512-bit vectors
// where they pay (prompt panels of 16 rows, steps of 8-bit weights, attention, exponentials).
// Compiled with its own target options (no -march flags for the whole build) and chosen at run
// time only when the CPU reports the features (dispatch.cpp).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels/x86/x86_includes.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
namespace edge {
namespace avx512 {

// a | (b & m), one ternary-logic instruction
static inline __m256i or_masked(__m256i a, __m256i b, __m256i m) {
  return _mm256_ternarylogic_epi32(a, b, m, 0xF8);
}

#include "kernels/x86/x86_helpers.h"

// ---------------------------------------------------------------- steps, float activations
constexpr int STEP_TILE_TOKENS = 8;  // 32 vector registers: a 512-bit sum and a total per token

template <int NT>
static inline void q8_row_ntok_float(const int8_t* wr, const uint16_t* sc, int64_t k, int64_t g,
                                     const float* x, int64_t ldx, float* y, int64_t ldy) {
  const int64_t ng = k / g;
  // 512-bit form of the same sums: the low half of `ab` is the partial sum a (inputs j..j+7 of
  // every 16), the high half b (j+8..j+15), so half the instructions do the same operations.
  __m256 tot[NT];
  for (int t = 0; t < NT; t++) tot[t] = _mm256_setzero_ps();
  for (int64_t gi = 0; gi < ng; gi++) {
    __m512 ab[NT];
    for (int t = 0; t < NT; t++) ab[t] = _mm512_setzero_ps();
    const int64_t j1 = (gi + 1) * g;
    int64_t j = gi * g;
    for (; j + 16 <= j1; j += 16) {
      const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wr + j))));
      for (int t = 0; t < NT; t++) ab[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * ldx + j), ab[t]);
    }
    if (j < j1) {  // a last run of 8 adds to a only
      const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(wr + j))));
      for (int t = 0; t < NT; t++)
        ab[t] = _mm512_mask3_fmadd_ps(wv, _mm512_castps256_ps512(_mm256_loadu_ps(x + t * ldx + j)),
                                      ab[t], (__mmask16)0x00ff);
    }
    const __m256 s = _mm256_set1_ps(h2f(sc[gi]));
    for (int t = 0; t < NT; t++)
      tot[t] = _mm256_fmadd_ps(_mm256_add_ps(_mm512_castps512_ps256(ab[t]),
                                             _mm512_extractf32x8_ps(ab[t], 1)), s, tot[t]);
  }
  for (int t = 0; t < NT; t++) y[t * ldy] = hsum8(tot[t]);
}

// ---------------------------------------------------------------- int8-activation products
static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(acc, u, s);
}

// ---------------------------------------------------------------- prompt panels
constexpr int PANEL = 16;
constexpr int TILE_TOKENS = 8;
// 8-bit rows as u = w + 128 are exact in the 32-bit VNNI sums: 4- to 8-bit rows take panels.
static inline bool panel_handles(int kind) { return low_bit(kind) || kind == W_Q8; }
using PanelTail = __mmask16;  // the panel's rows that exist
static inline PanelTail panel_tail(int nr) { return (__mmask16)((1u << nr) - 1); }

// rows[i] holds 16 words of row i; afterwards rows[q] holds word q of rows 0..15.
static inline void transpose16_epi32(__m512i* rows) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 4) {
    const __m512i a0 = _mm512_unpacklo_epi32(rows[i], rows[i + 1]);
    const __m512i a1 = _mm512_unpackhi_epi32(rows[i], rows[i + 1]);
    const __m512i a2 = _mm512_unpacklo_epi32(rows[i + 2], rows[i + 3]);
    const __m512i a3 = _mm512_unpackhi_epi32(rows[i + 2], rows[i + 3]);
    // group i / 4, word 4 j + k of 128-bit lane j at t[i + k]
    t[i] = _mm512_unpacklo_epi64(a0, a2);
    t[i + 1] = _mm512_unpackhi_epi64(a0, a2);
    t[i + 2] = _mm512_unpacklo_epi64(a1, a3);
    t[i + 3] = _mm512_unpackhi_epi64(a1, a3);
  }
  for (int k = 0; k < 4; k++) {  // 4 x 4 transpose of 128-bit lanes across the groups
    const __m512i a = _mm512_shuffle_i32x4(t[k], t[4 + k], 0x44);
    const __m512i b = _mm512_shuffle_i32x4(t[k], t[4 + k], 0xee);
    const __m512i c = _mm512_shuffle_i32x4(t[8 + k], t[12 + k], 0x44);
    const __m512i d = _mm512_shuffle_i32x4(t[8 + k], t[12 + k], 0xee);
    u[k] = _mm512_shuffle_i32x4(a, c, 0x88);
    u[4 + k] = _mm512_shuffle_i32x4(a, c, 0xdd);
    u[8 + k] = _mm512_shuffle_i32x4(b, d, 0x88);
    u[12 + k] = _mm512_shuffle_i32x4(b, d, 0xdd);
  }
  for (int i = 0; i < 16; i++) rows[i] = u[i];
}

// Inputs [64 c, 64 c + 64) of the panel's rows (16 words each, 4- to 6-bit rows as their
// unsigned values, 8-bit rows as w + 128) into the panel, transposed in registers.
static inline void pack_panel_inputs64(const uint8_t* const* rowp, int nr, int kind, int64_t c,
                                       uint8_t* u) {
  const bool low = low_bit(kind);
  const int64_t rb = low ? run64_bytes(kind) : 64;
  __m512i rows[16];
  for (int rr = 0; rr < PANEL; rr++) {
    if (rr >= nr) {
      rows[rr] = _mm512_setzero_si512();
    } else if (low) {
      __m256i u0, u1;
      unpack_run64(kind, rowp[rr] + c * rb, u0, u1);
      rows[rr] = _mm512_inserti64x4(_mm512_castsi256_si512(u0), u1, 1);
    } else {
      rows[rr] = _mm512_xor_si512(_mm512_loadu_si512((const void*)(rowp[rr] + c * 64)),
                                  _mm512_set1_epi8((char)0x80));
    }
  }
  transpose16_epi32(rows);
  for (int q = 0; q < 16; q++) _mm512_storeu_si512((void*)(u + (c * 16 + q) * PANEL * 4), rows[q]);
}

// T tokens (from slot 0 of token group g) x the panel's 16 rows: T int32 and T fp32
// accumulators in 512-bit registers; every token's bytes at a constant offset from one pointer.
template <int T>
static inline void panel_tile(const Panel& p, const QActs& a, int64_t g, int, float* y,
                              int64_t ldy, __mmask16 mk) {
  const int64_t nb = a.k / ACT_BLOCK;
  const int8_t* xg = a.qt + g * nb * ACT_BLOCK * TOKEN_GROUP;
  const int32_t* nbs = a.tnbsum + g * nb * TOKEN_GROUP;
  const float* ts = a.tscale + g * nb * TOKEN_GROUP;
  const int shift = __builtin_ctz((unsigned)p.off);  // offsets are powers of two
  __m512 accf[T];
  for (int t = 0; t < T; t++) accf[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    __m512i acc[T];
    if (p.zo) {
      const __m512i z = _mm512_loadu_si512((const void*)(p.zo + b * PANEL));
      for (int t = 0; t < T; t++) acc[t] = _mm512_mullo_epi32(z, _mm512_set1_epi32(nbs[b * TOKEN_GROUP + t]));
    } else {
      for (int t = 0; t < T; t++) acc[t] = _mm512_slli_epi32(_mm512_set1_epi32(nbs[b * TOKEN_GROUP + t]), shift);
    }
    const uint8_t* ub = p.u + b * ACT_BLOCK * PANEL;
    const int8_t* xb = xg + b * ACT_BLOCK * TOKEN_GROUP;
    for (int s = 0; s < ACT_BLOCK / 4; s++) {
      const __m512i wv = _mm512_loadu_si512((const void*)(ub + s * PANEL * 4));
      for (int t = 0; t < T; t++) {
        int32_t xv;
        std::memcpy(&xv, xb + (s * TOKEN_GROUP + t) * 4, 4);
        acc[t] = _mm512_dpbusd_epi32(acc[t], wv, _mm512_set1_epi32(xv));
      }
    }
    const __m512 swv = _mm512_loadu_ps(p.sw + b * PANEL);
    for (int t = 0; t < T; t++)
      accf[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[t]), _mm512_set1_ps(ts[b * TOKEN_GROUP + t])),
                                swv, accf[t]);
  }
  for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + (g * TOKEN_GROUP + t) * ldy, mk, accf[t]);
}

// ---------------------------------------------------------------- attention vectors
typedef __m512 VF;
constexpr int VW = 16;
EDGE_X86_FLOAT_OPS(512)
constexpr int SCORE_QUERIES = 8;   // queries per pass over a key tile
constexpr int SUM_PANEL = 64;      // value columns held in registers
constexpr int SUM_QUERIES = 6;     // queries per pass over the values

// pieces of the vector exponential (vexp, x86_kernels.h)
using VMask = __mmask16;
static inline VMask vless(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline VF vround(VF x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// a * b, zero in the lanes set in m
static inline VF vmul_unless(VMask m, VF a, VF b) { return _mm512_maskz_mul_ps((__mmask16)~m, a, b); }
static inline float vsum(VF v) { return _mm512_reduce_add_ps(v); }

#include "kernels/x86/x86_kernels.h"

// ---------------------------------------------------------------- decode, int8 activations
// Decode: one token, 4-bit rows unpacked in registers (no scratch round trip).
static void q4_rows_1tok(const WeightView& w, const QActs& a, float* y, int64_t r0, int64_t r1) {
  const int64_t k = w.k, g = w.group, ng = k / g;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const float sx = a.scale[0];
  const float zc = 128.0f + (float)a.zero[0];
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* row = w.row(r);
    const uint16_t* sc = w.scale + r * ng;
    const uint8_t* zp = w.zp ? w.zp + r * ng : nullptr;
    __m256 accf = _mm256_setzero_ps();
    __m256i acc = _mm256_setzero_si256();
    for (int64_t b = 0; b < k / 64; b++) {
      const int64_t j = b * 64;
      __m256i p = _mm256_loadu_si256((const __m256i*)(row + b * 32));
      __m256i lo = _mm256_and_si256(p, m4), hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
      __m256i z0 = _mm256_set1_epi8((char)(zp ? zp[j / g] : 8));
      acc = dot_u8s8(acc, _mm256_loadu_si256((const __m256i*)(a.qu + j)), _mm256_sub_epi8(lo, z0));
      if ((j + 32) % g == 0) {
        accf = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(h2f(sc[j / g])), accf);
        acc = _mm256_setzero_si256();
      }
      __m256i z1 = _mm256_set1_epi8((char)(zp ? zp[(j + 32) / g] : 8));
      acc = dot_u8s8(acc, _mm256_loadu_si256((const __m256i*)(a.qu + j + 32)),
                     _mm256_sub_epi8(hi, z1));
      if ((j + 64) % g == 0) {
        accf = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(h2f(sc[(j + 32) / g])),
                               accf);
        acc = _mm256_setzero_si256();
      }
    }
    y[r] = sx * (hsum8(accf) - zc * w.rowsum[r]);
  }
}

// Decode: one token, 8-bit rows read in place.
static void q8_rows_1tok(const WeightView& w, const QActs& a, float* y, int64_t r0, int64_t r1) {
  const int64_t k = w.k, g = w.group, ng = k / g;
  const float sx = a.scale[0];
  const float zc = 128.0f + (float)a.zero[0];
  for (int64_t r = r0; r < r1; r++) {
    const int8_t* row = reinterpret_cast<const int8_t*>(w.row(r));
    const uint16_t* sc = w.scale + r * ng;
    __m256 accf = _mm256_setzero_ps();
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    for (int64_t gi = 0; gi < ng; gi++) {
      const int64_t j0 = gi * g, j1 = j0 + g;
      int64_t j = j0;
      for (; j + 64 <= j1; j += 64) {
        acc0 = dot_u8s8(acc0, _mm256_loadu_si256((const __m256i*)(a.qu + j)),
                        _mm256_loadu_si256((const __m256i*)(row + j)));
        acc1 = dot_u8s8(acc1, _mm256_loadu_si256((const __m256i*)(a.qu + j + 32)),
                        _mm256_loadu_si256((const __m256i*)(row + j + 32)));
      }
      if (j < j1)
        acc0 = dot_u8s8(acc0, _mm256_loadu_si256((const __m256i*)(a.qu + j)),
                        _mm256_loadu_si256((const __m256i*)(row + j)));
      accf = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc0, acc1)),
                             _mm256_set1_ps(h2f(sc[gi])), accf);
      acc0 = acc1 = _mm256_setzero_si256();
    }
    y[r] = sx * (hsum8(accf) - zc * w.rowsum[r]);
  }
}

static void matmul_q_fitting(const WeightView& w, const QActs& a, float* y, int64_t ldy,
                             int64_t r0, int64_t r1, float* scratch) {
  if (a.m == 1 && w.kind == W_Q4) {
    q4_rows_1tok(w, a, y, r0, r1);
    return;
  }
  if (a.m == 1 && w.kind == W_Q8) {
    q8_rows_1tok(w, a, y, r0, r1);
    return;
  }
  q_rows_4tok<dot_u8s8>(w, a, y, ldy, r0, r1, scratch);
}

}  // namespace avx512

constexpr Kernels AVX512VNNI_KERNELS = EDGE_KERNEL_TABLE("avx512vnni", avx512);
}  // namespace edge
#pragma GCC pop_options
#endif
