"""Ternary quantizers with straight-through-estimator (STE) gradients.

Weights are ``[N, *rest]`` with the output channel first. Per channel (default) the statistics are
taken over each output channel's ``rest``; per layer over the whole tensor.

- ``twn`` (Li et al., 2016, Ternary Weight Networks): threshold ``delta = 0.7 * mean|W|``, code
  ``sign(W)`` where ``|W| > delta`` else 0, scale = mean ``|W|`` over the codes that are not 0.
- ``ttq`` (Zhu et al., 2017, Trained Ternary Quantization): threshold ``0.05 * max|W|``, and two learned
  scales: ``W_p`` for code 1 and ``-W_n`` for code -1 (an asymmetric ``[2, N]`` scale).
- ``absmean`` (BitNet b1.58, Ma et al., 2024): ``gamma = mean|W|``, code ``round(W / gamma)`` clipped to
  [-1, 1], scale gamma.

The quantized weight's gradient reaches the latent float weight unchanged (STE) for twn and absmean;
for ttq it is multiplied by ``W_p`` / ``1`` / ``W_n`` in the positive / zero / negative region, and
``W_p`` gets the sum of the gradient over the positive region, ``W_n`` minus the sum over the negative
region, as in the TTQ paper.
"""
from typing import Optional

import torch
from torch import Tensor

QUANTIZERS = ("twn", "ttq", "absmean")
TWN_THRESHOLD = 0.7
TTQ_THRESHOLD = 0.05
_EPS = 1e-8


def _reduce(w: Tensor, per_channel: bool, op: str, mask: Optional[Tensor] = None) -> Tensor:
    """``op`` ('mean' or 'amax') of w over each output channel ``[N, 1, ...]`` or the whole layer; a mean
    with ``mask`` is over the masked-in entries (0 where there are none)."""
    dims = tuple(range(1, w.dim())) if per_channel else tuple(range(w.dim()))
    if not dims:
        return w if mask is None else w * mask
    if op == "mean" and mask is not None:
        value = (w * mask).sum(dims, keepdim=True) / mask.sum(dims, keepdim=True).clamp_min(1)
    else:
        value = w.mean(dims, keepdim=True) if op == "mean" else w.amax(dims, keepdim=True)
    return value if per_channel else value.reshape((1,) * w.dim())


def _masked_mean(values: Tensor, mask: Tensor, per_channel: bool) -> Tensor:
    dims = tuple(range(1, values.dim())) if per_channel else tuple(range(values.dim()))
    total = (values * mask).sum(dims, keepdim=per_channel)
    count = mask.sum(dims, keepdim=per_channel).clamp_min(1)
    return total / count


def _check_weight(w: Tensor, method: str) -> None:
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {type(w).__name__ if not isinstance(w, Tensor) else w.dtype}")
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"w must be a non-empty tensor with the output channels first, got shape {list(w.shape)}")
    if method not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {method!r}; choose one of {QUANTIZERS}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w holds NaN or inf; cannot ternarize it")


def _check_mask(w: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    """``mask`` as float32 0/1 on w's device, or None; raises on a shape mismatch."""
    if mask is None:
        return None
    if mask.shape != w.shape:
        raise ValueError(f"the mask has shape {list(mask.shape)}, the weight {list(w.shape)}")
    return (mask != 0).to(device=w.device, dtype=torch.float32)


def ternary_codes(w: Tensor, method: str, per_channel: bool = True, mask: Optional[Tensor] = None) -> Tensor:
    """int8 codes in {-1, 0, 1} with w's shape (no gradient); 0 wherever ``mask`` is 0."""
    w = w.detach().float()
    keep = _check_mask(w, mask)
    if keep is not None:
        w = w * keep
    if method == "twn":
        delta = TWN_THRESHOLD * _reduce(w.abs(), per_channel, "mean", keep)
        return (torch.sign(w) * (w.abs() > delta)).to(torch.int8)
    if method == "ttq":
        delta = TTQ_THRESHOLD * _reduce(w.abs(), per_channel, "amax")
        return ((w > delta).to(torch.int8) - (w < -delta).to(torch.int8))
    gamma = _reduce(w.abs(), per_channel, "mean", keep)
    return torch.clamp(torch.round(w / (gamma + _EPS)), -1, 1).to(torch.int8)


def _scales(w: Tensor, codes: Tensor, method: str, per_channel: bool, mask: Optional[Tensor] = None) -> Tensor:
    """float32 scale ``[N]`` (twn, absmean) or ``[2, N]`` (ttq: mean |W| of the positive and of the
    negative codes) of weights ``w`` with ``codes`` (absmean: over the weights ``mask`` keeps)."""
    wf = w.detach().float()
    rows = w.shape[0]
    if method == "ttq":
        positive = _masked_mean(wf.abs(), (codes == 1).float(), per_channel)
        negative = _masked_mean(wf.abs(), (codes == -1).float(), per_channel)
        return torch.stack([positive.reshape(-1).expand(rows), negative.reshape(-1).expand(rows)]).contiguous()
    if method == "twn":
        scale = _masked_mean(wf.abs(), (codes != 0).float(), per_channel)
    else:
        keep = _check_mask(wf, mask)
        scale = _reduce(wf.abs() if keep is None else wf.abs() * keep, per_channel, "mean", keep)
    return scale.reshape(-1).expand(rows).contiguous()


def ternarize(w: Tensor, method: str = "twn", per_channel: bool = True, mask: Optional[Tensor] = None):
    """Ternarize weights ``w`` ``[N, *rest]`` (``mask``: see the module docstring).

    Returns ``(codes, scale)``: int8 codes with w's shape in {-1, 0, 1} and a float32 scale ``[N]``
    (``[2, N]`` for ttq: the initial W_p and W_n, the mean ``|W|`` of the positive and of the negative
    codes). Per layer the scale has the same value for every channel.
    """
    _check_weight(w, method)
    codes = ternary_codes(w, method, per_channel, mask)
    return codes, _scales(w, codes, method, per_channel, mask)


class _SymmetricSTE(torch.autograd.Function):
    """codes * scale forward, identity backward to the latent weight."""

    @staticmethod
    def forward(ctx, w: Tensor, codes: Tensor, scale: Tensor) -> Tensor:
        view = (-1,) + (1,) * (w.dim() - 1)
        return (codes.to(w.dtype) * scale.to(w.dtype).view(view))

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


class _TTQ(torch.autograd.Function):
    """W_p for code 1, -W_n for code -1; TTQ gradients to the latent weight and both scales."""

    @staticmethod
    def forward(ctx, w: Tensor, codes: Tensor, w_p: Tensor, w_n: Tensor) -> Tensor:
        view = (-1,) + (1,) * (w.dim() - 1)
        positive, negative = (codes == 1).to(w.dtype), (codes == -1).to(w.dtype)
        ctx.save_for_backward(positive, negative, w_p, w_n)
        return positive * w_p.to(w.dtype).view(view) - negative * w_n.to(w.dtype).view(view)

    @staticmethod
    def backward(ctx, grad: Tensor):
        positive, negative, w_p, w_n = ctx.saved_tensors
        view = (-1,) + (1,) * (grad.dim() - 1)
        zero = 1 - positive - negative
        grad_w = grad * (positive * w_p.to(grad.dtype).view(view) + zero + negative * w_n.to(grad.dtype).view(view))
        dims = tuple(range(1, grad.dim()))
        grad_p = (grad * positive).sum(dims) if dims else grad * positive
        grad_n = -((grad * negative).sum(dims) if dims else grad * negative)
        if w_p.numel() == 1:
            grad_p, grad_n = grad_p.sum().reshape(w_p.shape), grad_n.sum().reshape(w_n.shape)
        return grad_w, None, grad_p.to(w_p.dtype), grad_n.to(w_n.dtype)


def quantize_weight(w: Tensor, method: str = "twn", per_channel: bool = True,
                    ttq_scales: Optional[tuple] = None, mask: Optional[Tensor] = None):
    """Quantization-aware forward of a latent weight ``w`` ``[N, *rest]``.

    Returns ``(w_q, codes, scale)``: the float ternary weight ``w_q`` (w's shape and dtype) whose
    gradient flows to ``w`` (and to the TTQ scales) as described in the module docstring, the int8
    codes, and the float32 scale (``[N]``, or ``[2, N]`` for ttq). ``ttq_scales`` = ``(W_p, W_n)``, each
    ``[N]`` or ``[1]``, is required for ttq. ``mask``: see the module docstring.
    """
    _check_weight(w, method)
    codes = ternary_codes(w, method, per_channel, mask)
    rows = w.shape[0]
    if method == "ttq":
        if ttq_scales is None:
            raise ValueError("method='ttq' needs ttq_scales=(W_p, W_n), the learned scales")
        w_p, w_n = ttq_scales
        w_q = _TTQ.apply(w, codes, w_p, w_n)
        scale = torch.stack([w_p.detach().float().expand(rows), w_n.detach().float().expand(rows)]).contiguous()
        return w_q, codes, scale
    scale = _scales(w, codes, method, per_channel, mask)
    return _SymmetricSTE.apply(w, codes, scale), codes, scale
