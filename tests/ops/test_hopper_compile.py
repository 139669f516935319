"""Every Triton launch of the package compiles for an NVIDIA Hopper GPU (sm_90), on a machine without one.

The CPU tests run the Triton kernels under the interpreter, which never compiles them: a kernel branch
that Triton's compiler rejects (a dot of a shape the tensor cores cannot take, say) would pass there
and fail on the first GPU. ``benchmarks/hopper_compile.py`` compiles each launch that the launch
functions make, specialized as Triton specializes a real launch, in its largest autotune config here
(every config in its full run).
"""
import json

import pytest

pytest.importorskip("triton")


def test_every_launch_compiles_for_hopper(hopper_compile):
    returncode, log, out = hopper_compile  # run in the background since collection (tests/conftest.py)
    assert returncode == 0, log[-6000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    # every launch case compiled, or compiles to the kernels of an earlier case
    assert set(result["cases"]) == {r["case"] for r in rows} | set(result["merged"])

    failed = [(r["case"], r["kernel"], r["error"]) for r in rows if "error" in r]
    assert not failed
    # every kernel of both ops was reached, in every dtype it takes
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"lif_fwd_kernel", "lif_bwd_kernel", "_linear_small_m", "_linear_tiled",
                       "ternary_linear_finish_kernel", "ternary_linear_bwd_input_kernel", "ternary_conv2d_fwd_kernel"}
    x_types = {(r["kernel"], next(iter(r["signature"].values()))) for r in rows}
    for kernel in ("lif_fwd_kernel", "_linear_small_m", "_linear_tiled", "ternary_conv2d_fwd_kernel"):
        wanted = {"*fp32", "*fp16", "*bf16"} | ({"*fp64"} if kernel.startswith("lif") else {"*u8"})
        assert {t for k, t in x_types if k == kernel} >= wanted, kernel
    # dots on tensor cores: int8 (int32 accumulation) for spikes, bf16 / fp16 for those inputs; IEEE float32
    # dots on the FMA units
    for r in rows:
        if r["kernel"] in ("lif_fwd_kernel", "lif_bwd_kernel", "ternary_linear_finish_kernel"):
            assert r["tensor_cores"] == [], r["case"]
            continue
        x_type = next(iter(r["signature"].values()))
        wanted = {"*fp32": None, "*fp16": "f16", "*bf16": "bf16"}.get(x_type, "s8")
        if r["flags"].get("SPIKES"):
            wanted = "s8"
        kinds = {op.split()[1] for op in r["tensor_cores"]}
        assert kinds == ({wanted} if wanted else set()), (r["case"], r["tensor_cores"])
    # the largest config of each launch fits an H100 block's shared memory
    too_big = [(r["case"], r["config"]) for r in rows if not r["fits"]]
    assert not too_big
