"""Triton kernels for ternary linear and conv2d on packed 2-bit weights (format version 1).

Host functions (see their docstrings for shapes and dtypes):

- ``ternary_linear(x, packed, scale, bias, spikes)``: ``y [M, N] = x [M, K] @ W^T + bias``.
- ``ternary_linear_grad_input(grad_y, packed, scale, k)``: ``grad_x [M, K] = grad_y [M, N] @ W``.
- ``ternary_conv2d(x, packed, scale, bias, stride, padding, dilation, groups, kernel_size, spikes)``:
  an implicit GEMM (the im2col tile is gathered in registers, never stored) with
  ``M = B * H_out * W_out``, ``N = O / groups`` and ``K = C / groups * kh * kw`` in (c, kh, kw) order.

The int32 words of ``format.py`` are read as they are stored and unpacked in registers (shift and
mask); no code or weight matrix is ever written to memory. Arithmetic follows ``reference.py``:

- spike input (``spikes=True`` or an integer / bool x, values 0 or 1): the x tile is converted to
  int8 and multiplied with int8 code tiles by ``tl.dot`` into int32 accumulators, which is exact. A
  symmetric scale needs one accumulator ``acc = x @ codes^T`` (= acc_p - acc_n); an asymmetric one
  keeps ``acc_p`` (codes == 1) and ``acc_n`` (codes == -1). The float32 finish is the reference's,
  operation by operation: ``float(acc) * scale`` or ``float(acc_p) * scale[0] - float(acc_n) *
  scale[1]``, then ``+ bias``, then one rounding to the output dtype. Kernels are launched with
  ``enable_fp_fusion=False`` so that no multiply-add is contracted into an FMA, and bfloat16 is
  rounded to nearest-even by hand (the interpreter's own float32 -> bfloat16 cast truncates), so
  the result equals the reference bit for bit.
- real input (float32 / float16 / bfloat16 x): codes are converted to x's dtype (exact; for the
  16-bit types by bit construction, ``_codes_as``, with no int-to-float conversion) and
  ``tl.dot`` accumulates in float32 (IEEE fp32 products for float32 x, not TF32); the scales (two
  accumulators for an asymmetric scale) and the bias are applied once at the end.

Linear has two launch paths: ``M <= SMALL_M`` (a weight-bound GEMV: ``BLOCK_M = 16``, narrow N
tiles and split-K, where each split writes its partial accumulators to a workspace and a second
kernel sums them in a fixed order, so the result is deterministic and, for spikes, exact) and a
large-M tiled path with grouped tile order for L2 reuse. Both are autotuned, keyed on power-of-two
buckets of M, N and K and on the path's constexpr flags. Under ``TRITON_INTERPRET=1`` (CPU tensors,
no GPU) each path has one small config, and bfloat16 dots run on float32 copies because the
interpreter's dot does not understand bfloat16 (so the bfloat16 code construction runs on a GPU only,
``pytest -m gpu``; the float16 one runs in the CPU tests too).

Spike values are not checked here (a check would synchronize the GPU): x must hold only 0 and 1.
"""
import contextlib
import os

import torch
import triton
import triton.language as tl

from .format import CODES_PER_WORD, check_packed, check_scale, describe, int_pair

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SMALL_M = 16
"""Largest M that takes the small-M (GEMV, split-K) path of ``ternary_linear``."""

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SPIKE_ONLY_DTYPES = (torch.uint8, torch.int8, torch.bool)
_WORD = tl.constexpr(CODES_PER_WORD)
_ZERO_WORD = tl.constexpr(0x55555555)
"""A word of 16 codes equal to 0 (stored value 1), loaded where a word lies past the row's end."""
_MIN_SPLIT_K = 32 if _INTERPRET else 512
"""Fewest codes of K one split-K program handles when the split is chosen automatically."""
_MAX_SPLIT_K = 64


# Float32 x runs IEEE float32 dots on the FMA units, with both tiles in registers: its launches take only
# the configs of at most _FP32_TILE multiply-adds per K step, among them the float32-only shapes below; the
# other launches (int8 and 16-bit dots, on tensor cores) take every config but those. On sm_90 the larger
# tiles spill kilobytes of registers a thread in float32, these at most a few hundred bytes
# (``benchmarks/hopper_compile.py``).
_FP32_TILE = 64 * 64 * 16
_FP32_SMALL_M = [(32, 32), (64, 32), (16, 64)]
"""(BLOCK_N, BLOCK_K) of the float32-only small-M configs (BLOCK_M = 16)."""
_FP32_TILED = [(32, 32, 32, 4, 4), (32, 64, 32, 4, 4), (64, 32, 32, 4, 4), (16, 64, 32, 4, 4)]
"""(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of the float32-only tiled configs."""
_FP32_ONLY = {(16, n, k) for n, k in _FP32_SMALL_M} | {(m, n, k) for m, n, k, _, _ in _FP32_TILED}


def _small_m_configs() -> list:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 1}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": 16, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 1},
                      num_warps=4, num_stages=num_stages)
        for block_n, block_k in [(n, k) for n in (32, 64, 128) for k in (64, 128, 256)] + _FP32_SMALL_M
        for num_stages in (3, 4)
    ]


def _tiled_configs() -> list:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4)]
    shapes = [
        (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4), (64, 64, 128, 4, 4), (128, 128, 128, 8, 3), (32, 64, 128, 4, 4),
    ]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in shapes + _FP32_TILED
    ]


def _grad_input_configs() -> list:
    """BLOCK_N is the reduction tile (output channels), BLOCK_K the grad_x column tile."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4)]
    shapes = [
        (16, 128, 64, 4, 4), (16, 64, 128, 4, 4), (64, 64, 128, 4, 4), (128, 64, 128, 8, 3),
        (128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 256, 8, 3),
    ]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in shapes + _FP32_TILED
    ]


def _prune_fp32_configs(configs, named_args, **kwargs) -> list:
    """The configs for a float32 launch (at most ``_FP32_TILE`` per K step) or for any other (every
    config but the float32-only shapes)."""
    fp32 = kwargs.get("PRECISION") == "ieee" and not kwargs.get("SPIKES", False)
    tiles = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in configs]
    if fp32:
        return [c for c, (m, n, k) in zip(configs, tiles) if m * n * k <= _FP32_TILE]
    return [c for c, tile in zip(configs, tiles) if tile not in _FP32_ONLY]


_PRUNE = {"early_config_prune": _prune_fp32_configs}
_KEY = ["m_bucket", "n_bucket", "k_bucket", "SPIKES", "ASYM", "HAS_BIAS", "SPLIT"]


@triton.jit
def _tile_index(i_pid, num_m, num_n, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program ``i_pid``, GROUP_M row tiles at a time (L2 reuse)."""
    n_group = GROUP_M * num_n
    i_group = i_pid // n_group
    first_m = i_group * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    i_m = first_m + (i_pid % n_group) % group_m
    i_n = (i_pid % n_group) // group_m
    return i_m, i_n


@triton.jit
def _load_codes(packed, o_r, m_r, o_w, n_words, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """int32 codes in {-1, 0, 1} ``[BLOCK_R, BLOCK_K]`` of packed rows ``o_r`` and words ``o_w``
    (``BLOCK_K // 16`` consecutive words); rows and words out of range read as zero codes."""
    p_w = packed + o_r[:, None] * n_words + o_w[None, :]
    b_w = tl.load(p_w, mask=m_r[:, None] & (o_w < n_words)[None, :], other=_ZERO_WORD)
    o_shift = 2 * tl.arange(0, 16)
    b_c = (b_w[:, :, None] >> o_shift[None, None, :]) & 3
    return tl.reshape(b_c, (BLOCK_R, BLOCK_K)) - 1


@triton.jit
def _load_codes_t(packed, o_r, m_r, o_w, n_words, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """The transpose of ``_load_codes``: int32 codes ``[BLOCK_K, BLOCK_R]``."""
    p_w = packed + o_w[:, None] + o_r[None, :] * n_words
    b_w = tl.load(p_w, mask=(o_w < n_words)[:, None] & m_r[None, :], other=_ZERO_WORD)
    o_shift = 2 * tl.arange(0, 16)
    b_c = (b_w[:, None, :] >> o_shift[None, :, None]) & 3
    return tl.reshape(b_c, (BLOCK_K, BLOCK_R)) - 1


@triton.jit
def _spike_int8(b_x):
    """0/1 values of any dtype as int8 (floats go through float32: bfloat16 has no direct cast)."""
    if b_x.dtype.is_floating():
        b_x = b_x.to(tl.float32)
    return b_x.to(tl.int8)


@triton.jit
def _accumulate(b_x, b_c, b_acc, b_acc_n, SPIKES: tl.constexpr, ASYM: tl.constexpr, DOT_F32: tl.constexpr,
                PRECISION: tl.constexpr):
    """Add ``b_x [BM, BK] @ f(b_c) [BK, BN]`` to the accumulators: codes (symmetric), or codes == 1
    into ``b_acc`` and codes == -1 into ``b_acc_n`` (asymmetric). int8 -> int32 for spikes."""
    if SPIKES:
        b_xs = _spike_int8(b_x)
        if ASYM:
            b_acc = tl.dot(b_xs, (b_c > 0).to(tl.int8), b_acc, out_dtype=tl.int32)
            b_acc_n = tl.dot(b_xs, (b_c < 0).to(tl.int8), b_acc_n, out_dtype=tl.int32)
        else:
            b_acc = tl.dot(b_xs, b_c.to(tl.int8), b_acc, out_dtype=tl.int32)
    else:
        if DOT_F32:
            b_xf = b_x.to(tl.float32)
        else:
            b_xf = b_x
        if ASYM:
            b_acc = tl.dot(b_xf, (b_c > 0).to(b_xf.dtype), b_acc, input_precision=PRECISION)
            b_acc_n = tl.dot(b_xf, (b_c < 0).to(b_xf.dtype), b_acc_n, input_precision=PRECISION)
        else:
            b_acc = tl.dot(b_xf, _codes_as(b_c, b_xf.dtype), b_acc, input_precision=PRECISION)
    return b_acc, b_acc_n


@triton.jit
def _codes_as(b_c, dtype: tl.constexpr):
    """int32 codes in {-1, 0, 1} as ``dtype``, exactly. A 16-bit float is built without an int-to-float
    conversion: the 2-bit field ``code + 1`` goes into the low mantissa bits of 128 (bfloat16) or 1024
    (float16), whose mantissa step is 1, and 129 or 1025 is subtracted (two codes per packed add)."""
    if dtype == tl.bfloat16:
        b_v = ((b_c + 1) | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True) - 129.0
    elif dtype == tl.float16:
        b_v = ((b_c + 1) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1025.0
    else:
        b_v = b_c.to(dtype)
    return b_v


@triton.jit
def _scale_bias(b_acc, b_acc_n, scale, bias, o_c, m_c, n_channels, ASYM: tl.constexpr, HAS_BIAS: tl.constexpr):
    """float32 ``acc * scale[c] (+ bias[c])`` with the channel ``o_c`` along axis 1, in the reference's
    order: each accumulator rounded to float32, multiplied, (subtracted,) then the bias added."""
    if ASYM:
        b_sp = tl.load(scale + o_c, mask=m_c, other=0.)
        b_sn = tl.load(scale + n_channels + o_c, mask=m_c, other=0.)
        b_y = b_acc.to(tl.float32) * b_sp[None, :] - b_acc_n.to(tl.float32) * b_sn[None, :]
    else:
        b_s = tl.load(scale + o_c, mask=m_c, other=0.)
        b_y = b_acc.to(tl.float32) * b_s[None, :]
    if HAS_BIAS:
        b_y = b_y + tl.load(bias + o_c, mask=m_c, other=0.)[None, :]
    return b_y


@triton.jit
def _round_to(b_y, dtype: tl.constexpr):
    """float32 -> dtype, rounded to nearest-even (done by hand for bfloat16, whose cast truncates
    under the interpreter; the hand-rounded value is exact in bfloat16, so any cast keeps it)."""
    if dtype == tl.bfloat16:
        b_bits = b_y.to(tl.int32, bitcast=True)
        b_bits = (b_bits + (0x7FFF + ((b_bits >> 16) & 1))) & -65536
        b_y = b_bits.to(tl.float32, bitcast=True)
    return b_y.to(dtype)


@triton.jit
def _partial_offsets(i_s, o_plane, o_mn, ASYM: tl.constexpr):
    """Offsets in ``partial [n_split, 1 or 2, M, N]`` of split ``i_s``'s positive (or only)
    accumulator plane; the negative plane follows ``o_plane`` elements later."""
    if ASYM:
        return tl.cast(2 * i_s, tl.int64) * o_plane + o_mn
    return tl.cast(i_s, tl.int64) * o_plane + o_mn


@triton.jit(do_not_specialize=["M"])
def ternary_linear_fwd_kernel(
    x,
    packed,
    scale,
    bias,
    y,
    partial,
    M,
    N,
    K,
    n_words,
    k_split,
    m_bucket,
    n_bucket,
    k_bucket,
    SPIKES: tl.constexpr,
    ASYM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """One ``[BLOCK_M, BLOCK_N]`` tile of y over the K range ``[i_s * k_split, (i_s + 1) * k_split)``.
    SPLIT: store the raw accumulators to ``partial [n_split, 1 or 2, M, N]`` instead of finishing."""
    i_m, i_n = _tile_index(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    i_s = tl.program_id(1)
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < M
    m_n = o_n < N

    if SPIKES:
        b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    b_acc_n = tl.zeros_like(b_acc)

    k_lo = i_s * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        b_x = tl.load(x + o_m[:, None] * K + o_k[None, :], mask=m_m[:, None] & (o_k < k_hi)[None, :], other=0)
        o_w = k0 // _WORD + tl.arange(0, BLOCK_K // _WORD)
        b_c = _load_codes_t(packed, o_n, m_n, o_w, n_words, BLOCK_N, BLOCK_K)
        b_acc, b_acc_n = _accumulate(b_x, b_c, b_acc, b_acc_n, SPIKES, ASYM, DOT_F32, PRECISION)

    o_mn = o_m[:, None] * N + o_n[None, :]
    m_mn = m_m[:, None] & m_n[None, :]
    if SPLIT:
        o_plane = tl.cast(M, tl.int64) * N
        p_acc = partial + _partial_offsets(i_s, o_plane, o_mn, ASYM)
        tl.store(p_acc, b_acc, mask=m_mn)
        if ASYM:
            tl.store(p_acc + o_plane, b_acc_n, mask=m_mn)
    else:
        b_y = _scale_bias(b_acc, b_acc_n, scale, bias, o_n, m_n, N, ASYM, HAS_BIAS)
        tl.store(y + o_mn, _round_to(b_y, y.dtype.element_ty), mask=m_mn)


@triton.jit(do_not_specialize=["M", "n_split"])
def ternary_linear_finish_kernel(
    partial,
    scale,
    bias,
    y,
    M,
    N,
    n_split,
    ASYM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Sum the split-K partial accumulators in split order, then scale, add the bias and round."""
    i_m, i_n = tl.program_id(0), tl.program_id(1)
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    m_mn = (o_m < M)[:, None] & m_n[None, :]
    o_mn = o_m[:, None] * N + o_n[None, :]
    o_plane = tl.cast(M, tl.int64) * N

    b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=partial.dtype.element_ty)
    b_acc_n = tl.zeros_like(b_acc)
    for i_s in range(n_split):
        p_acc = partial + _partial_offsets(i_s, o_plane, o_mn, ASYM)
        b_acc += tl.load(p_acc, mask=m_mn, other=0)
        if ASYM:
            b_acc_n += tl.load(p_acc + o_plane, mask=m_mn, other=0)

    b_y = _scale_bias(b_acc, b_acc_n, scale, bias, o_n, m_n, N, ASYM, HAS_BIAS)
    tl.store(y + o_mn, _round_to(b_y, y.dtype.element_ty), mask=m_mn)


@triton.autotune(configs=_grad_input_configs(), key=["m_bucket", "n_bucket", "k_bucket", "ASYM"], prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["M"])
def ternary_linear_bwd_input_kernel(
    grad_y,
    packed,
    scale,
    grad_x,
    M,
    N,
    K,
    n_words,
    m_bucket,
    n_bucket,
    k_bucket,
    ASYM: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """One ``[BLOCK_M, BLOCK_K]`` tile of grad_x, reducing over the N output channels in BLOCK_N steps.
    The weight tile ``codes * scale`` is formed in float32 and rounded to grad_y's dtype for the dot."""
    i_m, i_k = _tile_index(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_k = i_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    o_w = i_k.to(tl.int64) * (BLOCK_K // _WORD) + tl.arange(0, BLOCK_K // _WORD)
    m_m = o_m < M
    m_k = o_k < K

    b_acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        b_g = tl.load(grad_y + o_m[:, None] * N + o_n[None, :], mask=m_m[:, None] & m_n[None, :], other=0.)
        b_c = _load_codes(packed, o_n.to(tl.int64), m_n, o_w, n_words, BLOCK_N, BLOCK_K)
        if ASYM:
            b_sp = tl.load(scale + o_n, mask=m_n, other=0.)
            b_sn = tl.load(scale + N + o_n, mask=m_n, other=0.)
            b_w = tl.where(b_c > 0, b_sp[:, None], tl.where(b_c < 0, -b_sn[:, None], 0.))
        else:
            b_s = tl.load(scale + o_n, mask=m_n, other=0.)
            b_w = b_c.to(tl.float32) * b_s[:, None]
        if DOT_F32:
            b_g = b_g.to(tl.float32)
        b_acc = tl.dot(b_g, b_w.to(b_g.dtype), b_acc, input_precision=PRECISION)

    p_gx = grad_x + o_m[:, None] * K + o_k[None, :]
    tl.store(p_gx, _round_to(b_acc, grad_x.dtype.element_ty), mask=m_m[:, None] & m_k[None, :])


@triton.autotune(configs=_tiled_configs(), key=_KEY[:-1], prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["M"])
def ternary_conv2d_fwd_kernel(
    x,
    packed,
    scale,
    bias,
    y,
    M,
    N,
    K,
    n_words,
    C,
    H,
    W,
    H_out,
    W_out,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    m_bucket,
    n_bucket,
    k_bucket,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SPIKES: tl.constexpr,
    ASYM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """One ``[BLOCK_M, BLOCK_N]`` output tile of group ``program_id(1)``: rows are output pixels
    ``m = (b, oh, ow)``, columns the group's output channels, K runs over ``(c, i, j)`` taps of the
    group's ``C_g = K / (KH * KW)`` input channels; taps outside the image read 0."""
    i_m, i_n = _tile_index(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    i_g = tl.program_id(1).to(tl.int64)
    n_groups = tl.num_programs(1)
    # Pixel, tap and in-image indices are int32 (the host checks M and C_g * H * W against 2**31):
    # they fill [BLOCK_M, BLOCK_K] tiles, where int64 would double their registers. Image bases are int64.
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < M
    m_n = o_n < N
    o_c = i_g * N + o_n

    hw_out = H_out * W_out
    o_b = o_m // hw_out
    o_p = o_m % hw_out
    o_ih = (o_p // W_out) * stride_h - pad_h
    o_iw = (o_p % W_out) * stride_w - pad_w
    c_group = K // (KH * KW)
    p_img = x + (o_b.to(tl.int64) * C + i_g * c_group) * H * W
    o_row = o_ih * W + o_iw
    if KH * KW <= 32:
        # bit i * KW + j of b_taps: tap (i, j) of the row's output pixel lies inside the image (no bit for a
        # row past M). The gather's mask is then a shift and an and per element.
        b_taps = tl.zeros([BLOCK_M], dtype=tl.int32)
        for i in tl.static_range(KH):
            m_h = m_m & (o_ih + i * dil_h >= 0) & (o_ih + i * dil_h < H)
            for j in tl.static_range(KW):
                m_w = (o_iw + j * dil_w >= 0) & (o_iw + j * dil_w < W)
                b_taps |= (m_h & m_w).to(tl.int32) << (i * KW + j)

    if SPIKES:
        b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    b_acc_n = tl.zeros_like(b_acc)

    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        o_ci = o_k // (KH * KW)
        o_tap = o_k % (KH * KW)
        o_dh = (o_tap // KW) * dil_h
        o_dw = (o_tap % KW) * dil_w
        if KH * KW <= 32:
            m_x = (((b_taps[:, None] >> o_tap[None, :]) & 1) != 0) & (o_k < K)[None, :]
        else:
            b_ih = o_ih[:, None] + o_dh[None, :]
            b_iw = o_iw[:, None] + o_dw[None, :]
            m_x = (m_m[:, None] & (o_k < K)[None, :]) & ((b_ih >= 0) & (b_ih < H)) & ((b_iw >= 0) & (b_iw < W))
        p_x = p_img[:, None] + (o_row[:, None] + (o_ci * H * W + o_dh * W + o_dw)[None, :])
        b_x = tl.load(p_x, mask=m_x, other=0)
        o_w = k0 // _WORD + tl.arange(0, BLOCK_K // _WORD)
        b_c = _load_codes_t(packed, o_c, m_n, o_w, n_words, BLOCK_N, BLOCK_K)
        b_acc, b_acc_n = _accumulate(b_x, b_c, b_acc, b_acc_n, SPIKES, ASYM, DOT_F32, PRECISION)

    b_y = _scale_bias(b_acc, b_acc_n, scale, bias, o_c, m_n, n_groups * N, ASYM, HAS_BIAS)
    p_y = y + (o_b.to(tl.int64) * (n_groups * N) * hw_out + o_p)[:, None] + (o_c * hw_out)[None, :]
    tl.store(p_y, _round_to(b_y, y.dtype.element_ty), mask=m_m[:, None] & m_n[None, :])


_linear_small_m = triton.autotune(configs=_small_m_configs(), key=_KEY, prune_configs_by=_PRUNE)(ternary_linear_fwd_kernel)
_linear_tiled = triton.autotune(configs=_tiled_configs(), key=_KEY, prune_configs_by=_PRUNE)(ternary_linear_fwd_kernel)


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _device_guard(t: torch.Tensor):
    """Make t's GPU the current device, so the kernel launches where the data lives."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_runnable(name: str, t: torch.Tensor) -> None:
    if t.device.type == "cuda" or (t.device.type == "cpu" and _INTERPRET):
        return
    raise ValueError(
        f"{name} is on {t.device}: the Triton ternary kernels need a CUDA tensor (or CPU tensors with TRITON_INTERPRET=1)"
    )


def _check_x(name: str, x, dims: int, spikes: bool) -> bool:
    """Check the activation tensor; returns whether it takes the exact spike path."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a tensor, got {describe(x)}")
    if x.dtype not in _FLOAT_DTYPES + _SPIKE_ONLY_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16, or uint8 / int8 / bool spikes, got {x.dtype}")
    if x.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor, got {describe(x)}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    _check_runnable(name, x)
    return bool(spikes) or not x.is_floating_point()


def _check_weight(packed, scale, bias, rows: int | None, k: int, device: torch.device) -> int:
    """Check packed ``[rows, ceil(k / 16)]``, scale ``[rows]`` / ``[2, rows]`` and bias ``[rows]``
    (float32), all contiguous and on ``device``; ``rows=None`` takes packed's row count. Returns rows."""
    for name, t in (("packed", packed), ("scale", scale), ("bias", bias)):
        if torch.is_tensor(t) and t.device != device:
            raise ValueError(f"{name} is on {t.device} but the input is on {device}: all tensors must share a device")
    rows = check_packed(packed, rows, k)
    check_scale(scale, rows, packed)
    if bias is not None:
        if not torch.is_tensor(bias) or bias.dtype != torch.float32:
            raise TypeError(f"bias must be a float32 tensor or None, got {describe(bias)}")
        if tuple(bias.shape) != (rows,):
            raise ValueError(f"bias must have shape [{rows}] (one per output channel), got {list(bias.shape)}")
    for name, t in (("packed", packed), ("scale", scale), ("bias", bias)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    return rows


def _dot_options(x_dtype: torch.dtype) -> dict:
    return dict(
        DOT_F32=_INTERPRET and x_dtype == torch.bfloat16,
        PRECISION="ieee" if x_dtype == torch.float32 else "tf32",
    )


def _auto_split_k(m: int, n: int, k: int, device: torch.device) -> int:
    """Splits of K for a small-M product: enough programs to cover the GPU about twice, each with at
    least ``_MIN_SPLIT_K`` codes."""
    if m > SMALL_M:
        return 1
    programs = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    tiles = triton.cdiv(n, 64)
    want = triton.cdiv(2 * programs, tiles)
    return max(1, min(want, triton.cdiv(k, _MIN_SPLIT_K), _MAX_SPLIT_K))


def ternary_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    spikes: bool = False,
    *,
    split_k: int | None = None,
) -> torch.Tensor:
    """``y = x @ W^T + bias`` with the ternary weight ``W [N, K]`` given in packed format v1.

    Args:
        x: ``[M, K]``, contiguous; float32 / float16 / bfloat16, or uint8 / int8 / bool spikes.
        packed: int32 ``[N, ceil(K / 16)]`` codes (``format.py``).
        scale: float32 ``[N]`` (symmetric) or ``[2, N]`` (asymmetric).
        bias: float32 ``[N]`` or None.
        spikes: x holds only 0 and 1: take the exact integer path (always taken for integer / bool x;
            the values are not checked).
        split_k: number of K splits (>= 1) for the split-K launch; None chooses it (split only for
            ``M <= SMALL_M``).

    Returns:
        ``[M, N]`` in x's dtype, or float32 for integer / bool x. Spike inputs give exactly
        ``reference.ternary_linear_reference``'s result; real inputs agree within float32
        accumulation error plus one rounding to x's dtype.
    """
    spike_path = _check_x("x", x, 2, spikes)
    m, k = x.shape
    n = _check_weight(packed, scale, bias, None, k, x.device)
    if split_k is not None and (isinstance(split_k, bool) or not isinstance(split_k, int) or split_k < 1):
        raise ValueError(f"split_k must be an int >= 1 or None, got {split_k!r}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return y

    x_in = x.view(torch.uint8) if x.dtype == torch.bool else x
    asym = scale.dim() == 2
    wanted = _auto_split_k(m, n, k, x.device) if split_k is None else split_k
    k_split = max(CODES_PER_WORD, triton.cdiv(triton.cdiv(k, wanted), CODES_PER_WORD) * CODES_PER_WORD)
    n_split = max(1, triton.cdiv(k, k_split))
    split = n_split > 1
    partial = None
    if split:
        acc_dtype = torch.int32 if spike_path else torch.float32
        partial = torch.empty((n_split, 2 if asym else 1, m, n), dtype=acc_dtype, device=x.device)

    kernel = _linear_small_m if m <= SMALL_M else _linear_tiled

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), n_split)

    with _device_guard(x):
        kernel[grid](
            x_in, packed, scale, bias, y, partial,
            m, n, k, packed.shape[1], k_split, _bucket(m), _bucket(n), _bucket(k),
            SPIKES=spike_path, ASYM=asym, HAS_BIAS=bias is not None, SPLIT=split,
            **_dot_options(x.dtype), enable_fp_fusion=False,
        )
        if split:
            block_m, block_n = (16, 16) if _INTERPRET else (16, 128)
            ternary_linear_finish_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
                partial, scale, bias, y, m, n, n_split,
                ASYM=asym, HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
                enable_fp_fusion=False,
            )
    return y


def ternary_linear_grad_input(
    grad_y: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, k: int
) -> torch.Tensor:
    """``grad_x = grad_y @ W`` for ``y = x @ W^T``, with ``W [N, K]`` in packed format v1.

    Args:
        grad_y: ``[M, N]``, contiguous, float32 / float16 / bfloat16.
        packed: int32 ``[N, ceil(k / 16)]``; scale: float32 ``[N]`` or ``[2, N]``.
        k: the number of input features K.

    Returns:
        ``grad_x [M, K]`` in grad_y's dtype (float32 accumulation; the weight tile ``codes * scale``
        is rounded to grad_y's dtype before the dot).
    """
    if not torch.is_tensor(grad_y):
        raise TypeError(f"grad_y must be a tensor, got {describe(grad_y)}")
    if grad_y.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"grad_y must be float32, float16 or bfloat16, got {grad_y.dtype}")
    _check_x("grad_y", grad_y, 2, False)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    m, n = grad_y.shape
    _check_weight(packed, scale, None, n, k, grad_y.device)
    grad_x = torch.empty((m, k), dtype=grad_y.dtype, device=grad_y.device)
    if m == 0 or k == 0:
        return grad_x
    if n == 0:
        return grad_x.zero_()

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_K"]),)

    with _device_guard(grad_y):
        ternary_linear_bwd_input_kernel[grid](
            grad_y, packed, scale, grad_x, m, n, k, packed.shape[1], _bucket(m), _bucket(n), _bucket(k),
            ASYM=scale.dim() == 2, **_dot_options(grad_y.dtype),
        )
    return grad_x


def _check_conv_int32(pixels: int, group_elements: int) -> None:
    """The conv kernel indexes output pixels (``pixels`` = B * H_out * W_out, plus a tile) and the
    elements of one image's channel group (C / groups * H * W) in int32."""
    if pixels > 2**31 - 1024 or group_elements >= 2**31:
        raise ValueError(
            f"ternary_conv2d indexes output pixels and one image's channel group in int32: {pixels} output "
            f"pixels and {group_elements} elements per group are too many; split the batch or the channels"
        )


def ternary_conv2d(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    kernel_size=(1, 1),
    spikes: bool = False,
) -> torch.Tensor:
    """2-D convolution with the ternary weight ``[O, C / groups, kh, kw]`` in packed format v1.

    Args:
        x: ``[B, C, H, W]``, contiguous NCHW; float32 / float16 / bfloat16, or uint8 / int8 / bool spikes.
        packed: int32 ``[O, ceil(C / groups * kh * kw / 16)]``, codes in (c, kh, kw) order per row.
        scale: float32 ``[O]`` or ``[2, O]``; bias: float32 ``[O]`` or None.
        stride, padding, dilation: int or ``(h, w)`` pair (``nn.Conv2d``'s meaning).
        groups: int >= 1 dividing C and O.
        kernel_size: ``(kh, kw)`` (or an int for a square kernel).
        spikes: x holds only 0 and 1 (exact integer path; always taken for integer / bool x).

    Returns:
        ``[B, O, H_out, W_out]`` in x's dtype (float32 for integer / bool x), with the exactness of
        ``ternary_linear``.
    """
    spike_path = _check_x("x", x, 4, spikes)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    kh, kw = int_pair("kernel_size", kernel_size, 1)
    stride_h, stride_w = int_pair("stride", stride, 1)
    pad_h, pad_w = int_pair("padding", padding, 0)
    dil_h, dil_w = int_pair("dilation", dilation, 1)
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"x has {c} channels, which groups={groups} does not divide")
    c_group = c // groups
    o = _check_weight(packed, scale, bias, None, c_group * kh * kw, x.device)
    if o % groups:
        raise ValueError(f"packed has {o} output channels, which groups={groups} does not divide")
    h_out = (h + 2 * pad_h - dil_h * (kh - 1) - 1) // stride_h + 1
    w_out = (w + 2 * pad_w - dil_w * (kw - 1) - 1) // stride_w + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"the output would be {h_out} x {w_out}: input {h} x {w} is too small for kernel {kh} x {kw} with "
            f"padding {(pad_h, pad_w)} and dilation {(dil_h, dil_w)}"
        )

    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    y = torch.empty((b, o, h_out, w_out), dtype=out_dtype, device=x.device)
    m, n, k = b * h_out * w_out, o // groups, c_group * kh * kw
    if m == 0 or n == 0:
        return y
    _check_conv_int32(m, c_group * h * w)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), groups)

    with _device_guard(x):
        ternary_conv2d_fwd_kernel[grid](
            x.view(torch.uint8) if x.dtype == torch.bool else x, packed, scale, bias, y,
            m, n, k, packed.shape[1], c, h, w, h_out, w_out,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, _bucket(m), _bucket(n), _bucket(k),
            KH=kh, KW=kw, SPIKES=spike_path, ASYM=scale.dim() == 2, HAS_BIAS=bias is not None,
            **_dot_options(x.dtype), enable_fp_fusion=False,
        )
    return y
