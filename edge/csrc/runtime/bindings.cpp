// Python bindings of the kernels and the model. Every pointer that crosses this boundary comes
// from a buffer whose size is checked here against the shape it claims.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "runtime/model.h"

namespace py = pybind11;
using namespace edge;

namespace {

struct View {
  WeightView v;
  py::object keep[4];
};

const void* buffer_ptr(const py::object& o, int64_t want, const char* what, const char* format,
                       bool writable = false) {
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(o).request(writable);
  if (format && info.format != format)
    throw py::value_error(std::string(what) + ": element type '" + info.format + "', expected '" +
                          format + "'");
  if (info.ndim > 0) {
    // contiguity: strides must be C order
    int64_t expect = info.itemsize;
    for (int i = (int)info.ndim - 1; i >= 0; i--) {
      if (info.shape[i] > 1 && info.strides[i] != expect)
        throw py::value_error(std::string(what) + ": buffer is not contiguous");
      expect *= info.shape[i];
    }
  }
  const int64_t bytes = info.size * info.itemsize;
  if (bytes != want)
    throw py::value_error(std::string(what) + ": " + std::to_string(bytes) + " bytes, expected " +
                          std::to_string(want));
  return info.ptr;
}

View make_view(int kind, int64_t n, int64_t k, int64_t group, py::object data, py::object scale,
               py::object zp, py::object rowsum) {
  View out;
  WeightView& w = out.v;
  w.kind = kind;
  w.n = n;
  w.k = k;
  w.group = group;
  if (kind < W_F32 || kind > W_LAST) throw py::value_error("unknown weight kind " + std::to_string(kind));
  if (n <= 0 || k <= 0) throw py::value_error("weight shape must be positive");
  const bool quant = kind >= W_Q8;
  if (quant && (group <= 0 || k % group))
    throw py::value_error("group size " + std::to_string(group) + " does not divide " + std::to_string(k));
  if (low_bit(kind) && k % 64) throw py::value_error("4- to 6-bit rows need a multiple of 64 inputs");
  static const char* data_format[] = {"f", "e", "H", "b", "B", "B", "B", "B", "B"};
  w.data = buffer_ptr(data, n * w.row_bytes(), "weight data", data_format[kind]);
  out.keep[0] = data;
  if (quant) {
    if (scale.is_none()) throw py::value_error("quantized weight without scales");
    w.scale = static_cast<const uint16_t*>(buffer_ptr(scale, n * (k / group) * 2, "scales", "e"));
    out.keep[1] = scale;
  }
  if (!zp.is_none()) {
    w.zp = static_cast<const uint8_t*>(buffer_ptr(zp, n * (k / group), "zero points", "B"));
    out.keep[2] = zp;
  } else if (kind == W_Q8U) {
    throw py::value_error("asymmetric 8-bit weight without zero points");
  }
  if (!rowsum.is_none()) {
    w.rowsum = static_cast<const float*>(buffer_ptr(rowsum, n * 4, "row sums", "f"));
    out.keep[3] = rowsum;
  }
  if (const char* e = check_view(w)) throw py::value_error(e);
  return out;
}

int isa_from(const std::string& name) {
  if (name.empty() || name == "auto") return best_isa();
  for (int i = ISA_SCALAR; i <= ISA_NEON_DOT; i++)
    if (name == isa_name(i)) return i;
  throw py::value_error("unknown instruction set '" + name + "'");
}

const Kernels& kernels_named(const std::string& name) {
  const Kernels* k = kernels_for(isa_from(name));
  if (!k) throw py::value_error("instruction set '" + name + "' is not available on this CPU");
  return *k;
}

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

struct PyModel {
  std::unique_ptr<Model> m;
  std::vector<py::object> keep;
  int isa;
};

}  // namespace

PYBIND11_MODULE(_kernels, mod) {
  mod.doc() = "llama-edge compute kernels and Llama forward pass";
  mod.attr("W_F32") = (int)W_F32;
  mod.attr("W_F16") = (int)W_F16;
  mod.attr("W_BF16") = (int)W_BF16;
  mod.attr("W_Q8") = (int)W_Q8;
  mod.attr("W_Q8U") = (int)W_Q8U;
  mod.attr("W_Q4") = (int)W_Q4;
  mod.attr("W_F8") = (int)W_F8;
  mod.attr("W_Q5") = (int)W_Q5;
  mod.attr("W_Q6") = (int)W_Q6;
  mod.attr("ACT_NONE") = (int)ACT_NONE;
  mod.attr("ACT_TOKEN") = (int)ACT_TOKEN;
  mod.attr("ACT_BLOCKS") = (int)ACT_BLOCKS;

  mod.def("best_isa", [] { return std::string(isa_name(best_isa())); });
  mod.def("available_isas", [] {
    std::vector<std::string> out;
    for (int i = ISA_SCALAR; i <= ISA_NEON_DOT; i++)
      if (kernels_for(i)) out.push_back(isa_name(i));
    return out;
  });

  py::class_<View>(mod, "WeightView")
      .def(py::init(&make_view), py::arg("kind"), py::arg("n"), py::arg("k"), py::arg("group"),
           py::arg("data"), py::arg("scale") = py::none(), py::arg("zp") = py::none(),
           py::arg("rowsum") = py::none())
      .def_property_readonly("shape", [](const View& v) { return py::make_tuple(v.v.n, v.v.k); })
      .def_property_readonly("kind", [](const View& v) { return v.v.kind; });

  mod.def("dequantize", [](const View& v) {
    py::array_t<float> out({v.v.n, v.v.k});
    float* p = out.mutable_data();
    for (int64_t r = 0; r < v.v.n; r++) dequant_row(v.v, r, p + r * v.v.k);
    return out;
  });

  mod.def("quantize_acts", [](F32 x) {
    if (x.ndim() != 2) throw py::value_error("expected (m, k) activations");
    const int64_t m = x.shape(0), k = x.shape(1);
    py::array_t<int8_t> q({m, k});
    py::array_t<uint8_t> qu({m, k});
    py::array_t<float> s(m);
    py::array_t<int32_t> z(m);
    quantize_acts(x.data(), m, k, k, q.mutable_data(), qu.mutable_data(), s.mutable_data(), z.mutable_data());
    return py::make_tuple(q, s, z);
  });

  mod.def(
      "matmul",
      [](const View& v, F32 x, bool act_int8, bool act_blocks, const std::string& isa) {
        if (x.ndim() != 2 || x.shape(1) != v.v.k) throw py::value_error("x must be (m, k)");
        const Kernels& K = kernels_named(isa);
        const int64_t m = x.shape(0), n = v.v.n, k = v.v.k;
        py::array_t<float> y({m, n});
        std::vector<float> scratch(scratch_floats(k));
        if (act_blocks) {
          if (!int_kind(v.v.kind))
            throw py::value_error("int8 activations need integer weights");
          if (k % ACT_BLOCK || v.v.group % ACT_BLOCK)
            throw py::value_error("activation blocks need inputs and groups that are multiples of 32");
          ActBuffers acts;  // as the model: the prompt-tile form for every batch of tokens
          acts.reserve(m, k);
          acts.quantize_blocks(quantize_acts_blocks, x.data(), k, m, k, 0, m);
          K.matmul_qb(v.v, acts.blocks(m, k), y.mutable_data(), n, 0, n, scratch.data());
        } else if (act_int8) {
          if (!int_kind(v.v.kind))
            throw py::value_error("int8 activations need integer weights");
          if (!v.v.rowsum) throw py::value_error("int8 activations need row sums");
          ActBuffers acts;
          acts.reserve(m, k);
          acts.quantize_tokens(x.data(), k, m, k, 0, m);
          K.matmul_q(v.v, acts.tokens(m, k), y.mutable_data(), n, 0, n, scratch.data());
        } else {
          K.matmul_f(v.v, x.data(), m, k, y.mutable_data(), n, 0, n, scratch.data());
        }
        return y;
      },
      py::arg("view"), py::arg("x"), py::arg("act_int8") = false, py::arg("act_blocks") = false,
      py::arg("isa") = "auto");

  mod.def("quantize_acts_blocks", [](F32 x, const std::string& isa) {
    if (x.ndim() != 2 || x.shape(1) % ACT_BLOCK)
      throw py::value_error("expected (m, k) activations with k a multiple of 32");
    const int64_t m = x.shape(0), k = x.shape(1);
    py::array_t<int8_t> q({m, k});
    py::array_t<float> s({m, k / ACT_BLOCK});
    py::array_t<int32_t> bs({m, k / ACT_BLOCK});
    std::vector<float> bc(m * k / ACT_BLOCK);
    kernels_named(isa).quantize_blocks(x.data(), m, k, k, q.mutable_data(), s.mutable_data(),
                                       bs.mutable_data(), bc.data());
    return py::make_tuple(q, s, bs);
  }, py::arg("x"), py::arg("isa") = "scalar");

  mod.def(
      "dot", [](F32 a, F32 b, const std::string& isa) {
        if (a.size() != b.size()) throw py::value_error("length mismatch");
        return kernels_named(isa).dot(a.data(), b.data(), a.size());
      },
      py::arg("a"), py::arg("b"), py::arg("isa") = "auto");
  mod.def(
      "axpy", [](float alpha, F32 x, F32 y, const std::string& isa) {
        if (x.size() != y.size()) throw py::value_error("length mismatch");
        py::array_t<float> out(y.size());
        std::copy(y.data(), y.data() + y.size(), out.mutable_data());
        kernels_named(isa).axpy(alpha, x.data(), out.mutable_data(), x.size());
        return out;
      },
      py::arg("alpha"), py::arg("x"), py::arg("y"), py::arg("isa") = "auto");

  // Read bandwidth of `threads` threads streaming disjoint parts of a buffer with the widest
  // loads this CPU's kernels use (the access pattern of a decode step over the weights): median
  // GB/s of `repeats` passes after a warm-up pass. huge_pages: the buffer is 2 MiB-aligned
  // anonymous memory advised for transparent huge pages (as resident weights are), else
  // ordinary pages.
  mod.def(
      "read_bandwidth",
      [](int64_t nbytes, int threads, int repeats, bool huge_pages) {
        if (nbytes < (1 << 20) || threads < 1 || repeats < 1) throw py::value_error("bad arguments");
        const int64_t n = nbytes / 4;
        const size_t huge = (size_t)2 << 20, len = (size_t)n * 4 + huge;
        void* map = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED) throw std::bad_alloc();
        struct Unmap {
          void* p;
          size_t n;
          ~Unmap() { munmap(p, n); }
        } unmap{map, len};
        float* buf = reinterpret_cast<float*>(((uintptr_t)map + huge - 1) & ~(uintptr_t)(huge - 1));
#ifdef MADV_HUGEPAGE
        if (huge_pages) madvise(buf, (size_t)n * 4, MADV_HUGEPAGE);
#endif
        for (int64_t i = 0; i < n; i++) buf[i] = (float)(i & 1023) * 1e-3f;
        const Kernels& K = *kernels_for(best_isa());
        ThreadPool pool(threads);
        std::vector<float> sink(threads * 16, 0.f);
        std::vector<double> gbs;
        py::gil_scoped_release nogil;
        for (int r = 0; r <= repeats; r++) {
          auto t0 = std::chrono::steady_clock::now();
          pool.run([&](int tid) {
            const int64_t a = n * tid / threads, b = n * (tid + 1) / threads;
            sink[tid * 16] += K.dot(buf + a, buf + a, b - a);
          });
          double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (r > 0) gbs.push_back((double)n * 4 / sec / 1e9);
        }
        std::sort(gbs.begin(), gbs.end());
        volatile float keep = sink[0];
        (void)keep;
        return gbs[gbs.size() / 2];
      },
      py::arg("nbytes") = (int64_t)1 << 30, py::arg("threads") = 2, py::arg("repeats") = 5,
      py::arg("huge_pages") = false);

  // Decode products alone: one token's per-block int8 activations times each of `views` in
  // turn (a model's matrices in the order a step reads them), rows split across `threads` as
  // the runtime splits them. Returns the median seconds of `repeats` passes over all the views
  // after a warm-up pass (benchmarks/kernel_speed.py turns them into bytes per second).
  mod.def(
      "decode_products_seconds",
      [](const std::vector<const View*>& views, int threads, int repeats, const std::string& isa) {
        if (views.empty() || threads < 1 || repeats < 1) throw py::value_error("bad arguments");
        const Kernels& K = kernels_named(isa);
        int64_t kmax = 0, nmax = 0;
        for (const View* v : views) {
          if (!int_kind(v->v.kind) || v->v.k % ACT_BLOCK || v->v.group % ACT_BLOCK)
            throw py::value_error("decode products need integer weights in groups of 32s");
          kmax = std::max(kmax, v->v.k);
          nmax = std::max(nmax, v->v.n);
        }
        std::vector<float> x(kmax), y(nmax);
        for (int64_t j = 0; j < kmax; j++) x[j] = std::sin(0.37f * (float)j);
        ActBuffers acts;
        acts.reserve(1, kmax);
        std::vector<std::vector<float>> scratch(threads, std::vector<float>(scratch_floats(kmax)));
        ThreadPool pool(threads);
        std::vector<double> secs;
        py::gil_scoped_release nogil;
        for (int r = 0; r <= repeats; r++) {
          auto t0 = std::chrono::steady_clock::now();
          for (const View* v : views) {
            const WeightView& w = v->v;
            acts.quantize_blocks(quantize_acts_blocks, x.data(), w.k, 1, w.k, 0, 1);
            const QActs a = acts.blocks(1, w.k);
            pool.run([&](int tid) {
              const int64_t r0 = w.n * tid / threads, r1 = w.n * (tid + 1) / threads;
              K.matmul_qb(w, a, y.data(), w.n, r0, r1, scratch[tid].data());
            });
          }
          double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (r > 0) secs.push_back(sec);
        }
        std::sort(secs.begin(), secs.end());
        return secs[secs.size() / 2];
      },
      py::arg("views"), py::arg("threads") = 1, py::arg("repeats") = 5, py::arg("isa") = "auto");

  py::class_<PyModel>(mod, "Model")
      .def(py::init([](int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t vocab, float eps, int64_t max_ctx, int threads,
                       const std::string& isa, int64_t chunk) {
             ModelConfig c;
             c.hidden = hidden; c.layers = layers; c.heads = heads; c.kv_heads = kv_heads;
             c.head_dim = head_dim; c.vocab = vocab; c.eps = eps; c.max_ctx = max_ctx;
             if (threads < 1 || threads > 256) throw py::value_error("threads must be in 1..256");
             auto pm = std::make_unique<PyModel>();
             pm->isa = isa_from(isa);
             pm->m = std::make_unique<Model>(c, threads, pm->isa, chunk);
             return pm;
           }),
           py::kw_only(), py::arg("hidden"), py::arg("layers"), py::arg("heads"), py::arg("kv_heads"),
           py::arg("head_dim"), py::arg("vocab"), py::arg("eps"), py::arg("max_ctx"),
           py::arg("threads"), py::arg("isa") = "auto", py::arg("chunk") = 128)
      .def("set_embedding", [](PyModel& p, const View& v) {
        p.m->set_embedding(v.v);
        for (auto& o : v.keep) p.keep.push_back(o);
      })
      .def("set_output", [](PyModel& p, const View& v, int act) {
        p.m->set_output(Linear{v.v, act});
        for (auto& o : v.keep) p.keep.push_back(o);
      })
      .def("set_final_norm", [](PyModel& p, py::object w) {
        p.m->set_final_norm(static_cast<const float*>(
            buffer_ptr(w, p.m->config().hidden * 4, "final norm", "f")));
        p.keep.push_back(w);
      })
      .def("set_rope", [](PyModel& p, py::object cos, py::object sin) {
        const int64_t want = p.m->config().max_ctx * (p.m->config().head_dim / 2) * 4;
        p.m->set_rope(static_cast<const float*>(buffer_ptr(cos, want, "rope cos", "f")),
                      static_cast<const float*>(buffer_ptr(sin, want, "rope sin", "f")));
        p.keep.push_back(cos);
        p.keep.push_back(sin);
      })
      .def("set_layer", [](PyModel& p, int64_t i, py::object attn_norm, py::object ffn_norm,
                           py::dict linears) {
        if (i < 0 || i >= p.m->config().layers) throw py::index_error("layer index out of range");
        Layer& L = p.m->layer(i);
        const int64_t H = p.m->config().hidden * 4;
        L.attn_norm = static_cast<const float*>(buffer_ptr(attn_norm, H, "attention norm", "f"));
        L.ffn_norm = static_cast<const float*>(buffer_ptr(ffn_norm, H, "MLP norm", "f"));
        p.keep.push_back(attn_norm);
        p.keep.push_back(ffn_norm);
        std::map<std::string, Linear*> slots = {{"q_proj", &L.q}, {"k_proj", &L.k}, {"v_proj", &L.v},
                                                {"o_proj", &L.o}, {"gate_proj", &L.gate},
                                                {"up_proj", &L.up}, {"down_proj", &L.down}};
        for (auto& [name, slot] : slots) {
          if (!linears.contains(name.c_str()))
            throw py::value_error("layer " + std::to_string(i) + ": missing " + name);
          py::tuple t = linears[name.c_str()].cast<py::tuple>();
          const View& v = t[0].cast<const View&>();
          *slot = Linear{v.v, t[1].cast<int>()};
          for (auto& o : v.keep) p.keep.push_back(o);
        }
      })
      .def("finalize", [](PyModel& p) { p.m->finalize(); })
      .def_property_readonly("isa", [](const PyModel& p) { return std::string(isa_name(p.isa)); })
      .def_property_readonly("threads", [](const PyModel& p) { return p.m->threads(); })
      .def_property_readonly("workspace_bytes", [](const PyModel& p) { return p.m->workspace_bytes(); })
      .def(
          "forward",
          [](PyModel& p, Session& s, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
             int64_t pos, py::array_t<float, py::array::c_style> logits, bool all_logits) {
            const int64_t n = tokens.size(), V = p.m->config().vocab;
            const int64_t want = all_logits ? n * V : V;
            if (logits.size() != want) throw py::value_error("logits buffer has the wrong size");
            const int32_t* tk = tokens.data();
            float* out = logits.mutable_data();
            py::gil_scoped_release nogil;
            p.m->forward(s, tk, n, pos, out, all_logits);
          },
          py::arg("session"), py::arg("tokens"), py::arg("pos"), py::arg("logits"),
          py::arg("all_logits") = false);

  py::class_<Session>(mod, "Session")
      .def(py::init([](PyModel& p, int64_t max_ctx, const std::string& kv) {
             int kind = kv == "f32" ? KV_F32 : kv == "int8" ? KV_INT8 : -1;
             if (kind < 0) throw py::value_error("KV cache kind must be 'f32' or 'int8', got '" + kv + "'");
             return new Session(*p.m, max_ctx, kind);
           }),
           py::arg("model"), py::arg("max_ctx"), py::arg("kv") = "f32", py::keep_alive<1, 2>())
      .def_property_readonly("max_ctx", &Session::max_ctx)
      .def_property_readonly("kv_bytes", &Session::kv_bytes)
      .def("copy_from", [](Session& s, const Session& src, int64_t n) {
             py::gil_scoped_release nogil;
             s.copy_prefix(src, n);
           }, py::arg("src"), py::arg("n"));
}
