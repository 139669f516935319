"""Building the C++ extension: one clear warning and a False on failure, an error on the explicit build."""
import warnings

import pytest

from tna_kernels import _ext


@pytest.fixture
def failing_build(monkeypatch):
    def fail(verbose):
        raise RuntimeError("error: ninja: build stopped: subcommand failed.")

    monkeypatch.setattr(_ext, "_load", fail)
    _ext.cpp_extension_available.cache_clear()
    yield
    _ext.cpp_extension_available.cache_clear()


def test_failed_build_warns_once_and_reports_unavailable(failing_build):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ext.cpp_extension_available() is False
        assert _ext.cpp_extension_available() is False
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "falling back" in messages[0] and "subcommand failed" in messages[0]


def test_explicit_build_raises_with_the_compiler_output(failing_build):
    with pytest.raises(RuntimeError, match="subcommand failed"):
        _ext.build_extensions(verbose=False)


def test_real_build_loads_the_ops():
    import torch

    _ext.build_extensions(verbose=False)
    assert _ext.cpp_extension_available()
    assert hasattr(torch.ops.tna_cpp, "lif_forward") and hasattr(torch.ops.tna_cpp, "lif_backward")
