"""Building blocks of the spiking models: weight precision, conv + BatchNorm over folded time, spiking neurons.

Every block works time-major: activations are ``[T, B, C, H, W]``. Convolutions and BatchNorm run on the
folded ``[T * B, C, H, W]`` batch (BatchNorm statistics over all timesteps and samples), neurons on
``[T, B, ...]``.
"""
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import tna_kernels.nn as tnn

WEIGHTS = ("fp", "ternary")


@dataclass(frozen=True)
class Precision:
    """How a model's weight layers are built.

    Attributes:
        weights: "fp" (float weights everywhere) or "ternary" (quantization-aware ternary layers).
        quantizer: the ternary quantizer ("twn", "ttq", "absmean").
        quantize_first_last: also make the first and the last weight layer ternary (by default they stay
            full precision, as is usual for quantized networks).
    """

    weights: str = "fp"
    quantizer: str = "twn"
    quantize_first_last: bool = False

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {self.weights!r}")

    def _ternary(self, edge: bool) -> bool:
        return self.weights == "ternary" and (self.quantize_first_last or not edge)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
             spike_input: bool, edge: bool = False) -> nn.Module:
        """A bias-free ``kernel_size`` conv with 'same'-style padding (a BatchNorm follows it)."""
        padding = kernel_size // 2
        if self._ternary(edge):
            return tnn.TernaryConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False,
                                     quantizer=self.quantizer, spikes=spike_input)
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)

    def linear(self, in_features: int, out_features: int, *, spike_input: bool, edge: bool = False) -> nn.Module:
        if self._ternary(edge):
            return tnn.TernaryLinear(in_features, out_features, quantizer=self.quantizer, spikes=spike_input)
        return nn.Linear(in_features, out_features)


class SpikingNeurons(tnn.LIF):
    """Fused LIF neurons that also keep the layer's firing rate of the last forward.

    ``rate`` is a 0-d tensor: spikes per neuron per timestep, averaged over the batch, from the spike count
    the fused kernel emits in its forward pass; it stays in the autograd graph (a penalty on it reaches the
    kernel's reverse sweep as a constant added to the spike gradient). ``neurons`` is the layer's neuron
    count per sample.
    """

    rate: Tensor
    neurons: int

    def __init__(self, **kwargs):
        super().__init__(count_spikes=True, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.record(super().forward(x), self.spike_count)

    def record(self, spikes: Tensor, count: Tensor) -> Tensor:
        """Keep ``count`` (the number of ``spikes``, ``[T, B, ...]``) as this layer's last forward's; returns
        ``spikes``. For a caller that computed the neurons' spikes in a fused kernel."""
        self.spike_count = count
        self.rate = count.float() / spikes.numel()
        self.neurons = spikes[0, 0].numel()
        return spikes


def neurons(tau: float) -> SpikingNeurons:
    """The models' neuron: LIF with hard reset to 0, threshold 1, atan surrogate, detached reset."""
    return SpikingNeurons(tau=tau, v_threshold=1.0, v_reset=0.0, detach_reset=True, surrogate="atan")


class ConvBNLIF(nn.Module):
    """conv -> BatchNorm over the folded [T*B] batch -> LIF. ``[T, B, C_in, H, W] -> [T, B, C_out, H', W']``."""

    def __init__(self, precision: Precision, in_channels: int, out_channels: int, tau: float, stride: int = 1,
                 kernel_size: int = 3, *, spike_input: bool = True, edge: bool = False):
        super().__init__()
        self.conv = precision.conv(in_channels, out_channels, kernel_size, stride, spike_input=spike_input,
                                   edge=edge)
        self.bn = nn.BatchNorm2d(out_channels)
        self.lif = neurons(tau)

    def forward(self, x: Tensor) -> Tensor:
        # deployed (BatchNorm folded into the conv) and not observed by hooks on the conv or the neurons: one fused
        # C++ pass where it applies (tna_kernels.nn.conv_lif_inference says where)
        watched = any(m._forward_hooks or m._forward_pre_hooks for m in (self.conv, self.lif))
        if isinstance(self.bn, nn.Identity) and not watched:
            fused = tnn.conv_lif_inference(self.conv, self.lif, x)
            if fused is not None:
                return self.lif.record(*fused)
        return self.lif(fold(self.bn, fold(self.conv, x)))


class StaticStem(ConvBNLIF):
    """First layer for direct encoding: the image is the same at every timestep, so conv + BatchNorm run
    once on ``[B, C, H, W]`` (BatchNorm statistics over T identical copies equal those over one) and only the
    neurons see T steps. ``[B, C, H, W] -> [T, B, C_out, H / stride, W / stride]``."""

    def __init__(self, precision: Precision, in_channels: int, out_channels: int, tau: float, timesteps: int,
                 stride: int = 1):
        super().__init__(precision, in_channels, out_channels, tau, stride, spike_input=False, edge=True)
        self.timesteps = timesteps

    def forward(self, x: Tensor) -> Tensor:
        current = self.bn(self.conv(x))
        return self.lif(current.unsqueeze(0).expand(self.timesteps, *current.shape))


class LinearBNLIF(nn.Module):
    """linear -> BatchNorm over the folded [T*B] batch -> LIF. ``[T, B, F_in] -> [T, B, F_out]``."""

    def __init__(self, precision: Precision, in_features: int, out_features: int, tau: float, *,
                 spike_input: bool = True, edge: bool = False):
        super().__init__()
        self.linear = precision.linear(in_features, out_features, spike_input=spike_input, edge=edge)
        self.bn = nn.BatchNorm1d(out_features)
        self.lif = neurons(tau)

    def forward(self, x: Tensor) -> Tensor:
        return self.lif(fold(self.bn, fold(self.linear, x)))


class StaticLinearStem(LinearBNLIF):
    """First layer of a fully connected network for direct encoding: the flattened image goes through linear +
    BatchNorm once and the neurons see it T times. ``[B, C, H, W] -> [T, B, out_features]``."""

    def __init__(self, precision: Precision, in_features: int, out_features: int, tau: float, timesteps: int):
        super().__init__(precision, in_features, out_features, tau, spike_input=False, edge=True)
        self.timesteps = timesteps

    def forward(self, x: Tensor) -> Tensor:
        current = self.bn(self.linear(x.flatten(1)))
        return self.lif(current.unsqueeze(0).expand(self.timesteps, *current.shape))


def fold(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a per-sample ``layer`` to time-major ``x`` [T, B, ...] on the folded [T*B, ...] batch."""
    y = layer(x.flatten(0, 1))
    return y.unflatten(0, x.shape[:2])


def spiking_layers(model: nn.Module) -> dict:
    """``{name: SpikingNeurons}`` of a model, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SpikingNeurons)}
