// Pinning the threads of a forward pass (see thread_pinning.h).
#include "kernels/thread_pinning.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

namespace perceiver {

#if defined(__linux__)

struct PinnedThreads::Saved {
  cpu_set_t mask;
};

namespace {

// The CPUs this thread may run on, in increasing order.
std::vector<int> allowed_cpus(const cpu_set_t& mask) {
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &mask)) cpus.push_back(c);
  return cpus;
}

bool env_set(const char* name) { return std::getenv(name) && *std::getenv(name); }

}  // namespace

bool pins_threads(int threads, ThreadPinning mode) {
  if (mode == ThreadPinning::off || threads < 1) return false;
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof mask, &mask) != 0) return false;
  const int cpus = CPU_COUNT(&mask);
  if (mode == ThreadPinning::automatic) {
    if (const char* v = std::getenv("PERCEIVER_PIN_THREADS"); v && *v) return std::strcmp(v, "0") != 0;
    if (env_set("OMP_PROC_BIND") || env_set("GOMP_CPU_AFFINITY") || env_set("OMP_PLACES")) return false;
    return threads == cpus;
  }
  return threads <= cpus;
}

PinnedThreads::PinnedThreads(int threads, ThreadPinning mode) {
  if (!pins_threads(threads, mode)) return;
  auto saved = std::make_unique<Saved>();
  if (sched_getaffinity(0, sizeof saved->mask, &saved->mask) != 0) return;
  const std::vector<int> cpus = allowed_cpus(saved->mask);
#pragma omp parallel num_threads(threads)
  {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus[omp_get_thread_num() % cpus.size()], &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);  // best effort: a refusal leaves it unpinned
  }
  saved_ = std::move(saved);
}

PinnedThreads::~PinnedThreads() {
  if (saved_) sched_setaffinity(0, sizeof saved_->mask, &saved_->mask);
}

#else  // no thread affinity API: never pinned

struct PinnedThreads::Saved {};
bool pins_threads(int, ThreadPinning) { return false; }
PinnedThreads::PinnedThreads(int, ThreadPinning) {}
PinnedThreads::~PinnedThreads() = default;

#endif

}  // namespace perceiver
