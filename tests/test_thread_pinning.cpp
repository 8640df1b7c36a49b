// Pinning the threads of a forward pass (src/kernels/thread_pinning.h): when it applies, that the calling
// thread gets its affinity back, and that pinned and unpinned passes give the same logits bit for bit.
#include <gtest/gtest.h>
#include <omp.h>
#include <sched.h>
#include <stdlib.h>

#include <cstring>
#include <vector>

#include "formats/npy.h"
#include "kernels/thread_pinning.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

int allowed_cpu_count() {
  cpu_set_t mask;
  EXPECT_EQ(sched_getaffinity(0, sizeof mask, &mask), 0);
  return CPU_COUNT(&mask);
}

// Sets an environment variable for the scope (restores the previous value).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    value ? setenv(name, value, 1) : unsetenv(name);
  }
  ~ScopedEnv() { had_ ? setenv(name_, old_.c_str(), 1) : unsetenv(name_); }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(ThreadPinning, AutomaticWhenTheTeamCoversEveryCpu) {
  const ScopedEnv pin("PERCEIVER_PIN_THREADS", nullptr), bind("OMP_PROC_BIND", nullptr),
      places("OMP_PLACES", nullptr), gomp("GOMP_CPU_AFFINITY", nullptr);
  const int cpus = allowed_cpu_count();
  EXPECT_TRUE(pins_threads(cpus, ThreadPinning::automatic));
  EXPECT_FALSE(pins_threads(cpus - 1, ThreadPinning::automatic));  // fewer threads than CPUs
  EXPECT_FALSE(pins_threads(cpus + 1, ThreadPinning::automatic));
  EXPECT_FALSE(pins_threads(cpus, ThreadPinning::off));
  EXPECT_TRUE(pins_threads(1, ThreadPinning::on));
  EXPECT_FALSE(pins_threads(cpus + 1, ThreadPinning::on));  // more threads than CPUs: never
  {
    const ScopedEnv user_binding("OMP_PROC_BIND", "close");  // the user placed the threads
    EXPECT_FALSE(pins_threads(cpus, ThreadPinning::automatic));
    EXPECT_TRUE(pins_threads(cpus, ThreadPinning::on));
  }
  {
    const ScopedEnv forced("PERCEIVER_PIN_THREADS", "0");
    EXPECT_FALSE(pins_threads(cpus, ThreadPinning::automatic));
  }
  {
    const ScopedEnv forced("PERCEIVER_PIN_THREADS", "1");
    EXPECT_TRUE(pins_threads(1, ThreadPinning::automatic));
  }
}

TEST(ThreadPinning, EachThreadOnItsOwnCpuAndTheCallerRestored) {
  cpu_set_t before;
  ASSERT_EQ(sched_getaffinity(0, sizeof before, &before), 0);
  const int cpus = CPU_COUNT(&before);
  {
    const PinnedThreads pinned(cpus, ThreadPinning::on);
    ASSERT_TRUE(pinned.active());
    std::vector<int> cpu_of(cpus, -1), count_of(cpus, 0);
#pragma omp parallel num_threads(cpus)
    {
      cpu_set_t mine;
      sched_getaffinity(0, sizeof mine, &mine);
      const int t = omp_get_thread_num();
      count_of[t] = CPU_COUNT(&mine);
      for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &mine)) cpu_of[t] = c;
    }
    for (int t = 0; t < cpus; ++t) {
      SCOPED_TRACE(t);
      EXPECT_EQ(count_of[t], 1);
      EXPECT_TRUE(CPU_ISSET(cpu_of[t], &before));
      for (int u = 0; u < t; ++u) EXPECT_NE(cpu_of[u], cpu_of[t]);
    }
  }
  cpu_set_t after;
  ASSERT_EQ(sched_getaffinity(0, sizeof after, &after), 0);
  EXPECT_TRUE(CPU_EQUAL(&before, &after));
}

TEST(ThreadPinning, PinnedAndUnpinnedPassesGiveTheSameLogits) {
  const auto dir = test::vectors_dir() / "conv-tiny";
  const NpyArray p = read_npy(dir / "pixel_values.npy");
  const std::vector<float> pixels = p.to_f32();
  const int B = int(p.shape[0]), H = int(p.shape[2]), W = int(p.shape[3]);
  std::vector<std::vector<float>> logits;
  for (ThreadPinning mode : {ThreadPinning::on, ThreadPinning::off}) {
    ModelOptions options;
    options.pin_threads = mode;
    auto model = Model::load(dir, options);
    logits.emplace_back(size_t(B) * model->info().num_labels);
    model->create_context()->logits(pixels.data(), B, H, W, logits.back().data());
  }
  EXPECT_EQ(std::memcmp(logits[0].data(), logits[1].data(), sizeof(float) * logits[0].size()), 0);
  // and they are HF's (1e-4, the golden tolerance)
  const std::vector<float> want = read_npy(dir / "logits.npy").to_f32();
  ASSERT_EQ(want.size(), logits[0].size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(logits[0][i], want[i], 1e-4f) << i;
}

}  // namespace
}  // namespace perceiver
