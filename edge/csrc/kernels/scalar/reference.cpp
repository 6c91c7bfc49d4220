// Scalar reference kernels: the definition every SIMD kernel is tested against, and the
// fallback on CPUs without a supported instruction set.
#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace edge {

const char* check_view(const WeightView& w) {
  if (w.kind < W_F32 || w.kind > W_LAST) return "unknown weight kind";
  if (w.n <= 0 || w.k <= 0) return "empty weight";
  if (!w.data) return "missing data";
  bool quant = w.kind >= W_Q8;
  if (quant) {
    if (w.group <= 0 || w.k % w.group) return "group size does not divide the input dimension";
    if (!w.scale) return "missing scales";
    if (w.kind == W_Q8U && !w.zp) return "missing zero points";
  }
  if (low_bit(w.kind)) {
    if (w.k % 64) return "4- to 6-bit rows must hold a multiple of 64 values";
    if (w.group % 32) return "4- to 6-bit groups must be multiples of 32";
  }
  return nullptr;
}

// Unpacked integer value (before zero point) of element j of a Q4, Q5 or Q6 row.
static inline int low_bit_at(int kind, const uint8_t* row, int64_t j) {
  const int64_t off = j % 64;
  const uint8_t* run = row + j / 64 * run64_bytes(kind);
  const uint8_t b = run[off % 32];
  const int lo = off < 32 ? (b & 0x0f) : (b >> 4);
  if (kind == W_Q6) return lo | (((run[32 + off % 16] >> (2 * (off / 16))) & 3) << 4);
  if (kind == W_Q5) return lo | (((run[32 + off % 8] >> (off / 8)) & 1) << 4);
  return lo;
}

// Integer value of element j (group gi) of an integer row, zero point removed.
static inline int32_t centered_at(const WeightView& w, const uint8_t* row, const uint8_t* zp,
                                  int64_t gi, int64_t j) {
  switch (w.kind) {
    case W_Q8: return reinterpret_cast<const int8_t*>(row)[j];
    case W_Q8U: return (int32_t)row[j] - zp[gi];
    default: return low_bit_at(w.kind, row, j) - (zp ? zp[gi] : low_bit_zero(w.kind));
  }
}

void dequant_row(const WeightView& w, int64_t r, float* out) {
  const uint8_t* row = w.row(r);
  const int64_t k = w.k, g = w.group;
  const uint16_t* sc = w.scale ? w.scale + r * (k / std::max<int64_t>(g, 1)) : nullptr;
  const uint8_t* zp = w.zp ? w.zp + r * (k / std::max<int64_t>(g, 1)) : nullptr;
  switch (w.kind) {
    case W_F32: std::memcpy(out, row, k * 4); return;
    case W_F16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
      for (int64_t j = 0; j < k; j++) out[j] = fp16_to_f32(h[j]);
      return;
    }
    case W_BF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
      for (int64_t j = 0; j < k; j++) out[j] = bf16_to_f32(h[j]);
      return;
    }
    case W_Q8: {
      const int8_t* q = reinterpret_cast<const int8_t*>(row);
      for (int64_t j = 0; j < k; j++) out[j] = (float)q[j] * fp16_to_f32(sc[j / g]);
      return;
    }
    case W_Q8U:
      for (int64_t j = 0; j < k; j++)
        out[j] = (float)((int)row[j] - (int)zp[j / g]) * fp16_to_f32(sc[j / g]);
      return;
    case W_Q4: case W_Q5: case W_Q6:
      for (int64_t j = 0; j < k; j++) {
        int z = zp ? zp[j / g] : low_bit_zero(w.kind);
        out[j] = (float)(low_bit_at(w.kind, row, j) - z) * fp16_to_f32(sc[j / g]);
      }
      return;
    case W_F8:
      for (int64_t j = 0; j < k; j++) out[j] = fp8_to_f32(row[j]) * fp16_to_f32(sc[j / g]);
      return;
  }
}

void quantize_acts(const float* x, int64_t m, int64_t k, int64_t ldx, int8_t* q, uint8_t* qu,
                   float* scale, int32_t* zero) {
  for (int64_t i = 0; i < m; i++) {
    const float* xi = x + i * ldx;
    float lo = 0.f, hi = 0.f;
    for (int64_t j = 0; j < k; j++) {
      lo = std::min(lo, xi[j]);
      hi = std::max(hi, xi[j]);
    }
    float s = (hi - lo) / 255.0f;
    if (!(s >= ACT_EPS)) s = ACT_EPS;  // also catches NaN: the caller checks logits
    float zf = std::nearbyint(-128.0f - lo / s);
    int32_t z = (int32_t)std::min(127.f, std::max(-128.f, zf));
    for (int64_t j = 0; j < k; j++) {
      float v = std::nearbyint(xi[j] / s) + (float)z;
      v = std::min(127.f, std::max(-128.f, v));
      int8_t qq = (int8_t)(int)v;
      q[i * k + j] = qq;
      qu[i * k + j] = (uint8_t)((int)qq + 128);
    }
    scale[i] = s;
    zero[i] = z;
  }
}

void quantize_acts_blocks(const float* x, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                          float* scale, int32_t* bsum, float* bcorr) {
  const int64_t nb = k / ACT_BLOCK;
  for (int64_t i = 0; i < m; i++) {
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + i * ldx + b * ACT_BLOCK;
      float amax = 0.f;
      for (int64_t j = 0; j < ACT_BLOCK; j++) amax = std::max(amax, std::fabs(xb[j]));
      float s = amax / 127.0f;
      if (!(s >= ACT_EPS)) s = ACT_EPS;
      int8_t* qb = q + i * k + b * ACT_BLOCK;
      int32_t sum = 0;
      for (int64_t j = 0; j < ACT_BLOCK; j++) {
        float v = std::min(127.f, std::max(-127.f, std::nearbyint(xb[j] / s)));
        qb[j] = (int8_t)(int)v;
        sum += qb[j];
      }
      scale[i * nb + b] = s;
      bsum[i * nb + b] = sum;
      bcorr[i * nb + b] = s * (float)sum;
    }
  }
}

void interleave_act_blocks(const int8_t* q, const float* scale, const int32_t* bsum, int64_t m,
                           int64_t k, int64_t i0, int64_t i1, int8_t* qt, int32_t* tnbsum,
                           float* tscale) {
  const int64_t nb = k / ACT_BLOCK, steps = ACT_BLOCK / 4;
  const int64_t end = i1 == m ? token_groups(m) * TOKEN_GROUP : i1;
  for (int64_t i = i0; i < end; i++) {
    const int64_t g = i / TOKEN_GROUP, t = i % TOKEN_GROUP;
    for (int64_t b = 0; b < nb; b++) {
      const int64_t gb = g * nb + b;
      for (int64_t s = 0; s < steps; s++) {
        int8_t* dst = qt + ((gb * steps + s) * TOKEN_GROUP + t) * 4;
        if (i < m) std::memcpy(dst, q + i * k + b * ACT_BLOCK + s * 4, 4);
        else std::memset(dst, 0, 4);
      }
      tnbsum[gb * TOKEN_GROUP + t] = i < m ? -bsum[i * nb + b] : 0;
      tscale[gb * TOKEN_GROUP + t] = i < m ? scale[i * nb + b] : 0.f;
    }
  }
}

static void matmul_f_scalar(const WeightView& w, const float* x, int64_t m, int64_t ldx,
                            float* y, int64_t ldy, int64_t r0, int64_t r1, float* scratch) {
  const int64_t k = w.k;
  for (int64_t r = r0; r < r1; r++) {
    const float* wr;
    if (w.kind == W_F32) {
      wr = reinterpret_cast<const float*>(w.row(r));
    } else {
      dequant_row(w, r, scratch);
      wr = scratch;
    }
    for (int64_t i = 0; i < m; i++) {
      const float* xi = x + i * ldx;
      float acc = 0.f;
      for (int64_t j = 0; j < k; j++) acc += xi[j] * wr[j];
      y[i * ldy + r] = acc;
    }
  }
}

// Exact integer sum per group, then scaled in float: y = s_x * sum_g s_g * sum (w - zw)(q - z).
static void matmul_q_scalar(const WeightView& w, const QActs& a, float* y, int64_t ldy,
                            int64_t r0, int64_t r1, float*) {
  const int64_t k = w.k, g = w.group, ng = k / g;
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* row = w.row(r);
    const uint16_t* sc = w.scale + r * ng;
    const uint8_t* zp = w.zp ? w.zp + r * ng : nullptr;
    for (int64_t i = 0; i < a.m; i++) {
      const int8_t* qi = a.q + i * k;
      const int32_t z = a.zero[i];
      float acc = 0.f;
      for (int64_t gi = 0; gi < ng; gi++) {
        int32_t t = 0;
        for (int64_t j = gi * g; j < (gi + 1) * g; j++) {
          const int32_t wv = centered_at(w, row, zp, gi, j);
          t += wv * ((int32_t)qi[j] - z);
        }
        acc += fp16_to_f32(sc[gi]) * (float)t;
      }
      y[i * ldy + r] = a.scale[i] * acc;
    }
  }
}

// Exact integer sum per activation block, scaled by the block's and the weight group's scales.
static void matmul_qb_scalar(const WeightView& w, const QActs& a, float* y, int64_t ldy,
                             int64_t r0, int64_t r1, float*) {
  const int64_t k = w.k, g = w.group, ng = k / g, nb = k / ACT_BLOCK;
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* row = w.row(r);
    const uint16_t* sc = w.scale + r * ng;
    const uint8_t* zp = w.zp ? w.zp + r * ng : nullptr;
    for (int64_t i = 0; i < a.m; i++) {
      const int8_t* qi = a.q + i * k;
      float acc = 0.f;
      for (int64_t b = 0; b < nb; b++) {
        const int64_t gi = b * ACT_BLOCK / g;
        int32_t t = 0;
        for (int64_t j = b * ACT_BLOCK; j < (b + 1) * ACT_BLOCK; j++) {
          const int32_t wv = centered_at(w, row, zp, gi, j);
          t += wv * (int32_t)qi[j];
        }
        acc += fp16_to_f32(sc[gi]) * (a.scale[i * nb + b] * (float)t);
      }
      y[i * ldy + r] = acc;
    }
  }
}

static float dot_scalar(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
  return acc;
}

static void axpy_scalar(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void scores_scalar(const float* const* q, int nq, const float* K, int64_t n, int64_t d,
                          float scale, float* const* out) {
  for (int i = 0; i < nq; i++)
    for (int64_t t = 0; t < n; t++) {
      float acc = 0.f;
      for (int64_t j = 0; j < d; j++) acc += q[i][j] * K[kt_index(t, j, d)];
      out[i][t] = scale * acc;
    }
}

static void weighted_sum_scalar(const float* const* p, int nq, const float* V, int64_t n,
                                int64_t d, float* const* out) {
  for (int i = 0; i < nq; i++) {
    for (int64_t j = 0; j < d; j++) out[i][j] = 0.f;
    for (int64_t t = 0; t < n; t++)
      for (int64_t j = 0; j < d; j++) out[i][j] += p[i][t] * V[t * d + j];
  }
}

static float exp_sum_scalar(float* x, int64_t n, float shift) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; i++) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

static void silu_mul_scalar(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

constexpr Kernels SCALAR_KERNELS = {
    .name = "scalar",
    .matmul_f = matmul_f_scalar,
    .matmul_q = matmul_q_scalar,
    .matmul_qb = matmul_qb_scalar,
    .dot = dot_scalar,
    .axpy = axpy_scalar,
    .scores = scores_scalar,
    .weighted_sum = weighted_sum_scalar,
    .exp_sum = exp_sum_scalar,
    .silu_mul = silu_mul_scalar,
    .quantize_blocks = quantize_acts_blocks,
};

}  // namespace edge
