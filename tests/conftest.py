"""Shared test set-up: Triton runs under its interpreter without CUDA; GPU tests skip cleanly; the C++ builds
that ``tests/test_isa.py`` tests at the lower ISA levels, and the sm_90 compile of every Triton launch that
``tests/ops/test_hopper_compile.py`` checks, run in the background while the other tests run."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from tna_kernels import _ext  # noqa: E402  (imports Triton, which reads TRITON_INTERPRET on import)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def poison_empty(monkeypatch):
    """Make ``torch.empty`` / ``torch.empty_like`` return NaN-filled float tensors, so a kernel that
    leaves an output element unwritten fails the comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(tensor):
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


ROOT = Path(__file__).resolve().parents[1]
LEVEL_TEST = "test_cpp_kernels_at_every_executable_level"
HOPPER_TEST = "test_every_launch_compiles_for_hopper"
_background = []  # the processes started at collection
_hopper_compile = None  # (process, folder) of the background sm_90 compile


def levels_built_ahead(items) -> list:
    """The ISA levels whose C++ builds ``items`` will load in a process of their own: those of the per-level
    test selected in ``items``, minus the levels this machine cannot execute and the host build's level (which
    the test skips)."""
    selected = {item.callspec.params["level"] for item in items if item.originalname == LEVEL_TEST}
    executable = _ext.host_cpu_isas()
    host = executable[0] if _ext.requested_isa() is None else None
    return [level for level in _ext.ISA_LEVELS if level in selected and level in executable and level != host]


def _start_in_background(command: list, env: dict, log=subprocess.DEVNULL) -> subprocess.Popen:
    """``command`` at the lowest priority, so that it uses the core the other tests leave idle: in a process group
    of its own (to be stopped as a whole) but in the session of the tests, since Linux's autogroup scheduling
    shares the CPU equally between sessions whatever their processes' nice values."""
    def lowest_priority_group():
        os.setpgid(0, 0)
        os.nice(19)

    process = subprocess.Popen(command, cwd=ROOT, env=env, preexec_fn=lowest_priority_group, stdout=log,
                               stderr=subprocess.STDOUT)
    _background.append(process)
    return process


def hopper_tools():
    """The folder of Triton's NVIDIA tools (ptxas, cuobjdump), or None where Triton or its NVIDIA backend is
    missing."""
    try:
        import triton
    except ImportError:
        return None
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return tools if (tools / "cuobjdump").exists() else None


def pytest_collection_finish(session):
    """Start the slow work of two tests now, at the lowest priority: the per-level builds (one after the other;
    the per-level test then finds its build made, or waits for it through the build lock; a failed background
    build is ignored: the test builds again and reports the error) and ``benchmarks/hopper_compile.py`` (its test
    waits for it through the ``hopper_compile`` fixture)."""
    global _hopper_compile
    levels = levels_built_ahead(session.items)
    if levels:
        build = "import tna_kernels; tna_kernels.build_extensions(verbose=False)"
        driver = ("import os, subprocess, sys\n"
                  f"for level in {levels!r}:\n"
                  f"    subprocess.run([sys.executable, '-c', {build!r}], env=dict(os.environ, TNA_CPU_ISA=level))\n")
        _start_in_background([sys.executable, "-c", driver], os.environ)
    if any(item.originalname == HOPPER_TEST for item in session.items) and hopper_tools() is not None:
        folder = Path(tempfile.mkdtemp(prefix="tna-hopper-compile-"))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = str(folder / "triton-cache")
        command = [sys.executable, str(ROOT / "benchmarks" / "hopper_compile.py"), "--largest-config",
                   "--workers", "2", "--out", str(folder / "hopper.json")]
        with open(folder / "log.txt", "w") as log:
            _hopper_compile = (_start_in_background(command, env, log), folder)


@pytest.fixture
def hopper_compile():
    """``(return code, log, path of its JSON)`` of ``benchmarks/hopper_compile.py --largest-config`` (every Triton
    launch compiled for sm_90), started at collection; skips where Triton has no NVIDIA backend tools."""
    if _hopper_compile is None:
        pytest.skip("this Triton has no NVIDIA backend tools")
    process, folder = _hopper_compile
    process.wait(timeout=1800)
    return process.returncode, (folder / "log.txt").read_text(), folder / "hopper.json"


def pytest_sessionfinish(session):
    """Stop the background work that is still running (a build killed mid-way leaves its folder buildable)."""
    for process in _background:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if _hopper_compile is not None:
        shutil.rmtree(_hopper_compile[1], ignore_errors=True)
