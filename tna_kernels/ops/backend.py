"""Backend choice for every op (DESIGN.md section 2): CUDA tensors -> Triton, CPU tensors -> the C++
extension (the reference when it cannot be built), overridden by ``TNA_BACKEND`` or ``backend=``."""
import os

import torch

from .._ext import cpp_extension_available

BACKENDS = ("auto", "torch", "cpp", "triton")


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` ("auto", "torch", "cpp", "triton") to the backend that will run on ``device``.

    "auto" honours the ``TNA_BACKEND`` environment variable, then picks Triton for CUDA tensors and the
    C++ extension for CPU tensors (the reference when the extension cannot be built, with one warning).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _resolve(backend, device.type)


@torch.compiler.assume_constant_result
def _resolve(backend: str, device_type: str) -> str:
    """``resolve_backend`` for a device type; torch.compile runs it once, at trace time."""
    if backend == "auto":
        backend = os.environ.get("TNA_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"TNA_BACKEND must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device_type == "cuda":
            return "triton"
        return "cpp" if device_type == "cpu" and cpp_extension_available() else "torch"
    if backend == "cpp":
        if device_type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors only; x is on {device_type}")
        if not cpp_extension_available():
            raise RuntimeError(
                "backend='cpp' was requested but the C++ extension could not be built; run "
                "tna_kernels.build_extensions(verbose=True) to see the compiler output, or use backend='torch'"
            )
    if backend == "triton" and device_type != "cuda" and not _triton_interpreted():
        raise ValueError(
            f"backend='triton' needs CUDA tensors (x is on {device_type}); set TRITON_INTERPRET=1 to run "
            "the Triton kernels on CPU tensors through the interpreter"
        )
    return backend
