"""Tests of the built-in dataset factories: generated shapes, CycleGAN-layout folders, and digit pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from unitkit import DomainData
from unitkit.builtin.datasets import (
    SHAPE_HUES,
    SHAPES,
    _render_shapes,
    digit_domain,
    mnist_usps,
    svhn_mnist,
    synthetic,
    unpaired_folders,
)
from unitkit.components import BadImageError
from unitkit.errors import UnitkitWarning
from unitkit.recipe import data_root

DATA = data_root()


def needs_data(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (DATA / name).is_dir(), reason=f"real dataset {DATA / name} not found (set UNITKIT_DATA to its parent)"
    )


def check_items(data: DomainData, channels: int, size: int, count: int = 4) -> None:
    """The first items of every split are (C, size, size) float images in [-1, 1] with int labels."""
    for split in (data.train_a, data.train_b, data.test_a, data.test_b):
        for i in range(min(count, len(split))):
            image, label = split[i]
            assert image.dtype == torch.float32 and image.shape == (channels, size, size)
            assert -1 <= image.min() <= image.max() <= 1
            assert isinstance(label, int)


# ------------------------------------------------------------------------------------------------ synthetic


@pytest.fixture(scope="module")
def shapes() -> DomainData:
    return synthetic(train_size=64, test_size=32)


def masks(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground of an A image (differs from its dark background) and of a B image (from its light one)."""
    return (a + 0.8).abs().amax(0) > 0.2, (b - 0.8).abs().amax(0) > 0.2


def outline_inside_fill(a: torch.Tensor, b: torch.Tensor) -> float:
    fill, outline = masks(a, b)
    return (fill & outline).sum().item() / outline.sum().item()


def test_synthetic_shapes_and_ranges(shapes: DomainData) -> None:
    assert [len(s) for s in (shapes.train_a, shapes.train_b, shapes.test_a, shapes.test_b)] == [64, 64, 32, 32]
    assert shapes.channels == (3, 3) and shapes.image_size == 32
    assert shapes.paired_test and shapes.num_classes == len(SHAPES) == 4
    check_items(shapes, 3, 32, count=64)
    assert {shapes.train_a[i][1] for i in range(64)} == set(range(4))
    assert synthetic(image_size=48, train_size=2, test_size=2).test_b[1][0].shape == (3, 48, 48)


def test_synthetic_is_deterministic(shapes: DomainData) -> None:
    small = synthetic(train_size=8, test_size=4)  # item i must not depend on the split's size
    for split in ("train_a", "train_b", "test_a", "test_b"):
        assert torch.equal(getattr(small, split)[3][0], getattr(shapes, split)[3][0])
    assert not torch.equal(synthetic(train_size=8, test_size=4, seed=1).train_a[3][0], small.train_a[3][0])


def test_synthetic_test_pairs_show_the_same_scene(shapes: DomainData) -> None:
    for i in range(len(shapes.test_a)):
        (a, label_a), (b, label_b) = shapes.test_a[i], shapes.test_b[i]
        assert label_a == label_b
        fill, outline = masks(a, b)
        assert outline.sum() > 10 and outline.sum() < fill.sum()  # an outline, not a filled copy
        assert outline_inside_fill(a, b) > 0.95
    shuffled = [outline_inside_fill(shapes.test_a[i][0], shapes.test_b[i + 1][0]) for i in range(31)]
    assert sum(shuffled) / len(shuffled) < 0.6


def test_synthetic_train_domains_are_unpaired(shapes: DomainData) -> None:
    overlap = [outline_inside_fill(shapes.train_a[i][0], shapes.train_b[i][0]) for i in range(64)]
    assert sum(overlap) / len(overlap) < 0.6
    assert [shapes.train_a[i][1] for i in range(64)] != [shapes.train_b[i][1] for i in range(64)]


def test_the_scene_judge_accepts_each_true_scene_and_rejects_a_wrong_shape_colour_or_place() -> None:
    data = synthetic(train_size=2, test_size=64)
    judge, indices = data.judge_scenes, torch.arange(64)
    truth = {
        domain: torch.stack([item[0] for item in test]) for domain, test in (("a", data.test_a), ("b", data.test_b))
    }
    for domain in ("a", "b"):
        assert judge(truth[domain], indices, domain).all()
        assert judge(torch.roll(truth[domain], 1, dims=3), indices, domain).all()  # one pixel off is still right
        assert not judge(torch.roll(truth[domain], 6, dims=3), indices, domain).any()
        assert judge(truth[domain][torch.roll(indices, 1)], indices, domain).float().mean() < 0.1  # another scene
        for column, change in ((0, 1 / len(SHAPES)), (4, 0.1)):  # the next shape; a hue 36 degrees on
            scenes = judge.scenes.copy()
            scenes[:, column] = (scenes[:, column] + change) % 1
            drawn = torch.from_numpy(_render_shapes(scenes, 32, domain)).float() / 127.5 - 1
            assert not judge(drawn, indices, domain).any()
    # The untranslated input has the other domain's background, so its whole frame reads as a shape.
    assert not judge(truth["a"], indices, "b").any() and not judge(truth["b"], indices, "a").any()


def test_synthetic_colours_follow_the_shape_unless_any_is_asked() -> None:
    scenes = synthetic(train_size=2, test_size=256).judge_scenes.scenes
    assert ((scenes[:, 4] * 360).round() == np.array(SHAPE_HUES)[(scenes[:, 0] * len(SHAPES)).astype(int)]).all()
    assert len(set(synthetic(train_size=2, test_size=64, colours="any").judge_scenes.scenes[:, 4])) == 64


# -------------------------------------------------------------------------------------------- image folders


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def noise(size: tuple[int, int]) -> Image.Image:
    return Image.effect_noise(size, 60).convert("RGB")


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    """A CycleGAN layout mixing modes, formats and sizes; the test folders are paired by stem."""
    root = tmp_path / "set"
    palette = noise((30, 20)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    for name, image in {
        "rgb.png": noise((48, 40)),
        "gray.png": noise((40, 48)).convert("L"),
        "palette.png": palette,
        "rgba.png": noise((24, 24)).convert("RGBA"),
        "small.bmp": noise((10, 6)),  # smaller than the crop: must be resized up
        "photo.jpg": noise((64, 20)),
        "pic.webp": noise((20, 20)),
    }.items():
        save(root / "trainA" / name, image)
    for name in ("b1.jpg", "b2.jpeg"):
        save(root / "trainB" / name, noise((32, 32)))
    (root / "trainB" / "notes.txt").write_text("not an image, and not listed: wrong extension")
    for stem in ("0001", "0002", "0003"):
        save(root / "testA" / f"{stem}.jpg", noise((30, 30)))
        save(root / "testB" / f"{stem}.png", noise((30, 30)))
    return root


def add_bad_files(folder: Path) -> None:
    truncated = save(folder / "truncated.png", noise((40, 40))).read_bytes()
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (folder / "fake.jpg").write_text("this is text, not a JPEG")


def test_folders_read_every_mode_and_size(folders: Path) -> None:
    data = unpaired_folders(str(folders), image_size=16)
    assert [len(s) for s in (data.train_a, data.train_b, data.test_a, data.test_b)] == [7, 2, 3, 3]
    assert data.channels == (3, 3) and data.image_size == 16
    check_items(data, 3, 16, count=10)
    assert all(data.train_a[i][1] == -1 for i in range(7))
    check_items(unpaired_folders(str(folders), image_size=16, channels=1), 1, 16, count=10)
    check_items(unpaired_folders(str(folders), image_size=8, crop="none"), 3, 8, count=10)
    check_items(unpaired_folders(str(folders), image_size=16, load_size=20, crop="center", flip=False), 3, 16)


def test_folders_test_transform_is_deterministic(folders: Path) -> None:
    data = unpaired_folders(str(folders), image_size=16, load_size=24)
    assert torch.equal(data.test_a[0][0], data.test_a[0][0])


def test_folders_detect_pairs_by_stem(folders: Path) -> None:
    data = unpaired_folders(str(folders), image_size=16)
    assert data.paired_test
    assert [p.stem for p in data.test_a.paths] == [p.stem for p in data.test_b.paths] == ["0001", "0002", "0003"]
    assert not unpaired_folders(str(folders), image_size=16, paired_test="no").paired_test
    (folders / "testB" / "0003.png").rename(folders / "testB" / "other.png")
    with pytest.warns(UnitkitWarning, match="testA/0003.jpg, testB/other.png"):
        assert not unpaired_folders(str(folders), image_size=16).paired_test
    with pytest.raises(ValueError, match="same file stems"):
        unpaired_folders(str(folders), image_size=16, paired_test="yes")


def test_folders_skip_unreadable_files(folders: Path) -> None:
    add_bad_files(folders / "trainA")
    data = unpaired_folders(str(folders), image_size=16)
    assert len(data.train_a) == 9 and data.train_a.skipped == 0
    check_items(data, 3, 16, count=9)
    assert data.train_a.skipped == 2


def test_unreadable_files_met_by_loading_workers_are_counted(folders: Path) -> None:
    add_bad_files(folders / "trainA")
    data = unpaired_folders(str(folders), image_size=16)
    for _ in DataLoader(data.train_a, batch_size=3, num_workers=2):
        pass
    assert data.train_a.skipped == 2


def test_an_unreadable_file_of_a_paired_test_set_is_an_error(folders: Path) -> None:
    (folders / "testA" / "0002.jpg").write_text("broken")
    # found when the data is built, not at the first evaluation hours later; skipping it would compare 0003's
    # translation with 0002's ground truth
    with pytest.raises(ValueError, match="0002.jpg"):
        unpaired_folders(str(folders), image_size=16)
    assert len(unpaired_folders(str(folders), image_size=16, paired_test="no").test_a) == 3


def test_folders_raise_on_unreadable_files(folders: Path) -> None:
    add_bad_files(folders / "trainA")
    data = unpaired_folders(str(folders), image_size=16, bad_files="error")
    with pytest.raises(BadImageError, match="fake.jpg"):
        data.train_a[0]  # sorted by stem, fake.jpg comes first


def test_folders_of_only_unreadable_files(folders: Path) -> None:
    for image in (folders / "trainB").glob("b*"):
        image.write_text("broken")
    with pytest.raises(ValueError, match="none of the 2 files"):
        unpaired_folders(str(folders), image_size=16).train_b[0]


def test_folders_reject_bad_layouts_and_sizes(folders: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="trainA,trainB,testA,testB"):
        unpaired_folders(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="load_size 8 is smaller than image_size 16"):
        unpaired_folders(str(folders), image_size=16, load_size=8)
    with pytest.raises(ValueError, match="crop='none'"):
        unpaired_folders(str(folders), image_size=16, load_size=20, crop="none")
    for image in (folders / "testA").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="testA holds no image files"):
        unpaired_folders(str(folders))
    (folders / "testA").rmdir()
    with pytest.raises(FileNotFoundError, match="testA not found"):
        unpaired_folders(str(folders))


@needs_data("cifar_cat2dog")
def test_folders_on_cifar_cat2dog() -> None:
    data = unpaired_folders(str(DATA / "cifar_cat2dog"), image_size=32, paired_test="no")
    assert [len(s) for s in (data.train_a, data.train_b, data.test_a, data.test_b)] == [5000, 5000, 1000, 1000]
    assert not data.paired_test
    check_items(data, 3, 32)


@needs_data("facades")
def test_folders_on_paired_facades() -> None:
    data = unpaired_folders(str(DATA / "facades"), image_size=64)
    assert [len(s) for s in (data.train_a, data.train_b, data.test_a, data.test_b)] == [303, 303, 75, 75]
    assert data.paired_test
    assert all(a.stem == b.stem for a, b in zip(data.test_a.paths, data.test_b.paths, strict=True))
    assert {data.test_a.paths[0].suffix, data.test_b.paths[0].suffix} == {".jpg", ".png"}
    check_items(data, 3, 64, count=2)


# ------------------------------------------------------------------------------------------------- digits


@needs_data("mnist")
@needs_data("usps")
def test_mnist_usps_on_real_data() -> None:
    data = mnist_usps(str(DATA))
    assert [len(s) for s in (data.train_a, data.train_b, data.test_a, data.test_b)] == [60000, 7291, 10000, 2007]
    assert data.channels == (1, 1) and data.num_classes == 10 and not data.paired_test
    check_items(data, 1, 32)
    digits = [data.train_a[i][0] for i in range(16)] + [data.train_b[i][0] for i in range(16)]
    assert min(x.min() for x in digits) == -1 and max(x.max() for x in digits) > 0.9
    assert {data.test_b[i][1] for i in range(200)} == set(range(10))
    usps_rgb = digit_domain("usps", DATA, train=False, image_size=32, channels=3)
    image = usps_rgb[0][0]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[2])


@needs_data("mnist")
@needs_data("usps")
def test_usps_padding_gives_usps_digits_a_margin_and_leaves_mnist_alone() -> None:
    plain, padded = mnist_usps(str(DATA)), mnist_usps(str(DATA), usps_padding=3)
    ink = [padded.test_b[i][0][0] > -1 for i in range(64)]
    # 3 of 22 stored pixels of background on each side: the outer 4 of 32 rows and columns stay empty.
    assert not any(m[:4].any() or m[-4:].any() or m[:, :4].any() or m[:, -4:].any() for m in ink)
    assert any((plain.test_b[i][0][0, :4] > -1).any() for i in range(64))  # unpadded USPS digits reach the edge
    assert torch.equal(plain.test_a[0][0], padded.test_a[0][0])
    assert torch.equal(mnist_usps(str(DATA), source="usps", usps_padding=3).test_a[0][0], padded.test_b[0][0])


@needs_data("mnist")
@needs_data("usps")
def test_a_validation_split_is_carved_from_the_training_sets_and_replaces_the_test_sets() -> None:
    full, held = mnist_usps(str(DATA)), mnist_usps(str(DATA), validation=1000)
    assert [len(s) for s in (held.train_a, held.train_b, held.test_a, held.test_b)] == [59000, 6291, 1000, 1000]
    for train, validation, source in ((held.train_a, held.test_a, full.train_a), (held.train_b, held.test_b,
                                                                                 full.train_b)):  # fmt: skip
        assert torch.equal(train[0][0], source[0][0])  # training keeps the start, in order
        assert torch.equal(validation[0][0], source[len(train)][0])  # the last 1,000 are held out
        assert validation[999][1] == source[len(source) - 1][1]
    with pytest.raises(ValueError, match="validation = 7,291 leaves no training images: there are 60,000 of mnist "
                                         "and 7,291 of usps"):  # fmt: skip
        mnist_usps(str(DATA), validation=7291)


def test_digits_missing_root_names_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        mnist_usps(str(tmp_path))
    assert f"{tmp_path}/mnist/MNIST/raw/train-images-idx3-ubyte" in str(error.value)
    assert "never downloads" in str(error.value)
    with pytest.raises(FileNotFoundError, match="svhn/train_32x32.mat"):
        svhn_mnist(str(tmp_path))
    (tmp_path / "mnist" / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="usps/usps.bz2"):
        mnist_usps(str(tmp_path), source="usps")
