"""max_pool2d (C++ kernel) against F.max_pool2d: equal bit for bit on spikes and on real values (ties between
-0 and +0, NaN), every supported window, padding and ceil_mode, every floating dtype; the fallbacks; opcheck;
torch.compile; the module."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tna_kernels._ext import cpp_extension_available
from tna_kernels.nn import MaxPool2d, replace_max_pool_
from tna_kernels.ops.pool import max_pool2d
from tna_kernels.ops.pool.op import _max_pool2d

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (kernel_size, stride, padding, ceil_mode): the 2x2 and 3x3 windows of stride 2 take the vectorized loop
WINDOWS = [(2, None, 0, False), (2, 2, 0, True), (3, 2, 1, False), (3, 2, 1, True), (3, 2, 0, True), (2, 1, 1, False),
           ((2, 3), (1, 2), (1, 1), True), (1, 1, 0, False), (4, 3, 2, True), ((3, 1), (2, 3), (0, 0), False)]


def _spikes(shape, density, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < density).float()


def _equal(got, want):
    """Equal bit for bit (so -0 differs from +0)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
    assert torch.equal(got.view(bits), want.view(bits))


def _check(x, kernel_size, stride, padding, ceil_mode):
    got = max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode, backend="cpp")
    _equal(got, F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode))


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("dtype", DTYPES)
# even planes 2, 4, 8, 16 or 32 wide take the 2x2 stride-2 loop across rows (pool_pairs); the others the general one
@pytest.mark.parametrize("shape", [(1, 1, 5, 5), (2, 3, 8, 8), (3, 5, 11, 7), (1, 64, 32, 33), (4, 9, 9), (3, 4, 4, 2),
                                   (2, 5, 4, 4), (2, 3, 16, 16), (1, 4, 32, 32), (2, 3, 12, 20)])
def test_cpp_spikes_equal_f_max_pool2d(window, dtype, shape):
    assert cpp_extension_available()
    for seed, density in enumerate((0.0, 0.05, 0.2, 0.5, 1.0)):
        _check(_spikes(shape, density, seed).to(dtype), *window)
    one = torch.zeros(shape, dtype=dtype)
    one.view(-1)[one.numel() // 2] = 1
    _check(one, *window)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane", [(13, 10), (8, 8), (4, 4)])
def test_cpp_real_values_ties_and_nan_equal_f_max_pool2d(window, dtype, plane):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (2, 3, *plane), generator=gen).to(dtype)  # many ties
    signs = torch.rand(x.shape, generator=gen) < 0.5
    x = torch.where((x == 0) & signs, -torch.zeros_like(x), x)  # -0 and +0 side by side
    _check(x, *window)
    _check(torch.full((1, 2, *plane), float("-inf"), dtype=dtype), *window)
    x = torch.randn(2, 3, *plane, generator=gen).to(dtype)
    x.view(-1)[torch.randperm(x.numel(), generator=gen)[:3]] = float("nan")
    got = max_pool2d(x, *window[:3], ceil_mode=window[3], backend="cpp")
    want = F.max_pool2d(x, *window[:3], ceil_mode=window[3])
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


def test_cpp_non_contiguous_input_and_batch_one():
    x = _spikes((3, 2, 10, 12), 0.3, seed=2).transpose(0, 1)
    _check(x, 2, 2, 0, False)
    _check(x[:1], 3, 2, 1, True)


def test_fallbacks_run_f_max_pool2d():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = max_pool2d(x, 2)
    y.sum().backward()  # F.max_pool2d carries the gradient
    assert torch.equal(x.grad, torch.autograd.grad(F.max_pool2d(x, 2).sum(), x)[0])
    with torch.no_grad():
        _equal(max_pool2d(x, 3, 1, 1, dilation=2), F.max_pool2d(x, 3, 1, 1, dilation=2))
        _equal(max_pool2d(x, 2, backend="torch"), F.max_pool2d(x, 2))
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        max_pool2d(x.detach(), 2, 1, 2)
    with pytest.raises(RuntimeError):
        max_pool2d(torch.zeros(1, 1, 2, 2), 3)


def test_opcheck_and_compile():
    x = _spikes((2, 4, 9, 8), 0.2, seed=3).reshape(8, 9, 8)
    torch.library.opcheck(_max_pool2d, (x, [2, 2], [2, 2], [0, 0], False))
    torch.library.opcheck(_max_pool2d, (x, [3, 3], [2, 2], [1, 1], True))
    compiled = torch.compile(lambda t: max_pool2d(t, 2) + 1, fullgraph=True)
    with torch.inference_mode():
        _equal(compiled(x), F.max_pool2d(x, 2) + 1)


def test_module_is_a_drop_in_max_pool():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.Sequential(nn.MaxPool2d(2)))
    x = torch.randn(2, 2, 17, 15)
    with torch.no_grad():
        want = model(x)
        replace_max_pool_(model)
        assert isinstance(model[1], MaxPool2d) and isinstance(model[2][0], MaxPool2d)
        assert (model[1].kernel_size, model[1].stride, model[1].padding, model[1].ceil_mode) == (3, 2, 1, True)
        _equal(model(x), want)
    assert isinstance(replace_max_pool_(nn.MaxPool2d(2)), MaxPool2d)
    indices = MaxPool2d(2, return_indices=True)(x)[1]
    assert torch.equal(indices, F.max_pool2d(x, 2, return_indices=True)[1])
