"""benchmarks/bench_deploy.py: the float version of a deployed network, threshold calibration, and a --quick run
(the JSON's structure, ternary and float versions agreeing, the report section and plot). No timing is checked."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_deploy  # noqa: E402
import report  # noqa: E402
import tna_kernels.nn as tnn  # noqa: E402
from tna_kernels.ops.ternary.format import dequantize, unpack_ternary  # noqa: E402

SMALL = (3, 8, 8)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The JSON path and result of ``bench_deploy.py --quick`` (one thread: the run checks, it does not time)."""
    out = tmp_path_factory.mktemp("deploy") / "deploy_cpu-test.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_deploy.py"), "--quick", "--out", str(out)],
                   env=env, check=True, capture_output=True, text=True)
    return out, json.loads(out.read_text())


def test_float_version_holds_the_dequantized_weights():
    torch.manual_seed(0)
    ternary = bench_deploy.random_network("convnet", SMALL)
    floating = bench_deploy.float_version(ternary)
    ternary_layers = {name: m for name, m in ternary.named_modules()
                      if isinstance(m, (tnn.TernaryConv2d, tnn.TernaryLinear))}
    assert len(ternary_layers) == 4
    for name, layer in ternary_layers.items():
        dense = floating.get_submodule(name)
        assert type(dense) is (nn.Conv2d if isinstance(layer, tnn.TernaryConv2d) else nn.Linear)
        expected = dequantize(unpack_ternary(layer.packed, dense.weight.shape), layer.scale)
        assert torch.equal(dense.weight, expected)
        assert (layer.bias is None) == (dense.bias is None)
    assert not any(isinstance(m, (tnn.TernaryConv2d, tnn.TernaryLinear)) for m in floating.modules())
    assert set(bench_deploy.spiking_layers(floating)) == set(bench_deploy.spiking_layers(ternary))


def test_ternary_and_float_versions_agree_at_calibrated_rates():
    torch.manual_seed(0)
    ternary = bench_deploy.random_network("convnet", SMALL)
    floating = bench_deploy.float_version(ternary)
    generator = torch.Generator().manual_seed(0)
    calibration = bench_deploy.random_images(32, generator, SMALL)
    for rate in (0.05, 0.2):
        thresholds = bench_deploy.calibrate(ternary, calibration, rate)
        for name, layer in bench_deploy.spiking_layers(ternary).items():
            assert layer.v_threshold == thresholds[name]
            assert abs(layer.rate.item() - rate) <= 0.1 * rate
        bench_deploy.set_thresholds(floating, thresholds)
        agreement = bench_deploy.compare(ternary, floating, bench_deploy.random_images(16, generator, SMALL))
        assert agreement["differing_spikes"] == 0 and agreement["spikes_compared"] > 0
        assert agreement["max_logit_difference"] == 0 and agreement["max_logit"] > 0
        assert agreement["layer_rates"] == agreement["float_layer_rates"]
        assert agreement["fused_logit_difference"] == 0
        spike_inputs = [name for name, _ in bench_deploy.spike_input_layers(ternary)]
        assert spike_inputs and list(agreement["input_densities"]) == spike_inputs
        assert all(0 < density <= 1 for density in agreement["input_densities"].values())
        bench_deploy.check_agreement("convnet", agreement, exact=True)


def test_check_agreement_refuses_differences():
    agreement = dict(max_logit_difference=0.0, max_logit=1.0, differing_spikes=1, spikes_compared=10**6,
                     fused_logit_difference=0.0)
    bench_deploy.check_agreement("close", agreement, exact=False)
    with pytest.raises(AssertionError, match="fused conv blocks differ"):
        bench_deploy.check_agreement("fused", dict(agreement, fused_logit_difference=1e-7), exact=False)
    with pytest.raises(AssertionError, match="1 spikes"):
        bench_deploy.check_agreement("exact", agreement, exact=True)
    with pytest.raises(AssertionError, match="logits by 1.00e-02"):
        bench_deploy.check_agreement("far", dict(agreement, max_logit_difference=0.01), exact=False)


def test_quick_run_result(quick_run):
    out, result = quick_run
    for key in ("device", "versions", "commit", "date", "threads", "malloc"):
        assert result[key]
    assert result["benchmark"] == "deploy" and result["quick"] is True
    settings = result["settings"]
    assert settings["timesteps"] == bench_deploy.TIMESTEPS
    expected = {("digits", None, batch, impl) for batch in settings["batches"]
                for impl in (bench_deploy.TERNARY, bench_deploy.FLOAT)}
    expected |= {("vgg11", rate, batch, impl) for rate in settings["rates"] for batch in settings["batches"]
                 for impl in (bench_deploy.TERNARY, bench_deploy.FLOAT)}
    rows = result["rows"]
    assert {(r["model"], r["target_rate"], r["batch"], r["impl"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        assert r["ms"] > 0 and r["samples_per_s"] == pytest.approx(r["batch"] / r["ms"] * 1e3)
        assert 0 <= r["spike_rate"] <= 1
        compared = r["agreement"]
        assert compared["spikes_compared"] > 0
        if r["model"] == "vgg11":
            assert compared["differing_spikes"] == 0 and compared["max_logit_difference"] == 0
            assert compared["float_layer_rates"] == r["layer_rates"]
        else:
            assert compared["max_logit_difference"] <= bench_deploy.LOGIT_TOLERANCE * compared["max_logit"]
            assert compared["float_layer_rates"] == pytest.approx(r["layer_rates"], abs=bench_deploy.SPIKE_TOLERANCE)
    vgg = result["models"]["vgg11"]
    assert [c["target_rate"] for c in vgg["calibrations"]] == settings["rates"]
    assert vgg["layout_cached"]["layers"] == vgg["layout_cached"]["of"] == 7
    largest = max(settings["batches"])
    for calibration in vgg["calibrations"]:
        rate = calibration["target_rate"]
        assert set(calibration["thresholds"]) == set(calibration["calibration_rates"])
        assert all(abs(found - rate) <= 0.1 * rate for found in calibration["calibration_rates"].values())
        row = next(r for r in rows if r["model"] == "vgg11" and r["target_rate"] == rate and r["batch"] == largest)
        assert 0.5 * rate < row["spike_rate"] < 1.5 * rate
        assert set(row["layer_rates"]) == set(calibration["thresholds"])
        densities, rates = row["input_densities"], row["layer_rates"]
        assert len(densities) == 7
        # no pool between body.3's neurons and body.4's conv; a 2x2 max pool never thins the spikes it passes
        assert densities["body.4.conv"] == pytest.approx(rates["body.3.lif"], rel=1e-5)
        assert densities["body.1.conv"] >= rates["stem.lif"]
        ops = calibration["op_ms"]
        assert any("ternary_conv2d" in op for op in ops[bench_deploy.TERNARY])
        assert not any("ternary" in op for op in ops[bench_deploy.FLOAT])
        assert all(ms >= 0 for impl in ops.values() for ms in impl.values())
    digits = result["models"]["digits"]
    agreement = digits["agreement_on_test_split"]
    assert agreement["float_layer_rates"] == pytest.approx(agreement["layer_rates"], abs=bench_deploy.SPIKE_TOLERANCE)
    assert agreement["max_logit_difference"] <= bench_deploy.LOGIT_TOLERANCE * agreement["max_logit"]
    assert digits["test_accuracy"][bench_deploy.TERNARY] == pytest.approx(digits["test_accuracy"][bench_deploy.FLOAT],
                                                                          abs=0.01)
    assert digits["state_bytes"][bench_deploy.TERNARY] < digits["state_bytes"][bench_deploy.FLOAT]
    speedups = result["speedups"]
    assert set(speedups["ternary_vs_float"]) == {str(b) for b in settings["batches"]}
    assert set(speedups["time_ratio_high_low"]) == {str(b) for b in settings["batches"]}
    assert [g["met"] for g in result["goals"]] == [None, None]
    markdown = out.with_suffix(".md").read_text()
    assert "runs the real-valued ternary path" in markdown and "| vgg11 | 20% |" in markdown
    assert "spike density at the input of each spike-input layer" in markdown and "body.4.conv" in markdown
    assert (out.parent / f"{out.stem}_rates.png").stat().st_size > 1000


def test_goals_at_batch_64():
    found = {"ternary_vs_float": {"64": {"0.05": 4.0, "0.1": 3.5, "0.2": 2.5}}, "low_rate": 0.05, "high_rate": 0.2,
             "time_ratio_high_low": {"64": 2.0}}
    speed, rate = bench_deploy.goals(found)
    assert (speed["value"], speed["met"]) == (2.5, False)
    assert (rate["value"], rate["met"]) == (2.0, True)


def test_report_section(quick_run, tmp_path, monkeypatch):
    out, _ = quick_run
    results = tmp_path / "results"
    results.mkdir()
    for suffix in (".json", ".md"):
        shutil.copy(out.with_suffix(suffix), results / f"deploy_cpu-test{suffix}")
    monkeypatch.setattr(report, "RESULTS", results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{report.BEGIN}\n{report.END}\n")
    report.render(readme)
    text = readme.read_text()
    assert "#### Inference of deployed networks, ternary against float weights (CPU)" in text
    assert "(benchmarks/results/deploy_cpu-test_rates.png)" in text
    assert (results / "deploy_cpu-test_rates.png").stat().st_size > 1000
