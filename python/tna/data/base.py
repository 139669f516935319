"""The types every dataset loader returns or raises: ``DataSplits`` and ``DataError``."""
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_DATA_DIR = Path("data")


class DataError(Exception):
    """Missing or malformed data.

    ``str(error)`` is one user-facing paragraph that names the files or folders that were expected
    and says how to get them (``--download``, or where to put the archive).
    """


@dataclass(frozen=True)
class DataSplits:
    """A dataset held in memory, both splits, in its compact stored form.

    Images are uint8 ``[N, C, H, W]``; event recordings are uint8 ``[N, T, C, H, W]`` (events per
    time bin, pixel and polarity, clipped to 255). Labels are int64 ``[N]``. ``mean`` and ``std`` are
    per channel, in units of the stored values (zeros and ones for events), and are applied by
    ``batches``; ``crop_padding`` (0 = no crop) and ``flip`` describe the training augmentation.
    """

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    input_shape: tuple
    is_events: bool
    mean: tuple
    std: tuple
    crop_padding: int
    flip: bool


def resolve_folder(data_dir, folder: str, marker: str) -> Path:
    """The dataset folder ``folder`` inside ``data_dir``, or ``data_dir`` itself when it already is
    that folder: named ``folder``, or holding the entry ``marker`` (a file or subfolder every copy
    of the dataset has)."""
    data_dir = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).expanduser()
    if data_dir.name == folder or (data_dir / marker).exists():
        return data_dir
    return data_dir / folder
