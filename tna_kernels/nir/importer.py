"""``from_nir``: a NIR graph (or file) as a multi-step ``NIRNetwork`` of this package's modules."""
import math
import os
import warnings
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..nn.lif import LIF
from ..nn.pool import MaxPool2d
from ..nn.ternary import TernaryConv2d, TernaryLinear
from ..ops.ternary.format import FORMAT_VERSION, dequantize, unpack_ternary
from .common import (FIRES_AT_OR_ABOVE, META_KEY, NIRError, check_dt, dense_groups, plain, require_nir,
                     step_above, step_below)
from .network import NIRNetwork

SUPPORTED = ("Input", "Output", "Affine", "Linear", "Conv2d", "AvgPool2d", "SumPool2d", "Flatten", "LIF", "IF")
_REFUSED = {
    "CubaLIF": "a current-based LIF has a synaptic current, a second state tna_kernels' LIF does not have",
    "CubaLI": "a current-based leaky integrator has a synaptic current and does not spike",
    "LI": "a leaky integrator does not spike; tna_kernels has no such neuron",
    "I": "an integrator does not spike; tna_kernels has no such neuron",
    "NIRGraph": "a subgraph (e.g. a recurrent layer written by snnTorch) is not supported",
}
# relative tolerance within which r is taken to be exactly 1 or tau / dt, and our metadata's tau to be the file's
_R_TOLERANCE, _TAU_TOLERANCE = 1e-6, 1e-9


@dataclass
class _Spec:
    """What one node becomes: its kind, parameters, and the input transform a neuron needs folded before it."""

    kind: str
    node: object
    weight: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    ternary: Optional[dict] = None
    options: dict = field(default_factory=dict)
    factor: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None


def _ours(node) -> dict:
    """The metadata ``to_nir`` wrote on a node (an empty dict for other tools' nodes)."""
    meta = getattr(node, "metadata", None)
    return plain(meta.get(META_KEY, {})) if isinstance(meta, dict) else {}


def _pair(value) -> tuple:
    values = np.asarray(value).reshape(-1)
    values = np.repeat(values, 2) if values.size == 1 else values
    if values.size != 2:
        raise ValueError(f"expected one or two values, got {np.asarray(value).tolist()}")
    return tuple(int(v) for v in values)


def _read(nir, source):
    if isinstance(source, nir.NIRGraph):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"from_nir takes a nir.NIRGraph or the path of a NIR file, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such NIR file")
    try:
        graph = nir.read(path, type_check=False)
    except Exception as error:
        raise NIRError(f"{path} is not a readable NIR file ({type(error).__name__}: {error})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise NIRError(f"{path} holds a single {type(graph).__name__} node, not a NIR graph")
    return graph


def _uniform(values, what: str, where: str) -> float:
    values = np.asarray(values, np.float64)
    if values.size == 0 or not np.all(values == values.reshape(-1)[0]):
        raise NIRError(f"{where}: {what} differs between neurons (from {values.min():g} to {values.max():g}); "
                       "tna_kernels' LIF takes one value per layer")
    return float(values.reshape(-1)[0])


def _close(values, target) -> bool:
    return bool(np.all(np.isclose(values, target, rtol=_R_TOLERANCE, atol=0)))


class _Importer:
    def __init__(self, nir, graph, dt: float):
        self.nir, self.graph, self.dt = nir, graph, dt
        self.metadata = plain(graph.metadata) if isinstance(graph.metadata, dict) else {}
        self.at_or_above = self.metadata.get("firing_condition") == FIRES_AT_OR_ABOVE
        written = self.metadata.get("dt")
        if isinstance(written, (int, float)) and not math.isclose(written, dt, rel_tol=1e-12):
            warnings.warn(f"the graph was written with dt={written:g}; importing with dt={dt:g} changes every tau "
                          "in steps", stacklevel=3)

    def structure(self) -> tuple:
        """``(order, inputs, consumers)``, after checking edges, node types, one Input, one Output, no cycle."""
        nodes, edges = self.graph.nodes, [tuple(edge) for edge in self.graph.edges]
        if len(set(edges)) != len(edges):
            raise NIRError("the graph lists an edge twice")
        for source, target in edges:
            for end in (source, target):
                if end not in nodes:
                    raise NIRError(f"the edge {source} -> {target} names {end}, which is not a node of the graph")
        for name, node in nodes.items():
            kind = type(node).__name__
            if kind in _REFUSED:
                raise NIRError(f"{name} ({kind}): {_REFUSED[kind]}")
            if kind not in SUPPORTED:
                raise NIRError(f"{name} ({kind}): from_nir reads {', '.join(SUPPORTED)}")
        inputs = {name: [s for s, t in edges if t == name] for name in nodes}
        consumers = {name: [t for s, t in edges if s == name] for name in nodes}
        try:
            order = list(TopologicalSorter({name: inputs[name] for name in nodes}).static_order())
        except CycleError as error:
            cycle = " -> ".join(error.args[1])
            raise NIRError(f"the graph is recurrent (a cycle: {cycle}); from_nir builds feed-forward networks "
                           "only") from None
        found = {kind: [name for name, node in nodes.items() if type(node).__name__ == kind]
                 for kind in ("Input", "Output")}
        for kind, names in found.items():
            if len(names) != 1:
                raise NIRError(f"from_nir reads graphs with one {kind} node, this one has {len(names)}")
        (first,), (last,) = found["Input"], found["Output"]
        for name in nodes:
            where = f"{name} ({type(nodes[name]).__name__})"
            if (name == first) == bool(inputs[name]):
                raise NIRError(f"{where}: " + ("the Input node has incoming edges" if inputs[name] else
                                               "no edge leads to it from the Input node"))
            if (name == last) == bool(consumers[name]):
                raise NIRError(f"{where}: " + ("the Output node has outgoing edges" if consumers[name] else
                                               "no edge leads from it to the Output node"))
        return order, inputs, consumers

    def spec(self, name: str, node) -> _Spec:
        kind = type(node).__name__
        where = f"{name} ({kind})"
        try:
            if kind in ("Affine", "Linear"):
                weight = np.asarray(node.weight)
                if weight.ndim != 2:
                    raise NIRError(f"{where}: weight has shape {list(weight.shape)}; from_nir reads [out, in]")
                bias = np.asarray(node.bias) if kind == "Affine" else None
                return _Spec("affine", node, weight, bias, _ours(node).get("ternary"))
            if kind == "Conv2d":
                weight = np.asarray(node.weight)
                if weight.ndim != 4:
                    raise NIRError(f"{where}: weight has shape {list(weight.shape)}; from_nir reads [O, C, kh, kw]")
                padding = node.padding if isinstance(node.padding, str) else _pair(node.padding)
                options = dict(stride=_pair(node.stride), padding=padding, dilation=_pair(node.dilation),
                               groups=int(np.asarray(node.groups)))
                return _Spec("conv", node, weight, np.asarray(node.bias), _ours(node).get("ternary"), options)
            if kind in ("AvgPool2d", "SumPool2d"):
                options = dict(kernel_size=_pair(node.kernel_size), stride=_pair(node.stride),
                               padding=_pair(node.padding), divisor_override=1 if kind == "SumPool2d" else None)
                return _Spec("pool", node, options=options)
            if kind == "Flatten":
                start, end = int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim))
                return _Spec("flatten", node, options=dict(start_dim=start + 1 if start >= 0 else start,
                                                           end_dim=end + 1 if end >= 0 else end))
            if kind in ("LIF", "IF"):
                return self.neuron(node, where, kind)
        except ValueError as error:
            if isinstance(error, NIRError):
                raise
            raise NIRError(f"{where}: {error}") from None
        return _Spec(kind.lower(), node)

    def neuron(self, node, where: str, kind: str) -> _Spec:
        """A LIF or IF node as our LIF's options, plus the factor and shift its input needs (``r``, ``v_leak``)."""
        ours = _ours(node)
        v_reset = _uniform(node.v_reset, "v_reset", where)
        theta = _uniform(node.v_threshold, "v_threshold", where)
        if kind == "IF":
            tau, decay_input = math.inf, False
            factor, shift = np.asarray(node.r, np.float64) * self.dt, np.zeros(1)
        else:
            tau = _uniform(np.asarray(node.tau, np.float64) / self.dt, "tau", where)
            if not (math.isfinite(tau) and tau >= 1):
                raise NIRError(f"{where}: tau / dt = {tau:g} steps with dt = {self.dt:g} s; forward Euler needs tau "
                               ">= dt (tau / dt >= 1 step): import it with a smaller dt")
            written = np.asarray(ours.get("tau", []), np.float64).reshape(-1)
            if written.size and np.all(written == written[0]) and math.isclose(written[0], tau,
                                                                                 rel_tol=_TAU_TOLERANCE):
                tau = float(written[0])
            r = np.asarray(node.r, np.float64)
            leak = np.asarray(node.v_leak, np.float64) - v_reset
            decay_input = not (_close(r, tau) and not _close(r, 1.0))
            factor = r if decay_input else np.ones(1)
            shift = leak if decay_input else leak / tau
        if _close(factor, 1.0):
            factor = np.ones(1)
        threshold = self.threshold(theta, ours)
        options = dict(tau=tau, v_threshold=threshold, v_reset=v_reset, decay_input=decay_input,
                       detach_reset=bool(ours.get("detach_reset", False)), surrogate=ours.get("surrogate", "atan"),
                       alpha=ours.get("alpha"))
        return _Spec("neuron", node, options=options, factor=factor, shift=shift)

    def threshold(self, theta: float, ours: dict) -> float:
        """Our ``v >= threshold`` for the file's threshold: as written for files that fire at or above it, else
        the next float32 above it (NIR's ``v > v_threshold``); exactly ours where our metadata agrees with it."""
        written = np.asarray(ours.get("v_threshold", []), np.float64).reshape(-1)
        if written.size and np.all(written == written[0]):
            expected = written[0] if self.at_or_above else float(step_below(written[0]))
            if expected == theta:
                return float(written[0])
        return theta if self.at_or_above else float(step_above(theta))

    def fold(self, name: str, specs: dict, inputs: dict, consumers: dict) -> None:
        """Fold a neuron's input factor (``r``) and shift (``v_leak``) into the one layer that feeds it."""
        spec = specs[name]
        if np.all(spec.factor == 1) and not np.any(spec.shift):
            return
        where = f"{name} ({type(spec.node).__name__})"
        source = inputs[name][0] if len(inputs[name]) == 1 else None
        before = specs.get(source)
        if before is None or before.kind not in ("affine", "conv") or len(consumers[source]) != 1:
            raise NIRError(f"{where}: its r / v_leak scale and shift its input, which from_nir folds into the weights "
                           "of the single Affine, Linear or Conv2d node feeding only this neuron; there is none")
        rows = before.weight.shape[0]
        try:
            factor, shift = np.broadcast_arrays(spec.factor, spec.shift)
            if before.kind == "conv":
                flat = factor.reshape(factor.shape[0], -1) if factor.ndim == 3 else factor.reshape(-1, 1)
                shifts = shift.reshape(shift.shape[0], -1) if shift.ndim == 3 else shift.reshape(-1, 1)
                if np.any(flat != flat[:, :1]) or np.any(shifts != shifts[:, :1]):
                    raise NIRError(f"{where}: r or v_leak varies within a channel, which no Conv2d bias can hold")
                factor, shift = flat[:, 0], shifts[:, 0]
            factor, shift = (np.broadcast_to(factor.reshape(-1), (rows,)),
                             np.broadcast_to(shift.reshape(-1), (rows,)))
        except ValueError as error:
            if isinstance(error, NIRError):
                raise
            raise NIRError(f"{where}: its r / v_leak do not match the {rows} outputs of {source}") from None
        dtype = before.weight.dtype
        if np.any(factor != 1):
            view = (-1,) + (1,) * (before.weight.ndim - 1)
            before.weight = (before.weight.astype(np.float64) * factor.reshape(view)).astype(dtype)
            before.ternary = None
        bias = np.zeros(rows) if before.bias is None else before.bias.astype(np.float64)
        before.bias = (bias * factor + shift).astype(dtype)

    def merge_max_pool(self, name: str, specs: dict, inputs: dict, consumers: dict, order: list) -> None:
        """Turn an AvgPool2d + LIF pair written by ``to_nir`` for a max pooling back into one ``MaxPool2d``."""
        meta = _ours(specs[name].node).get("max_pool2d", {})
        fire = consumers[name][0] if len(consumers[name]) == 1 else None
        if meta.get("part") != "average" or fire is None or specs[fire].kind != "neuron":
            return
        options, window = specs[fire].options, math.prod(specs[name].options["kernel_size"])
        expected = dict(tau=2.0, v_reset=0.0, decay_input=True)
        if (_ours(specs[fire].node).get("max_pool2d", {}).get("part") != "fire"
                or any(options[key] != value for key, value in expected.items())
                or not np.all(specs[fire].factor == 1) or np.any(specs[fire].shift)
                or options["v_threshold"] not in (1 / (4 * window), float(step_above(1 / (4 * window))))):
            return
        pool = specs[name].options
        specs[fire] = _Spec("max_pool", specs[fire].node, options=dict(kernel_size=pool["kernel_size"],
                                                                        stride=pool["stride"]))
        inputs[fire] = inputs.pop(name)
        for source in inputs[fire]:
            consumers[source] = [fire if target == name else target for target in consumers[source]]
        del specs[name]
        order.remove(name)

    def network(self) -> NIRNetwork:
        order, inputs, consumers = self.structure()
        specs = {name: self.spec(name, self.graph.nodes[name]) for name in order}
        for name in list(order):
            if name in specs and specs[name].kind == "pool":
                self.merge_max_pool(name, specs, inputs, consumers, order)
        for name in order:
            if specs[name].kind == "neuron":
                self.fold(name, specs, inputs, consumers)
        layers = {name: _build(name, specs[name]) for name in order}
        return NIRNetwork(layers, inputs, order, self.metadata)


def _ternary(name: str, spec: _Spec) -> Optional[nn.Module]:
    """The frozen ternary layer ``to_nir`` wrote into ``spec``'s metadata, if its ``code x scale`` is the weight."""
    meta = spec.ternary
    if not isinstance(meta, dict):
        return None
    try:
        if int(meta["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"ternary format version {meta['format_version']}, this package reads {FORMAT_VERSION}")
        packed = torch.as_tensor(np.asarray(meta["packed"], np.int32))
        scale = torch.as_tensor(np.asarray(meta["scale"], np.float32))
        options = dict(quantizer=str(meta["quantizer"]), per_channel=bool(meta["per_channel"]),
                       spikes=bool(meta["spikes"]))
        weight = spec.weight
        if spec.kind == "affine":
            layer = TernaryLinear(weight.shape[1], weight.shape[0], bias=spec.bias is not None, **options)
        else:
            groups = int(meta["groups"])
            conv = spec.options
            layer = TernaryConv2d(weight.shape[1], weight.shape[0], weight.shape[2:], conv["stride"], conv["padding"],
                                  conv["dilation"], groups, bias=True, **options)
        dense = dequantize(unpack_ternary(packed, layer.weight_shape), scale).numpy()
        if spec.kind == "conv" and layer.groups > 1:
            dense = dense_groups(dense, layer.groups)
        if dense.shape != weight.shape or not np.array_equal(dense, weight.astype(np.float32)):
            raise ValueError("its codes x scale differ from the node's weight")
        state = {"packed": packed, "scale": scale, "format_version": torch.tensor(FORMAT_VERSION)}
        if spec.bias is not None:
            state["bias"] = torch.as_tensor(spec.bias, dtype=torch.float32)
        layer.load_state_dict(state)
        return layer.eval()
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        warnings.warn(f"{name}: its ternary metadata does not rebuild the layer ({error}); imported with float "
                      "weights", stacklevel=4)
        return None


def _float32(values: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(np.asarray(values, np.float32)))


def _build(name: str, spec: _Spec) -> Optional[nn.Module]:
    if spec.kind in ("input", "output"):
        return None
    if spec.kind in ("affine", "conv"):
        layer = _ternary(name, spec)
        if layer is not None:
            return layer
        if spec.kind == "affine":
            layer = nn.Linear(spec.weight.shape[1], spec.weight.shape[0], bias=spec.bias is not None)
        else:
            conv = spec.options
            layer = nn.Conv2d(spec.weight.shape[1] * conv["groups"], spec.weight.shape[0], spec.weight.shape[2:],
                              **conv, bias=True)
        layer.weight = _float32(spec.weight)
        if spec.bias is not None:
            layer.bias = _float32(spec.bias)
        return layer.requires_grad_(False)
    if spec.kind == "pool":
        return nn.AvgPool2d(**spec.options)
    if spec.kind == "max_pool":
        return MaxPool2d(**spec.options)
    if spec.kind == "flatten":
        return nn.Flatten(**spec.options)
    return LIF(**spec.options)


def from_nir(graph_or_path, *, dt: float = 1e-4) -> NIRNetwork:
    """Build a multi-step ``NIRNetwork`` (input ``[T, B, ...]``) from a NIR graph or a NIR file.

    Nodes (read straight from ``graph.nodes`` and ``graph.edges``): Input, Output, Affine / Linear (``nn.Linear``),
    Conv2d (``nn.Conv2d``, groups kept), AvgPool2d / SumPool2d (``nn.AvgPool2d``, ``divisor_override=1`` for the
    sum), Flatten (``nn.Flatten``, its batchless dimensions moved past the batch), LIF and IF
    (``tna_kernels.nn.LIF``). Weights are float32. Where ``to_nir`` wrote ternary codes and scales whose
    ``code x scale`` is the node's weight, the layer is the frozen ``TernaryLinear`` / ``TernaryConv2d`` again,
    and an AvgPool2d + LIF pair it wrote for a max pooling is ``tna_kernels.nn.MaxPool2d`` again.

    Neurons, forward Euler with step ``dt`` (NIR's ``tau dv/dt = (v_leak - v) + r I``):

    - ``tau / dt`` is our tau in steps; it must be the same for every neuron of a node and at least 1 (a larger
      ``dt`` than the network allows is refused). ``r`` equal to ``tau / dt`` (within a relative 1e-6) is
      ``decay_input=False``; otherwise ``decay_input=True`` with the input multiplied by ``r``: that factor, and
      the shift ``v_leak - v_reset`` (divided by tau for ``decay_input=False``), are folded into the weight and
      bias of the Affine, Linear or Conv2d node that alone feeds the neuron (per output neuron; per channel for a
      convolution), so ``W' = r W`` and ``b' = r b + (v_leak - v_reset)``. ``r`` within 1e-6 of 1 counts as 1.
    - IF (``dv/dt = r I``, no leak): ``tau = math.inf``, ``decay_input=False``, input factor ``r * dt``.
    - ``v_threshold`` and ``v_reset`` must be the same for every neuron of a node. A graph whose metadata says
      ``firing_condition: ">="`` (``to_nir`` without ``strict_threshold``) keeps its threshold; any other graph
      fires on NIR's ``v > v_threshold``, which our ``v >= threshold`` matches for float32 with the next float32
      above the written value.
    - The surrogate, ``alpha`` and ``detach_reset`` come from ``to_nir``'s metadata (else atan, 2, False).

    Args:
        graph_or_path: a ``nir.NIRGraph``, or the path of a file written by ``nir.write``.
        dt: the time step in seconds (1e-4, as SpikingJelly, snnTorch and Norse assume); a graph written by
            ``to_nir`` with another dt warns.

    Returns:
        a ``NIRNetwork`` in eval mode whose parameters need no gradient; ``network.metadata`` is the graph's.

    Raises:
        FileNotFoundError: no file at the path.
        NIRError: a malformed file, a recurrent graph (a cycle), CubaLIF or another node type not listed, several
            Input or Output nodes, neuron parameters that differ between the neurons of a node, ``tau < dt``, an
            ``r`` or ``v_leak`` with no single weight layer before it to fold into.
        ImportError: the ``nir`` package is missing.
    """
    nir = require_nir()
    dt = check_dt(dt)
    network = _Importer(nir, _read(nir, graph_or_path), dt).network()
    return network.eval().requires_grad_(False)
