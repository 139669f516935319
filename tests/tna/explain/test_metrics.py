"""Tests for the explanation metrics: a toy classifier whose evidence is known, hand-computed values, orientation,
baselines and the map manipulations."""
import pytest
import torch

from tna.explain.metrics import (
    METRICS, auc, binarize_map, blur_baseline, blur_map, box_maps, clip_map, constant_baseline, deletion_curve,
    evaluate, gini, insertion_curve, iou, noise_baseline, pointing_game, random_maps, relevance_mass)

SIZE = 12
USED = torch.zeros(SIZE, SIZE, dtype=torch.bool)
USED[:4, :4] = True
BOXES = torch.tensor([[0, 0, 4, 4]] * 8)


def region_classifier(x):
    """Two classes; the logit of class 0 is 4 * (mean of the used pixels - mean of the others), channel 0."""
    inside = x[:, 0, USED].mean(1)
    outside = x[:, 0, ~USED].mean(1)
    logit = 4 * (inside - outside)
    return torch.stack([logit, torch.zeros_like(logit)], 1)


def mean_classifier(x):
    """The probability of class 0 is the mean pixel of the image (inputs in [0, 1])."""
    mean = x.mean((1, 2, 3))
    return torch.stack([mean.log(), (1 - mean).log()], 1)


def _toy():
    generator = torch.Generator().manual_seed(0)
    images = 0.5 * torch.rand(8, 1, SIZE, SIZE, generator=generator) + 0.5 * USED
    ranked = 0.9 * USED + 0.1 * torch.rand(8, SIZE, SIZE, generator=generator)
    return images, torch.zeros(8, dtype=torch.long), ranked, generator


def _good_and_bad(name, ranked):
    """A map that should score better on metric ``name`` than the other one."""
    if name.startswith(("deletion", "insertion")):
        return ranked, 1 - ranked
    if name == "sparsity_gini":
        one_hot = torch.zeros(8, SIZE, SIZE)
        one_hot[:, 2, 3] = 1
        return one_hot, torch.ones(8, SIZE, SIZE)
    box = box_maps(BOXES, SIZE, SIZE)
    return box, 1 - box


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_is_oriented_higher_better(name):
    images, labels, ranked, _ = _toy()
    good, bad = _good_and_bad(name, ranked)
    good_value = evaluate([name], region_classifier, images, labels, good, BOXES)[name]
    bad_value = evaluate([name], region_classifier, images, labels, bad, BOXES)[name]
    assert good_value.shape == (8,)
    assert (good_value > bad_value).all()
    assert ((good_value >= 0) & (good_value <= 1) & (bad_value >= 0) & (bad_value <= 1)).all()


def test_ranking_the_used_pixels_first_beats_a_random_map():
    images, labels, ranked, generator = _toy()
    names = [name for name in METRICS if name.startswith(("deletion", "insertion"))]
    good = evaluate(names, region_classifier, images, labels, ranked)
    random = evaluate(names, region_classifier, images, labels, random_maps((8, SIZE, SIZE), generator))
    for name in names:
        assert good[name].mean() > random[name].mean(), name


def test_the_box_of_the_used_region_points_and_holds_all_mass():
    images, labels, _, _ = _toy()
    box = box_maps(BOXES, SIZE, SIZE)
    values = evaluate(["pointing_game", "relevance_mass", "iou"], region_classifier, images, labels, box, BOXES)
    for name in values:
        assert (values[name] == 1).all(), name


def test_linear_curve_has_101_points_and_area_one_half():
    images = torch.ones(2, 1, SIZE, SIZE)
    baseline = torch.zeros_like(images)
    labels = torch.zeros(2, dtype=torch.long)
    maps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    expected = (2 * torch.arange(101)).clamp_max(SIZE * SIZE) / (SIZE * SIZE)   # ceil(144 / 100) = 2 per step
    fractions, deleted = deletion_curve(mean_classifier, images, labels, maps, baseline, batch_size=33)
    assert fractions.shape == (101,) and deleted.shape == (2, 101)
    torch.testing.assert_close(fractions, expected)
    torch.testing.assert_close(deleted, (1 - expected).expand(2, -1))
    torch.testing.assert_close(auc(fractions, deleted), torch.full((2,), 0.5))
    fractions, inserted = insertion_curve(mean_classifier, images, labels, maps, baseline)
    torch.testing.assert_close(inserted, expected.expand(2, -1))
    torch.testing.assert_close(auc(fractions, inserted), torch.full((2,), 0.5))


def test_regions_are_ranked_by_mean_with_the_partial_block_averaged_over_its_own_pixels():
    def corner_classifier(x):
        mean = x[:, 0, 9:, 9:].mean((1, 2))
        return torch.stack([mean.log(), (1 - mean).log()], 1)

    maps = torch.zeros(1, SIZE, SIZE)
    maps[0, 0, :9] = 1
    maps[0, 1, 0] = 1          # block 0: mean 10/81
    maps[0, 9:, 9:] = 0.6      # the 3x3 corner block: mean 0.6 over its 9 pixels (0.6 * 9 / 81 over a full block)
    images, labels = torch.ones(1, 1, SIZE, SIZE), torch.zeros(1, dtype=torch.long)
    _, by_region = deletion_curve(corner_classifier, images, labels, maps, torch.zeros_like(images), region=9)
    _, by_pixel = deletion_curve(corner_classifier, images, labels, maps, torch.zeros_like(images))
    assert by_region[0, 1].item() == pytest.approx(7 / 9)
    assert by_region[0, 5].item() == 0
    assert by_pixel[0, 1].item() == 1


def test_chunking_does_not_change_the_values():
    images, labels, ranked, _ = _toy()
    names = ["deletion_blur", "insertion_noise_region9", "average_drop", "increase_confidence_binary"]
    small = evaluate(names, region_classifier, images, labels, ranked, batch_size=7)
    large = evaluate(names, region_classifier, images, labels, ranked, batch_size=10_000)
    for name in names:
        torch.testing.assert_close(small[name], large[name])


def test_confidence_metrics_by_hand():
    images, labels = torch.full((1, 1, SIZE, SIZE), 0.5), torch.zeros(1, dtype=torch.long)
    half = torch.full((1, SIZE, SIZE), 0.5)
    values = evaluate(["average_drop", "increase_confidence", "average_drop_binary"], mean_classifier, images, labels,
                      half)
    assert values["average_drop"].item() == pytest.approx(1 - 0.5)   # p = 0.5, p' = 0.25: drop 0.5, reported 1 - drop
    assert values["increase_confidence"].item() == 0
    assert values["average_drop_binary"].item() == pytest.approx(1)  # 0.5 >= threshold keeps every pixel: no drop


def test_localization_by_hand():
    boxes = torch.tensor([[0, 0, 2, 2], [2, 2, 4, 4], [0, 0, 2, 4]])
    maps = torch.zeros(3, 4, 4)
    maps[0, 1, 1] = 1          # maximum inside
    maps[1, 1, 1] = 1          # maximum outside
    maps[2, 0, 0] = maps[2, 3, 3] = 1   # two maxima, one inside: a hit
    assert pointing_game(maps, boxes).tolist() == [1, 0, 1]
    block = torch.zeros(1, 4, 4)
    block[0, :2, :2] = 0.3     # 4 non-zero pixels, all in the 8-pixel box
    assert iou(block, boxes[2:]).item() == pytest.approx(0.5)
    mass = torch.zeros(1, 4, 4)
    mass[0, 0, 0], mass[0, 3, 3] = 1, 3
    assert relevance_mass(mass, boxes[:1]).item() == pytest.approx(0.25)


def test_gini_by_hand():
    maps = torch.zeros(3, 5, 5)
    maps[0] = 0.7
    maps[1, 2, 2] = 1
    torch.testing.assert_close(gini(maps), torch.tensor([0.0, 1 - 1 / 25, 0.0]))


def test_constant_maps_give_no_nan():
    images, labels, _, _ = _toy()
    for value in (0.0, 1.0):
        maps = torch.full((8, SIZE, SIZE), value)
        values = evaluate(list(METRICS), region_classifier, images, labels, maps, BOXES)
        for name, tensor in values.items():
            assert torch.isfinite(tensor).all(), (value, name)
    zeros = torch.zeros(8, SIZE, SIZE)
    assert (relevance_mass(zeros, BOXES) == 0).all() and (iou(zeros, BOXES) == 0).all()


def test_wrong_requests_raise():
    images, labels, ranked, _ = _toy()
    with pytest.raises(ValueError, match="need bounding boxes"):
        evaluate(["deletion_zero", "pointing_game"], region_classifier, images, labels, ranked)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(["deletion"], region_classifier, images, labels, ranked)
    with pytest.raises(ValueError, match="maps must be"):
        evaluate(["iou"], region_classifier, images, labels, ranked[:, :5], BOXES)


def test_the_registry_holds_the_papers_defaults():
    assert {"deletion_zero", "insertion_blur", "pointing_game", "sparsity_gini"} <= set(METRICS)
    assert not METRICS["deletion_zero"].higher_is_better_raw and METRICS["insertion_blur"].higher_is_better_raw
    assert [name for name in METRICS if METRICS[name].needs_box] == ["pointing_game", "iou", "relevance_mass"]


def test_baselines():
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 40, 40, generator=generator) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    black = constant_baseline(images, (-1.0, -2.0, 0.5))
    assert black.shape == images.shape and black[:, 1].eq(-2).all() and black[:, 2].eq(0.5).all()
    flat = torch.full((1, 2, 7, 9), 0.3)
    torch.testing.assert_close(blur_baseline(flat), flat)
    noise = noise_baseline(images, generator)
    torch.testing.assert_close(noise.mean((2, 3)), images.mean((2, 3)), atol=0.2, rtol=0)
    torch.testing.assert_close(noise.std((2, 3)), images.std((2, 3)), atol=0.2, rtol=0.1)
    assert torch.equal(noise_baseline(images, torch.Generator().manual_seed(3)),
                       noise_baseline(images, torch.Generator().manual_seed(3)))


def test_map_manipulations_stay_in_the_unit_interval():
    generator = torch.Generator().manual_seed(4)
    maps = random_maps((3, SIZE, SIZE), generator)
    maps[2] = 0
    for changed in (blur_map(maps), clip_map(maps), binarize_map(maps, 0.3), random_maps((3, SIZE, SIZE), generator)):
        assert changed.shape == (3, SIZE, SIZE)
        assert ((changed >= 0) & (changed <= 1)).all()
    assert (blur_map(maps)[2] == 0).all() and blur_map(maps)[:2].amax((1, 2)).eq(1).all()
    assert set(binarize_map(maps, 0.3).unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binarize_map(maps, 0.3), (maps >= 0.3).float())
    boxes = box_maps(torch.tensor([[1, 2, 4, 7]]), 5, 8)
    assert boxes.sum() == 15 and boxes[0, 1:4, 2:7].eq(1).all()


def test_clip_changes_only_the_top_one_percent():
    maps = (torch.randperm(400, generator=torch.Generator().manual_seed(5)) / 399).view(1, 20, 20)
    clipped = clip_map(maps)
    ceiling = torch.quantile(maps.flatten(), 0.99)
    assert clipped.eq(1).sum() == 4
    kept = maps <= ceiling
    assert kept.sum() == 396
    torch.testing.assert_close(clipped[kept], maps[kept] / ceiling)
