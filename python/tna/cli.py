"""Command-line entry points: ``tna-train``, ``tna-prune``, ``tna-export``, ``tna-eval`` and ``tna-explain``."""
import argparse
import json
import os
import sys
from pathlib import Path

from tna_kernels.nir import NIRError

from .checkpoint import CheckpointError
from .config import AMP_MODES, OPTIMIZERS, TWIN_WEIGHTS, ConfigError, TrainConfig, read_yaml
from .data import DATASETS, DataError
from .losses import METHODS, MSE_REDUCTIONS
from .models import ARCHS, WEIGHTS
from .pruning import SCOPES
from .sparsity import LAYER_WEIGHTS, SCHEDULES

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def _list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in str(text).split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tna-train",
        description="Train spiking networks with Twin Network Augmentation (or a baseline) and write reports. "
                    "With no flags: TNA, ternary weights, the bundled scikit-learn digits dataset.",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML file of settings (keys as the flags); flags override it")
    p.add_argument("--dataset", help=f"one of {DATASETS} (default digits)")
    p.add_argument("--data-dir", help="folder holding the dataset (default ./data)")
    p.add_argument("--download", action="store_true", help="fetch the public archive when the data is missing")
    p.add_argument("--arch", help=f"one of {ARCHS} (default: convnet for digits, resnet19 for CIFAR, vgg11 for DVS)")
    p.add_argument("--timesteps", type=int, help="T, simulation steps per sample")
    p.add_argument("--method", type=_list(str), help=f"comma list of {METHODS} (default tna)")
    p.add_argument("--weights", type=_list(str), help=f"comma list of {WEIGHTS} (default ternary)")
    p.add_argument("--quantizer", help="ternary quantizer: twn, ttq or absmean (default twn)")
    p.add_argument("--quantize-first-last", action="store_true", help="make the first and last layer ternary too")
    p.add_argument("--twin-width", type=float, help="channel multiplier of the twin (default 1)")
    p.add_argument("--twin-weights", choices=TWIN_WEIGHTS, help="twin weight precision (default: same as base)")
    p.add_argument("--tna-lambda", type=_list(float),
                   help="weight of the logit MSE in TNA (default 0.005); a comma list trains one TNA run per value "
                        "and draws validation and test accuracy against lambda")
    p.add_argument("--mse-reduction", choices=MSE_REDUCTIONS, help="sum over logits (default) or mean")
    p.add_argument("--teacher", help="kd: a model file from tna-export, or a run directory (default: the "
                                     "full-precision baseline of the same seed, trained first in the same --out)")
    p.add_argument("--kd-temperature", type=float, help="kd temperature (default 4)")
    p.add_argument("--kd-alpha", type=float, help="kd weight of the soft loss (default 0.9)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (cosine schedule)")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--sparsity-weight", type=_list(float),
                   help="beta: weight of the spike-rate penalty (final value of the schedule; default 0 = off); "
                        "a comma list trains one run per value and draws accuracy against spike rate")
    p.add_argument("--sparsity-schedule", choices=SCHEDULES, help="constant (default), linear or anneal")
    p.add_argument("--sparsity-start", type=float, help="beta0, the schedule's first value (linear, anneal)")
    p.add_argument("--sparsity-delay", type=int, help="epochs without the penalty before the schedule starts")
    p.add_argument("--sparsity-layer-weights", choices=LAYER_WEIGHTS, help="uniform (default), neurons or fanout")
    p.add_argument("--sparsity-twin", action="store_true", help="tna / dml: penalize the twin's spikes too")
    p.add_argument("--ac-pj", type=float, help="energy per accumulate in pJ (default 0.9, 45 nm)")
    p.add_argument("--mac-pj", type=float, help="energy per multiply-accumulate in pJ (default 4.6, 45 nm)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    p.add_argument("--val-fraction", type=float,
                   help="share of each class of the training split held out for validation (default 0.1)")
    p.add_argument("--train-fraction", type=float,
                   help="train on this stratified share of the rest of the training split (default 1)")
    p.add_argument("--amp", choices=AMP_MODES, help="autocast dtype (default none)")
    p.add_argument("--seeds", type=_list(int), help="comma list of seeds (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", help="output folder (default runs/<dataset>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run (or every run of the sweep) in RUN_DIR with its saved settings")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _fail(prog: str, error: Exception) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2


def _as_list(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [item.strip() for item in str(value).split(",") if item.strip()]


def plan_runs(args: dict) -> tuple:
    """``(out_dir, [(run_dir, TrainConfig)])`` from parsed flags (and the YAML file they name)."""
    settings = read_yaml(args.pop("config")) if "config" in args else {}
    settings.update(args)
    methods = _as_list(settings.pop("method", "tna"))
    weights = _as_list(settings.pop("weights", "ternary"))
    seeds = [int(s) for s in _as_list(settings.pop("seeds", [0]))]
    betas = [float(b) for b in _as_list(settings.pop("sparsity_weight", [0.0]))]
    lambdas = [float(v) for v in _as_list(settings.pop("tna_lambda", [TrainConfig.tna_lambda]))]
    out = Path(settings.pop("out", f"runs/{settings.get('dataset', 'digits')}"))

    def name(method, weight, lam, beta, seed):
        return (f"{method}-{weight}" + (f"-lambda{lam:g}" if method == "tna" and len(lambdas) > 1 else "")
                + (f"-beta{beta:g}" if len(betas) > 1 else "") + f"-seed{seed}")

    planned = {}
    for method in methods:
        for weight in weights:
            for lam in lambdas if method == "tna" else lambdas[:1]:
                for beta in betas:
                    for seed in seeds:
                        values = {**settings, "method": method, "weights": weight, "seed": seed,
                                  "sparsity_weight": beta, "tna_lambda": lam}
                        if method == "kd" and not values.get("teacher"):
                            teacher = name("baseline", "fp", lam, beta, seed)
                            planned.setdefault(teacher, {**values, "method": "baseline", "weights": "fp"})
                            values["teacher"] = str(out / teacher)
                        planned[name(method, weight, lam, beta, seed)] = values
    # a kd run's teacher is trained before it
    order = sorted(planned, key=lambda run: planned[run]["method"] == "kd")
    return out, [(out / run, TrainConfig.from_dict(planned[run]).resolved()) for run in order]


def _resume_plan(path: str) -> tuple:
    folder = Path(path)
    if (folder / "config.json").is_file():
        config = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
        return folder, [(folder, config)]
    if (folder / "sweep.json").is_file():
        sweep = json.loads((folder / "sweep.json").read_text())
        return folder, [(folder / name, TrainConfig.from_dict(c)) for name, c in sweep["runs"].items()]
    raise CheckpointError(f"--resume {path}: no config.json (a run) or sweep.json (several runs) there")


def _init_distributed() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def train_main(argv=None) -> int:
    """``tna-train``: train every (method, weights, seed) asked for; exit status 0 on success, 2 on bad input."""
    args = vars(train_parser().parse_args(argv))
    progress = args.pop("progress", True)
    main_process = os.environ.get("RANK", "0") == "0"  # set by torchrun
    say = (lambda text: print(f"tna-train: {text}", file=sys.stderr)) if main_process else (lambda text: None)
    distributed, out = False, None
    try:
        if "resume" in args:
            out, runs = _resume_plan(args["resume"])
        else:
            out, runs = plan_runs(args)
            out.mkdir(parents=True, exist_ok=True)
        if main_process and "resume" not in args:
            (out / "sweep.json").write_text(json.dumps(
                {"runs": {run_dir.name: config.to_dict() for run_dir, config in runs}}, indent=2) + "\n")
        distributed = _init_distributed()
        from .report import write_comparison
        from .trainer import Trainer

        reports = []
        for run_dir, config in runs:
            if (run_dir / "report.json").is_file():
                reports.append(json.loads((run_dir / "report.json").read_text()))
                continue
            say(f"{config.method}, {config.weights} weights, seed {config.seed}, {config.dataset} "
                f"({config.arch}, T={config.timesteps}, {config.epochs} epochs) -> {run_dir}")
            reports.append(Trainer(config, run_dir, progress=progress).run())
            acc = reports[-1]["test_accuracy"]
            say(f"{run_dir}: base test accuracy {acc['base']:.4f}"
                + ("" if acc["twin"] is None else f", twin {acc['twin']:.4f}"))
        if len(reports) > 1 and main_process:
            write_comparison(out, reports)
            say(f"comparison in {out / 'comparison.md'}")
        return 0
    except USER_ERRORS as error:
        return _fail("tna-train", error)
    except KeyboardInterrupt:
        print(f"tna-train: interrupted; continue with: tna-train --resume {args.get('resume') or out or 'OUT'}",
              file=sys.stderr)
        return 130
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def prune_parser() -> argparse.ArgumentParser:
    """tna-train's flags plus the ticket search's."""
    p = train_parser()
    p.prog = "tna-prune"
    p.description = ("Find lottery tickets: train, prune the least important weights, rewind, repeat (Lottery "
                     "Ticket Rewinding with layer-wise importance). Takes tna-train's flags for the model, data, "
                     "method and precision (one method and precision per search; each seed is its own search).")
    own_help = {"out": "output folder (default runs/prune-<dataset>)",
                "resume": "continue the search(es) in OUT (the folder with prune.json) with its saved settings",
                "seeds": "comma list of seeds, one search each in OUT/seed<s> (default 0: the search is OUT)"}
    for action in p._actions:
        if action.dest in own_help:
            action.help = own_help[action.dest]
            action.metavar = "OUT" if action.dest == "resume" else action.metavar
    p.add_argument("--importance", type=_list(str),
                   help="comma list of magnitude, l1, l2, softmax, minmax: one ticket search per metric from the "
                        "same seed (default magnitude)")
    p.add_argument("--rounds", type=int, help="pruning rounds; after n rounds 1 - (1 - rate)^n of the weights are "
                                              "pruned (default 5)")
    p.add_argument("--prune-rate", type=float, help="share of the remaining weights pruned per round (default 0.2)")
    p.add_argument("--rewind-epoch", type=int,
                   help="rewind the kept weights to the end of this epoch of the dense run (default 0: the "
                        "initialization)")
    p.add_argument("--prune-scope", choices=SCOPES, help="global (default): compare importances over all prunable "
                                                          "layers; layer: prune each layer by the rate")
    p.add_argument("--prune-first-last", action=argparse.BooleanOptionalAction,
                   help="prune the first and the last weight layer too (default: yes, every Conv2d and Linear)")
    p.add_argument("--prune-twin", action="store_true", help="tna / dml: prune the twin too, with its own masks "
                                                             "(default: the twin stays dense)")
    return p


PRUNE_FLAGS = {"importance": "importance", "rounds": "rounds", "prune_rate": "prune_rate",
               "rewind_epoch": "rewind_epoch", "prune_scope": "scope", "prune_first_last": "first_last",
               "prune_twin": "prune_twin"}


def _prune_plan(args: dict) -> tuple:
    """``(out, settings, [(search_dir, config)], [(teacher_dir, config)])`` from tna-prune's flags."""
    from .lottery import PruneSettings

    values = {PRUNE_FLAGS[flag]: args.pop(flag) for flag in list(args) if flag in PRUNE_FLAGS}
    if "importance" in values:
        values["importance"] = tuple(values["importance"])
    settings = PruneSettings(**values)
    for flag in ("method", "weights", "tna_lambda", "sparsity_weight"):
        if len(_as_list(args.get(flag, []))) > 1:
            raise ConfigError(f"tna-prune searches one value of --{flag.replace('_', '-')} at a time, got "
                              f"{args[flag]}")
    args.setdefault("out", f"runs/prune-{args.get('dataset', 'digits')}")
    out, runs = plan_runs(args)
    method = _as_list(args.get("method", ["tna"]))[0]
    searches = [(run_dir, config) for run_dir, config in runs if config.method == method]
    teachers = [(run_dir, config) for run_dir, config in runs if config.method != method]
    if len(searches) > 1:
        searches = [(out / f"seed{config.seed}", config) for _, config in searches]
    else:
        searches = [(out, config) for _, config in searches]
    for _, config in searches:
        settings.validate(config)
    return out, settings, searches, teachers


def prune_main(argv=None) -> int:
    """``tna-prune``: one ticket search per seed (each over every importance metric); exit status 0 on success,
    2 on bad input, 130 when interrupted (``tna-prune --resume OUT`` continues)."""
    args = vars(prune_parser().parse_args(argv))
    progress = args.pop("progress", True)
    out = None
    try:
        from .lottery import PruneSettings, TicketSearch
        from .trainer import Trainer

        if "resume" in args:
            out = Path(args["resume"])
            if not (out / "prune.json").is_file():
                raise CheckpointError(f"--resume {out}: no prune.json there (the folder a tna-prune run wrote)")
            plan = json.loads((out / "prune.json").read_text())
            settings = PruneSettings(**{**plan["settings"], "importance": tuple(plan["settings"]["importance"])})
            searches = [(Path(d), TrainConfig.from_dict(c)) for d, c in plan["searches"]]
            teachers = [(Path(d), TrainConfig.from_dict(c)) for d, c in plan["teachers"]]
        else:
            out, settings, searches, teachers = _prune_plan(args)
            out.mkdir(parents=True, exist_ok=True)
            (out / "prune.json").write_text(json.dumps({
                "settings": settings.to_dict(),
                "searches": [[str(d), c.to_dict()] for d, c in searches],
                "teachers": [[str(d), c.to_dict()] for d, c in teachers]}, indent=2) + "\n")
        for run_dir, config in teachers:
            if not (run_dir / "report.json").is_file():
                print(f"tna-prune: the kd teacher, seed {config.seed} -> {run_dir}", file=sys.stderr)
                Trainer(config, run_dir, progress=progress).run()
        for search_dir, config in searches:
            TicketSearch(config, settings, search_dir, progress=progress).run()
            print(f"tna-prune: tickets of seed {config.seed} in {search_dir} (summary.md, overlap.json)",
                  file=sys.stderr)
        return 0
    except USER_ERRORS as error:
        return _fail("tna-prune", error)
    except KeyboardInterrupt:
        print(f"tna-prune: interrupted; continue with: tna-prune --resume {out or 'OUT'}", file=sys.stderr)
        return 130


def export_main(argv=None) -> int:
    """``tna-export RUN_DIR --out model.pt``: the base network only, frozen, BatchNorm folded; ``--format nir``
    writes it as a NIR graph instead."""
    p = argparse.ArgumentParser(prog="tna-export", description="Write a run's base network for deployment.")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="file to write (e.g. model.pt, or model.nir with --format nir)")
    p.add_argument("--format", choices=("pt", "nir"), default="pt",
                   help="pt (default): a torch file for tna-eval and tna-explain; nir: a NIR graph (HDF5) for "
                        "SpikingJelly, snnTorch, Norse and neuromorphic tool chains, read back by tna-eval")
    p.add_argument("--dt", type=float, help="nir: the time step in seconds that maps tau in steps to NIR's tau in "
                                            "seconds (default 1e-4, as the peers' NIR importers assume)")
    p.add_argument("--strict-threshold", action="store_true",
                   help="nir: write each threshold one float32 step lower, so that NIR's v > threshold (snnTorch, "
                        "Norse, hardware) fires where our v >= threshold does")
    args = p.parse_args(argv)
    from .deploy import export_run

    try:
        if args.format == "pt":
            if args.dt is not None or args.strict_threshold:
                raise ConfigError("--dt and --strict-threshold apply to --format nir")
            info = export_run(args.run_dir, args.out)
        else:
            from .nir_io import export_run_nir

            dt = 1e-4 if args.dt is None else args.dt
            if not 0 < dt < float("inf"):
                raise ConfigError(f"--dt must be a positive number of seconds, got {dt:g}")
            info = export_run_nir(args.run_dir, args.out, dt, args.strict_threshold)
    except (*USER_ERRORS, NIRError) as error:
        return _fail("tna-export", error)
    if args.format == "nir":
        print(f"tna-export: wrote {args.out} (NIR graph of {info['nodes']} nodes, {info['bytes'] / 1024:.1f} KiB, "
              f"dt={dt:g} s, after {info['epochs']} epochs)")
        return 0
    print(f"tna-export: wrote {args.out} ({info['bytes'] / 1024:.1f} KiB of weights, {info['nonzero_weights']} of "
          f"them non-zero, after {info['epochs']} epochs)")
    return 0


def eval_main(argv=None) -> int:
    """``tna-eval MODEL [--dataset D] [--data-dir DIR]``: test accuracy and firing rate of a deployed model (a file
    from ``tna-export``, ``--format pt`` or ``nir``)."""
    p = argparse.ArgumentParser(prog="tna-eval", description="Evaluate a model written by tna-export (a .pt file, "
                                                             "or a NIR file from --format nir).")
    p.add_argument("model")
    p.add_argument("--dataset", help="dataset to test on (default: the one it was trained on)")
    p.add_argument("--data-dir", help="folder holding the dataset (default: the training run's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from .data import load_dataset
    from .deploy import load_deployed
    from .nir_io import is_nir_file, load_nir_model
    from .trainer import evaluate, resolve_device

    try:
        if not Path(args.model).is_file():
            raise CheckpointError(f"model file {args.model} does not exist")
        model, config = (load_nir_model if is_nir_file(args.model) else load_deployed)(args.model)
        dataset = args.dataset or config.dataset
        if dataset != config.dataset:
            raise ConfigError(f"{args.model} was trained on {config.dataset}; it cannot be tested on {dataset}")
        data = load_dataset(dataset, args.data_dir or config.data_dir, timesteps=config.timesteps)
        device = resolve_device(args.device)
        result = evaluate(model.to(device), data, args.batch_size, device)
    except (*USER_ERRORS, NIRError) as error:
        return _fail("tna-eval", error)
    if args.json:
        print(json.dumps({"dataset": dataset, **result}))
    else:
        print(f"{dataset}: test accuracy {result['accuracy']:.4f}, spike rate {result['spike_rate']['mean']:.4f}")
    return 0


def explain_parser() -> argparse.ArgumentParser:
    from .explain.methods import METHODS as EXPLAIN_METHODS
    from .explain.metrics import METRICS as EXPLAIN_METRICS

    p = argparse.ArgumentParser(
        prog="tna-explain",
        description="Explain a trained spiking network's test images with saliency methods, grade the maps with "
                    "evaluation metrics, and report the sanity checks and the metrics' coherency. A killed run "
                    "resumes when called again with the same arguments.")
    p.add_argument("model", help="a model file written by tna-export, or a tna-train run folder")
    p.add_argument("--dataset", help="the dataset whose test images to explain (default: the model's)")
    p.add_argument("--n", type=int, default=64, help="test images to explain (a seeded sample; default 64)")
    p.add_argument("--methods", default="all",
                   help=f"comma list of explanation methods (default all: {', '.join(EXPLAIN_METHODS)})")
    p.add_argument("--metrics", default="all",
                   help=f"comma list of metrics (default all; the box metrics only on data with boxes): "
                        f"{', '.join(EXPLAIN_METRICS)}")
    p.add_argument("--out", help="output folder (default runs/explain-<model name>)")
    p.add_argument("--seed", type=int, default=0, help="picks the images, the random maps, RISE's masks")
    p.add_argument("--chunk", type=int, default=32, help="images per unit of work (and of resumption)")
    p.add_argument("--randomization-n", type=int, default=16,
                   help="images for the cascading randomization check (default 16)")
    p.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients' steps (default 50)")
    p.add_argument("--rise-masks", type=int, default=5000, help="RISE's masks (default 5000)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def explain_main(argv=None) -> int:
    """``tna-explain MODEL``: maps, metrics, sanity checks and coherency in one folder; 2 on bad input."""
    args = explain_parser().parse_args(argv)
    try:
        import captum  # noqa: F401  (the methods import it when they run)

        from .explain.methods import METHODS as EXPLAIN_METHODS, MethodSettings
        from .explain.run import ExplainSettings, resolve, run_explain
        from .explain.sanity import SilentNetworkError
    except ImportError as error:
        return _fail("tna-explain", ConfigError(f"tna-explain needs Captum and SciPy ({error}): "
                                                "pip install \"tna-kernels[explain]\""))
    for name in ("n", "chunk", "randomization_n", "ig_steps", "rise_masks", "batch_size"):
        if getattr(args, name) < 1:
            return _fail("tna-explain", ConfigError(f"--{name.replace('_', '-')} must be at least 1"))
    from tqdm import tqdm

    out = Path(args.out or Path("runs") / f"explain-{Path(args.model).stem}")
    try:
        settings = ExplainSettings(
            model=str(args.model), dataset=args.dataset, n=args.n,
            methods=resolve(args.methods, EXPLAIN_METHODS, "method"), metrics=args.metrics, seed=args.seed,
            chunk=args.chunk, randomization_n=args.randomization_n,
            method_settings=MethodSettings(ig_steps=args.ig_steps, rise_masks=args.rise_masks,
                                           batch_size=args.batch_size))
        progress = None if args.no_progress else (lambda total: tqdm(total=total, desc="tna-explain", unit="unit"))
        result = run_explain(settings, out, progress)
    except (*USER_ERRORS, SilentNetworkError) as error:
        return _fail("tna-explain", error)
    except KeyboardInterrupt:
        print(f"tna-explain: interrupted; the same command continues where it stopped ({out})", file=sys.stderr)
        return 130
    print(f"tna-explain: {result['n']} images of {result['dataset']}, {len(result['metrics'])} methods -> "
          f"{out / 'report.md'}")
    return 0


__all__ = ["eval_main", "explain_main", "explain_parser", "export_main", "plan_runs", "prune_main", "prune_parser",
           "train_main", "train_parser"]
