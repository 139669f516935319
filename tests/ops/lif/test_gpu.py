"""Full-size checks of the Triton kernels on a real GPU (skipped without CUDA)."""
import pytest
import torch

from .helpers import LIFCase, compare_case

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(32, 64, 65536), (16, 32, 128, 16, 16), (33, 3, 7, 1001)])
def test_triton_full_size_matches_reference(dtype, shape):
    params = "scalar" if len(shape) == 3 else "channel"
    case = LIFCase(shape, dtype, params=params, v_init=True, state_grad=True, count=True)
    compare_case(case, "triton", seed=sum(shape))


@pytest.mark.parametrize("memory_saving", [False, True])
def test_triton_memory_saving_and_soft_reset(memory_saving):
    case = LIFCase((16, 8, 4096), torch.bfloat16, dict(v_reset=None, detach_reset=True), params="scalar")
    compare_case(case, "triton", seed=1, memory_saving=memory_saving)


def test_compile_on_gpu():
    import tna_kernels

    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), tna_kernels.nn.LIF(learnable_tau=True)).cuda()
    x = torch.randn(8, 16, 64, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
