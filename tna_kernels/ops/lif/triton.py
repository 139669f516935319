"""Triton kernels for the multi-step LIF neuron: fused forward and reverse-time surrogate backward.

Implements the two functions of ``INTERFACE.md`` (``lif_forward``, ``lif_backward``) on a flat
``[T, N]`` view. One program owns ``BLOCK_N`` neurons and loops over all T timesteps, keeping the
membrane state (and, in the backward, the running gradient of ``v``) in registers. Per-channel
parameters are gathered once per program with index ``(n // inner) % P``.

Arithmetic runs in the state dtype: float64 for float64 input, float32 otherwise. The forward
follows the interface's equations operation by operation with correctly rounded division (no
reciprocal of tau, no ``div.full`` approximation), so float32 spikes equal ``reference.py`` bit for
bit. The backward multiplies by a correctly rounded ``1 / tau`` computed once per neuron and divides
in the surrogate with the GPU's fast division (within 2 ulp), so its gradients equal the interface's
formulas up to float rounding. The forward can count the spikes as it
writes them: an int32 per neuron in registers, summed per program and added to one int64 counter.
These are integer additions, so the count is exact and does not depend on the order of the programs.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors with one small block size.
"""
import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from .reference import state_dtype

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_NUM_SURROGATES = 5


def _configs(max_per_thread: int) -> list:
    """Autotune space: BLOCK_N x num_warps, at most ``max_per_thread`` neurons per thread (more spills
    registers: the backward carries about a dozen float32 values per neuron)."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 128}, num_warps=4)]
    return [
        triton.Config({"BLOCK_N": block_n}, num_warps=num_warps)
        for block_n in (256, 512, 1024, 2048, 4096)
        for num_warps in (4, 8)
        if block_n // (32 * num_warps) <= max_per_thread
    ]


@triton.jit
def _div(a, b):
    """a / b correctly rounded: float32 ``/`` lowers to an approximate division on NVIDIA GPUs."""
    if a.dtype == tl.float64:
        b_q = a / b
    else:
        b_q = tl.math.div_rn(a, b)
    return b_q


@triton.jit
def _row_mask(o_n, N, valid):
    """Neuron mask for a timestep row that exists only where the scalar condition ``valid`` holds."""
    return o_n < tl.where(valid, N, 0)


@triton.jit
def _spike_from_u(b_u):
    """s = 1 where u is not NaN and its sign bit is clear (exact for u rounded to x's dtype)."""
    if b_u.dtype == tl.float64:
        b_bits = b_u.to(tl.int64, bitcast=True)
    else:
        b_bits = b_u.to(tl.int32, bitcast=True)
    return ((b_bits >= 0) & (b_u == b_u)).to(b_u.dtype)


@triton.jit
def _surrogate_grad(b_u, b_a, b_b, SURROGATE: tl.constexpr):
    """sg'(u) of ``surrogate.py`` by id; ``b_a``, ``b_b`` are the constants of ``_surrogate_constants``.
    Its divisions are the GPU's fast float32 ones (within 2 ulp): a gradient needs no correct rounding,
    and a correctly rounded division costs about as many instructions as the rest of a backward step."""
    if SURROGATE == 0:
        b_z = b_b * b_u
        b_sg = b_a / (1. + b_z * b_z)
    elif SURROGATE == 1:
        b_sig = 1. / (1. + tl.exp(-(b_a * b_u)))
        b_sg = b_a * b_sig * (1. - b_sig)
    elif SURROGATE == 2:
        b_d = 1. + b_a * tl.abs(b_u)
        b_sg = 1. / (b_d * b_d)
    elif SURROGATE == 3:
        b_peak = b_a - b_b * tl.abs(b_u)
        b_sg = tl.where(b_peak > 0, b_peak, 0.)
    else:
        b_sg = tl.where(tl.abs(b_u) < b_b, b_a, 0.)
    return b_sg


@triton.autotune(configs=_configs(max_per_thread=16), key=["N"])
@triton.jit(do_not_specialize=["T"])
def lif_fwd_kernel(
    x,
    tau,
    v_threshold,
    v_init,
    spikes,
    v_last,
    u,
    count,
    v_reset: tl.float64,
    T,
    N,
    P,
    inner,
    HAS_V_INIT: tl.constexpr,
    SOFT_RESET: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    SAVE_STATE: tl.constexpr,
    COUNT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_n = tl.program_id(0)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_p = (o_n // inner) % P

    b_tau = tl.load(tau + o_p, mask=m_n, other=1.)
    b_vth = tl.load(v_threshold + o_p, mask=m_n, other=0.)
    b_vr = tl.full([BLOCK_N], v_reset, b_tau.dtype)
    if HAS_V_INIT:
        b_v = tl.load(v_init + o_n, mask=m_n, other=0.).to(b_tau.dtype)
    else:
        b_v = b_vr
    b_count = tl.zeros([BLOCK_N], tl.int32)

    # x[t + 1] is prefetched while step t computes.
    b_x = tl.load(x + o_n, mask=_row_mask(o_n, N, T > 0), other=0.)
    for i_t in range(T):
        o_t = tl.cast(i_t, tl.int64) * N
        b_x_next = tl.load(x + (o_t + N) + o_n, mask=_row_mask(o_n, N, i_t + 1 < T), other=0.)

        b_xt = b_x.to(b_tau.dtype)
        if DECAY_INPUT:
            b_h = b_v + _div(b_xt - (b_v - b_vr), b_tau)
        else:
            b_h = (b_v - _div(b_v - b_vr, b_tau)) + b_xt
        b_u = b_h - b_vth
        b_fire = b_u >= 0
        b_s = b_fire.to(b_tau.dtype)
        if SOFT_RESET:
            b_v = b_h - b_vth * b_s
        else:
            b_v = b_h * (1. - b_s) + b_vr * b_s

        tl.store(spikes + o_t + o_n, b_s.to(spikes.dtype.element_ty), mask=m_n)
        if COUNT:
            b_count += b_fire.to(tl.int32)
        if SAVE_STATE:
            # -0.0 -> +0.0 so that the backward's sign-bit rule gives s = 1, as u >= 0 did here.
            b_u = tl.where(b_u == 0., 0., b_u)
            tl.store(u + o_t + o_n, b_u.to(u.dtype.element_ty), mask=m_n)
        b_x = b_x_next

    tl.store(v_last + o_n, b_v, mask=m_n)
    if COUNT:
        tl.atomic_add(count, tl.sum(tl.where(m_n, b_count, 0).to(tl.int64)), sem="relaxed")


@triton.autotune(configs=_configs(max_per_thread=8), key=["N"])
@triton.jit(do_not_specialize=["T"])
def lif_bwd_kernel(
    grad_spikes,
    grad_v_last,
    grad_count,
    u,
    tau,
    v_threshold,
    v_init,
    grad_x,
    grad_v_init,
    grad_tau,
    grad_vth,
    v_reset: tl.float64,
    sg_a: tl.float64,
    sg_b: tl.float64,
    T,
    N,
    P,
    inner,
    HAS_V_INIT: tl.constexpr,
    HAS_GRAD_V_LAST: tl.constexpr,
    HAS_GRAD_COUNT: tl.constexpr,
    SOFT_RESET: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    SURROGATE: tl.constexpr,
    NEED_TAU_GRAD: tl.constexpr,
    NEED_VTH_GRAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_n = tl.program_id(0)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_p = (o_n // inner) % P

    b_tau = tl.load(tau + o_p, mask=m_n, other=1.)
    b_vth = tl.load(v_threshold + o_p, mask=m_n, other=0.)
    b_vr = tl.full([BLOCK_N], v_reset, b_tau.dtype)
    b_a = tl.full([BLOCK_N], sg_a, b_tau.dtype)
    b_b = tl.full([BLOCK_N], sg_b, b_tau.dtype)
    b_rtau = _div(tl.full([BLOCK_N], 1., b_tau.dtype), b_tau)
    b_decay = 1. - b_rtau
    if HAS_V_INIT:
        b_v0 = tl.load(v_init + o_n, mask=m_n, other=0.).to(b_tau.dtype)
    else:
        b_v0 = b_vr
    if HAS_GRAD_V_LAST:
        b_gv = tl.load(grad_v_last + o_n, mask=m_n, other=0.).to(b_tau.dtype)
    else:
        b_gv = tl.zeros([BLOCK_N], b_tau.dtype)
    if HAS_GRAD_COUNT:
        b_gc = tl.load(grad_count)
    b_dtau = tl.zeros([BLOCK_N], b_tau.dtype)
    b_dvth = tl.zeros([BLOCK_N], b_tau.dtype)

    # u[t] and u[t-1] are carried in registers (each u element is read once); u[t-2] and
    # grad_spikes[t-1] are prefetched while step t computes.
    o_t = (T - 1).to(tl.int64) * N
    b_u = tl.load(u + o_t + o_n, mask=_row_mask(o_n, N, T >= 1), other=0.).to(b_tau.dtype)
    b_gs = tl.load(grad_spikes + o_t + o_n, mask=_row_mask(o_n, N, T >= 1), other=0.).to(b_tau.dtype)
    b_up = tl.load(u + (o_t - N) + o_n, mask=_row_mask(o_n, N, T >= 2), other=0.).to(b_tau.dtype)
    for i in range(T):
        i_t = T - 1 - i
        o_t = i_t.to(tl.int64) * N
        b_upp = tl.load(u + (o_t - N - N) + o_n, mask=_row_mask(o_n, N, i_t >= 2), other=0.).to(b_tau.dtype)
        b_gs_next = tl.load(grad_spikes + (o_t - N) + o_n, mask=_row_mask(o_n, N, i_t >= 1), other=0.).to(b_tau.dtype)

        if HAS_GRAD_COUNT:
            b_gs = b_gs + b_gc  # d count / d s = 1
        b_h = b_u + b_vth
        b_s = _spike_from_u(b_u)
        b_sg = _surrogate_grad(b_u, b_a, b_b, SURROGATE)
        # dv/dh and dv/dvth of the reset (v does not depend on vth for a detached hard reset)
        if SOFT_RESET:
            if DETACH_RESET:
                b_dvdh = tl.full([BLOCK_N], 1., b_tau.dtype)
                b_dvdvth = -b_s
            else:
                b_dvdh = 1. - b_vth * b_sg
                b_dvdvth = -b_s + b_vth * b_sg
        else:
            if DETACH_RESET:
                b_dvdh = 1. - b_s
                b_dvdvth = tl.zeros([BLOCK_N], b_tau.dtype)
            else:
                b_dvdh = (1. - b_s) + (b_vr - b_h) * b_sg
                b_dvdvth = -(b_vr - b_h) * b_sg
        b_gv_dvdh = b_gv * b_dvdh
        b_gv_dvdvth = b_gv * b_dvdvth
        if not HAS_GRAD_V_LAST:
            # v[T-1] has no gradient at all: its terms are absent, not 0 * (a factor that may be NaN)
            b_gv_dvdh = tl.where(i_t < T - 1, b_gv_dvdh, 0.)
            b_gv_dvdvth = tl.where(i_t < T - 1, b_gv_dvdvth, 0.)
        b_gh = b_gs * b_sg + b_gv_dvdh

        if NEED_VTH_GRAD:
            if SOFT_RESET:
                b_dvth += -b_gs * b_sg + b_gv_dvdvth
            elif DETACH_RESET:
                b_dvth += -b_gs * b_sg
            else:
                b_dvth += -b_gs * b_sg + b_gv_dvdvth

        if NEED_TAU_GRAD:
            b_hp = b_up + b_vth
            b_sp = _spike_from_u(b_up)
            if SOFT_RESET:
                b_vp = b_hp - b_vth * b_sp
            else:
                b_vp = b_hp * (1. - b_sp) + b_vr * b_sp
            b_vp = tl.where(i_t > 0, b_vp, b_v0)
            if DECAY_INPUT:
                b_dtau += b_gh * (-(b_h - b_vp) * b_rtau)
            else:
                b_dtau += b_gh * ((b_vp - b_vr) * (b_rtau * b_rtau))

        if DECAY_INPUT:
            b_gx = b_gh * b_rtau
        else:
            b_gx = b_gh
        tl.store(grad_x + o_t + o_n, b_gx.to(grad_x.dtype.element_ty), mask=m_n)
        b_gv = b_gh * b_decay

        b_u = b_up
        b_up = b_upp
        b_gs = b_gs_next

    tl.store(grad_v_init + o_n, b_gv, mask=m_n)
    if NEED_TAU_GRAD:
        tl.store(grad_tau + o_n, b_dtau, mask=m_n)
    if NEED_VTH_GRAD:
        tl.store(grad_vth + o_n, b_dvth, mask=m_n)


def _check_time_major(name: str, t: torch.Tensor) -> None:
    if not torch.is_tensor(t) or t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [T, N] tensor, got {_describe(t)}")
    if t.dtype not in _X_DTYPES:
        raise ValueError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if t.device.type == "cpu" and not _INTERPRET:
        raise ValueError(f"{name} is on the CPU: the Triton LIF kernels need a GPU tensor (or TRITON_INTERPRET=1)")


def _check_like(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    if not torch.is_tensor(t) or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {_describe(t)}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_params(tau: torch.Tensor, v_threshold: torch.Tensor, dtype: torch.dtype, device: torch.device) -> int:
    """Check tau and v_threshold (1-D, same length P >= 1, state dtype); returns P."""
    for name, t in (("tau", tau), ("v_threshold", v_threshold)):
        if not torch.is_tensor(t) or t.dim() != 1 or t.numel() < 1:
            raise ValueError(f"{name} must be a 1-D tensor of length >= 1, got {_describe(t)}")
    if tau.numel() != v_threshold.numel():
        raise ValueError(f"tau and v_threshold must have the same length, got {tau.numel()} and {v_threshold.numel()}")
    _check_like("tau", tau, tau.shape, dtype, device)
    _check_like("v_threshold", v_threshold, v_threshold.shape, dtype, device)
    return tau.numel()


def _check_scalars(v_reset, soft_reset: bool, inner) -> tuple[float, int]:
    v_reset = float(v_reset)
    if soft_reset and v_reset != 0.0:
        raise ValueError(f"v_reset must be 0.0 for soft reset, got {v_reset}")
    if isinstance(inner, bool) or not isinstance(inner, int) or inner < 1:
        raise ValueError(f"inner must be an int >= 1, got {inner!r}")
    return v_reset, inner


def _describe(t) -> str:
    if torch.is_tensor(t):
        return f"a tensor of shape {list(t.shape)}"
    return repr(type(t).__name__)


def _device_guard(t: torch.Tensor):
    """Make t's GPU the current device, so the kernel launches where the data lives."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _surrogate_constants(surrogate: int, alpha: float) -> tuple[float, float]:
    """The two double-precision constants ``(a, b)`` of surrogate ``id`` for ``_surrogate_grad``,
    computed on the host exactly as ``surrogate.py`` forms them."""
    if surrogate == 0:
        return alpha / 2, math.pi / 2 * alpha
    if surrogate == 3:
        return alpha, alpha * alpha
    if surrogate == 4:
        return alpha, 0.5 / alpha
    return alpha, 0.0


def lif_forward(
    x: torch.Tensor,
    tau: torch.Tensor,
    v_threshold: torch.Tensor,
    v_init: torch.Tensor | None,
    v_reset: float,
    soft_reset: bool,
    decay_input: bool,
    inner: int,
    save_state: bool,
    count_spikes: bool,
    stream: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-step LIF forward over all T timesteps in one launch.

    Args:
        x: input current ``[T, N]``, contiguous, float32 / float16 / bfloat16 / float64.
        tau, v_threshold: ``[P]`` contiguous, state dtype (float64 for float64 x, else float32);
            neuron n uses index ``(n // inner) % P``.
        v_init: initial membrane ``[N]`` in the state dtype, or None (start at ``v_reset``).
        v_reset: reset potential; must be 0.0 when ``soft_reset``.
        soft_reset: subtract the threshold on a spike instead of resetting to ``v_reset``.
        decay_input: ``h = v + (x - (v - v_reset)) / tau`` if true, else ``h = v - (v - v_reset) / tau + x``.
        inner: int >= 1, product of the dims after the channel dim.
        save_state: also return ``u = h - v_threshold`` for the backward.
        count_spikes: also return the number of spikes, counted in the same pass.
        stream: the C++ kernels' hint that the outputs will not stay in the cache; unused here.

    Returns:
        spikes ``[T, N]`` in x's dtype (0 or 1), v_last ``[N]`` in the state dtype, u ``[T, N]`` in x's
        dtype when ``save_state`` (an empty ``(0,)`` tensor otherwise), and the spike count, a 0-d tensor
        in the state dtype, when ``count_spikes`` (an empty ``(0,)`` tensor otherwise).
    """
    _check_time_major("x", x)
    T, N = x.shape
    state = state_dtype(x.dtype)
    P = _check_params(tau, v_threshold, state, x.device)
    if v_init is not None:
        _check_like("v_init", v_init, (N,), state, x.device)
    v_reset, inner = _check_scalars(v_reset, soft_reset, inner)

    spikes = torch.empty((T, N), dtype=x.dtype, device=x.device)
    v_last = torch.empty((N,), dtype=state, device=x.device)
    u = torch.empty((T, N) if save_state else (0,), dtype=x.dtype, device=x.device)
    total = torch.zeros((), dtype=torch.int64, device=x.device) if count_spikes else None

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]),)

    if N > 0:
        with _device_guard(x):
            lif_fwd_kernel[grid](
                x, tau, v_threshold, v_init, spikes, v_last, u if save_state else None, total,
                v_reset, T, N, P, inner,
                HAS_V_INIT=v_init is not None,
                SOFT_RESET=bool(soft_reset),
                DECAY_INPUT=bool(decay_input),
                SAVE_STATE=bool(save_state),
                COUNT=bool(count_spikes),
            )
    count = total.to(state) if count_spikes else torch.empty((0,), dtype=state, device=x.device)
    return spikes, v_last, u, count


def lif_backward(
    grad_spikes: torch.Tensor,
    grad_v_last: torch.Tensor | None,
    grad_count: torch.Tensor | None,
    saved: torch.Tensor,
    recompute: bool,
    tau: torch.Tensor,
    v_threshold: torch.Tensor,
    v_init: torch.Tensor | None,
    v_reset: float,
    soft_reset: bool,
    decay_input: bool,
    detach_reset: bool,
    surrogate: int,
    alpha: float,
    inner: int,
    need_tau_grad: bool,
    need_vth_grad: bool,
    stream: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reverse-time LIF backward with a surrogate spike derivative, one launch for all T steps.

    Args:
        grad_spikes: gradient of the spikes ``[T, N]``, contiguous, x's dtype.
        grad_v_last: gradient of v_last ``[N]`` in the state dtype, or None (zero).
        grad_count: gradient of the spike count, 0-d in the state dtype, or None (zero); it is added
            to the gradient of every spike.
        saved: ``u = h - v_threshold`` ``[T, N]`` in x's dtype, as saved by ``lif_forward(save_state=True)``;
            or, when ``recompute``, the forward's input x, from which a forward launch remakes u.
        tau, v_threshold, v_init, v_reset, soft_reset, decay_input, inner: as in the forward.
        detach_reset: the reset carries no gradient through the spike.
        surrogate: surrogate id of ``surrogate.py`` (0 atan, 1 sigmoid, 2 fast_sigmoid,
            3 triangle, 4 rectangle); alpha: its sharpness (> 0).
        need_tau_grad, need_vth_grad: compute the per-neuron tau / v_threshold gradients.
        stream: as in the forward (unused here).

    Returns:
        grad_x ``[T, N]`` in x's dtype, grad_v_init ``[N]`` in the state dtype, and grad_tau,
        grad_vth ``[N]`` in the state dtype holding each neuron's sum over t (empty ``(0,)``
        tensors when not requested).
    """
    if recompute:
        _check_time_major("x", saved)
        u = lif_forward(saved, tau, v_threshold, v_init, v_reset, soft_reset, decay_input, inner, True, False)[2]
    else:
        u = saved
    _check_time_major("u", u)
    T, N = u.shape
    state = state_dtype(u.dtype)
    _check_like("grad_spikes", grad_spikes, (T, N), u.dtype, u.device)
    if grad_v_last is not None:
        _check_like("grad_v_last", grad_v_last, (N,), state, u.device)
    if grad_count is not None:
        _check_like("grad_count", grad_count, (), state, u.device)
    P = _check_params(tau, v_threshold, state, u.device)
    if v_init is not None:
        _check_like("v_init", v_init, (N,), state, u.device)
    v_reset, inner = _check_scalars(v_reset, soft_reset, inner)
    if isinstance(surrogate, bool) or not isinstance(surrogate, int) or not 0 <= surrogate < _NUM_SURROGATES:
        raise ValueError(f"surrogate must be an int id in [0, {_NUM_SURROGATES}), got {surrogate!r}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite float > 0, got {alpha}")
    sg_a, sg_b = _surrogate_constants(surrogate, alpha)

    grad_x = torch.empty((T, N), dtype=u.dtype, device=u.device)
    grad_v_init = torch.empty((N,), dtype=state, device=u.device)
    grad_tau = torch.empty((N,) if need_tau_grad else (0,), dtype=state, device=u.device)
    grad_vth = torch.empty((N,) if need_vth_grad else (0,), dtype=state, device=u.device)
    if N == 0:
        return grad_x, grad_v_init, grad_tau, grad_vth

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]),)

    with _device_guard(u):
        lif_bwd_kernel[grid](
            grad_spikes, grad_v_last, grad_count, u, tau, v_threshold, v_init,
            grad_x, grad_v_init, grad_tau if need_tau_grad else None, grad_vth if need_vth_grad else None,
            v_reset, sg_a, sg_b, T, N, P, inner,
            HAS_V_INIT=v_init is not None,
            HAS_GRAD_V_LAST=grad_v_last is not None,
            HAS_GRAD_COUNT=grad_count is not None,
            SOFT_RESET=bool(soft_reset),
            DECAY_INPUT=bool(decay_input),
            DETACH_RESET=bool(detach_reset),
            SURROGATE=surrogate,
            NEED_TAU_GRAD=bool(need_tau_grad),
            NEED_VTH_GRAD=bool(need_vth_grad),
        )
    return grad_x, grad_v_init, grad_tau, grad_vth
