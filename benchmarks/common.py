"""Helpers shared by the benchmark scripts: command line, machine description, timing and output.

On Linux CPUs a benchmark restarts itself with glibc's malloc told to keep freed memory
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``): by default glibc returns every freed tensor
of more than a few MiB to the OS, and the page faults of the next allocation then cost more than the
kernels themselves, for every implementation alike. ``--system-malloc`` keeps the default.
"""
import argparse
import datetime
import gc
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

import tna_kernels

RESULTS = Path(__file__).resolve().parent / "results"

# glibc malloc settings for CPU runs: serve every allocation from the heap and never trim it.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36)}
# glibc malloc settings for CPU memory measurements: every block of 64 KiB or more is its own mapping,
# returned to the OS when freed, so the resident set size follows the live tensors page by page.
MALLOC_MEASURE = {"MALLOC_MMAP_THRESHOLD_": str(2**16)}


def parse_args(description: str, benchmark: str, argv=None) -> argparse.Namespace:
    """``--device``, ``--quick``, ``--out`` and ``--system-malloc`` for the benchmark named ``benchmark``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="short timings on the first shape only")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default benchmarks/results/{benchmark}_<device>.json)")
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's default malloc settings on CPU")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def tune_malloc(script: str, args: argparse.Namespace, argv=None) -> str:
    """Restart ``script`` with ``MALLOC_TUNING`` in its environment for a Linux CPU run (unless
    ``--system-malloc`` or already tuned); returns the malloc setting in force, for the results."""
    tuned = all(os.environ.get(k) == v for k, v in MALLOC_TUNING.items())
    if (args.device == "cpu" and not args.system_malloc and not args.memory_worker and not tuned
            and platform.system() == "Linux"):
        argv = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, str(Path(script).resolve()), *argv], {**os.environ, **MALLOC_TUNING})
    return "glibc, freed memory kept (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_)" if tuned else "system default"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def cpu_family_model():
    """"family 23 model 1": the x86 family and model numbers from /proc/cpuinfo, which tell apart machines whose
    model name a hypervisor cuts to "AMD EPYC"; None where /proc/cpuinfo has none."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return None
    if "cpu family" not in fields or "model" not in fields:
        return None
    return f"family {fields['cpu family']} model {fields['model']}"


def cpu_machine() -> dict:
    """What a CPU result records about its machine: ``cpu_model``, ``cpu_family_model`` (``cpu_family_model()``),
    ``cpu_threads`` (torch's), ``cpu_isa`` (the
    level the loaded C++ build targets, None without one), ``host_isa`` (the best level the host executes)
    and ``host_isa_flags`` (the host's vector and bit-manipulation flags from /proc/cpuinfo)."""
    from tna_kernels import _ext

    known = set().union(*_ext._ISA_FLAGS.values())
    flags = sorted(f for f in _ext.cpu_flags() if f in known or f.startswith(("avx", "amx", "sse", "fma")))
    return dict(cpu_model=cpu_model(), cpu_family_model=cpu_family_model(), cpu_threads=torch.get_num_threads(),
                cpu_isa=tna_kernels.cpu_isa(), host_isa=tna_kernels.host_cpu_isas()[0], host_isa_flags=flags)


def cpu_label(machine: dict) -> str:
    """A CPU ``machine`` (``cpu_machine()``'s fields) in words: "AMD EPYC family 23 model 1 (avx2 build, host avx2),
    2 threads" (results from before ``cpu_family_model`` was recorded name the model alone)."""
    build = f"{machine['cpu_isa']} build" if machine["cpu_isa"] else "no C++ build"
    model = " ".join(filter(None, [machine["cpu_model"], machine.get("cpu_family_model")]))
    return f"{model} ({build}, host {machine['host_isa']}), {machine['cpu_threads']} threads"


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model with the ISA level of the loaded build, the host's best level and the
    thread count torch uses (``cpu_label``)."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_label(cpu_machine())


def device_slug(device: str, result: dict) -> str:
    """The device part of a result's file name: "cpu-amd-epyc-family-23-model-1-avx2-2-threads" (the model, its
    family and model numbers where recorded, the build's level, "-on-<host level>" where the host executes a better
    one, the threads) for a result with ``cpu_machine()``'s fields, else the device kind and ``result["device"]``."""
    def slug(text: str, length: int) -> str:
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length].strip("-")

    if "cpu_model" not in result:
        return slug(device + "-" + result["device"], 60)
    isa = result["cpu_isa"] or "no-cpp"
    host = "" if result["host_isa"] == isa else f"-on-{result['host_isa']}"
    model = slug(result["cpu_model"], 40) + (f"-{slug(result['cpu_family_model'], 30)}"
                                             if result.get("cpu_family_model") else "")
    return f"{device}-{model}-{isa}{host}-{result['cpu_threads']}-threads"


def git_commit() -> str:
    """The short commit hash, with "+dirty" when tracked files differ from it (results excepted)."""
    try:
        def git(*args):
            return subprocess.check_output(["git", *args], text=True, cwd=RESULTS.parent).strip()

        changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                   if "benchmarks/results/" not in line and "README.md" not in line]
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    """Versions of torch, tna_kernels and (where installed) triton."""
    found = {"torch": torch.__version__, "tna_kernels": tna_kernels.__version__}
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:
        pass
    return found


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def time_ms(fn, device: str, quick: bool) -> float:
    """Median wall time of ``fn`` in milliseconds (device events via do_bench on GPU)."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=5 if quick else 25, rep=20 if quick else 200,
                                             return_mode="median"))
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.2 if quick else 0.4).median * 1e3


def timing_rounds(device: str, quick: bool) -> int:
    """Timing rounds per job. On a CPU the implementations are timed in turn, several rounds, and each
    keeps its median round: slow drifts of a shared machine then hit every implementation alike."""
    return 1 if quick or device == "cuda" else 5


def write_results(benchmark: str, result: dict, markdown: str, args: argparse.Namespace) -> None:
    """Write ``result`` as JSON to ``--out`` (default ``results/<benchmark>_<device slug>[_quick].json``, see
    ``device_slug``) and ``markdown`` next to it (``.md``); print the markdown. A CPU result gets
    ``cpu_machine()``'s fields after its ``device`` where it lacks them."""
    if args.device == "cpu":
        machine = {k: v for k, v in cpu_machine().items() if k not in result}
        result = {k: v for key, value in result.items()
                  for k, v in [(key, value), *(machine.items() if key == "device" else [])]}
        result.update(machine)
    out = args.out or RESULTS / f"{benchmark}_{device_slug(args.device, result)}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {out}", file=sys.stderr)


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_memory_mib(fn, device: str) -> float:
    """Peak memory that one call of ``fn`` adds to what is allocated before it, in MiB.

    GPU: ``torch.cuda.max_memory_allocated`` over the call. CPU (Linux): the growth of the peak resident
    set size over the call (``VmHWM`` after resetting it through ``/proc/self/clear_refs``); exact for
    tensors only in a process started with ``MALLOC_MEASURE`` in its environment (see ``memory_pass``).
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status_bytes("VmRSS")
    fn()
    return (_proc_status_bytes("VmHWM") - before) / 2**20


def memory_pass(script: str, args: argparse.Namespace) -> dict:
    """Run ``script --memory-worker`` (same ``--device`` and ``--quick``) and return the JSON it prints.

    On a CPU the worker runs with ``MALLOC_MEASURE`` so that ``peak_memory_mib`` counts tensors; on Linux
    only (elsewhere, and on GPU, an empty dict: GPU peaks are taken in the timing process itself).
    """
    if args.device != "cpu" or platform.system() != "Linux":
        return {}
    command = [sys.executable, str(Path(script).resolve()), "--device", "cpu", "--memory-worker"]
    command += ["--quick"] if args.quick else []
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_TUNING}
    output = subprocess.run(command, env={**env, **MALLOC_MEASURE}, check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def goal_lines(goals) -> list:
    """Markdown lines "- met / NOT met / not measured: goal: value (target)", one per goal (a dict with
    goal, target, value and met)."""
    lines = []
    for g in goals:
        status = "not measured" if g["met"] is None else "met" if g["met"] else "NOT met"
        value = "" if g["value"] is None else f": {g['value']:.2f}x (target {g['target']:g}x)"
        lines.append(f"- {status}: {g['goal']}{value}")
    return lines
