"""Run a NIR graph in SpikingJelly, snnTorch or Norse, through their own NIR importers, with the workarounds their
known bugs need, and collect every node's output: how the NIR tests and ``benchmarks/nir_peers.py`` compare the
peers with ``from_nir``.

Each function takes a ``nir.NIRGraph`` (not changed) and time-major input ``x`` ``[T, B, *input_shape]`` and
returns ``{node name: [T, B, ...]}`` for every node the importer made a module of, plus ``"output"``. The peers
are imported when a function runs. Workarounds (SpikingJelly 2.0.0, snnTorch 1.0.0, Norse 1.1.0, nirtorch 2.6):

- SpikingJelly: none (``import_from_nir(graph, dt, step_mode="m")``). It reads no SumPool2d and refuses a
  LIF with ``tau <= dt``.
- snnTorch: its importer applies NIR's batchless Flatten dimensions to the batched tensor (flattening the batch
  too), so each ``nn.Flatten`` it builds is moved one dimension on; it assumes ``dt = 1e-4`` whatever the graph,
  asserts ``v_leak == 0``, ignores ``v_reset`` (resets to 0) and imports IF as a leaky neuron with beta 0.9, so
  graphs with ``v_reset != 0`` or IF nodes are refused here. It prints its weight-scale notes; they are silenced.
- Norse: ``from_nir`` ignores ``r`` and ``v_reset`` and reads no AvgPool2d; its Flatten has snnTorch's batch
  mistake. The graph it gets has ``r`` folded into the weight and bias of the Affine / Linear / Conv2d before each
  LIF (then ``r = 1``), every AvgPool2d replaced by a SumPool2d with the next LIF's threshold (or the next weight
  layer's weight, past Flatten) scaled to match, and graphs with ``v_reset != 0`` are refused.
"""
import contextlib
import copy
import io
import keyword

import numpy as np
import torch
from torch import nn

from .common import NIRError, require_nir


def _module_name(name: str) -> str:
    """nirtorch's name for the module of node ``name``."""
    name = name.replace(".", "_")
    return "nir_node_" + name if keyword.iskeyword(name) else name


def _recorder(graph, modules) -> tuple:
    """Forward hooks on the modules named after ``graph``'s nodes, recording each call's output by node name."""
    names = {_module_name(name): name for name in graph.nodes}
    calls, handles = {}, []
    for module_name, module in modules:
        if module_name in names:
            node = names[module_name]
            handles.append(module.register_forward_hook(
                lambda _module, _inputs, out, node=node: calls.setdefault(node, []).append(
                    out[0] if isinstance(out, tuple) else out)))
    return calls, handles


def _fix_flatten(module: nn.Module) -> None:
    """Move every ``nn.Flatten`` built from NIR's batchless dimensions one dimension on, past the batch."""
    for layer in module.modules():
        if isinstance(layer, nn.Flatten):
            layer.start_dim += 1 if layer.start_dim >= 0 else 0
            layer.end_dim += 1 if layer.end_dim >= 0 else 0


def _refuse_resets(graph, peer: str) -> None:
    for name, node in graph.nodes.items():
        if type(node).__name__ in ("LIF", "IF") and np.any(np.asarray(node.v_reset) != 0):
            raise NIRError(f"{name}: {peer}'s NIR importer ignores v_reset (it resets to 0)")


def spikingjelly_outputs(graph, x: torch.Tensor, dt: float = 1e-4) -> dict:
    """The graph run by SpikingJelly's ``import_from_nir(graph, dt=dt, step_mode="m")`` on ``x``."""
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    model = import_from_nir(copy.deepcopy(graph), dt=dt, step_mode="m")
    calls, handles = _recorder(graph, model.named_children())
    with torch.no_grad():
        out, _ = model(x)
    for handle in handles:
        handle.remove()
    return {**{name: outputs[0] for name, outputs in calls.items()}, "output": out}


def _stepwise(model: nn.Module, graph, x: torch.Tensor, step) -> dict:
    """Run ``step(model, x[t], state) -> (out, state)`` for each t; every node's outputs stacked over time."""
    calls, handles = _recorder(graph, model.named_children())
    outputs, state = [], None
    with torch.no_grad():
        for x_t in x:
            out, state = step(model, x_t, state)
            outputs.append(out)
    for handle in handles:
        handle.remove()
    return {**{name: torch.stack(steps) for name, steps in calls.items()}, "output": torch.stack(outputs)}


def snntorch_outputs(graph, x: torch.Tensor) -> dict:
    """The graph run by snnTorch's ``import_from_nir`` on ``x``, one step at a time (see the module docstring)."""
    from snntorch import utils
    from snntorch.import_nir import import_from_nir

    _refuse_resets(graph, "snnTorch")
    for name, node in graph.nodes.items():
        if type(node).__name__ == "IF":
            raise NIRError(f"{name}: snnTorch's NIR importer turns IF into a leaky neuron (beta 0.9)")
    with contextlib.redirect_stdout(io.StringIO()):
        model = import_from_nir(copy.deepcopy(graph))
    _fix_flatten(model)
    utils.reset(model)
    return _stepwise(model, graph, x, lambda m, x_t, state: (m(x_t)[0], None))


def _feeds(graph, name: str) -> list:
    return [target for source, target in graph.edges if source == name]


def norse_graph(graph):
    """A copy of ``graph`` that Norse 1.1.0's ``from_nir`` reads as the same network (see the module docstring)."""
    nir = require_nir()
    graph = copy.deepcopy(graph)
    _refuse_resets(graph, "Norse")
    nodes = graph.nodes
    for name, node in list(nodes.items()):
        if isinstance(node, nir.LIF) and not np.all(np.asarray(node.r) == 1):
            sources = [source for source, target in graph.edges if target == name]
            before = nodes[sources[0]] if len(sources) == 1 else None
            if not isinstance(before, (nir.Affine, nir.Linear, nir.Conv2d)) or len(_feeds(graph, sources[0])) != 1:
                raise NIRError(f"{name}: Norse ignores r, and no single weight layer feeds this LIF to fold it into")
            r, rows = np.asarray(node.r, np.float64), len(before.weight)
            factor = np.full(rows, r.item()) if r.size == 1 else r.reshape(rows, -1)[:, 0]
            view = (-1,) + (1,) * (before.weight.ndim - 1)
            before.weight = (before.weight * factor.reshape(view)).astype(before.weight.dtype)
            if hasattr(before, "bias"):
                before.bias = (before.bias * factor).astype(before.bias.dtype)
            node.r = np.ones_like(node.r)
    for name, node in list(nodes.items()):
        if not isinstance(node, nir.AvgPool2d):
            continue
        window = float(np.prod(np.broadcast_to(node.kernel_size, 2)))
        nodes[name] = nir.SumPool2d(kernel_size=np.broadcast_to(node.kernel_size, 2).copy(),
                                    stride=np.broadcast_to(node.stride, 2).copy(),
                                    padding=np.broadcast_to(node.padding, 2).copy())
        for target in _feeds(graph, name):
            while isinstance(nodes[target], nir.Flatten) and len(_feeds(graph, target)) == 1:
                target = _feeds(graph, target)[0]
            after = nodes[target]
            if isinstance(after, nir.LIF):
                after.v_threshold = after.v_threshold * window
                after.v_leak = after.v_leak * window
            elif isinstance(after, (nir.Affine, nir.Linear, nir.Conv2d)):
                after.weight = (after.weight / window).astype(after.weight.dtype)
            else:
                raise NIRError(f"{name}: Norse reads no AvgPool2d, and {target} after it cannot take the 1 / k")
    return graph


def norse_outputs(graph, x: torch.Tensor, dt: float = 1e-4) -> dict:
    """The graph run by Norse's ``from_nir(norse_graph(graph), dt=dt)`` on ``x``, one step at a time."""
    import norse.torch as norse

    rewritten = norse_graph(graph)
    model = norse.from_nir(rewritten, dt=dt)
    _fix_flatten(model)
    return _stepwise(model, rewritten, x, lambda m, x_t, state: m(x_t, state))
