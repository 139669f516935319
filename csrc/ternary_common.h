// Pieces shared by the ternary spike kernels (csrc/ternary.cpp, csrc/ternary_sparse.cpp): the spike input as bit
// rows, the float32 finish of integer sums (scale, bias) and the checks of the packed weight's tensors.
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
// dst[k * ld_dst + i] = src[i * ld_src + k] for i, k < 8: an 8 x 8 block of floats transposed in registers.
inline void transpose8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
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
    _mm256_storeu_ps(dst + e * ld_dst, _mm256_permute2f128_ps(r[e], r[4 + e], 0x20));
    _mm256_storeu_ps(dst + (e + 4) * ld_dst, _mm256_permute2f128_ps(r[e], r[4 + e], 0x31));
  }
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


}  // namespace tna_cpu
