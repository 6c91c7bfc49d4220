// The Llama forward pass over memory-mapped weights: one call per prefill chunk or decode step.
#pragma once
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/acts.h"
#include "kernels/kernels.h"
#include "runtime/threadpool.h"

namespace edge {

struct ModelConfig {
  int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
  float eps = 1e-5f;
  int64_t max_ctx = 0;  // rows of the rope tables; sessions may use fewer
};

enum ActKind : int { ACT_NONE = 0, ACT_TOKEN = 1, ACT_BLOCKS = 2 };

struct Linear {
  WeightView w;
  int act = ACT_NONE;  // how this linear's inputs are quantized to int8 (8da schemes)
};

struct Layer {
  const float* attn_norm = nullptr;
  const float* ffn_norm = nullptr;
  Linear q, k, v, o, gate, up, down;
};

enum KvKind : int { KV_F32 = 0, KV_INT8 = 1 };

class Model;

class Session {
 public:
  Session(Model& m, int64_t max_ctx, int kv_kind);
  int64_t max_ctx() const { return max_ctx_; }
  int kv_kind() const { return kv_kind_; }
  int64_t kv_bytes() const;
  int64_t kt_ctx() const { return (max_ctx_ + KT - 1) / KT * KT; }  // key rows, whole tiles
  // Copy the keys and values of positions [0, n) from `src`, a session of the same model and
  // KV kind (a cached prompt prefix); later positions of this session are left as they are.
  void copy_prefix(const Session& src, int64_t n);

 private:
  friend class Model;
  int64_t max_ctx_;
  int kv_kind_;
  int64_t kv_heads_, head_dim_;
  // One entry per layer; the f32 kind fills kf_ / vf_, the int8 kind kq_ / vq_ / ks_ / vs_.
  std::vector<std::vector<float>> kf_;   // (kv_heads, kt_ctx, head_dim) f32 in KT tiles (kernels.h)
  std::vector<std::vector<float>> vf_;   // (kv_heads, max_ctx, head_dim) f32
  std::vector<std::vector<int8_t>> kq_;  // (kv_heads, max_ctx, head_dim) int8
  std::vector<std::vector<int8_t>> vq_;  // (kv_heads, max_ctx, head_dim) int8
  std::vector<std::vector<float>> ks_;   // (kv_heads, max_ctx) f32: one scale per key row
  std::vector<std::vector<float>> vs_;   // (kv_heads, max_ctx) f32: one scale per value row
};

class Model {
 public:
  Model(const ModelConfig& cfg, int threads, int isa, int64_t chunk);
  void set_embedding(const WeightView& w);
  void set_output(const Linear& l);
  void set_final_norm(const float* w) { final_norm_ = w; }
  void set_rope(const float* cos, const float* sin) { cos_ = cos; sin_ = sin; }
  Layer& layer(int64_t i) { return layers_.at(i); }
  void finalize();  // check that everything is set and consistent; size the workspace

  // Run tokens[0..n) at positions pos..pos+n-1. logits: (vocab) for the last token, or
  // (n, vocab) when all_logits.
  void forward(Session& s, const int32_t* tokens, int64_t n, int64_t pos, float* logits,
               bool all_logits);

  const ModelConfig& config() const { return cfg_; }
  const Kernels& kernels() const { return *kern_; }
  int threads() const { return pool_.size(); }
  int64_t chunk() const { return chunk_; }
  int64_t workspace_bytes() const { return ws_bytes_; }

 private:
  enum { OUT_NONE = 0, OUT_LAST = 1, OUT_ALL = 2 };
  void forward_chunk(Session& s, const int32_t* tokens, int64_t n, int64_t pos, float* logits,
                     int mode, int tid);
  void matmuls(const std::vector<std::pair<const Linear*, float*>>& ops, const float* x,
               int64_t m, int64_t ldx, int tid, int& call);
  // Quantize the shared input of `users` in every form they need, each thread its share of
  // the tokens (split as the norms split them); true when anything was done (the caller then
  // waits at a barrier before the products).
  bool quantize_input(const float* x, int64_t m, int64_t k, std::initializer_list<const Linear*> users,
                      int tid);
  void attention(Session& s, int64_t n, int64_t pos, int64_t li, int tid);
  void softmax(float* p, int64_t own, int64_t upto) const;
  void add_residual(int64_t n, const float* norm, int tid);

  ModelConfig cfg_;
  const Kernels* kern_;
  ThreadPool pool_;
  std::mutex run_mu_;
  int64_t chunk_;
  WeightView embed_{};
  Linear output_{};
  const float* final_norm_ = nullptr;
  const float* cos_ = nullptr;
  const float* sin_ = nullptr;
  std::vector<Layer> layers_;
  int64_t max_ffn_ = 0;
  // Workspace, sized once by finalize() for chunk tokens (n_tokens <= chunk in a pass).
  std::vector<float> x_;     // (chunk, hidden) f32: the residual stream
  std::vector<float> xn_;    // (chunk, hidden) f32: normalized input of q/k/v, gate/up, output
  std::vector<float> q_;     // (chunk, heads * head_dim) f32: queries, rotated
  std::vector<float> k_;     // (chunk, kv_heads * head_dim) f32: keys, rotated
  std::vector<float> v_;     // (chunk, kv_heads * head_dim) f32: values
  std::vector<float> att_;   // (chunk, heads * head_dim) f32: attention output, o_proj's input
  std::vector<float> tmp_;   // (chunk, hidden) f32: o_proj / down_proj output, added to x_
  std::vector<float> gate_;  // (chunk, max ffn) f32: gate_proj output, then silu(gate) * up
  std::vector<float> up_;    // (chunk, max ffn) f32: up_proj output
  ActBuffers acts_;          // int8 forms of a product's input: (chunk, max inputs), kernels/acts.h
  // per thread: (max(scratch_floats(max inputs), MAX_QUERIES * kt_ctx, kt_ctx + 2 head_dim)) f32:
  // products' dequantized rows or prompt panel, or attention scores (+ int8 cache rows widened)
  std::vector<std::vector<float>> scratch_;
  // Decode products hand out rows in chunks: one claim counter per product call of a pass
  // (each thread numbers the calls the same way), zeroed before each pass.
  std::unique_ptr<std::atomic<int64_t>[]> claims_;
  int64_t n_claims_ = 0;
  int64_t ws_bytes_ = 0;
  bool ready_ = false;
};

}  // namespace edge
