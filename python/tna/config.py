"""A training run's settings: one dataclass, its per-dataset defaults, and YAML loading.

Precedence: command-line flags > ``--config FILE.yaml`` > the dataset's defaults (``DATASET_DEFAULTS``) >
the field defaults below.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .losses import METHODS, MSE_REDUCTIONS
from .models import ARCHS, WEIGHTS
from .sparsity import LAYER_WEIGHTS, SCHEDULES

OPTIMIZERS = ("adam", "sgd")
AMP_MODES = ("none", "bf16", "fp16")
TWIN_WEIGHTS = ("same", "fp", "ternary")

# Settings that depend on the dataset (used where the flag and the config file leave them unset).
DATASET_DEFAULTS = {
    "digits": dict(arch="convnet", timesteps=4, epochs=25, batch_size=32, optimizer="adam", lr=3e-3,
                   weight_decay=0.0),
    "mnist5k": dict(arch="convnet", timesteps=4, epochs=12, batch_size=64, optimizer="adam", lr=3e-3,
                    weight_decay=0.0),
    "digits-canvas": dict(arch="convnet", timesteps=4, epochs=40, batch_size=32, optimizer="adam", lr=3e-3,
                          weight_decay=0.0),
    "mnist5k-canvas": dict(arch="convnet", timesteps=4, epochs=15, batch_size=64, optimizer="adam", lr=3e-3,
                           weight_decay=0.0),
    "cifar10": dict(arch="resnet19", timesteps=4, epochs=200, batch_size=128, optimizer="sgd", lr=0.1,
                    weight_decay=5e-4),
    "cifar100": dict(arch="resnet19", timesteps=4, epochs=200, batch_size=128, optimizer="sgd", lr=0.1,
                     weight_decay=5e-4),
    "cifar10dvs": dict(arch="vgg11", timesteps=10, epochs=100, batch_size=32, optimizer="adam", lr=1e-3,
                       weight_decay=0.0),
}


class ConfigError(ValueError):
    """An invalid setting; the message names it and the allowed values."""


@dataclass
class TrainConfig:
    """Everything that defines one training run (one method, one seed)."""

    dataset: str = "digits"
    data_dir: str = "data"
    download: bool = False
    arch: Optional[str] = None
    timesteps: Optional[int] = None
    method: str = "tna"
    weights: str = "ternary"
    quantizer: str = "twn"
    quantize_first_last: bool = False
    twin_width: float = 1.0
    twin_weights: str = "same"
    tna_lambda: float = 0.005  # chosen on validation: benchmarks/results/tna_lambda/chosen.json
    mse_reduction: str = "sum"
    teacher: Optional[str] = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    optimizer: Optional[str] = None
    weight_decay: Optional[float] = None
    sparsity_weight: float = 0.0
    sparsity_schedule: str = "constant"
    sparsity_start: float = 0.0
    sparsity_delay: int = 0
    sparsity_layer_weights: str = "uniform"
    sparsity_twin: bool = False
    ac_pj: float = 0.9
    mac_pj: float = 4.6
    augment: bool = True
    val_fraction: float = 0.1
    train_fraction: float = 1.0
    amp: str = "none"
    seed: int = 0
    device: str = "auto"

    def resolved(self) -> "TrainConfig":
        """A copy with the dataset defaults filled in, validated (raises ConfigError)."""
        if self.dataset not in DATASET_DEFAULTS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {tuple(DATASET_DEFAULTS)}")
        filled = {k: v for k, v in DATASET_DEFAULTS[self.dataset].items() if getattr(self, k) is None}
        config = dataclasses.replace(self, **filled)
        config.validate()
        return config

    def validate(self) -> None:
        choices = {"arch": ARCHS, "method": METHODS, "weights": WEIGHTS, "twin_weights": TWIN_WEIGHTS,
                   "mse_reduction": MSE_REDUCTIONS, "optimizer": OPTIMIZERS, "amp": AMP_MODES,
                   "quantizer": ("twn", "ttq", "absmean"), "sparsity_schedule": SCHEDULES,
                   "sparsity_layer_weights": LAYER_WEIGHTS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = {"timesteps": self.timesteps, "epochs": self.epochs, "batch_size": self.batch_size,
                    "lr": self.lr, "twin_width": self.twin_width, "kd_temperature": self.kd_temperature}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not 0 <= self.val_fraction < 1 or not 0 < self.train_fraction <= 1:
            raise ConfigError(f"--val-fraction must be in [0, 1) and --train-fraction in (0, 1], got "
                              f"{self.val_fraction} and {self.train_fraction}")
        if self.tna_lambda < 0 or self.weight_decay < 0 or not 0 <= self.kd_alpha <= 1:
            raise ConfigError("--tna-lambda and --weight-decay must be >= 0 and --kd-alpha in [0, 1]")
        if min(self.sparsity_weight, self.sparsity_start, self.sparsity_delay, self.ac_pj, self.mac_pj) < 0:
            raise ConfigError("--sparsity-weight, --sparsity-start, --sparsity-delay, --ac-pj and --mac-pj "
                              "must be >= 0")
        if self.sparsity_schedule == "anneal" and self.sparsity_weight > 0 and not self.sparsity_start > 0:
            raise ConfigError("--sparsity-schedule anneal grows geometrically from --sparsity-start to "
                              "--sparsity-weight; give --sparsity-start > 0")
        if self.method == "kd" and not self.teacher:
            raise ConfigError("--method kd needs --teacher CHECKPOINT (a model written by tna-export, or a run "
                              "directory of an earlier tna-train run)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            known = [f.name for f in dataclasses.fields(cls)]
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; known: {known}")
        return cls(**values)


def read_yaml(path: str) -> dict:
    """Settings from a YAML file (keys as the flags, with - or _); a missing or malformed file is a ConfigError."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}
