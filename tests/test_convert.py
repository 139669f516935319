"""tna_kernels.convert.replace_neurons against SpikingJelly 2.0.0: same spikes, same gradients, clean refusals."""
import copy
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("spikingjelly")
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402

import tna_kernels  # noqa: E402
from tna_kernels.convert import ConversionSummary, replace_neurons  # noqa: E402
from tna_kernels.ops.lif.surrogate import surrogate_grad  # noqa: E402

TOLERANCES = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def spiking_cnn() -> nn.Module:
    """Conv+BN and linear layers between LIF / PLIF nodes with different options; input [T, B, 2, 6, 6].

    Initialized so that every neuron layer fires (rates 0.1 to 0.2).
    """
    model = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(alpha=3.0), step_mode="m"),
        layer.Conv2d(4, 4, 3, padding=1, step_mode="m"),
        layer.BatchNorm2d(4, step_mode="m"),
        neuron.ParametricLIFNode(
            init_tau=3.0, v_reset=None, detach_reset=True, surrogate_function=surrogate.Sigmoid(alpha=5.0),
            step_mode="m",
        ),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 6 * 6, 32)),
        neuron.LIFNode(
            tau=1.7, decay_input=False, v_threshold=0.8, v_reset=-0.2, detach_reset=True,
            surrogate_function=surrogate.PiecewiseQuadratic(alpha=0.8), step_mode="m",
        ),
        layer.SeqToANNContainer(nn.Linear(32, 32)),
        neuron.ParametricLIFNode(
            init_tau=1.5, decay_input=False, surrogate_function=surrogate.ATan(alpha=1.5), step_mode="m"
        ),
        layer.SeqToANNContainer(nn.Linear(32, 16)),
        neuron.LIFNode(tau=4.0, v_reset=None, surrogate_function=surrogate.Rect(alpha=0.7), step_mode="m"),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 2.0)
            nn.init.constant_(module.bias, 0.5)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=4 / module.in_features**0.5)
    return model


def forward_backward(model: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    """Spikes [T, B, 16], the input gradient, and every parameter gradient keyed by parameter name."""
    x = x.clone().requires_grad_(True)
    spikes = model(x)
    spikes.backward(grad_out)
    return spikes, x.grad, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_converted_model_matches_spikingjelly(dtype):
    torch.manual_seed(0)
    sj_model = spiking_cnn().to(dtype)
    ours = copy.deepcopy(sj_model)
    with torch.no_grad():  # a trained-looking PLIF w, not the initial one
        ours[4].w.add_(0.3)
        sj_model[4].w.add_(0.3)
    summary = replace_neurons(ours)
    assert [r.path for r in summary.replaced] == ["1", "4", "6", "8", "10"]
    assert all(isinstance(ours[i], tna_kernels.nn.LIF) for i in (1, 4, 6, 8, 10))

    x = torch.randn(6, 3, 2, 6, 6, dtype=dtype) * 2 + 0.5
    grad_out = torch.randn(6, 3, 16, dtype=dtype)
    sj_model(torch.randn_like(x))  # leave a membrane behind: the comparison is on a fresh state
    functional.reset_net(sj_model)
    sj_spikes, sj_gx, sj_grads = forward_backward(sj_model, x, grad_out)
    spikes, gx, grads = forward_backward(ours, x, grad_out)

    assert 0 < spikes.mean() < 1
    # LIFNode membranes are bit-identical; PLIF ones can differ in the last bit (SpikingJelly multiplies by
    # sigmoid(w), we divide by 1 + exp(-w)), which no spike of this seed comes close enough to feel.
    assert torch.equal(spikes, sj_spikes)
    torch.testing.assert_close(gx, sj_gx, **TOLERANCES[dtype])
    assert len(grads) == len(sj_grads)
    for name, sj_grad in sj_grads.items():
        ours_name = name.replace(".w", ".tau_weight") if name.endswith(".w") else name
        assert grads[ours_name].dtype == dtype
        torch.testing.assert_close(grads[ours_name].reshape(sj_grad.shape), sj_grad, **TOLERANCES[dtype])
    assert torch.equal(ours(x), spikes)  # stateless: a second call starts from the same fresh state


@pytest.mark.parametrize(
    "sj_surrogate, ours, alpha",
    [
        (surrogate.ATan(alpha=3.0), "atan", 3.0),
        (surrogate.Sigmoid(alpha=5.0), "sigmoid", 5.0),
        (surrogate.PiecewiseQuadratic(alpha=0.8), "triangle", 0.8),
        (surrogate.Rect(alpha=0.7), "rectangle", 0.7),
        (surrogate.SuperSpike(alpha=1.0), "fast_sigmoid", 1.0),
        (surrogate.SoftSign(alpha=2.0), "fast_sigmoid", 2.0),
    ],
)
def test_mapped_surrogates_have_the_same_derivative(sj_surrogate, ours, alpha):
    edges = torch.tensor([0.5 / alpha, 1 / alpha], dtype=torch.float64)
    u = torch.cat([torch.linspace(-3, 3, 601, dtype=torch.float64), edges, -edges]).requires_grad_(True)
    sj_surrogate(u).sum().backward()
    torch.testing.assert_close(surrogate_grad(ours, u.detach(), alpha), u.grad, rtol=1e-12, atol=1e-14)
    summary = replace_neurons(nn.Sequential(neuron.LIFNode(surrogate_function=sj_surrogate, step_mode="m")))
    assert f"surrogate={ours}(alpha={alpha:g})" in summary.replaced[0].new_module


def _spoil(attribute, value):
    def spoil(node):
        setattr(node, attribute, value)
    return spoil


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (_spoil("step_mode", "s"), "step_mode='s'"),
        (_spoil("surrogate_function", surrogate.Erf()), "surrogate Erf has no tna_kernels counterpart"),
        (_spoil("surrogate_function", surrogate.SuperSpike(alpha=2.0)), r"SuperSpike\(alpha=2\) has no"),
        (_spoil("surrogate_function", surrogate.ATan(spiking=False)), "spiking=False"),
        (_spoil("surrogate_function", surrogate.ATan(alpha=torch.tensor(2.0))), "alpha=tensor"),
        (_spoil("store_v_seq", True), "store_v_seq=True"),
        (_spoil("v_threshold", torch.tensor(1.0)), "v_threshold=tensor"),
        (_spoil("tau", torch.tensor(2.0)), "tau=tensor"),
        (lambda node: node.register_forward_hook(lambda *args: None), "hooks"),
    ],
)
def test_refusal_names_path_and_reason_and_changes_nothing(spoil, reason):
    model = nn.Sequential(
        nn.Linear(4, 4),
        neuron.LIFNode(surrogate_function=surrogate.ATan(), step_mode="m"),
        nn.Sequential(nn.Linear(4, 4), neuron.LIFNode(surrogate_function=surrogate.ATan(), step_mode="m")),
    )
    spoil(model[2][1])
    before = list(model.named_modules())
    with pytest.raises(ValueError, match=rf"'2\.1' \(LIFNode\): .*{reason}"):
        replace_neurons(model)
    assert list(model.named_modules()) == before  # the convertible node at '1' was not replaced either


def test_every_problem_is_listed_at_once():
    model = nn.Sequential(
        neuron.LIFNode(step_mode="s"),
        neuron.ParametricLIFNode(surrogate_function=surrogate.PiecewiseExp(), step_mode="m"),
    )
    expected = r"(?s)'0' \(LIFNode\): step_mode.*'1' \(ParametricLIFNode\): surrogate PiecewiseExp"
    with pytest.raises(ValueError, match=expected):
        replace_neurons(model)


def test_summary_subclasses_shared_nodes_and_options():
    class CustomLIF(neuron.LIFNode):
        pass

    shared = neuron.ParametricLIFNode(init_tau=4.0, surrogate_function=surrogate.ATan(), step_mode="m").double()
    shared.w.requires_grad_(False)
    model = nn.Sequential(shared, nn.Sequential(shared), CustomLIF(step_mode="m")).eval()
    summary = replace_neurons(model, backend="torch")

    assert isinstance(summary, ConversionSummary)
    assert [(r.path, r.old_type) for r in summary.replaced] == [
        ("0", "ParametricLIFNode"), ("1.0", "ParametricLIFNode"),
    ]
    assert model[0] is model[1][0]
    lif = model[0]
    assert summary.replaced[0].new_module == repr(lif)
    assert not lif.training and lif.backend == "torch"
    assert lif.tau_weight.dtype == torch.float64 and not lif.tau_weight.requires_grad
    torch.testing.assert_close(lif.tau, torch.tensor([4.0], dtype=torch.float64))
    assert summary.skipped == (("2", "CustomLIF is a subclass of LIFNode; its equations may differ"),)
    assert isinstance(model[2], CustomLIF)
    text = str(summary)
    assert "replaced 2 SpikingJelly neuron(s)" in text
    assert "1.0: ParametricLIFNode -> LIF(tau=learnable[1] (mean 4)" in text
    assert "2: CustomLIF is a subclass" in text


def test_bad_arguments():
    with pytest.raises(ValueError, match="model itself is a neuron"):
        replace_neurons(neuron.LIFNode(step_mode="m"))
    with pytest.raises(ValueError, match="backend must be one of"):
        replace_neurons(nn.Sequential(), backend="cuda")


def test_missing_spikingjelly_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "spikingjelly.activation_based", None)
    with pytest.raises(ImportError, match="pip install spikingjelly"):
        replace_neurons(nn.Sequential())


README_SUMMARY = """\
replaced 2 SpikingJelly neuron(s) with tna_kernels.nn.LIF
  1: LIFNode -> LIF(tau=2, v_threshold=1, v_reset=0, surrogate=atan(alpha=2), decay_input=True, detach_reset=False)
  3: ParametricLIFNode -> LIF(tau=learnable[1] (mean 2), v_threshold=0.2, v_reset=soft, surrogate=sigmoid(alpha=4), \
decay_input=True, detach_reset=True)
"""


def test_readme_example(capsys):
    import copy

    import torch
    from spikingjelly.activation_based import functional, layer, neuron, surrogate
    from torch import nn

    from tna_kernels.convert import replace_neurons

    torch.manual_seed(0)
    sj_model = nn.Sequential(
        layer.Linear(64, 128, step_mode="m"),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m"),
        layer.Linear(128, 10, step_mode="m"),
        neuron.ParametricLIFNode(v_threshold=0.2, v_reset=None, detach_reset=True, surrogate_function=surrogate.Sigmoid(),
                                 step_mode="m"),
    )
    model = copy.deepcopy(sj_model)
    summary = replace_neurons(model)
    print(summary)

    x = torch.randn(8, 32, 64) * 4  # [T, B, 64]
    functional.reset_net(sj_model)  # SpikingJelly keeps the membrane between calls; tna_kernels' LIF starts fresh
    assert torch.equal(model(x), sj_model(x))

    assert capsys.readouterr().out == README_SUMMARY
    assert model(x).mean() > 0.05
