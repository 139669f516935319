"""Max pooling for inference on the C++ kernel (``tna_kernels.ops.pool.max_pool2d``)."""
from torch import Tensor, nn

from ..ops.pool import max_pool2d


class MaxPool2d(nn.MaxPool2d):
    """Drop-in ``nn.MaxPool2d`` (same arguments, same results, bit for bit) whose forward runs the C++ kernel on
    CPU tensors that need no gradient, and ``F.max_pool2d`` otherwise (or with ``return_indices``).
    ``[B, C, H, W]`` or ``[C, H, W]`` -> ``[B, C, Ho, Wo]`` or ``[C, Ho, Wo]``."""

    def forward(self, x: Tensor) -> Tensor:
        if self.return_indices:
            return super().forward(x)
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


def replace_max_pool_(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.MaxPool2d`` of ``model`` (not subclasses) by a ``MaxPool2d`` with the same
    arguments; returns ``model`` (a plain ``nn.MaxPool2d`` model itself is returned replaced)."""
    def replaced(module: nn.MaxPool2d) -> MaxPool2d:
        return MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation, module.return_indices,
                         module.ceil_mode)

    if type(model) is nn.MaxPool2d:
        return replaced(model)
    for name, module in list(model.named_modules()):
        if type(module) is nn.MaxPool2d:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, replaced(module))
    return model
