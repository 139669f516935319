"""The Open Neuromorphic SNN library benchmark: Linear(n -> n) followed by a LIF layer, batch 16, over T steps.

For n in {4096, 8192, 16384}: the forward time (with autograd recording, as in training), the backward
time (of a random upstream gradient, to the linear layer's weight and bias) and the peak memory of one
forward+backward, for each LIF implementation of ``bench_lif.py`` but ``torch.compile`` (which would
unroll hundreds of steps) and the "+ count" variant. Full size (T = 500) on GPU, reduced (T = 100) on CPU.
All implementations share one float32 ``nn.Linear`` and one input ``x`` [T, 16, n] (standard normal
times 2); before timing, each one's spikes on the linear layer's output are checked equal to ours
(peers under the options whose equations they share; a peer that cannot share them is marked).

The backward time is the median forward+backward time minus the median forward time. On a CPU the
implementations are timed in turn over several rounds, so that a slow spell of a shared machine does not
fall on one of them only. On a CPU the
process runs with glibc's malloc returning every block of 64 KiB or more to the OS (``MALLOC_MEASURE``),
so that the resident set size measures peak memory; the linear layer dominates the time, and the page
faults this costs are a small part of it.

    python benchmarks/bench_open_neuromorphic.py           # writes benchmarks/results/open_neuromorphic_<device>.json
    python benchmarks/bench_open_neuromorphic.py --quick   # n = 4096 only, one round
"""
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_lif import EAGER, check, implementations, ours_name
from common import (
    MALLOC_MEASURE, MALLOC_TUNING, device_name, git_commit, parse_args, peak_memory_mib, time_ms, utc_now, versions,
    write_results,
)
from peers import peer_versions

SIZES = (4096, 8192, 16384)
SETTINGS = {"cpu": {"timesteps": 100, "batch": 16}, "cuda": {"timesteps": 500, "batch": 16}}
CPU_REPEATS = {4096: 5, 8192: 3, 16384: 3}
"""CPU timing rounds per n: a forward+backward at n = 16384 and T = 100 takes seconds."""


def call_ms(fn) -> float:
    """Wall time of one call of ``fn`` in ms (CPU)."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def bench_size(device: str, n: int, quick: bool) -> list:
    """Rows for every implementation at ``n`` neurons.

    On GPU each function is timed by ``common.time_ms``. On CPU a call takes from a tenth of a second to
    several seconds: the implementations are timed in turn, one call of each function per round, over
    ``CPU_REPEATS[n]`` rounds (the peak-memory call before them is the warm-up), and each keeps its median.
    """
    setting = SETTINGS[device]
    torch.manual_seed(0)
    linear = torch.nn.Linear(n, n, device=device)
    x = 2 * torch.randn(setting["timesteps"], setting["batch"], n, device=device)
    impls = implementations(device, torch.float32, compiled=False, counted=False)
    with torch.no_grad():
        check(impls, linear(x))
    grad = torch.randn(setting["timesteps"], setting["batch"], n, device=device)
    functions, peaks = {}, {}
    for name, (lif, _, _) in impls.items():
        def forward(lif=lif):
            return lif(linear(x))

        def forward_backward(forward=forward):
            forward().backward(grad)
            linear.zero_grad(set_to_none=True)

        functions[name] = (forward, forward_backward)
        peaks[name] = peak_memory_mib(forward_backward, device)
    times = {name: ([], []) for name in impls}
    rounds = 1 if quick or device == "cuda" else CPU_REPEATS[n]
    for _ in range(rounds):
        for name, pair in functions.items():
            for fn, found in zip(pair, times[name]):
                found.append(time_ms(fn, device, quick) if device == "cuda" else call_ms(fn))
    rows = []
    for name, (forward_times, both_times) in times.items():
        forward_ms, both_ms = statistics.median(forward_times), statistics.median(both_times)
        rows.append(dict(impl=name, n=n, **setting, same_equations=impls[name][1] is not None,
                         forward_ms=forward_ms, backward_ms=both_ms - forward_ms, total_ms=both_ms,
                         peak_MiB=peaks[name]))
    eager = next(r for r in rows if r["impl"] == EAGER)
    for row in rows:
        row["speedup_vs_eager"] = eager["total_ms"] / row["total_ms"]
    return rows


def markdown(result) -> str:
    s = result["settings"]
    lines = [
        f"Open Neuromorphic benchmark (Linear(n -> n) + LIF, batch {s['batch']}, T = {s['timesteps']}) on "
        f"{result['device']}, " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + f", commit {result['commit']}, {result['date']}",
        "",
        "| n | implementation | forward (ms) | backward (ms) | total (ms) | vs eager | peak memory (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        name = r["impl"] if r["same_equations"] else r["impl"] + " (other equations)"
        lines.append(f"| {r['n']} | {name} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} | {r['total_ms']:.1f} | "
                     f"{r['speedup_vs_eager']:.2f}x | {r['peak_MiB']:.0f} |")
    ours = ours_name(result["device_kind"])
    lines += ["", "Fastest forward+backward per n:", ""]
    for n in sorted({r["n"] for r in result["rows"]}):
        group = [r for r in result["rows"] if r["n"] == n]
        best = min(group, key=lambda r: r["total_ms"])
        mine = next(r for r in group if r["impl"] == ours)
        lines.append(f"- n = {n}: {best['impl']} ({best['total_ms']:.1f} ms; {ours} {mine['total_ms']:.1f} ms)")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "open_neuromorphic", argv)
    measuring = all(os.environ.get(k) == v for k, v in MALLOC_MEASURE.items())
    if args.device == "cpu" and platform.system() == "Linux" and not measuring:
        argv = sys.argv[1:] if argv is None else list(argv)
        env = {k: v for k, v in os.environ.items() if k not in MALLOC_TUNING}
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], {**env, **MALLOC_MEASURE})
    from tqdm import tqdm

    sizes = SIZES[:1] if args.quick else SIZES
    rows = []
    for n in tqdm(sizes, desc=f"Open Neuromorphic on {args.device}", file=sys.stderr):
        rows += bench_size(args.device, n, args.quick)
    result = dict(benchmark="open_neuromorphic", device=device_name(args.device), device_kind=args.device,
                  versions={**versions(), **peer_versions()}, commit=git_commit(), date=utc_now(),
                  malloc="glibc, blocks of 64 KiB or more mapped and returned (MALLOC_MMAP_THRESHOLD_=65536)"
                  if args.device == "cpu" else "n/a", settings=SETTINGS[args.device], rows=rows)
    write_results("open_neuromorphic", result, markdown(result), args)


if __name__ == "__main__":
    main()
