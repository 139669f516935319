"""The packed ternary weight format (version 1): 2-bit codes, 16 per int32 word.

A ternary weight is ``codes * scale``: int8 ``codes`` in {-1, 0, 1} with the weight's shape
``[N, *rest]`` (N output channels first, as in ``nn.Linear`` and ``nn.Conv2d``) and a float32 scale per
output channel. Format version 1:

- ``packed``: int32 ``[N, ceil(K / 16)]`` where ``K = prod(rest)`` and the codes of row n are taken in
  row-major order (for a conv weight ``[O, C/groups, kh, kw]``: c, then kh, then kw). Code k of row n
  is stored as ``code + 1`` (0, 1 or 2) in bits ``2 * (k % 16)`` and ``2 * (k % 16) + 1`` of word
  ``k // 16``. The padding codes after K are 1 (a zero weight); the bit pair 3 never occurs.
- ``scale``: float32 ``[N]`` (symmetric: weight = code * scale[n]) or ``[2, N]`` (asymmetric, as learned
  by TTQ: weight = scale[0, n] for code 1 and -scale[1, n] for code -1).

Backends may re-lay the words out when they load them (the C++ spike kernel splits them into two
bit-planes), but this is the layout that is stored and exchanged.
"""
import math
from typing import Optional

import torch
from torch import Tensor

FORMAT_VERSION = 1
CODES_PER_WORD = 16



def packed_words(k: int) -> int:
    """Number of int32 words holding K codes."""
    return (k + CODES_PER_WORD - 1) // CODES_PER_WORD


def _shifts(device) -> Tensor:
    """Bit offsets of the 16 codes in a word, int64 ``[16]`` (made per call: a cached tensor would be a
    real tensor inside fake-tensor tracing)."""
    return torch.arange(0, 2 * CODES_PER_WORD, 2, dtype=torch.int64, device=device)


def pack_ternary(codes: Tensor) -> Tensor:
    """Pack int codes ``[N, *rest]`` in {-1, 0, 1} into int32 words ``[N, ceil(K / 16)]``, K = prod(rest)."""
    if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor with values in {{-1, 0, 1}}, got {describe(codes)}")
    if codes.dim() < 1:
        raise ValueError("codes must have at least one dimension (output channels first), got a scalar")
    if codes.numel() and (codes.min() < -1 or codes.max() > 1):
        bad = codes[(codes < -1) | (codes > 1)][0].item()
        raise ValueError(f"codes must be in {{-1, 0, 1}}, found {bad}")
    rows = codes.shape[0]
    k = math.prod(codes.shape[1:])
    words = packed_words(k)
    values = torch.ones(rows, words * CODES_PER_WORD, dtype=torch.int64, device=codes.device)
    values[:, :k] = codes.reshape(rows, k).to(torch.int64) + 1
    packed = (values.view(rows, words, CODES_PER_WORD) << _shifts(codes.device)).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_ternary(packed: Tensor, shape) -> Tensor:
    """Unpack int32 words ``[N, ceil(K / 16)]`` into int8 codes of ``shape`` = ``[N, *rest]``."""
    shape = torch.Size(shape)
    if len(shape) < 1:
        raise ValueError("shape must have at least one dimension (output channels first)")
    k = math.prod(shape[1:])
    check_packed(packed, shape[0], k)
    if bool((_bit_pairs(packed) == 3).any()):
        raise ValueError("packed holds the bit pair 3, which format version 1 never uses: not a ternary packing")
    return decode_codes(packed, k).reshape(shape)


def _bit_pairs(packed: Tensor) -> Tensor:
    """The 2-bit fields of int32 words ``[N, W]`` as int64 ``[N, W, 16]``."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    return (words.unsqueeze(-1) >> _shifts(packed.device)) & 3


def decode_codes(packed: Tensor, k: int) -> Tensor:
    """int8 codes ``[N, k]`` from valid packed words ``[N, ceil(k / 16)]``, without checks (traceable, for use
    inside kernels' autograd; ``unpack_ternary`` is the checked public form)."""
    return (_bit_pairs(packed).reshape(packed.shape[0], -1)[:, :k] - 1).to(torch.int8)


def check_packed(packed: Tensor, rows: Optional[int], k: int) -> int:
    """Raise a clear error unless ``packed`` is int32 ``[rows, ceil(k / 16)]`` (``rows=None``: any row
    count). Returns the row count N."""
    if not isinstance(packed, Tensor) or packed.dtype != torch.int32:
        raise TypeError(f"packed must be an int32 tensor (format version {FORMAT_VERSION}), got {describe(packed)}")
    if packed.dim() != 2:
        raise ValueError(f"packed must be a 2-D [N, ceil(K / 16)] tensor, got {describe(packed)}")
    rows = packed.shape[0] if rows is None else rows
    expected = (rows, packed_words(k))
    if tuple(packed.shape) != expected:
        raise ValueError(
            f"packed has shape {tuple(packed.shape)}, but {rows} output channels of {k} inputs need "
            f"[N, ceil(K / 16)] = {list(expected)}"
        )
    return rows


def check_scale(scale: Tensor, rows: int, packed: Tensor) -> None:
    """Raise a clear error unless ``scale`` is float32 ``[rows]`` or ``[2, rows]`` on packed's device."""
    if not isinstance(scale, Tensor) or scale.dtype != torch.float32:
        raise TypeError(f"scale must be a float32 tensor, got {describe(scale)}")
    if tuple(scale.shape) not in ((rows,), (2, rows)):
        raise ValueError(f"scale must have shape [{rows}] or [2, {rows}] (one per output channel), got {list(scale.shape)}")
    if scale.device != packed.device:
        raise ValueError(f"scale is on {scale.device} but packed is on {packed.device}")


def dequantize(codes: Tensor, scale: Tensor) -> Tensor:
    """Float32 weights from codes ``[N, *rest]`` and a symmetric ``[N]`` or asymmetric ``[2, N]`` scale."""
    view = (-1,) + (1,) * (codes.dim() - 1)
    if scale.dim() == 1:
        return codes.to(torch.float32) * scale.view(view)
    positive, negative = scale[0].view(view), scale[1].view(view)
    return (codes == 1).to(torch.float32) * positive - (codes == -1).to(torch.float32) * negative


def describe(value) -> str:
    """A short description of an argument for error messages."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)} on {value.device}"
    return type(value).__name__


def int_pair(name: str, value, minimum: int) -> tuple:
    """``(h, w)`` from an int or a pair of ints, each >= ``minimum`` (conv stride, padding, ...)."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return pair


def conv_kernel_size(packed: Tensor, in_per_group: int, kernel_size=None) -> tuple:
    """The conv kernel ``(kh, kw)`` of a packed ``[O, ceil(C/groups * kh * kw / 16)]`` weight.

    A given ``kernel_size`` (an int or a pair) is returned as a pair (callers check it against the
    packing); without it the square kernel that fits is inferred, and a packing that several square
    sizes would fit is refused.
    """
    words = packed.shape[1] if isinstance(packed, Tensor) and packed.dim() == 2 else None
    if kernel_size is not None:
        return int_pair("kernel_size", kernel_size, 1)
    fits = [k for k in range(1, 64) if words is not None and packed_words(in_per_group * k * k) == words]
    if len(fits) != 1:
        raise ValueError(
            f"cannot infer the conv kernel size from packed words {words} and {in_per_group} input channels "
            f"per group (square sizes that fit: {fits or 'none'}); pass kernel_size=(kh, kw)"
        )
    return fits[0], fits[0]
