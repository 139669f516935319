"""Spiking sparsity: a spike-count penalty with a scheduled weight (Allred et al., 2020), and activity reports.

Loss: ``L = L_task + beta(epoch) * sum_l w_l * r_l`` where ``r_l`` is layer l's firing rate (spikes per neuron
per timestep, kept in the autograd graph by the neurons) and the layer weights ``w_l`` sum to 1:

- ``uniform``: 1 / L;
- ``neurons``: proportional to the layer's neuron count (the penalty is then the network's overall rate);
- ``fanout``: proportional to neurons x fan-out, i.e. to the synaptic operations one unit of rate costs.

Schedules for ``beta`` (epochs counted from 0; nothing before ``delay``):

- ``constant``: ``beta1`` from epoch ``delay`` on;
- ``linear``: from ``beta0`` at epoch ``delay`` to ``beta1`` at the last epoch;
- ``anneal``: a geometric increase from ``beta0`` to ``beta1`` (``beta0 * (beta1 / beta0) ** progress``), the
  slow-start, fast-finish shape of the annealed penalty of Allred et al.; ``beta0`` must be > 0.

Activity report: every weight layer's input is counted by a forward hook. A layer fed by binary spikes
performs one accumulate (AC) per input spike and output it reaches (its synaptic operations, SynOps, counted
exactly, borders of padded convolutions included); a layer
fed by real values (the first layer on images, a layer after average pooling) performs its dense
multiply-accumulates (MACs). A pruned layer counts its kept weights only. Energy uses the 45 nm costs common
in SNN papers (Horowitz, 2014): 0.9 pJ per
AC and 4.6 pJ per MAC, configurable; the same network run as an ANN performs its dense MACs once per sample.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tna_kernels.nn as tnn

from .models import spiking_layers
from .pruning import kept_fraction

SCHEDULES = ("constant", "linear", "anneal")
LAYER_WEIGHTS = ("uniform", "neurons", "fanout")
AC_PJ = 0.9
MAC_PJ = 4.6


def beta_at(epoch: int, epochs: int, schedule: str, beta0: float, beta1: float, delay: int = 0) -> float:
    """The penalty weight during ``epoch`` (0-based) of ``epochs``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"sparsity schedule must be one of {SCHEDULES}, got {schedule!r}")
    if epoch < delay:
        return 0.0
    if schedule == "constant":
        return beta1
    span = max(1, epochs - 1 - delay)
    progress = min(1.0, (epoch - delay) / span)
    if schedule == "linear":
        return beta0 + (beta1 - beta0) * progress
    if beta0 <= 0:
        raise ValueError(f"the anneal schedule grows geometrically and needs beta0 > 0, got {beta0}")
    return beta0 * (beta1 / beta0) ** progress


def layer_weights(kind: str, neurons: dict, fanout: dict) -> dict:
    """Normalized weights ``{layer: w_l}`` (summing to 1) from per-layer neuron counts and fan-outs."""
    if kind not in LAYER_WEIGHTS:
        raise ValueError(f"sparsity layer weights must be one of {LAYER_WEIGHTS}, got {kind!r}")
    raw = {name: 1.0 if kind == "uniform" else n * (fanout.get(name, 0.0) if kind == "fanout" else 1.0)
           for name, n in neurons.items()}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("no layer has a positive weight (fan-out weights need layers that feed a weight layer)")
    return {name: value / total for name, value in raw.items()}


def penalty(model: nn.Module, weights: dict) -> Tensor:
    """``sum_l w_l * r_l`` over the spiking layers of ``model`` from its last forward (differentiable)."""
    layers = spiking_layers(model)
    return sum(weights[name] * layer.rate for name, layer in layers.items())


@dataclass
class Activity:
    """Per-sample activity of one forward, summed over timesteps.

    ``synops``: accumulates in layers fed by binary spikes; ``macs``: multiply-accumulates in layers fed by
    real values; ``dense_macs``: the MACs of the same network as an ANN (one pass, no timesteps);
    ``fanout``: ``{spiking layer: outgoing synapses per neuron}``; ``spikes_per_sample``.
    """

    synops: float
    macs: float
    dense_macs: float
    fanout: dict
    spikes_per_sample: float

    def energy_uj(self, ac_pj: float = AC_PJ, mac_pj: float = MAC_PJ) -> float:
        return (self.synops * ac_pj + self.macs * mac_pj) * 1e-6

    def dense_energy_uj(self, mac_pj: float = MAC_PJ) -> float:
        return self.dense_macs * mac_pj * 1e-6


def _macs_per_input(layer: nn.Module, x: Tensor, y: Tensor) -> float:
    """Dense multiply-accumulates of ``layer`` per element of one sample's input ``x`` [N, ...] -> ``y``; a pruned
    layer (``weight_mask``) performs them for its kept weights only."""
    if isinstance(layer, (nn.Linear, tnn.TernaryLinear)):
        return float(layer.out_features) * kept_fraction(layer)
    kh, kw = layer.kernel_size
    per_output = layer.in_channels // layer.groups * kh * kw
    return per_output * y[0].numel() / x[0].numel() * kept_fraction(layer)


def _synops(layer: nn.Module, spikes: Tensor) -> float:
    """Accumulates ``layer`` performs on binary input ``spikes`` [N, ...]: every spike counted once per output it
    reaches (at the borders of a padded convolution, fewer than the kernel size) through a kept weight (all of
    them, unless the layer is pruned: a pruned connection carries no synaptic operation)."""
    mask = getattr(layer, "weight_mask", None)
    if isinstance(layer, (nn.Linear, tnn.TernaryLinear)):
        if mask is None:
            return float(spikes.count_nonzero()) * layer.out_features
        return float((spikes.float() @ mask.float().t()).sum())
    n, c, h, w = spikes.shape
    if mask is not None:
        reached = F.conv2d(spikes.float(), mask.float(), stride=layer.stride, padding=layer.padding,
                           dilation=layer.dilation, groups=layer.groups)
        return float(reached.sum())
    per_group = spikes.float().view(n, layer.groups, c // layer.groups, h, w).sum(2)
    window = torch.ones(layer.groups, 1, *layer.kernel_size, device=spikes.device)
    reached = F.conv2d(per_group, window, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                       groups=layer.groups)
    return float(reached.sum()) * (layer.out_channels // layer.groups)


@torch.no_grad()
def measure_activity(model: nn.Module, x: Tensor, timesteps: int) -> Activity:
    """Count the activity of ``model`` on the batch ``x`` (images ``[B, ...]`` or events ``[B, T, ...]``).

    Each weight layer's input is attributed to the spiking layer that produced it (by storage, else the most
    recent one, which is the producer through pooling and flattening in these architectures).
    """
    weight_types = (nn.Conv2d, nn.Linear, tnn.TernaryConv2d, tnn.TernaryLinear)
    spiking = spiking_layers(model)
    batch = x.shape[0]
    state = {"recent": None, "outputs": {}, "synops": 0.0, "macs": 0.0, "dense": 0.0, "fanout": {}}

    def after_neurons(name):
        def hook(module, inputs, output):
            state["recent"] = name
            state["outputs"][output.untyped_storage().data_ptr()] = name
        return hook

    def around_weights(module, inputs, output):
        x_in = inputs[0]
        samples = x_in.shape[0]  # folded [T*B] for time-major layers, B for the static stem
        per_input = _macs_per_input(module, x_in, output)
        steps = samples / batch
        dense = per_input * x_in[0].numel()
        state["dense"] += dense  # one pass per sample for the ANN
        binary = bool(((x_in == 0) | (x_in == 1)).all())
        if binary:
            state["synops"] += _synops(module, x_in) / batch
            producer = state["outputs"].get(x_in.untyped_storage().data_ptr(), state["recent"])
            if producer is not None:
                synapses = per_input * x_in[0].numel() / spiking[producer].neurons
                state["fanout"][producer] = state["fanout"].get(producer, 0.0) + synapses
        else:
            state["macs"] += dense * steps

    handles = [m.register_forward_hook(after_neurons(n)) for n, m in spiking.items()]
    handles += [m.register_forward_hook(around_weights) for m in model.modules() if isinstance(m, weight_types)]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    spikes = sum(layer.rate.item() * layer.neurons * timesteps for layer in spiking.values())
    return Activity(state["synops"], state["macs"], state["dense"], state["fanout"], spikes)


__all__ = ["AC_PJ", "Activity", "LAYER_WEIGHTS", "MAC_PJ", "SCHEDULES", "beta_at", "layer_weights",
           "measure_activity", "penalty"]
