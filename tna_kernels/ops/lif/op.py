"""Public multi-step LIF: argument checks, backend choice, and the ``torch.library`` custom ops.

The fused kernels run behind two custom ops, ``tna::lif_forward`` and ``tna::lif_backward``, with fake
(meta) kernels and autograd registered here, so ``torch.compile`` sees one opaque node per LIF layer.
In eager mode ``lif_multistep`` calls the same two functions through ``_EagerLIF``, an autograd.Function
with the custom op's autograd, which skips the custom ops' dispatch (on a small layer that overhead is as
large as the kernels' own time). The ``torch`` backend is the reference loop
itself, differentiated by autograd.
"""
import math
import types
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..backend import resolve_backend
from .reference import lif_multistep_reference, state_dtype
from .surrogate import SURROGATES

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _kernels(backend: str):
    """The module-like object holding ``lif_forward`` / ``lif_backward`` for a kernel backend."""
    if backend == "triton":
        try:
            from . import triton as triton_kernels
        except ImportError as error:
            raise ImportError("backend='triton' needs the triton package: pip install triton") from error
        return triton_kernels
    return types.SimpleNamespace(
        lif_forward=torch.ops.tna_cpp.lif_forward, lif_backward=torch.ops.tna_cpp.lif_backward
    )


def _last_level_cache_bytes() -> int:
    """The CPU's last-level cache size as Linux reports it, or 32 MiB where it cannot be read."""
    try:
        size = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()  # e.g. "32768K"
        return int(size[:-1]) * {"K": 1 << 10, "M": 1 << 20}[size[-1]]
    except (OSError, ValueError, KeyError, IndexError):
        return 32 << 20


CPU_CACHE_BYTES = _last_level_cache_bytes()


def _streams(t: Tensor) -> bool:
    """Whether the C++ kernels write ``[T, N]`` outputs of t's size with non-temporal stores: from about a
    twelfth of the last-level cache on, the five such tensors of a forward+backward (x, spikes, u,
    grad_spikes, grad_x) do not stay in the cache from one pass to the next, and a store that skips reading
    the old line first halves the traffic of an output. The threshold is where streaming measured faster in
    ``benchmarks/bench_lif.py``'s neuron-count sweep."""
    return t.numel() * t.element_size() >= CPU_CACHE_BYTES // 12


def _recomputes(t: Tensor) -> bool:
    """Whether the C++ backend saves x rather than u for a training input t, and reruns the forward inside
    the backward (in L2-sized chunks): from an eighth of the last-level cache on, the 8 bytes per
    neuron-step it saves in float32 (u written, then read) cost more than the forward's arithmetic (the
    threshold is where recomputing measured faster in ``benchmarks/bench_lif.py``'s neuron-count sweep). The
    memory kept for the backward is the same size either way."""
    return t.numel() * t.element_size() >= CPU_CACHE_BYTES // 8


def _inner(shape, num_params: int) -> int:
    """Neurons per channel entry: the product of the dims after dim 2 when parameters are per channel."""
    return math.prod(shape[3:]) if num_params > 1 else 1


def _repeated_over_time(x: Tensor) -> bool:
    """Whether x ``[T, *]`` is one contiguous step repeated over T (stride 0 along T, as ``expand`` makes it)."""
    return x.dim() > 1 and x.shape[0] > 1 and x.stride(0) == 0 and x[0].is_contiguous()


def lif_forward(
    x: Tensor,
    tau: Tensor,
    v_threshold: Tensor,
    v_init: Optional[Tensor],
    scalars: list[float],
    flags: list[int],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused LIF forward over all T steps.

    x ``[T, *]`` contiguous, or for the C++ backend one contiguous step repeated over T (stride 0 along T);
    tau, v_threshold ``[P]`` in the state dtype; v_init ``[*]`` state dtype or None;
    ``scalars`` = ``[v_reset, alpha]``; ``flags`` = ``[soft_reset, decay_input, detach_reset, surrogate id,
    save_state, count_spikes]`` (``_forward_flags``). The options travel in two lists because the
    autograd wrapper of a custom op spends time quadratic in its number of arguments on every call.
    Returns spikes ``[T, *]`` (x's dtype), v_T ``[*]`` (state dtype), when ``save_state`` the saved
    ``u = h - v_threshold`` ``[T, *]`` in x's dtype (else an empty ``(0,)`` tensor), and when
    ``count_spikes`` the number of spikes, a 0-d tensor in the state dtype counted in the same pass (else
    an empty ``(0,)`` tensor). ``detach_reset``, ``surrogate`` and ``alpha`` only matter to the backward.
    """
    v_reset, _ = scalars
    soft_reset, decay_input, _, _, save_state, count_spikes = flags
    steps, neurons = x.shape[0], math.prod(x.shape[1:])
    spikes, v_last, u, count = _kernels(backend).lif_forward(
        x.reshape(steps, neurons),
        tau,
        v_threshold,
        None if v_init is None else v_init.reshape(neurons),
        v_reset,
        bool(soft_reset),
        bool(decay_input),
        _inner(x.shape, tau.numel()),
        bool(save_state),
        bool(count_spikes),
        backend == "cpp" and _streams(x),
    )
    return spikes.view(x.shape), v_last.view(x.shape[1:]), u.view(x.shape) if save_state else u, count


lif_forward_op = torch.library.custom_op("tna::lif_forward", lif_forward, mutates_args=())


def _forward_flags(soft_reset: bool, decay_input: bool, detach_reset: bool, surrogate: int, save_state: bool,
                   count_spikes: bool) -> list:
    """The ``flags`` argument of ``tna::lif_forward``."""
    return [int(soft_reset), int(decay_input), int(detach_reset), surrogate, int(save_state), int(count_spikes)]


@lif_forward_op.register_fake
def _(x, tau, v_threshold, v_init, scalars, flags, backend):
    save_state, count_spikes = flags[4], flags[5]
    sd = state_dtype(x.dtype)
    u = torch.empty_like(x) if save_state else x.new_empty(0)
    count = x.new_empty(() if count_spikes else (0,), dtype=sd)
    return torch.empty_like(x), x.new_empty(x.shape[1:], dtype=sd), u, count


def lif_backward(
    grad_spikes: Tensor,
    grad_v_last: Optional[Tensor],
    grad_count: Optional[Tensor],
    saved: Tensor,
    recompute: bool,
    tau: Tensor,
    v_threshold: Tensor,
    v_init: Optional[Tensor],
    v_reset: float,
    soft_reset: bool,
    decay_input: bool,
    detach_reset: bool,
    surrogate: int,
    alpha: float,
    need_tau_grad: bool,
    need_vth_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused reverse-time LIF backward.

    grad_spikes ``[T, *]`` (x's dtype), grad_v_last ``[*]`` or None, grad_count (the gradient of the spike
    count, added to every spike's gradient in the sweep) 0-d in the state dtype or None; ``saved`` the
    forward's u ``[T, *]`` (x's dtype), or when ``recompute`` its input x, from which the backend reruns the
    forward. Returns grad_x ``[T, *]``, grad_v_init ``[*]`` (state dtype), grad_tau and grad_v_threshold
    ``[P]`` (empty when not requested).
    """
    steps, neurons = saved.shape[0], math.prod(saved.shape[1:])
    inner = _inner(saved.shape, tau.numel())
    grad_x, grad_v_init, grad_tau, grad_vth = _kernels(backend).lif_backward(
        grad_spikes.reshape(steps, neurons).contiguous(),
        None if grad_v_last is None else grad_v_last.reshape(neurons).contiguous(),
        grad_count,
        saved.reshape(steps, neurons),
        recompute,
        tau,
        v_threshold,
        None if v_init is None else v_init.reshape(neurons),
        v_reset,
        soft_reset,
        decay_input,
        detach_reset,
        surrogate,
        alpha,
        inner,
        need_tau_grad,
        need_vth_grad,
        backend == "cpp" and _streams(saved),
    )
    return (
        grad_x.view(saved.shape),
        grad_v_init.view(saved.shape[1:]),
        _per_parameter(grad_tau, tau.numel(), inner),
        _per_parameter(grad_vth, tau.numel(), inner),
    )


lif_backward_op = torch.library.custom_op("tna::lif_backward", lif_backward, mutates_args=())


def _per_parameter(per_neuron: Tensor, num_params: int, inner: int) -> Tensor:
    """Sum a per-neuron gradient ``[N]`` into ``[P]``: neuron n belongs to entry ``(n // inner) % P``."""
    if per_neuron.numel() == 0:
        return per_neuron.new_empty(0)
    if num_params == 1:
        return per_neuron.sum().reshape(1)
    return per_neuron.view(-1, num_params, inner).sum((0, 2))


@lif_backward_op.register_fake
def _(grad_spikes, grad_v_last, grad_count, saved, recompute, tau, v_threshold, v_init, v_reset, soft_reset,
      decay_input, detach_reset, surrogate, alpha, need_tau_grad, need_vth_grad, backend):
    sd = state_dtype(saved.dtype)
    num_params = tau.numel()
    return (
        torch.empty_like(saved),
        saved.new_empty(saved.shape[1:], dtype=sd),
        saved.new_empty(num_params if need_tau_grad else 0, dtype=sd),
        saved.new_empty(num_params if need_vth_grad else 0, dtype=sd),
    )


def _setup_context(ctx, inputs, output, eager=False):
    """Autograd context of a forward: the backward calls the custom op (what torch.compile traces), or for
    ``_EagerLIF`` (``eager``) the plain function. A forward that did not save u saves x, from which the
    backward kernels recompute u."""
    x, tau, v_threshold, v_init, scalars, flags, backend = inputs
    save_state, count_spikes = flags[4], flags[5]
    ctx.scalars, ctx.flags = scalars, flags
    ctx.backend = backend
    ctx.eager = eager
    ctx.recompute = not save_state
    ctx.save_for_backward(x if ctx.recompute else output[2], tau, v_threshold, v_init)
    # u, and the count when it was not asked for (then an empty placeholder)
    ctx.mark_non_differentiable(*(output[2:3] if count_spikes else output[2:]))
    ctx.set_materialize_grads(False)  # an unused v_T gives grad None, so the kernel can skip that term


def _backward(ctx, grad_spikes, grad_v_last, grad_u, grad_count):
    saved, tau, v_threshold, v_init = ctx.saved_tensors
    v_reset, alpha = ctx.scalars
    soft_reset, decay_input, detach_reset, surrogate = ctx.flags[:4]
    need_x, need_tau, need_vth, need_v_init = ctx.needs_input_grad[:4]
    if grad_spikes is None:
        grad_spikes = torch.zeros_like(saved)
    grad_x, grad_v_init, grad_tau, grad_vth = (lif_backward if ctx.eager else lif_backward_op)(
        grad_spikes, grad_v_last, grad_count, saved, ctx.recompute, tau, v_threshold, v_init, v_reset,
        bool(soft_reset), bool(decay_input), bool(detach_reset), surrogate, alpha, need_tau, need_vth, ctx.backend,
    )
    return (
        grad_x if need_x else None,
        grad_tau if need_tau else None,
        grad_vth if need_vth else None,
        grad_v_init if need_v_init else None,
    ) + (None,) * 3


lif_forward_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLIF(torch.autograd.Function):
    """``tna::lif_forward`` with its autograd, as a plain autograd.Function over ``lif_forward`` and
    ``lif_backward`` (for eager mode; the arguments and outputs are the custom op's)."""

    @staticmethod
    def forward(ctx, x, tau, v_threshold, v_init, scalars, flags, backend):
        output = lif_forward(x, tau, v_threshold, v_init, scalars, flags, backend)
        _setup_context(ctx, (x, tau, v_threshold, v_init, scalars, flags, backend), output, eager=True)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes, grad_v_last, grad_u, grad_count):
        return _backward(ctx, grad_spikes, grad_v_last, grad_u, grad_count)


def _check_x(x) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor of shape [T, *], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty tensor of shape [T, *], got shape {tuple(x.shape)}")


def _as_parameter(name: str, value, x: Tensor, dtype: torch.dtype) -> Tensor:
    """A float or tensor parameter as a 1-D tensor of length 1 or C = x.shape[2], in ``dtype``."""
    if torch.is_tensor(value):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating-point tensor, got dtype {value.dtype}")
        if value.device != x.device:
            raise ValueError(f"{name} is on {value.device} but x is on {x.device}")
        if value.numel() != 1:
            channels = x.shape[2] if x.dim() >= 3 else None
            if value.dim() != 1 or value.numel() != channels:
                raise ValueError(
                    f"{name} must be a scalar or a 1-D tensor of length C = x.shape[2] "
                    f"(x is [T, B, C, ...] = {tuple(x.shape)}), got shape {tuple(value.shape)}"
                )
        return value.reshape(-1).to(dtype)
    infinite_tau = name == "tau" and value == math.inf  # no leak: an integrate-and-fire neuron
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) or infinite_tau):
        raise TypeError(f"{name} must be a finite float (tau may be math.inf) or a tensor, got {value!r}")
    return torch.full((1,), float(value), dtype=dtype, device=x.device)


def _check_v_init(v_init, x: Tensor, dtype: torch.dtype) -> Optional[Tensor]:
    if v_init is None:
        return None
    if not torch.is_tensor(v_init):
        if isinstance(v_init, bool) or not isinstance(v_init, (int, float)):
            raise TypeError(f"v_init must be None, a float or a tensor of shape x.shape[1:], got {v_init!r}")
        return torch.full(x.shape[1:], float(v_init), dtype=dtype, device=x.device)
    if v_init.shape != x.shape[1:]:
        raise ValueError(
            f"v_init must have shape x.shape[1:] = {tuple(x.shape[1:])}, got {tuple(v_init.shape)}"
        )
    if not v_init.is_floating_point():
        raise TypeError(f"v_init must be a floating-point tensor, got dtype {v_init.dtype}")
    if v_init.device != x.device:
        raise ValueError(f"v_init is on {v_init.device} but x is on {x.device}")
    return v_init.to(dtype).contiguous()


def check_lif_options(tau, v_reset, surrogate: str, alpha) -> float:
    """Validate the options shared by ``lif_multistep`` and ``nn.LIF``; returns the resolved alpha."""
    if not torch.is_tensor(tau) and isinstance(tau, (int, float)) and not tau >= 1:
        raise ValueError(f"tau must be >= 1 (the membrane time constant in steps), got {tau}")
    if v_reset is not None and (isinstance(v_reset, bool) or not isinstance(v_reset, (int, float))):
        raise TypeError(f"v_reset must be a float, or None for soft reset, got {v_reset!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")
    if alpha is None:
        return SURROGATES[surrogate].default_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a positive float (or None for the surrogate's default), got {alpha!r}")
    return float(alpha)


def lif_multistep(
    x: Tensor,
    *,
    tau=2.0,
    v_threshold=1.0,
    v_reset: Optional[float] = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "atan",
    alpha: Optional[float] = None,
    v_init=None,
    return_state: bool = False,
    return_count: bool = False,
    memory_saving: bool = False,
    backend: str = "auto",
):
    """Multi-step leaky integrate-and-fire neuron over the leading time dimension, in one fused pass.

    Args:
        x: input current ``[T, *]`` (``[T, B, C, ...]`` for per-channel parameters), float32, bfloat16,
            float16 or float64; any memory layout.
        tau: membrane time constant >= 1: a float, a one-element tensor, or a length-C tensor for
            per-channel values (C = ``x.shape[2]``). Tensors may require grad; their values are not
            checked (that would synchronize the device). ``math.inf`` with ``decay_input=False`` is an
            integrate-and-fire neuron without leak (``h = v + x``).
        v_threshold: firing threshold, same forms as ``tau``.
        v_reset: hard-reset potential, or None for soft reset (subtract the threshold).
        decay_input: whether the input is divided by tau (SpikingJelly's ``decay_input``).
        detach_reset: stop the gradient through the spike in the reset path.
        surrogate: one of "atan", "sigmoid", "fast_sigmoid", "triangle", "rectangle".
        alpha: surrogate sharpness; None takes the surrogate's default.
        v_init: initial membrane ``[*]`` (a float broadcasts); defaults to ``v_reset`` (0 for soft reset).
        return_state: also return the final membrane ``v_T`` (pass it as the next chunk's ``v_init``).
        return_count: also return the number of spikes, counted by the kernels in the same pass as the
            spikes. It is differentiable (d count / d spikes = 1: a spike-count penalty's gradient is
            added to every spike's gradient inside the backward sweep).
        memory_saving: keep nothing for backward but ``x``; the membrane is recomputed in backward. (The C++
            backend does so anyway for inputs past an eighth of the CPU's last-level cache, where it is faster.)
        backend: "auto", "torch" (the reference loop), "cpp" or "triton"; "auto" honours ``TNA_BACKEND``.

    Returns:
        spikes ``[T, *]`` in x's dtype (0 or 1); then ``v_T`` ``[*]`` (float32, float64 for float64 x)
        when ``return_state``; then ``count`` when ``return_count``: the number of spikes over all T and
        neurons, a 0-d tensor in the dtype of ``v_T`` (the kernels count exactly and round once; a float32
        holds every count up to 2^24). A tuple when more than the spikes are asked for.
    """
    _check_x(x)
    alpha = check_lif_options(tau, v_reset, surrogate, alpha)
    backend = resolve_backend(backend, x.device)
    if backend != "torch" and x.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"x dtype {x.dtype} is not supported by the {backend} backend; use one of {_KERNEL_DTYPES}")
    dtype = state_dtype(x.dtype)
    tau_t = _as_parameter("tau", tau, x, dtype)
    v_threshold_t = _as_parameter("v_threshold", v_threshold, x, dtype)
    num_params = max(tau_t.numel(), v_threshold_t.numel())
    tau_t, v_threshold_t = tau_t.expand(num_params).contiguous(), v_threshold_t.expand(num_params).contiguous()
    v_init_t = _check_v_init(v_init, x, dtype)

    if backend == "torch":
        def run(x, tau, v_threshold, v_init):
            return lif_multistep_reference(
                x, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, v_init, return_count
            )

        if memory_saving and torch.is_grad_enabled():
            results = checkpoint(run, x, tau_t, v_threshold_t, v_init_t, use_reentrant=False)
        else:
            results = run(x, tau_t, v_threshold_t, v_init_t)
        spikes, v_last, count = results if return_count else (*results, None)
    else:
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, tau_t, v_threshold_t, v_init_t)
        )
        # the C++ kernels recompute u from x when that moves fewer bytes than saving it
        save_u = needs_grad and not memory_saving and not (backend == "cpp" and _recomputes(x))
        flags = _forward_flags(v_reset is None, bool(decay_input), bool(detach_reset), SURROGATES[surrogate].id,
                               save_u, bool(return_count))
        scalars = [0.0 if v_reset is None else float(v_reset), alpha]
        if torch.compiler.is_compiling():
            forward = lif_forward_op
        else:
            forward = _EagerLIF.apply if needs_grad else lif_forward
        # the C++ forward reads an input repeated over T (a static image's current, expanded) in place
        in_place = (backend == "cpp" and not needs_grad and not torch.compiler.is_compiling()
                    and _repeated_over_time(x))
        spikes, v_last, _, count = forward(x if in_place else x.contiguous(), tau_t, v_threshold_t, v_init_t, scalars,
                                           flags, backend)
    outputs = (spikes,) + ((v_last,) if return_state else ()) + ((count,) if return_count else ())
    return outputs if len(outputs) > 1 else spikes
