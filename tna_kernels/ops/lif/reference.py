"""Plain PyTorch multi-step LIF neuron: the executable specification of every LIF backend.

A Python loop over time with autograd doing the backward pass. Slow, but every line maps to one
equation of DESIGN.md section 3, and it runs in float64 for gradient checks. Per-channel parameters
(a 1-D tensor of length C) apply along dim 2 of ``x`` (the C of ``[T, B, C, ...]``).
"""
import torch

from .surrogate import SURROGATES, surrogate_grad


class _Heaviside(torch.autograd.Function):
    """s = (u >= 0) in u's dtype; backward multiplies by the surrogate derivative sg'(u)."""

    @staticmethod
    def forward(ctx, u, surrogate, alpha):
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate
        ctx.alpha = alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        (u,) = ctx.saved_tensors
        return grad_s * surrogate_grad(ctx.surrogate, u, ctx.alpha), None, None


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the membrane state and of v_T: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_step(param, x: torch.Tensor, dtype: torch.dtype):
    """A float, a one-element tensor or a length-C tensor, shaped to broadcast against x[t]."""
    if not torch.is_tensor(param):
        return param
    param = param.to(dtype)
    if param.numel() == 1:
        return param.reshape(())
    return param.reshape(-1, *([1] * (x.dim() - 3)))


def lif_multistep_reference(
    x: torch.Tensor,
    tau=2.0,
    v_threshold=1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "atan",
    alpha: float | None = None,
    v_init: torch.Tensor | None = None,
    return_count: bool = False,
):
    """Run the LIF recurrence over the leading time dimension.

    Args:
        x: input current ``[T, *]``, any float dtype; arithmetic runs in ``state_dtype(x.dtype)``.
        tau, v_threshold: float, one-element tensor, or length-C tensor (C = ``x.shape[2]``).
        v_reset: reset potential, or None for soft reset (subtract the threshold).
        v_init: initial membrane ``[*]``; defaults to ``v_reset`` (0 for soft reset).
        return_count: also return the spike count.

    Returns:
        spikes ``[T, *]`` in x's dtype and the final membrane ``v_T`` ``[*]`` in the state dtype; with
        ``return_count``, also ``count``: the number of spikes, a 0-d tensor in the state dtype. The count
        is the sum of the spikes, so its gradient adds ``grad_count`` to the gradient of every spike.
    """
    dtype = state_dtype(x.dtype)
    alpha = SURROGATES[surrogate].default_alpha if alpha is None else alpha
    tau = _per_step(tau, x, dtype)
    v_threshold = _per_step(v_threshold, x, dtype)
    vr = 0.0 if v_reset is None else v_reset
    v = torch.full(x.shape[1:], vr, dtype=dtype, device=x.device) if v_init is None else v_init.to(dtype)
    spikes = []
    for x_t in x.to(dtype):
        if decay_input:
            h = v + (x_t - (v - vr)) / tau
        else:
            h = v - (v - vr) / tau + x_t
        s = _Heaviside.apply(h - v_threshold, surrogate, alpha)
        s_reset = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - v_threshold * s_reset
        else:
            v = h * (1 - s_reset) + vr * s_reset
        spikes.append(s)
    spikes = torch.stack(spikes)
    if return_count:
        return spikes.to(x.dtype), v, spikes.sum()
    return spikes.to(x.dtype), v
