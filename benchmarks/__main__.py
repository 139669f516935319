"""Run every benchmark this machine supports, then redraw the plots and the README's performance section.

    python -m benchmarks                      # CPU always; the GPU runs too when CUDA is present
    python -m benchmarks --device cpu         # one device
    python -m benchmarks --only lif,ternary   # some benchmarks
    python -m benchmarks --quick              # a short smoke run (results named *_quick, left out of the README)
    python -m benchmarks --readme-only        # plots and README from the committed results, no benchmark run

Each benchmark runs as its own process (``benchmarks/bench_<name>.py``), so its memory and its malloc
settings are its own, and writes ``benchmarks/results/<name>_<device>.json`` and a ``.md`` table. Run it
from the repository root.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (benchmarks/ is put on the path first, as the scripts expect)

BENCHMARKS = {
    "lif": "LIF neuron: ours against the eager reference, torch.compile and the peers",
    "open_neuromorphic": "Linear(n -> n) + LIF, batch 16 (the Open Neuromorphic benchmark)",
    "ternary": "ternary linear and conv2d against dense F.linear / F.conv2d",
    "train_step": "one TNA training step of spiking ResNet-19",
    "deploy": "inference of deployed networks (digits, spiking VGG-11 at 5-20% spike rates): ternary against float",
}
CPU_ONLY = {"deploy"}
"""Benchmarks that measure CPU inference only: they do not run for --device cuda."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all (default): CPU, and CUDA when present")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma list of benchmarks (default all: {','.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="short smoke runs; not used for the README")
    parser.add_argument("--readme-only", action="store_true", help="only redraw the plots and the README section")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if not args.readme_only:
        devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
        if "cuda" in devices and not torch.cuda.is_available():
            if args.device == "cuda":
                parser.error("--device cuda: CUDA is not available on this machine")
            devices.remove("cuda")
        runs = [(name, device) for device in devices for name in chosen if device == "cpu" or name not in CPU_ONLY]
        failed = []
        for name, device in tqdm(runs, desc="benchmarks", unit="benchmark", file=sys.stderr):
            tqdm.write(f"== {name} on {device}: {BENCHMARKS[name]}", file=sys.stderr)
            command = [sys.executable, str(HERE / f"bench_{name}.py"), "--device", device]
            start = time.perf_counter()
            status = subprocess.run(command + (["--quick"] if args.quick else []), stdout=subprocess.DEVNULL).returncode
            tqdm.write(f"   {name} on {device}: {'done' if status == 0 else f'FAILED (exit {status})'} "
                       f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            if status:
                failed.append(f"{name} on {device}")
        if failed:
            print(f"failed: {', '.join(failed)}; the README was not regenerated", file=sys.stderr)
            return 1
    report.render()
    print(f"plots and tables in {report.RESULTS}; README performance section regenerated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
