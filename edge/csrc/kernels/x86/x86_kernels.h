// The x86 kernels written once for both sets, over the primitives each set defines before
// including this file (avx2.cpp, avx512.cpp: the same names, each set's own instructions):
//   STEP_TILE_TOKENS, q8_row_ntok_float<NT>   steps of 8-bit weights with float activations
//   dot_u8s8                                  u8 x s8 dot product into 8 int32 sums
//   PANEL, TILE_TOKENS, panel_handles, pack_panel_inputs64, PanelTail, panel_tail,
//   panel_tile<T>                             prompt panels
//   VF, VW, vload ... vdiv, vsum, SCORE_QUERIES, SUM_PANEL, SUM_QUERIES   attention
//   VMask, vless, vmin, vmax, vround, vfnma, vpow2i, vmul_unless   exponentials
// Included after x86_helpers.h, inside the set's namespace and under its target options.

// A step of 2..STEP_MAX_TOKENS tokens with 8-bit weights and float activations: each row is
// read from memory once and its groups meet NT tokens while in registers (the rest of the row's
// tokens, if any, find it in cache). Per token the operations and their order are exactly
// q8_rows_1tok_float's (two partial sums over alternate runs of 8 inputs, added and scaled per
// group into one total), so a token's outputs here equal its decode outputs bit for bit.
static void q8_rows_ntok_float(const WeightView& w, const float* x, int64_t m, int64_t ldx,
                               float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t k = w.k, g = w.group, ng = k / g;
  for (int64_t r = r0; r < r1; r++) {
    const int8_t* wr = reinterpret_cast<const int8_t*>(w.row(r));
    const uint16_t* sc = w.scale + r * ng;
    if (r + PREFETCH_ROWS < w.n) {
      const char* ahead = reinterpret_cast<const char*>(w.row(r + PREFETCH_ROWS));
      for (int64_t off = 0; off < k; off += 64) _mm_prefetch(ahead + off, _MM_HINT_T1);
    }
    for (int64_t i = 0; i < m; i += STEP_TILE_TOKENS) {
      const float* xi = x + i * ldx;
      float* yi = y + i * ldy + r;
      with_count<STEP_TILE_TOKENS>(m - i, [&](auto nt) {
        q8_row_ntok_float<decltype(nt)::value>(wr, sc, k, g, xi, ldx, yi, ldy);
      });
    }
  }
}

static void matmul_f(const WeightView& w, const float* x, int64_t m, int64_t ldx, float* y,
                         int64_t ldy, int64_t r0, int64_t r1, float* scratch) {
  const int64_t k = w.k;
  if (m == 1 && w.kind == W_Q8 && w.group % 8 == 0) {
    q8_rows_1tok_float(w, x, y, r0, r1);
    return;
  }
  if (m <= STEP_MAX_TOKENS && w.kind == W_Q8 && w.group % 8 == 0) {
    q8_rows_ntok_float(w, x, m, ldx, y, ldy, r0, r1);
    return;
  }
  for (int64_t r = r0; r < r1; r += GEMM_ROWS) {
    const int nr = (int)std::min<int64_t>(GEMM_ROWS, r1 - r);
    const float* wr[GEMM_ROWS];
    for (int q = 0; q < nr; q++) {
      if (w.kind == W_F32) {
        wr[q] = reinterpret_cast<const float*>(w.row(r + q));
      } else {
        dequant_row_simd(w, r + q, scratch + q * k);
        wr[q] = scratch + q * k;
      }
    }
    f32_block(wr, nr, x, m, ldx, k, y, ldy, r);
  }
}

// ---------------------------------------------------------------- int8-activation products
// Per group: sum over its inputs of (q_x + 128) * (w - zw) in int32 (u8 x s8 products), scaled
// by the group's scale and accumulated in fp32. With R = the row's dequantized sum,
//   y = s_x * (A - (128 + z_x) * R).

// Any number of tokens, four at a time, over each row widened once to signed bytes in scratch;
// DOT is the set's u8 x s8 dot product for the row's values.
template <__m256i (*DOT)(__m256i, __m256i, __m256i)>
static void q_rows_4tok(const WeightView& w, const QActs& a, float* y, int64_t ldy, int64_t r0,
                        int64_t r1, float* scratch) {
  const int64_t k = w.k, g = w.group, ng = k / g;
  int8_t* wc = reinterpret_cast<int8_t*>(scratch);
  for (int64_t r = r0; r < r1; r++) {
    centered_row(w, r, wc);
    const uint16_t* sc = w.scale + r * ng;
    for (int64_t i = 0; i < a.m; i += 4) {
      const int nt = (int)std::min<int64_t>(4, a.m - i);
      const uint8_t* xs[4];
      for (int t = 0; t < 4; t++) xs[t] = a.qu + (i + std::min(t, nt - 1)) * k;
      __m256 accf[4];
      __m256i acc[4];
      for (int t = 0; t < 4; t++) {
        accf[t] = _mm256_setzero_ps();
        acc[t] = _mm256_setzero_si256();
      }
      for (int64_t j = 0; j < k; j += 32) {
        __m256i wv = _mm256_loadu_si256((const __m256i*)(wc + j));
        for (int t = 0; t < 4; t++) {
          const __m256i xv = _mm256_loadu_si256((const __m256i*)(xs[t] + j));
          acc[t] = DOT(acc[t], xv, wv);
        }
        if ((j + 32) % g == 0) {
          __m256 s = _mm256_set1_ps(h2f(sc[j / g]));
          for (int t = 0; t < 4; t++) {
            accf[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t]), s, accf[t]);
            acc[t] = _mm256_setzero_si256();
          }
        }
      }
      for (int t = 0; t < nt; t++) {
        const float zc = 128.0f + (float)a.zero[i + t];
        y[(i + t) * ldy + r] = a.scale[i + t] * (hsum8(accf[t]) - zc * w.rowsum[r]);
      }
    }
  }
}

// ---------------------------------------------------------------- per-block int8 activations
// y = sum_b s_w(b) s_b sum_{k in b} (w - zw) q. 4-bit values meet the signed activations
// unsigned (u8 x s8 products, no centering); their zero point comes off once per row as
// sum_b zw(b) s_w(b) (s_b sum_b q), from the activations' precomputed block sums. 8-bit rows
// use |w| x sign(q, w), exact because q never reaches -128. The per-block scale products are
// computed 8 blocks at a time before the products, which keep several independent
// accumulators so that the float additions never wait on each other.


static inline __m256 block_dot(__m256i u, const int8_t* q, float f, __m256 acc) {
  const __m256i d = dot_u8s8(_mm256_setzero_si256(), u, _mm256_loadu_si256((const __m256i*)q));
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(f), acc);
}

static void q4_rows_1tok_blocks(const WeightView& w, const QActs& a, float* y, int64_t r0,
                                int64_t r1) {
  const int64_t k = w.k, nsc = k / 64;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  alignas(32) float f[MAX_ROW_BLOCKS];
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* row = w.row(r);
    const float corr = row_block_scales(w, r, a.scale, a.bcorr, f);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 2 <= nsc; c += 2) {
      const __m256i p0 = _mm256_loadu_si256((const __m256i*)(row + c * 32));
      const __m256i p1 = _mm256_loadu_si256((const __m256i*)(row + c * 32 + 32));
      const int8_t* q = a.q + c * 64;
      acc0 = block_dot(_mm256_and_si256(p0, m4), q, f[2 * c], acc0);
      acc1 = block_dot(_mm256_and_si256(_mm256_srli_epi16(p0, 4), m4), q + 32, f[2 * c + 1], acc1);
      acc2 = block_dot(_mm256_and_si256(p1, m4), q + 64, f[2 * c + 2], acc2);
      acc3 = block_dot(_mm256_and_si256(_mm256_srli_epi16(p1, 4), m4), q + 96, f[2 * c + 3], acc3);
    }
    if (c < nsc) {
      const __m256i p0 = _mm256_loadu_si256((const __m256i*)(row + c * 32));
      const int8_t* q = a.q + c * 64;
      acc0 = block_dot(_mm256_and_si256(p0, m4), q, f[2 * c], acc0);
      acc1 = block_dot(_mm256_and_si256(_mm256_srli_epi16(p0, 4), m4), q + 32, f[2 * c + 1], acc1);
    }
    y[r] = hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3))) - corr;
  }
}

static inline __m256 block_dot_signed(__m256i wv, const int8_t* q, float f, __m256 acc) {
  const __m256i qv = _mm256_loadu_si256((const __m256i*)q);
  const __m256i d = dot_u8s8(_mm256_setzero_si256(), _mm256_abs_epi8(wv), _mm256_sign_epi8(qv, wv));
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(f), acc);
}

static void q8_rows_1tok_blocks(const WeightView& w, const QActs& a, float* y, int64_t r0,
                                int64_t r1) {
  const int64_t k = w.k, nb = k / ACT_BLOCK;
  alignas(32) float f[MAX_ROW_BLOCKS];
  for (int64_t r = r0; r < r1; r++) {
    const int8_t* row = reinterpret_cast<const int8_t*>(w.row(r));
    row_block_scales(w, r, a.scale, a.bcorr, f);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      acc0 = block_dot_signed(_mm256_loadu_si256((const __m256i*)(row + b * 32)), a.q + b * 32,
                              f[b], acc0);
      acc1 = block_dot_signed(_mm256_loadu_si256((const __m256i*)(row + b * 32 + 32)),
                              a.q + b * 32 + 32, f[b + 1], acc1);
    }
    if (b < nb)
      acc0 = block_dot_signed(_mm256_loadu_si256((const __m256i*)(row + b * 32)), a.q + b * 32,
                              f[b], acc0);
    y[r] = hsum8(_mm256_add_ps(acc0, acc1));
  }
}

// 5- and 6-bit rows: each run of 64 unpacked in registers and met unsigned, as 4-bit ones
// (u <= 63 keeps maddubs' pairs in int16: 2 * 63 * 127), two runs per step. The zero point comes
// off each block exactly, in its int32 sum: the sum starts at -zw * (sum of the block's q).
static inline __m256 block_dot_offset(__m256i u, const int8_t* q, int32_t start, float f,
                                      __m256 acc) {
  const __m256i d = dot_u8s8(_mm256_zextsi128_si256(_mm_cvtsi32_si128(start)), u,
                             _mm256_loadu_si256((const __m256i*)q));
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(f), acc);
}

static void qhi_rows_1tok_blocks(const WeightView& w, const QActs& a, float* y, int64_t r0,
                                 int64_t r1) {
  const int64_t k = w.k, g = w.group, ng = k / g, nsc = k / 64, nb = k / ACT_BLOCK;
  const int64_t rb = run64_bytes(w.kind);
  const int kind = w.kind;
  alignas(32) float f[MAX_ROW_BLOCKS];
  alignas(32) int32_t start[MAX_ROW_BLOCKS];
  if (!w.zp)
    for (int64_t b = 0; b < nb; b++) start[b] = -low_bit_zero(kind) * a.bsum[b];
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* row = w.row(r);
    if (w.zp) {
      const uint8_t* zp = w.zp + r * ng;
      for (int64_t b = 0; b < nb; b++) start[b] = -(int32_t)zp[b * ACT_BLOCK / g] * a.bsum[b];
    }
    row_block_scales(w, r, a.scale, a.bcorr, f);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 2 <= nsc; c += 2) {
      __m256i u0, u1, u2, u3;
      unpack_run64(kind, row + c * rb, u0, u1);
      unpack_run64(kind, row + (c + 1) * rb, u2, u3);
      const int8_t* q = a.q + c * 64;
      acc0 = block_dot_offset(u0, q, start[2 * c], f[2 * c], acc0);
      acc1 = block_dot_offset(u1, q + 32, start[2 * c + 1], f[2 * c + 1], acc1);
      acc2 = block_dot_offset(u2, q + 64, start[2 * c + 2], f[2 * c + 2], acc2);
      acc3 = block_dot_offset(u3, q + 96, start[2 * c + 3], f[2 * c + 3], acc3);
    }
    if (c < nsc) {
      __m256i u0, u1;
      unpack_run64(kind, row + c * rb, u0, u1);
      const int8_t* q = a.q + c * 64;
      acc0 = block_dot_offset(u0, q, start[2 * c], f[2 * c], acc0);
      acc1 = block_dot_offset(u1, q + 32, start[2 * c + 1], f[2 * c + 1], acc1);
    }
    y[r] = hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  }
}

// ---------------------------------------------------------------- prompt tiles
// Prompt chunks reuse every weight across many tokens. Rows are taken PANEL rows at a time (8
// with 256-bit vectors, 16 with 512-bit ones) and laid out as a panel in scratch: for each 4
// consecutive inputs, 4 unsigned bytes of every row in turn, so that one vector holds 4 inputs
// of all the panel's rows as u = w + offset (4- to 6-bit: the stored value, offset = its zero point;
// 8-bit: w + 128). A token's 4 activation bytes, broadcast, meet that vector in one u8 x s8 dot
// product that advances all the panel's row sums at once. A block's int32 sums start at
// -offset x (sum of the token's q over the block), which removes the offset exactly, and are
// scaled into fp32 once per block: y = sum_b s_w(b) (s_b sum_{k in b} w q), as the reference.

static inline int64_t panel_floats(int64_t k) {
  return PANEL * k / 4 + 2 * PANEL * (k / ACT_BLOCK);
}

static Panel pack_panel(const WeightView& w, int64_t r, int nr, float* scratch) {
  const int64_t k = w.k, g = w.group, ng = k / g, nb = k / ACT_BLOCK, n4 = k / 4;
  const bool q4 = low_bit(w.kind);  // 4- to 6-bit: unsigned values, offset = the zero point
  Panel p;
  p.u = reinterpret_cast<uint8_t*>(scratch);
  p.sw = scratch + PANEL * n4;
  p.zo = (q4 && w.zp) ? reinterpret_cast<int32_t*>(p.sw + PANEL * nb) : nullptr;
  p.off = q4 ? low_bit_zero(w.kind) : 128;
  const uint8_t* rowp[PANEL];
  for (int rr = 0; rr < PANEL; rr++) rowp[rr] = rr < nr ? w.row(r + rr) : nullptr;
  // 64 inputs (16 words) of all the panel's rows at a time, transposed in registers
  for (int64_t c = 0; c < k / 64; c++) pack_panel_inputs64(rowp, nr, w.kind, c, p.u);
  if (k % 64) {  // 8-bit rows: a last run of 32 inputs
    for (int rr = 0; rr < PANEL; rr++)
      for (int64_t c = k / 64 * 16; c < n4; c++) {
        uint32_t v = 0;
        if (rr < nr) {
          std::memcpy(&v, rowp[rr] + c * 4, 4);
          v ^= 0x80808080u;
        }
        reinterpret_cast<uint32_t*>(p.u)[c * PANEL + rr] = v;
      }
  }
  for (int rr = 0; rr < PANEL; rr++) {
    if (rr >= nr) {
      for (int64_t b = 0; b < nb; b++) {
        p.sw[b * PANEL + rr] = 0.f;
        if (p.zo) p.zo[b * PANEL + rr] = 0;
      }
      continue;
    }
    const uint16_t* sc = w.scale + (r + rr) * ng;
    const uint8_t* zp = p.zo ? w.zp + (r + rr) * ng : nullptr;
    for (int64_t b = 0; b < nb; b++) {
      const int64_t gi = b * ACT_BLOCK / g;
      p.sw[b * PANEL + rr] = h2f(sc[gi]);
      if (zp) p.zo[b * PANEL + rr] = zp[gi];
    }
  }
  return p;
}

// Rows [r0, r1) for a.m >= PROMPT_MIN_TOKENS tokens in the prompt-tile form.
static void panel_rows(const WeightView& w, const QActs& a, float* y, int64_t ldy, int64_t r0,
                       int64_t r1, float* scratch) {
  const int64_t groups = token_groups(a.m);
  for (int64_t r = r0; r < r1; r += PANEL) {
    const int nr = (int)std::min<int64_t>(PANEL, r1 - r);
    const Panel p = pack_panel(w, r, nr, scratch);
    // ask for the next panel's rows (into L2) while this one's products run: the packing
    // otherwise waits on memory row by row
    for (int64_t rn = r + PANEL; rn < std::min(r1, r + 2 * PANEL); rn++) {
      const char* row = reinterpret_cast<const char*>(w.row(rn));
      for (int64_t o = 0; o < w.row_bytes(); o += 64) _mm_prefetch(row + o, _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(w.scale + rn * (w.k / w.group)), _MM_HINT_T1);
    }
    const PanelTail tail = panel_tail(nr);
    for (int64_t g = 0; g < groups; g++) {
      for (int t0 = 0; t0 < TOKEN_GROUP; t0 += TILE_TOKENS) {
        const int64_t left = a.m - (g * TOKEN_GROUP + t0);
        if (left <= 0) break;
        with_count<TILE_TOKENS>(left, [&](auto nt) {
          panel_tile<decltype(nt)::value>(p, a, g, t0, y + r, ldy, tail);
        });
      }
    }
  }
}

static void matmul_qb(const WeightView& w, const QActs& a, float* y, int64_t ldy,
                          int64_t r0, int64_t r1, float* scratch) {
  const int64_t k = w.k, g = w.group, nb = k / ACT_BLOCK;
  if ((!low_bit(w.kind) && w.kind != W_Q8) || g % ACT_BLOCK || nb > MAX_ROW_BLOCKS || !a.bcorr ||
      (!a.bsum && w.kind != W_Q4 && w.kind != W_Q8)) {
    SCALAR_KERNELS.matmul_qb(w, a, y, ldy, r0, r1, scratch);
    return;
  }
  if (a.m == 1) {
    (w.kind == W_Q4 ? q4_rows_1tok_blocks
                    : w.kind == W_Q8 ? q8_rows_1tok_blocks : qhi_rows_1tok_blocks)(w, a, y, r0, r1);
    return;
  }
  if (a.m >= PROMPT_MIN_TOKENS && a.qt && panel_handles(w.kind)) {
    panel_rows(w, a, y, ldy, r0, r1, scratch);
    return;
  }
  // Prompt chunks: each row's values are widened once to bytes (4-bit: u; 5- to 8-bit: |w|
  // beside the signed values) and reused by every token, four tokens at a time.
  uint8_t* wu = reinterpret_cast<uint8_t*>(scratch);
  int8_t* ws = reinterpret_cast<int8_t*>(scratch) + k;
  const bool q4 = w.kind == W_Q4;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  alignas(32) float f[4][MAX_ROW_BLOCKS];
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* row = w.row(r);
    if (q4) {
      for (int64_t c = 0; c < k / 64; c++) {
        const __m256i p = _mm256_loadu_si256((const __m256i*)(row + c * 32));
        _mm256_storeu_si256((__m256i*)(wu + c * 64), _mm256_and_si256(p, m4));
        _mm256_storeu_si256((__m256i*)(wu + c * 64 + 32), _mm256_and_si256(_mm256_srli_epi16(p, 4), m4));
      }
    } else if (w.kind != W_Q8) {  // 5- and 6-bit: centered, then as 8-bit rows
      centered_row(w, r, ws);
      for (int64_t j = 0; j < k; j += 32)
        _mm256_storeu_si256((__m256i*)(wu + j),
                            _mm256_abs_epi8(_mm256_loadu_si256((const __m256i*)(ws + j))));
    } else {
      for (int64_t j = 0; j < k; j += 32) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(row + j));
        _mm256_storeu_si256((__m256i*)(ws + j), v);
        _mm256_storeu_si256((__m256i*)(wu + j), _mm256_abs_epi8(v));
      }
    }
    for (int64_t i = 0; i < a.m; i += 4) {
      const int nt = (int)std::min<int64_t>(4, a.m - i);
      const int8_t* xs[4];
      float corr[4];
      for (int t = 0; t < 4; t++) {
        const int64_t ti = i + std::min(t, nt - 1);
        xs[t] = a.q + ti * k;
        corr[t] = row_block_scales(w, r, a.scale + ti * nb, a.bcorr + ti * nb, f[t]);
      }
      __m256 acc[4];
      for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; b++) {
        const __m256i u = _mm256_loadu_si256((const __m256i*)(wu + b * 32));
        if (q4) {
          for (int t = 0; t < 4; t++) acc[t] = block_dot(u, xs[t] + b * 32, f[t][b], acc[t]);
        } else {
          const __m256i sv = _mm256_loadu_si256((const __m256i*)(ws + b * 32));
          for (int t = 0; t < 4; t++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i*)(xs[t] + b * 32));
            const __m256i d = dot_u8s8(_mm256_setzero_si256(), u, _mm256_sign_epi8(qv, sv));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(f[t][b]), acc[t]);
          }
        }
      }
      for (int t = 0; t < nt; t++) y[(i + t) * ldy + r] = hsum8(acc[t]) - corr[t];
    }
  }
}

// ---------------------------------------------------------------- attention
constexpr int TILE_V = (int)KT / VW;  // vectors per key tile row

// NQ queries x one tile of KT positions; CH independent chains per query over the head's
// elements (few queries need several chains to keep the FMA units busy).
template <int NQ, int CH>
static inline void scores_tile(const float* const* q, const float* Kt, int64_t d, float scale,
                               float* const* out, int64_t t0) {
  VF acc[NQ][CH][TILE_V];
  for (int i = 0; i < NQ; i++)
    for (int c = 0; c < CH; c++)
      for (int v = 0; v < TILE_V; v++) acc[i][c][v] = vzero();
  int64_t j = 0;
  for (; j + CH <= d; j += CH)
    for (int c = 0; c < CH; c++) {
      VF kv[TILE_V];
      for (int v = 0; v < TILE_V; v++) kv[v] = vload(Kt + (j + c) * KT + v * VW);
      for (int i = 0; i < NQ; i++) {
        const VF qv = vset1(q[i][j + c]);
        for (int v = 0; v < TILE_V; v++) acc[i][c][v] = vfma(qv, kv[v], acc[i][c][v]);
      }
    }
  for (; j < d; j++)
    for (int i = 0; i < NQ; i++) {
      const VF qv = vset1(q[i][j]);
      for (int v = 0; v < TILE_V; v++) acc[i][0][v] = vfma(qv, vload(Kt + j * KT + v * VW), acc[i][0][v]);
    }
  const VF sv = vset1(scale);
  for (int i = 0; i < NQ; i++)
    for (int v = 0; v < TILE_V; v++) {
      VF r = acc[i][0][v];
      for (int c = 1; c < CH; c++) r = vadd(r, acc[i][c][v]);
      vstore(out[i] + t0 + v * VW, vmul(r, sv));
    }
}

template <int NQ>
static inline void scores_pass(const float* const* q, const float* K, int64_t n, int64_t d,
                               float scale, float* const* out) {
  constexpr int CH = NQ >= 4 ? 1 : (NQ >= 2 ? 2 : 4);
  for (int64_t t0 = 0; t0 < n; t0 += KT) {
    const int64_t nt = std::min<int64_t>(KT, n - t0);
    const float* Kt = K + (t0 / KT) * d * KT;
    if (nt == KT) {
      scores_tile<NQ, CH>(q, Kt, d, scale, out, t0);
    } else {
      alignas(64) float part[NQ][KT];
      float* po[NQ];
      for (int i = 0; i < NQ; i++) po[i] = part[i];
      scores_tile<NQ, CH>(q, Kt, d, scale, po, 0);
      for (int i = 0; i < NQ; i++) std::memcpy(out[i] + t0, part[i], nt * sizeof(float));
    }
  }
}

static void scores(const float* const* q, int nq, const float* K, int64_t n, int64_t d,
                       float scale, float* const* out) {
  for (int i0 = 0; i0 < nq; i0 += SCORE_QUERIES) {
    const int c = std::min(SCORE_QUERIES, nq - i0);
    with_count<SCORE_QUERIES>(c, [&](auto nq) {
      scores_pass<decltype(nq)::value>(q + i0, K, n, d, scale, out + i0);
    });
  }
}

// NQ queries x a panel of SUM_PANEL value columns, accumulated in registers over all positions.
template <int NQ>
static inline void sum_panel(const float* const* p, const float* V, int64_t n, int64_t d,
                             int64_t j0, float* const* out) {
  constexpr int NV = SUM_PANEL / VW;
  VF acc[NQ][NV];
  for (int i = 0; i < NQ; i++)
    for (int v = 0; v < NV; v++) acc[i][v] = vzero();
  for (int64_t t = 0; t < n; t++) {
    VF vv[NV];
    for (int v = 0; v < NV; v++) vv[v] = vload(V + t * d + j0 + v * VW);
    for (int i = 0; i < NQ; i++) {
      const VF pv = vset1(p[i][t]);
      for (int v = 0; v < NV; v++) acc[i][v] = vfma(pv, vv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < NQ; i++)
    for (int v = 0; v < NV; v++) vstore(out[i] + j0 + v * VW, acc[i][v]);
}

static void weighted_sum(const float* const* p, int nq, const float* V, int64_t n, int64_t d,
                             float* const* out) {
  int64_t j0 = 0;
  for (; j0 + SUM_PANEL <= d; j0 += SUM_PANEL)
    for (int i0 = 0; i0 < nq; i0 += SUM_QUERIES) {
      const int c = std::min(SUM_QUERIES, nq - i0);
      with_count<SUM_QUERIES>(c, [&](auto nq) {
        sum_panel<decltype(nq)::value>(p + i0, V, n, d, j0, out + i0);
      });
    }
  if (j0 < d)
    for (int i = 0; i < nq; i++) {
      for (int64_t j = j0; j < d; j++) out[i][j] = 0.f;
      for (int64_t t = 0; t < n; t++) axpy(p[i][t], V + t * d + j0, out[i] + j0, d - j0);
    }
}

// ---------------------------------------------------------------- exponentials
// exp(x) = 2^n e^r, n = round(x log2 e), r = x - n ln 2 (ln 2 split in two for accuracy), e^r
// by a degree-6 polynomial (relative error ~2 ulp on [-ln2/2, ln2/2]); inputs below
// EXP_LO give 0, above EXP_HI are clamped (the callers never need more).
static inline VF vexp(VF x) {
  const VMask under = vless(x, vset1(EXP_LO));
  x = vmin(x, vset1(EXP_HI));
  x = vmax(x, vset1(EXP_LO));
  const VF n = vround(vmul(x, vset1(1.44269504088896341f)));
  VF r = vfnma(n, vset1(0.693359375f), x);
  r = vfnma(n, vset1(-2.12194440e-4f), r);
  VF p = vset1(1.9875691500e-4f);
  p = vfma(p, r, vset1(1.3981999507e-3f));
  p = vfma(p, r, vset1(8.3334519073e-3f));
  p = vfma(p, r, vset1(4.1665795894e-2f));
  p = vfma(p, r, vset1(1.6666665459e-1f));
  p = vfma(p, r, vset1(5.0000001201e-1f));
  p = vfma(p, vmul(r, r), vadd(r, vset1(1.0f)));
  return vmul_unless(under, p, vpow2i(n));
}

static float exp_sum(float* x, int64_t n, float shift) {
  const VF sv = vset1(shift);
  VF acc = vzero();
  int64_t i = 0;
  for (; i + VW <= n; i += VW) {
    const VF e = vexp(vsub(vload(x + i), sv));
    vstore(x + i, e);
    acc = vadd(acc, e);
  }
  float sum = vsum(acc);
  if (i < n) {
    alignas(64) float t[VW];
    for (int j = 0; j < VW; j++) t[j] = i + j < n ? x[i + j] - shift : EXP_LO - 1.0f;
    vstore(t, vexp(vload(t)));
    for (int64_t j = 0; i + j < n; j++) {
      x[i + j] = t[j];
      sum += t[j];
    }
  }
  return sum;
}

static void silu_mul(float* g, const float* u, int64_t n) {
  const VF one = vset1(1.0f);
  int64_t i = 0;
  for (; i + VW <= n; i += VW) {
    const VF gv = vload(g + i);
    const VF e = vexp(vsub(vzero(), gv));
    vstore(g + i, vmul(vdiv(gv, vadd(one, e)), vload(u + i)));
  }
  for (; i < n; i++) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// ---------------------------------------------------------------- int8-activation entry
// Rows that token_acts_fit admits, by each set's own paths (defined after this file).
static void matmul_q_fitting(const WeightView& w, const QActs& a, float* y, int64_t ldy,
                             int64_t r0, int64_t r1, float* scratch);

static void matmul_q(const WeightView& w, const QActs& a, float* y, int64_t ldy, int64_t r0,
                     int64_t r1, float* scratch) {
  if (!token_acts_fit(w)) {
    SCALAR_KERNELS.matmul_q(w, a, y, ldy, r0, r1, scratch);
    return;
  }
  matmul_q_fitting(w, a, y, ldy, r0, r1, scratch);
}
