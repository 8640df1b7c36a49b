// AVX-512 fp32 GEMM (see fast_gemm.h). Register tile: 6 rows x 64 columns (24 zmm accumulators, 4 zmm of W,
// one broadcast of x). Blocking: per thread a range of 64-column panels (or of row strips when there are
// fewer panels than threads); k in blocks of up to kc (1024 with a 48 KB L1d), so that the 6 x kc strip of x
// stays in L1 while a panel of W (kc x 64 floats) streams from L2; a few panels at a time (L2 / 4 of them),
// all row strips passing over them, each block prefetched into L2 in one burst first (prefetch_to_l2). On the
// model's linears with weights from memory, kc 1024 with 2 panels per block ran the fp32 model 6-7% faster
// than kc 512 with 8 panels (2 MB L2, 48 KB L1d).
#include "kernels/fast_gemm.h"

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_*() (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/avx512_math.h"
#include "kernels/avx512_tile.h"
#include "perceiver/error.h"

namespace perceiver::fast {
namespace {

constexpr int kRows = 6;  // rows of the register tile
constexpr int kPanel = GemmWeights::kPanel;

// Where a register tile starts from and what it does after the products.
struct TileIo {
  const float* start = nullptr;  // partial sums of the earlier k-blocks (rows ld_start apart), or nullptr:
  long ld_start = 0;             //   then the tile starts from the bias (or 0)
  const float* bias = nullptr;
  float* out = nullptr;  // rows ldo apart
  long ldo = 0;
  // out += the products: the residual already in `out` is added once after them, as (x W^T + b) + r is
  // computed in PyTorch; summed into the accumulators first, each product would be rounded at the size of
  // the residual stream (up to hundreds), and the error would grow through the 48 layers.
  bool add_out = false;
  bool gelu = false;  // GELU before the store (never with add_out)
  int last = 16;      // lanes stored of the last vector column (1..16)
};

// out[R, 16 NV] = (start or bias) + A[R, kc] B[kc, 16 NV] (+ out); A rows lda apart, B a packed panel (row
// stride 16 NV).
template <int R, int NV>
PCV_AVX512 inline void tile(const float* a, long lda, const float* b, int kc, const TileIo& io) {
  const __mmask16 tail = avx512::tail_mask(io.last);
  auto mask = [&](int j) { return j == NV - 1 ? tail : __mmask16(0xffff); };
  __m512 acc[R][NV];
  for (int j = 0; j < NV; ++j) {
    const __m512 bias = io.bias ? _mm512_loadu_ps(io.bias + 16 * j) : _mm512_setzero_ps();
    for (int i = 0; i < R; ++i)
      acc[i][j] = io.start ? _mm512_maskz_loadu_ps(mask(j), io.start + i * io.ld_start + 16 * j) : bias;
  }
#pragma GCC unroll 4
  for (int k = 0; k < kc; ++k) {
    __m512 bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_load_ps(b + 16 * NV * k + 16 * j);
    for (int i = 0; i < R; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * lda + k]);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  if (io.add_out)
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < NV; ++j)
        acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_maskz_loadu_ps(mask(j), io.out + i * io.ldo + 16 * j));
  if (io.gelu)
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < NV; ++j) acc[i][j] = avx512::gelu512(acc[i][j]);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NV; ++j) _mm512_mask_storeu_ps(io.out + i * io.ldo + 16 * j, mask(j), acc[i][j]);
}

// The partial tiles: R < 6 rows (the last strip) and/or NV < 4 vectors (the last panel).
template <int R>
PCV_AVX512 void tile_nv(int nv, const float* a, long lda, const float* b, int kc, const TileIo& io) {
  switch (nv) {
    case 1:
      return tile<R, 1>(a, lda, b, kc, io);
    case 2:
      return tile<R, 2>(a, lda, b, kc, io);
    case 3:
      return tile<R, 3>(a, lda, b, kc, io);
    default:
      return tile<R, 4>(a, lda, b, kc, io);
  }
}

PCV_AVX512 void any_tile(int rows, int nv, const float* a, long lda, const float* b, int kc,
                         const TileIo& io) {
  switch (rows) {
    case 1:
      return tile_nv<1>(nv, a, lda, b, kc, io);
    case 2:
      return tile_nv<2>(nv, a, lda, b, kc, io);
    case 3:
      return tile_nv<3>(nv, a, lda, b, kc, io);
    case 4:
      return tile_nv<4>(nv, a, lda, b, kc, io);
    case 5:
      return tile_nv<5>(nv, a, lda, b, kc, io);
    default:
      return tile_nv<6>(nv, a, lda, b, kc, io);
  }
}

// Asks for [begin, end) in L2, one prefetch per cache line, all at once. Used on each block of W before the
// first row strip needs it: W comes from memory, and the hardware prefetcher, which stops at every 4 KB page,
// fetches it no faster than the tiles consume it; the many misses in flight at once fetch it faster. 2-3%
// more GFLOP/s on the model's linears with cold weights (bench_gemm --weight-sets 8), about 1% on the model.
PCV_AVX512 void prefetch_to_l2(const float* begin, const float* end) {
  for (const char* line = reinterpret_cast<const char*>(begin); line < reinterpret_cast<const char*>(end);
       line += 64)
    _mm_prefetch(line, _MM_HINT_T1);
}

// Rows [m0, m1) x panels [p0, p1) of y, all of k: panels_per_block panels at a time, so that the block of W
// in use stays in L2 while the row strips pass over it. The k-blocks before the last leave partial sums in
// y, or, when y holds a residual to add (accumulate), in `partial` ((m1 - m0) x 64 panels_per_block floats).
PCV_AVX512 void gemm_block(const GemmWeights& w, const float* x, long ldx, int m0, int m1, int p0, int p1,
                           float* y, long ldy, bool accumulate, bool gelu, float* partial) {
  const int N = w.n(), panels_per_block = gemm_blocking().panels_per_block, k_blocks = w.k_blocks();
  for (int pb = p0; pb < p1; pb += panels_per_block) {
    const int pe = std::min(p1, pb + panels_per_block);
    const long ld_partial = long(pe - pb) * kPanel;
    for (int kb = 0; kb < k_blocks; ++kb) {
      const int k0 = w.k_begin(kb), kc = w.k_begin(kb + 1) - k0;
      const bool first = kb == 0, last_block = kb + 1 == k_blocks;
      prefetch_to_l2(w.panel(kb, pb), w.panel(kb, pe - 1) + size_t(kc) * w.panel_width(pe - 1));
      for (int m = m0; m < m1; m += kRows) {
        const int rows = std::min(kRows, m1 - m);
        const float* a = x + size_t(m) * ldx + k0;
        for (int p = pb; p < pe; ++p) {
          const int n0 = p * kPanel, width = std::min(kPanel, N - n0), nv = (width + 15) / 16;
          float* c = y + size_t(m) * ldy + n0;
          // where the partial sums of this tile live between k-blocks
          float* c_partial = accumulate ? partial + size_t(m - m0) * ld_partial + (p - pb) * kPanel : c;
          const long ld_c_partial = accumulate ? ld_partial : ldy;
          TileIo io;
          io.start = first ? nullptr : c_partial;
          io.ld_start = ld_c_partial;
          io.bias = first && w.bias() ? w.bias() + n0 : nullptr;
          io.out = last_block ? c : c_partial;
          io.ldo = last_block ? ldy : ld_c_partial;
          io.add_out = accumulate && last_block;
          io.gelu = gelu && last_block;
          io.last = width - 16 * (nv - 1);
          if (rows == kRows && nv == 4 && io.last == 16)
            tile<kRows, 4>(a, ldx, w.panel(kb, p), kc, io);
          else
            any_tile(rows, nv, a, ldx, w.panel(kb, p), kc, io);
        }
      }
    }
  }
}

// Packs rows src[0..15] of W (nullptr: padding) into 16 columns of a panel: dst[kk * width + j] =
// src[j][k0 + kk], kk < kc. Rows that follow each other in memory go through 16 x 16 register transposes.
PCV_AVX512 void pack_group(const float* const* src, int k, int k0, int kc, float* dst, int width) {
  int rows = 0;
  while (rows < 16 && src[rows] && src[rows] == src[0] + size_t(rows) * k) ++rows;
  const bool contiguous = rows > 0 && std::all_of(src + rows, src + 16, [](const float* r) { return !r; });
  if (contiguous) {
    for (int kk = 0; kk < kc; kk += 16)
      avx512::transpose_block(src[0] + k0 + kk, k, rows, std::min(16, kc - kk), dst + size_t(kk) * width,
                              width, 16);
    return;
  }
  for (int kk = 0; kk < kc; ++kk)
    for (int j = 0; j < 16; ++j) dst[size_t(kk) * width + j] = src[j] ? src[j][k0 + kk] : 0.0f;
}

// Denormal weights become 0 in the packed panel's columns [0, 16) of rows [0, kc) (row stride width): an FMA
// whose product is denormal takes a microcode assist on Intel CPUs (65x slower), and trained checkpoints can
// hold a few such weights. Their products are below 1e-33 of anything the model sums.
PCV_AVX512 void flush_denormals(float* dst, int kc, int width) {
  for (int kk = 0; kk < kc; ++kk) {
    float* row = dst + size_t(kk) * width;
    const __mmask16 denormal = _mm512_fpclass_ps_mask(_mm512_loadu_ps(row), 0x20);
    if (denormal) _mm512_mask_storeu_ps(row, denormal, _mm512_setzero_ps());
  }
}

// Thread t of nt maps in its share of the pages of [p, p + bytes) for writing, in one system call. Best
// effort (MADV_POPULATE_WRITE needs Linux 5.14; pages already present are left as they are).
void fault_in_share(void* p, size_t bytes, int t, int nt) {
#ifdef MADV_POPULATE_WRITE
  const uintptr_t page = 4096, begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page,
                  end = reinterpret_cast<uintptr_t>(p) + bytes;
  const uintptr_t pages = end > begin ? (end - begin) / page : 0;
  const uintptr_t b0 = begin + pages * t / nt * page, b1 = begin + pages * (t + 1) / nt * page;
  if (b1 > b0) ::madvise(reinterpret_cast<void*>(b0), b1 - b0, MADV_POPULATE_WRITE);
#else
  (void)p, (void)bytes, (void)t, (void)nt;
#endif
}

GemmBlocking blocking_for(long l1d_bytes, long l2_bytes) {
  GemmBlocking b;
  if (l1d_bytes <= 0) l1d_bytes = 32 << 10;  // what sysconf may not know (some VMs): assume small caches
  if (l2_bytes <= 0) l2_bytes = 1 << 20;
  b.kc = int(std::clamp<long>(l1d_bytes / 2 / (kRows * sizeof(float)) / 16 * 16, 256, 1024));
  b.panels_per_block = int(std::clamp<long>(l2_bytes / 4 / (long(b.kc) * kPanel * sizeof(float)), 1, 16));
  return b;
}

}  // namespace

const GemmBlocking& gemm_blocking() {
  static const GemmBlocking blocking =
      blocking_for(sysconf(_SC_LEVEL1_DCACHE_SIZE), sysconf(_SC_LEVEL2_CACHE_SIZE));
  return blocking;
}

GemmWeights::GemmWeights(const std::vector<const float*>& parts, const std::vector<int>& part_rows,
                         const std::vector<const float*>& biases, int k, int threads, int kc_max)
    : k_(k) {
  if (parts.size() != part_rows.size() || parts.size() != biases.size() || k <= 0 || kc_max < 0)
    throw Error(ErrorKind::internal, "GemmWeights: inconsistent parts");
  for (int r : part_rows) n_ += r;
  n_pad_ = (n_ + 15) / 16 * 16;
  if (kc_max == 0) kc_max = gemm_blocking().kc;
  const int blocks = (k + kc_max - 1) / kc_max;
  for (int b = 0; b <= blocks; ++b) k_begin_.push_back(int(int64_t(k) * b / blocks));
  // Row n of the stacked W, or nullptr past N (padding).
  std::vector<const float*> row(n_pad_, nullptr);
  std::vector<const float*> bias_of(n_pad_, nullptr);
  for (size_t i = 0, n = 0; i < parts.size(); ++i)
    for (int r = 0; r < part_rows[i]; ++r, ++n) {
      row[n] = parts[i] + size_t(r) * k;
      bias_of[n] = biases[i] ? biases[i] + r : nullptr;
    }
  const size_t bytes = sizeof(float) * size_t(k) * n_pad_;
  data_.reserve(bytes);
  float* out = data_.as<float>();
#pragma omp parallel num_threads(std::max(1, threads))
  {
    // The destination's page faults took over half of the packing time: fault it in first, a share per
    // thread, in one system call each.
    fault_in_share(out, bytes, omp_get_thread_num(), omp_get_num_threads());
#pragma omp barrier
    // 16 rows of W at a time (16 sequential read streams) into [k][16] columns of their panel.
#pragma omp for schedule(static)
    for (int g = 0; g < n_pad_ / 16; ++g) {
      const int p = g * 16 / kPanel, width = panel_width(p), col = g * 16 - p * kPanel;
      const float* const* src = &row[size_t(g) * 16];
      for (int kb = 0; kb < k_blocks(); ++kb) {
        const int k0 = k_begin_[kb], kc = k_begin_[kb + 1] - k0;
        float* dst = out + size_t(k0) * n_pad_ + size_t(kc) * kPanel * p + col;
        pack_group(src, k, k0, kc, dst, width);
        flush_denormals(dst, kc, width);
      }
    }
  }
  has_bias_ = std::any_of(biases.begin(), biases.end(), [](const float* b) { return b != nullptr; });
  if (has_bias_) {
    bias_.reserve(sizeof(float) * n_pad_);
    for (int n = 0; n < n_pad_; ++n) {
      const float b = bias_of[n] ? *bias_of[n] : 0.0f;
      bias_.as<float>()[n] = std::fpclassify(b) == FP_SUBNORMAL ? 0.0f : b;
    }
  }
}

void gemm_f32(const GemmWeights& w, const float* x, long ldx, int rows, float* y, long ldy, bool accumulate,
              bool gelu, int threads, Scratch& scratch) {
  if (gelu && accumulate) throw Error(ErrorKind::internal, "gemm_f32: GELU applies before a residual sum");
  if (rows <= 0) return;
  const int panels = (w.n() + kPanel - 1) / kPanel;
  const int strips = (rows + kRows - 1) / kRows;
  const int T = std::max(1, std::min(threads, std::max(panels, strips)));
  // Partial sums of a residual GEMM with several k-blocks (kept out of y, which holds the residual): rows x
  // one block of panels per thread.
  const bool partials = accumulate && w.k_blocks() > 1;
  const size_t partial_floats = size_t(rows) * kPanel * gemm_blocking().panels_per_block;
  if (partials) scratch.reserve(sizeof(float) * partial_floats * T);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* partial = partials ? scratch.as<float>() + partial_floats * t : nullptr;
    if (panels >= nt) {
      // Split the columns into blocks of panels (as many as stay in L2 together), handed out one at a time:
      // on a shared machine a thread that loses its core for a while does fewer blocks instead of holding
      // the other back at the end. Every block reads all of x, whichever thread runs it.
      const int per_task = std::max(1, std::min(gemm_blocking().panels_per_block, panels / nt));
      const int tasks = (panels + per_task - 1) / per_task;
#pragma omp for schedule(dynamic, 1) nowait
      for (int task = 0; task < tasks; ++task)
        gemm_block(w, x, ldx, 0, rows, task * per_task, std::min(panels, (task + 1) * per_task), y, ldy,
                   accumulate, gelu, partial);
    } else {  // split the rows, in whole strips
      const int m0 = std::min(rows, strips * t / nt * kRows),
                m1 = std::min(rows, strips * (t + 1) / nt * kRows);
      gemm_block(w, x, ldx, m0, m1, 0, panels, y, ldy, accumulate, gelu, partial);
    }
  }
}

}  // namespace perceiver::fast
