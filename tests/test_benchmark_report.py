"""The README's generated performance section and the benchmark plots, from small made-up results; the names
of result files per machine."""
import argparse
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402
import report  # noqa: E402

HEADER = dict(device="Test CPU (2 threads)", device_kind="cpu", versions={"torch": "9.9"}, commit="abc1234",
              date="2026-01-01T00:00:00+00:00")


def _lif_rows(ours=2.0, slow_shape=None):
    """Rows of a LIF result; our kernel takes ``ours`` ms at the first shape, and 9 ms at ``slow_shape``."""
    rows = []
    for shape in ([16, 32, 4096], [4, 32, 4096], [16, 32, 1024]):
        times = {"reference (eager)": 10.0, "tna C++": 9.0 if shape == slow_shape else ours, "Peer": 4.0}
        for name, ms in times.items():
            scale = shape[0] * shape[2] / (16 * 4096)
            rows.append(dict(impl=name, shape=shape, dtype="float32", mode="forward+backward", ms=ms * scale,
                             same_equations=name != "Peer", peak_MiB=8.0, **{"GB/s": 1.0}))
        rows.append(dict(rows[-2], impl="tna C++ + count", count_overhead=0.01 * shape[0]))
    return rows


def _write(directory: Path, name: str, result: dict, markdown: str = "title\n| a |\n") -> None:
    (directory / f"{name}.json").write_text(json.dumps(result))
    (directory / f"{name}.md").write_text(markdown)


@pytest.fixture
def results(tmp_path, monkeypatch):
    directory = tmp_path / "results"
    directory.mkdir()
    saved = [dict(shape=[16, 32, 4096], dtype="bfloat16", memory_saving=False, bytes_per_neuron_step=0.0),
             dict(shape=[4, 32, 4096], dtype="bfloat16", memory_saving=False, bytes_per_neuron_step=2.0),
             dict(shape=[4, 32, 4096], dtype="bfloat16", memory_saving=True, bytes_per_neuron_step=0.0)]
    _write(directory, "lif_cpu-test", dict(HEADER, benchmark="lif", rows=_lif_rows(), peer_notes={"Peer": "differs"},
                                           saved_bytes=saved))
    compiled = dict(registers=100, fits=True, tensor_cores=[], shared_bytes=0)
    hopper_rows = [
        dict(compiled, case="lif forward bf16", kernel="lif_fwd_kernel", spill_bytes=0, loop_instructions_per_element=30.0),
        dict(compiled, case="ternary linear M=512 u8", kernel="_linear_tiled", spill_bytes=16,
             tensor_cores=["wgmma s8"], loop_instructions_per_element=7.0),
        dict(compiled, case="ternary linear M=512 u8", kernel="_linear_tiled", spill_bytes=0,
             tensor_cores=["wgmma s8"], loop_instructions_per_element=6.5),
        dict(case="ternary conv2d 3x3 u8", kernel="ternary_conv2d_fwd_kernel", error="CompilationError: at 1:2"),
    ]
    _write(directory, "hopper_compile_sm90", dict(HEADER, benchmark="hopper_compile", target="cuda sm_90",
                                                  rows=hopper_rows))
    on_rows = [dict(impl=name, n=n, timesteps=100, batch=16, same_equations=True, forward_ms=ms * n,
                    backward_ms=ms * n, total_ms=2 * ms * n, peak_MiB=n / 100)
               for n in (4096, 8192) for name, ms in (("reference (eager)", 2.0), ("tna C++", 1.0))]
    _write(directory, "open_neuromorphic_cpu-test",
           dict(HEADER, benchmark="open_neuromorphic", settings={"timesteps": 100, "batch": 16}, rows=on_rows))
    _write(directory, "ternary_cpu-test", dict(HEADER, benchmark="ternary"), "title line\n| ternary table |\n")
    _write(directory, "ternary_cpu-test_quick", dict(HEADER, benchmark="ternary"), "title\n| quick table |\n")
    monkeypatch.setattr(report, "RESULTS", directory)
    return directory


def test_render_rewrites_only_the_generated_section(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nkept above\n\n{report.BEGIN}\nstale numbers\n{report.END}\n\nkept below\n")
    report.render(readme)
    text = readme.read_text()
    assert text.startswith("# Title\n\nkept above\n\n") and text.endswith("\n\nkept below\n")
    assert "stale numbers" not in text
    generated = text.split(report.BEGIN)[1].split(report.END)[0]
    assert "| ternary table |" in generated and "quick table" not in generated
    assert "Peer (other equations)" in generated and "- Peer: differs" in generated
    # the fastest entry of each row is bold: ours at 2.000 ms on the first shape
    assert "| 16x32x4096 | float32 | forward+backward | 10.000 | **2.000** | 4.000 |" in generated
    assert "tna C++ (without the count) is faster than every other entry in forward+backward at 3 of 3 shapes." \
        in generated
    assert "16x32x4096 float32 +16.0%, 4x32x4096 float32 +4.0%, 16x32x1024 float32 +16.0%; median +16.0%" in generated
    assert "No GPU results are committed yet" in generated
    assert "the most over the shapes (the LIF issue's goal: at most 2 in bfloat16, none in memory-saving mode): " \
           "bfloat16 2.00, bfloat16, memory_saving 0.00." in generated
    assert ("3 distinct launches of the Triton kernels, 4 launch x autotune-config pairs: 3 compile, 1 fail; 0 exceed "
            "an H100 block's shared memory; 1 spill registers (at most 16 bytes a thread), and 0 "
            "launches have no config that does not spill.") in generated
    assert "best config, for the launches behind the GPU goals: lif forward bf16 30.0; ternary linear M=512 u8 6.5." \
           in generated
    assert "Tensor-core instructions of the dots, by launch: wgmma s8: 1 (ternary linear M=512 u8)." in generated
    for name in ("lif_cpu-test_T.png", "lif_cpu-test_neurons.png", "lif_cpu-test_memory.png",
                 "open_neuromorphic_cpu-test_n.png"):
        assert (results / name).stat().st_size > 1000
        assert f"(benchmarks/results/{name})" in generated
    report.render(readme)
    assert readme.read_text() == text


def test_render_refuses_a_readme_without_markers(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    with pytest.raises(SystemExit, match="no generated performance section"):
        report.render(readme)


def _machine(isa: str, host: str) -> dict:
    return dict(device=f"AMD EPYC ({isa} build, host {host}), 2 threads", cpu_model="AMD EPYC", cpu_threads=2,
                cpu_isa=isa, host_isa=host, host_isa_flags=["avx2"])


def test_one_section_per_benchmark_shows_every_cpu_and_the_ranges(results, tmp_path):
    for isa, ours, slow, speedup, goal in (("avx2", 2.5, [4, 32, 4096], 4.25, 4.5), ("avx512", 2.0, None, 6.5, 6.93)):
        name = f"cpu-amd-epyc-{isa}-2-threads"
        _write(results, f"lif_{name}", dict(HEADER, **_machine(isa, isa), benchmark="lif",
                                            rows=_lif_rows(ours, slow)))
        _write(results, f"train_step_{name}", dict(HEADER, **_machine(isa, isa), benchmark="train_step",
                                                   speedup=speedup, memory_ratio=0.4), "title\n| step |\n")
        goals = [dict(goal="spikes at M=256 at least 5x faster", target=5.0, value=goal, met=goal >= 5)]
        _write(results, f"ternary_{name}", dict(HEADER, **_machine(isa, isa), benchmark="ternary", goals=goals))
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BEGIN}\n{report.END}\n")
    report.render(readme)
    generated = readme.read_text()
    assert generated.count("#### LIF neuron (CPU)") == generated.count("#### Ternary linear and conv2d (CPU)") == 1
    lif = generated.split("#### LIF neuron (CPU)")[1].split("\n#### ")[0]
    machines = [line for line in lif.splitlines() if line.startswith("##### ")]
    assert machines == ["##### AMD EPYC (avx512 build, host avx512), 2 threads",
                        "##### AMD EPYC (avx2 build, host avx2), 2 threads", "##### Test CPU (2 threads)"]
    assert ("On the 3 committed CPU runs (a machine and build each), tna C++ (without the count) is faster than "
            "every other entry in forward+backward at 2-3 of 3 shapes; at 16x32x4096 float32 forward+backward it "
            "takes 2.000-2.500 ms, 4.0-5.0x faster than the reference (eager).") in lif
    assert "(benchmarks/results/lif_cpu-amd-epyc-avx2-2-threads_T.png)" in lif
    assert ("On the 2 committed CPU runs (a machine and build each): a TNA step with our kernels is 4.25-6.50x "
            "faster than with the reference loops, at 0.40x their peak memory.") in generated
    assert "- spikes at M=256 at least 5x faster: 4.50-6.93x (target 5x), met on 1 of 2" in generated


def test_cpu_results_are_named_by_model_isa_and_threads(tmp_path, monkeypatch):
    machine = dict(cpu_model="AMD EPYC 9654 96-Core Processor", cpu_family_model="family 25 model 17", cpu_threads=2,
                   cpu_isa="avx2", host_isa="avx512", host_isa_flags=["avx2", "avx512f"])
    monkeypatch.setattr(common, "cpu_machine", lambda: dict(machine))
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert common.device_name("cpu") == \
        "AMD EPYC 9654 96-Core Processor family 25 model 17 (avx2 build, host avx512), 2 threads"
    args = argparse.Namespace(device="cpu", quick=False, out=None)
    common.write_results("lif", dict(benchmark="lif", device=common.device_name("cpu"), rows=[]), "table\n", args)
    written = tmp_path / "lif_cpu-amd-epyc-9654-96-core-processor-family-25-model-17-avx2-on-avx512-2-threads.json"
    written = json.loads(written.read_text())
    assert list(written) == ["benchmark", "device", *machine, "rows"]
    assert written["host_isa_flags"] == ["avx2", "avx512f"] and written["cpu_isa"] == "avx2"
    assert common.device_slug("cpu", dict(machine, cpu_isa="avx512")) == \
        "cpu-amd-epyc-9654-96-core-processor-family-25-model-17-avx512-2-threads"
    assert common.device_slug("cpu", dict(machine, cpu_isa=None)) == \
        "cpu-amd-epyc-9654-96-core-processor-family-25-model-17-no-cpp-on-avx512-2-threads"
    assert common.cpu_label(dict(machine, cpu_isa=None)) == \
        "AMD EPYC 9654 96-Core Processor family 25 model 17 (no C++ build, host avx512), 2 threads"
    # results from before the family and model were recorded keep their names
    earlier = {k: v for k, v in machine.items() if k != "cpu_family_model"}
    assert common.device_slug("cpu", earlier) == "cpu-amd-epyc-9654-96-core-processor-avx2-on-avx512-2-threads"
    assert common.cpu_label(earlier) == "AMD EPYC 9654 96-Core Processor (avx2 build, host avx512), 2 threads"
    assert common.device_slug("cuda", dict(device="NVIDIA H200")) == "cuda-nvidia-h200"


def test_committed_cpu_results_name_their_machine():
    """Every committed CPU result records its machine's ISA fields and is named by them."""
    cpu = [(path, result) for path, result in report.results()
           if result["benchmark"] != "hopper_compile" and report._kind(path, result) == "cpu"]
    assert cpu
    for path, result in cpu:
        assert result["cpu_isa"] in report.ISA_ORDER and result["host_isa"] in report.ISA_ORDER, path.name
        assert path.stem == f"{result['benchmark']}_{common.device_slug('cpu', result)}"
        assert result["device"] == common.cpu_label(result)
