"""Benchmark whole-network CPU inference of deployed spiking networks: frozen ternary weights against float weights.

Each network is deployed the way ``tna-export`` deploys it (``tna.deploy.deployable``: ternary layers frozen to
packed 2-bit weights, BatchNorm folded into the convolutions, max pooling on the inference kernel; on CPU a frozen
layer caches the layout its spike kernels read on its first spike input, and each spike-input conv block runs its conv
and neurons in one pass, ``tna_kernels.nn.conv_lif_inference``) and timed against its float version: the same
modules, LIF neurons and thresholds, with every ternary layer replaced by a plain ``nn.Conv2d`` / ``nn.Linear``
holding the dequantized weight (scale x code). Both run under ``torch.inference_mode``; the time is that of
the whole forward, from the images ``[B, C, H, W]`` to the logits ``[B, classes]``.

- digits: the default ``tna-train`` model (spiking convnet on scikit-learn's 8x8 digits, T = 4, TNA,
  ternary, first and last layer full precision), trained for 5 epochs, written by ``export_run`` (what
  ``tna-export`` runs) and read back by ``load_deployed`` (what ``tna-eval`` runs); timed on test images.
  Nothing is downloaded.
- vgg11: spiking VGG-11 of ``python/tna/models`` at 32x32, T = 4, every weight layer ternary
  (``quantize_first_last``), random weights (TWN codes of the default initialization, with the per-channel
  scales rounded to powers of two), the LIF thresholds calibrated layer by layer so that each layer fires at
  5%, 10% and 20% of its neuron-steps on a calibration batch, timed at batch 1 and 64 on other random images
  whose values lie on a 1/64 grid in [-2, 2) (8-bit images). The first layer takes real-valued input (direct
  encoding) and so runs the real-valued ternary path, as does the classifier on the time-averaged spikes;
  the seven layers between them run the spike kernel with their cached CPU layout.

Before timing, both versions run on the timing input and are compared layer by layer. For vgg11 every sum is
exact in float32 in both versions (power-of-two scales, inputs on a grid, spikes), so their spikes must be
equal and their logits identical; for digits (trained scales, normalized input) the float version rounds its
sums differently, so logits must agree within ``LOGIT_TOLERANCE`` and at most ``SPIKE_TOLERANCE`` of the
spikes may differ. A failed check aborts the run. The measured spike rates (spikes per neuron per timestep)
are part of the result. The timings of vgg11 take every rate, batch and version in turn, round after round
(each keeps its median round), so that the time against the spike rate compares runs of the same rounds, not
runs minutes apart on a shared machine. At the largest batch, one more forward of each vgg11 version per rate
runs under ``torch.profiler``, whose self time per operator shows where the time goes. The goals of the issue
are printed as met or not.

    python benchmarks/bench_deploy.py                   # writes benchmarks/results/deploy_<device>.json
    python benchmarks/bench_deploy.py --quick --out /tmp/deploy.json   # smoke run; the plot next to --out

``--quick``: the digits model untrained (deployed by ``deployable`` without a file), rates 5% and 20%, batch 1
and 8, one timing round. ``python -m benchmarks`` draws the plot (``<result>_rates.png``) through ``report.py``;
a run with ``--out`` draws it next to its JSON.
"""
import copy
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

import tna_kernels.nn as tnn
from common import (
    device_name, git_commit, goal_lines, parse_args, time_ms, timing_rounds, tune_malloc, utc_now, versions, write_results,
)
from tna.config import TrainConfig
from tna.data import batches, load_dataset
from tna.deploy import deployable, export_run, load_deployed
from tna.models import Precision, build_model, spiking_layers
from tna.network import build_network
from tna.trainer import Trainer
from tna_kernels.ops.ternary.format import dequantize, unpack_ternary

TIMESTEPS = 4
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
PIXEL_STEP = 1 / 64
"""Grid of the vgg11 input values: 8-bit codes -128..127 times PIXEL_STEP."""
SETTINGS = {
    False: dict(batches=(1, 64), rates=(0.05, 0.10, 0.20), digits_epochs=5, calibration_batch=16),
    True: dict(batches=(1, 8), rates=(0.05, 0.20), digits_epochs=0, calibration_batch=4),
}
"""Per ``--quick``: batch sizes, target spike rates of vgg11, digits training epochs (0: untrained), vgg11
calibration batch."""
RATE_TOLERANCE = 0.01
"""Calibration stops once a layer's rate is within this fraction of its target (else it keeps the closest rate it
found: the rate is a staircase in the threshold, with steps where many neurons share an input current)."""
CALIBRATION_STEPS = 40
LOGIT_TOLERANCE = 1e-4
"""Largest max|logits_ternary - logits_float| / max|logits_float| accepted."""
SPIKE_TOLERANCE = 1e-4
"""Largest fraction of differing spikes accepted (digits; vgg11 must match exactly)."""
OP_SHARE = 0.02
"""Operators below this share of a profiled forward are summed as "other"."""
TERNARY, FLOAT = "ternary (deployed)", "float"
GOAL_BATCH = 64
SPEEDUP_GOAL = ("vgg11 at batch 64: ternary at least 3x faster than float (worst over the spike rates)", 3.0)
RATE_GOAL = ("vgg11 at batch 64: ternary time at 5% spike rate at most 1/1.8 of that at 20%", 1.8)


def float_version(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each frozen ``TernaryConv2d`` / ``TernaryLinear`` replaced by an ``nn.Conv2d`` /
    ``nn.Linear`` of the same geometry whose float32 weight is the dequantized ternary weight ``[O, C/groups,
    kh, kw]`` / ``[out, in]`` (scale x code) and whose bias is the layer's; everything else is copied as is."""
    result = copy.deepcopy(model)
    for name, module in list(result.named_modules()):
        if isinstance(module, tnn.TernaryConv2d):
            shape = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
            dense = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                              module.padding, module.dilation, module.groups, bias=module.bias is not None)
        elif isinstance(module, tnn.TernaryLinear):
            shape = (module.out_features, module.in_features)
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        else:
            continue
        if not module.frozen:
            raise ValueError(f"{name} is not frozen: deploy the model first")
        with torch.no_grad():
            dense.weight.copy_(dequantize(unpack_ternary(module.packed, shape), module.scale))
            if module.bias is not None:
                dense.bias.copy_(module.bias)
        parent, _, child = name.rpartition(".")
        setattr(result.get_submodule(parent) if parent else result, child, dense)
    return result.eval().requires_grad_(False)


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict (weights, scales, BatchNorm statistics)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def mean_rate(model: nn.Module) -> float:
    """Spikes per neuron per timestep of the last forward over all layers (layers weighted by neuron count)."""
    layers = spiking_layers(model).values()
    return sum(layer.rate.item() * layer.neurons for layer in layers) / sum(layer.neurons for layer in layers)


@torch.inference_mode()
def compare(ternary: nn.Module, floating: nn.Module, x: Tensor) -> dict:
    """Run both versions on images ``x`` ``[B, C, H, W]`` and compare their spikes, layer by layer, and logits.

    Returns ``{"max_logit_difference", "max_logit", "differing_spikes", "spikes_compared", "layer_rates"
    {layer: rate of the ternary version}, "float_layer_rates", "mean_rate", "float_mean_rate", "input_densities"
    {spike-input ternary layer: fraction of its input that spiked}, "fused_logit_difference"}``; the ternary
    version's spikes are kept only until the float version's layer has been compared with them. The hooks that
    watch the neurons make the ternary version run its conv blocks module by module; "fused_logit_difference" is
    max|logits| of its difference to a run without hooks, whose blocks run fused (``conv_lif_inference``), as timed.
    """
    fused = ternary(x)
    kept, counts, densities = {}, [0, 0], {}

    def density(name):
        def hook(module, inputs):
            densities[name] = inputs[0].float().mean().item()
        return hook

    def keep(name):
        def hook(module, inputs, spikes):
            kept[name] = spikes
        return hook

    def check(name):
        def hook(module, inputs, spikes):
            counts[0] += int((kept.pop(name) != spikes).sum())
            counts[1] += spikes.numel()
        return hook

    outputs, rates, means = [], [], []
    for model, make_hook in ((ternary, keep), (floating, check)):
        handles = [layer.register_forward_hook(make_hook(name)) for name, layer in spiking_layers(model).items()]
        if model is ternary:
            handles += [layer.register_forward_pre_hook(density(name)) for name, layer in spike_input_layers(model)]
        try:
            outputs.append(model(x))
        finally:
            for handle in handles:
                handle.remove()
        rates.append({name: layer.rate.item() for name, layer in spiking_layers(model).items()})
        means.append(mean_rate(model))
    return dict(max_logit_difference=(outputs[0] - outputs[1]).abs().max().item(),
                max_logit=outputs[1].abs().max().item(), differing_spikes=counts[0], spikes_compared=counts[1],
                layer_rates=rates[0], float_layer_rates=rates[1], mean_rate=means[0], float_mean_rate=means[1],
                input_densities=densities, fused_logit_difference=(fused - outputs[0]).abs().max().item())


def check_agreement(what: str, agreement: dict, exact: bool) -> None:
    """Raise unless the comparison of ``compare`` is within tolerance (``exact``: equal spikes and logits)."""
    if agreement["fused_logit_difference"]:
        raise AssertionError(f"{what}: the ternary version's fused conv blocks differ from its modules (max logit "
                             f"difference {agreement['fused_logit_difference']:.3g})")
    logit_error = agreement["max_logit_difference"] / max(agreement["max_logit"], 1e-30)
    spike_error = agreement["differing_spikes"] / max(agreement["spikes_compared"], 1)
    if exact and (agreement["differing_spikes"] or agreement["max_logit_difference"]):
        raise AssertionError(f"{what}: the float version differs from the ternary one ({agreement['differing_spikes']} "
                             f"spikes, max logit difference {agreement['max_logit_difference']:.3g})")
    if logit_error > LOGIT_TOLERANCE or spike_error > SPIKE_TOLERANCE:
        raise AssertionError(f"{what}: the float version differs from the ternary one: logits by {logit_error:.2e} "
                             f"of max |logit|, spikes on {spike_error:.2e} of the neuron-steps")


def spike_input_layers(model: nn.Module) -> list:
    """``[(name, module)]`` of the ternary layers of ``model`` that take spikes, in module order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (tnn.TernaryConv2d, tnn.TernaryLinear)) and m.spikes]


def spike_layers_cached(model: nn.Module) -> tuple:
    """``(with a cached CPU layout, frozen ternary layers taking spikes)`` after a forward on CPU."""
    spiking = [m for _, m in spike_input_layers(model)]
    return sum(m._layout is not None for m in spiking), len(spiking)


def digits_network(epochs: int, workdir: Path):
    """The default ``tna-train`` model (digits, TNA, ternary) and the normalized digits test split.

    ``epochs`` > 0: trained for ``epochs`` epochs in ``workdir``, written by ``export_run`` (``tna-export``) and
    read back by ``load_deployed`` (``tna-eval``). ``epochs`` = 0 (``--quick``): the same architecture with its
    initial weights, deployed by ``deployable`` (what ``export_run`` applies) without training or a file.
    Returns ``(deployed model, test images [N, 1, 8, 8] float32, labels [N] int64)``.
    """
    config = TrainConfig(epochs=max(epochs, 1), device="cpu").resolved()
    data = load_dataset(config.dataset)
    if epochs:
        run_dir = workdir / "run"
        Trainer(config, run_dir, progress=False).run()
        export_run(run_dir, workdir / "model.pt")
        model, _ = load_deployed(workdir / "model.pt")
    else:
        torch.manual_seed(config.seed)
        model = deployable(build_network(config, data, weights=config.weights, width=1.0))
    x, y = next(batches(data, False, len(data.test_y), seed=0, epoch=0))
    return model, x, y


def random_network(arch: str = "vgg11", input_shape: tuple = IMAGE_SHAPE) -> nn.Module:
    """Deployed spiking ``arch`` (of ``python/tna/models``) for images ``input_shape`` ``(C, H, W)``, every weight
    layer ternary, with the TWN codes of the default random initialization and the per-channel scales rounded to
    powers of two, so that the float version's sums are exact."""
    model = build_model(arch, NUM_CLASSES, input_shape, TIMESTEPS, Precision("ternary", quantize_first_last=True))
    deployed = deployable(model)
    with torch.no_grad():
        for module in deployed.modules():
            if isinstance(module, (tnn.TernaryConv2d, tnn.TernaryLinear)):
                module.scale.copy_(torch.exp2(torch.round(torch.log2(module.scale))))
    return deployed


def random_images(batch: int, generator: torch.Generator, shape: tuple = IMAGE_SHAPE) -> Tensor:
    """``[batch, *shape]`` float32 images: uniform 8-bit codes times ``PIXEL_STEP``."""
    codes = torch.randint(-128, 128, (batch, *shape), generator=generator)
    return codes.to(torch.float32) * PIXEL_STEP


class _Captured(Exception):
    """Raised by a forward pre-hook to end a forward once a layer's input is captured."""

    def __init__(self, current: Tensor):
        super().__init__("captured")
        self.current = current


def _layer_input(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The input current ``[T, B, ...]`` that ``layer`` receives when ``model`` runs on ``x`` (the forward stops
    there)."""
    def capture(module, inputs):
        raise _Captured(inputs[0])

    handle = layer.register_forward_pre_hook(capture)
    try:
        model(x)
    except _Captured as captured:
        return captured.current
    finally:
        handle.remove()
    raise RuntimeError("the layer was not reached in the forward")


def _threshold_for(layer: nn.Module, current: Tensor, rate: float) -> float:
    """A threshold at which ``layer`` fires at ``rate`` (within ``RATE_TOLERANCE``) on ``current``
    ``[T, B, ...]``, by bisection: the membrane is a convex combination of the inputs and 0, so nothing fires
    above ``max(current)``, and the rate rises as the threshold falls."""
    low, high = 0.0, current.max().item()
    if high <= 0:
        raise ValueError("the layer's input current is never positive: no threshold makes it fire")
    best = (math.inf, high)
    for _ in range(CALIBRATION_STEPS):
        layer.v_threshold = (low + high) / 2
        found = layer(current).mean().item()
        best = min(best, (abs(found - rate), layer.v_threshold))
        if abs(found - rate) <= RATE_TOLERANCE * rate:
            break
        low, high = (layer.v_threshold, high) if found > rate else (low, layer.v_threshold)
    return best[1]


@torch.inference_mode()
def calibrate(model: nn.Module, x: Tensor, rate: float) -> dict:
    """Set every LIF layer's threshold, first layer first, so that each fires at ``rate`` on images ``x``
    ``[B, C, H, W]`` given the thresholds before it, then run ``model`` on ``x`` once, so that each layer's
    ``rate`` is the one its final threshold gives; returns ``{layer: threshold}``."""
    thresholds = {}
    for name, layer in spiking_layers(model).items():
        thresholds[name] = _threshold_for(layer, _layer_input(model, layer, x), rate)
        layer.v_threshold = thresholds[name]
    model(x)
    return thresholds


def set_thresholds(model: nn.Module, thresholds: dict) -> None:
    layers = spiking_layers(model)
    for name, threshold in thresholds.items():
        layers[name].v_threshold = threshold


def _timed(model: nn.Module, x: Tensor, thresholds: Optional[dict] = None):
    """One forward of ``model`` on images ``x`` as a function, after setting ``thresholds`` where given (see
    ``set_thresholds``): then several rates time one model in turn."""
    def run():
        if thresholds is not None:
            set_thresholds(model, thresholds)
        with torch.inference_mode():
            return model(x)
    return run


def time_in_turn(functions: dict, quick: bool) -> dict:
    """``{key: median ms}`` of each function of ``functions``, all timed in turn over ``timing_rounds`` rounds:
    a slow spell of the machine then hits every one alike."""
    times = {key: [] for key in functions}
    for _ in range(timing_rounds("cpu", quick)):
        for key, fn in functions.items():
            times[key].append(time_ms(fn, "cpu", quick))
    return {key: statistics.median(found) for key, found in times.items()}


def op_times(model: nn.Module, x: Tensor) -> dict:
    """``{operator: ms}`` of one forward of ``model`` on images ``x`` ``[B, C, H, W]`` under ``torch.profiler``
    (self time), for the operators taking at least ``OP_SHARE`` of the total, the rest summed as "other"."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as profiled:
        model(x)
    times = sorted(((event.key, event.self_cpu_time_total / 1e3) for event in profiled.key_averages()),
                   key=lambda item: -item[1])
    total = sum(ms for _, ms in times)
    kept = {name: ms for name, ms in times if ms >= OP_SHARE * total}
    return {**kept, "other": total - sum(kept.values())}


def _rows(model_name: str, target, x: Tensor, agreement: dict, ms: dict) -> list:
    """The two rows (ternary, float) of one timing on images ``x`` ``[B, C, H, W]``, with the comparison of
    ``compare`` on the same images."""
    batch = x.shape[0]
    compared = {key: agreement[key] for key in ("differing_spikes", "spikes_compared", "max_logit_difference",
                                                "max_logit", "float_layer_rates")}
    rows = []
    for impl in (TERNARY, FLOAT):
        rows.append(dict(model=model_name, target_rate=target, batch=batch, impl=impl, ms=ms[impl],
                         samples_per_s=batch / ms[impl] * 1e3, speedup_vs_float=ms[FLOAT] / ms[impl],
                         spike_rate=agreement["mean_rate"], layer_rates=agreement["layer_rates"],
                         input_densities=agreement["input_densities"], agreement=compared))
    return rows


def bench_digits(settings: dict, quick: bool, log) -> tuple:
    """Rows and the model description of the digits network."""
    with tempfile.TemporaryDirectory() as workdir:
        ternary, x, y = digits_network(settings["digits_epochs"], Path(workdir))
    floating = float_version(ternary)
    with torch.inference_mode():
        accuracy = {impl: (model(x).argmax(1) == y).float().mean().item()
                    for impl, model in ((TERNARY, ternary), (FLOAT, floating))}
    agreement = compare(ternary, floating, x)
    check_agreement("digits on the test split", agreement, exact=False)
    rows = []
    for batch in settings["batches"]:
        inputs = x[:batch]
        batch_agreement = compare(ternary, floating, inputs)
        check_agreement(f"digits at batch {batch}", batch_agreement, exact=False)
        ms = time_in_turn({TERNARY: _timed(ternary, inputs), FLOAT: _timed(floating, inputs)}, quick)
        rows += _rows("digits", None, inputs, batch_agreement, ms)
        log(f"digits batch {batch}: ternary {rows[-2]['ms']:.2f} ms, float {rows[-1]['ms']:.2f} ms")
    cached, spiking = spike_layers_cached(ternary)
    description = dict(
        network="spiking convnet (tna-train default: digits, TNA, ternary, T = 4), first and last layer full "
                "precision", input_shape=list(x.shape[1:]), timesteps=TIMESTEPS,
        training_epochs=settings["digits_epochs"], test_samples=len(y), test_accuracy=accuracy,
        agreement_on_test_split=agreement, layout_cached=dict(layers=cached, of=spiking),
        state_bytes={TERNARY: state_bytes(ternary), FLOAT: state_bytes(floating)})
    return rows, description


def bench_vgg(settings: dict, quick: bool, log) -> tuple:
    """Rows and the model description (with the calibration per target rate) of the vgg11 network."""
    torch.manual_seed(0)
    ternary = random_network()
    floating = float_version(ternary)
    generator = torch.Generator().manual_seed(0)
    calibration_images = random_images(settings["calibration_batch"], generator)
    inputs = {batch: random_images(batch, generator) for batch in settings["batches"]}
    calibrations, agreements, functions = [], {}, {}
    for rate in settings["rates"]:
        thresholds = calibrate(ternary, calibration_images, rate)
        set_thresholds(floating, thresholds)
        calibrations.append(dict(target_rate=rate, thresholds=thresholds,
                                 calibration_rates={name: layer.rate.item()
                                                    for name, layer in spiking_layers(ternary).items()}))
        for batch, x in inputs.items():
            agreements[rate, batch] = compare(ternary, floating, x)
            check_agreement(f"vgg11 at rate {rate:.0%}, batch {batch}", agreements[rate, batch], exact=True)
            for impl, model in ((TERNARY, ternary), (FLOAT, floating)):
                functions[rate, batch, impl] = _timed(model, x, thresholds)
        largest = inputs[max(inputs)]
        calibrations[-1]["op_ms"] = {TERNARY: op_times(ternary, largest), FLOAT: op_times(floating, largest)}
    # every rate, batch and version in turn: the time against the spike rate compares runs of the same rounds
    ms = time_in_turn(functions, quick)
    rows = []
    for (rate, batch), agreement in agreements.items():
        rows += _rows("vgg11", rate, inputs[batch], agreement,
                      {impl: ms[rate, batch, impl] for impl in (TERNARY, FLOAT)})
        log(f"vgg11 rate {rate:.0%} batch {batch}: measured {agreement['mean_rate']:.3f}, "
            f"ternary {rows[-2]['ms']:.1f} ms, float {rows[-1]['ms']:.1f} ms")
    cached, spiking = spike_layers_cached(ternary)
    description = dict(
        network="spiking VGG-11 (python/tna/models), every weight layer ternary, random weights with "
                "power-of-two scales", input_shape=list(IMAGE_SHAPE), timesteps=TIMESTEPS,
        calibration_batch=settings["calibration_batch"], calibrations=calibrations,
        real_valued_layers=["stem.conv (direct encoding of the image)", "classifier (time-averaged spikes)"],
        layout_cached=dict(layers=cached, of=spiking),
        state_bytes={TERNARY: state_bytes(ternary), FLOAT: state_bytes(floating)})
    return rows, description


def speedups(rows: list) -> dict:
    """vgg11's ternary time against float and against spike rate: ``{"ternary_vs_float": {batch: {rate: float
    ms / ternary ms}}, "time_ratio_high_low": {batch: ternary ms at the highest rate / at the lowest},
    "low_rate", "high_rate"}`` (batches and rates as strings, as JSON keeps them)."""
    vgg = [r for r in rows if r["model"] == "vgg11" and r["impl"] == TERNARY]
    rates = sorted({r["target_rate"] for r in vgg})
    result = {"ternary_vs_float": {}, "time_ratio_high_low": {}, "low_rate": rates[0], "high_rate": rates[-1]}
    for batch in sorted({r["batch"] for r in vgg}):
        by_rate = {r["target_rate"]: r for r in vgg if r["batch"] == batch}
        result["ternary_vs_float"][str(batch)] = {str(rate): by_rate[rate]["speedup_vs_float"] for rate in rates}
        result["time_ratio_high_low"][str(batch)] = by_rate[rates[-1]]["ms"] / by_rate[rates[0]]["ms"]
    return result


def goals(found: dict) -> list:
    """The issue's goals with their measured values (None: batch ``GOAL_BATCH`` or a rate not measured)."""
    per_rate = found["ternary_vs_float"].get(str(GOAL_BATCH))
    speedup = min(per_rate.values()) if per_rate else None
    ratio = found["time_ratio_high_low"].get(str(GOAL_BATCH))
    if (found["low_rate"], found["high_rate"]) != (0.05, 0.20):
        ratio = None
    result = []
    for (goal, target), value in ((SPEEDUP_GOAL, speedup), (RATE_GOAL, ratio)):
        result.append(dict(goal=goal, target=target, value=value, met=None if value is None else value >= target))
    return result


def plot(path: Path, result: dict) -> str:
    """Samples/s of vgg11 against the measured spike rate, ternary and float, one panel per batch size: a PNG
    next to ``path`` (``<stem>_rates.png``); returns its file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["model"] == "vgg11"]
    batches = sorted({r["batch"] for r in rows})
    figure, panels = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for axes, batch in zip(panels[0], batches):
        for impl, marker in ((TERNARY, "o"), (FLOAT, "s")):
            points = sorted((100 * r["spike_rate"], r["samples_per_s"], r["speedup_vs_float"]) for r in rows
                            if r["batch"] == batch and r["impl"] == impl)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=impl)
            if impl == TERNARY:
                for rate, speed, speedup in points:
                    axes.annotate(f"{speedup:.2f}x", (rate, speed), textcoords="offset points", xytext=(0, 6),
                                  ha="center", fontsize=8)
        axes.set_ylim(bottom=0, top=axes.get_ylim()[1] * 1.1)
        axes.set(xlabel="measured spike rate (% of neuron-steps, all layers)", ylabel="samples / s",
                 title=f"batch {batch} (labels: ternary / float speed)")
        axes.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"Spiking VGG-11, 32x32, T = {result['settings']['timesteps']}, inference on {result['device']}",
                    fontsize=10)
    figure.tight_layout()
    name = f"{path.stem}_rates.png"
    figure.savefig(path.parent / name, dpi=110)
    plt.close(figure)
    return name


def _per_layer_table(result: dict, batch: int, title: str, key: str, names: list) -> list:
    """Markdown lines: ``title``, then one row per VGG-11 target rate of ``row[key][name]`` (a fraction) at
    ``batch`` for each of ``names``."""
    lines = ["", title, "", "| target | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for calibration in result["models"]["vgg11"]["calibrations"]:
        row = next(r for r in result["rows"] if r["model"] == "vgg11" and r["batch"] == batch
                   and r["target_rate"] == calibration["target_rate"])
        lines.append(f"| {calibration['target_rate']:.0%} | " + " | ".join(f"{row[key][name]:.2%}" for name in names)
                     + " |")
    return lines


def markdown(result: dict) -> str:
    version_text = ", ".join(f"{name} {version}" for name, version in result["versions"].items())
    digits, vgg = result["models"]["digits"], result["models"]["vgg11"]
    made = (f"trained {digits['training_epochs']} epochs, written by tna-export and loaded as tna-eval loads it"
            if digits["training_epochs"] else "untrained (--quick), deployed as tna-export deploys")
    lines = [
        f"Deployed-model inference on {result['device']}, {version_text}, commit {result['commit']}, {result['date']}",
        f"threads: {result['threads']}, malloc: {result['malloc']}; ms per batch (median), whole forward from images "
        "to logits, torch.inference_mode",
        "",
        f"**digits**: {digits['network']}, {made}; "
        f"test accuracy {digits['test_accuracy'][TERNARY]:.2%} (ternary), {digits['test_accuracy'][FLOAT]:.2%} "
        f"(float); state {digits['state_bytes'][TERNARY] / 1024:.1f} KiB (ternary), "
        f"{digits['state_bytes'][FLOAT] / 1024:.1f} KiB (float).",
        "",
        f"**vgg11**: {vgg['network']}, input {'x'.join(map(str, vgg['input_shape']))}, T = {vgg['timesteps']}; "
        "thresholds calibrated per layer to the target rate. The first layer takes real-valued input (direct "
        "encoding) and so runs the real-valued ternary path, as does the classifier (on time-averaged spikes); "
        f"{vgg['layout_cached']['layers']} of {vgg['layout_cached']['of']} spike-input layers ran with "
        "their cached CPU layout. The float version's spikes and logits equal the ternary version's exactly.",
        "",
        "| model | target rate | measured rate | batch | implementation | ms / batch | samples / s | vs float |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        target = "-" if r["target_rate"] is None else f"{r['target_rate']:.0%}"
        lines.append(f"| {r['model']} | {target} | {r['spike_rate']:.2%} | {r['batch']} | {r['impl']} | "
                     f"{r['ms']:.2f} | {r['samples_per_s']:.1f} | {r['speedup_vs_float']:.2f}x |")
    largest = max(r["batch"] for r in result["rows"])
    names = list(vgg["calibrations"][0]["thresholds"])
    lines += _per_layer_table(result, largest, f"vgg11 spike rate per layer, measured at batch {largest}:",
                              "layer_rates", names)
    inputs = list(next(r for r in result["rows"] if r["model"] == "vgg11")["input_densities"])
    lines += _per_layer_table(
        result, largest, f"vgg11 spike density at the input of each spike-input layer (after max pooling where one "
        f"precedes it), measured at batch {largest}: a 2x2 max pool passes a spike where any of its four inputs "
        "spiked, so the layers after a pool see denser input than the rate the neurons fire at:", "input_densities",
        inputs)
    columns = [(calibration, impl) for calibration in vgg["calibrations"] for impl in (TERNARY, FLOAT)]
    ops = list(dict.fromkeys(op for calibration, impl in columns for op in calibration["op_ms"][impl]
                             if op != "other")) + ["other"]
    lines += ["", f"vgg11, where the time goes at batch {largest}: self time (ms) of each operator in one forward "
              f"under torch.profiler (operators under {OP_SHARE:.0%} of a forward in other):", "",
              "| operator | " + " | ".join(f"{impl} {calibration['target_rate']:.0%}" for calibration, impl in columns)
              + " |", "|---|" + "---:|" * len(columns)]
    for op in ops:
        lines.append(f"| {op} | " + " | ".join(
            f"{calibration['op_ms'][impl][op]:.1f}" if op in calibration["op_ms"][impl] else ""
            for calibration, impl in columns) + " |")
    found = result["speedups"]
    lines += ["", "vgg11, ternary against float: " + "; ".join(
        f"batch {batch}: " + ", ".join(f"{float(rate):.0%} {value:.2f}x" for rate, value in per_rate.items())
        for batch, per_rate in found["ternary_vs_float"].items()) + ".",
        f"vgg11, ternary time at {found['high_rate']:.0%} over that at {found['low_rate']:.0%}: "
        + ", ".join(f"batch {batch} {value:.2f}x" for batch, value in found["time_ratio_high_low"].items()) + ".",
        "", "Goals:"]
    lines += goal_lines(result["goals"])
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not any(arg == "--device" or arg.startswith("--device=") for arg in argv):
        argv = ["--device", "cpu", *argv]
    args = parse_args(__doc__.splitlines()[0], "deploy", argv)
    if args.device != "cpu":
        raise SystemExit("bench_deploy.py measures CPU inference (the frozen layers' cached CPU layout): "
                         "use --device cpu")
    malloc = tune_malloc(__file__, args, argv)
    settings = SETTINGS[args.quick]

    def log(text):
        print(text, file=sys.stderr)

    digits_rows, digits = bench_digits(settings, args.quick, log)
    vgg_rows, vgg = bench_vgg(settings, args.quick, log)
    rows = digits_rows + vgg_rows
    found = speedups(rows)
    result = dict(
        benchmark="deploy", device=device_name("cpu"), device_kind="cpu", versions=versions(), commit=git_commit(),
        date=utc_now(), threads=torch.get_num_threads(), malloc=malloc, quick=args.quick,
        settings=dict(timesteps=TIMESTEPS, **settings), models=dict(digits=digits, vgg11=vgg), rows=rows,
        speedups=found, goals=goals(found))
    write_results("deploy", result, markdown(result), args)
    if args.out is not None:
        try:
            log(f"wrote {args.out.parent / plot(args.out, result)}")
        except ImportError:
            log("matplotlib is not installed: no plot")


if __name__ == "__main__":
    main()
