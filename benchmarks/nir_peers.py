"""NIR with the peers on a trained model: the default digits run (``tna-train`` with no flags: TNA, ternary
weights, the spiking convnet, T = 4) written by ``tna-export --format nir``, with and without
``--strict-threshold``, read by SpikingJelly's, snnTorch's and Norse's NIR importers (through the workarounds of
``tna_kernels.nir.peers``) and run on the whole test set.

For each peer and file: per spiking layer (the LIFs and the max poolings), how many of the spikes ``[T, images,
neurons]`` equal ours (the deployed base network, as ``tna-eval model.pt`` runs it), and how many predictions
(argmax of the output's mean over time) equal ours. Also the test accuracy the run reported, and what ``tna-eval``
gives for the ``.pt`` and the ``.nir`` files. Peers that are not installed are left out.

    python benchmarks/nir_peers.py                  # trains the default run (a few minutes on 2 cores)
    python benchmarks/nir_peers.py --run RUN_DIR    # an existing tna-train run of the convnet
    python benchmarks/nir_peers.py --epochs 2 --out /tmp/nir_peers.json   # a quick check

writes ``benchmarks/results/nir_peers.json`` and ``.md`` (with ``--out``: that path and its ``.md``).
"""
import argparse
import contextlib
import io
import json
import sys
import tempfile
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from common import RESULTS, git_commit, utc_now, versions
from tna.cli import eval_main, export_main, train_main
from tna.data import batches, load_dataset
from tna.deploy import deployed_run
from tna.nir_io import network_chain
from tna_kernels.nir import peers

PEERS = {"spikingjelly": peers.spikingjelly_outputs, "snntorch": peers.snntorch_outputs,
         "norse": peers.norse_outputs}


def _quiet(main, argv) -> str:
    """Run a CLI entry point, returning what it printed; a failure stops the benchmark."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    if status != 0:
        raise SystemExit(f"{main.__name__} {' '.join(argv)} failed with status {status}")
    return out.getvalue()


def _our_outputs(run: Path, node_names: list) -> tuple:
    """``(steps, spikes by layer in network order, predictions, labels, config)``: the deployed network on the
    whole test set."""
    model, config, _ = deployed_run(run)
    data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps)
    (x, labels), = batches(data, False, len(data.test_y), seed=0, epoch=0)
    steps = x.unsqueeze(0).expand(config.timesteps, *x.shape)
    chain, spikes = network_chain(model, config.arch), {}
    for name, module in chain.named_modules():
        if name in node_names:
            module.register_forward_hook(lambda m, i, out, name=name: spikes.__setitem__(name, out))
    with torch.no_grad():
        predictions = model(x).argmax(1)
        chain(steps)
    return steps, spikes, predictions, labels, config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="an existing tna-train run folder (default: train the default run)")
    parser.add_argument("--epochs", type=int, help="train for this many epochs instead of the default")
    parser.add_argument("--out", type=Path, default=RESULTS / "nir_peers.json")
    args = parser.parse_args(argv)
    import nir

    work = Path(tempfile.mkdtemp(prefix="nir_peers_"))
    run = args.run
    if run is None:
        flags = ["--out", str(work / "runs"), "--no-progress"] + (["--epochs", str(args.epochs)] if args.epochs else [])
        print(f"training: tna-train {' '.join(flags)}", file=sys.stderr)
        if train_main(flags) != 0:
            raise SystemExit("tna-train failed")
        run = work / "runs" / "tna-ternary-seed0"
    files = {"default": work / "model.nir", "strict_threshold": work / "strict.nir"}
    _quiet(export_main, [str(run), "--out", str(work / "model.pt")])
    _quiet(export_main, [str(run), "--out", str(files["default"]), "--format", "nir"])
    _quiet(export_main, [str(run), "--out", str(files["strict_threshold"]), "--format", "nir", "--strict-threshold"])
    evaluated = {kind: json.loads(_quiet(eval_main, [str(path), "--json"]))["accuracy"]
                 for kind, path in (("pt", work / "model.pt"), ("nir", files["default"]),
                                    ("nir_strict_threshold", files["strict_threshold"]))}
    graphs = {kind: nir.read(path) for kind, path in files.items()}
    spiking = [name for name, node in graphs["default"].nodes.items() if type(node).__name__ == "LIF"]
    steps, ours, predictions, labels, config = _our_outputs(run, spiking)
    report = json.loads((run / "report.json").read_text())

    results = []
    for peer, runner in PEERS.items():
        try:
            __import__(peer)
        except ImportError:
            print(f"{peer} is not installed: left out", file=sys.stderr)
            continue
        for kind, graph in graphs.items():
            outputs = runner(graph, steps)
            layers = {name: {"equal": int((outputs[name] == ours[name]).sum()), "total": ours[name].numel(),
                             "our_spikes": int(ours[name].sum())} for name in ours}
            theirs = outputs["output"].mean(0).argmax(1)
            results.append({"peer": peer, "file": kind, "layers": layers,
                            "predictions_equal": int((theirs == predictions).sum()), "images": len(labels),
                            "test_accuracy": (theirs == labels).float().mean().item()})
    result = {"benchmark": "nir_peers", "commit": git_commit(), "date": utc_now(),
              "versions": {**versions(), **{name: _version(name) for name in ("nir", *PEERS)}},
              "run": {"config": report["config"], "epochs": report["epochs"],
                      "reported_test_accuracy": report["test_accuracy"]["base"]},
              "tna_eval_accuracy": evaluated, "timesteps": config.timesteps, "peers": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out}", file=sys.stderr)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _markdown(result: dict) -> str:
    names = list(result["peers"][0]["layers"]) if result["peers"] else []
    run = result["run"]
    intro = (f"Default digits run ({run['epochs']} epochs, T = {result['timesteps']}), test accuracy reported "
             f"{run['reported_test_accuracy']:.4f}; tna-eval: model.pt {result['tna_eval_accuracy']['pt']:.4f}, "
             f"model.nir {result['tna_eval_accuracy']['nir']:.4f}, with --strict-threshold "
             f"{result['tna_eval_accuracy']['nir_strict_threshold']:.4f}. Spikes equal to ours per layer (of "
             "T x test images x neurons), predictions equal to ours (of the test images):")
    lines = [
        textwrap.fill(intro, 115),
        "",
        "| peer | file | " + " | ".join(names) + " | predictions equal | peer's test accuracy |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    if result["peers"]:
        counts = [f"{layer['our_spikes']:,}" for layer in result["peers"][0]["layers"].values()]
        lines.append("| ours: spikes | | " + " | ".join(counts) + " | | |")
    for row in result["peers"]:
        cells = [f"{layer['equal']:,} / {layer['total']:,}" for layer in row["layers"].values()]
        lines.append(f"| {row['peer']} | {row['file'].replace('_', ' ')} | " + " | ".join(cells)
                     + f" | {row['predictions_equal']} / {row['images']} | {row['test_accuracy']:.4f} |")
    found = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    lines += ["", textwrap.fill(f"{found}; commit {result['commit']}, {result['date']}.", 115), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
