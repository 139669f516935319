"""Drop-in modules built on the fused kernels."""
from .lif import LIF

__all__ = ["LIF"]
