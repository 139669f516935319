"""Ternary linear / conv2d through the public functions (C++ backend) against the reference: exact on
spikes, a dtype tolerance on real input; every gradient; opcheck; compile; errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tna_kernels
from tna_kernels._ext import cpp_extension_available
from tna_kernels import pack_ternary, ternarize, ternary_conv2d, ternary_linear
from tna_kernels.ops.ternary import dequantize, ternary_conv2d_reference, ternary_linear_reference
from tna_kernels.ops.ternary.op import ternary_conv2d_op, ternary_linear_op

pytestmark = pytest.mark.usefixtures("poison_empty")

TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1e-2)}


def _weights(n, k, asymmetric, seed, kernel=None):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn((n, k) if kernel is None else (n, k, *kernel), generator=gen)
    codes, scale = ternarize(w, "ttq" if asymmetric else "twn")
    return codes, pack_ternary(codes), scale, torch.randn(n, generator=gen)


KERNELS = ["auto", "dense", "events"]  # the C++ spike kernels' choice (dense bit-plane popcounts, column adds)


def _spikes(shape, dtype, seed):
    s = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.6
    return s.to(dtype)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.bool])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 17, 5), (70, 130, 33), (4, 600, 3)])
def test_spike_linear_is_exact(kernel, dtype, asymmetric, m, k, n):
    assert cpp_extension_available()
    codes, packed, scale, bias = _weights(n, k, asymmetric, seed=m * k + n)
    x = _spikes((m, k), dtype, seed=k)
    for b in (None, bias):
        got = torch.ops.tna_cpp.ternary_linear_spikes(x, packed, scale, b, None, kernel)
        want = ternary_linear_reference(x, packed, scale, b, spikes=True)
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 45, 1), (9, 300, 70)])
def test_real_linear_and_gradients(dtype, asymmetric, m, k, n):
    codes, packed, scale, bias = _weights(n, k, asymmetric, seed=k + n)
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=gen).to(dtype).requires_grad_()
    bias = bias.requires_grad_()
    weight = dequantize(codes, scale).requires_grad_()  # the QAT gradient target
    y = ternary_linear(x, packed, scale, bias, backend="cpp", weight=weight)
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(y, ternary_linear_reference(x.detach(), packed, scale, bias.detach()),
                               rtol=rtol, atol=atol * k ** 0.5)
    grad = torch.randn(m, n, generator=gen).to(dtype)
    y.backward(grad)
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    b64 = bias.detach().double().requires_grad_()
    F.linear(x64, w64, b64).backward(grad.double())
    torch.testing.assert_close(x.grad, x64.grad.to(dtype), rtol=rtol, atol=atol * n ** 0.5)
    torch.testing.assert_close(bias.grad, b64.grad.float(), rtol=rtol, atol=atol * m ** 0.5)
    torch.testing.assert_close(weight.grad, w64.grad.float(), rtol=rtol, atol=atol * m ** 0.5)


def test_spike_input_gradient_flows_to_float_spikes():
    """LIF output spikes are float and carry surrogate gradients: the exact path still differentiates."""
    codes, packed, scale, _ = _weights(6, 40, False, seed=5)
    x = _spikes((3, 5, 40), torch.float32, seed=2).requires_grad_()
    y = ternary_linear(x, packed, scale, spikes=True, backend="cpp")
    assert torch.equal(y, ternary_linear_reference(x.detach().reshape(15, 40), packed, scale, spikes=True).view(3, 5, 6))
    grad = torch.randn(3, 5, 6)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad @ dequantize(codes, scale), rtol=1e-5, atol=1e-5)


CONV_CASES = [  # (batch, channels, out, size, kernel, stride, padding, dilation, groups)
    (1, 3, 5, 7, (3, 3), 1, 1, 1, 1),
    (2, 4, 6, 9, (3, 3), 2, 1, 2, 2),
    (2, 6, 3, 5, (1, 1), 1, 0, 1, 3),
    (1, 2, 4, 8, (3, 2), (2, 1), (0, 1), 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("asymmetric", [False, True])
def test_spike_conv_is_exact_with_input_gradient(case, asymmetric):
    batch, channels, out, size, kernel, stride, padding, dilation, groups = case
    codes, packed, scale, bias = _weights(out, channels // groups, asymmetric, seed=out + size, kernel=kernel)
    x = _spikes((batch, channels, size, size), torch.float32, seed=size).requires_grad_()
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = ternary_conv2d(x, packed, scale, bias, kernel_size=kernel, spikes=True, backend="cpp", **geometry)
    want = ternary_conv2d_reference(x.detach(), packed, scale, bias, kernel_size=kernel, spikes=True, **geometry)
    assert torch.equal(y, want)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    y.backward(grad)
    x64 = x.detach().double().requires_grad_()
    F.conv2d(x64, dequantize(codes, scale).double(), None, **geometry).backward(grad.double())
    torch.testing.assert_close(x.grad, x64.grad.float(), rtol=1e-5, atol=1e-5)


SPIKE_CONV_CASES = [  # (batch, channels, out, height, width, kernel, stride, padding, dilation, groups)
    (1, 3, 5, 7, 9, (3, 3), 1, 1, 1, 1),
    (2, 70, 24, 9, 8, (3, 3), 2, 0, 1, 1),
    (2, 130, 10, 5, 7, (3, 3), 1, 2, 2, 2),
    (1, 64, 17, 9, 9, (1, 1), 1, 0, 1, 1),
    (3, 6, 4, 5, 7, (3, 2), (2, 1), (0, 1), (1, 2), 2),
    (4, 20, 100, 16, 16, (3, 3), 1, 1, 1, 1),  # over 64 outputs: blocks of 64 pixels in several passes of the events
]


def _spike_conv_case(case, dtype, asymmetric, seed):
    """(x, packed, scale, bias, geometry) of a ``SPIKE_CONV_CASES`` entry, geometry in the op's list form."""
    batch, channels, out, height, width, kernel, stride, padding, dilation, groups = case
    _, packed, scale, bias = _weights(out, channels // groups, asymmetric, seed=seed, kernel=kernel)
    x = _spikes((batch, channels, height, width), dtype, seed=seed + 1)
    stride, padding, dilation = ([v, v] if isinstance(v, int) else list(v) for v in (stride, padding, dilation))
    return x, packed, scale, bias, [stride, padding, dilation, groups, list(kernel)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("case", SPIKE_CONV_CASES)
def test_spike_conv_kernel_is_exact(kernel, dtype, asymmetric, case):
    assert cpp_extension_available()
    x, packed, scale, bias, geometry = _spike_conv_case(case, dtype, asymmetric, seed=sum(case[:5]))
    for b in (None, bias):
        got = torch.ops.tna_cpp.ternary_conv2d_spikes(x, packed, scale, b, None, *geometry, kernel)
        want = ternary_conv2d_reference(x, packed, scale, b, *geometry[:4], kernel_size=geometry[4], spikes=True)
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.bool, torch.int8])
def test_spike_conv_dtypes_through_public_function(dtype):
    x, packed, scale, bias, (stride, padding, dilation, groups, kernel) = _spike_conv_case(
        SPIKE_CONV_CASES[2], dtype, True, seed=3)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, kernel_size=kernel)
    got = ternary_conv2d(x, packed, scale, bias, spikes=True, backend="cpp", **geometry)
    want = ternary_conv2d_reference(x, packed, scale, bias, spikes=True, **geometry)
    assert got.dtype == want.dtype and torch.equal(got, want)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), in_per_group=st.integers(1, 140), out_per_group=st.integers(1, 20),
       groups=st.integers(1, 3), height=st.integers(1, 12), width=st.integers(1, 12), kernel=st.integers(1, 4),
       stride=st.integers(1, 3), padding=st.integers(0, 2), dilation=st.integers(1, 2), asymmetric=st.booleans(),
       choice=st.sampled_from(KERNELS), seed=st.integers(0, 2**16))
def test_property_spike_conv_exact(batch, in_per_group, out_per_group, groups, height, width, kernel, stride,
                                   padding, dilation, asymmetric, choice, seed):
    span = dilation * (kernel - 1) + 1
    assume(height + 2 * padding >= span and width + 2 * padding >= span)
    _, packed, scale, bias = _weights(out_per_group * groups, in_per_group, asymmetric, seed, kernel=(kernel, kernel))
    x = _spikes((batch, in_per_group * groups, height, width), torch.float32, seed + 1)
    geometry = [[stride] * 2, [padding] * 2, [dilation] * 2, groups, [kernel] * 2]
    assert torch.equal(torch.ops.tna_cpp.ternary_conv2d_spikes(x, packed, scale, bias, None, *geometry, choice),
                       ternary_conv2d_reference(x, packed, scale, bias, *geometry[:4], kernel_size=geometry[4],
                                                spikes=True))


@pytest.mark.parametrize("dtype,bad", [(torch.float32, 0.5), (torch.float32, float("nan")), (torch.uint8, 2)])
def test_spike_conv_refuses_values_other_than_0_and_1(dtype, bad):
    x, packed, scale, _, (stride, padding, dilation, groups, kernel) = _spike_conv_case(
        SPIKE_CONV_CASES[1], dtype, False, seed=4)
    x[1, 69, 8, 7] = bad
    with pytest.raises(ValueError, match="only 0 and 1"):
        ternary_conv2d(x, packed, scale, stride=stride, padding=padding, dilation=dilation, groups=groups,
                       kernel_size=kernel, spikes=True, backend="cpp")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_conv_and_weight_gradient(dtype):
    codes, packed, scale, bias = _weights(4, 3, False, seed=11, kernel=(3, 3))
    x = torch.randn(2, 3, 6, 6).to(dtype).requires_grad_()
    weight = dequantize(codes, scale).requires_grad_()
    y = ternary_conv2d(x, packed, scale, bias, padding=1, backend="cpp", weight=weight)
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(y, ternary_conv2d_reference(x.detach(), packed, scale, bias, padding=1, kernel_size=3),
                               rtol=rtol, atol=atol * 6)
    y.float().sum().backward()
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    F.conv2d(x64, w64, bias.double(), padding=1).sum().backward()
    torch.testing.assert_close(weight.grad, w64.grad.float(), rtol=rtol, atol=atol * 10)
    torch.testing.assert_close(x.grad, x64.grad.to(dtype), rtol=rtol, atol=atol * 6)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 20), k=st.integers(1, 200), n=st.integers(1, 20), asymmetric=st.booleans(),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_property_spike_linear_exact(m, k, n, asymmetric, density, seed):
    _, packed, scale, bias = _weights(n, k, asymmetric, seed)
    x = (torch.rand(m, k, generator=torch.Generator().manual_seed(seed + 1)) < density).float()
    assert torch.equal(ternary_linear(x, packed, scale, bias, spikes=True, backend="cpp"),
                       ternary_linear_reference(x, packed, scale, bias, spikes=True))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_opcheck(backend):
    codes, packed, scale, bias = _weights(5, 20, True, seed=1)
    x = torch.randn(3, 20, requires_grad=True)
    weight = dequantize(codes, scale).requires_grad_()
    torch.library.opcheck(ternary_linear_op, (x, packed, scale, bias, weight, None, False, backend))
    spikes = _spikes((3, 20), torch.float32, 4)
    torch.library.opcheck(ternary_linear_op, (spikes, packed, scale, None, None, None, True, backend))
    codes, packed, scale, bias = _weights(4, 2, False, seed=2, kernel=(3, 3))
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    torch.library.opcheck(ternary_conv2d_op, (x, packed, scale, bias, None, None, [1, 1], [1, 1], [1, 1], 1, [3, 3],
                                              False, backend))
    spikes = _spikes((1, 2, 5, 5), torch.float32, 5).requires_grad_()
    geometry = ([1, 1], [1, 1], [1, 1], 1, [3, 3])
    torch.library.opcheck(ternary_conv2d_op, (spikes, packed, scale, bias, None, None, *geometry, True, backend))


@pytest.mark.parametrize("spikes", [False, True])
def test_compile_frozen_model_fullgraph(spikes):
    """Compiled frozen layers equal eager ones (on spikes, eager uses the cached CPU layout, compiled not)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        tna_kernels.nn.TernaryConv2d(3, 8, 3, padding=1, spikes=spikes), torch.nn.Flatten(),
        tna_kernels.nn.TernaryLinear(8 * 6 * 6, 5),
    )
    for layer in (model[0], model[2]):
        layer.freeze()
    x = (torch.rand(2, 3, 6, 6) < 0.3).float() if spikes else torch.randn(2, 3, 6, 6)
    want = model(x)
    assert (model[0]._layout is not None) == spikes
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), want)


def test_errors_name_the_problem():
    _, packed, scale, bias = _weights(4, 20, False, seed=0)
    with pytest.raises(ValueError, match=r"ceil\(K / 16\)"):
        ternary_linear(torch.randn(2, 40), packed, scale)
    with pytest.raises(TypeError, match="packed must be an int32"):
        ternary_linear(torch.randn(2, 20), packed.long(), scale)
    with pytest.raises(ValueError, match="scale must have shape"):
        ternary_linear(torch.randn(2, 20), packed, scale[:3])
    with pytest.raises(ValueError, match="bias must be"):
        ternary_linear(torch.randn(2, 20), packed, scale, bias[:2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        ternary_linear(torch.randn(2, 20), packed, scale, spikes=True, backend="cpp")
    with pytest.raises(ValueError, match="only 0 and 1"):
        ternary_linear(torch.randn(2, 20), packed, scale, spikes=True, backend="torch")
    with pytest.raises(ValueError, match="packed is on meta"):
        ternary_linear(torch.randn(2, 20), packed.to("meta"), scale.to("meta"))
    with pytest.raises(TypeError, match="not supported"):
        ternary_linear(torch.randn(2, 20, dtype=torch.float64), packed, scale, backend="cpp")
    _, cpacked, cscale, _ = _weights(4, 2, False, seed=0, kernel=(3, 3))
    with pytest.raises(ValueError, match="kernel_size"):
        ternary_conv2d(torch.randn(1, 2, 5, 5), cpacked, cscale)
    with pytest.raises(ValueError, match="groups"):
        ternary_conv2d(torch.randn(1, 3, 5, 5), cpacked, cscale, groups=2, kernel_size=3)
    with pytest.raises(ValueError, match="4-D"):
        ternary_conv2d(torch.randn(2, 5, 5), cpacked, cscale, kernel_size=3)


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 100, 9), (33, 700, 17)])
def test_spike_linear_with_cached_layout_is_exact(asymmetric, m, k, n):
    from tna_kernels.ops.ternary.op import linear_cpu_layout

    _, packed, scale, bias = _weights(n, k, asymmetric, seed=m + k + n)
    layout = linear_cpu_layout(packed, k)
    assert layout.dtype == torch.int64 and layout.dim() == 1
    x = _spikes((m, k), torch.float32, seed=k)
    want = ternary_linear_reference(x, packed, scale, bias, spikes=True)
    assert torch.equal(ternary_linear(x, packed, scale, bias, spikes=True, backend="cpp", layout=layout), want)
    other = linear_cpu_layout(_weights(n + 1, k, asymmetric, seed=1)[1], k)
    with pytest.raises(RuntimeError, match="layout must be the contiguous int64 CPU tensor"):
        ternary_linear(x, packed, scale, bias, spikes=True, backend="cpp", layout=other)


@pytest.mark.parametrize("c,o,groups,kernel,stride,padding,dilation", [
    (3, 5, 1, (3, 3), 1, 1, 1), (8, 6, 2, (3, 2), 2, 0, 1), (70, 9, 1, (1, 1), 1, 0, 1), (4, 4, 4, (3, 3), 1, 2, 2)])
def test_spike_conv2d_with_cached_layout_is_exact(c, o, groups, kernel, stride, padding, dilation):
    from tna_kernels.ops.ternary.op import conv2d_cpu_layout

    _, packed, scale, bias = _weights(o, c // groups, True, seed=c + o, kernel=kernel)
    layout = conv2d_cpu_layout(packed, c, groups, kernel)
    x = _spikes((2, c, 7, 6), torch.float32, seed=c)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, kernel_size=kernel)
    want = ternary_conv2d_reference(x, packed, scale, bias, spikes=True, **geometry)
    got = ternary_conv2d(x, packed, scale, bias, spikes=True, backend="cpp", layout=layout, **geometry)
    assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="layout must be the contiguous int64 CPU tensor"):
        ternary_conv2d(x, packed, scale, bias, spikes=True, backend="cpp", layout=layout[1:], **geometry)


def _spikes_with_count(shape, count, seed):
    """A float32 0/1 tensor of ``shape`` with exactly ``count`` ones at random places."""
    x = torch.zeros(shape).flatten()
    x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(seed))[:count]] = 1
    return x.view(shape)


def test_event_density_is_per_layer_kind():
    """One threshold per layer kind, each a share of the inputs; any other kind is refused."""
    assert cpp_extension_available()
    for layer in ("linear", "conv2d"):
        assert 0.0 < torch.ops.tna_cpp.ternary_event_density(layer) < 1.0
    with pytest.raises(RuntimeError, match="layer must be 'linear' or 'conv2d'"):
        torch.ops.tna_cpp.ternary_event_density("conv1d")


def _counts_around_the_switch(total, layer):
    """Spike counts out of ``total`` inputs: none, one, the last count that takes the event kernel under "auto"
    for ``layer`` ("linear" or "conv2d") and the first that takes the dense one, half, and all."""
    density = torch.ops.tna_cpp.ternary_event_density(layer)
    assert 0.0 < density < 1.0
    last_events = int(density * total)
    return sorted({c for c in (0, 1, last_events, last_events + 1, total // 2, total) if c <= total})


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 777, 100), (3, 300, 40), (5, 130, 7), (2, 9000, 40), (130, 64, 33)])
def test_spike_linear_kernels_agree_on_both_sides_of_the_switch(asymmetric, m, k, n):
    """Every kernel choice equals the reference at every density, around the "auto" switch point included
    (n picks 1, 2 or 4 vectors of column lanes; k = 9000 narrows the columns to fit the tile budget)."""
    assert cpp_extension_available()
    _, packed, scale, bias = _weights(n, k, asymmetric, seed=m + k + n)
    layout = torch.ops.tna_cpp.ternary_linear_layout(packed, k)
    for count in _counts_around_the_switch(m * k, "linear"):
        x = _spikes_with_count((m, k), count, seed=count)
        want = ternary_linear_reference(x, packed, scale, bias, spikes=True)
        for kernel in KERNELS:
            for cached in (None, layout):
                got = torch.ops.tna_cpp.ternary_linear_spikes(x, packed, scale, bias, cached, kernel)
                assert torch.equal(got, want), (count, kernel, cached is None)


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("c,o,groups,kernel_size", [(64, 70, 1, (3, 3)), (6, 40, 2, (3, 2)), (20, 5, 1, (1, 1))])
def test_spike_conv_kernels_agree_on_both_sides_of_the_switch(asymmetric, c, o, groups, kernel_size):
    """As the linear test, for conv2d (the switch reads the density of the input's spikes)."""
    assert cpp_extension_available()
    _, packed, scale, bias = _weights(o, c // groups, asymmetric, seed=c + o, kernel=kernel_size)
    layout = torch.ops.tna_cpp.ternary_conv2d_layout(packed, c, groups, list(kernel_size))
    shape = (2, c, 6, 5)
    geometry = [[1, 1], [1, 0], [1, 1], groups, list(kernel_size)]
    for count in _counts_around_the_switch(math.prod(shape), "conv2d"):
        x = _spikes_with_count(shape, count, seed=count)
        want = ternary_conv2d_reference(x, packed, scale, bias, *geometry[:4], kernel_size=geometry[4], spikes=True)
        for kernel in KERNELS:
            for cached in (None, layout):
                got = torch.ops.tna_cpp.ternary_conv2d_spikes(x, packed, scale, bias, cached, *geometry, kernel)
                assert torch.equal(got, want), (count, kernel, cached is None)


@pytest.mark.parametrize("code", [1, -1])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("k", [1000, 40000])
def test_spike_kernels_sum_long_runs_of_equal_codes_exactly(code, asymmetric, k):
    """k spikes on equal codes: the event kernel's int8 and int16 partial sums (127 and 258 x 127 events) must
    not overflow."""
    assert cpp_extension_available()
    n = 70
    packed = pack_ternary(torch.full((n, k), code, dtype=torch.int8))
    scale = torch.rand((2, n) if asymmetric else (n,)) + 0.5
    x = torch.ones(2, k)
    want = ternary_linear_reference(x, packed, scale, None, spikes=True)
    plus_or_minus = scale[0 if code == 1 else 1] if asymmetric else scale
    assert torch.equal(want, (code * k * plus_or_minus.double()).float().expand(2, n))
    for kernel in KERNELS:
        assert torch.equal(torch.ops.tna_cpp.ternary_linear_spikes(x, packed, scale, None, None, kernel), want)


@pytest.mark.parametrize("code", [1, -1])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("channels", [150, 4500, 33000])
def test_spike_conv_sums_long_runs_across_taps_exactly(code, asymmetric, channels):
    """All-ones spikes on equal codes through a 3x3 conv: the event kernel adds a run of `channels` events per tap
    (9 at the centre pixel) into the same partial sums, which must stay exact past 127 events (int8 sums), past
    32767 over the taps (int16 sums: 4500 channels) and within one tap's run (33000 channels)."""
    assert cpp_extension_available()
    n = 70 if channels < 10000 else 9
    packed = pack_ternary(torch.full((n, channels * 9), code, dtype=torch.int8))
    scale = torch.rand((2, n) if asymmetric else (n,)) + 0.5
    x = torch.ones(1, channels, 3, 3)
    geometry = [[1, 1], [1, 1], [1, 1], 1, [3, 3]]
    want = ternary_conv2d_reference(x, packed, scale, None, *geometry[:4], kernel_size=geometry[4], spikes=True)
    plus_or_minus = scale[0 if code == 1 else 1] if asymmetric else scale
    assert torch.equal(want[0, :, 1, 1], (code * 9 * channels * plus_or_minus.double()).float())
    for kernel in KERNELS:
        got = torch.ops.tna_cpp.ternary_conv2d_spikes(x, packed, scale, None, None, *geometry, kernel)
        assert torch.equal(got, want), kernel


def test_spike_kernel_choice_is_checked():
    assert cpp_extension_available()
    _, packed, scale, _ = _weights(3, 20, False, seed=0)
    with pytest.raises(RuntimeError, match="kernel must be 'auto', 'dense' or 'events'"):
        torch.ops.tna_cpp.ternary_linear_spikes(torch.ones(1, 20), packed, scale, None, None, "sparse")
