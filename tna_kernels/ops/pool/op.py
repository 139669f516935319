"""``max_pool2d``: F.max_pool2d for inference on CPU tensors by csrc/pool.cpp, which skips the indices that
F.max_pool2d computes for its backward and reads the input once. F.max_pool2d itself is the reference: the
kernel equals it bit for bit (ties keep the first value of the window, NaN propagates). Anything the kernel does
not take (a gradient to carry, dilation, indices, another device or backend) runs F.max_pool2d."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend import resolve_backend


def _pair(value) -> Optional[tuple]:
    """``(h, w)`` from an int or a pair of ints, else None."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    return pair if len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair) else None


def _pooled_size(size: int, k: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Output size along one dimension, as F.max_pool2d computes it (dilation 1)."""
    out = (size + 2 * pad - k + (stride - 1 if ceil_mode else 0)) // stride + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size + pad else out


@torch.library.custom_op("tna::max_pool2d", mutates_args=())
def _max_pool2d(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], ceil_mode: bool) -> Tensor:
    """y ``[P, Ho, Wo]`` from contiguous x ``[P, H, W]`` on CPU."""
    return torch.ops.tna_cpp.max_pool2d(x, kernel_size, stride, padding, ceil_mode)


@_max_pool2d.register_fake
def _(x, kernel_size, stride, padding, ceil_mode):
    sizes = [_pooled_size(n, k, s, p, ceil_mode) for n, k, s, p in zip(x.shape[1:], kernel_size, stride, padding)]
    return x.new_empty(x.shape[0], *sizes)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               backend: str = "auto") -> Tensor:
    """F.max_pool2d of x ``[B, C, H, W]`` or ``[C, H, W]`` (floating point), the same arguments, without indices.

    The C++ kernel runs for CPU tensors when the "cpp" backend is chosen (see ``resolve_backend``), no gradient is
    needed, dilation is 1 and padding is at most half the window (as F.max_pool2d requires); otherwise, and for
    arguments F.max_pool2d refuses, F.max_pool2d runs. Returns ``[B, C, Ho, Wo]`` or ``[C, Ho, Wo]``.
    """
    k, p = _pair(kernel_size), _pair(padding)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride)
    usable = (k is not None and s is not None and p is not None and _pair(dilation) == (1, 1)
              and x.dim() in (3, 4) and x.is_floating_point() and x.device.type == "cpu"
              and not (x.requires_grad and torch.is_grad_enabled())
              and min(*k, *s) >= 1 and min(p) >= 0 and 2 * p[0] <= k[0] and 2 * p[1] <= k[1]
              and min(_pooled_size(n, *args, ceil_mode) for n, args in zip(x.shape[-2:], zip(k, s, p))) >= 1
              and resolve_backend(backend, x.device) == "cpp")
    if not usable:
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)
    y = _max_pool2d(x.reshape(-1, *x.shape[-2:]).contiguous(), list(k), list(s), list(p), ceil_mode)
    return y.reshape(*x.shape[:-2], *y.shape[-2:])
