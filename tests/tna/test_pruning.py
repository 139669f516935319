"""Tests for lottery-ticket pruning: importance metrics, pruning steps, masks in training, ternary layers with
masks, ticket overlap, pruned SynOps, and ``tna-prune`` end to end (resume, export, eval, errors)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tna_kernels.nn as tnn
from tna.checkpoint import load_checkpoint
from tna.cli import eval_main, export_main, prune_main
from tna.pruning import (attach_masks, full_masks, importance, layer_sparsity, mask_gradients_, masks_of, overlap,
                         prunable_layers, prune_step, zero_pruned_)
from tna.sparsity import _synops
from tna.trainer import Trainer

QUICK = ["--arch", "mlp", "--epochs", "2", "--timesteps", "2", "--batch-size", "64", "--train-fraction", "0.5",
         "--no-progress"]
SEARCH = QUICK + ["--method", "baseline", "--rounds", "2", "--importance", "magnitude,l1"]


def test_importance_metrics_match_a_hand_computation():
    weight = torch.tensor([[1.0, -2.0, 0.5], [-4.0, 0.0, 3.0]])
    keep = torch.tensor([[True, True, True], [True, False, True]])
    a = torch.tensor([1.0, 2.0, 0.5, 4.0, 3.0], dtype=torch.float64)  # the kept |w| in flat order
    expected = {
        "magnitude": a,
        "l1": a / 10.5,
        "l2": a ** 2 / (1 + 4 + 0.25 + 16 + 9),
        "softmax": torch.exp(a) / torch.exp(a).sum(),
        "minmax": (a - 0.5) / 3.5,
    }
    for metric, values in expected.items():
        score = importance(weight, keep, metric)
        torch.testing.assert_close(score[keep], values, msg=metric)
        assert score[~keep].eq(0).all()
    with pytest.raises(ValueError, match="importance"):
        importance(weight, keep, "random")


def test_global_pooling_against_layer_scope_and_metric_normalization():
    # layer "a" holds small weights, layer "b" large ones
    weights = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    masks = {name: torch.ones(4, dtype=torch.bool) for name in weights}
    by_magnitude = prune_step(weights, masks, "magnitude", 0.25)  # 2 of 8: both from "a"
    assert by_magnitude["a"].tolist() == [False, False, True, True] and by_magnitude["b"].all()
    # l1 divides by the layer's sum: both layers have the scores 0.1, 0.2, 0.3, 0.4, ties go to the first layer
    by_l1 = prune_step(weights, masks, "l1", 0.375)  # 3 of 8: 0.1 (a), 0.1 (b), 0.2 (a)
    assert by_l1["a"].tolist() == [False, False, True, True] and by_l1["b"].tolist() == [False, True, True, True]
    per_layer = prune_step(weights, masks, "magnitude", 0.25, scope="layer")  # 1 of 4 in each
    assert per_layer["a"].tolist() == [False, True, True, True] and per_layer["b"].tolist() == [False, True, True, True]
    # pruned weights are never chosen again, and the input masks are not modified
    again = prune_step(weights, by_magnitude, "magnitude", 0.5)  # 3 of the 6 kept
    assert again["a"].sum() == 0 and again["b"].tolist() == [False, True, True, True]
    assert by_magnitude["a"].tolist() == [False, False, True, True]


def test_rounds_reach_one_minus_point_eight_to_the_n():
    torch.manual_seed(0)
    weights = {"conv": torch.randn(16, 8, 3, 3), "fc1": torch.randn(100, 64), "fc2": torch.randn(10, 100)}
    layers = {name: nn.Linear(1, 1) for name in weights}
    for layer, w in zip(layers.values(), weights.values()):
        layer.weight = nn.Parameter(w)
    masks = full_masks(layers)
    for n in range(1, 16):
        masks = prune_step(weights, masks, "l2", 0.2)
        sparsity, per_layer = layer_sparsity(masks, layers)
        assert sparsity == pytest.approx(1 - 0.8 ** n, abs=2e-3)
        assert set(per_layer) == set(weights)


def test_overlap_of_hand_made_masks():
    a = {"x": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "y": torch.tensor([1, 0], dtype=torch.bool)}
    b = {"x": torch.tensor([1, 0, 1, 0], dtype=torch.bool), "y": torch.tensor([1, 0], dtype=torch.bool)}
    result = overlap(a, b)
    assert result["per_layer"] == {"x": pytest.approx(1 / 3), "y": 1.0}
    assert result["overall"] == pytest.approx(2 / 4)  # shared {x0, y0} of the union {x0, x1, x2, y0}
    empty = {"x": torch.zeros(3, dtype=torch.bool)}
    assert overlap(empty, empty)["overall"] == 1.0


def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), tnn.TernaryLinear(4 * 4 * 4, 8), nn.ReLU(),
                         nn.Linear(8, 3))


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
], ids=["sgd-momentum-decay", "adamw"])
def test_masked_weights_stay_exactly_zero_through_optimizer_steps(make_optimizer):
    model = _small_model()
    optimizer = make_optimizer(model.parameters())
    x, y = torch.randn(5, 2, 6, 6), torch.randint(0, 3, (5,))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # momentum and Adam moments now hold values for every weight
    layers = prunable_layers(model)
    masks = prune_step({n: m.weight for n, m in layers.items()}, full_masks(layers), "magnitude", 0.5)
    attach_masks(model, masks)
    before = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        mask_gradients_(model)
        for name, layer in layers.items():
            assert layer.weight.grad[~masks[name]].eq(0).all()
        optimizer.step()
        zero_pruned_(model)
    for name, layer in layers.items():
        assert layer.weight[~masks[name]].eq(0).all()
        assert not torch.equal(layer.weight[masks[name]], before[name][masks[name]])  # the kept ones learn
    assert set(masks_of(model)) == set(layers)


def test_prunable_layers_with_and_without_the_first_and_last():
    model = _small_model()
    assert list(prunable_layers(model)) == ["0", "2", "4"]
    assert list(prunable_layers(model, first_last=False)) == ["2"]


@pytest.mark.parametrize("quantizer", ["twn", "absmean", "ttq"])
def test_ternary_quantizer_takes_its_statistics_over_the_kept_weights(quantizer):
    torch.manual_seed(1)
    layer = tnn.TernaryLinear(12, 4, quantizer=quantizer)
    mask = torch.rand(4, 12) > 0.6
    mask[0] = False  # a whole output channel pruned
    layer.prune_(mask)
    codes = layer.codes()
    assert codes[~mask].eq(0).all() and codes[0].eq(0).all()
    w = layer.weight.detach()
    kept_mean = (w.abs() * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    if quantizer == "twn":
        expected = torch.sign(w) * (w.abs() > 0.7 * kept_mean) * mask
        torch.testing.assert_close(codes, expected.to(torch.int8))
        dense_delta = 0.7 * w.abs().mean(1, keepdim=True)  # what the zeros would have given: lower thresholds
        assert (dense_delta[1:] < 0.7 * kept_mean[1:]).all()
    if quantizer == "absmean":
        expected = torch.clamp(torch.round(w / (kept_mean + 1e-8)), -1, 1) * mask
        torch.testing.assert_close(codes, expected.to(torch.int8))
    x = torch.randn(3, 12)
    y = layer(x)
    frozen = layer.freeze()
    assert frozen.weight_mask is None
    torch.testing.assert_close(frozen(x), y)
    torch.testing.assert_close(frozen.codes(), codes)


def test_pruned_connections_carry_no_synops():
    linear = nn.Linear(4, 3)
    spikes = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    assert _synops(linear, spikes) == 4 * 3
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    attach_masks(linear, {"": mask})
    # row 0: spikes at 0, 2, 3 reach output 0 through inputs 0 and 2, output 2 through all three; row 1: input 1
    assert _synops(linear, spikes) == (2 + 0 + 3) + (0 + 0 + 1)
    conv = nn.Conv2d(2, 2, 3, padding=1)
    conv_mask = torch.rand(2, 2, 3, 3) > 0.5
    x = (torch.rand(3, 2, 5, 5) > 0.5).float()
    attach_masks(conv, {"": conv_mask})
    expected = sum(float(x[n, c, i, j]) * float(conv_mask[o, c, ki, kj])
                   for n in range(3) for c in range(2) for o in range(2) for i in range(5) for j in range(5)
                   for ki in range(3) for kj in range(3) if 0 <= i - ki + 1 < 5 and 0 <= j - kj + 1 < 5)
    assert _synops(conv, x) == pytest.approx(expected)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """One finished search: baseline, fp spiking LeNet on half the digits, magnitude and l1, 2 rounds."""
    out = tmp_path_factory.mktemp("prune") / "search"
    assert prune_main(SEARCH + ["--out", str(out)]) == 0
    return out


def _final_state(run_dir):
    state = load_checkpoint(run_dir / "checkpoint.pt")
    report = json.loads((run_dir / "report.json").read_text())
    return state["base"], report["test_accuracy"], report["val_accuracy"], report["sparsity"]


def test_tna_prune_end_to_end_with_export_and_eval(search, tmp_path, capsys):
    out = search
    for metric in ("magnitude", "l1"):
        sparsities = []
        for k in (1, 2):
            run = out / metric / f"round{k}"
            report = json.loads((run / "report.json").read_text())
            masks = torch.load(run / "masks.pt", weights_only=True)
            assert set(masks["base"]) == {"stem.linear", "body.linear", "classifier"}
            assert report["sparsity"] == pytest.approx(1 - 0.8 ** k, abs=2e-3)
            assert report["ticket"]["importance"] == metric and report["ticket"]["round"] == k
            state = load_checkpoint(run / "checkpoint.pt")["base"]
            for layer, mask in masks["base"].items():  # pruned weights stayed zero through training
                assert state[f"{layer}.weight"][~mask].eq(0).all()
            assert report["sparsity_per_layer"]["body.linear"] > 0
            sparsities.append(report["sparsity"])
            assert (out / metric / "accuracy_sparsity.png").stat().st_size > 0
            assert (out / metric / "layers.png").stat().st_size > 0
        assert sparsities[0] < sparsities[1]
    dense = json.loads((out / "round0" / "report.json").read_text())
    pruned = json.loads((out / "magnitude" / "round2" / "report.json").read_text())
    assert dense["sparsity"] == 0 and pruned["synops_per_sample"] < dense["synops_per_sample"]
    assert pruned["nonzero_weights"] < dense["nonzero_weights"]
    overlap_file = json.loads((out / "overlap.json").read_text())
    shared = overlap_file["rounds"]["1"]["pairs"]["magnitude|l1"]
    assert 0 < shared["overall"] <= 1 and set(shared["per_layer"]) == {"stem.linear", "body.linear", "classifier"}
    assert (out / "overlap.png").stat().st_size > 0 and (out / "summary.md").read_text().count("| magnitude |") == 3

    # the rewind point is the initialization: round 1 starts from it, with its masks applied
    rewind = load_checkpoint(out / "rewind.pt", "rewind point")
    masks = torch.load(out / "magnitude" / "round1" / "masks.pt", weights_only=True)["base"]
    from tna.config import TrainConfig
    config = TrainConfig.from_dict(json.loads((out / "round0" / "config.json").read_text()))
    from tna.pruning import PrunedRun
    trainer = Trainer(config, tmp_path / "unused", progress=False,
                      pruned=PrunedRun(list(masks), {"base": masks}, {"base": rewind["base"]}))
    for layer, mask in masks.items():
        weight = trainer.base.get_submodule(layer).weight.detach()
        assert torch.equal(weight, rewind["base"][f"{layer}.weight"] * mask)

    model_file = tmp_path / "ticket.pt"
    assert export_main([str(out / "magnitude" / "round2"), "--out", str(model_file)]) == 0
    assert "non-zero" in capsys.readouterr().out
    assert eval_main([str(model_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(pruned["test_accuracy"]["base"], abs=1e-9)


def test_ternary_tna_search_prunes_the_base_and_optionally_the_twin(tmp_path):
    args = QUICK + ["--method", "tna", "--weights", "ternary", "--rounds", "1", "--importance", "l2",
                    "--rewind-epoch", "1"]
    out = tmp_path / "twin-dense"
    assert prune_main(args + ["--out", str(out)]) == 0
    masks = torch.load(out / "l2" / "round1" / "masks.pt", weights_only=True)
    assert "twin" not in masks
    assert load_checkpoint(out / "rewind.pt", "rewind point")["epoch"] == 1
    round1 = load_checkpoint(out / "l2" / "round1" / "checkpoint.pt")
    assert not any(key.endswith("weight_mask") for key in round1["twin"])
    metrics = [json.loads(line) for line in (out / "l2" / "round1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [2]  # trained from the rewind epoch to the end
    out = tmp_path / "twin-pruned"
    assert prune_main(args + ["--out", str(out), "--prune-twin", "--no-prune-first-last"]) == 0
    masks = torch.load(out / "l2" / "round1" / "masks.pt", weights_only=True)
    assert set(masks["base"]) == {"body.linear"} and set(masks["twin"]) == {"body.linear"}
    report = json.loads((out / "l2" / "round1" / "report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.2, abs=1e-3) and list(report["sparsity_per_layer"]) == ["body.linear"]


class _Killed(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("where", ["inside a round", "between rounds"])
def test_killed_search_resumes_to_the_same_masks_and_metrics(search, tmp_path, monkeypatch, capsys, where):
    whole = search
    out = tmp_path / "killed"
    if where == "inside a round":  # the second epoch of magnitude's round 2: its first epoch is checkpointed
        original = Trainer._train_epoch

        def train_epoch(self, epoch):
            if "round2" in str(self.run_dir) and "magnitude" in str(self.run_dir) and epoch == 1:
                raise _Killed()
            return original(self, epoch)
        monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    else:  # after magnitude's round 1 finished, before round 2's masks
        from tna import lottery
        original = lottery.TicketSearch._masks

        def masks(self, metric, k):
            if k == 2 and metric == "magnitude":
                raise _Killed()
            return original(self, metric, k)
        monkeypatch.setattr(lottery.TicketSearch, "_masks", masks)
    assert prune_main(SEARCH + ["--out", str(out)]) == 130
    assert "tna-prune --resume" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    monkeypatch.undo()
    assert prune_main(["--resume", str(out), "--no-progress"]) == 0
    for metric in ("magnitude", "l1"):
        for k in (1, 2):
            run = f"{metric}/round{k}"
            a = torch.load(whole / run / "masks.pt", weights_only=True)
            b = torch.load(out / run / "masks.pt", weights_only=True)
            assert all(torch.equal(a["base"][n], b["base"][n]) for n in a["base"])
            state_a, *metrics_a = _final_state(whole / run)
            state_b, *metrics_b = _final_state(out / run)
            assert metrics_a == metrics_b
            assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)


@pytest.mark.parametrize("args,message", [
    (["--importance", "magnitude,random"], "--importance"),
    (["--rounds", "0"], "--rounds"),
    (["--prune-rate", "1.5"], "--prune-rate"),
    (["--rewind-epoch", "2"], "--rewind-epoch"),
    (["--method", "baseline,tna"], "one value of --method"),
    (["--method", "baseline", "--prune-twin"], "--prune-twin"),
    (["--resume", "nowhere"], "prune.json"),
])
def test_tna_prune_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = prune_main(QUICK + ["--out", str(tmp_path / "x")] + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
