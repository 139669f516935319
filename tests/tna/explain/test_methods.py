"""tna.explain.methods: the maps' post-processing, SAM by hand, Grad-CAM's time folding against an explicit loop,
per-timestep gradients, RISE and occlusion on a model whose answer is known, and every method on spiking networks."""
import math

import pytest
import torch
from torch import nn

pytest.importorskip("captum")

from tna.deploy import deployable  # noqa: E402
from tna.explain import methods  # noqa: E402
from tna.models import Precision, build_model  # noqa: E402

SMALL = methods.MethodSettings(ig_steps=8, smoothgrad_samples=3, occlusion_window=4, occlusion_stride=4,
                               rise_masks=64, rise_grid=4, batch_size=32)


def spiking_convnet(weights="fp", timesteps=3, seed=0, size=8):
    torch.manual_seed(seed)
    model = build_model("convnet", 10, (1, size, size), timesteps, Precision(weights), 1.0)
    with torch.no_grad():  # BatchNorm affine factors that keep every layer firing (a fifth of the neurons or so)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(5.0)
                module.bias.fill_(0.5)
    return model.eval()


class RegionReader(nn.Module):
    """Two classes: the logit of class 0 is the sum of the pixels in ``rows`` x ``cols``, class 1's is 0."""

    def __init__(self, rows: slice, cols: slice):
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x):
        read = x[:, :, self.rows, self.cols].sum((1, 2, 3))
        return torch.stack([read, torch.zeros_like(read)], dim=1)


def test_to_maps_clamps_averages_and_scales():
    attributions = torch.randn(5, 3, 6, 7)
    maps = methods.to_maps(attributions)
    expected = attributions.clamp(min=0).mean(1)
    low, high = expected.amin((1, 2), keepdim=True), expected.amax((1, 2), keepdim=True)
    torch.testing.assert_close(maps, (expected - low) / (high - low))
    assert maps.shape == (5, 6, 7) and maps.amin() == 0 and torch.allclose(maps.amax((1, 2)), torch.ones(5))
    flat = methods.to_maps(-torch.rand(2, 1, 4, 4))  # all negative: nothing survives max(0, .)
    assert torch.equal(flat, torch.zeros(2, 4, 4))
    events = torch.rand(2, 3, 2, 4, 4)  # [B, T, C, H, W]
    torch.testing.assert_close(methods.to_maps(events), methods.to_maps(events.mean((1, 2))))


def test_spike_activation_map_by_hand():
    gamma = 0.5
    train = torch.tensor([1.0, 1.0, 0.0, 1.0])  # spikes at t = 0, 1, 3
    spikes = torch.zeros(4, 1, 2, 1, 1)  # [T, B, C, h, w]; channel 1 never fires
    spikes[:, 0, 0, 0, 0] = train
    sam = methods.spike_activation_map(spikes, gamma)
    expected = torch.tensor([0.0, math.exp(-gamma), 0.0, math.exp(-3 * gamma) + math.exp(-2 * gamma)])
    torch.testing.assert_close(sam[:, 0, 0, 0], expected)
    spikes[:, 0, 1, 0, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # channels add up
    torch.testing.assert_close(methods.spike_activation_map(spikes, gamma)[3, 0, 0, 0],
                               expected[3] + math.exp(-gamma))


def test_gradcam_time_folding_matches_an_explicit_loop():
    timesteps = 3
    model = spiking_convnet(timesteps=timesteps)
    inputs, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 7, 9])
    layer = methods.last_conv(model)
    cams = methods.gradcam_per_timestep(model, inputs, labels, layer)
    captured = []
    hook = layer.register_forward_hook(lambda module, args, out: captured.append(out))
    logits = model(inputs)
    hook.remove()
    activation, = captured  # [T * B, C, h, w], time-major
    grad, = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), activation)
    for t in range(timesteps):
        for b in range(len(inputs)):
            row = t * len(inputs) + b
            weights = grad[row].mean((1, 2))
            expected = torch.relu((weights[:, None, None] * activation[row]).sum(0))
            torch.testing.assert_close(cams[t, b], expected.detach(), rtol=1e-4, atol=1e-6)
    assert cams.shape == (timesteps, 4, *activation.shape[-2:]) and cams.sum() > 0


def test_saliency_per_timestep_sums_to_the_gradient():
    from captum.attr import Saliency

    model = spiking_convnet()
    inputs, labels = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    steps = methods.saliency_per_timestep(model, inputs, labels)
    whole = Saliency(model).attribute(inputs.requires_grad_(True), target=labels, abs=False)
    assert steps.shape == (3, *inputs.shape)
    torch.testing.assert_close(steps.sum(0), whole, rtol=1e-4, atol=1e-6)
    assert (steps[0] - steps[-1]).abs().sum() > 0  # the steps differ: the neurons' state changes over time


def test_rise_masks():
    generator = torch.Generator().manual_seed(1)
    masks = methods.rise_masks(500, 4, 0.25, (10, 13), generator)
    assert masks.shape == (500, 10, 13) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.25) < 0.05
    assert not torch.equal(masks[0], masks[1])


@pytest.mark.parametrize("method", ["rise", "occlusion", "integrated_gradients", "saliency", "smoothgrad"])
def test_methods_find_the_pixels_a_model_reads(method):
    model = RegionReader(slice(0, 4), slice(4, 8))
    inputs = torch.rand(3, 1, 8, 8) + 0.5
    labels = torch.zeros(3, dtype=torch.long)
    maps = methods.explain(method, model, inputs, labels, torch.zeros_like(inputs), SMALL,
                           torch.Generator().manual_seed(0))
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[0:4, 4:8] = True
    assert maps.shape == (3, 8, 8)
    assert (maps[:, inside].mean(1) > maps[:, ~inside].mean(1) + 0.3).all(), maps


@pytest.mark.parametrize("weights", ["fp", "ternary"])
def test_every_method_on_a_spiking_network(weights):
    model = deployable(spiking_convnet(weights))
    inputs, labels = torch.randn(2, 1, 8, 8), torch.tensor([4, 5])
    baseline = torch.full_like(inputs, -1.0)
    for method in methods.METHODS:
        maps = methods.explain(method, model, inputs, labels, baseline, SMALL, torch.Generator().manual_seed(0))
        assert maps.shape == (2, 8, 8) and torch.isfinite(maps).all(), method
        assert maps.min() >= 0 and maps.max() <= 1, method
        assert (maps.amax((1, 2)) == 1).any(), f"{method} gave only empty maps"


def test_sam_ignores_the_label_and_gradcam_follows_it():
    model = spiking_convnet()
    inputs = torch.randn(2, 1, 8, 8)
    args = (model, inputs)
    sam = [methods.explain("sam", *args, torch.tensor([k, k]), inputs, SMALL) for k in (0, 1)]
    assert torch.equal(sam[0], sam[1])
    cams = [methods.explain("gradcam", *args, torch.tensor([k, k]), inputs, SMALL) for k in (0, 1)]
    assert not torch.equal(cams[0], cams[1])


def test_bad_requests():
    mlp = build_model("mlp", 10, (1, 8, 8), 2, Precision("fp"), 0.1).eval()
    inputs, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="gradcam needs a convolution"):
        methods.explain("gradcam", mlp, inputs, labels, inputs)
    with pytest.raises(ValueError, match="sam needs a spiking layer with a spatial map"):
        methods.explain("sam", mlp, inputs, labels, inputs)
    with pytest.raises(ValueError, match="unknown explanation method 'lime'"):
        methods.explain("lime", mlp, inputs, labels, inputs)
