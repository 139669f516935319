"""The sparse CPU layout of pruned ternary linear weights and its kernels (csrc/ternary_sparse.cpp) against the
reference: exact on spikes for every kernel choice, all-zero weight rows and columns, both scale forms, with and
without bias; the automatic layout choice of frozen modules."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tna_kernels
from tna_kernels import pack_ternary, ternary_linear
from tna_kernels._ext import cpp_extension_available
from tna_kernels.ops.ternary import ternary_linear_reference
from tna_kernels.ops.ternary.op import SPARSE_LAYOUT_MAX_FEATURES, is_sparse_layout, linear_cpu_layout

pytestmark = pytest.mark.usefixtures("poison_empty")

KERNELS = ["auto", "sliced", "scatter", "dense"]
"""The sparse layout's kernel choices: bit-sliced counters, scattered additions, the dense layout's kernels."""


def _pruned(n, k, density, asymmetric, seed, zero_rows=(), zero_columns=()):
    """(codes int8 [n, k], packed, scale, bias): codes +-1 at random places with the given density, 0 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(n, k, generator=gen) < density
    signs = torch.where(torch.rand(n, k, generator=gen) < 0.5, 1, -1)
    codes = torch.where(keep, signs, 0).to(torch.int8)
    codes[list(zero_rows)] = 0
    codes[:, list(zero_columns)] = 0
    scale = torch.rand((2, n) if asymmetric else (n,), generator=gen) + 0.5
    return codes, pack_ternary(codes), scale, torch.randn(n, generator=gen)


def _spikes(shape, rate, dtype, seed):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < rate).to(dtype)


def _check_all_kernels(x, packed, scale, bias, layout):
    want = ternary_linear_reference(x, packed, scale, bias, spikes=True)
    for kernel in KERNELS:
        got = torch.ops.tna_cpp.ternary_linear_sparse_spikes(x, packed, scale, bias, layout, kernel)
        assert got.dtype == want.dtype and torch.equal(got, want), kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.bool])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 777, 100), (7, 17, 5), (300, 130, 33), (257, 600, 3),
                                   (3, 5000, 70), (40, 64, 24)])
def test_sparse_kernels_are_exact(dtype, asymmetric, m, k, n):
    """Odd sizes, blocks of 256 rows and their tails, 8 x 8 output tiles and their edges, zero rows and columns."""
    assert cpp_extension_available()
    _, packed, scale, bias = _pruned(n, k, 0.1, asymmetric, seed=m + k + n, zero_rows=[0, n // 2],
                                     zero_columns=[0, k - 1, k // 3])
    layout = linear_cpu_layout(packed, k, form="sparse")
    assert is_sparse_layout(layout)
    for rate in (0.0, 0.1, 0.5, 1.0):
        x = _spikes((m, k), rate, dtype, seed=m * k)
        for b in (None, bias):
            _check_all_kernels(x, packed, scale, b, layout)


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("n", [1000, 1003])
def test_sparse_kernels_exact_on_large_outputs(asymmetric, n):
    """float32 results of 2 MiB and more: stored past the caches where their rows are 32-byte aligned (n = 1000), as
    usual where they are not (n = 1003)."""
    _, packed, scale, bias = _pruned(n, 300, 0.1, asymmetric, seed=n)
    layout = linear_cpu_layout(packed, 300, form="sparse")
    for b in (None, bias):
        _check_all_kernels(_spikes((600, 300), 0.2, torch.float32, seed=n), packed, scale, b, layout)


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 1.0])
def test_sparse_kernels_at_any_density(asymmetric, density):
    """An entirely zero weight, a nearly empty one, and dense ones (the sparse layout is exact at any density)."""
    _, packed, scale, bias = _pruned(50, 333, density, asymmetric, seed=int(density * 100))
    layout = linear_cpu_layout(packed, 333, form="sparse")
    _check_all_kernels(_spikes((270, 333), 0.2, torch.float32, seed=1), packed, scale, bias, layout)


@pytest.mark.parametrize("code", [1, -1])
@pytest.mark.parametrize("k", [300, 5000, SPARSE_LAYOUT_MAX_FEATURES])
def test_sparse_kernels_count_long_lists_exactly(code, k):
    """All codes equal, all inputs spiking: counts up to 65536 need the counters' second and third bytes."""
    n = 3
    packed = pack_ternary(torch.full((n, k), code, dtype=torch.int8))
    scale = torch.rand(2, n) + 0.5
    x = torch.ones(9, k)
    want = ternary_linear_reference(x, packed, scale, None, spikes=True)
    assert torch.equal(want, (code * k * scale[0 if code == 1 else 1].double()).float().expand(9, n))
    _check_all_kernels(x, packed, scale, None, linear_cpu_layout(packed, k, form="sparse"))


def test_sparse_layout_choice_and_checks():
    _, pruned, scale, bias = _pruned(40, 100, 0.05, False, seed=0)
    _, dense, _, _ = _pruned(40, 100, 0.6, False, seed=0)
    assert torch.ops.tna_cpp.ternary_code_density(pruned, 100) < torch.ops.tna_cpp.ternary_sparse_density()
    assert is_sparse_layout(linear_cpu_layout(pruned, 100))
    assert linear_cpu_layout(dense, 100).dtype == torch.int64
    assert linear_cpu_layout(pruned, 100, form="dense").dtype == torch.int64
    with pytest.raises(ValueError, match="form must be"):
        linear_cpu_layout(pruned, 100, form="csr")
    x = _spikes((5, 100), 0.3, torch.float32, seed=2)
    other = linear_cpu_layout(_pruned(41, 100, 0.05, False, seed=1)[1], 100, form="sparse")
    with pytest.raises(RuntimeError, match="ternary_linear_sparse_layout made from this packed weight"):
        ternary_linear(x, pruned, scale, bias, spikes=True, backend="cpp", layout=other)
    layout = linear_cpu_layout(pruned, 100)
    with pytest.raises(RuntimeError, match="kernel must be 'auto', 'sliced', 'scatter' or 'dense'"):
        torch.ops.tna_cpp.ternary_linear_sparse_spikes(x, pruned, scale, None, layout, "events")
    x[1, 7] = 0.5
    with pytest.raises(ValueError, match="only 0 and 1"):
        ternary_linear(x, pruned, scale, bias, spikes=True, backend="cpp", layout=layout)
    wide = pack_ternary(torch.zeros(1, SPARSE_LAYOUT_MAX_FEATURES + 1, dtype=torch.int8))
    assert linear_cpu_layout(wide, SPARSE_LAYOUT_MAX_FEATURES + 1).dtype == torch.int64
    with pytest.raises(RuntimeError, match="the inputs and outputs must be at most"):
        linear_cpu_layout(wide, SPARSE_LAYOUT_MAX_FEATURES + 1, form="sparse")


def test_real_input_with_a_sparse_layout_takes_the_real_kernel():
    _, packed, scale, bias = _pruned(30, 70, 0.1, True, seed=3)
    x = torch.randn(4, 70)
    got = ternary_linear(x, packed, scale, bias, backend="cpp", layout=linear_cpu_layout(packed, 70))
    torch.testing.assert_close(got, ternary_linear_reference(x, packed, scale, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_frozen_pruned_linear_uses_the_sparse_layout_and_is_exact(asymmetric):
    """A frozen TernaryLinear whose codes are mostly zero caches the sparse layout and equals the reference."""
    torch.manual_seed(0)
    layer = tna_kernels.nn.TernaryLinear(300, 90, quantizer="ttq" if asymmetric else "twn", spikes=True,
                                         backend="cpp").freeze()
    codes, packed, scale, _ = _pruned(90, 300, 0.08, asymmetric, seed=4, zero_rows=[5], zero_columns=[7])
    layer.packed.copy_(packed)
    layer.scale.copy_(scale if asymmetric else scale.view(layer.scale.shape))
    x = _spikes((2, 150, 300), 0.1, torch.float32, seed=5)
    got = layer(x)
    assert is_sparse_layout(layer._layout)
    want = ternary_linear_reference(x.view(300, 300), layer.packed, layer.scale, layer.bias.detach(), spikes=True)
    assert torch.equal(got, want.view(2, 150, 90))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 300), k=st.integers(1, 200), n=st.integers(1, 40), asymmetric=st.booleans(),
       density=st.floats(0.0, 0.4), rate=st.floats(0.0, 1.0), kernel=st.sampled_from(KERNELS),
       seed=st.integers(0, 2**16))
def test_property_sparse_kernels_exact(m, k, n, asymmetric, density, rate, kernel, seed):
    _, packed, scale, bias = _pruned(n, k, density, asymmetric, seed)
    x = _spikes((m, k), rate, torch.float32, seed + 1)
    layout = linear_cpu_layout(packed, k, form="sparse")
    assert torch.equal(torch.ops.tna_cpp.ternary_linear_sparse_spikes(x, packed, scale, bias, layout, kernel),
                       ternary_linear_reference(x, packed, scale, bias, spikes=True))


def test_opcheck_with_a_sparse_layout():
    from tna_kernels.ops.ternary.op import ternary_linear_op

    _, packed, scale, bias = _pruned(9, 40, 0.1, True, seed=6)
    layout = linear_cpu_layout(packed, 40)
    assert is_sparse_layout(layout)
    spikes = _spikes((5, 40), 0.3, torch.float32, seed=7).requires_grad_()
    torch.library.opcheck(ternary_linear_op, (spikes, packed, scale, bias, None, layout, True, "cpp"))


def test_compile_frozen_pruned_model_fullgraph():
    """Compiled, the frozen pruned layer re-lays its weight per call (no cached layout) and equals eager."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(tna_kernels.nn.TernaryLinear(64, 20, spikes=True), torch.nn.ReLU(),
                                tna_kernels.nn.TernaryLinear(20, 5, spikes=False))
    tna_kernels.nn.freeze_(model)
    model[0].packed.copy_(_pruned(20, 64, 0.1, False, seed=8)[1])
    x = _spikes((6, 64), 0.3, torch.float32, seed=9)
    want = model(x)
    assert is_sparse_layout(model[0]._layout)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), want)
