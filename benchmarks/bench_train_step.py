"""Benchmark one TNA training step (base + twin, forward, backward, two optimizer steps) of spiking ResNet-19.

Random CIFAR-shaped data (``[B, 3, 32, 32]``, 10 classes), ternary base and twin (first and last layer
full precision), the tna loss, SGD. Each backend runs in a fresh process, so peak memory is its own:
``auto`` (our kernels: C++ on CPU, Triton on CUDA) and ``torch`` (the reference loops, ``TNA_BACKEND=torch``).
Reported: images per second (median step time over the timed steps, after warm-up steps) and peak memory
(``torch.cuda.max_memory_allocated`` on GPU; the process's peak resident set size on CPU, which includes the
Python runtime and libraries). On CPU the batch is 16: at batch 64 the reference would need more memory
than the 24 GiB of the 2-core machines this project runs on.

    python benchmarks/bench_train_step.py                # GPU: batch 64, T=4 (CPU: batch 16, T=4)
    python benchmarks/bench_train_step.py --quick
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from common import device_name, git_commit, parse_args, tune_malloc, utc_now, versions, write_results

SHAPES = {"cpu": {"batch": 16, "timesteps": 4}, "cuda": {"batch": 64, "timesteps": 4}}
BACKENDS = ("auto", "torch")
STEPS = {"cpu": (3, 1), "cuda": (20, 5)}  # (timed steps, warm-up steps) of a full run


def measure(device: str, batch: int, timesteps: int, steps: int, warmup: int) -> dict:
    """Time ``steps`` TNA steps after ``warmup`` steps in this process (backend from ``TNA_BACKEND``)."""
    from tna.losses import objective
    from tna.models import Precision, build_model

    torch.manual_seed(0)
    models = [build_model("resnet19", 10, (3, 32, 32), timesteps, Precision("ternary")).to(device)
              for _ in range(2)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        loss = objective("tna", models[0](x), models[1](x), y)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_ms": seconds * 1e3, "images_per_s": batch / seconds, "peak_memory_bytes": peak,
            "peak_memory_kind": "cuda max_memory_allocated" if device == "cuda" else "process peak RSS"}


def main(argv=None) -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        device, batch, timesteps, steps, warmup = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(measure(device, batch, timesteps, steps, warmup)))
        return
    args = parse_args("Benchmark one TNA training step of spiking ResNet-19.", "train_step", argv)
    malloc = tune_malloc(__file__, args, argv)
    shape = SHAPES[args.device]
    steps, warmup = (2, 1) if args.quick else STEPS[args.device]
    rows = []
    for backend in BACKENDS:
        env = {**os.environ, "TNA_BACKEND": backend}
        command = [sys.executable, __file__, "--worker", args.device, str(shape["batch"]), str(shape["timesteps"]),
                   str(steps), str(warmup)]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        rows.append({"backend": backend, **json.loads(output.strip().splitlines()[-1])})
        print(f"{backend}: {rows[-1]['images_per_s']:.2f} images/s", file=sys.stderr)
    ours, reference = rows
    speedup = ours["images_per_s"] / reference["images_per_s"]
    memory = ours["peak_memory_bytes"] / reference["peak_memory_bytes"]
    result = {
        "benchmark": "train_step", "device": device_name(args.device), "versions": versions(),
        "commit": git_commit(), "date": utc_now(), "malloc": malloc, "threads": torch.get_num_threads(),
        "model": "spiking ResNet-19, ternary base and twin, tna loss, SGD", **shape, "steps": steps,
        "warmup": warmup, "rows": rows, "speedup": speedup, "memory_ratio": memory,
    }
    names = {"auto": "tna kernels", "torch": "reference (TNA_BACKEND=torch)"}
    lines = [f"One TNA step (base + twin) of spiking ResNet-19, batch {shape['batch']}, T={shape['timesteps']}, on "
             f"{result['device']}, torch {versions()['torch']}, commit {result['commit']}, {result['date']}", "",
             "| backend | step (ms) | images/s | peak memory (MiB) |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {names[row['backend']]} | {row['step_ms']:.1f} | {row['images_per_s']:.2f} | "
                     f"{row['peak_memory_bytes'] / 2**20:.0f} |")
    lines += ["", f"Speed-up {speedup:.2f}x, memory {memory:.2f}x of the reference "
                  f"({rows[0]['peak_memory_kind']}). GPU goal: >= 3x images/s at <= 0.6x peak memory."]
    write_results("train_step", result, "\n".join(lines) + "\n", args)


if __name__ == "__main__":
    main()
