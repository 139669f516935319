"""The peer libraries' multi-step LIF neurons, set to our equations where their APIs allow, for the benchmarks.

Each :class:`Peer` runs a neuron over ``x`` ``[T, *]`` from a fresh state (the state is reset before every
call) and returns its spikes ``[T, *]``. ``ours`` holds the ``tna_kernels.lif_multistep`` options whose
equations the peer shares (``{}``: our defaults, tau=2, v_threshold=1, v_reset=0, decay_input=True, atan
with alpha=2), so the benchmark can time our LIF under the same equations and check that the spikes are
equal first; ``note`` says, in one line, how the peer is set and what differs. A peer that fires on
``v > v_threshold`` where we fire on ``>=`` differs from our equations only on exact ties; its ``ours``
sets ``v_threshold`` to ``ABOVE_V_THRESHOLD``, with which the spikes are equal even there.

Verified on CPU with float32 input (``tests/test_peer_mappings.py`` and ``tests/test_convert.py`` hold the
same mappings): spikes equal and input gradients equal to rounding, for every peer below.

A library that is not installed contributes no peer.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch

TAU = 2.0
V_THRESHOLD = 1.0
# The float32 number just above V_THRESHOLD. snnTorch and Norse fire on v > threshold where we fire on
# v >= threshold; with a hard reset the threshold enters only that comparison, so our LIF with this
# threshold fires exactly where they do (float32 membranes), and the spikes can be checked for equality.
ABOVE_V_THRESHOLD = torch.nextafter(torch.tensor(V_THRESHOLD), torch.tensor(2 * V_THRESHOLD)).item()
V_RESET = 0.0
ATAN_ALPHA = 2.0


@dataclass
class Peer:
    """A peer neuron: ``run(x)`` maps ``[T, *]`` to spikes ``[T, *]`` from a fresh state."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    ours: Optional[dict]
    note: str


def peer_versions() -> dict:
    """Versions of the installed peer libraries, by package name."""
    from importlib import metadata

    found = {}
    for package in ("spikingjelly", "snntorch", "norse"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def lif_peers(device: str, dtype: torch.dtype = torch.float32) -> list:
    """Every installed peer neuron for ``dtype`` input on ``device``.

    For float16 / bfloat16 input the peers keep the membrane in that dtype where we keep it in float32, so
    the spikes may differ by rounding (the benchmarks check them on float32 input).
    """
    peers = _spikingjelly(device) + _snntorch(device) + _norse(device)
    if dtype in (torch.float16, torch.bfloat16):
        for peer in peers:
            peer.note += f"; membrane in {str(dtype).removeprefix('torch.')} (ours: float32)"
    return peers


def _spikingjelly(device: str) -> list:
    """SpikingJelly 2.x ``LIFNode(step_mode='m')`` with our default equations, once per implementation.

    SpikingJelly 2.0.0 has no ``backend`` argument or ``supported_backends``: on CPU it runs one
    implementation (a Torch forward loop and a registered backward op); on CUDA it picks "cuda", "triton" or
    "torch" by the ``SJ_LIF_CUDA_IMPLEMENTATION`` environment variable, read when SpikingJelly is imported.
    Each available one is selected in turn here through the same selection object (a private attribute).
    """
    try:
        from spikingjelly.activation_based import functional, neuron, surrogate
    except ImportError:
        return []
    node = neuron.LIFNode(
        tau=TAU, decay_input=True, v_threshold=V_THRESHOLD, v_reset=V_RESET, detach_reset=False,
        surrogate_function=surrogate.ATan(alpha=ATAN_ALPHA), step_mode="m",
    ).to(device)
    note = "LIFNode(tau=2.0, v_reset=0.0, ATan(alpha=2.0), step_mode='m'): our equations, h >= v_threshold fires"

    def run(x, implementation=None):
        if implementation is not None:
            _select_spikingjelly(implementation)
        functional.reset_net(node)
        return node(x)

    if device == "cpu":
        return [Peer("SpikingJelly LIFNode", run, {}, note)]
    peers = []
    for implementation in ("cuda", "triton", "torch"):
        try:
            run(torch.ones(2, 8, device=device), implementation)
        except (ImportError, RuntimeError, ValueError):
            continue
        peers.append(Peer(f"SpikingJelly LIFNode ({implementation})",
                          lambda x, name=implementation: run(x, name), {}, note))
    return peers


def _select_spikingjelly(implementation: str) -> None:
    """Make SpikingJelly's LIF run ``implementation`` on CUDA, as ``SJ_LIF_CUDA_IMPLEMENTATION`` would."""
    from spikingjelly._ops import lif

    selection = lif._selection
    if selection._requested != implementation:
        selection._requested = implementation
        selection._selections.clear()
        selection._compiled_selections.clear()


def leaky_time_loop(leaky) -> Callable:
    """A function of ``x`` ``[T, *]`` returning the spikes ``[T, *]`` of the snnTorch ``Leaky`` stepped over
    time from a zero membrane."""

    def run(x):
        mem = leaky.reset_mem()
        spikes = []
        for x_t in x:
            spk, mem = leaky(x_t, mem)
            spikes.append(spk)
        return torch.stack(spikes)

    return run


def _snntorch(device: str) -> list:
    """snnTorch ``Leaky`` in a Python time loop, under the options of ours that it equals.

    ``Leaky`` adds the input undivided (our ``decay_input=False``) with ``beta = 1 - 1/tau``; its reset to
    zero with the default ``reset_delay=True`` is our hard reset with ``detach_reset=True``. Our default
    equations (input divided by tau) have no Leaky counterpart.
    """
    try:
        import snntorch
        from snntorch import surrogate
    except ImportError:
        return []
    leaky = snntorch.Leaky(
        beta=1 - 1 / TAU, threshold=V_THRESHOLD, reset_mechanism="zero", reset_delay=True,
        spike_grad=surrogate.atan(alpha=ATAN_ALPHA),
    ).to(device)
    run = leaky_time_loop(leaky)
    ours = dict(decay_input=False, detach_reset=True, v_threshold=ABOVE_V_THRESHOLD)
    note = ("Leaky(beta=0.5, reset_mechanism='zero', reset_delay=True, atan(2)) = ours with decay_input=False, "
            "detach_reset=True; fires on h > threshold (ours >=: differs only on exact ties)")
    return [Peer("snnTorch Leaky (Python loop)", run, ours, note)]


def _norse(device: str) -> list:
    """Norse 1.1.0 ``LIFBoxCell`` (lifted over time) and the current-based ``LIF`` at ``dt=1``.

    ``LIFBoxCell`` with ``tau_mem_inv = 1/tau``, ``v_leak = v_reset`` is our default charge and hard reset.
    Norse has no atan surrogate; its "super" (SuperSpike) is ``1 / (1 + |u|)^2`` whatever ``alpha`` is
    (1.1.0 ignores it), our ``fast_sigmoid`` with alpha=1. The current-based ``LIF`` first filters the input
    through a synaptic current ``i``; with ``tau_syn_inv * dt = 1`` the current is emptied every step and
    the neuron reduces to LIFBoxCell, which is how it is set here. A slower synapse carries input over steps,
    a second state our LIF does not have.
    """
    try:
        import norse.torch as norse
    except ImportError:
        return []

    def scalar(value):
        return torch.as_tensor(value, device=device)

    box = norse.Lift(norse.LIFBoxCell(
        norse.LIFBoxParameters(tau_mem_inv=scalar(1 / TAU), v_leak=scalar(V_RESET), v_th=scalar(V_THRESHOLD),
                               v_reset=scalar(V_RESET), method="super", alpha=scalar(1.0)),
        dt=1.0,
    ))
    current = norse.LIF(
        norse.LIFParameters(tau_syn_inv=scalar(1.0), tau_mem_inv=scalar(1 / TAU), v_leak=scalar(V_RESET),
                            v_th=scalar(V_THRESHOLD), v_reset=scalar(V_RESET), method="super", alpha=scalar(1.0)),
        dt=1.0,
    )
    ours = dict(surrogate="fast_sigmoid", alpha=1.0, v_threshold=ABOVE_V_THRESHOLD)
    ties = "fires on v > v_th (ours >=: differs only on exact ties)"
    return [
        Peer("Norse LIFBoxCell (lifted)", lambda x: box(x)[0], ours,
             f"our equations at dt=1, surrogate SuperSpike = our fast_sigmoid(alpha=1), no atan in Norse; {ties}"),
        Peer("Norse LIF (current-based)", lambda x: current(x)[0], ours,
             f"equals ours only with tau_syn_inv*dt = 1 (no synaptic current dynamics), as set here; {ties}"),
    ]
