"""python/tna/deploy.py: BatchNorm folded into full-precision and frozen ternary convolutions (same logits within
float32 rounding, same spikes), max pooling on the inference kernel, and the tna-export / load_deployed round
trip of a folded model."""
import copy

import pytest
import torch
from torch import nn

import tna_kernels.nn as tnn
from tna.config import TrainConfig
from tna.deploy import deployable, export_run, load_deployed
from tna.models import Precision, build_model, spiking_layers
from tna.models.layers import ConvBNLIF
from tna.trainer import Trainer
from tna_kernels.nn.fold import fold_batchnorm_ternary

pytest.importorskip("sklearn")


def _random_batchnorms(model, seed):
    """Random BatchNorm statistics and affine parameters, about a third of the factors negative, one zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.weight.copy_(torch.randn(c, generator=gen) + 0.5)
            bn.weight[0] = 0.0
            bn.bias.copy_(torch.randn(c, generator=gen) * 0.2 + 0.5)


def _unfolded(model):
    """The deployed model without any folding: frozen ternary layers followed by their BatchNorms."""
    return tnn.freeze_(copy.deepcopy(model).eval()).requires_grad_(False)


@pytest.mark.parametrize("quantizer", ["twn", "ttq"])
@pytest.mark.parametrize("spikes", [True, False])
def test_ternary_fold_equals_conv_then_batchnorm(quantizer, spikes):
    torch.manual_seed(0)
    conv = tnn.TernaryConv2d(6, 9, 3, padding=1, bias=False, quantizer=quantizer, spikes=spikes).freeze()
    bn = nn.BatchNorm2d(9).eval()
    holder = nn.Module()
    holder.bn = bn
    _random_batchnorms(holder, seed=1)
    fused = fold_batchnorm_ternary(conv, bn)
    assert fused.scale.shape == conv.scale.shape and fused.bias.shape == (9,)
    gen = torch.Generator().manual_seed(2)
    for x in ((torch.rand(3, 6, 7, 5, generator=gen) < 0.3).float(), torch.ones(1, 6, 4, 4),
              torch.zeros(2, 6, 5, 5)) if spikes else (torch.randn(3, 6, 7, 5, generator=gen),):
        with torch.no_grad():
            torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,quantizer", [("vgg11", "twn"), ("resnet19", "ttq")])
def test_deployed_folds_every_batchnorm_and_keeps_spikes(arch, quantizer):
    torch.manual_seed(0)
    precision = Precision("ternary", quantizer, quantize_first_last=True)
    model = build_model(arch, 10, (3, 32, 32), 2, precision, width=0.125)
    _random_batchnorms(model, seed=3)
    deployed, unfolded = deployable(model), _unfolded(model)
    folded = sum(isinstance(m, nn.Identity) for name, m in deployed.named_modules() if name.endswith("bn"))
    assert folded == sum(isinstance(m, nn.BatchNorm2d) for name, m in model.named_modules() if name.endswith("bn"))
    assert all(type(m) is not nn.MaxPool2d for m in deployed.modules())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = unfolded(x)
        want_rates = {name: layer.rate.item() for name, layer in spiking_layers(unfolded).items()}
        got = deployed(x)
    rates = {name: layer.rate.item() for name, layer in spiking_layers(deployed).items()}
    assert rates.keys() == want_rates.keys() and max(want_rates.values()) > 0.01
    for name, rate in rates.items():  # a spike flips only where a membrane lies within rounding of the threshold
        assert rate == pytest.approx(want_rates[name], abs=2e-3)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arch", ["vgg11", "convnet"])
def test_deployed_blocks_fuse_conv_and_neurons_exactly(arch):
    """Deployed, each spike-input ConvBNLIF runs its conv and neurons in one fused pass (conv_lif_inference); with a
    hook on the neurons it runs them as modules (and a hook on a conv sees it run). Both give the same spikes, rates
    and logits, bit for bit."""
    torch.manual_seed(0)
    precision = Precision("ternary", "twn", quantize_first_last=True)
    model = build_model(arch, 10, (3, 32, 32), 3, precision, width=0.125)
    _random_batchnorms(model, seed=5)
    deployed = deployable(model)
    blocks = [m for m in deployed.modules() if isinstance(m, ConvBNLIF) and m.conv.spikes]
    assert blocks
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    fused_calls = []
    original = tnn.conv_lif_inference

    def counting(*args):
        result = original(*args)
        fused_calls.append(result is not None)
        return result

    with torch.inference_mode():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tnn, "conv_lif_inference", counting)
            fused = deployed(x)
        fused_rates = {name: layer.rate.item() for name, layer in spiking_layers(deployed).items()}
        hooks = [block.lif.register_forward_hook(lambda *args: None) for block in blocks]
        modules = deployed(x)
        for hook in hooks:
            hook.remove()
        seen = []
        hooks = [block.conv.register_forward_hook(lambda *args: seen.append(True)) for block in blocks]
        deployed(x)
        for hook in hooks:
            hook.remove()
    assert seen == [True] * len(blocks)  # a hook on a block's conv sees it run
    rates = {name: layer.rate.item() for name, layer in spiking_layers(deployed).items()}
    assert fused_calls == [True] * len(blocks)
    assert torch.equal(fused, modules) and fused_rates == rates and max(rates.values()) > 0.01


def test_export_and_load_rebuild_the_folded_model(tmp_path):
    config = TrainConfig(epochs=1, timesteps=2, device="cpu").resolved()
    Trainer(config, tmp_path / "run", progress=False).run()
    export_run(tmp_path / "run", tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert "body.0.conv.bias" in state["model"] and "body.0.conv.packed" in state["model"]
    assert not any(key.startswith("body.0.bn.") for key in state["model"])
    model, _ = load_deployed(tmp_path / "model.pt")
    assert isinstance(model.body[0].bn, nn.Identity) and isinstance(model.body[0].conv, tnn.TernaryConv2d)
    assert isinstance(model.body[1].module, tnn.MaxPool2d)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key])
