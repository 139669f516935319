"""Which options of tna_kernels.nn.LIF reproduce snnTorch's Leaky and Norse's LIFBoxCell / LIF exactly.

snnTorch ``Leaky(beta, threshold, reset_mechanism="zero")`` is our LIF with ``tau = 1 / (1 - beta)``,
``decay_input=False``, ``v_reset=0`` and ``detach_reset = reset_delay``; Norse's ``LIFBoxCell`` at
``dt=1`` is our default equations with ``tau = 1 / tau_mem_inv``. Both fire on ``h > threshold`` where we
fire on ``h >= v_threshold``, which only differs when the membrane lands exactly on the threshold.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import tna_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402

needs_snntorch = pytest.mark.skipif(importlib.util.find_spec("snntorch") is None, reason="needs snntorch")


def _input_gradient(run, x: torch.Tensor, grad: torch.Tensor):
    """Spikes ``[T, *]`` of ``run(x)`` and the gradient of ``(spikes * grad).sum()`` w.r.t. ``x``."""
    x = x.clone().requires_grad_(True)
    spikes = run(x)
    spikes.backward(grad)
    return spikes, x.grad


@needs_snntorch
def test_readme_snntorch_leaky_example():
    import snntorch as snn
    import torch

    import tna_kernels

    torch.manual_seed(0)
    beta, threshold, T = 0.75, 1.0, 25
    x = torch.randn(T, 8, 64) + 0.5  # [T, B, N]
    grad = torch.randn(T, 8, 64)

    leaky = snn.Leaky(beta=beta, threshold=threshold, reset_mechanism="zero")  # reset_delay=True, atan(alpha=2)
    x_snn = x.clone().requires_grad_(True)
    mem = leaky.reset_mem()
    spikes_snn = []
    for t in range(T):
        spk, mem = leaky(x_snn[t], mem)
        spikes_snn.append(spk)
    spikes_snn = torch.stack(spikes_snn)

    lif = tna_kernels.nn.LIF(tau=1 / (1 - beta), v_threshold=threshold, v_reset=0.0, decay_input=False,
                             detach_reset=True, surrogate="atan", alpha=2.0)
    x_ours = x.clone().requires_grad_(True)
    spikes_ours = lif(x_ours)

    assert torch.equal(spikes_ours, spikes_snn)
    spikes_snn.backward(grad)
    spikes_ours.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_snn.grad)


def _leaky_run(**leaky_options):
    """An snnTorch Leaky, and its time loop from the benchmarks (``peers.leaky_time_loop``)."""
    import snntorch as snn

    leaky = snn.Leaky(**leaky_options)
    return leaky, peers.leaky_time_loop(leaky)


@needs_snntorch
@pytest.mark.parametrize(
    "leaky_options, ours, bounded",
    [
        (dict(reset_mechanism="zero"), dict(v_reset=0.0, detach_reset=True), False),
        (dict(reset_mechanism="zero", reset_delay=False), dict(v_reset=0.0, detach_reset=False), False),
        # exact only while the membrane stays below twice the threshold (input in [0, 1) here)
        (dict(reset_mechanism="subtract", reset_delay=False), dict(v_reset=None, detach_reset=False), True),
    ],
)
@pytest.mark.parametrize("surrogate", ["atan", "fast_sigmoid", "sigmoid"])
def test_snntorch_leaky_mapping(leaky_options, ours, bounded, surrogate):
    from snntorch import surrogate as snn_surrogate

    spike_grad = {
        "atan": snn_surrogate.atan(alpha=3.0),
        "fast_sigmoid": snn_surrogate.fast_sigmoid(slope=3.0),
        "sigmoid": snn_surrogate.sigmoid(slope=3.0),
    }[surrogate]
    torch.manual_seed(0)
    x = torch.rand(24, 4, 100) if bounded else torch.randn(24, 4, 100) * 1.5 + 0.4
    grad = torch.randn_like(x)
    leaky, run = _leaky_run(beta=0.75, threshold=0.9, spike_grad=spike_grad, learn_beta=True, learn_threshold=True,
                            **leaky_options)
    lif = tna_kernels.nn.LIF(tau=4.0, v_threshold=0.9, decay_input=False, surrogate=surrogate, alpha=3.0,
                             learnable_tau=True, learnable_threshold=True, **ours)
    spikes_snn, gx_snn = _input_gradient(run, x, grad)
    spikes, gx = _input_gradient(lif, x, grad)

    assert 0.1 < spikes.mean() < 0.6
    assert torch.equal(spikes, spikes_snn)
    torch.testing.assert_close(gx, gx_snn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lif.v_threshold.grad, leaky.threshold.grad.reshape(1), rtol=1e-5, atol=1e-4)
    # beta = 1 - 1 / tau = sigmoid(-w) for our tau = 1 + exp(-w): dL/dw = -beta (1 - beta) dL/dbeta
    torch.testing.assert_close(lif.tau_weight.grad, -0.75 * 0.25 * leaky.beta.grad.reshape(1), rtol=1e-5, atol=1e-4)


@needs_snntorch
def test_snntorch_differences():
    """Ties fire only here; subtract with the default reset_delay=True has no counterpart."""
    tie = torch.tensor([[1.0], [0.0]])
    _, run = _leaky_run(beta=0.5, threshold=1.0, reset_mechanism="zero")
    assert run(tie)[:, 0].tolist() == [0.0, 0.0]
    assert tna_kernels.lif_multistep(tie, decay_input=False)[:, 0].tolist() == [1.0, 0.0]

    torch.manual_seed(0)
    x = torch.rand(24, 400)
    _, run = _leaky_run(beta=0.75, threshold=1.0)  # subtract, reset_delay=True: the reset is not decayed
    for detach_reset in (True, False):
        ours = tna_kernels.lif_multistep(x, tau=4.0, v_reset=None, decay_input=False, detach_reset=detach_reset)
        assert not torch.equal(ours, run(x))


@pytest.mark.parametrize(
    "reset, surrogate",
    [("value", ("super", "fast_sigmoid", 1.0)), ("subtract", ("super", "fast_sigmoid", 1.0)),
     ("value", ("triangle", "triangle", 1.0)), ("value", ("tanh", "sigmoid", 4.0))],
)
def test_norse_lif_box_mapping(reset, surrogate):
    norse = pytest.importorskip("norse.torch")
    from norse.torch.functional.reset import reset_subtract, reset_value

    method, ours_surrogate, ours_alpha = surrogate
    norse_alpha = {"super": 100.0, "triangle": 1.0, "tanh": 2.0}[method]  # Norse 1.1.0's super ignores alpha
    v_reset = 0.0 if reset == "subtract" else -0.2
    params = norse.LIFBoxParameters(
        tau_mem_inv=torch.as_tensor(0.5), v_leak=torch.as_tensor(v_reset), v_th=torch.as_tensor(0.8),
        v_reset=torch.as_tensor(v_reset), method=method, alpha=torch.as_tensor(norse_alpha),
        reset_method=reset_value if reset == "value" else reset_subtract,
    )
    lifted = norse.Lift(norse.LIFBoxCell(params, dt=1.0))
    torch.manual_seed(0)
    x = torch.randn(24, 4, 100) * 1.5 + 0.6
    grad = torch.randn_like(x)
    spikes_norse, gx_norse = _input_gradient(lambda x: lifted(x)[0], x, grad)
    ours = dict(tau=2.0, v_threshold=0.8, v_reset=None if reset == "subtract" else v_reset, surrogate=ours_surrogate,
                alpha=ours_alpha)
    spikes, gx = _input_gradient(lambda x: tna_kernels.lif_multistep(x, **ours), x, grad)
    assert 0.1 < spikes.mean() < 0.6
    assert torch.equal(spikes, spikes_norse)
    torch.testing.assert_close(gx, gx_norse, rtol=1e-5, atol=1e-6)


def test_norse_current_based_lif_matches_only_without_current_dynamics():
    norse = pytest.importorskip("norse.torch")

    def norse_lif(tau_syn_inv):
        params = norse.LIFParameters(
            tau_syn_inv=torch.as_tensor(tau_syn_inv), tau_mem_inv=torch.as_tensor(0.5), v_leak=torch.as_tensor(0.0),
            v_th=torch.as_tensor(1.0), v_reset=torch.as_tensor(0.0), method="super",
        )
        module = norse.LIF(params, dt=1.0)
        return lambda x: module(x)[0]

    torch.manual_seed(0)
    x = torch.randn(24, 4, 100) * 1.5 + 0.6
    grad = torch.randn_like(x)
    spikes, gx = _input_gradient(lambda x: tna_kernels.lif_multistep(x, surrogate="fast_sigmoid", alpha=1.0), x, grad)
    spikes_norse, gx_norse = _input_gradient(norse_lif(1.0), x, grad)  # the current decays fully every step
    assert torch.equal(spikes, spikes_norse)
    torch.testing.assert_close(gx, gx_norse, rtol=1e-5, atol=1e-6)
    assert not torch.equal(spikes, norse_lif(0.5)(x))  # a current that outlasts a step has no counterpart here
