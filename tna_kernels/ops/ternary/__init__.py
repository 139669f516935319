"""Ternary weights: quantizers, the packed 2-bit format, reference, C++ and Triton kernels, custom ops."""
from .format import FORMAT_VERSION, dequantize, pack_ternary, unpack_ternary
from .op import ternary_conv2d, ternary_linear
from .quantize import QUANTIZERS, quantize_weight, ternarize
from .reference import ternary_conv2d_reference, ternary_linear_reference

__all__ = [
    "FORMAT_VERSION", "QUANTIZERS", "dequantize", "pack_ternary", "quantize_weight", "ternarize",
    "ternary_conv2d", "ternary_conv2d_reference", "ternary_linear", "ternary_linear_reference", "unpack_ternary",
]
