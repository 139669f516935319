"""``NIRNetwork``: the module ``from_nir`` builds, a directed acyclic graph of layers run on time-major input."""
from typing import Optional

from torch import Tensor, nn

from ..nn.lif import LIF


class NIRNetwork(nn.Module):
    """A feed-forward graph of layers, run on time-major input ``[T, B, *input_shape] -> [T, B, *output_shape]``.

    Every node but the LIF neurons acts on each time step alone (T and B folded into one batch); a LIF sees the
    whole ``[T, B, ...]`` sequence and starts from its reset potential on every call. A node with several inputs
    gets their sum (NIR's rule for edges that meet). The graph's Input and Output nodes pass their value on.

    Attributes:
        layers: the modules by key (the NIR node name with "." replaced, as module names cannot hold it).
        names: NIR node name -> key in ``layers`` (None for the Input and Output nodes).
        inputs: NIR node name -> the names of the nodes that feed it.
        order: NIR node names in an order where every node comes after its inputs (Input first, Output last).
        metadata: the graph's metadata as read (a dict).
    """

    def __init__(self, layers: dict, inputs: dict, order: list, metadata: Optional[dict] = None):
        super().__init__()
        self.names = {}
        self.layers = nn.ModuleDict()
        for name in order:
            if layers.get(name) is None:
                self.names[name] = None
                continue
            key = name.replace(".", "_")
            while key in self.layers:
                key += "_"
            self.layers[key] = layers[name]
            self.names[name] = key
        self.inputs = {name: list(inputs.get(name, [])) for name in order}
        self.order = list(order)
        self.metadata = dict(metadata or {})

    @property
    def input_name(self) -> str:
        return self.order[0]

    @property
    def output_name(self) -> str:
        return self.order[-1]

    def layer(self, name: str) -> Optional[nn.Module]:
        """The module of the NIR node ``name`` (None for Input and Output)."""
        key = self.names[name]
        return None if key is None else self.layers[key]

    def forward(self, x: Tensor, all_outputs: bool = False):
        """``x`` ``[T, B, *input_shape]`` -> ``[T, B, *output_shape]``; with ``all_outputs``, a dict of every node's
        output ``[T, B, ...]`` by NIR node name instead."""
        if x.dim() < 2:
            raise ValueError(f"NIRNetwork expects time-major input [T, B, ...], got shape {list(x.shape)}")
        values = {}
        for name in self.order:
            feeds = self.inputs[name]
            value = values[feeds[0]] if feeds else x
            for feed in feeds[1:]:
                value = value + values[feed]
            layer = self.layer(name)
            if layer is not None:
                value = layer(value) if isinstance(layer, LIF) else layer(value.flatten(0, 1)).unflatten(
                    0, value.shape[:2])
            values[name] = value
        return values if all_outputs else values[self.output_name]

    def extra_repr(self) -> str:
        edges = ", ".join(f"{feed}->{name}" for name in self.order for feed in self.inputs[name])
        return f"edges: {edges}"
