"""Every kernel backend against the reference: outputs and every gradient on fresh random inputs."""
import zlib

import pytest
import torch

from tna_kernels import lif_multistep
from tna_kernels.ops.lif import SURROGATES
from tna_kernels.ops.lif import op as lif_op

from .helpers import KERNEL_BACKENDS, LIFCase, compare_case, kernel_device

pytestmark = pytest.mark.usefixtures("poison_empty")

RESETS = {"hard": 0.0, "hard_negative": -0.25, "soft": None}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("reset", sorted(RESETS))
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("detach_reset", [True, False])
def test_every_option(backend, surrogate, reset, decay_input, detach_reset):
    options = dict(
        v_reset=RESETS[reset], decay_input=decay_input, detach_reset=detach_reset, surrogate=surrogate, alpha=None
    )
    case = LIFCase((7, 2, 3, 5), torch.float32, options, params="channel", v_init=True, state_grad=True)
    compare_case(case, backend, seed=zlib.crc32(f"{surrogate}{reset}{decay_input}{detach_reset}".encode()))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("surrogate,alpha", [("atan", 3.5), ("sigmoid", 1.5), ("triangle", 0.6), ("rectangle", 2.5)])
def test_custom_alpha(backend, surrogate, alpha):
    case = LIFCase((9, 3, 2, 7), torch.float32, dict(surrogate=surrogate, alpha=alpha), params="scalar")
    compare_case(case, backend, seed=int(alpha * 10))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("steps", [1, 7, 33])
@pytest.mark.parametrize("neurons", [(1, 1, 1), (3, 5, 7), (2, 67, 1)])
def test_shapes_and_dtypes(backend, dtype, steps, neurons):
    case = LIFCase((steps, *neurons), dtype, params="scalar", v_init=True, state_grad=True)
    compare_case(case, backend, seed=steps * 100 + sum(neurons))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("params", ["float", "scalar", "channel"])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_learnable_parameters(backend, params, reset):
    case = LIFCase((6, 4, 5, 3, 3), torch.float32, dict(v_reset=RESETS[reset]), params=params, state_grad=True)
    compare_case(case, backend, seed=len(params))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_saving_matches_reference(backend, dtype):
    case = LIFCase((11, 3, 4, 5), dtype, params="channel", v_init=True, state_grad=True)
    compare_case(case, backend, seed=3, memory_saving=True)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_chunks_with_state_equal_one_call(backend):
    device = kernel_device(backend)
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(33, 2, 3, 17, generator=gen) * 1.5 + 1).to(device).requires_grad_(True)
    grad = torch.randn(33, 2, 3, 17, generator=gen).to(device)
    tau = torch.tensor([1.5, 2.0, 4.0], device=device, requires_grad=True)
    options = dict(tau=tau, v_reset=None, return_state=True, backend=backend)

    whole, v_whole = lif_multistep(x, **options)
    grads_whole = torch.autograd.grad((whole * grad).sum() + v_whole.sum(), (x, tau))

    pieces, v = [], None
    for chunk in x.split([10, 13, 10]):
        spikes, v = lif_multistep(chunk, v_init=v, **options)
        pieces.append(spikes)
    chunked = torch.cat(pieces)
    grads_chunked = torch.autograd.grad((chunked * grad).sum() + v.sum(), (x, tau))

    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)
    torch.testing.assert_close(v, v_whole, rtol=0, atol=0)
    for got, want in zip(grads_chunked, grads_whole):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("surrogate,detach_reset", [("atan", False), ("rectangle", True), ("triangle", False)])
def test_nan_input_behaves_as_reference(backend, surrogate, detach_reset):
    case = LIFCase((8, 2, 3, 11), torch.float32, dict(surrogate=surrogate, detach_reset=detach_reset), v_init=True)
    original = case.inputs

    def with_nans(device, seed):
        inputs = original(device, seed)
        x = inputs["x"].clone()
        x.view(-1)[:: 7] = float("nan")
        inputs["x"] = x
        return inputs

    case.inputs = with_nans
    out, grads = compare_case(case, backend, seed=11)
    assert out["v_T"].isnan().any()  # the NaNs really reached the kernel


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "strided", "channels_last_3d"])
def test_memory_layouts(backend, layout):
    device = kernel_device(backend)
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(5, 2, 4, 3, 6, generator=gen) * 1.5 + 1
    if layout == "transposed":
        x = base.transpose(3, 4).contiguous().transpose(3, 4)
    elif layout == "strided":
        x = torch.randn(5, 2, 4, 3, 12, generator=gen)[..., ::2]
    else:
        x = base.to(memory_format=torch.channels_last_3d)
    assert not x.is_contiguous()
    x = x.to(device)
    vth = torch.tensor([0.5, 1.0, 1.5, 0.8], device=device)
    grad = torch.randn(x.shape, generator=gen).to(device)
    results = []
    for impl, inp in ((backend, x), ("torch", x.contiguous())):
        leaf = inp.detach().clone().requires_grad_(True)
        spikes = lif_multistep(leaf, v_threshold=vth, backend=impl)
        (spikes * grad).sum().backward()
        results.append((spikes, leaf.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_inference_saves_nothing_and_matches(backend):
    device = kernel_device(backend)
    x = torch.randn(7, 4, 33, device=device) + 1
    with torch.no_grad():
        spikes, v = lif_multistep(x, return_state=True, backend=backend)
    ref, v_ref = lif_multistep(x, return_state=True, backend="torch")
    torch.testing.assert_close(spikes, ref, rtol=0, atol=0)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=0)
    assert spikes.grad_fn is None and v.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_chunks_cpp(dtype):
    """Enough neurons for the C++ kernel's largest chunks, several of them, and a ragged last one
    (37023 neurons; per-channel parameters whose runs cross chunk boundaries); the spike count sums
    the chunks' counts."""
    case = LIFCase((5, 3, 7, 41, 43), dtype, params="channel", v_init=True, state_grad=True, count=True)
    compare_case(case, "cpp", seed=37023)

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(7, 2, 3, 64), (4, 3, 1, 1072), (5, 3, 7, 41, 43)])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_large_input_path_cpp(monkeypatch, dtype, shape, reset):
    """Inputs large against the CPU cache (here a cache of 64 bytes): the C++ kernels write with
    non-temporal stores and recompute u in the backward instead of saving it. Rows of a whole number of
    cache lines are streamed (2 x 3 x 64 and 3 x 1072 neurons, in several chunks), others fall back to
    plain stores (37023 neurons)."""
    monkeypatch.setattr(lif_op, "CPU_CACHE_BYTES", 64)
    case = LIFCase(shape, dtype, {"v_reset": RESETS[reset]}, params="channel", v_init=True, state_grad=True,
                   count=True)
    compare_case(case, "cpp", seed=sum(shape))
    x = case.inputs("cpu", sum(shape))["x"]
    with torch.no_grad():
        spikes = lif_multistep(x, v_reset=RESETS[reset], backend="cpp")
    torch.testing.assert_close(spikes, lif_multistep(x, v_reset=RESETS[reset], backend="torch"), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 3, 5, 7), (33, 2, 67, 1)])
def test_spike_count_and_its_gradient(backend, dtype, shape):
    """The fused count equals the reference's spikes.sum() exactly, and a count penalty's gradient equals
    autograd through the reference of (spikes * grad_spikes).sum() + grad_count * spikes.sum()."""
    case = LIFCase(shape, dtype, params="channel", v_init=True, state_grad=True, count=True)
    compare_case(case, backend, seed=sum(shape) + 3)


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
@pytest.mark.parametrize("memory_saving", [False, True])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_spike_count_alone(backend, memory_saving, reset):
    """A loss that sees the spikes only through their count (no grad_spikes, no v_T gradient)."""
    options = dict(v_reset=RESETS[reset], surrogate="sigmoid")
    case = LIFCase((9, 2, 3, 13), torch.float32, options, params="scalar", count=True, spike_grad=False)
    compare_case(case, backend, seed=9, memory_saving=memory_saving)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_spike_count_in_inference(backend):
    device = kernel_device(backend)
    x = torch.randn(7, 4, 133, device=device) + 1
    with torch.no_grad():
        spikes, count = lif_multistep(x, return_count=True, backend=backend)
    assert count.item() == spikes.sum().item() and count.shape == () and count.grad_fn is None
