"""tna-explain end to end on a briefly trained digits-canvas model: the files it writes, their content, resuming,
and its errors (exit status 2, one line, no traceback)."""
import csv
import json

import pytest
import torch

pytest.importorskip("captum")
pytest.importorskip("sklearn")

from tna.cli import explain_main  # noqa: E402
from tna.config import TrainConfig  # noqa: E402
from tna.deploy import export_run  # noqa: E402
from tna.trainer import Trainer  # noqa: E402

METHODS = "saliency,integrated_gradients,gradcam,sam"
METRICS = "deletion_zero,insertion_blur,average_drop,pointing_game,relevance_mass,sparsity_gini"
QUICK = ["--n", "8", "--chunk", "4", "--randomization-n", "3", "--ig-steps", "4", "--rise-masks", "16",
         "--no-progress"]


@pytest.fixture(scope="module")
def canvas_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("canvas")
    config = TrainConfig(dataset="digits-canvas", epochs=2, timesteps=2, device="cpu", weights="fp").resolved()
    Trainer(config, folder / "run", progress=False).run()
    export_run(folder / "run", folder / "model.pt")
    return folder


def test_explain_writes_every_output(canvas_model, tmp_path):
    out = tmp_path / "explain"
    assert explain_main([str(canvas_model / "model.pt"), "--methods", METHODS, "--metrics", METRICS,
                         "--out", str(out), *QUICK]) == 0
    result = json.loads((out / "explanations.json").read_text())
    methods = METHODS.split(",") + ["random", "box"]
    metrics = METRICS.split(",")
    assert list(result["metrics"]) == methods and result["n"] == 8 and result["dataset"] == "digits-canvas"
    for by_metric in result["metrics"].values():
        assert list(by_metric) == metrics
        assert all(entry["n"] == 8 and 0 <= entry["mean"] <= 1 for entry in by_metric.values())
    # the box as an explanation is perfect on the box metrics
    assert result["metrics"]["box"]["pointing_game"]["mean"] == 1.0
    assert result["metrics"]["box"]["relevance_mass"]["mean"] == pytest.approx(1.0)
    sanity = result["sanity"]
    assert set(sanity["firing_rates"]) == {"stem.lif", "body.0.lif", "body.2.lif"}
    assert sanity["completeness_gap"]["n"] == 8 and 0 <= sanity["accuracy"] <= 1
    assert sanity["randomization"]["layers"][0] == "classifier"
    assert set(sanity["randomization"]["spearman"]) == set(METHODS.split(","))
    assert set(sanity["manipulations"]) == {"integrated_gradients+blur", "integrated_gradients+clip99",
                                           "integrated_gradients+binary"}
    correlations = result["coherency"]["correlations"]["saliency"]
    assert correlations["metrics"] == metrics and len(correlations["matrix"]) == len(metrics)
    assert set(result["coherency"]["alpha"]) == set(metrics) and result["coherency"]["alpha_units"] == methods
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 * len(methods) * len(metrics)
    for method in methods:
        for metric in metrics:
            values = [float(r["value"]) for r in rows if r["method"] == method and r["metric"] == metric]
            assert len(values) == 8
            assert sum(values) / 8 == pytest.approx(result["metrics"][method][metric]["mean"], abs=1e-5)
    for name in ["examples.png", "randomization.png", "coherency-saliency.png", "report.md"]:
        assert (out / name).stat().st_size > 500, name
    report = (out / "report.md").read_text()
    assert "| deletion_zero |" in report and "Krippendorff" in report and "Cascading randomization" in report


def test_explain_resumes_from_its_cache(canvas_model, tmp_path):
    out = tmp_path / "explain"
    args = [str(canvas_model / "run"), "--methods", "saliency,sam", "--metrics", "deletion_zero,iou",
            "--out", str(out), *QUICK]
    assert explain_main(args) == 0
    cached = {path.name: path.stat().st_mtime_ns for path in (out / "cache").iterdir()}
    assert "maps-saliency-0.pt" in cached and "scores-sam-1.pt" in cached and "randomization.pt" in cached
    first = json.loads((out / "explanations.json").read_text())
    lost = "scores-sam-1.pt"
    (out / "cache" / lost).unlink()  # as if killed before that unit finished
    assert explain_main(args) == 0
    assert json.loads((out / "explanations.json").read_text())["metrics"] == first["metrics"]
    again = {path.name: path.stat().st_mtime_ns for path in (out / "cache").iterdir()}
    assert set(again) == set(cached)
    assert [name for name in cached if again[name] != cached[name]] == [lost]  # only the lost unit was recomputed
    assert explain_main([*args, "--seed", "3"]) == 2  # the folder holds a run with other settings


def test_explain_errors(canvas_model, tmp_path, capsys):
    model = str(canvas_model / "model.pt")
    out = ["--out", str(tmp_path / "x"), *QUICK]
    assert explain_main([model, "--methods", "saliency,lime", *out]) == 2
    assert "unknown method 'lime'" in capsys.readouterr().err
    assert explain_main([model, "--metrics", "deletion_zero,recall", *out]) == 2
    assert "unknown metric 'recall'" in capsys.readouterr().err
    not_a_model = tmp_path / "notes.pt"
    torch.save({"hello": 1}, not_a_model)
    assert explain_main([str(not_a_model), *out]) == 2
    assert "tna-explain: error:" in capsys.readouterr().err
    assert explain_main([str(tmp_path / "missing.pt"), *out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert explain_main([model, "--dataset", "digits", *out]) == 2
    assert "trained on digits-canvas, whose images or classes differ from digits's" in capsys.readouterr().err
    assert explain_main([model, *out, "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    assert explain_main([model, *out, "--n", "100000"]) == 2
    assert "--n must be between 1 and the" in capsys.readouterr().err


def test_box_metrics_need_boxes():
    from tna.config import ConfigError
    from tna.explain import metrics
    from tna.explain.run import metric_list

    everything = metric_list("all", has_boxes=True, dataset="digits-canvas")
    assert everything == list(metrics.METRICS)
    without = metric_list("all", has_boxes=False, dataset="digits")
    assert without == [name for name in everything if not metrics.METRICS[name].needs_box]
    assert "pointing_game" in everything and "pointing_game" not in without
    assert metric_list("deletion_zero", has_boxes=False, dataset="digits") == ["deletion_zero"]
    with pytest.raises(ConfigError, match="digits has no object boxes, so the metrics iou cannot be computed"):
        metric_list("deletion_zero,iou", has_boxes=False, dataset="digits")


def test_explain_without_captum_says_what_to_install(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "captum", None)  # an import of captum now raises ImportError
    assert explain_main(["model.pt", "--no-progress"]) == 2
    assert 'pip install "tna-kernels[explain]"' in capsys.readouterr().err
