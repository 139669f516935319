"""Max pooling for inference: a C++ kernel without indices, equal to F.max_pool2d."""
from .op import max_pool2d

__all__ = ["max_pool2d"]
