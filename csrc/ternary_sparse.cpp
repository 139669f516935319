// Pruned ternary linear and conv2d layers on spike input: a sparse CPU layout of the packed weight and its two exact
// kernels. A conv (one group) goes through them as the linear layer of its receptive-field bit rows (ternary_common.h:
// one row per output pixel, inputs in (tap, channel) order), its layout listing the codes in that order.
//
// A pruned weight (most codes 0) is kept as lists of its non-zero codes, in both directions (the sparse layout):
// - by output: for output n, the inputs whose code is +1, then those whose code is -1 (each list ascending);
// - by input: for input k, the outputs whose code is +1, then those whose code is -1.
// Indices are uint16, so K and N are at most 65536. The layout also holds the dense one of ternary.cpp (bit-planes and
// int8 code columns, or a conv's) for few rows. Three exact kernels read it, chosen per call (see choose_kernel and
// choose_conv_kernel):
// - bit-sliced: the spikes of a block of 256 rows become one 256-bit word per input (bit r set where row r spiked).
//   For each output, the words of the inputs on its +1 list are added lane by lane with carry-save adders
//   (Harley-Seal: ones, twos, fours, eights and sixteens, then a ripple counter of thirty-twos) into bit-sliced
//   counters of 256 lanes, and likewise its -1 list; the counters become one integer per row at the end. A non-zero
//   weight costs a few vector operations per block of rows, whatever the spike rate.
// - scatter: each spike of a row adds 1 to the sums of its input's +1 outputs and subtracts 1 from those of its -1
//   outputs: the cost is (spikes x non-zero codes per input), the kernel for few rows and very sparse weights.
// - the dense layout's kernels (ternary_linear_spikes, ternary_conv2d_spikes), whose event-driven one adds a whole
//   int8 column per spike: for few rows it beats the scatter kernel unless the weight is very sparse.
// Both count exactly in integers and finish in float32 as the dense and event kernels of ternary.cpp do.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "ternary_common.h"

namespace {

using namespace tna_cpu;

constexpr int32_t kSparseMagic = 0x54535031;      // "TSP1": the first word of a linear sparse layout
constexpr int32_t kSparseConvMagic = 0x54535043;  // "TSPC": that of a conv one
constexpr int64_t kHeaderWords = 8;           // magic, K, N, non-zero codes, dense part's offset, then zeros
constexpr int64_t kMaxIndex = 65536;          // uint16 indices: K and N at most this
constexpr int64_t kMaxPlanes = 17;            // bits of a count of at most kMaxIndex codes

// The code of input k in packed row `row` (the format's bit pairs: 2 -> +1, 0 -> -1, 1 -> 0).
inline int code_at(const int32_t* row, int64_t k) {
  const uint32_t pair = (static_cast<uint32_t>(row[k / kCodesPerWord]) >> (2 * (k % kCodesPerWord))) & 3u;
  return pair == 2u ? 1 : (pair == 0u ? -1 : 0);
}

// The parts of a sparse layout (int32 [P]): the header [kHeaderWords], the starts [N + 1] and the +1 / -1 splits
// [N] of the lists by output, then those [K + 1] and [K] of the lists by input, then the input indices of the lists
// by output (uint16 [nnz], padded to whole int32 words), then the output indices of the lists by input, then (from
// header word 4, see sparse_layout_words) the dense layout (ternary_linear_layout: int64 words, two int32 words each).
struct SparseView {
  int64_t K, N, nnz;
  const int32_t *out_start, *out_split, *in_start, *in_split;
  const uint16_t *out_index, *in_index;
};

// The int32 words before the dense part: whole 64-byte lines, so that the dense part keeps the alignment of the
// tensor's start (its code columns are read a vector at a time).
inline int64_t sparse_layout_words(int64_t K, int64_t N, int64_t nnz) {
  return (kHeaderWords + 2 * N + 1 + 2 * K + 1 + 2 * ((nnz + 1) / 2) + 15) / 16 * 16;
}

SparseView view_layout(const int32_t* words) {
  SparseView v{words[1], words[2], words[3]};
  const int32_t* p = words + kHeaderWords;
  v.out_start = p, v.out_split = p + v.N + 1, p += 2 * v.N + 1;
  v.in_start = p, v.in_split = p + v.K + 1, p += 2 * v.K + 1;
  v.out_index = reinterpret_cast<const uint16_t*>(p);
  v.in_index = v.out_index + 2 * ((v.nnz + 1) / 2);
  return v;
}

// The counts of +1 and -1 codes of packed rows [N, W16] of K codes, per output (by_output) or per input (input k of
// the layout: packed code order.packed_code(k); see CodeOrder).
void count_codes(const int32_t* packed, int64_t N, int64_t K, bool by_output, const CodeOrder& order,
                 std::vector<int64_t>& plus, std::vector<int64_t>& minus) {
  const int64_t W16 = (K + kCodesPerWord - 1) / kCodesPerWord;
  plus.assign(by_output ? N : K, 0);
  minus.assign(by_output ? N : K, 0);
  if (by_output) {
    at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const int c = code_at(packed + n * W16, k);
          plus[n] += c == 1, minus[n] += c == -1;
        }
    });
    return;
  }
  at::parallel_for(0, K, 256, [&](int64_t k0, int64_t k1) {  // a task owns its inputs
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = k0; k < k1; ++k) {
        const int c = code_at(packed + n * W16, order.packed_code(k));
        plus[k] += c == 1, minus[k] += c == -1;
      }
  });
}

// starts [L + 1] and splits [L] of L lists of plus[l] then minus[l] entries; returns the total.
int64_t list_bounds(const std::vector<int64_t>& plus, const std::vector<int64_t>& minus, int32_t* start,
                    int32_t* split) {
  int64_t total = 0;
  for (size_t l = 0; l < plus.size(); ++l) {
    start[l] = static_cast<int32_t>(total);
    split[l] = static_cast<int32_t>(total + plus[l]);
    total += plus[l] + minus[l];
  }
  start[plus.size()] = static_cast<int32_t>(total);
  return total;
}

// Fill the index lists of both directions (bounds already set), inputs in the layout's order (see count_codes).
void fill_lists(const int32_t* packed, const CodeOrder& order, const SparseView& v) {
  const int64_t K = v.K, N = v.N, W16 = (K + kCodesPerWord - 1) / kCodesPerWord;
  auto* out_index = const_cast<uint16_t*>(v.out_index);
  auto* in_index = const_cast<uint16_t*>(v.in_index);
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      int64_t p = v.out_start[n], m = v.out_split[n];
      for (int64_t k = 0; k < K; ++k) {
        const int c = code_at(packed + n * W16, order.packed_code(k));
        if (c == 1) out_index[p++] = static_cast<uint16_t>(k);
        if (c == -1) out_index[m++] = static_cast<uint16_t>(k);
      }
    }
  });
  at::parallel_for(0, K, 256, [&](int64_t k0, int64_t k1) {  // a task owns its inputs
    std::vector<int64_t> p(v.in_start + k0, v.in_start + k1), m(v.in_split + k0, v.in_split + k1);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = k0; k < k1; ++k) {
        const int c = code_at(packed + n * W16, order.packed_code(k));
        if (c == 1) in_index[p[k - k0]++] = static_cast<uint16_t>(n);
        if (c == -1) in_index[m[k - k0]++] = static_cast<uint16_t>(n);
      }
  });
}

void check_packed(const at::Tensor& packed, int64_t K, const char* op) {
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kInt && packed.dim() == 2 &&
                  packed.is_contiguous() && K >= 0 && packed.size(1) == (K + kCodesPerWord - 1) / kCodesPerWord,
              op, ": packed must be a contiguous int32 CPU tensor [N, ceil(K/16)] with K = ", K, ", got ",
              packed.scalar_type(), " ", packed.sizes());
}

// The share of non-zero codes of a packed linear weight [N, ceil(K/16)] (0 for an empty one).
double ternary_code_density(const at::Tensor& packed, int64_t K) {
  check_packed(packed, K, "ternary_code_density");
  std::vector<int64_t> plus, minus;
  count_codes(packed.data_ptr<int32_t>(), packed.size(0), K, true, CodeOrder{}, plus, minus);
  int64_t nnz = 0;
  for (size_t n = 0; n < plus.size(); ++n) nnz += plus[n] + minus[n];
  const double codes = static_cast<double>(packed.size(0)) * static_cast<double>(K);
  return codes > 0 ? static_cast<double>(nnz) / codes : 0.0;
}

// A sparse layout (int32 [P], see SparseView; header word 0 `magic`) of packed rows [N, ceil(K/16)] for K, N <= 65536,
// its inputs in `order`, followed by `dense` (the dense layout of the same weight; `op` names the caller in errors).
at::Tensor sparse_layout(const at::Tensor& packed, int64_t K, const CodeOrder& order, const at::Tensor& dense,
                         int32_t magic, const char* op) {
  const int64_t N = packed.size(0);
  TORCH_CHECK(K <= kMaxIndex && N <= kMaxIndex, op, ": the inputs and outputs must be at most ", kMaxIndex,
              " each, got ", K, " and ", N);
  const int32_t* codes = packed.data_ptr<int32_t>();
  std::vector<int64_t> out_plus, out_minus, in_plus, in_minus;
  count_codes(codes, N, K, true, order, out_plus, out_minus);
  count_codes(codes, N, K, false, order, in_plus, in_minus);
  int64_t nnz = 0;
  for (int64_t n = 0; n < N; ++n) nnz += out_plus[n] + out_minus[n];
  TORCH_CHECK(nnz <= INT32_MAX, op, ": ", nnz, " non-zero codes do not fit int32 offsets");
  const int64_t sparse_words = sparse_layout_words(K, N, nnz);
  at::Tensor layout = at::zeros({sparse_words + 2 * dense.numel()}, packed.options());
  layout.narrow(0, sparse_words, 2 * dense.numel()).view(at::kLong).copy_(dense);
  int32_t* words = layout.data_ptr<int32_t>();
  words[0] = magic, words[1] = static_cast<int32_t>(K), words[2] = static_cast<int32_t>(N);
  words[3] = static_cast<int32_t>(nnz), words[4] = static_cast<int32_t>(sparse_words);
  const SparseView v = view_layout(words);
  list_bounds(out_plus, out_minus, const_cast<int32_t*>(v.out_start), const_cast<int32_t*>(v.out_split));
  list_bounds(in_plus, in_minus, const_cast<int32_t*>(v.in_start), const_cast<int32_t*>(v.in_split));
  fill_lists(codes, order, v);
  return layout;
}

// The sparse layout of a packed linear weight [N, ceil(K/16)] (K, N <= 65536): a cache for a weight that does not
// change, read by ternary_linear_sparse_spikes; its dense part is ternary_linear_layout's.
at::Tensor ternary_linear_sparse_layout(const at::Tensor& packed, int64_t K) {
  check_packed(packed, K, "ternary_linear_sparse_layout");
  const at::Tensor dense = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("tna_cpp::ternary_linear_layout", "")
                               .typed<at::Tensor(const at::Tensor&, int64_t)>()
                               .call(packed, K);
  return sparse_layout(packed, K, CodeOrder{}, dense, kSparseMagic, "ternary_linear_sparse_layout");
}

// The sparse layout of a packed conv weight [O, ceil(in_channels * kh * kw / 16)] of one group (in_channels * kh * kw
// and O at most 65536), its inputs in the (tap, channel) order of the receptive-field bit rows: a cache for a weight
// that does not change, read by ternary_conv2d_sparse_spikes; its dense part is ternary_conv2d_layout's.
at::Tensor ternary_conv2d_sparse_layout(const at::Tensor& packed, int64_t in_channels, at::IntArrayRef kernel_size) {
  TORCH_CHECK(kernel_size.size() == 2 && std::min(kernel_size[0], kernel_size[1]) >= 1 && in_channels >= 1,
              "ternary_conv2d_sparse_layout: kernel_size must be a pair of positive ints and in_channels positive");
  const int64_t T = kernel_size[0] * kernel_size[1];
  check_packed(packed, in_channels * T, "ternary_conv2d_sparse_layout");
  const at::Tensor dense = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("tna_cpp::ternary_conv2d_layout", "")
                               .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, at::IntArrayRef)>()
                               .call(packed, in_channels, 1, kernel_size);
  return sparse_layout(packed, in_channels * T, CodeOrder{T, in_channels}, dense, kSparseConvMagic,
                       "ternary_conv2d_sparse_layout");
}

// The view of a sparse layout, checked to be one made (header word 0 `magic`) for K inputs and N outputs (its dense
// part is checked by the dense kernels where used); `what` is the error's text.
SparseView checked_layout(const at::Tensor& layout, int64_t K, int64_t N, int32_t magic, const char* what) {
  TORCH_CHECK(layout.device().is_cpu() && layout.scalar_type() == at::kInt && layout.dim() == 1 &&
                  layout.is_contiguous() && layout.size(0) >= kHeaderWords,
              what, ", got ", layout.scalar_type(), " ", layout.sizes());
  const int32_t* words = layout.data_ptr<int32_t>();
  TORCH_CHECK(words[0] == magic && words[1] == K && words[2] == N && words[3] >= 0 &&
                  words[4] == sparse_layout_words(K, N, words[3]) && layout.size(0) > words[4],
              what, " (K = ", K, ", N = ", N, ")");
  return view_layout(words);
}

// ---------------------------------------------------------------------------------------------
// Bit-sliced kernel
// ---------------------------------------------------------------------------------------------
typedef uint64_t u64x4 __attribute__((vector_size(32)));

constexpr int64_t kBlockRows = 256;  // rows per block: the lanes of a u64x4
constexpr int64_t kTaskOutputs = 16;  // outputs per task: a row of their results fills a cache line

// high:low = a + b + c, lane by lane (a carry-save adder; with AVX-512 one ternary-logic instruction each). It is
// self-dual: the adder of the inverted words gives the inverted results.
inline void csa(u64x4& high, u64x4& low, u64x4 a, u64x4 b, u64x4 c) {
#if defined(__AVX512VL__)
  const auto x = (__m256i)a, y = (__m256i)b, z = (__m256i)c;  // GCC vector casts: the same 256 bits
  high = (u64x4)_mm256_ternarylogic_epi64(x, y, z, 0xE8);      // majority
  low = (u64x4)_mm256_ternarylogic_epi64(x, y, z, 0x96);       // parity
#else
  const u64x4 u = a ^ b;
  high = (a & b) | (u & c);
  low = u ^ c;
#endif
}

// planes[from .. to) += x, as a binary number per lane.
inline void ripple(u64x4* planes, int from, int to, u64x4 x) {
  for (int l = from; l < to; ++l) {
    const u64x4 carry = planes[l] & x;
    planes[l] ^= x;
    x = carry;
  }
}

// ones, twos, fours += the words cols[at[0 .. 8)], carry-save; returns the carry into the eights.
__attribute__((always_inline)) inline u64x4 add_eight(u64x4& ones, u64x4& twos, u64x4& fours, const u64x4* cols,
                                                      const uint16_t* at) {
  u64x4 twos_a, twos_b, fours_a, fours_b, eights;
  csa(twos_a, ones, ones, cols[at[0]], cols[at[1]]);
  csa(twos_b, ones, ones, cols[at[2]], cols[at[3]]);
  csa(fours_a, twos, twos, twos_a, twos_b);
  csa(twos_a, ones, ones, cols[at[4]], cols[at[5]]);
  csa(twos_b, ones, ones, cols[at[6]], cols[at[7]]);
  csa(fours_b, twos, twos, twos_a, twos_b);
  csa(eights, fours, fours, fours_a, fours_b);
  return eights;
}

// planes[0 .. P) = the lane-wise count of the words cols[first[0 .. n1)] and of the inverted words
// ~cols[second[0 .. n2)] (second: null or n2 = 0 for none), as binary numbers (plane l: bit l); returns P, the
// planes up to the highest one not zero in every lane (planes[0 .. max(bits of n1 + n2, 4)) are written). With the
// inverted words, a lane counts the +1 codes met by its spikes plus the -1 codes not met: n2 more than their
// difference.
inline int count_lanes(const u64x4* cols, const uint16_t* first, int64_t n1, const uint16_t* second, int64_t n2,
                       u64x4* planes) {
  const int64_t n = n1 + n2;
  const int P = n == 0 ? 0 : 64 - __builtin_clzll(static_cast<uint64_t>(n));
  const u64x4 zero = {0, 0, 0, 0};
  for (int l = 0; l < std::max(P, 4); ++l) planes[l] = zero;
  u64x4 ones = zero, twos = zero, fours = zero, eights = zero, sixteens = zero;
  for (const auto& [index, count, flip] : {std::tuple(first, n1, zero), std::tuple(second, n2, ~zero)}) {
    // Thirty-two words at a time, the last ones padded with words that add 0; the inverted ones by the same adders
    // on inverted digits (csa is self-dual), their carries inverted back.
    ones ^= flip, twos ^= flip, fours ^= flip, eights ^= flip, sixteens ^= flip;
    const auto add_sixteen = [&](const u64x4* words, const uint16_t* at) __attribute__((always_inline)) {
      const u64x4 eights_a = add_eight(ones, twos, fours, words, at);
      const u64x4 eights_b = add_eight(ones, twos, fours, words, at + 8);
      u64x4 carry;
      csa(carry, eights, eights, eights_a, eights_b);
      return carry;  // into the sixteens
    };
    const auto add_carries = [&](u64x4 a, u64x4 b) __attribute__((always_inline)) {
      u64x4 thirty_twos;
      csa(thirty_twos, sixteens, sixteens, a, b);
      ripple(planes, 5, P, thirty_twos ^ flip);
    };
    int64_t i = 0;
    for (; i + 32 <= count; i += 32) add_carries(add_sixteen(cols, index + i), add_sixteen(cols, index + i + 16));
    if (i < count) {
      static constexpr uint16_t kInOrder[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
      u64x4 a = flip;  // a carry of 0
      if (i + 16 <= count) a = add_sixteen(cols, index + i), i += 16;
      u64x4 last[16];
      for (int j = 0; j < 16; ++j) last[j] = i + j < count ? cols[index[i + j]] : flip;  // flip: adds 0 here
      add_carries(a, add_sixteen(last, kInOrder));
    }
    ones ^= flip, twos ^= flip, fours ^= flip, eights ^= flip, sixteens ^= flip;
  }
  planes[0] = ones, planes[1] = twos, planes[2] = fours, planes[3] = eights;
  if (P > 4) planes[4] = sixteens;
  int top = P;  // fewer planes where no lane reaches the bound n
  while (top > 0 && (planes[top - 1][0] | planes[top - 1][1] | planes[top - 1][2] | planes[top - 1][3]) == 0) --top;
  return top;
}

#if defined(__AVX512BW__)
// counts [kBlockRows] = the lanes of the binary numbers planes[0 .. P) (plane l: bit l; P <= 24): in each 64-bit
// lane, plane l adds 2^(l mod 8) to byte r of byte vector l / 8 where it has bit r (a masked byte add), and the byte
// vectors are widened to int32 and merged.
inline void lane_counts(const u64x4* planes, int P, int32_t* counts) {
  for (int j = 0; j < 4; ++j) {
    __m512i bytes[3];
    for (int g = 0; g < 3; ++g) {  // one register per byte vector (an index by l would keep them in memory)
      __m512i sum = _mm512_setzero_si512();
      for (int l = 8 * g; l < std::min(P, 8 * g + 8); ++l)
        sum = _mm512_mask_add_epi8(sum, _cvtu64_mask64(planes[l][j]), sum,
                                   _mm512_set1_epi8(static_cast<char>(1 << (l % 8))));
      bytes[g] = sum;
    }
    for (int q = 0; q < 4; ++q) {
      __m512i wide = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes[0], q));
      for (int g = 1; 8 * g < P; ++g)
        wide = _mm512_or_si512(wide, _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes[g], q)),
                                                       8 * g));
      _mm512_storeu_si512(counts + 64 * j + 16 * q, wide);
    }
  }
}
#else
// Swap the bits of a and b selected by mask << shift in a with those selected by mask in b.
inline void swap_bits(u64x4& a, u64x4& b, int shift, uint64_t mask) {
  const u64x4 d = ((a >> shift) ^ b) & mask;
  a ^= d << shift;
  b ^= d;
}

// at[i] |= byte i of word << shift for i < 8 (at[i] = ... where shift is 0).
inline void widen_bytes(uint64_t word, int shift, int32_t* at) {
#if defined(__AVX2__)
  __m256i wide = _mm256_sll_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(word))),
                                  _mm_cvtsi32_si128(shift));
  if (shift != 0) wide = _mm256_or_si256(wide, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), wide);
#else
  for (int i = 0; i < 8; ++i) {
    const auto byte = static_cast<int32_t>((word >> (8 * i)) & 255u) << shift;
    at[i] = shift == 0 ? byte : at[i] | byte;
  }
#endif
}

// counts [kBlockRows] = the lanes of the binary numbers planes[0 .. P) (plane l: bit l; P <= 24), eight planes at a
// time: in each 64-bit lane, an 8 x 8 byte transpose makes word b hold byte b of the eight planes (rows 8b .. 8b + 7
// of the lane), and an 8 x 8 bit transpose of that word gives the rows' counts as bytes.
inline void lane_counts(const u64x4* planes, int P, int32_t* counts) {
  const u64x4 zero = {0, 0, 0, 0};
  for (int l0 = 0; l0 < std::max(P, 1); l0 += 8) {
    u64x4 x[8];
    for (int t = 0; t < 8; ++t) x[t] = l0 + t < P ? planes[l0 + t] : zero;
    for (int t = 0; t < 4; ++t) swap_bits(x[t], x[t + 4], 32, 0x00000000FFFFFFFFull);
    for (int t : {0, 1, 4, 5}) swap_bits(x[t], x[t + 2], 16, 0x0000FFFF0000FFFFull);
    for (int t : {0, 2, 4, 6}) swap_bits(x[t], x[t + 1], 8, 0x00FF00FF00FF00FFull);
    for (int b = 0; b < 8; ++b) {
      u64x4 v = x[b];
      u64x4 d = (v ^ (v >> 7)) & 0x00AA00AA00AA00AAull;
      v ^= d ^ (d << 7);
      d = (v ^ (v >> 14)) & 0x0000CCCC0000CCCCull;
      v ^= d ^ (d << 14);
      d = (v ^ (v >> 28)) & 0x00000000F0F0F0F0ull;
      v ^= d ^ (d << 28);
      for (int j = 0; j < 4; ++j) widen_bytes(v[j], l0, counts + 64 * j + 8 * b);
    }
  }
}
#endif

// Transposes four 64 x 64 bit matrices at once, one per lane: bit c of a[r] moves to bit r of a[c]. Blocks of j x j
// bits trade places across the diagonal for j = 32, 16, .., 1: in rows r and r + j (bit j of r clear), the columns
// of the high half of every 2j columns in row r swap with those of the low half in row r + j.
inline void transpose64(u64x4 (&a)[64]) {
  uint64_t low = 0x00000000FFFFFFFFull;  // the low half of every 2j columns
  for (int j = 32; j != 0; j >>= 1, low ^= low << j) {
    for (int r = 0; r < 64; r = ((r | j) + 1) & ~j) {
      const u64x4 t = ((a[r] >> j) ^ a[r | j]) & low;
      a[r | j] ^= t;
      a[r] ^= t << j;
    }
  }
}

// cols [blocks, K]: word k of block b has bit r set where row b * kBlockRows + r of bit rows xbits [M, W64p] has bit k.
// Word w of a block's rows is a 256 x 64 bit matrix: four 64 x 64 ones side by side in the lanes, transposed at once.
std::vector<u64x4> spike_columns(const uint64_t* xbits, int64_t M, int64_t W64p, int64_t K) {
  const int64_t blocks = (M + kBlockRows - 1) / kBlockRows, W64 = (K + 63) / 64;
  std::vector<u64x4> cols(blocks * K);
  at::parallel_for(0, blocks * W64, 1, [&](int64_t q0, int64_t q1) {
    u64x4 a[64];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / W64, w = q % W64, m0 = b * kBlockRows, rows = std::min(kBlockRows, M - m0);
      for (int i = 0; i < 64; ++i)  // a[i] lane j: row 64 j + i of the block
        for (int j = 0; j < 4; ++j) a[i][j] = 64 * j + i < rows ? xbits[(m0 + 64 * j + i) * W64p + w] : 0;
      transpose64(a);
      std::copy(a, a + std::min<int64_t>(64, K - 64 * w), cols.data() + b * K + 64 * w);
    }
  });
  return cols;
}

// Results of at least this many bytes are stored past the caches where the kernel can (store_counts<float> of
// AVX2 and later builds): they do not stay there anyway, and a streaming store does not read the line first.
constexpr int64_t kStreamBytes = int64_t{2} << 20;
#if defined(__AVX2__)
constexpr bool kStreamingStores = true;
#else
constexpr bool kStreamingStores = false;
#endif

// Where the sparse kernels' rows go: in segments of S rows (a conv's images; one segment for a linear layer), row m
// as row m % S of `out` moved on by (m / S) * ldsegment.
template <typename Out>
struct RowOutput {
  SpikeOutput<Out> out;
  int64_t S, ldsegment;

  // Output 0 of row m.
  Out* row(int64_t m) const {
    if (ldsegment == 0) return out.y + m * out.ldm;  // one segment: no division
    return out.y + m / S * ldsegment + m % S * out.ldm;
  }

  void store(int64_t m, int64_t n, int64_t acc_p, int64_t acc_n) const {
    row(m)[n * out.ldn] = out.value(n, acc_p, acc_n);
  }
};

// The counts of a task's outputs n0 .. n1 - 1 in a block of rows: of the +1 codes met by spikes, row r of output n at
// plus[(n - n0) * kBlockRows + r], and likewise of the -1 codes (minus), or, where minus is null, minus_each[n - n0]
// in every row.
struct TaskCounts {
  const int32_t* plus;
  const int32_t* minus;
  const int32_t* minus_each;
  int64_t n0;

  int32_t plus_at(int64_t n, int64_t r) const { return plus[(n - n0) * kBlockRows + r]; }
  int32_t minus_at(int64_t n, int64_t r) const {
    return minus != nullptr ? minus[(n - n0) * kBlockRows + r] : minus_each[n - n0];
  }
};

// Rows m0 .. m0 + rows - 1 and outputs c.n0 .. n1 - 1 of y from their counts c: as to.store, one by one (the last
// argument, streaming stores, is for store_counts<float>).
template <typename Out>
void store_counts(const RowOutput<Out>& to, int64_t m0, int64_t rows, int64_t n1, const TaskCounts& c, bool) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = c.n0; n < n1; ++n) to.store(m0 + r, n, c.plus_at(n, r), c.minus_at(n, r));
}

#if defined(__AVX2__)
// float32 output: blocks of 8 outputs x 8 rows finished in vectors along the rows (the same float32 operations as
// SpikeOutput::value). Rows next to each other in y (ldm = 1, a conv's pixels; segments of whole vectors) are stored
// as they are; else (ldm > 1) the blocks are transposed in registers to rows of up to 16 outputs (a cache line) and
// stored a whole row segment at a time, with streaming stores where `stream` (rows 32-byte aligned, n0 a multiple of
// 8, ldn = 1; the caller fences). The rest as store_counts. m0 is a multiple of 8.
template <>
void store_counts<float>(const RowOutput<float>& to, int64_t m0, int64_t rows, int64_t n1, const TaskCounts& c,
                         bool stream) {
  const SpikeOutput<float>& out = to.out;
  const int64_t n0 = c.n0;
  const bool along_rows = out.ldm == 1;
  const int64_t full_rows = along_rows && to.S % 8 != 0 ? 0 : rows / 8 * 8, full_outputs = (n1 - n0) / 8 * 8;
  // the float32 results of output n, rows m0 + r .. m0 + r + 7
  const auto results = [&](int64_t n, int64_t r) {
    const int64_t at = (n - n0) * kBlockRows + r;
    const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c.plus + at));
    const __m256i q = c.minus != nullptr ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c.minus + at))
                                         : _mm256_set1_epi32(c.minus_each[n - n0]);
    __m256 v;
    if (out.asymmetric) {
      v = _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(out.scale[n])),
                        _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(out.scale[out.ldscale + n])));
    } else {
      v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(p, q)), _mm256_set1_ps(out.scale[n]));
    }
    if (out.bias != nullptr) v = _mm256_add_ps(v, _mm256_set1_ps(out.bias[n]));
    return v;
  };
  if (along_rows) {
    for (int64_t r = 0; r < full_rows; r += 8) {
      float* const first = to.row(m0 + r);  // rows m0 + r .. m0 + r + 7 follow it
      for (int64_t n = n0; n < n0 + full_outputs; ++n) _mm256_storeu_ps(first + n * out.ldn, results(n, r));
    }
  } else {
    for (int64_t r = 0; r < full_rows; r += 8) {
      for (int64_t g = 0; g < full_outputs; g += 16) {  // up to 16 outputs: a cache line of each row, in registers
        const bool two = g + 16 <= full_outputs;
        __m256 low[8], high[8];  // low[i]: row m0 + r + i, outputs n0 + g .. + 7 (after the transposes)
        for (int t = 0; t < 8; ++t) low[t] = results(n0 + g + t, r);
        transpose8x8(low);
        if (two) {
          for (int t = 0; t < 8; ++t) high[t] = results(n0 + g + 8 + t, r);
          transpose8x8(high);
        }
        for (int i = 0; i < 8; ++i) {
          float* row = to.row(m0 + r + i) + n0 + g;
          if (stream) {
            _mm256_stream_ps(row, low[i]);
            if (two) _mm256_stream_ps(row + 8, high[i]);
          } else {
            _mm256_storeu_ps(row, low[i]);
            if (two) _mm256_storeu_ps(row + 8, high[i]);
          }
        }
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = n0 + (r < full_rows ? full_outputs : 0); n < n1; ++n)
      to.store(m0 + r, n, c.plus_at(n, r), c.minus_at(n, r));
}
#endif

// y rows of spike bit rows xbits [M, W64p] by the bit-sliced kernel, row m to `to`: tasks of one block of rows and
// kTaskOutputs outputs, a task's neighbours sharing its block.
template <typename Out>
void sliced_kernel(const uint64_t* xbits, int64_t M, int64_t W64p, const SparseView& v, const RowOutput<Out>& to) {
  const int64_t K = v.K, N = v.N, blocks = (M + kBlockRows - 1) / kBlockRows;
  const int64_t tasks = (N + kTaskOutputs - 1) / kTaskOutputs;
  const std::vector<u64x4> cols = spike_columns(xbits, M, W64p, K);
  const SpikeOutput<Out>& out = to.out;
  const bool stream = kStreamingStores && std::is_same_v<Out, float> &&
                      M * N * static_cast<int64_t>(sizeof(Out)) >= kStreamBytes && to.ldsegment % 8 == 0 &&
                      reinterpret_cast<uintptr_t>(out.y) % 32 == 0 && out.ldm % 8 == 0 && out.ldn == 1;
  at::parallel_for(0, blocks * tasks, 1, [&](int64_t q0, int64_t q1) {
    std::vector<int32_t> plus(kTaskOutputs * kBlockRows), minus(out.asymmetric ? kTaskOutputs * kBlockRows : 0);
    int32_t minus_each[kTaskOutputs];
    u64x4 planes[kMaxPlanes + 4];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / tasks, n0 = q % tasks * kTaskOutputs, n1 = std::min(N, n0 + kTaskOutputs);
      const u64x4* block = cols.data() + b * K;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t start = v.out_start[n], split = v.out_split[n], end = v.out_start[n + 1];
        int32_t* up = plus.data() + (n - n0) * kBlockRows;
        if (out.asymmetric) {
          lane_counts(planes, count_lanes(block, v.out_index + start, split - start, nullptr, 0, planes), up);
          lane_counts(planes, count_lanes(block, v.out_index + split, end - split, nullptr, 0, planes),
                      minus.data() + (n - n0) * kBlockRows);
        } else {  // one counter: +1 codes met plus -1 codes not met, less the number of -1 codes
          lane_counts(planes, count_lanes(block, v.out_index + start, split - start, v.out_index + split, end - split,
                                          planes), up);
          minus_each[n - n0] = static_cast<int32_t>(end - split);
        }
      }
      const TaskCounts counts{plus.data(), out.asymmetric ? minus.data() : nullptr, minus_each, n0};
      store_counts(to, b * kBlockRows, std::min(kBlockRows, M - b * kBlockRows), n1, counts, stream);
    }
#if defined(__AVX2__)
    if (stream) _mm_sfence();
#endif
  });
}

// ---------------------------------------------------------------------------------------------
// Scatter kernel
// ---------------------------------------------------------------------------------------------

// y rows of spike bit rows xbits [M, W64p] by the scatter kernel, row m to `to`: per row, integer sums of N outputs
// (ASYMMETRIC: the +1 and -1 counts apart).
template <bool ASYMMETRIC, typename Out>
void scatter_kernel(const uint64_t* xbits, int64_t M, int64_t W64p, const SparseView& v, const RowOutput<Out>& to) {
  const int64_t N = v.N;
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    std::vector<int32_t> plus(N), minus(ASYMMETRIC ? N : 0);
    for (int64_t m = m0; m < m1; ++m) {
      std::fill(plus.begin(), plus.end(), 0);
      std::fill(minus.begin(), minus.end(), 0);
      for (int64_t w = 0; w < W64p; ++w)
        for (uint64_t bits = xbits[m * W64p + w]; bits != 0; bits &= bits - 1) {
          const int64_t k = 64 * w + __builtin_ctzll(bits);
          const int64_t start = v.in_start[k], split = v.in_split[k], end = v.in_start[k + 1];
          for (int64_t i = start; i < split; ++i) ++plus[v.in_index[i]];
          int32_t* down = ASYMMETRIC ? minus.data() : plus.data();
          for (int64_t i = split; i < end; ++i) down[v.in_index[i]] += ASYMMETRIC ? 1 : -1;
        }
      for (int64_t n = 0; n < N; ++n) to.store(m, n, plus[n], ASYMMETRIC ? minus[n] : 0);
    }
  });
}

// The share of non-zero codes up to which linear_cpu_layout chooses the sparse layout: there its index lists take at
// most as much memory as the dense layout they come with, and the bit-sliced kernel outruns the dense layout's
// kernels on blocks of many rows.
constexpr double kSparseDensity = 0.25;

enum class SparseKernel { automatic, sliced, scatter, dense };

// Time estimates (relative, from the cost of each kernel's inner step): the bit-sliced kernel per non-zero code and
// block of rows and per result; the scatter kernel per scattered addition and per result (clearing and finishing
// its rows of sums); the event-driven kernel of the dense layout per int8 lane added.
constexpr double kSlicedPerCode = 0.9;
constexpr double kSlicedPerResult = 2.0;
constexpr double kScatterPerAdd = 0.5;
constexpr double kScatterPerResult = 1.0;
constexpr double kEventsPerLane = 0.08;

// The kernel that runs: by choice, or ("auto") the one whose estimated time is the least.
inline SparseKernel choose_kernel(SparseKernel kernel, int64_t spikes, int64_t M, const SparseView& v) {
  if (kernel != SparseKernel::automatic) return kernel;
  const double per_input = v.K > 0 ? static_cast<double>(v.nnz) / static_cast<double>(v.K) : 0.0;
  const double blocks = static_cast<double>((M + kBlockRows - 1) / kBlockRows), N = static_cast<double>(v.N);
  const double scatter = kScatterPerAdd * static_cast<double>(spikes) * per_input + kScatterPerResult * M * N;
  const double sliced = kSlicedPerCode * blocks * static_cast<double>(v.nnz) + kSlicedPerResult * M * N;
  const double events = kEventsPerLane * static_cast<double>(spikes) * N;
  if (sliced <= scatter && sliced <= events) return SparseKernel::sliced;
  return scatter <= events ? SparseKernel::scatter : SparseKernel::dense;
}

// The conv's estimates (same units, fitted to timings of pruned 3x3 convs at 75-99% weight sparsity on 10% spikes,
// images of 4x4 to 16x16 pixels): the bit-sliced kernel per non-zero code and block of rows, and per
// result (its columns, made by bit transposes, and its strided stores into y [B, O, Ho, Wo]); the dense layout's
// conv kernels per int8 lane added (event kernel) or per bit-row word and output (popcount kernel), and per result.
// The scatter kernel, whose results land strided in y, is not chosen by itself.
constexpr double kConvSlicedPerCode = 0.35;
constexpr double kConvSlicedPerResult = 1.1;
constexpr double kConvEventsPerLane = 0.01;
constexpr double kConvDensePerWord = 0.09;
constexpr double kConvDensePerResult = 0.3;

// The conv kernel that runs: by choice, or ("auto") the bit-sliced kernel or the dense layout's kernels, whichever
// is estimated faster, for `bits` set bits in M receptive-field rows of Wk words.
inline SparseKernel choose_conv_kernel(SparseKernel kernel, int64_t bits, int64_t M, int64_t Wk, const SparseView& v) {
  if (kernel != SparseKernel::automatic) return kernel;
  const double blocks = static_cast<double>((M + kBlockRows - 1) / kBlockRows), N = static_cast<double>(v.N);
  const double results = static_cast<double>(M) * N, set = static_cast<double>(bits);
  const double sliced = kConvSlicedPerCode * blocks * static_cast<double>(v.nnz) + kConvSlicedPerResult * results;
  const double dense = std::min(kConvEventsPerLane * set * N, kConvDensePerWord * results * static_cast<double>(Wk)) +
                       kConvDensePerResult * results;
  return sliced <= dense ? SparseKernel::sliced : SparseKernel::dense;
}

// The kernel named `kernel` ("auto", "sliced", "scatter" or "dense"; `op` names the caller in errors).
SparseKernel requested_kernel(c10::string_view kernel, const char* op) {
  TORCH_CHECK(kernel == "auto" || kernel == "sliced" || kernel == "scatter" || kernel == "dense", op,
              ": kernel must be 'auto', 'sliced', 'scatter' or 'dense', got '", std::string(kernel), "'");
  return kernel == "auto"      ? SparseKernel::automatic
         : kernel == "sliced"  ? SparseKernel::sliced
         : kernel == "scatter" ? SparseKernel::scatter
                               : SparseKernel::dense;
}

// The dense part of a sparse layout (int64, as the dense layout it was made from).
at::Tensor dense_part(const at::Tensor& layout) {
  const int64_t offset = layout.data_ptr<int32_t>()[4];
  return layout.narrow(0, offset, layout.size(0) - offset).view(at::kLong);
}

// y (a float dtype; row m, output n at y[m / S * ldsegment + m % S * ldm + n * ldn]) from bit rows xbits [M, W64p]
// by the bit-sliced kernel (`choice` sliced) or the scatter kernel.
void sparse_rows(SparseKernel choice, const uint64_t* xbits, int64_t M, int64_t W64p, const SparseView& v,
                 const at::Tensor& scale, const std::optional<at::Tensor>& bias, at::Tensor& y, int64_t ldm,
                 int64_t ldn, int64_t S, int64_t ldsegment) {
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const bool asymmetric = scale.dim() == 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ternary_sparse_spikes_out", [&] {
    const RowOutput<scalar_t> to{{scale.data_ptr<float>(), asymmetric, v.N, bp, y.data_ptr<scalar_t>(), ldm, ldn},
                                 std::max<int64_t>(S, 1), ldsegment};
    if (choice == SparseKernel::sliced) sliced_kernel(xbits, M, W64p, v, to);
    else if (asymmetric) scatter_kernel<true>(xbits, M, W64p, v, to);
    else scatter_kernel<false>(xbits, M, W64p, v, to);
  });
}

// y [M, N] = spike rows x [M, K] times the packed ternary weight [N, ceil(K/16)] (scale [N] or [2, N], bias [N]),
// read from its sparse layout (ternary_linear_sparse_layout(packed, K)); exact, finished in float32 as
// ternary_linear_spikes. Output dtype: x's if floating point, else float32. `kernel`: "auto", "sliced", "scatter"
// or "dense" (the dense layout's own choice; see choose_kernel).
at::Tensor ternary_linear_sparse_spikes(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& layout,
                                        c10::string_view kernel) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(),
              "ternary_linear: x must be a contiguous 2-D CPU tensor [M, K], got ", x.sizes());
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  check_weights(packed, scale, K, "ternary_linear");
  check_bias(bias, N, "ternary_linear");
  const SparseKernel requested = requested_kernel(kernel, "ternary_linear_sparse_spikes");
  const SparseView v = checked_layout(layout, K, N, kSparseMagic,
                                      "ternary_linear_sparse_spikes: layout must be the int32 CPU tensor of "
                                      "ternary_linear_sparse_layout made from this packed weight");
  const int64_t W64p = (K + 63) / 64;
  std::vector<uint64_t> xbits(M * W64p);
  bool ok = true;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBFloat16, at::kHalf, at::kBool, x.scalar_type(), "ternary_linear_sparse_spikes",
                             [&] { ok = to_bit_rows(x.data_ptr<scalar_t>(), M, K, xbits.data(), W64p); });
  TORCH_CHECK(ok, "ternary_linear: spike input must hold only 0 and 1; found other values");
  const SparseKernel choice = choose_kernel(requested, count_bits(xbits), M, v);
  if (choice == SparseKernel::dense) {
    return c10::Dispatcher::singleton()
        .findSchemaOrThrow("tna_cpp::ternary_linear_spikes", "")
        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                          const std::optional<at::Tensor>&, c10::string_view)>()
        .call(x, packed, scale, bias, dense_part(layout), "auto");
  }
  at::Tensor y = at::empty({M, N}, x.options().dtype(x.is_floating_point() ? x.scalar_type() : at::kFloat));
  sparse_rows(choice, xbits.data(), M, W64p, v, scale, bias, y, N, 1, M, 0);
  return y;
}

// The set bits of the receptive-field rows of all output pixels (one group), from the pixel bits [B, H, W, Wc]
// without gathering the rows: each input pixel's spikes times the number of (output pixel, tap) pairs that read it.
int64_t receptive_field_bits(const std::vector<uint64_t>& bits, const ConvShape& s) {
  std::vector<int64_t> readers(s.H * s.W, 0);
  for (int64_t l = 0; l < s.Ho * s.Wo; ++l)
    for_each_tap(s, l, [&](int64_t, int64_t ih, int64_t iw) { ++readers[ih * s.W + iw]; });
  int64_t total = 0;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t p = 0; p < s.H * s.W; ++p) {
      int64_t spikes = 0;
      for (int64_t w = 0; w < s.Wc; ++w) spikes += __builtin_popcountll(bits[(b * s.H * s.W + p) * s.Wc + w]);
      total += spikes * readers[p];
    }
  return total;
}

// y [B, O, Ho, Wo] = conv2d of spikes x [B, C, H, W] with the packed ternary weight [O, C, kh, kw] of one group
// (packed [O, ceil(C * kh * kw / 16)], scale [O] or [2, O], bias [O]), read from its sparse layout
// (ternary_conv2d_sparse_layout(packed, C, kernel_size)): the receptive fields of all output pixels as bit rows
// (ternary_common.h) against the lists of non-zero codes. Exact, finished in float32 as
// ternary_conv2d_spikes. Output dtype: x's if floating point, else float32. `kernel`: as in
// ternary_linear_sparse_spikes ("dense": the kernels of ternary_conv2d_spikes on the layout's dense part; see
// choose_conv_kernel).
at::Tensor ternary_conv2d_sparse_spikes(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& layout,
                                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups, at::IntArrayRef kernel_size, c10::string_view kernel) {
  const SparseKernel requested = requested_kernel(kernel, "ternary_conv2d_sparse_spikes");
  const ConvShape s = conv_shape(x, packed, scale, bias, stride, padding, dilation, groups, kernel_size);
  TORCH_CHECK(s.G == 1, "ternary_conv2d_sparse_spikes: a sparse conv layout is for groups = 1, got groups = ", s.G);
  const SparseView v = checked_layout(layout, s.T * s.Cg, s.O, kSparseConvMagic,
                                      "ternary_conv2d_sparse_spikes: layout must be the int32 CPU tensor of "
                                      "ternary_conv2d_sparse_layout made from this packed weight");
  const std::vector<uint64_t> bits = pixel_bits(x, s);
  const int64_t L = s.Ho * s.Wo;
  const SparseKernel choice = choose_conv_kernel(requested, receptive_field_bits(bits, s), s.B * L, s.Wk, v);
  if (choice == SparseKernel::dense) return dense_spike_conv(x, packed, scale, bias, dense_part(layout), s, bits);
  std::vector<uint64_t> rows(s.B * L * s.Wk);
  at::parallel_for(0, s.B * s.Ho, 1, [&](int64_t r0, int64_t r1) {  // output rows r = b * Ho + oh
    for (int64_t r = r0; r < r1; ++r)
      gather_rows(bits.data(), s, r / s.Ho, 0, r % s.Ho * s.Wo, (r % s.Ho + 1) * s.Wo, rows.data() + r * s.Wo * s.Wk);
  });
  at::Tensor y = at::empty({s.B, s.O, s.Ho, s.Wo}, x.options().dtype(x.is_floating_point() ? x.scalar_type()
                                                                                          : at::kFloat));
  sparse_rows(choice, rows.data(), s.B * L, s.Wk, v, scale, bias, y, 1, L, L, s.O * L);
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tna_cpp, m) {
  m.def("ternary_sparse_density() -> float", [] { return kSparseDensity; });
  m.def("ternary_code_density(Tensor packed, int k) -> float");
  m.def("ternary_linear_sparse_layout(Tensor packed, int k) -> Tensor");
  m.def(
      "ternary_linear_sparse_spikes(Tensor x, Tensor packed, Tensor scale, Tensor? bias, Tensor layout, str kernel) "
      "-> Tensor");
  m.def("ternary_conv2d_sparse_layout(Tensor packed, int in_channels, int[] kernel_size) -> Tensor");
  m.def(
      "ternary_conv2d_sparse_spikes(Tensor x, Tensor packed, Tensor scale, Tensor? bias, Tensor layout, int[] stride, "
      "int[] padding, int[] dilation, int groups, int[] kernel_size, str kernel) -> Tensor");
}

TORCH_LIBRARY_IMPL(tna_cpp, CPU, m) {
  m.impl("ternary_code_density", &ternary_code_density);
  m.impl("ternary_linear_sparse_layout", &ternary_linear_sparse_layout);
  m.impl("ternary_linear_sparse_spikes", &ternary_linear_sparse_spikes);
  m.impl("ternary_conv2d_sparse_layout", &ternary_conv2d_sparse_layout);
  m.impl("ternary_conv2d_sparse_spikes", &ternary_conv2d_sparse_spikes);
}
