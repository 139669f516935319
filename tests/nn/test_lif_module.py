"""The LIF module: parameters, gradients against the reference, repr, state_dict."""
import pytest
import torch

from tna_kernels.nn import LIF
from tna_kernels.ops.lif import lif_multistep_reference


@pytest.mark.parametrize("channels", [None, 6])
@pytest.mark.parametrize("v_reset", [0.0, None])
def test_learnable_module_matches_reference(channels, v_reset):
    torch.manual_seed(1)
    layer = LIF(tau=3.0, v_threshold=0.9, v_reset=v_reset, learnable_tau=True, learnable_threshold=True,
                channels=channels, surrogate="sigmoid")
    x = (torch.randn(9, 4, 6, 5) * 1.5 + 1).requires_grad_(True)
    grad = torch.randn(9, 4, 6, 5)
    spikes = layer(x)
    (spikes * grad).sum().backward()

    tau = (1 + torch.exp(-layer.tau_weight.detach().clone())).requires_grad_(True)
    vth = layer.v_threshold.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref, _ = lif_multistep_reference(x_ref, tau=tau, v_threshold=vth, v_reset=v_reset, surrogate="sigmoid")
    (ref * grad).sum().backward()

    torch.testing.assert_close(spikes, ref, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.v_threshold.grad, vth.grad, rtol=1e-4, atol=1e-5)
    # d loss / d w = d loss / d tau * d tau / d w, with tau = 1 + exp(-w)
    expected_w_grad = tau.grad * -(tau.detach() - 1)
    torch.testing.assert_close(layer.tau_weight.grad, expected_w_grad, rtol=1e-4, atol=1e-5)
    assert layer.tau.detach().allclose(torch.full_like(tau, 3.0))


def test_fixed_module_has_no_parameters_and_reads_well():
    layer = LIF(tau=2.5, v_reset=None, surrogate="triangle")
    assert list(layer.parameters()) == []
    text = repr(layer)
    assert "tau=2.5" in text and "v_reset=soft" in text and "surrogate=triangle(alpha=1)" in text


def test_learnable_repr_and_state_dict_round_trip():
    layer = LIF(learnable_tau=True, learnable_threshold=True, channels=4)
    assert "tau=learnable[4]" in repr(layer) and "v_threshold=learnable[4]" in repr(layer)
    with torch.no_grad():
        layer.v_threshold.add_(0.25)
    other = LIF(learnable_tau=True, learnable_threshold=True, channels=4)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 4, 3) + 1
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)


def test_return_state_and_v_init():
    layer = LIF(return_state=True)
    x = torch.randn(6, 2, 7) + 1
    spikes, v = layer(x, v_init=torch.full((2, 7), 0.5))
    ref, v_ref = lif_multistep_reference(x, v_init=torch.full((2, 7), 0.5))
    torch.testing.assert_close(spikes, ref, rtol=0, atol=0)
    torch.testing.assert_close(v, v_ref)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(channels=4), "channels sets the size"),
        (dict(learnable_tau=True, tau=1.0), "must start above 1"),
        (dict(learnable_threshold=True, channels=0), "channels must be a positive int"),
        (dict(surrogate="step"), "surrogate must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LIF(**kwargs)


def test_rejects_input_without_time_dimension():
    with pytest.raises(ValueError, match=r"time-major input \[T, B, ...\]"):
        LIF()(torch.ones(5))


@pytest.mark.parametrize("return_state", [False, True])
def test_count_spikes_keeps_a_differentiable_count(return_state):
    """forward returns what it returns without counting; spike_count is spikes.sum(), and a count
    penalty's gradient matches the reference's."""
    torch.manual_seed(2)
    layer = LIF(learnable_threshold=True, count_spikes=True, return_state=return_state)
    assert layer.spike_count is None and "count_spikes=True" in repr(layer)
    x = (torch.randn(8, 3, 11) * 1.5 + 1).requires_grad_(True)
    grad = torch.randn(8, 3, 11)
    out = layer(x)
    spikes = out[0] if return_state else out
    assert torch.is_tensor(spikes) and spikes.shape == x.shape
    assert layer.spike_count.shape == () and layer.spike_count.item() == spikes.sum().item()
    ((spikes * grad).sum() + 0.3 * layer.spike_count).backward()

    vth = layer.v_threshold.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref, _ = lif_multistep_reference(x_ref, v_threshold=vth)
    ((ref * grad).sum() + 0.3 * ref.sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.v_threshold.grad, vth.grad, rtol=1e-4, atol=1e-5)
