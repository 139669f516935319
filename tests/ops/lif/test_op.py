"""The public function and custom ops: argument errors, backend choice, opcheck, torch.compile."""
import math

import pytest
import torch

import tna_kernels
from tna_kernels import lif_multistep
from tna_kernels.ops import backend as backend_choice
from tna_kernels.ops.lif import op as lif_op

from .helpers import KERNEL_BACKENDS, kernel_device


@pytest.mark.parametrize(
    "make_args,error,match",
    [
        (lambda: (torch.ones(4, 3, dtype=torch.int32), {}), TypeError, "x must be a floating-point"),
        (lambda: ([[1.0]], {}), TypeError, "x must be a torch.Tensor"),
        (lambda: (torch.ones(0, 3), {}), ValueError, "x must be a non-empty"),
        (lambda: (torch.tensor(1.0), {}), ValueError, "x must be a non-empty tensor of shape"),
        (lambda: (torch.ones(4, 3), {"tau": 0.5}), ValueError, "tau must be >= 1"),
        (lambda: (torch.ones(4, 3), {"tau": float("nan")}), ValueError, "tau must be >= 1"),
        (lambda: (torch.ones(4, 2, 3), {"tau": torch.ones(5)}), ValueError, "tau must be a scalar or a 1-D"),
        (lambda: (torch.ones(4, 2, 3), {"v_threshold": torch.ones(2, dtype=torch.int64)}), TypeError, "v_threshold"),
        (lambda: (torch.ones(4, 3), {"v_init": torch.zeros(4)}), ValueError, r"v_init must have shape x.shape\[1:\]"),
        (lambda: (torch.ones(4, 3), {"v_init": torch.zeros(3, dtype=torch.int64)}), TypeError, "v_init must be a floating"),
        (lambda: (torch.ones(4, 3), {"v_init": torch.zeros(3, device="meta")}), ValueError, "v_init is on meta"),
        (lambda: (torch.ones(4, 3), {"v_init": "zero"}), TypeError, "v_init must be None"),
        (lambda: (torch.ones(4, 3), {"surrogate": "relu"}), ValueError, "surrogate must be one of"),
        (lambda: (torch.ones(4, 3), {"alpha": -1.0}), ValueError, "alpha must be a positive"),
        (lambda: (torch.ones(4, 3), {"v_reset": "zero"}), TypeError, "v_reset must be a float"),
        (lambda: (torch.ones(4, 3), {"backend": "cuda"}), ValueError, "backend must be one of"),
        (lambda: (torch.ones(4, 3, device="meta"), {"backend": "cpp"}), ValueError, "backend='cpp' runs on CPU"),
    ],
)
def test_bad_arguments_get_clear_errors(make_args, error, match):
    x, kwargs = make_args()
    with pytest.raises(error, match=match):
        lif_multistep(x, **kwargs)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_infinite_tau_integrates_without_leak(backend):
    """``tau=math.inf`` with ``decay_input=False`` is integrate-and-fire: ``h = v + x``; gradients as the reference."""
    device = kernel_device(backend)
    x = (torch.rand(9, 3, 7, generator=torch.Generator().manual_seed(0)) * 0.6).to(device)
    v, want = torch.zeros(3, 7, device=device), []
    for x_t in x:
        h = v + x_t
        want.append((h >= 1).float())
        v = torch.where(h >= 1, torch.zeros_like(h), h)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    results = {}
    for name in (backend, "torch"):
        x_leaf = x.clone().requires_grad_(True)
        spikes, v_last = lif_multistep(x_leaf, tau=math.inf, decay_input=False, return_state=True, backend=name)
        spikes.backward(grad)
        results[name] = (spikes.detach(), v_last.detach(), x_leaf.grad)
        assert torch.equal(spikes, torch.stack(want)) and torch.equal(v_last, v), name
    torch.testing.assert_close(results[backend][2], results["torch"][2])
    with pytest.raises(TypeError, match="finite float"):
        lif_multistep(x, v_threshold=math.inf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("per_channel", [False, True])
def test_input_repeated_over_time_is_read_in_place(dtype, per_channel):
    """A static input expanded over T (stride 0 along T) runs without a copy in inference and gives the same spikes,
    state and count as the contiguous copy and as the reference; with gradients it is copied as before."""
    generator = torch.Generator().manual_seed(int(per_channel))
    step = (torch.rand(2, 5, 3, 3, generator=generator) * 1.5).to(dtype)
    x = step.unsqueeze(0).expand(6, *step.shape)
    tau = torch.rand(5, generator=generator) + 1.5 if per_channel else 2.0
    options = dict(tau=tau, v_threshold=0.9, return_state=True, return_count=True)
    with torch.no_grad():
        got = lif_multistep(x, backend="cpp", **options)
        copied = lif_multistep(x.contiguous(), backend="cpp", **options)
        want = lif_multistep(x.contiguous(), backend="torch", **options)
    for a, b, c in zip(got, copied, want):
        assert torch.equal(a, b) and torch.equal(a, c)
    leaf = step.float().requires_grad_(True)
    spikes = lif_multistep(leaf.unsqueeze(0).expand(6, *step.shape), backend="cpp", tau=2.0, v_threshold=0.9)
    spikes.sum().backward()
    reference = step.float().requires_grad_(True)
    lif_multistep(reference.unsqueeze(0).expand(6, *step.shape), backend="torch", tau=2.0,
                  v_threshold=0.9).sum().backward()
    torch.testing.assert_close(leaf.grad, reference.grad)
    with pytest.raises(RuntimeError, match="repeated over T"):
        torch.ops.tna_cpp.lif_forward(x.float().reshape(6, -1)[:, ::2], torch.ones(1), torch.ones(1), None, 0.0,
                                      False, True, 1, False, False, False)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        lif_multistep(torch.ones(4, 3), backend="triton")


def test_auto_backend_and_environment_override(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("TNA_BACKEND", raising=False)
    assert lif_op.resolve_backend("auto", cpu) == "cpp"
    monkeypatch.setenv("TNA_BACKEND", "torch")
    assert lif_op.resolve_backend("auto", cpu) == "torch"
    assert lif_op.resolve_backend("cpp", cpu) == "cpp"
    monkeypatch.setenv("TNA_BACKEND", "fortran")
    with pytest.raises(ValueError, match="TNA_BACKEND must be one of"):
        lif_op.resolve_backend("auto", cpu)


def test_falls_back_to_reference_without_the_extension(monkeypatch):
    monkeypatch.delenv("TNA_BACKEND", raising=False)
    monkeypatch.setattr(backend_choice, "cpp_extension_available", lambda: False)
    assert lif_op.resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="could not be built"):
        lif_op.resolve_backend("cpp", torch.device("cpu"))
    x = torch.randn(5, 4) + 1
    torch.testing.assert_close(lif_multistep(x), lif_multistep(x, backend="torch"), rtol=0, atol=0)


def _op_args(device, save_state, requires_grad):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 2, 3, 5, generator=gen) + 1).to(device).requires_grad_(requires_grad)
    tau = torch.tensor([1.5, 2.0, 3.0], device=device, requires_grad=requires_grad)
    vth = torch.tensor([0.8, 1.0, 1.2], device=device, requires_grad=requires_grad)
    v_init = torch.rand(2, 3, 5, generator=gen).to(device).requires_grad_(requires_grad)
    return x, tau, vth, v_init


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("save_state", [True, False])
@pytest.mark.parametrize("count_spikes", [True, False])
def test_opcheck_forward(backend, save_state, count_spikes):
    x, tau, vth, v_init = _op_args(kernel_device(backend), save_state, requires_grad=True)
    # scalars [v_reset, alpha]; flags [soft_reset, decay_input, detach_reset, surrogate, save_state, count_spikes]
    args = (x, tau, vth, v_init, [0.0, 2.0], [0, 1, 0, 0, int(save_state), int(count_spikes)], backend)
    torch.library.opcheck(torch.ops.tna.lif_forward.default, args)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("with_count", [True, False])
@pytest.mark.parametrize("recompute", [True, False])
def test_opcheck_backward(backend, with_count, recompute):
    x, tau, vth, v_init = _op_args(kernel_device(backend), True, requires_grad=False)
    _, _, u, _ = torch.ops.tna.lif_forward(x, tau, vth, v_init, [0.0, 1.0], [1, 0, 0, 3, 1, 0], backend)
    grad_spikes, grad_v = torch.randn_like(x), torch.randn_like(v_init)
    grad_count = torch.tensor(0.75, device=x.device) if with_count else None
    saved = x if recompute else u
    args = (grad_spikes, grad_v, grad_count, saved, recompute, tau, vth, v_init, 0.0, True, False, False, 3, 1.0,
            True, True, backend)
    torch.library.opcheck(torch.ops.tna.lif_backward.default, args)


class _SpikingMLP(torch.nn.Module):
    def __init__(self, count_spikes=False, memory_saving=False):
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 32)
        self.lif1 = tna_kernels.nn.LIF(learnable_tau=True, channels=32, v_reset=None, count_spikes=count_spikes,
                                       memory_saving=memory_saving)
        self.fc2 = torch.nn.Linear(32, 5)
        self.lif2 = tna_kernels.nn.LIF(learnable_threshold=True, count_spikes=count_spikes,
                                       memory_saving=memory_saving)

    def forward(self, x):  # [T, B, 12] -> [B, 5]
        return self.lif2(self.fc2(self.lif1(self.fc1(x)))).mean(0)


@pytest.mark.parametrize("memory_saving", [False, True])
def test_compile_fullgraph_matches_eager(memory_saving):
    """The compiled graph runs the custom ops (and their registered autograd), eager mode ``_EagerLIF``."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _SpikingMLP(memory_saving=memory_saving)
    x = torch.randn(4, 3, 12) * 2
    eager = model(x)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_compile_fullgraph_with_spike_count_penalty():
    """A loss with a spike-count penalty (the layers' counts kept by nn.LIF) compiles as one graph and
    matches eager, count and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _SpikingMLP(count_spikes=True)
    x = torch.randn(4, 3, 12) * 2

    def loss_fn(x):
        out = model(x)
        penalty = model.lif1.spike_count + model.lif2.spike_count
        return out.square().sum() + 0.01 * penalty, penalty

    eager, eager_count = loss_fn(x)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    loss, count = torch.compile(loss_fn, fullgraph=True)(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert count.item() == eager_count.item() > 0
    torch.testing.assert_close(loss, eager)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
