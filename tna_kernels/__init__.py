"""tna-kernels: fused kernels for spiking neural networks (C++ on CPU, Triton on CUDA)."""
from . import convert, nir, nn
from ._ext import build_extensions, cpu_isa, host_cpu_isas
from .ops.lif import lif_multistep
from .ops.ternary import pack_ternary, ternarize, ternary_conv2d, ternary_linear, unpack_ternary

__version__ = "0.1.0"
__all__ = [
    "convert", "lif_multistep", "nir", "nn", "build_extensions", "cpu_isa", "host_cpu_isas", "pack_ternary",
    "ternarize", "ternary_conv2d", "ternary_linear", "unpack_ternary", "__version__",
]
