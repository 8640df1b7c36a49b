// perceiver bench: placeholder registration until the benchmark command lands.
#include "common.h"

namespace perceiver::cli {
void register_bench(CLI::App&) {}
}  // namespace perceiver::cli
