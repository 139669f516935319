"""Per-step layers on time-major input: ``MultiStep`` folds the time dimension into the batch."""
from torch import Tensor, nn


class MultiStep(nn.Module):
    """Run a per-sample ``module`` (convolution, pooling, flatten, BatchNorm, linear) on time-major input.

    ``[T, B, *in] -> [T, B, *out]``: T and B are folded into one batch of ``T * B`` samples, ``module`` sees
    ``[T * B, *in]``, and the result is unfolded again (SpikingJelly's ``SeqToANNContainer``).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"MultiStep expects time-major input [T, B, ...], got shape {list(x.shape)}")
        y = self.module(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])
