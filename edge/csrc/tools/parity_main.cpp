// Parity check of the SIMD kernel sets against the scalar reference, as a standalone program
// (no Python), so the Arm sets can be checked on an x86 machine under qemu-user:
//
//   parity_main               every kernel set this CPU runs (other than scalar) against
//                             SCALAR_KERNELS on seeded random cases; one line per
//                             (set, kernel, weight kind), then "PARITY OK <n> cases"
//   parity_main --list        the sets this CPU runs and the one chosen by default
//   parity_main --inject-error  perturbs the first checked output: must report a failure
//
// Exits 1 with a line naming set, kernel, kind and shape at the first mismatch.
// Built from the kernel tier alone (edge/csrc/kernels: scalar, x86, arm, acts and dispatch), with
// edge/csrc as the include root; the runtime is not linked.
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/acts.h"
#include "kernels/kernels.h"

using namespace edge;

namespace {

// Tolerances, as errors normalized by the magnitude of the summed terms (see `magnitude_*`):
// float sums of the same k terms in any order differ by at most ~k * 2^-24 of sum |term|, and
// random-sign rounding errors grow like sqrt(k) * 2^-24 (about 2e-6 at k = 1536). 1e-5 bounds
// the reordered (SIMD lanes, fused multiply-add) float accumulation; a wrong index, nibble,
// scale or zero point moves the result by a sizeable fraction of the magnitude.
constexpr double TOL_FLOAT = 1e-5;
// Int8-activation products: the per-group integer sums are exact, only the float accumulation
// of scaled group sums (and the activation zero point applied through rowsum) is reordered.
constexpr double TOL_INT8_ACTS = 1e-5;
// Vector exponentials (range reduction + degree-6 polynomial, ~2 ulp) against std::exp
// (correctly rounded in practice), relative to each value: a few ulp, plus the division of the
// SwiGLU gate. A wrong coefficient or exponent shows as 1e-3 or more.
constexpr double TOL_EXP = 1e-6;
// Below this, values count as zero: the clamped exponent makes silu(-200) -8e-37 where the
// reference overflows to exp = inf and returns -0.
constexpr double EXP_FLOOR = 1e-20;
// Floor of the normalizer, for outputs whose terms are all zero (an all-zero activation row).
constexpr double MAG_FLOOR = 1e-6;
// Dequantization of one value is a single exact product of representable values.
constexpr double TOL_DEQUANT = 0.0;
constexpr uint64_t SEED = 0x5eed2024edceULL;

// splitmix64: the same sequence on every platform and standard library.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  int range(int lo, int hi) { return lo + (int)(next() % (uint64_t)(hi - lo + 1)); }  // [lo, hi]
  float uniform(float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(next() >> 11) * (1.0 / 9007199254740992.0));
  }
};

// Weight variants under test: a kind and whether zero points are stored (asymmetric).
struct Variant {
  const char* name;
  int kind;
  bool zp;
};
const Variant VARIANTS[] = {
    {"f32", W_F32, false}, {"f16", W_F16, false}, {"bf16", W_BF16, false},
    {"q8", W_Q8, false},   {"q8u", W_Q8U, true},  {"q4_sym", W_Q4, false},
    {"q4_asym", W_Q4, true}, {"f8", W_F8, false}, {"q5_sym", W_Q5, false},
    {"q5_asym", W_Q5, true},  {"q6_sym", W_Q6, false}, {"q6_asym", W_Q6, true},
};
bool is_float_kind(int kind) { return kind <= W_BF16; }
bool has_int8_path(int kind) { return int_kind(kind); }

// Positive normal fp16 between 2^-8 and 2^-1 (the range of weight scales).
uint16_t random_scale(Rng& g) { return (uint16_t)((g.range(7, 13) << 10) | g.range(0, 1023)); }

// A weight with its own storage, its dequantized rows (scalar dequant_row) and rowsum.
struct Weight {
  WeightView v;
  std::vector<uint8_t> data, zp;
  std::vector<uint16_t> scale;
  std::vector<float> rowsum, deq;
  std::vector<uint8_t> q4_values;  // unpacked 4- to 6-bit values (u), for the layout check
};

Weight make_weight(Rng& g, const Variant& var, int64_t n, int64_t k, int64_t group) {
  Weight w;
  const int kind = var.kind;
  WeightView& v = w.v;
  v.kind = kind;
  v.n = n;
  v.k = k;
  v.group = is_float_kind(kind) ? k : group;
  w.data.resize((size_t)(n * v.row_bytes()));
  const int64_t cells = n * k;
  switch (kind) {
    case W_F32:
      for (int64_t i = 0; i < cells; i++) {
        float f = g.uniform(-1.f, 1.f);
        std::memcpy(&w.data[i * 4], &f, 4);
      }
      break;
    case W_F16:
      for (int64_t i = 0; i < cells; i++) {
        // mostly normals in [2^-4, 2^2), one in 32 subnormal or zero
        int e = g.range(0, 31) == 0 ? 0 : g.range(11, 16);
        uint16_t h = (uint16_t)((g.range(0, 1) << 15) | (e << 10) | g.range(0, 1023));
        std::memcpy(&w.data[i * 2], &h, 2);
      }
      break;
    case W_BF16:
      for (int64_t i = 0; i < cells; i++) {
        uint16_t h = (uint16_t)((g.range(0, 1) << 15) | (g.range(123, 128) << 7) | g.range(0, 127));
        std::memcpy(&w.data[i * 2], &h, 2);
      }
      break;
    case W_Q8: case W_Q8U:
      for (auto& b : w.data) b = (uint8_t)g.range(0, 255);
      break;
    case W_F8:
      for (auto& b : w.data) {
        do b = (uint8_t)g.range(0, 255); while ((b & 0x7f) == 0x7f);  // skip the NaN patterns
      }
      break;
    case W_Q4: case W_Q5: case W_Q6: {
      const int bits = kind_bits(kind);
      const int64_t rb = run64_bytes(kind);
      w.q4_values.resize((size_t)cells);
      for (auto& u : w.q4_values) u = (uint8_t)g.range(0, (1 << bits) - 1);
      // 64 values -> 32 bytes: byte j = value j (low nibble) | value j + 32 (high nibble); then
      // the high bits: 6-bit, byte i bits 2c, 2c + 1 = bits 4, 5 of value i + 16 c; 5-bit, byte
      // i bit c = bit 4 of value i + 8 c
      for (int64_t r = 0; r < n; r++)
        for (int64_t b = 0; b < k / 64; b++) {
          const uint8_t* u = &w.q4_values[r * k + b * 64];
          uint8_t* run = &w.data[r * (k / 64) * rb + b * rb];
          for (int j = 0; j < 32; j++) run[j] = (uint8_t)((u[j] & 15) | ((u[j + 32] & 15) << 4));
          if (bits == 6)
            for (int i = 0; i < 16; i++)
              run[32 + i] = (uint8_t)((u[i] >> 4) | ((u[i + 16] >> 4) << 2) |
                                      ((u[i + 32] >> 4) << 4) | ((u[i + 48] >> 4) << 6));
          if (bits == 5)
            for (int i = 0; i < 8; i++) {
              uint8_t h = 0;
              for (int c = 0; c < 8; c++) h |= (uint8_t)((u[i + 8 * c] >> 4) << c);
              run[32 + i] = h;
            }
        }
      break;
    }
  }
  v.data = w.data.data();
  if (!is_float_kind(kind)) {
    const int64_t ng = n * (k / group);
    w.scale.resize((size_t)ng);
    for (auto& s : w.scale) s = random_scale(g);
    v.scale = w.scale.data();
    if (var.zp) {
      w.zp.resize((size_t)ng);
      for (auto& z : w.zp)
        z = (uint8_t)(low_bit(kind) ? g.range(0, (1 << kind_bits(kind)) - 1) : g.range(0, 255));
      v.zp = w.zp.data();
    }
  }
  w.deq.resize((size_t)cells);
  w.rowsum.resize((size_t)n);
  for (int64_t r = 0; r < n; r++) {
    dequant_row(v, r, &w.deq[r * k]);
    double s = 0.0;
    for (int64_t j = 0; j < k; j++) s += w.deq[r * k + j];
    w.rowsum[r] = (float)s;
  }
  if (has_int8_path(kind)) v.rowsum = w.rowsum.data();
  return w;
}

// m activation rows of k values with row stride ldx. Row 1 is all zero, row 2 carries one
// large outlier and row 3 is all positive (activation zero point at its -128 bound).
std::vector<float> make_acts(Rng& g, int64_t m, int64_t k, int64_t ldx) {
  std::vector<float> x((size_t)(m * ldx), 0.f);
  for (int64_t i = 0; i < m; i++) {
    float* xi = &x[i * ldx];
    const float amp = g.uniform(0.25f, 4.f);
    if (i == 1) continue;
    for (int64_t j = 0; j < k; j++) xi[j] = amp * g.uniform(-1.f, 1.f);
    if (i == 2) xi[g.range(0, (int)k - 1)] = 80.f * amp;
    if (i == 3)
      for (int64_t j = 0; j < k; j++) xi[j] = std::fabs(xi[j]);
  }
  return x;
}

// ------------------------------------------------------------------ bookkeeping and checks
struct Stat {
  std::string isa, kernel, kind;
  double tol, max_err;
  int cases;
};
std::vector<Stat> g_stats;
bool g_inject = false;  // --inject-error: perturb the next checked output once
long g_cases = 0;

[[noreturn]] void fail(const std::string& what) {
  std::printf("PARITY FAIL %s\n", what.c_str());
  std::fflush(stdout);
  std::exit(1);
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

void record(const std::string& isa, const std::string& kernel, const std::string& kind, double tol,
            double err, const std::string& shape) {
  if (!(err <= tol))
    fail(fmt("isa=%s kernel=%s kind=%s %s err=%.3e tol=%.1e", isa.c_str(), kernel.c_str(),
             kind.c_str(), shape.c_str(), err, tol));
  g_cases++;
  for (auto& s : g_stats)
    if (s.isa == isa && s.kernel == kernel && s.kind == kind) {
      s.max_err = std::max(s.max_err, err);
      s.cases++;
      return;
    }
  g_stats.push_back({isa, kernel, kind, tol, err, 1});
}

void maybe_inject(float* y, double mag) {
  if (!g_inject) return;
  g_inject = false;
  y[0] += (float)(1e-3 * std::max(mag, MAG_FLOOR));
}

// Sentinel for outputs a kernel must not write (a NaN payload no kernel produces).
constexpr uint32_t SENTINEL_BITS = 0x7fc0beefu;
float sentinel() {
  float f;
  std::memcpy(&f, &SENTINEL_BITS, 4);
  return f;
}
bool is_sentinel(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b == SENTINEL_BITS;
}

// Output buffers hold m rows of ldy values plus this many guard rows.
constexpr int64_t GUARD_ROWS = 4;

// Normalized error of an (m, n) output block with row stride ldy; fails on writes outside it.
double block_error(const std::vector<float>& y, const std::vector<float>& ref, int64_t m,
                   int64_t n, int64_t ldy, double mag, const std::string& where) {
  double err = 0.0;
  for (int64_t i = 0; i < m + GUARD_ROWS; i++)
    for (int64_t c = 0; c < ldy; c++) {
      const float a = y[i * ldy + c];
      if (i >= m || c >= n) {
        if (!is_sentinel(a)) fail(where + fmt(" wrote y[%lld][%lld] outside the output",
                                              (long long)i, (long long)c));
        continue;
      }
      if (is_sentinel(a)) fail(where + fmt(" left y[%lld][%lld] unwritten", (long long)i,
                                           (long long)c));
      const double d = std::fabs((double)a - (double)ref[i * ldy + c]);
      err = std::max(err, std::isnan(d) ? INFINITY : d);
    }
  return err / std::max(mag, MAG_FLOOR);
}

// Largest sum_j |x_ij * w_rj| over the outputs of a float product.
double magnitude_f(const Weight& w, const float* x, int64_t m, int64_t ldx) {
  const int64_t n = w.v.n, k = w.v.k;
  double mag = 0.0;
  for (int64_t i = 0; i < m; i++)
    for (int64_t r = 0; r < n; r++) {
      double s = 0.0;
      for (int64_t j = 0; j < k; j++) s += std::fabs((double)x[i * ldx + j] * w.deq[r * k + j]);
      mag = std::max(mag, s);
    }
  return mag;
}

// Largest s_x * sum_j |w_rj| * (|q_ij| + |z_i|) over the outputs of an int8-activation product:
// the magnitude of the terms of y = s_x * (sum_j q w - z * rowsum) (edge/packing.py).
double magnitude_q(const Weight& w, const QActs& a) {
  const int64_t n = w.v.n, k = w.v.k;
  double mag = 0.0;
  for (int64_t i = 0; i < a.m; i++)
    for (int64_t r = 0; r < n; r++) {
      double s = 0.0;
      for (int64_t j = 0; j < k; j++)
        s += std::fabs(w.deq[r * k + j]) * (std::abs((int)a.q[i * k + j]) + std::abs(a.zero[i]));
      mag = std::max(mag, (double)a.scale[i] * s);
    }
  return mag;
}

// Runs a row-range kernel over [0, n) in two calls split at an odd row (as worker threads
// split rows), with a guarded scratch buffer.
template <class F>
void run_split(int64_t n, int64_t k, const std::string& where, F&& call) {
  constexpr int64_t GUARD = 16;
  std::vector<float> scratch((size_t)(scratch_floats(k) + GUARD), 0.f);
  for (int64_t i = scratch_floats(k); i < (int64_t)scratch.size(); i++) scratch[i] = sentinel();
  const int64_t cut = n >= 2 ? (n / 2) | 1 : n;
  call(0, std::min(cut, n), scratch.data());
  if (cut < n) call(cut, n, scratch.data());
  for (int64_t i = scratch_floats(k); i < (int64_t)scratch.size(); i++)
    if (!is_sentinel(scratch[i])) fail(where + " wrote past scratch_floats(k)");
}

std::vector<const Kernels*> simd_sets() {
  std::vector<const Kernels*> out;
  for (int isa = ISA_SCALAR + 1; isa <= ISA_NEON_DOT; isa++)
    if (const Kernels* kt = kernels_for(isa)) out.push_back(kt);
  return out;
}

// ------------------------------------------------------------------ products
// A step of m <= STEP_MAX_TOKENS tokens (draft verification) gives each token the outputs it
// gets alone (decode), bit for bit, in every set (scalar included): speculation's greedy tokens
// equal plain decoding's only if they do.
void check_step(const std::vector<const Kernels*>& sets, const Weight& w,
                const std::vector<float>& x, int64_t m, int64_t ldx, int64_t ldy,
                const Variant& var, const std::string& shape) {
  const int64_t n = w.v.n, k = w.v.k;
  std::vector<const Kernels*> all = {&SCALAR_KERNELS};
  all.insert(all.end(), sets.begin(), sets.end());
  std::vector<float> step((size_t)((m + GUARD_ROWS) * ldy)), one((size_t)((1 + GUARD_ROWS) * ldy));
  for (const Kernels* kt : all) {
    const std::string where = fmt("isa=%s kernel=matmul_f_step kind=%s %s", kt->name, var.name,
                                  shape.c_str());
    step.assign(step.size(), sentinel());
    run_split(n, k, where, [&](int64_t r0, int64_t r1, float* sc) {
      kt->matmul_f(w.v, x.data(), m, ldx, step.data(), ldy, r0, r1, sc);
    });
    maybe_inject(step.data(), 1.0);
    double err = 0.0;  // 1 where any output differs from the token's own decode output
    for (int64_t i = 0; i < m; i++) {
      one.assign(one.size(), sentinel());
      run_split(n, k, where, [&](int64_t r0, int64_t r1, float* sc) {
        kt->matmul_f(w.v, x.data() + i * ldx, 1, ldx, one.data(), ldy, r0, r1, sc);
      });
      for (int64_t r = 0; r < n; r++)
        if (std::memcmp(&step[i * ldy + r], &one[r], sizeof(float)) != 0) err = 1.0;
    }
    record(kt->name, "matmul_f_step", var.name, 0.0, err, shape);
  }
}

void check_products(const std::vector<const Kernels*>& sets, Rng& g, const Variant& var,
                    int64_t n, int64_t k, int64_t group, int64_t m) {
  const int64_t ldx = k + (m % 2 ? 3 : 0), ldy = n + (n % 2 ? 0 : 5);
  Weight w = make_weight(g, var, n, k, group);
  if (const char* e = check_view(w.v)) fail(fmt("invalid test weight %s: %s", var.name, e));
  std::vector<float> x = make_acts(g, m, k, ldx);
  const std::string shape =
      fmt("n=%lld k=%lld group=%lld m=%lld ldx=%lld ldy=%lld", (long long)n, (long long)k,
          (long long)w.v.group, (long long)m, (long long)ldx, (long long)ldy);

  std::vector<float> ref((size_t)((m + GUARD_ROWS) * ldy), sentinel()), y;
  std::vector<float> scratch((size_t)scratch_floats(k));
  SCALAR_KERNELS.matmul_f(w.v, x.data(), m, ldx, ref.data(), ldy, 0, n, scratch.data());
  const double mag_f = magnitude_f(w, x.data(), m, ldx);
  for (const Kernels* kt : sets) {
    const std::string where = fmt("isa=%s kernel=matmul_f kind=%s %s", kt->name, var.name,
                                  shape.c_str());
    y.assign(ref.size(), sentinel());
    run_split(n, k, where, [&](int64_t r0, int64_t r1, float* sc) {
      kt->matmul_f(w.v, x.data(), m, ldx, y.data(), ldy, r0, r1, sc);
    });
    maybe_inject(y.data(), mag_f);
    record(kt->name, "matmul_f", var.name, TOL_FLOAT,
           block_error(y, ref, m, n, ldy, mag_f, where), shape);
  }
  if (m > 1 && m <= STEP_MAX_TOKENS) check_step(sets, w, x, m, ldx, ldy, var, shape);

  if (!has_int8_path(var.kind)) return;
  ActBuffers acts;
  acts.reserve(m, k);
  acts.quantize_tokens(x.data(), ldx, m, k, 0, m);
  const QActs a = acts.tokens(m, k);
  ref.assign(ref.size(), sentinel());
  SCALAR_KERNELS.matmul_q(w.v, a, ref.data(), ldy, 0, n, scratch.data());
  const double mag_q = magnitude_q(w, a);
  for (const Kernels* kt : sets) {
    const std::string where = fmt("isa=%s kernel=matmul_q kind=%s %s", kt->name, var.name,
                                  shape.c_str());
    y.assign(ref.size(), sentinel());
    run_split(n, k, where, [&](int64_t r0, int64_t r1, float* sc) {
      kt->matmul_q(w.v, a, y.data(), ldy, r0, r1, sc);
    });
    maybe_inject(y.data(), mag_q);
    record(kt->name, "matmul_q", var.name, TOL_INT8_ACTS,
           block_error(y, ref, m, n, ldy, mag_q, where), shape);
  }

  // per-block activations: weights whose groups are whole blocks
  if (k % ACT_BLOCK || w.v.group % ACT_BLOCK) return;
  const int64_t nb = k / ACT_BLOCK;
  // prompt batches also carry the tile form, prepared in two halves as threads do
  acts.quantize_blocks(quantize_acts_blocks, x.data(), ldx, m, k, 0, m / 2);
  acts.quantize_blocks(quantize_acts_blocks, x.data(), ldx, m, k, m / 2, m);
  const QActs ab = acts.blocks(m, k);
  ref.assign(ref.size(), sentinel());
  SCALAR_KERNELS.matmul_qb(w.v, ab, ref.data(), ldy, 0, n, scratch.data());
  double mag_b = 0.0;  // largest sum_j s_b(j) * |w_rj * q_ij|
  for (int64_t i = 0; i < m; i++)
    for (int64_t r = 0; r < n; r++) {
      double t = 0.0;
      for (int64_t j = 0; j < k; j++)
        t += ab.scale[i * nb + j / ACT_BLOCK] * std::fabs(w.deq[r * k + j] * ab.q[i * k + j]);
      mag_b = std::max(mag_b, t);
    }
  for (const Kernels* kt : sets) {
    const std::string where = fmt("isa=%s kernel=matmul_qb kind=%s %s", kt->name, var.name,
                                  shape.c_str());
    y.assign(ref.size(), sentinel());
    run_split(n, k, where, [&](int64_t r0, int64_t r1, float* sc) {
      kt->matmul_qb(w.v, ab, y.data(), ldy, r0, r1, sc);
    });
    maybe_inject(y.data(), mag_b);
    record(kt->name, "matmul_qb", var.name, TOL_INT8_ACTS,
           block_error(y, ref, m, n, ldy, mag_b, where), shape);
  }
}

void check_vector_ops(const std::vector<const Kernels*>& sets, Rng& g) {
  for (int64_t n = 1; n <= 130; n++) {
    // one float past each buffer start: unaligned loads; one guard value past each end
    std::vector<float> a((size_t)n + 2), b((size_t)n + 2), y0((size_t)n + 2);
    for (auto* v : {&a, &b, &y0})
      for (auto& f : *v) f = g.uniform(-2.f, 2.f);
    const float alpha = g.uniform(-3.f, 3.f);
    const float ref_dot = SCALAR_KERNELS.dot(a.data() + 1, b.data() + 1, n);
    double mag_dot = 0.0, mag_axpy = 0.0;
    for (int64_t i = 1; i <= n; i++) {
      mag_dot += std::fabs((double)a[i] * b[i]);
      mag_axpy = std::max(mag_axpy, std::fabs((double)y0[i]) + std::fabs((double)alpha * a[i]));
    }
    std::vector<float> ref_axpy = y0;
    SCALAR_KERNELS.axpy(alpha, a.data() + 1, ref_axpy.data() + 1, n);
    const std::string shape = fmt("n=%lld", (long long)n);
    for (const Kernels* kt : sets) {
      float d = kt->dot(a.data() + 1, b.data() + 1, n);
      maybe_inject(&d, mag_dot);
      record(kt->name, "dot", "f32", TOL_FLOAT,
             std::fabs((double)d - ref_dot) / std::max(mag_dot, MAG_FLOOR), shape);

      std::vector<float> y = y0;
      kt->axpy(alpha, a.data() + 1, y.data() + 1, n);
      if (std::memcmp(&y[0], &y0[0], 4) || std::memcmp(&y[n + 1], &y0[n + 1], 4))
        fail(fmt("isa=%s kernel=axpy kind=f32 %s wrote outside y", kt->name, shape.c_str()));
      maybe_inject(y.data() + 1, mag_axpy);
      double err = 0.0;
      for (int64_t i = 1; i <= n; i++) err = std::max(err, std::fabs((double)y[i] - ref_axpy[i]));
      record(kt->name, "axpy", "f32", TOL_FLOAT, err / std::max(mag_axpy, MAG_FLOOR), shape);
    }
  }
}

// Attention over cached positions: scores (q . K[t] * scale, keys in KT-position tiles) and
// weighted sums of V rows, for 1..MAX_QUERIES queries at once and head widths that fill, split
// and miss the SIMD panels.
void check_attention_ops(const std::vector<const Kernels*>& sets, Rng& g) {
  for (int64_t d : {8, 20, 64, 72, 128})
    for (int64_t n : {1, 7, 33, 130})
      for (int nq : {1, 2, 3, 5, 8, 12, MAX_QUERIES}) {
        if (d >= 128 && n >= 130 && nq > 3) continue;  // qemu time
        const int64_t np = (n + KT - 1) / KT * KT;
        std::vector<float> q((size_t)(nq * d)), K((size_t)(n * d)), Kt((size_t)(np * d), 0.f);
        std::vector<float> V((size_t)(n * d)), p((size_t)(nq * n));
        for (auto& f : q) f = g.uniform(-2.f, 2.f);
        for (auto& f : K) f = g.uniform(-2.f, 2.f);
        for (auto& f : V) f = g.uniform(-2.f, 2.f);
        for (auto& f : p) f = g.uniform(0.f, 1.f);
        for (int64_t t = 0; t < n; t++)
          for (int64_t j = 0; j < d; j++) Kt[kt_index(t, j, d)] = K[t * d + j];
        const float scale = 0.125f;
        // outputs one float apart, each followed by a guard value
        std::vector<float> ref_s((size_t)(nq * (n + 1))), ref_o((size_t)(nq * (d + 1)));
        std::vector<const float*> qs(nq), ps(nq);
        std::vector<float*> so(nq), oo(nq);
        for (int i = 0; i < nq; i++) {
          qs[i] = q.data() + i * d;
          ps[i] = p.data() + i * n;
          so[i] = ref_s.data() + i * (n + 1);
          oo[i] = ref_o.data() + i * (d + 1);
        }
        SCALAR_KERNELS.scores(qs.data(), nq, Kt.data(), n, d, scale, so.data());
        SCALAR_KERNELS.weighted_sum(ps.data(), nq, V.data(), n, d, oo.data());
        double mag_s = 0.0, mag_o = 0.0;
        for (int i = 0; i < nq; i++) {
          for (int64_t t = 0; t < n; t++) {
            double a = 0.0;
            for (int64_t j = 0; j < d; j++) a += std::fabs((double)q[i * d + j] * K[t * d + j]) * scale;
            mag_s = std::max(mag_s, a);
            // the tiled layout is the documented one
            double exact = 0.0;
            for (int64_t j = 0; j < d; j++) exact += (double)q[i * d + j] * K[t * d + j] * scale;
            if (std::fabs(exact - so[i][t]) > 1e-5 * std::max(a, 1.0))
              fail(fmt("scalar scores disagree with q . K[t] at n=%lld d=%lld", (long long)n, (long long)d));
          }
          for (int64_t j = 0; j < d; j++) {
            double a = 0.0;
            for (int64_t t = 0; t < n; t++) a += std::fabs((double)p[i * n + t] * V[t * d + j]);
            mag_o = std::max(mag_o, a);
          }
        }
        const std::string shape = fmt("n=%lld d=%lld queries=%d", (long long)n, (long long)d, nq);
        for (const Kernels* kt : sets) {
          std::vector<float> s2(ref_s.size(), sentinel()), o2(ref_o.size(), sentinel());
          std::vector<float*> so2(nq), oo2(nq);
          for (int i = 0; i < nq; i++) {
            so2[i] = s2.data() + i * (n + 1);
            oo2[i] = o2.data() + i * (d + 1);
          }
          kt->scores(qs.data(), nq, Kt.data(), n, d, scale, so2.data());
          kt->weighted_sum(ps.data(), nq, V.data(), n, d, oo2.data());
          double es = 0.0, eo = 0.0;
          for (int i = 0; i < nq; i++) {
            if (!is_sentinel(so2[i][n]) || !is_sentinel(oo2[i][d]))
              fail(fmt("isa=%s kernel=attention %s wrote past its output", kt->name, shape.c_str()));
            maybe_inject(oo2[i], mag_o);
            for (int64_t t = 0; t < n; t++) es = std::max(es, std::fabs((double)so2[i][t] - so[i][t]));
            for (int64_t j = 0; j < d; j++) eo = std::max(eo, std::fabs((double)oo2[i][j] - oo[i][j]));
          }
          record(kt->name, "scores", "f32", TOL_FLOAT, es / std::max(mag_s, MAG_FLOOR), shape);
          record(kt->name, "weighted_sum", "f32", TOL_FLOAT, eo / std::max(mag_o, MAG_FLOOR), shape);
        }
      }
}

// Softmax numerators and the SwiGLU gate: the SIMD exponentials against std::exp, relative
// to each output, over the range the model feeds them (and past both clamps).
void check_exponentials(const std::vector<const Kernels*>& sets, Rng& g) {
  for (int64_t n : {1, 5, 16, 37, 300}) {
    std::vector<float> x((size_t)n), u((size_t)n);
    for (auto& f : x) f = g.uniform(-30.f, 30.f);
    for (auto& f : u) f = g.uniform(-2.f, 2.f);
    x[0] = -200.f;
    if (n > 2) x[2] = 95.f;
    const float shift = 12.f;
    std::vector<float> e0 = x, s0 = x;
    const float sum0 = SCALAR_KERNELS.exp_sum(e0.data(), n, shift);
    SCALAR_KERNELS.silu_mul(s0.data(), u.data(), n);
    for (const Kernels* kt : sets) {
      std::vector<float> e1 = x, s1 = x;
      e1.push_back(sentinel());
      s1.push_back(sentinel());
      const float sum1 = kt->exp_sum(e1.data(), n, shift);
      kt->silu_mul(s1.data(), u.data(), n);
      if (!is_sentinel(e1[n]) || !is_sentinel(s1[n]))
        fail(fmt("isa=%s exp kernels wrote past their output", kt->name));
      double ee = std::fabs((double)sum1 - sum0) / std::max<double>(sum0, 1e-30), es = 0.0;
      for (int64_t i = 0; i < n; i++) {
        ee = std::max(ee, std::fabs((double)e1[i] - e0[i]) / std::max<double>(std::fabs(e0[i]), EXP_FLOOR));
        es = std::max(es, std::fabs((double)s1[i] - s0[i]) / std::max<double>(std::fabs(s0[i]), EXP_FLOOR));
      }
      const std::string shape = fmt("n=%lld", (long long)n);
      record(kt->name, "exp_sum", "f32", TOL_EXP, ee, shape);
      record(kt->name, "silu_mul", "f32", TOL_EXP, es, shape);
    }
  }
}

// Activation blocks: every kernel set's quantize_blocks is bit for bit the definition.
void check_quantize_blocks(const std::vector<const Kernels*>& sets, Rng& g) {
  for (int64_t m : {1, 3, 17})
    for (int64_t k : {32, 96, 576}) {
      const int64_t nb = k / ACT_BLOCK;
      std::vector<float> x((size_t)(m * k));
      for (auto& f : x) f = g.uniform(-3.f, 3.f);
      x[0] = 0.f;
      if (k > 32) std::fill(x.begin() + 32, x.begin() + 64, 0.f);  // an all-zero block
      x[(size_t)(m * k - 1)] *= 300.f;                               // an outlier
      // exact ties: values landing on .5 after division by a power-of-two scale
      for (int64_t j = 64; j < std::min<int64_t>(k, 96); j++) x[j] = (float)(j - 80) * 0.5f;
      std::vector<int8_t> q0((size_t)(m * k)), q1((size_t)(m * k));
      std::vector<float> s0((size_t)(m * nb)), s1((size_t)(m * nb)), c0((size_t)(m * nb)), c1((size_t)(m * nb));
      std::vector<int32_t> b0((size_t)(m * nb)), b1((size_t)(m * nb));
      quantize_acts_blocks(x.data(), m, k, k, q0.data(), s0.data(), b0.data(), c0.data());
      for (const Kernels* kt : sets) {
        kt->quantize_blocks(x.data(), m, k, k, q1.data(), s1.data(), b1.data(), c1.data());
        const bool same = q0 == q1 && b0 == b1 && !std::memcmp(s0.data(), s1.data(), s0.size() * 4) &&
                          !std::memcmp(c0.data(), c1.data(), c0.size() * 4);
        record(kt->name, "quantize_blocks", "f32", 0.0, same ? 0.0 : 1.0,
               fmt("m=%lld k=%lld", (long long)m, (long long)k));
      }
    }
}

// ------------------------------------------------------------------ layout definitions
// The scalar dequant_row against the documented layouts, element by element.
void check_definitions(Rng& g) {
  for (const Variant& var : VARIANTS) {
    if (!low_bit(var.kind)) continue;
    const int64_t n = 3, k = 192, group = 64;
    Weight w = make_weight(g, var, n, k, group);
    std::vector<float> row((size_t)k);
    double err = 0.0;
    for (int64_t r = 0; r < n; r++) {
      dequant_row(w.v, r, row.data());
      maybe_inject(row.data(), 1.0);
      for (int64_t j = 0; j < k; j++) {
        const int64_t gi = r * (k / group) + j / group;
        const int z = var.zp ? w.zp[gi] : low_bit_zero(var.kind);
        const double want = (double)((int)w.q4_values[r * k + j] - z) * fp16_to_f32(w.scale[gi]);
        err = std::max(err, std::fabs(row[j] - want));
      }
    }
    record("scalar", "dequant_row", var.name, TOL_DEQUANT, err, "n=3 k=192 group=64");
  }
  // e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal.
  double err = 0.0;
  for (int b = 0; b < 256; b++) {
    if ((b & 0x7f) == 0x7f) continue;
    const int e = (b >> 3) & 0xf, man = b & 7;
    double want = e == 0 ? std::ldexp(man / 8.0, -6) : std::ldexp(1.0 + man / 8.0, e - 7);
    if (b & 0x80) want = -want;
    err = std::max(err, std::fabs(fp8_to_f32((uint8_t)b) - want));
  }
  record("scalar", "fp8_to_f32", "f8", TOL_DEQUANT, err, "all 254 non-NaN bytes");
}

int list_sets() {
  for (int isa = ISA_SCALAR; isa <= ISA_NEON_DOT; isa++)
    if (kernels_for(isa)) std::printf("available %s\n", isa_name(isa));
  std::printf("best %s\n", isa_name(best_isa()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--list")) return list_sets();
    if (!std::strcmp(argv[i], "--inject-error")) {
      g_inject = true;
    } else {
      std::fprintf(stderr, "usage: %s [--list | --inject-error]\n", argv[0]);
      return 2;
    }
  }
  const std::vector<const Kernels*> sets = simd_sets();
  if (sets.empty()) std::printf("no SIMD kernel set on this CPU: only the layouts are checked\n");
  Rng g(SEED);

  const int64_t float_ks[] = {13, 64, 100, 128, 192, 576, 577, 1536};
  const int64_t quant_ks[] = {64, 128, 192, 576, 1536};
  const int64_t rows[] = {1, 3, 5, 37};
  const int64_t tokens[] = {1, 2, 3, 4, 5, 6, 7, 8, 12, 17};
  for (const Variant& var : VARIANTS) {
    auto shapes = [&](int64_t k, int64_t group) {
      for (int64_t n : rows)
        for (int64_t m : tokens) {
          if (k >= 1024 && n * m > 64) continue;  // long rows: qemu runs ~15x slower than native
          check_products(sets, g, var, n, k, group, m);
        }
    };
    if (is_float_kind(var.kind)) {
      for (int64_t k : float_ks) shapes(k, k);
    } else {
      for (int64_t k : quant_ks)
        for (int64_t group : {(int64_t)16, (int64_t)32, (int64_t)64, (int64_t)128, k}) {
          if (k % group || (group == k && k <= 128)) continue;  // k <= 128: already listed
          if (group == 16 && (low_bit(var.kind) || k > 192)) continue;  // 8-bit kinds, short rows
          shapes(k, group);
        }
    }
  }
  check_vector_ops(sets, g);
  check_attention_ops(sets, g);
  check_quantize_blocks(sets, g);
  check_exponentials(sets, g);
  check_definitions(g);

  auto rank = [&](const Stat& s) {
    for (size_t i = 0; i < sets.size(); i++)
      if (s.isa == sets[i]->name) return (int)i;
    return (int)sets.size();
  };
  std::stable_sort(g_stats.begin(), g_stats.end(),
                   [&](const Stat& a, const Stat& b) { return rank(a) < rank(b); });
  for (const Stat& s : g_stats)
    std::printf("isa=%-12s kernel=%-11s kind=%-8s cases=%-4d max_err=%.3e tol=%.0e\n",
                s.isa.c_str(), s.kernel.c_str(), s.kind.c_str(), s.cases, s.max_err, s.tol);
  std::printf("PARITY OK %ld cases\n", g_cases);
  return 0;
}
