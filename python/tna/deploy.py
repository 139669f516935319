"""Deployment: the trained base network alone, BatchNorm folded, ternary layers frozen to packed weights.

The exported file is a ``torch.save`` dict ``{"format", "kind": "tna-deployed", "config", "structure", "model"}``
read back with ``weights_only=True``: ``config`` rebuilds the architecture, ``structure`` names the BatchNorms
folded away, ``model`` is its state_dict. BatchNorm is folded (``tna_kernels.nn.fold``) into the preceding
convolution (exact up to rounding): into a full-precision one's weight and bias, and into a frozen ternary one's
per-channel scale, codes and a new bias: a channel whose BatchNorm factor is negative has its codes negated (exact
for codes in {-1, 0, 1}) and takes the factor's absolute value into its scale."""
import copy
from pathlib import Path

import torch
from torch import nn

import tna_kernels.nn as tnn
from tna_kernels.nn.fold import fold_batchnorm, fold_batchnorm_ternary

from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_atomic
from .config import TrainConfig
from .data import load_dataset
from .network import build_network
from .pruning import load_state, nonzero_weights, strip_masks_

DEPLOYED_KIND = "tna-deployed"


def _fold_all(model: nn.Module) -> int:
    """Fold every (``conv``, BatchNorm2d ``bn``) pair held by one module as attributes, in place, where ``conv`` is
    an nn.Conv2d or a frozen TernaryConv2d."""
    folded = 0
    for module in list(model.modules()):
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        if type(conv) is nn.Conv2d:
            module.conv = fold_batchnorm(conv, bn)
        elif isinstance(conv, tnn.TernaryConv2d) and conv.frozen:
            module.conv = fold_batchnorm_ternary(conv, bn)
        else:
            continue
        module.bn = nn.Identity()
        folded += 1
    return folded


def deployable(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded where the math allows, ternary layers frozen and max
    pooling on the inference kernel (``tna_kernels.nn.MaxPool2d``)."""
    deployed = tnn.freeze_(copy.deepcopy(model).eval())
    with torch.no_grad():
        _fold_all(deployed)
    return tnn.replace_max_pool_(deployed).requires_grad_(False)


def deployed_run(run_dir) -> tuple:
    """``(model, config, epochs)``: the deployable base network of the finished (or last checkpointed) run in
    ``run_dir`` (a pruned one, a round of ``tna-prune``, with its pruned weights zero: ternary code 0), its
    training settings and the epochs it trained."""
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = TrainConfig.from_dict(state["config"])
    data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps)
    model = build_network(config, data, weights=config.weights, width=1.0)
    load_state(model, state["base"])
    return strip_masks_(deployable(model)), config, state["epoch"]


def export_run(run_dir, out_path) -> dict:
    """Write the base network of the finished (or last checkpointed) run in ``run_dir`` to ``out_path`` (see
    ``deployed_run``). Returns ``{"epochs", "bytes", "nonzero_weights"}``."""
    deployed, config, epochs = deployed_run(run_dir)
    save_atomic({"format": CHECKPOINT_FORMAT, "kind": DEPLOYED_KIND, "config": config.to_dict(),
                 "structure": _structure(deployed), "model": deployed.state_dict()}, out_path)
    size = sum(t.numel() * t.element_size() for t in deployed.state_dict().values())
    return {"epochs": epochs, "bytes": size, "nonzero_weights": nonzero_weights(deployed)}


def _structure(model: nn.Module) -> list:
    """Names of the modules that folding replaced by Identity (so loading can rebuild the same structure)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Identity) and name.endswith(".bn")]


def load_deployed(path):
    """``(model, config)`` from a file written by :func:`export_run`; the model is in eval mode."""
    state = load_checkpoint(path, "model file")
    if state.get("kind") != DEPLOYED_KIND:
        raise CheckpointError(f"{path} is not a deployed model (write one with tna-export RUN_DIR --out FILE)")
    config = TrainConfig.from_dict(state["config"])
    data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps)
    model = build_network(config, data, weights=config.weights, width=1.0)
    for name in state["structure"]:
        parent = model.get_submodule(name.rpartition(".")[0])
        parent.bn = nn.Identity()
        if isinstance(parent.conv, tnn.TernaryConv2d):
            parent.conv.bias = nn.Parameter(torch.zeros(parent.conv.out_channels))
            continue
        parent.conv = nn.Conv2d(parent.conv.in_channels, parent.conv.out_channels, parent.conv.kernel_size,
                                parent.conv.stride, parent.conv.padding, parent.conv.dilation, parent.conv.groups,
                                bias=True)
    tnn.freeze_(model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match its architecture: {str(error).splitlines()[0]}") from None
    return model.eval().requires_grad_(False), config
