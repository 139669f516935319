"""Ternary-weight drop-ins for ``nn.Linear`` and ``nn.Conv2d``, trained with quantization-aware training.

In training the module keeps a float latent ``weight`` (and, for TTQ, the learned scales ``w_p`` and
``w_n``); every forward ternarizes it, runs the packed kernel, and passes the gradient back through
the quantizer's straight-through estimator. ``freeze()`` keeps only the packed words, the scale and
the format version (buffers ``packed``, ``scale``, ``format_version``): the deployed form, whose
``state_dict`` loads into a fresh module of the same class. On CPU a frozen module keeps the layout
(bit-planes and code columns) that the C++ spike kernels re-lay the packed weight into (made on its
first spike input, and again whenever ``packed`` changes), so that inference does not redo that work
on every call; under ``torch.compile`` the kernels re-lay the weight each call instead. A frozen layer
whose codes are mostly zero (a pruned one; for a conv, one with groups=1) keeps the sparse layout instead, the
lists of its non-zero codes, so that its spike kernels' work falls with the weight sparsity too
(``linear_cpu_layout``, ``conv2d_cpu_layout``).

Pruning: ``prune_(mask)`` sets the ``weight_mask`` buffer (w's shape, 1 = kept, 0 = pruned) and zeroes the
pruned latent weights. The quantizer then gives pruned weights code 0 and takes its threshold and scale over
the kept weights only. Keeping pruned weights at zero during training (no gradient, no weight decay) is the
trainer's part. ``freeze()`` drops the mask: the pruned codes are 0 in ``packed``.
"""
import math
import torch
from torch import Tensor, nn

from ..ops.ternary.format import FORMAT_VERSION, int_pair, pack_ternary, unpack_ternary
from ..ops.ternary.op import conv2d_cpu_layout, linear_cpu_layout, ternary_conv2d, ternary_linear, uses_cpu_layout
from ..ops.ternary.quantize import QUANTIZERS, quantize_weight, ternarize, ternary_codes
from ..ops.ternary.reference import is_spike_input


class _Ternary(nn.Module):
    """Quantization state shared by the ternary layers; subclasses define ``_apply_kernel``."""

    def _init_quantizer(self, quantizer: str, per_channel: bool, spikes: bool, backend: str) -> None:
        if quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {quantizer!r}; choose one of {QUANTIZERS}")
        self.quantizer, self.per_channel, self.spikes, self.backend = quantizer, per_channel, spikes, backend
        self.frozen = False
        self._layout, self._layout_key = None, None
        self.register_buffer("weight_mask", None)
        if quantizer == "ttq":
            _, scale = ternarize(self.weight, "ttq", per_channel)
            entries = self.weight.shape[0] if per_channel else 1
            self.w_p = nn.Parameter(scale[0, :entries].clone().to(self.weight.dtype))
            self.w_n = nn.Parameter(scale[1, :entries].clone().to(self.weight.dtype))

    @torch.no_grad()
    def _copy_from(self, module: nn.Module):
        """Take ``module``'s weight and bias as the latent values (and re-initialize the TTQ scales)."""
        self.weight.copy_(module.weight)
        if module.bias is not None:
            self.bias.copy_(module.bias)
        if self.quantizer == "ttq":
            _, scale = ternarize(self.weight, "ttq", self.per_channel)
            self.w_p.copy_(scale[0, : self.w_p.numel()])
            self.w_n.copy_(scale[1, : self.w_n.numel()])
        return self

    def _quantized(self):
        """(packed, scale, gradient target weight or None) for this forward."""
        if self.frozen:
            return self.packed, self.scale, None
        ttq_scales = (self.w_p, self.w_n) if self.quantizer == "ttq" else None
        w_q, codes, scale = quantize_weight(self.weight, self.quantizer, self.per_channel, ttq_scales,
                                            self.weight_mask)
        return pack_ternary(codes), scale, w_q

    @torch.no_grad()
    def codes(self) -> Tensor:
        """The int8 ternary codes in {-1, 0, 1}, the weight's shape (``[out, in]`` or ``[out, in / groups, kh,
        kw]``): unpacked when frozen, else those the quantizer gives the latent weight now."""
        if self.frozen:
            return unpack_ternary(self.packed, self.weight_shape)
        return ternary_codes(self.weight, self.quantizer, self.per_channel, self.weight_mask)

    @torch.no_grad()
    def prune_(self, mask: Tensor):
        """Prune the weights where ``mask`` (the weight's shape; bool or 0/1) is 0: keep ``mask`` as the
        ``weight_mask`` buffer and zero those latent weights. Returns the module."""
        if self.frozen:
            raise RuntimeError("prune_ needs the latent weight; prune before freeze()")
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask shape {list(mask.shape)} differs from the weight's {list(self.weight.shape)}")
        self.weight_mask = (mask != 0).to(self.weight.device)
        self.weight.mul_(self.weight_mask)
        return self

    @torch.no_grad()
    def freeze(self):
        """Switch to inference with packed buffers only (the float weight and TTQ scales are dropped)."""
        if self.frozen:
            return self
        packed, scale, _ = self._quantized()
        self._become_frozen(packed.shape, scale.shape, packed.device)
        self.packed.copy_(packed)
        self.scale.copy_(scale)
        return self

    def _become_frozen(self, packed_shape, scale_shape, device) -> None:
        del self.weight
        self.weight_mask = None
        if self.quantizer == "ttq":
            del self.w_p, self.w_n
        self.register_buffer("packed", torch.zeros(packed_shape, dtype=torch.int32, device=device))
        self.register_buffer("scale", torch.zeros(scale_shape, dtype=torch.float32, device=device))
        self.register_buffer("format_version", torch.tensor(FORMAT_VERSION, dtype=torch.int64))
        self.frozen = True

    def _cpu_layout(self, x: Tensor):
        """The cached CPU layout of the frozen weight for the C++ spike kernels, or None where they do not
        apply (training, real-valued input, another backend, torch.compile). Made again when ``packed``
        changed (another tensor, or modified in place)."""
        packed = self.packed if self.frozen else None
        if (packed is None or torch.compiler.is_compiling() or not is_spike_input(x, self.spikes)
                or not uses_cpu_layout(self.backend, packed.device)):
            return None
        key = (packed.data_ptr(), packed._version)
        if self._layout_key != key:
            self._layout, self._layout_key = self._make_cpu_layout(packed), key
        return self._layout

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + "packed" in state_dict:
            version = state_dict.get(prefix + "format_version")
            if version is None or int(version) != FORMAT_VERSION:
                raise RuntimeError(
                    f"{prefix}packed was saved in ternary format version {None if version is None else int(version)}; "
                    f"this tna_kernels reads version {FORMAT_VERSION}"
                )
            if not self.frozen:
                packed, scale = state_dict[prefix + "packed"], state_dict[prefix + "scale"]
                self._become_frozen(packed.shape, scale.shape, packed.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _ternary_repr(self) -> str:
        state = "frozen (packed)" if self.frozen else "training"
        if self.weight_mask is not None:
            state += f", pruned {1 - self.weight_mask.float().mean().item():.1%}"
        return f"quantizer={self.quantizer}, per_channel={self.per_channel}, spikes={self.spikes}, {state}"


class TernaryLinear(_Ternary):
    """Drop-in ``nn.Linear`` with ternary weights.

    Input ``[..., in_features]`` (``[N, in]``, or time-major ``[T, B, in]``), output ``[..., out_features]``.
    ``spikes=True`` declares the input to be 0/1 spikes and takes the exact integer kernel.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, quantizer: str = "twn",
                 per_channel: bool = True, spikes: bool = False, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        self._init_quantizer(quantizer, per_channel, spikes, backend)

    @classmethod
    def from_float(cls, module: nn.Linear, quantizer: str = "twn", per_channel: bool = True, spikes: bool = False,
                   backend: str = "auto") -> "TernaryLinear":
        """A TernaryLinear whose latent weight and bias are copies of ``module``'s."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"from_float expects an nn.Linear, got {type(module).__name__}")
        layer = cls(module.in_features, module.out_features, module.bias is not None, quantizer, per_channel, spikes,
                    backend, device=module.weight.device, dtype=module.weight.dtype)
        return layer._copy_from(module)

    @property
    def weight_shape(self) -> tuple:
        return (self.out_features, self.in_features)

    def _make_cpu_layout(self, packed: Tensor) -> Tensor:
        return linear_cpu_layout(packed, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        packed, scale, weight = self._quantized()
        return ternary_linear(x, packed, scale, self.bias, spikes=self.spikes, backend=self.backend, weight=weight,
                              layout=self._cpu_layout(x))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._ternary_repr())


class TernaryConv2d(_Ternary):
    """Drop-in ``nn.Conv2d`` (zero padding) with ternary weights.

    Input ``[N, C, H, W]`` or time-major ``[T, B, C, H, W]`` (T and B folded into the batch).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", quantizer: str = "twn",
                 per_channel: bool = True, spikes: bool = False, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f"TernaryConv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = int_pair("kernel_size", kernel_size, 1), int_pair("stride", stride, 1)
        self.dilation = int_pair("dilation", dilation, 1)
        self.padding = self._resolve_padding(padding)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self._init_quantizer(quantizer, per_channel, spikes, backend)

    def _resolve_padding(self, padding):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if self.stride != (1, 1):
                raise ValueError("padding='same' needs stride 1")
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if any(t % 2 for t in total):
                raise ValueError("padding='same' with an even effective kernel size is not supported")
            return tuple(t // 2 for t in total)
        return int_pair("padding", padding, 0)

    @classmethod
    def from_float(cls, module: nn.Conv2d, quantizer: str = "twn", per_channel: bool = True, spikes: bool = False,
                   backend: str = "auto") -> "TernaryConv2d":
        """A TernaryConv2d whose latent weight and bias are copies of ``module``'s."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"from_float expects an nn.Conv2d, got {type(module).__name__}")
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, module.groups, module.bias is not None, module.padding_mode, quantizer,
                    per_channel, spikes, backend, device=module.weight.device, dtype=module.weight.dtype)
        return layer._copy_from(module)

    @property
    def weight_shape(self) -> tuple:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _make_cpu_layout(self, packed: Tensor) -> Tensor:
        return conv2d_cpu_layout(packed, self.in_channels, self.groups, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (4, 5):
            raise ValueError(f"TernaryConv2d expects [N, C, H, W] or [T, B, C, H, W], got shape {list(x.shape)}")
        lead = x.shape[:-3]
        packed, scale, weight = self._quantized()
        y = ternary_conv2d(x.reshape(-1, *x.shape[-3:]), packed, scale, self.bias, self.stride, self.padding,
                           self.dilation, self.groups, kernel_size=self.kernel_size, spikes=self.spikes,
                           backend=self.backend, weight=weight, layout=self._cpu_layout(x))
        return y.reshape(*lead, *y.shape[1:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, " + self._ternary_repr())


def ternarize_(model: nn.Module, skip_first_last: bool = True, quantizer: str = "twn", per_channel: bool = True,
               spikes: bool = False, backend: str = "auto") -> list:
    """Replace, in place, the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model`` by their ternary versions.

    With ``skip_first_last`` the first and the last of those layers (in module order) stay full precision,
    as is usual for quantized networks. Returns the names of the replaced layers.
    """
    layers = [(name, m) for name, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    if skip_first_last:
        layers = layers[1:-1]
    for name, module in layers:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        kind = TernaryLinear if isinstance(module, nn.Linear) else TernaryConv2d
        setattr(parent, child, kind.from_float(module, quantizer, per_channel, spikes, backend))
    return [name for name, _ in layers]


def freeze_(model: nn.Module) -> nn.Module:
    """Switch every ternary layer of ``model`` to its packed inference form (``freeze()``), in place; returns
    the model."""
    for module in model.modules():
        if isinstance(module, _Ternary):
            module.freeze()
    return model
