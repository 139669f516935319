"""Public ternary linear / conv2d: argument checks, backend choice and the ``torch.library`` custom ops.

``tna::ternary_linear`` and ``tna::ternary_conv2d`` run the kernels of the chosen backend ("torch": the
reference, "cpp": csrc/ternary.cpp, "triton": triton.py) and carry autograd:

- the input gradient goes through the ternary weight with the backend's input-gradient kernel
  (for conv2d: that kernel on the unfolded output gradient, folded back);
- the bias gradient is the sum of the output gradient;
- an optional float ``weight`` (the quantized weight of quantization-aware training, equal to the
  packed weight by construction) receives ``grad_y^T x`` (the conv weight gradient for conv2d), which
  the quantizer's straight-through estimator passes on to the latent float weight.
The packed words and the scale get no gradient.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._ext import cpp_extension_available
from ..backend import resolve_backend
from .format import check_packed, check_scale, conv_kernel_size, decode_codes, dequantize, int_pair, unpack_ternary
from .reference import (
    check_spikes,
    is_spike_input,
    output_dtype,
    ternary_conv2d_reference,
    ternary_linear_reference,
)

_REAL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SPIKE_INT_DTYPES = (torch.bool, torch.uint8, torch.int8)


# ---------------------------------------------------------------------------------------------
# Per-backend linear kernels on 2-D operands
# ---------------------------------------------------------------------------------------------
def _cpp_spikes(kernel, *args) -> Tensor:
    """Run a ``tna_cpp`` spike kernel, raising the reference's ValueError where x holds values other than 0/1."""
    try:
        return kernel(*args)
    except RuntimeError as error:
        if "only 0 and 1" in str(error):
            raise ValueError("spike input must hold only 0 and 1 (spikes=True, or an integer x); found "
                             "other values") from None
        raise


def _linear_forward(backend: str, x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor], spikes: bool,
                    layout: Optional[Tensor] = None):
    """y ``[M, N]`` from x ``[M, K]`` (contiguous); ``layout``: see ``linear_cpu_layout``."""
    if backend == "torch":
        return ternary_linear_reference(x, packed, scale, bias, spikes)
    if backend == "cpp":
        if is_spike_input(x, spikes) and is_sparse_layout(layout):
            return _cpp_spikes(torch.ops.tna_cpp.ternary_linear_sparse_spikes, x, packed, scale, bias, layout, "auto")
        if is_spike_input(x, spikes):
            return _cpp_spikes(torch.ops.tna_cpp.ternary_linear_spikes, x, packed, scale, bias, layout, "auto")
        return torch.ops.tna_cpp.ternary_linear_dense(x.float(), packed, scale, bias).to(x.dtype)
    from . import triton as triton_kernels

    if is_spike_input(x, spikes):
        check_spikes(x)
    return triton_kernels.ternary_linear(x, packed, scale, bias, spikes)


@torch.library.custom_op("tna::ternary_linear_grad_input", mutates_args=())
def _linear_grad_input(backend: str, grad_y: Tensor, packed: Tensor, scale: Tensor, k: int) -> Tensor:
    """grad_x ``[M, K]`` = grad_y ``[M, N]`` @ W, in grad_y's dtype."""
    if backend == "torch":
        weight = dequantize(unpack_ternary(packed, (packed.shape[0], k)), scale)
        return (grad_y.to(torch.float64) @ weight.to(torch.float64)).to(grad_y.dtype)
    if backend == "cpp":
        return torch.ops.tna_cpp.ternary_linear_grad_input(grad_y.float().contiguous(), packed, scale, k).to(grad_y.dtype)
    from . import triton as triton_kernels

    return triton_kernels.ternary_linear_grad_input(grad_y.contiguous(), packed, scale, k)


@_linear_grad_input.register_fake
def _(backend, grad_y, packed, scale, k):
    return grad_y.new_empty((grad_y.shape[0], k))


# ---------------------------------------------------------------------------------------------
# tna::ternary_linear
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("tna::ternary_linear", mutates_args=())
def ternary_linear_op(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor], weight: Optional[Tensor],
                      layout: Optional[Tensor], spikes: bool, backend: str) -> Tensor:
    """x ``[M, K]`` times the packed weight ``[N, ceil(K/16)]`` (scale ``[N]`` / ``[2, N]``, bias ``[N]``
    float32) -> ``[M, N]``. ``weight`` ``[N, K]`` is only a gradient target (see the module docstring);
    ``layout`` the cached CPU layout of ``packed`` (``linear_cpu_layout``) or None."""
    return _linear_forward(backend, x.contiguous(), packed, scale, bias, spikes, layout)


@ternary_linear_op.register_fake
def _(x, packed, scale, bias, weight, layout, spikes, backend):
    return x.new_empty((x.shape[0], packed.shape[0]), dtype=output_dtype(x))


def _linear_setup(ctx, inputs, output):
    x, packed, scale, bias, weight, layout, spikes, backend = inputs
    ctx.backend = backend
    ctx.k = x.shape[1]
    ctx.x_dtype = x.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype
    keep_x = weight is not None and weight.requires_grad
    ctx.save_for_backward(x if keep_x else None, packed, scale)


def _linear_backward(ctx, grad_y):
    x, packed, scale = ctx.saved_tensors
    need_x, _, _, need_bias, need_weight = ctx.needs_input_grad[:5]
    grad_x = grad_bias = grad_weight = None
    if need_x:
        grad_x = _linear_grad_input(ctx.backend, grad_y, packed, scale, ctx.k).to(ctx.x_dtype)
    if need_bias:
        grad_bias = grad_y.sum(0).to(ctx.bias_dtype)
    if need_weight:
        grad_weight = grad_y.T.to(torch.float32) @ x.to(torch.float32)
    return grad_x, None, None, grad_bias, grad_weight, None, None, None


ternary_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)


# ---------------------------------------------------------------------------------------------
# tna::ternary_conv2d
# ---------------------------------------------------------------------------------------------
def _group_slices(packed: Tensor, scale: Tensor, bias: Optional[Tensor], groups: int):
    """Per-group (packed, scale, bias) with the rows of that group's output channels."""
    rows = packed.shape[0] // groups
    for g in range(groups):
        sl = slice(g * rows, (g + 1) * rows)
        yield (packed[sl].contiguous(), scale[..., sl].contiguous(), None if bias is None else bias[sl].contiguous())


def _conv_geometry(x_shape, kernel_size, stride, padding, dilation):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    h_out = (x_shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (x_shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return h_out, w_out


def _dequantized_conv_weight(packed, scale, channels, groups, kernel_size) -> Tensor:
    """The float32 weight ``[O, channels / groups, kh, kw]`` (code x scale) of a packed conv weight."""
    codes = decode_codes(packed, channels // groups * kernel_size[0] * kernel_size[1])
    return dequantize(codes.view(packed.shape[0], channels // groups, *kernel_size), scale)


@torch.library.custom_op("tna::ternary_conv2d", mutates_args=())
def ternary_conv2d_op(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor], weight: Optional[Tensor],
                      layout: Optional[Tensor], stride: list[int], padding: list[int], dilation: list[int],
                      groups: int, kernel_size: list[int], spikes: bool, backend: str) -> Tensor:
    """x ``[B, C, H, W]`` convolved with the packed weight ``[O, C/groups, kh, kw]`` -> ``[B, O, H_out, W_out]``;
    ``layout`` the cached CPU layout of ``packed`` (``conv2d_cpu_layout``) or None."""
    x = x.contiguous()
    if backend == "torch":
        return ternary_conv2d_reference(x, packed, scale, bias, stride, padding, dilation, groups, kernel_size, spikes)
    if backend == "cpp":
        if is_spike_input(x, spikes):  # direct kernel on bit-packed pixels, no float im2col
            kernel = (torch.ops.tna_cpp.ternary_conv2d_sparse_spikes if is_sparse_layout(layout)
                      else torch.ops.tna_cpp.ternary_conv2d_spikes)
            return _cpp_spikes(kernel, x, packed.contiguous(), scale.contiguous(), bias, layout, stride, padding,
                               dilation, groups, kernel_size, "auto")
        # oneDNN's convolution over the dequantized weight: the input is real-valued, so no integer path applies
        weight = _dequantized_conv_weight(packed, scale, x.shape[1], groups, kernel_size)
        return F.conv2d(x.float(), weight, None if bias is None else bias.float(), stride, padding, dilation,
                        groups).to(x.dtype)
    from . import triton as triton_kernels

    if is_spike_input(x, spikes):
        check_spikes(x)
    return triton_kernels.ternary_conv2d(x, packed, scale, bias, stride, padding, dilation, groups,
                                         tuple(kernel_size), spikes)


@ternary_conv2d_op.register_fake
def _(x, packed, scale, bias, weight, layout, stride, padding, dilation, groups, kernel_size, spikes, backend):
    h_out, w_out = _conv_geometry(x.shape, kernel_size, stride, padding, dilation)
    return x.new_empty((x.shape[0], packed.shape[0], h_out, w_out), dtype=output_dtype(x))


def _conv_setup(ctx, inputs, output):
    x, packed, scale, bias, weight, layout, stride, padding, dilation, groups, kernel_size, spikes, backend = inputs
    ctx.geometry = (stride, padding, dilation, groups, kernel_size)
    ctx.backend = backend
    ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.weight_shape = None if weight is None else weight.shape
    keep_x = weight is not None and weight.requires_grad
    ctx.save_for_backward(x if keep_x else None, packed, scale)


def _conv_backward(ctx, grad_y):
    x, packed, scale = ctx.saved_tensors
    stride, padding, dilation, groups, kernel_size = ctx.geometry
    need_x, _, _, need_bias, need_weight = ctx.needs_input_grad[:5]
    grad_x = grad_bias = grad_weight = None
    if need_x and ctx.backend == "cpp":
        # On CPU, oneDNN's transposed convolution over the dequantized weight is several times faster than the
        # ternary grad-input kernel on the unfolded gradient followed by fold (grad_y is real-valued either way).
        weight = _dequantized_conv_weight(packed, scale, ctx.x_shape[1], groups, kernel_size)
        grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, weight, grad_y.to(torch.float32), stride, padding, dilation,
                                            groups).to(ctx.x_dtype)
    elif need_x:
        batch, channels, height, width = ctx.x_shape
        k = channels // groups * kernel_size[0] * kernel_size[1]
        rows = packed.shape[0] // groups
        g2d = grad_y.flatten(2).transpose(1, 2)  # [B, L, O]
        cols = [
            _linear_grad_input(ctx.backend, g2d[..., g * rows:(g + 1) * rows].reshape(-1, rows), p_g, s_g, k)
            for g, (p_g, s_g, _) in enumerate(_group_slices(packed, scale, None, groups))
        ]
        cols = torch.cat(cols, dim=1).view(batch, -1, groups * k).transpose(1, 2)  # [B, C*kh*kw, L]
        grad_x = F.fold(cols.float(), (height, width), kernel_size, dilation=dilation, padding=padding, stride=stride)
        grad_x = grad_x.to(ctx.x_dtype)
    if need_bias:
        grad_bias = grad_y.sum((0, 2, 3)).to(ctx.bias_dtype)
    if need_weight:
        grad_weight = torch.nn.grad.conv2d_weight(
            x.to(torch.float32), ctx.weight_shape, grad_y.to(torch.float32), stride, padding, dilation, groups
        )
    return grad_x, None, None, grad_bias, grad_weight, None, None, None, None, None, None, None, None


ternary_conv2d_op.register_autograd(_conv_backward, setup_context=_conv_setup)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
def _prepare(x, packed, scale, bias, spikes, backend, k, what):
    """Check the common arguments; return (backend, bias as float32 or None)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.is_floating_point():
        allowed = _REAL_DTYPES + ((torch.float64,) if spikes else ())
    else:
        allowed = _SPIKE_INT_DTYPES
    backend = resolve_backend(backend, x.device)
    if backend != "torch" and x.dtype not in allowed:
        raise TypeError(f"{what}: x dtype {x.dtype} is not supported by the {backend} backend; use one of "
                        f"{_REAL_DTYPES} (or {_SPIKE_INT_DTYPES} / spikes=True for 0/1 spike input)")
    if x.numel() == 0:
        raise ValueError(f"{what}: x is empty (shape {list(x.shape)})")
    check_scale(scale, check_packed(packed, None, k), packed)
    if packed.device != x.device:
        raise ValueError(f"{what}: packed is on {packed.device} but x is on {x.device}")
    if bias is not None:
        if not isinstance(bias, Tensor) or not bias.is_floating_point() or tuple(bias.shape) != (packed.shape[0],):
            raise ValueError(f"{what}: bias must be a float tensor of shape [{packed.shape[0]}], got "
                             f"{bias.dtype if isinstance(bias, Tensor) else type(bias).__name__} "
                             f"{list(bias.shape) if isinstance(bias, Tensor) else ''}")
        if bias.device != x.device:
            raise ValueError(f"{what}: bias is on {bias.device} but x is on {x.device}")
        bias = bias.float().contiguous()
    return backend, bias


def ternary_linear(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor] = None, *,
                   spikes: bool = False, backend: str = "auto", weight: Optional[Tensor] = None,
                   layout: Optional[Tensor] = None) -> Tensor:
    """``y = x @ W^T + bias`` with the ternary weight W ``[N, K]`` given packed.

    Args:
        x: ``[..., K]``: float32 / float16 / bfloat16 (real-valued), or spikes: 0/1 values as bool,
            uint8 or int8, or a float tensor with ``spikes=True``. Spike input is computed exactly.
        packed: int32 ``[N, ceil(K / 16)]`` (``pack_ternary``); scale: float32 ``[N]`` or ``[2, N]``.
        bias: ``[N]`` float, or None.
        spikes: x holds only 0 and 1 (checked); take the exact integer path.
        backend: "auto", "torch" (reference), "cpp" or "triton".
        weight: for quantization-aware training only: the float quantized weight ``[N, K]`` whose
            gradient (``grad_y^T x``) is wanted; its values are not read.
        layout: ``linear_cpu_layout(packed, K)``, kept by a caller whose weight does not change (frozen
            modules do): the C++ spike kernel then skips re-laying the weight out. Ignored elsewhere.

    Returns ``[..., N]`` in x's dtype (float32 for integer x).
    """
    k = x.shape[-1] if isinstance(x, Tensor) and x.dim() >= 1 else -1
    backend, bias = _prepare(x, packed, scale, bias, spikes, backend, k, "ternary_linear")
    y = ternary_linear_op(x.reshape(-1, k), packed, scale, bias, weight, layout, bool(spikes), backend)
    return y.view(*x.shape[:-1], packed.shape[0])


def ternary_conv2d(x: Tensor, packed: Tensor, scale: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
                   dilation=1, groups: int = 1, *, kernel_size=None, spikes: bool = False, backend: str = "auto",
                   weight: Optional[Tensor] = None, layout: Optional[Tensor] = None) -> Tensor:
    """2-D convolution with a packed ternary weight ``[O, C/groups, kh, kw]`` (``nn.Conv2d`` arithmetic).

    Args:
        x: ``[B, C, H, W]`` (dtypes as in ``ternary_linear``).
        packed: int32 ``[O, ceil(C/groups * kh * kw / 16)]``; scale float32 ``[O]`` or ``[2, O]``.
        kernel_size: ``(kh, kw)``; inferred (square) from the packing when it is unambiguous.
        stride, padding, dilation: ints or pairs; groups divides C and O.
        spikes, backend, weight: as in ``ternary_linear`` (weight: ``[O, C/groups, kh, kw]``).
        layout: ``conv2d_cpu_layout(packed, C, groups, kernel_size)``, as in ``ternary_linear``.

    Returns ``[B, O, H_out, W_out]`` in x's dtype (float32 for integer x).
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"ternary_conv2d: x must be a 4-D tensor [B, C, H, W], got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(groups, int) or groups < 1 or x.shape[1] % groups or (
            isinstance(packed, Tensor) and packed.shape[0] % groups):
        raise ValueError(f"ternary_conv2d: groups={groups} must divide the input channels ({x.shape[1]}) and the "
                         f"output channels ({packed.shape[0] if isinstance(packed, Tensor) else '?'})")
    kernel = list(conv_kernel_size(packed, x.shape[1] // groups, kernel_size))
    stride, padding = list(int_pair("stride", stride, 1)), list(int_pair("padding", padding, 0))
    dilation = list(int_pair("dilation", dilation, 1))
    k = x.shape[1] // groups * kernel[0] * kernel[1]
    backend, bias = _prepare(x, packed, scale, bias, spikes, backend, k, "ternary_conv2d")
    if min(_conv_geometry(x.shape, kernel, stride, padding, dilation)) < 1:
        raise ValueError(f"ternary_conv2d: input {list(x.shape[2:])} is smaller than the kernel {kernel} "
                         f"(padding {padding}, dilation {dilation})")
    return ternary_conv2d_op(x, packed, scale, bias, weight, layout, stride, padding, dilation, groups, kernel,
                             bool(spikes), backend)


SPARSE_LAYOUT_MAX_FEATURES = 65536
"""The most inputs and outputs a sparse CPU layout can index (its indices are uint16)."""


def linear_cpu_layout(packed: Tensor, k: int, form: str = "auto") -> Tensor:
    """The packed linear weight ``[N, ceil(k/16)]`` (CPU) re-laid out as the C++ spike kernels read it. Pass it as
    ``layout`` to ``ternary_linear`` while ``packed`` stays unchanged; needs the C++ extension.

    ``form``:
        "dense": an opaque int64 ``[P]`` holding the +1 / -1 bit-planes (for the dense kernel) and the int8 code
            columns (for the event-driven kernel).
        "sparse": an opaque int32 ``[P]`` holding, besides the dense form, the lists of the non-zero codes by
            output and by input, for the bit-sliced and scatter kernels of pruned weights (k and N at most
            ``SPARSE_LAYOUT_MAX_FEATURES``).
        "auto": "sparse" where the share of non-zero codes is at most ``torch.ops.tna_cpp.ternary_sparse_density()``
            and the sizes allow it, else "dense". A frozen module's layout is made this way, so that a pruned
            layer runs the sparse kernels by itself.
    """
    _check_form(form)
    ops = _cpp_ops("linear_cpu_layout")
    packed = packed.contiguous()
    if form == "auto":
        form = _auto_form(ops, packed, k)
    if form == "sparse":
        return ops.ternary_linear_sparse_layout(packed, k)
    return ops.ternary_linear_layout(packed, k)


def is_sparse_layout(layout: Optional[Tensor]) -> bool:
    """Whether ``layout`` is a sparse CPU layout (``linear_cpu_layout`` or ``conv2d_cpu_layout`` with
    ``form="sparse"``)."""
    return layout is not None and layout.dtype == torch.int32


def _auto_form(ops, packed: Tensor, k: int) -> str:
    """"sparse" where the packed weight ``[N, ceil(k/16)]`` fits a sparse layout and at most
    ``ternary_sparse_density()`` of its codes are non-zero, else "dense"."""
    fits = max(k, packed.shape[0]) <= SPARSE_LAYOUT_MAX_FEATURES
    return "sparse" if fits and ops.ternary_code_density(packed, k) <= ops.ternary_sparse_density() else "dense"


def _check_form(form: str) -> None:
    if form not in ("auto", "dense", "sparse"):
        raise ValueError(f"form must be 'auto', 'dense' or 'sparse', got {form!r}")


def conv2d_cpu_layout(packed: Tensor, in_channels: int, groups: int, kernel_size, form: str = "auto") -> Tensor:
    """The packed conv weight ``[O, ceil(in_channels/groups*kh*kw/16)]`` (CPU) re-laid out as the C++ spike
    conv kernels read it, for ``ternary_conv2d``'s ``layout`` while ``packed`` stays unchanged; needs the C++
    extension.

    ``form``, as in ``linear_cpu_layout``:
        "dense": an opaque int64 ``[P]`` (bit-planes and int8 code columns in the conv's receptive-field order).
        "sparse": an opaque int32 ``[P]`` holding, besides the dense form, the lists of the non-zero codes, for the
            bit-sliced kernel run on the receptive fields of all output pixels; ``groups`` must be 1 and
            ``in_channels * kh * kw`` and O at most ``SPARSE_LAYOUT_MAX_FEATURES``. Each call runs the bit-sliced
            kernel or the dense form's kernels, whichever the C++ side estimates faster for its input.
        "auto": "sparse" where the share of non-zero codes is at most ``torch.ops.tna_cpp.ternary_sparse_density()``
            and groups and sizes allow it, else "dense" (a frozen module's layout is made this way).
    """
    _check_form(form)
    ops = _cpp_ops("conv2d_cpu_layout")
    packed, kernel_size = packed.contiguous(), list(kernel_size)
    k = in_channels // groups * kernel_size[0] * kernel_size[1]
    if form == "auto":
        form = _auto_form(ops, packed, k) if groups == 1 else "dense"
    if form == "sparse":
        if groups != 1:
            raise ValueError(f"conv2d_cpu_layout: the sparse form is for groups=1, got groups={groups}")
        return ops.ternary_conv2d_sparse_layout(packed, in_channels, kernel_size)
    return ops.ternary_conv2d_layout(packed, in_channels, groups, kernel_size)


def uses_cpu_layout(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` runs the C++ spike kernels on ``device``, the ones that take a cached CPU layout."""
    return device.type == "cpu" and resolve_backend(backend, device) == "cpp"


def _cpp_ops(what: str):
    """The C++ extension's ops (built or loaded on first use); a clear error where it cannot be built."""
    if not cpp_extension_available():
        raise RuntimeError(f"{what} needs the C++ extension, which could not be built (see the warning above)")
    return torch.ops.tna_cpp
