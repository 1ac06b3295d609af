// CPU convolution kernels for HINet, as XLA FFI custom calls (built and registered by
// hinet_jax/cpu/kernels.py). Square kernels up to 8x8, NHWC, kernels (k, k, C, O) or, with
// kernel_hwoi, (k, k, O, C); symmetric zero padding; float32.
//
// HinetConv, the convolution (+ bias; optionally then LeakyReLU and + a residual, in the same
// pass over the output):
//   y[n, h, w, o] = b[o] + sum_{i, j, c} x[n, s*h + i - p, s*w + j - p, c] * W[i, j, c, o]
// where x may be two arrays joined along the channels (the decoder's upsampled input and skip),
// read where they are;
// or (transposed = 1) its input gradient, which is also the transposed convolution of g (+ bias):
//   dx[n, y, x, c] = sum_{i, j, o} g[n, (y + p - i) / s, (x + p - j) / s, o] * W[i, j, c, o]
//   over the taps where both divisions are exact and land inside g.
// HinetWinograd, the 3x3 / stride-1 / padding-1 convolution (+ the same epilogue and joins) by
// Winograd F(2x2, 3x3) or F(4x4, 3x3) on a kernel that HinetPackWinograd transformed and packed
// (section below): at inference once per set of weights; in training, for the forward and the
// input gradient (a convolution too, with the kernel flipped and transposed), in every step.
// HinetConvBwd, both gradients of a layer: the input gradient above (or, for a transposed-
// convolution layer, the convolution) and the kernel gradient
//   dW[i, j, c, o] = sum_{n, h, w} x[n, s*h + i - p, s*w + j - p, c] * g[n, h, w, o].
// (zero outside the image everywhere.) HinetWinogradBwd, both gradients of a Winograd layer by
// Winograd (training: the input gradient a Winograd convolution, the kernel gradient summed
// over tiles in the transformed domain).
//
// Why they exist: XLA:CPU's convolutions (YNNPACK or Eigen) run HINet's shapes well below the
// float32 matmul rate, its kernel gradients (a convolution over the whole image with C as the
// batch, after transposing x and g) and strided input gradients lower still (bench/README.md).
// These run every HINet shape as register-blocked matmuls with no layout changes in XLA.
//
// Convolution and input gradient share one micro-kernel (DirectKernel): a block of MR output
// pixels x NV vectors of output channels stays in registers over a list of taps, each tap a run
// of R reduction channels, broadcasting the input and loading the weights. For the convolution
// a tap is (i, j) and R = C; for the input gradient of a stride-s conv, the output pixels with
// the same row and column parity modulo s meet the same taps, at consecutive pixels of g, so a
// block of them is the same product with R = O over the taps of that parity. Each pixel of a
// block has its own input and output offset, so blocks span rows (a 16-pixel row is not 12 + 4).
// The weights are first packed (PackWeights, into a scratch output of the call that XLA
// allocates; for inference once per set of weights by HinetPack, whose output the call then
// takes) as the micro-kernel reads them, so every weight load is sequential; a block's sums
// stay in registers over the whole reduction. Work items are bands of output rows (a few
// rows of a large image, a whole small one) times ranges of output channels (split only as far
// as the threads need). The convolution reads its input in place, the pixels whose window
// crosses the border in classes of their own that meet only the taps inside the image
// (ForwardInPlace). Where that cannot be (the input gradient; C a multiple of 256, whose pixels
// are then spread to another stride; a join of unequal parts) the input rows a band reads are
// copied once into a small zero-padded buffer, so no block checks bounds (where the channels are
// split, the whole padded input is copied once for all items: SharedBands).
//
// Kernel gradient: for a fixed tap (i, j) and output row (n, h), the pixels that meet are one
// strided run of x's row s*h + i - p and one contiguous run of g's row h, so each tap is a sum
// of small GEMMs over such runs (K = pixels, M = C, N = O). The micro-kernel keeps NC input
// channels x NV vectors of output channels of dW in registers over all runs of a chunk of rows
// (with kernel_hwoi the roles of x and g swap, so dW comes out (k, k, O, C) directly).
//
// Threads (ParallelFor): work items are taken from an atomic counter by the calling thread and by
// tasks scheduled on XLA's intra-op pool. The caller only ever waits for items already taken,
// which are being computed, so it cannot deadlock on a pool whose threads are all busy. Every
// output element is summed in an order fixed by the shapes and the thread count alone, so the
// results do not depend on the scheduling (training is reproducible run to run).

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kVec = 16;    // floats per vector register
constexpr int kMaxNC = 12;  // 12 x 2 accumulators + 2 g vectors + 1 broadcast of 32 zmm
constexpr int kMaxMR = 12;  // output pixels a block: 12 x 2 accumulators + 2 + 1 of 32 zmm
#else
constexpr int kVec = 8;
constexpr int kMaxNC = 6;   // 6 x 2 accumulators + 2 + 1 of 16 ymm
constexpr int kMaxMR = 6;
#endif
constexpr int kMaxTaps = 64;  // kernels up to 8x8

// Kernel gradient: ~512 output pixels a chunk, so its rows of x and g stay in L2 across taps and
// channel blocks. Images with at most this many pixels are one chunk, split by output instead.
constexpr int64_t kPixelsPerChunk = 512;

typedef float Vec __attribute__((vector_size(kVec * sizeof(float))));

inline Vec LoadVec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));  // unaligned load
  return v;
}

inline void StoreVec(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

// Every lane = *p, as one broadcast load. `Vec{} + s` would not do: without -ffast-math the
// compiler must keep the `+ 0.0f` (it turns -0 into +0), so it emits a scalar add and a
// register-to-register broadcast per use, which compete with the FMAs for the vector ports (half
// the FMA rate on CPUs with two 512-bit FMA units: bench/README.md). `s - 0.0f` == s for every
// s, so the subtraction folds away and the broadcast reads memory directly.
inline Vec Broadcast(const float* p) { return *p - Vec{}; }

// Floor division for a possibly negative numerator (C++ `/` truncates toward zero).
inline int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t CeilDiv(int64_t a, int64_t b) { return FloorDiv(a + b - 1, b); }

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
  if (n_items <= 0) return;
  auto state = std::make_shared<ParallelState>();
  state->fn = std::move(fn);
  state->n_items = n_items;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int helpers = static_cast<int>(std::max<int64_t>(0, std::min(threads, n_items) - 1));
  for (int t = 0; t < helpers; ++t) pool.Schedule([state] { Participate(*state); });
  Participate(*state);
  while (state->done_items.load(std::memory_order_acquire) < n_items) std::this_thread::yield();
}

// Splits `count` items into ceil(count / max_size) blocks whose sizes differ by at most one
// (16 pixels -> 8 + 8, not 12 + 4: a short block has too few accumulators to hide latency).
struct Blocks {
  int64_t n, base, extra;  // the first `extra` blocks have base + 1 items
  Blocks(int64_t count, int64_t max_size)
      : n(CeilDiv(count, max_size)), base(n ? count / n : 0), extra(n ? count % n : 0) {}
  int64_t Start(int64_t b) const { return b * base + std::min(b, extra); }
  int64_t Size(int64_t b) const { return base + (b < extra ? 1 : 0); }
};

//===----------------------------------------------------------------------===//
// Convolution and input gradient: the direct micro-kernel.
//===----------------------------------------------------------------------===//

// The taps every output pixel of a class meets: tap t reads `rows` floats of input in[t] (the
// first or, for a join of two arrays, the second; see Input) at the pixel's offset plus
// in_off[t], against packed weight rows row0[t] ... row0[t] + rows - 1.
struct TapList {
  int n = 0;
  int64_t rows = 0;
  int in[2 * kMaxTaps];
  int64_t in_off[2 * kMaxTaps];
  int64_t row0[2 * kMaxTaps];
  void Add(int input, int64_t offset, int64_t first_row) {
    in[n] = input;
    in_off[n] = offset;
    row0[n++] = first_row;
  }
};

// A block of up to kMaxMR output pixels: where each one's input starts and its output goes.
struct PixelBlock {
  int mr = 0;
  int64_t in[kMaxMR];
  int64_t out[kMaxMR];
};

// What the convolution does to its sums before storing them (inference of the
// network's `conv -> LeakyReLU [-> + residual]` in one pass over the output, not three):
// y = (relu ? (z > 0 ? z : slope * z) : z) + (residual ? residual[same offset as y] : 0).
struct Epilogue {
  bool relu = false;
  float slope = 0.f;
  const float* residual = nullptr;  // laid out as the output
  bool Active() const { return relu || residual; }
  float Apply(float z, int64_t offset) const {
    if (relu && !(z > 0.f)) z *= slope;
    return residual ? z + residual[offset] : z;
  }
};

// out[pix.out[m] + v*kVec + (0..kVec)] = start + sum over taps t and rows r < taps.rows of
// in[taps.in[t]][pix.in[m] + taps.in_off[t] + r] * panel[(taps.row0[t] + r) * NV * kVec +
// v*kVec + (0..kVec)], where start is `bias[v*kVec + (0..kVec)]` if given (the layer's bias,
// added here rather than in a pass of its own), else 0. `panel` is one block of NV*kVec output
// channels of the packed weights. `epi`, if not null, is applied before the store; its residual
// is offset as `out`. The sums stay in registers over the whole reduction and the panel streams
// from L2: faster than reduction chunks whose weights stay in L1 but whose sums are loaded and
// stored in `out` at every chunk (bench/README.md).
template <int MR, int NV>
void DirectKernel(const float* const* in, const PixelBlock& pix, const TapList& taps,
                  const float* panel, const float* bias, const Epilogue* epi, float* out) {
  Vec acc[MR][NV] = {};
  if (bias) {
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) acc[m][v] = LoadVec(bias + v * kVec);
  }
  for (int t = 0; t < taps.n; ++t) {
    const float* x[MR];
    // Offsets summed first: a pixel's window may start outside the image (ForwardInPlace).
    for (int m = 0; m < MR; ++m) x[m] = in[taps.in[t]] + (pix.in[m] + taps.in_off[t]);
    const float* w = panel + taps.row0[t] * NV * kVec;
    for (int64_t r = 0; r < taps.rows; ++r, w += NV * kVec) {
      Vec wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = LoadVec(w + v * kVec);
      for (int m = 0; m < MR; ++m) {
        const Vec xb = Broadcast(x[m] + r);
        for (int v = 0; v < NV; ++v) acc[m][v] += xb * wv[v];
      }
    }
  }
  if (epi) {
    const Vec slope = Vec{} + epi->slope;
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) {
        Vec a = acc[m][v];
        if (epi->relu) a = a > Vec{} ? a : a * slope;
        if (epi->residual) a += LoadVec(epi->residual + pix.out[m] + v * kVec);
        acc[m][v] = a;
      }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) StoreVec(out + pix.out[m] + v * kVec, acc[m][v]);
}

using DirectKernelFn = void (*)(const float* const*, const PixelBlock&, const TapList&,
                                const float*, const float*, const Epilogue*, float*);

template <int NV, int... MR>
constexpr std::array<DirectKernelFn, sizeof...(MR)> DirectTable(std::integer_sequence<int, MR...>) {
  return {&DirectKernel<MR + 1, NV>...};
}

// Indexed by MR - 1, for NV = 2 and NV = 1.
const auto kDirect2 = DirectTable<2>(std::make_integer_sequence<int, kMaxMR>{});
const auto kDirect1 = DirectTable<1>(std::make_integer_sequence<int, kMaxMR>{});

// The weights of a convolution-like product, packed as the micro-kernel reads them: output
// channels in blocks of 2*kVec (then one of kVec, the last one zero-padded), each block all taps
// x reduction rows x block width, contiguous. The block at output channel o0 starts at
// o0 * n_taps * n_red. Packing costs one pass over W and makes every weight load of the
// micro-kernel sequential: with W rows O floats apart, the deep levels (W megabytes, one row a
// few cache lines of a 4 KiB page) would miss the TLB and caches on every load (bench/README.md).
struct Packed {
  const float* data;
  int64_t n_taps, n_red, n_out;
  static int64_t Size(int64_t n_taps, int64_t n_red, int64_t n_out) {
    return n_taps * n_red * CeilDiv(n_out, kVec) * kVec;
  }
  int64_t Width(int64_t o0) const { return n_out - o0 >= 2 * kVec ? 2 * kVec : kVec; }
  const float* Panel(int64_t o0) const { return data + o0 * n_taps * n_red; }
  // Blocks: full ones of 2*kVec, then up to two of kVec (the last one maybe partial).
  int64_t NumBlocks() const { return n_out / (2 * kVec) + CeilDiv(n_out % (2 * kVec), kVec); }
  int64_t BlockStart(int64_t b) const {
    const int64_t full = n_out / (2 * kVec);
    return b < full ? b * 2 * kVec : full * 2 * kVec + (b - full) * kVec;
  }
};

// Packs a kernel stored as n_taps taps of (n_red, n_out) (`rows_are_reduction`) or of
// (n_out, n_red) (not). Either way it reads the source in its own order, a tile at a time, so
// that it streams sequentially (reading it in the packed order, a 128-byte piece of each 4 KiB
// row, is slow: TLB and cache misses).
void PackWeights(ffi::ThreadPool& pool, const float* w, bool rows_are_reduction,
                 const Packed& packed, float* packed_data) {
  constexpr int64_t kRows = 64;  // source rows (of one tap) a work item
  const int64_t n_red = packed.n_red, n_out = packed.n_out;
  const int64_t src_rows = rows_are_reduction ? n_red : n_out;
  const int64_t items_per_tap = CeilDiv(src_rows, kRows);
  ParallelFor(pool, packed.n_taps * items_per_tap, [&](int64_t item) {
    const int64_t t = item / items_per_tap, row0 = item % items_per_tap * kRows;
    const int64_t row1 = std::min(src_rows, row0 + kRows);
    const float* src = w + t * n_red * n_out;
    if (rows_are_reduction) {  // source row r (n_out floats) -> row r of every block's panel
      for (int64_t r = row0; r < row1; ++r)
        for (int64_t b = 0; b < packed.NumBlocks(); ++b) {
          const int64_t o0 = packed.BlockStart(b), width = packed.Width(o0);
          float* dst = packed_data + o0 * packed.n_taps * n_red + (t * n_red + r) * width;
          const int64_t valid = std::min(width, n_out - o0);
          std::memcpy(dst, src + r * n_out + o0, valid * sizeof(float));
          std::fill(dst + valid, dst + width, 0.f);
        }
      return;
    }
    // Source rows [row0, row1) are output channels of the blocks they fall in; each packed row
    // (a reduction channel) takes one float from each.
    for (int64_t b = 0; b < packed.NumBlocks(); ++b) {
      const int64_t o0 = packed.BlockStart(b), width = packed.Width(o0);
      const int64_t lo = std::max(row0, o0), hi = std::min(row1, std::min(o0 + width, n_out));
      if (lo >= hi) continue;
      float* panel = packed_data + o0 * packed.n_taps * n_red + t * n_red * width;
      for (int64_t r = 0; r < n_red; ++r)
        for (int64_t oo = lo; oo < hi; ++oo) panel[r * width + oo - o0] = src[oo * n_red + r];
      if (hi == n_out && o0 + width > n_out)  // zero the padding lanes of a partial last block
        for (int64_t r = 0; r < n_red; ++r)
          std::fill(panel + r * width + (n_out - o0), panel + (r + 1) * width, 0.f);
    }
  });
}

// Output channels [o0, o1) of a band's blocks of pixels (plus `bias`, if not null; then `epi`,
// if active).
void DirectBand(const float* const* in, const std::vector<PixelBlock>& blocks, const TapList& taps,
                const Packed& w, int64_t o0, int64_t o1, const float* bias, const Epilogue& epi,
                float* out) {
  for (int64_t o = o0; o < o1; o += w.Width(o)) {
    const int64_t width = w.Width(o);
    const auto& kernels = width == 2 * kVec ? kDirect2 : kDirect1;
    Epilogue at_o = epi;  // the residual offset as `out + o`
    if (epi.residual) at_o.residual = epi.residual + o;
    if (o + width <= w.n_out) {
      for (const PixelBlock& pix : blocks)
        kernels[pix.mr - 1](in, pix, taps, w.Panel(o), bias ? bias + o : nullptr,
                            epi.Active() ? &at_o : nullptr, out + o);
      continue;
    }
    // The last vector, zero-padded in the panel: computed whole in a buffer, whose valid lanes
    // are kept.
    const int64_t valid = w.n_out - o;
    float padded_bias[kVec] = {};
    if (bias) std::memcpy(padded_bias, bias + o, valid * sizeof(float));
    for (const PixelBlock& pix : blocks) {
      float buffer[kMaxMR * kVec];
      PixelBlock local = pix;
      for (int m = 0; m < pix.mr; ++m) local.out[m] = m * kVec;
      kDirect1[pix.mr - 1](in, local, taps, w.Panel(o), bias ? padded_bias : nullptr, nullptr,
                           buffer);
      for (int m = 0; m < pix.mr; ++m)
        for (int64_t l = 0; l < valid; ++l)
          out[pix.out[m] + o + l] = epi.Apply(buffer[m * kVec + l], pix.out[m] + o + l);
    }
  }
}

// Work items: (range of output channels, image, band of output rows), channel-range-major. The
// channels are split only as far as needed to give every thread several items (the deep levels,
// whose images are a band or two): each item copies its band once (see Bands), or with split
// channels all items read one shared copy (SharedBands).
struct WorkItems {
  int64_t n_bands, splits, split_channels;  // bands of all images, channel ranges, channels each
  WorkItems(const ffi::ThreadPool& pool, int64_t images, int64_t bands_per_image,
            int64_t channels) {
    n_bands = images * bands_per_image;
    const int64_t threads = std::max<int64_t>(1, pool.num_threads());
    const int64_t blocks = CeilDiv(channels, 2 * kVec);
    splits = std::min(blocks, std::max<int64_t>(1, CeilDiv(4 * threads, n_bands)));
    split_channels = CeilDiv(blocks, splits) * 2 * kVec;
    splits = CeilDiv(channels, split_channels);
  }
  int64_t size() const { return splits * n_bands; }
  int64_t band(int64_t item) const { return item % n_bands; }
  int64_t channel0(int64_t item) const { return item / n_bands * split_channels; }
};

// The input rows a band of output rows reads are copied into a thread-local buffer with zero
// rows and columns around the image (unless none are needed), so no block checks bounds. A band
// is ~kBandPixels output pixels: a few rows of a large image (the copy stays in L1/L2 and costs
// little next to the product), the whole of a small one.
constexpr int64_t kBandPixels = 512;

struct Bands {
  int64_t rows, n;  // output rows a band, bands per image
  Bands(int64_t out_rows, int64_t out_cols)
      : rows(std::min(std::max<int64_t>(1, out_rows),
                      std::max<int64_t>(1, kBandPixels / std::max<int64_t>(1, out_cols)))),
        n(CeilDiv(out_rows, rows)) {}
};

// Runs fn(img, r0, r1, ch0, ch1) for every work item of `items` (bands of `bands` over `rows`
// output rows an image): output rows [r0, r1) of image img, output channels [ch0, ch1).
template <typename Fn>
void ForEachBand(ffi::ThreadPool& pool, const Bands& bands, const WorkItems& items, int64_t rows,
                 int64_t channels, Fn fn) {
  ParallelFor(pool, items.size(), [&](int64_t item) {
    const int64_t band = items.band(item), ch0 = items.channel0(item);
    const int64_t img = band / bands.n, r0 = band % bands.n * bands.rows;
    fn(img, r0, std::min(rows, r0 + bands.rows), ch0,
       std::min(channels, ch0 + items.split_channels));
  });
}

// Floats a pixel takes in a band buffer: its channels, plus one cache line where they would be a
// multiple of 1 KiB. A block's MR input pixels are then spread over the L1 cache's sets: 12
// pixels of 512 channels fell on 2 of its 64 sets (1024 channels: on one), more lines than a
// set's ways once the weights streaming through L1 were counted.
int64_t BandPixelFloats(int64_t c) { return c % 256 == 0 ? c + 16 : c; }

// A product's (N, H, W, C) input: one array, or two joined along the channels (the first c1
// channels from x, the others from x2), as the decoder's join of its upsampled input and the
// skip: read where they are instead of concatenated by XLA first.
struct Input {
  const float* x;
  const float* x2 = nullptr;
  int64_t c1 = 0;
};

// Copies rows [row0, row0 + n_rows) of image `img` of the (N, H, W, C) input to `dst`, each with
// `left` zero columns before and zeros after up to `width` columns, rows outside [0, H) zeros;
// pixels `cs` >= C floats apart (the floats after a pixel's C are never read).
void CopyPaddedRows(const Input& in, int64_t h, int64_t w, int64_t c, int64_t img, int64_t row0,
                    int64_t n_rows, int64_t left, int64_t width, int64_t cs, float* dst) {
  for (int64_t r = 0; r < n_rows; ++r, dst += width * cs) {
    const int64_t hx = row0 + r;
    if (hx < 0 || hx >= h) {
      std::fill(dst, dst + width * cs, 0.f);
      continue;
    }
    std::fill(dst, dst + left * cs, 0.f);
    const int64_t first_pixel = (img * h + hx) * w;
    if (in.x2) {
      const int64_t c2 = c - in.c1;
      for (int64_t px = 0; px < w; ++px) {
        float* to = dst + (left + px) * cs;
        std::memcpy(to, in.x + (first_pixel + px) * in.c1, in.c1 * sizeof(float));
        std::memcpy(to + in.c1, in.x2 + (first_pixel + px) * c2, c2 * sizeof(float));
      }
    } else if (cs == c) {
      std::memcpy(dst + left * c, in.x + first_pixel * c, w * c * sizeof(float));
    } else {
      for (int64_t px = 0; px < w; ++px)
        std::memcpy(dst + (left + px) * cs, in.x + (first_pixel + px) * c, c * sizeof(float));
    }
    std::fill(dst + (left + w) * cs, dst + width * cs, 0.f);
  }
}

// Whether those rows need no zeros (a 1x1 or unpadded convolution), no other pixel stride
// (cs == C) and no join: the input itself can be read.
bool InsideImage(const Input& in, int64_t h, int64_t w, int64_t c, int64_t row0, int64_t n_rows,
                 int64_t left, int64_t width, int64_t cs) {
  return !in.x2 && left == 0 && width == w && row0 >= 0 && row0 + n_rows <= h && cs == c;
}

// Those rows, padded as above with cs floats a pixel: x itself where InsideImage, else a copy
// in `buf`.
const float* Band(const Input& in, int64_t h, int64_t w, int64_t c, int64_t img, int64_t row0,
                  int64_t n_rows, int64_t left, int64_t width, int64_t cs,
                  std::vector<float>& buf) {
  if (InsideImage(in, h, w, c, row0, n_rows, left, width, cs))
    return in.x + (img * h + row0) * w * c;
  buf.resize(n_rows * width * cs);
  CopyPaddedRows(in, h, w, c, img, row0, n_rows, left, width, cs, buf.data());
  return buf.data();
}

// Small images (the deep levels) are a band or two each, so their work items split the output
// channels, and every item would copy the same band again (8 copies of a 1.2 MB input for the
// 4x4/stride-2 conv of 32x32x256). There the padded rows [row0, row0 + n_rows) of every image
// are copied once, in parallel, into `buf` (image after image) and the items read them from
// there. Returns null where each item reads its own band: channels not split, or x itself.
const float* SharedBands(ffi::ThreadPool& pool, const WorkItems& items, const Input& in,
                         int64_t n, int64_t h, int64_t w, int64_t c, int64_t row0, int64_t n_rows,
                         int64_t left, int64_t width, int64_t cs, std::vector<float>& buf) {
  if (items.splits == 1 || InsideImage(in, h, w, c, row0, n_rows, left, width, cs)) return nullptr;
  buf.resize(n * n_rows * width * cs);
  float* dst = buf.data();
  ParallelFor(pool, n * n_rows, [&](int64_t row) {
    const int64_t img = row / n_rows, r = row % n_rows;
    CopyPaddedRows(in, h, w, c, img, row0 + r, 1, left, width, cs, dst + row * width * cs);
  });
  return dst;
}

// The output pixels of a band that meet the same taps: pixel (r, c), r < rows, c < cols, reads
// its input from offset in0 + r * in_row + c * in_col and writes out0 + r * out_row + c * out_col.
struct PixelClass {
  int64_t rows, cols;
  int64_t in0, in_row, in_col;
  int64_t out0, out_row, out_col;
};

// The class's pixels in row-major order, in balanced blocks of at most kMaxMR (spanning rows).
void MakeBlocks(const PixelClass& cls, std::vector<PixelBlock>& out) {
  const Blocks blocks(cls.rows * cls.cols, kMaxMR);
  out.resize(blocks.n);
  int64_t r = 0, c = 0;
  for (int64_t b = 0; b < blocks.n; ++b) {
    PixelBlock& pix = out[b];
    pix.mr = static_cast<int>(blocks.Size(b));
    for (int m = 0; m < pix.mr; ++m) {
      pix.in[m] = cls.in0 + r * cls.in_row + c * cls.in_col;
      pix.out[m] = cls.out0 + r * cls.out_row + c * cls.out_col;
      if (++c == cls.cols) c = 0, ++r;
    }
  }
}

//===----------------------------------------------------------------------===//
// Geometry shared by the three entry points.
//===----------------------------------------------------------------------===//

// A convolution from (N, H, W, C) to (N, Ho, Wo, O) with a k x k kernel, stride s, padding p.
// The kernel is stored (k, k, C, O), or (k, k, O, C) with `hwoi` (the decoder's 2x2 transposed
// convolution runs as this convolution's input gradient, and its kernel is the convolution's
// stored the other way round).
struct Geometry {
  int64_t n, h, w, c, ho, wo, o, k, s, p;
  bool hwoi;
  int64_t kernel_size() const { return k * k * c * o; }
};

// The geometry of a convolution of input shape `in` with a kernel of stored shape `kernel`, or
// an error naming what is wrong.
ffi::Error MakeGeometry(const char* op, ffi::Span<const int64_t> in,
                        ffi::Span<const int64_t> kernel, int64_t stride, int64_t padding,
                        int64_t hwoi, Geometry* geo) {
  if (in.size() != 4 || kernel.size() != 4)
    return ffi::Error::InvalidArgument(std::string(op) + ": arrays must have rank 4");
  const int64_t k = kernel[0], kc = hwoi ? kernel[3] : kernel[2], ko = hwoi ? kernel[2] : kernel[3];
  if (kernel[1] != k || k < 1 || k * k > kMaxTaps || kc != in[3] || stride < 1 || padding < 0)
    return ffi::Error::InvalidArgument(
        std::string(op) + ": the kernel must be square, at most 8x8, with the input's channels; "
        "stride >= 1, padding >= 0");
  *geo = Geometry{in[0], in[1], in[2], in[3],
                  std::max<int64_t>(0, FloorDiv(in[1] + 2 * padding - k, stride) + 1),
                  std::max<int64_t>(0, FloorDiv(in[2] + 2 * padding - k, stride) + 1),
                  ko, k, stride, padding, hwoi != 0};
  return ffi::Error::Success();
}

bool IsInput(const Geometry& g, ffi::Span<const int64_t> d) {
  return d.size() == 4 && d[0] == g.n && d[1] == g.h && d[2] == g.w && d[3] == g.c;
}
bool IsOutput(const Geometry& g, ffi::Span<const int64_t> d) {
  return d.size() == 4 && d[0] == g.n && d[1] == g.ho && d[2] == g.wo && d[3] == g.o;
}

// How a product packs W: the convolution (transposed = false) reduces over C into O outputs,
// its input gradient (the transposed convolution) over O into C; W's stored rows are reduction
// rows for the one whose reduction side is stored first ((k, k, C, O) for the convolution).
struct Packing {
  int64_t n_taps, n_red, n_out;
  bool rows_are_reduction;
  int64_t Size() const { return Packed::Size(n_taps, n_red, n_out); }
};

Packing ProductPacking(int64_t k, int64_t c, int64_t o, bool hwoi, bool transposed) {
  return transposed ? Packing{k * k, o, c, hwoi} : Packing{k * k, c, o, !hwoi};
}

Packing ProductPacking(const Geometry& geo, bool transposed) {
  return ProductPacking(geo.k, geo.c, geo.o, geo.hwoi, transposed);
}

// W packed for a product: `prepacked` where it is given (not empty: HinetPack's output, made
// once per weights for inference), else packed now into `scratch` (a call's scratch output).
ffi::Error PackedWeights(ffi::ThreadPool& pool, const Packing& how, const float* w,
                         ffi::Span<const int64_t> prepacked_dims, const float* prepacked,
                         size_t scratch_count, float* scratch, Packed* out) {
  *out = Packed{nullptr, how.n_taps, how.n_red, how.n_out};
  const auto needed = static_cast<size_t>(how.Size());
  size_t prepacked_count = prepacked_dims.size() == 0 ? 0 : 1;  // no dims: none given
  for (int64_t d : prepacked_dims) prepacked_count *= d;
  if (prepacked_count > 0) {
    if (prepacked_dims.size() != 1 || prepacked_count < needed)
      return ffi::Error::InvalidArgument(
          "the prepacked kernel must be a vector of at least " + std::to_string(needed) +
          " floats (hinet_pack's output for this kernel and direction), or (0,)");
    out->data = prepacked;
    return ffi::Error::Success();
  }
  if (scratch_count < needed)
    return ffi::Error::InvalidArgument("the packed-kernel scratch buffer is too small");
  PackWeights(pool, w, how.rows_are_reduction, *out, scratch);
  out->data = scratch;
  return ffi::Error::Success();
}

//===----------------------------------------------------------------------===//
// Convolution and input gradient.
//===----------------------------------------------------------------------===//

// Output rows (or columns) [lo, hi) of one axis whose windows meet the same kernel rows
// (columns) [first, last) inside the image.
struct TapSpan {
  int64_t lo, hi, first, last;
};

// The n_out output positions along an axis of `size` input positions, in runs of equal TapSpan:
// position r's window meets kernel index i where 0 <= s*r - p + i < size.
std::vector<TapSpan> TapSpans(int64_t n_out, int64_t size, int64_t k, int64_t s, int64_t p) {
  std::vector<TapSpan> spans;
  for (int64_t r = 0; r < n_out; ++r) {
    const int64_t first = std::max<int64_t>(0, p - s * r);
    const int64_t last = std::max(first, std::min(k, size + p - s * r));
    if (!spans.empty() && spans.back().first == first && spans.back().last == last)
      spans.back().hi = r + 1;
    else
      spans.push_back(TapSpan{r, r + 1, first, last});
  }
  return spans;
}

// Forward read from the input in place, with no band copy: the pixels whose window crosses the
// border form classes of their own that meet only the taps inside the image (one row or column
// of the band each; the rest of the band is one class). The copy with its zero border is costly
// on the shallow levels, whose products are short next to the rows they copy (bench/README.md).
// A join of two arrays (`in.x2`) needs equal halves (one pixel offset for both):
// each tap reads its first C/2 rows from x and the rest from x2, the order of the joined array.
void ForwardInPlace(ffi::ThreadPool& pool, const Geometry& geo, const Input& in,
                    const Packed& packed, const float* bias, const Epilogue& epi, float* y) {
  const int64_t n = geo.n, h = geo.h, wdt = geo.w, c = geo.c, ho = geo.ho, wo = geo.wo, o = geo.o;
  const int64_t k = geo.k, s = geo.s, p = geo.p;
  const int64_t cp = in.x2 ? in.c1 : c;  // floats a pixel in each array
  const std::vector<TapSpan> row_spans = TapSpans(ho, h, k, s, p);
  const std::vector<TapSpan> col_spans = TapSpans(wo, wdt, k, s, p);
  const Bands bands(ho, wo);
  ForEachBand(pool, bands, WorkItems(pool, n, bands.n, o), ho, o,
              [&](int64_t img, int64_t h0, int64_t h1, int64_t o0, int64_t o1) {
    thread_local std::vector<PixelBlock> blocks;
    const float* images[2] = {in.x + img * h * wdt * cp,
                              in.x2 ? in.x2 + img * h * wdt * cp : nullptr};
    for (const TapSpan& rows : row_spans) {
      const int64_t r0 = std::max(rows.lo, h0), r1 = std::min(rows.hi, h1);
      if (r0 >= r1) continue;
      for (const TapSpan& cols : col_spans) {
        TapList taps;
        taps.rows = cp;
        for (int64_t i = rows.first; i < rows.last; ++i)
          for (int64_t j = cols.first; j < cols.last; ++j)
            for (int q = 0; q < (in.x2 ? 2 : 1); ++q)
              taps.Add(q, (i * wdt + j) * cp, (i * k + j) * c + q * cp);
        // Pixel (r, col) has its window's corner at input (s*r - p, s*col - p), maybe outside.
        MakeBlocks(PixelClass{r1 - r0, cols.hi - cols.lo,
                              ((s * r0 - p) * wdt + s * cols.lo - p) * cp, s * wdt * cp, s * cp,
                              ((img * ho + r0) * wo + cols.lo) * o, wo * o, o},
                   blocks);
        DirectBand(images, blocks, taps, packed, o0, o1, bias, epi, y);
      }
    }
  });
}

// y = the convolution of the input (+ bias, if not null; then `epi`), W packed as
// ProductPacking(geo, false) says.
void Forward(ffi::ThreadPool& pool, const Geometry& geo, const Input& in, const Packed& packed,
             const float* bias, const Epilogue& epi, float* y) {
  const int64_t n = geo.n, h = geo.h, wdt = geo.w, c = geo.c, ho = geo.ho, wo = geo.wo, o = geo.o;
  const int64_t k = geo.k, stride = geo.s, padding = geo.p;
  if (n * ho * wo * o == 0) return;
  // Band buffer columns: `padding` zeros, the image, zeros up to the last window's end; cs
  // floats a pixel where the band is a copy anyway (padding), else x's own C.
  const int64_t width = padding + std::max(wdt, stride * (wo - 1) + k - padding);
  const int64_t cs = padding > 0 ? BandPixelFloats(c) : c;
  if (cs == c && (!in.x2 || 2 * in.c1 == c))
    return ForwardInPlace(pool, geo, in, packed, bias, epi, y);
  TapList taps;
  taps.rows = c;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) taps.Add(0, (i * width + j) * cs, (i * k + j) * c);
  const Bands bands(ho, wo);
  const WorkItems items(pool, n, bands.n, o);
  // Input rows -padding .. stride * (ho - 1) + k - padding - 1 are all an image's output reads.
  const int64_t image_rows = stride * (ho - 1) + k;
  thread_local std::vector<float> shared_buffer;
  const float* shared = SharedBands(pool, items, in, n, h, wdt, c, -padding, image_rows, padding,
                                    width, cs, shared_buffer);
  ForEachBand(pool, bands, items, ho, o, [&](int64_t img, int64_t h0, int64_t h1, int64_t o0,
                                             int64_t o1) {
    thread_local std::vector<float> band_buffer;
    thread_local std::vector<PixelBlock> blocks;
    const float* band[1] = {
        shared ? shared + (img * image_rows + stride * h0) * width * cs
               : Band(in, h, wdt, c, img, stride * h0 - padding, stride * (h1 - h0 - 1) + k,
                      padding, width, cs, band_buffer)};
    MakeBlocks(PixelClass{h1 - h0, wo, 0, stride * width * cs, stride * cs,
                          (img * ho + h0) * wo * o, wo * o, o}, blocks);
    DirectBand(band, blocks, taps, packed, o0, o1, bias, epi, y);
  });
}

// dx = the input gradient of the convolution for the output cotangent g (the transposed
// convolution of g; + bias, if not null, when it runs as a layer), W packed as
// ProductPacking(geo, true) says.
void InputGrad(ffi::ThreadPool& pool, const Geometry& geo, const float* g, const Packed& packed,
               const float* bias, float* dx) {
  const int64_t n = geo.n, h = geo.h, wdt = geo.w, c = geo.c, ho = geo.ho, wo = geo.wo, o = geo.o;
  const int64_t k = geo.k, stride = geo.s, padding = geo.p;
  if (n * h * wdt * c == 0) return;
  if (ho * wo * o == 0) {
    for (int64_t i = 0; i < n * h * wdt; ++i)
      for (int64_t cc = 0; cc < c; ++cc) dx[i * c + cc] = bias ? bias[cc] : 0.f;
    return;
  }
  // Output pixel (y, x) meets the taps i = (y + p) % s, + s, ... and j = (x + p) % s, + s, ...,
  // tap (i, j) at g pixel ((y + p - i) / s, (x + p - j) / s). Band buffer columns: the g columns
  // from -left (the leftmost any tap reaches) to the rightmost; pixels O floats apart, as in g
  // (Forward's padded pixel stride here too made the train step no faster: bench/README.md).
  const int64_t left = std::max<int64_t>(0, -FloorDiv(padding - k + 1, stride));
  const int64_t width = left + std::max(wo, FloorDiv(wdt - 1 + padding, stride) + 1);
  const Bands bands(h, wdt);
  const WorkItems items(pool, n, bands.n, c);
  // Output rows y0 .. y1 - 1 read g rows FloorDiv(y0 + p - k + 1, s) .. FloorDiv(y1 - 1 + p, s).
  const int64_t first_row = FloorDiv(padding - k + 1, stride);
  const int64_t image_rows = FloorDiv(h - 1 + padding, stride) - first_row + 1;
  thread_local std::vector<float> shared_buffer;
  const float* shared = SharedBands(pool, items, Input{g}, n, ho, wo, o, first_row, image_rows,
                                    left, width, o, shared_buffer);
  ForEachBand(pool, bands, items, h, c, [&](int64_t img, int64_t y0, int64_t y1, int64_t c0,
                                            int64_t c1) {
    thread_local std::vector<float> band_buffer;
    thread_local std::vector<PixelBlock> blocks;
    const int64_t g_row0 = FloorDiv(y0 + padding - k + 1, stride);
    const float* band[1] = {
        shared ? shared + (img * image_rows + g_row0 - first_row) * width * o
               : Band(Input{g}, ho, wo, o, img, g_row0,
                      FloorDiv(y1 - 1 + padding, stride) - g_row0 + 1, left, width, o,
                      band_buffer)};
    for (int64_t py = 0; py < stride; ++py) {
      for (int64_t px = 0; px < stride; ++px) {
        // This class's pixels: rows y = y_first + r*s in [y0, y1) with (y + p) % s == py, and
        // likewise columns; pixel (y, x) reads g from ((y + p - py) / s, (x + p - px) / s).
        const int64_t y_first = y0 + ((py - padding - y0) % stride + stride) % stride;
        const int64_t x_first = ((px - padding) % stride + stride) % stride;
        if (y_first >= y1 || x_first >= wdt) continue;
        const PixelClass cls{
            CeilDiv(y1 - y_first, stride), CeilDiv(wdt - x_first, stride),
            (((y_first + padding - py) / stride - g_row0) * width +
             (x_first + padding - px) / stride + left) * o, width * o, o,
            ((img * h + y_first) * wdt + x_first) * c, stride * wdt * c, stride * c};
        TapList taps;
        taps.rows = o;
        for (int64_t i = py; i < k; i += stride)
          for (int64_t j = px; j < k; j += stride)
            taps.Add(0, -((i - py) / stride * width + (j - px) / stride) * o, (i * k + j) * o);
        MakeBlocks(cls, blocks);
        if (taps.n > 0) {
          DirectBand(band, blocks, taps, packed, c0, c1, bias, Epilogue{}, dx);
          continue;
        }
        for (const PixelBlock& pix : blocks)  // no tap reaches these pixels (a kernel smaller
          for (int m = 0; m < pix.mr; ++m)    // than the stride)
            for (int64_t cc = c0; cc < c1; ++cc) dx[pix.out[m] + cc] = bias ? bias[cc] : 0.f;
      }
    }
  });
}

//===----------------------------------------------------------------------===//
// Kernel gradient.
//===----------------------------------------------------------------------===//

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
        const Vec xb = Broadcast(x + c);
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
  bool hwoi;            // dW stored (k, k, O, C)
  // dW rows are the channels the micro-kernel broadcasts, its columns those it loads as vectors.
  int64_t rows() const { return hwoi ? o : c; }
  int64_t cols() const { return hwoi ? c : o; }
};

// Adds tap (i, j) of output rows [r0, r1) (of the N*Ho rows of g) to dw, for dW rows [c0, c1).
void AccumulateTap(const Problem& p, int64_t r0, int64_t r1, int64_t i, int64_t j, int64_t c0,
                   int64_t c1, float* dw, std::vector<Run>& runs) {
  // Output pixels w whose input column s*w + j - p lies inside the image: [w0, w1).
  const int64_t w0 = std::max<int64_t>(0, -FloorDiv(j - p.p, p.s));
  const int64_t w1 = std::min<int64_t>(p.wo, FloorDiv(p.w - 1 + p.p - j, p.s) + 1);
  if (w1 <= w0) return;
  runs.clear();
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t img = r / p.ho, hg = r % p.ho, hx = p.s * hg + i - p.p;
    if (hx < 0 || hx >= p.h) continue;
    const float* x = p.x + ((img * p.h + hx) * p.w + p.s * w0 + j - p.p) * p.c;
    const float* g = p.g + ((img * p.ho + hg) * p.wo + w0) * p.o;
    runs.push_back(p.hwoi ? Run{g, x, w1 - w0} : Run{x, g, w1 - w0});
  }
  if (runs.empty()) return;
  const int n_runs = static_cast<int>(runs.size());
  const int64_t cols = p.cols();
  const Strides st = p.hwoi ? Strides{p.o, p.s * p.c, cols} : Strides{p.s * p.c, p.o, cols};
  float* dw_tap = dw + (i * p.k + j) * p.c * p.o;
  for (int64_t cb = c0; cb < c1; cb += kMaxNC) {
    const int nc = static_cast<int>(std::min<int64_t>(kMaxNC, c1 - cb));
    float* acc = dw_tap + cb * cols;
    int64_t o0 = 0;
    for (; o0 + 2 * kVec <= cols; o0 += 2 * kVec)
      kKernels2[nc - 1](runs.data(), n_runs, cb, o0, st, acc + o0);
    for (; o0 + kVec <= cols; o0 += kVec)
      kKernels1[nc - 1](runs.data(), n_runs, cb, o0, st, acc + o0);
    if (o0 < cols) TailKernel(runs.data(), n_runs, cb, o0, nc, cols - o0, st, acc + o0);
  }
}

// Sums the kernel gradient of `p` into `out` (stored as the kernel is), zero on entry.
void SumWeightGrad(ffi::ThreadPool& pool, const Problem& p, float* out) {
  const int64_t taps = p.k * p.k, size = taps * p.c * p.o, rows = p.n * p.ho;

  if (rows * p.wo <= kPixelsPerChunk) {
    // A small image (the deep levels): one chunk of rows, so split by output instead, one item
    // per (tap, block of input channels). Items write disjoint parts of dW; no partial sums.
    const int64_t c_blocks = CeilDiv(p.rows(), kMaxNC);
    ParallelFor(pool, taps * c_blocks, [&](int64_t item) {
      thread_local std::vector<Run> runs;
      const int64_t tap = item / c_blocks, c0 = (item % c_blocks) * kMaxNC;
      AccumulateTap(p, 0, rows, tap / p.k, tap % p.k, c0, std::min(p.rows(), c0 + kMaxNC), out,
                    runs);
    });
    return;
  }

  // Items are (chunk of rows, tap), split into one fixed, contiguous range per thread, each
  // summed into its own dW (range 0 into the output) and the ranges added in order: the result
  // does not depend on which thread ran what, so training is reproducible run to run.
  const int64_t rows_per_chunk = std::max<int64_t>(1, kPixelsPerChunk / p.wo);
  const int64_t n_items = taps * CeilDiv(rows, rows_per_chunk);
  const int64_t ranges = std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), n_items);
  std::vector<std::unique_ptr<float[]>> partials(ranges);
  ParallelFor(pool, ranges, [&](int64_t range) {
    thread_local std::vector<Run> runs;
    float* dw = out;
    if (range > 0) {
      partials[range].reset(new float[size]());
      dw = partials[range].get();
    }
    // Consecutive items are the taps of one chunk: a range covers whole bands of rows.
    for (int64_t item = range * n_items / ranges; item < (range + 1) * n_items / ranges; ++item) {
      const int64_t r0 = (item / taps) * rows_per_chunk;
      const int64_t r1 = std::min(r0 + rows_per_chunk, rows);
      AccumulateTap(p, r0, r1, item % taps / p.k, item % p.k, 0, p.rows(), dw, runs);
    }
  });
  for (int64_t range = 1; range < ranges; ++range)
    for (int64_t k = 0; k < size; ++k) out[k] += partials[range][k];
}


// dw = the kernel gradient of the convolution for input x and output cotangent g, stored as the
// kernel is.
void KernelGrad(ffi::ThreadPool& pool, const Geometry& geo, const float* x, const float* g,
                float* dw) {
  Problem p{x, g, geo.n, geo.h, geo.w, geo.c, geo.ho, geo.wo, geo.o, geo.k, geo.s, geo.p,
            geo.hwoi};
  const int64_t size = geo.kernel_size(), taps = geo.k * geo.k;
  std::fill(dw, dw + size, 0.f);
  if (p.n * p.ho * p.wo == 0 || p.c == 0 || p.o == 0) return;
  // dW's columns narrower than a vector (the network's last convolutions, 64 -> 3 channels):
  // the tail kernel's scalar products took over ten times the forward's time (bench/README.md).
  // Their rows are vectors wide, so the product is run with the roles swapped (dW stored the
  // other way round) into a buffer, and transposed into dw.
  const int64_t rows = p.rows(), cols = p.cols();
  if (cols >= kVec || rows < kVec) return SumWeightGrad(pool, p, dw);
  std::vector<float> swapped(size, 0.f);
  p.hwoi = !p.hwoi;
  SumWeightGrad(pool, p, swapped.data());
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        dw[(t * rows + r) * cols + c] = swapped[(t * cols + c) * rows + r];
}

//===----------------------------------------------------------------------===//
// Winograd F(2x2, 3x3) and F(4x4, 3x3): the 3x3 / stride-1 / padding-1 convolution.
//===----------------------------------------------------------------------===//

// Each tile of MxM output pixels is Y = A^T [sum_c (G g G^T)[c] * (B^T d B)[c]] A for its NxN
// input patch d, N = M + 2 (Lavin and Gray, 2016): per tile, N^2 products over the C channels
// (one per element of the transformed patch) instead of M^2 pixels x 9 taps: 2.25x fewer
// multiplies for M = 2, 4x for M = 4 (whose larger transform constants round a few times more).
// The transformed kernel U = G g G^T (N^2 "taps" of (C, O), PackWinograd) is packed as an
// NxN kernel, so the N^2 products are the direct micro-kernel's, with
// tiles as pixels and one tap each. A work item is a run of tiles: its transformed patches
// V[N^2][tiles][C] stay in L2, and the N^2 products of one block of tiles (M[N^2][12 tiles][one
// block of outputs]) in L1 until the output transform. The input transform addresses each patch
// from its corner, not from every pixel's coordinates (no multiplies per load).
template <int M>
struct Winograd;

template <>
struct Winograd<2> {
  static constexpr int N = 4;
  // B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] on one line of the patch.
  static void InputLine(const Vec* d, int step, Vec* t, int out_step) {
    t[0] = d[0] - d[2 * step];
    t[out_step] = d[step] + d[2 * step];
    t[2 * out_step] = d[2 * step] - d[step];
    t[3 * out_step] = d[step] - d[3 * step];
  }
  // A^T = [1 1 1 0; 0 1 -1 -1].
  static void OutputLine(const Vec* m, int step, Vec* y, int out_step) {
    y[0] = m[0] + m[step] + m[2 * step];
    y[out_step] = m[step] - m[2 * step] - m[3 * step];
  }
  // G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1] on one line of the 3x3 kernel.
  static void KernelLine(const Vec* k, int step, Vec* u, int out_step) {
    const Vec half = Vec{} + 0.5f;
    u[0] = k[0];
    u[out_step] = half * (k[0] + k[step] + k[2 * step]);
    u[2 * out_step] = half * (k[0] - k[step] + k[2 * step]);
    u[3 * out_step] = k[2 * step];
  }
  // A = (A^T)^T on one line of a tile's output cotangent (the adjoint of OutputLine).
  static void GradOutputLine(const Vec* y, int step, Vec* z, int out_step) {
    z[0] = y[0];
    z[out_step] = y[0] + y[step];
    z[2 * out_step] = y[0] - y[step];
    z[3 * out_step] = -y[step];
  }
  // G^T on one line of the transformed kernel's gradient (the adjoint of KernelLine).
  static void KernelGradLine(const Vec* u, int step, Vec* w, int out_step) {
    const Vec half = Vec{} + 0.5f;
    w[0] = u[0] + half * (u[step] + u[2 * step]);
    w[out_step] = half * (u[step] - u[2 * step]);
    w[2 * out_step] = half * (u[step] + u[2 * step]) + u[3 * step];
  }
};

template <>
struct Winograd<4> {
  static constexpr int N = 6;
  // B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
  //        0 4 0 -5 0 1].
  static void InputLine(const Vec* d, int step, Vec* t, int out_step) {
    const Vec two = Vec{} + 2.f, four = Vec{} + 4.f, five = Vec{} + 5.f;
    const Vec d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step], d4 = d[4 * step],
              d5 = d[5 * step];
    t[0] = four * d0 - five * d2 + d4;
    t[out_step] = d3 + d4 - four * (d1 + d2);
    t[2 * out_step] = d4 - d3 + four * (d1 - d2);
    t[3 * out_step] = d4 - d2 + two * (d3 - d1);
    t[4 * out_step] = d4 - d2 + two * (d1 - d3);
    t[5 * out_step] = four * d1 - five * d3 + d5;
  }
  // A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
  static void OutputLine(const Vec* m, int step, Vec* y, int out_step) {
    const Vec two = Vec{} + 2.f, four = Vec{} + 4.f, eight = Vec{} + 8.f;
    const Vec a = m[step] + m[2 * step], b = m[step] - m[2 * step];
    const Vec c = m[3 * step] + m[4 * step], d = m[3 * step] - m[4 * step];
    y[0] = m[0] + a + c;
    y[out_step] = b + two * d;
    y[2 * out_step] = a + four * c;
    y[3 * out_step] = b + eight * d + m[5 * step];
  }
  // G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1].
  static void KernelLine(const Vec* k, int step, Vec* u, int out_step) {
    const Vec four = Vec{} + 4.f, six = Vec{} + 6.f, twelve = Vec{} + 12.f,
              twenty_four = Vec{} + 24.f;
    const Vec k0 = k[0], k1 = k[step], k2 = k[2 * step];
    u[0] = k0 / four;
    u[out_step] = -(k0 + k1 + k2) / six;
    u[2 * out_step] = -(k0 - k1 + k2) / six;
    u[3 * out_step] = k0 / twenty_four + k1 / twelve + k2 / six;
    u[4 * out_step] = k0 / twenty_four - k1 / twelve + k2 / six;
    u[5 * out_step] = k2;
  }
  // A = (A^T)^T, the adjoint of OutputLine.
  static void GradOutputLine(const Vec* y, int step, Vec* z, int out_step) {
    const Vec two = Vec{} + 2.f, four = Vec{} + 4.f, eight = Vec{} + 8.f;
    const Vec y0 = y[0], y1 = y[step], y2 = y[2 * step], y3 = y[3 * step];
    const Vec even = y0 + y2, odd = y1 + y3, even4 = y0 + four * y2, odd8 = two * y1 + eight * y3;
    z[0] = y0;
    z[out_step] = even + odd;
    z[2 * out_step] = even - odd;
    z[3 * out_step] = even4 + odd8;
    z[4 * out_step] = even4 - odd8;
    z[5 * out_step] = y3;
  }
  // G^T, the adjoint of KernelLine.
  static void KernelGradLine(const Vec* u, int step, Vec* w, int out_step) {
    const Vec four = Vec{} + 4.f, six = Vec{} + 6.f, twelve = Vec{} + 12.f,
              twenty_four = Vec{} + 24.f;
    const Vec sum12 = u[step] + u[2 * step], sum34 = u[3 * step] + u[4 * step];
    w[0] = u[0] / four - sum12 / six + sum34 / twenty_four;
    w[out_step] = (u[2 * step] - u[step]) / six + (u[3 * step] - u[4 * step]) / twelve;
    w[2 * out_step] = (sum34 - sum12) / six + u[5 * step];
  }
};

// The (3, 3, C, O) kernel W transformed (U = G W G^T) and packed as an N x N kernel, as
// WinogradForward reads it: for the convolution (transposed = false: reduction C, outputs O), or
// for its input gradient (transposed = true), the convolution of the output cotangent with W
// flipped and transposed (tap (i, j) of (O, C) is W's tap (2 - i, 2 - j) transposed; reduction
// O, outputs C). Training transforms every kernel twice a step, hence one C++ pass rather than
// XLA's fusions followed by HinetPack (bench/README.md).
// A work item is one block of outputs x a chunk of reduction rows: their 9 taps are copied
// into a buffer as the product reads them (the transposed ones one float at a time), then
// transformed a vector of outputs at a time and stored to the N^2 taps' panel rows.
template <int M>
void PackWinograd(ffi::ThreadPool& pool, const float* w, int64_t c, int64_t o, bool transposed,
                  const Packed& packed, float* out) {
  constexpr int N = Winograd<M>::N;
  constexpr int64_t kRows = 32;  // reduction rows an item: the buffer, 9 x 32 x 32 floats, in L1
  const int64_t n_red = packed.n_red, n_out = packed.n_out, chunks = CeilDiv(n_red, kRows);
  ParallelFor(pool, packed.NumBlocks() * chunks, [&](int64_t item) {
    const int64_t o0 = packed.BlockStart(item / chunks), width = packed.Width(o0);
    const int64_t r0 = item % chunks * kRows, r1 = std::min(n_red, r0 + kRows);
    const int64_t valid = std::min(width, n_out - o0);
    thread_local std::vector<float> buf;
    buf.assign(9 * kRows * width, 0.f);  // lanes past n_out stay zero
    for (int tap = 0; tap < 9; ++tap) {
      float* dst = buf.data() + tap * kRows * width;
      if (!transposed) {  // W's rows are reduction rows, their outputs contiguous
        const float* src = w + tap * c * o;
        for (int64_t r = r0; r < r1; ++r)
          std::memcpy(dst + (r - r0) * width, src + r * o + o0, valid * sizeof(float));
        continue;
      }
      const float* src = w + (8 - tap) * c * o;  // flipped: tap (i, j) <- (2 - i, 2 - j)
      for (int64_t l = 0; l < valid; ++l)
        for (int64_t r = r0; r < r1; ++r) dst[(r - r0) * width + l] = src[(o0 + l) * o + r];
    }
    float* panel = out + o0 * packed.n_taps * n_red;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t v = 0; v < width; v += kVec) {
        Vec k[3][3], t[N][3], u[N][N];
        for (int tap = 0; tap < 9; ++tap)
          k[tap / 3][tap % 3] = LoadVec(buf.data() + (tap * kRows + r - r0) * width + v);
        for (int j = 0; j < 3; ++j) Winograd<M>::KernelLine(&k[0][j], 3, &t[0][j], 3);  // i
        for (int a = 0; a < N; ++a) Winograd<M>::KernelLine(&t[a][0], 1, &u[a][0], 1);   // j
        for (int xi = 0; xi < N * N; ++xi)
          StoreVec(panel + (xi * n_red + r) * width + v, u[xi / N][xi % N]);
      }
  });
}

struct WinogradGeometry {
  int64_t n, h, w, c, o, m;  // m: output pixels a tile side
  int64_t tiles_h() const { return CeilDiv(h, m); }
  int64_t tiles_w() const { return CeilDiv(w, m); }
  int64_t tiles() const { return n * tiles_h() * tiles_w(); }
};

// Tiles a work item, a multiple of the micro-kernel's block: up to 8 blocks while V (16 x tiles
// x C floats for M = 2) stays within 512 KiB (up to 256 channels), at least two (768 KiB at 512
// channels, 1.5 MiB at 1024); for M = 4, V is 36 floats a tile and channel.
int64_t WinogradTilesPerItem(int64_t c) {
  return std::max<int64_t>(2, std::min<int64_t>(8, 8192 / (c * kMaxMR))) * kMaxMR;
}

// V[xi][i][0..C) for tiles t0 .. t0 + nt - 1.
template <int M>
void WinogradInput(const Input& in, const WinogradGeometry& g, int64_t t0, int64_t nt,
                   int64_t ld, float* v) {
  constexpr int N = Winograd<M>::N;
  const int64_t th = g.tiles_h(), tw = g.tiles_w();
  for (int64_t i = 0; i < nt; ++i) {
    const int64_t t = t0 + i, img = t / (th * tw), ty = t % (th * tw) / tw, tx = t % tw;
    const int64_t y0 = M * ty - 1, x0 = M * tx - 1;
    const bool inside = y0 >= 0 && x0 >= 0 && y0 + N <= g.h && x0 + N <= g.w;
    // Which of the patch's rows and columns are in the image (all, inside it).
    bool row_in[N], col_in[N];
    for (int a = 0; a < N; ++a) {
      row_in[a] = y0 + a >= 0 && y0 + a < g.h;
      col_in[a] = x0 + a >= 0 && x0 + a < g.w;
    }
    const int64_t corner = (img * g.h + y0) * g.w + x0;  // the patch's first pixel (maybe outside)
    for (int64_t cv = 0; cv < g.c; cv += kVec) {
      // The vector's source: x, or for the channels past c1 of a join, x2.
      const bool second = in.x2 && cv >= in.c1;
      const int64_t stride = in.x2 ? (second ? g.c - in.c1 : in.c1) : g.c;
      const float* src = second ? in.x2 + (cv - in.c1) : in.x + cv;
      // Offsets summed before the pointer is formed: the corner may be outside the image.
      const int64_t first = corner * stride, row = g.w * stride;
      Vec d[N][N];
      if (inside) {
        for (int a = 0; a < N; ++a)
          for (int b = 0; b < N; ++b) d[a][b] = LoadVec(src + (first + a * row + b * stride));
      } else {
        for (int a = 0; a < N; ++a)
          for (int b = 0; b < N; ++b)
            d[a][b] = row_in[a] && col_in[b] ? LoadVec(src + (first + a * row + b * stride))
                                             : Vec{};
      }
      Vec t[N][N], tv[N][N];
      for (int b = 0; b < N; ++b) Winograd<M>::InputLine(&d[0][b], N, &t[0][b], N);  // columns
      for (int a = 0; a < N; ++a) Winograd<M>::InputLine(&t[a][0], 1, &tv[a][0], 1);  // rows
      for (int xi = 0; xi < N * N; ++xi)
        StoreVec(v + (xi * ld + i) * g.c + cv, tv[xi / N][xi % N]);
    }
  }
}

// y (+ bias, then `epi`) for output channels [o0, o0 + width) of tiles t0 .. t0 + nt - 1 from
// their products M[xi][i][0..width).
template <int M>
void WinogradOutput(const WinogradGeometry& g, int64_t t0, int64_t nt, int64_t ld,
                    const float* m, int64_t o0, int64_t width, const float* bias,
                    const Epilogue& epi, float* y) {
  constexpr int N = Winograd<M>::N;
  const int64_t th = g.tiles_h(), tw = g.tiles_w();
  const Vec slope = Vec{} + epi.slope;
  for (int64_t i = 0; i < nt; ++i) {
    const int64_t t = t0 + i, img = t / (th * tw), ty = t % (th * tw) / tw, tx = t % tw;
    for (int64_t v = 0; v < width; v += kVec) {
      Vec tm[N][N], r[M][N], out[M][M];
      for (int xi = 0; xi < N * N; ++xi)
        tm[xi / N][xi % N] = LoadVec(m + (xi * ld + i) * width + v);
      for (int b = 0; b < N; ++b) Winograd<M>::OutputLine(&tm[0][b], N, &r[0][b], N);  // columns
      for (int a = 0; a < M; ++a) Winograd<M>::OutputLine(&r[a][0], 1, &out[a][0], 1);  // rows
      const Vec b = bias ? LoadVec(bias + o0 + v) : Vec{};
      for (int a = 0; a < M; ++a)
        for (int c = 0; c < M; ++c) {
          const int64_t yy = M * ty + a, xx = M * tx + c;
          if (yy >= g.h || xx >= g.w) continue;
          const int64_t at = ((img * g.h + yy) * g.w + xx) * g.o + o0 + v;
          Vec z = out[a][c] + b;
          if (epi.relu) z = z > Vec{} ? z : z * slope;
          if (epi.residual) z += LoadVec(epi.residual + at);
          StoreVec(y + at, z);
        }
    }
  }
}

// The convolution of `in` ((N, H, W, C), maybe joined) with the packed transformed kernel `u`
// (N^2 taps of (C, O)), + bias, then `epi`, into y (N, H, W, O). C, O and a join's c1 are
// multiples of kVec (the caller checks).
template <int M>
void WinogradForward(ffi::ThreadPool& pool, const Input& in, const WinogradGeometry& g,
                     const Packed& u, const float* bias, const Epilogue& epi, float* y) {
  constexpr int P = Winograd<M>::N * Winograd<M>::N;
  const int64_t per_item = WinogradTilesPerItem(g.c), tiles = g.tiles();
  ParallelFor(pool, CeilDiv(tiles, per_item), [&](int64_t item) {
    thread_local std::vector<float> v_buf, m_buf;
    v_buf.resize(P * per_item * g.c);
    m_buf.resize(P * kMaxMR * 2 * kVec);
    const int64_t t0 = item * per_item, nt = std::min(per_item, tiles - t0);
    WinogradInput<M>(in, g, t0, nt, per_item, v_buf.data());
    const float* v_in[1] = {v_buf.data()};
    const Blocks blocks(nt, kMaxMR);
    for (int64_t b = 0; b < u.NumBlocks(); ++b) {
      const int64_t o0 = u.BlockStart(b), width = u.Width(o0);
      const auto& kernels = width == 2 * kVec ? kDirect2 : kDirect1;
      // A block of tiles at a time, its products in L1 until the output transform.
      for (int64_t k = 0; k < blocks.n; ++k) {
        PixelBlock pix;
        pix.mr = static_cast<int>(blocks.Size(k));
        for (int j = 0; j < pix.mr; ++j) {
          pix.in[j] = (blocks.Start(k) + j) * g.c;
          pix.out[j] = j * width;
        }
        for (int xi = 0; xi < P; ++xi) {
          TapList taps;
          taps.rows = g.c;
          taps.Add(0, xi * per_item * g.c, xi * g.c);
          kernels[pix.mr - 1](v_in, pix, taps, u.Panel(o0), nullptr, nullptr,
                              m_buf.data() + xi * kMaxMR * width);
        }
        WinogradOutput<M>(g, t0 + blocks.Start(k), pix.mr, kMaxMR, m_buf.data(), o0, width,
                          bias, epi, y);
      }
    }
  });
}

// Z[xi][i][0..O) = (A dY A^T)[xi] for tiles t0 .. t0 + nt - 1: dY the tile's M x M output
// cotangent (zero past the image's edge, whose outputs the forward drops).
template <int M>
void WinogradGradOutput(const float* gy, const WinogradGeometry& g, int64_t t0, int64_t nt,
                        int64_t ld, float* z) {
  constexpr int N = Winograd<M>::N;
  const int64_t th = g.tiles_h(), tw = g.tiles_w();
  for (int64_t i = 0; i < nt; ++i) {
    const int64_t t = t0 + i, img = t / (th * tw), ty = t % (th * tw) / tw, tx = t % tw;
    for (int64_t cv = 0; cv < g.o; cv += kVec) {
      Vec d[M][M];
      for (int a = 0; a < M; ++a)
        for (int b = 0; b < M; ++b) {
          const int64_t yy = M * ty + a, xx = M * tx + b;
          d[a][b] = yy < g.h && xx < g.w ? LoadVec(gy + ((img * g.h + yy) * g.w + xx) * g.o + cv)
                                         : Vec{};
        }
      Vec t1[N][M], zt[N][N];
      for (int b = 0; b < M; ++b) Winograd<M>::GradOutputLine(&d[0][b], M, &t1[0][b], M);
      for (int a = 0; a < N; ++a) Winograd<M>::GradOutputLine(&t1[a][0], 1, &zt[a][0], 1);
      for (int xi = 0; xi < N * N; ++xi)
        StoreVec(z + (xi * ld + i) * g.o + cv, zt[xi / N][xi % N]);
    }
  }
}

// Tiles a chunk of the Winograd kernel gradient: its transformed patches and cotangents,
// N^2 x tiles x (C + O) floats, about 1 MiB (half an L2 cache), a multiple of
// kGradTransformTiles (the tiles an item of their transforms takes).
constexpr int64_t kGradTransformTiles = 12;
int64_t WinogradGradChunk(int64_t n_taps, int64_t c, int64_t o) {
  const int64_t tiles = (int64_t{1} << 20) / (n_taps * (c + o) * int64_t{sizeof(float)});
  return std::max<int64_t>(1, tiles / kGradTransformTiles) * kGradTransformTiles;
}

// du[xi][c][o] += sum over tiles i < nt of v[xi][i][c] * z[xi][i][o] (v, z: N^2 rows of ld tiles)
// for input channels [c0, c1): the products of the Winograd kernel gradient.
void WinogradGradProducts(const float* v, const float* z, int64_t ld, int64_t nt, int64_t c,
                          int64_t o, int xi, int64_t c0, int64_t c1, float* du) {
  const Strides st{c, o, o};
  const Run run{v + xi * ld * c, z + xi * ld * o, nt};
  for (int64_t cb = c0; cb < c1; cb += kMaxNC) {
    const int nc = static_cast<int>(std::min<int64_t>(kMaxNC, c1 - cb));
    float* acc = du + (xi * c + cb) * o;
    for (int64_t o0 = 0; o0 < o; o0 += 2 * kVec)
      (o - o0 >= 2 * kVec ? kKernels2 : kKernels1)[nc - 1](&run, 1, cb, o0, st, acc + o0);
  }
}

// dW = the kernel gradient of the 3x3 / stride-1 / padding-1 convolution of x (N, H, W, C) for
// the output cotangent gy (N, H, W, O), stored (3, 3, C, O), by Winograd: the forward computes
// Y = A^T [sum_c U[c] * V[c]] A per tile with U = G W G^T, so dU[xi] (C, O) = sum over tiles of
// V[xi][tile]^T Z[xi][tile] with Z = A dY A^T, and dW = G^T dU G: N^2 products summed over the
// tiles (the kernel-gradient micro-kernel, tiles as pixels) instead of 9 over the pixels, 4x
// fewer multiplies for M = 4. V and Z are 2.25x the size of x and g (M = 4), so they are made
// and used a chunk of tiles at a time, on one core: each thread takes a fixed range of tiles and
// sums its own dU (range 0 into `du`), then the ranges are added in order (reproducible). Where
// V and Z are smaller than those dUs (the deep levels: few tiles, dU megabytes) all tiles are
// transformed at once, in parallel, and the products split by (xi, block of input channels)
// instead: no partial dUs.
template <int M>
void WinogradKernelGrad(ffi::ThreadPool& pool, const float* x, const float* gy,
                        const WinogradGeometry& g, float* dw) {
  constexpr int N = Winograd<M>::N, P = N * N;
  const int64_t c = g.c, o = g.o, tiles = g.tiles(), size = P * c * o;
  const int64_t chunk = std::min(tiles, WinogradGradChunk(P, c, o));
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Not std::vector: every element is written before it is read, and zeroing megabytes that a
  // pass then overwrites costs about as much as the pass.
  std::unique_ptr<float[]> du(new float[size]);
  if (tiles <= chunk || tiles * (c + o) <= threads * c * o) {  // V and Z smaller than the dUs
    std::unique_ptr<float[]> v(new float[P * tiles * c]), z(new float[P * tiles * o]);
    ParallelFor(pool, CeilDiv(tiles, kGradTransformTiles), [&](int64_t item) {
      const int64_t i0 = item * kGradTransformTiles;
      const int64_t n = std::min(kGradTransformTiles, tiles - i0);
      WinogradInput<M>(Input{x}, g, i0, n, tiles, v.get() + i0 * c);
      WinogradGradOutput<M>(gy, g, i0, n, tiles, z.get() + i0 * o);
    });
    const int64_t c_blocks = CeilDiv(c, kMaxNC);
    ParallelFor(pool, P * c_blocks, [&](int64_t item) {
      const int xi = static_cast<int>(item / c_blocks);
      const int64_t c0 = item % c_blocks * kMaxNC, c1 = std::min(c, c0 + kMaxNC);
      std::fill(du.get() + (xi * c + c0) * o, du.get() + (xi * c + c1) * o, 0.f);
      WinogradGradProducts(v.get(), z.get(), tiles, tiles, c, o, xi, c0, c1, du.get());
    });
  } else {
    const int64_t ranges = std::min(threads, CeilDiv(tiles, kGradTransformTiles));
    std::vector<std::unique_ptr<float[]>> partials(ranges);
    ParallelFor(pool, ranges, [&](int64_t range) {
      thread_local std::vector<float> v, z;
      v.resize(P * chunk * c);
      z.resize(P * chunk * o);
      float* sums = du.get();
      if (range > 0) {
        partials[range].reset(new float[size]);
        sums = partials[range].get();
      }
      std::fill(sums, sums + size, 0.f);
      for (int64_t t0 = range * tiles / ranges, t1 = (range + 1) * tiles / ranges; t0 < t1;
           t0 += chunk) {
        const int64_t nt = std::min(chunk, t1 - t0);
        WinogradInput<M>(Input{x}, g, t0, nt, chunk, v.data());
        WinogradGradOutput<M>(gy, g, t0, nt, chunk, z.data());
        for (int xi = 0; xi < P; ++xi)
          WinogradGradProducts(v.data(), z.data(), chunk, nt, c, o, xi, 0, c, sums);
      }
    });
    ParallelFor(pool, CeilDiv(size, int64_t{4096}), [&](int64_t item) {
      const int64_t k0 = item * 4096, k1 = std::min(size, k0 + 4096);
      for (int64_t range = 1; range < ranges; ++range)
        for (int64_t k = k0; k < k1; ++k) du[k] += partials[range][k];
    });
  }
  // dW = G^T dU G, a vector of output channels at a time.
  ParallelFor(pool, c, [&](int64_t ci) {
    for (int64_t ov = 0; ov < o; ov += kVec) {
      Vec u[N][N], t1[3][N], w[3][3];
      for (int xi = 0; xi < P; ++xi) u[xi / N][xi % N] = LoadVec(du.get() + (xi * c + ci) * o + ov);
      for (int b = 0; b < N; ++b) Winograd<M>::KernelGradLine(&u[0][b], N, &t1[0][b], N);
      for (int i = 0; i < 3; ++i) Winograd<M>::KernelGradLine(&t1[i][0], 1, &w[i][0], 1);
      for (int tap = 0; tap < 9; ++tap) StoreVec(dw + (tap * c + ci) * o + ov, w[tap / 3][tap % 3]);
    }
  });
}

//===----------------------------------------------------------------------===//
// FFI handlers.
//===----------------------------------------------------------------------===//

// The Winograd handlers' tile attribute: 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)), else an error.
ffi::Error CheckTile(const char* op, int64_t tile) {
  if (tile == 2 || tile == 4) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(op) +
                                     ": the tile must be 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3))");
}

// fn(std::integral_constant<int, M>{}) for the (checked) tile M: the templates' instantiation.
template <typename Fn>
void WithTile(int64_t tile, Fn fn) {
  if (tile == 2)
    fn(std::integral_constant<int, 2>{});
  else
    fn(std::integral_constant<int, 4>{});
}

// The bias argument: (O,) to add to every output pixel, or (0,) for none.
ffi::Error BiasOf(const char* op, ffi::Buffer<ffi::F32>& bias, int64_t channels,
                  const float** out) {
  const auto d = bias.dimensions();
  if (d.size() != 1 || (d[0] != 0 && d[0] != channels))
    return ffi::Error::InvalidArgument(std::string(op) + ": the bias must be (O,) or (0,)");
  *out = d[0] ? bias.typed_data() : nullptr;
  return ffi::Error::Success();
}

// The input side of a product: `in`, joined with `in2` along the channels unless in2 is (0,)
// (their N, H, W equal); its channels in *channels.
ffi::Error JoinedInput(const char* op, ffi::Buffer<ffi::F32>& in, ffi::Buffer<ffi::F32>& in2,
                       Input* input, int64_t* channels) {
  const auto a = in.dimensions();
  *input = Input{in.typed_data()};
  *channels = a.size() ? a[a.size() - 1] : 0;
  if (!in2.element_count()) return ffi::Error::Success();
  const auto b = in2.dimensions();
  if (a.size() != 4 || b.size() != 4 || !std::equal(a.begin(), a.end() - 1, b.begin()))
    return ffi::Error::InvalidArgument(
        std::string(op) + ": a second input (joined along the channels) must match the first's "
        "N, H, W");
  *input = Input{in.typed_data(), in2.typed_data(), a[3]};
  *channels = a[3] + b[3];
  return ffi::Error::Success();
}

// What a convolution does to its sums before storing them: LeakyReLU (relu = 1, slope), then +
// `residual` (shaped as the output, or (0,) for none).
ffi::Error EpilogueOf(const char* op, int64_t relu, float slope, ffi::Buffer<ffi::F32>& residual,
                      ffi::Span<const int64_t> out_dims, Epilogue* epi) {
  epi->relu = relu != 0;
  epi->slope = slope;
  epi->residual = nullptr;
  if (!residual.element_count()) return ffi::Error::Success();
  const auto r = residual.dimensions();
  if (r.size() != out_dims.size() || !std::equal(r.begin(), r.end(), out_dims.begin()))
    return ffi::Error::InvalidArgument(std::string(op) +
                                       ": the residual must be shaped as the output, or (0,)");
  epi->residual = residual.typed_data();
  return ffi::Error::Success();
}

// A convolution-like product of `in` with W, + bias, into `out` (and the packed kernel, scratch):
// the convolution itself (transposed = 0: in = x, out = y), or its input gradient, which is
// also the transposed convolution (transposed = 1: in = the cotangent g, out = dx). One handler
// for both: they differ only in which side of the convolution `in` is. The convolution may end
// with a LeakyReLU (relu = 1, relu_slope) and add `residual` (shaped as y, or (0,) for none).
// `prepacked` is W already packed for this product (HinetPack), or (0,): then W is packed into
// the scratch output `packed` (which may be (0,) when prepacked is given).
ffi::Error ConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> in, ffi::Buffer<ffi::F32> in2,
                    ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                    ffi::Buffer<ffi::F32> residual, ffi::Buffer<ffi::F32> prepacked,
                    ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> packed,
                    int64_t stride, int64_t padding, int64_t kernel_hwoi, int64_t transposed,
                    int64_t relu, float relu_slope) {
  Geometry geo;
  const auto side = transposed ? out->dimensions() : in.dimensions();
  std::vector<int64_t> input_side(side.begin(), side.end());
  if (transposed && in2.element_count())
    return ffi::Error::InvalidArgument("conv: a second input is for transposed = 0");
  Input input;
  int64_t channels;
  if (auto e = JoinedInput("conv", in, in2, &input, &channels); e.failure()) return e;
  if (!transposed && !input_side.empty()) input_side.back() = channels;
  if (auto e = MakeGeometry("conv", input_side, w.dimensions(), stride, padding, kernel_hwoi,
                            &geo); e.failure())
    return e;
  const int64_t n_out = transposed ? geo.c : geo.o;
  const float* b = nullptr;
  if (auto e = BiasOf("conv", bias, n_out, &b); e.failure()) return e;
  if (!IsOutput(geo, transposed ? in.dimensions() : out->dimensions()))
    return ffi::Error::InvalidArgument(
        "conv: the output side must be (N, Ho, Wo, O) for the input side's N, H, W");
  Epilogue epi;
  if (auto e = EpilogueOf("conv", relu, relu_slope, residual, out->dimensions(), &epi);
      e.failure())
    return e;
  if (transposed && epi.Active())
    return ffi::Error::InvalidArgument("conv: the epilogue (relu, residual) is for transposed = 0");
  Packed weights;
  if (auto e = PackedWeights(pool, ProductPacking(geo, transposed), w.typed_data(),
                             prepacked.dimensions(), prepacked.typed_data(),
                             packed->element_count(), packed->typed_data(), &weights);
      e.failure())
    return ffi::Error::InvalidArgument(std::string("conv: ") + e.message());
  if (transposed)
    InputGrad(pool, geo, in.typed_data(), weights, b, out->typed_data());
  else
    Forward(pool, geo, input, weights, b, epi, out->typed_data());
#ifdef HINET_JAX_WRONG_FOR_TESTS
  // A build that computes a wrong convolution, for the tests of the self-test that refuses it.
  if (!transposed && out->element_count()) out->typed_data()[0] += 1.0f;
#endif
  return ffi::Error::Success();
}

// Both gradients of a layer in one call. `a` is the convolution's input-side array and `b` its
// output side: for a convolution layer, a = x and b = the output cotangent, and the layer's input
// gradient is InputGrad(b); for a transposed-convolution layer (transposed = 1), a = the output
// cotangent and b = x, and its input gradient is Forward(a). The kernel gradient is
// KernelGrad(a, b) either way. With input_grad = 0 only dW is computed (d_in is empty): the
// layer's input needs no gradient (the network's image).
//
// One call, not two, so that the kernel gradient, and through it the optimizer's update of the
// kernel, depends on the call that reads the kernel: with separate calls XLA could not order the
// input gradient's read before the in-place update of a donated kernel, and copied every
// kernel at the start of the step.
ffi::Error ConvBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                       ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> d_in,
                       ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> packed,
                       int64_t stride, int64_t padding, int64_t kernel_hwoi, int64_t transposed,
                       int64_t input_grad) {
  Geometry geo;
  if (auto e = MakeGeometry("conv_bwd", a.dimensions(), w.dimensions(), stride, padding,
                            kernel_hwoi, &geo); e.failure())
    return e;
  if (!IsOutput(geo, b.dimensions()))
    return ffi::Error::InvalidArgument("conv_bwd: b must be (N, Ho, Wo, O) for a's N, H, W");
  const auto wd = w.dimensions();
  const auto dwd = dw->dimensions();
  if (dwd.size() != 4 || !std::equal(wd.begin(), wd.end(), dwd.begin()))
    return ffi::Error::InvalidArgument("conv_bwd: dW must have the kernel's shape");
  if (input_grad) {
    const auto dd = d_in->dimensions();
    if (!(transposed ? IsOutput(geo, dd) : IsInput(geo, dd)))
      return ffi::Error::InvalidArgument("conv_bwd: the input gradient has the wrong shape");
    // The layer's input gradient is the other direction's product (the convolution's input
    // gradient for a convolution layer, the convolution for a transposed one).
    Packed weights;
    if (auto e = PackedWeights(pool, ProductPacking(geo, !transposed), w.typed_data(), {},
                               nullptr, packed->element_count(), packed->typed_data(), &weights);
        e.failure())
      return ffi::Error::InvalidArgument(std::string("conv_bwd: ") + e.message());
    if (transposed)
      Forward(pool, geo, Input{a.typed_data()}, weights, nullptr, Epilogue{}, d_in->typed_data());
    else
      InputGrad(pool, geo, b.typed_data(), weights, nullptr, d_in->typed_data());
  }
  KernelGrad(pool, geo, a.typed_data(), b.typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

// W (k, k, C, O), or (k, k, O, C) with kernel_hwoi, packed for the convolution (transposed = 0)
// or for its input gradient / the transposed convolution (transposed = 1), as HinetConv takes it
// in `prepacked`: inference packs each kernel once per set of weights instead of in every call.
ffi::Error PackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w,
                    ffi::ResultBuffer<ffi::F32> packed, int64_t kernel_hwoi, int64_t transposed) {
  const auto d = w.dimensions();
  if (d.size() != 4 || d[0] != d[1] || d[0] < 1 || d[0] * d[0] > kMaxTaps)
    return ffi::Error::InvalidArgument("pack: the kernel must be square, rank 4, at most 8x8");
  const int64_t c = kernel_hwoi ? d[3] : d[2], o = kernel_hwoi ? d[2] : d[3];
  const Packing how = ProductPacking(d[0], c, o, kernel_hwoi != 0, transposed != 0);
  Packed unused;
  if (auto e = PackedWeights(pool, how, w.typed_data(), {}, nullptr, packed->element_count(),
                             packed->typed_data(), &unused);
      e.failure())
    return ffi::Error::InvalidArgument(std::string("pack: ") + e.message());
  return ffi::Error::Success();
}

// The Winograd convolution: y = the 3x3 / stride-1 / padding-1 convolution of `in`
// (joined with `in2` along the channels, if not (0,)) + bias, then LeakyReLU (relu = 1) and +
// residual (shaped as y, or (0,)), by F(tile x tile, 3x3) (tile 2 or 4), with `packed` the
// transformed kernel G g G^T that HinetPackWinograd packed as a (tile + 2)^2 kernel of (C, O)
// taps.
ffi::Error WinogradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> in, ffi::Buffer<ffi::F32> in2,
                        ffi::Buffer<ffi::F32> packed, ffi::Buffer<ffi::F32> bias,
                        ffi::Buffer<ffi::F32> residual, ffi::ResultBuffer<ffi::F32> out,
                        int64_t tile, int64_t relu, float relu_slope) {
  const auto a = in.dimensions(), d = out->dimensions();
  if (auto e = CheckTile("winograd", tile); e.failure()) return e;
  if (a.size() != 4 || d.size() != 4 || d[0] != a[0] || d[1] != a[1] || d[2] != a[2])
    return ffi::Error::InvalidArgument(
        "winograd: the input must be (N, H, W, C) and the output (N, H, W, O)");
  Input input;
  int64_t c;
  if (auto e = JoinedInput("winograd", in, in2, &input, &c); e.failure()) return e;
  const WinogradGeometry g{a[0], a[1], a[2], c, d[3], tile};
  const int64_t taps = (tile + 2) * (tile + 2);
  if (c % kVec || g.o % kVec || (input.x2 && input.c1 % kVec))
    return ffi::Error::InvalidArgument(
        "winograd: the channels (and a join's parts) must be multiples of " +
        std::to_string(kVec));
  const Packed u{packed.typed_data(), taps, c, g.o};
  if (packed.element_count() < static_cast<size_t>(Packed::Size(taps, c, g.o)))
    return ffi::Error::InvalidArgument(
        "winograd: the packed kernel must be the transformed kernel packed as (tile + 2)^2 "
        "(C, O) taps");
  const float* b = nullptr;
  if (auto e = BiasOf("winograd", bias, g.o, &b); e.failure()) return e;
  Epilogue epi;
  if (auto e = EpilogueOf("winograd", relu, relu_slope, residual, d, &epi); e.failure()) return e;
  if (g.tiles() == 0 || g.o == 0) return ffi::Error::Success();
  WithTile(tile, [&](auto m) {
    WinogradForward<decltype(m)::value>(pool, input, g, u, b, epi, out->typed_data());
  });
  return ffi::Error::Success();
}

// W (3, 3, C, O) transformed for Winograd F(tile x tile, 3x3) and packed (PackWinograd) for the
// convolution, as HinetWinograd takes it.
ffi::Error PackWinogradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> packed, int64_t tile) {
  const auto d = w.dimensions();
  if (d.size() != 4 || d[0] != 3 || d[1] != 3)
    return ffi::Error::InvalidArgument("pack_winograd: the kernel must be (3, 3, C, O)");
  if (auto e = CheckTile("pack_winograd", tile); e.failure()) return e;
  const int64_t c = d[2], o = d[3], n = tile + 2;
  const Packed u{nullptr, n * n, c, o};
  if (packed->element_count() < static_cast<size_t>(Packed::Size(u.n_taps, u.n_red, u.n_out)))
    return ffi::Error::InvalidArgument("pack_winograd: the packed output is too small");
  WithTile(tile, [&](auto m) {
    PackWinograd<decltype(m)::value>(pool, w.typed_data(), c, o, false, u, packed->typed_data());
  });
  return ffi::Error::Success();
}

// Both gradients of a Winograd convolution layer in one call, as ConvBwdImpl (and for the same
// reason: the optimizer's in-place update of a donated kernel must be ordered after this call's
// read of it): for x (N, H, W, C), the output cotangent g (N, H, W, O) and W (3, 3, C, O), the
// input gradient (unless input_grad = 0; d_in then (0,)), the convolution of g with W flipped
// and transposed, by F(tile x tile, 3x3) on W packed so (PackWinograd) into the scratch output
// `packed`; and the kernel gradient dW (WinogradKernelGrad).
ffi::Error WinogradBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                           ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> d_in,
                           ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> packed,
                           int64_t tile, int64_t input_grad) {
  const auto a = x.dimensions(), b = g.dimensions(), k = w.dimensions(), d = dw->dimensions();
  if (auto e = CheckTile("winograd_bwd", tile); e.failure()) return e;
  if (a.size() != 4 || b.size() != 4 || k.size() != 4 || b[0] != a[0] || b[1] != a[1] ||
      b[2] != a[2] || k[0] != 3 || k[1] != 3 || k[2] != a[3] || k[3] != b[3] ||
      !std::equal(k.begin(), k.end(), d.begin(), d.end()))
    return ffi::Error::InvalidArgument(
        "winograd_bwd: x must be (N, H, W, C), g (N, H, W, O), W and dW (3, 3, C, O)");
  if (a[3] % kVec || b[3] % kVec)
    return ffi::Error::InvalidArgument(
        "winograd_bwd: the channels must be multiples of " + std::to_string(kVec));
  const WinogradGeometry geo{a[0], a[1], a[2], a[3], b[3], tile};
  if (input_grad) {
    const auto dd = d_in->dimensions();
    if (!std::equal(a.begin(), a.end(), dd.begin(), dd.end()))
      return ffi::Error::InvalidArgument("winograd_bwd: the input gradient must be shaped as x");
    const int64_t n = tile + 2;
    const Packed u{packed->typed_data(), n * n, geo.o, geo.c};
    if (packed->element_count() < static_cast<size_t>(Packed::Size(n * n, geo.o, geo.c)))
      return ffi::Error::InvalidArgument("winograd_bwd: the packed-kernel scratch is too small");
    // The input gradient is the Winograd convolution of g (O channels in, C out).
    const WinogradGeometry back{geo.n, geo.h, geo.w, geo.o, geo.c, tile};
    float* out = d_in->typed_data();
    WithTile(tile, [&](auto m) {
      constexpr int M = decltype(m)::value;
      PackWinograd<M>(pool, w.typed_data(), geo.c, geo.o, true, u, packed->typed_data());
      if (back.tiles()) WinogradForward<M>(pool, Input{g.typed_data()}, back, u, nullptr, {}, out);
    });
  }
  float* kernel_grad = dw->typed_data();
  if (geo.tiles() == 0 || geo.c == 0 || geo.o == 0)
    std::fill(kernel_grad, kernel_grad + dw->element_count(), 0.f);
  else
    WithTile(tile, [&](auto m) {
      WinogradKernelGrad<decltype(m)::value>(pool, x.typed_data(), g.typed_data(), geo,
                                             kernel_grad);
    });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HinetPack, PackImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kernel_hwoi")
                                  .Attr<int64_t>("transposed"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HinetConv, ConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("kernel_hwoi")
                                  .Attr<int64_t>("transposed")
                                  .Attr<int64_t>("relu")
                                  .Attr<float>("relu_slope"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HinetConvBwd, ConvBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("kernel_hwoi")
                                  .Attr<int64_t>("transposed")
                                  .Attr<int64_t>("input_grad"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HinetWinograd, WinogradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("tile")
                                  .Attr<int64_t>("relu")
                                  .Attr<float>("relu_slope"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HinetPackWinograd, PackWinogradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("tile"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HinetWinogradBwd, WinogradBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("tile")
                                  .Attr<int64_t>("input_grad"));
