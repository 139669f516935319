"""The surrogate-gradient table shared by every LIF backend.

Each surrogate replaces the derivative of the Heaviside step s = H(u), u = h - v_threshold, with a
smooth or boxed function sg'(u). The integer ids are part of the kernel interface: the Triton and C++
kernels select the same formula by the same id. Every formula is written so that a NaN in ``u`` gives
the same result in every backend (comparisons with NaN are false).
"""
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Surrogate:
    """One row of the table: kernel id and default sharpness ``alpha``."""

    id: int
    default_alpha: float


SURROGATES = {
    "atan": Surrogate(0, 2.0),
    "sigmoid": Surrogate(1, 4.0),
    "fast_sigmoid": Surrogate(2, 10.0),
    "triangle": Surrogate(3, 1.0),
    "rectangle": Surrogate(4, 1.0),
}


def surrogate_grad(name: str, u: torch.Tensor, alpha: float) -> torch.Tensor:
    """sg'(u) for the surrogate ``name``; ``u`` is ``h - v_threshold`` of any shape and float dtype."""
    if name == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * u) ** 2)
    if name == "sigmoid":
        sig = torch.sigmoid(alpha * u)
        return alpha * sig * (1 - sig)
    if name == "fast_sigmoid":
        return 1 / (1 + alpha * u.abs()) ** 2
    if name == "triangle":
        peak = alpha - alpha * alpha * u.abs()
        return torch.where(peak > 0, peak, torch.zeros_like(peak))
    if name == "rectangle":
        return torch.where(u.abs() < 0.5 / alpha, torch.full_like(u, alpha), torch.zeros_like(u))
    raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {name!r}")
