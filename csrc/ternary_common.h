// Pieces shared by the ternary spike kernels (csrc/ternary.cpp, csrc/ternary_sparse.cpp): the spike input as bit
// rows (and a conv's as pixel bits and receptive-field rows), the float32 finish of integer sums (scale, bias) and
// the checks of the packed weight's and the conv's arguments.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace tna_cpu {

constexpr int64_t kCodesPerWord = 16;

// The spike bits of x[0 .. n) (bit i set where x[i] != 0, n <= 64); a bit of `bad` is set where some x[i] is
// neither 0 nor 1.
template <typename T>
inline uint64_t spike_word(const T* x, int64_t n, uint64_t& bad) {
  uint64_t word = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    const uint64_t nonzero = v != 0.0f;
    bad |= nonzero & static_cast<uint64_t>(v != 1.0f);
    word |= nonzero << i;
  }
  return word;
}

#if defined(__AVX2__)
// float32: eight lanes a compare.
template <>
inline uint64_t spike_word<float>(const float* x, int64_t n, uint64_t& bad) {
  if (n < 64) {
    uint64_t word = 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t nonzero = x[i] != 0.0f;
      bad |= nonzero & static_cast<uint64_t>(x[i] != 1.0f);
      word |= nonzero << i;
    }
    return word;
  }
  uint64_t word = 0, wrong = 0;
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  for (int i = 0; i < 8; ++i) {
    const __m256 v = _mm256_loadu_ps(x + 8 * i);
    const auto nonzero = static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ)));
    const auto ones = static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, one, _CMP_EQ_OQ)));
    word |= nonzero << (8 * i);
    wrong |= nonzero & ~ones;
  }
  bad |= wrong;
  return word;
}
#endif

// Bit rows [M, W64p] of x (nonzero -> 1). Returns false if some element is neither 0 nor 1.
template <typename T>
inline bool to_bit_rows(const T* x, int64_t M, int64_t K, uint64_t* bits, int64_t W64p) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    uint64_t bad = 0;
    for (int64_t m = m0; m < m1; ++m) {
      const T* row = x + m * K;
      for (int64_t w = 0; w < W64p; ++w) {
        const int64_t k0 = 64 * w;
        bits[m * W64p + w] = k0 < K ? spike_word(row + k0, std::min<int64_t>(64, K - k0), bad) : 0;
      }
    }
    if (bad != 0) ok = false;
  });
  return ok;
}

#if defined(__AVX2__)
// r[i][k] becomes r[k][i] for i, k < 8: an 8 x 8 block of floats transposed in registers.
inline void transpose8x8(__m256 (&r)[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {  // t[i]: rows i, i + 1 interleaved, elements 0 1 | 4 5; t[i + 1]: 2 3 | 6 7
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {  // r[h + e]: element e (and e + 4) of rows h .. h + 3
    r[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int e = 0; e < 4; ++e) {  // the low halves hold elements 0 .. 3, the high halves 4 .. 7
    t[e] = _mm256_permute2f128_ps(r[e], r[4 + e], 0x20);
    t[e + 4] = _mm256_permute2f128_ps(r[e], r[4 + e], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// dst[k * ld_dst + i] = src[i * ld_src + k] for i, k < 8: an 8 x 8 block of floats transposed in registers.
inline void transpose8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
  transpose8x8(r);
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * ld_dst, r[i]);
}
#endif

// Where spike results go: y[m * ldm + n * ldn] for row m and column n, finished in float32 as in the
// reference with scale[n] (symmetric) or scale[n] and scale[ldscale + n] (asymmetric [2, N] scale,
// ldscale = N), then + bias[n] (bias may be null).
template <typename Out>
struct SpikeOutput {
  const float* scale;
  bool asymmetric;
  int64_t ldscale;
  const float* bias;
  Out* y;
  int64_t ldm, ldn;

  // Column n's output from the counts of the inputs that meet code 1 (acc_p) and code -1 (acc_n).
  Out value(int64_t n, int64_t acc_p, int64_t acc_n) const {
    float v;
    if (asymmetric) {
      v = static_cast<float>(acc_p) * scale[n] - static_cast<float>(acc_n) * scale[ldscale + n];
    } else {
      v = static_cast<float>(acc_p - acc_n) * scale[n];
    }
    if (bias != nullptr) v = v + bias[n];
    return static_cast<Out>(v);
  }

  void store(int64_t m, int64_t n, int64_t acc_p, int64_t acc_n) const {
    y[m * ldm + n * ldn] = value(n, acc_p, acc_n);
  }

  // The float32 values of columns n0 .. n1 - 1 of one row (values[j] for column n0 + j) from the sums of the
  // codes (sums[j]) and, for an asymmetric scale, of their absolute values (abs_sums[j]; then acc_p = (abs + sum)
  // / 2 and acc_n = (abs - sum) / 2): as value, with the choices made once per row so that the loops vectorize.
  void row_values(const int32_t* sums, const int32_t* abs_sums, int64_t n0, int64_t n1, float* values) const {
    const int64_t width = n1 - n0;
    const float* s = scale + n0;
    if (asymmetric) {
      const float* s_minus = scale + ldscale + n0;
      for (int64_t j = 0; j < width; ++j) {
        values[j] = static_cast<float>((abs_sums[j] + sums[j]) / 2) * s[j] -
                    static_cast<float>((abs_sums[j] - sums[j]) / 2) * s_minus[j];
      }
    } else {
      for (int64_t j = 0; j < width; ++j) values[j] = static_cast<float>(sums[j]) * s[j];
    }
    if (bias != nullptr) {
      const float* b = bias + n0;
      for (int64_t j = 0; j < width; ++j) values[j] = values[j] + b[j];
    }
  }

  // Rows m0 .. m1 - 1 and columns n0 .. n1 - 1 from the sums of the codes, (m, n) at sums[(m - m0) * ld + n - n0],
  // and, for an asymmetric scale, of their absolute values (abs_sums, likewise): as store, a few rows at a time
  // turned into floats along n, then written in the order that writes y contiguously.
  void store_sums(int64_t m0, int64_t m1, int64_t n0, int64_t n1, const int32_t* sums, const int32_t* abs_sums,
                  int64_t ld) const {
    constexpr int64_t kRows = 16;  // a cache line of float outputs along m
    const int64_t width = n1 - n0;
    std::vector<float> values(kRows * width);
    for (int64_t r0 = m0; r0 < m1; r0 += kRows) {
      const int64_t rows = std::min(kRows, m1 - r0);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t at = (r0 - m0 + i) * ld;
        row_values(sums + at, asymmetric ? abs_sums + at : nullptr, n0, n1, values.data() + i * width);
      }
      if (ldn == 1) {
        for (int64_t i = 0; i < rows; ++i) {
          Out* row = y + (r0 + i) * ldm + n0;
          for (int64_t j = 0; j < width; ++j) row[j] = static_cast<Out>(values[i * width + j]);
        }
      } else {
        int64_t j = 0;
#if defined(__AVX2__)
        if constexpr (std::is_same_v<Out, float>) {
          if (ldm == 1 && rows == kRows) {  // whole 8 x 8 blocks by register transposes
            for (; j + 8 <= width; j += 8)
              for (int64_t i = 0; i < kRows; i += 8)
                transpose8x8(values.data() + i * width + j, width, y + r0 + i + (n0 + j) * ldn, ldn);
          }
        }
#endif
        for (; j < width; ++j) {
          Out* column = y + r0 * ldm + (n0 + j) * ldn;
          if (ldm == 1) {
            for (int64_t i = 0; i < rows; ++i) column[i] = static_cast<Out>(values[i * width + j]);
          } else {
            for (int64_t i = 0; i < rows; ++i) column[i * ldm] = static_cast<Out>(values[i * width + j]);
          }
        }
      }
    }
  }
};

inline void check_weights(const at::Tensor& packed, const at::Tensor& scale, int64_t K, const char* op) {
  TORCH_CHECK(packed.device().is_cpu() && scale.device().is_cpu(), op, ": packed and scale must be CPU tensors");
  TORCH_CHECK(packed.scalar_type() == at::kInt && packed.dim() == 2 && packed.is_contiguous(), op,
              ": packed must be a contiguous int32 tensor [N, ceil(K/16)], got ", packed.scalar_type(), " ",
              packed.sizes());
  const int64_t N = packed.size(0);
  TORCH_CHECK(packed.size(1) == (K + kCodesPerWord - 1) / kCodesPerWord, op, ": packed has ", packed.size(1),
              " words per row, but K = ", K, " inputs need ", (K + kCodesPerWord - 1) / kCodesPerWord);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() &&
                  ((scale.dim() == 1 && scale.size(0) == N) ||
                   (scale.dim() == 2 && scale.size(0) == 2 && scale.size(1) == N)),
              op, ": scale must be a contiguous float32 tensor [N] or [2, N] with N = ", N, ", got ",
              scale.scalar_type(), " ", scale.sizes());
}

inline void check_bias(const std::optional<at::Tensor>& bias, int64_t N, const char* op) {
  if (!bias.has_value()) return;
  const auto& b = *bias;
  TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == at::kFloat && b.dim() == 1 && b.size(0) == N &&
                  b.is_contiguous(),
              op, ": bias must be a contiguous float32 CPU tensor [", N, "], got ", b.scalar_type(), " ",
              b.sizes());
}


// ---------------------------------------------------------------------------------------------
// Spike conv2d input (csrc/ternary.cpp has the kernels): x [B, C, H, W] in {0, 1}, weight [O, Cg, kh, kw] (Cg = C / G
// channels per group, G groups), T = kh * kw taps. The receptive field of an output pixel is one bit row of
// Wk = ceil(T * Cg / 64) words: tap t = i * kw + j holds its Cg channel bits at bits t * Cg .. t * Cg + Cg - 1.
// ---------------------------------------------------------------------------------------------
constexpr int64_t kLanes = 8;  // output channels per 512-bit vector of 64-bit counts (the dense conv kernel)

// A conv's codes in two orders: packed rows hold them in (channel, tap) order, code k = c * T + t (nn.Conv2d's weight
// [O, Cg, kh, kw] flattened); the receptive-field bit rows in (tap, channel) order, input r = t * Cg + c. The default,
// one tap and one channel, is a linear layer's single order.
struct CodeOrder {
  int64_t taps = 1, channels = 1;  // T and Cg
  int64_t row_input(int64_t k) const { return k % taps * channels + k / taps; }        // of packed code k
  int64_t packed_code(int64_t r) const { return r % channels * taps + r / channels; }  // of row input r
};

struct ConvShape {
  int64_t B, C, H, W, O, G, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
  int64_t Cg, Og, T, Wc, Wk, Ob;  // channels per group (in, out), taps, words per pixel and group,
                                  // words per bit row, blocks of kLanes output channels per group
};

// Channel bits per pixel bits [B, H, W, G, Wc] of x [B, C, H, W]: bit c % 64 of word c / 64 of group g is
// channel g * Cg + c (bits past Cg are zero). Returns false if some element is neither 0 nor 1.
template <typename T>
inline bool to_pixel_bits(const T* x, const ConvShape& s, uint64_t* bits) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t r0, int64_t r1) {  // image rows r = b * H + h
    // local copies: the word stores below could otherwise alias the sizes, which stops vectorization
    const int64_t C = s.C, H = s.H, W = s.W, Cg = s.Cg, Wc = s.Wc, pixel_words = s.G * s.Wc;
    // the word of each pixel of a run of rows in two halves (channels c0 .. c0 + 31, then the rest): 32-bit
    // lanes, twice as many to a vector as 64-bit ones
    const int64_t most = std::min(r1 - r0, H) * W;
    std::vector<uint32_t> halves(2 * most);
    uint32_t bad = 0;
    for (int64_t r = r0, next; r < r1; r = next) {  // rows r .. next - 1 of image b: contiguous in x
      const int64_t b = r / H;
      next = std::min(r1, (b + 1) * H);
      const int64_t pixels = (next - r) * W;
      for (int64_t q = 0; q < pixel_words; ++q) {  // q = g * Wc + word index
        const int64_t c0 = q / Wc * Cg + q % Wc * 64, c1 = std::min(q / Wc * Cg + Cg, c0 + 64);
        std::fill(halves.begin(), halves.end(), 0);
        for (int64_t c = c0; c < c1; ++c) {
          const T* src = x + (b * C + c) * H * W + (r - b * H) * W;
          const uint32_t bit = uint32_t(1) << ((c - c0) % 32);
          uint32_t* word = halves.data() + (c - c0) / 32 * most;
          for (int64_t p = 0; p < pixels; ++p) {  // written so that it vectorizes
            const float v = static_cast<float>(src[p]);
            bad |= static_cast<uint32_t>(v != 0.0f) & static_cast<uint32_t>(v != 1.0f);
            word[p] |= v == 1.0f ? bit : 0u;
          }
        }
        const uint32_t* low = halves.data();
        const uint32_t* high = low + most;
        for (int64_t p = 0; p < pixels; ++p)
          bits[(r * W + p) * pixel_words + q] = low[p] | static_cast<uint64_t>(high[p]) << 32;
      }
    }
    if (bad != 0) ok = false;
  });
  return ok;
}

// Calls f(tap, ih, iw) for each tap = i * kw + j of output pixel l (l = oh * Wo + ow) whose input pixel (ih, iw)
// is inside the image.
template <typename F>
inline void for_each_tap(const ConvShape& s, int64_t l, F&& f) {
  const int64_t oh = l / s.Wo, ow = l % s.Wo;
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t ih = oh * s.sh - s.ph + i * s.dh;
    if (ih < 0 || ih >= s.H) continue;
    for (int64_t j = 0; j < s.kw; ++j) {
      const int64_t iw = ow * s.sw - s.pw + j * s.dw;
      if (iw >= 0 && iw < s.W) f(i * s.kw + j, ih, iw);
    }
  }
}

// The bit rows `rows` [l1 - l0, Wk] of the receptive fields of output pixels l0 .. l1 - 1 (l = oh * Wo + ow) of
// image b in group g, gathered from the pixel bits [B, H, W, G, Wc]; taps outside the image stay zero.
inline void gather_rows(const uint64_t* bits, const ConvShape& s, int64_t b, int64_t g, int64_t l0, int64_t l1,
                        uint64_t* rows) {
  std::fill(rows, rows + (l1 - l0) * s.Wk, 0);
  for (int64_t l = l0; l < l1; ++l) {
    uint64_t* row = rows + (l - l0) * s.Wk;
    for_each_tap(s, l, [&](int64_t tap, int64_t ih, int64_t iw) {
      const uint64_t* src = bits + (((b * s.H + ih) * s.W + iw) * s.G + g) * s.Wc;
      for (int64_t w = 0; w < s.Wc; ++w) {
        const uint64_t v = src[w];
        const int64_t bit = tap * s.Cg + 64 * w, shift = bit % 64;
        row[bit / 64] |= v << shift;
        // bits carried into the next word are channel bits, so that word is inside the row
        if (shift != 0 && (v >> (64 - shift)) != 0) row[bit / 64 + 1] |= v >> (64 - shift);
      }
    });
  }
}

// The weight's part of s: O output channels, Cg input channels per group, G groups, a kh x kw kernel.
inline void set_weight_shape(ConvShape& s, int64_t O, int64_t Cg, int64_t groups, int64_t kh, int64_t kw) {
  s.O = O, s.Cg = Cg, s.G = groups, s.kh = kh, s.kw = kw, s.T = kh * kw;
  s.Og = O / groups, s.Wk = (s.T * Cg + 63) / 64, s.Ob = (s.Og + kLanes - 1) / kLanes;
}

// The shape of the conv2d of spikes x [B, C, H, W] with the packed weight [O, ceil(C / groups * kh * kw / 16)]
// (scale [O] or [2, O], bias [O]), every argument checked (errors name ternary_conv2d).
inline ConvShape conv_shape(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups, at::IntArrayRef kernel_size) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(),
              "ternary_conv2d: x must be a contiguous 4-D CPU tensor [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 && kernel_size.size() == 2,
              "ternary_conv2d: stride, padding, dilation and kernel_size must be pairs");
  TORCH_CHECK(std::min(stride[0], stride[1]) >= 1 && std::min(padding[0], padding[1]) >= 0 &&
                  std::min(dilation[0], dilation[1]) >= 1 && std::min(kernel_size[0], kernel_size[1]) >= 1,
              "ternary_conv2d: need stride, dilation, kernel_size >= 1 and padding >= 0");
  ConvShape s{};
  s.B = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3);
  s.sh = stride[0], s.sw = stride[1], s.ph = padding[0], s.pw = padding[1], s.dh = dilation[0], s.dw = dilation[1];
  TORCH_CHECK(groups >= 1 && s.C % groups == 0, "ternary_conv2d: groups = ", groups, " must divide C = ", s.C);
  check_weights(packed, scale, s.C / groups * kernel_size[0] * kernel_size[1], "ternary_conv2d");
  TORCH_CHECK(packed.size(0) % groups == 0, "ternary_conv2d: groups = ", groups, " must divide O = ", packed.size(0));
  set_weight_shape(s, packed.size(0), s.C / groups, groups, kernel_size[0], kernel_size[1]);
  check_bias(bias, s.O, "ternary_conv2d");
  TORCH_CHECK(s.H + 2 * s.ph >= s.dh * (s.kh - 1) + 1 && s.W + 2 * s.pw >= s.dw * (s.kw - 1) + 1,
              "ternary_conv2d: the input ", x.sizes(), " is smaller than the dilated kernel");
  s.Ho = (s.H + 2 * s.ph - s.dh * (s.kh - 1) - 1) / s.sh + 1;
  s.Wo = (s.W + 2 * s.pw - s.dw * (s.kw - 1) - 1) / s.sw + 1;
  s.Wc = (s.Cg + 63) / 64;
  return s;
}

// The number of set bits of words.
inline int64_t count_bits(const std::vector<uint64_t>& words) {
  int64_t count = 0;
  for (const uint64_t word : words) count += __builtin_popcountll(word);
  return count;
}

// y [B, O, Ho, Wo] = the conv of spikes x of shape s from their pixel bits (pixel_bits) through the dense conv
// layout `layout` (ternary_conv2d_layout's, checked) by the kernel that ternary_conv2d_spikes' "auto" picks
// (defined in csrc/ternary.cpp).
at::Tensor dense_spike_conv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias, const at::Tensor& layout, const ConvShape& s,
                            const std::vector<uint64_t>& bits);

// The pixel bits [B, H, W, G, Wc] of spikes x (see to_pixel_bits), checked to hold only 0 and 1.
inline std::vector<uint64_t> pixel_bits(const at::Tensor& x, const ConvShape& s) {
  std::vector<uint64_t> bits(s.B * s.H * s.W * s.G * s.Wc);
  bool ok = true;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBFloat16, at::kHalf, at::kBool, x.scalar_type(), "ternary_conv2d_spikes", [&] {
    ok = to_pixel_bits(x.data_ptr<scalar_t>(), s, bits.data());
  });
  TORCH_CHECK(ok, "ternary_conv2d: spike input must hold only 0 and 1; found other values");
  return bits;
}

}  // namespace tna_cpu
