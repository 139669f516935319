"""CPU micro-benchmarks through pytest-benchmark: ``pytest benchmarks/ --benchmark-only``.

Small shapes (a fraction of a second per test), grouped so that pytest-benchmark's table compares our
kernels with the baseline of the same group. Each test first checks its result against the reference
(exactly for spikes), then times the call. The full benchmarks with plots are ``python -m benchmarks``.
"""
import pytest
import torch
import torch.nn.functional as F

import tna_kernels
from tna_kernels import lif_multistep
from tna_kernels.ops.ternary import dequantize, ternary_conv2d_reference, ternary_linear_reference

LIF_SHAPE = (8, 16, 2048)
LIF_BACKENDS = ["cpp", "torch"]


def _lif_inputs():
    torch.manual_seed(0)
    return torch.randn(LIF_SHAPE) * 1.5 + 1, torch.randn(LIF_SHAPE)


@pytest.mark.benchmark(group="lif forward [8, 16, 2048]")
@pytest.mark.parametrize("backend", LIF_BACKENDS)
def test_lif_forward(benchmark, backend):
    x, _ = _lif_inputs()
    assert torch.equal(lif_multistep(x, backend=backend), lif_multistep(x, backend="torch"))

    def forward():
        with torch.no_grad():
            return lif_multistep(x, backend=backend)

    benchmark(forward)


@pytest.mark.benchmark(group="lif forward+backward [8, 16, 2048]")
@pytest.mark.parametrize("backend", LIF_BACKENDS)
def test_lif_forward_backward(benchmark, backend):
    x, grad = _lif_inputs()
    leaf = x.clone().requires_grad_(True)

    def forward_backward():
        lif_multistep(leaf, backend=backend).backward(grad)
        result, leaf.grad = leaf.grad, None
        return result

    reference = x.clone().requires_grad_(True)
    lif_multistep(reference, backend="torch").backward(grad)
    torch.testing.assert_close(forward_backward(), reference.grad)
    benchmark(forward_backward)


def _ternary(shape):
    codes, scale = tna_kernels.ternarize(torch.randn(shape))
    return tna_kernels.pack_ternary(codes), scale, dequantize(codes, scale)


@pytest.mark.benchmark(group="linear on spikes M=64 K=N=1024")
@pytest.mark.parametrize("impl", ["tna ternary_linear", "F.linear fp32"])
def test_linear_on_spikes(benchmark, impl):
    torch.manual_seed(0)
    packed, scale, weight = _ternary((1024, 1024))
    x = (torch.rand(64, 1024) < 0.2).float()
    expected = ternary_linear_reference(x, packed, scale, spikes=True)
    if impl == "F.linear fp32":
        torch.testing.assert_close(F.linear(x, weight), expected)
        benchmark(F.linear, x, weight)
    else:
        assert torch.equal(tna_kernels.ternary_linear(x, packed, scale, spikes=True), expected)
        benchmark(tna_kernels.ternary_linear, x, packed, scale, spikes=True)


@pytest.mark.benchmark(group="conv2d on spikes x[8, 64, 16, 16] W[64, 64, 3, 3]")
@pytest.mark.parametrize("impl", ["tna ternary_conv2d", "F.conv2d fp32"])
def test_conv2d_on_spikes(benchmark, impl):
    torch.manual_seed(0)
    packed, scale, weight = _ternary((64, 64, 3, 3))
    x = (torch.rand(8, 64, 16, 16) < 0.2).float()
    expected = ternary_conv2d_reference(x, packed, scale, padding=1, kernel_size=(3, 3), spikes=True)
    if impl == "F.conv2d fp32":
        torch.testing.assert_close(F.conv2d(x, weight, padding=1), expected)
        benchmark(F.conv2d, x, weight, padding=1)
    else:
        conv = tna_kernels.ternary_conv2d
        assert torch.equal(conv(x, packed, scale, padding=1, kernel_size=(3, 3), spikes=True), expected)
        benchmark(conv, x, packed, scale, padding=1, kernel_size=(3, 3), spikes=True)
