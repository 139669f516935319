"""tna-export --format nir and tna-eval on NIR files: a briefly trained digits run written as NIR gives tna-eval the
accuracy and spike rates of the .pt export, SpikingJelly's importer predicts as our model on the whole test set,
the chain architectures export, and the CLI errors are one line with exit status 2."""
import json

import numpy as np
import pytest
import torch

from tna.cli import eval_main, export_main, train_main
from tna.config import ConfigError
from tna.data import load_dataset
from tna.data.batching import batches
from tna.deploy import deployable, deployed_run
from tna.models import Precision, build_model
from tna.nir_io import network_chain

pytest.importorskip("sklearn")
nir = pytest.importorskip("nir")
from tna_kernels.nir import from_nir, to_nir  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nir-runs")
    assert train_main(["--out", str(out), "--epochs", "1", "--timesteps", "3", "--batch-size", "64",
                       "--no-progress"]) == 0
    return out / "tna-ternary-seed0"


def _eval(capsys, path) -> dict:
    capsys.readouterr()
    assert eval_main([str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("strict", [False, True])
def test_nir_export_evaluates_as_the_torch_export(run, tmp_path, capsys, strict):
    assert export_main([str(run), "--out", str(tmp_path / "model.pt")]) == 0
    args = [str(run), "--out", str(tmp_path / "model.nir"), "--format", "nir"] + (["--strict-threshold"] * strict)
    assert export_main(args) == 0
    assert "NIR graph of 14 nodes" in capsys.readouterr().out
    graph = nir.read(tmp_path / "model.nir")
    meta = graph.metadata
    assert (meta["firing_condition"], meta["encoding"], meta["timesteps"], meta["dataset"]) == (
        ">" if strict else ">=", "direct", 3, "digits")
    assert meta["input_mean"].shape == (1,) and "mean over the T steps" in meta["readout"]
    assert {"stem.conv", "stem.lif", "body.0.conv", "body.1.avg", "body.1", "classifier"} <= set(graph.nodes)
    assert "ternary" in graph.nodes["body.0.conv"].metadata["tna_kernels"]
    torch_result, nir_result = _eval(capsys, tmp_path / "model.pt"), _eval(capsys, tmp_path / "model.nir")
    assert nir_result["accuracy"] == torch_result["accuracy"]
    assert nir_result["spike_rate"]["mean"] == pytest.approx(torch_result["spike_rate"]["mean"], rel=1e-6)
    report = json.loads((run / "report.json").read_text())
    assert nir_result["accuracy"] == pytest.approx(report["test_accuracy"]["base"], abs=1.5 / 360)


def test_spikingjelly_predicts_as_our_model_on_the_whole_test_set(run, tmp_path):
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    assert export_main([str(run), "--out", str(tmp_path / "model.nir"), "--format", "nir"]) == 0
    model, config, _ = deployed_run(run)
    data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps)
    (x, _), = batches(data, False, len(data.test_y), seed=0, epoch=0)
    steps = x.unsqueeze(0).expand(config.timesteps, *x.shape)
    peer = import_from_nir(str(tmp_path / "model.nir"), dt=1e-4, step_mode="m")
    lifs = {}
    for name in ("stem_lif", "body_0_lif", "body_2_lif"):
        getattr(peer, name).register_forward_hook(lambda m, i, o, name=name: lifs.__setitem__(name, o[0]))
    ours = {}
    chain = network_chain(model, config.arch)
    for name in ("stem.lif", "body.0.lif", "body.2.lif"):
        chain.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: ours.__setitem__(name, o))
    with torch.no_grad():
        logits = model(x)
        output, _ = peer(steps)
        chain(steps)
    assert torch.equal(output.mean(0).argmax(1), logits.argmax(1))
    for name, spikes in ours.items():
        assert spikes.sum() > 0 and torch.equal(lifs[name.replace(".", "_")], spikes), name


@pytest.mark.parametrize("arch,shape", [("mlp", (1, 8, 8)), ("vgg11", (3, 32, 32))])
def test_chain_architectures_export_with_the_same_predictions(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, 10, shape, 2, Precision("ternary"), width=0.125)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))):
            bn.bias.uniform_(0.2, 0.6)
    deployed = deployable(model)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(1))
    graph = to_nir(network_chain(deployed, arch), torch.zeros(2, 1, *shape))
    network = from_nir(graph)
    with torch.no_grad():
        want = deployed(x)
        got = network(x.unsqueeze(0).expand(2, *x.shape)).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not any(name.endswith(".bn") for name in graph.nodes)
    if arch == "vgg11":
        assert np.array_equal(graph.nodes["body.12"].kernel_size, [1, 1])


def test_residual_networks_are_refused():
    model = deployable(build_model("resnet19", 10, (3, 32, 32), 2, Precision("ternary"), width=0.0625))
    with pytest.raises(ConfigError, match="resnet19 holds a SpikingBasicBlock"):
        network_chain(model, "resnet19")


def test_cli_errors_are_one_line_and_exit_2(run, tmp_path, capsys):
    cases = [
        (export_main, [str(run), "--out", str(tmp_path / "m.pt"), "--dt", "1e-3"], "apply to --format nir"),
        (export_main, [str(run), "--out", str(tmp_path / "m.nir"), "--format", "nir", "--dt", "-1"], "--dt must be"),
        (export_main, [str(tmp_path / "nothing"), "--out", str(tmp_path / "m.nir"), "--format", "nir"],
         "does not exist"),
        (eval_main, [str(tmp_path / "missing.nir")], "does not exist"),
    ]
    foreign = tmp_path / "foreign.nir"
    nir.write(foreign, to_nir(torch.nn.Sequential(torch.nn.Linear(3, 2)), torch.zeros(1, 1, 3)))
    cases.append((eval_main, [str(foreign)], "not written by tna-export --format nir"))
    corrupt = tmp_path / "corrupt.nir"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    cases.append((eval_main, [str(corrupt)], "not a readable NIR file"))
    for main, args, message in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
