// Ternary-weight linear layer for CPU on the packed 2-bit format (tna_kernels/ops/ternary/format.py).
//
// Two kernels, both reading the packed words directly (no float copy of the weight is kept):
// - spikes (x in {0, 1}): x rows become bit rows, the weight rows become two bit-planes (code 1 and
//   code -1), and y = popcount(x & plus) - popcount(x & minus) is exact integer arithmetic; the scale
//   is applied once, in float32, as in tna_kernels/ops/ternary/reference.py. The inner loop uses
//   AVX-512 VPOPCNTDQ where the compiler targets it, and portable 64-bit popcounts otherwise.
// - real-valued x (float32): blocks of the weight are decoded into a small float tile (scale
//   included) and multiplied with register-blocked fused multiply-adds. The same routine computes
//   the input gradient grad_x = grad_y @ W with the tile transposed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#define TNA_HAVE_VPOPCNT 1
#else
#define TNA_HAVE_VPOPCNT 0
#endif

namespace {

constexpr int64_t kCodesPerWord = 16;

// The 16 even bits of x (bits 0, 2, ..., 30) packed into the low 16 bits.
inline uint32_t even_bits(uint32_t x) {
  x &= 0x55555555u;
  x = (x | (x >> 1)) & 0x33333333u;
  x = (x | (x >> 2)) & 0x0f0f0f0fu;
  x = (x | (x >> 4)) & 0x00ff00ffu;
  x = (x | (x >> 8)) & 0x0000ffffu;
  return x;
}

// Split packed rows [N, W16] into bit-planes [N, W64p] (W64p: words of 64 codes, padded with zeros):
// bit k of `plus` is set where code k is 1, of `minus` where it is -1.
void to_bit_planes(const int32_t* packed, int64_t N, int64_t W16, uint64_t* plus, uint64_t* minus, int64_t W64p) {
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint32_t* row = reinterpret_cast<const uint32_t*>(packed + n * W16);
      for (int64_t w = 0; w < W64p; ++w) {
        uint64_t p = 0, m = 0;
        for (int64_t j = 0; j < 4; ++j) {
          const int64_t src = 4 * w + j;
          if (src >= W16) break;
          const uint32_t v = row[src];
          const uint32_t lo = v & 0x55555555u, hi = (v >> 1) & 0x55555555u;
          p |= static_cast<uint64_t>(even_bits(hi & ~lo)) << (16 * j);           // pair 2: code 1
          m |= static_cast<uint64_t>(even_bits(~(hi | lo) & 0x55555555u)) << (16 * j);  // pair 0: code -1
        }
        plus[n * W64p + w] = p;
        minus[n * W64p + w] = m;
      }
    }
  });
}

// Bit rows [M, W64p] of x (nonzero -> 1). Returns false if some element is neither 0 nor 1.
template <typename T>
bool to_bit_rows(const T* x, int64_t M, int64_t K, uint64_t* bits, int64_t W64p) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    bool good = true;
    for (int64_t m = m0; m < m1; ++m) {
      const T* row = x + m * K;
      for (int64_t w = 0; w < W64p; ++w) {
        uint64_t b = 0;
        const int64_t k0 = 64 * w, k1 = std::min(K, k0 + 64);
        for (int64_t k = k0; k < k1; ++k) {
          const float v = static_cast<float>(row[k]);
          good &= (v == 0.0f) | (v == 1.0f);
          b |= static_cast<uint64_t>(v != 0.0f) << (k - k0);
        }
        bits[m * W64p + w] = b;
      }
    }
    if (!good) ok = false;
  });
  return ok;
}

// acc_p[i][j] = sum popcount(x_i & plus_j), acc_n likewise with minus, for an MR x NR tile.
template <int MR, int NR, bool SIMD>
inline void popcount_tile(const uint64_t* const* xr, const uint64_t* const* pr, const uint64_t* const* nr,
                          int64_t W64p, int64_t (&acc_p)[4][4], int64_t (&acc_n)[4][4]) {
#if TNA_HAVE_VPOPCNT
  if constexpr (SIMD) {
    __m512i vp[MR][NR], vn[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) vp[i][j] = vn[i][j] = _mm512_setzero_si512();
    for (int64_t w = 0; w < W64p; w += 8) {
      __m512i xv[MR], pv[NR], mv[NR];
      for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_si512(xr[i] + w);
      for (int j = 0; j < NR; ++j) {
        pv[j] = _mm512_loadu_si512(pr[j] + w);
        mv[j] = _mm512_loadu_si512(nr[j] + w);
      }
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) {
          vp[i][j] = _mm512_add_epi64(vp[i][j], _mm512_popcnt_epi64(_mm512_and_si512(xv[i], pv[j])));
          vn[i][j] = _mm512_add_epi64(vn[i][j], _mm512_popcnt_epi64(_mm512_and_si512(xv[i], mv[j])));
        }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) {
        acc_p[i][j] = _mm512_reduce_add_epi64(vp[i][j]);
        acc_n[i][j] = _mm512_reduce_add_epi64(vn[i][j]);
      }
    return;
  }
#endif
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      int64_t p = 0, n = 0;
      for (int64_t w = 0; w < W64p; ++w) {
        p += __builtin_popcountll(xr[i][w] & pr[j][w]);
        n += __builtin_popcountll(xr[i][w] & nr[j][w]);
      }
      acc_p[i][j] = p;
      acc_n[i][j] = n;
    }
}

// One MR x NR block of y from bit rows / planes, finished in float32 as in the reference.
template <int MR, int NR, bool SIMD, typename Out>
void spike_block(const uint64_t* xbits, const uint64_t* plus, const uint64_t* minus, int64_t W64p, int64_t m0,
                 int64_t n0, const float* scale, bool asymmetric, const float* bias, int64_t N, Out* y) {
  const uint64_t* xr[MR];
  const uint64_t* pr[NR];
  const uint64_t* nr[NR];
  for (int i = 0; i < MR; ++i) xr[i] = xbits + (m0 + i) * W64p;
  for (int j = 0; j < NR; ++j) {
    pr[j] = plus + (n0 + j) * W64p;
    nr[j] = minus + (n0 + j) * W64p;
  }
  int64_t acc_p[4][4], acc_n[4][4];
  popcount_tile<MR, NR, SIMD>(xr, pr, nr, W64p, acc_p, acc_n);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const int64_t n = n0 + j;
      float v;
      if (asymmetric) {
        v = static_cast<float>(acc_p[i][j]) * scale[n] - static_cast<float>(acc_n[i][j]) * scale[N + n];
      } else {
        v = static_cast<float>(acc_p[i][j] - acc_n[i][j]) * scale[n];
      }
      if (bias != nullptr) v = v + bias[n];
      y[(m0 + i) * N + n] = static_cast<Out>(v);
    }
}

template <int MR, bool SIMD, typename Out>
void spike_rows(const uint64_t* xbits, const uint64_t* plus, const uint64_t* minus, int64_t W64p, int64_t m0,
                int64_t n0, int64_t n1, const float* scale, bool asymmetric, const float* bias, int64_t N, Out* y) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2)
    spike_block<MR, 2, SIMD>(xbits, plus, minus, W64p, m0, n, scale, asymmetric, bias, N, y);
  if (n < n1) spike_block<MR, 1, SIMD>(xbits, plus, minus, W64p, m0, n, scale, asymmetric, bias, N, y);
}

template <bool SIMD, typename Out>
void spike_linear(const uint64_t* xbits, const uint64_t* plus, const uint64_t* minus, int64_t W64p, int64_t M,
                  int64_t N, const float* scale, bool asymmetric, const float* bias, Out* y) {
  constexpr int64_t kColumns = 32;  // columns per task: their bit-planes stay in L1 / L2
  at::parallel_for(0, (N + kColumns - 1) / kColumns, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kColumns, n1 = std::min(N, n0 + kColumns);
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) spike_rows<4, SIMD>(xbits, plus, minus, W64p, m, n0, n1, scale, asymmetric, bias, N, y);
      for (; m < M; ++m) spike_rows<1, SIMD>(xbits, plus, minus, W64p, m, n0, n1, scale, asymmetric, bias, N, y);
    }
  });
}

void check_weights(const at::Tensor& packed, const at::Tensor& scale, int64_t K, const char* op) {
  TORCH_CHECK(packed.device().is_cpu() && scale.device().is_cpu(), op, ": packed and scale must be CPU tensors");
  TORCH_CHECK(packed.scalar_type() == at::kInt && packed.dim() == 2 && packed.is_contiguous(), op,
              ": packed must be a contiguous int32 tensor [N, ceil(K/16)], got ", packed.scalar_type(), " ",
              packed.sizes());
  const int64_t N = packed.size(0);
  TORCH_CHECK(packed.size(1) == (K + kCodesPerWord - 1) / kCodesPerWord, op, ": packed has ", packed.size(1),
              " words per row, but K = ", K, " inputs need ", (K + kCodesPerWord - 1) / kCodesPerWord);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() &&
                  ((scale.dim() == 1 && scale.size(0) == N) || (scale.dim() == 2 && scale.size(0) == 2 && scale.size(1) == N)),
              op, ": scale must be a contiguous float32 tensor [N] or [2, N] with N = ", N, ", got ",
              scale.scalar_type(), " ", scale.sizes());
}

void check_bias(const std::optional<at::Tensor>& bias, int64_t N) {
  if (!bias.has_value()) return;
  const auto& b = *bias;
  TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == at::kFloat && b.dim() == 1 && b.size(0) == N &&
                  b.is_contiguous(),
              "ternary_linear: bias must be a contiguous float32 CPU tensor [", N, "], got ", b.scalar_type(), " ",
              b.sizes());
}

// y [M, N] = spike rows x [M, K] times the packed ternary weight; exact (see the file comment).
at::Tensor ternary_linear_spikes(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& bias, bool simd) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(),
              "ternary_linear: x must be a contiguous 2-D CPU tensor [M, K], got ", x.sizes());
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  check_weights(packed, scale, K, "ternary_linear");
  check_bias(bias, N);
  const int64_t W64p = ((K + 63) / 64 + 7) / 8 * 8;  // whole 512-bit vectors, zero padded
  std::vector<uint64_t> xbits(M * W64p), plus(N * W64p), minus(N * W64p);
  bool ok = true;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBFloat16, at::kHalf, at::kBool, x.scalar_type(), "ternary_linear_spikes", [&] {
    ok = to_bit_rows(x.data_ptr<scalar_t>(), M, K, xbits.data(), W64p);
  });
  TORCH_CHECK(ok, "ternary_linear: spike input must hold only 0 and 1; found other values");
  to_bit_planes(packed.data_ptr<int32_t>(), N, packed.size(1), plus.data(), minus.data(), W64p);
  const auto out_dtype = x.is_floating_point() ? x.scalar_type() : at::kFloat;
  at::Tensor y = at::empty({M, N}, x.options().dtype(out_dtype));
  const float* sp = scale.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const bool asym = scale.dim() == 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_dtype, "ternary_linear_spikes_out", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    if (simd && TNA_HAVE_VPOPCNT) {
      spike_linear<true>(xbits.data(), plus.data(), minus.data(), W64p, M, N, sp, asym, bp, yp);
    } else {
      spike_linear<false>(xbits.data(), plus.data(), minus.data(), W64p, M, N, sp, asym, bp, yp);
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// Real-valued input: c [M, J] = a [M, R] @ B [R, J], where B is decoded tile by tile from the packed
// weight W [N, K] (forward: R = K, J = N, B = W^T; input gradient: R = N, J = K, B = W).
// ---------------------------------------------------------------------------------------------
constexpr int64_t kTileJ = 64;   // output columns per task (four 16-float vectors)
constexpr int64_t kTileR = 256;  // reduction depth per decoded tile
constexpr int64_t kRowsM = 4;    // rows of a per register block

inline float decode(const uint32_t* row, int64_t k, float plus, float minus) {
  const uint32_t v = (row[k / kCodesPerWord] >> (2 * (k % kCodesPerWord))) & 3u;
  return v == 2u ? plus : (v == 0u ? minus : 0.0f);
}

// Fill tile [rlen][kTileJ] (zeros past jlen) with B[r0 + r][j0 + j].
void fill_tile(float* tile, const int32_t* packed, int64_t W16, const float* scale, bool asym, int64_t N,
               bool transposed, int64_t r0, int64_t rlen, int64_t j0, int64_t jlen) {
  std::fill(tile, tile + rlen * kTileJ, 0.0f);
  for (int64_t j = 0; j < jlen; ++j) {
    for (int64_t r = 0; r < rlen; ++r) {
      const int64_t n = transposed ? j0 + j : r0 + r;  // weight row
      const int64_t k = transposed ? r0 + r : j0 + j;  // weight column
      const float plus = scale[n], minus = asym ? -scale[N + n] : -scale[n];
      tile[r * kTileJ + j] = decode(reinterpret_cast<const uint32_t*>(packed + n * W16), k, plus, minus);
    }
  }
}

template <int MR>
inline void fma_block(const float* a, int64_t lda, int64_t m0, int64_t r0, int64_t rlen, const float* tile,
                      float* acc) {
  float c[MR][kTileJ];
  for (int i = 0; i < MR; ++i)
    for (int64_t j = 0; j < kTileJ; ++j) c[i][j] = acc[i * kTileJ + j];
  for (int64_t r = 0; r < rlen; ++r) {
    const float* b = tile + r * kTileJ;
    for (int i = 0; i < MR; ++i) {
      const float av = a[(m0 + i) * lda + r0 + r];
#pragma omp simd
      for (int64_t j = 0; j < kTileJ; ++j) c[i][j] = std::fma(av, b[j], c[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int64_t j = 0; j < kTileJ; ++j) acc[i * kTileJ + j] = c[i][j];
}

void dense_gemm(const float* a, int64_t M, int64_t R, const int32_t* packed, int64_t W16, const float* scale,
                bool asym, int64_t N, bool transposed, int64_t J, const float* bias, float* c) {
  at::parallel_for(0, (J + kTileJ - 1) / kTileJ, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> tile(kTileR * kTileJ);
    std::vector<float> acc(M * kTileJ);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kTileJ, jlen = std::min(kTileJ, J - j0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t r0 = 0; r0 < R; r0 += kTileR) {
        const int64_t rlen = std::min(kTileR, R - r0);
        fill_tile(tile.data(), packed, W16, scale, asym, N, transposed, r0, rlen, j0, jlen);
        int64_t m = 0;
        for (; m + kRowsM <= M; m += kRowsM) fma_block<kRowsM>(a, R, m, r0, rlen, tile.data(), acc.data() + m * kTileJ);
        for (; m < M; ++m) fma_block<1>(a, R, m, r0, rlen, tile.data(), acc.data() + m * kTileJ);
      }
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < jlen; ++j) {
          const float v = acc[m * kTileJ + j];
          c[m * J + j0 + j] = bias != nullptr ? v + bias[j0 + j] : v;
        }
    }
  });
}

// y [M, N] = x [M, K] (float32) @ W^T + bias.
at::Tensor ternary_linear_dense(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "ternary_linear: x must be a contiguous float32 2-D CPU tensor [M, K], got ", x.scalar_type(), " ",
              x.sizes());
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  check_weights(packed, scale, K, "ternary_linear");
  check_bias(bias, N);
  at::Tensor y = at::empty({M, N}, x.options());
  dense_gemm(x.data_ptr<float>(), M, K, packed.data_ptr<int32_t>(), packed.size(1), scale.data_ptr<float>(),
             scale.dim() == 2, N, /*transposed=*/true, N, bias.has_value() ? bias->data_ptr<float>() : nullptr,
             y.data_ptr<float>());
  return y;
}

// grad_x [M, K] = grad_y [M, N] (float32) @ W.
at::Tensor ternary_linear_grad_input(const at::Tensor& grad_y, const at::Tensor& packed, const at::Tensor& scale,
                                     int64_t K) {
  TORCH_CHECK(grad_y.device().is_cpu() && grad_y.dim() == 2 && grad_y.is_contiguous() &&
                  grad_y.scalar_type() == at::kFloat,
              "ternary_linear_grad_input: grad_y must be a contiguous float32 2-D CPU tensor [M, N], got ",
              grad_y.scalar_type(), " ", grad_y.sizes());
  check_weights(packed, scale, K, "ternary_linear_grad_input");
  const int64_t M = grad_y.size(0), N = packed.size(0);
  TORCH_CHECK(grad_y.size(1) == N, "ternary_linear_grad_input: grad_y has ", grad_y.size(1), " columns, the weight has ",
              N, " rows");
  at::Tensor gx = at::empty({M, K}, grad_y.options());
  dense_gemm(grad_y.data_ptr<float>(), M, N, packed.data_ptr<int32_t>(), packed.size(1), scale.data_ptr<float>(),
             scale.dim() == 2, N, /*transposed=*/false, K, nullptr, gx.data_ptr<float>());
  return gx;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tna_cpp, m) {
  m.def("ternary_linear_spikes(Tensor x, Tensor packed, Tensor scale, Tensor? bias, bool simd) -> Tensor");
  m.def("ternary_linear_dense(Tensor x, Tensor packed, Tensor scale, Tensor? bias) -> Tensor");
  m.def("ternary_linear_grad_input(Tensor grad_y, Tensor packed, Tensor scale, int k) -> Tensor");
}

TORCH_LIBRARY_IMPL(tna_cpp, CPU, m) {
  m.impl("ternary_linear_spikes", &ternary_linear_spikes);
  m.impl("ternary_linear_dense", &ternary_linear_dense);
  m.impl("ternary_linear_grad_input", &ternary_linear_grad_input);
}
