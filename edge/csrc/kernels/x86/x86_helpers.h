// Helpers both x86 kernel sets share, written with AVX2 + FMA + F16C instructions only (which
// AVX-512 cores also run). Included by avx2.cpp and avx512.cpp inside their own namespace and
// under their own target options, so each set gets its own copy compiled for its instructions;
// x86_includes.h, included first, provides the headers.

static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// The unsigned values of one run of 64 of a low-bit row (kernels.h): values 0-31 into u0,
// 32-63 into u1, one per byte. The high-bit plane is broadcast to every lane and each lane
// shifts it by its own count, so that the bit(s) of the value in each byte's place land on bit
// 4 (Q5) or bits 4-5 (Q6) of that byte, which a mask then merges under the low nibble.
static inline void unpack_run64(int kind, const uint8_t* run, __m256i& u0, __m256i& u1) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i p = _mm256_loadu_si256((const __m256i*)run);
  u0 = _mm256_and_si256(p, m4);
  u1 = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
  if (kind == W_Q6) {  // byte i: bits 2c, 2c + 1 = bits 4, 5 of value i + 16 c
    const __m256i h = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(run + 32)));
    const __m256i m = _mm256_set1_epi8(0x30);
    u0 = or_masked(u0, _mm256_sllv_epi32(h, _mm256_setr_epi32(4, 4, 4, 4, 2, 2, 2, 2)), m);
    u1 = or_masked(u1, _mm256_srlv_epi32(h, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), m);
  } else if (kind == W_Q5) {  // byte i: bit c = bit 4 of value i + 8 c
    int64_t bits;
    std::memcpy(&bits, run + 32, 8);
    const __m256i h = _mm256_set1_epi64x(bits);
    const __m256i m = _mm256_set1_epi8(0x10);
    u0 = or_masked(u0, _mm256_sllv_epi64(h, _mm256_setr_epi64x(4, 3, 2, 1)), m);
    u1 = or_masked(u1, _mm256_srlv_epi64(h, _mm256_setr_epi64x(0, 1, 2, 3)), m);
  }
}

// ---------------------------------------------------------------- dequantization to fp32
static void dequant_row_simd(const WeightView& w, int64_t r, float* out) {
  const int64_t k = w.k, g = w.group;
  const uint8_t* row = w.row(r);
  switch (w.kind) {
    case W_F16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
      int64_t j = 0;
      for (; j + 8 <= k; j += 8)
        _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + j))));
      for (; j < k; j++) out[j] = h2f(h[j]);
      return;
    }
    case W_BF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
      int64_t j = 0;
      for (; j + 8 <= k; j += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(h + j)));
        _mm256_storeu_ps(out + j, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
      }
      for (; j < k; j++) out[j] = bf16_to_f32(h[j]);
      return;
    }
    case W_Q4: {
      const int64_t ng = k / g;
      const uint16_t* sc = w.scale + r * ng;
      const uint8_t* zp = w.zp ? w.zp + r * ng : nullptr;
      const __m128i m4 = _mm_set1_epi8(0x0f);
      for (int64_t b = 0; b < k / 64; b++) {
        const __m128i* src = (const __m128i*)(row + b * 32);
        for (int half = 0; half < 2; half++) {  // bytes 0-15, 16-31
          __m128i p = _mm_loadu_si128(src + half);
          __m128i lohi[2] = {_mm_and_si128(p, m4), _mm_and_si128(_mm_srli_epi16(p, 4), m4)};
          for (int nib = 0; nib < 2; nib++) {
            int64_t j0 = b * 64 + nib * 32 + half * 16;  // first element of these 16
            int64_t gi = j0 / g;
            __m256 s = _mm256_set1_ps(h2f(sc[gi]));
            __m256i z = _mm256_set1_epi32(zp ? zp[gi] : 8);
            __m128i v = lohi[nib];
            __m256i a = _mm256_sub_epi32(_mm256_cvtepu8_epi32(v), z);
            __m256i c = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)), z);
            _mm256_storeu_ps(out + j0, _mm256_mul_ps(_mm256_cvtepi32_ps(a), s));
            _mm256_storeu_ps(out + j0 + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(c), s));
          }
        }
      }
      return;
    }
    case W_Q5: case W_Q6: {
      const int64_t ng = k / g, rb = run64_bytes(w.kind);
      const uint16_t* sc = w.scale + r * ng;
      const uint8_t* zp = w.zp ? w.zp + r * ng : nullptr;
      alignas(32) uint8_t u[64];
      for (int64_t c = 0; c < k / 64; c++) {
        __m256i u0, u1;
        unpack_run64(w.kind, row + c * rb, u0, u1);
        _mm256_store_si256((__m256i*)u, u0);
        _mm256_store_si256((__m256i*)(u + 32), u1);
        for (int64_t o = 0; o < 64; o += 8) {
          const int64_t gi = (c * 64 + o) / g;
          const __m256i z = _mm256_set1_epi32(zp ? zp[gi] : low_bit_zero(w.kind));
          const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(u + o))), z);
          _mm256_storeu_ps(out + c * 64 + o, _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(h2f(sc[gi]))));
        }
      }
      return;
    }
    case W_Q8: case W_Q8U: case W_F8: {
      const int64_t ng = k / g;
      const uint16_t* sc = w.scale + r * ng;
      if (g % 8) break;
      for (int64_t j = 0; j < k; j += 8) {
        int64_t gi = j / g;
        __m128i b = _mm_loadl_epi64((const __m128i*)(row + j));
        __m256 v;
        float s = h2f(sc[gi]);
        if (w.kind == W_Q8) {
          v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        } else if (w.kind == W_Q8U) {
          v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(b),
                                                  _mm256_set1_epi32(w.zp[r * ng + gi])));
        } else {
          __m128i h = _mm_cvtepu8_epi16(b);
          __m128i sign = _mm_slli_epi16(_mm_and_si128(h, _mm_set1_epi16(0x80)), 8);
          __m128i mag = _mm_slli_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7f)), 7);
          v = _mm256_cvtph_ps(_mm_or_si128(sign, mag));
          s *= F8_SCALE;
        }
        _mm256_storeu_ps(out + j, _mm256_mul_ps(v, _mm256_set1_ps(s)));
      }
      return;
    }
    default: break;
  }
  dequant_row(w, r, out);
}

// ---------------------------------------------------------------- fp32 products
// GEMM_ROWS weight rows x NT tokens (NT <= 3): up to 12 accumulators, reduced along K at the
// end. A single token (decode) runs with NT = 1, so no work is spent on padding tokens.
template <int NT>
static void f32_tile(const float* const* ws, const float* const* xs, int nr, int64_t k, float* y,
                     int64_t ldy, int64_t r, int64_t i) {
  __m256 acc[4][NT];
  for (int q = 0; q < 4; q++)
    for (int t = 0; t < NT; t++) acc[q][t] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= k; j += 8) {
    __m256 xv[NT];
    for (int t = 0; t < NT; t++) xv[t] = _mm256_loadu_ps(xs[t] + j);
    for (int q = 0; q < 4; q++) {
      const __m256 wv = _mm256_loadu_ps(ws[q] + j);
      for (int t = 0; t < NT; t++) acc[q][t] = _mm256_fmadd_ps(wv, xv[t], acc[q][t]);
    }
  }
  for (int q = 0; q < nr; q++)
    for (int t = 0; t < NT; t++) {
      float s = hsum8(acc[q][t]);
      for (int64_t jj = j; jj < k; jj++) s += ws[q][jj] * xs[t][jj];
      y[(i + t) * ldy + r + q] = s;
    }
}

static void f32_block(const float* const* wr, int nr, const float* x, int64_t m, int64_t ldx,
                      int64_t k, float* y, int64_t ldy, int64_t r) {
  const float* ws[4];
  for (int q = 0; q < 4; q++) ws[q] = wr[std::min(q, nr - 1)];
  for (int64_t i = 0; i < m; i += 3) {
    const int nt = (int)std::min<int64_t>(3, m - i);
    const float* xs[3] = {x + i * ldx, x + (i + std::min(1, nt - 1)) * ldx,
                          x + (i + std::min(2, nt - 1)) * ldx};
    if (nt == 3) f32_tile<3>(ws, xs, nr, k, y, ldy, r, i);
    else if (nt == 2) f32_tile<2>(ws, xs, nr, k, y, ldy, r, i);
    else f32_tile<1>(ws, xs, nr, k, y, ldy, r, i);
  }
}

// Decode streams rows from memory; asking (into L2) for rows this far ahead hides the memory
// latency that the hardware prefetcher alone leaves exposed to the 8-bit float path (measured
// on SmolLM2: 76 -> 148 tok/s at 2 threads). The 4-bit kernels keep up without it (and lose
// with it: at Llama 3.2 1B's rows the prefetched lines crowd out the ones in use).
constexpr int64_t PREFETCH_ROWS = 8;

// Decode with 8-bit weights and float activations: each group's products summed in registers,
// then scaled once (y = sum_g s_g * sum_{k in g} w x), two rows at a time.
static void q8_rows_1tok_float(const WeightView& w, const float* x, float* y, int64_t r0,
                               int64_t r1) {
  const int64_t k = w.k, g = w.group, ng = k / g;
  for (int64_t r = r0; r < r1; r += 2) {
    const bool two = r + 1 < r1;
    const int8_t* w0 = reinterpret_cast<const int8_t*>(w.row(r));
    const int8_t* w1 = two ? reinterpret_cast<const int8_t*>(w.row(r + 1)) : w0;
    const uint16_t* s0 = w.scale + r * ng;
    const uint16_t* s1 = two ? s0 + ng : s0;
    // the row pair PREFETCH_ROWS ahead is requested now, so its loads do not stall this pair
    if (r + PREFETCH_ROWS + 1 < w.n) {
      const char* ahead = reinterpret_cast<const char*>(w.row(r + PREFETCH_ROWS));
      for (int64_t off = 0; off < 2 * k; off += 64) _mm_prefetch(ahead + off, _MM_HINT_T1);
    }
    // two partial sums per row and group keep the dependency chains short
    __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps();
    for (int64_t gi = 0; gi < ng; gi++) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
      const int64_t j1 = (gi + 1) * g;
      int64_t j = gi * g;
      for (; j + 16 <= j1; j += 16) {
        const __m256 xa = _mm256_loadu_ps(x + j), xb = _mm256_loadu_ps(x + j + 8);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w0 + j)))), xa, a0);
        b0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w0 + j + 8)))), xb, b0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w1 + j)))), xa, a1);
        b1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w1 + j + 8)))), xb, b1);
      }
      if (j < j1) {
        const __m256 xa = _mm256_loadu_ps(x + j);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w0 + j)))), xa, a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w1 + j)))), xa, a1);
      }
      t0 = _mm256_fmadd_ps(_mm256_add_ps(a0, b0), _mm256_set1_ps(h2f(s0[gi])), t0);
      t1 = _mm256_fmadd_ps(_mm256_add_ps(a1, b1), _mm256_set1_ps(h2f(s1[gi])), t1);
    }
    y[r] = hsum8(t0);
    if (two) y[r + 1] = hsum8(t1);
  }
}

// Int8-activation products (per-token form) take integer weights whose groups are whole runs of
// 32 inputs and that carry row sums; anything else goes to the scalar reference.
static inline bool token_acts_fit(const WeightView& w) {
  return w.rowsum && (low_bit(w.kind) || w.kind == W_Q8) && w.group % 32 == 0;
}

// Widen one row of weights to signed bytes (w - zw) in scratch; true when handled.
static inline bool centered_row(const WeightView& w, int64_t r, int8_t* out) {
  const int64_t k = w.k, g = w.group, ng = k / g;
  const uint8_t* row = w.row(r);
  if (w.kind == W_Q8) {
    std::memcpy(out, row, k);
    return true;
  }
  if (!low_bit(w.kind)) return false;
  const uint8_t* zp = w.zp ? w.zp + r * ng : nullptr;
  if (w.kind != W_Q4) {
    const int64_t rb = run64_bytes(w.kind);
    const int zs = low_bit_zero(w.kind);
    for (int64_t b = 0; b < k / 64; b++) {
      __m256i u0, u1;
      unpack_run64(w.kind, row + b * rb, u0, u1);
      const int z0 = zp ? zp[(b * 64) / g] : zs, z1 = zp ? zp[(b * 64 + 32) / g] : zs;
      _mm256_storeu_si256((__m256i*)(out + b * 64), _mm256_sub_epi8(u0, _mm256_set1_epi8((char)z0)));
      _mm256_storeu_si256((__m256i*)(out + b * 64 + 32), _mm256_sub_epi8(u1, _mm256_set1_epi8((char)z1)));
    }
    return true;
  }
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < k / 64; b++) {
    __m256i p = _mm256_loadu_si256((const __m256i*)(row + b * 32));
    __m256i lo = _mm256_and_si256(p, m4), hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
    int z0 = zp ? zp[(b * 64) / g] : 8, z1 = zp ? zp[(b * 64 + 32) / g] : 8;
    _mm256_storeu_si256((__m256i*)(out + b * 64), _mm256_sub_epi8(lo, _mm256_set1_epi8((char)z0)));
    _mm256_storeu_si256((__m256i*)(out + b * 64 + 32),
                        _mm256_sub_epi8(hi, _mm256_set1_epi8((char)z1)));
  }
  return true;
}

constexpr int64_t MAX_ROW_BLOCKS = 512;  // inputs per row of the fast paths: 512 * ACT_BLOCK

// f[b] = s_w(b) * s_x[b] for one row and one token; returns sum_b zw(b) s_w(b) cx[b] for 4-bit
// rows, whose products meet the activations unsigned (0 for the kinds that meet them centered).
static inline float row_block_scales(const WeightView& w, int64_t r, const float* sx,
                                     const float* cx, float* f) {
  const int64_t k = w.k, g = w.group, ng = k / g, nb = k / ACT_BLOCK;
  const uint16_t* sc = w.scale + r * ng;
  const uint8_t* zp = w.zp ? w.zp + r * ng : nullptr;
  const bool q4 = w.kind == W_Q4;
  if (g == ACT_BLOCK && !zp) {
    __m256 corr = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
      const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sc + b)));
      _mm256_storeu_ps(f + b, _mm256_mul_ps(s, _mm256_loadu_ps(sx + b)));
      corr = _mm256_fmadd_ps(s, _mm256_loadu_ps(cx + b), corr);
    }
    float c = hsum8(corr);
    for (; b < nb; b++) {
      const float s = h2f(sc[b]);
      f[b] = s * sx[b];
      c += s * cx[b];
    }
    return q4 ? 8.0f * c : 0.0f;
  }
  float c = 0.f;
  const int64_t per = g / ACT_BLOCK;  // blocks per group (groups are whole blocks here)
  if ((per == 2 || per == 4) && !q4) {  // no zero-point term: 8 / per scales, each per times
    const __m256i idx = per == 2 ? _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)
                                 : _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
      __m128i raw;  // the 8 / per scales of these 8 blocks, nothing past them
      if (per == 2) {
        raw = _mm_loadl_epi64((const __m128i*)(sc + b / per));
      } else {
        int32_t two;
        std::memcpy(&two, sc + b / per, 4);
        raw = _mm_cvtsi32_si128(two);
      }
      const __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(raw)), idx);
      _mm256_storeu_ps(f + b, _mm256_mul_ps(s, _mm256_loadu_ps(sx + b)));
    }
    for (; b < nb; b++) f[b] = h2f(sc[b / per]) * sx[b];
    return 0.0f;
  }
  if (g % ACT_BLOCK == 0 && !q4) {  // no zero-point term: the scales, group by group
    for (int64_t gi = 0, b = 0; gi < ng; gi++) {
      const __m256 s = _mm256_set1_ps(h2f(sc[gi]));
      int64_t e = b + per;
      for (; b + 8 <= e; b += 8) _mm256_storeu_ps(f + b, _mm256_mul_ps(s, _mm256_loadu_ps(sx + b)));
      for (; b < e; b++) f[b] = _mm256_cvtss_f32(s) * sx[b];
    }
    return 0.0f;
  }
  for (int64_t b = 0; b < nb; b++) {
    const int64_t gi = b * ACT_BLOCK / g;
    const float s = h2f(sc[gi]);
    f[b] = s * sx[b];
    if (q4) c += (float)(zp ? zp[gi] : 8) * s * cx[b];
  }
  return c;
}

// Rows of a prompt panel (PANEL of them, a set's constant), packed by pack_panel.
struct Panel {
  uint8_t* u;     // (k / 4, PANEL, 4)
  float* sw;      // (nb, PANEL): the weight scale of each block
  int32_t* zo;    // (nb, PANEL): offsets, or nullptr when all equal `off`
  int32_t off;
};

// Calls f(std::integral_constant<int, n>()) for 1 <= n <= MAX (smaller n as 1): the switch from
// a run-time count of tokens or queries to the kernel template built for that count.
template <int MAX, class F>
static inline void with_count(int64_t n, F&& f) {
  if constexpr (MAX > 1) {
    if (n >= MAX) return f(std::integral_constant<int, MAX>());
    return with_count<MAX - 1>(n, f);
  } else {
    return f(std::integral_constant<int, 1>());
  }
}

static float dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum8(_mm256_add_ps(acc0, acc1));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

static void axpy(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

// Vector exponentials (vexp, x86_kernels.h): inputs below EXP_LO give 0, above EXP_HI are clamped
// (the callers never need more).
constexpr float EXP_LO = -87.33f, EXP_HI = 88.37f;

// ---------------------------------------------------------------- activation blocks
// Bit for bit quantize_acts_blocks: the same division and round-half-even of x / s.
static void quantize_blocks(const float* x, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                                float* scale, int32_t* bsum, float* bcorr) {
  const int64_t nb = k / ACT_BLOCK;
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = 0; i < m; i++)
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + i * ldx + b * ACT_BLOCK;
      __m256 v[4];
      for (int c = 0; c < 4; c++) v[c] = _mm256_loadu_ps(xb + 8 * c);
      __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absm), _mm256_and_ps(v[1], absm)),
                                _mm256_max_ps(_mm256_and_ps(v[2], absm), _mm256_and_ps(v[3], absm)));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      float s = _mm_cvtss_f32(m4) / 127.0f;
      if (!(s >= ACT_EPS)) s = ACT_EPS;
      const __m256 sv = _mm256_set1_ps(s);
      __m256i iv[4];
      for (int c = 0; c < 4; c++) {
        const __m256 r = _mm256_round_ps(_mm256_div_ps(v[c], sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        iv[c] = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, r)));
      }
      const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
      _mm256_storeu_si256((__m256i*)(q + i * k + b * ACT_BLOCK), _mm256_permutevar8x32_epi32(p16, order));
      __m256i sum = _mm256_add_epi32(_mm256_add_epi32(iv[0], iv[1]), _mm256_add_epi32(iv[2], iv[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      const int32_t total = _mm_cvtsi128_si32(s4);
      scale[i * nb + b] = s;
      bsum[i * nb + b] = total;
      bcorr[i * nb + b] = s * (float)total;
    }
}

// ---------------------------------------------------------------- float vector primitives
// The attention's and the exponential's float vector operations whose intrinsics differ only
// in width (_mm256_*, _mm512_*): each set names its vector type VF, then expands this once with
// its width. What differs by more than the width (masks, rounding, sums) each set writes itself.
#define EDGE_X86_FLOAT_OPS(W)                                                                  \
  static inline VF vload(const float* p) { return _mm##W##_loadu_ps(p); }                     \
  static inline void vstore(float* p, VF v) { _mm##W##_storeu_ps(p, v); }                     \
  static inline VF vset1(float f) { return _mm##W##_set1_ps(f); }                            \
  static inline VF vzero() { return _mm##W##_setzero_ps(); }                                 \
  static inline VF vfma(VF a, VF b, VF c) { return _mm##W##_fmadd_ps(a, b, c); }             \
  static inline VF vfnma(VF a, VF b, VF c) { return _mm##W##_fnmadd_ps(a, b, c); } /* c-ab */ \
  static inline VF vadd(VF a, VF b) { return _mm##W##_add_ps(a, b); }                        \
  static inline VF vmul(VF a, VF b) { return _mm##W##_mul_ps(a, b); }                        \
  static inline VF vsub(VF a, VF b) { return _mm##W##_sub_ps(a, b); }                        \
  static inline VF vdiv(VF a, VF b) { return _mm##W##_div_ps(a, b); }                        \
  static inline VF vmin(VF a, VF b) { return _mm##W##_min_ps(a, b); }                        \
  static inline VF vmax(VF a, VF b) { return _mm##W##_max_ps(a, b); }                        \
  /* 2^n for whole n, through the exponent field */                                          \
  static inline VF vpow2i(VF n) {                                                            \
    return _mm##W##_castsi##W##_ps(_mm##W##_slli_epi32(                                      \
        _mm##W##_add_epi32(_mm##W##_cvtps_epi32(n), _mm##W##_set1_epi32(127)), 23));         \
  }
