"""Benchmark the fused multi-step LIF against the eager reference, its torch.compile, and peers.

Implementations: our kernel (C++ on CPU, Triton on CUDA), the eager reference loop, ``torch.compile`` of
the reference, and the peers that are installed (``peers.py``): SpikingJelly's ``LIFNode(step_mode='m')``
with every backend it offers on the device, snnTorch's ``Leaky`` in a time loop, Norse's ``LIFBox`` and
``LIF``. Each is checked before it is timed: its spikes must equal ours under the options whose equations
it shares (a peer that cannot share our equations is timed and marked as such).

Shapes: CPU [T=16, B=32, 4096] (the LIF issue's shape), [T=4, B=64, 128x16x16], T in {4, 8, 32} at
32x4096 and neuron counts 32x1024 and 32x16384 at T=16, float32 (and bfloat16 at the first shape);
GPU [T, 64 x 65536] for T in {4, 8, 16, 32}, float32 and bfloat16. Forward is inference
(``torch.no_grad``); forward+backward uses a random upstream gradient. GB/s counts the bytes of
``BYTES_PER_ELEMENT`` per neuron-step, next to the measured device copy bandwidth. Peak memory is what one call adds to the inputs
(``common.peak_memory_mib``; on CPU measured in a separate process, and not for ``torch.compile``).

Our kernel is timed twice: as is, and "+ count": also returning the fused spike count, whose penalty
gradient then joins the backward sweep. The results list the count's overhead (goal: under 5%).

On Linux CPUs the script restarts itself with glibc's malloc tuned (see ``common.py``;
``--system-malloc`` keeps the default).

    python benchmarks/bench_lif.py            # full run, writes benchmarks/results/lif_<device>.json
    python benchmarks/bench_lif.py --quick    # a short smoke run of every entry
"""
import json
import statistics
import sys

import torch

from common import (
    device_name, git_commit, goal_lines, memory_pass, parse_args, peak_memory_mib, time_ms, timing_rounds, tune_malloc,
    utc_now, versions, write_results,
)
from peers import lif_peers, peer_versions
from tna_kernels import lif_multistep
from tna_kernels.ops.lif import lif_multistep_reference

CPU_SHAPES = ([(16, 32, 4096), (4, 64, 128, 16, 16)] + [(t, 32, 4096) for t in (4, 8, 32)]
              + [(16, 32, n) for n in (1024, 16384)])
GPU_SHAPES = [(t, 64 * 65536) for t in (4, 8, 16, 32)]

# Bytes per neuron-step, in units of the element size, that GB/s counts: the forward reads x and writes
# spikes; the training forward also writes u; the backward reads grad_spikes and u and writes grad_x.
# (Our CPU kernels move one fewer at large sizes, where the backward re-reads x instead of a saved u.)
BYTES_PER_ELEMENT = {"forward": 2, "forward+backward": 6}

# Gradient of the spike count (the weight of a spike-count penalty) in the "+ count" entries.
COUNT_GRAD = 1e-3
EAGER = "reference (eager)"
COMPILED = "reference (torch.compile)"


def ours_name(device: str) -> str:
    return "tna C++" if device == "cpu" else "tna Triton"


def implementations(device: str, dtype: torch.dtype, compiled: bool = True, counted: bool = True) -> dict:
    """name -> (function(x) returning spikes, or (spikes, count) for "+ count"; the ``lif_multistep``
    options whose spikes it must equal, or None for a peer whose equations differ from ours; whether
    it is a peer).

    Call once per shape and dtype: torch.compile of the reference is created afresh (after a dynamo
    reset), so it compiles for exactly that input and never hits the recompilation limit.
    """
    impls = {EAGER: (lambda x: lif_multistep(x, backend="torch"), {}, False)}
    if compiled:
        torch._dynamo.reset()
        impls[COMPILED] = (torch.compile(lambda x: lif_multistep_reference(x)[0], dynamic=False), {}, False)
    ours = ours_name(device)
    impls[ours] = (lambda x: lif_multistep(x), {}, False)
    if counted:
        impls[f"{ours} + count"] = (lambda x: lif_multistep(x, return_count=True), {}, False)
    for peer in lif_peers(device, dtype):
        impls[peer.name] = (peer.run, peer.ours, True)
    return impls


def check(impls: dict, x) -> None:
    """Raise unless each implementation's spikes (and count) equal ``lif_multistep(x, **options)``'s.

    Peers are checked on float32 input: in lower precision their state arithmetic differs from ours. For a
    lower-precision ``x`` that is a fresh float32 draw, as ``x`` rounded to float32 would put many membranes
    exactly on the threshold, where peers that fire on ``>`` rightly differ from our ``>=``.
    """
    x32 = x if x.dtype == torch.float32 else torch.randn(x.shape, device=x.device) * 1.5 + 1
    for name, (impl, options, peer) in impls.items():
        if options is not None:
            _check(impl, name, options, x32 if peer else x)


def _check(impl, name: str, options: dict, x) -> None:
    with torch.no_grad():
        got = impl(x)
        want = lif_multistep(x, backend="torch", **options)
    if not torch.is_tensor(got):
        got, count = got
        if count.item() != want.double().sum().item():
            raise AssertionError(f"{name} counts {count.item()} spikes, the reference {want.double().sum().item()}")
    if not torch.equal(got.to(want.dtype), want):
        mismatch = (got.to(want.dtype) != want).float().mean().item()
        raise AssertionError(f"{name} disagrees with the reference on {mismatch:.2e} of the spikes")


def _backward(outputs, grad, count_grad):
    """Backward the spikes' gradient, and ``count_grad`` into the count when ``outputs`` has one."""
    if torch.is_tensor(outputs):
        outputs.backward(grad.to(outputs.dtype))
    else:
        torch.autograd.backward(list(outputs), [grad, count_grad])


def _entries(impls: dict, x, grad, count_grad) -> list:
    """(implementation, mode, function) for every implementation in both modes."""
    entries = []
    for name, (impl, _, _) in impls.items():
        leaf = x.detach().requires_grad_(True)

        def forward(impl=impl):
            with torch.no_grad():
                impl(x)

        def forward_backward(impl=impl, leaf=leaf):
            _backward(impl(leaf), grad, count_grad)
            leaf.grad = None

        entries += [(name, "forward", forward), (name, "forward+backward", forward_backward)]
    return entries


def _inputs(shape, dtype, device):
    x = (torch.randn(shape, device=device) * 1.5 + 1).to(dtype)
    grad = torch.randn(shape, device=device).to(dtype)
    return x, grad, torch.tensor(COUNT_GRAD, device=device)


def _jobs(device: str, quick: bool) -> list:
    if device == "cpu":  # bfloat16 on the first shape only
        jobs = [(shape, torch.float32) for shape in CPU_SHAPES] + [(CPU_SHAPES[0], torch.bfloat16)]
    else:
        jobs = [(shape, dtype) for shape in GPU_SHAPES for dtype in (torch.float32, torch.bfloat16)]
    return [job for job in jobs if job[0] == jobs[0][0]] if quick else jobs


def _key(name, shape, dtype, mode) -> str:
    return "|".join([name, "x".join(map(str, shape)), str(dtype).removeprefix("torch."), mode])


def measure_memory(device: str, quick: bool) -> dict:
    """``_key`` -> peak MiB of one call, for every implementation but torch.compile, on every job."""
    peaks = {}
    for shape, dtype in _jobs(device, quick):
        x, grad, count_grad = _inputs(shape, dtype, device)
        for name, mode, fn in _entries(implementations(device, dtype, compiled=False), x, grad, count_grad):
            fn()
            peaks[_key(name, shape, dtype, mode)] = peak_memory_mib(fn, device)
    return peaks


def bench(device: str, jobs, quick: bool, peaks: dict):
    """Time every implementation on each ``(shape, dtype)`` of ``jobs``; returns one row per measurement, and
    one per job with the time of ``x.clone()`` (shape, dtype, ms), timed in the same rounds.

    ``peaks`` holds the CPU peak memory from ``measure_memory`` (on GPU it is measured here).
    """
    from tqdm import tqdm

    rows, copies = [], []
    for shape, dtype in tqdm(jobs, desc=f"LIF on {device}", file=sys.stderr):
        impls = implementations(device, dtype)
        x, grad, count_grad = _inputs(shape, dtype, device)
        check(impls, x)
        entries = _entries(impls, x, grad, count_grad)
        times = {(name, mode): [] for name, mode, _ in entries}
        copy_ms = []
        for _ in range(timing_rounds(device, quick)):
            for name, mode, fn in entries:
                times[name, mode].append(time_ms(fn, device, quick))
            copy_ms.append(time_ms(x.clone, device, quick))
        copies.append(dict(shape=list(shape), dtype=str(dtype).removeprefix("torch."), ms=statistics.median(copy_ms)))
        if device == "cuda":
            peaks.update({_key(name, shape, dtype, mode): peak_memory_mib(fn, device) for name, mode, fn in entries})
        for (name, mode), ms_list in times.items():
            ms = statistics.median(ms_list)
            row = dict(impl=name, shape=list(shape), dtype=str(dtype).removeprefix("torch."), mode=mode, ms=ms,
                       round_ms=ms_list, same_equations=impls[name][1] is not None,
                       peak_MiB=peaks.get(_key(name, shape, dtype, mode)))
            row["GB/s"] = BYTES_PER_ELEMENT[mode] * x.numel() * x.element_size() / ms / 1e6
            rows.append(row)
    for row in rows:
        group = [r for r in rows if (r["shape"], r["dtype"], r["mode"]) == (row["shape"], row["dtype"], row["mode"])]
        row["speedup_vs_eager"] = next(r["ms"] for r in group if r["impl"] == EAGER) / row["ms"]
        if row["impl"].endswith(" + count"):
            # paired by round (the two are timed one after the other), so a slow spell cancels out
            plain = next(r for r in group if r["impl"] == row["impl"].removesuffix(" + count"))
            row["count_overhead"] = statistics.median(
                counted / alone for counted, alone in zip(row["round_ms"], plain["round_ms"])) - 1
    return rows, copies


def goals(rows, copies: list, device: str) -> list:
    """The CPU goals of the LIF work at the first shape in float32 (none on GPU): forward+backward >= 8x the eager
    reference and >= 2x its torch.compile; the inference forward within 2x of ``x.clone()`` of the same tensor
    (value: twice the copy's time over the forward's, target 1)."""
    if device != "cpu":
        return []
    shape, ours = CPU_SHAPES[0], ours_name(device)
    ms = {(r["impl"], r["mode"]): r["ms"] for r in rows if tuple(r["shape"]) == shape and r["dtype"] == "float32"}
    copy = next((c["ms"] for c in copies if tuple(c["shape"]) == shape and c["dtype"] == "float32"), None)
    name = "x".join(map(str, shape))
    wanted = [(f"LIF forward+backward {name} float32 vs the {EAGER}", 8.0, EAGER, "forward+backward"),
              (f"LIF forward+backward {name} float32 vs the {COMPILED}", 2.0, COMPILED, "forward+backward")]
    result = []
    for goal, target, other, mode in wanted:
        value = ms[other, mode] / ms[ours, mode] if (other, mode) in ms and (ours, mode) in ms else None
        result.append(dict(goal=goal, target=target, value=value, met=None if value is None else value >= target))
    forward = ms.get((ours, "forward"))
    value = 2 * copy / forward if copy is not None and forward is not None else None
    result.append(dict(goal=f"LIF inference forward {name} float32 within 2x of the time of x.clone() (value: twice "
                            "the copy's time over the forward's)", target=1.0, value=value,
                       met=None if value is None else value >= 1.0))
    return result


def fastest(result) -> list:
    """One line per (shape, dtype, mode): our kernel (without the count) against the fastest entry that is
    not ours."""
    ours = ours_name(result["device_kind"])
    lines = []
    for (shape, dtype, mode), group in _groups(result["rows"]).items():
        plain = next(r for r in group if r["impl"] == ours)
        other = min((r for r in group if not r["impl"].startswith(ours)), key=lambda r: r["ms"])
        verdict = "ours" if plain["ms"] <= other["ms"] else other["impl"]
        lines.append(f"- {shape} {dtype} {mode}: fastest {verdict}; {ours} {plain['ms']:.3f} ms vs the fastest "
                     f"other entry ({other['impl']}) {other['ms']:.3f} ms = {other['ms'] / plain['ms']:.2f}x")
    return lines


def ours_fastest(rows, ours: str, mode: str) -> tuple:
    """(shapes where our kernel without the count beats every entry that is not ours, shapes) in ``mode``."""
    groups = [group for (_, _, m), group in _groups(rows).items() if m == mode]
    won = sum(next(r for r in group if r["impl"] == ours)["ms"]
              <= min(r["ms"] for r in group if not r["impl"].startswith(ours)) for group in groups)
    return won, len(groups)


def _groups(rows) -> dict:
    """(shape "AxB", dtype, mode) -> rows, in order."""
    groups = {}
    for r in rows:
        groups.setdefault(("x".join(map(str, r["shape"])), r["dtype"], r["mode"]), []).append(r)
    return groups


def saved_bytes(device: str, quick: bool) -> list:
    """Bytes that one forward of our kernel keeps for its backward beyond its input x (which the caller
    holds anyway), per neuron-step: at every shape, in float32 and bfloat16, with and without
    ``memory_saving`` (the LIF issue's goal: at most 2 in bfloat16, none in memory-saving mode)."""
    rows = []
    shapes = dict.fromkeys(shape for shape, _ in _jobs(device, quick))
    for shape, dtype in [(shape, dtype) for shape in shapes for dtype in (torch.float32, torch.bfloat16)]:
        x = _inputs(shape, dtype, device)[0].requires_grad_(True)
        for memory_saving in (False, True):
            kept = {}

            def pack(t):
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                lif_multistep(x, memory_saving=memory_saving)
            kept.pop(x.untyped_storage().data_ptr(), None)
            rows.append(dict(shape=list(shape), dtype=str(dtype).removeprefix("torch."), memory_saving=memory_saving,
                             bytes_per_neuron_step=sum(kept.values()) / x.numel()))
    return rows


def copy_bandwidth_gbps(device: str, quick: bool) -> float:
    """Measured device copy bandwidth (read + write bytes per second) on a 1 GiB (CPU: 256 MiB) buffer."""
    numel = (2**28 if device == "cuda" else 2**26)
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, quick)
    return 2 * numel * 4 / ms / 1e6


def markdown(result) -> str:
    lines = [
        f"LIF on {result['device']} (copy bandwidth {result['copy_GBps']:.0f} GB/s), "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + f", commit {result['commit']}, {result['date']}",
        f"malloc: {result.get('malloc', 'system default')}",
        "",
        "| shape | dtype | mode | implementation | time (ms) | GB/s | vs eager | peak memory (MiB) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        shape = "x".join(map(str, r["shape"]))
        name = r["impl"] if r["same_equations"] else r["impl"] + " (other equations)"
        peak = "-" if r.get("peak_MiB") is None else f"{r['peak_MiB']:.1f}"
        lines.append(f"| {shape} | {r['dtype']} | {r['mode']} | {name} | {r['ms']:.3f} | {r['GB/s']:.1f} | "
                     f"{r['speedup_vs_eager']:.1f}x | {peak} |")
    if result.get("goals"):
        lines += ["", "Goals:", ""] + goal_lines(result["goals"])
    copies = result.get("copy_ms", [])
    if copies:
        lines += ["", "Time of x.clone() (a copy of the input, the floor of an inference forward): " + ", ".join(
            f"{'x'.join(map(str, c['shape']))} {c['dtype']} {c['ms']:.3f} ms" for c in copies)]
    lines += ["", "Fastest entry per shape:", ""] + fastest(result)
    counted = [r for r in result["rows"] if "count_overhead" in r]
    if counted:
        lines += ["", "Overhead of the fused spike count (count returned, its penalty gradient in the backward; the "
                  "median over the timing rounds of the time with the count over the time without it):", ""]
    for r in counted:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"- {shape} {r['dtype']} {r['mode']}: {100 * r['count_overhead']:+.1f}%")
    saved = result.get("saved_bytes", [])
    if saved:
        lines += ["", f"Bytes {ours_name(result['device_kind'])} keeps for the backward beyond its input, per "
                  "neuron-step (goal: at most 2 in bfloat16, none in memory-saving mode):", ""]
        lines += ["| shape | float32 | bfloat16 | float32, memory_saving | bfloat16, memory_saving |",
                  "|---|---:|---:|---:|---:|"]
        for shape in dict.fromkeys(tuple(r["shape"]) for r in saved):
            cells = {(r["dtype"], r["memory_saving"]): r["bytes_per_neuron_step"] for r in saved
                     if tuple(r["shape"]) == shape}
            lines.append(f"| {'x'.join(map(str, shape))} | " + " | ".join(
                f"{cells[key]:.3f}" for key in (("float32", False), ("bfloat16", False), ("float32", True),
                                                 ("bfloat16", True))) + " |")
    notes = result.get("peer_notes", {})
    if notes:
        lines += ["", "Peers:", ""] + [f"- {name}: {note}" for name, note in notes.items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "lif", argv)
    if args.memory_worker:
        print(json.dumps(measure_memory(args.device, args.quick)))
        return
    malloc = tune_malloc(__file__, args, argv)
    peaks = memory_pass(__file__, args)
    result = dict(
        benchmark="lif",
        device=device_name(args.device),
        device_kind=args.device,
        versions={**versions(), **peer_versions()},
        commit=git_commit(),
        date=utc_now(),
        malloc=malloc,
        copy_GBps=copy_bandwidth_gbps(args.device, args.quick),
        saved_bytes=saved_bytes(args.device, args.quick),
        peer_notes={peer.name: peer.note for peer in lif_peers(args.device, torch.float32)},
    )
    result["rows"], copies = bench(args.device, _jobs(args.device, args.quick), args.quick, peaks)
    result["copy_ms"] = copies
    result["goals"] = goals(result["rows"], copies, args.device)
    write_results("lif", result, markdown(result), args)


if __name__ == "__main__":
    main()
