"""Drop-in modules built on the fused kernels."""
from .lif import LIF
from .pool import MaxPool2d, replace_max_pool_
from .ternary import TernaryConv2d, TernaryLinear, freeze_, ternarize_

__all__ = ["LIF", "MaxPool2d", "TernaryConv2d", "TernaryLinear", "freeze_", "replace_max_pool_", "ternarize_"]
