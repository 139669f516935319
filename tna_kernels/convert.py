"""Swap SpikingJelly's multi-step LIF neurons in a model for :class:`tna_kernels.nn.LIF`.

:func:`replace_neurons` replaces every ``spikingjelly.activation_based.neuron.LIFNode`` and
``ParametricLIFNode`` (SpikingJelly 2.0.0, ``step_mode='m'``) with a :class:`~tna_kernels.nn.LIF` that
computes the same spikes and the same gradients with the fused kernels. SpikingJelly is imported only
when the function is called, so this module imports without it.
"""
import math
from dataclasses import dataclass
from typing import Optional

from torch import nn

from .nn.lif import LIF
from .ops.backend import BACKENDS

# SpikingJelly surrogate class -> (our surrogate, the only SpikingJelly alpha that matches or None for any).
# Derivatives, x = h - v_threshold:
#   ATan(a)               a / 2 / (1 + (pi/2 a x)^2)          = atan(a)
#   Sigmoid(a)            a sig(a x) (1 - sig(a x))            = sigmoid(a)
#   PiecewiseQuadratic(a) max(0, a - a^2 |x|)                  = triangle(a)
#   Rect(a)               a if |x| < 0.5 / a else 0            = rectangle(a)
#   SuperSpike(a)         a / (1 + |x|)^2                      = fast_sigmoid(1) only for a = 1
#   SoftSign(a)           a / (2 (1 + a |x|)^2)                = fast_sigmoid(2) only for a = 2
_SURROGATES = {
    "ATan": ("atan", None),
    "Sigmoid": ("sigmoid", None),
    "PiecewiseQuadratic": ("triangle", None),
    "Rect": ("rectangle", None),
    "SuperSpike": ("fast_sigmoid", 1.0),
    "SoftSign": ("fast_sigmoid", 2.0),
}


@dataclass(frozen=True)
class Replacement:
    """One replaced neuron: where it sat, what it was, and the ``repr`` of the LIF that took its place."""

    path: str
    old_type: str
    new_module: str


@dataclass(frozen=True)
class ConversionSummary:
    """What :func:`replace_neurons` did.

    Attributes:
        replaced: one :class:`Replacement` per module path, in ``named_modules`` order (a neuron shared
            by several paths appears once per path; all of them get the same new module).
        skipped: ``(path, reason)`` for subclasses of ``LIFNode`` / ``ParametricLIFNode``, left unchanged
            because a subclass may change the equations.
    """

    replaced: tuple[Replacement, ...]
    skipped: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} SpikingJelly neuron(s) with tna_kernels.nn.LIF"]
        lines += [f"  {r.path}: {r.old_type} -> {r.new_module}" for r in self.replaced]
        if self.skipped:
            lines.append(f"left {len(self.skipped)} unchanged:")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _surrogate(function, sj_surrogate) -> tuple[str, float]:
    """Our (surrogate, alpha) with the same derivative as a SpikingJelly surrogate; ValueError if none."""
    name = type(function).__name__
    if type(function).__module__ != sj_surrogate.__name__ or name not in _SURROGATES:
        raise ValueError(
            f"surrogate {name} has no tna_kernels counterpart with the same derivative (convertible: "
            f"{', '.join(_SURROGATES)})"
        )
    if not function.spiking:
        raise ValueError(f"surrogate {name} has spiking=False (its forward is not a spike)")
    alpha = function.alpha
    if not _is_real(alpha) or not alpha > 0:
        raise ValueError(f"surrogate {name} has alpha={alpha!r}; only a positive Python float converts")
    ours, only_alpha = _SURROGATES[name]
    if only_alpha is not None and alpha != only_alpha:
        raise ValueError(
            f"{name}(alpha={alpha:g}) has no tna_kernels counterpart; only {name}(alpha={only_alpha:g}) equals "
            f"{ours}(alpha={only_alpha:g})"
        )
    return ours, float(alpha)


def _counterpart(node, sj_surrogate, plif: bool, backend: str) -> LIF:
    """The LIF equal to a SpikingJelly LIFNode / ParametricLIFNode; ValueError naming what does not convert."""
    if node.step_mode != "m":
        raise ValueError(
            f"step_mode={node.step_mode!r}: only multi-step nodes (input [T, B, ...]) convert; use "
            "spikingjelly.activation_based.functional.set_step_mode(model, 'm')"
        )
    if node.store_v_seq:
        raise ValueError("store_v_seq=True: tna_kernels.nn.LIF does not record the membrane sequence v_seq")
    if getattr(node, "_neuron_precision", None) is not None:
        raise ValueError("a SpikingJelly neuron precision (prepare_model_for_precision) is set")
    if node._forward_hooks or node._forward_pre_hooks or node._backward_hooks or node._backward_pre_hooks:
        raise ValueError("it has hooks (e.g. a SpikingJelly monitor), which would be lost")
    if not _is_real(node.v_threshold):
        raise ValueError(f"v_threshold={node.v_threshold!r}; only a Python float converts")
    if node.v_reset is not None and not _is_real(node.v_reset):
        raise ValueError(f"v_reset={node.v_reset!r}; only a Python float or None converts")
    for flag in ("decay_input", "detach_reset"):
        if not isinstance(getattr(node, flag), bool):
            raise ValueError(f"{flag}={getattr(node, flag)!r} is not a bool")
    surrogate, alpha = _surrogate(node.surrogate_function, sj_surrogate)
    options = dict(
        v_threshold=float(node.v_threshold),
        v_reset=None if node.v_reset is None else float(node.v_reset),
        decay_input=node.decay_input,
        detach_reset=node.detach_reset,
        surrogate=surrogate,
        alpha=alpha,
        backend=backend,
    )
    if not plif:
        if not _is_real(node.tau) or not node.tau >= 1:
            raise ValueError(f"tau={node.tau!r}; only a Python float >= 1 converts")
        return LIF(tau=float(node.tau), **options).train(node.training)
    if node.w.numel() != 1:
        raise ValueError(f"w has shape {tuple(node.w.shape)}; only SpikingJelly's scalar w converts")
    # 1 / sigmoid(w) = 1 + exp(-w): SpikingJelly's w is our tau_weight, so it is copied as it is and the
    # placeholder tau=2.0 is overwritten.
    lif = LIF(tau=2.0, learnable_tau=True, **options)
    lif.tau_weight = nn.Parameter(node.w.detach().reshape(1).clone(), requires_grad=node.w.requires_grad)
    return lif.train(node.training)


def replace_neurons(model: nn.Module, *, backend: str = "auto") -> ConversionSummary:
    """Replace SpikingJelly multi-step LIF neurons in ``model``, in place, with :class:`tna_kernels.nn.LIF`.

    Every ``LIFNode`` and ``ParametricLIFNode`` (exact types; subclasses are left alone and listed in
    ``summary.skipped``) becomes a LIF with the same ``tau``, ``v_threshold``, ``v_reset`` (None: soft
    reset), ``decay_input``, ``detach_reset``, surrogate derivative and alpha, and train/eval mode. Input
    and output keep SpikingJelly's multi-step layout: spikes ``[T, B, ...]`` from input ``[T, B, ...]``,
    in the input's dtype.

    ``ParametricLIFNode``: SpikingJelly's tau is ``1 / sigmoid(w)``, which equals our learnable
    ``tau = 1 + exp(-tau_weight)``, so the converted module's ``tau_weight`` (shape ``[1]``) holds the node's
    current ``w`` (shape ``[]``), on its device, in its dtype and with its ``requires_grad``: gradients with
    respect to ``tau_weight`` are SpikingJelly's gradients with respect to ``w``. Create the optimizer after
    converting, since the parameter is a new object (a state dict saved before converting names it ``w``).

    State: a SpikingJelly node keeps its membrane ``v`` between calls until
    ``functional.reset_net``; the LIF starts every call from ``v_reset`` (0 for soft reset). A converted
    model therefore gives what the SpikingJelly model gives on a fresh state (after ``reset_net``); any
    membrane held by a node when it is converted is dropped. To carry the membrane over chunks of a
    sequence, use ``tna_kernels.nn.LIF(return_state=True)`` and ``forward(x, v_init=...)``.

    Numerics (float32 and float64; both fire on ``h >= v_threshold``): for ``LIFNode`` SpikingJelly 2.0.0
    rounds the same operations, so membranes and spikes are bit for bit the same. For ``ParametricLIFNode``
    SpikingJelly multiplies by ``sigmoid(w)`` where the LIF divides by ``1 + exp(-w)``: the membranes can
    differ in the last bit, which flips a spike only where the membrane is within that rounding of the
    threshold. Gradients agree to rounding. For float16 / bfloat16 input SpikingJelly keeps the membrane in
    the input dtype, the LIF in float32, so results differ by rounding.

    All-or-nothing: every node is checked first, and if any cannot be converted nothing is replaced and
    one ValueError lists each offending module path with its reason. Not converted: ``step_mode='s'``,
    ``store_v_seq=True``, a neuron precision set by SpikingJelly's ``prepare_model_for_precision``, hooks on
    the node (e.g. monitors), a ``v_threshold`` / ``v_reset`` / ``tau`` / surrogate ``alpha`` that is not a
    Python number (e.g. a tensor), a ``w`` with more than one element, ``spiking=False`` surrogates, the
    model itself being a node, and surrogates without an equal derivative here. Converted surrogates:
    ``ATan(a)`` -> atan, ``Sigmoid(a)`` -> sigmoid, ``PiecewiseQuadratic(a)`` -> triangle, ``Rect(a)`` ->
    rectangle (same alpha); ``SuperSpike(1)`` -> fast_sigmoid(1) and ``SoftSign(2)`` -> fast_sigmoid(2)
    (other alphas of these two differ from every fast_sigmoid, so they are refused).

    Args:
        model: any module holding SpikingJelly neurons (not a neuron itself).
        backend: the new modules' ``backend`` ("auto", "torch", "cpp", "triton"; see ``lif_multistep``).

    Returns:
        a :class:`ConversionSummary`; ``print(summary)`` lists each replaced path.

    Raises:
        ImportError: spikingjelly is not installed.
        ValueError: some neuron cannot be converted (``model`` is then unchanged), or ``backend`` is unknown.
    """
    try:
        from spikingjelly.activation_based import neuron as sj_neuron
        from spikingjelly.activation_based import surrogate as sj_surrogate
    except ImportError as error:
        raise ImportError(
            "tna_kernels.convert.replace_neurons converts SpikingJelly neurons and needs spikingjelly: "
            "pip install spikingjelly"
        ) from error
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kinds = {sj_neuron.LIFNode: False, sj_neuron.ParametricLIFNode: True}

    new_modules: dict[int, Optional[LIF]] = {}
    targets: list[tuple[str, nn.Module]] = []
    skipped: list[tuple[str, str]] = []
    problems: list[str] = []
    for path, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, tuple(kinds)):
            continue
        kind = type(module).__name__
        if type(module) not in kinds:
            base = next(k for k in kinds if isinstance(module, k)).__name__
            skipped.append((path, f"{kind} is a subclass of {base}; its equations may differ"))
            continue
        if not path:
            problems.append(f"<model> ({kind}): the model itself is a neuron; build tna_kernels.nn.LIF instead")
            continue
        targets.append((path, module))
        if id(module) in new_modules:
            continue
        try:
            new_modules[id(module)] = _counterpart(module, sj_surrogate, kinds[type(module)], backend)
        except ValueError as error:
            new_modules[id(module)] = None
            problems.append(f"{path!r} ({kind}): {error}")
    if problems:
        raise ValueError(
            "replace_neurons changed nothing: these SpikingJelly neurons cannot be converted:\n  "
            + "\n  ".join(problems)
        )

    replaced = []
    for path, module in targets:
        parent_path, _, name = path.rpartition(".")
        new = new_modules[id(module)]
        setattr(model.get_submodule(parent_path), name, new)
        replaced.append(Replacement(path, type(module).__name__, repr(new)))
    return ConversionSummary(tuple(replaced), tuple(skipped))
