"""The Triton ternary kernels against ``reference.py`` on fresh random inputs.

Spike inputs must give the reference's result exactly; real inputs agree within the dtype tolerance
below. Without CUDA the kernels run under ``TRITON_INTERPRET=1`` on small shapes; the tests marked
``gpu`` run at full size on a CUDA device.
"""
import zlib

import pytest
import torch
import torch.nn.functional as F

from tna_kernels.ops.ternary import triton as tt
from tna_kernels.ops.ternary.format import dequantize, pack_ternary
from tna_kernels.ops.ternary.reference import ternary_conv2d_reference, ternary_linear_reference

pytestmark = pytest.mark.usefixtures("poison_empty")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}
REAL_DTYPES = list(TOLERANCE)
SPIKE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.uint8]

# (M, K, N): K not a multiple of 16, N odd, M = 1 and M > SMALL_M so both linear paths run.
LINEAR_SHAPES = [(1, 1, 1), (1, 45, 33), (16, 17, 5), (70, 45, 33), (70, 17, 1)]

CONV_CASES = {
    "3x3_stride2_pad1_batch1": dict(x=(1, 3, 7, 6), out=5, kernel=(3, 3), stride=2, padding=1, dilation=1, groups=1),
    "3x3_dilation2_groups2": dict(x=(2, 4, 9, 8), out=6, kernel=(3, 3), stride=1, padding=1, dilation=2, groups=2),
    "1x1_groups2_batch1": dict(x=(1, 4, 5, 5), out=2, kernel=(1, 1), stride=1, padding=0, dilation=1, groups=2),
    "1x1_many_pixels_and_channels": dict(x=(1, 5, 9, 9), out=33, kernel=(1, 1), stride=1, padding=0, dilation=1, groups=1),
    "2x3_rect_pairs": dict(x=(2, 3, 6, 7), out=4, kernel=(2, 3), stride=(2, 1), padding=(0, 2), dilation=(1, 2), groups=1),
    "3x3_groups3_long_k": dict(x=(1, 18, 4, 5), out=6, kernel=(3, 3), stride=1, padding=1, dilation=1, groups=3),
    # 32 taps fill the kernel's per-pixel tap bitmask (bit 31 included); 35 take its per-element mask path
    "4x8_32_taps": dict(x=(1, 2, 6, 9), out=3, kernel=(4, 8), stride=1, padding=(2, 3), dilation=1, groups=1),
    "7x5_35_taps": dict(x=(1, 2, 8, 7), out=3, kernel=(7, 5), stride=(1, 2), padding=(3, 2), dilation=1, groups=1),
}


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def make_weight(gen, rows: int, rest: tuple, asym: bool, bias: bool):
    """Random codes ``[rows, *rest]``, their packing, a random scale (``[2, rows]`` if asym) and bias."""
    codes = torch.randint(-1, 2, (rows, *rest), generator=gen, dtype=torch.int8)
    packed = pack_ternary(codes)
    scale = torch.rand((2, rows) if asym else (rows,), generator=gen) + 0.25
    b = torch.randn(rows, generator=gen) if bias else None
    to = lambda t: None if t is None else t.to(DEVICE)
    return codes.to(DEVICE), to(packed), to(scale), to(b)


def spike_tensor(gen, shape, dtype, p=0.4):
    return (torch.rand(shape, generator=gen) < p).to(dtype).to(DEVICE)


def real_tensor(gen, shape, dtype):
    return torch.randn(shape, generator=gen).to(dtype).to(DEVICE)


def assert_exact(actual, expected):
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.equal(actual, expected), (
        f"not exact: {(actual != expected).sum().item()} of {actual.numel()} differ, "
        f"max |diff| {(actual.double() - expected.double()).abs().max().item()}"
    )


def assert_close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    assert actual.dtype == dtype and actual.shape == expected.shape
    scale = max(1.0, expected.double().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", SPIKE_DTYPES)
@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_spikes_exact(shape, dtype, asym, bias):
    m, k, n = shape
    gen = _generator("linear_spikes", shape, dtype, asym, bias)
    _, packed, scale, b = make_weight(gen, n, (k,), asym, bias)
    x = spike_tensor(gen, (m, k), dtype)
    y = tt.ternary_linear(x, packed, scale, b, spikes=True)
    assert_exact(y, ternary_linear_reference(x, packed, scale, b, spikes=True))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.bool])
@pytest.mark.parametrize("shape", [(1, 45, 33), (70, 17, 5)])
def test_linear_integer_input_takes_spike_path(dtype, shape):
    m, k, n = shape
    gen = _generator("linear_int", dtype, shape)
    _, packed, scale, b = make_weight(gen, n, (k,), True, True)
    x = spike_tensor(gen, (m, k), dtype, p=0.6)
    y = tt.ternary_linear(x, packed, scale, b, spikes=False)
    assert y.dtype == torch.float32
    assert_exact(y, ternary_linear_reference(x, packed, scale, b))


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_real_within_tolerance(shape, dtype, asym, bias):
    m, k, n = shape
    gen = _generator("linear_real", shape, dtype, asym, bias)
    _, packed, scale, b = make_weight(gen, n, (k,), asym, bias)
    x = real_tensor(gen, (m, k), dtype)
    y = tt.ternary_linear(x, packed, scale, b)
    assert_close(y, ternary_linear_reference(x, packed, scale, b), dtype)


@pytest.mark.parametrize("m", [1, 5, 16, 40])
@pytest.mark.parametrize("split_k", [1, 2, 3, 64])
@pytest.mark.parametrize("asym", [False, True])
def test_linear_split_k(m, split_k, asym):
    """Every split of K gives the exact spike result and the real result within tolerance."""
    k, n = 100, 7
    gen = _generator("split", m, split_k, asym)
    _, packed, scale, b = make_weight(gen, n, (k,), asym, True)
    x = spike_tensor(gen, (m, k), torch.bfloat16)
    y = tt.ternary_linear(x, packed, scale, b, spikes=True, split_k=split_k)
    assert_exact(y, ternary_linear_reference(x, packed, scale, b, spikes=True))
    xr = real_tensor(gen, (m, k), torch.float32)
    yr = tt.ternary_linear(xr, packed, scale, b, split_k=split_k)
    assert_close(yr, ternary_linear_reference(xr, packed, scale, b), torch.float32)
    assert torch.equal(yr, tt.ternary_linear(xr, packed, scale, b, split_k=split_k)), "split-K is not deterministic"


def _spy(monkeypatch, launcher, calls: list, name: str):
    run = launcher.run

    def spy(*args, **kwargs):
        calls.append(name)
        return run(*args, **kwargs)

    monkeypatch.setattr(launcher, "run", spy)


@pytest.mark.parametrize(
    "m,k,split_k,expected",
    [
        (1, 45, 2, ["small_m", "finish"]),
        (1, 17, None, ["small_m"]),  # K too short to split
        (tt.SMALL_M, 17, None, ["small_m"]),
        (tt.SMALL_M + 1, 45, None, ["tiled"]),
        (70, 45, None, ["tiled"]),
        (70, 45, 2, ["tiled", "finish"]),
    ],
)
def test_linear_launch_paths(monkeypatch, m, k, split_k, expected):
    """M <= SMALL_M takes the small-M path, larger M the tiled one, and a split of K adds the finishing
    kernel; every path gives the exact spike result."""
    calls = []
    _spy(monkeypatch, tt._linear_small_m, calls, "small_m")
    _spy(monkeypatch, tt._linear_tiled, calls, "tiled")
    _spy(monkeypatch, tt.ternary_linear_finish_kernel, calls, "finish")
    gen = _generator("paths", m, k, split_k)
    _, packed, scale, b = make_weight(gen, 33, (k,), False, True)
    x = spike_tensor(gen, (m, k), torch.uint8)
    y = tt.ternary_linear(x, packed, scale, b, split_k=split_k)
    assert calls == expected
    assert_exact(y, ternary_linear_reference(x, packed, scale, b))


def test_auto_split_k_only_for_small_m_and_long_k():
    device = torch.device(DEVICE)
    assert tt._auto_split_k(1, 33, 4096, device) > 1
    assert tt._auto_split_k(tt.SMALL_M, 33, 4096, device) > 1
    assert tt._auto_split_k(tt.SMALL_M + 1, 33, 4096, device) == 1
    assert tt._auto_split_k(1, 33, 16, device) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_linear_zero_sizes(dtype):
    gen = _generator("zero", dtype)
    _, packed, scale, b = make_weight(gen, 5, (0,), False, True)
    x = torch.zeros(3, 0, dtype=dtype, device=DEVICE)
    y = tt.ternary_linear(x, packed, scale, b, spikes=True)
    assert_exact(y, ternary_linear_reference(x, packed, scale, b, spikes=True))
    assert torch.equal(y, b.expand(3, 5).to(y.dtype))
    _, packed, scale, b = make_weight(gen, 5, (17,), False, True)
    assert tt.ternary_linear(torch.zeros(0, 17, dtype=dtype, device=DEVICE), packed, scale, b).shape == (0, 5)


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("asym", [False, True])
def test_linear_grad_input_matches_float64_autograd(shape, dtype, asym):
    m, k, n = shape
    gen = _generator("grad_input", shape, dtype, asym)
    codes, packed, scale, _ = make_weight(gen, n, (k,), asym, False)
    grad_y = real_tensor(gen, (m, n), dtype)
    grad_x = tt.ternary_linear_grad_input(grad_y, packed, scale, k)

    x64 = torch.randn(m, k, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    weight = dequantize(codes, scale).to(torch.float64)
    F.linear(x64, weight).backward(grad_y.to(torch.float64))
    assert grad_x.shape == (m, k)
    assert_close(grad_x, x64.grad, dtype)


def test_linear_grad_input_zero_channels():
    packed = torch.zeros(0, 2, dtype=torch.int32, device=DEVICE)
    scale = torch.zeros(0, device=DEVICE)
    grad_x = tt.ternary_linear_grad_input(torch.zeros(3, 0, device=DEVICE), packed, scale, 20)
    assert torch.equal(grad_x, torch.zeros(3, 20, device=DEVICE))


def _conv_inputs(case: dict, tag, asym: bool, bias: bool):
    gen = _generator("conv", tag, asym, bias)
    b, c, h, w = case["x"]
    codes, packed, scale, bb = make_weight(gen, case["out"], (c // case["groups"], *case["kernel"]), asym, bias)
    conv = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
                kernel_size=case["kernel"])
    return gen, codes, packed, scale, bb, conv


@pytest.mark.parametrize("name", sorted(CONV_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_conv2d_spikes_exact(name, dtype, asym, bias):
    case = CONV_CASES[name]
    gen, _, packed, scale, b, conv = _conv_inputs(case, (name, dtype), asym, bias)
    x = spike_tensor(gen, case["x"], dtype)
    y = tt.ternary_conv2d(x, packed, scale, b, spikes=True, **conv)
    assert_exact(y, ternary_conv2d_reference(x, packed, scale, b, spikes=True, **conv))


@pytest.mark.parametrize("name", sorted(CONV_CASES))
@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("asym", [False, True])
def test_conv2d_real_within_tolerance(name, dtype, asym):
    case = CONV_CASES[name]
    gen, _, packed, scale, b, conv = _conv_inputs(case, (name, dtype), asym, True)
    x = real_tensor(gen, case["x"], dtype)
    y = tt.ternary_conv2d(x, packed, scale, b, **conv)
    expected = ternary_conv2d_reference(x, packed, scale, b, **conv)
    assert y.shape == expected.shape
    assert_close(y, expected, dtype)


def test_conv2d_bool_input_and_int_arguments():
    case = CONV_CASES["3x3_dilation2_groups2"]
    gen, _, packed, scale, b, conv = _conv_inputs(case, "bool", False, True)
    conv["kernel_size"] = 3
    x = spike_tensor(gen, case["x"], torch.bool)
    y = tt.ternary_conv2d(x, packed, scale, b, **conv)
    assert y.dtype == torch.float32
    assert_exact(y, ternary_conv2d_reference(x, packed, scale, b, **conv))


def _linear_args():
    gen = _generator("errors")
    _, packed, scale, b = make_weight(gen, 5, (20,), False, True)
    return torch.zeros(3, 20, device=DEVICE), packed, scale, b


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(x=torch.zeros(3, 20, dtype=torch.float64)), TypeError, "x must be"),
        (dict(x=torch.zeros(3, 40)), ValueError, "packed"),
        (dict(x=torch.zeros(2, 3, 20)), ValueError, "x must be a 2-D"),
        (dict(x=torch.zeros(20, 3).T), ValueError, "x must be contiguous"),
        (dict(x=[[0.0] * 20]), TypeError, "x must be a tensor"),
        (dict(packed=torch.zeros(5, 2, dtype=torch.int64)), TypeError, "packed must be an int32"),
        (dict(packed=torch.zeros(5, 3, dtype=torch.int32)), ValueError, "packed"),
        (dict(packed=torch.zeros(10, dtype=torch.int32)), ValueError, "packed must be a 2-D"),
        (dict(scale=torch.ones(5, dtype=torch.float64)), TypeError, "scale"),
        (dict(scale=torch.ones(4)), ValueError, "scale"),
        (dict(scale=torch.ones(3, 5)), ValueError, "scale"),
        (dict(bias=torch.ones(6)), ValueError, "bias"),
        (dict(bias=torch.ones(5, dtype=torch.float16)), TypeError, "bias"),
        (dict(packed=torch.zeros(5, 2, dtype=torch.int32, device="meta")), ValueError, "packed is on meta"),
        (dict(scale=torch.ones(5, device="meta")), ValueError, "scale is on meta"),
        (dict(bias=torch.ones(5, device="meta")), ValueError, "bias is on meta"),
        (dict(x=torch.zeros(3, 20, device="meta")), ValueError, "x is on meta"),
        (dict(split_k=0), ValueError, "split_k"),
    ],
)
def test_linear_errors(change, error, match):
    x, packed, scale, b = _linear_args()
    args = dict(x=x, packed=packed, scale=scale, bias=b)
    args.update({key: (v.to(DEVICE) if torch.is_tensor(v) and v.device.type != "meta" else v) for key, v in change.items()})
    with pytest.raises(error, match=match):
        tt.ternary_linear(**args)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(grad_y=torch.zeros(3, 5, dtype=torch.uint8)), TypeError, "grad_y must be float32"),
        (dict(grad_y=torch.zeros(3, 6)), ValueError, "packed"),
        (dict(k=40), ValueError, "packed"),
        (dict(k=-1), ValueError, "k must be"),
        (dict(scale=torch.ones(2, 6)), ValueError, "scale"),
        (dict(packed=torch.zeros(5, 2, dtype=torch.int32, device="meta")), ValueError, "packed is on meta"),
    ],
)
def test_grad_input_errors(change, error, match):
    _, packed, scale, _ = _linear_args()
    args = dict(grad_y=torch.zeros(3, 5, device=DEVICE), packed=packed, scale=scale, k=20)
    args.update({key: (v.to(DEVICE) if torch.is_tensor(v) and v.device.type != "meta" else v) for key, v in change.items()})
    with pytest.raises(error, match=match):
        tt.ternary_linear_grad_input(**args)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(x=torch.zeros(2, 4, 6)), ValueError, "x must be a 4-D"),
        (dict(x=torch.zeros(2, 5, 6, 6)), ValueError, "groups=2 does not divide"),
        (dict(groups=0), ValueError, "groups"),
        (dict(groups=4, x=torch.zeros(2, 8, 6, 6)), ValueError, "groups=4 does not divide"),
        (dict(kernel_size=(1, 3)), ValueError, "packed"),
        (dict(kernel_size=(0, 3)), ValueError, "kernel_size"),
        (dict(stride=0), ValueError, "stride"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(dilation=(1, 2, 3)), ValueError, "dilation"),
        (dict(padding="same"), ValueError, "padding"),
        (dict(x=torch.zeros(2, 4, 2, 2), padding=0), ValueError, "too small"),
        (dict(scale=torch.ones(7)), ValueError, "scale"),
        (dict(bias=torch.ones(6, device="meta")), ValueError, "bias is on meta"),
    ],
)
def test_conv2d_errors(change, error, match):
    gen = _generator("conv_errors")
    _, packed, scale, b = make_weight(gen, 6, (2, 3, 3), False, True)
    args = dict(x=torch.zeros(2, 4, 6, 6, device=DEVICE), packed=packed, scale=scale, bias=b, stride=1, padding=1,
                dilation=1, groups=2, kernel_size=(3, 3))
    args.update({key: (v.to(DEVICE) if torch.is_tensor(v) and v.device.type != "meta" else v) for key, v in change.items()})
    with pytest.raises(error, match=match):
        tt.ternary_conv2d(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 16, 17, 512])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("asym", [False, True])
def test_gpu_linear_spikes_full_size(m, dtype, asym):
    k, n = 4096 + 7, 4096 + 3
    gen = _generator("gpu_linear", m, dtype, asym)
    _, packed, scale, b = make_weight(gen, n, (k,), asym, True)
    x = spike_tensor(gen, (m, k), dtype, p=0.2)
    assert_exact(tt.ternary_linear(x, packed, scale, b, spikes=True), ternary_linear_reference(x, packed, scale, b, spikes=True))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 512])
@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("asym", [False, True])
def test_gpu_linear_real_and_grad_full_size(m, dtype, asym):
    k, n = 4096 + 7, 2048 + 3
    gen = _generator("gpu_real", m, dtype, asym)
    codes, packed, scale, b = make_weight(gen, n, (k,), asym, True)
    x = real_tensor(gen, (m, k), dtype)
    assert_close(tt.ternary_linear(x, packed, scale, b), ternary_linear_reference(x, packed, scale, b), dtype)
    grad_y = real_tensor(gen, (m, n), dtype)
    expected = grad_y.double() @ dequantize(codes, scale).double()
    assert_close(tt.ternary_linear_grad_input(grad_y, packed, scale, k), expected, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16])
@pytest.mark.parametrize("asym", [False, True])
def test_gpu_conv2d_full_size(groups, dtype, asym):
    case = dict(x=(8, 64, 32, 32), out=128, kernel=(3, 3), stride=1, padding=1, dilation=1, groups=groups)
    gen, _, packed, scale, b, conv = _conv_inputs(case, ("gpu", dtype), asym, True)
    x = spike_tensor(gen, case["x"], dtype, p=0.2)
    assert_exact(tt.ternary_conv2d(x, packed, scale, b, spikes=True, **conv),
                 ternary_conv2d_reference(x, packed, scale, b, spikes=True, **conv))
    xr = real_tensor(gen, case["x"], torch.bfloat16)
    assert_close(tt.ternary_conv2d(xr, packed, scale, b, **conv), ternary_conv2d_reference(xr, packed, scale, b, **conv),
                 torch.bfloat16)


def test_conv2d_refuses_sizes_past_int32_indexing():
    tt._check_conv_int32(2**31 - 1024, 2**31 - 1)  # the largest accepted
    with pytest.raises(ValueError, match="output pixels"):
        tt._check_conv_int32(2**31 - 1023, 1)
    with pytest.raises(ValueError, match="elements per group"):
        tt._check_conv_int32(1, 2**31)


def test_exact_finish_order_matters():
    """The spike tests can tell finishing orders apart: on these inputs, folding the bias in before
    rounding (as a fused multiply-add would) changes some results, and the kernel does not do that."""
    gen = _generator("finish_order")
    codes, packed, scale, b = make_weight(gen, 33, (45,), False, True)
    x = spike_tensor(gen, (70, 45), torch.float32)
    y = tt.ternary_linear(x, packed, scale, b, spikes=True)
    acc = x.double() @ codes.double().T
    fused = (acc * scale.double() + b.double()).float()
    assert not torch.equal(y, fused)
    assert_exact(y, ternary_linear_reference(x, packed, scale, b, spikes=True))
