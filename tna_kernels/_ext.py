"""Build and load the C++ CPU kernels (``csrc/*.cpp``) with ``torch.utils.cpp_extension``.

The extension is compiled just in time on first use (one to five minutes, needs a C++ compiler and
ninja) and registers the ops ``torch.ops.tna_cpp.*``. Importing this module never compiles anything.

Instruction-set levels. By default the kernels are built for the host (``-march=native``) under the
name ``tna_kernels_cpp``. ``TNA_CPU_ISA`` selects a lower level instead, each built and cached under
its own name, so the builds never overwrite one another:

- ``avx512``: ``-march=x86-64-v4`` plus VPOPCNTDQ, VNNI and BITALG (``tna_kernels_cpp_avx512``)
- ``avx2``: ``-march=x86-64-v3``, i.e. AVX2, FMA, BMI1/2, with 256-bit vectors preferred
  (``tna_kernels_cpp_avx2``)
- ``portable``: ``-march=x86-64`` with the MMX / SSE / SSE2 macros undefined on x86, no ``-march``
  elsewhere: the sources see no SIMD extension and take their plain C++ paths, on x86 as on aarch64
  (``tna_kernels_cpp_portable``)

Every build keeps ``-mtune=native`` on x86. Builds whose best vectors are 256 bits wide (the ``avx2``
level, and the host build on a CPU without AVX-512) ask the compiler for 256-bit vectors
(``-mprefer-vector-width=256``): GCC's tuning for some of those CPUs (first-generation AMD Zen) vectorizes
loops 128 bits at a time, and the LIF kernels then write their line buffers in 128-bit halves and read them
back in 256-bit loads, which wait for the stores instead of taking their data from them.

A level the host cannot execute (``host_cpu_isas()``, read from ``/proc/cpuinfo``) or an unknown value is
refused with a ValueError. ``cpu_isa()`` reports the level the loaded build was compiled for (the op
``tna_cpp::build_isa``, from the compiler's target macros).
A process loads one build only: they register the same ops.

The builds are cached in ``build_directory(name)``: ``$TORCH_EXTENSIONS_DIR/<name>`` where that variable
is set, else ``~/.cache/torch_extensions/py<python>_torch<torch>/<name>``, and reused by later processes as
long as the sources and flags are unchanged; delete a folder to force its rebuild.

Concurrent builds. Processes that build the same folder at once take turns through an advisory lock
(``fcntl.flock`` on ``<folder>/tna_build.flock``), which the operating system releases when its holder
exits, however it exits. torch's own lock (the file ``<folder>/lock``) is not released by a process that is
killed mid-build, and every later build of that folder would wait for it forever; the holder of the
advisory lock knows no other build is running, so it deletes such a leftover file before building.
"""
import contextlib
import fcntl
import functools
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Optional

# -ffp-contract=off: no fused multiply-add, so float32 results equal the PyTorch reference bit for bit.
_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]

_SOURCES = ("lif.cpp", "ternary.cpp", "ternary_sparse.cpp", "pool.cpp", "isa.cpp")

ISA_LEVELS = ("avx512", "avx2", "portable")
"""The levels ``TNA_CPU_ISA`` accepts, best first."""

_X86_V3_FLAGS = frozenset({
    "cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3",
    "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
})
_ISA_FLAGS = {
    "avx512": _X86_V3_FLAGS | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_vpopcntdq",
                               "avx512_vnni", "avx512_bitalg"},
    "avx2": _X86_V3_FLAGS,
    "portable": frozenset(),
}
"""The /proc/cpuinfo flags a machine needs to execute each level's build (csrc/isa.cpp tests the same sets)."""

_WIDE_VECTORS = ["-mprefer-vector-width=256"]  # for 256-bit targets: see the module docstring

_ISA_CFLAGS = {
    "avx512": ["-march=x86-64-v4", "-mavx512vpopcntdq", "-mavx512vnni", "-mavx512bitalg"],
    "avx2": ["-march=x86-64-v3", *_WIDE_VECTORS],
    "portable": ["-march=x86-64", "-U__MMX__", "-U__SSE__", "-U__SSE2__"],
}

_NAME = "tna_kernels_cpp"
_failed = False  # a build failed earlier in this process
_loaded: Optional[str] = None  # the name of the build loaded in this process


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_flags() -> frozenset:
    """The feature flags of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def host_cpu_isas() -> tuple:
    """The levels of ``ISA_LEVELS`` this machine can execute, best first; only "portable" off x86."""
    if not _is_x86():
        return ("portable",)
    flags = cpu_flags()
    return tuple(level for level in ISA_LEVELS if _ISA_FLAGS[level] <= flags)


def requested_isa() -> Optional[str]:
    """The level ``TNA_CPU_ISA`` asks for, or None (unset or empty: the host build, ``-march=native``).

    Raises ValueError for an unknown value or a level this machine cannot execute.
    """
    level = os.environ.get("TNA_CPU_ISA", "").strip().lower()
    if not level:
        return None
    if level not in ISA_LEVELS:
        raise ValueError(f"TNA_CPU_ISA must be one of {', '.join(ISA_LEVELS)} (or unset for the host build, "
                         f"-march=native), got {os.environ['TNA_CPU_ISA']!r}")
    executable = host_cpu_isas()
    if level not in executable:
        lacks = (f"its CPU lacks {', '.join(sorted(_ISA_FLAGS[level] - cpu_flags()))}" if _is_x86()
                 else f"it is {platform.machine()}, not x86-64")
        raise ValueError(f"TNA_CPU_ISA={level}: this machine cannot execute that build ({lacks}); "
                         f"it can execute {', '.join(executable)}")
    return level


def _build_config() -> tuple:
    """(extension name, compiler flags) of the build ``TNA_CPU_ISA`` selects."""
    level = requested_isa()
    if level is None:
        wide = _is_x86() and host_cpu_isas()[0] == "avx2"
        return _NAME, _CFLAGS + ["-march=native"] + (_WIDE_VECTORS if wide else [])
    if not _is_x86():
        return f"{_NAME}_{level}", list(_CFLAGS)
    return f"{_NAME}_{level}", _CFLAGS + _ISA_CFLAGS[level] + ["-mtune=native"]


def _sources() -> list:
    here = Path(__file__).parent
    installed = here / "csrc"  # a non-editable install copies csrc/ into the package
    folder = installed if (installed / _SOURCES[0]).exists() else here.parent / "csrc"
    return [str(folder / name) for name in _SOURCES]


def build_directory(name: str) -> Path:
    """The folder the build ``name`` is compiled and cached in (see the module docstring)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root) / name
    import torch
    from torch.utils import cpp_extension

    torch_version = torch.__version__.replace("+", "_")
    python_version = f"{sys.version_info.major}{sys.version_info.minor}"
    return Path(cpp_extension.get_default_build_root()) / f"py{python_version}_torch{torch_version}" / name


@contextlib.contextmanager
def exclusive_build(folder: Path):
    """Hold the advisory lock of the build ``folder`` (creating the folder), then delete a ``lock`` file
    that a killed torch build left there; release the lock on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tna_build.flock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (folder / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load(verbose: bool) -> None:
    global _failed, _loaded
    from torch.utils import cpp_extension

    name, cflags = _build_config()
    if _loaded is not None and _loaded != name:
        raise RuntimeError(f"the C++ build {_loaded} is already loaded in this process; {name} (TNA_CPU_ISA="
                           f"{os.environ.get('TNA_CPU_ISA', '')!r}) registers the same ops and needs a new process")
    versioner = getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None)
    if _failed and versioner is not None:
        # torch skips rebuilding unchanged sources within a process, even after a failed build;
        # forget that attempt so this call compiles again (and shows the compiler output).
        versioner.entries.pop(name, None)
    folder = build_directory(name)
    try:
        with exclusive_build(folder):
            cpp_extension.load(
                name=name,
                sources=_sources(),
                extra_cflags=cflags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(folder),
                is_python_module=False,
                verbose=verbose,
            )
    except Exception:
        _failed = True
        raise
    _failed = False
    _loaded = name


def build_extensions(verbose: bool = True) -> None:
    """Compile (or load from the cache) the C++ kernels now, for the level ``TNA_CPU_ISA`` selects;
    raise RuntimeError with the compiler output if the build fails, ValueError for a bad ``TNA_CPU_ISA``."""
    requested_isa()
    try:
        _load(verbose)
    except Exception as e:  # compiler errors, missing ninja or compiler, ...
        raise RuntimeError(f"Building the tna_kernels C++ extension failed:\n{e}") from e
    cpp_extension_available.cache_clear()


@functools.lru_cache(maxsize=None)
def cpp_extension_available() -> bool:
    """True when the C++ kernels are built and loaded (building them on the first call).

    A failed build never raises: it warns once and returns False, and the package falls back to the
    PyTorch reference implementation. A bad ``TNA_CPU_ISA`` raises ValueError (see ``requested_isa``).
    """
    requested_isa()
    try:
        _load(verbose=False)
        return True
    except Exception as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        warnings.warn(
            f"tna_kernels: building the C++ CPU kernels failed ({lines[-1].strip()}); falling back to "
            "the slow PyTorch reference implementation. Run tna_kernels.build_extensions(verbose=True) "
            "to see the full build log.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def cpu_isa() -> Optional[str]:
    """The level the loaded C++ build was compiled for: "avx512", "avx2" or "portable" (building or loading
    it on the first call); None when the extension cannot be built and the ops run the reference."""
    if not cpp_extension_available():
        return None
    import torch

    return torch.ops.tna_cpp.build_isa()
