"""Instruction-set levels of the C++ build: ``TNA_CPU_ISA``, ``cpu_isa()``, the levels a machine executes, the
C++ kernel tests at every such level (each in its own process and build), the portable sources for aarch64, and
the build folder and its lock."""
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tna_kernels
from tna_kernels import _ext

ROOT = Path(__file__).resolve().parents[1]
CROSS_COMPILER = "aarch64-linux-gnu-g++"
V3 = set(_ext._ISA_FLAGS["avx2"])
AVX512 = set(_ext._ISA_FLAGS["avx512"])

# The C++ kernel tests that run again at each lower level: every C++ LIF kernel test, every ternary C++ op test
# but those that do not run our build (torch.compile's own code, opcheck of the reference), the fused conv + LIF
# tests, the C++ max pooling tests, and the level check.
LEVEL_SUBSET = ["tests/ops/lif/test_kernels.py", "tests/ops/ternary/test_cpp_op.py",
                "tests/ops/ternary/test_sparse_cpp.py", "tests/nn/test_fused_cpp.py", "tests/ops/pool/test_max_pool.py",
                "tests/test_isa.py::test_loaded_cpp_build_reports_its_level",
                "-k", "cpp and not compile and not (opcheck and torch)"]


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be an x86-64 machine with the /proc/cpuinfo flags the test sets on the returned dict."""
    flags = {"flags": set()}
    monkeypatch.setattr(_ext, "_is_x86", lambda: True)
    monkeypatch.setattr(_ext, "cpu_flags", lambda: frozenset(flags["flags"]))
    monkeypatch.setenv("TNA_CPU_ISA", "")
    return flags


def test_levels_follow_the_cpu_flags(machine):
    assert tna_kernels.host_cpu_isas() == ("portable",)
    machine["flags"] = V3 | {"avx512f", "avx512bw"}
    assert tna_kernels.host_cpu_isas() == ("avx2", "portable")
    machine["flags"] = V3 - {"bmi2"}
    assert tna_kernels.host_cpu_isas() == ("portable",)
    machine["flags"] = AVX512 | {"avx512_bf16"}
    assert tna_kernels.host_cpu_isas() == ("avx512", "avx2", "portable")


def test_off_x86_only_portable(monkeypatch):
    monkeypatch.setattr(_ext, "_is_x86", lambda: False)
    monkeypatch.setattr(_ext.platform, "machine", lambda: "aarch64")
    assert tna_kernels.host_cpu_isas() == ("portable",)
    monkeypatch.setenv("TNA_CPU_ISA", "avx2")
    with pytest.raises(ValueError, match="it is aarch64, not x86-64"):
        _ext.requested_isa()
    monkeypatch.setenv("TNA_CPU_ISA", "portable")
    assert _ext._build_config() == ("tna_kernels_cpp_portable", _ext._CFLAGS)


def test_each_level_is_its_own_build(machine):
    machine["flags"] = AVX512
    assert _ext._build_config() == ("tna_kernels_cpp", _ext._CFLAGS + ["-march=native"])
    names = set()
    for level, march in (("avx512", "-march=x86-64-v4"), ("avx2", "-march=x86-64-v3"), ("portable", "-march=x86-64")):
        os.environ["TNA_CPU_ISA"] = level
        name, flags = _ext._build_config()
        assert march in flags and "-mtune=native" in flags and "-march=native" not in flags
        names.add(name)
    assert names == {"tna_kernels_cpp_avx512", "tna_kernels_cpp_avx2", "tna_kernels_cpp_portable"}
    wide = "-mprefer-vector-width=256"
    assert [level for level in _ext.ISA_LEVELS if wide in _ext._ISA_CFLAGS[level]] == ["avx2"]
    os.environ["TNA_CPU_ISA"] = ""
    machine["flags"] = V3
    assert _ext._build_config() == ("tna_kernels_cpp", _ext._CFLAGS + ["-march=native", wide])
    assert {"-mavx512vpopcntdq", "-mavx512vnni", "-mavx512bitalg"} <= set(_ext._ISA_CFLAGS["avx512"])


def test_bad_requests_are_refused(machine):
    machine["flags"] = V3
    os.environ["TNA_CPU_ISA"] = "sse9"
    with pytest.raises(ValueError, match="TNA_CPU_ISA must be one of avx512, avx2, portable"):
        _ext.requested_isa()
    os.environ["TNA_CPU_ISA"] = "AVX512"
    with pytest.raises(ValueError, match="cannot execute that build .*lacks avx512_bitalg.*can execute avx2, portable"):
        _ext.requested_isa()
    _ext.cpp_extension_available.cache_clear()
    try:
        with pytest.raises(ValueError, match="cannot execute"):
            _ext.cpp_extension_available()
        with pytest.raises(ValueError, match="cannot execute"):
            _ext.build_extensions(verbose=False)
    finally:
        _ext.cpp_extension_available.cache_clear()
    os.environ["TNA_CPU_ISA"] = " Avx2 "
    assert _ext.requested_isa() == "avx2"


def test_one_build_per_process(monkeypatch):
    tna_kernels.build_extensions(verbose=False)
    monkeypatch.setenv("TNA_CPU_ISA", "" if _ext._loaded == "tna_kernels_cpp_portable" else "portable")
    with pytest.raises(RuntimeError, match="already loaded in this process.*needs a new process"):
        tna_kernels.build_extensions(verbose=False)


def test_loaded_cpp_build_reports_its_level():
    """The loaded build (the host's by default; ``TNA_CPU_ISA``'s in the per-level runs) reports its level."""
    expected = _ext.requested_isa() or tna_kernels.host_cpu_isas()[0]
    assert tna_kernels.cpu_isa() == expected


@pytest.mark.parametrize("level", _ext.ISA_LEVELS)
def test_cpp_kernels_at_every_executable_level(level):
    """The C++ kernel tests (``LEVEL_SUBSET``) pass with the build of ``level``, in a process of their own."""
    if level not in tna_kernels.host_cpu_isas():
        pytest.skip(f"this machine cannot execute {level} code")
    if _ext.requested_isa() is None and tna_kernels.cpu_isa() == level:
        pytest.skip(f"the host build (-march=native) targets {level}: the rest of this run tests it")
    env = dict(os.environ, TNA_CPU_ISA=level)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *LEVEL_SUBSET], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"TNA_CPU_ISA={level}:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_levels_built_ahead_are_those_the_level_test_builds(machine):
    """conftest compiles ahead exactly the builds that the selected per-level tests will load."""
    from tests.conftest import LEVEL_TEST, levels_built_ahead

    class Item:
        def __init__(self, name, level=None):
            self.originalname = name
            if level is not None:
                self.callspec = type("CallSpec", (), {"params": {"level": level}})()

    everything = [Item(LEVEL_TEST, level) for level in _ext.ISA_LEVELS] + [Item("test_other")]
    machine["flags"] = V3
    assert levels_built_ahead(everything) == ["portable"]
    assert levels_built_ahead(everything[2:]) == ["portable"]
    assert levels_built_ahead(everything[:2]) == []
    machine["flags"] = AVX512
    assert levels_built_ahead(everything) == ["avx2", "portable"]
    os.environ["TNA_CPU_ISA"] = "avx2"
    assert levels_built_ahead(everything) == ["avx512", "avx2", "portable"]


@pytest.mark.skipif(shutil.which(CROSS_COMPILER) is None, reason=f"needs the cross compiler {CROSS_COMPILER}")
def test_sources_compile_for_aarch64():
    """Every csrc/*.cpp compiles for aarch64 against torch's headers: no x86 intrinsic outside its #if guard."""
    from torch.utils import cpp_extension

    includes = [flag for path in cpp_extension.include_paths() for flag in ("-isystem", path)]
    command = [CROSS_COMPILER, "-fsyntax-only", "-std=c++20", *_ext._CFLAGS, *includes,
               "-DTORCH_EXTENSION_NAME=tna_kernels_cpp", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    jobs = {source: subprocess.Popen([*command, str(source)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True) for source in sorted((ROOT / "csrc").glob("*.cpp"))}
    failures = {}
    for source, job in jobs.items():
        output = job.communicate(timeout=900)[0]
        if job.returncode:
            failures[source.name] = output[-3000:]
    assert not failures, "\n".join(f"{name}:\n{output}" for name, output in failures.items())


def test_build_directory_follows_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert _ext.build_directory("tna_kernels_cpp") == tmp_path / "tna_kernels_cpp"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    folder = _ext.build_directory("tna_kernels_cpp")
    assert folder.name == "tna_kernels_cpp"
    assert folder.parent.name == f"py{sys.version_info.major}{sys.version_info.minor}_torch" + \
        torch.__version__.replace("+", "_")


HOLD_BUILD = """
import sys, time
from pathlib import Path
from tna_kernels import _ext
folder = Path(sys.argv[1])
with _ext.exclusive_build(folder):
    (folder / "lock").touch()  # what torch's own lock leaves behind when its build is killed
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_killed_build_does_not_block_the_next(tmp_path):
    """A build killed while it holds both locks (the advisory one and torch's file) leaves the folder buildable:
    the OS frees the advisory lock and the next holder deletes torch's leftover lock file."""
    folder = tmp_path / "tna_kernels_cpp"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_BUILD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with open(folder / "tna_build.flock", "a") as handle, pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert (folder / "lock").exists()
    with open(folder / "tna_build.flock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises, not hangs, if still held
        fcntl.flock(handle, fcntl.LOCK_UN)
    with _ext.exclusive_build(folder):
        assert not (folder / "lock").exists()
