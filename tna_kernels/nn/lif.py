"""Drop-in multi-step LIF layer backed by the fused kernels."""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..ops.lif.op import check_lif_options, lif_multistep


class LIF(nn.Module):
    """Multi-step leaky integrate-and-fire neurons (SpikingJelly ``LIFNode(step_mode='m')`` semantics).

    Input ``[T, B, ...]`` in any float dtype; output spikes of the same shape and dtype. The arguments are
    those of :func:`tna_kernels.lif_multistep`, plus:

    Args:
        learnable_tau: learn tau (PLIF style: ``tau = 1 + exp(-w)``, so tau stays above 1; ``tau`` must
            then be > 1).
        learnable_threshold: learn ``v_threshold``.
        channels: C of ``[T, B, C, ...]`` for per-channel learnable parameters; None learns one scalar.
        return_state: ``forward`` returns ``(spikes, v_T)`` instead of spikes.
        count_spikes: ``forward`` also keeps ``spike_count``, the number of spikes of the last call (a 0-d
            tensor in the autograd graph, counted by the kernels in the same pass as the spikes), for a
            spike-count penalty; what ``forward`` returns does not change.

    ``forward(x, v_init=None)`` takes an optional initial membrane ``[B, ...]``.
    """

    spike_count: Optional[Tensor]

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        decay_input: bool = True,
        detach_reset: bool = False,
        surrogate: str = "atan",
        alpha: Optional[float] = None,
        learnable_tau: bool = False,
        learnable_threshold: bool = False,
        channels: Optional[int] = None,
        return_state: bool = False,
        count_spikes: bool = False,
        memory_saving: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.alpha = check_lif_options(tau, v_reset, surrogate, alpha)
        if channels is not None and not (learnable_tau or learnable_threshold):
            raise ValueError("channels sets the size of learnable parameters; pass learnable_tau or learnable_threshold")
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if learnable_tau and not tau > 1:
            raise ValueError(f"a learnable tau is parameterized as 1 + exp(-w) and must start above 1, got {tau}")
        shape = (channels,) if channels is not None else (1,)
        self.v_reset = v_reset
        self.decay_input = decay_input
        self.detach_reset = detach_reset
        self.surrogate = surrogate
        self.return_state = return_state
        self.count_spikes = count_spikes
        self.spike_count = None
        self.memory_saving = memory_saving
        self.backend = backend
        self.tau_weight = nn.Parameter(torch.full(shape, -math.log(tau - 1))) if learnable_tau else None
        self.fixed_tau = None if learnable_tau else float(tau)
        if learnable_threshold:
            self.v_threshold = nn.Parameter(torch.full(shape, float(v_threshold)))
        else:
            self.v_threshold = float(v_threshold)

    @property
    def tau(self):
        """The time constant in use: a float, or a ``[1]`` / ``[C]`` tensor when learnable."""
        return self.fixed_tau if self.tau_weight is None else 1 + torch.exp(-self.tau_weight)

    def forward(self, x: Tensor, v_init: Optional[Tensor] = None):
        if torch.is_tensor(x) and x.dim() < 2:
            raise ValueError(f"LIF expects time-major input [T, B, ...], got shape {tuple(x.shape)}")
        outputs = lif_multistep(
            x,
            tau=self.tau,
            v_threshold=self.v_threshold,
            v_reset=self.v_reset,
            decay_input=self.decay_input,
            detach_reset=self.detach_reset,
            surrogate=self.surrogate,
            alpha=self.alpha,
            v_init=v_init,
            return_state=self.return_state,
            return_count=self.count_spikes,
            memory_saving=self.memory_saving,
            backend=self.backend,
        )
        if self.count_spikes:
            self.spike_count = outputs[-1]
            outputs = outputs[:-1] if self.return_state else outputs[0]
        return outputs

    def extra_repr(self) -> str:
        def describe(value, learnable):
            if not learnable:
                return f"{value:g}"
            values = value.detach().flatten()
            return f"learnable[{values.numel()}] (mean {values.mean().item():.3g})"

        reset = "soft" if self.v_reset is None else f"{self.v_reset:g}"
        parts = [
            f"tau={describe(self.tau, self.tau_weight is not None)}",
            f"v_threshold={describe(self.v_threshold, isinstance(self.v_threshold, nn.Parameter))}",
            f"v_reset={reset}",
            f"surrogate={self.surrogate}(alpha={self.alpha:g})",
            f"decay_input={self.decay_input}",
            f"detach_reset={self.detach_reset}",
        ]
        if self.count_spikes:
            parts.append("count_spikes=True")
        if self.memory_saving:
            parts.append("memory_saving=True")
        if self.backend != "auto":
            parts.append(f"backend={self.backend}")
        return ", ".join(parts)
