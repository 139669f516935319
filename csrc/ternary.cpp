// Ternary-weight linear and conv2d layers for CPU on the packed 2-bit format (tna_kernels/ops/ternary/format.py).
//
// Spike input (x in {0, 1}) has two exact kernels, chosen per call from the spike count (see use_events):
// - dense: x rows become bit rows, the weight rows two bit-planes (code 1 and code -1), and
//   y = popcount(x & plus) - popcount(x & minus) is integer arithmetic. The inner loop uses AVX-512 VPOPCNTDQ
//   where the compiler targets it, and 64-bit popcounts otherwise.
// - event-driven: each input that spiked adds its int8 column of codes to the outputs, so the cost follows the
//   number of spikes (see the section below).
// Both apply the scale once, in float32, as tna_kernels/ops/ternary/reference.py does. The conv2d packs the spike
// image once into channel bits per pixel. The dense kernel gathers the bit rows of the receptive fields a few
// output pixels at a time (a bit im2col, 32x smaller than a float one, never built for the whole image); the
// event-driven one lists each input pixel's spiking channels once and, tap by tap over a block of output pixels,
// adds the columns of those channels under the tap (see conv_event_sums).
// The weight's re-layouts for both (the CPU layout) can be cached by a caller whose weight does not change.
// Real-valued x (float32): blocks of the weight are decoded into a small float tile (scale included) and
// multiplied with register-blocked fused multiply-adds. The same routine computes the input gradient
// grad_x = grad_y @ W with the tile transposed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "lif_step.h"
#include "ternary_common.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#define TNA_HAVE_VPOPCNT 1
#else
#define TNA_HAVE_VPOPCNT 0
#endif

namespace {

using namespace tna_cpu;

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


// acc_p[i][j] = sum popcount(x_i & plus_j), acc_n likewise with minus, for an MR x NR tile.
template <int MR, int NR>
inline void popcount_tile(const uint64_t* const* xr, const uint64_t* const* pr, const uint64_t* const* nr,
                          int64_t W64p, int64_t (&acc_p)[4][4], int64_t (&acc_n)[4][4]) {
#if TNA_HAVE_VPOPCNT
  {
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


// ---------------------------------------------------------------------------------------------
// Event-driven spike kernels: each input that spiked adds its column of codes to the outputs, so the cost
// follows the number of spikes rather than the number of inputs. The codes are re-laid out as int8 column
// tiles [Nt, R, 32 * V] (R inputs; V vectors of 32 output lanes): row r of tile t holds the codes of input r
// for outputs t * 32V .. t * 32V + 32V - 1, zero past the last output. The spikes of a row are listed once (the
// indices of its set bits) and replayed against every tile while the tile's rows stay in cache. Wide tiles
// (128 lanes) add more codes per listed event; they are narrowed only where a tile would pass kTileBytes.
// Sums run in int8 lanes for at most 127 events, then widen into int16 and int32 lanes, so they are exact.
// ---------------------------------------------------------------------------------------------
typedef int8_t i8x32 __attribute__((vector_size(32)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef int16_t i16x16 __attribute__((vector_size(32)));
typedef int16_t i16x8 __attribute__((vector_size(16)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

constexpr int64_t kTileBytes = 1024 * 1024;  // most bytes of a column tile (L2 holds half of it or more)
constexpr int64_t kEventsPerFlush = 127;      // int8 sums of codes in {-1, 0, 1} stay exact this long
constexpr int64_t kFlushesPerWiden = 258;     // and int16 sums of those: 258 * 127 <= 32767
constexpr int64_t kPrefetchEvents = 16;       // how far ahead add_events prefetches tile rows

// The vectors of 32 output lanes (1, 2 or 4) per column-tile row for R inputs and N outputs.
inline int tile_vectors(int64_t R, int64_t N) {
  int v = N <= 32 ? 1 : (N <= 64 ? 2 : 4);
  while (v > 1 && R * 32 * v > kTileBytes) v /= 2;
  return v;
}

// Bytes of the column tiles for R inputs and N outputs.
inline int64_t tile_bytes(int64_t R, int64_t N) {
  const int64_t lanes = 32 * tile_vectors(R, N);
  return (N + lanes - 1) / lanes * R * lanes;
}

// Column tiles [Nt, R, 32V] (V = tile_vectors(R, N)) from packed rows [N, W16] whose code k is input
// `input(k)`: tile row input(k) of output n holds code k of packed row n. One packed word of each of the
// tile's outputs at a time, so that every store runs along a tile row.
template <typename Input>
void to_column_tiles(const int32_t* packed, int64_t N, int64_t W16, int64_t R, int8_t* tiles, Input input) {
  const int64_t lanes = 32 * tile_vectors(R, N), Nt = (N + lanes - 1) / lanes;
  at::parallel_for(0, Nt, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint32_t> words(lanes);
    for (int64_t t = t0; t < t1; ++t) {
      int8_t* tile = tiles + t * R * lanes;
      const int64_t outputs = std::min(lanes, N - t * lanes);
      for (int64_t w = 0; w < W16; ++w) {
        for (int64_t j = 0; j < lanes; ++j)  // outputs past N: code 1, a zero weight
          words[j] = j < outputs ? static_cast<uint32_t>(packed[(t * lanes + j) * W16 + w]) : 0x55555555u;
        for (int64_t i = 0; i < kCodesPerWord && w * kCodesPerWord + i < R; ++i) {
          int8_t* row = tile + input(w * kCodesPerWord + i) * lanes;
          for (int64_t j = 0; j < lanes; ++j)
            row[j] = static_cast<int8_t>(static_cast<int>((words[j] >> (2 * i)) & 3u) - 1);
        }
      }
    }
  });
}

// The start of each bit row's events in list_events' list: offsets [M + 1], offsets[M] the number of set bits.
void event_offsets(const uint64_t* bits, int64_t M, int64_t W, std::vector<int64_t>& offsets) {
  offsets.assign(M + 1, 0);
  at::parallel_for(0, M, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      int64_t count = 0;
      for (int64_t w = 0; w < W; ++w) count += __builtin_popcountll(bits[m * W + w]);
      offsets[m + 1] = count;
    }
  });
  for (int64_t m = 0; m < M; ++m) offsets[m + 1] += offsets[m];
}

// The indices of the set bits of bit rows [M, W]: those of row m are events[offsets[m] .. offsets[m + 1])
// (offsets: event_offsets), followed by kPrefetchEvents zeros (add_events reads that far ahead). A word's bits
// are listed four at a time, the slots past its last bit filled with junk that the next word's indices
// overwrite (so the loop branches once per four bits, not once per bit); near the end of a row, one at a time.
void list_events(const uint64_t* bits, int64_t M, int64_t W, const std::vector<int64_t>& offsets,
                 std::vector<int32_t>& events) {
  events.assign(offsets[M] + kPrefetchEvents, 0);
  at::parallel_for(0, M, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      int32_t* out = events.data() + offsets[m];
      int32_t* const end = events.data() + offsets[m + 1];
      for (int64_t w = 0; w < W; ++w) {
        uint64_t b = bits[m * W + w];
        const int32_t base = static_cast<int32_t>(64 * w);
        const int count = __builtin_popcountll(b);
        if (end - out >= (count + 3) / 4 * 4) {
          for (int i = 0; i < count; i += 4) {
            for (int j = 0; j < 4; ++j) {
              out[i + j] = base + __builtin_ctzll(b | (uint64_t{1} << 63));
              b &= b - 1;
            }
          }
        } else {
          for (int i = 0; i < count; ++i, b &= b - 1) out[i] = base + __builtin_ctzll(b);
        }
        out += count;
      }
    }
  });
}

// Widening without the wide vector types (GCC lowers a convert to a 1024-bit vector lane by lane): half a
// vector at a time.
inline void widen_add(const i8x32& narrow, i16x16 (&wide)[2]) {
  i8x16 half[2];
  std::memcpy(half, &narrow, sizeof half);
  wide[0] += __builtin_convertvector(half[0], i16x16);
  wide[1] += __builtin_convertvector(half[1], i16x16);
}

// wide[0 .. 16) += narrow, or = narrow where `first` (wide is then not read).
inline void widen_add(const i16x16& narrow, int32_t* wide, bool first) {
  i16x8 half[2];
  std::memcpy(half, &narrow, sizeof half);
  for (int h = 0; h < 2; ++h) {
    i32x8 sum = __builtin_convertvector(half[h], i32x8);
    if (!first) {
      i32x8 old;
      std::memcpy(&old, wide + 8 * h, sizeof old);
      sum += old;
    }
    std::memcpy(wide + 8 * h, &sum, sizeof sum);
  }
}

// s8[v] += the 32 codes of row + 32v, for v < V, and a8[v] += their absolute values (ABS).
template <int V, bool ABS>
inline void add_row(const int8_t* row, i8x32 (&s8)[V], i8x32 (&a8)[ABS ? V : 1]) {
  for (int v = 0; v < V; ++v) {
    i8x32 code;
    std::memcpy(&code, row + 32 * v, sizeof code);
    s8[v] += code;
    if constexpr (ABS) a8[v] += code & 1;
  }
}

// sum[l] = the sum of the codes of lane l of the tile rows tile + events[e] * 32V for e < count, l < 32V, and
// abs_sum likewise with |code| (ABS: for asymmetric scales, which count the +1 and -1 codes apart). Reads
// events[count + kPrefetchEvents - 1]. The codes add up in int8 lanes for kEventsPerFlush events, which add into
// int16 lanes for kFlushesPerWiden flushes, which go into sum (stored the first time, added after): exact at
// every step.
template <int V, bool ABS>
inline void add_events(const int8_t* tile, const int32_t* events, int64_t count, int32_t* sum, int32_t* abs_sum) {
  constexpr int64_t kEventsPerWiden = kEventsPerFlush * kFlushesPerWiden;
  for (int64_t w0 = 0; w0 == 0 || w0 < count; w0 += kEventsPerWiden) {  // once at least: sum is written
    const int64_t w1 = std::min(count, w0 + kEventsPerWiden);
    i16x16 s16[V][2] = {}, a16[ABS ? V : 1][2] = {};
    for (int64_t e0 = w0; e0 < w1; e0 += kEventsPerFlush) {
      const int64_t e1 = std::min(w1, e0 + kEventsPerFlush);
      i8x32 s8[V] = {}, a8[ABS ? V : 1] = {};
      for (int64_t e = e0; e < e1; ++e) {
        __builtin_prefetch(tile + static_cast<int64_t>(events[e + kPrefetchEvents]) * (32 * V));
        add_row<V, ABS>(tile + static_cast<int64_t>(events[e]) * (32 * V), s8, a8);
      }
      for (int v = 0; v < V; ++v) {
        widen_add(s8[v], s16[v]);
        if constexpr (ABS) widen_add(a8[v], a16[v]);
      }
    }
    for (int v = 0; v < V; ++v)
      for (int h = 0; h < 2; ++h) {
        widen_add(s16[v][h], sum + 32 * v + 16 * h, w0 == 0);
        if constexpr (ABS) widen_add(a16[v][h], abs_sum + 32 * v + 16 * h, w0 == 0);
      }
  }
}

// The sums of `rows` rows of events (listed as by list_events, row r at offsets[r]) over column tile `tile`
// ([R, 32V]): row r's 32V sums at sums[r * ld ..], and their absolute values' at abs_sums[r * ld ..] (ABS).
template <int V, bool ABS>
void event_sums(const int8_t* tile, const int64_t* offsets, const int32_t* events, int64_t rows, int32_t* sums,
                int32_t* abs_sums, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    add_events<V, ABS>(tile, events + offsets[r], offsets[r + 1] - offsets[r], sums + r * ld,
                       ABS ? abs_sums + r * ld : nullptr);
  }
}

// Calls f(std::integral_constant<int, V>, std::bool_constant<asymmetric>) for the tile width V (1, 2 or 4).
template <typename F>
void dispatch_events(int V, bool asymmetric, F&& f) {
  auto width = [&](auto abs) {
    if (V == 4) f(std::integral_constant<int, 4>{}, abs);
    else if (V == 2) f(std::integral_constant<int, 2>{}, abs);
    else f(std::integral_constant<int, 1>{}, abs);
  };
  if (asymmetric) width(std::true_type{});
  else width(std::false_type{});
}

// The spike kernels' choice: "dense" (bit-plane popcounts over all inputs), "events" (column adds per spike),
// or "auto": events where at most kLinearEventDensity (linear) or kConvEventDensity (conv2d) of the inputs spiked.
// The dense kernel costs the same at any density; the event kernel's cost is proportional to it. Each threshold
// sits below the crossover that benchmarks/bench_ternary.py's spike-rate sweep measures for its layer: late
// without VPOPCNTDQ (the dense kernel counts 64 bits at a time), earlier with it, and earlier for conv2d, whose
// event kernel also walks the taps of every spike.
#if TNA_HAVE_VPOPCNT
constexpr double kLinearEventDensity = 0.3;
constexpr double kConvEventDensity = 0.15;
#else
constexpr double kLinearEventDensity = 0.6;
constexpr double kConvEventDensity = 0.6;
#endif

enum class SpikeKernel { automatic, dense, events };

SpikeKernel spike_kernel(c10::string_view name, const char* op) {
  if (name == "auto") return SpikeKernel::automatic;
  if (name == "dense") return SpikeKernel::dense;
  TORCH_CHECK(name == "events", op, ": kernel must be 'auto', 'dense' or 'events', got '", std::string(name), "'");
  return SpikeKernel::events;
}

// Without a cached layout, the event kernel first writes the int8 columns (a byte per weight, the bit-planes take
// a quarter of that): "auto" takes it only for at least this many rows (output pixels for conv2d).
constexpr int64_t kEventRowsUncached = 128;

// Whether `spikes` set bits out of `inputs`, in `rows` rows, take the event kernel (`cached`: the layout is given;
// `density`: the layer's threshold).
inline bool use_events(SpikeKernel kernel, int64_t spikes, int64_t inputs, int64_t rows, bool cached,
                       double density) {
  if (kernel != SpikeKernel::automatic) return kernel == SpikeKernel::events;
  if (!cached && rows < kEventRowsUncached) return false;
  return static_cast<double>(spikes) <= density * static_cast<double>(inputs);
}

// One MR x NR block (rows m0.., columns n0..) from bit rows xbits [M, W64p] and planes plus / minus [N, W64p].
template <int MR, int NR, typename Out>
void spike_block(const uint64_t* xbits, const uint64_t* plus, const uint64_t* minus, int64_t W64p, int64_t m0,
                 int64_t n0, const SpikeOutput<Out>& out) {
  const uint64_t* xr[MR];
  const uint64_t* pr[NR];
  const uint64_t* nr[NR];
  for (int i = 0; i < MR; ++i) xr[i] = xbits + (m0 + i) * W64p;
  for (int j = 0; j < NR; ++j) {
    pr[j] = plus + (n0 + j) * W64p;
    nr[j] = minus + (n0 + j) * W64p;
  }
  int64_t acc_p[4][4], acc_n[4][4];
  popcount_tile<MR, NR>(xr, pr, nr, W64p, acc_p, acc_n);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out.store(m0 + i, n0 + j, acc_p[i][j], acc_n[i][j]);
}

template <int MR, typename Out>
void spike_rows(const uint64_t* xbits, const uint64_t* plus, const uint64_t* minus, int64_t W64p, int64_t m0,
                int64_t n0, int64_t n1, const SpikeOutput<Out>& out) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) spike_block<MR, 2>(xbits, plus, minus, W64p, m0, n, out);
  if (n < n1) spike_block<MR, 1>(xbits, plus, minus, W64p, m0, n, out);
}

template <typename Out>
void spike_linear(const uint64_t* xbits, const uint64_t* plus, const uint64_t* minus, int64_t W64p, int64_t M,
                  int64_t N, const SpikeOutput<Out>& out) {
  constexpr int64_t kColumns = 32;  // columns per task: their bit-planes stay in L1 / L2
  at::parallel_for(0, (N + kColumns - 1) / kColumns, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kColumns, n1 = std::min(N, n0 + kColumns);
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) spike_rows<4>(xbits, plus, minus, W64p, m, n0, n1, out);
      for (; m < M; ++m) spike_rows<1>(xbits, plus, minus, W64p, m, n0, n1, out);
    }
  });
}

// Reads `bytes` bytes at `data` in order, a word per cache line, so that the hardware prefetchers bring them into
// cache at the memory's streaming rate: the event kernel's scattered row reads would fetch them a miss at a time.
inline void stream_into_cache(const int8_t* data, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) {
    uint64_t word;
    std::memcpy(&word, data + b, sizeof word);
    asm volatile("" : : "r"(word));  // the load is kept
  }
}

// Rows [M] of events (list_events) against the column tiles [Nt, K, 32V] of N outputs: tasks of up to kRows rows
// against one tile, a task's neighbours sharing its tile. Where the rows' events read each tile row twice or more
// on average, each thread streams a tile into cache before its first task on it.
template <typename Out>
void event_linear(const int8_t* tiles, int64_t K, int64_t N, const std::vector<int64_t>& offsets,
                  const std::vector<int32_t>& events, const SpikeOutput<Out>& out) {
  constexpr int64_t kRows = 64;
  const int64_t M = static_cast<int64_t>(offsets.size()) - 1, blocks = (M + kRows - 1) / kRows;
  const int V = tile_vectors(K, N), lanes = 32 * V;
  const int64_t Nt = (N + lanes - 1) / lanes;
  const bool stream = offsets[M] >= 2 * K;
  dispatch_events(V, out.asymmetric, [&](auto width, auto abs) {
    at::parallel_for(0, Nt * blocks, 1, [&](int64_t q0, int64_t q1) {
      std::vector<int32_t> sums(kRows * lanes), abs_sums(decltype(abs)::value ? kRows * lanes : 0);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t t = q / blocks, m0 = q % blocks * kRows, m1 = std::min(M, m0 + kRows);
        if (stream && (q == q0 || m0 == 0)) stream_into_cache(tiles + t * K * lanes, K * lanes);
        event_sums<decltype(width)::value, decltype(abs)::value>(tiles + t * K * lanes, offsets.data() + m0,
                                                                 events.data(), m1 - m0, sums.data(),
                                                                 abs_sums.data(), lanes);
        out.store_sums(m0, m1, t * lanes, std::min(N, (t + 1) * lanes), sums.data(), abs_sums.data(), lanes);
      }
    });
  });
}

// Words of 64 codes per bit-plane row for K inputs: whole 512-bit vectors, zero padded.
inline int64_t plane_words(int64_t K) { return ((K + 63) / 64 + 7) / 8 * 8; }

// The int64 words of a layout's bit-planes part and its column-tile part (bytes rounded up to words).
struct LayoutSize {
  int64_t plane_words, tile_words;
};

inline LayoutSize linear_layout_size(int64_t K, int64_t N) {
  return {2 * N * plane_words(K), (tile_bytes(K, N) + 7) / 8};
}

// Fill the parts of a linear layout [plane_words + tile_words] that are asked for, from packed [N, W16].
void fill_linear_layout(const int32_t* packed, int64_t N, int64_t K, bool planes, bool tiles, int64_t* layout) {
  const LayoutSize size = linear_layout_size(K, N);
  if (planes) {
    auto* plus = reinterpret_cast<uint64_t*>(layout);
    const int64_t W64p = plane_words(K);
    to_bit_planes(packed, N, (K + kCodesPerWord - 1) / kCodesPerWord, plus, plus + N * W64p, W64p);
  }
  if (tiles)
    to_column_tiles(packed, N, (K + kCodesPerWord - 1) / kCodesPerWord, K,
                    reinterpret_cast<int8_t*>(layout + size.plane_words), [](int64_t k) { return k; });
}

// The CPU layout of a packed linear weight [N, ceil(K/16)] as ternary_linear_spikes reads it, a cache for a
// weight that does not change: int64 [P], the bit-planes [2, N, plane_words(K)] (plus, then minus; see
// to_bit_planes), then the int8 column tiles (see to_column_tiles).
at::Tensor ternary_linear_layout(const at::Tensor& packed, int64_t K) {
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kInt && packed.dim() == 2 &&
                  packed.is_contiguous() && packed.size(1) == (K + kCodesPerWord - 1) / kCodesPerWord,
              "ternary_linear_layout: packed must be a contiguous int32 CPU tensor [N, ceil(K/16)] with K = ", K,
              ", got ", packed.scalar_type(), " ", packed.sizes());
  const int64_t N = packed.size(0);
  const LayoutSize size = linear_layout_size(K, N);
  at::Tensor layout = at::empty({size.plane_words + size.tile_words}, packed.options().dtype(at::kLong));
  fill_linear_layout(packed.data_ptr<int32_t>(), N, K, true, true, layout.data_ptr<int64_t>());
  return layout;
}

// Check that a cached layout has the size and type that `size` says (made from the same packed weight).
void check_layout(const at::Tensor& layout, const LayoutSize& size, const char* op) {
  TORCH_CHECK(layout.device().is_cpu() && layout.scalar_type() == at::kLong && layout.is_contiguous() &&
                  layout.dim() == 1 && layout.size(0) == size.plane_words + size.tile_words,
              op, ": layout must be the contiguous int64 CPU tensor [", size.plane_words + size.tile_words,
              "] made from this packed weight, got ", layout.scalar_type(), " ", layout.sizes());
}

// y [M, N] = spike rows x [M, K] times the packed ternary weight; exact (see the file comment) whichever kernel
// runs. `layout`: ternary_linear_layout(packed, K), when cached; the part needed is made here otherwise.
// `kernel`: "auto", "dense" or "events" (see use_events).
at::Tensor ternary_linear_spikes(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& layout,
                                 c10::string_view kernel) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(),
              "ternary_linear: x must be a contiguous 2-D CPU tensor [M, K], got ", x.sizes());
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  check_weights(packed, scale, K, "ternary_linear");
  check_bias(bias, N, "ternary_linear");
  const SpikeKernel choice = spike_kernel(kernel, "ternary_linear");
  const LayoutSize size = linear_layout_size(K, N);
  if (layout.has_value()) check_layout(*layout, size, "ternary_linear");
  const int64_t W64p = plane_words(K);
  std::vector<uint64_t> xbits(M * W64p);
  bool ok = true;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBFloat16, at::kHalf, at::kBool, x.scalar_type(), "ternary_linear_spikes", [&] {
    ok = to_bit_rows(x.data_ptr<scalar_t>(), M, K, xbits.data(), W64p);
  });
  TORCH_CHECK(ok, "ternary_linear: spike input must hold only 0 and 1; found other values");
  std::vector<int64_t> offsets;
  std::vector<int32_t> events;
  event_offsets(xbits.data(), M, W64p, offsets);
  const bool by_events = use_events(choice, offsets[M], M * K, M, layout.has_value(), kLinearEventDensity);
  if (by_events) list_events(xbits.data(), M, W64p, offsets, events);
  at::Tensor made;
  if (!layout.has_value()) {
    made = at::empty({size.plane_words + size.tile_words}, packed.options().dtype(at::kLong));
    fill_linear_layout(packed.data_ptr<int32_t>(), N, K, !by_events, by_events, made.data_ptr<int64_t>());
  }
  const int64_t* words = (layout.has_value() ? *layout : made).data_ptr<int64_t>();
  const auto out_dtype = x.is_floating_point() ? x.scalar_type() : at::kFloat;
  at::Tensor y = at::empty({M, N}, x.options().dtype(out_dtype));
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_dtype, "ternary_linear_spikes_out", [&] {
    const SpikeOutput<scalar_t> out{scale.data_ptr<float>(), scale.dim() == 2, N, bp, y.data_ptr<scalar_t>(), N, 1};
    if (by_events) {
      event_linear(reinterpret_cast<const int8_t*>(words + size.plane_words), K, N, offsets, events, out);
    } else {
      const auto* plus = reinterpret_cast<const uint64_t*>(words);
      spike_linear(xbits.data(), plus, plus + N * W64p, W64p, M, N, out);
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// Spike conv2d: x [B, C, H, W] in {0, 1}, weight [O, Cg, kh, kw] (Cg = C / G channels per group, G groups).
// The receptive field of an output pixel is one bit row of Wk = ceil(T * Cg / 64) words, T = kh * kw taps:
// tap t = i * kw + j holds its Cg channel bits at bits t * Cg .. t * Cg + Cg - 1, and the weight planes use
// the same (tap, channel) order. Rows are short (Wk words), so the output channels, not the words, go in
// the vector lanes: the planes are interleaved by blocks of kLanes channels, a pixel's word is broadcast,
// and each accumulator holds kLanes channels (no horizontal sums).
// ---------------------------------------------------------------------------------------------
// Interleaved bit-planes plus / minus [G, Ob, Wk, kLanes] from packed conv rows [O, W16] (codes in (channel,
// tap) order, k = c * T + t): output channel o = g * Og + b * kLanes + l is lane l of block b of group g, and
// bit t * Cg + c of its words is set in plus where code k is 1, in minus where it is -1. The planes must be
// zero on entry: the lanes past Og are not written.
void to_conv_bit_planes(const int32_t* packed, int64_t W16, const ConvShape& s, uint64_t* plus, uint64_t* minus) {
  at::parallel_for(0, s.O, 16, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const uint32_t* row = reinterpret_cast<const uint32_t*>(packed + o * W16);
      const int64_t g = o / s.Og, n = o % s.Og;
      const int64_t first = ((g * s.Ob + n / kLanes) * s.Wk) * kLanes + n % kLanes;  // word w at first + w * kLanes
      int64_t t = 0, c = 0;  // tap and channel of bit t * Cg + c
      for (int64_t w = 0; w < s.Wk; ++w) {
        uint64_t p = 0, m = 0;
        for (int64_t j = 0; j < 64 && t < s.T; ++j) {
          const int64_t k = c * s.T + t;
          const uint32_t code = (row[k / kCodesPerWord] >> (2 * (k % kCodesPerWord))) & 3u;
          p |= static_cast<uint64_t>(code == 2u) << j;
          m |= static_cast<uint64_t>(code == 0u) << j;
          if (++c == s.Cg) {
            c = 0;
            ++t;
          }
        }
        plus[first + w * kLanes] = p;
        minus[first + w * kLanes] = m;
      }
    }
  });
}

// acc_p[i][j * kLanes + l] = sum_w popcount(rows[i * Wk + w] & plus[(j * Wk + w) * kLanes + l]), acc_n likewise
// with minus: MR bit rows against NR interleaved blocks of kLanes output channels.
template <int MR, int NR>
inline void popcount_lanes(const uint64_t* rows, const uint64_t* plus, const uint64_t* minus, int64_t Wk,
                           int64_t (&acc_p)[4][2 * kLanes], int64_t (&acc_n)[4][2 * kLanes]) {
#if TNA_HAVE_VPOPCNT
  {
    __m512i vp[MR][NR], vn[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) vp[i][j] = vn[i][j] = _mm512_setzero_si512();
    for (int64_t w = 0; w < Wk; ++w) {
      __m512i pv[NR], mv[NR];
      for (int j = 0; j < NR; ++j) {
        pv[j] = _mm512_loadu_si512(plus + (j * Wk + w) * kLanes);
        mv[j] = _mm512_loadu_si512(minus + (j * Wk + w) * kLanes);
      }
      for (int i = 0; i < MR; ++i) {
        const __m512i xv = _mm512_set1_epi64(static_cast<long long>(rows[i * Wk + w]));
        for (int j = 0; j < NR; ++j) {
          vp[i][j] = _mm512_add_epi64(vp[i][j], _mm512_popcnt_epi64(_mm512_and_si512(xv, pv[j])));
          vn[i][j] = _mm512_add_epi64(vn[i][j], _mm512_popcnt_epi64(_mm512_and_si512(xv, mv[j])));
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) {
        _mm512_storeu_si512(acc_p[i] + j * kLanes, vp[i][j]);
        _mm512_storeu_si512(acc_n[i] + j * kLanes, vn[i][j]);
      }
    return;
  }
#endif
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      int64_t* p = acc_p[i] + j * kLanes;
      int64_t* n = acc_n[i] + j * kLanes;
      std::fill(p, p + kLanes, 0);
      std::fill(n, n + kLanes, 0);
      for (int64_t w = 0; w < Wk; ++w) {
        const uint64_t x = rows[i * Wk + w];
        const uint64_t* pw = plus + (j * Wk + w) * kLanes;
        const uint64_t* mw = minus + (j * Wk + w) * kLanes;
        for (int64_t l = 0; l < kLanes; ++l) {
          p[l] += __builtin_popcountll(x & pw[l]);
          n[l] += __builtin_popcountll(x & mw[l]);
        }
      }
    }
}

// Rows m0 .. m0 + MR - 1 of `rows` against the output channels of blocks b0 .. b0 + NR - 1 of one group
// (plus / minus [Ob, Wk, kLanes]); channels past Og are not stored.
template <int MR, int NR, typename Out>
void conv_block(const uint64_t* rows, const uint64_t* plus, const uint64_t* minus, const ConvShape& s, int64_t m0,
                int64_t b0, const SpikeOutput<Out>& out) {
  int64_t acc_p[4][2 * kLanes], acc_n[4][2 * kLanes];
  const int64_t offset = b0 * s.Wk * kLanes;
  popcount_lanes<MR, NR>(rows + m0 * s.Wk, plus + offset, minus + offset, s.Wk, acc_p, acc_n);
  const int64_t lanes = std::min(NR * kLanes, s.Og - b0 * kLanes);
  for (int64_t l = 0; l < lanes; ++l)
    for (int i = 0; i < MR; ++i) out.store(m0 + i, b0 * kLanes + l, acc_p[i][l], acc_n[i][l]);
}

template <int MR, typename Out>
void conv_rows(const uint64_t* rows, const uint64_t* plus, const uint64_t* minus, const ConvShape& s, int64_t m0,
               const SpikeOutput<Out>& out) {
  int64_t b = 0;
  for (; b + 2 <= s.Ob; b += 2) conv_block<MR, 2>(rows, plus, minus, s, m0, b, out);
  if (b < s.Ob) conv_block<MR, 1>(rows, plus, minus, s, m0, b, out);
}

constexpr int64_t kInt16Most = 32767;  // the largest int16
constexpr int64_t kPassBytes = 8192;   // bytes of the int16 sums of one pass of conv_event_sums (they stay in L1)

// wide[0 .. 32) += narrow, in int16 lanes in memory.
inline void widen_add(const i8x32& narrow, int16_t* wide) {
  i8x16 half[2];
  std::memcpy(half, &narrow, sizeof half);
  for (int h = 0; h < 2; ++h) {
    i16x16 sum;
    std::memcpy(&sum, wide + 16 * h, sizeof sum);
    sum += __builtin_convertvector(half[h], i16x16);
    std::memcpy(wide + 16 * h, &sum, sizeof sum);
  }
}

// A run of events: tile rows tile + events[e] * 32V for e < count.
struct EventRun {
  const int8_t* tile;
  const int32_t* events;
  int64_t count;
};

// The partial sums of one output pixel in conv_event_sums: 32V lanes of int8 sums of at most kEventsPerFlush
// events (`pending`), which add into its int16 sums (and abs8 into abs16 for ABS).
struct PixelSums {
  int8_t* sum8;
  int8_t* abs8;
  int16_t* sum16;
  int16_t* abs16;
  int64_t& pending;
};

// The int8 sums of p added into its int16 sums, and zeroed.
template <int V, bool ABS>
inline void flush_int8(const PixelSums& p) {
  for (int v = 0; v < V; ++v) {
    i8x32 narrow;
    std::memcpy(&narrow, p.sum8 + 32 * v, sizeof narrow);
    widen_add(narrow, p.sum16 + 32 * v);
    if constexpr (ABS) {
      std::memcpy(&narrow, p.abs8 + 32 * v, sizeof narrow);
      widen_add(narrow, p.abs16 + 32 * v);
    }
  }
  std::fill(p.sum8, p.sum8 + 32 * V, 0);
  if constexpr (ABS) std::fill(p.abs8, p.abs8 + 32 * V, 0);
  p.pending = 0;
}

// Adds lane l of the tile rows tile + events[e] * 32V for e < count to the sums of p, l < 32V (|code| to the
// absolute sums for ABS): in int8 registers, loaded from and stored to p's int8 sums, which go into its int16
// sums whenever they hold kEventsPerFlush events (the caller keeps the int16 sums from overflowing).
template <int V, bool ABS>
inline void add_run(const int8_t* tile, const int32_t* events, int64_t count, const PixelSums& p) {
  for (int64_t e0 = 0; e0 < count;) {
    if (p.pending == kEventsPerFlush) flush_int8<V, ABS>(p);
    const int64_t e1 = std::min(count, e0 + kEventsPerFlush - p.pending);
    i8x32 s8[V], a8[ABS ? V : 1];
    for (int v = 0; v < V; ++v) {
      std::memcpy(&s8[v], p.sum8 + 32 * v, sizeof s8[v]);
      if constexpr (ABS) std::memcpy(&a8[v], p.abs8 + 32 * v, sizeof a8[v]);
    }
    for (int64_t e = e0; e < e1; ++e) {
      const int8_t* row = tile + static_cast<int64_t>(events[e]) * (32 * V);
      add_row<V, ABS>(row, s8, a8);
    }
    for (int v = 0; v < V; ++v) {
      std::memcpy(p.sum8 + 32 * v, &s8[v], sizeof s8[v]);
      if constexpr (ABS) std::memcpy(p.abs8 + 32 * v, &a8[v], sizeof a8[v]);
    }
    p.pending += e1 - e0;
    e0 = e1;
  }
}

// The sums of output pixels l0 .. l1 - 1 of image b in group g over column tile `tile` ([T * Cg, 32V], row
// t * Cg + c for tap t and channel c): for each tap inside the image, the channel events of its input pixel
// (offsets / events: list_events of the pixel bits [B, H, W, G, Wc] as rows of Wc words). Pixel l's 32V sums go
// to sums[(l - l0) * ld ..], their absolute values' to abs_sums[(l - l0) * ld ..] (ABS). `runs` has room for
// T runs of each pixel.
// Tap by tap: a pass of pixels (their int8 and int16 sums, kPassBytes) goes through one tap's Cg tile rows at a
// time, which stay in L1 meanwhile (pixel by pixel, every event would fetch its row from L2). Each round adds at
// most min(Cg, 32767) events to a pixel, and the int16 sums fold into the int32 sums before they could overflow.
template <int V, bool ABS>
void conv_event_sums(const int8_t* tile, const ConvShape& s, const int64_t* offsets, const int32_t* events,
                     int64_t b, int64_t g, int64_t l0, int64_t l1, EventRun* runs, int32_t* sums, int32_t* abs_sums,
                     int64_t ld) {
  constexpr int64_t lanes = 32 * V, pass = kPassBytes / (3 * lanes * (ABS ? 2 : 1));
  constexpr int64_t abs_lanes = ABS ? pass * lanes : 1;
  alignas(64) int8_t s8[pass * lanes], a8[abs_lanes];
  alignas(64) int16_t s16[pass * lanes], a16[abs_lanes];
  int64_t pending[pass];
  const int64_t round = std::min(s.Cg, kInt16Most);
  for (int64_t p0 = l0; p0 < l1; p0 += pass) {
    const int64_t n = std::min(pass, l1 - p0);
    const auto pixel_sums = [&](int64_t i) -> PixelSums {
      return {s8 + i * lanes, a8 + (ABS ? i * lanes : 0), s16 + i * lanes, a16 + (ABS ? i * lanes : 0), pending[i]};
    };
    std::fill(runs, runs + n * s.T, EventRun{tile, events, 0});
    for (int64_t i = 0; i < n; ++i)
      for_each_tap(s, p0 + i, [&](int64_t tap, int64_t ih, int64_t iw) {
        const int64_t pixel = ((b * s.H + ih) * s.W + iw) * s.G + g, first = offsets[pixel];
        runs[i * s.T + tap] = {tile + tap * s.Cg * lanes, events + first, offsets[pixel + 1] - first};
      });
    std::fill(s8, s8 + n * lanes, 0);
    std::fill(s16, s16 + n * lanes, 0);
    if constexpr (ABS) {
      std::fill(a8, a8 + n * lanes, 0);
      std::fill(a16, a16 + n * lanes, 0);
    }
    std::fill(pending, pending + n, 0);
    bool first = true;  // the int32 sums of the pass not written yet
    int64_t most = 0;   // the most events that a pixel's int8 and int16 sums hold
    const auto fold = [&] {
      for (int64_t i = 0; i < n; ++i) {
        flush_int8<V, ABS>(pixel_sums(i));
        int32_t* sum = sums + (p0 - l0 + i) * ld;
        for (int64_t j = 0; j < lanes; ++j) sum[j] = (first ? 0 : sum[j]) + s16[i * lanes + j];
        if constexpr (ABS) {
          int32_t* abs_sum = abs_sums + (p0 - l0 + i) * ld;
          for (int64_t j = 0; j < lanes; ++j) abs_sum[j] = (first ? 0 : abs_sum[j]) + a16[i * lanes + j];
        }
      }
      std::fill(s16, s16 + n * lanes, 0);
      if constexpr (ABS) std::fill(a16, a16 + n * lanes, 0);
      first = false;
      most = 0;
    };
    for (int64_t tap = 0; tap < s.T; ++tap)
      for (int64_t e0 = 0; e0 < s.Cg; e0 += round) {
        if (most + round > kInt16Most) fold();
        for (int64_t i = 0; i < n; ++i) {
          const EventRun& run = runs[i * s.T + tap];
          const int64_t count = std::min(run.count - e0, round);
          if (count > 0) add_run<V, ABS>(run.tile, run.events + e0, count, pixel_sums(i));
        }
        most += round;
      }
    fold();
  }
}

constexpr int64_t kConvPixels = 64;  // most output pixels per task: their bit rows stay in L1

// LIF neurons on a conv's output: the images [T * Bn] are T timesteps of Bn samples (image t * Bn + b), and the
// neurons (one per output channel and pixel of a sample) fire on the conv's output instead of returning it.
struct ConvLif {
  int64_t T;
  LifParams params;
};

// The conv of the pixel bits [B, H, W, G, Wc] into y [B, O, Ho, Wo] by the bit-plane popcounts or, `by_events`,
// the column tiles of `layout` (see conv_layout_size). With `lif`, y holds the spikes of LIF neurons on the conv's
// output instead (float32; each task runs its pixels through the T timesteps, its neurons' membranes in a local
// buffer), and the number of spikes is returned (else 0).
template <typename Out>
int64_t spike_conv(const uint64_t* bits, const int64_t* layout, const LayoutSize& size, bool by_events,
                   const ConvShape& s, const float* scale, bool asymmetric, const float* bias, Out* y,
                   const ConvLif* lif) {
  const int64_t L = s.Ho * s.Wo, R = s.T * s.Cg;
  const int64_t steps = lif != nullptr ? lif->T : 1, samples = s.B / steps;
  // fewer pixels per task where kConvPixels would leave threads idle (one small image)
  const int64_t pixels = std::clamp<int64_t>(samples * s.G * L / (4 * at::get_num_threads()), 4, kConvPixels);
  const int64_t blocks = (L + pixels - 1) / pixels;
  const auto* plus = reinterpret_cast<const uint64_t*>(layout);
  const auto* minus = plus + size.plane_words / 2;
  const auto* tiles = reinterpret_cast<const int8_t*>(layout + size.plane_words);
  const int V = tile_vectors(R, s.Og), lanes = 32 * V;
  const int64_t Ot = (s.Og + lanes - 1) / lanes;
  std::vector<int64_t> offsets;  // by events: the channel events of every input pixel and group, listed once
  std::vector<int32_t> events;
  if (by_events) {
    event_offsets(bits, s.B * s.H * s.W * s.G, s.Wc, offsets);
    list_events(bits, s.B * s.H * s.W * s.G, s.Wc, offsets, events);
  }
  const int64_t tasks = samples * s.G * blocks;
  std::vector<int64_t> counts(lif != nullptr ? tasks : 0);
  at::parallel_for(0, tasks, 1, [&](int64_t q0, int64_t q1) {
    std::vector<uint64_t> rows(by_events ? 0 : pixels * s.Wk);
    std::vector<EventRun> runs(by_events ? pixels * s.T : 0);  // the taps of the block's pixels
    std::vector<int32_t> sums(by_events ? pixels * Ot * lanes : 0), abs_sums(by_events && asymmetric ? sums.size() : 0);
    // with lif, per neuron of a block ([Og, pixels]): the conv's output, the membrane, the spikes, tau, threshold
    const int64_t neurons = lif != nullptr ? s.Og * pixels : 0;
    std::vector<float> current(neurons), membrane(neurons), fired(neurons);
    std::vector<float> tau(neurons, lif != nullptr ? lif->params.tau : 0.0f);
    std::vector<float> threshold(neurons, lif != nullptr ? lif->params.v_threshold : 0.0f);
    // The output of pixels l0 .. l1 - 1 of image b, group g, to `out` (rows: pixels, columns: the group's outputs).
    const auto conv_block = [&](int64_t b, int64_t g, int64_t l0, int64_t l1, const SpikeOutput<Out>& out) {
      if (by_events) {
        const int8_t* group_tiles = tiles + g * tile_bytes(R, s.Og);
        dispatch_events(V, asymmetric, [&](auto width, auto abs) {
          for (int64_t t = 0; t < Ot; ++t)
            conv_event_sums<decltype(width)::value, decltype(abs)::value>(
                group_tiles + t * R * lanes, s, offsets.data(), events.data(), b, g, l0, l1, runs.data(),
                sums.data() + t * lanes, abs_sums.data() + t * lanes, Ot * lanes);
        });
        out.store_sums(0, l1 - l0, 0, s.Og, sums.data(), abs_sums.data(), Ot * lanes);
        return;
      }
      gather_rows(bits, s, b, g, l0, l1, rows.data());
      const uint64_t* p = plus + g * s.Ob * s.Wk * kLanes;
      const uint64_t* m = minus + g * s.Ob * s.Wk * kLanes;
      int64_t r = 0;
      for (; r + 4 <= l1 - l0; r += 4) conv_rows<4>(rows.data(), p, m, s, r, out);
      for (; r < l1 - l0; ++r) conv_rows<1>(rows.data(), p, m, s, r, out);
    };
    for (int64_t q = q0; q < q1; ++q) {  // q = (b * G + g) * blocks + block, b < samples
      const int64_t b = q / (s.G * blocks), g = q / blocks % s.G;
      const int64_t l0 = q % blocks * pixels, l1 = std::min(L, l0 + pixels), n = l1 - l0;
      const int64_t n0 = g * s.Og;  // y [B, O, Ho, Wo]: row l - l0 of the block, column n of the group
      if (lif == nullptr) {
        conv_block(b, g, l0, l1, {scale + n0, asymmetric, s.O, bias != nullptr ? bias + n0 : nullptr,
                                  y + (b * s.O + n0) * L + l0, 1, L});
        continue;
      }  // lif: y is float32 (conv_from_pixel_bits)
      if constexpr (std::is_same_v<Out, float>) {  // the block's neurons [Og, n], timestep by timestep
        const SpikeOutput<float> out{scale + n0, asymmetric, s.O, bias != nullptr ? bias + n0 : nullptr,
                                     current.data(), 1, n};
        std::fill(membrane.begin(), membrane.begin() + s.Og * n, lif->params.v_reset);
        for (int64_t t = 0; t < steps; ++t) {
          const int64_t image = t * samples + b;
          conv_block(image, g, l0, l1, out);
          float* spikes = y + (image * s.O + n0) * L + l0;  // the block's spikes: [Og, n] rows L apart in y
          counts[q] += lif_step(current.data(), n == L ? spikes : fired.data(), membrane.data(), tau.data(),
                                threshold.data(), lif->params, s.Og * n);
          if (n < L)
            for (int64_t o = 0; o < s.Og; ++o)
              std::copy(fired.data() + o * n, fired.data() + (o + 1) * n, spikes + o * L);
        }
      }
    }
  });
  int64_t total = 0;
  for (const int64_t c : counts) total += c;
  return total;
}

// A conv layout: the interleaved bit-planes [2, G * Ob * Wk * kLanes] (plus, then minus), then per group the
// column tiles of its Og outputs over its T * Cg inputs in bit-row order (row t * Cg + c).
inline LayoutSize conv_layout_size(const ConvShape& s) {
  return {2 * s.G * s.Ob * s.Wk * kLanes, (s.G * tile_bytes(s.T * s.Cg, s.Og) + 7) / 8};
}

// Fill the parts of a conv layout that are asked for, from packed [O, W16] (codes in (channel, tap) order).
void fill_conv_layout(const int32_t* packed, int64_t W16, const ConvShape& s, bool planes, bool tiles,
                      int64_t* layout) {
  const LayoutSize size = conv_layout_size(s);
  if (planes) {
    auto* plus = reinterpret_cast<uint64_t*>(layout);
    std::fill(plus, plus + size.plane_words, 0);  // lanes past Og stay zero
    to_conv_bit_planes(packed, W16, s, plus, plus + size.plane_words / 2);
  }
  if (tiles) {
    const int64_t R = s.T * s.Cg, group_bytes = tile_bytes(R, s.Og);
    auto* first = reinterpret_cast<int8_t*>(layout + size.plane_words);
    const CodeOrder order{s.T, s.Cg};
    for (int64_t g = 0; g < s.G; ++g)
      to_column_tiles(packed + g * s.Og * W16, s.Og, W16, R, first + g * group_bytes,
                      [&](int64_t k) { return order.row_input(k); });
  }
}

// The CPU layout of a packed conv weight [O, ceil(in_channels / groups * kh * kw / 16)] as ternary_conv2d_spikes
// reads it for this geometry (int64 [P], see conv_layout_size): a cache for a weight that does not change.
at::Tensor ternary_conv2d_layout(const at::Tensor& packed, int64_t in_channels, int64_t groups,
                                 at::IntArrayRef kernel_size) {
  TORCH_CHECK(kernel_size.size() == 2 && std::min(kernel_size[0], kernel_size[1]) >= 1,
              "ternary_conv2d_layout: kernel_size must be a pair of positive ints");
  TORCH_CHECK(groups >= 1 && in_channels % groups == 0 && packed.dim() == 2 && packed.size(0) % groups == 0,
              "ternary_conv2d_layout: groups = ", groups, " must divide in_channels = ", in_channels,
              " and the output channels");
  ConvShape s{};
  set_weight_shape(s, packed.size(0), in_channels / groups, groups, kernel_size[0], kernel_size[1]);
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kInt && packed.is_contiguous() &&
                  packed.size(1) == (s.Cg * s.T + kCodesPerWord - 1) / kCodesPerWord,
              "ternary_conv2d_layout: packed must be a contiguous int32 CPU tensor [O, ceil(C/groups*kh*kw/16)], got ",
              packed.scalar_type(), " ", packed.sizes());
  const LayoutSize size = conv_layout_size(s);
  at::Tensor layout = at::empty({size.plane_words + size.tile_words}, packed.options().dtype(at::kLong));
  fill_conv_layout(packed.data_ptr<int32_t>(), packed.size(1), s, true, true, layout.data_ptr<int64_t>());
  return layout;
}

// y [B, O, Ho, Wo] from the pixel bits of x (pixel_bits) by the kernel `choice` picks; `layout` as in
// ternary_conv2d_spikes (checked here). With `lif`: the spikes of LIF neurons on that output (float32), and
// `spikes` their number.
at::Tensor conv_from_pixel_bits(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& layout,
                                const ConvShape& s, const std::vector<uint64_t>& bits, SpikeKernel choice,
                                const ConvLif* lif = nullptr, int64_t* spikes = nullptr) {
  const LayoutSize size = conv_layout_size(s);
  if (layout.has_value()) check_layout(*layout, size, "ternary_conv2d");
  const bool by_events = use_events(choice, count_bits(bits), x.numel(), s.B * s.Ho * s.Wo, layout.has_value(),
                                    kConvEventDensity);
  at::Tensor made;
  if (!layout.has_value()) {
    made = at::empty({size.plane_words + size.tile_words}, packed.options().dtype(at::kLong));
    fill_conv_layout(packed.data_ptr<int32_t>(), packed.size(1), s, !by_events, by_events, made.data_ptr<int64_t>());
  }
  const int64_t* words = (layout.has_value() ? *layout : made).data_ptr<int64_t>();
  const auto out_dtype = x.is_floating_point() && lif == nullptr ? x.scalar_type() : at::kFloat;
  at::Tensor y = at::empty({s.B, s.O, s.Ho, s.Wo}, x.options().dtype(out_dtype));
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_dtype, "ternary_conv2d_spikes_out", [&] {
    const int64_t fired = spike_conv(bits.data(), words, size, by_events, s, scale.data_ptr<float>(),
                                     scale.dim() == 2, bp, y.data_ptr<scalar_t>(), lif);
    if (spikes != nullptr) *spikes = fired;
  });
  return y;
}

// y [B, O, Ho, Wo] = conv2d of spikes x [B, C, H, W] with the packed ternary weight [O, C / groups, kh, kw]
// (packed [O, ceil(C / groups * kh * kw / 16)], scale [O] or [2, O], bias [O]); exact, and finished in
// float32 exactly as ternary_linear_spikes. Output dtype: x's if floating point, else float32. `layout`:
// ternary_conv2d_layout(packed, C, groups, kernel_size), when cached; the part needed is made here otherwise.
// `kernel`: as in ternary_linear_spikes, the density being that of the input's spikes.
at::Tensor ternary_conv2d_spikes(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& layout,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups, at::IntArrayRef kernel_size, c10::string_view kernel) {
  const SpikeKernel choice = spike_kernel(kernel, "ternary_conv2d");
  const ConvShape s = conv_shape(x, packed, scale, bias, stride, padding, dilation, groups, kernel_size);
  return conv_from_pixel_bits(x, packed, scale, bias, layout, s, pixel_bits(x, s), choice);
}

// (spikes [B, O, Ho, Wo] float32, their number as a float32 scalar) of LIF neurons on the conv2d of spikes x
// [B, C, H, W] (arguments as in ternary_conv2d_spikes, the kernel chosen as by "auto"): the images are `timesteps`
// timesteps of B / timesteps samples, time-major (image t * B / timesteps + b), and the neurons (tau, v_threshold,
// v_reset, soft_reset, decay_input as in lif_forward, one value each for all; membranes starting at v_reset) see
// the conv's output at each timestep. Equal, bit for bit, to lif_forward on ternary_conv2d_spikes' float32 output,
// which this never writes.
std::tuple<at::Tensor, at::Tensor> ternary_conv2d_spikes_lif(
    const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& layout, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, at::IntArrayRef kernel_size, int64_t timesteps, double tau,
    double v_threshold, double v_reset, bool soft_reset, bool decay_input) {
  const ConvShape s = conv_shape(x, packed, scale, bias, stride, padding, dilation, groups, kernel_size);
  TORCH_CHECK(timesteps >= 1 && s.B % timesteps == 0, "ternary_conv2d_spikes_lif: timesteps = ", timesteps,
              " must divide the batch of x, ", s.B);
  const ConvLif lif{timesteps, {static_cast<float>(tau), static_cast<float>(v_threshold), static_cast<float>(v_reset),
                                soft_reset, decay_input}};
  int64_t spikes = 0;
  at::Tensor y = conv_from_pixel_bits(x, packed, scale, bias, layout, s, pixel_bits(x, s), SpikeKernel::automatic,
                                      &lif, &spikes);
  return {y, at::scalar_tensor(static_cast<double>(spikes), x.options().dtype(at::kFloat))};
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
  check_bias(bias, N, "ternary_linear");
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

namespace tna_cpu {

at::Tensor dense_spike_conv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias, const at::Tensor& layout, const ConvShape& s,
                            const std::vector<uint64_t>& bits) {
  return conv_from_pixel_bits(x, packed, scale, bias, layout, s, bits, SpikeKernel::automatic);
}

}  // namespace tna_cpu

TORCH_LIBRARY_FRAGMENT(tna_cpp, m) {
  m.def("ternary_event_density(str layer) -> float", [](c10::string_view layer) {
    TORCH_CHECK(layer == "linear" || layer == "conv2d",
                "ternary_event_density: layer must be 'linear' or 'conv2d', got '", std::string(layer), "'");
    return layer == "linear" ? kLinearEventDensity : kConvEventDensity;
  });
  m.def("ternary_linear_layout(Tensor packed, int k) -> Tensor");
  m.def("ternary_conv2d_layout(Tensor packed, int in_channels, int groups, int[] kernel_size) -> Tensor");
  m.def(
      "ternary_linear_spikes(Tensor x, Tensor packed, Tensor scale, Tensor? bias, Tensor? layout, str kernel) "
      "-> Tensor");
  m.def(
      "ternary_conv2d_spikes(Tensor x, Tensor packed, Tensor scale, Tensor? bias, Tensor? layout, int[] stride, "
      "int[] padding, int[] dilation, int groups, int[] kernel_size, str kernel) -> Tensor");
  m.def(
      "ternary_conv2d_spikes_lif(Tensor x, Tensor packed, Tensor scale, Tensor? bias, Tensor? layout, int[] stride, "
      "int[] padding, int[] dilation, int groups, int[] kernel_size, int timesteps, float tau, float v_threshold, "
      "float v_reset, bool soft_reset, bool decay_input) -> (Tensor, Tensor)");
  m.def("ternary_linear_dense(Tensor x, Tensor packed, Tensor scale, Tensor? bias) -> Tensor");
  m.def("ternary_linear_grad_input(Tensor grad_y, Tensor packed, Tensor scale, int k) -> Tensor");
}

TORCH_LIBRARY_IMPL(tna_cpp, CPU, m) {
  m.impl("ternary_linear_layout", &ternary_linear_layout);
  m.impl("ternary_conv2d_layout", &ternary_conv2d_layout);
  m.impl("ternary_linear_spikes", &ternary_linear_spikes);
  m.impl("ternary_conv2d_spikes", &ternary_conv2d_spikes);
  m.impl("ternary_conv2d_spikes_lif", &ternary_conv2d_spikes_lif);
  m.impl("ternary_linear_dense", &ternary_linear_dense);
  m.impl("ternary_linear_grad_input", &ternary_linear_grad_input);
}
