"""Tests for the spike-count penalty: schedules, layer weights, gradients through the kernels, reports, effect."""
import json

import pytest
import torch

from tna.cli import train_main
from tna.models import Precision, build_model, spiking_layers
from tna.sparsity import beta_at, layer_weights, measure_activity, penalty


@pytest.mark.parametrize("schedule,epoch,expected", [
    ("constant", 0, 0.0), ("constant", 2, 2.0), ("constant", 9, 2.0),        # delay 2
    ("linear", 1, 0.0), ("linear", 2, 0.5), ("linear", 9, 2.0), ("linear", 5, 0.5 + 1.5 * 3 / 7),
    ("anneal", 2, 0.5), ("anneal", 9, 2.0), ("anneal", 5, 0.5 * 4 ** (3 / 7)),
])
def test_schedule_values(schedule, epoch, expected):
    assert beta_at(epoch, 10, schedule, beta0=0.5, beta1=2.0, delay=2) == pytest.approx(expected)


def test_schedule_errors():
    with pytest.raises(ValueError, match="beta0 > 0"):
        beta_at(3, 10, "anneal", 0.0, 1.0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        beta_at(3, 10, "cosine", 0.0, 1.0)


def test_layer_weights_sum_to_one_and_follow_their_rule():
    neurons, fanout = {"a": 100, "b": 300}, {"a": 9.0, "b": 1.0}
    assert layer_weights("uniform", neurons, fanout) == {"a": 0.5, "b": 0.5}
    assert layer_weights("neurons", neurons, fanout) == {"a": 0.25, "b": 0.75}
    assert layer_weights("fanout", neurons, fanout) == pytest.approx({"a": 0.75, "b": 0.25})


def _model():
    torch.manual_seed(0)
    return build_model("convnet", 10, (1, 8, 8), 3, Precision("ternary"))


def test_activity_counts_match_a_hand_count():
    model = _model().eval()
    x = torch.randn(4, 1, 8, 8) * 3
    activity = measure_activity(model, x, timesteps=3)
    layers = spiking_layers(model)
    # the stem's spikes feed conv 32->64 (3x3, same padding): 64 * 9 synapses per spike except at the border;
    # count exactly from the spike maps instead, through an all-ones conv
    spikes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: spikes.__setitem__(n, o)) for n, m in layers.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    ones = torch.ones(1, 1, 3, 3)
    def synops(s, out_channels):  # each spike reaches out_channels x (valid 3x3 neighbours)
        folded = s.flatten(0, 1).sum(1, keepdim=True)
        return out_channels * torch.nn.functional.conv2d(folded, ones, padding=1).sum().item() / 4
    pooled = torch.nn.functional.max_pool2d(spikes["body.0.lif"].flatten(0, 1), 2)
    expected = synops(spikes["stem.lif"], 64) + 64 * torch.nn.functional.conv2d(
        pooled.sum(1, keepdim=True), ones, padding=1).sum().item() / 4
    assert activity.synops == pytest.approx(expected, rel=1e-6)
    total_spikes = sum(s.sum().item() for s in spikes.values()) / 4
    assert activity.spikes_per_sample == pytest.approx(total_spikes, rel=1e-5)
    assert activity.dense_macs == pytest.approx(32 * 9 * 64 + 64 * 32 * 9 * 64 + 64 * 64 * 9 * 16 + 256 * 10)
    assert activity.energy_uj() == pytest.approx((activity.synops * 0.9 + activity.macs * 4.6) * 1e-6)


def test_penalty_gradient_through_kernels_equals_reference(monkeypatch):
    x = torch.randn(4, 1, 8, 8) * 3
    grads = {}
    for backend in ("cpp", "torch"):
        monkeypatch.setenv("TNA_BACKEND", backend)
        model = _model()
        model(x)
        weights = layer_weights("neurons", {n: l.neurons for n, l in spiking_layers(model).items()}, {})
        penalty(model, weights).backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["cpp"].keys() == grads["torch"].keys() and len(grads["cpp"]) > 0
    for name in grads["cpp"]:
        torch.testing.assert_close(grads["cpp"][name], grads["torch"][name], rtol=1e-4, atol=1e-6)


def test_penalty_lowers_the_spike_rate_and_the_sweep_writes_a_pareto_plot(tmp_path):
    out = tmp_path / "sweep"
    assert train_main(["--method", "baseline", "--sparsity-weight", "0,3", "--sparsity-layer-weights", "fanout",
                       "--epochs", "2", "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    points = {p["beta"]: p for p in json.loads((out / "pareto.json").read_text())}
    assert points[3.0]["spike_rate"] < 0.8 * points[0.0]["spike_rate"]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "baseline-ternary-beta3-seed0" / "report.json").read_text())
    for key in ("synops_per_sample", "energy_uj_per_sample", "spikes_per_sample", "ann_energy_uj_per_sample"):
        assert report[key] > 0
    assert report["spike_penalty"]["layer_weights"] and sum(report["spike_penalty"]["layer_weights"].values()) == pytest.approx(1)
    lines = (out / "baseline-ternary-beta3-seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["sparsity_beta"] for line in lines] == [3.0, 3.0]


def test_bad_sparsity_settings(tmp_path, capsys):
    assert train_main(["--sparsity-weight", "1", "--sparsity-schedule", "anneal", "--out", str(tmp_path)]) == 2
    assert "--sparsity-start > 0" in capsys.readouterr().err
    assert train_main(["--sparsity-weight", "-1", "--out", str(tmp_path)]) == 2
    assert "must be >= 0" in capsys.readouterr().err
