"""Runs one LIF case through a backend and through the reference with the same inputs and gradients.

With ``count`` the backend also returns its fused spike count, and the loss adds ``grad_count * count``;
on the reference side the count is ``spikes.sum()``, so both the count and its gradient are held to that.
"""
from dataclasses import dataclass, field

import torch

from tna_kernels import lif_multistep
from tna_kernels.ops.lif import lif_multistep_reference

# Gradient tolerances per input dtype: |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|.
# Half-precision kernels save u = h - v_threshold rounded to the input dtype, so their gradients see the
# surrogate at a rounded point.
TOLERANCE = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}

KERNEL_BACKENDS = ["cpp", "triton"]


def kernel_device(backend: str) -> str:
    """Triton runs on CUDA where there is one, else on CPU tensors under TRITON_INTERPRET=1."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def assert_close(actual, expected, dtype, what):
    tol = TOLERANCE[dtype]
    expected = expected.to(actual.dtype)
    scale = max(1.0, expected.detach().abs().nan_to_num().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


@dataclass
class LIFCase:
    """One random LIF problem: input shape ``[T, B, C, *inner]`` and options."""

    shape: tuple
    dtype: torch.dtype = torch.float32
    options: dict = field(default_factory=dict)
    params: str = "float"  # "float", "scalar" (learnable one-element tensors) or "channel" (learnable [C])
    v_init: bool = False
    state_grad: bool = False
    count: bool = False
    spike_grad: bool = True  # False: the loss uses the spikes only through their count

    def inputs(self, device, seed):
        """Fresh random x, tau, v_threshold, v_init and upstream gradients for spikes, v_T and the count."""
        gen = torch.Generator().manual_seed(seed)
        x = (torch.randn(self.shape, generator=gen, dtype=torch.float64) * 1.5 + 1.0).to(self.dtype)
        channels = self.shape[2] if self.params == "channel" else 1
        if self.params == "float":
            tau, v_threshold = 2.0, 1.0
        else:
            tau = 1.5 + 1.5 * torch.rand(channels, generator=gen, dtype=torch.float64)
            v_threshold = 0.5 + torch.rand(channels, generator=gen, dtype=torch.float64)
        v_init = torch.rand(self.shape[1:], generator=gen, dtype=torch.float64) if self.v_init else None
        grad_spikes = torch.randn(self.shape, generator=gen, dtype=torch.float64).to(self.dtype)
        grad_v = torch.randn(self.shape[1:], generator=gen, dtype=torch.float64) if self.state_grad else None
        grad_count = 0.5 + torch.rand((), generator=gen, dtype=torch.float64).item() if self.count else None

        def to_device(t, dtype):
            return None if t is None or not torch.is_tensor(t) else t.to(device=device, dtype=dtype)

        state = torch.float64 if self.dtype == torch.float64 else torch.float32
        return dict(
            x=x.to(device),
            tau=to_device(tau, state) if torch.is_tensor(tau) else tau,
            v_threshold=to_device(v_threshold, state) if torch.is_tensor(v_threshold) else v_threshold,
            v_init=to_device(v_init, state),
            grad_spikes=grad_spikes.to(device) if self.spike_grad else None,
            grad_v=to_device(grad_v, state),
            grad_count=grad_count,
        )


def run_case(fn, inputs, options):
    """Forward ``fn`` (a backend or the reference) and backward the case's upstream gradients.

    Returns ``(outputs, grads)``: dicts of spikes / v_T / count (None without one) and of the gradient
    of every tensor input."""
    leaves = {}
    args = {}
    for name in ("x", "tau", "v_threshold", "v_init"):
        value = inputs[name]
        if torch.is_tensor(value):
            value = value.detach().clone().requires_grad_(True)
            leaves[name] = value
        args[name] = value
    count_grad = inputs["grad_count"]
    spikes, v_last, count = fn(**args, count=count_grad is not None, **options)
    loss = v_last.new_zeros((), dtype=torch.float64)
    if inputs["grad_spikes"] is not None:
        loss = loss + (spikes.double() * inputs["grad_spikes"].double()).sum()
    if inputs["grad_v"] is not None:
        loss = loss + (v_last.double() * inputs["grad_v"].double()).sum()
    if count_grad is not None:
        loss = loss + count_grad * count.double()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    count = None if count is None else count.detach()
    return {"spikes": spikes.detach(), "v_T": v_last.detach(), "count": count}, dict(zip(leaves, grads))


def backend_fn(backend, **extra):
    def fn(x, count, **kwargs):
        outputs = lif_multistep(x, return_state=True, return_count=count, backend=backend, **extra, **kwargs)
        return outputs if count else (*outputs, None)

    return fn


def reference_fn(x, tau, v_threshold, v_init=None, count=False, **options):
    spikes, v_last = lif_multistep_reference(x, tau=tau, v_threshold=v_threshold, v_init=v_init, **options)
    return spikes, v_last, spikes.double().sum() if count else None


def compare_case(case: LIFCase, backend: str, seed: int, **extra):
    """Assert a backend equals the reference on one case: spikes and the spike count exactly, v_T and
    every gradient closely."""
    device = kernel_device(backend)
    inputs = case.inputs(device, seed)
    out, grads = run_case(backend_fn(backend, **extra), inputs, case.options)
    ref_out, ref_grads = run_case(reference_fn, inputs, case.options)
    state = torch.float64 if case.dtype == torch.float64 else torch.float32
    assert out["spikes"].dtype == case.dtype and out["spikes"].shape == case.shape
    torch.testing.assert_close(out["spikes"], ref_out["spikes"], rtol=0, atol=0, equal_nan=True)
    assert_close(out["v_T"], ref_out["v_T"], state, "v_T")
    if case.count:
        assert out["count"].dtype == state and out["count"].shape == ()
        assert out["count"].item() == ref_out["count"].to(state).item()  # exact, then rounded once
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert_close(grads[name], ref_grads[name], case.dtype, f"grad of {name}")
    return out, grads
