"""tna.explain.sanity: firing rates and the silent-network refusal, IG completeness, weight shuffling (float and
frozen ternary), map correlations and the cascading randomization."""
import pytest
import torch
from torch import nn

pytest.importorskip("captum")

import tna_kernels.nn as tnn  # noqa: E402
from tna.deploy import deployable  # noqa: E402
from tna.explain import methods, sanity  # noqa: E402
from tna.models.layers import spiking_layers  # noqa: E402

from .test_methods import SMALL, RegionReader, spiking_convnet  # noqa: E402


def test_firing_rates_and_liveness():
    model = spiking_convnet()
    inputs = torch.randn(4, 1, 8, 8)
    rates = sanity.firing_rates(model, inputs)
    assert list(rates) == list(spiking_layers(model))
    assert all(0 <= rate <= 1 for rate in rates.values()) and max(rates.values()) > 0
    report = sanity.liveness(model, inputs, torch.full_like(inputs, -3.0))
    assert report["firing_rates"] == rates and 0 < report["output_change"] <= 1
    with pytest.raises(sanity.SilentNetworkError, match="output is the same on the inputs and on the baseline"):
        sanity.liveness(model, inputs, inputs.clone())


def test_a_silent_network_is_refused():
    model = spiking_convnet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.fill_(-50.0)
    inputs = torch.randn(2, 1, 8, 8)
    assert max(sanity.firing_rates(model, inputs).values()) == 0
    with pytest.raises(sanity.SilentNetworkError, match="silent on these inputs"):
        sanity.liveness(model, inputs, torch.zeros_like(inputs))


def test_completeness_gap():
    linear = RegionReader(slice(2, 6), slice(0, 3))  # a linear model: IG is exactly complete
    inputs, labels = torch.rand(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    zeros = torch.zeros_like(inputs)
    attributions = methods.attribute("integrated_gradients", linear, inputs, labels, zeros, SMALL)
    gaps = sanity.completeness_gaps(linear, inputs, labels, zeros, attributions)
    assert gaps.shape == (3,) and gaps.max() < 1e-4
    assert (sanity.completeness_gaps(linear, inputs, labels, zeros, 2 * attributions) - 1).abs().max() < 1e-4
    spiking = spiking_convnet()
    inputs, labels, baseline = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3]), torch.full((3, 1, 8, 8), -1.0)
    attributions = methods.attribute("integrated_gradients", spiking, inputs, labels, baseline, SMALL)
    gaps = sanity.completeness_gaps(spiking, inputs, labels, baseline, attributions)
    assert gaps.shape == (3,) and torch.isfinite(gaps).all() and (gaps >= 0).all()


def test_shuffling_keeps_the_weights_and_moves_them():
    generator = torch.Generator().manual_seed(0)
    layer = nn.Conv2d(3, 4, 3)
    before = layer.weight.detach().clone()
    sanity.shuffle_weights_(layer, generator)
    assert torch.equal(layer.weight.detach().flatten().sort().values, before.flatten().sort().values)
    assert not torch.equal(layer.weight.detach(), before)
    ternary = tnn.TernaryLinear(40, 16).freeze()
    codes = ternary.codes()
    sanity.shuffle_weights_(ternary, generator)
    shuffled = ternary.codes()
    assert torch.equal(shuffled.flatten().sort().values, codes.flatten().sort().values)
    assert not torch.equal(shuffled, codes)


def test_map_correlations():
    maps = torch.rand(3, 5, 5)
    torch.testing.assert_close(torch.from_numpy(sanity.map_correlations(maps, maps)), torch.ones(3,
                               dtype=torch.float64))
    torch.testing.assert_close(torch.from_numpy(sanity.map_correlations(maps, 1 - maps)), -torch.ones(3,
                               dtype=torch.float64))
    zeros = torch.zeros(3, 5, 5)
    assert list(sanity.map_correlations(zeros, zeros)) == [1.0, 1.0, 1.0]
    assert list(sanity.map_correlations(maps, zeros)) == [0.0, 0.0, 0.0]


def test_cascading_randomization_after_a_forward_with_gradients():
    """A method whose last forward kept gradients leaves firing rates in the autograd graph on the model: the
    randomized copy is still made, and the model keeps its weights."""
    model = deployable(spiking_convnet("fp"))
    state = {name: value.clone() for name, value in model.state_dict().items()}
    inputs, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    result = sanity.cascading_randomization(model, inputs, labels, torch.zeros_like(inputs), ["saliency"], SMALL)
    assert not all(layer.rate.is_leaf for layer in spiking_layers(model).values())
    assert len(result["spearman"]["saliency"]) == len(sanity.weight_layers(model))
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in state.items())


@pytest.mark.parametrize("weights", ["fp", "ternary"])
def test_cascading_randomization(weights, tmp_path):
    model = deployable(spiking_convnet(weights))
    state = {name: value.clone() for name, value in model.state_dict().items()}
    inputs, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
    chosen = ["saliency", "gradcam", "sam"]
    result = sanity.cascading_randomization(model, inputs, labels, torch.full_like(inputs, -1.0), chosen, SMALL)
    names = [name for name, _ in sanity.weight_layers(model)]
    assert result["layers"] == names and names[0] == "classifier" and names[-1] == "stem.conv"
    for method in chosen:
        curve = result["spearman"][method]
        assert len(curve) == len(names) and all(-1 <= value <= 1 for value in curve)
    assert min(result["spearman"]["saliency"]) < 0.9  # destroying the weights changes the gradient maps
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in state.items())
    # SAM reads the forward spikes only: randomizing the classifier alone leaves it unchanged
    assert result["spearman"]["sam"][0] == pytest.approx(1.0)
    sanity.plot_randomization(result, tmp_path / "randomization.png")
    assert (tmp_path / "randomization.png").stat().st_size > 1000
