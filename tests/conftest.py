"""Shared test set-up: Triton runs under its interpreter without CUDA; GPU tests skip cleanly; the C++ builds
that ``tests/test_isa.py`` tests at the lower ISA levels compile in the background while the other tests run."""
import os
import signal
import subprocess
import sys

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


LEVEL_TEST = "test_cpp_kernels_at_every_executable_level"
_background_build = None


def levels_built_ahead(items) -> list:
    """The ISA levels whose C++ builds ``items`` will load in a process of their own: those of the per-level
    test selected in ``items``, minus the levels this machine cannot execute and the host build's level (which
    the test skips)."""
    selected = {item.callspec.params["level"] for item in items if item.originalname == LEVEL_TEST}
    executable = _ext.host_cpu_isas()
    host = executable[0] if _ext.requested_isa() is None else None
    return [level for level in _ext.ISA_LEVELS if level in selected and level in executable and level != host]


def pytest_collection_finish(session):
    """Start compiling the per-level builds now, one after the other, one compile job at the lowest priority,
    so that they use the core the other tests leave idle; the per-level test then finds its build made (or
    waits for it through the build lock). A failed background build is ignored: the test builds again and
    reports the error."""
    global _background_build
    levels = levels_built_ahead(session.items)
    if not levels:
        return
    build = "import tna_kernels; tna_kernels.build_extensions(verbose=False)"
    driver = ("import os, subprocess, sys\n"
              f"for level in {levels!r}:\n"
              f"    subprocess.run([sys.executable, '-c', {build!r}], env=dict(os.environ, TNA_CPU_ISA=level))\n")
    _background_build = subprocess.Popen(
        [sys.executable, "-c", driver], env=dict(os.environ, MAX_JOBS="1"), preexec_fn=lambda: os.nice(19),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def pytest_sessionfinish(session):
    """Stop a background build that is still running (a build killed mid-way leaves its folder buildable)."""
    if _background_build is not None and _background_build.poll() is None:
        os.killpg(_background_build.pid, signal.SIGKILL)
        _background_build.wait()
