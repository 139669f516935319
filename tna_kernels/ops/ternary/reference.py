"""Plain PyTorch ternary linear and conv2d: the executable spec of every ternary kernel.

Two paths:

- real-valued input (float32 / float16 / bfloat16 / float64 x): ``y = x @ W^T + bias`` with
  ``W = dequantize(codes, scale)``, computed in float64 and rounded once to x's dtype. Kernels match
  it within a dtype tolerance.
- spike input (``spikes=True``, or an integer / bool x; values must be 0 or 1): integer accumulators
  ``acc_p = x @ [codes == 1]^T`` and ``acc_n = x @ [codes == -1]^T`` (exact), then in float32
  ``y = (acc_p - acc_n) * scale`` (symmetric ``[N]`` scale) or ``y = acc_p * scale[0] - acc_n * scale[1]``
  (asymmetric ``[2, N]``), then ``+ bias`` in float32, then cast to x's dtype (float32 for integer x).
  Kernels must equal this exactly.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .format import check_packed, check_scale, conv_kernel_size, dequantize, unpack_ternary


def is_spike_input(x: Tensor, spikes: bool) -> bool:
    """Whether x takes the exact integer path: ``spikes=True`` or an integer / bool dtype."""
    return bool(spikes) or not x.is_floating_point()


def output_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def check_spikes(x: Tensor) -> None:
    """Raise unless every element of x is 0 or 1."""
    if x.numel() and not bool(((x == 0) | (x == 1)).all()):
        raise ValueError("spike input must hold only 0 and 1 (spikes=True, or an integer x); found other values")


def _finish_exact(acc_p: Tensor, acc_n: Tensor, scale: Tensor, bias: Optional[Tensor], channel_dim: int, out_dtype):
    """float32 scaling of exact integer accumulators (held in float64), channel axis ``channel_dim``."""
    shape = [1] * acc_p.dim()
    shape[channel_dim] = -1
    if scale.dim() == 1:
        y = (acc_p - acc_n).to(torch.float32) * scale.view(shape)
    else:
        y = acc_p.to(torch.float32) * scale[0].view(shape) - acc_n.to(torch.float32) * scale[1].view(shape)
    if bias is not None:
        y = y + bias.to(torch.float32).view(shape)
    return y.to(out_dtype)


def ternary_linear_reference(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor] = None,
                             spikes: bool = False) -> Tensor:
    """``x [..., K]`` times the ternary weight ``[N, K]`` given as ``packed [N, ceil(K/16)]`` and
    ``scale [N]`` or ``[2, N]``, plus ``bias [N]``: returns ``[..., N]``."""
    rows, k = packed.shape[0], x.shape[-1]
    check_packed(packed, rows, k)
    check_scale(scale, rows, packed)
    codes = unpack_ternary(packed, (rows, k))
    if is_spike_input(x, spikes):
        check_spikes(x)
        xd = x.to(torch.float64)
        acc_p = xd @ (codes == 1).to(torch.float64).T
        acc_n = xd @ (codes == -1).to(torch.float64).T
        return _finish_exact(acc_p, acc_n, scale, bias, -1, output_dtype(x))
    y = x.to(torch.float64) @ dequantize(codes, scale).to(torch.float64).T
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(x.dtype)


def ternary_conv2d_reference(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor] = None,
                             stride=1, padding=0, dilation=1, groups: int = 1, kernel_size=None,
                             spikes: bool = False) -> Tensor:
    """2-D convolution of ``x [B, C, H, W]`` with the ternary weight ``[O, C/groups, kh, kw]`` given as
    ``packed [O, ceil(C/groups * kh * kw / 16)]`` and ``scale [O]`` or ``[2, O]``: returns
    ``[B, O, H_out, W_out]`` (``nn.Conv2d``'s arithmetic for stride, padding, dilation and groups)."""
    rows = packed.shape[0]
    in_per_group = x.shape[1] // groups
    kh, kw = conv_kernel_size(packed, in_per_group, kernel_size)
    check_packed(packed, rows, in_per_group * kh * kw)
    check_scale(scale, rows, packed)
    codes = unpack_ternary(packed, (rows, in_per_group, kh, kw))
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if is_spike_input(x, spikes):
        check_spikes(x)
        xd = x.to(torch.float64)
        acc_p = F.conv2d(xd, (codes == 1).to(torch.float64), **conv)
        acc_n = F.conv2d(xd, (codes == -1).to(torch.float64), **conv)
        return _finish_exact(acc_p, acc_n, scale, bias, 1, output_dtype(x))
    bias64 = None if bias is None else bias.to(torch.float64)
    return F.conv2d(x.to(torch.float64), dequantize(codes, scale).to(torch.float64), bias64, **conv).to(x.dtype)
