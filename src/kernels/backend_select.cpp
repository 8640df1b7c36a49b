// Picks the kernels at run time: the fast backend when compiled in and supported by this CPU.
#include "kernels/kernels.h"

namespace perceiver {

#ifdef PERCEIVER_HAVE_ONEDNN
std::unique_ptr<Backend> make_fast_backend(
    int threads);  // src/kernels/fast_backend.cpp; nullptr if unsupported
#endif

std::unique_ptr<Backend> make_best_backend(int threads) {
#ifdef PERCEIVER_HAVE_ONEDNN
  if (auto fast = make_fast_backend(threads)) return fast;
#endif
  return make_reference_backend(threads);
}

}  // namespace perceiver
