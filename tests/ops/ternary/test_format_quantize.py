"""Packed format and quantizers: round trips, bit layout, errors, STE and TTQ gradients."""
import pytest
import torch

from tna_kernels import pack_ternary, ternarize, unpack_ternary
from tna_kernels.ops.ternary import dequantize, quantize_weight


@pytest.mark.parametrize("shape", [(1, 1), (3, 16), (5, 17), (4, 2, 3, 3), (2, 45)])
def test_pack_unpack_round_trip(shape):
    codes = torch.randint(-1, 2, shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.int8)
    packed = pack_ternary(codes)
    k = codes[0].numel()
    assert packed.dtype == torch.int32 and packed.shape == (shape[0], (k + 15) // 16)
    assert torch.equal(unpack_ternary(packed, shape), codes)


def test_bit_layout_is_code_plus_one_little_end_first():
    codes = torch.tensor([[1, -1, 0] + [0] * 13 + [1]], dtype=torch.int8)  # 17 codes: two words
    packed = pack_ternary(codes)
    first = packed[0, 0].item() & 0xFFFFFFFF
    assert first & 3 == 2 and (first >> 2) & 3 == 0 and (first >> 4) & 3 == 1
    assert packed[0, 1].item() & 3 == 2
    assert (packed[0, 1].item() & 0xFFFFFFFF) >> 2 == 0x55555555 >> 2  # padding codes are 1 (zero weight)


def test_pack_errors():
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack_ternary(torch.tensor([[2, 0]]))
    with pytest.raises(TypeError, match="integer tensor"):
        pack_ternary(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="int32"):
        unpack_ternary(torch.zeros(2, 1, dtype=torch.int64), (2, 3))
    with pytest.raises(ValueError, match=r"ceil\(K / 16\)"):
        unpack_ternary(torch.zeros(2, 1, dtype=torch.int32), (2, 17))
    with pytest.raises(ValueError, match="bit pair 3"):
        unpack_ternary(torch.full((1, 1), -1, dtype=torch.int32), (1, 16))


def test_twn_threshold_and_scale():
    w = torch.tensor([[0.1, -0.2, 1.0, -2.0], [0.5, 0.5, -0.5, 0.0]])
    codes, scale = ternarize(w, "twn")
    # row 0: mean|w| = 0.825, delta = 0.5775 -> codes 0 0 1 -1, scale = mean(1, 2) = 1.5
    assert codes[0].tolist() == [0, 0, 1, -1] and scale[0].item() == pytest.approx(1.5)
    # row 1: mean|w| = 0.375, delta = 0.2625 -> codes 1 1 -1 0, scale = 0.5
    assert codes[1].tolist() == [1, 1, -1, 0] and scale[1].item() == pytest.approx(0.5)
    _, layer_scale = ternarize(w, "twn", per_channel=False)
    assert layer_scale.shape == (2,) and layer_scale[0] == layer_scale[1]


def test_absmean_matches_bitnet_rule():
    w = torch.tensor([[0.3, -0.05, -0.9, 0.2]])
    codes, scale = ternarize(w, "absmean")
    gamma = w.abs().mean()
    assert scale.item() == pytest.approx(gamma.item())
    assert codes[0].tolist() == torch.clamp(torch.round(w / gamma), -1, 1)[0].to(torch.int8).tolist()


def test_ttq_scales_are_asymmetric_and_dequantize():
    w = torch.randn(6, 9, generator=torch.Generator().manual_seed(1))
    codes, scale = ternarize(w, "ttq")
    assert scale.shape == (2, 6)
    dense = dequantize(codes, scale)
    assert torch.equal(dense[codes == 1], scale[0].view(-1, 1).expand(6, 9)[codes == 1])
    assert torch.equal(dense[codes == -1], -scale[1].view(-1, 1).expand(6, 9)[codes == -1])


@pytest.mark.parametrize("method", ["twn", "absmean"])
def test_ste_gradient_is_identity(method):
    w = torch.randn(4, 7, requires_grad=True)
    grad = torch.randn(4, 7)
    w_q, codes, scale = quantize_weight(w, method)
    assert torch.equal(w_q.detach(), dequantize(codes, scale))
    w_q.backward(grad)
    assert torch.equal(w.grad, grad)


@pytest.mark.parametrize("per_channel", [True, False])
def test_ttq_gradients_match_finite_differences(per_channel):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    entries = 3 if per_channel else 1
    w_p = (torch.rand(entries, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    w_n = (torch.rand(entries, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    target = torch.randn(3, 10, generator=gen, dtype=torch.float64)

    def loss(w_p, w_n):
        w_q, _, _ = quantize_weight(w, "ttq", per_channel, (w_p, w_n))
        return ((w_q - target) ** 2).sum()

    loss(w_p, w_n).backward()
    eps = 1e-6
    for param, other, which in ((w_p, w_n, 0), (w_n, w_p, 1)):
        for i in range(entries):
            bump = torch.zeros_like(param)
            bump[i] = eps
            with torch.no_grad():
                args = (param + bump, other) if which == 0 else (other, param + bump)
                args_minus = (param - bump, other) if which == 0 else (other, param - bump)
                numeric = (loss(*args) - loss(*args_minus)) / (2 * eps)
            assert param.grad[i].item() == pytest.approx(numeric.item(), rel=1e-6, abs=1e-8)
    # the latent weight's gradient: W_p / 1 / W_n times the quantized weight's gradient
    codes, _ = ternarize(w.detach(), "ttq", per_channel)
    w_q = quantize_weight(w.detach(), "ttq", per_channel, (w_p.detach(), w_n.detach()))[0]
    upstream = 2 * (w_q - target)
    factor = torch.where(codes == 1, w_p.detach().view(-1, 1).expand(3, 10),
                         torch.where(codes == -1, w_n.detach().view(-1, 1).expand(3, 10), torch.ones(3, 10, dtype=torch.float64)))
    torch.testing.assert_close(w.grad, upstream * factor)


def test_quantizer_errors():
    with pytest.raises(ValueError, match="unknown quantizer"):
        ternarize(torch.randn(2, 2), "binary")
    with pytest.raises(ValueError, match="NaN"):
        ternarize(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="ttq_scales"):
        quantize_weight(torch.randn(2, 2), "ttq")
