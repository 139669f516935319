"""CIFAR-10 and CIFAR-100 from the standard "python version" pickle folders."""
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from .base import DataError, DataSplits, resolve_folder
from .download import download_archive

CROP_PADDING = 4


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives on disk and on the web, and its per-channel statistics (in
    units of the stored 0..255 pixel values)."""

    title: str
    folder: str
    train_files: tuple
    test_files: tuple
    label_key: bytes
    num_classes: int
    url: str
    md5: str
    mean: tuple
    std: tuple


SPECS = {
    "cifar10": CifarSpec(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        mean=tuple(255 * m for m in (0.4914, 0.4822, 0.4465)),
        std=tuple(255 * s for s in (0.2470, 0.2435, 0.2616)),
    ),
    "cifar100": CifarSpec(
        title="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
        num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        mean=tuple(255 * m for m in (0.5071, 0.4865, 0.4409)),
        std=tuple(255 * s for s in (0.2673, 0.2564, 0.2762)),
    ),
}

_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of lists, bytes and numpy arrays, and nothing that could run code."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _manual(spec: CifarSpec, parent) -> str:
    return (f"download {spec.url} yourself and extract it into {parent} (so that "
            f"{parent}/{spec.folder} exists), or point --data-dir at the folder that holds it")


def read_batch(path, spec: CifarSpec):
    """One pickle file as ``(x, y)``: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(entry[b"data"])
        labels = np.asarray(entry[spec.label_key], dtype=np.int64)
    except Exception as err:
        raise DataError(
            f"{path} is not a readable {spec.title} batch ({type(err).__name__}: {err}); the file is "
            f"corrupt or from another dataset. Delete {path.parent} and rerun with --download, or "
            f"{_manual(spec, path.parent.parent)}."
        ) from err
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32
            or labels.shape != (len(data),) or labels.min(initial=0) < 0
            or labels.max(initial=0) >= spec.num_classes):
        raise DataError(
            f"{path} does not hold {spec.title} data: expected b'data' as uint8 [N, 3072] and "
            f"{spec.label_key!r} as N labels in 0..{spec.num_classes - 1}, found data {data.dtype} "
            f"{list(data.shape)} and {labels.size} labels. Delete {path.parent} and rerun with --download, or "
            f"{_manual(spec, path.parent.parent)}."
        )
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _read_split(folder, files, spec: CifarSpec):
    parts = [read_batch(folder / name, spec) for name in files]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def load_cifar(name: str, data_dir=None, *, download: bool = False) -> DataSplits:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) as uint8
    ``[N, 3, 32, 32]`` images, 50000 train / 10000 test.

    ``data_dir`` (default ``./data``) is the folder holding ``cifar-10-batches-py`` /
    ``cifar-100-python``, or that folder itself. With ``download=True`` missing files are fetched from
    the authors' site (md5-checked) and extracted next to the dataset folder.
    """
    spec = SPECS[name]
    folder = resolve_folder(data_dir, spec.folder, spec.test_files[0])
    files = spec.train_files + spec.test_files
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        download_archive(spec.url, spec.md5, folder.parent, _manual(spec, folder.parent))
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        if not folder.is_dir():
            found = "that folder does not exist"
        else:
            found = f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        raise DataError(
            f"{spec.title} not found: expected the \"python version\" folder {folder} with the files "
            f"{', '.join(files)}, but {found}. Rerun with --download (download=True in Python) to "
            f"fetch it, or {_manual(spec, folder.parent)}."
        )
    train_x, train_y = _read_split(folder, spec.train_files, spec)
    test_x, test_y = _read_split(folder, spec.test_files, spec)
    return DataSplits(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=spec.num_classes,
        input_shape=(3, 32, 32),
        is_events=False,
        mean=spec.mean,
        std=spec.std,
        crop_padding=CROP_PADDING,
        flip=True,
    )
