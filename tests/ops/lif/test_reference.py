"""The reference loop against hand-computed cases, and the surrogate table against its definitions."""
import math

import pytest
import torch

from tna_kernels.ops.lif import SURROGATES, lif_multistep_reference
from tna_kernels.ops.lif.surrogate import surrogate_grad


@pytest.mark.parametrize(
    "v_reset,decay_input,spikes,v_last",
    [
        (0.0, True, [0, 1, 0], 0.75),  # h = 0.75, 1.125 (fire, reset to 0), 0.75
        (None, True, [0, 1, 0], 0.8125),  # soft: 1.125 - 1 = 0.125, then 0.125 + (1.5 - 0.125) / 2
        (0.0, False, [1, 1, 1], 0.0),  # h = 1.5 every step
        (-0.5, True, [0, 0, 0], 0.8125),  # from v = -0.5: h = 0.25, 0.625, 0.8125
    ],
)
def test_hand_computed_sequences(v_reset, decay_input, spikes, v_last):
    x = torch.full((3, 1), 1.5, dtype=torch.float64)
    out, v = lif_multistep_reference(x, tau=2.0, v_threshold=1.0, v_reset=v_reset, decay_input=decay_input)
    assert out.flatten().tolist() == spikes
    assert v.item() == pytest.approx(v_last)
    assert out.dtype == torch.float64 and v.dtype == torch.float64


def test_one_step_gradients_by_hand():
    x = torch.tensor([[2.3]], dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    vth = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    spikes, _ = lif_multistep_reference(x, tau=tau, v_threshold=vth, surrogate="atan", alpha=2.0)
    spikes.sum().backward()
    u = 2.3 / 2.0 - 1.0
    sg = 1.0 / (1.0 + (math.pi * u) ** 2)
    assert x.grad.item() == pytest.approx(sg / 2.0)
    assert vth.grad.item() == pytest.approx(-sg)
    assert tau.grad.item() == pytest.approx(-sg * 2.3 / 4.0)


def test_two_step_gradient_through_the_membrane():
    """d s[1] / d x[0] flows through v[0] = h[0] * (1 - s[0]): the leak (1 - 1/tau), and the reset path
    (v_reset - h[0]) * sg(u0) even though s[0] = 0."""
    x = torch.tensor([[0.5], [1.8]], dtype=torch.float64, requires_grad=True)
    spikes, _ = lif_multistep_reference(x, tau=2.0, surrogate="sigmoid", alpha=4.0)
    spikes[1].sum().backward()
    h0 = 0.25
    h1 = h0 + (1.8 - h0) / 2

    def sg(u):
        sig = 1 / (1 + math.exp(-4.0 * u))
        return 4.0 * sig * (1 - sig)

    assert x.grad[1].item() == pytest.approx(sg(h1 - 1) / 2)
    dv0_dh0 = 1 + (0.0 - h0) * sg(h0 - 1)
    assert x.grad[0].item() == pytest.approx(sg(h1 - 1) * 0.5 * dv0_dh0 / 2)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_areas(name):
    """Each surrogate is the derivative of a step-like function: its area is 1 (2/alpha for fast_sigmoid)."""
    alpha = SURROGATES[name].default_alpha
    u = torch.linspace(-200, 200, 4_000_001, dtype=torch.float64)
    area = torch.trapezoid(surrogate_grad(name, u, alpha), u).item()
    expected = 2 / alpha if name == "fast_sigmoid" else 1.0
    assert area == pytest.approx(expected, rel=2e-3)


def test_surrogate_rejects_unknown_name():
    with pytest.raises(ValueError, match="surrogate"):
        surrogate_grad("relu", torch.zeros(1), 1.0)


def test_per_channel_parameters_apply_along_dim_2():
    x = torch.ones(1, 2, 3, 4)
    vth = torch.tensor([0.1, 0.6, 0.2])
    spikes, _ = lif_multistep_reference(x, tau=2.0, v_threshold=vth)
    assert spikes[0, :, 0].eq(1).all() and spikes[0, :, 1].eq(0).all() and spikes[0, :, 2].eq(1).all()
