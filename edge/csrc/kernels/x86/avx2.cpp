// The AVX2 kernel set (AVX2 + FMA + F16C: Haswell, Zen and later): 256-bit vectors throughout,
// u8 x s8 dot products through maddubs (16-bit pair sums, which callers keep from saturating).
// Built under its own target options below, never -march for the whole build; dispatch.cpp
// picks it at run time when the CPU reports AVX2, FMA and F16C.
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels/x86/x86_includes.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace edge {
namespace avx2 {

// a | (b & m)
static inline __m256i or_masked(__m256i a, __m256i b, __m256i m) {
  return _mm256_or_si256(a, _mm256_and_si256(b, m));
}

#include "kernels/x86/x86_helpers.h"

// ---------------------------------------------------------------- steps, float activations
constexpr int STEP_TILE_TOKENS = 4;  // 16 vector registers

template <int NT>
static inline void q8_row_ntok_float(const int8_t* wr, const uint16_t* sc, int64_t k, int64_t g,
                                     const float* x, int64_t ldx, float* y, int64_t ldy) {
  const int64_t ng = k / g;
  __m256 tot[NT];
  for (int t = 0; t < NT; t++) tot[t] = _mm256_setzero_ps();
  for (int64_t gi = 0; gi < ng; gi++) {
    __m256 a[NT], b[NT];
    for (int t = 0; t < NT; t++) a[t] = b[t] = _mm256_setzero_ps();
    const int64_t j1 = (gi + 1) * g;
    int64_t j = gi * g;
    for (; j + 16 <= j1; j += 16) {
      const __m256 wa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(wr + j))));
      const __m256 wb = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(wr + j + 8))));
      for (int t = 0; t < NT; t++) {
        a[t] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x + t * ldx + j), a[t]);
        b[t] = _mm256_fmadd_ps(wb, _mm256_loadu_ps(x + t * ldx + j + 8), b[t]);
      }
    }
    if (j < j1) {
      const __m256 wa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(wr + j))));
      for (int t = 0; t < NT; t++) a[t] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x + t * ldx + j), a[t]);
    }
    const __m256 s = _mm256_set1_ps(h2f(sc[gi]));
    for (int t = 0; t < NT; t++) tot[t] = _mm256_fmadd_ps(_mm256_add_ps(a[t], b[t]), s, tot[t]);
  }
  for (int t = 0; t < NT; t++) y[t * ldy] = hsum8(tot[t]);
}

// ---------------------------------------------------------------- int8-activation products
static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
  // Callers keep u * s pairs within int16 (|s| <= 15, or u <= 128 with |s| <= 127), so
  // maddubs never saturates.
  __m256i p = _mm256_maddubs_epi16(u, s);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

// Exact for any u8 x s8 (16-bit products summed in pairs into int32): the AVX2 path of 8-bit
// weights, whose products can overflow maddubs' saturating int16 pairs.
static inline __m256i dot_u8s8_wide(__m256i acc, __m256i u, __m256i s) {
  __m256i ulo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(u));
  __m256i uhi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(u, 1));
  __m256i slo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(s));
  __m256i shi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(s, 1));
  return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(ulo, slo),
                                                _mm256_madd_epi16(uhi, shi)));
}

// ---------------------------------------------------------------- prompt panels
constexpr int PANEL = 8;
constexpr int TILE_TOKENS = 4;
// 8-bit rows as u = w + 128 would overflow maddubs' 16-bit pair sums: 4- to 6-bit rows only.
static inline bool panel_handles(int kind) { return low_bit(kind); }
using PanelTail = int;  // the number of the panel's rows that exist
static inline PanelTail panel_tail(int nr) { return nr; }

// rows[i] holds 8 words of row i; afterwards rows[q] holds word q of rows 0..7.
static inline void transpose8_epi32(__m256i* rows) {
  __m256i b[8];
  for (int i = 0; i < 8; i += 4) {
    const __m256i a0 = _mm256_unpacklo_epi32(rows[i], rows[i + 1]);
    const __m256i a1 = _mm256_unpackhi_epi32(rows[i], rows[i + 1]);
    const __m256i a2 = _mm256_unpacklo_epi32(rows[i + 2], rows[i + 3]);
    const __m256i a3 = _mm256_unpackhi_epi32(rows[i + 2], rows[i + 3]);
    b[i] = _mm256_unpacklo_epi64(a0, a2);
    b[i + 1] = _mm256_unpackhi_epi64(a0, a2);
    b[i + 2] = _mm256_unpacklo_epi64(a1, a3);
    b[i + 3] = _mm256_unpackhi_epi64(a1, a3);
  }
  for (int k = 0; k < 4; k++) {
    rows[k] = _mm256_permute2x128_si256(b[k], b[4 + k], 0x20);
    rows[4 + k] = _mm256_permute2x128_si256(b[k], b[4 + k], 0x31);
  }
}

// Inputs [64 c, 64 c + 64) of the panel's 4- to 6-bit rows into the panel, transposed in
// registers.
static inline void pack_panel_inputs64(const uint8_t* const* rowp, int nr, int kind, int64_t c,
                                       uint8_t* u) {
  // low-bit rows only (the 256-bit tiles): values 0-31 are words 0-7, values 32-63 words 8-15
  const int64_t rb = run64_bytes(kind);
  __m256i lo[8], hi[8];
  for (int rr = 0; rr < PANEL; rr++) {
    if (rr >= nr) {
      lo[rr] = hi[rr] = _mm256_setzero_si256();
      continue;
    }
    unpack_run64(kind, rowp[rr] + c * rb, lo[rr], hi[rr]);
  }
  transpose8_epi32(lo);
  transpose8_epi32(hi);
  for (int q = 0; q < 8; q++) {
    _mm256_storeu_si256((__m256i*)(u + (c * 16 + q) * PANEL * 4), lo[q]);
    _mm256_storeu_si256((__m256i*)(u + (c * 16 + 8 + q) * PANEL * 4), hi[q]);
  }
}

// T tokens (from slot t0 of token group g) x the panel's 8 rows (4- to 6-bit weights only:
// u <= 63 keeps maddubs' pairs, and two steps' pairs added, in int16).
template <int T>
static inline void panel_tile(const Panel& p, const QActs& a, int64_t g, int t0, float* y,
                              int64_t ldy, int nr) {
  const int64_t nb = a.k / ACT_BLOCK;
  const int shift = __builtin_ctz((unsigned)p.off);  // offsets are powers of two
  const int8_t* xg = a.qt + g * nb * ACT_BLOCK * TOKEN_GROUP + t0 * 4;
  const int32_t* nbs = a.tnbsum + g * nb * TOKEN_GROUP + t0;
  const float* ts = a.tscale + g * nb * TOKEN_GROUP + t0;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 accf[T];
  for (int t = 0; t < T; t++) accf[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    __m256i acc[T];
    if (p.zo) {
      const __m256i z = _mm256_loadu_si256((const __m256i*)(p.zo + b * PANEL));
      for (int t = 0; t < T; t++) acc[t] = _mm256_mullo_epi32(z, _mm256_set1_epi32(nbs[b * TOKEN_GROUP + t]));
    } else {
      for (int t = 0; t < T; t++) acc[t] = _mm256_slli_epi32(_mm256_set1_epi32(nbs[b * TOKEN_GROUP + t]), shift);
    }
    const uint8_t* ub = p.u + b * ACT_BLOCK * PANEL;
    const int8_t* xb = xg + b * ACT_BLOCK * TOKEN_GROUP;
    for (int s = 0; s < ACT_BLOCK / 4; s += 2) {
      // two steps' 16-bit pair sums added before widening (|sum| <= 4 * 63 * 127 < 2^15)
      const __m256i w0 = _mm256_loadu_si256((const __m256i*)(ub + s * PANEL * 4));
      const __m256i w1 = _mm256_loadu_si256((const __m256i*)(ub + (s + 1) * PANEL * 4));
      for (int t = 0; t < T; t++) {
        int32_t x0, x1;
        std::memcpy(&x0, xb + (s * TOKEN_GROUP + t) * 4, 4);
        std::memcpy(&x1, xb + ((s + 1) * TOKEN_GROUP + t) * 4, 4);
        const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(w0, _mm256_set1_epi32(x0)),
                                             _mm256_maddubs_epi16(w1, _mm256_set1_epi32(x1)));
        acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p16, ones));
      }
    }
    const __m256 swv = _mm256_loadu_ps(p.sw + b * PANEL);
    for (int t = 0; t < T; t++)
      accf[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[t]), _mm256_set1_ps(ts[b * TOKEN_GROUP + t])),
                                swv, accf[t]);
  }
  alignas(32) float out[PANEL];
  for (int t = 0; t < T; t++) {
    float* yt = y + (g * TOKEN_GROUP + t0 + t) * ldy;
    if (nr == PANEL) {
      _mm256_storeu_ps(yt, accf[t]);
    } else {
      _mm256_store_ps(out, accf[t]);
      for (int rr = 0; rr < nr; rr++) yt[rr] = out[rr];
    }
  }
}

// ---------------------------------------------------------------- attention vectors
typedef __m256 VF;
constexpr int VW = 8;
EDGE_X86_FLOAT_OPS(256)
constexpr int SCORE_QUERIES = 4;
constexpr int SUM_PANEL = 32;
constexpr int SUM_QUERIES = 3;

// pieces of the vector exponential (vexp, x86_kernels.h)
using VMask = __m256;  // all ones in a lane where true
static inline VMask vless(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline VF vround(VF x) {
  return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// a * b, zero in the lanes set in m
static inline VF vmul_unless(VMask m, VF a, VF b) { return _mm256_andnot_ps(m, _mm256_mul_ps(a, b)); }
static inline float vsum(VF v) { return hsum8(v); }

#include "kernels/x86/x86_kernels.h"

static void matmul_q_fitting(const WeightView& w, const QActs& a, float* y, int64_t ldy,
                             int64_t r0, int64_t r1, float* scratch) {
  if (w.kind == W_Q8)
    q_rows_4tok<dot_u8s8_wide>(w, a, y, ldy, r0, r1, scratch);
  else
    q_rows_4tok<dot_u8s8>(w, a, y, ldy, r0, r1, scratch);
}

}  // namespace avx2

constexpr Kernels AVX2_KERNELS = EDGE_KERNEL_TABLE("avx2", avx2);
}  // namespace edge
#pragma GCC pop_options
#endif
