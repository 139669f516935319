"""A frozen ternary conv and the LIF neurons on its output, run for inference in one C++ pass."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ops.ternary.op import _cpp_spikes, is_sparse_layout
from .lif import LIF
from .ternary import TernaryConv2d


def conv_lif_inference(conv: TernaryConv2d, lif: LIF, x: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """``lif(conv(x))`` for spikes ``x`` ``[T, B, C, H, W]`` in one pass of the C++ kernel, which fires the neurons
    on each block of the conv's output as it is made (the float32 output ``[T * B, O, Ho, Wo]`` is never written).

    Returns ``(spikes [T, B, O, Ho, Wo] float32, count)``, equal bit for bit to ``lif(conv(x))`` and to the spike
    count that ``LIF(count_spikes=True)`` keeps (a float32 0-d tensor), or None where the fused kernel does not
    apply (the caller then runs the two modules): ``conv`` not a frozen spike-input ``TernaryConv2d`` with its
    cached dense CPU layout (``conv2d_cpu_layout``; a pruned layer's sparse one does not fuse), a LIF with
    learnable parameters or asked for its state, ``x`` not float32 ``[T, B, C, H, W]``, or gradients wanted.
    Raises ValueError where ``x`` holds values other than 0 and 1.
    """
    bias = conv.bias
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
    if (not isinstance(conv, TernaryConv2d) or not isinstance(lif, LIF) or x.dim() != 5 or x.dtype != torch.float32
            or wants_grad or lif.tau_weight is not None or isinstance(lif.v_threshold, Tensor) or lif.return_state):
        return None
    layout = conv._cpu_layout(x)
    if layout is None or is_sparse_layout(layout):
        return None
    spikes, count = _cpp_spikes(
        torch.ops.tna_cpp.ternary_conv2d_spikes_lif, x.flatten(0, 1).contiguous(), conv.packed, conv.scale,
        None if bias is None else bias.float().contiguous(), layout, list(conv.stride), list(conv.padding),
        list(conv.dilation), conv.groups, list(conv.kernel_size), x.shape[0], lif.fixed_tau, lif.v_threshold,
        0.0 if lif.v_reset is None else float(lif.v_reset), lif.v_reset is None, bool(lif.decay_input))
    return spikes.unflatten(0, x.shape[:2]), count
