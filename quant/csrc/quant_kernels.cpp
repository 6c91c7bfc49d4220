// The quantizer's inner loops for integer weight schemes, in C++: GPTQ's column loop over one
// block of columns (quant/algorithms/gptq.py: the per-column rounding, its error pushed onto the
// block's later columns, each group's scales and zero points chosen when its first column is
// reached), the fake quantization of the AWQ searches (IntWeight.fake_quantize in
// quant/schemes/intx.py, optionally after clipping each group) and AWQ's clipping search.
//
// Every value equals the one the torch code computes: the same IEEE operations on the same fp32
// operands in the same order per element (this file is compiled without floating-point
// contraction, so a * b - c is two roundings, as two torch ops are). The one exception is the
// clipping search's error sums, added in another order than torch's batched product: it picks
// the torch code's candidate except where two candidates' errors agree to rounding. Rows are
// independent in all three (GPTQ's rows share H, not values), so threads take disjoint rows.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

// The arrays are worked on in place: they must be C-contiguous float32 already (never a
// converted copy, which would drop the results).
float* f32(py::array& a, int64_t size, const char* what) {
  if (!a.dtype().is(py::dtype::of<float>()) || !(a.flags() & py::array::c_style) ||
      !a.writeable())
    throw py::type_error(std::string("quant kernels: ") + what +
                         " must be a writeable C-contiguous float32 array");
  if (a.size() != size) throw py::value_error(std::string("quant kernels: wrong size for ") + what);
  return static_cast<float*>(a.mutable_data());
}

struct Scheme {
  int qmin, qmax;
  bool symmetric, eight_bit;
  int scale_kind;          // 0: fp16, 1: bf16 (quant/schemes/base.py SCALE_ROUNDING)
  float scale_lo, scale_hi;  // the clamp applied before rounding
};

inline float bits_f(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t f_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

// torch.round: to nearest, ties to even, the sign kept (-0.3 -> -0.0). Adding and subtracting
// 2^23 (with x's sign) rounds in the default mode without a libm call (std::nearbyint is one
// where the baseline x86-64 has no rounding instruction); magnitudes of 2^23 and above are
// whole already.
inline float round_even(float x) {
  const float magic = std::copysign(0x1p23f, x);
  const float r = std::copysign((x + magic) - magic, x);
  return std::fabs(x) < 0x1p23f ? r : x;
}

// Round a finite fp32 in the clamp range to fp16 (10 mantissa bits) or bf16 (7), nearest even.
// Within fp16's normal range both are plain mantissa roundings of the fp32 value.
inline float round_scale(float s, const Scheme& sc) {
  s = std::min(std::max(s, sc.scale_lo), sc.scale_hi);
  uint32_t b = f_bits(s);
  const int drop = sc.scale_kind == 0 ? 13 : 16;
  const uint32_t half = (1u << (drop - 1)) - 1 + ((b >> drop) & 1u);
  b = (b + half) & ~((1u << drop) - 1);
  return bits_f(b);
}

// IntWeight.choose_qparams for one row of one group: v[t] for t < g.
template <class Get>
inline void qparams(Get v, int64_t g, const Scheme& sc, float* scale, float* zp) {
  float hi = v(0), lo = v(0);
  int64_t t = 1;
  if (g % 8 == 0) {  // eight running extremes (element-wise, so the compiler vectorizes them)
    float h8[8], l8[8];
    for (int i = 0; i < 8; i++) h8[i] = l8[i] = v(i);
    for (t = 8; t < g; t += 8) {
      for (int i = 0; i < 8; i++) {
        const float x = v(t + i);
        h8[i] = x > h8[i] ? x : h8[i];
        l8[i] = x < l8[i] ? x : l8[i];
      }
    }
    for (int i = 0; i < 8; i++) {
      hi = h8[i] > hi ? h8[i] : hi;
      lo = l8[i] < lo ? l8[i] : lo;
    }
  }
  for (; t < g; t++) {
    float x = v(t);
    hi = std::max(hi, x);
    lo = std::min(lo, x);
  }
  if (sc.symmetric) {
    if (sc.eight_bit) {
      float amax = std::max(std::fabs(hi), std::fabs(lo));
      *scale = round_scale(amax / (float)sc.qmax, sc);
      *zp = 0.0f;
      return;
    }
    float extreme = hi >= -lo ? hi : lo;
    if (hi == -lo) {  // equal magnitudes: the first value of largest magnitude decides
      for (int64_t t = 0; t < g; t++) {
        if (std::fabs(v(t)) == hi) { extreme = v(t); break; }
      }
    }
    float div = extreme < 0 ? (float)(-sc.qmin) : (float)sc.qmax;
    *scale = round_scale(std::fabs(extreme) / div, sc);
    *zp = 0.0f;
    return;
  }
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  float s = round_scale((hi - lo) / (float)(sc.qmax - sc.qmin), sc);
  float z = round_even(-lo / s);
  *scale = s;
  *zp = std::min(std::max(z, (float)sc.qmin), (float)sc.qmax);
}

struct Block {
  float* wt;          // (bw, out): the block's columns as rows, updated in place
  const float* ub;    // (bw, bw) of U, upper triangular
  const float* w;     // (out, n): the whole weight, for groups reaching past the block
  int64_t n, out, bw, b0, b1, g;
  float* q;           // (bw, out) rounded values (zero point added)
  float* err;         // (out, bw) scaled errors
  float* scales;      // (groups starting in the block, out)
  float* zps;         // same, or nullptr (symmetric)
  const float* open_scale;  // (out): the group in progress when b0 is inside one
  const float* open_zp;     // same, or nullptr
};

void run_rows(const Block& B, const Scheme& sc, int64_t r0, int64_t r1) {
  const int64_t out = B.out, bw = B.bw;
  const float *cur_s = B.open_scale, *cur_z = B.open_zp;
  int64_t gi = 0;
  const float qmin = (float)sc.qmin, qmax = (float)sc.qmax;
  std::vector<float> e(r1 - r0);
  for (int64_t j = 0; j < bw; j++) {
    const int64_t col = B.b0 + j;
    if (col % B.g == 0) {
      float* s = B.scales + gi * out;
      float* zs = B.zps ? B.zps + gi * out : nullptr;
      gi++;
      for (int64_t r = r0; r < r1; r++) {
        auto v = [&](int64_t t) {
          return j + t < bw ? B.wt[(j + t) * out + r] : B.w[r * B.n + B.b1 + (j + t - bw)];
        };
        float z;
        qparams(v, B.g, sc, &s[r], &z);
        if (zs) zs[r] = z;
      }
      cur_s = s;
      cur_z = zs;
    }
    const float d = B.ub[j * bw + j];
    float* x = B.wt + j * out;
    float* qj = B.q + j * out;
    for (int64_t r = r0; r < r1; r++) {
      const float s = cur_s[r];
      float q = round_even(x[r] / s);
      float deq;
      if (cur_z) {
        const float z = cur_z[r];
        q = std::min(std::max(q + z, qmin), qmax);
        deq = (q - z) * s;
      } else {
        q = std::min(std::max(q, qmin), qmax);
        deq = q * s;
      }
      qj[r] = q;
      const float ej = (x[r] - deq) / d;
      e[r - r0] = ej;
      B.err[r * bw + j] = ej;
    }
    for (int64_t c = j + 1; c < bw; c++) {
      const float u = B.ub[j * bw + c];
      float* wc = B.wt + c * out;
      for (int64_t r = r0; r < r1; r++) {
        const float p = u * e[r - r0];
        wc[r] = wc[r] - p;
      }
    }
  }
}

Scheme scheme_of(int bits, bool symmetric, int scale_kind, float scale_lo, float scale_hi) {
  if (bits < 2 || bits > 8) throw py::value_error("quant kernels: bits must be in 2..8");
  Scheme sc{};
  sc.symmetric = symmetric;
  sc.eight_bit = bits == 8;
  sc.qmin = symmetric ? -(1 << (bits - 1)) : 0;
  sc.qmax = symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
  sc.scale_kind = scale_kind;
  sc.scale_lo = scale_lo;
  sc.scale_hi = scale_hi;
  return sc;
}

// fn(r0, r1) over disjoint row ranges, one per thread (at least 16 rows each).
template <class F>
void on_threads(int64_t rows, int threads, F fn) {
  int nt = (int)std::max<int64_t>(1, std::min<int64_t>(threads, rows / 16));
  if (nt == 1) return fn(0, rows);
  std::vector<std::thread> pool;
  const int64_t step = (rows + nt - 1) / nt;
  for (int t = 1; t < nt; t++) {
    int64_t r0 = t * step, r1 = std::min(rows, r0 + step);
    if (r0 < r1) pool.emplace_back(fn, r0, r1);
  }
  fn(0, std::min(rows, step));
  for (auto& th : pool) th.join();
}

void gptq_block(py::array wt, py::array ub, py::array w, int64_t b0, int64_t g, int bits,
                bool symmetric, int scale_kind, float scale_lo, float scale_hi, py::array q,
                py::array err, py::array scales, py::object zps, py::object open_scale,
                py::object open_zp, int threads) {
  if (wt.ndim() != 2 || w.ndim() != 2) throw py::value_error("gptq_block: 2-D arrays expected");
  Block B{};
  B.bw = wt.shape(0);
  B.out = wt.shape(1);
  B.n = w.shape(1);
  B.b0 = b0;
  B.b1 = b0 + B.bw;
  B.g = g;
  if (w.shape(0) != B.out || B.b1 > B.n || g <= 0 || B.n % g)
    throw py::value_error("gptq_block: shapes or scheme do not agree");
  const int64_t groups = (B.b1 - 1) / g - (b0 + g - 1) / g + 1;
  B.wt = f32(wt, B.bw * B.out, "wt");
  B.ub = f32(ub, B.bw * B.bw, "ub");
  B.w = f32(w, B.out * B.n, "w");
  B.q = f32(q, B.bw * B.out, "q");
  B.err = f32(err, B.bw * B.out, "err");
  B.scales = f32(scales, groups * B.out, "scales");
  if (!zps.is_none()) {
    py::array z = zps;
    B.zps = f32(z, groups * B.out, "zps");
  }
  if (b0 % g) {  // the block starts inside a group: its scales come from an earlier block
    if (open_scale.is_none() || (B.zps != nullptr) == open_zp.is_none())
      throw py::value_error("gptq_block: the block starts inside a group; pass its scales");
    py::array os = open_scale;
    B.open_scale = f32(os, B.out, "open_scale");
    if (!open_zp.is_none()) {
      py::array oz = open_zp;
      B.open_zp = f32(oz, B.out, "open_zp");
    }
  }
  const Scheme sc = scheme_of(bits, symmetric, scale_kind, scale_lo, scale_hi);
  py::gil_scoped_release nogil;
  on_threads(B.out, threads, [&](int64_t r0, int64_t r1) { run_rows(B, sc, r0, r1); });
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// The same source compiled for AVX-512 and AVX2 too, chosen at load time: the divisions and
// roundings vectorize, and the values stay the baseline's (no contraction in any clone).
#define EDGE_QUANT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EDGE_QUANT_CLONES
#endif

// One group of g values x, clamped to +-*bound first when bound is given (v: g floats of
// scratch), quantized with its own scale and dequantized into y: IntWeight.fake_quantize's
// operations per element. Inlined into each target clone.
__attribute__((always_inline)) inline void fq_group(const float* x, const float* bound, int64_t g,
                                                    const Scheme& sc, float* v, float* y) {
  const float qmin = (float)sc.qmin, qmax = (float)sc.qmax;
  if (bound) {
    const float b = *bound, nb = -b;
    for (int64_t t = 0; t < g; t++) {
      const float c = x[t] < b ? x[t] : b;
      v[t] = c > nb ? c : nb;
    }
  } else {
    std::memcpy(v, x, g * sizeof(float));
  }
  float s, z;
  qparams([&](int64_t t) { return v[t]; }, g, sc, &s, &z);
  if (sc.symmetric) {
    for (int64_t t = 0; t < g; t++) {
      const float q = round_even(v[t] / s);
      y[t] = std::min(std::max(q, qmin), qmax) * s;
    }
  } else {
    for (int64_t t = 0; t < g; t++) {
      const float q = round_even(v[t] / s);
      y[t] = (std::min(std::max(q + z, qmin), qmax) - z) * s;
    }
  }
}

EDGE_QUANT_CLONES
void fq_rows(const float* src, float* dst, const float* bnd, int64_t r0, int64_t r1, int64_t n,
             int64_t g, const Scheme& sc) {
  const int64_t ng = n / g;
  std::vector<float> v(g);
  for (int64_t r = r0; r < r1; r++)
    for (int64_t k = 0; k < ng; k++)
      fq_group(src + r * n + k * g, bnd ? bnd + r * ng + k : nullptr, g, sc, v.data(),
               dst + r * n + k * g);
}

// IntWeight.fake_quantize of w (rows, n) into out, value for value; with `bound` (rows,
// n / g), each group first clamped to +-bound (AWQ's clipping search).
void fake_quantize(py::array w, int64_t g, int bits, bool symmetric, int scale_kind,
                   float scale_lo, float scale_hi, py::object bound, py::array out,
                   int threads) {
  if (w.ndim() != 2) throw py::value_error("fake_quantize: a 2-D weight expected");
  const int64_t rows = w.shape(0), n = w.shape(1);
  if (g <= 0 || n % g) throw py::value_error("fake_quantize: the group does not divide the row");
  const int64_t ng = n / g;
  const float* src = f32(w, rows * n, "w");
  float* dst = f32(out, rows * n, "out");
  const float* bnd = nullptr;
  if (!bound.is_none()) {
    py::array b = bound;
    bnd = f32(b, rows * ng, "bound");
  }
  const Scheme sc = scheme_of(bits, symmetric, scale_kind, scale_lo, scale_hi);
  py::gil_scoped_release nogil;
  on_threads(rows, threads, [&](int64_t r0, int64_t r1) {
    fq_rows(src, dst, bnd, r0, r1, n, g, sc);
  });
}

// e[i] = d_i G d_i^T for the nc rows d_i of D (nc a multiple of CLIP_CB, rows past the real
// candidates zero). Four candidates and sixteen columns at a time: the accumulators stay in
// registers and their sums are independent, so the products issue back to back.
constexpr int64_t CLIP_CB = 4, CLIP_TW = 16;
// sixteen fp32 lanes: one AVX-512 register, two AVX2 ones, four SSE ones (GCC / clang vectors)
typedef float ClipLanes __attribute__((vector_size(CLIP_TW * sizeof(float))));

__attribute__((always_inline)) inline void group_errors(const float* D, const float* G, int64_t nc,
                                                        int64_t g, float* e) {
  for (int64_t i = 0; i < nc; i++) e[i] = 0.0f;
  if (g % CLIP_TW) {
    for (int64_t i = 0; i < nc; i++)
      for (int64_t u = 0; u < g; u++) {
        float y = 0.0f;
        for (int64_t t = 0; t < g; t++) y += G[u * g + t] * D[i * g + t];
        e[i] += D[i * g + u] * y;
      }
    return;
  }
  for (int64_t i0 = 0; i0 < nc; i0 += CLIP_CB) {
    const float* Di = D + i0 * g;
    for (int64_t t0 = 0; t0 < g; t0 += CLIP_TW) {
      ClipLanes acc[CLIP_CB] = {};
      for (int64_t u = 0; u < g; u++) {
        ClipLanes gu;
        std::memcpy(&gu, G + u * g + t0, sizeof gu);
        for (int64_t c = 0; c < CLIP_CB; c++) acc[c] += Di[c * g + u] * gu;
      }
      for (int64_t c = 0; c < CLIP_CB; c++) {
        ClipLanes dc;
        std::memcpy(&dc, Di + c * g + t0, sizeof dc);
        const ClipLanes p = acc[c] * dc;
        float part = 0.0f;
        for (int64_t t = 0; t < CLIP_TW; t++) part += p[t];
        e[i0 + c] += part;
      }
    }
  }
}

// AWQ's clipping search (quant/algorithms/awq.py search_clip): for each row and group of w, the
// bound amax * ratios[i] whose fake-quantized group has the smallest output error d G d^T on
// the calibration inputs (d the group's dequantized minus original values, G the group's
// (g, g) Gram matrix of the inputs); the first smallest in the order given. One pass over w,
// each group's candidates worked in L1 instead of a tensor per candidate.
EDGE_QUANT_CLONES
void clip_rows(const float* w, const float* gram, const float* ratios, int64_t nr, float* bounds,
               int64_t r0, int64_t r1, int64_t n, int64_t g, const Scheme& sc) {
  const int64_t ng = n / g;
  const int64_t nc = (nr + CLIP_CB - 1) / CLIP_CB * CLIP_CB;
  std::vector<float> buf(g + nc * g + nc, 0.0f);
  float *v = buf.data(), *D = v + g, *e = D + nc * g;
  for (int64_t r = r0; r < r1; r++) {
    for (int64_t k = 0; k < ng; k++) {
      const float* x = w + r * n + k * g;
      float amax = 0.0f;
      for (int64_t t = 0; t < g; t++) amax = std::max(amax, std::fabs(x[t]));
      for (int64_t i = 0; i < nr; i++) {
        const float b = amax * ratios[i];
        float* d = D + i * g;
        fq_group(x, &b, g, sc, v, d);
        for (int64_t t = 0; t < g; t++) d[t] -= x[t];
      }
      group_errors(D, gram + k * g * g, nc, g, e);
      float best_err = INFINITY, best = amax;
      for (int64_t i = 0; i < nr; i++) {
        if (e[i] < best_err) {
          best_err = e[i];
          best = amax * ratios[i];
        }
      }
      bounds[r * ng + k] = best;
    }
  }
}

void clip_search(py::array w, py::array gram, py::array ratios, int64_t g, int bits,
                 bool symmetric, int scale_kind, float scale_lo, float scale_hi,
                 py::array bounds, int threads) {
  if (w.ndim() != 2) throw py::value_error("clip_search: a 2-D weight expected");
  const int64_t rows = w.shape(0), n = w.shape(1);
  if (g <= 0 || n % g) throw py::value_error("clip_search: the group does not divide the row");
  const int64_t ng = n / g, nr = ratios.size();
  const float* src = f32(w, rows * n, "w");
  const float* G = f32(gram, ng * g * g, "gram");
  const float* rt = f32(ratios, nr, "ratios");
  float* dst = f32(bounds, rows * ng, "bounds");
  const Scheme sc = scheme_of(bits, symmetric, scale_kind, scale_lo, scale_hi);
  py::gil_scoped_release nogil;
  on_threads(rows, threads, [&](int64_t r0, int64_t r1) {
    clip_rows(src, G, rt, nr, dst, r0, r1, n, g, sc);
  });
}

}  // namespace

PYBIND11_MODULE(_native, mod) {
  mod.doc() = "llama-edge quantizer kernels";
  mod.def("gptq_block", &gptq_block, py::arg("wt"), py::arg("ub"), py::arg("w"), py::arg("b0"),
          py::arg("g"), py::arg("bits"), py::arg("symmetric"), py::arg("scale_kind"),
          py::arg("scale_lo"), py::arg("scale_hi"), py::arg("q"), py::arg("err"),
          py::arg("scales"), py::arg("zps"), py::arg("open_scale"), py::arg("open_zp"),
          py::arg("threads"));
  mod.def("fake_quantize", &fake_quantize, py::arg("w"), py::arg("g"), py::arg("bits"),
          py::arg("symmetric"), py::arg("scale_kind"), py::arg("scale_lo"),
          py::arg("scale_hi"), py::arg("bound"), py::arg("out"), py::arg("threads"));
  mod.def("clip_search", &clip_search, py::arg("w"), py::arg("gram"), py::arg("ratios"),
          py::arg("g"), py::arg("bits"), py::arg("symmetric"), py::arg("scale_kind"),
          py::arg("scale_lo"), py::arg("scale_hi"), py::arg("bounds"), py::arg("threads"));
}
