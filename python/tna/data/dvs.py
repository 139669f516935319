"""CIFAR10-DVS: event recordings (AEDAT4 files) binned into frames of per-pixel event counts.

Layout on disk (tonic's): ``DATA_DIR/CIFAR10DVS/<class>/*.aedat4`` with the ten CIFAR-10 class
names as subfolders (1000 recordings each in the full dataset, 128x128 sensor). The files are read
with the ``aedat`` package; ``tonic`` is used only to download the dataset (``download=True``), so
tonic's own "is it downloaded?" check, which wants ``CIFAR10DVS.zip`` next to the files, never runs
on a folder you put in place yourself.

Binning: each recording's events, ordered by timestamp, are cut into ``timesteps`` slices holding
the same number of events (slice of event i = i * timesteps // n_events; SpikingJelly's
``split_by="number"``), and each slice becomes a frame of event counts per polarity channel
(0 = OFF, 1 = ON) and pixel, clipped to 255. Event coordinates are scaled to the ``size`` x ``size``
frame (``x * size // 128``), so every event is counted once and a frame pixel holds the events of
its patch of the sensor: exactly (128/size)^2 sensor pixels when size divides 128 (a sum pooling),
and 2 or 3 sensor pixels per axis for the default size, 48. That size is the usual choice in SNN
papers and keeps the whole dataset at T=10 near 460 MB of uint8 (128 is the full sensor).

The binned frames are cached in ``CIFAR10DVS/frames_T{timesteps}_S{size}.pt`` together with the
list of recordings they came from; a later load with the same recordings reuses the cache.
"""
import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..files import write_atomically
from .base import DataError, DataSplits, resolve_folder

FOLDER = "CIFAR10DVS"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TEST_SHARE = 10
CROP_PADDING = 4
INSTALL = 'pip install "tna-kernels[dvs]"'
URL = "https://figshare.com/ndownloader/files/38023437"
EVENT_DTYPE = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")])


def _import_aedat():
    try:
        import aedat
    except ImportError as err:
        raise DataError(
            "CIFAR10-DVS recordings are AEDAT4 files, read with the `aedat` package, which is not "
            f"installed: run `{INSTALL}` (installs aedat, and tonic for --download)."
        ) from err
    return aedat


def read_events(path, aedat):
    """The first event stream of an AEDAT4 file.

    Returns ``(events, (height, width))``: a numpy structured array with fields ``t`` (uint64,
    microseconds), ``x``, ``y`` (uint16) and ``on`` (bool), and the sensor size of that stream.
    """
    try:
        decoder = aedat.Decoder(str(path))
        streams = {i: s for i, s in decoder.id_to_stream().items() if s["type"] == "events"}
        if not streams:
            raise ValueError("the file has no event stream")
        stream = min(streams)
        packets = [p["events"] for p in decoder if p["stream_id"] == stream]
    except Exception as err:
        raise DataError(
            f"Could not read the recording {path} ({err}): the file is truncated or not AEDAT4. "
            f"Replace it with the original from the CIFAR10-DVS archive, or delete the {FOLDER} "
            "folder and rerun with --download."
        ) from err
    events = np.concatenate(packets) if packets else np.zeros(0, dtype=EVENT_DTYPE)
    return events, (streams[stream]["height"], streams[stream]["width"])


def bin_events(events, sensor_size, timesteps: int, size: int) -> torch.Tensor:
    """Event counts per (time slice, polarity, pixel), as described in the module docstring.

    ``events``: structured array with fields ``t``, ``x``, ``y``, ``on``; ``sensor_size``:
    ``(height, width)``. Returns uint8 ``[timesteps, 2, size, size]``. Events outside the sensor are
    dropped; a recording without events gives all-zero frames.
    """
    height, width = sensor_size
    events = events[np.argsort(events["t"], kind="stable")]
    x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
    inside = (x < width) & (y < height)
    x, y, on = x[inside] * size // width, y[inside] * size // height, events["on"][inside].astype(np.int64)
    slices = np.arange(len(x)) * timesteps // max(len(x), 1)
    counts = np.bincount(((slices * 2 + on) * size + y) * size + x, minlength=timesteps * 2 * size * size)
    return torch.from_numpy(np.minimum(counts, 255).astype(np.uint8).reshape(timesteps, 2, size, size))


def _recordings(root: Path) -> dict:
    """Per class name, the sorted ``.aedat4`` files anywhere below ``root`` whose folder is named
    after the class (tonic's rule)."""
    found = {c: [] for c in CLASSES}
    for path in root.rglob("*.aedat4"):
        if path.parent.name in found:
            found[path.parent.name].append(path)
    return {c: sorted(files) for c, files in found.items()}


def _incomplete(recordings) -> bool:
    return any(len(files) < TEST_SHARE for files in recordings.values())


def _download(root: Path) -> None:
    try:
        import tonic
    except ImportError as err:
        raise DataError(f"Downloading CIFAR10-DVS needs `tonic`: run `{INSTALL}`.") from err
    try:
        tonic.datasets.CIFAR10DVS(save_to=str(root.parent))
    except Exception as err:
        raise DataError(
            f"Could not download CIFAR10-DVS into {root} ({type(err).__name__}: {err}). Check the "
            f"connection and retry, or download CIFAR10DVS.zip from {URL}, "
            f"unzip it and the per-class zips inside it into {root}."
        ) from err


def _load_cache(path: Path, files: list, shape: tuple):
    """The frames cached at ``path`` if they were binned from ``files`` into ``shape``, else None
    (missing, unreadable or stale cache)."""
    with contextlib.suppress(Exception):
        cached = torch.load(path, weights_only=True)
        frames = cached["frames"]
        if cached["files"] == files and frames.dtype == torch.uint8 and tuple(frames.shape) == shape:
            return frames
    return None


def _save_cache(path: Path, files: list, frames: torch.Tensor) -> None:
    try:
        write_atomically(path, lambda f: torch.save({"files": files, "frames": frames}, f))
    except OSError as err:
        warnings.warn(f"could not write the CIFAR10-DVS frame cache {path} ({err}); the next load "
                      "bins the recordings again", stacklevel=3)


def load_cifar10dvs(data_dir=None, *, timesteps: int = 10, size: int = 48,
                    download: bool = False) -> DataSplits:
    """CIFAR10-DVS as uint8 frames ``[N, timesteps, 2, size, size]``, 10 classes.

    Per class, the recordings sorted by path are split 9:1: the last tenth is the test set.
    ``data_dir`` (default ``./data``) holds the ``CIFAR10DVS`` folder or is that folder. With
    ``download=True`` and recordings missing, tonic downloads and unzips the dataset (about 7 GB).
    """
    if timesteps < 1 or size < 1:
        raise ValueError(f"timesteps and size must be positive, got {timesteps} and {size}")
    aedat = _import_aedat()
    root = resolve_folder(data_dir, FOLDER, CLASSES[0])
    recordings = _recordings(root)
    if _incomplete(recordings) and download:
        _download(root)
        recordings = _recordings(root)
    if _incomplete(recordings):
        found = ("that folder does not exist" if not root.is_dir()
                 else "found " + ", ".join(f"{c} {len(f)}" for c, f in recordings.items()))
        raise DataError(
            f"CIFAR10-DVS not found: expected {root} to hold the class folders {', '.join(CLASSES)}, "
            f"each with at least {TEST_SHARE} .aedat4 recordings (1000 in the full dataset), but "
            f"{found}. Rerun with --download (download=True in Python; needs `{INSTALL}`), or download "
            f"CIFAR10DVS.zip ({URL}), unzip it and the per-class zips inside it into {root}."
        )
    train, test = [], []
    for label, name in enumerate(CLASSES):
        files = recordings[name]
        n_test = len(files) // TEST_SHARE
        train += [(f, label) for f in files[: len(files) - n_test]]
        test += [(f, label) for f in files[len(files) - n_test:]]
    ordered = train + test
    keys = [f.relative_to(root).as_posix() for f, _ in ordered]
    shape = (len(ordered), timesteps, 2, size, size)
    cache = root / f"frames_T{timesteps}_S{size}.pt"
    frames = _load_cache(cache, keys, shape)
    if frames is None:
        frames = torch.empty(shape, dtype=torch.uint8)
        for i, (path, _) in enumerate(tqdm(ordered, desc=f"Binning CIFAR10-DVS (T={timesteps}, "
                                                         f"{size}x{size})", unit="file")):
            frames[i] = bin_events(*read_events(path, aedat), timesteps, size)
        _save_cache(cache, keys, frames)
    labels = torch.tensor([label for _, label in ordered], dtype=torch.int64)
    n_train = len(train)
    return DataSplits(
        name="cifar10dvs",
        train_x=frames[:n_train],
        train_y=labels[:n_train],
        test_x=frames[n_train:],
        test_y=labels[n_train:],
        num_classes=len(CLASSES),
        input_shape=(2, size, size),
        is_events=True,
        mean=(0.0, 0.0),
        std=(1.0, 1.0),
        crop_padding=CROP_PADDING,
        flip=True,
    )
