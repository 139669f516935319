"""Compile every Triton launch of the package for an NVIDIA Hopper GPU (sm_90) on a machine without one,
and report what each autotune config costs in registers, spills and shared memory, and which tensor cores
its dots use.

The launch functions of ``tna_kernels/ops/*/triton.py`` are called on small CPU tensors (``LAUNCHES``)
with their kernels swapped for recorders. Each distinct launch (argument types, constexpr flags) is then
compiled with Triton's ahead-of-time compiler for ``GPUTarget("cuda", 90, 32)`` in every autotune config
its pruning keeps. ``cuobjdump -res-usage`` reads the registers and the stack (register spills) of each
cubin, Triton gives its shared memory, and the PTX shows which tensor-core instructions the dots became
(``wgmma``, ``mma.sync``, and their input type). The SASS of the main loop, per neuron-step (LIF) or
per ternary code a thread handles, is the issue cost that decides whether a kernel can keep up with
memory (an H100 issues about 4 warp instructions per cycle per SM). A kernel branch that does not
compile for Hopper (a type error in one constexpr combination, say) then fails here, on a CPU-only
machine, instead of on the first GPU run; the interpreter that runs the kernels in the CPU tests cannot
show that, nor what a config spills.

Each launch is specialized by Triton's own launch-time binder for the Hopper backend, as a real launch
with these arguments would be: integer arguments equal to 1 become constants, integers divisible by 16 and
aligned pointers are marked so. The launch shapes are small but keep the benchmarks' divisibility;
strides, paddings and dilations are those of the layers benchmarked (1 for a 3x3 conv).

This is a script: importing it clears ``TRITON_INTERPRET`` for the process, since the kernels must be
JIT functions, not the interpreter's.

    python benchmarks/hopper_compile.py                   # all configs: results/hopper_compile_sm90.{json,md}
    python benchmarks/hopper_compile.py --largest-config  # the largest config per launch (the test's check)
    python benchmarks/hopper_compile.py --only conv2d   # the launch cases whose name holds "conv2d"
"""
import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The kernels must be JIT functions, not the interpreter's: this must precede importing the kernel modules.
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from tna_kernels.ops.lif import triton as lif_triton  # noqa: E402
from tna_kernels.ops.ternary import triton as ternary_triton  # noqa: E402
from tna_kernels.ops.ternary.format import pack_ternary  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = GPUTarget("cuda", 90, 32)
_BACKEND = make_backend(TARGET)
MAX_SHARED_BYTES = 227 * 1024
"""Shared memory a thread block may use on an H100 / H200 (ptxas itself keeps registers within limits)."""
KERNELS = {
    lif_triton: ["lif_fwd_kernel", "lif_bwd_kernel"],
    ternary_triton: ["_linear_small_m", "_linear_tiled", "ternary_linear_finish_kernel",
                     "ternary_linear_bwd_input_kernel", "ternary_conv2d_fwd_kernel"],
}
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
         torch.uint8: "u8", torch.int8: "i8"}
"""Short dtype names for the launch cases."""
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _lif_forward(dtype, v_init=False, soft=False, decay_input=True, save_state=True, count=False):
    x = torch.randn(4, 4096).to(dtype)
    state = torch.float64 if dtype == torch.float64 else torch.float32
    tau, vth = torch.full((1,), 2.0, dtype=state), torch.ones(1, dtype=state)
    lif_triton.lif_forward(x, tau, vth, torch.zeros(4096, dtype=state) if v_init else None, 0.0, soft, decay_input,
                           1, save_state, count)


def _lif_backward(dtype, surrogate=0, soft=False, detach=False, decay_input=True, grads=True, v_init=False,
                  recompute=False, per_channel=False):
    x = torch.randn(4, 4096).to(dtype)
    state = torch.float64 if dtype == torch.float64 else torch.float32
    channels = 64 if per_channel else 1
    tau, vth = torch.full((channels,), 2.0, dtype=state), torch.ones(channels, dtype=state)
    extra = torch.zeros(4096, dtype=state) if grads else None
    lif_triton.lif_backward(x, extra, torch.zeros((), dtype=state) if grads else None, x, recompute, tau, vth,
                            torch.zeros(4096, dtype=state) if v_init else None, 0.0, soft, decay_input, detach,
                            surrogate, 2.0, channels, grads, grads)


def _weights(rows, k, asym=False, bias=False):
    packed = pack_ternary(torch.randint(-1, 2, (rows, k), dtype=torch.int8))
    scale = torch.rand(2, rows) if asym else torch.rand(rows)
    return packed, scale, torch.randn(rows) if bias else None


def _input(shape, dtype):
    if dtype in FLOATS:
        return torch.randn(shape).to(dtype)
    return (torch.rand(shape) < 0.3).to(dtype)


def _linear(m, dtype, asym=False, bias=False, split_k=None):
    packed, scale, b = _weights(512, 1024, asym, bias)
    ternary_triton.ternary_linear(_input((m, 1024), dtype), packed, scale, b, split_k=split_k)


def _grad_input(dtype, asym=False):
    packed, scale, _ = _weights(512, 1024, asym)
    ternary_triton.ternary_linear_grad_input(torch.randn(256, 512).to(dtype), packed, scale, 1024)


def _conv(dtype, kernel=3, stride=1, groups=1, asym=False, bias=False):
    c, o = 64, 128
    packed, scale, b = _weights(o, c // groups * kernel * kernel, asym, bias)
    ternary_triton.ternary_conv2d(_input((2, c, 16, 16), dtype), packed, scale, b, stride=stride,
                                  padding=kernel // 2, groups=groups, kernel_size=kernel)


# Launch cases: every dtype, and each option flipped once from the default.
LAUNCHES = {
    **{f"lif forward {TYPES[d]}": (_lif_forward, dict(dtype=d)) for d in FLOATS},
    "lif forward inference": (_lif_forward, dict(dtype=torch.float32, save_state=False)),
    "lif forward soft reset": (_lif_forward, dict(dtype=torch.float32, soft=True)),
    "lif forward decay_input=False": (_lif_forward, dict(dtype=torch.float32, decay_input=False)),
    "lif forward v_init + count": (_lif_forward, dict(dtype=torch.bfloat16, v_init=True, count=True)),
    **{f"lif backward {TYPES[d]}": (_lif_backward, dict(dtype=d)) for d in FLOATS},
    **{f"lif backward surrogate {s}": (_lif_backward, dict(dtype=torch.float32, surrogate=s)) for s in range(1, 5)},
    "lif backward soft reset": (_lif_backward, dict(dtype=torch.float32, soft=True)),
    "lif backward detach_reset": (_lif_backward, dict(dtype=torch.float32, detach=True)),
    "lif backward soft detached": (_lif_backward, dict(dtype=torch.float32, soft=True, detach=True)),
    "lif backward decay_input=False": (_lif_backward, dict(dtype=torch.float32, decay_input=False)),
    "lif backward no extra gradients": (_lif_backward, dict(dtype=torch.bfloat16, grads=False)),
    "lif backward v_init, per channel": (_lif_backward, dict(dtype=torch.float32, v_init=True, per_channel=True)),
    "lif backward recompute": (_lif_backward, dict(dtype=torch.bfloat16, recompute=True)),
    **{f"ternary linear M=16 {TYPES[d]}": (_linear, dict(m=16, dtype=d))
       for d in (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int8)},
    "ternary linear M=16 bf16 asym + bias, split K": (
        _linear, dict(m=16, dtype=torch.bfloat16, asym=True, bias=True, split_k=4)),
    "ternary linear M=16 spikes, split K": (_linear, dict(m=16, dtype=torch.uint8, split_k=4)),
    **{f"ternary linear M=512 {TYPES[d]}": (_linear, dict(m=512, dtype=d))
       for d in (torch.float32, torch.float16, torch.bfloat16, torch.uint8)},
    "ternary linear M=512 spikes asym + bias": (_linear, dict(m=512, dtype=torch.uint8, asym=True, bias=True)),
    **{f"ternary linear grad input {TYPES[d]}": (_grad_input, dict(dtype=d))
       for d in (torch.float32, torch.float16, torch.bfloat16)},
    "ternary linear grad input bf16 asym": (_grad_input, dict(dtype=torch.bfloat16, asym=True)),
    **{f"ternary conv2d 3x3 {TYPES[d]}": (_conv, dict(dtype=d))
       for d in (torch.float32, torch.float16, torch.bfloat16, torch.uint8)},
    "ternary conv2d 1x1 stride 2 spikes asym + bias": (
        _conv, dict(dtype=torch.uint8, kernel=1, stride=2, asym=True, bias=True)),
    "ternary conv2d 3x3 spikes asym": (_conv, dict(dtype=torch.uint8, asym=True)),
    "ternary conv2d 1x1 stride 2 spikes": (_conv, dict(dtype=torch.uint8, kernel=1, stride=2)),
    "ternary conv2d 3x3 groups 2 bf16": (_conv, dict(dtype=torch.bfloat16, groups=2)),
}


class _Recorder:
    """Stands in for a kernel: ``recorder[grid](*args, **kwargs)`` appends the launch to ``launches``."""

    def __init__(self, name: str, kernel, launches: list, case: list):
        self.name, self.kernel, self.launches, self.case = name, kernel, launches, case

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.case[0], self.name, self.kernel, args, kwargs))
        return launch


def record_launches(only: str = "") -> list:
    """Run the ``LAUNCHES`` cases whose name contains ``only`` with recorders in place of the kernels;
    returns ``(case, kernel name, kernel, args, kwargs)`` per launch (a case may launch several kernels)."""
    launches, case = [], [None]
    originals = {(module, name): getattr(module, name) for module, names in KERNELS.items() for name in names}
    saved = lif_triton._INTERPRET, ternary_triton._check_runnable
    try:
        for (module, name), kernel in originals.items():
            setattr(module, name, _Recorder(name, kernel, launches, case))
        # The launch functions refuse CPU tensors outside the interpreter; here they never reach a kernel.
        lif_triton._INTERPRET = True
        ternary_triton._check_runnable = lambda name, t: None
        for case[0], (fn, options) in LAUNCHES.items():
            if only in case[0]:
                fn(**options)
    finally:
        for (module, name), kernel in originals.items():
            setattr(module, name, kernel)
        lif_triton._INTERPRET, ternary_triton._check_runnable = saved
    return launches


def _specialize(fn, values: dict, options: dict) -> tuple[dict, dict, dict, dict]:
    """What a launch of ``fn`` with argument ``values`` (name -> value, every parameter) and compile
    ``options`` compiles on ``TARGET``, by Triton's own launch-time specialization: the signature,
    constexprs (ints equal to 1 among them), attributes (16-divisible ints and aligned pointers) and the
    full compile options."""
    binder = create_function_from_signature(fn.signature, fn.params, _BACKEND)
    bound, specialization, extra = binder(**values, **options)
    parsed, signature, constexprs, attrs = fn._pack_args(_BACKEND, {**values, **options}, bound, specialization,
                                                         extra)
    return signature, constexprs, attrs, parsed.__dict__


def _largest(configs: list):
    """The config with the largest tiles and pipeline (the most shared memory and registers)."""
    def size(config):
        return math.prod(v for k, v in config.kwargs.items() if k.startswith("BLOCK_")) * config.num_stages
    return max(configs, key=size)


def compile_jobs(launches: list, largest_config: bool) -> tuple[list, dict]:
    """One job per distinct specialized launch and config (a dict the worker compiles), and the cases whose
    launches all compile to a kernel an earlier case already has (case -> that case)."""
    jobs, seen, merged = [], {}, {}
    cases = dict.fromkeys(case for case, *_ in launches)
    for case, name, kernel, args, kwargs in launches:
        tuner = kernel if isinstance(kernel, Autotuner) else None
        fn = kernel.fn if tuner else kernel
        kwargs = dict(kwargs)
        options = {k: kwargs.pop(k) for k in ("enable_fp_fusion", "num_warps", "num_stages") if k in kwargs}
        values = {**dict(zip(fn.arg_names, args)), **kwargs}
        if tuner is None:
            configs = [None]
        elif tuner.early_config_prune:
            configs = tuner.early_config_prune(tuner.configs, values, **values)
        else:
            configs = tuner.configs
        first = configs[0].kwargs if configs[0] is not None else {}
        tuned = set(first)
        signature, constexprs, attrs, _ = _specialize(fn, {**values, **first}, options)
        names = [p.name for p in fn.params]
        key = (name, repr({k: v for k, v in signature.items() if k not in tuned}),
               repr(sorted((path, v) for path, v in constexprs.items() if names[path[0]] not in tuned)),
               repr(sorted(attrs.items())))
        if key in seen:
            merged.setdefault(case, seen[key])
            continue
        seen[key] = case
        for config in ([_largest(configs)] if largest_config and tuner else configs):
            config_values, config_options = dict(values), dict(options)
            if config is not None:
                config_values.update(config.kwargs)
                config_options.update(num_warps=config.num_warps, num_stages=config.num_stages)
            jobs.append(dict(case=case, kernel=name, fn=fn, values=config_values, options=config_options,
                             config={**(config.kwargs if config else {}), **config_options}))
    compiled = {job["case"] for job in jobs}
    return jobs, {case: merged[case] for case in cases if case not in compiled}


def _resource_usage(cubin: bytes) -> dict:
    """Registers per thread, stack plus local bytes per thread (spilled registers), and the number of
    SASS instructions in the kernel's main loop (the longest backward branch), of a cubin."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run([str(cuobjdump), "-res-usage", "-sass", file.name], check=True,
                              capture_output=True, text=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text))
    addresses = [int(a, 16) for a in re.findall(r"^\s+/\*([0-9a-f]{4,})\*/", text, re.MULTILINE)]
    branches = re.findall(r"^\s+/\*([0-9a-f]{4,})\*/[^\n]*\bBRA\b[^\n]*?0x([0-9a-f]+)", text, re.MULTILINE)
    loops = [(int(target, 16), int(at, 16)) for at, target in branches if int(target, 16) < int(at, 16)]
    start, end = max(loops, key=lambda loop: loop[1] - loop[0]) if loops else (0, -1)
    return {"registers": int(usage["REG"]), "spill_bytes": int(usage["STACK"]) + int(usage["LOCAL"]),
            "loop_instructions": sum(start <= a <= end for a in addresses) or None}


def elements_per_iteration(kernel: str, config: dict) -> float | None:
    """What one thread handles in one trip of the kernel's main loop: neuron-steps (LIF, a loop over T)
    or ternary codes (a loop over K, or over N for the input gradient); None for the split-K finish."""
    threads = 32 * config.get("num_warps", 4)
    if kernel.startswith("lif"):
        return config["BLOCK_N"] / threads
    if kernel == "ternary_linear_finish_kernel":
        return None
    return config["BLOCK_N"] * config["BLOCK_K"] / threads


def tensor_core_ops(ptx: str) -> list:
    """The tensor-core instructions in ``ptx`` as "<instruction> <input type>" (``wgmma`` is Hopper's
    warpgroup MMA, ``mma.sync`` the warp-level one), sorted; empty when the dots run on the FMA units."""
    found = set()
    for name in set(re.findall(r"\b(?:wgmma\.mma_async|mma\.sync)\.[\w.]+", ptx)):
        kind = "wgmma" if name.startswith("wgmma") else "mma.sync"
        inputs = [t for t in ("s8", "u8", "bf16", "f16", "tf32", "e4m3", "e5m2") if f".{t}." in name + "."]
        found.add(f"{kind} {inputs[-1] if inputs else '?'}")
    return sorted(found)


_JOBS = []
"""The jobs of ``run``, inherited by its forked workers (JIT functions do not pickle)."""


def compile_one(index: int) -> dict:
    """Compile ``_JOBS[index]`` for ``TARGET``; returns the job's description with its resources, or its error."""
    job = _JOBS[index]
    fn = job["fn"]
    signature, constexprs, attrs, options = _specialize(fn, job["values"], job["options"])
    flags = {p.name: job["values"][p.name] for p in fn.params
             if p.is_constexpr and p.name not in job["config"] and job["values"][p.name] is not None}
    row = dict(case=job["case"], kernel=job["kernel"], config=job["config"],
               signature={k: v for k, v in signature.items() if v.startswith("*")}, flags=flags)
    start = time.perf_counter()
    try:
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options)
    except Exception as error:  # a compiler error of any kind is the finding
        return {**row, "error": f"{type(error).__name__}: {error}"[:2000]}
    usage = _resource_usage(kernel.asm["cubin"])
    elements = elements_per_iteration(job["kernel"], job["config"])
    if elements and usage["loop_instructions"]:
        usage["loop_instructions_per_element"] = usage["loop_instructions"] / elements
    return {**row, **usage, "shared_bytes": kernel.metadata.shared, "tensor_cores": tensor_core_ops(kernel.asm["ptx"]),
            "seconds": time.perf_counter() - start, "fits": kernel.metadata.shared <= MAX_SHARED_BYTES}


def run(largest_config: bool, workers: int, only: str = "") -> tuple[list, dict]:
    """Record the launches of the cases whose name contains ``only``, then compile every job in
    ``workers`` processes; returns the rows, in job order, and the merged cases of ``compile_jobs``."""
    _JOBS[:], merged = compile_jobs(record_launches(only), largest_config)
    from tqdm import tqdm

    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(compile_one, index) for index in range(len(_JOBS))]
        for _ in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="compiling for sm_90",
                      file=sys.stderr):
            pass
    return [future.result() for future in futures], merged


def _config_text(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items() if k != "enable_fp_fusion")


def _range(values) -> str:
    values = sorted(v for v in values if v is not None)
    return f"{values[0]:.1f}-{values[-1]:.1f}" if values else "-"


def markdown(result: dict) -> str:
    """One line per launch (configs compiled, spilling, not fitting; ranges of registers, shared memory and
    main-loop instructions per element), then every spilling config and every failure."""
    lines = [
        f"Triton kernels compiled for {result['target']} with triton {result['versions']['triton']}, "
        f"torch {result['versions']['torch']}, commit {result['commit']}, {result['date']}",
        "",
        "| launch | kernel | configs | compiled | spill | over a limit | registers | shared KiB | tensor cores | "
        "loop instructions per element |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    groups = {}
    for row in result["rows"]:
        groups.setdefault((row["case"], row["kernel"]), []).append(row)
    for (case, kernel), rows in groups.items():
        ok = [r for r in rows if "error" not in r]
        regs = sorted(r["registers"] for r in ok)
        shared = sorted(r["shared_bytes"] / 1024 for r in ok)
        lines.append(
            f"| {case} | {kernel} | {len(rows)} | {len(ok)} | {sum(r['spill_bytes'] > 0 for r in ok)} | "
            f"{sum(not r['fits'] for r in ok)} | {f'{regs[0]}-{regs[-1]}' if regs else '-'} | "
            f"{f'{shared[0]:.0f}-{shared[-1]:.0f}' if shared else '-'} | "
            f"{', '.join(sorted({op for r in ok for op in r['tensor_cores']})) or 'none'} | "
            f"{_range(r.get('loop_instructions_per_element') for r in ok)} |"
        )
    if result.get("merged"):
        lines += ["", "Cases whose launches compile to the kernels of an earlier case (same specialization):", ""]
        lines += [f"- {case}: as {earlier}" for case, earlier in result["merged"].items()]
    spilling = [r for r in result["rows"] if r.get("spill_bytes")]
    if spilling:
        lines += ["", "Configs that spill registers (bytes of stack per thread):", ""]
        lines += [f"- {r['case']}, {r['kernel']} {_config_text(r['config'])}: {r['spill_bytes']} B" for r in spilling]
    failed = [r for r in result["rows"] if "error" in r]
    if failed:
        lines += ["", "Failures:", ""]
        lines += [f"- {r['case']}, {r['kernel']} {_config_text(r['config'])}: {r['error'].splitlines()[0]}"
                  for r in failed]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--largest-config", action="store_true",
                        help="compile one autotune config per launch: the largest tiles")
    parser.add_argument("--only", default="", help="only the launch cases whose name contains this text")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="compiler processes")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/hopper_compile_sm90.json, or _quick.json with "
                             "--largest-config or --only: those stay out of the README)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cpu_model, git_commit, utc_now, versions

    rows, merged = run(args.largest_config, args.workers, args.only)
    result = dict(benchmark="hopper_compile", target=f"{TARGET.backend} sm_{TARGET.arch}",
                  device=f"compiled on {cpu_model()} ({torch.get_num_threads()} threads)", versions=versions(),
                  commit=git_commit(), date=utc_now(), cases=[case for case in LAUNCHES if args.only in case], rows=rows, merged=merged)
    partial = args.largest_config or args.only
    out = args.out or RESULTS / f"hopper_compile_sm90{'_quick' if partial else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
