"""Sanity checks reported with every explanation run.

- ``liveness``: each spiking layer's firing rate and how much the output moves between the input and the
  baseline; a network that is silent on the inputs, or whose output ignores them, is refused
  (``SilentNetworkError``): its maps would explain nothing.
- ``completeness_gaps``: Integrated Gradients' completeness, ``|sum(attributions) - (f(x) - f(baseline))|``
  relative to ``|f(x) - f(baseline)|`` for the label's logit. Exact gradients keep it near 0 up to the
  integration error; the surrogate gradient of a spiking network is not the gradient of its step function,
  so the gap measures how far the attributions are from summing to the output.
- ``cascading_randomization`` (Adebayo et al., 2018): the weight layers are randomized one at a time from
  the top (the classifier first), cumulatively, by shuffling each layer's weights (ternary codes for a frozen
  ternary layer), which keeps their distribution; after each step every method's maps are compared with the
  maps of the trained network by Spearman's correlation, averaged over the images. A method whose maps do not
  change when the weights are destroyed does not explain the model.
"""
import copy

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

import tna_kernels.nn as tnn
from tna_kernels.ops.ternary.format import pack_ternary

from ..models.layers import spiking_layers
from .methods import MethodSettings, explain


class SilentNetworkError(ValueError):
    """The network does not respond to the inputs to be explained (one user-facing sentence)."""


def firing_rates(model: nn.Module, inputs: Tensor) -> dict:
    """``{layer name: spikes per neuron per timestep}`` of every spiking layer on ``inputs``."""
    layers = spiking_layers(model)
    with torch.no_grad():
        model(inputs)
    return {name: float(layer.rate) for name, layer in layers.items()}


def liveness(model: nn.Module, inputs: Tensor, baseline: Tensor) -> dict:
    """``{"firing_rates": {...}, "output_change": float}``, the change being the mean total-variation distance
    between the softmax outputs on ``inputs`` and on ``baseline`` (0: the output ignores the input, 1: the
    predictions move all their mass). Raises SilentNetworkError when no spiking layer fires or nothing moves."""
    rates = firing_rates(model, inputs)
    with torch.no_grad():
        moved = (torch.softmax(model(inputs), 1) - torch.softmax(model(baseline), 1)).abs().sum(1) / 2
    change = float(moved.mean())
    if rates and max(rates.values()) == 0:
        raise SilentNetworkError("The network is silent on these inputs: none of its spiking layers fires, so "
                                 "there is nothing to explain (is the model trained, and the data the one it was "
                                 "trained on?).")
    if change == 0:
        raise SilentNetworkError("The network's output is the same on the inputs and on the baseline (a black "
                                 "image), so there is nothing to explain.")
    return {"firing_rates": rates, "output_change": change}


def completeness_gaps(model: nn.Module, inputs: Tensor, labels: Tensor, baseline: Tensor,
                      attributions: Tensor) -> Tensor:
    """Integrated Gradients' relative completeness gap per image, ``[B]`` (see the module docstring), for its
    ``attributions`` (shaped like ``inputs``) of ``labels`` from ``baseline``."""
    with torch.no_grad():
        rise = (model(inputs) - model(baseline)).gather(1, labels[:, None]).squeeze(1)
    gap = (attributions.flatten(1).sum(1) - rise).abs()
    return gap / rise.abs().clamp(min=torch.finfo(rise.dtype).tiny)


def weight_layers(model: nn.Module) -> list:
    """``[(name, module)]`` of the convolutions and linear layers, top (the classifier) first."""
    kinds = (nn.Conv2d, nn.Linear, tnn.TernaryConv2d, tnn.TernaryLinear)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)][::-1]


@torch.no_grad()
def shuffle_weights_(layer: nn.Module, generator: torch.Generator) -> None:
    """Randomly permute ``layer``'s weights in place (a frozen ternary layer: its codes)."""
    if getattr(layer, "frozen", False):
        codes = layer.codes()
        shuffled = codes.flatten()[torch.randperm(codes.numel(), generator=generator)].view_as(codes)
        layer.packed.copy_(pack_ternary(shuffled))
        return
    flat = layer.weight.flatten()
    layer.weight.copy_(flat[torch.randperm(flat.numel(), generator=generator)].view_as(layer.weight))


def map_correlations(first: Tensor, second: Tensor) -> np.ndarray:
    """Spearman's correlation between two maps of each image, ``[B]``. Where a map is constant (all zeros after
    scaling) the correlation is undefined; it counts as 1 when both are (the same map) and 0 otherwise."""
    rows = []
    for a, b in zip(first.flatten(1).numpy(), second.flatten(1).numpy()):
        constant = (a.min() == a.max(), b.min() == b.max())
        rows.append(float(all(constant)) if any(constant) else stats.spearmanr(a, b)[0])
    return np.asarray(rows, dtype=float)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without what its last forward left on its modules in the autograd graph (a
    layer's firing rate after a forward with gradients, which deepcopy refuses): those attributes are None in
    the copy until its next forward."""
    memo = {id(value): None for module in model.modules() for value in vars(module).values()
            if isinstance(value, Tensor) and not value.is_leaf}
    return copy.deepcopy(model, memo)


def cascading_randomization(model: nn.Module, inputs: Tensor, labels: Tensor, baseline: Tensor, methods,
                            settings: MethodSettings = MethodSettings(), seed: int = 0, progress=None) -> dict:
    """``{"layers": [names, top first], "spearman": {method: [mean correlation after each step]}}``; the model
    itself is left untouched (a copy is randomized). ``progress``: an optional callable, called once per map."""
    def maps_of(network, method):
        result = explain(method, network, inputs, labels, baseline, settings, torch.Generator().manual_seed(seed))
        if progress is not None:
            progress()
        return result

    trained = {method: maps_of(model, method) for method in methods}
    randomized = copy_model(model)
    generator = torch.Generator().manual_seed(seed)
    layers = weight_layers(randomized)
    curves = {method: [] for method in methods}
    for _, layer in layers:
        shuffle_weights_(layer, generator)
        for method in methods:
            curves[method].append(float(np.mean(map_correlations(trained[method], maps_of(randomized, method)))))
    return {"layers": [name for name, _ in layers], "spearman": curves}


def plot_randomization(result: dict, path) -> None:
    """The cascading randomization curves (Spearman against the layers randomized so far) as a PNG."""
    from ..report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = range(len(result["layers"]))
    for method, curve in result["spearman"].items():
        ax.plot(steps, curve, marker="o", label=method)
    ax.set_xticks(list(steps), result["layers"], rotation=30, ha="right")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlabel("layers randomized, top first (cumulative)")
    ax.set_ylabel("Spearman with the trained maps")
    ax.set_title("Cascading model-parameter randomization")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
