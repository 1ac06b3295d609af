// CPU convolution kernels for HINet, as XLA FFI custom calls (built and registered by
// hinet_jax/cpu_kernels.py). Square kernels, NHWC x HWIO, symmetric zero padding, float32.
//
// HinetConvWgrad, the kernel gradient:
//   dW[i, j, c, o] = sum_{n, h, w} x[n, s*h + i - p, s*w + j - p, c] * g[n, h, w, o]   (0 outside)
// x: (N, H, W, C), g: (N, Ho, Wo, O) (the output cotangent), dW: (k, k, C, O); attributes
// kernel_size, stride, padding. HinetConvFwd, the convolution itself:
//   y[n, h, w, o] = sum_{i, j, c} x[n, s*h + i - p, s*w + j - p, c] * W[i, j, c, o]
// (the input gradient of a stride-1 conv is this conv of g with the flipped, transposed kernel).
//
// Why they exist: XLA:CPU runs a kernel gradient as a convolution over the whole image with C as
// the batch and N as the features, after transposing x and g into batch-minor layouts; on 2 Zen 4
// cores that ran at 60-90 GFLOP/s and was a third of HINet's training step, and its forward
// convolutions ran at 60-150 GFLOP/s where channels are few (bench/README.md). Both are matmuls
// here, at ~190 GFLOP/s, with no copies.
//
// Kernel gradient: for a fixed tap (i, j) and output row (n, h), the pixels that meet are one
// strided run of x's row s*h + i - p and one contiguous run of g's row h, so each tap is a sum of
// small GEMMs over such runs (K = pixels, M = C, N = O). The micro-kernel keeps a block of NC input
// channels x NV vectors of output channels of dW in registers over all runs of a chunk of rows,
// broadcasting x and loading g (O is the vector dimension).
// Forward: a block of MR output pixels x NV vectors of output channels stays in registers over the
// whole k*k*C reduction, broadcasting x and loading W; blocks at the image border read a zeroed
// copy of their window.
//
// Threads (ParallelFor): work items are taken from an atomic counter by the calling thread and by
// tasks scheduled on XLA's intra-op pool. The caller only ever waits for items already taken,
// which are being computed, so it cannot deadlock on a pool whose threads are all busy. The kernel
// gradient sums fixed ranges of items, so its result does not depend on the scheduling.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kVec = 16;    // floats per vector register
constexpr int kMaxNC = 12;  // 12 x 2 accumulators + 2 g vectors + 1 broadcast of 32 zmm
#else
constexpr int kVec = 8;
constexpr int kMaxNC = 6;  // 6 x 2 accumulators + 2 + 1 of 16 ymm
#endif

// ~512 output pixels a chunk: its rows of x and g stay in L2 across taps and channel blocks.
constexpr int64_t kPixelsPerChunk = 512;

typedef float Vec __attribute__((vector_size(kVec * sizeof(float))));

inline Vec LoadVec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));  // unaligned load
  return v;
}

inline void StoreVec(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

// One run of `len` pixels where a tap's x (pixel stride x_step) and g (pixel stride O) meet.
struct Run {
  const float* x;
  const float* g;
  int64_t len;
};

struct Strides {
  int64_t x_step;  // floats between consecutive pixels of a run in x: stride * C
  int64_t g_step;  // O
  int64_t acc;     // floats between dW rows of consecutive input channels: O
};

// acc[c, v*kVec : (v+1)*kVec] += sum over runs and pixels of x[.., x_off + c] * g[.., g_off + ..],
// for c < NC and NV vectors of output channels.
template <int NC, int NV>
void MicroKernel(const Run* runs, int n_runs, int64_t x_off, int64_t g_off, Strides st,
                 float* acc_out) {
  Vec acc[NC][NV];
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = LoadVec(acc_out + c * st.acc + v * kVec);
  for (int r = 0; r < n_runs; ++r) {
    const float* x = runs[r].x + x_off;
    const float* g = runs[r].g + g_off;
    for (int64_t k = 0; k < runs[r].len; ++k, x += st.x_step, g += st.g_step) {
      Vec gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = LoadVec(g + v * kVec);
      for (int c = 0; c < NC; ++c) {
        const Vec xb = Vec{} + x[c];
        for (int v = 0; v < NV; ++v) acc[c][v] += xb * gv[v];
      }
    }
  }
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) StoreVec(acc_out + c * st.acc + v * kVec, acc[c][v]);
}

using MicroKernelFn = void (*)(const Run*, int, int64_t, int64_t, Strides, float*);

template <int NV, int... NC>
constexpr std::array<MicroKernelFn, sizeof...(NC)> KernelTable(std::integer_sequence<int, NC...>) {
  return {&MicroKernel<NC + 1, NV>...};
}

// Indexed by NC - 1, for NV = 2 and NV = 1.
const auto kKernels2 = KernelTable<2>(std::make_integer_sequence<int, kMaxNC>{});
const auto kKernels1 = KernelTable<1>(std::make_integer_sequence<int, kMaxNC>{});

// Output channels left over after whole vectors (only for widths that are not a multiple of the
// vector length; HINet's are multiples of 16 from wf 16 on).
void TailKernel(const Run* runs, int n_runs, int64_t x_off, int64_t g_off, int64_t n_c,
                int64_t n_o, Strides st, float* acc_out) {
  for (int r = 0; r < n_runs; ++r) {
    const float* x = runs[r].x + x_off;
    const float* g = runs[r].g + g_off;
    for (int64_t k = 0; k < runs[r].len; ++k, x += st.x_step, g += st.g_step)
      for (int64_t c = 0; c < n_c; ++c)
        for (int64_t o = 0; o < n_o; ++o) acc_out[c * st.acc + o] += x[c] * g[o];
  }
}

struct Problem {
  const float* x;
  const float* g;
  int64_t n, h, w, c;   // x
  int64_t ho, wo, o;    // g
  int64_t k, s, p;      // kernel size, stride, padding
  int64_t rows_per_chunk;
  int64_t n_items;      // row chunks x k*k taps
};

// Floor division for a possibly negative numerator (C++ `/` truncates toward zero).
inline int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Adds tap (i, j) of output rows [r0, r1) (of the N*Ho rows of g) to dw.
void AccumulateTap(const Problem& p, int64_t r0, int64_t r1, int64_t i, int64_t j, float* dw,
                   std::vector<Run>& runs) {
  // Output pixels w whose input column s*w + j - p lies inside the image: [w0, w1).
  const int64_t w0 = std::max<int64_t>(0, -FloorDiv(j - p.p, p.s));
  const int64_t w1 = std::min<int64_t>(p.wo, FloorDiv(p.w - 1 + p.p - j, p.s) + 1);
  if (w1 <= w0) return;
  runs.clear();
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t img = r / p.ho, hg = r % p.ho, hx = p.s * hg + i - p.p;
    if (hx < 0 || hx >= p.h) continue;
    runs.push_back({p.x + ((img * p.h + hx) * p.w + p.s * w0 + j - p.p) * p.c,
                    p.g + ((img * p.ho + hg) * p.wo + w0) * p.o, w1 - w0});
  }
  if (runs.empty()) return;
  const int n_runs = static_cast<int>(runs.size());
  const Strides st{p.s * p.c, p.o, p.o};
  float* dw_tap = dw + (i * p.k + j) * p.c * p.o;
  for (int64_t c0 = 0; c0 < p.c; c0 += kMaxNC) {
    const int nc = static_cast<int>(std::min<int64_t>(kMaxNC, p.c - c0));
    float* acc = dw_tap + c0 * p.o;
    int64_t o0 = 0;
    for (; o0 + 2 * kVec <= p.o; o0 += 2 * kVec)
      kKernels2[nc - 1](runs.data(), n_runs, c0, o0, st, acc + o0);
    for (; o0 + kVec <= p.o; o0 += kVec) kKernels1[nc - 1](runs.data(), n_runs, c0, o0, st, acc + o0);
    if (o0 < p.o) TailKernel(runs.data(), n_runs, c0, o0, nc, p.o - o0, st, acc + o0);
  }
}

// Runs fn(item) for item in [0, n_items) on the calling thread and on up to threads - 1 tasks
// scheduled on XLA's intra-op pool. Items are taken from an atomic counter; the caller then waits
// only for items already taken (being computed), so it cannot deadlock on a pool whose threads
// are all busy: it would just do every item itself.
struct ParallelState {
  std::function<void(int64_t)> fn;
  int64_t n_items;
  std::atomic<int64_t> next_item{0};
  std::atomic<int64_t> done_items{0};
};

void Participate(ParallelState& s) {
  int64_t item;
  while ((item = s.next_item.fetch_add(1, std::memory_order_relaxed)) < s.n_items) {
    s.fn(item);
    s.done_items.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ParallelFor(ffi::ThreadPool& pool, int64_t n_items, std::function<void(int64_t)> fn) {
  auto state = std::make_shared<ParallelState>();
  state->fn = std::move(fn);
  state->n_items = n_items;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int helpers = static_cast<int>(std::max<int64_t>(0, std::min(threads, n_items) - 1));
  for (int t = 0; t < helpers; ++t) pool.Schedule([state] { Participate(*state); });
  Participate(*state);
  while (state->done_items.load(std::memory_order_acquire) < n_items) std::this_thread::yield();
}

ffi::Error ConvWgradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                         ffi::ResultBuffer<ffi::F32> dw, int64_t kernel_size, int64_t stride,
                         int64_t padding) {
  const auto xd = x.dimensions();
  const auto gd = g.dimensions();
  const auto wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("conv_wgrad: x, g and dW must all have rank 4");
  if (kernel_size < 1 || stride < 1 || padding < 0)
    return ffi::Error::InvalidArgument("conv_wgrad: bad kernel_size, stride or padding");
  const int64_t ho = std::max<int64_t>(0, FloorDiv(xd[1] + 2 * padding - kernel_size, stride) + 1);
  const int64_t wo = std::max<int64_t>(0, FloorDiv(xd[2] + 2 * padding - kernel_size, stride) + 1);
  if (gd[0] != xd[0] || gd[1] != ho || gd[2] != wo)
    return ffi::Error::InvalidArgument("conv_wgrad: g must be (N, Ho, Wo, O) for x's N, H, W");
  if (wd[0] != kernel_size || wd[1] != kernel_size || wd[2] != xd[3] || wd[3] != gd[3])
    return ffi::Error::InvalidArgument("conv_wgrad: dW must be (k, k, C, O)");

  Problem p{x.typed_data(), g.typed_data(), xd[0], xd[1], xd[2], xd[3], ho, wo, gd[3],
            kernel_size, stride, padding, 1, 0};
  float* out = dw->typed_data();
  const int64_t size = p.k * p.k * p.c * p.o;
  std::fill(out, out + size, 0.f);
  if (p.n * p.ho * p.wo == 0 || p.c == 0 || p.o == 0) return ffi::Error::Success();
  p.rows_per_chunk = std::max<int64_t>(1, kPixelsPerChunk / p.wo);
  p.n_items = p.k * p.k * ((p.n * p.ho + p.rows_per_chunk - 1) / p.rows_per_chunk);

  // The items are split into one fixed, contiguous range per thread, each summed into its own dW
  // (range 0 into the output) and the ranges added in order: the result does not depend on which
  // thread ran what, so training is reproducible run to run.
  const int64_t taps = p.k * p.k;
  const int64_t ranges = std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), p.n_items);
  std::vector<std::unique_ptr<float[]>> partials(ranges);
  ParallelFor(pool, ranges, [&](int64_t range) {
    thread_local std::vector<Run> runs;
    float* dw = out;
    if (range > 0) {
      partials[range].reset(new float[size]());
      dw = partials[range].get();
    }
    // Consecutive items are the taps of one chunk: a range covers whole bands of rows.
    for (int64_t item = range * p.n_items / ranges; item < (range + 1) * p.n_items / ranges;
         ++item) {
      const int64_t r0 = (item / taps) * p.rows_per_chunk;
      const int64_t r1 = std::min(r0 + p.rows_per_chunk, p.n * p.ho);
      AccumulateTap(p, r0, r1, item % taps / p.k, item % p.k, dw, runs);
    }
  });
  for (int64_t range = 1; range < ranges; ++range)
    for (int64_t k = 0; k < size; ++k) out[k] += partials[range][k];
  return ffi::Error::Success();
}

//===----------------------------------------------------------------------===//
// Forward convolution: out[n, h, w, o] = sum_{i, j, c} x[n, s*h + i - p, s*w + j - p, c] W[i, j, c, o]
// (zero outside). A block of MR output pixels x NV vectors of output channels stays
// in registers over the whole reduction (k*k taps x C), broadcasting x and loading W.
//===----------------------------------------------------------------------===//

struct FwdProblem {
  const float* x;  // (N, H, W, C)
  const float* w;  // (k, k, C, O)
  float* out;      // (N, Ho, Wo, O)
  int64_t n, h, wd, c, ho, wo, o, k, s, p;
};

constexpr int kMaxMR = 12;  // output pixels a block: 12 x 2 accumulators (AVX-512)

// x points at tap (0, 0), channel 0 of the block's first output pixel; input rows are row_stride
// floats apart, consecutive output pixels s*C. w points at W[0, 0, 0, o0], out at out[.., w0, o0].
template <int MR, int NV>
void FwdMicroKernel(const FwdProblem& p, const float* x, int64_t row_stride, const float* w,
                    float* out) {
  Vec acc[MR][NV] = {};
  const int64_t pixel = p.s * p.c;
  for (int64_t i = 0; i < p.k; ++i) {
    for (int64_t j = 0; j < p.k; ++j) {
      const float* xt = x + i * row_stride + j * p.c;
      const float* wt = w + (i * p.k + j) * p.c * p.o;
      for (int64_t c = 0; c < p.c; ++c, wt += p.o) {
        Vec wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = LoadVec(wt + v * kVec);
        for (int m = 0; m < MR; ++m) {
          const Vec xb = Vec{} + xt[m * pixel + c];
          for (int v = 0; v < NV; ++v) acc[m][v] += xb * wv[v];
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) StoreVec(out + m * p.o + v * kVec, acc[m][v]);
}

using FwdKernelFn = void (*)(const FwdProblem&, const float*, int64_t, const float*, float*);

template <int NV, int... MR>
constexpr std::array<FwdKernelFn, sizeof...(MR)> FwdKernelTable(std::integer_sequence<int, MR...>) {
  return {&FwdMicroKernel<MR + 1, NV>...};
}

const auto kFwdKernels2 = FwdKernelTable<2>(std::make_integer_sequence<int, kMaxMR>{});
const auto kFwdKernels1 = FwdKernelTable<1>(std::make_integer_sequence<int, kMaxMR>{});

void FwdTail(const FwdProblem& p, const float* x, int64_t row_stride, const float* w, float* out,
             int64_t mr, int64_t n_o) {
  for (int64_t m = 0; m < mr; ++m)
    for (int64_t o = 0; o < n_o; ++o) {
      float sum = 0.f;
      for (int64_t i = 0; i < p.k; ++i)
        for (int64_t j = 0; j < p.k; ++j)
          for (int64_t c = 0; c < p.c; ++c)
            sum += x[i * row_stride + (m * p.s + j) * p.c + c] *
                   w[((i * p.k + j) * p.c + c) * p.o + o];
      out[m * p.o + o] = sum;
    }
}

// One output row (n, h): every pixel block and output channel block. Blocks whose window lies
// inside the image read x in place; the others (the image border) read a zero-padded copy of
// their window, so the micro-kernel never bounds-checks.
void FwdRow(const FwdProblem& p, int64_t row, std::vector<float>& window) {
  const int64_t img = row / p.ho, h = row % p.ho;
  const int64_t top = p.s * h - p.p;  // input row of tap i = 0
  const bool rows_inside = top >= 0 && top + p.k <= p.h;
  const float* x_img = p.x + img * p.h * p.wd * p.c;
  float* out_row = p.out + row * p.wo * p.o;
  for (int64_t w0 = 0; w0 < p.wo; w0 += kMaxMR) {
    const int mr = static_cast<int>(std::min<int64_t>(kMaxMR, p.wo - w0));
    const int64_t left = p.s * w0 - p.p;  // input column of tap j = 0, pixel 0
    const int64_t span = (mr - 1) * p.s + p.k;
    const float* x;
    int64_t row_stride;
    if (rows_inside && left >= 0 && left + span <= p.wd) {
      x = x_img + (top * p.wd + left) * p.c;
      row_stride = p.wd * p.c;
    } else {
      window.assign(p.k * span * p.c, 0.f);
      for (int64_t i = 0; i < p.k; ++i) {
        const int64_t hx = top + i;
        if (hx < 0 || hx >= p.h) continue;
        const int64_t c0 = std::max<int64_t>(0, -left), c1 = std::min<int64_t>(span, p.wd - left);
        if (c1 > c0)
          std::memcpy(window.data() + (i * span + c0) * p.c, x_img + (hx * p.wd + left + c0) * p.c,
                      (c1 - c0) * p.c * sizeof(float));
      }
      x = window.data();
      row_stride = span * p.c;
    }
    float* out = out_row + w0 * p.o;
    int64_t o0 = 0;
    for (; o0 + 2 * kVec <= p.o; o0 += 2 * kVec)
      kFwdKernels2[mr - 1](p, x, row_stride, p.w + o0, out + o0);
    for (; o0 + kVec <= p.o; o0 += kVec) kFwdKernels1[mr - 1](p, x, row_stride, p.w + o0, out + o0);
    if (o0 < p.o) FwdTail(p, x, row_stride, p.w + o0, out + o0, mr, p.o - o0);
  }
}

ffi::Error ConvFwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t padding) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  const auto yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("conv_fwd: x, W and y must all have rank 4");
  const int64_t k = wd[0];
  if (wd[1] != k || wd[2] != xd[3] || stride < 1 || padding < 0)
    return ffi::Error::InvalidArgument("conv_fwd: W must be (k, k, C, O); stride >= 1, padding >= 0");
  const int64_t ho = std::max<int64_t>(0, FloorDiv(xd[1] + 2 * padding - k, stride) + 1);
  const int64_t wo = std::max<int64_t>(0, FloorDiv(xd[2] + 2 * padding - k, stride) + 1);
  if (yd[0] != xd[0] || yd[1] != ho || yd[2] != wo || yd[3] != wd[3])
    return ffi::Error::InvalidArgument("conv_fwd: y must be (N, Ho, Wo, O)");
  if (yd[0] * ho * wo * yd[3] == 0) return ffi::Error::Success();
  const FwdProblem p{x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], xd[2], xd[3],
                     ho, wo, wd[3], k, stride, padding};
  ParallelFor(pool, p.n * ho, [&](int64_t row) {
    thread_local std::vector<float> window;
    FwdRow(p, row, window);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HinetConvWgrad, ConvWgradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kernel_size")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HinetConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding"));
