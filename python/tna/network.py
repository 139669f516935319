"""The networks a training run builds, from its settings: one home for trainer, deploy and teachers alike."""
from .config import TrainConfig
from .data import DataSplits
from .models import Precision, SpikingNetwork, build_model


def build_network(config: TrainConfig, data: DataSplits, *, weights: str, width: float) -> SpikingNetwork:
    """The run's architecture for ``data`` with ``weights`` ("fp" or "ternary") and channel multiplier
    ``width`` (the base network is ``weights=config.weights, width=1``)."""
    precision = Precision(weights, config.quantizer, config.quantize_first_last)
    return build_model(config.arch, data.num_classes, data.input_shape, config.timesteps, precision, width,
                       is_events=data.is_events)


def twin_weights(config: TrainConfig) -> str:
    """The twin's weight precision: the base network's unless ``--twin-weights`` says otherwise."""
    return config.weights if config.twin_weights == "same" else config.twin_weights
