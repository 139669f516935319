"""BatchNorm folded into the layer before it: full-precision ``nn.Conv2d`` / ``nn.Linear`` and frozen ternary layers.

In eval mode ``bn(layer(x))`` is ``layer'(x)`` with the weight of output channel ``o`` multiplied by
``factor[o] = gamma[o] / sqrt(running_var[o] + eps)`` and the bias ``beta + (bias - running_mean) * factor``
(exact up to rounding). A frozen ternary layer keeps ternary codes: where ``factor[o] < 0`` its codes are negated
(exact for codes in {-1, 0, 1}; a TTQ scale ``[2, O]`` swaps its rows there, as they belong to codes 1 and -1)
and ``|factor[o]|`` goes into its per-channel scale.
"""
import copy

import torch
from torch import Tensor, nn

from ..ops.ternary.format import pack_ternary, unpack_ternary
from .ternary import TernaryConv2d, TernaryLinear

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def batchnorm_affine(bn: nn.Module, bias) -> tuple:
    """``(factor, shift)`` ``[C]`` with ``bn(y + bias) = y * factor + shift`` in eval mode (``bias`` ``[C]`` or
    None)."""
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return factor, bn.bias + (bias - bn.running_mean) * factor


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``[O]`` viewed to broadcast over a weight ``[O, ...]`` shaped like ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def fold_batchnorm(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of the full-precision ``layer`` (``nn.Conv2d`` or ``nn.Linear``) equal, in eval mode, to
    ``bn(layer(x))``; it always has a bias."""
    fused = copy.deepcopy(layer)
    factor, shift = batchnorm_affine(bn, layer.bias)
    fused.weight = nn.Parameter((layer.weight * _per_row(factor, layer.weight)).detach())
    fused.bias = nn.Parameter(shift.detach())
    return fused


def fold_batchnorm_ternary(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A frozen copy of the frozen ``layer`` (``TernaryConv2d`` or ``TernaryLinear``) equal, in eval mode, to
    ``bn(layer(x))`` up to float32 rounding: codes negated where the factor is negative, scale ``|factor| x
    scale``, bias ``[O]`` the BatchNorm's shift."""
    if not isinstance(layer, (TernaryConv2d, TernaryLinear)) or not layer.frozen:
        raise TypeError(f"fold_batchnorm_ternary expects a frozen ternary layer, got {type(layer).__name__}")
    fused = copy.deepcopy(layer)
    factor, shift = batchnorm_affine(bn, layer.bias)
    negative = factor < 0
    codes = unpack_ternary(layer.packed, layer.weight_shape)
    fused.packed.copy_(pack_ternary(torch.where(_per_row(negative, codes), -codes, codes)))
    scale = torch.where(negative, layer.scale.flip(0), layer.scale) if layer.scale.dim() == 2 else layer.scale
    fused.scale.copy_(scale * factor.abs())
    fused.bias = nn.Parameter(shift.detach())
    return fused
