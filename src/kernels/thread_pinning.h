// One CPU per OpenMP thread for the length of a forward pass.
//
// On a machine whose cores are shared (another process busy on one of two cores), unpinned threads of a
// forward pass get moved between cores by the scheduler, sometimes both onto the same one, and spin at each
// barrier on a core the other process needs. Pinned, each thread keeps its own CPU and the GEMMs' dynamic
// task queues give the thread that shares its core less work: on a 2-core VM with one busy-loop process
// beside it, fp32 ran 1.3x and int8 1.7-2.2x faster pinned, with a third of the spread (docs/performance.md).
//
// Pinning is on when the team covers every CPU the process may run on (it cannot then take a CPU from
// another team of ours that an unpinned scheduler would have given it), unless OMP_PROC_BIND or
// GOMP_CPU_AFFINITY already places the threads; PERCEIVER_PIN_THREADS=1 or 0 forces it on or off. The
// calling thread gets its own affinity back when the pass ends; OpenMP's worker threads stay where they were
// pinned (they are this team's).
#pragma once

#include <memory>

#include "perceiver/perceiver.h"

namespace perceiver {

class PinnedThreads {
 public:
  PinnedThreads(int threads, ThreadPinning mode);
  ~PinnedThreads();
  PinnedThreads(const PinnedThreads&) = delete;
  PinnedThreads& operator=(const PinnedThreads&) = delete;
  bool active() const { return saved_ != nullptr; }

 private:
  struct Saved;
  std::unique_ptr<Saved> saved_;  // the calling thread's affinity, while pinned
};

// Whether a team of `threads` would be pinned (the rule above), for tests and `perceiver bench`.
bool pins_threads(int threads, ThreadPinning mode);

}  // namespace perceiver
