"""Build and load the C++ CPU kernels (``csrc/*.cpp``) with ``torch.utils.cpp_extension``.

The extension is compiled just in time on first use (one to two minutes, needs a C++ compiler and
ninja) and registers the ops ``torch.ops.tna_cpp.*``. The build is cached by torch under
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions/<python>_<torch>/tna_kernels_cpp``)
and reused by later processes as long as the source and flags are unchanged; delete that folder to
force a rebuild. Set ``TORCH_EXTENSIONS_DIR`` to put the cache elsewhere. Importing this module
never compiles anything.
"""
import functools
import warnings
from pathlib import Path

# -ffp-contract=off: no fused multiply-add, so float32 results equal the PyTorch reference bit for bit.
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]


_SOURCES = ("lif.cpp", "ternary.cpp")


def _sources() -> list:
    here = Path(__file__).parent
    installed = here / "csrc"  # a non-editable install copies csrc/ into the package
    folder = installed if (installed / _SOURCES[0]).exists() else here.parent / "csrc"
    return [str(folder / name) for name in _SOURCES]


_NAME = "tna_kernels_cpp"
_failed = False  # a build failed earlier in this process


def _load(verbose: bool) -> None:
    global _failed
    from torch.utils import cpp_extension

    versioner = getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None)
    if _failed and versioner is not None:
        # torch skips rebuilding unchanged sources within a process, even after a failed build;
        # forget that attempt so this call compiles again (and shows the compiler output).
        versioner.entries.pop(_NAME, None)
    try:
        cpp_extension.load(
            name=_NAME,
            sources=_sources(),
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=verbose,
        )
    except Exception:
        _failed = True
        raise
    _failed = False


def build_extensions(verbose: bool = True) -> None:
    """Compile (or load from the cache) the C++ kernels now; raise RuntimeError with the compiler
    output if the build fails."""
    try:
        _load(verbose)
    except Exception as e:  # compiler errors, missing ninja or compiler, ...
        raise RuntimeError(f"Building the tna_kernels C++ extension failed:\n{e}") from e
    cpp_extension_available.cache_clear()


@functools.lru_cache(maxsize=None)
def cpp_extension_available() -> bool:
    """True when the C++ kernels are built and loaded (building them on the first call).

    Never raises: on failure it warns once and returns False, and the package falls back to the
    PyTorch reference implementation.
    """
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
