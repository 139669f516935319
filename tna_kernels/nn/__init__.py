"""Drop-in modules built on the fused kernels."""
from .fold import fold_batchnorm, fold_batchnorm_ternary
from .fused import conv_lif_inference
from .lif import LIF
from .multistep import MultiStep
from .pool import MaxPool2d, replace_max_pool_
from .ternary import TernaryConv2d, TernaryLinear, freeze_, ternarize_

__all__ = ["LIF", "MaxPool2d", "MultiStep", "TernaryConv2d", "TernaryLinear", "conv_lif_inference", "fold_batchnorm",
           "fold_batchnorm_ternary", "freeze_", "replace_max_pool_", "ternarize_"]
