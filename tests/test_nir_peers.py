"""tna_kernels.nir against SpikingJelly 2.0.0, snnTorch 1.0.0 and Norse 1.1.0 (each test skips without its peer):
their NIR importers run what to_nir writes with the same spikes at every layer (snnTorch and Norse through the
workarounds of tna_kernels.nir.peers, with strict_threshold where thresholds are hit exactly), and from_nir runs
what their exporters write as the networks those files describe."""
from pathlib import Path

import pytest
import torch
from torch import nn

import tna_kernels.nn as tnn

nir = pytest.importorskip("nir")
from tna_kernels.nir import from_nir, to_nir  # noqa: E402
from tna_kernels.nir import peers  # noqa: E402

from .test_nir import layer_outputs, spike_input, spiking_network  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # nirtorch's notes to the peers
PEERS = {"spikingjelly": peers.spikingjelly_outputs, "snntorch": peers.snntorch_outputs, "norse": peers.norse_outputs}


def _peer(name: str):
    pytest.importorskip(name)
    return PEERS[name]


def _predictions(output: torch.Tensor) -> torch.Tensor:
    return output.mean(0).argmax(-1)


@pytest.mark.parametrize("peer", list(PEERS))
@pytest.mark.parametrize("strict", [False, True])
def test_peer_importers_fire_our_spikes_at_every_layer(tmp_path, peer, strict):
    run = _peer(peer)
    model = spiking_network(seed=1, v_reset=0.0)
    path = tmp_path / "model.nir"
    nir.write(path, to_nir(model, spike_input(0), strict_threshold=strict))
    x = spike_input(2, t=6, b=8)
    want = layer_outputs(model, x)
    got = run(nir.read(path), x)
    for name in ("2", "3", "6", "8", "13"):
        assert want[name].sum() > 0 and torch.equal(got[name], want[name]), name
    assert torch.equal(_predictions(got["output"]), _predictions(want["output"]))
    torch.testing.assert_close(got["output"], want["output"], rtol=1e-5, atol=1e-5)


def _tie_network() -> nn.Sequential:
    """Weights in quarters on spike input and tau = 2: membranes land on the threshold 1.0 exactly, often."""
    gen = torch.Generator().manual_seed(5)
    linear = nn.Linear(40, 30, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randint(-1, 3, (30, 40), generator=gen) * 0.25)
    return nn.Sequential(linear, tnn.LIF(tau=2.0)).eval()


@pytest.mark.parametrize("peer", list(PEERS))
def test_strict_threshold_keeps_spikes_on_the_threshold_for_peers_that_fire_above_it(peer):
    run = _peer(peer)
    model = _tie_network()
    x = (torch.rand(8, 16, 40, generator=torch.Generator().manual_seed(6)) < 0.3).float()
    with torch.no_grad():
        want = model(x)
    loose = run(to_nir(model, x), x)["1"]
    strict = run(to_nir(model, x, strict_threshold=True), x)["1"]
    assert want.mean() > 0.1 and torch.equal(strict, want)
    if peer == "spikingjelly":  # fires on v >= v_threshold, as we do
        assert torch.equal(loose, want)
    else:
        assert (loose != want).sum() > 10


def test_spikingjelly_export_runs_as_the_original():
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(7)
    net = nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(tau=3.0, decay_input=False), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(64, 20), neuron.LIFNode(tau=2.0, v_threshold=0.5, v_reset=0.3),
        layer.Linear(20, 6), neuron.IFNode(v_threshold=0.6))
    with torch.no_grad():
        net[4].bias.add_(0.2)
        net[6].bias.add_(0.2)
    functional.set_step_mode(net, "m")
    x = torch.rand(6, 4, 2, 8, 8, generator=torch.Generator().manual_seed(8)) * 2
    network = from_nir(export_to_nir(net, x))
    assert [type(network.layer(name)).__name__ for name in ("_1", "_5", "_7")] == ["LIF", "LIF", "LIF"]
    assert network.layer("_7").tau == float("inf")
    outputs = {}
    for index in (1, 5, 7):
        net[index].register_forward_hook(lambda m, i, o, index=index: outputs.__setitem__(f"_{index}", o))
    functional.reset_net(net)
    with torch.no_grad():
        net(x)
        got = network(x, all_outputs=True)
    for name, spikes in outputs.items():
        assert 0 < spikes.mean() < 0.9 and torch.equal(got[name], spikes), name


def test_snntorch_export_runs_as_the_network_it_describes():
    pytest.importorskip("snntorch")
    import snntorch as snn
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(9)
    linear1, linear2 = nn.Linear(6, 16), nn.Linear(16, 5)

    def net(**reset):
        return nn.Sequential(
            linear1, snn.Leaky(beta=torch.full((16,), 0.75), threshold=torch.full((16,), 0.5), init_hidden=True,
                               **reset),
            linear2, snn.Leaky(beta=torch.full((5,), 0.875), threshold=torch.full((5,), 0.3), init_hidden=True,
                               output=True, **reset))

    original = net()  # snnTorch's default: subtract the threshold, a step late
    graph = export_to_nir(original, torch.randn(1, 6), ignore_dims=[0])
    described = net(reset_mechanism="zero", reset_delay=False)  # what the file says: hard reset to 0 at once
    x = torch.randn(12, 4, 6, generator=torch.Generator().manual_seed(10)) + 0.8

    def run(model):
        utils.reset(model)
        hidden, outputs = [], []
        model[1].register_forward_hook(lambda m, i, o: hidden.append(o))
        with torch.no_grad():
            for x_t in x:
                outputs.append(model(x_t)[0])
        return torch.stack(hidden), torch.stack(outputs)

    with torch.no_grad():
        got = from_nir(graph)(x, all_outputs=True)
    hidden, output = run(described)
    assert hidden.sum() > 0 and output.sum() > 0
    assert torch.equal(got["1"], hidden) and torch.equal(got["3"], output)
    assert not torch.equal(run(original)[0], hidden)


def test_readme_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("spikingjelly")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("\n## NIR\n"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    monkeypatch.chdir(tmp_path)
    exec(code[:code.index("```")], {})
    assert (tmp_path / "model.nir").is_file()
