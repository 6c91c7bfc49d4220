#include "runtime/model.h"

#include <algorithm>
#include <cmath>

namespace edge {

// Contiguous share [a, b) of `total` items for thread `tid`, boundaries on multiples of `align`.
static inline void split(int64_t total, int nth, int tid, int64_t align, int64_t& a, int64_t& b) {
  int64_t blocks = (total + align - 1) / align;
  int64_t per = blocks / nth, extra = blocks % nth;
  int64_t b0 = tid * per + std::min<int64_t>(tid, extra);
  int64_t b1 = b0 + per + (tid < extra ? 1 : 0);
  a = std::min(total, b0 * align);
  b = std::min(total, b1 * align);
}

// Decode products: the last DECODE_CLAIMED_PERCENT of a call's rows are claimed in chunks of
// DECODE_CLAIM_ROWS (matmuls). Measured on the 1B shape at 2 threads, resident weights, 14
// alternated rounds: 1.03x decode over a static split; claiming all rows lost (0.89x: the
// threads' streams interleave chunk by chunk).
constexpr int64_t DECODE_CLAIMED_PERCENT = 25;
constexpr int64_t DECODE_CLAIM_ROWS = 64;

static void rmsnorm(const float* x, const float* w, float* out, int64_t n, float eps) {
  float ss = 0.f;
  for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / (float)n + eps);
  for (int64_t i = 0; i < n; i++) out[i] = (x[i] * r) * w[i];
}

Session::Session(Model& m, int64_t max_ctx, int kv_kind)
    : max_ctx_(max_ctx), kv_kind_(kv_kind), kv_heads_(m.config().kv_heads),
      head_dim_(m.config().head_dim) {
  const ModelConfig& c = m.config();
  if (max_ctx <= 0 || max_ctx > c.max_ctx)
    throw std::invalid_argument("session context " + std::to_string(max_ctx) +
                                " is outside 1.." + std::to_string(c.max_ctx) +
                                " (the artifact's maximum context)");
  if (kv_kind != KV_F32 && kv_kind != KV_INT8) throw std::invalid_argument("unknown KV cache kind");
  const size_t per = (size_t)c.kv_heads * max_ctx * c.head_dim;
  const size_t per_tiled = (size_t)c.kv_heads * kt_ctx() * c.head_dim;
  for (int64_t l = 0; l < c.layers; l++) {
    if (kv_kind == KV_F32) {
      kf_.emplace_back(per_tiled, 0.f);
      vf_.emplace_back(per, 0.f);
    } else {
      kq_.emplace_back(per, 0);
      vq_.emplace_back(per, 0);
      ks_.emplace_back((size_t)c.kv_heads * max_ctx, 0.f);
      vs_.emplace_back((size_t)c.kv_heads * max_ctx, 0.f);
    }
  }
}

void Session::copy_prefix(const Session& src, int64_t n) {
  if (src.kv_kind_ != kv_kind_ || src.kv_heads_ != kv_heads_ || src.head_dim_ != head_dim_ ||
      src.kf_.size() + src.kq_.size() != kf_.size() + kq_.size())
    throw std::invalid_argument("copy_prefix: the sessions belong to different models or KV kinds");
  if (n < 0 || n > src.max_ctx_ || n > max_ctx_)
    throw std::invalid_argument("copy_prefix: " + std::to_string(n) + " positions do not fit "
                                "both sessions");
  const int64_t hd = head_dim_;
  // keys in KT-position tiles: whole tiles covering [0, n), per KV head
  const int64_t tiled = std::min({(n + KT - 1) / KT * KT, src.kt_ctx(), kt_ctx()});
  for (size_t l = 0; l < kf_.size(); l++)
    for (int64_t h = 0; h < kv_heads_; h++) {
      std::copy_n(src.kf_[l].data() + h * src.kt_ctx() * hd, tiled * hd,
                  kf_[l].data() + h * kt_ctx() * hd);
      std::copy_n(src.vf_[l].data() + h * src.max_ctx_ * hd, n * hd,
                  vf_[l].data() + h * max_ctx_ * hd);
    }
  for (size_t l = 0; l < kq_.size(); l++)
    for (int64_t h = 0; h < kv_heads_; h++) {
      std::copy_n(src.kq_[l].data() + h * src.max_ctx_ * hd, n * hd, kq_[l].data() + h * max_ctx_ * hd);
      std::copy_n(src.vq_[l].data() + h * src.max_ctx_ * hd, n * hd, vq_[l].data() + h * max_ctx_ * hd);
      std::copy_n(src.ks_[l].data() + h * src.max_ctx_, n, ks_[l].data() + h * max_ctx_);
      std::copy_n(src.vs_[l].data() + h * src.max_ctx_, n, vs_[l].data() + h * max_ctx_);
    }
}

int64_t Session::kv_bytes() const {
  int64_t b = 0;
  for (auto& v : kf_) b += v.size() * 4;
  for (auto& v : vf_) b += v.size() * 4;
  for (auto& v : kq_) b += v.size();
  for (auto& v : vq_) b += v.size();
  for (auto& v : ks_) b += v.size() * 4;
  for (auto& v : vs_) b += v.size() * 4;
  return b;
}

Model::Model(const ModelConfig& cfg, int threads, int isa, int64_t chunk)
    : cfg_(cfg), kern_(kernels_for(isa)), pool_(threads), chunk_(chunk) {
  if (!kern_) throw std::invalid_argument(std::string("instruction set '") + isa_name(isa) +
                                          "' is not available on this CPU or in this build");
  if (cfg.hidden <= 0 || cfg.layers <= 0 || cfg.heads <= 0 || cfg.kv_heads <= 0 ||
      cfg.head_dim <= 0 || cfg.vocab <= 0 || cfg.max_ctx <= 0 || cfg.heads % cfg.kv_heads)
    throw std::invalid_argument("inconsistent model configuration");
  if (chunk <= 0) throw std::invalid_argument("chunk must be positive");
  layers_.resize(cfg.layers);
}

void Model::set_embedding(const WeightView& w) { embed_ = w; }
void Model::set_output(const Linear& l) { output_ = l; }

static void check_linear(const Linear& l, int64_t n, int64_t k, const std::string& name) {
  if (const char* e = check_view(l.w)) throw std::invalid_argument(name + ": " + e);
  if (l.w.n != n || l.w.k != k)
    throw std::invalid_argument(name + ": shape (" + std::to_string(l.w.n) + ", " +
                                std::to_string(l.w.k) + ") does not match the model (" +
                                std::to_string(n) + ", " + std::to_string(k) + ")");
  if (l.act < ACT_NONE || l.act > ACT_BLOCKS)
    throw std::invalid_argument(name + ": unknown activation handling");
  if (l.act != ACT_NONE && !int_kind(l.w.kind))
    throw std::invalid_argument(name + ": int8 activations need integer weights");
  if (l.act == ACT_TOKEN && !l.w.rowsum) throw std::invalid_argument(name + ": missing row sums");
  if (l.act == ACT_BLOCKS && (l.w.k % ACT_BLOCK || l.w.group % ACT_BLOCK))
    throw std::invalid_argument(name + ": int8 activation blocks of " + std::to_string(ACT_BLOCK) +
                                " need inputs and weight groups that are multiples of it");
}

void Model::finalize() {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden, QD = c.heads * c.head_dim, KD = c.kv_heads * c.head_dim;
  if (const char* e = check_view(embed_)) throw std::invalid_argument(std::string("embedding: ") + e);
  if (embed_.n != c.vocab || embed_.k != H) throw std::invalid_argument("embedding: wrong shape");
  check_linear(output_, c.vocab, H, "output");
  if (!final_norm_ || !cos_ || !sin_) throw std::invalid_argument("missing final norm or rope tables");
  int64_t maxk = std::max<int64_t>(H, QD);
  for (int64_t i = 0; i < c.layers; i++) {
    Layer& L = layers_[i];
    std::string p = "layer " + std::to_string(i) + " ";
    if (!L.attn_norm || !L.ffn_norm) throw std::invalid_argument(p + "missing norm weights");
    int64_t F = L.gate.w.n;
    check_linear(L.q, QD, H, p + "q_proj");
    check_linear(L.k, KD, H, p + "k_proj");
    check_linear(L.v, KD, H, p + "v_proj");
    check_linear(L.o, H, QD, p + "o_proj");
    check_linear(L.gate, F, H, p + "gate_proj");
    check_linear(L.up, F, H, p + "up_proj");
    check_linear(L.down, H, F, p + "down_proj");
    max_ffn_ = std::max(max_ffn_, F);
  }
  maxk = std::max(maxk, max_ffn_);
  const size_t n = (size_t)chunk_;
  x_.assign(n * H, 0.f); xn_.assign(n * H, 0.f); tmp_.assign(n * H, 0.f);
  q_.assign(n * QD, 0.f); att_.assign(n * QD, 0.f);
  k_.assign(n * KD, 0.f); v_.assign(n * KD, 0.f);
  gate_.assign(n * max_ffn_, 0.f); up_.assign(n * max_ffn_, 0.f);
  acts_.reserve(chunk_, maxk);
  scratch_.clear();
  // attention: scores of up to MAX_QUERIES queries over the (tile-padded) context
  const int64_t ctxp = (c.max_ctx + KT - 1) / KT * KT;
  const size_t per_thread = std::max<int64_t>(scratch_floats(maxk),
                                              std::max<int64_t>(MAX_QUERIES * ctxp, ctxp + 2 * c.head_dim));
  for (int t = 0; t < pool_.size(); t++) scratch_.emplace_back(per_thread, 0.f);
  ws_bytes_ = (int64_t)((x_.size() * 3 + q_.size() * 2 + k_.size() * 2 + gate_.size() * 2) * 4 +
                        acts_.bytes() + per_thread * 4 * pool_.size());
  n_claims_ = 4 * c.layers + 1;
  claims_.reset(new std::atomic<int64_t>[n_claims_]);
  ready_ = true;
}

bool Model::quantize_input(const float* x, int64_t m, int64_t k,
                           std::initializer_list<const Linear*> users, int tid) {
  bool tok = false, blk = false;
  for (const Linear* l : users) {
    tok |= l->act == ACT_TOKEN;
    blk |= l->act == ACT_BLOCKS;
  }
  if (!tok && !blk) return false;
  int64_t a, b;
  split(m, pool_.size(), tid, 1, a, b);
  if (tok) acts_.quantize_tokens(x, k, m, k, a, b);
  if (blk) acts_.quantize_blocks(kern_->quantize_blocks, x, k, m, k, a, b);
  return true;
}

// Row-parallel products sharing one input (x, or its int8 form for act_int8 linears).
// Prompt chunks split rows statically in whole panels. A decode step is memory-bound and short,
// so a thread slowed by anything else on the machine would leave the others waiting at the next
// barrier: each thread first takes its static share of the leading rows, then the rest are
// claimed in small chunks by whichever thread is free.
void Model::matmuls(const std::vector<std::pair<const Linear*, float*>>& ops, const float* x,
                    int64_t m, int64_t ldx, int tid, int& call) {
  int64_t total = 0;
  for (auto& op : ops) total += op.first->w.n;
  float* scratch = scratch_[tid].data();
  auto rows = [&](int64_t a, int64_t b) {
    int64_t base = 0;
    for (auto& op : ops) {
      const Linear& l = *op.first;
      int64_t lo = std::max(a, base) - base, hi = std::min(b, base + l.w.n) - base;
      if (lo < hi) {
        if (l.act == ACT_TOKEN) {
          kern_->matmul_q(l.w, acts_.tokens(m, l.w.k), op.second, l.w.n, lo, hi, scratch);
        } else if (l.act == ACT_BLOCKS) {
          kern_->matmul_qb(l.w, acts_.blocks(m, l.w.k), op.second, l.w.n, lo, hi, scratch);
        } else {
          kern_->matmul_f(l.w, x, m, ldx, op.second, l.w.n, lo, hi, scratch);
        }
      }
      base += l.w.n;
    }
  };
  const int nth = pool_.size();
  std::atomic<int64_t>& claim = claims_[call++];
  int64_t a, b;
  if (m > 1 || nth == 1) {
    split(total, nth, tid, m > 1 ? PROMPT_PANEL_ROWS : GEMM_ROWS, a, b);
    rows(a, b);
    return;
  }
  const int64_t claimed = std::min(
      total, (total * DECODE_CLAIMED_PERCENT / 100 + DECODE_CLAIM_ROWS - 1) / DECODE_CLAIM_ROWS *
                 DECODE_CLAIM_ROWS);
  const int64_t first = total - claimed;
  split(first, nth, tid, GEMM_ROWS, a, b);
  rows(a, b);
  for (;;) {
    const int64_t c = claim.fetch_add(1, std::memory_order_relaxed);
    const int64_t lo = first + c * DECODE_CLAIM_ROWS;
    if (lo >= total) break;
    rows(lo, std::min(total, lo + DECODE_CLAIM_ROWS));
  }
}

// p[0..own) = softmax(p[0..own)); p[own..upto) = 0 (positions after the token's own).
void Model::softmax(float* p, int64_t own, int64_t upto) const {
  float mx = -INFINITY;
  for (int64_t t = 0; t < own; t++) mx = std::max(mx, p[t]);
  const float inv = 1.0f / kern_->exp_sum(p, own, mx);
  for (int64_t t = 0; t < own; t++) p[t] *= inv;
  for (int64_t t = own; t < upto; t++) p[t] = 0.f;
}

// Work items: one KV head's query heads for a tile of tokens (MAX_QUERIES queries at most), so each
// cached key and value row is read once for all of them. A token's scores run over its own
// positions; a tile computes them up to its last token's position and the later tokens' extra
// probabilities are zero. Steps (decode, draft verification: n <= STEP_MAX_TOKENS) split by
// token and query head instead, for balance, and so that each query's arithmetic is the same
// whatever the number of tokens in the pass.
void Model::attention(Session& s, int64_t n, int64_t pos, int64_t li, int tid) {
  const ModelConfig& c = cfg_;
  const int64_t D = c.head_dim, NH = c.heads, G = c.heads / c.kv_heads;
  const int64_t QD = NH * D, ctx = s.max_ctx_, ctxp = s.kt_ctx();
  const float scale = 1.0f / std::sqrt((float)D);
  float* sc = scratch_[tid].data();  // (nq <= MAX_QUERIES, ctxp) f32: scores, then probabilities
  const bool step = n <= STEP_MAX_TOKENS;
  const int64_t tile = step ? 1 : std::max<int64_t>(1, MAX_QUERIES / G);
  const int64_t qper = step ? 1 : G;  // query heads per item
  const int64_t tiles = (n + tile - 1) / tile, parts = G / qper;
  int64_t a, b;
  split(tiles * c.kv_heads * parts, pool_.size(), tid, 1, a, b);
  for (int64_t item = a; item < b; item++) {
    const int64_t ti = item / (c.kv_heads * parts), rest = item % (c.kv_heads * parts);
    const int64_t kvh = rest / parts, h0 = kvh * G + (rest % parts) * qper;
    const int64_t i0 = ti * tile, i1 = std::min(n, i0 + tile);
    const int64_t npos = pos + i1;  // positions seen by the tile's last token
    if (s.kv_kind_ == KV_F32) {
      const float* qs[MAX_QUERIES];
      float* ps[MAX_QUERIES];
      float* outs[MAX_QUERIES];
      int nq = 0;
      for (int64_t i = i0; i < i1; i++)
        for (int64_t h = h0; h < h0 + qper; h++, nq++) {
          qs[nq] = q_.data() + i * QD + h * D;
          outs[nq] = att_.data() + i * QD + h * D;
          ps[nq] = sc + nq * ctxp;
        }
      kern_->scores(qs, nq, s.kf_[li].data() + kvh * ctxp * D, npos, D, scale, ps);
      for (int64_t i = i0, qi = 0; i < i1; i++)
        for (int64_t h = h0; h < h0 + qper; h++, qi++) {
          softmax(ps[qi], pos + i + 1, npos);
        }
      kern_->weighted_sum(ps, nq, s.vf_[li].data() + kvh * ctx * D, npos, D, outs);
      continue;
    }
    // int8 cache: one query at a time, rows widened to fp32
    // scores (max_ctx) f32 at sc, then one key row and one value row widened: (head_dim) f32 each
    float* kbuf = sc + c.max_ctx;
    float* vbuf = kbuf + D;
    for (int64_t i = i0; i < i1; i++)
      for (int64_t h = h0; h < h0 + qper; h++) {
        const float* q = q_.data() + i * QD + h * D;
        float* out = att_.data() + i * QD + h * D;
        const int64_t own = pos + i + 1;
        for (int64_t t = 0; t < own; t++) {
          const int8_t* kq = s.kq_[li].data() + (kvh * ctx + t) * D;
          for (int64_t j = 0; j < D; j++) kbuf[j] = (float)kq[j];
          sc[t] = kern_->dot(q, kbuf, D) * s.ks_[li][kvh * ctx + t] * scale;
        }
        float mx = -INFINITY;
        for (int64_t t = 0; t < own; t++) mx = std::max(mx, sc[t]);
        float sum = 0.f;
        for (int64_t t = 0; t < own; t++) {
          sc[t] = std::exp(sc[t] - mx);
          sum += sc[t];
        }
        const float inv = 1.0f / sum;
        std::fill(out, out + D, 0.f);
        for (int64_t t = 0; t < own; t++) {
          const int8_t* vq = s.vq_[li].data() + (kvh * ctx + t) * D;
          for (int64_t j = 0; j < D; j++) vbuf[j] = (float)vq[j];
          kern_->axpy(sc[t] * inv * s.vs_[li][kvh * ctx + t], vbuf, out, D);
        }
      }
  }
}

// x += tmp for this thread's tokens, then (with norm weights) xn = rmsnorm(x).
void Model::add_residual(int64_t n, const float* norm, int tid) {
  const int64_t H = cfg_.hidden;
  int64_t a, b;
  split(n, pool_.size(), tid, 1, a, b);
  for (int64_t i = a; i < b; i++) {
    float* xi = x_.data() + i * H;
    const float* ti = tmp_.data() + i * H;
    for (int64_t j = 0; j < H; j++) xi[j] += ti[j];
    if (norm) rmsnorm(xi, norm, xn_.data() + i * H, H, cfg_.eps);
  }
}

static void store_kv_int8(const float* x, int64_t d, int8_t* q, float* s) {
  float amax = 0.f;
  for (int64_t j = 0; j < d; j++) amax = std::max(amax, std::fabs(x[j]));
  float sc = amax / 127.0f;
  if (!(sc >= ACT_EPS)) sc = ACT_EPS;
  for (int64_t j = 0; j < d; j++) {
    float v = std::nearbyint(x[j] / sc);
    q[j] = (int8_t)(int)std::min(127.f, std::max(-127.f, v));
  }
  *s = sc;
}

void Model::forward_chunk(Session& s, const int32_t* tokens, int64_t n, int64_t pos,
                          float* logits, int mode, int tid) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden, D = c.head_dim, NH = c.heads, NKV = c.kv_heads;
  const int64_t QD = NH * D, KD = NKV * D, ctx = s.max_ctx_, half = D / 2;
  const int nth = pool_.size();
  int64_t a, b;
  int call = 0;  // product calls of this pass, numbered alike on every thread

  split(n, nth, tid, 1, a, b);
  for (int64_t i = a; i < b; i++) dequant_row(embed_, tokens[i], x_.data() + i * H);

  for (int64_t li = 0; li < c.layers; li++) {
    const Layer& L = layers_[li];
    // attention block
    // norms and activation quantization split by token alike, so a thread quantizes the rows
    // it normalized (no barrier in between)
    split(n, nth, tid, 1, a, b);
    for (int64_t i = a; i < b; i++) rmsnorm(x_.data() + i * H, L.attn_norm, xn_.data() + i * H, H, c.eps);
    quantize_input(xn_.data(), n, H, {&L.q, &L.k, &L.v}, tid);
    pool_.barrier();
    matmuls({{&L.q, q_.data()}, {&L.k, k_.data()}, {&L.v, v_.data()}}, xn_.data(), n, H, tid, call);
    pool_.barrier();
    // rope on q and k (rotate-half layout), then store k and v at their positions
    split(n * (NH + NKV), nth, tid, 1, a, b);
    for (int64_t item = a; item < b; item++) {
      const int64_t i = item / (NH + NKV), h = item % (NH + NKV), p = pos + i;
      float* v = h < NH ? q_.data() + i * QD + h * D : k_.data() + i * KD + (h - NH) * D;
      const float* cs = cos_ + p * half;
      const float* sn = sin_ + p * half;
      for (int64_t j = 0; j < half; j++) {
        const float x1 = v[j], x2 = v[j + half];
        v[j] = x1 * cs[j] - x2 * sn[j];
        v[j + half] = x2 * cs[j] + x1 * sn[j];
      }
      if (h >= NH) {
        const int64_t kvh = h - NH;
        const float* vv = v_.data() + i * KD + kvh * D;
        const size_t off = (size_t)(kvh * ctx + p) * D;
        if (s.kv_kind_ == KV_F32) {
          float* kt = s.kf_[li].data() + kvh * s.kt_ctx() * D;
          for (int64_t j = 0; j < D; j++) kt[kt_index(p, j, D)] = v[j];
          std::copy(vv, vv + D, s.vf_[li].data() + off);
        } else {
          store_kv_int8(v, D, s.kq_[li].data() + off, &s.ks_[li][kvh * ctx + p]);
          store_kv_int8(vv, D, s.vq_[li].data() + off, &s.vs_[li][kvh * ctx + p]);
        }
      }
    }
    pool_.barrier();
    attention(s, n, pos, li, tid);
    pool_.barrier();
    if (quantize_input(att_.data(), n, QD, {&L.o}, tid)) pool_.barrier();
    matmuls({{&L.o, tmp_.data()}}, att_.data(), n, QD, tid, call);
    pool_.barrier();
    // MLP block
    add_residual(n, L.ffn_norm, tid);
    quantize_input(xn_.data(), n, H, {&L.gate, &L.up}, tid);
    pool_.barrier();
    const int64_t F = L.gate.w.n;
    matmuls({{&L.gate, gate_.data()}, {&L.up, up_.data()}}, xn_.data(), n, H, tid, call);
    pool_.barrier();
    split(n * F, nth, tid, 64, a, b);
    if (a < b) kern_->silu_mul(gate_.data() + a, up_.data() + a, b - a);
    pool_.barrier();
    if (quantize_input(gate_.data(), n, F, {&L.down}, tid)) pool_.barrier();
    matmuls({{&L.down, tmp_.data()}}, gate_.data(), n, F, tid, call);
    pool_.barrier();
    // the next layer's norm takes each token on the thread that added its residual here: no
    // barrier between them
    add_residual(n, nullptr, tid);
  }
  if (mode == OUT_NONE) return;
  pool_.barrier();
  // final norm + output for the last token (or every token)
  const int64_t first = mode == OUT_ALL ? 0 : n - 1, m = n - first;
  split(m, nth, tid, 1, a, b);
  for (int64_t i = a; i < b; i++)
    rmsnorm(x_.data() + (first + i) * H, final_norm_, xn_.data() + i * H, H, c.eps);
  quantize_input(xn_.data(), m, H, {&output_}, tid);
  pool_.barrier();
  matmuls({{&output_, logits}}, xn_.data(), m, H, tid, call);
}

void Model::forward(Session& s, const int32_t* tokens, int64_t n, int64_t pos, float* logits,
                    bool all_logits) {
  if (!ready_) throw std::logic_error("model not finalized");
  if (n <= 0) throw std::invalid_argument("no tokens to run");
  if (pos < 0 || pos + n > s.max_ctx_)
    throw std::out_of_range("positions " + std::to_string(pos) + ".." + std::to_string(pos + n - 1) +
                            " do not fit the session's context of " + std::to_string(s.max_ctx_));
  for (int64_t i = 0; i < n; i++)
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab)
      throw std::out_of_range("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (" +
                              std::to_string(cfg_.vocab) + ")");
  std::lock_guard<std::mutex> lk(run_mu_);
  for (int64_t off = 0; off < n; off += chunk_) {
    const int64_t m = std::min(chunk_, n - off);
    // Earlier chunks only fill the cache unless every token's logits are wanted.
    const int mode = all_logits ? OUT_ALL : (off + m == n ? OUT_LAST : OUT_NONE);
    float* out = all_logits ? logits + off * cfg_.vocab : logits;
    for (int64_t i = 0; i < n_claims_; i++) claims_[i].store(0, std::memory_order_relaxed);
    pool_.run([&](int tid) { forward_chunk(s, tokens + off, m, pos + off, out, mode, tid); });
  }
}

}  // namespace edge
