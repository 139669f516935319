"""Multi-step LIF neuron: reference loop, C++ and Triton kernels, custom op."""
from .op import lif_multistep
from .reference import lif_multistep_reference
from .surrogate import SURROGATES

__all__ = ["lif_multistep", "lif_multistep_reference", "SURROGATES"]
