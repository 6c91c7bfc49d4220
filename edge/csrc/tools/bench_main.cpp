// llama-edge-bench: `llama-edge bench` as a standalone program, for boards without Python
// (Android phones over adb, minimal Linux images). It runs the runtime's own forward pass and
// kernels (edge/csrc/runtime, edge/csrc/kernels) on a bench bundle (edge/bench_bundle.py: an
// edge artifact laid out in one memory-mapped file) and prints the same records, one JSON
// object per line:
//
//   llama-edge-bench -m MODEL.lebench [-p 128,512] [-n 128] [-d 0] [-r 3] [--warmup 1]
//                    [--delay S] [-t THREADS] [-C HEXMASK] [--ctx N] [--kv-cache f32|int8]
//                    [--board NAME] [-o jsonl]
//   llama-edge-bench -m MODEL.lebench --greedy N [-p PROMPT_LEN]
//       the bench prompt's N greedy tokens, as {"tokens": [...]} (a check of the arithmetic
//       against the Python runtime on the same artifact)
//
// Prompt tokens are the bundle's bench.ids0 / bench.ids1, the ids `llama-edge bench` draws.
// Bad input exits 2 with one line naming the file, tensor or option at fault.
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/model.h"

using namespace edge;

namespace {

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr int64_t PREFILL_CHUNK = 128;  // as the Python engine (edge/engines/native.py)
constexpr int64_t TTFT_TOKENS = 64;
constexpr int64_t DEFAULT_CTX = 2048;

// ------------------------------------------------------------------------------ the bundle
struct Blob {
  int64_t off = 0, bytes = 0;
};
struct Tensor {
  int kind = 0, act = 0;
  int64_t n = 0, k = 0, group = 0;
  Blob data, scale, zp, rowsum;
};

struct Bundle {
  std::string path;
  const uint8_t* base = nullptr;
  size_t size = 0;
  uint64_t data = 0;  // start of the data section: the first 64-byte boundary after the header
  std::map<std::string, std::string> meta;
  std::map<std::string, Tensor> tensors;

  explicit Bundle(const std::string& p) : path(p) {
    int fd = open(p.c_str(), O_RDONLY);
    if (fd < 0) throw Fail(p + ": cannot open (" + strerror(errno) + ")");
    struct stat st {};
    fstat(fd, &st);
    size = (size_t)st.st_size;
    if (size < 16) {
      close(fd);
      throw Fail(p + ": not a bench bundle (too short)");
    }
    void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) throw Fail(p + ": cannot map (" + strerror(errno) + ")");
    base = static_cast<const uint8_t*>(m);
    if (memcmp(base, "LEBENCH1", 8) != 0)
      throw Fail(p + ": not a bench bundle (magic); make one with `llama-edge bench --boards` "
                 "or edge.bench_bundle.write_bundle");
    uint64_t hlen = 0;
    memcpy(&hlen, base + 8, 8);
    if (hlen > size - 16) throw Fail(p + ": header length past the end of the file");
    data = std::min<uint64_t>((16 + hlen + 63) / 64 * 64, size);
    std::istringstream in(std::string(reinterpret_cast<const char*>(base + 16), hlen));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("tensor ", 0) == 0) {
        std::istringstream ls(line.substr(7));
        std::string name, b[4];
        Tensor t;
        if (!(ls >> name >> t.kind >> t.n >> t.k >> t.group >> t.act >> b[0] >> b[1] >> b[2] >> b[3]))
          throw Fail(p + ": malformed tensor line '" + line.substr(0, 80) + "'");
        Blob* dst[4] = {&t.data, &t.scale, &t.zp, &t.rowsum};
        for (int i = 0; i < 4; i++) {
          auto c = b[i].find(':');
          if (c == std::string::npos) throw Fail(p + ": tensor " + name + ": bad offset " + b[i]);
          dst[i]->off = std::stoll(b[i].substr(0, c));
          dst[i]->bytes = std::stoll(b[i].substr(c + 1));
          if (dst[i]->off < 0 || dst[i]->bytes < 0 || (uint64_t)(dst[i]->off + dst[i]->bytes) > size - data)
            throw Fail(p + ": tensor " + name + ": data past the end of the file (truncated?)");
        }
        tensors[name] = t;
      } else if (auto eq = line.find('='); eq != std::string::npos) {
        meta[line.substr(0, eq)] = line.substr(eq + 1);
      }
    }
  }
  ~Bundle() {
    if (base) munmap(const_cast<uint8_t*>(base), size);
  }
  std::string str(const std::string& k) const {
    auto it = meta.find(k);
    if (it == meta.end()) throw Fail(path + ": header lacks '" + k + "'");
    return it->second;
  }
  int64_t num(const std::string& k) const {
    try {
      return std::stoll(str(k));
    } catch (const std::logic_error&) {
      throw Fail(path + ": header field '" + k + "' is not a number");
    }
  }
  const Tensor& tensor(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw Fail(path + ": missing tensor " + name);
    return it->second;
  }
  const void* at(const Blob& b) const { return b.bytes ? base + data + b.off : nullptr; }
  const float* floats(const std::string& name, int64_t count) const {
    const Tensor& t = tensor(name);
    if (t.data.bytes < count * 4) throw Fail(path + ": tensor " + name + " is too small");
    return static_cast<const float*>(at(t.data));
  }
  Linear linear(const std::string& name) const {
    const Tensor& t = tensor(name);
    WeightView w;
    w.kind = t.kind;
    w.n = t.n;
    w.k = t.k;
    w.group = t.group;
    w.data = at(t.data);
    w.scale = static_cast<const uint16_t*>(at(t.scale));
    w.zp = static_cast<const uint8_t*>(at(t.zp));
    w.rowsum = static_cast<const float*>(at(t.rowsum));
    if (t.kind < W_F32 || t.kind > W_LAST) throw Fail(path + ": tensor " + name + ": unknown kind");
    if (t.data.bytes != w.n * w.row_bytes())
      throw Fail(path + ": tensor " + name + ": data size does not match its shape");
    if (const char* e = check_view(w)) throw Fail(path + ": tensor " + name + ": " + e);
    return Linear{w, t.act};
  }
};

// ------------------------------------------------------------------------------- options
std::vector<int64_t> ints(const std::string& s, const char* opt) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    char* end = nullptr;
    long long v = strtoll(part.c_str(), &end, 10);
    if (part.empty() || *end || v < 0) throw Fail(std::string(opt) + ": '" + part + "' is not a whole number >= 0");
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  }
  return out;
}

struct Options {
  std::string model, board, mask = "0x0", kv = "f32", fmt = "jsonl";
  std::vector<int64_t> pp{128, 512}, tg{128}, depths{0};
  int repeat = 3, warmup = 1, threads = 0;
  double delay = 0;
  int64_t ctx = 0, greedy = -1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw Fail(a + " needs a value");
      return argv[++i];
    };
    auto num = [&](const std::string& v) -> long long {
      char* end = nullptr;
      long long x = strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end) throw Fail(a + ": '" + v + "' is not a whole number");
      return x;
    };
    if (a == "-m" || a == "--model") o.model = val();
    else if (a == "-p" || a == "--n-prompt") o.pp = ints(val(), "-p");
    else if (a == "-n" || a == "--n-gen") o.tg = ints(val(), "-n");
    else if (a == "-d" || a == "--n-depth") o.depths = ints(val(), "-d");
    else if (a == "-r" || a == "--repeat") o.repeat = (int)num(val());
    else if (a == "--warmup") o.warmup = (int)num(val());
    else if (a == "--delay") o.delay = atof(val().c_str());
    else if (a == "-t" || a == "--threads") o.threads = (int)num(val());
    else if (a == "-C" || a == "--cpu-mask") o.mask = val();
    else if (a == "--ctx") o.ctx = num(val());
    else if (a == "--kv-cache") o.kv = val();
    else if (a == "--board") o.board = val();
    else if (a == "-o" || a == "--output") o.fmt = val();
    else if (a == "--greedy") o.greedy = num(val());
    else if (a == "-h" || a == "--help") {
      printf("usage: llama-edge-bench -m MODEL.lebench [-p LIST] [-n LIST] [-d LIST] [-r N] "
             "[--warmup N] [--delay S] [-t N] [-C HEXMASK] [--ctx N] [--kv-cache f32|int8] "
             "[--board NAME] [-o jsonl] [--greedy N]\n");
      exit(0);
    } else
      throw Fail("unknown option " + a + " (see --help)");
  }
  if (o.model.empty()) throw Fail("-m MODEL.lebench is required");
  if (o.repeat < 1 || o.warmup < 0 || o.delay < 0) throw Fail("-r must be >= 1, --warmup and --delay >= 0");
  if (o.fmt != "jsonl") throw Fail("-o " + o.fmt + ": this program writes jsonl (the host formats the rest)");
  if (o.kv != "f32" && o.kv != "int8") throw Fail("--kv-cache must be f32 or int8");
  if (o.threads < 0 || o.threads > 256) throw Fail("-t must be in 1..256");
  return o;
}

std::vector<int> mask_cpus(const std::string& mask) {
  std::string hex = mask.rfind("0x", 0) == 0 || mask.rfind("0X", 0) == 0 ? mask.substr(2) : mask;
  std::vector<int> cpus;
  for (size_t i = 0; i < hex.size(); i++) {
    char c = hex[hex.size() - 1 - i];
    int v = isdigit((unsigned char)c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                                 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (v < 0) throw Fail("CPU mask '" + mask + "' is not hexadecimal (e.g. 0x3 for CPUs 0 and 1)");
    for (int b = 0; b < 4; b++)
      if (v >> b & 1) cpus.push_back((int)i * 4 + b);
  }
  if (cpus.empty()) throw Fail("CPU mask '" + mask + "' selects no CPU");
  return cpus;
}

// ------------------------------------------------------------------------------ the host
struct Host {
  std::string cpu, machine;
  std::vector<std::string> features;
  bool emulated = false;
};

Host host_info() {
  Host h;
  struct utsname u {};
  uname(&u);
  h.machine = u.machine;
  std::ifstream f("/proc/cpuinfo");
  std::string line, model;
  bool x86_fields = false, arm_fields = false;
  while (std::getline(f, line) && !line.empty()) {  // the first processor's block
    auto key = line.substr(0, line.find(':'));
    if (key.find("vendor_id") == 0 || key.find("flags") == 0) x86_fields = true;
    if (key.find("CPU implementer") == 0) arm_fields = true;
    if (key.find("model name") == 0) model = line.substr(line.find(':') + 2);
  }
#if defined(__aarch64__)
  static const std::pair<const char*, int> hw[] = {{"fp", 0}, {"asimd", 1}, {"aes", 3}, {"crc32", 7},
      {"atomics", 8}, {"fphp", 9}, {"asimdhp", 10}, {"asimdrdm", 12}, {"asimddp", 20}, {"sve", 22}};
  static const std::pair<const char*, int> hw2[] = {{"sve2", 1}, {"svei8mm", 9}, {"i8mm", 13}, {"bf16", 14}};
  unsigned long a = getauxval(AT_HWCAP), b = getauxval(AT_HWCAP2);
  for (auto& [n, bit] : hw)
    if (a >> bit & 1) h.features.push_back(n);
  for (auto& [n, bit] : hw2)
    if (b >> bit & 1) h.features.push_back(n);
  h.emulated = x86_fields && !arm_fields;
  h.cpu = std::string("aarch64") + (h.emulated ? " (emulated)" : "");
#else
  (void)arm_fields;
  (void)x86_fields;
  h.cpu = model.empty() ? h.machine : model;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) h.features.push_back("avx2");
  if (__builtin_cpu_supports("fma")) h.features.push_back("fma");
  if (__builtin_cpu_supports("avx512f")) h.features.push_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) h.features.push_back("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) h.features.push_back("avx512vl");
  if (__builtin_cpu_supports("avx512vnni")) h.features.push_back("avx512_vnni");
#endif
#endif
  return h;
}

double peak_rss_mb() {
  struct rusage r {};
  getrusage(RUSAGE_SELF, &r);
  return std::round(r.ru_maxrss / 1024.0 * 10) / 10;
}

std::string esc(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += (char)c;
    else if (c < 0x20) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else
      o += (char)c;
  }
  return o + "\"";
}

std::string fmt(double v, int digits) {
  char b[64];
  snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

// ---------------------------------------------------------------------------- measuring
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Runner {
  Model& m;
  Session& s;
  const int32_t* ids0;
  const int32_t* ids1;
  std::vector<float> logits;
  int64_t argmax() const {
    return std::max_element(logits.begin(), logits.end()) - logits.begin();
  }
  void run(const int32_t* t, int64_t n, int64_t pos) { m.forward(s, t, n, pos, logits.data(), false); }

  std::vector<int64_t> samples(int warmup, int repeat, double delay, const std::function<int64_t()>& fn) {
    std::vector<int64_t> out;
    for (int i = 0; i < warmup + repeat; i++) {
      if (delay > 0 && i) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
      int64_t t = fn();
      if (i >= warmup) out.push_back(t);
    }
    return out;
  }
  // as edge/bench.py's run_test: pp times the prompt (after an untimed depth), tg the steps
  int64_t pp(int64_t n, int64_t depth) {
    if (depth) run(ids1, depth, 0);
    int64_t t0 = now_ns();
    run(ids0, n, depth);
    return now_ns() - t0;
  }
  int64_t tg(int64_t n, int64_t depth) {
    run(ids1, depth + 1, 0);
    int32_t tok = (int32_t)argmax();
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
      run(&tok, 1, depth + 1 + i);
      tok = (int32_t)argmax();
    }
    return now_ns() - t0;
  }
};

std::string utc_now() {
  char b[32];
  time_t t = time(nullptr);
  struct tm g {};
  gmtime_r(&t, &g);
  strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &g);
  return b;
}

int run(int argc, char** argv) {
  Options o = parse(argc, argv);
  if (o.mask != "0x0") {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : mask_cpus(o.mask)) CPU_SET(c, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
      throw Fail("CPU mask " + o.mask + " names CPUs this process may not use");
  }
  int64_t t_load = now_ns();
  Bundle b(o.model);
  ModelConfig c;
  c.hidden = b.num("hidden");
  c.layers = b.num("layers");
  c.heads = b.num("heads");
  c.kv_heads = b.num("kv_heads");
  c.head_dim = b.num("head_dim");
  c.vocab = b.num("vocab");
  c.eps = (float)strtod(b.str("eps").c_str(), nullptr);
  const int64_t rope_ctx = b.num("rope_ctx");
  c.max_ctx = std::min(o.ctx ? o.ctx : DEFAULT_CTX, rope_ctx);
  if (o.ctx > rope_ctx)
    throw Fail("--ctx " + std::to_string(o.ctx) + " is past the model's maximum context of " +
               std::to_string(rope_ctx));
  int threads = o.threads;
  if (!threads) {
    cpu_set_t set;
    threads = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  }
  Model m(c, threads, best_isa(), PREFILL_CHUNK);
  m.set_embedding(b.linear("model.embed_tokens").w);
  m.set_output(b.linear("lm_head"));
  m.set_final_norm(b.floats("model.norm", c.hidden));
  const int64_t half = c.head_dim / 2;
  m.set_rope(b.floats("rope.cos", rope_ctx * half), b.floats("rope.sin", rope_ctx * half));
  for (int64_t i = 0; i < c.layers; i++) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer& L = m.layer(i);
    L.attn_norm = b.floats(p + "input_layernorm", c.hidden);
    L.ffn_norm = b.floats(p + "post_attention_layernorm", c.hidden);
    L.q = b.linear(p + "self_attn.q_proj");
    L.k = b.linear(p + "self_attn.k_proj");
    L.v = b.linear(p + "self_attn.v_proj");
    L.o = b.linear(p + "self_attn.o_proj");
    L.gate = b.linear(p + "mlp.gate_proj");
    L.up = b.linear(p + "mlp.up_proj");
    L.down = b.linear(p + "mlp.down_proj");
  }
  m.finalize();
  Session s(m, c.max_ctx, o.kv == "int8" ? KV_INT8 : KV_F32);
  const double load_s = (now_ns() - t_load) / 1e9;
  const int32_t* ids0 = static_cast<const int32_t*>(b.at(b.tensor("bench.ids0").data));
  const int32_t* ids1 = static_cast<const int32_t*>(b.at(b.tensor("bench.ids1").data));
  if (b.tensor("bench.ids0").data.bytes < (rope_ctx + 1) * 4 || b.tensor("bench.ids1").data.bytes < (rope_ctx + 1) * 4)
    throw Fail(b.path + ": bench ids shorter than the context");
  Runner r{m, s, ids0, ids1, std::vector<float>(c.vocab)};

  if (o.greedy >= 0) {  // the arithmetic check: greedy tokens after the bench prompt
    int64_t n = o.pp.empty() || !o.pp[0] ? 8 : o.pp[0];
    if (n + o.greedy > c.max_ctx) throw Fail("--greedy: prompt and tokens exceed --ctx");
    r.run(ids0, n, 0);
    printf("{\"isa\": %s, \"prompt\": [", esc(isa_name(best_isa())).c_str());
    for (int64_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids0[i]);
    printf("], \"tokens\": [");
    for (int64_t i = 0; i < o.greedy; i++) {
      int32_t t = (int32_t)r.argmax();
      printf("%s%d", i ? ", " : "", t);
      r.run(&t, 1, n + i);
    }
    printf("]}\n");
    return 0;
  }

  Host h = host_info();
  // time to first token: a 64-token prompt (or the context) to its first greedy token
  const int64_t tn = std::min(TTFT_TOKENS, c.max_ctx);
  auto tt = r.samples(o.warmup, o.repeat, o.delay, [&] {
    int64_t t0 = now_ns();
    r.run(ids0, tn, 0);
    (void)r.argmax();
    return now_ns() - t0;
  });
  std::sort(tt.begin(), tt.end());
  const double ttft = (tt.size() % 2 ? tt[tt.size() / 2] : (tt[tt.size() / 2 - 1] + tt[tt.size() / 2]) / 2) / 1e9;

  std::vector<std::tuple<int64_t, int64_t, int64_t>> tests;
  for (int64_t d : o.depths)
    for (int64_t p : o.pp)
      if (p > 0) tests.emplace_back(p, 0, d);
  for (int64_t d : o.depths)
    for (int64_t g : o.tg)
      if (g > 0) tests.emplace_back(0, g, d);
  std::string feats = "[";
  for (size_t i = 0; i < h.features.size(); i++) feats += (i ? ", " : "") + esc(h.features[i]);
  feats += "]";
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  const std::string recipe = b.str("recipe");
  for (auto [p, g, d] : tests) {
    std::string row = "{\"model_filename\": " + esc(o.model) + ", \"model_type\": " + esc(b.str("model_type")) +
        ", \"model_size\": " + std::to_string(b.num("model_size")) + ", \"model_n_params\": " +
        std::to_string(b.num("n_params")) + ", \"n_threads\": " + std::to_string(threads) +
        ", \"cpu_mask\": " + esc(o.mask) + ", \"type_k\": " + esc(o.kv) + ", \"type_v\": " + esc(o.kv) +
        ", \"cpu_info\": " + esc(h.cpu) + ", \"engine\": \"edge\", \"isa\": " + esc(isa_name(best_isa())) +
        ", \"cpu_features\": " + feats + ", \"cpu_count\": " + std::to_string(std::thread::hardware_concurrency()) +
        ", \"emulated\": " + (h.emulated ? "true" : "false") + ", \"board\": " + esc(o.board.empty() ? host : o.board) +
        ", \"transport\": \"local\", \"artifact_sha256\": " + esc(b.str("artifact_sha256")) +
        ", \"recipe\": " + (recipe.empty() ? "null" : esc(recipe)) + ", \"ttft_s\": " + fmt(ttft, 5) +
        ", \"load_s\": " + fmt(load_s, 4) + ", \"n_prompt\": " + std::to_string(p) + ", \"n_gen\": " +
        std::to_string(g) + ", \"n_depth\": " + std::to_string(d) + ", \"test_time\": " + esc(utc_now());
    const int64_t need = d + (p ? p : g + 1);
    if (need > c.max_ctx) {
      row += ", \"status\": \"failed\", \"error\": " +
             esc("needs " + std::to_string(need) + " positions, the session holds " +
                 std::to_string(c.max_ctx) + " (raise --ctx)") +
             ", \"avg_ns\": null, \"stddev_ns\": null, \"avg_ts\": null, \"stddev_ts\": null, "
             "\"samples_ns\": [], \"samples_ts\": []";
    } else {
      auto ns = r.samples(o.warmup, o.repeat, o.delay, [&] { return p ? r.pp(p, d) : r.tg(g, d); });
      const double n = (double)(p ? p : g);
      std::vector<double> ts;
      for (int64_t x : ns) ts.push_back(n * 1e9 / (double)x);
      auto mean = [](const auto& v) { double s = 0; for (auto x : v) s += (double)x; return s / v.size(); };
      auto sd = [&](const auto& v) {
        if (v.size() < 2) return 0.0;
        double mu = mean(v), s = 0;
        for (auto x : v) s += ((double)x - mu) * ((double)x - mu);
        return std::sqrt(s / (v.size() - 1));
      };
      std::string sns = "[", sts = "[";
      for (size_t i = 0; i < ns.size(); i++) {
        sns += (i ? ", " : "") + std::to_string(ns[i]);
        sts += (i ? ", " : "") + fmt(ts[i], 4);
      }
      row += ", \"avg_ns\": " + std::to_string((int64_t)mean(ns)) + ", \"stddev_ns\": " +
             std::to_string((int64_t)sd(ns)) + ", \"avg_ts\": " + fmt(mean(ts), 6) + ", \"stddev_ts\": " +
             fmt(sd(ts), 6) + ", \"samples_ns\": " + sns + "], \"samples_ts\": " + sts + "], \"status\": \"ok\"";
    }
    row += ", \"peak_rss_mb\": " + fmt(peak_rss_mb(), 1) + "}";
    printf("%s\n", row.c_str());
    fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Fail& e) {
    fprintf(stderr, "llama-edge-bench: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {  // the model's own checks (shapes, kinds)
    fprintf(stderr, "llama-edge-bench: %s\n", e.what());
    return 2;
  }
}
