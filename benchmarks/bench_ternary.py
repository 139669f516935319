"""Benchmark the ternary-weight linear and conv2d kernels against dense F.linear and F.conv2d.

CPU: ``ternary_linear`` (C++) at K = N = 4096, M in {1, 16, 256, 2048}, on spike input (0/1 float32,
20 % ones, ``spikes=True``; also given the weight's cached CPU layout, as a frozen module runs it) and on
real-valued float32 input, against ``F.linear`` with the same
weight dequantized to float32, and in bfloat16 (weight and input); and ``ternary_conv2d`` on the
spikes of a spiking ResNet layer (input [64, 128, 16, 16] with T*B folded, 3x3 conv 128 -> 128,
padding 1) against ``F.conv2d`` in float32 and bfloat16. Then a spike-rate sweep of the frozen layers
(cached layout; M=256 for the linear layer, the same conv layer) at rates from 2 % to 60 %: the kernel
chosen per call ("auto"), the dense bit-plane kernel and the event-driven kernel forced, against F.linear /
F.conv2d in float32 on the same input. Then pruned frozen layers at 10 % spikes, a linear one (M=256, K=N=4096) and
a late VGG-style conv (input [64, 512, 4, 4], 3x3 conv 512 -> 512, padding 1): the usual TWN codes (weight sparsity
0) and codes +-1 at random places with 50 % to 99 % of the weights pruned to 0, each run as a frozen
``TernaryLinear`` / ``TernaryConv2d`` (its cached layout is the sparse one where the weight is sparse enough), with
the speedup of the pruned layer over the unpruned one.
GPU (when CUDA is present): the Triton kernels at K = N in {4096, 8192}, M in {1, 16, 256, 1024, 4096},
on bfloat16 spikes and bfloat16 real input, against cuBLAS (``F.linear`` in bfloat16 and in float32,
PyTorch's default precision), and 3x3 conv layers (T*B = 256, C = O in {128, 256}, 32x32 and 16x16,
padding 1) against cuDNN (``cudnn.benchmark`` on). The public
functions check that spike input holds only 0 and 1, which synchronizes the GPU, so the Triton
kernel called directly (no check) is timed as well.

Weights are the TWN codes of a standard normal weight with a scale per output channel, packed with
``pack_ternary``; the dense baselines use the same weight dequantized. Before timing, spike results
are checked equal to ``reference.py``'s exact path and real-valued results close to ``F.linear`` of
the dequantized weight in float64; a failed check aborts. TOP/s counts the 2*M*N*K operations of the
dense product (for spike input too). The goals of the ternary issue are printed as met or not.

On Linux CPUs the script restarts itself with glibc's malloc tuned (see ``common.py``;
``--system-malloc`` keeps the default).

    python benchmarks/bench_ternary.py            # full run, writes benchmarks/results/ternary_<device>.json
    python benchmarks/bench_ternary.py --quick    # a short smoke run: the first K, M and conv layer
"""
import statistics
import sys
from functools import partial

import torch
import torch.nn.functional as F

import tna_kernels
from common import (
    device_name, git_commit, goal_lines, parse_args, time_ms, timing_rounds, tune_malloc, utc_now, versions, write_results,
)
from tna_kernels.ops.ternary import dequantize, ternary_conv2d_reference, ternary_linear_reference
from tna_kernels.ops.ternary.op import conv2d_cpu_layout, linear_cpu_layout

LINEAR = {"cpu": ((4096,), (1, 16, 256, 2048)), "cuda": ((4096, 8192), (1, 16, 256, 1024, 4096))}
"""Per device: the values of K = N and of M of the linear layer."""
CONV = {
    "cpu": [((64, 128, 16, 16), (128, 128, 3, 3))],
    "cuda": [((256, c, hw, hw), (c, c, 3, 3)) for c in (128, 256) for hw in (32, 16)],
}
"""Per device: the conv layers, as ([T*B, C, H, W] spike input, [O, C, kh, kw] weight); stride 1,
padding CONV_PADDING."""
CONV_PADDING = 1
SPIKE_RATE = 0.2
REAL_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
"""Largest max|y - y_ref| / max|y_ref| of real-valued input, by output dtype."""
KERNEL_NAME = "tna Triton kernel, no spike check"
CACHED_NAME = "tna C++, cached layout (as a frozen module)"
SWEEP_RATES = (0.02, 0.05, 0.1, 0.2, 0.4, 0.6)
"""CPU: the spike rates of the sweep of frozen layers."""
SWEEP_M = 256
SWEEP_KERNELS = {"auto": "tna C++ frozen, kernel chosen per call", "dense": "dense kernel (bit-planes)",
                 "events": "event-driven kernel"}
"""The C++ spike kernels' choices, and their names in the sweep."""

SPEED_GOALS = [
    # (goal, device, layer, inputs, baseline, shape filter, least speedup)
    ("CPU: frozen layer on spike input at M=256 at least 5x faster than F.linear fp32",
     "cpu", "linear", ("spikes",), "fp32", lambda shape: shape["M"] == 256, 5.0),
    ("CPU: frozen conv2d on spike input at least 5x faster than F.conv2d fp32",
     "cpu", "conv2d", ("spikes",), "fp32", lambda shape: True, 5.0),
    ("GPU: M <= 16 at least 4x faster than cuBLAS bf16 (K = N = 8192)",
     "cuda", "linear", ("spikes", "real"), "bf16", lambda shape: shape["M"] <= 16 and shape["K"] == 8192, 4.0),
    ("GPU: spike input at M >= 1024 at least 1.3x faster than cuBLAS bf16",
     "cuda", "linear", ("spikes",), "bf16", lambda shape: shape["M"] >= 1024, 1.3),
    ("GPU: conv2d on spikes at least as fast as cuDNN bf16",
     "cuda", "conv2d", ("spikes",), "bf16", lambda shape: True, 1.0),
]
MEMORY_GOAL = ("packed weights (with scales) at least 15x smaller than float32", 15.0)
PRUNE_SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)
"""CPU: the weight sparsities (share of codes 0) of the pruned frozen layers; 0 is the unpruned TWN weight."""
PRUNE_RATE = 0.1
PRUNE_CONV = ((64, 512, 4, 4), (512, 512, 3, 3))
"""CPU: the pruned conv layer, as ([T*B, C, H, W] spike input, [O, C, kh, kw] weight), padding CONV_PADDING: a late
VGG-style layer, where most of a network's weights are."""
PRUNE_GOAL = ("CPU: frozen linear (M=256, 10% spikes) at 90% weight sparsity at least 3x faster than unpruned", 0.9,
              3.0)
"""(goal, weight sparsity, least speedup over the unpruned layer)."""
RATE_GOALS = [
    # (goal, layer, least ratio of the time at 20 % spikes to the time at 5 %)
    ("CPU: frozen linear (M=256) on 5% spikes at least 2.5x faster than on 20%", "linear", 2.5),
    ("CPU: frozen conv2d on 5% spikes at least 1.5x faster than on 20%", "conv2d", 1.5),
]


def _tna_name(device: str) -> str:
    return "tna C++" if device == "cpu" else "tna Triton"


def _goal_impl(device: str) -> str:
    """The implementation the speed goals read: a frozen layer's on CPU, the Triton kernels' on GPU."""
    return CACHED_NAME if device == "cpu" else _tna_name(device)


def _activation_dtype(device: str) -> torch.dtype:
    return torch.float32 if device == "cpu" else torch.bfloat16


def _ternary_weight(shape, device: str):
    """A ternary weight of ``shape`` = ``[N, *rest]``: TWN codes of a standard normal weight.

    Returns ``(packed, scale, dense)``: int32 ``[N, ceil(K / 16)]`` words, float32 ``[N]`` scales and
    the float32 dequantized weight of ``shape``.
    """
    codes, scale = tna_kernels.ternarize(torch.randn(shape, device=device))
    return tna_kernels.pack_ternary(codes), scale, dequantize(codes, scale)


def _weight_memory(packed, scale, dense) -> dict:
    """Bytes of the packed weight (words and scales) and of the dense weight in fp32 and bf16."""
    ternary = packed.numel() * packed.element_size() + scale.numel() * scale.element_size()
    size = {"ternary": ternary, "fp32": dense.numel() * 4, "bf16": dense.numel() * 2}
    return dict(weight_shape=list(dense.shape), bytes=size, fp32_over_ternary=size["fp32"] / ternary,
                bf16_over_ternary=size["bf16"] / ternary)


def _entries(kind: str, x, impls: dict, expected, dense_name: str, dense, weight) -> list:
    """Entries on input ``x`` of kind "spikes" or "real": the ternary ``impls`` (name -> function,
    checked against ``expected``) and ``dense(x, weight)`` with input and weight in fp32 and in bf16."""
    entries = [dict(impl=name, input=kind, dtype=x.dtype, weight_format="ternary", fn=fn, expected=expected)
               for name, fn in impls.items()]
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        x_d, w_d = x.to(dtype), weight.to(dtype)
        entries.append(dict(impl=f"{dense_name} {label}", input=kind, dtype=dtype, weight_format=label,
                            fn=lambda x_d=x_d, w_d=w_d: dense(x_d, w_d), expected=None))
    return entries


def _linear_job(device: str, m: int, k: int, n: int) -> dict:
    """``y [M, N] = x [M, K] @ W^T`` with a ternary ``W [N, K]``, on spikes and on real-valued x."""
    packed, scale, weight = _ternary_weight((n, k), device)
    spikes = (torch.rand(m, k, device=device) < SPIKE_RATE).to(_activation_dtype(device))
    real = torch.randn(m, k, device=device).to(_activation_dtype(device))
    spike_impls = {_tna_name(device): lambda: tna_kernels.ternary_linear(spikes, packed, scale, spikes=True)}
    if device == "cpu":
        layout = linear_cpu_layout(packed, k)
        spike_impls[CACHED_NAME] = lambda: tna_kernels.ternary_linear(spikes, packed, scale, spikes=True,
                                                                      layout=layout)
    if device == "cuda":
        from tna_kernels.ops.ternary import triton as triton_ternary

        spike_impls[KERNEL_NAME] = lambda: triton_ternary.ternary_linear(spikes, packed, scale, None, True)
    real_impls = {_tna_name(device): lambda: tna_kernels.ternary_linear(real, packed, scale)}
    spike_expected = ternary_linear_reference(spikes, packed, scale, spikes=True)
    real_expected = F.linear(real.double(), weight.double())
    entries = (_entries("spikes", spikes, spike_impls, spike_expected, "F.linear", F.linear, weight)
               + _entries("real", real, real_impls, real_expected, "F.linear", F.linear, weight))
    return dict(layer="linear", case=f"M={m} K={k} N={n}", shape=dict(M=m, K=k, N=n), ops=2 * m * n * k,
                weight=_weight_memory(packed, scale, weight), entries=entries)


def _conv_job(device: str, input_shape: tuple, weight_shape: tuple) -> dict:
    """The conv layer with weight ``[O, C, kh, kw]`` on spikes ``[T*B, C, H, W]`` -> ``[T*B, O, H, W]``
    (stride 1, padding ``CONV_PADDING``)."""
    packed, scale, weight = _ternary_weight(weight_shape, device)
    spikes = (torch.rand(input_shape, device=device) < SPIKE_RATE).to(_activation_dtype(device))
    kernel = weight_shape[2:]
    impls = {_tna_name(device): lambda: tna_kernels.ternary_conv2d(
        spikes, packed, scale, padding=CONV_PADDING, kernel_size=kernel, spikes=True)}
    if device == "cpu":
        layout = conv2d_cpu_layout(packed, input_shape[1], 1, kernel)
        impls[CACHED_NAME] = lambda: tna_kernels.ternary_conv2d(
            spikes, packed, scale, padding=CONV_PADDING, kernel_size=kernel, spikes=True, layout=layout)
    if device == "cuda":
        from tna_kernels.ops.ternary import triton as triton_ternary

        impls[KERNEL_NAME] = lambda: triton_ternary.ternary_conv2d(
            spikes, packed, scale, None, 1, CONV_PADDING, 1, 1, kernel, True)
    expected = ternary_conv2d_reference(spikes, packed, scale, padding=CONV_PADDING, kernel_size=kernel, spikes=True)
    batch, channels, height, width = input_shape
    out_channels, _, kh, kw = weight_shape
    h_out, w_out = height + 2 * CONV_PADDING - kh + 1, width + 2 * CONV_PADDING - kw + 1
    return dict(
        layer="conv2d",
        case=f"x {list(input_shape)} W {list(weight_shape)} padding {CONV_PADDING}",
        shape=dict(input=list(input_shape), weight=list(weight_shape), padding=CONV_PADDING),
        ops=2 * batch * h_out * w_out * out_channels * channels * kh * kw,
        weight=_weight_memory(packed, scale, weight),
        entries=_entries("spikes", spikes, impls, expected, "F.conv2d",
                         partial(F.conv2d, padding=CONV_PADDING), weight),
    )


def _check(entry: dict) -> None:
    """Spike input: equal to the exact reference. Real input: within ``REAL_TOLERANCE`` of float64."""
    got, expected = entry["fn"](), entry["expected"]
    name = f"{entry['impl']} on {entry['input']} input"
    if entry["input"] == "spikes":
        if not torch.equal(got, expected):
            mismatch = (got != expected).float().mean().item()
            raise AssertionError(f"{name} differs from the exact reference on {mismatch:.2e} of the outputs")
        return
    error = ((got.double() - expected).abs().max() / expected.abs().max()).item()
    if error > REAL_TOLERANCE[got.dtype]:
        raise AssertionError(f"{name}: max error {error:.2e} of max |y| exceeds {REAL_TOLERANCE[got.dtype]:.0e}")


def bench(device: str, jobs, quick: bool):
    """Check, then time every entry of each job (a function building it), the entries of a job in turn
    over ``timing_rounds`` rounds. Returns (rows, weight memory per weight shape)."""
    from tqdm import tqdm

    rows, weights = [], {}
    for make_job in tqdm(jobs, desc=f"ternary on {device}", file=sys.stderr):
        job = make_job()
        for entry in job["entries"]:
            if entry["expected"] is not None:
                _check(entry)
        times = [[] for _ in job["entries"]]
        for _ in range(timing_rounds(device, quick)):
            for entry, ms_list in zip(job["entries"], times):
                ms_list.append(time_ms(entry["fn"], device, quick))
        job_rows = []
        for e, ms_list in zip(job["entries"], times):
            ms = statistics.median(ms_list)
            job_rows.append({
                "layer": job["layer"], "case": job["case"], "shape": job["shape"], "input": e["input"],
                "dtype": str(e["dtype"]).removeprefix("torch."), "impl": e["impl"],
                "weight_format": e["weight_format"], "weight_bytes": job["weight"]["bytes"][e["weight_format"]],
                "ms": ms, "TOP/s": job["ops"] / ms / 1e9,
            })
        for row in job_rows:
            for baseline in ("fp32", "bf16"):
                base = next(r["ms"] for r in job_rows if r["input"] == row["input"] and r["weight_format"] == baseline)
                row[f"speedup_vs_{baseline}"] = base / row["ms"]
        rows += job_rows
        weights[tuple(job["weight"]["weight_shape"])] = job["weight"]
    return rows, list(weights.values())


def _sweep_layers(quick: bool) -> list:
    """The sweep's frozen layers: (layer, case, make) where ``make(rate)`` returns ``{name: fn}`` for spike input at
    ``rate`` (the kernel choices and the float32 baseline) after checking every kernel against the reference."""
    k = LINEAR["cpu"][0][0]
    packed, scale, weight = _ternary_weight((k, k), "cpu")
    layout = linear_cpu_layout(packed, k)
    input_shape, weight_shape = CONV["cpu"][0]
    if quick:
        input_shape = (8, *input_shape[1:])
    c_packed, c_scale, c_weight = _ternary_weight(weight_shape, "cpu")
    kernel = list(weight_shape[2:])
    c_layout = conv2d_cpu_layout(c_packed, input_shape[1], 1, kernel)
    geometry = ([1, 1], [CONV_PADDING] * 2, [1, 1], 1, kernel)

    def linear(rate):
        x = (torch.rand(SWEEP_M, k) < rate).float()
        fns = {name: partial(torch.ops.tna_cpp.ternary_linear_spikes, x, packed, scale, None, layout, choice)
               for choice, name in SWEEP_KERNELS.items()}
        return fns, ternary_linear_reference(x, packed, scale, spikes=True), partial(F.linear, x, weight)

    def conv(rate):
        x = (torch.rand(input_shape) < rate).float()
        fns = {name: partial(torch.ops.tna_cpp.ternary_conv2d_spikes, x, c_packed, c_scale, None, c_layout,
                             *geometry, choice)
               for choice, name in SWEEP_KERNELS.items()}
        expected = ternary_conv2d_reference(x, c_packed, c_scale, padding=CONV_PADDING, kernel_size=kernel,
                                            spikes=True)
        return fns, expected, partial(F.conv2d, x, c_weight, padding=CONV_PADDING)

    return [("linear", f"M={SWEEP_M} K={k} N={k}", linear),
            ("conv2d", f"x {list(input_shape)} W {list(weight_shape)} padding {CONV_PADDING}", conv)]


def rate_sweep(quick: bool) -> list:
    """Rows (layer, case, rate, impl, ms, speedup_vs_fp32) of the frozen layers against the spike rate."""
    from tqdm import tqdm

    rates = (0.05, 0.2) if quick else SWEEP_RATES
    rows = []
    for layer, case, make in _sweep_layers(quick):
        for rate in tqdm(rates, desc=f"{layer} spike-rate sweep", file=sys.stderr):
            fns, expected, dense = make(rate)
            for name, fn in fns.items():
                if not torch.equal(fn(), expected):
                    raise AssertionError(f"{name} on {layer} at spike rate {rate} differs from the exact reference")
            fns[f"{'F.linear' if layer == 'linear' else 'F.conv2d'} fp32"] = dense
            times = {name: [] for name in fns}
            for _ in range(timing_rounds("cpu", quick)):
                for name, fn in fns.items():
                    times[name].append(time_ms(fn, "cpu", quick))
            base = statistics.median(times[list(fns)[-1]])
            for name, ms_list in times.items():
                ms = statistics.median(ms_list)
                rows.append(dict(layer=layer, case=case, rate=rate, impl=name, ms=ms, speedup_vs_fp32=base / ms))
    return rows


def _pruned_codes(codes, sparsity: float, gen):
    """``codes`` (sparsity 0) or codes +-1 at random places of share ``1 - sparsity``, 0 elsewhere."""
    if sparsity == 0:
        return codes
    keep = torch.rand(codes.shape, generator=gen) >= sparsity
    return torch.where(keep, torch.where(torch.rand(codes.shape, generator=gen) < 0.5, 1, -1), 0).to(torch.int8)


def _prune_cases(gen) -> list:
    """(layer, case, x, codes, make, reference) per layer of the pruning sweep: spikes ``x``, the unpruned TWN
    ``codes``, ``make(codes)`` the frozen spike-input layer (no bias) with codes of that shape, and
    ``reference(layer, x)`` its exact output."""
    k = LINEAR["cpu"][0][0]
    codes, scale = tna_kernels.ternarize(torch.randn((k, k), generator=gen))
    x = (torch.rand((SWEEP_M, k), generator=gen) < PRUNE_RATE).float()

    def linear(c):
        layer = tna_kernels.nn.TernaryLinear(k, k, bias=False, spikes=True).freeze()
        layer.packed.copy_(tna_kernels.pack_ternary(c))
        layer.scale.copy_(scale)
        return layer

    input_shape, weight_shape = PRUNE_CONV
    c_codes, c_scale = tna_kernels.ternarize(torch.randn(weight_shape, generator=gen))
    c_x = (torch.rand(input_shape, generator=gen) < PRUNE_RATE).float()

    def conv(c):
        o, ch, kh, kw = weight_shape
        layer = tna_kernels.nn.TernaryConv2d(ch, o, (kh, kw), padding=CONV_PADDING, bias=False, spikes=True).freeze()
        layer.packed.copy_(tna_kernels.pack_ternary(c.reshape(o, -1)))
        layer.scale.copy_(c_scale.view(layer.scale.shape))
        return layer

    def linear_reference(layer, x):
        return ternary_linear_reference(x, layer.packed, layer.scale, spikes=True)

    def conv_reference(layer, x):
        return ternary_conv2d_reference(x, layer.packed, layer.scale, padding=CONV_PADDING,
                                        kernel_size=weight_shape[2:], spikes=True)

    return [("linear", f"M={SWEEP_M} K={k} N={k}", x, codes, linear, linear_reference),
            ("conv2d", f"x {list(input_shape)} W {list(weight_shape)} padding {CONV_PADDING}", c_x, c_codes, conv,
             conv_reference)]


def prune_sweep(quick: bool) -> list:
    """Rows (layer, case, sparsity, density, layout, ms, speedup_vs_unpruned) of pruned frozen linear and conv2d
    layers, each on the same spikes at every sparsity."""
    from tna_kernels.ops.ternary.op import is_sparse_layout

    gen = torch.Generator().manual_seed(1)
    sparsities = (0.0, PRUNE_GOAL[1]) if quick else PRUNE_SPARSITIES
    rows = []
    for layer_kind, case, x, codes, make, reference in _prune_cases(gen):
        layers = {}
        with torch.no_grad():
            for sparsity in sparsities:
                layer = make(_pruned_codes(codes, sparsity, gen))
                if not torch.equal(layer(x), reference(layer, x)):
                    raise AssertionError(f"the frozen {layer_kind} layer at weight sparsity {sparsity} differs from "
                                         "the exact reference")
                layers[sparsity] = layer
            times = {sparsity: [] for sparsity in layers}
            for _ in range(timing_rounds("cpu", quick)):
                for sparsity, layer in layers.items():
                    times[sparsity].append(time_ms(partial(layer, x), "cpu", quick))
        base = statistics.median(times[0.0])
        for sparsity, layer in layers.items():
            ms = statistics.median(times[sparsity])
            density = torch.ops.tna_cpp.ternary_code_density(layer.packed, codes[0].numel())
            rows.append(dict(layer=layer_kind, case=case, rate=PRUNE_RATE, sparsity=sparsity, density=density,
                             layout="sparse" if is_sparse_layout(layer._layout) else "dense", ms=ms,
                             speedup_vs_unpruned=base / ms))
    return rows


def prune_goals(pruned) -> list:
    """The pruning goal: the unpruned layer's time over the pruned one's at the goal's sparsity."""
    goal, sparsity, target = PRUNE_GOAL
    value = next((r["speedup_vs_unpruned"] for r in pruned if r["layer"] == "linear" and r["sparsity"] == sparsity),
                 None)
    return [dict(goal=goal, target=target, value=value, met=None if value is None else value >= target)]


def rate_goals(sweep) -> list:
    """The spike-rate goals: the frozen layer's time at 20 % spikes over its time at 5 %."""
    result = []
    for goal, layer, target in RATE_GOALS:
        times = {r["rate"]: r["ms"] for r in sweep if r["layer"] == layer and r["impl"] == SWEEP_KERNELS["auto"]}
        value = times[0.2] / times[0.05] if {0.05, 0.2} <= set(times) else None
        result.append(dict(goal=goal, target=target, value=value, met=None if value is None else value >= target))
    return result


def goals(device: str, rows, weights) -> list:
    """The issue's goals for ``device``: each with the worst measured value (None: not measured)."""
    result = []
    for goal, goal_device, layer, inputs, baseline, selects, target in SPEED_GOALS:
        if goal_device != device:
            continue
        values = [r[f"speedup_vs_{baseline}"] for r in rows
                  if r["layer"] == layer and r["impl"] == _goal_impl(device) and r["input"] in inputs
                  and selects(r["shape"])]
        value = min(values) if values else None
        result.append(dict(goal=goal, target=target, value=value, met=None if value is None else value >= target))
    ratio = min(w["fp32_over_ternary"] for w in weights)
    result.append(dict(goal=MEMORY_GOAL[0], target=MEMORY_GOAL[1], value=ratio, met=ratio >= MEMORY_GOAL[1]))
    return result


def markdown(result) -> str:
    version_text = ", ".join(f"{name} {version}" for name, version in result["versions"].items())
    lines = [
        f"Ternary linear / conv2d on {result['device']}, {version_text}, commit {result['commit']}, {result['date']}",
        f"threads: {result['threads']}, malloc: {result['malloc']}, spike rate {result['spike_rate']:.0%}; "
        "TOP/s counts the 2*M*N*K operations of the dense product",
        "",
        "| layer | shape | input | implementation | time (ms) | TOP/s | vs fp32 | vs bf16 |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['layer']} | {r['case']} | {r['input']} ({r['dtype']}) | {r['impl']} | {r['ms']:.3f} | "
            f"{r['TOP/s']:.3f} | {r['speedup_vs_fp32']:.2f}x | {r['speedup_vs_bf16']:.2f}x |"
        )
    lines += [
        "",
        "| weight | ternary bytes (with scales) | fp32 bytes | bf16 bytes | fp32 / ternary | bf16 / ternary |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for w in result["weights"]:
        size = w["bytes"]
        lines.append(
            f"| {'x'.join(map(str, w['weight_shape']))} | {size['ternary']} | {size['fp32']} | {size['bf16']} | "
            f"{w['fp32_over_ternary']:.2f}x | {w['bf16_over_ternary']:.2f}x |"
        )
    if result.get("sweep"):
        lines += [
            "",
            f"Frozen layers (cached layout) against the spike rate, {SWEEP_M} rows for the linear layer:",
            "",
            "| layer | spike rate | implementation | time (ms) | vs fp32 |",
            "|---|---:|---|---:|---:|",
        ]
        for r in result["sweep"]:
            lines.append(f"| {r['layer']} | {r['rate']:.0%} | {r['impl']} | {r['ms']:.3f} | "
                         f"{r['speedup_vs_fp32']:.2f}x |")
    if result.get("pruned"):
        first = result["pruned"][0]
        lines += [
            "",
            f"Pruned frozen layers ({first['rate']:.0%} spikes): weight sparsity 0 is the TWN weight, the others codes "
            "+-1 at random places; the layout is the one the frozen module cached:",
            "",
            "| layer | shape | weight sparsity | non-zero codes | layout | time (ms) | unpruned / pruned |",
            "|---|---|---:|---:|---|---:|---:|",
        ]
        for r in result["pruned"]:
            lines.append(f"| {r.get('layer', 'linear')} | {r['case']} | {r['sparsity']:.0%} | {r['density']:.1%} | "
                         f"{r['layout']} | {r['ms']:.3f} | {r['speedup_vs_unpruned']:.2f}x |")
    lines += ["", "Goals:"]
    lines += goal_lines(result["goals"])
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "ternary", argv)
    malloc = tune_malloc(__file__, args, argv)
    torch.manual_seed(0)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    sizes, ms = LINEAR[args.device]
    convs = CONV[args.device]
    if args.quick:
        sizes, ms, convs = sizes[:1], ms[:1], convs[:1]
    jobs = [partial(_linear_job, args.device, m, k, k) for k in sizes for m in ms]
    jobs += [partial(_conv_job, args.device, input_shape, weight_shape) for input_shape, weight_shape in convs]
    rows, weights = bench(args.device, jobs, args.quick)
    sweep = rate_sweep(args.quick) if args.device == "cpu" else []
    pruned = prune_sweep(args.quick) if args.device == "cpu" else []
    result = dict(
        benchmark="ternary",
        device=device_name(args.device),
        versions=versions(),
        commit=git_commit(),
        date=utc_now(),
        threads=torch.get_num_threads(),
        malloc=malloc,
        spike_rate=SPIKE_RATE,
        rows=rows,
        sweep=sweep,
        pruned=pruned,
        weights=weights,
        goals=goals(args.device, rows, weights) + rate_goals(sweep) + (prune_goals(pruned) if pruned else []),
    )
    write_results("ternary", result, markdown(result), args)


if __name__ == "__main__":
    main()
