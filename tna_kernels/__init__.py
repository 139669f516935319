"""tna-kernels: fused kernels for spiking neural networks (C++ on CPU, Triton on CUDA)."""
from . import nn
from ._ext import build_extensions
from .ops.lif import lif_multistep

__version__ = "0.1.0"
__all__ = ["lif_multistep", "nn", "build_extensions", "__version__"]
