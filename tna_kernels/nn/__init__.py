"""Drop-in modules built on the fused kernels."""
from .lif import LIF
from .ternary import TernaryConv2d, TernaryLinear, freeze_, ternarize_

__all__ = ["LIF", "TernaryConv2d", "TernaryLinear", "freeze_", "ternarize_"]
