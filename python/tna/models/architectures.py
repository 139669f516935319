"""Spiking VGG-11, spiking ResNet-19, a small spiking convnet and a spiking LeNet-300-100: time-major inside,
time-averaged logits out.

Input: images ``[B, C, H, W]`` (direct encoding: the same image at each of the T timesteps) or event
frames ``[B, T, C, H, W]``. Output: logits ``[B, num_classes]``, the average over timesteps of the
per-timestep logits (computed as the classifier applied to the time-averaged features, which is the same
for a linear classifier).
"""
import math

from torch import Tensor, nn

import tna_kernels.nn as tnn

from .layers import ConvBNLIF, LinearBNLIF, Precision, StaticLinearStem, StaticStem, fold, neurons

ARCHS = ("convnet", "mlp", "vgg11", "resnet19")

VGG11_PLAN = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")


def _width(channels: int, width: float) -> int:
    return max(1, int(math.ceil(channels * width)))


class SpikingNetwork(nn.Module):
    """Common frame: encoding of the input, a time-major body, time-averaged classifier.

    Subclasses set ``stem`` (``[B, C, H, W]`` or ``[T, B, C, H, W]`` -> ``[T, B, ...]``), ``body``
    (``[T, B, ...]`` -> ``[T, B, F]``) and ``classifier`` (``[B, F]`` -> ``[B, num_classes]``).
    """

    def __init__(self, timesteps: int, is_events: bool):
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.timesteps = timesteps
        self.is_events = is_events

    def forward(self, x: Tensor) -> Tensor:
        if self.is_events:
            if x.dim() != 5 or x.shape[1] != self.timesteps:
                raise ValueError(f"expected event frames [B, T={self.timesteps}, C, H, W], got {list(x.shape)}")
            x = x.transpose(0, 1)
        elif x.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got {list(x.shape)}")
        features = self.body(self.stem(x))
        return self.classifier(features.mean(0))


def _stem(precision: Precision, in_channels: int, out_channels: int, tau: float, timesteps: int, is_events: bool,
          stride: int = 1):
    if is_events:
        return ConvBNLIF(precision, in_channels, out_channels, tau, stride, spike_input=False, edge=True)
    return StaticStem(precision, in_channels, out_channels, tau, timesteps, stride)


class SpikingConvNet(SpikingNetwork):
    """A small spiking convnet, practical on a CPU: three conv layers and a classifier.

    ``[*, C, H, W]`` -> conv 32 -> conv 64 -> pool -> conv 64 -> pool -> linear. On inputs of at least
    ``STRIDED_FROM`` pixels a side (28x28 MNIST, 32x32 CIFAR) the first conv has stride 2, so the spiking
    layers work at a quarter of the pixels; smaller inputs (the 8x8 digits) keep their full resolution.
    """

    STRIDED_FROM = 16

    def __init__(self, num_classes: int, input_shape: tuple, timesteps: int, precision: Precision,
                 width: float = 1.0, tau: float = 2.0, is_events: bool = False):
        super().__init__(timesteps, is_events)
        c, h, w = input_shape
        c1, c2 = _width(32, width), _width(64, width)
        stride = 2 if min(h, w) >= self.STRIDED_FROM else 1
        h, w = -(-h // stride), -(-w // stride)
        self.stem = _stem(precision, c, c1, tau, timesteps, is_events, stride)
        self.body = nn.Sequential(
            ConvBNLIF(precision, c1, c2, tau), tnn.MultiStep(tnn.MaxPool2d(2)),
            ConvBNLIF(precision, c2, c2, tau), tnn.MultiStep(tnn.MaxPool2d(2)),
            tnn.MultiStep(nn.Flatten()),
        )
        self.classifier = precision.linear(c2 * (h // 4) * (w // 4), num_classes, spike_input=False, edge=True)


class SpikingMLP(SpikingNetwork):
    """A spiking LeNet-300-100 (the first setup of the lottery-ticket papers), for any input size: the
    flattened input -> linear 300 -> linear 100 -> linear classifier, each hidden linear followed by
    BatchNorm and LIF neurons. ``width`` multiplies the hidden sizes."""

    def __init__(self, num_classes: int, input_shape: tuple, timesteps: int, precision: Precision,
                 width: float = 1.0, tau: float = 2.0, is_events: bool = False):
        super().__init__(timesteps, is_events)
        features = math.prod(input_shape)
        hidden1, hidden2 = _width(300, width), _width(100, width)
        if is_events:
            self.stem = nn.Sequential(tnn.MultiStep(nn.Flatten()),
                                      LinearBNLIF(precision, features, hidden1, tau, spike_input=False, edge=True))
        else:
            self.stem = StaticLinearStem(precision, features, hidden1, tau, timesteps)
        self.body = LinearBNLIF(precision, hidden1, hidden2, tau)
        self.classifier = precision.linear(hidden2, num_classes, spike_input=False, edge=True)


class SpikingVGG11(SpikingNetwork):
    """Spiking VGG-11 for 32x32 inputs: eight conv-BN-LIF layers with max pooling, one linear classifier."""

    def __init__(self, num_classes: int, input_shape: tuple, timesteps: int, precision: Precision,
                 width: float = 1.0, tau: float = 2.0, is_events: bool = False):
        super().__init__(timesteps, is_events)
        c, h, w = input_shape
        plan = [step if step == "pool" else _width(step, width) for step in VGG11_PLAN]
        self.stem = _stem(precision, c, plan[0], tau, timesteps, is_events)
        layers, channels, pools = [], plan[0], 0
        for step in plan[1:]:
            if step == "pool":
                layers.append(tnn.MultiStep(tnn.MaxPool2d(2)))
                pools += 1
            else:
                layers.append(ConvBNLIF(precision, channels, step, tau))
                channels = step
        layers += [tnn.MultiStep(nn.AdaptiveAvgPool2d(1)), tnn.MultiStep(nn.Flatten())]
        self.body = nn.Sequential(*layers)
        self.classifier = precision.linear(channels, num_classes, spike_input=False, edge=True)


class SpikingBasicBlock(nn.Module):
    """Residual block: conv-BN-LIF, conv-BN, plus the (projected) shortcut, then LIF (a membrane-level sum, so
    the block's output stays binary). ``[T, B, C_in, H, W] -> [T, B, C_out, H/stride, W/stride]``."""

    def __init__(self, precision: Precision, in_channels: int, out_channels: int, stride: int, tau: float):
        super().__init__()
        self.first = ConvBNLIF(precision, in_channels, out_channels, tau, stride)
        self.conv = precision.conv(out_channels, out_channels, 3, spike_input=True)
        self.bn = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                precision.conv(in_channels, out_channels, 1, stride, spike_input=True), nn.BatchNorm2d(out_channels))
        self.lif = neurons(tau)

    def forward(self, x: Tensor) -> Tensor:
        current = fold(self.bn, fold(self.conv, self.first(x))) + fold(self.shortcut, x)
        return self.lif(current)


class SpikingResNet19(SpikingNetwork):
    """Spiking ResNet-19 (Zheng et al., 2021) for 32x32 inputs: a 128-channel stem, basic blocks 3 x 128,
    3 x 256 (stride 2), 2 x 512 (stride 2), global average pooling, linear 256 + LIF, linear classifier."""

    def __init__(self, num_classes: int, input_shape: tuple, timesteps: int, precision: Precision,
                 width: float = 1.0, tau: float = 2.0, is_events: bool = False):
        super().__init__(timesteps, is_events)
        c = input_shape[0]
        stages = [(_width(128, width), 3, 1), (_width(256, width), 3, 2), (_width(512, width), 2, 2)]
        channels = stages[0][0]
        self.stem = _stem(precision, c, channels, tau, timesteps, is_events)
        blocks = []
        for out_channels, count, stride in stages:
            for i in range(count):
                blocks.append(SpikingBasicBlock(precision, channels, out_channels, stride if i == 0 else 1, tau))
                channels = out_channels
        hidden = _width(256, width)
        blocks += [tnn.MultiStep(nn.AdaptiveAvgPool2d(1)), tnn.MultiStep(nn.Flatten()),
                   tnn.MultiStep(precision.linear(channels, hidden, spike_input=False)), neurons(tau)]
        self.body = nn.Sequential(*blocks)
        self.classifier = precision.linear(hidden, num_classes, spike_input=True, edge=True)


_CLASSES = {"convnet": SpikingConvNet, "mlp": SpikingMLP, "vgg11": SpikingVGG11, "resnet19": SpikingResNet19}


def build_model(arch: str, num_classes: int, input_shape: tuple, timesteps: int, precision: Precision,
                width: float = 1.0, is_events: bool = False) -> SpikingNetwork:
    """A spiking network by name (one of ``ARCHS``); ``width`` multiplies every layer's channel count."""
    if arch not in _CLASSES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHS}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return _CLASSES[arch](num_classes, tuple(input_shape), timesteps, precision, width, is_events=is_events)
