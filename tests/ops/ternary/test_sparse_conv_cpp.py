"""The sparse CPU layout of pruned ternary conv2d weights and its kernels (csrc/ternary_sparse.cpp) against the
reference: exact on spikes for every kernel choice and geometry (stride, padding, dilation, odd channel counts,
images whose pixels do not fill whole blocks of rows), all-zero weight rows and columns, both scale forms, with and
without bias; the layout's checks and the automatic layout choice of frozen modules."""
import pytest
import torch

import tna_kernels
from tna_kernels import pack_ternary, ternary_conv2d
from tna_kernels._ext import cpp_extension_available
from tna_kernels.ops.ternary import ternary_conv2d_reference
from tna_kernels.ops.ternary.op import conv2d_cpu_layout, is_sparse_layout

pytestmark = pytest.mark.usefixtures("poison_empty")

KERNELS = ["auto", "sliced", "scatter", "dense"]


def _pruned_conv(o, c, kernel, density, asymmetric, seed, zero_outputs=(), zero_channels=()):
    """(codes int8 [o, c, kh, kw], packed, scale, bias): codes +-1 at random places with the given density."""
    gen = torch.Generator().manual_seed(seed)
    shape = (o, c, *kernel)
    keep = torch.rand(shape, generator=gen) < density
    codes = torch.where(keep, torch.where(torch.rand(shape, generator=gen) < 0.5, 1, -1), 0).to(torch.int8)
    codes[list(zero_outputs)] = 0
    codes[:, list(zero_channels)] = 0
    scale = torch.rand((2, o) if asymmetric else (o,), generator=gen) + 0.5
    return codes, pack_ternary(codes.view(o, -1)), scale, torch.randn(o, generator=gen)


def _spikes(shape, rate, dtype, seed):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < rate).to(dtype)


GEOMETRIES = [  # (B, C, O, H, W, kernel, stride, padding, dilation)
    (2, 70, 33, 9, 7, (3, 3), (1, 1), (1, 1), (1, 1)),     # channels across a 64-bit word, 8 x 8 output edges
    (3, 5, 17, 6, 5, (3, 2), (2, 1), (1, 0), (1, 2)),      # strides, asymmetric padding and dilation
    (1, 64, 40, 20, 20, (3, 3), (1, 1), (1, 1), (1, 1)),   # 400 pixels: a block of 256 rows and a tail
    (5, 16, 24, 3, 3, (3, 3), (1, 1), (1, 1), (1, 1)),     # 9 pixels an image: blocks across images, odd rows
    (4, 8, 16, 4, 4, (1, 1), (1, 1), (0, 0), (1, 1)),      # 16 pixels an image: vectors of 8 rows in one image
    (2, 3, 5, 30, 1, (5, 1), (1, 1), (2, 0), (1, 1)),      # a column image
]


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_sparse_conv_kernels_are_exact(asymmetric, geometry):
    assert cpp_extension_available()
    b, c, o, h, w, kernel, stride, padding, dilation = geometry
    _, packed, scale, bias = _pruned_conv(o, c, kernel, 0.15, asymmetric, seed=c + o, zero_outputs=[0, o // 2],
                                          zero_channels=[c - 1])
    layout = conv2d_cpu_layout(packed, c, 1, kernel, form="sparse")
    assert is_sparse_layout(layout)
    args = (list(stride), list(padding), list(dilation), 1, list(kernel))
    for rate in (0.0, 0.1, 0.5, 1.0):
        x = _spikes((b, c, h, w), rate, torch.float32, seed=h * w + c)
        for bb in (None, bias):
            want = ternary_conv2d_reference(x, packed, scale, bb, *args[:4], kernel_size=kernel, spikes=True)
            for choice in KERNELS:
                got = torch.ops.tna_cpp.ternary_conv2d_sparse_spikes(x, packed, scale, bb, layout, *args, choice)
                assert got.dtype == want.dtype and torch.equal(got, want), (rate, choice)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.uint8, torch.bool])
def test_sparse_conv_input_dtypes(dtype):
    _, packed, scale, bias = _pruned_conv(20, 12, (3, 3), 0.1, False, seed=1)
    layout = conv2d_cpu_layout(packed, 12, 1, (3, 3), form="sparse")
    x = _spikes((2, 12, 7, 6), 0.3, dtype, seed=2)
    want = ternary_conv2d_reference(x, packed, scale, bias, 1, 1, 1, 1, (3, 3), spikes=True)
    for choice in KERNELS:
        got = torch.ops.tna_cpp.ternary_conv2d_sparse_spikes(x, packed, scale, bias, layout, [1, 1], [1, 1],
                                                             [1, 1], 1, [3, 3], choice)
        assert got.dtype == want.dtype and torch.equal(got, want), choice


def test_sparse_conv_layout_choice_and_checks():
    _, pruned, scale, bias = _pruned_conv(24, 10, (3, 3), 0.05, False, seed=3)
    _, dense, _, _ = _pruned_conv(24, 10, (3, 3), 0.6, False, seed=3)
    assert is_sparse_layout(conv2d_cpu_layout(pruned, 10, 1, (3, 3)))
    assert conv2d_cpu_layout(dense, 10, 1, (3, 3)).dtype == torch.int64
    assert conv2d_cpu_layout(pruned, 10, 1, (3, 3), form="dense").dtype == torch.int64
    grouped = pack_ternary(torch.zeros(24, 5 * 9, dtype=torch.int8))
    assert conv2d_cpu_layout(grouped, 10, 2, (3, 3)).dtype == torch.int64  # auto: groups > 1 stay dense
    with pytest.raises(ValueError, match="sparse form is for groups=1"):
        conv2d_cpu_layout(grouped, 10, 2, (3, 3), form="sparse")
    with pytest.raises(ValueError, match="form must be"):
        conv2d_cpu_layout(pruned, 10, 1, (3, 3), form="csr")
    x = _spikes((2, 10, 6, 6), 0.3, torch.float32, seed=4)
    linear_layout = tna_kernels.ops.ternary.op.linear_cpu_layout(pruned, 90, form="sparse")
    for wrong in (linear_layout, conv2d_cpu_layout(_pruned_conv(25, 10, (3, 3), 0.05, False, seed=5)[1], 10, 1,
                                                   (3, 3), form="sparse")):
        with pytest.raises(RuntimeError, match="ternary_conv2d_sparse_layout made from this packed weight"):
            ternary_conv2d(x, pruned, scale, bias, padding=1, kernel_size=(3, 3), spikes=True, backend="cpp",
                           layout=wrong)
    layout = conv2d_cpu_layout(pruned, 10, 1, (3, 3))
    with pytest.raises(RuntimeError, match="kernel must be 'auto', 'sliced', 'scatter' or 'dense'"):
        torch.ops.tna_cpp.ternary_conv2d_sparse_spikes(x, pruned, scale, None, layout, [1, 1], [1, 1], [1, 1], 1,
                                                       [3, 3], "events")
    x[1, 2, 3, 4] = 2.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        ternary_conv2d(x, pruned, scale, bias, padding=1, kernel_size=(3, 3), spikes=True, backend="cpp",
                       layout=layout)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_frozen_pruned_conv_uses_the_sparse_layout_and_is_exact(asymmetric):
    """A frozen TernaryConv2d whose codes are mostly zero caches the sparse layout and equals the reference, on
    [N, C, H, W] and [T, B, C, H, W] input."""
    torch.manual_seed(0)
    layer = tna_kernels.nn.TernaryConv2d(12, 30, 3, padding=1, quantizer="ttq" if asymmetric else "twn",
                                         spikes=True, backend="cpp").freeze()
    _, packed, scale, _ = _pruned_conv(30, 12, (3, 3), 0.08, asymmetric, seed=6, zero_outputs=[3])
    layer.packed.copy_(packed)
    layer.scale.copy_(scale if asymmetric else scale.view(layer.scale.shape))
    x = _spikes((3, 2, 12, 8, 8), 0.2, torch.float32, seed=7)
    got = layer(x)
    assert is_sparse_layout(layer._layout)
    want = ternary_conv2d_reference(x.view(6, 12, 8, 8), layer.packed, layer.scale, layer.bias.detach(), 1, 1, 1, 1,
                                    (3, 3), spikes=True)
    assert torch.equal(got, want.view(3, 2, 30, 8, 8))


def test_opcheck_conv_with_a_sparse_layout():
    from tna_kernels.ops.ternary.op import ternary_conv2d_op

    _, packed, scale, bias = _pruned_conv(9, 6, (3, 3), 0.1, True, seed=8)
    layout = conv2d_cpu_layout(packed, 6, 1, (3, 3))
    assert is_sparse_layout(layout)
    spikes = _spikes((2, 6, 5, 5), 0.3, torch.float32, seed=9).requires_grad_()
    torch.library.opcheck(ternary_conv2d_op, (spikes, packed, scale, bias, None, layout, [1, 1], [1, 1], [1, 1], 1,
                                              [3, 3], True, "cpp"))
