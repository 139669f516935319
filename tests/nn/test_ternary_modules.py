"""TernaryLinear / TernaryConv2d: drop-in behaviour, QAT, freezing, state_dict, ternarize_."""
import io

import pytest
import torch
from torch import nn

from tna_kernels.nn import TernaryConv2d, TernaryLinear, freeze_, ternarize_
from tna_kernels.ops.ternary import FORMAT_VERSION, dequantize, ternarize


@pytest.mark.parametrize("quantizer", ["twn", "ttq", "absmean"])
def test_linear_from_float_matches_dequantized_linear_and_time_major(quantizer):
    base = nn.Linear(30, 7)
    layer = TernaryLinear.from_float(base, quantizer=quantizer)
    x = torch.randn(4, 3, 30)  # [T, B, in]
    codes, scale = ternarize(base.weight, quantizer)
    want = nn.functional.linear(x, dequantize(codes, scale), base.bias)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantizer", ["twn", "ttq"])
def test_frozen_state_dict_round_trip_keeps_no_float_weight(quantizer):
    layer = TernaryConv2d(4, 6, 3, padding=1, groups=2, quantizer=quantizer)
    x = torch.randn(2, 3, 4, 8, 8)  # [T, B, C, H, W]
    before = layer(x)
    layer.freeze()
    assert not any(p.dim() > 1 for p in layer.parameters()), "a frozen layer keeps no float weight"
    assert layer.packed.dtype == torch.int32 and int(layer.format_version) == FORMAT_VERSION
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = TernaryConv2d(4, 6, 3, padding=1, groups=2, quantizer=quantizer)
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.frozen
    torch.testing.assert_close(fresh(x), before, rtol=1e-5, atol=1e-5)


def test_wrong_format_version_is_refused():
    layer = TernaryLinear(20, 3).freeze()
    state = layer.state_dict()
    state["format_version"] = torch.tensor(FORMAT_VERSION + 1)
    with pytest.raises(RuntimeError, match="format version"):
        TernaryLinear(20, 3).load_state_dict(state)


def test_packed_weights_are_at_least_15x_smaller():
    layer = TernaryLinear(4096, 512, bias=False).freeze()
    fp32_bytes = 512 * 4096 * 4
    packed_bytes = layer.packed.numel() * 4 + layer.scale.numel() * 4
    assert fp32_bytes / packed_bytes >= 15


def test_ternarize_model_skips_first_and_last():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(32, 16),
                          nn.Linear(16, 10))
    replaced = ternarize_(model)
    assert replaced == ["2", "4"]
    assert type(model[0]) is nn.Conv2d and type(model[5]) is nn.Linear
    assert isinstance(model[2], TernaryConv2d) and isinstance(model[4], TernaryLinear)
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 10)
    every = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    assert ternarize_(every, skip_first_last=False) == ["0", "1"]


def test_freeze_whole_model_keeps_its_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(32, 16),
                          nn.Linear(16, 10))
    ternarize_(model)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = model(x)
        assert freeze_(model) is model
        after = model(x)
    assert model[2].frozen and model[4].frozen and not hasattr(model[2], "weight")
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown quantizer"):
        TernaryLinear(4, 4, quantizer="binary")
    with pytest.raises(ValueError, match="padding_mode"):
        TernaryConv2d(3, 3, 3, padding_mode="reflect")
    with pytest.raises(TypeError, match="nn.Linear"):
        TernaryLinear.from_float(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        TernaryConv2d(3, 3, 3)(torch.randn(3, 8, 8))


@pytest.mark.parametrize("quantizer", ["twn", "ttq"])
def test_qat_ternary_network_learns(quantizer):
    """A small MLP with ternary hidden layers learns a 4-class task from scratch."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=gen) * 2
    labels = torch.randint(0, 4, (512,), generator=gen)
    inputs = centers[labels] + torch.randn(512, 16, generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    ternarize_(model, quantizer=quantizer)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for layer in (model[2], model[4]):
        layer.freeze()
    accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9, accuracy


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_frozen_module_caches_its_cpu_layout_and_remakes_it_when_packed_changes(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer, other, shape = TernaryLinear(50, 7), TernaryLinear(50, 7), (3, 50)
    else:
        layer, other, shape = TernaryConv2d(6, 4, 3, padding=1, groups=2), TernaryConv2d(6, 4, 3, groups=2), (2, 6, 5, 5)
    x = (torch.rand(shape) < 0.3).to(torch.uint8)  # integer input: spikes
    layer.freeze()
    other.freeze()
    assert layer._layout is None, "nothing is made before the first spike input"
    got = layer(x)
    layout = layer._layout
    assert layout is not None and torch.equal(got, _on_reference_backend(layer)(x))
    assert torch.equal(layer(x), got) and layer._layout is layout, "the cache is reused while packed is unchanged"
    layer(torch.randn(shape))
    assert layer._layout is layout, "real-valued input neither uses nor remakes the cache"
    layer.load_state_dict(other.state_dict())  # packed changes in place
    assert torch.equal(layer(x), _on_reference_backend(layer)(x)) and layer._layout is not layout
    with torch.no_grad():
        layer.packed.zero_()  # every code -1
    assert torch.equal(layer(x), _on_reference_backend(layer)(x))


def _on_reference_backend(layer):
    """A copy of a frozen layer that runs the reference backend (which uses no CPU layout)."""
    import copy

    twin = copy.deepcopy(layer)
    twin.backend = "torch"
    return twin
