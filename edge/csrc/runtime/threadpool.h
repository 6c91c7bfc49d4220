// A small fork-join pool for one forward pass at a time: the caller is thread 0, workers spin
// briefly between jobs (a decode step follows the previous one within microseconds) and then
// sleep, so an idle runtime costs no CPU. Threads meet at `barrier()` between the steps of a
// layer.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define EDGE_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define EDGE_PAUSE() __asm__ __volatile__("yield")
#else
#define EDGE_PAUSE() ((void)0)
#endif

namespace edge {

class ThreadPool {
 public:
  explicit ThreadPool(int n) : n_(n < 1 ? 1 : n) {
    for (int i = 1; i < n_; i++) workers_.emplace_back([this, i] { loop(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return n_; }

  // Run fn(thread_index) on every thread; returns when all are done. Not reentrant: callers
  // serialize (the model holds a mutex around each forward pass).
  void run(const std::function<void(int)>& fn) {
    job_ = &fn;
    pending_.store(n_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    fn(0);
    int spins = 0;
    while (pending_.load(std::memory_order_acquire) != 0) relax(spins);
    job_ = nullptr;
  }

  void barrier() {
    if (n_ == 1) return;
    const int g = bar_gen_.load(std::memory_order_acquire);
    if (bar_count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      bar_count_.store(0, std::memory_order_relaxed);
      bar_gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    int spins = 0;
    while (bar_gen_.load(std::memory_order_acquire) == g) relax(spins);
  }

 private:
  // Spin with pause, then yield the core (another process may need it more than we do).
  static void relax(int& spins) {
    if (++spins < 4096) {
      EDGE_PAUSE();
    } else {
      std::this_thread::yield();
    }
  }

  void loop(int idx) {
    // Jobs are numbered from the pool's creation: a worker that starts late still runs the
    // first job, even when it was posted before the worker got to this line.
    uint64_t seen = 0;
    for (;;) {
      // Spin up to ~2 ms for the next job, then sleep until notified.
      auto t0 = std::chrono::steady_clock::now();
      int spins = 0;
      while (gen_.load(std::memory_order_acquire) == seen) {
        EDGE_PAUSE();
        if ((++spins & 1023) == 0 &&
            std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(2)) {
          std::unique_lock<std::mutex> lk(m_);
          cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
          break;
        }
      }
      seen = gen_.load(std::memory_order_acquire);
      if (stop_) return;
      (*job_)(idx);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* volatile job_ = nullptr;
  bool stop_ = false;
  std::atomic<int> bar_count_{0};
  std::atomic<int> bar_gen_{0};
};

}  // namespace edge
