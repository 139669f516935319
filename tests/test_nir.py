"""tna_kernels.nir: to_nir / from_nir round trips (spikes of every layer and ternary codes exact), the NIR fields
written, graphs of other shapes read against the NIR equations, and every refusal."""
import ast
import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tna_kernels
import tna_kernels.nn as tnn
from tna_kernels.nn.fold import fold_batchnorm_ternary

nir = pytest.importorskip("nir")
from tna_kernels.nir import NIRError, NIRNetwork, from_nir, to_nir  # noqa: E402
from tna_kernels.nir.common import step_above, step_below  # noqa: E402

DT = 1e-4


def _randomize_batchnorms(model: nn.Module, gen: torch.Generator) -> None:
    """Eval-mode statistics with some negative factors (so folding negates ternary codes)."""
    for bn in model.modules():
        if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
            bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.weight.data.copy_(torch.randn(c, generator=gen) + 0.8)
            bn.bias.data.copy_(torch.rand(c, generator=gen) * 0.4)


def spiking_network(seed: int = 0, channels: int = 6, v_reset: float = -0.1) -> nn.Sequential:
    """A time-major network ``[T, B, 2, 8, 8] -> [T, B, 5]`` with every layer kind to_nir writes: a float conv with
    BatchNorm, max pooling on spikes, a TTQ ternary conv (BatchNorm folded, some codes negated), a grouped ternary
    conv, average pooling, flatten, a TWN ternary linear with BatchNorm1d, LIFs with both charge rules, another
    threshold and reset (``v_reset`` for the second LIF), and a float readout. Every LIF layer fires on inputs
    ``rand * 3``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c = channels
    model = nn.Sequential(
        tnn.MultiStep(nn.Conv2d(2, c, 3, padding=1)), tnn.MultiStep(nn.BatchNorm2d(c)),
        tnn.LIF(tau=2.0, detach_reset=True, surrogate="sigmoid", alpha=3.0),
        tnn.MultiStep(tnn.MaxPool2d(2)),
        tnn.TernaryConv2d(c, c, 3, padding=1, quantizer="ttq", spikes=True), tnn.MultiStep(nn.BatchNorm2d(c)),
        tnn.LIF(tau=3.0, decay_input=False, v_threshold=0.3, v_reset=v_reset),
        tnn.TernaryConv2d(c, c, 3, padding=1, groups=2, spikes=True, bias=False),
        tnn.LIF(tau=1.5, v_threshold=0.05),
        tnn.MultiStep(nn.AvgPool2d(2)), tnn.MultiStep(nn.Flatten()),
        tnn.TernaryLinear(c * 4, 12), tnn.MultiStep(nn.BatchNorm1d(12)),
        tnn.LIF(tau=2.0, v_threshold=0.5),
        nn.Linear(12, 5),
    )
    with torch.no_grad():
        _randomize_batchnorms(model, gen)
        model[7].weight.abs_()
    return model.eval()


def spike_input(seed: int, t: int = 4, b: int = 3) -> torch.Tensor:
    return torch.rand(t, b, 2, 8, 8, generator=torch.Generator().manual_seed(seed)) * 3


def layer_outputs(model: nn.Module, x: torch.Tensor) -> dict:
    """Output ``[T, B, ...]`` of each LIF, max pooling and the model, by the NIR node names to_nir gives them."""
    outputs, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, tnn.LIF) or isinstance(module, tnn.MultiStep) and isinstance(module.module, nn.MaxPool2d):
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o)))
    with torch.no_grad():
        outputs["output"] = model(x)
    for handle in handles:
        handle.remove()
    return outputs


def _write_read(graph, tmp_path, name="model.nir"):
    path = tmp_path / name
    nir.write(path, graph)
    return path


@pytest.mark.parametrize("strict", [False, True])
def test_round_trip_is_exact(tmp_path, strict):
    model = spiking_network()
    graph = to_nir(model, spike_input(0), strict_threshold=strict)
    network = from_nir(_write_read(graph, tmp_path))
    assert isinstance(network, NIRNetwork) and not network.training
    x = spike_input(1)
    want = layer_outputs(model, x)
    with torch.no_grad():
        got = network(x, all_outputs=True)
    assert set(want) <= set(got)
    for name, spikes in want.items():
        assert torch.equal(got[name], spikes), name
    rates = [want[name].mean().item() for name in ("2", "3", "6", "8", "13")]
    assert min(rates) > 0.01 and max(rates) < 0.9

    for index in ("2", "6", "8", "13"):
        original, imported = model[int(index)], network.layer(index)
        assert type(imported) is tnn.LIF
        for option in ("tau", "v_threshold", "v_reset", "decay_input", "detach_reset", "surrogate", "alpha"):
            assert getattr(imported, option) == getattr(original, option), (index, option)
    assert type(network.layer("3")) is tnn.MaxPool2d and network.layer("3").kernel_size == (2, 2)

    ttq = fold_batchnorm_ternary(copy.deepcopy(model[4]).freeze(), model[5].module)
    grouped = copy.deepcopy(model[7]).freeze()
    for name, want_layer in (("4", ttq), ("7", grouped)):
        layer = network.layer(name)
        assert type(layer) is tnn.TernaryConv2d and layer.frozen and layer.spikes
        assert (layer.quantizer, layer.groups) == (want_layer.quantizer, want_layer.groups)
        assert torch.equal(layer.packed, want_layer.packed) and torch.equal(layer.scale, want_layer.scale)
    assert torch.equal(network.layer("7").bias, torch.zeros(6))
    assert type(network.layer("11")) is tnn.TernaryLinear and network.layer("11").quantizer == "twn"
    assert type(network.layer("0")) is nn.Conv2d and type(network.layer("14")) is nn.Linear

    again = to_nir(network, x, strict_threshold=strict)
    assert again.edges == graph.edges
    for name, node in graph.nodes.items():
        other = again.nodes[name]
        assert type(other) is type(node)
        for field in ("weight", "bias", "tau", "r", "v_leak", "v_threshold", "v_reset"):
            if hasattr(node, field):
                assert np.array_equal(getattr(other, field), getattr(node, field)), (name, field)


def test_fields_written_for_each_layer():
    model = spiking_network()
    graph = to_nir(model, spike_input(0), dt=2e-4, strict_threshold=True, metadata={"note": "x"})
    nodes = graph.nodes
    assert graph.metadata["dt"] == 2e-4 and graph.metadata["firing_condition"] == ">"
    assert graph.metadata["note"] == "x" and graph.metadata["producer"].startswith("tna_kernels")
    assert [type(nodes[n]).__name__ for n in ("input", "0", "2", "3.avg", "3", "4", "9", "10", "11", "14")] == [
        "Input", "Conv2d", "LIF", "AvgPool2d", "LIF", "Conv2d", "AvgPool2d", "Flatten", "Affine", "Affine"]
    assert ("input", "0") in graph.edges and ("0", "2") in graph.edges and ("14", "output") in graph.edges
    lif = nodes["6"]
    assert lif.tau.shape == (6, 4, 4) and lif.tau.dtype == np.float64
    assert np.all(lif.tau == 3.0 * 2e-4) and np.all(lif.r == 3.0)
    assert np.all(lif.v_leak == -0.1) and np.all(lif.v_reset == -0.1)
    assert np.all(lif.v_threshold == np.nextafter(np.float32(0.3), np.float32(-1)))
    assert np.all(nodes["2"].r == 1.0) and nodes["2"].metadata["tna_kernels"]["surrogate"] == "sigmoid"
    pool = nodes["3"]
    assert np.all(pool.v_threshold == 1 / 16) and np.all(pool.tau == 2 * 2e-4)
    grouped = nodes["7"].weight
    assert grouped.shape == (6, 6, 3, 3) and not grouped[:3, 3:].any() and not grouped[3:, :3].any()
    assert nodes["7"].groups == 1 and nodes["7"].metadata["tna_kernels"]["ternary"]["groups"] == 2
    assert (nodes["10"].start_dim, nodes["10"].end_dim) == (0, 2) and list(nodes["10"].input_type["input"]) == [
        6, 2, 2]
    assert tuple(nodes["0"].input_shape) == (8, 8) and tuple(nodes["0"].padding) == (1, 1)
    assert nodes["11"].weight.shape == (12, 24) and list(graph.nodes["output"].output_type["output"]) == [5]
    assert isinstance(to_nir(nn.Sequential(nn.Linear(4, 3, bias=False), tnn.LIF()),
                             torch.zeros(2, 1, 4)).nodes["0"], nir.Linear)


def test_per_channel_learnable_parameters_broadcast_and_are_refused_on_import():
    lif = tnn.LIF(tau=2.5, learnable_tau=True, learnable_threshold=True, channels=3)
    with torch.no_grad():
        lif.v_threshold.copy_(torch.tensor([0.5, 1.0, 1.5]))
    graph = to_nir(nn.Sequential(tnn.MultiStep(nn.Conv2d(1, 3, 1)), lif), torch.rand(2, 1, 1, 4, 4))
    node = graph.nodes["1"]
    assert node.v_threshold.shape == (3, 4, 4) and np.all(node.v_threshold[1] == 1.0)
    assert np.allclose(node.tau / DT, 2.5)
    with pytest.raises(NIRError, match="1 .LIF.: v_threshold differs between neurons"):
        from_nir(graph)


def _affine_lif_graph(weight, bias, **lif):
    shape = (weight.shape[0],)
    params = {key: np.broadcast_to(np.asarray(value, np.float64), shape).copy() for key, value in lif.items()}
    kind = nir.IF if "tau" not in params else nir.LIF
    return nir.NIRGraph.from_list(nir.Affine(weight=weight, bias=bias), kind(**params))


def _euler_reference(x, weight, bias, tau, r, v_leak, v_reset, v_threshold, integrate=False):
    """NIR's neuron by forward Euler with step DT in float64, firing on v > v_threshold. x ``[T, B, in]``."""
    current = x.double() @ torch.as_tensor(weight).double().T + torch.as_tensor(bias).double()
    v = torch.full(current.shape[1:], float(v_reset), dtype=torch.float64)
    out = []
    for i_t in current:
        if integrate:
            v = v + DT * torch.as_tensor(r) * i_t
        else:
            v = v + DT / torch.as_tensor(tau) * (torch.as_tensor(v_leak) - v + torch.as_tensor(r) * i_t)
        spikes = (v > torch.as_tensor(v_threshold)).double()
        v = torch.where(spikes > 0, torch.as_tensor(float(v_reset), dtype=torch.float64), v)
        out.append(spikes)
    return torch.stack(out)


@pytest.mark.parametrize("case", ["r_and_v_leak", "r_equals_tau", "integrate_and_fire"])
def test_other_tools_neurons_match_the_nir_equations(case):
    gen = np.random.default_rng(3)
    weight = gen.normal(size=(7, 5)).astype(np.float32)
    bias = gen.normal(size=7).astype(np.float32) * 0.2
    if case == "r_and_v_leak":
        lif = dict(tau=3 * DT, r=gen.uniform(0.5, 2.0, 7), v_leak=gen.uniform(-0.2, 0.4, 7), v_reset=0.1,
                   v_threshold=0.8)
    elif case == "r_equals_tau":
        lif = dict(tau=4 * DT, r=4.0, v_leak=0.0, v_reset=0.0, v_threshold=1.2)
    else:
        lif = dict(r=1 / DT, v_reset=0.0, v_threshold=1.0)
    network = from_nir(_affine_lif_graph(weight, bias, **lif))
    neuron = network.layer("if" if case == "integrate_and_fire" else "lif")
    assert neuron.decay_input == (case == "r_and_v_leak")
    assert neuron.tau == {"r_and_v_leak": 3.0, "r_equals_tau": 4.0, "integrate_and_fire": math.inf}[case]
    assert neuron.v_threshold == float(step_above(lif["v_threshold"]))
    x = torch.randn(20, 4, 5, generator=torch.Generator().manual_seed(4)) + 0.5
    with torch.no_grad():
        got = network(x)
    params = {"tau": DT, "v_leak": 0.0, **lif}
    want = _euler_reference(x, weight, bias, params["tau"], params["r"], params["v_leak"], params["v_reset"],
                            params["v_threshold"], integrate=case == "integrate_and_fire")
    assert want.mean() > 0.05
    assert torch.equal(got.double(), want)


def test_conv_r_folds_per_channel_and_refuses_within_channel_changes():
    weight = np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32)
    r = np.broadcast_to(np.array([0.5, 1.0, 2.0]).reshape(3, 1, 1), (3, 4, 4)).copy()
    conv = nir.Conv2d(input_shape=(4, 4), weight=weight, stride=1, padding=1, dilation=1, groups=1,
                      bias=np.zeros(3, np.float32))

    def make(r):
        return nir.NIRGraph.from_list(conv, _lif((3, 4, 4), r=r))

    network = from_nir(make(r))
    assert torch.allclose(network.layer("conv2d").weight, torch.as_tensor(weight) * torch.tensor([0.5, 1, 2]).view(
        3, 1, 1, 1))
    r[0, 0, 0] = 3.0
    with pytest.raises(NIRError, match="varies within a channel"):
        from_nir(make(r))


def test_grouped_conv_of_another_tool_imports_with_its_groups():
    weight = np.random.default_rng(1).normal(size=(4, 1, 3, 3)).astype(np.float32)
    conv = nir.Conv2d(input_shape=(5, 5), weight=weight, stride=1, padding=1, dilation=1, groups=4,
                      bias=np.zeros(4, np.float32))
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([4, 5, 5])), "conv": conv,
                                "output": nir.Output(output_type=np.array([4, 5, 5]))},
                         edges=[("input", "conv"), ("conv", "output")], type_check=False)
    layer = from_nir(graph).layer("conv")
    assert layer.groups == 4
    x = torch.randn(2, 3, 4, 5, 5)
    with torch.no_grad():
        want = nn.functional.conv2d(x.flatten(0, 1), torch.as_tensor(weight), padding=1, groups=4)
        assert torch.equal(from_nir(graph)(x), want.unflatten(0, (2, 3)))


def test_threshold_steps():
    theta = np.array([1.0, 0.1, 0.6])
    below = step_below(theta)
    assert np.all(below < theta.astype(np.float32)) and np.all(step_above(below) == theta.astype(np.float32))
    above = step_above(0.1)
    assert above > 0.1 and np.float32(above) == above and np.nextafter(np.float32(above), np.float32(0)) <= 0.1


def test_soft_reset_refused_or_written_as_hard_reset():
    model = nn.Sequential(nn.Linear(4, 3), tnn.LIF(v_reset=None))
    with pytest.raises(NIRError, match=r"1 \(LIF\): soft reset"):
        to_nir(model, torch.zeros(2, 1, 4))
    graph = to_nir(model, torch.zeros(2, 1, 4), allow_soft_reset=True)
    assert graph.metadata["soft_reset_written_as_hard"] == "1" and np.all(graph.nodes["1"].v_reset == 0)
    assert graph.nodes["1"].metadata["tna_kernels"]["soft_reset"] is True


@pytest.mark.parametrize("model,message", [
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU()), r"1 \(ReLU\): NIR has no counterpart"),
    (nn.Sequential(tnn.MultiStep(nn.Conv2d(1, 2, 3)), tnn.MultiStep(nn.MaxPool2d(2))), "only on spikes"),
    (nn.Sequential(nn.Linear(4, 3), tnn.LIF(), tnn.MultiStep(nn.BatchNorm1d(3))), "folds it into the Linear"),
    (nn.Sequential(tnn.MultiStep(nn.Conv2d(1, 2, 3, padding_mode="reflect", padding=1))), "padding_mode"),
    (nn.Sequential(nn.Flatten()), "time or batch"),
    (nn.Sequential(tnn.MultiStep(tnn.LIF())), "does not see the time dimension"),
    (nn.Sequential(nn.Linear(4, 3), tnn.LIF(return_state=True)), "not a tensor"),
    (nn.Sequential(tnn.MultiStep(nn.AvgPool2d(2, ceil_mode=True))), "ceil_mode"),
])
def test_export_refusals_name_the_module(model, message):
    shape = (2, 1, 4) if isinstance(model[0], nn.Linear) else (2, 1, 1, 6, 6)
    with pytest.raises(NIRError, match=message):
        to_nir(model, torch.rand(shape))


def _lif(shape, tau=2 * DT, **changes):
    params = dict(tau=np.full(shape, tau), r=np.ones(shape), v_leak=np.zeros(shape), v_threshold=np.ones(shape),
                  v_reset=np.zeros(shape))
    return nir.LIF(**{**params, **changes})


def test_import_refusals(tmp_path):
    weight = np.ones((3, 2), np.float32)
    with pytest.raises(NIRError, match="tau differs between neurons"):
        from_nir(nir.NIRGraph.from_list(nir.Linear(weight=weight), _lif(3, tau=np.array([1, 2, 3]) * DT)))
    with pytest.raises(NIRError, match=r"tau / dt = 0.5 steps"):
        from_nir(nir.NIRGraph.from_list(nir.Linear(weight=weight), _lif(3)), dt=4 * DT)
    with pytest.raises(NIRError, match="no single weight layer|single Affine"):
        from_nir(nir.NIRGraph.from_list(_lif(3, r=np.full(3, 3.0))))
    cuba = nir.CubaLIF(tau_syn=np.ones(3), tau_mem=np.ones(3), r=np.ones(3), v_leak=np.zeros(3),
                       v_threshold=np.ones(3))
    with pytest.raises(NIRError, match="synaptic current"):
        from_nir(nir.NIRGraph.from_list(nir.Linear(weight=weight), cuba))
    recurrent = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([3])), "lif": _lif(3),
                                    "w": nir.Linear(weight=np.eye(3)), "output": nir.Output(output_type=np.array([3]))},
                             edges=[("input", "lif"), ("lif", "w"), ("w", "lif"), ("lif", "output")], type_check=False)
    with pytest.raises(NIRError, match="recurrent"):
        from_nir(recurrent)
    two_inputs = nir.NIRGraph(nodes={"a": nir.Input(input_type=np.array([3])), "b": nir.Input(input_type=np.array([3])),
                                     "output": nir.Output(output_type=np.array([3]))},
                              edges=[("a", "output"), ("b", "output")], type_check=False)
    with pytest.raises(NIRError, match="one Input node, this one has 2"):
        from_nir(two_inputs)
    with pytest.raises(FileNotFoundError, match="no such NIR file"):
        from_nir(tmp_path / "missing.nir")
    garbage = tmp_path / "garbage.nir"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(NIRError, match="is not a readable NIR file"):
        from_nir(garbage)
    text = tmp_path / "text.nir"
    text.write_text("not a graph")
    with pytest.raises(NIRError, match="is not a readable NIR file"):
        from_nir(text)
    with pytest.raises(TypeError, match="nir.NIRGraph or the path"):
        from_nir(42)


def test_metadata_dt_mismatch_warns_and_edited_ternary_weights_import_as_float(tmp_path):
    model = spiking_network()
    graph = to_nir(model, spike_input(0))
    with pytest.warns(UserWarning, match="written with dt=0.0001"):
        from_nir(graph, dt=DT / 2)
    graph.nodes["11"].weight = graph.nodes["11"].weight * 1.5
    with pytest.warns(UserWarning, match="11: its ternary metadata does not rebuild the layer"):
        network = from_nir(_write_read(graph, tmp_path))
    assert type(network.layer("11")) is nn.Linear


def test_missing_nir_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nir", None)
    with pytest.raises(ImportError, match=r'pip install "tna-kernels\[nir\]"'):
        to_nir(nn.Sequential(nn.Linear(2, 2)), torch.zeros(1, 1, 2))
    with pytest.raises(ImportError, match="needs the nir package"):
        from_nir("model.nir")


def test_nir_is_imported_only_when_called():
    """``import tna_kernels`` must work without nir: no module of the package imports it at module level."""
    root = Path(tna_kernels.__file__).parent
    for path in root.rglob("*.py"):
        for statement in ast.parse(path.read_text()).body:
            if isinstance(statement, ast.Import):
                names = [alias.name for alias in statement.names]
            elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
                names = [statement.module]
            else:
                continue
            assert not any(name.split(".")[0] in ("nir", "nirtorch", "h5py") for name in names), path
