"""``to_nir``: a multi-step network of this package's modules as a NIR graph."""
import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.fold import BATCHNORMS, fold_batchnorm, fold_batchnorm_ternary
from ..nn.lif import LIF
from ..nn.multistep import MultiStep
from ..nn.pool import MaxPool2d
from ..nn.ternary import TernaryConv2d, TernaryLinear
from ..ops.ternary.format import FORMAT_VERSION, dequantize, unpack_ternary
from .common import (FIRES_ABOVE, FIRES_AT_OR_ABOVE, META_KEY, NIRError, check_dt, dense_groups, require_nir,
                     step_below)
from .network import NIRNetwork

AFFINE, CONV, NEURON, POOL, MAX_POOL, FLATTEN = "affine", "conv", "neuron", "pool", "max_pool", "flatten"
_SKIPPED = (nn.Identity, nn.Dropout)
_LEAVES = {nn.Linear: AFFINE, TernaryLinear: AFFINE, nn.Conv2d: CONV, TernaryConv2d: CONV, nn.AvgPool2d: POOL,
           nn.AdaptiveAvgPool2d: POOL, nn.MaxPool2d: MAX_POOL, MaxPool2d: MAX_POOL, nn.Flatten: FLATTEN}
KNOWN = ("nn.Sequential, tna_kernels.nn.MultiStep, tna_kernels.nir.NIRNetwork, tna_kernels.nn.LIF, nn.Linear, "
         "nn.Conv2d, TernaryLinear, TernaryConv2d, nn.BatchNorm1d / 2d (folded), nn.AvgPool2d, nn.AdaptiveAvgPool2d, "
         "nn.MaxPool2d on spikes, nn.Flatten, nn.Identity, nn.Dropout")
# the neuron that turns an average of spikes over a max-pooling window into the window's maximum: with tau = 2
# steps its membrane is avg / 2 >= 1 / (2 k) when any of the k inputs spiked, else 0, so a threshold of 1 / (4 k)
# decides it under ">" and ">=" alike, the membrane always returning to 0
MAX_POOL_TAU = 2.0


@dataclass
class _Entry:
    """One layer of the traced network: what it is, what feeds it, its per-sample shapes."""

    name: str
    kind: str
    layer: nn.Module
    inputs: list
    in_shape: tuple
    out_shape: tuple
    batch_dims: int = 1


def _describe(path: str, module: nn.Module) -> str:
    return f"{path or '<model>'} ({type(module).__name__})"


def _pair(value) -> tuple:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _run(layer: nn.Module, x: Tensor, batch_dims: int) -> Tensor:
    """``layer`` on ``x`` ``[T, B, ...]``: on the folded ``[T * B, ...]`` batch when ``batch_dims`` is 1."""
    if batch_dims == 2:
        return layer(x)
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class _Tracer:
    """Walks a module on a sample input and records its layers as ``_Entry`` objects, BatchNorm folded."""

    def __init__(self):
        self.entries: dict = {}

    def unique(self, path: str, module: nn.Module) -> str:
        name = path or type(module).__name__.lower()
        while name in self.entries or name in ("input", "output"):
            name += "_"
        return name

    def walk(self, module: nn.Module, path: str, x: Tensor, sources: list, batch_dims: int) -> tuple:
        """Trace ``module`` (a copy the tracer may change: ternary layers are frozen) on ``x`` ``[T, B, ...]`` fed by
        the entries ``sources``; returns the output and the entries it comes from."""
        kind = type(module)
        if isinstance(module, nn.Sequential) and kind.forward is nn.Sequential.forward:
            for name, child in module.named_children():
                x, sources = self.walk(child, f"{path}.{name}" if path else name, x, sources, batch_dims)
            return x, sources
        if isinstance(module, MultiStep) and kind.forward is MultiStep.forward:
            if batch_dims == 1:
                raise NIRError(f"{_describe(path, module)}: a MultiStep inside a MultiStep folds the batch twice")
            return self.walk(module.module, path, x, sources, 1)
        if isinstance(module, NIRNetwork):
            return self.walk_network(module, path, x, sources)
        return self.leaf(module, path, x, sources, batch_dims)

    def walk_network(self, network: NIRNetwork, path: str, x: Tensor, sources: list) -> tuple:
        values = {}
        for name in network.order:
            feeds = network.inputs[name]
            if not feeds:
                values[name] = (x, sources)
                continue
            value = values[feeds[0]][0]
            for feed in feeds[1:]:
                value = value + values[feed][0]
            feeding = [source for feed in feeds for source in values[feed][1]]
            layer = network.layer(name)
            if layer is None:
                values[name] = (value, feeding)
                continue
            batch_dims = 2 if isinstance(layer, LIF) else 1
            values[name] = self.leaf(layer, f"{path}.{name}" if path else name, value, feeding, batch_dims)
        return values[network.output_name]

    def leaf(self, module: nn.Module, path: str, x: Tensor, sources: list, batch_dims: int) -> tuple:
        where = _describe(path, module)
        if isinstance(module, LIF):
            kind = NEURON
        elif isinstance(module, (*_SKIPPED, *BATCHNORMS)) or type(module) in _LEAVES:
            kind = _LEAVES.get(type(module))
        else:
            raise NIRError(f"{where}: NIR has no counterpart for this module; to_nir knows {KNOWN}")
        if kind == NEURON and batch_dims != 2:
            raise NIRError(f"{where}: a LIF inside MultiStep does not see the time dimension")
        if kind == MAX_POOL and not (len(sources) == 1 and getattr(self.entries.get(sources[0]), "kind", None)
                                     in (NEURON, MAX_POOL)):
            raise NIRError(f"{where}: NIR has no max pooling; to_nir writes it only on spikes (right after a LIF), "
                           "as AvgPool2d and a LIF that fires when any input spiked")
        try:
            y = _run(module, x, batch_dims)
        except Exception as error:
            raise NIRError(f"{where}: running it on the sample input failed: {error}") from error
        if not isinstance(y, Tensor):
            raise NIRError(f"{where} returns {type(y).__name__}, not a tensor (e.g. LIF(return_state=True))")
        if isinstance(module, BATCHNORMS):
            self.fold(module, where, sources)
        if kind is None:
            return y, sources
        if isinstance(module, (TernaryLinear, TernaryConv2d)) and not module.frozen:
            module.freeze()
        name = self.unique(path, module)
        self.entries[name] = _Entry(name, kind, module, list(sources), tuple(x.shape[2:]), tuple(y.shape[2:]),
                                    batch_dims)
        return y, [name]

    def fold(self, bn: nn.Module, where: str, sources: list) -> None:
        """Fold ``bn`` into the one affine or conv entry that feeds it."""
        entry = self.entries.get(sources[0]) if len(sources) == 1 else None
        if entry is None or entry.kind not in (AFFINE, CONV):
            raise NIRError(f"{where}: NIR has no BatchNorm; to_nir folds it into the Linear or Conv2d right before it")
        if any(sources[0] in other.inputs for other in self.entries.values()):
            raise NIRError(f"{where}: {sources[0]} feeds another layer too, so the BatchNorm cannot be folded into it")
        with torch.no_grad():
            ternary = isinstance(entry.layer, (TernaryLinear, TernaryConv2d))
            entry.layer = (fold_batchnorm_ternary if ternary else fold_batchnorm)(entry.layer, bn)


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _ternary_weight(layer: nn.Module) -> tuple:
    """``(weight, metadata)`` of a frozen ternary layer: the float32 ``codes x scale`` and what rebuilds it."""
    codes = unpack_ternary(layer.packed, layer.weight_shape)
    meta = {"format_version": FORMAT_VERSION, "packed": _numpy(layer.packed), "scale": _numpy(layer.scale),
            "quantizer": layer.quantizer, "per_channel": bool(layer.per_channel), "spikes": bool(layer.spikes),
            "groups": int(getattr(layer, "groups", 1))}
    return _numpy(dequantize(codes, layer.scale)), {"ternary": meta}


def _weights(layer: nn.Module) -> tuple:
    """``(weight, bias or None, metadata)`` as numpy arrays of a float or ternary Linear / Conv2d."""
    if isinstance(layer, (TernaryLinear, TernaryConv2d)):
        weight, meta = _ternary_weight(layer)
    else:
        weight, meta = _numpy(layer.weight), {}
    return weight, None if layer.bias is None else _numpy(layer.bias), meta


def _conv_padding(layer: nn.Module, where: str) -> tuple:
    padding = layer.padding
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        if any(t % 2 for t in total):
            raise NIRError(f"{where}: padding='same' with an even kernel pads unevenly, which NIR cannot express")
        return tuple(t // 2 for t in total)
    return _pair(padding)


def _neuron_array(value, shape: tuple) -> np.ndarray:
    """A LIF parameter (a float, a ``[1]`` or a per-channel ``[C]`` tensor) as float64 of the neuron shape."""
    values = np.asarray(_numpy(value) if torch.is_tensor(value) else value, np.float64).reshape(-1)
    if values.size == 1:
        return np.full(shape, values[0])
    return np.broadcast_to(values.reshape(-1, *([1] * (len(shape) - 1))), shape).copy()


def _parameter_values(value) -> np.ndarray:
    """A LIF parameter in its own form (``[1]`` or ``[C]``), float64."""
    return np.asarray(_numpy(value) if torch.is_tensor(value) else [value], np.float64).reshape(-1)


class _Writer:
    """Turns traced entries into NIR nodes and edges."""

    def __init__(self, nir, dt: float, strict_threshold: bool, allow_soft_reset: bool):
        self.nir, self.dt, self.strict, self.allow_soft = nir, dt, strict_threshold, allow_soft_reset
        self.nodes, self.edges = {}, []
        self.soft_resets = []

    def add(self, name: str, node, inputs: list, meta: Optional[dict] = None) -> None:
        if meta:
            node.metadata = {META_KEY: meta}
        self.nodes[name] = node
        self.edges += [(source, name) for source in inputs]

    def entry(self, entry: _Entry) -> None:
        nir, layer = self.nir, entry.layer
        where = _describe(entry.name, layer)
        if entry.kind == AFFINE:
            if len(entry.in_shape) != 1:
                raise NIRError(f"{where}: NIR's Linear / Affine take a vector per sample, this layer gets "
                               f"{list(entry.in_shape)}")
            weight, bias, meta = _weights(layer)
            node = nir.Linear(weight=weight) if bias is None else nir.Affine(weight=weight, bias=bias)
            self.add(entry.name, node, entry.inputs, meta)
        elif entry.kind == CONV:
            self.conv(entry, where)
        elif entry.kind == NEURON:
            self.neuron(entry, where)
        elif entry.kind == POOL:
            self.pool(entry, where)
        elif entry.kind == MAX_POOL:
            self.max_pool(entry, where)
        else:
            self.flatten(entry, where)

    def conv(self, entry: _Entry, where: str) -> None:
        layer = entry.layer
        if getattr(layer, "padding_mode", "zeros") != "zeros":
            raise NIRError(f"{where}: padding_mode={layer.padding_mode!r}; NIR convolutions pad with zeros")
        weight, bias, meta = _weights(layer)
        if layer.groups > 1:
            weight = dense_groups(weight, layer.groups)
        bias = np.zeros(weight.shape[0], weight.dtype) if bias is None else bias
        node = self.nir.Conv2d(input_shape=tuple(entry.in_shape[1:]), weight=weight, stride=_pair(layer.stride),
                               padding=_conv_padding(layer, where), dilation=_pair(layer.dilation), groups=1, bias=bias)
        self.add(entry.name, node, entry.inputs, meta)

    def neuron(self, entry: _Entry, where: str) -> None:
        lif, shape = entry.layer, entry.out_shape
        if lif.v_reset is None and not self.allow_soft:
            raise NIRError(f"{where}: soft reset (v_reset=None) has no NIR form (NIR resets to v_reset); "
                           "pass allow_soft_reset=True to write it as a hard reset to 0, which changes the spikes")
        soft = lif.v_reset is None
        if soft:
            self.soft_resets.append(entry.name)
        v_reset = 0.0 if soft else float(lif.v_reset)
        tau, theta = _neuron_array(lif.tau, shape), _neuron_array(lif.v_threshold, shape)
        node = self.nir.LIF(tau=tau * self.dt, r=np.ones(shape) if lif.decay_input else tau.copy(),
                            v_leak=np.full(shape, v_reset), v_threshold=step_below(theta) if self.strict else theta,
                            v_reset=np.full(shape, v_reset))
        meta = {"tau": _parameter_values(lif.tau), "v_threshold": _parameter_values(lif.v_threshold),
                "decay_input": bool(lif.decay_input), "detach_reset": bool(lif.detach_reset),
                "surrogate": lif.surrogate, "alpha": float(lif.alpha), "soft_reset": soft}
        self.add(entry.name, node, entry.inputs, meta)

    def pool(self, entry: _Entry, where: str) -> None:
        layer, nir = entry.layer, self.nir
        if isinstance(layer, nn.AdaptiveAvgPool2d):
            size = layer.output_size if isinstance(layer.output_size, tuple) else (layer.output_size,) * 2
            out = [entry.in_shape[1 + i] if s is None else s for i, s in enumerate(size)]
            if any(entry.in_shape[1 + i] % o for i, o in enumerate(out)):
                raise NIRError(f"{where}: output size {out} does not divide the input {list(entry.in_shape[1:])}, "
                               "so it is no AvgPool2d")
            kernel = np.array([entry.in_shape[1 + i] // o for i, o in enumerate(out)])
            self.add(entry.name, nir.AvgPool2d(kernel_size=kernel, stride=kernel.copy(), padding=np.zeros(2, int)),
                     entry.inputs)
            return
        if layer.ceil_mode:
            raise NIRError(f"{where}: ceil_mode=True has no NIR form")
        padding = np.array(_pair(layer.padding))
        if padding.any() and not layer.count_include_pad:
            raise NIRError(f"{where}: count_include_pad=False with padding has no NIR form")
        if layer.divisor_override not in (None, 1):
            raise NIRError(f"{where}: divisor_override={layer.divisor_override} has no NIR form (1 is SumPool2d)")
        kind = nir.SumPool2d if layer.divisor_override == 1 else nir.AvgPool2d
        kernel = np.array(_pair(layer.kernel_size))
        stride = kernel.copy() if layer.stride is None else np.array(_pair(layer.stride))
        self.add(entry.name, kind(kernel_size=kernel, stride=stride, padding=padding), entry.inputs)

    def max_pool(self, entry: _Entry, where: str) -> None:
        layer, nir = entry.layer, self.nir
        if layer.return_indices or layer.ceil_mode or _pair(layer.padding) != (0, 0) or _pair(layer.dilation) != (1, 1):
            raise NIRError(f"{where}: to_nir writes max pooling without padding, dilation, ceil_mode or indices only")
        kernel = np.array(_pair(layer.kernel_size))
        stride = kernel.copy() if layer.stride is None else np.array(_pair(layer.stride))
        pool, shape = {"kernel_size": kernel, "stride": stride}, entry.out_shape
        average = f"{entry.name}.avg"
        self.add(average, nir.AvgPool2d(kernel_size=kernel, stride=stride, padding=np.zeros(2, int)), entry.inputs,
                 {"max_pool2d": {**pool, "part": "average"}})
        fire = nir.LIF(tau=np.full(shape, MAX_POOL_TAU * self.dt), r=np.ones(shape), v_leak=np.zeros(shape),
                       v_threshold=np.full(shape, 1 / (4 * int(kernel.prod()))), v_reset=np.zeros(shape))
        self.add(entry.name, fire, [average], {"max_pool2d": {**pool, "part": "fire"}})

    def flatten(self, entry: _Entry, where: str) -> None:
        layer, ndim = entry.layer, len(entry.in_shape)
        dims = []
        for dim in (layer.start_dim, layer.end_dim):
            sample_dim = (dim if dim >= 0 else dim + ndim + entry.batch_dims) - entry.batch_dims
            if not 0 <= sample_dim < ndim:
                raise NIRError(f"{where}: start_dim / end_dim reach into the time or batch dimensions")
            dims.append(sample_dim)
        node = self.nir.Flatten(input_type={"input": np.array(entry.in_shape)}, start_dim=dims[0], end_dim=dims[1])
        self.add(entry.name, node, entry.inputs)


def to_nir(module: nn.Module, sample_input: Tensor, *, dt: float = 1e-4, strict_threshold: bool = False,
           allow_soft_reset: bool = False, metadata: Optional[dict] = None):
    """Write a multi-step network of this package's modules as a NIR graph (``nir.NIRGraph``).

    ``module`` runs on time-major input ``[T, B, ...]``: an ``nn.Sequential`` (nested ones too) of layers, with the
    per-sample layers (convolutions, pooling, flatten, BatchNorm) wrapped in ``tna_kernels.nn.MultiStep`` or
    taking ``[T, B, ...]`` themselves (``nn.Linear``, ``TernaryLinear``, ``TernaryConv2d``), ``tna_kernels.nn.LIF``
    neurons, or a ``NIRNetwork`` from ``from_nir``. A copy of it runs once in eval mode on ``sample_input``
    ``[T, B, *input_shape]`` to find every layer's shape; NIR's shapes have no time or batch dimension.

    Mapping (forward Euler with step ``dt`` seconds turns NIR's continuous LIF back into ours exactly):

    - LIF: ``tau`` (steps) -> ``tau * dt`` (seconds); ``r = 1`` for ``decay_input=True``, ``r = tau`` for
      ``decay_input=False``; ``v_leak = v_reset``; ``v_threshold``, ``v_reset``; every parameter float64 of the
      neuron shape (per-channel values broadcast over it). With ``strict_threshold`` the threshold is written one
      float32 step lower, so that NIR's ``v > v_threshold`` fires exactly where our ``v >= v_threshold`` does.
      The surrogate, ``detach_reset`` and the parameters as set go into the node's metadata.
    - ``nn.Linear`` -> Affine (Linear without a bias); ``nn.Conv2d`` -> Conv2d (a zero bias if none; a grouped
      convolution as its dense block-diagonal weight, which is exact); a BatchNorm right after either is folded
      into it (eval-mode statistics). Ternary layers are written as their float32 weight ``code x scale`` (both
      TTQ scales), with the packed codes, scales and options in the node's metadata so that ``from_nir`` rebuilds
      the same ternary layer.
    - ``nn.AvgPool2d`` -> AvgPool2d (SumPool2d for ``divisor_override=1``), ``nn.AdaptiveAvgPool2d`` -> AvgPool2d
      where the sizes divide, ``nn.Flatten`` -> Flatten with its dimensions counted without time and batch.
    - ``nn.MaxPool2d`` on spikes (right after a LIF): NIR has no max pooling, so it is written as AvgPool2d
      ``"<name>.avg"`` and a LIF ``"<name>"`` (``tau = 2 dt``, threshold ``1 / (4 k)`` for a k-pixel window) that
      fires exactly when any input of the window spiked, under ``>`` and ``>=`` alike; ``from_nir`` turns the pair
      back into max pooling.

    The graph's metadata holds ``dt``, ``firing_condition`` (``">="``, or ``">"`` with ``strict_threshold``),
    ``reset`` (``"hard"``), ``soft_reset_written_as_hard`` (the LIF names, if any), ``producer``, and ``metadata``.

    Args:
        module: the network (copied; the original is not changed).
        sample_input: ``[T, B, *input_shape]``, values the network can take (spikes where a ternary layer
            declares ``spikes=True``).
        dt: the time step in seconds (1e-4, as SpikingJelly, snnTorch and Norse's NIR importers assume).
        strict_threshold: write thresholds for NIR's ``v > v_threshold`` (for snnTorch, Norse, hardware).
        allow_soft_reset: write soft-reset LIFs as hard reset to 0 (not the same network; the metadata says so)
            instead of refusing them.
        metadata: more graph metadata (values NIR can store: numbers, strings, arrays, dicts of them).

    Raises:
        NIRError: a module NIR cannot hold (soft reset, a module to_nir does not know, max pooling not on spikes,
            a BatchNorm after something else, ...); the message names the module.
        ImportError: the ``nir`` package is missing.
    """
    nir = require_nir()
    dt = check_dt(dt)
    if not isinstance(sample_input, Tensor) or sample_input.dim() < 3:
        raise ValueError("sample_input must be a time-major tensor [T, B, *input_shape]")
    from .. import __version__

    tracer = _Tracer()
    model = copy.deepcopy(module).eval()
    with torch.no_grad():
        _, sources = tracer.walk(model, "", sample_input, ["input"], 2)
    if not tracer.entries:
        raise NIRError(f"{_describe('', module)} holds no layer NIR can express")
    writer = _Writer(nir, dt, strict_threshold, allow_soft_reset)
    writer.add("input", nir.Input(input_type={"input": np.array(sample_input.shape[2:])}), [])
    for entry in tracer.entries.values():
        writer.entry(entry)
    last = tracer.entries.get(sources[0])
    out_shape = sample_input.shape[2:] if last is None else last.out_shape
    writer.add("output", nir.Output(output_type={"output": np.array(out_shape)}), sources)
    graph_meta = {"producer": f"tna_kernels {__version__}", "dt": dt,
                  "firing_condition": FIRES_ABOVE if strict_threshold else FIRES_AT_OR_ABOVE, "reset": "hard",
                  "soft_reset_written_as_hard": ",".join(writer.soft_resets)}
    return nir.NIRGraph(nodes=writer.nodes, edges=writer.edges, metadata={**graph_meta, **(metadata or {})})
