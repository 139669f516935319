// Fused multi-step LIF neuron for CPU: forward and backward sweeps over time.
//
// The interface and the exact order of operations are specified in
// tna_kernels/ops/lif/INTERFACE.md; tna_kernels/ops/lif/reference.py is the executable spec.
//
// Layout: x is [T, N] (time-major). Neurons are independent, so the work is split into chunks of
// at most kMaxChunk neurons, processed in parallel with at::parallel_for. Each chunk streams over t
// keeping its state (v, gradients, the per-neuron copy of tau / v_threshold) in local arrays, so the
// inner loops over neurons are index-free and branch-free: gcc -O3 -march=native vectorizes them.
// bf16 / fp16 storage is converted with plain integer code (no function calls) for the same reason.
// Built without -ffast-math (and with -ffp-contract=off) and with the operation order of the
// interface, so that float32 forward results equal the PyTorch reference bit for bit.
// Outputs are computed a cache line at a time into a local line buffer and then copied out, with
// non-temporal stores when the caller says the output is too large to stay in the cache (`stream`).
// The backward either reads the u saved by the forward, or reruns the forward from x chunk by chunk
// into a scratch buffer that stays in L2 (`recompute`), which moves fewer bytes than saving u.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "lif_step.h"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace {

// Neurons per task at most: long rows per time step keep the memory streams efficient, and the
// local state arrays (up to 7 per chunk in the backward) stay in L2.
constexpr int64_t kMaxChunk = 4096;

// Bytes in the widest vector register of the compile target. GCC vector types no wider than this stay
// in registers; a wider one is split, and some of its operations (comparisons) become scalar code.
#if defined(__AVX512F__) && defined(__AVX512BW__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename To, typename From>
inline To bit_as(From v) {
  return __builtin_bit_cast(To, v);
}

// ----------------------------------------------------------------------------------------------
// Storage types: raw element type in memory, state ("acc") type for the arithmetic.
// ----------------------------------------------------------------------------------------------
struct Bf16 {};
struct F16 {};

template <typename S>
struct Storage;

template <>
struct Storage<float> {
  using raw = float;
  using acc = float;
  static constexpr raw kOne = 1.0f;
  static inline acc load(raw v) { return v; }
  static inline raw store(acc v) { return v; }
};

template <>
struct Storage<double> {
  using raw = double;
  using acc = double;
  static constexpr raw kOne = 1.0;
  static inline acc load(raw v) { return v; }
  static inline raw store(acc v) { return v; }
};

template <>
struct Storage<Bf16> {
  using raw = uint16_t;
  using acc = float;
  static constexpr raw kOne = 0x3f80;  // 1.0
  static inline float load(uint16_t v) { return bit_as<float>(static_cast<uint32_t>(v) << 16); }
  // Round to nearest even, NaN -> quiet NaN (same as c10::BFloat16).
  static inline uint16_t store(float f) {
    const uint32_t b = bit_as<uint32_t>(f);
    const uint32_t r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>(f != f ? 0x7fc0u : r);
  }
};

template <>
struct Storage<F16> {
  using raw = uint16_t;
  using acc = float;
  static constexpr raw kOne = 0x3c00;  // 1.0
  // IEEE half -> float, exact (normal, subnormal, inf, NaN), branch-free.
  static inline float load(uint16_t hv) {
    const uint32_t h = hv;
    const uint32_t o = (h & 0x7fffu) << 13;
    const uint32_t e = o & 0x0f800000u;
    const uint32_t normal = o + (112u << 23);
    const uint32_t infnan = o + (224u << 23);
    const uint32_t sub =
        bit_as<uint32_t>(bit_as<float>(o + (113u << 23)) - bit_as<float>(113u << 23));
    uint32_t r = e == 0x0f800000u ? infnan : normal;
    r = e == 0 ? sub : r;
    return bit_as<float>(r | ((h & 0x8000u) << 16));
  }
  // float -> IEEE half, round to nearest even, overflow -> inf, NaN -> quiet NaN, branch-free.
  static inline uint16_t store(float f) {
    const uint32_t b = bit_as<uint32_t>(f);
    const uint32_t sign = b & 0x80000000u;
    const uint32_t x = b ^ sign;
    const uint32_t infnan = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
    const uint32_t sub =
        bit_as<uint32_t>(bit_as<float>(x) + bit_as<float>(126u << 23)) - (126u << 23);
    const uint32_t normal = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;  // 0xc8000000 = (15-127)<<23
    uint32_t o = x < (113u << 23) ? sub : normal;
    o = x >= (143u << 23) ? infnan : o;
    return static_cast<uint16_t>(o | (sign >> 16));
  }
};

template <typename S>
using raw_t = typename Storage<S>::raw;
template <typename S>
using acc_t = typename Storage<S>::acc;

// s = 1 if u is not NaN and its sign bit is clear: recovers the forward's (u >= 0) exactly from a
// rounded u, since rounding keeps the sign and the forward stores -0 as +0. (Seen as unsigned
// integers, the values with a clear sign bit that are not NaN are exactly those <= +inf.)
inline float spike_of(float u) {
  return bit_as<uint32_t>(u) <= 0x7f800000u ? 1.0f : 0.0f;
}
inline double spike_of(double u) {
  return bit_as<uint64_t>(u) <= 0x7ff0000000000000ull ? 1.0 : 0.0;
}

// Select on a loop-invariant flag given as an all-ones / all-zeros bit mask. gcc 12 does not
// vectorize `flag ? a : b` with a scalar bool flag, but it does vectorize the bitwise form.
template <typename A>
using bits_t = std::conditional_t<sizeof(A) == 4, uint32_t, uint64_t>;
template <typename A>
inline bits_t<A> mask_of(bool flag) {
  return flag ? ~bits_t<A>(0) : bits_t<A>(0);
}
template <typename A>
inline A pick(bits_t<A> m, A a, A b) {
  return bit_as<A>((bit_as<bits_t<A>>(a) & m) | (bit_as<bits_t<A>>(b) & ~m));
}

// All ones when u >= 0 (a spike), else (NaN too) all zeros. Written as a mask rather than `u >= 0 ? 1 : 0`:
// without AVX-512's masked arithmetic, and with -ftrapping-math (the default), gcc turns the select into
// a branch, moves the reset's arithmetic into its arms, then cannot if-convert the loop back (the
// arithmetic might trap), and leaves the whole forward scalar, with a mispredicted branch per spike.
template <typename A>
inline bits_t<A> fire_mask(A u) {
  return bits_t<A>(0) - static_cast<bits_t<A>>(u >= A(0));
}

// ----------------------------------------------------------------------------------------------
// Surrogate derivatives, in the operation order of surrogate.py (torch evaluates `c / t` as
// `t.reciprocal() * c` and `t ** 2` as `t * t`). NaN behaviour: comparisons with NaN are false.
// ----------------------------------------------------------------------------------------------
enum Surr : int { kAtan = 0, kSigmoid = 1, kFastSigmoid = 2, kTriangle = 3, kRectangle = 4 };

template <typename A>
struct SurrConst {
  A a;   // alpha
  A c1;  // atan: pi/2*alpha, triangle: alpha^2, rectangle: 0.5/alpha
  A c2;  // atan: alpha/2
  SurrConst(int id, double alpha) : a(static_cast<A>(alpha)), c1(0), c2(0) {
    if (id == kAtan) {
      c1 = static_cast<A>(M_PI / 2 * alpha);
      c2 = static_cast<A>(alpha / 2);
    } else if (id == kTriangle) {
      c1 = static_cast<A>(alpha * alpha);
    } else if (id == kRectangle) {
      c1 = static_cast<A>(0.5 / alpha);
    }
  }
};

// exp for float, Cephes polynomial (about 1 ulp), branch-free so that it vectorizes.
// Overflow gives inf, underflow 0, NaN stays NaN.
inline float exp_f32(float x) {
  // Clamp (NaN becomes 88.8 here and is restored at the end); `a < b ? a : b` maps to vminps.
  float xc = x < 88.8f ? x : 88.8f;
  xc = xc > -104.0f ? xc : -104.0f;
  const float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const int32_t n = static_cast<int32_t>(fn);  // in [-150, 128]: scale in two steps
  const int32_t n1 = n >> 1;
  const int32_t n2 = n - n1;
  const float p1 = bit_as<float>(static_cast<uint32_t>(n1 + 127) << 23);
  const float p2 = bit_as<float>(static_cast<uint32_t>(n2 + 127) << 23);
  const float e = y * p1 * p2;
  return x == x ? e : x;
}
inline double exp_acc(double x) { return std::exp(x); }
inline float exp_acc(float x) { return exp_f32(x); }

template <int SURR, typename A>
inline A surrogate(A u, const SurrConst<A>& k) {
  if constexpr (SURR == kAtan) {
    const A t = k.c1 * u;
    return (A(1) / (A(1) + t * t)) * k.c2;
  } else if constexpr (SURR == kSigmoid) {
    const A sig = A(1) / (A(1) + exp_acc(-(k.a * u)));
    return (k.a * sig) * (A(1) - sig);
  } else if constexpr (SURR == kFastSigmoid) {
    const A p = A(1) + k.a * std::fabs(u);
    return A(1) / (p * p);
  } else if constexpr (SURR == kTriangle) {
    const A peak = k.a - k.c1 * std::fabs(u);
    return peak > A(0) ? peak : A(0);
  } else {
    return A(std::fabs(u) < k.c1) * k.a;  // (cond ? alpha : 0), written so that gcc vectorizes it
  }
}

// Per-chunk copy of a length-P parameter: neuron n uses index (n / inner) % P. Filled run by run
// (one division per chunk, not per neuron).
template <typename A>
inline void gather_param(A* dst, const A* src, int64_t n0, int64_t len, int64_t inner, int64_t P) {
  if (P == 1) {  // a scalar parameter: one fill, not one run per neuron
    std::fill(dst, dst + len, src[0]);
    return;
  }
  int64_t p = (n0 / inner) % P;
  int64_t i = 0;
  int64_t run = inner - n0 % inner;  // neurons left in the current run of index p
  while (i < len) {
    const int64_t m = std::min(run, len - i);
    std::fill(dst + i, dst + i + m, src[p]);
    i += m;
    run = inner;
    p = p + 1 == P ? 0 : p + 1;
  }
}

// Chunk length for N neurons: about four chunks per thread, a multiple of 64, in [64, kMaxChunk].
inline int64_t chunk_for(int64_t N) {
  const int64_t per_task = (N + 4 * at::get_num_threads() - 1) / (4 * at::get_num_threads());
  return std::clamp<int64_t>((per_task + 63) / 64 * 64, 64, kMaxChunk);
}

inline int64_t grain_for(int64_t T, int64_t N, int64_t nchunks) {
  // Run small problems on one thread: parallel overhead beats the work below ~64K elements.
  return T * N < 65536 ? std::max<int64_t>(nchunks, 1) : 1;
}

// Runs body(i, j) for every i in [0, len), one cache line of R elements at a time, and calls
// ahead(i0) before each line and done(i0, n) after it (n elements, kLine but in the last line);
// j = i % (64 / sizeof(R)) is i's lane in its line (the index of a per-lane accumulator or of a line
// buffer, which then stay in vector registers). Each time step of a chunk reads and writes a new piece
// of every [T, N] tensor, far from the previous one, which the hardware prefetchers do not anticipate;
// ahead prefetches the same line of the rows of the next time step, in step with the work.
template <typename R, typename Ahead, typename Body, typename Done>
inline void sweep_lines(int64_t len, Ahead&& ahead, Body&& body, Done&& done) {
  constexpr int64_t kLine = 64 / sizeof(R);
  const int64_t full = len - len % kLine;
  for (int64_t i0 = 0; i0 < full; i0 += kLine) {
    ahead(i0);
#pragma omp simd
    for (int64_t j = 0; j < kLine; ++j) body(i0 + j, j);
    done(i0, kLine);
  }
  if (full < len) {
    ahead(full);
#pragma omp simd
    for (int64_t j = 0; j < len - full; ++j) body(full + j, j);
    done(full, len - full);
  }
}

// Copies a line buffer (64-byte aligned, n <= 64 / sizeof(R) elements) to dst. A whole line is written
// with non-temporal stores when `stream` (dst is then 64-byte aligned): they skip reading the old line
// into the cache before overwriting it, which halves the memory traffic of an output that is too large
// to stay in the cache anyway. Call store_fence() before other threads read what was streamed.
template <typename R>
__attribute__((always_inline)) inline void write_line(R* __restrict dst, const R* __restrict line, int64_t n,
                                                     bool stream) {
  constexpr int64_t kLine = 64 / sizeof(R);
#if defined(__SSE2__)
  if (stream && n == kLine) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_load_si512(line));
#elif defined(__AVX__)
    for (int k = 0; k < 2; ++k) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst) + k,
                          _mm256_load_si256(reinterpret_cast<const __m256i*>(line) + k));
    }
#else
    for (int k = 0; k < 4; ++k) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst) + k, _mm_load_si128(reinterpret_cast<const __m128i*>(line) + k));
    }
#endif
    return;
  }
#endif
  if (n == kLine) {
    std::memcpy(dst, line, 64);
  } else {
    std::memcpy(dst, line, n * sizeof(R));
  }
}

inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Prefetch the cache line holding p[i] (for reading: RW = 0, for writing: RW = 1); p may be null.
// always_inline: out of line, GCC's IPA marks this void function free of side effects and deletes its
// calls, prefetches and all.
template <int RW, typename R>
__attribute__((always_inline)) inline void prefetch_at(const R* p, int64_t i) {
  if (p != nullptr) __builtin_prefetch(p + i, RW, 3);
}

// ----------------------------------------------------------------------------------------------
// Forward
// ----------------------------------------------------------------------------------------------
// The forward over T steps of one chunk of len neurons. x is the chunk's first row, with rows x_step apart (N,
// or 0 for an input repeated over T); spikes likewise with rows N apart; u (SAVE) the first row of the saved
// u = h - v_threshold, with rows u_stride apart.
// v holds the membrane (v_init on entry, v_T on exit), tl / th the chunk's tau / v_threshold.
// SPIKES: write the spikes (the backward's recompute only needs u). stream: write spikes and u with
// non-temporal stores. Returns the number of spikes when COUNT (SPIKES too), else 0: each line of spikes,
// read back from its line buffer, adds its nonzero elements to per-lane counters held in vector
// registers (GCC vector variables of the target's width, kParts to a line; a scalar array of counters
// would go through memory on every line), which are summed after every row. Exact: a lane gets at most
// kMaxChunk / kLine <= 512 per row.
template <typename S, bool DECAY, bool SOFT, bool SPIKES, bool SAVE, bool COUNT>
inline int64_t forward_chunk(const raw_t<S>* __restrict x, raw_t<S>* __restrict spikes, raw_t<S>* __restrict u,
                             int64_t x_step, int64_t N, int64_t u_stride, int64_t T, int64_t len,
                             acc_t<S>* __restrict v, const acc_t<S>* __restrict tl, const acc_t<S>* __restrict th,
                             acc_t<S> vr, bool stream) {
  using A = acc_t<S>;
  using R = raw_t<S>;
  // integers as wide as R: a line of raw spikes, and the counters (negative: a true comparison is -1)
  using Bits = std::conditional_t<sizeof(R) == 2, int16_t, std::conditional_t<sizeof(R) == 4, int32_t, int64_t>>;
  typedef Bits BitsVec __attribute__((vector_size(kVecBytes)));
  constexpr int64_t kLine = 64 / sizeof(R);
  constexpr int kParts = 64 / kVecBytes;  // vectors in a line
  int64_t count = 0;
  alignas(64) R s_line[kLine];
  alignas(64) R u_line[kLine];
  for (int64_t t = 0; t < T; ++t) {
    const R* __restrict xr = x + t * x_step;
    R* __restrict sr = SPIKES ? spikes + t * N : nullptr;
    R* __restrict ur = SAVE ? u + t * u_stride : nullptr;
    const bool more = t + 1 < T;
    const auto ahead = [&](int64_t i) __attribute__((always_inline)) {
      if (more) {
        if (x_step != 0) prefetch_at<0>(xr + x_step, i);
        if (!stream) {
          if constexpr (SPIKES) prefetch_at<1>(sr + N, i);
          if constexpr (SAVE) prefetch_at<1>(ur + u_stride, i);
        }
      }
    };
    const auto body = [&](int64_t i, int64_t j) __attribute__((always_inline)) {
      const A xt = Storage<S>::load(xr[i]);
      const A vv = v[i];
      A h;
      if constexpr (DECAY) {
        h = vv + (xt - (vv - vr)) / tl[i];
      } else {
        h = (vv - (vv - vr) / tl[i]) + xt;
      }
      const A ut = h - th[i];
      // the spike as a bit mask, never as a branch: see fire_mask
      const bits_t<A> fire = fire_mask(ut);
      const A s = bit_as<A>(fire & bit_as<bits_t<A>>(A(1)));
      if constexpr (SOFT) {
        v[i] = h - th[i] * s;
      } else {
        v[i] = h * (A(1) - s) + vr * s;
      }
      if constexpr (SPIKES) {
        using RBits = std::conditional_t<sizeof(R) == 2, uint16_t, bits_t<R>>;
        s_line[j] = bit_as<R>(static_cast<RBits>(bit_as<RBits>(Storage<S>::kOne) & fire));
      }
      if constexpr (SAVE) u_line[j] = Storage<S>::store(ut + A(0));  // + 0 turns -0 into +0
    };
    BitsVec fired[kParts] = {};
    sweep_lines<R>(len, ahead, body, [&](int64_t i0, int64_t n) __attribute__((always_inline)) {
      if constexpr (COUNT) {
        if (n == kLine) {
          for (int k = 0; k < kParts; ++k) {
            BitsVec bits;
            std::memcpy(&bits, reinterpret_cast<const char*>(s_line) + k * kVecBytes, kVecBytes);
            fired[k] += bits != 0;
          }
        } else {
          for (int64_t j = 0; j < n; ++j) count += s_line[j] != R(0);
        }
      }
      if constexpr (SPIKES) write_line(sr + i0, s_line, n, stream);
      if constexpr (SAVE) write_line(ur + i0, u_line, n, stream);
    });
    if constexpr (COUNT) {
      for (int k = 0; k < kParts; ++k) {
        for (int j = 0; j < kVecBytes / int(sizeof(Bits)); ++j) count -= static_cast<int64_t>(fired[k][j]);
      }
    }
  }
  return count;
}

// Returns the number of spikes when COUNT (else 0): the chunks' counts, summed in a fixed order after the
// parallel loop.
template <typename S, bool DECAY, bool SOFT, bool SAVE, bool COUNT>
int64_t forward_impl(const raw_t<S>* __restrict x, int64_t x_step, raw_t<S>* __restrict spikes,
                     raw_t<S>* __restrict u_out, acc_t<S>* __restrict v_last, const acc_t<S>* tau,
                     const acc_t<S>* vth, const acc_t<S>* v_init, double v_reset, int64_t T, int64_t N, int64_t inner,
                     int64_t P, bool stream) {
  using A = acc_t<S>;
  const A vr = static_cast<A>(v_reset);
  const int64_t chunk = chunk_for(N);
  const int64_t nchunks = (N + chunk - 1) / chunk;
  std::vector<int64_t> counts(COUNT ? nchunks : 0);
  at::parallel_for(0, nchunks, grain_for(T, N, nchunks), [&](int64_t c_begin, int64_t c_end) {
    alignas(64) A v[kMaxChunk];
    alignas(64) A tl[kMaxChunk];
    alignas(64) A th[kMaxChunk];
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t n0 = c * chunk;
      const int64_t len = std::min(chunk, N - n0);
      gather_param(tl, tau, n0, len, inner, P);
      gather_param(th, vth, n0, len, inner, P);
      if (v_init != nullptr) {
        std::copy(v_init + n0, v_init + n0 + len, v);
      } else {
        std::fill(v, v + len, vr);
      }
      const int64_t count = forward_chunk<S, DECAY, SOFT, true, SAVE, COUNT>(
          x + n0, spikes + n0, SAVE ? u_out + n0 : nullptr, x_step, N, N, T, len, v, tl, th, vr, stream);
      std::copy(v, v + len, v_last + n0);
      if constexpr (COUNT) counts[c] = count;
    }
    if (stream) store_fence();
  });
  int64_t total = 0;
  for (const int64_t c : counts) total += c;
  return total;
}

// ----------------------------------------------------------------------------------------------
// Backward
// ----------------------------------------------------------------------------------------------
template <typename S>
struct BwdArgs {
  using A = typename Storage<S>::acc;
  using R = typename Storage<S>::raw;
  const R* gs;
  const A* gv_last;  // nullable
  const R* saved;    // u, or x when recompute
  const A* tau;
  const A* vth;
  const A* v_init;  // nullable
  R* gx;
  A* gv_init;
  A* gtau;  // nullable
  A* gvth;  // nullable
  double grad_count;  // added to every element of gs (0 when the count has no gradient)
  double v_reset;
  bool detach;
  bool stream;     // write gx with non-temporal stores
  bool recompute;  // saved is x: rerun the forward, chunk by chunk, into a scratch buffer of u
  double alpha;
  int64_t T, N, inner, P;
};

// Runtime options of the backward, as bit masks for pick(); soft_reset and decay_input are
// template parameters instead (they change most of the loop body).
template <typename A>
struct BwdFlags {
  bits_t<A> detach, use_gv;
};

// One reverse-time step for one chunk. uc holds u[t] in the state dtype on entry and u[t-1] on
// exit (FIRST: t == 0, v_prev comes from v0 instead).
// gs_next, u_next, gx_next: the rows of the next step (t - 1) to prefetch, or null.
// PARAMS: accumulate the per-neuron tau / v_threshold gradients (skipped when neither is needed).
template <typename S, int SURR, bool SOFT, bool DECAY, bool PARAMS, bool FIRST>
inline void backward_step(int64_t len, const raw_t<S>* __restrict gsr, const raw_t<S>* __restrict upr,
                          raw_t<S>* __restrict gxr, const raw_t<S>* gs_next, const raw_t<S>* u_next,
                          const raw_t<S>* gx_next, acc_t<S>* __restrict uc, const acc_t<S>* __restrict v0,
                          const acc_t<S>* __restrict th, const acc_t<S>* __restrict itau, acc_t<S>* __restrict gv, acc_t<S>* __restrict gtau,
                          acc_t<S>* __restrict gvth, const SurrConst<acc_t<S>>& k, acc_t<S> vr,
                          acc_t<S> gc, const BwdFlags<acc_t<S>>& f, bool stream) {
  using A = acc_t<S>;
  using R = raw_t<S>;
  const bits_t<A> detach = f.detach, use_gv = f.use_gv;
  alignas(64) R gx_line[64 / sizeof(R)];
  const auto ahead = [&](int64_t i) __attribute__((always_inline)) {
    prefetch_at<0>(gs_next, i);
    prefetch_at<0>(u_next, i);
    if (!stream) prefetch_at<1>(gx_next, i);
  };
  const auto body = [&](int64_t i, int64_t j) __attribute__((always_inline)) {
    const A u = uc[i];
    const A vth = th[i];
    const A h = u + vth;
    const A s = spike_of(u);
    const A sg = surrogate<SURR>(u, k);
    const A gsg = (Storage<S>::load(gsr[i]) + gc) * sg;  // gc: d count / d s = 1
    // detach_reset drops the sg terms of dv/dh and dv/dvth.
    A dvdh, dvdvth;
    if constexpr (SOFT) {
      const A vsg = vth * sg;
      dvdh = pick(detach, A(1), A(1) - vsg);
      dvdvth = pick(detach, -s, -s + vsg);
    } else {
      dvdh = pick(detach, A(1) - s, (A(1) - s) + (vr - h) * sg);
      dvdvth = pick(detach, A(0), -(vr - h) * sg);
    }
    const A g = gv[i];
    // Without grad_v_last the last step has no v path at all (as in autograd): skip it, so a
    // NaN / inf in dv/dh there does not leak in through 0 * NaN.
    const A gh = pick(use_gv, gsg + g * dvdh, gsg);
    const A up = FIRST ? A(0) : Storage<S>::load(upr[i]);
    if constexpr (PARAMS) {
      gvth[i] = gvth[i] + pick(use_gv, -gsg + g * dvdvth, -gsg);
      A vp;
      if constexpr (FIRST) {
        vp = v0[i];
      } else {
        const A hp = up + vth;
        const A sp = spike_of(up);
        if constexpr (SOFT) {
          vp = hp - vth * sp;
        } else {
          vp = hp * (A(1) - sp) + vr * sp;
        }
      }
      // d h / d tau = -(h - v_prev) / tau (decay_input) or (v_prev - vr) / tau^2.
      if constexpr (DECAY) {
        gtau[i] = gtau[i] + -(h - vp) * (gh * itau[i]);
      } else {
        gtau[i] = gtau[i] + gh * ((vp - vr) * itau[i] * itau[i]);
      }
    }
    if constexpr (!FIRST) uc[i] = up;
    gx_line[j] = Storage<S>::store(DECAY ? gh * itau[i] : gh);
    gv[i] = gh * (A(1) - itau[i]);
  };
  sweep_lines<R>(len, ahead, body, [&](int64_t i0, int64_t n) __attribute__((always_inline)) {
    write_line(gxr + i0, gx_line, n, stream);
  });
}

// Chunk length for the backward's recompute: the chunk's T rows of u (its scratch buffer) stay within
// 512 KiB, in L2, from the forward rerun to the reverse sweep.
inline int64_t recompute_chunk_for(int64_t T, int64_t N, int64_t element_size) {
  const int64_t fit = (int64_t(512) << 10) / (std::max<int64_t>(T, 1) * element_size) / 64 * 64;
  return std::clamp<int64_t>(fit, 64, chunk_for(N));
}

template <typename S, int SURR, bool SOFT, bool DECAY, bool PARAMS>
void backward_impl(const BwdArgs<S>& a) {
  using A = acc_t<S>;
  using R = raw_t<S>;
  const A vr = static_cast<A>(a.v_reset);
  const A gc = static_cast<A>(a.grad_count);
  const SurrConst<A> k(SURR, a.alpha);
  const int64_t T = a.T, N = a.N;
  const int64_t chunk = a.recompute ? recompute_chunk_for(T, N, sizeof(R)) : chunk_for(N);
  const int64_t nchunks = (N + chunk - 1) / chunk;
  at::parallel_for(0, nchunks, grain_for(T, N, nchunks), [&](int64_t c_begin, int64_t c_end) {
    alignas(64) A th[kMaxChunk];
    alignas(64) A itau[kMaxChunk];
    alignas(64) A uc[kMaxChunk];
    alignas(64) A v0[kMaxChunk];
    alignas(64) A gv[kMaxChunk];
    alignas(64) A gtau[kMaxChunk];
    alignas(64) A gvth[kMaxChunk];
    std::vector<R> scratch(a.recompute ? T * chunk : 0);  // u of the chunk, [T, len]
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t n0 = c * chunk;
      const int64_t len = std::min(chunk, N - n0);
      gather_param(itau, a.tau, n0, len, a.inner, a.P);
      gather_param(th, a.vth, n0, len, a.inner, a.P);
      if (a.v_init != nullptr) {
        std::copy(a.v_init + n0, a.v_init + n0 + len, v0);
      } else {
        std::fill(v0, v0 + len, vr);
      }
      // u[t] of the chunk is row t of u_rows, rows u_stride apart
      const R* u_rows = a.saved + n0;
      int64_t u_stride = N;
      if (a.recompute) {  // itau holds tau and gv the membrane until they are set below
        std::copy(v0, v0 + len, gv);
        forward_chunk<S, DECAY, SOFT, false, true, false>(a.saved + n0, nullptr, scratch.data(), N, N, len, T, len,
                                                          gv, itau, th, vr, false);
        u_rows = scratch.data();
        u_stride = len;
      }
      for (int64_t i = 0; i < len; ++i) itau[i] = A(1) / itau[i];
      if (a.gv_last != nullptr) {
        std::copy(a.gv_last + n0, a.gv_last + n0 + len, gv);
      } else {
        std::fill(gv, gv + len, A(0));
      }
      std::fill(gtau, gtau + len, A(0));
      std::fill(gvth, gvth + len, A(0));
      if (T > 0) {
        const R* ur = u_rows + (T - 1) * u_stride;
        for (int64_t i = 0; i < len; ++i) uc[i] = Storage<S>::load(ur[i]);
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const BwdFlags<A> f{mask_of<A>(a.detach), mask_of<A>(a.gv_last != nullptr || t < T - 1)};
        const R* gsr = a.gs + t * N + n0;
        R* gxr = a.gx + t * N + n0;
        // rows of step t - 1, prefetched during this step
        const R* gs_next = t >= 1 ? gsr - N : nullptr;
        const R* u_next = t >= 2 ? u_rows + (t - 2) * u_stride : nullptr;
        const R* gx_next = t >= 1 ? gxr - N : nullptr;
        if (t > 0) {
          backward_step<S, SURR, SOFT, DECAY, PARAMS, false>(len, gsr, u_rows + (t - 1) * u_stride, gxr, gs_next,
                                                             u_next, gx_next, uc, v0, th, itau, gv, gtau, gvth, k, vr,
                                                             gc, f, a.stream);
        } else {
          backward_step<S, SURR, SOFT, DECAY, PARAMS, true>(len, gsr, nullptr, gxr, nullptr, nullptr, nullptr, uc, v0,
                                                            th, itau, gv, gtau, gvth, k, vr, gc, f, a.stream);
        }
      }
      std::copy(gv, gv + len, a.gv_init + n0);
      if (a.gtau != nullptr) std::copy(gtau, gtau + len, a.gtau + n0);
      if (a.gvth != nullptr) std::copy(gvth, gvth + len, a.gvth + n0);
    }
    if (a.stream) store_fence();
  });
}

// Whether every row of the [T, N] output t starts on a cache line (as non-temporal stores need).
bool aligned_rows(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 64 == 0 && (t.size(1) * t.element_size()) % 64 == 0;
}

// ----------------------------------------------------------------------------------------------
// Dispatch and argument checks
// ----------------------------------------------------------------------------------------------
at::ScalarType state_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename F>
void dispatch_storage(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(Bf16{}); break;
    case at::kHalf: f(F16{}); break;
    default: TORCH_CHECK(false, "lif: x must be float32, bfloat16, float16 or float64, got ", t);
  }
}

void check_params(const at::Tensor& x, const at::Tensor& tau, const at::Tensor& vth,
                  const std::optional<at::Tensor>& v_init, int64_t inner) {
  const auto sd = state_dtype(x.scalar_type());
  const int64_t N = x.size(1);
  TORCH_CHECK(inner >= 1, "lif: inner must be >= 1, got ", inner);
  for (const auto* p : {&tau, &vth}) {
    const char* name = p == &tau ? "tau" : "v_threshold";
    TORCH_CHECK(p->device().is_cpu(), "lif: ", name, " must be a CPU tensor");
    TORCH_CHECK(p->dim() == 1 && p->numel() >= 1 && p->is_contiguous(), "lif: ", name,
                " must be a contiguous 1-D tensor of length P >= 1, got shape ", p->sizes());
    TORCH_CHECK(p->scalar_type() == sd, "lif: ", name, " must have the state dtype ", sd,
                " (x is ", x.scalar_type(), "), got ", p->scalar_type());
  }
  TORCH_CHECK(tau.numel() == vth.numel(), "lif: tau and v_threshold must have the same length, got ",
              tau.numel(), " and ", vth.numel());
  if (v_init.has_value()) {
    const auto& v = *v_init;
    TORCH_CHECK(v.device().is_cpu(), "lif: v_init must be a CPU tensor");
    TORCH_CHECK(v.dim() == 1 && v.size(0) == N && v.is_contiguous(),
                "lif: v_init must be a contiguous tensor of shape [N] = [", N, "], got ", v.sizes());
    TORCH_CHECK(v.scalar_type() == sd, "lif: v_init must have the state dtype ", sd, ", got ",
                v.scalar_type());
  }
}

// x [T, N] contiguous or, where `repeated` may be, one contiguous row repeated over T (stride 0 along T).
void check_x(const at::Tensor& x, const char* name, bool repeated = false) {
  TORCH_CHECK(x.dim() == 2, "lif: ", name, " must be 2-D [T, N], got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous() || (repeated && x.stride(0) == 0 && x[0].is_contiguous()), "lif: ", name,
              repeated ? " must be contiguous or a contiguous row repeated over T (stride 0 along T)"
                       : " must be contiguous");
  TORCH_CHECK(x.device().is_cpu(), "lif: ", name, " must be a CPU tensor");
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, "lif: ", name,
              " must be float32, bfloat16, float16 or float64, got ", t);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_forward(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_threshold,
    const std::optional<at::Tensor>& v_init, double v_reset, bool soft_reset, bool decay_input,
    int64_t inner, bool save_state, bool count_spikes, bool stream) {
  check_x(x, "x", /*repeated=*/true);
  check_params(x, tau, v_threshold, v_init, inner);
  const int64_t T = x.size(0), N = x.size(1), P = tau.numel();
  const auto sd = state_dtype(x.scalar_type());
  at::Tensor spikes = at::empty({T, N}, x.options());
  at::Tensor v_last = at::empty({N}, x.options().dtype(sd));
  at::Tensor u = save_state ? at::empty({T, N}, x.options()) : at::empty({0}, x.options());
  int64_t total = 0;
  stream = stream && aligned_rows(spikes) && (!save_state || aligned_rows(u));

  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    using R = typename Storage<S>::raw;
    using A = typename Storage<S>::acc;
    const R* xp = reinterpret_cast<const R*>(x.data_ptr());
    R* sp = reinterpret_cast<R*>(spikes.data_ptr());
    R* up = save_state ? reinterpret_cast<R*>(u.data_ptr()) : nullptr;
    A* vl = v_last.data_ptr<A>();
    const A* tp = tau.data_ptr<A>();
    const A* hp = v_threshold.data_ptr<A>();
    const A* vi = v_init.has_value() ? v_init->data_ptr<A>() : nullptr;
    auto run = [&](auto decay_c, auto soft_c, auto save_c, auto count_c) {
      total = forward_impl<S, decltype(decay_c)::value, decltype(soft_c)::value, decltype(save_c)::value,
                           decltype(count_c)::value>(xp, x.stride(0), sp, up, vl, tp, hp, vi, v_reset, T, N, inner,
                                                     P, stream);
    };
    using TT = std::true_type;
    using FF = std::false_type;
    auto run3 = [&](auto decay_c, auto soft_c, auto save_c) {
      if (count_spikes) run(decay_c, soft_c, save_c, TT{}); else run(decay_c, soft_c, save_c, FF{});
    };
    auto run2 = [&](auto decay_c, auto soft_c) {
      if (save_state) run3(decay_c, soft_c, TT{}); else run3(decay_c, soft_c, FF{});
    };
    auto run1 = [&](auto decay_c) {
      if (soft_reset) run2(decay_c, TT{}); else run2(decay_c, FF{});
    };
    if (decay_input) run1(TT{}); else run1(FF{});
  });
  // the exact count, rounded once to the state dtype
  at::Tensor count = count_spikes ? at::scalar_tensor(static_cast<double>(total), x.options().dtype(sd))
                                  : at::empty({0}, x.options().dtype(sd));
  return {spikes, v_last, u, count};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_backward(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
    const std::optional<at::Tensor>& grad_count, const at::Tensor& saved, bool recompute,
    const at::Tensor& tau, const at::Tensor& v_threshold, const std::optional<at::Tensor>& v_init,
    double v_reset, bool soft_reset, bool decay_input, bool detach_reset, int64_t surrogate_id,
    double alpha, int64_t inner, bool need_tau_grad, bool need_vth_grad, bool stream) {
  const char* name = recompute ? "x" : "u";
  check_x(grad_spikes, "grad_spikes");
  check_x(saved, name);
  TORCH_CHECK(saved.sizes() == grad_spikes.sizes(), "lif: ", name, " must have the shape of grad_spikes ",
              grad_spikes.sizes(), recompute ? "" : " (was the forward run with save_state=True?)", ", got ",
              saved.sizes());
  TORCH_CHECK(saved.scalar_type() == grad_spikes.scalar_type(), "lif: ", name,
              " and grad_spikes must have the same dtype, got ", saved.scalar_type(), " and ",
              grad_spikes.scalar_type());
  TORCH_CHECK(surrogate_id >= 0 && surrogate_id <= 4, "lif: surrogate id must be in 0..4, got ", surrogate_id);
  check_params(saved, tau, v_threshold, v_init, inner);
  const at::Tensor& u = saved;  // dtype, shape and options: the same for u and x
  const int64_t T = u.size(0), N = u.size(1), P = tau.numel();
  const auto sd = state_dtype(u.scalar_type());
  if (grad_v_last.has_value()) {
    const auto& g = *grad_v_last;
    TORCH_CHECK(g.device().is_cpu(), "lif: grad_v_last must be a CPU tensor");
    TORCH_CHECK(g.dim() == 1 && g.size(0) == N && g.is_contiguous(),
                "lif: grad_v_last must be a contiguous tensor of shape [N] = [", N, "], got ", g.sizes());
    TORCH_CHECK(g.scalar_type() == sd, "lif: grad_v_last must have the state dtype ", sd, ", got ",
                g.scalar_type());
  }
  if (grad_count.has_value()) {
    const auto& g = *grad_count;
    TORCH_CHECK(g.device().is_cpu() && g.dim() == 0 && g.scalar_type() == sd,
                "lif: grad_count must be a 0-d CPU tensor of the state dtype ", sd, ", got shape ", g.sizes(),
                " and dtype ", g.scalar_type());
  }
  const auto sopt = u.options().dtype(sd);
  at::Tensor grad_x = at::empty({T, N}, u.options());
  at::Tensor grad_v_init = at::empty({N}, sopt);
  at::Tensor grad_tau = need_tau_grad ? at::empty({N}, sopt) : at::empty({0}, sopt);
  at::Tensor grad_vth = need_vth_grad ? at::empty({N}, sopt) : at::empty({0}, sopt);

  dispatch_storage(u.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    using R = typename Storage<S>::raw;
    using A = typename Storage<S>::acc;
    BwdArgs<S> a;
    a.gs = reinterpret_cast<const R*>(grad_spikes.data_ptr());
    a.gv_last = grad_v_last.has_value() ? grad_v_last->data_ptr<A>() : nullptr;
    a.saved = reinterpret_cast<const R*>(saved.data_ptr());
    a.recompute = recompute;
    a.tau = tau.data_ptr<A>();
    a.vth = v_threshold.data_ptr<A>();
    a.v_init = v_init.has_value() ? v_init->data_ptr<A>() : nullptr;
    a.gx = reinterpret_cast<R*>(grad_x.data_ptr());
    a.gv_init = grad_v_init.data_ptr<A>();
    a.gtau = need_tau_grad ? grad_tau.data_ptr<A>() : nullptr;
    a.gvth = need_vth_grad ? grad_vth.data_ptr<A>() : nullptr;
    a.grad_count = grad_count.has_value() ? static_cast<double>(grad_count->item<A>()) : 0.0;
    a.v_reset = v_reset;
    a.detach = detach_reset;
    a.stream = stream && aligned_rows(grad_x);
    a.alpha = alpha;
    a.T = T;
    a.N = N;
    a.inner = inner;
    a.P = P;
    auto run_params = [&](auto surr_c, auto soft_c, auto decay_c) {
      constexpr int SURR = decltype(surr_c)::value;
      constexpr bool SOFT = decltype(soft_c)::value, DECAY = decltype(decay_c)::value;
      if (need_tau_grad || need_vth_grad) backward_impl<S, SURR, SOFT, DECAY, true>(a);
      else backward_impl<S, SURR, SOFT, DECAY, false>(a);
    };
    using TT = std::true_type;
    using FF = std::false_type;
    auto run = [&](auto surr_c) {
      if (soft_reset) {
        if (decay_input) run_params(surr_c, TT{}, TT{}); else run_params(surr_c, TT{}, FF{});
      } else {
        if (decay_input) run_params(surr_c, FF{}, TT{}); else run_params(surr_c, FF{}, FF{});
      }
    };
    switch (surrogate_id) {
      case kAtan: run(std::integral_constant<int, kAtan>{}); break;
      case kSigmoid: run(std::integral_constant<int, kSigmoid>{}); break;
      case kFastSigmoid: run(std::integral_constant<int, kFastSigmoid>{}); break;
      case kTriangle: run(std::integral_constant<int, kTriangle>{}); break;
      default: run(std::integral_constant<int, kRectangle>{}); break;
    }
  });
  return {grad_x, grad_v_init, grad_tau, grad_vth};
}

}  // namespace

namespace tna_cpu {

int64_t lif_step(const float* x, float* spikes, float* v, const float* tau, const float* v_threshold,
                 const LifParams& p, int64_t len) {
  const auto run = [&](auto decay_c, auto soft_c) {
    return forward_chunk<float, decltype(decay_c)::value, decltype(soft_c)::value, true, false, true>(
        x, spikes, nullptr, 0, len, 0, 1, len, v, tau, v_threshold, p.v_reset, false);
  };
  using TT = std::true_type;
  using FF = std::false_type;
  if (p.decay_input) return p.soft_reset ? run(TT{}, TT{}) : run(TT{}, FF{});
  return p.soft_reset ? run(FF{}, TT{}) : run(FF{}, FF{});
}

}  // namespace tna_cpu

TORCH_LIBRARY(tna_cpp, m) {
  m.def(
      "lif_forward(Tensor x, Tensor tau, Tensor v_threshold, Tensor? v_init, float v_reset, "
      "bool soft_reset, bool decay_input, int inner, bool save_state, bool count_spikes, bool stream) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lif_backward(Tensor grad_spikes, Tensor? grad_v_last, Tensor? grad_count, Tensor saved, bool recompute, "
      "Tensor tau, Tensor v_threshold, Tensor? v_init, float v_reset, bool soft_reset, bool decay_input, "
      "bool detach_reset, int surrogate, float alpha, int inner, bool need_tau_grad, bool need_vth_grad, bool stream) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tna_cpp, CPU, m) {
  m.impl("lif_forward", &lif_forward);
  m.impl("lif_backward", &lif_backward);
}
