"""Benchmark the fused multi-step LIF against the eager reference, its torch.compile, and peers.

CPU: our C++ kernel, the eager reference loop, and ``torch.compile`` of the reference, forward
(inference) and forward+backward, at [T=16, B=32, 4096], [T=4, B=64, 128x16x16] and T in {4, 8, 16, 32}.
GPU (when CUDA is present): additionally the Triton kernel and SpikingJelly's ``LIFNode(step_mode='m')``
with every backend it offers, at [T, 64 x 65536] in float32 and bfloat16, with GB/s counted from the
minimum bytes moved, next to the measured device copy bandwidth.

Our kernel is timed twice: as is, and "+ count": also returning the fused spike count, whose penalty
gradient then joins the backward sweep. The results list the count's overhead (goal: under 5%).

Every implementation is checked equal to the reference (spikes exactly) before it is timed.

On Linux CPUs the script restarts itself with glibc's malloc tuned (see ``common.py``;
``--system-malloc`` keeps the default).

    python benchmarks/bench_lif.py            # full run, writes benchmarks/results/lif_<device>.json
    python benchmarks/bench_lif.py --quick    # a short smoke run of every entry
"""
import statistics
import sys

import torch

from common import (
    device_name, git_commit, parse_args, time_ms, timing_rounds, tune_malloc, utc_now, versions, write_results,
)
from tna_kernels import lif_multistep
from tna_kernels.ops.lif import lif_multistep_reference

CPU_SHAPES = [(16, 32, 4096), (4, 64, 128, 16, 16)] + [(t, 32, 4096) for t in (4, 8, 32)]
GPU_SHAPES = [(t, 64 * 65536) for t in (4, 8, 16, 32)]

# Minimum bytes per neuron-step, in units of the element size: forward reads x and writes spikes;
# the training forward also writes u; the backward reads grad_spikes and u and writes grad_x.
BYTES_PER_ELEMENT = {"forward": 2, "forward+backward": 6}

# Gradient of the spike count (the weight of a spike-count penalty) in the "+ count" entries.
COUNT_GRAD = 1e-3


def _implementations(device: str):
    """name -> function(x) returning spikes, or (spikes, count) for "+ count" (x requires grad for
    forward+backward).

    Call once per shape and dtype: torch.compile of the reference is created afresh (after a dynamo
    reset), so it compiles for exactly that input and never hits the recompilation limit.
    """
    torch._dynamo.reset()
    compiled_reference = torch.compile(lambda x: lif_multistep_reference(x)[0], dynamic=False)
    impls = {
        "reference (eager)": lambda x: lif_multistep(x, backend="torch"),
        "reference (torch.compile)": compiled_reference,
    }
    ours = "tna C++" if device == "cpu" else "tna Triton"
    impls[ours] = lambda x: lif_multistep(x)
    impls[f"{ours} + count"] = lambda x: lif_multistep(x, return_count=True)
    if device == "cuda":
        impls.update(_spikingjelly_impls())
    return impls


def _spikingjelly_impls():
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError:
        return {}
    impls = {}
    for provider in neuron.LIFNode(step_mode="m").supported_backends:
        node = neuron.LIFNode(
            tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=False,
            surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m", backend=provider,
        ).cuda()

        def run(x, node=node):
            node.reset()
            return node(x)

        impls[f"SpikingJelly ({provider})"] = run
    return impls


def _check(impl, name, x):
    with torch.no_grad():
        got = impl(x)
        want = lif_multistep(x, backend="torch")
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
        outputs.backward(grad)
    else:
        torch.autograd.backward(list(outputs), [grad, count_grad])


def bench(device: str, jobs, quick: bool):
    """Time every implementation on each ``(shape, dtype)`` of ``jobs``; returns one row per measurement."""
    from tqdm import tqdm

    rows = []
    for shape, dtype in tqdm(jobs, desc=f"LIF on {device}", file=sys.stderr):
        impls = _implementations(device)
        x = (torch.randn(shape, device=device) * 1.5 + 1).to(dtype)
        grad = torch.randn(shape, device=device).to(dtype)
        count_grad = torch.tensor(COUNT_GRAD, device=device)
        entries = []  # (implementation, mode, function)
        for name, impl in impls.items():
            _check(impl, name, x)
            leaf = x.detach().requires_grad_(True)

            def forward(impl=impl):
                with torch.no_grad():
                    impl(x)

            def forward_backward(impl=impl, leaf=leaf):
                _backward(impl(leaf), grad, count_grad)
                leaf.grad = None

            entries += [(name, "forward", forward), (name, "forward+backward", forward_backward)]
        times = {(name, mode): [] for name, mode, _ in entries}
        peak = {}
        for _ in range(timing_rounds(device, quick)):
            for name, mode, fn in entries:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times[name, mode].append(time_ms(fn, device, quick))
                if device == "cuda":
                    peak[name, mode] = torch.cuda.max_memory_allocated() / 2**20
        for (name, mode), ms_list in times.items():
            ms = statistics.median(ms_list)
            row = dict(impl=name, shape=list(shape), dtype=str(dtype).removeprefix("torch."), mode=mode, ms=ms)
            row["GB/s"] = BYTES_PER_ELEMENT[mode] * x.numel() * x.element_size() / ms / 1e6
            if device == "cuda":
                row["peak_MiB"] = peak[name, mode]
            rows.append(row)
    for row in rows:
        eager = next(
            r["ms"] for r in rows
            if r["impl"] == "reference (eager)" and r["shape"] == row["shape"] and r["dtype"] == row["dtype"]
            and r["mode"] == row["mode"]
        )
        row["speedup_vs_eager"] = eager / row["ms"]
        if row["impl"].endswith(" + count"):
            plain = next(
                r["ms"] for r in rows
                if r["impl"] == row["impl"].removesuffix(" + count") and r["shape"] == row["shape"]
                and r["dtype"] == row["dtype"] and r["mode"] == row["mode"]
            )
            row["count_overhead"] = row["ms"] / plain - 1
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
        f"torch {result['versions']['torch']}, commit {result['commit']}, {result['date']}",
        f"malloc: {result.get('malloc', 'system default')}",
        "",
        "| shape | dtype | mode | implementation | time (ms) | GB/s | vs eager |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        shape = "x".join(map(str, r["shape"]))
        lines.append(
            f"| {shape} | {r['dtype']} | {r['mode']} | {r['impl']} | {r['ms']:.3f} | {r['GB/s']:.1f} | "
            f"{r['speedup_vs_eager']:.1f}x |"
        )
    counted = [r for r in result["rows"] if "count_overhead" in r]
    if counted:
        lines += ["", "Overhead of the fused spike count (count returned, its penalty gradient in the backward):", ""]
    for r in counted:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"- {shape} {r['dtype']} {r['mode']}: {100 * r['count_overhead']:+.1f}%")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "lif", argv)
    malloc = tune_malloc(__file__, args, argv)
    if args.device == "cpu":  # bfloat16 on the first shape only
        jobs = [(shape, torch.float32) for shape in CPU_SHAPES] + [(CPU_SHAPES[0], torch.bfloat16)]
    else:
        jobs = [(shape, dtype) for shape in GPU_SHAPES for dtype in (torch.float32, torch.bfloat16)]
    if args.quick:
        jobs = [job for job in jobs if job[0] == jobs[0][0]]
    library_versions = versions()
    try:
        import spikingjelly

        library_versions["spikingjelly"] = getattr(spikingjelly, "__version__", "installed")
    except ImportError:
        pass
    result = dict(
        benchmark="lif",
        device=device_name(args.device),
        versions=library_versions,
        commit=git_commit(),
        date=utc_now(),
        malloc=malloc,
        copy_GBps=copy_bandwidth_gbps(args.device, args.quick),
        rows=bench(args.device, jobs, args.quick),
    )
    write_results("lif", result, markdown(result), args)


if __name__ == "__main__":
    main()
