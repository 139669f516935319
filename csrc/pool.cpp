// Max pooling for inference: y [P, Ho, Wo] = the maximum of each window of x [P, H, W] (P = batch x channels),
// without the indices that F.max_pool2d computes for its backward.
//
// Equal to F.max_pool2d bit for bit: each window starts at -inf and takes a value that is greater than the
// running maximum or NaN, in row-major window order, as ATen's CPU kernel does (so ties keep the first value,
// which decides between -0 and +0, and a NaN propagates). On spikes (0/1) the maximum is their OR. 2x2 windows of
// stride 2 over planes of even size whose output rows are 1, 2, 4, 8 or 16 wide (the small planes of the late
// layers of a network) take one loop over all output rows, vectorized across rows. Otherwise, windows that lie
// inside the image (all but the padded or ceil-mode edges) take a loop over output columns that the compiler
// vectorizes for the common 2x2 and 3x3 windows of stride 2.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

namespace {

struct PoolShape {
  int64_t H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
};

template <typename A>
inline A take(A m, A v) {
  return (v > m) | (v != v) ? v : m;
}

// Output rows oh of one plane, window rows clipped to the image; columns ow0 .. ow1 - 1 (all or part of a row),
// each window clipped to the image too.
template <typename T>
void pool_clipped(const T* x, const PoolShape& s, int64_t oh, int64_t ow0, int64_t ow1, T* y) {
  using A = at::opmath_type<T>;
  const int64_t h0 = std::max<int64_t>(oh * s.sh - s.ph, 0), h1 = std::min(oh * s.sh - s.ph + s.kh, s.H);
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    const int64_t w0 = std::max<int64_t>(ow * s.sw - s.pw, 0), w1 = std::min(ow * s.sw - s.pw + s.kw, s.W);
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) m = take(m, static_cast<A>(x[h * s.W + w]));
    y[ow] = static_cast<T>(m);
  }
}

// Columns ow0 .. ow1 - 1 of output row oh whose KH x KW windows (stride SW along a row) lie inside the image.
template <int KH, int KW, int SW, typename T>
void pool_inside(const T* x, const PoolShape& s, int64_t oh, int64_t ow0, int64_t ow1, T* y) {
  using A = at::opmath_type<T>;
  const T* top = x + (oh * s.sh - s.ph) * s.W - s.pw;
  const int64_t W = s.W;
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    A m = -std::numeric_limits<A>::infinity();
    for (int i = 0; i < KH; ++i)
      for (int j = 0; j < KW; ++j) m = take(m, static_cast<A>(top[i * W + ow * SW + j]));
    y[ow] = static_cast<T>(m);
  }
}

// One output row oh of one plane: its inside columns by `inside` (a pool_inside), the rest clipped.
template <typename T, typename Inside>
void pool_row(const T* x, const PoolShape& s, int64_t oh, T* y, Inside inside) {
  const bool rows_inside = oh * s.sh - s.ph >= 0 && oh * s.sh - s.ph + s.kh <= s.H;
  // ow is inside for ow * sw >= pw and ow * sw - pw + kw <= W
  const int64_t first = std::min(s.Wo, (s.pw + s.sw - 1) / s.sw);
  const int64_t span = s.W + s.pw - s.kw;
  const int64_t last = rows_inside && span >= 0 ? std::clamp<int64_t>(span / s.sw + 1, first, s.Wo) : first;
  pool_clipped(x, s, oh, 0, first, y);
  if (last > first) inside(x, s, oh, first, last, y);
  pool_clipped(x, s, oh, last, s.Wo, y);
}

// The maximum of a 2x2 window's values a, b (top row) and c, d (bottom row), taken in that order as the running
// maximum of pool_clipped takes them.
template <typename A>
inline A window_max(A a, A b, A c, A d) {
  constexpr A start = -std::numeric_limits<A>::infinity();
  return take(take(take(take(start, a), b), c), d);
}

// 2x2 windows of stride 2 over planes of even height and width: x is then [rows, 2, 2 * WO] and y [rows, WO], one
// output row per pair of input rows, whatever the plane. Rows of WO outputs (a compile-time width) in one flat
// loop, vectorized across rows, where each row of a plane alone would be too short to vectorize.
template <int WO, typename T>
void pool_pairs(const T* x, int64_t rows, T* y) {
  using A = at::opmath_type<T>;
  const int64_t grain = std::max<int64_t>(1, 16384 / WO);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
#pragma omp simd
    for (int64_t r = r0; r < r1; ++r) {
      const T* top = x + r * 4 * WO;
      for (int o = 0; o < WO; ++o) {
        y[r * WO + o] = static_cast<T>(window_max(static_cast<A>(top[2 * o]), static_cast<A>(top[2 * o + 1]),
                                                  static_cast<A>(top[2 * WO + 2 * o]),
                                                  static_cast<A>(top[2 * WO + 2 * o + 1])));
      }
    }
  });
}

template <typename T>
void max_pool(const T* x, int64_t planes, const PoolShape& s, T* y) {
  const bool pairs = s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.ph == 0 && s.pw == 0 &&
                     s.H == 2 * s.Ho && s.W == 2 * s.Wo;
  if (pairs) {
    const int64_t rows = planes * s.Ho;
    switch (s.Wo) {
      case 1: return pool_pairs<1>(x, rows, y);
      case 2: return pool_pairs<2>(x, rows, y);
      case 4: return pool_pairs<4>(x, rows, y);
      case 8: return pool_pairs<8>(x, rows, y);
      case 16: return pool_pairs<16>(x, rows, y);
      default: break;
    }
  }
  auto run = [&](auto inside) {
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, s.Wo * s.kh * s.kw));
    at::parallel_for(0, planes * s.Ho, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) pool_row(x + r / s.Ho * s.H * s.W, s, r % s.Ho, y + r * s.Wo, inside);
    });
  };
  if (s.kh == 2 && s.kw == 2 && s.sw == 2) {
    run(pool_inside<2, 2, 2, T>);
  } else if (s.kh == 3 && s.kw == 3 && s.sw == 2) {
    run(pool_inside<3, 3, 2, T>);
  } else {
    run(pool_clipped<T>);
  }
}

// Output size along one dimension, as ATen's pooling_output_shape (dilation 1).
int64_t pooled_size(int64_t size, int64_t k, int64_t stride, int64_t pad, bool ceil_mode) {
  int64_t out = (size + 2 * pad - k + (ceil_mode ? stride - 1 : 0)) / stride + 1;
  if (ceil_mode && (out - 1) * stride >= size + pad) --out;
  return out;
}

// y [P, Ho, Wo] = max pooling of x [P, H, W] (contiguous, floating point) with a kh x kw window, stride,
// padding (at most half the window) and ceil_mode as F.max_pool2d (dilation 1).
at::Tensor max_pool2d(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous() && x.is_floating_point(),
              "max_pool2d: x must be a contiguous floating-point 3-D CPU tensor [P, H, W], got ", x.scalar_type(),
              " ", x.sizes());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2,
              "max_pool2d: kernel_size, stride and padding must be pairs");
  PoolShape s{x.size(1), x.size(2), 0, 0, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
              padding[1]};
  TORCH_CHECK(std::min(s.kh, s.kw) >= 1 && std::min(s.sh, s.sw) >= 1 && std::min(s.ph, s.pw) >= 0 &&
                  2 * s.ph <= s.kh && 2 * s.pw <= s.kw,
              "max_pool2d: need kernel_size, stride >= 1 and 0 <= padding <= kernel_size / 2");
  s.Ho = pooled_size(s.H, s.kh, s.sh, s.ph, ceil_mode);
  s.Wo = pooled_size(s.W, s.kw, s.sw, s.pw, ceil_mode);
  TORCH_CHECK(s.Ho >= 1 && s.Wo >= 1, "max_pool2d: the input ", x.sizes(), " is smaller than the window");
  at::Tensor y = at::empty({x.size(0), s.Ho, s.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "max_pool2d", [&] {
    max_pool(x.data_ptr<scalar_t>(), x.size(0), s, y.data_ptr<scalar_t>());
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tna_cpp, m) {
  m.def("max_pool2d(Tensor x, int[] kernel_size, int[] stride, int[] padding, bool ceil_mode) -> Tensor");
}

TORCH_LIBRARY_IMPL(tna_cpp, CPU, m) { m.impl("max_pool2d", &max_pool2d); }
