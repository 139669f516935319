"""One training run: base network (and twin or teacher), epochs with progress bars, evaluation, checkpoints.

A run directory holds ``config.json``, ``checkpoint.pt`` (written atomically after every epoch),
``metrics.jsonl`` (one line per finished epoch) and, at the end, ``report.json``, ``report.md`` and plots.
``Trainer(config, run_dir).run()`` continues from ``checkpoint.pt`` when it exists, exactly where the last
finished epoch left off: data order and augmentation come from (seed, epoch), and the models, optimizers,
schedulers and random generators are restored.
"""
import contextlib
import copy
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import tna_kernels.nn as tnn

from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_atomic
from .config import TrainConfig
from .data import DataSplits, batches, load_dataset, num_batches
from .deploy import load_deployed
from .files import write_atomically
from .losses import accuracy_count, objective, uses_twin
from .models import SpikingNetwork, spiking_layers
from .network import build_network, twin_weights
from .pruning import (PrunedRun, attach_masks, layer_sparsity, load_state, mask_gradients_, masks_of, nonzero_weights,
                      prunable_layers, zero_pruned_)
from .sparsity import beta_at, layer_weights, measure_activity, penalty


# Architectures whose epoch takes long on a CPU: tna-train says how long before the first epoch.
SLOW_ON_CPU = ("vgg11", "resnet19")
CPU_TIMING_STEPS = 2


def resolve_device(name: str) -> torch.device:
    """"auto" -> the local CUDA device when present (per rank under torchrun), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            rank = dist.get_rank() if dist.is_initialized() else 0
            return torch.device("cuda", rank % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(name)


def model_bytes(model: nn.Module) -> dict:
    """``{"fp32": bytes of the model with every parameter and buffer in float32, "deployed": bytes of the
    state_dict after freezing the ternary layers to packed 2-bit weights}``."""
    def tensor_bytes(state):
        return sum(t.numel() * t.element_size() for k, t in state.items() if not k.endswith("num_batches_tracked"))

    fp32 = sum(t.numel() * 4 for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    return {"fp32": fp32, "deployed": tensor_bytes(tnn.freeze_(copy.deepcopy(model)).state_dict())}


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSplits, batch_size: int, device: torch.device, amp=None) -> dict:
    """Test accuracy and firing rates: ``{"accuracy": fraction, "spike_rate": {"mean": .., "per_layer": {..}}}``;
    rates are spikes per neuron per timestep over the test set (the mean weights layers by neuron count)."""
    model.eval()
    layers = spiking_layers(model)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    rate_sums = {name: torch.zeros((), device=device) for name in layers}
    seen = 0
    for x, y in batches(data, False, batch_size, seed=0, epoch=0, device=device):
        with amp or contextlib.nullcontext():
            logits = model(x)
        correct += accuracy_count(logits, y)
        for name, layer in layers.items():
            rate_sums[name] += layer.rate.detach() * len(y)
        seen += len(y)
    per_layer = {name: (total / seen).item() for name, total in rate_sums.items()}
    neurons = {name: layer.neurons for name, layer in layers.items()}
    mean = sum(per_layer[n] * neurons[n] for n in layers) / max(1, sum(neurons.values()))
    return {"accuracy": correct.item() / seen, "spike_rate": {"mean": mean, "per_layer": per_layer}}


def _optimizer(config: TrainConfig, model: nn.Module):
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)


def load_teacher(path: str, data: DataSplits, device: torch.device) -> SpikingNetwork:
    """A frozen teacher from a file written by ``tna-export`` or from a run directory (its base network)."""
    source = Path(path)
    if source.is_dir():
        state = load_checkpoint(source / "checkpoint.pt", "teacher checkpoint")
        config = TrainConfig.from_dict(state["config"])
        model = build_network(config, data, weights=config.weights, width=1.0)
        load_state(model, state["base"])
    else:
        model, config = load_deployed(path)
    if config.dataset != data.name:
        raise CheckpointError(f"teacher {path} was trained on {config.dataset}, not {data.name}")
    return model.to(device).eval().requires_grad_(False)


class Trainer:
    """Trains ``config`` (resolved) into ``run_dir``; ``run()`` returns the final report dict. ``pruned``: a
    round of a ticket search (masks, rewound weights, first epoch; see :class:`tna.pruning.PrunedRun`)."""

    def __init__(self, config: TrainConfig, run_dir, *, progress: bool = True, pruned: Optional[PrunedRun] = None):
        self.config = config
        self.pruned = pruned
        self.run_dir = Path(run_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.device = resolve_device(config.device)
        self.data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps, download=config.download,
                                 val_fraction=config.val_fraction, train_fraction=config.train_fraction)
        if self.device.type == "cuda":  # keep the (uint8) dataset on the GPU: batches are cut and augmented there
            self.data = dataclasses.replace(self.data, **{
                k: getattr(self.data, k).to(self.device) for k in ("train_x", "train_y", "test_x", "test_y", "val_x",
                                                                   "val_y") if getattr(self.data, k) is not None})

        torch.manual_seed(config.seed)
        self.base = build_network(config, self.data, weights=config.weights, width=1.0).to(self.device)
        self.twin = None
        if uses_twin(config.method):
            self.twin = build_network(config, self.data, weights=twin_weights(config),
                                      width=config.twin_width).to(self.device)
        self.teacher = load_teacher(config.teacher, self.data, self.device) if config.method == "kd" else None
        self.networks = {"base": self.base} if self.twin is None else {"base": self.base, "twin": self.twin}
        if pruned is not None:
            for name, model in self.networks.items():
                if pruned.start is not None:
                    model.load_state_dict(pruned.start[name])
                attach_masks(model, pruned.masks.get(name, {}))
        self.first_epoch = pruned.first_epoch if pruned is not None else 0
        self.optimizers = {name: _optimizer(config, model) for name, model in self.networks.items()}
        self.trained = self.networks
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = {name: nn.parallel.DistributedDataParallel(model, device_ids=ids)
                            for name, model in self.networks.items()}
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.history = []
        penalized = {"base": self.base}
        if config.sparsity_twin and self.twin is not None:
            penalized["twin"] = self.twin
        self.sparsity_weights = {}
        if config.sparsity_weight > 0:
            sample = next(batches(self.data, False, 8, seed=0, epoch=0, device=self.device))[0]
            for name, model in penalized.items():
                activity = measure_activity(model.eval(), sample, config.timesteps)
                neurons = {n: layer.neurons for n, layer in spiking_layers(model).items()}
                self.sparsity_weights[name] = layer_weights(config.sparsity_layer_weights, neurons, activity.fanout)

    def _say_epoch_time(self) -> None:
        """Before the first epoch of a large architecture on the CPU: time training steps on copies of the
        networks (the run itself is untouched) and say roughly how long one epoch will take."""
        config = self.config
        networks = {name: copy.deepcopy(model).train() for name, model in self.networks.items()}
        x, y = next(batches(self.data, True, config.batch_size, seed=config.seed, epoch=0, device=self.device,
                            augment=False))
        times = []
        for _ in range(CPU_TIMING_STEPS):
            start = time.perf_counter()
            logits = {name: model(x) for name, model in networks.items()}
            objective(config.method, logits["base"], logits.get("twin", logits["base"].detach()), y,
                      tna_lambda=config.tna_lambda).backward()
            times.append(time.perf_counter() - start)
        steps = num_batches(self.data, True, config.batch_size)
        estimate = min(times) * steps
        span = (f"{estimate / 3600:.1f} h" if estimate >= 3600 else f"{estimate / 60:.0f} min" if estimate >= 60
                else f"{estimate:.0f} s")
        print(f"tna-train: {config.arch} on the CPU: one epoch ({steps} steps of {config.batch_size} samples) will "
              f"take about {span} (timed over {CPU_TIMING_STEPS} steps); --arch convnet is made for CPUs",
              file=sys.stderr, flush=True)

    def _autocast(self):
        if self.config.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": len(self.history),
            "history": self.history,
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "scaler": self.scaler.state_dict(),
            **{name: model.state_dict() for name, model in self.networks.items()},
            **{f"{name}_optimizer": opt.state_dict() for name, (opt, _) in self.optimizers.items()},
            **{f"{name}_scheduler": sched.state_dict() for name, (_, sched) in self.optimizers.items()},
        }

    def _restore(self, state: dict) -> None:
        if state["config"] != self.config.to_dict():
            raise CheckpointError(f"{self.run_dir / 'checkpoint.pt'} belongs to a run with different settings; "
                                  "resume it with the settings in its config.json (tna-train --resume RUN_DIR)")
        try:
            for name, model in self.networks.items():
                model.load_state_dict(state[name])
                self.optimizers[name][0].load_state_dict(state[f"{name}_optimizer"])
                self.optimizers[name][1].load_state_dict(state[f"{name}_scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"{self.run_dir / 'checkpoint.pt'} does not fit this model: "
                                  f"{str(error).splitlines()[0]}") from None
        torch.set_rng_state(state["cpu_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history = list(state["history"])

    def run(self) -> dict:
        from .report import write_report

        checkpoint = self.run_dir / "checkpoint.pt"
        if checkpoint.exists():
            self._restore(load_checkpoint(checkpoint))
        else:
            if self.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            self._start_at_first_epoch()
        if not self.history and self.is_main and self.device.type == "cpu" and self.config.arch in SLOW_ON_CPU:
            self._say_epoch_time()
        for epoch in range(self.first_epoch + len(self.history), self.config.epochs):
            record = self._train_epoch(epoch)
            self.history.append(record)
            if self.pruned is not None and self.pruned.on_epoch_end is not None:
                self.pruned.on_epoch_end(epoch + 1, self.networks)
            if self.is_main:
                save_atomic(self._state(), checkpoint)
                lines = "".join(json.dumps(r) + "\n" for r in self.history).encode()
                write_atomically(self.run_dir / "metrics.jsonl", lambda f: f.write(lines))
        report = self._report()
        if self.is_main:
            write_report(self.run_dir, report, self.history)
        return report

    def _start_at_first_epoch(self) -> None:
        """A fresh run: advance the learning-rate schedules to the first epoch and tell ``on_epoch_end``."""
        with warnings.catch_warnings():  # the schedule steps before any optimizer step, on purpose
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.first_epoch):
                for _, scheduler in self.optimizers.values():
                    scheduler.step()
        if self.pruned is not None and self.pruned.on_epoch_end is not None:
            self.pruned.on_epoch_end(self.first_epoch, self.networks)

    def _train_epoch(self, epoch: int) -> dict:
        config, device = self.config, self.device
        for model in self.networks.values():
            model.train()
        names = list(self.networks)
        layers = spiking_layers(self.base)
        beta = beta_at(epoch, config.epochs, config.sparsity_schedule, config.sparsity_start,
                       config.sparsity_weight, config.sparsity_delay) if self.sparsity_weights else 0.0
        loss_sum = torch.zeros((), device=device)
        correct = {name: torch.zeros((), dtype=torch.int64, device=device) for name in names}
        rate_sums = {name: torch.zeros((), device=device) for name in layers}
        seen, steps = 0, 0
        start = time.perf_counter()
        total = num_batches(self.data, True, config.batch_size, world_size=self.world_size)
        bar = tqdm(batches(self.data, True, config.batch_size, seed=config.seed, epoch=epoch, device=device,
                           augment=config.augment, rank=self.rank, world_size=self.world_size),
                   total=total, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not self.progress, leave=False,
                   mininterval=0.5)
        for x, y in bar:
            with self._autocast():
                logits = {name: self.trained[name](x) for name in names}
                partner = logits.get("twin")
                if self.teacher is not None:
                    with torch.no_grad():
                        partner = self.teacher(x)
                loss = objective(config.method, logits["base"], partner, y, tna_lambda=config.tna_lambda,
                                 mse_reduction=config.mse_reduction, kd_temperature=config.kd_temperature,
                                 kd_alpha=config.kd_alpha)
                if beta > 0:
                    loss = loss + beta * sum(penalty(self.networks[name], weights)
                                             for name, weights in self.sparsity_weights.items())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss.item()} at epoch {epoch + 1}, step "
                                         f"{steps + 1}; lower --lr or use --amp none")
            for optimizer, _ in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            for model in self.networks.values():
                mask_gradients_(model)
            for optimizer, _ in self.optimizers.values():
                self.scaler.step(optimizer)
            self.scaler.update()
            for model in self.networks.values():
                zero_pruned_(model)
            loss_sum += loss.detach() * len(y)
            for name in names:
                correct[name] += accuracy_count(logits[name].detach(), y)
            for name, layer in layers.items():
                rate_sums[name] += layer.rate.detach() * len(y)
            seen += len(y)
            steps += 1
            if self.progress and (steps % 10 == 0 or steps == total):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct['base'].item() / seen:.3f}")
        bar.close()
        train_time = time.perf_counter() - start
        for _, scheduler in self.optimizers.values():
            scheduler.step()
        totals = torch.stack([loss_sum, *[correct[n].float() for n in names],
                              torch.tensor(float(seen), device=device)])
        if self.world_size > 1:
            dist.all_reduce(totals)
        seen_all = totals[-1].item()
        train_acc = {name: totals[1 + i].item() / seen_all for i, name in enumerate(names)}
        tests = {name: evaluate(model, self.data, config.batch_size, device, self._autocast())
                 for name, model in self.networks.items()}
        vals = {}
        if self.data.val_y is not None:
            vals = {name: evaluate(model, self.data.validation(), config.batch_size, device, self._autocast())
                    for name, model in self.networks.items()}
        record = {
            "epoch": epoch + 1,
            "lr": self.optimizers["base"][0].param_groups[0]["lr"],
            "sparsity_beta": beta,
            "train_loss": totals[0].item() / seen_all,
            "train_accuracy": {"base": train_acc["base"], "twin": train_acc.get("twin")},
            "val_accuracy": {name: vals[name]["accuracy"] if name in vals else None for name in ("base", "twin")},
            "test_accuracy": {"base": tests["base"]["accuracy"],
                              "twin": tests["twin"]["accuracy"] if "twin" in tests else None},
            "train_spike_rate": {name: (total / seen).item() for name, total in rate_sums.items()},
            "spike_rate": tests["base"]["spike_rate"],
            "epoch_time_s": train_time,
        }
        if self.progress:
            twin = record["test_accuracy"]["twin"]
            val = record["val_accuracy"]["base"]
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f}"
                       + ("" if val is None else f", validation accuracy base {val:.4f}")
                       + f", test accuracy base {record['test_accuracy']['base']:.4f}"
                       + ("" if twin is None else f", twin {twin:.4f}")
                       + f", spike rate {record['spike_rate']['mean']:.4f}, {record['epoch_time_s']:.1f} s")
        return record

    def _report(self) -> dict:
        config, last = self.config, self.history[-1]
        test_x = next(batches(self.data, False, 256, seed=0, epoch=0, device=self.device))[0]
        activity = measure_activity(self.base.eval(), test_x, config.timesteps)
        layers = prunable_layers(self.base)
        if self.pruned is not None:
            layers = {name: layers[name] for name in self.pruned.layers}
        sparsity, sparsity_per_layer = layer_sparsity(masks_of(self.base), layers)
        return {
            "method": config.method,
            "dataset": config.dataset,
            "arch": config.arch,
            "weights": config.weights,
            "twin_weights": twin_weights(config) if self.twin is not None else None,
            "timesteps": config.timesteps,
            "seed": config.seed,
            "epochs": config.epochs,
            "val_accuracy": last["val_accuracy"],
            "test_accuracy": last["test_accuracy"],
            "spike_rate": last["spike_rate"],
            "model_bytes": model_bytes(self.base),
            "nonzero_weights": nonzero_weights(self.base),
            "sparsity": sparsity,
            "sparsity_per_layer": sparsity_per_layer,
            "ticket": self.pruned.ticket if self.pruned is not None else None,
            "spikes_per_sample": activity.spikes_per_sample,
            "synops_per_sample": activity.synops,
            "macs_per_sample": activity.macs,
            "energy_uj_per_sample": activity.energy_uj(config.ac_pj, config.mac_pj),
            "ann_macs_per_sample": activity.dense_macs,
            "ann_energy_uj_per_sample": activity.dense_energy_uj(config.mac_pj),
            "spike_penalty": {"weight": config.sparsity_weight, "schedule": config.sparsity_schedule,
                              "layer_weights": self.sparsity_weights.get("base")},
            "wall_time_s": sum(r["epoch_time_s"] for r in self.history),
            "epoch_time_s": sum(r["epoch_time_s"] for r in self.history) / len(self.history),
            "device": str(self.device),
            "world_size": self.world_size,
            "config": config.to_dict(),
        }
