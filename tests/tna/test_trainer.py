"""Tests for the TNA trainer: losses, models, end-to-end runs, reports, export, kill-and-resume, DDP, CLI errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tna_kernels.nn as tnn
from tna.cli import eval_main, export_main, train_main
from tna.losses import dml_loss, kd_loss, logit_mse, objective, tna_loss
from tna.models import Precision, build_model, spiking_layers

from .test_data import dvs_parent, write_cifar_batch  # noqa: F401 (dvs_parent is a fixture)

TRAIN = shutil.which("tna-train") or os.path.join(os.path.dirname(sys.executable), "tna-train")
FAST = ["--epochs", "2", "--batch-size", "64", "--no-progress"]


def test_tna_mse_term_matches_a_hand_computation():
    base = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    twin = torch.tensor([[0.0, 2.0, 1.0], [0.5, 1.0, 1.0]])
    labels = torch.tensor([1, 2])
    # per sample, summed over logits: (1 + 0 + 1) and (0 + 4 + 4); averaged over the batch: 5
    assert logit_mse(base, twin).item() == pytest.approx(5.0)
    assert logit_mse(base, twin, "mean").item() == pytest.approx(10.0 / 6)
    expected = F.cross_entropy(base, labels) + F.cross_entropy(twin, labels) + 0.5 * 5.0
    assert tna_loss(base, twin, labels, lam=0.5).item() == pytest.approx(expected.item())


def _two_networks():
    torch.manual_seed(0)
    precision = Precision("ternary")
    return [build_model("convnet", 10, (1, 8, 8), 2, precision, width=0.25) for _ in range(2)]


@pytest.mark.parametrize("method", ["tna", "dml"])
def test_gradients_reach_both_networks(method):
    base, twin = _two_networks()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    objective(method, base(x), twin(x), y).backward()
    for model in (base, twin):
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0


def test_tna_logit_term_moves_each_network_toward_the_other():
    base = torch.randn(3, 5, requires_grad=True)
    twin = torch.randn(3, 5, requires_grad=True)
    logit_mse(base, twin).backward()
    torch.testing.assert_close(base.grad, 2 * (base - twin).detach() / 3)
    torch.testing.assert_close(twin.grad, -base.grad)


def test_kd_and_dml_match_their_formulas():
    s, t, y = torch.randn(4, 6), torch.randn(4, 6), torch.randint(0, 6, (4,))
    p_t = F.softmax(t / 2, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 2, 1))).sum(1).mean()
    expected = 0.3 * F.cross_entropy(s, y) + 0.7 * 4 * kl
    assert kd_loss(s, t, y, temperature=2.0, alpha=0.7).item() == pytest.approx(expected.item(), rel=1e-5)
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 6, requires_grad=True)
    dml_loss(a, b, y).backward()
    a_only = torch.autograd.grad(F.cross_entropy(a, y) + F.kl_div(F.log_softmax(a, 1), F.softmax(b, 1).detach(),
                                                                    reduction="batchmean"), a)[0]
    torch.testing.assert_close(a.grad, a_only)


@pytest.mark.parametrize("arch,shape,is_events", [
    ("convnet", (1, 8, 8), False), ("convnet", (1, 28, 28), False), ("convnet", (3, 32, 32), False),
    ("convnet", (2, 32, 32), True), ("vgg11", (3, 32, 32), False), ("resnet19", (3, 32, 32), False),
    ("vgg11", (2, 32, 32), True), ("mlp", (1, 8, 8), False), ("mlp", (1, 28, 28), False), ("mlp", (2, 16, 16), True),
])
@pytest.mark.parametrize("weights", ["fp", "ternary"])
def test_models_shapes_layers_and_rates(arch, shape, is_events, weights):
    torch.manual_seed(0)
    model = build_model(arch, 7, shape, 3, Precision(weights), width=0.125, is_events=is_events)
    x = torch.rand(2, 3, *shape) if is_events else torch.randn(2, *shape)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    weight_layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear,
                                                                  tnn.TernaryConv2d, tnn.TernaryLinear))]
    ternary = [isinstance(m, (tnn.TernaryConv2d, tnn.TernaryLinear)) for m in weight_layers]
    if weights == "fp":
        assert not any(ternary)
    else:  # first and last full precision, at least one ternary layer between
        assert not ternary[0] and not ternary[-1] and any(ternary)
    for layer in spiking_layers(model).values():
        assert 0 <= layer.rate.item() <= 1 and layer.neurons > 0
    if arch == "convnet":  # the first layer strides only on inputs of 16 pixels and more
        stride = 2 if shape[-1] >= 16 else 1
        assert spiking_layers(model)["stem.lif"].neurons == 4 * (shape[-1] // stride) ** 2  # 32 x 0.125 channels


def test_quantize_first_last_and_wrong_input():
    model = build_model("convnet", 10, (1, 8, 8), 2, Precision("ternary", quantize_first_last=True))
    kinds = [type(m) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear,
                                                                 tnn.TernaryConv2d, tnn.TernaryLinear))]
    assert kinds[0] is tnn.TernaryConv2d and kinds[-1] is tnn.TernaryLinear
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 2, 1, 8, 8))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("lenet", 10, (1, 8, 8), 2, Precision())


def _report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def test_default_dataset_end_to_end_with_export_and_eval(tmp_path, capsys):
    out = tmp_path / "runs"
    assert train_main(["--out", str(out), "--timesteps", "2", *FAST]) == 0
    run = out / "tna-ternary-seed0"
    report = _report(run)
    for key in ("method", "dataset", "arch", "weights", "timesteps", "seed", "epochs", "test_accuracy",
                "spike_rate", "model_bytes", "wall_time_s"):
        assert key in report
    assert (report["method"], report["dataset"], report["weights"], report["epochs"]) == ("tna", "digits",
                                                                                            "ternary", 2)
    assert 0 < report["val_accuracy"]["base"] <= 1 and report["val_accuracy"]["twin"] is not None
    assert 0.3 < report["test_accuracy"]["base"] <= 1 and report["test_accuracy"]["twin"] is not None
    assert set(report["spike_rate"]["per_layer"]) == {"stem.lif", "body.0.lif", "body.2.lif"}
    assert report["model_bytes"]["fp32"] > 4 * report["model_bytes"]["deployed"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "test accuracy (base)" in (run / "report.md").read_text()
    for png in ("curves.png", "spike_rates.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"

    model_file = tmp_path / "model.pt"
    assert export_main([str(run), "--out", str(model_file)]) == 0
    capsys.readouterr()
    assert eval_main([str(model_file), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(report["test_accuracy"]["base"], abs=1.5 / 360)
    state = torch.load(model_file, weights_only=True)
    assert not any(k.endswith(".weight") and v.dtype == torch.float32 and k.startswith("body.0.conv")
                   for k, v in state["model"].items())
    assert any(k.endswith("packed") for k in state["model"])


def _tiny_cifar(tmp_path, hundred: bool):
    rng = np.random.default_rng(0)
    classes = 100 if hundred else 10
    folder = tmp_path / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir()
    images = rng.integers(0, 256, size=(40, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, classes, 40)
    key = b"fine_labels" if hundred else b"labels"
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        part = slice(0, 40) if name in ("train", "test", "test_batch") else slice(8 * (i), 8 * (i + 1))
        write_cifar_batch(folder / name, images[part], labels[part], key)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_end_to_end_on_tiny_files(tmp_path, capsys, dataset):
    _tiny_cifar(tmp_path, dataset == "cifar100")
    out = tmp_path / "runs"
    args = ["--dataset", dataset, "--data-dir", str(tmp_path), "--arch", "vgg11", "--timesteps", "1",
            "--epochs", "1", "--batch-size", "20", "--method", "baseline", "--weights", "fp", "--out", str(out),
            "--no-progress"]
    assert train_main(args) == 0
    report = _report(out / "baseline-fp-seed0")
    assert report["dataset"] == dataset and report["test_accuracy"]["twin"] is None
    assert len(report["spike_rate"]["per_layer"]) == 8
    err = capsys.readouterr().err  # a large architecture on the CPU: the epoch time is said once, up front
    assert err.count("vgg11 on the CPU: one epoch (2 steps of 20 samples) will take about") == 1
    assert "--arch convnet" in err


def test_cifar10dvs_end_to_end_on_tiny_recordings(dvs_parent):
    data_dir, _ = dvs_parent
    out = data_dir / "runs"
    args = ["--dataset", "cifar10dvs", "--data-dir", str(data_dir), "--arch", "convnet", "--timesteps", "2",
            "--epochs", "1", "--batch-size", "30", "--twin-width", "0.5", "--out", str(out), "--no-progress"]
    assert train_main(args) == 0
    report = _report(out / "tna-ternary-seed0")
    assert (report["dataset"], report["arch"], report["timesteps"]) == ("cifar10dvs", "convnet", 2)
    assert report["test_accuracy"]["twin"] is not None and len(report["spike_rate"]["per_layer"]) == 3


def test_several_methods_and_seeds_write_a_comparison(tmp_path):
    out = tmp_path / "runs"
    assert train_main(["--method", "baseline,tna", "--seeds", "0,1", "--epochs", "1", "--timesteps", "1",
                       "--batch-size", "256", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "comparison.json").read_text())
    assert set(summary) == {"baseline (ternary)", "tna (ternary)"}
    assert all(row["seeds"] == [0, 1] for row in summary.values())
    assert "± " in (out / "comparison.md").read_text()
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_lambda_sweep_with_validation_choice_and_kd_teacher_of_the_same_seed(tmp_path):
    out = tmp_path / "sweep"
    assert train_main(["--method", "baseline,kd,tna", "--tna-lambda", "0.05,0.5", "--seeds", "0,1", "--epochs",
                       "1", "--timesteps", "1", "--batch-size", "256", "--val-fraction", "0.2", "--out", str(out),
                       "--no-progress"]) == 0
    names = list(json.loads((out / "sweep.json").read_text())["runs"])
    teachers = ["baseline-fp-seed0", "baseline-fp-seed1"]
    assert set(names) == {"baseline-ternary-seed0", "baseline-ternary-seed1", "kd-ternary-seed0",
                          "kd-ternary-seed1", "tna-ternary-lambda0.05-seed0", "tna-ternary-lambda0.05-seed1",
                          "tna-ternary-lambda0.5-seed0", "tna-ternary-lambda0.5-seed1", *teachers}
    assert max(names.index(t) for t in teachers) < names.index("kd-ternary-seed0")
    for seed in (0, 1):
        kd = _report(out / f"kd-ternary-seed{seed}")
        assert kd["config"]["teacher"] == str(out / f"baseline-fp-seed{seed}")
        assert _report(out / f"baseline-fp-seed{seed}")["weights"] == "fp"

    sweep = json.loads((out / "lambda_sweep.json").read_text())["ternary"]
    means = {}
    for row in sweep["runs"]:
        vals = [_report(out / f"tna-ternary-lambda{row['lambda']:g}-seed{s}")["val_accuracy"]["base"] for s in (0, 1)]
        assert row["val_mean"] == pytest.approx(sum(vals) / 2)
        means[row["lambda"]] = row["val_mean"]
    assert sweep["best_lambda_by_validation"] == max(means, key=means.get)
    assert (out / "lambda_sweep.png").read_bytes()[:4] == b"\x89PNG"

    summary = json.loads((out / "comparison.json").read_text())
    assert summary["tna (ternary, lambda 0.5)"]["reference"] == "baseline (ternary)"
    assert summary["baseline (fp)"]["reference"] == "baseline (fp)"
    expected = [_report(out / f"tna-ternary-lambda0.5-seed{s}")["test_accuracy"]["base"]
                - _report(out / f"baseline-ternary-seed{s}")["test_accuracy"]["base"] for s in (0, 1)]
    assert summary["tna (ternary, lambda 0.5)"]["difference"]["mean"] == pytest.approx(sum(expected) / 2)
    assert all(row["epoch_time_s"] > 0 for row in summary.values())
    assert "Intervals that exclude zero" in (out / "comparison.md").read_text()


def test_kd_with_a_teacher_run_and_yaml_config(tmp_path):
    teacher = tmp_path / "teacher"
    assert train_main(["--method", "baseline", "--weights", "fp", "--epochs", "1", "--timesteps", "1",
                       "--out", str(teacher), "--no-progress"]) == 0
    config = tmp_path / "kd.yaml"
    config.write_text(f"method: kd\nteacher: {teacher / 'baseline-fp-seed0'}\nkd-temperature: 2\nepochs: 1\n"
                      "timesteps: 1\n")
    out = tmp_path / "student"
    assert train_main(["--config", str(config), "--out", str(out), "--no-progress"]) == 0
    report = _report(out / "kd-ternary-seed0")
    assert report["config"]["kd_temperature"] == 2 and report["method"] == "kd"


def _final(run_dir):
    report = _report(run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return report["test_accuracy"], report["spike_rate"]["mean"], [r["train_loss"] for r in lines]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    args = [TRAIN, "--epochs", "3", "--timesteps", "2", "--batch-size", "64", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args + ["--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True)

    out = tmp_path / "killed"
    run = out / "tna-ternary-seed0"
    process = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "report.json").exists(), "the run finished before it could be killed"
    subprocess.run([TRAIN, "--resume", str(out), "--no-progress"], check=True, env=env, capture_output=True)
    assert _final(run) == _final(tmp_path / "whole" / "tna-ternary-seed0")


def test_two_process_distributed_run(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAIN,
               "--epochs", "2", "--timesteps", "2", "--batch-size", "32", "--out", str(out), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = _report(out / "tna-ternary-seed0")
    assert report["world_size"] == 2 and 0.3 < report["test_accuracy"]["base"] <= 1
    assert result.stderr.count("base test accuracy") == 1  # only rank 0 reports


@pytest.mark.parametrize("args,message", [
    (["--dataset", "mnist"], "unknown dataset"),
    (["--arch", "lenet"], "--arch must be one of"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}"], "cifar-10-python.tar.gz"),
    (["--config", "{tmp}/missing.yaml"], "does not exist"),
    (["--resume", "{tmp}"], "no config.json"),
    (["--method", "kd", "--teacher", "{tmp}/nothing.pt"], "does not exist"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert train_main(args + ["--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_yaml_corrupt_checkpoint_and_wrong_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    assert train_main(["--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epoch: 3\n")
    assert train_main(["--config", str(unknown)]) == 2
    assert "unknown setting" in capsys.readouterr().err

    out = tmp_path / "runs"
    assert train_main(["--epochs", "1", "--timesteps", "1", "--out", str(out), "--no-progress"]) == 0
    run = out / "tna-ternary-seed0"
    (run / "report.json").unlink()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert train_main(["--resume", str(run)]) == 2
    assert "corrupt" in capsys.readouterr().err
    torch.save({"format": 99}, run / "checkpoint.pt")
    assert train_main(["--resume", str(run)]) == 2
    assert "format 99" in capsys.readouterr().err
    assert export_main([str(run), "--out", str(tmp_path / "m.pt")]) == 2
    torch.save({"format": 1, "kind": "something"}, tmp_path / "other.pt")
    assert eval_main([str(tmp_path / "other.pt")]) == 2
    assert "not a deployed model" in capsys.readouterr().err


def test_bf16_autocast_run_learns(tmp_path):
    out = tmp_path / "amp"
    assert train_main(["--amp", "bf16", "--timesteps", "2", "--out", str(out), *FAST]) == 0
    report = _report(out / "tna-ternary-seed0")
    assert report["config"]["amp"] == "bf16" and report["test_accuracy"]["base"] > 0.3
