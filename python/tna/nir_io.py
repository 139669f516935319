"""A run's deployed base network as a NIR file (``tna-export --format nir``), and such a file as a classifier
(``tna-eval model.nir``).

The file holds the network as it runs at every time step: input ``[C, H, W]`` per step, the output node's values
``[classes]`` per step. Direct encoding (images): every one of the T steps gets the same normalized image
``(pixel - input_mean) / input_std`` per channel, in units of the stored 0..255 (digits: 0..16) pixel values;
event data: step t gets frame t. The prediction is the argmax of the output's mean over the T steps (the
classifier is linear, so this is the trained network's time-averaged readout). The graph metadata says all this
(``encoding``, ``timesteps``, ``input_mean``, ``input_std``, ``readout``) and holds the run's settings
(``tna_config``) for ``tna-eval``.
"""
import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import tna_kernels.nn as tnn
from tna_kernels.nir import NIRNetwork, from_nir, to_nir
from tna_kernels.nir.common import require_nir

from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig
from .data import load_dataset
from .deploy import deployed_run
from .files import write_atomically
from .models import SpikingNetwork
from .models.layers import ConvBNLIF, LinearBNLIF, SpikingNeurons, StaticLinearStem

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
READOUT = "the prediction is the argmax over classes of the output node's mean over the T steps"


def _nir():
    """The ``nir`` package, or a ConfigError that says how to install it."""
    try:
        return require_nir()
    except ImportError as error:
        raise ConfigError(str(error)) from None


def _chain(module: nn.Module, arch: str) -> nn.Module:
    """A block of a spiking network as time-major layers ``to_nir`` reads, keeping the module names."""
    if isinstance(module, StaticLinearStem):
        return nn.Sequential(OrderedDict(flatten=tnn.MultiStep(nn.Flatten()), linear=tnn.MultiStep(module.linear),
                                          bn=tnn.MultiStep(module.bn), lif=module.lif))
    if isinstance(module, (ConvBNLIF, LinearBNLIF)):
        layer = "conv" if isinstance(module, ConvBNLIF) else "linear"
        return nn.Sequential(OrderedDict([(layer, tnn.MultiStep(getattr(module, layer))),
                                          ("bn", tnn.MultiStep(module.bn)), ("lif", module.lif)]))
    if type(module) is nn.Sequential:
        return nn.Sequential(OrderedDict((name, _chain(child, arch)) for name, child in module.named_children()))
    if isinstance(module, (tnn.MultiStep, tnn.LIF)):
        return module
    raise ConfigError(f"tna-export --format nir writes the chain architectures (convnet, mlp, vgg11); {arch} holds "
                      f"a {type(module).__name__}, whose residual sum this export does not write")


def network_chain(model: SpikingNetwork, arch: str) -> nn.Sequential:
    """The network as a time-major chain ``[T, B, *input] -> [T, B, classes]`` (per-step logits; their mean over
    time is ``model``'s output). Node names follow ``model``'s modules: ``stem.conv``, ``body.0.lif``, ..."""
    return nn.Sequential(OrderedDict(stem=_chain(model.stem, arch), body=_chain(model.body, arch),
                                     classifier=tnn.MultiStep(model.classifier)))


def export_run_nir(run_dir, out_path, dt: float = 1e-4, strict_threshold: bool = False) -> dict:
    """Write the deployed base network of the run in ``run_dir`` as a NIR file ``out_path`` (see the module
    docstring). Returns ``{"epochs", "nodes", "bytes"}``."""
    nir = _nir()
    deployed, config, epochs = deployed_run(run_dir)
    data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps)
    sample = torch.zeros(config.timesteps, 1, *data.input_shape)
    metadata = {"tna_config": json.dumps(config.to_dict()), "dataset": config.dataset, "timesteps": config.timesteps,
                "encoding": "frames" if data.is_events else "direct", "input_mean": np.array(data.mean, np.float64),
                "input_std": np.array(data.std, np.float64), "readout": READOUT}
    graph = to_nir(network_chain(deployed, config.arch), sample, dt=dt, strict_threshold=strict_threshold,
                   metadata=metadata)
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    write_atomically(out_path, lambda f: f.write(buffer.getvalue()))
    return {"epochs": epochs, "nodes": len(graph.nodes), "bytes": len(buffer.getvalue())}


def is_nir_file(path) -> bool:
    """Whether ``path`` is an HDF5 file (what ``nir.write`` writes)."""
    with open(path, "rb") as f:
        return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


class NIRClassifier(nn.Module):
    """A network read from a NIR file as a classifier: images ``[B, C, H, W]`` (the same image at each of the T
    steps) or event frames ``[B, T, C, H, W]`` -> logits ``[B, classes]``, the mean over time of its output."""

    def __init__(self, network: NIRNetwork, timesteps: int, is_events: bool):
        super().__init__()
        self.network, self.timesteps, self.is_events = network, timesteps, is_events
        for key, layer in network.layers.items():
            if type(layer) is tnn.LIF:
                network.layers[key] = SpikingNeurons(
                    tau=layer.tau, v_threshold=layer.v_threshold, v_reset=layer.v_reset, decay_input=layer.decay_input,
                    detach_reset=layer.detach_reset, surrogate=layer.surrogate, alpha=layer.alpha)

    def forward(self, x: Tensor) -> Tensor:
        steps = x.transpose(0, 1) if self.is_events else x.unsqueeze(0).expand(self.timesteps, *x.shape)
        return self.network(steps).mean(0)


def load_nir_model(path) -> tuple:
    """``(model, config)`` from a file written by ``tna-export --format nir``: a ``NIRClassifier`` in eval mode and
    the run's settings."""
    nir = _nir()
    try:
        graph = nir.read(path, type_check=False)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable NIR file ({type(error).__name__}: {error})") from None
    settings = graph.metadata.get("tna_config") if isinstance(graph.metadata, dict) else None
    if not isinstance(settings, str):
        raise CheckpointError(f"{Path(path)} was not written by tna-export --format nir (no tna_config in its "
                              "metadata); read it with tna_kernels.nir.from_nir")
    config = TrainConfig.from_dict(json.loads(settings))
    network = from_nir(graph, dt=float(graph.metadata.get("dt", 1e-4)))
    return NIRClassifier(network, config.timesteps, graph.metadata.get("encoding") == "frames").eval(), config


__all__ = ["NIRClassifier", "export_run_nir", "is_nir_file", "load_nir_model", "network_chain"]
