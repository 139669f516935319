"""Spiking models of the TNA trainer, with full-precision or ternary weights."""
from .architectures import ARCHS, SpikingNetwork, build_model
from .layers import WEIGHTS, Precision, SpikingNeurons, spiking_layers

__all__ = ["ARCHS", "WEIGHTS", "Precision", "SpikingNetwork", "SpikingNeurons", "build_model", "spiking_layers"]
