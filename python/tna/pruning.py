"""Pruning masks for lottery tickets with layer-wise importance (Vandersmissen & Oramas, 2023).

A mask is a bool tensor with its layer's weight shape (True = kept). A pruned layer carries its mask as the
``weight_mask`` buffer; its pruned weights are zero and stay zero in training: :func:`mask_gradients_` before
the optimizer step removes their gradient, :func:`zero_pruned_` after it removes what weight decay or momentum
would have added. A ternary layer also quantizes over its kept weights only (see ``tna_kernels.nn.ternary``).

Importance of weight j of a layer, over the layer's kept weights ``a_j = |w_j|``:

- ``magnitude``: ``a_j`` (the original lottery ticket);
- ``l1``: ``a_j / sum a``;  ``l2``: ``a_j^2 / sum a^2``;  ``softmax``: ``exp(a_j) / sum exp(a)``;
- ``minmax``: ``(a_j - min a) / (max a - min a)``.

One pruning step removes the ``rate`` share of the kept weights with the lowest importance: pooled over all
prunable layers (``global``, the paper's setting) or in each layer separately (``layer``). Ties go to the
weight that comes first (layer order, then the weight's flat index), so a step is deterministic.
"""
import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

import tna_kernels.nn as tnn

IMPORTANCES = ("magnitude", "l1", "l2", "softmax", "minmax")
SCOPES = ("global", "layer")
WEIGHT_TYPES = (nn.Linear, nn.Conv2d, tnn.TernaryLinear, tnn.TernaryConv2d)
_TINY = 1e-300


@dataclass
class PrunedRun:
    """What a training run of a ticket search adds to a plain run.

    ``layers``: names of the base network's prunable layers (the report's ``sparsity`` is over them);
    ``masks``: ``{network ("base", "twin"): {layer: bool mask}}``; ``start``: ``{network: state_dict}`` to start
    from instead of the fresh initialization (the rewind point); ``first_epoch``: the epoch (0-based) training
    starts at, the learning-rate schedule advanced to it; ``on_epoch_end(epochs_done, networks)``: called before
    the first epoch of a fresh run (with ``first_epoch``) and after every epoch, before its checkpoint;
    ``ticket``: what the report records of the search (metric, round, settings).
    """

    layers: list
    masks: dict = field(default_factory=dict)
    start: Optional[dict] = None
    first_epoch: int = 0
    on_epoch_end: Optional[Callable[[int, dict], None]] = None
    ticket: Optional[dict] = None


def prunable_layers(model: nn.Module, first_last: bool = True) -> dict:
    """``{name: layer}`` of the Linear and Conv2d layers (float or ternary) of ``model`` in module order;
    without ``first_last`` the first and the last of them are left out."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_TYPES)}
    if not first_last:
        names = list(layers)[1:-1]
        layers = {name: layers[name] for name in names}
    return layers


def importance(weight: Tensor, keep: Tensor, metric: str) -> Tensor:
    """Importance (float64, ``weight``'s shape) of each kept weight of one layer; pruned entries hold 0 and
    are never compared. ``keep``: bool, ``weight``'s shape."""
    if metric not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {metric!r}")
    magnitude = weight.detach().abs().double()
    kept = magnitude[keep]
    if metric == "magnitude":
        score = kept
    elif metric == "l1":
        score = kept / kept.sum().clamp_min(_TINY)
    elif metric == "l2":
        score = kept.square() / kept.square().sum().clamp_min(_TINY)
    elif metric == "softmax":
        score = torch.softmax(kept, 0)
    else:
        span = kept.max() - kept.min() if kept.numel() else kept.new_zeros(())
        score = (kept - kept.min()) / span if span > 0 else torch.zeros_like(kept)
    out = torch.zeros_like(magnitude)
    out[keep] = score
    return out


def prune_step(weights: dict, masks: dict, metric: str, rate: float, scope: str = "global") -> dict:
    """New masks ``{name: bool tensor}`` after removing the ``rate`` share (rounded to whole weights) of the kept
    weights with the lowest ``metric`` importance. ``weights``: ``{name: weight}``; ``masks``: the current masks
    for the same names (all True before the first step)."""
    if scope not in SCOPES:
        raise ValueError(f"prune scope must be one of {SCOPES}, got {scope!r}")
    if not 0 <= rate < 1:
        raise ValueError(f"the prune rate must be in [0, 1), got {rate}")
    names = list(weights)
    scores = {name: importance(weights[name], masks[name], metric)[masks[name]] for name in names}
    groups = [names] if scope == "global" else [[name] for name in names]
    new = {name: masks[name].clone() for name in names}
    for group in groups:
        pooled = torch.cat([scores[name] for name in group])
        count = int(round(rate * pooled.numel()))
        if count == 0:
            continue
        lowest = torch.argsort(pooled, stable=True)[:count]
        removed = torch.zeros(pooled.numel(), dtype=torch.bool)
        removed[lowest] = True
        start = 0
        for name in group:
            size = scores[name].numel()
            flat = new[name].view(-1)
            kept_positions = flat.nonzero().view(-1)
            flat[kept_positions[removed[start:start + size]]] = False
            start += size
    return new


def full_masks(layers: dict) -> dict:
    """All-True masks ``{name: bool tensor}`` for ``layers`` (``{name: layer}``), on the CPU."""
    return {name: torch.ones(layer.weight.shape, dtype=torch.bool) for name, layer in layers.items()}


@torch.no_grad()
def attach_masks(model: nn.Module, masks: dict) -> None:
    """Prune ``model`` in place: each named layer gets ``masks[name]`` as its ``weight_mask`` and its pruned
    weights are set to zero."""
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, WEIGHT_TYPES):
            raise ValueError(f"{name} is a {type(layer).__name__}, not a Linear or Conv2d layer")
        mask = mask.to(layer.weight.device, torch.bool)
        if isinstance(layer, (tnn.TernaryLinear, tnn.TernaryConv2d)):
            layer.prune_(mask)
        else:
            if mask.shape != layer.weight.shape:
                raise ValueError(f"mask for {name} has shape {list(mask.shape)}, its weight "
                                 f"{list(layer.weight.shape)}")
            layer.register_buffer("weight_mask", mask)
            layer.weight.mul_(mask)


def masks_of(model: nn.Module) -> dict:
    """``{name: weight_mask}`` of the pruned layers of ``model``."""
    return {name: m.weight_mask for name, m in model.named_modules()
            if isinstance(m, WEIGHT_TYPES) and getattr(m, "weight_mask", None) is not None}


def _pruned(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, WEIGHT_TYPES) and getattr(m, "weight_mask", None) is not None
            and hasattr(m, "weight")]


@torch.no_grad()
def mask_gradients_(model: nn.Module) -> None:
    """Zero the gradient of every pruned weight of ``model`` (call between backward and the optimizer step)."""
    for layer in _pruned(model):
        if layer.weight.grad is not None:
            layer.weight.grad.mul_(layer.weight_mask)


@torch.no_grad()
def zero_pruned_(model: nn.Module) -> None:
    """Set every pruned weight of ``model`` back to exactly zero (call after the optimizer step)."""
    for layer in _pruned(model):
        layer.weight.mul_(layer.weight_mask)


def strip_masks_(model: nn.Module) -> nn.Module:
    """Drop the masks (the ``weight_mask`` buffers become None; the pruned weights stay zero); returns ``model``."""
    for layer in model.modules():
        if isinstance(layer, WEIGHT_TYPES) and getattr(layer, "weight_mask", None) is not None:
            layer.weight_mask = None
    return model


def load_state(model: nn.Module, state: dict) -> None:
    """``model.load_state_dict(state)`` for a state that may come from a pruned model: its masks are attached
    first, so the ``weight_mask`` entries have a place to go."""
    suffix = ".weight_mask"
    masks = {key[:-len(suffix)]: value for key, value in state.items() if key.endswith(suffix)}
    attach_masks(model, masks)
    model.load_state_dict(state)


def layer_sparsity(masks: dict, layers: dict) -> tuple:
    """``(overall, {name: fraction})``: the share of the prunable weights of ``layers`` that ``masks`` removes
    (a layer without a mask has none removed)."""
    per_layer, removed, total = {}, 0, 0
    for name, layer in layers.items():
        size = layer.weight.numel()
        gone = size - int(masks[name].sum()) if name in masks else 0
        per_layer[name] = gone / size
        removed += gone
        total += size
    return (removed / total if total else 0.0), per_layer


def overlap(a: dict, b: dict) -> dict:
    """Shared kept connections of two tickets, ``|A and B| / |A or B|`` over the kept weights: ``{"overall":
    .., "per_layer": {name: ..}}`` for the layers of ``a`` (both empty counts as 1)."""
    def jaccard(inter: int, union: int) -> float:
        return inter / union if union else 1.0

    per_layer, inter_all, union_all = {}, 0, 0
    for name in a:
        inter, union = int((a[name] & b[name]).sum()), int((a[name] | b[name]).sum())
        per_layer[name] = jaccard(inter, union)
        inter_all += inter
        union_all += union
    return {"overall": jaccard(inter_all, union_all), "per_layer": per_layer}


def nonzero_weights(model: nn.Module) -> int:
    """Non-zero weights of the Linear and Conv2d layers of ``model`` as deployed (ternary: non-zero codes)."""
    count = 0
    for layer in tnn.freeze_(copy.deepcopy(model)).modules():
        if isinstance(layer, (tnn.TernaryLinear, tnn.TernaryConv2d)):
            count += int(layer.codes().count_nonzero())
        elif isinstance(layer, (nn.Linear, nn.Conv2d)):
            count += int(layer.weight.count_nonzero())
    return count


def kept_fraction(layer: nn.Module) -> float:
    """The share of ``layer``'s weights that are kept (1 for an unpruned layer)."""
    mask: Optional[Tensor] = getattr(layer, "weight_mask", None)
    return 1.0 if mask is None else float(mask.float().mean())


__all__ = ["IMPORTANCES", "SCOPES", "PrunedRun", "attach_masks", "full_masks", "importance", "kept_fraction",
           "layer_sparsity",
           "load_state", "mask_gradients_", "masks_of", "nonzero_weights", "overlap", "prunable_layers", "prune_step",
           "strip_masks_", "zero_pruned_"]
