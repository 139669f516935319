"""The fused inference of a frozen ternary conv and its LIF neurons (``tna_kernels.nn.conv_lif_inference`` and
the C++ op ``ternary_conv2d_spikes_lif``) against the conv reference followed by the LIF reference: equal spikes
and spike counts, on both sides of the dense / event kernel switch; where it does not apply, None."""
import pytest
import torch
from torch import nn

from tna_kernels._ext import cpp_extension_available
from tna_kernels.nn import LIF, TernaryConv2d, conv_lif_inference
from tna_kernels.ops.lif.reference import lif_multistep_reference
from tna_kernels.ops.ternary import pack_ternary, ternarize, ternary_conv2d_reference

pytestmark = pytest.mark.usefixtures("poison_empty")

LIF_OPTIONS = [  # (tau, v_threshold, v_reset, decay_input)
    (2.0, 1.0, 0.0, True),
    (1.7, 0.5, None, True),
    (3.0, 0.8, -0.25, False),
]
CASES = [  # (timesteps, batch, channels, out, height, width, stride, padding, groups)
    (3, 2, 20, 40, 9, 7, 1, 1, 1),
    (1, 3, 70, 24, 6, 6, 2, 0, 1),
    (2, 2, 12, 100, 16, 16, 1, 1, 2),
]


def _spike_density(side: str) -> float:
    """A spike density below (events) or above (dense kernel) the conv's switch point on this build."""
    switch = torch.ops.tna_cpp.ternary_event_density("conv2d")
    return switch / 2 if side == "events" else (1 + switch) / 2


def _conv_weights(out, channels, asymmetric, seed):
    gen = torch.Generator().manual_seed(seed)
    codes, scale = ternarize(torch.randn(out, channels, 3, 3, generator=gen), "ttq" if asymmetric else "twn")
    return pack_ternary(codes), (scale * 4).contiguous(), torch.randn(out, generator=gen)


@pytest.mark.parametrize("side", ["events", "dense"])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("options", LIF_OPTIONS)
@pytest.mark.parametrize("case", CASES)
def test_fused_op_equals_conv_then_lif(side, asymmetric, options, case):
    assert cpp_extension_available()
    steps, batch, channels, out, height, width, stride, padding, groups = case
    tau, v_threshold, v_reset, decay_input = options
    packed, scale, bias = _conv_weights(out, channels // groups, asymmetric, seed=channels + out)
    gen = torch.Generator().manual_seed(out)
    x = (torch.rand(steps * batch, channels, height, width, generator=gen) < _spike_density(side)).float()
    geometry = [[stride] * 2, [padding] * 2, [1, 1], groups, [3, 3]]
    current = ternary_conv2d_reference(x, packed, scale, bias, *geometry[:4], kernel_size=[3, 3], spikes=True)
    want, _, want_count = lif_multistep_reference(current.unflatten(0, (steps, batch)), tau, v_threshold, v_reset,
                                                  decay_input, return_count=True)
    layout = torch.ops.tna_cpp.ternary_conv2d_layout(packed, channels, groups, [3, 3])
    for given_layout in (layout, None):
        spikes, count = torch.ops.tna_cpp.ternary_conv2d_spikes_lif(
            x, packed, scale, bias, given_layout, *geometry, steps, tau, v_threshold,
            0.0 if v_reset is None else v_reset, v_reset is None, decay_input)
        assert torch.equal(spikes, want.flatten(0, 1))
        assert count.dtype == torch.float32 and count.item() == want_count.item()
    assert 0 < want_count.item() < want.numel()  # some neurons fire, not all


def test_fused_op_checks_its_input():
    assert cpp_extension_available()
    packed, scale, bias = _conv_weights(8, 4, False, seed=0)
    geometry = [[1, 1], [1, 1], [1, 1], 1, [3, 3]]
    with pytest.raises(RuntimeError, match="timesteps = 3 must divide the batch"):
        torch.ops.tna_cpp.ternary_conv2d_spikes_lif(torch.zeros(4, 4, 5, 5), packed, scale, bias, None, *geometry, 3,
                                                    2.0, 1.0, 0.0, False, True)
    with pytest.raises(RuntimeError, match="only 0 and 1"):
        torch.ops.tna_cpp.ternary_conv2d_spikes_lif(torch.full((2, 4, 5, 5), 0.5), packed, scale, bias, None,
                                                    *geometry, 2, 2.0, 1.0, 0.0, False, True)


def _deployed_pair(channels=16, out=32, spikes=True):
    """(frozen spike-input TernaryConv2d with a bias, LIF) of a deployed block."""
    torch.manual_seed(0)
    conv = TernaryConv2d(channels, out, 3, padding=1, spikes=spikes)
    with torch.no_grad():
        conv.weight.mul_(8)
    conv.freeze()
    return conv.requires_grad_(False), LIF(tau=2.0, v_threshold=1.0, v_reset=0.0, count_spikes=True)


def test_conv_lif_inference_equals_the_modules():
    assert cpp_extension_available()
    conv, lif = _deployed_pair()
    x = (torch.rand(4, 3, 16, 9, 9) < 0.2).float()
    with torch.inference_mode():
        fused = conv_lif_inference(conv, lif, x)
        want = lif(conv(x))
    assert fused is not None
    spikes, count = fused
    assert spikes.shape == (4, 3, 32, 9, 9) and torch.equal(spikes, want)
    assert torch.equal(count, lif.spike_count)
    with pytest.raises(ValueError, match="only 0 and 1"):
        conv_lif_inference(conv, lif, x * 0.5)


def test_conv_lif_inference_declines_what_it_cannot_run():
    """None (run the modules) for gradients, real-valued or pruned layers, learnable or stateful neurons and
    other input shapes or dtypes."""
    assert cpp_extension_available()
    conv, lif = _deployed_pair()
    x = (torch.rand(2, 3, 16, 6, 6) < 0.2).float()
    assert conv_lif_inference(conv, lif, x.requires_grad_()) is None
    x = x.detach()
    assert conv_lif_inference(conv, lif, x.double()) is None
    assert conv_lif_inference(conv, lif, x[0]) is None
    assert conv_lif_inference(_deployed_pair(spikes=False)[0], lif, x) is None
    assert conv_lif_inference(conv, LIF(tau=2.0, learnable_tau=True), x) is None
    assert conv_lif_inference(conv, LIF(learnable_threshold=True), x) is None
    assert conv_lif_inference(conv, LIF(return_state=True), x) is None
    pruned, _ = _deployed_pair()
    with torch.no_grad():
        pruned.packed.copy_(pack_ternary(torch.zeros(32, 16, 3, 3, dtype=torch.int8)))
    assert conv_lif_inference(pruned, lif, x) is None  # an all-zero weight takes the sparse layout
    training = TernaryConv2d(16, 32, 3, padding=1, spikes=True)
    assert conv_lif_inference(training, lif, x) is None
    assert conv_lif_inference(nn.Conv2d(16, 32, 3), lif, x) is None
