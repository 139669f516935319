"""Deployment: the trained base network alone, BatchNorm folded, ternary layers frozen to packed weights.

The exported file is a ``torch.save`` dict ``{"format", "kind": "tna-deployed", "config", "model"}`` read
back with ``weights_only=True``: ``config`` rebuilds the architecture, ``model`` is its state_dict.
BatchNorm is folded into the preceding full-precision convolution (the new weight and bias are exact up to
rounding); a BatchNorm after a ternary convolution stays, because folding its per-channel factor into the
ternary scale would break the format's single positive scale per channel when gamma is negative.
"""
import copy
from pathlib import Path

import torch
from torch import nn

import tna_kernels.nn as tnn

from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_atomic
from .config import TrainConfig
from .data import load_dataset

DEPLOYED_KIND = "tna-deployed"


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv equal (in eval mode) to ``bn(conv(x))``; ``conv`` must be a full-precision nn.Conv2d."""
    fused = copy.deepcopy(conv)
    std = torch.sqrt(bn.running_var + bn.eps)
    factor = bn.weight / std
    fused.weight = nn.Parameter((conv.weight * factor.view(-1, 1, 1, 1)).detach())
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter((bn.bias + (bias - bn.running_mean) * factor).detach())
    return fused


def _fold_all(model: nn.Module) -> int:
    """Fold every (nn.Conv2d ``conv``, BatchNorm2d ``bn``) pair held by one module as attributes, in place."""
    folded = 0
    for module in list(model.modules()):
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
            module.conv = fold_batchnorm(conv, bn)
            module.bn = nn.Identity()
            folded += 1
    return folded


def deployable(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded where the math allows, ternary layers frozen and max
    pooling on the inference kernel (``tna_kernels.nn.MaxPool2d``)."""
    deployed = copy.deepcopy(model).eval()
    with torch.no_grad():
        _fold_all(deployed)
    return tnn.replace_max_pool_(tnn.freeze_(deployed)).requires_grad_(False)


def export_run(run_dir, out_path) -> dict:
    """Write the base network of the finished (or last checkpointed) run in ``run_dir`` to ``out_path``."""
    from .trainer import build_network

    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = TrainConfig.from_dict(state["config"])
    data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps)
    model = build_network(config, data, weights=config.weights, width=1.0)
    model.load_state_dict(state["base"])
    deployed = deployable(model)
    save_atomic({"format": CHECKPOINT_FORMAT, "kind": DEPLOYED_KIND, "config": config.to_dict(),
                 "structure": _structure(deployed), "model": deployed.state_dict()}, out_path)
    size = sum(t.numel() * t.element_size() for t in deployed.state_dict().values())
    return {"epochs": state["epoch"], "bytes": size}


def _structure(model: nn.Module) -> list:
    """Names of the modules that folding replaced by Identity (so loading can rebuild the same structure)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Identity) and name.endswith(".bn")]


def load_deployed(path):
    """``(model, config)`` from a file written by :func:`export_run`; the model is in eval mode."""
    from .trainer import build_network

    state = load_checkpoint(path, "model file")
    if state.get("kind") != DEPLOYED_KIND:
        raise CheckpointError(f"{path} is not a deployed model (write one with tna-export RUN_DIR --out FILE)")
    config = TrainConfig.from_dict(state["config"])
    data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps)
    model = build_network(config, data, weights=config.weights, width=1.0)
    for name in state["structure"]:
        parent = model.get_submodule(name.rpartition(".")[0])
        parent.conv = nn.Conv2d(parent.conv.in_channels, parent.conv.out_channels, parent.conv.kernel_size,
                                parent.conv.stride, parent.conv.padding, parent.conv.dilation, parent.conv.groups,
                                bias=True)
        parent.bn = nn.Identity()
    tnn.replace_max_pool_(tnn.freeze_(model))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match its architecture: {str(error).splitlines()[0]}") from None
    return model.eval().requires_grad_(False), config
