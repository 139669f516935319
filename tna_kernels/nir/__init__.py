"""NIR (the Neuromorphic Intermediate Representation, https://neuroir.org) export and import.

``to_nir(module, sample_input)`` writes a multi-step network of this package's modules as a ``nir.NIRGraph``
(``nir.write(path, graph)`` saves it); ``from_nir(graph_or_path)`` builds a ``NIRNetwork`` of our LIF, ternary or
float layers, pooling and flatten from a NIR graph written by us or by another tool (SpikingJelly, snnTorch,
Norse, ...). The ``nir`` package is imported only when these functions run (``pip install "tna-kernels[nir]"``).
"""
from .common import NIRError
from .export import to_nir
from .importer import from_nir
from .network import NIRNetwork

__all__ = ["NIRError", "NIRNetwork", "from_nir", "to_nir"]
