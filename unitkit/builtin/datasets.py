"""Built-in dataset factories: a generated two-style shapes set, CycleGAN-layout folders, and digit pairs.

Every factory returns a :class:`unitkit.DomainData` whose items are ``(image, label)``: a float tensor
(C, H, W) in [-1, 1] and an int label (-1 where there is none). Nothing is ever downloaded.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import MNIST, SVHN, USPS

from unitkit import IMAGE_SUFFIXES, DomainData
from unitkit.components import BadImageError, image_mode, read_image
from unitkit.errors import UnitkitWarning
from unitkit.recipe import DATA_ENV, MAX_IMAGE_SIZE, ImageSize

PositiveInt = Annotated[int, Field(ge=1)]
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as PIL's convert("L") uses


class ArrayImages(Dataset):
    """In-memory uint8 images (N, C, h, w) served resized to ``size`` with ``channels`` channels in [-1, 1]."""

    def __init__(self, images: Tensor, labels: Tensor, size: int, channels: int) -> None:
        self.images, self.labels, self.size, self.channels = images, labels, size, channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.images[index].float() / 127.5 - 1
        if x.shape[-2:] != (self.size, self.size):
            # Resizing per item keeps memory at the stored size (60,000 MNIST digits stay 47 MB).
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        if x.shape[0] != self.channels:
            x = x.expand(3, -1, -1) if self.channels == 3 else torch.tensordot(x.new_tensor(_LUMA), x, 1)[None]
        return x.clamp(-1, 1), int(self.labels[index])

    def held_out(self, count: int) -> tuple[ArrayImages, ArrayImages]:
        """The images but the last ``count``, and those last ``count``: a validation set carved from a training set."""
        cut = len(self) - count
        return (ArrayImages(self.images[:cut], self.labels[:cut], self.size, self.channels),
                ArrayImages(self.images[cut:], self.labels[cut:], self.size, self.channels))  # fmt: skip


# --------------------------------------------------------------------------------------------- synthetic


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _box(x: np.ndarray, y: np.ndarray, hw: np.ndarray, hh: np.ndarray) -> np.ndarray:
    qx, qy = np.abs(x) - hw, np.abs(y) - hh
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _triangle(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    # Exact signed distance to an upward equilateral triangle of half-side r (Inigo Quilez's formula).
    k = np.sqrt(3.0)
    px, py = np.abs(x) - r, -y + r / k
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.hypot(px, py) * np.sign(py)


# Signed distance (pixels, negative inside) of each shape of radius r centred at 0; all fit in about r.
_SHAPE_SDFS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda x, y, r: np.hypot(x, y) - r,
    "square": lambda x, y, r: _box(x, y, 0.85 * r, 0.85 * r),
    "triangle": lambda x, y, r: _triangle(x, y - 0.27 * r, 0.95 * r),  # shifted so its bounding box is centred
    # Arms wide enough that a thick outline still leaves a hollow centre.
    "cross": lambda x, y, r: np.minimum(_box(x, y, r, 0.42 * r), _box(x, y, 0.42 * r, r)),
}
SHAPES = tuple(_SHAPE_SDFS)
# Each domain's style: the shape's colour saturation and value (its hue is the scene's), and the background grey.
# A draws bright fills on dark, B darker, fully saturated outlines on light.
_STYLES = {"a": (0.75, 1.0, 0.1), "b": (1.0, 0.55, 0.9)}
_SPLIT_STREAMS = {"train_a": 0, "train_b": 1, "test": 2}


def _scene_colours(hue: np.ndarray, domain: str) -> np.ndarray:
    saturation, value, _ = _STYLES[domain]
    return _hsv_to_rgb(hue, saturation, value)


def _render_shapes(u: np.ndarray, size: int, domain: str) -> np.ndarray:
    """Render scenes from rows of uniforms (shape, x, y, size, hue) in a domain's style to uint8 (N, 3, size, size)."""
    shape = (u[:, 0] * len(SHAPES)).astype(int)
    u = u.astype(np.float32)  # float64 pixel arithmetic would double the build time
    r = size * (0.2 + 0.12 * u[:, 3, None, None])
    margin = 1.1 * r + 1
    grid = np.arange(size, dtype=np.float32) + 0.5
    x = grid[None, None, :] - (margin + u[:, 1, None, None] * (size - 2 * margin))
    y = grid[None, :, None] - (margin + u[:, 2, None, None] * (size - 2 * margin))
    sdf = np.empty((len(u), size, size), np.float32)
    for k, shape_sdf in enumerate(_SHAPE_SDFS.values()):
        sdf[shape == k] = shape_sdf(x[shape == k], y[shape == k], r[shape == k])
    if domain == "b":
        # The outline lies inside the filled shape's edge, so both styles share the same silhouette.
        width = max(1.5, size / 16)
        sdf = np.abs(sdf + width / 2) - width / 2
    alpha = np.clip(0.5 - sdf, 0, 1)[:, None]  # one-pixel linear ramp: cheap antialiasing
    background = np.float32(_STYLES[domain][2])
    image = background + (_scene_colours(u[:, 4], domain)[:, :, None, None].astype(np.float32) - background) * alpha
    return np.rint(image * 255).astype(np.uint8)


# Each shape's hue, in degrees: red circles, yellow squares, spring-green triangles, violet crosses. Unpaired
# data pins a translation's colours down only where the colour statistics do. With every hue equally likely for
# every shape, swapping two RGB channels (which a per-domain output layer does at no cost) maps each domain's
# scenes onto scenes just as likely, and a translation that does it fools the discriminators as well as the right
# one: trained on such data, the quickstart's translations came out in a reflected hue circle.
SHAPE_HUES = (0, 60, 150, 270)


def _scenes(seed: int, split: str, count: int, colours: str) -> np.ndarray:
    # Row i of a (count, 5) draw does not depend on count, so item i is a function of (seed, split, i) only.
    scenes = np.random.default_rng([seed, _SPLIT_STREAMS[split]]).random((count, 5))
    if colours == "by-shape":
        scenes[:, 4] = np.array(SHAPE_HUES)[(scenes[:, 0] * len(SHAPES)).astype(int)] / 360
    return scenes


def _shape_domain(scenes: np.ndarray, size: int, domain: str) -> ArrayImages:
    chunk = max(1, 2**21 // size**2)  # bounds the float temporaries at large image sizes
    images = np.concatenate([_render_shapes(scenes[i : i + chunk], size, domain) for i in range(0, len(scenes), chunk)])
    labels = torch.from_numpy((scenes[:, 0] * len(SHAPES)).astype(np.int64))
    return ArrayImages(torch.from_numpy(images), labels, size, 3)


_FOREGROUND = 0.2  # off the background: a channel differs by more than this (shape colours: 0.9 or more)


def _distance_from_background(images: Tensor, domain: str) -> tuple[Tensor, Tensor]:
    x = (images.float().cpu() + 1) / 2
    return x, (x - _STYLES[domain][2]).abs().amax(1)


def shape_colours(images: Tensor, domain: str) -> Tensor:
    """The colour of each image's shape, (N, 3) in [0, 1]: the per-channel median of its strongest pixels (at
    least 80 % of its largest difference from the background), i.e. a fill's or an outline's colour without the
    antialiased edge, which blends it with the background."""
    x, distance = _distance_from_background(images, domain)
    strong = distance >= 0.8 * distance.amax((1, 2), keepdim=True)
    return torch.stack([x[i][:, strong[i]].median(1).values for i in range(len(x))])


def silhouettes(images: Tensor, domain: str) -> Tensor:
    """Where each scene's shape is, (N, H, W) bool: the pixels off the domain's background, outlines filled in.

    A pixel is off the background when a channel differs from it by more than :data:`_FOREGROUND`. The
    background is what the image border reaches through background pixels (4-connected); everything else, the
    inside of an outline included, is the shape. A broken outline lets the background in and scores as such.
    """
    shape = _distance_from_background(images, domain)[1] > _FOREGROUND
    outside = torch.zeros_like(shape)
    outside[:, [0, -1], :], outside[:, :, [0, -1]] = True, True
    outside &= ~shape
    cross = torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]])[None, None]
    while True:
        grown = (F.conv2d(outside[:, None].float(), cross, padding=1)[:, 0] > 0) & ~shape
        if torch.equal(grown, outside):
            return ~outside
        outside = grown


def hues_of(colours: Tensor) -> Tensor:
    """The hue of each RGB colour (N, 3) in [0, 1], as a fraction of the colour circle from red (0 for greys)."""
    top, low = colours.amax(1), colours.amin(1)
    span = (top - low).clamp(min=1e-6)
    r, g, b = colours.unbind(1)
    sector = torch.where(top == r, (g - b) / span, torch.where(top == g, 2 + (b - r) / span, 4 + (r - g) / span))
    return (sector / 6) % 1


def _iou(a: Tensor, b: Tensor) -> Tensor:
    return (a & b).sum((-2, -1)) / (a | b).sum((-2, -1)).clamp(min=1)


class SceneJudge:
    """Knows each synthetic test scene, and says whether a translation of it shows it (``DomainData.judge_scenes``).

    A translation is right when its silhouette overlaps the scene's by at least :attr:`IOU` (its size and position)
    and matches the scene's shape better than the same scene drawn as any other shape (a circle and a square of
    the same size overlap by about 0.82), and its colour is the scene's colour in the target domain's style: a hue
    within :attr:`HUE_TOLERANCE` degrees and every channel within :attr:`COLOUR_TOLERANCE` levels (of 255).
    """

    #: A one-pixel shift of the smallest shapes still overlaps by 0.73.
    IOU = 0.7
    #: Neighbouring primary and secondary colours (red, yellow, green, ...) are 60 degrees apart.
    HUE_TOLERANCE = 20
    #: Keeps the style's brightness and saturation: a pastel outline or a dark fill is the wrong colour.
    COLOUR_TOLERANCE = 48

    def __init__(self, scenes: np.ndarray, size: int) -> None:
        self.scenes, self.size = scenes, size

    def __call__(self, translations: Tensor, indices: Tensor, domain: str) -> Tensor:
        scenes = self.scenes[indices.cpu().numpy()]
        drawn = silhouettes(translations, domain)
        overlaps = []
        for shape in range(len(SHAPES)):  # the true scene drawn as each shape, filled (silhouettes are shared)
            candidates = scenes.copy()
            candidates[:, 0] = (shape + 0.5) / len(SHAPES)
            filled = torch.from_numpy(_render_shapes(candidates, self.size, "a")).float() / 127.5 - 1
            overlaps.append(_iou(drawn, silhouettes(filled, "a")))
        overlaps = torch.stack(overlaps, 1)
        true_shape = torch.from_numpy((scenes[:, 0] * len(SHAPES)).astype(np.int64))
        iou = overlaps.gather(1, true_shape[:, None])[:, 0]
        right_shape = (iou >= self.IOU) & (overlaps.argmax(1) == true_shape)
        drawn_colour, colour = (
            shape_colours(translations, domain),
            torch.from_numpy(_scene_colours(scenes[:, 4], domain)),
        )
        hue_error = ((hues_of(drawn_colour) - torch.from_numpy(scenes[:, 4]) + 0.5) % 1 - 0.5).abs() * 360
        close = (drawn_colour - colour.float()).abs().amax(1) * 255 < self.COLOUR_TOLERANCE
        return right_shape & (hue_error < self.HUE_TOLERANCE) & close


def synthetic(
    image_size: Annotated[int, Field(ge=8, le=MAX_IMAGE_SIZE)] = 32,
    train_size: PositiveInt = 4000,
    test_size: PositiveInt = 256,
    seed: Annotated[int, Field(ge=0)] = 0,
    colours: Literal["by-shape", "any"] = "by-shape",
) -> DomainData:
    """Generated shapes, no files needed: A = filled bright shape on dark, B = thick dark outline on light.

    Each scene is a circle, square, triangle or cross with random position and size (label = shape index), in
    its shape's hue (:data:`SHAPE_HUES`; ``colours = "any"``: any hue for any shape, equally likely, which leaves
    the colours of a translation undetermined by unpaired data). Domain B draws the same scene as an outline in a
    darker, fully saturated shade of A's hue. Train A and train B are different random scenes (unpaired);
    ``test_a[i]`` and ``test_b[i]`` are the same scene, and ``judge_scenes`` says whether a translation shows it.
    """
    test = _scenes(seed, "test", test_size, colours)
    return DomainData(
        train_a=_shape_domain(_scenes(seed, "train_a", train_size, colours), image_size, "a"),
        train_b=_shape_domain(_scenes(seed, "train_b", train_size, colours), image_size, "b"),
        test_a=_shape_domain(test, image_size, "a"),
        test_b=_shape_domain(test, image_size, "b"),
        channels=(3, 3),
        image_size=image_size,
        paired_test=True,
        num_classes=len(SHAPES),
        judge_scenes=SceneJudge(test, image_size),
    )


# ------------------------------------------------------------------------------------------ image folders


def _missing_data(message: str) -> FileNotFoundError:
    """A dataset not where the recipe says, with the two ways to point a recipe at it."""
    return FileNotFoundError(
        f"{message}; if it is elsewhere, --set data.root=FOLDER, or set {DATA_ENV} to the folder that the recipe's "
        f"${{{DATA_ENV}}} stands for"
    )


def _layout(root: Path) -> str:
    return f"expected the CycleGAN layout {root}/{{trainA,trainB,testA,testB}}/ of {'/'.join(IMAGE_SUFFIXES)} files"


def _image_files(folder: Path, root: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: {_layout(root)}")
    # Sorting by stem lines up paired folders whose extensions differ (facades: 0001.jpg <-> 0001.png).
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: (p.stem, p.name))
    if not files:
        raise ValueError(f"{folder} holds no image files: {_layout(root)}")
    return files


class ImageFiles(Dataset):
    """Image files served as ``(transform(image), -1)``, read by :func:`unitkit.components.read_image`; files it
    refuses (unreadable, over Pillow's size limit, values of unknown range) are skipped or raise."""

    def __init__(self, paths: Sequence[Path], transform: Callable, mode: str, bad_files: str = "skip") -> None:
        self.paths, self.transform, self.mode, self.bad_files = list(paths), transform, mode, bad_files
        # One flag per file in shared memory: data-loading workers mark what they meet, the trainer counts it.
        self._bad = multiprocessing.Array("b", len(self.paths), lock=False)

    @property
    def skipped(self) -> int:
        """Number of files skipped so far, by this process and its data-loading workers."""
        return sum(self._bad)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        last_error = None
        for step in range(len(self.paths)):
            i = (index + step) % len(self.paths)
            if self._bad[i]:
                continue
            try:
                image = read_image(self.paths[i], self.mode)
            except BadImageError as error:
                if self.bad_files == "error":
                    raise
                self._bad[i], last_error = 1, error
                continue
            return self.transform(image), -1
        why = f" (the last one: {last_error})" if last_error else ""
        raise ValueError(f"none of the {len(self.paths)} files in {self.paths[0].parent} is a usable image{why}")


def _folder_transform(image_size: int, load_size: int, crop: str, flip: bool, channels: int, train: bool) -> T.Compose:
    if crop == "none":
        ops: list[Callable] = [T.Resize((image_size, image_size), T.InterpolationMode.BICUBIC)]
    else:
        cropper = T.RandomCrop if train and crop == "random" else T.CenterCrop
        ops = [T.Resize(load_size, T.InterpolationMode.BICUBIC), cropper(image_size)]
    if train and flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([*ops, T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)])


#: How many of the test images without a partner a message names.
_NAMED_UNMATCHED = 5


def _without_partner(test_a: list[Path], test_b: list[Path]) -> list[str]:
    """The test images that no image of the same file stem in the other folder pairs with, as ``testA/NAME``."""
    unmatched = []
    for split, files, others in (("testA", test_a, test_b), ("testB", test_b, test_a)):
        partners = Counter(path.stem for path in others)
        for path in files:
            if partners[path.stem]:
                partners[path.stem] -= 1
            else:
                unmatched.append(f"{split}/{path.name}")
    return unmatched


def _listed(unmatched: list[str]) -> str:
    named = ", ".join(unmatched[:_NAMED_UNMATCHED]) + (", ..." if len(unmatched) > _NAMED_UNMATCHED else "")
    return f"{len(unmatched)} test image(s) without a partner: {named}"


def unpaired_folders(
    root: str,
    image_size: ImageSize = 256,
    load_size: Annotated[int, Field(ge=0)] = 0,
    crop: Literal["random", "center", "none"] = "random",
    flip: bool = True,
    channels: Literal[1, 3] = 3,
    bad_files: Literal["skip", "error"] = "skip",
    paired_test: Literal["auto", "yes", "no"] = "auto",
) -> DomainData:
    """Image folders in the CycleGAN layout root/trainA, trainB, testA, testB (any size; ``IMAGE_SUFFIXES``).

    Images are resized so the shorter side is ``load_size`` (0: ``image_size``) and cropped to ``image_size``
    (random crop in train with ``crop="random"``, centre crop otherwise); ``crop="none"`` instead squashes the
    whole image to image_size x image_size in train and test. Train images are flipped at random if ``flip``.
    Test items are aligned by file stem. ``paired_test="auto"`` calls the test set paired when testA and testB
    hold the same stems (as in maps, facades), and warns when they share stems but some image lacks its partner;
    set ``"no"`` for unpaired sets that merely share file names (cifar_cat2dog numbers both folders 0000...), or
    ``"yes"`` to insist on pairs. Every image of a paired test set is read once here: an unreadable one is an
    error, since skipping it would shift the pairs.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise _missing_data(f"dataset folder {base} not found: {_layout(base)}")
    load_size = load_size or image_size
    if load_size < image_size:
        raise ValueError(
            f"load_size {load_size} is smaller than image_size {image_size}: the crop needs load_size >= image_size"
        )
    if crop == "none" and load_size != image_size:
        raise ValueError("load_size has no effect with crop='none' (images are resized to image_size); drop it")
    files = {split: _image_files(base / split, base) for split in ("trainA", "trainB", "testA", "testB")}
    unmatched = _without_partner(files["testA"], files["testB"])
    if paired_test == "yes" and unmatched:
        raise ValueError(
            f"paired_test='yes' but {base}/testA and {base}/testB do not hold the same file stems, "
            f"{_listed(unmatched)}; give every test image its partner of the same file stem"
        )
    if paired_test == "auto" and 0 < len(unmatched) < len(files["testA"]) + len(files["testB"]):
        warnings.warn(
            f"{base}/testA and {base}/testB share file stems, but {_listed(unmatched)}; the test set is taken as "
            "unpaired, so no pixel accuracy is measured. Give every test image its partner, or set "
            'data.paired_test = "no" if the folders are not pairs',
            UnitkitWarning,
            stacklevel=2,
        )
    mode = image_mode(channels)
    paired = not unmatched and paired_test != "no"

    if paired:  # skipping a file of a paired test set would pair the next image with the wrong ground truth
        for path in files["testA"] + files["testB"]:
            try:
                read_image(path, mode)
            except BadImageError as error:
                raise ValueError(
                    f"cannot read {path} ({error.problem}) of the paired test set; fix it, or remove it and its pair"
                ) from error

    def domain(split: str, train: bool) -> ImageFiles:
        transform = _folder_transform(image_size, load_size, crop, flip, channels, train)
        return ImageFiles(files[split], transform, mode, bad_files)

    return DomainData(
        train_a=domain("trainA", True),
        train_b=domain("trainB", True),
        test_a=domain("testA", False),
        test_b=domain("testB", False),
        channels=(channels, channels),
        image_size=image_size,
        paired_test=paired,
    )


# ------------------------------------------------------------------------------------------------- digits

_MNIST_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The torchvision loader of each digit set and the files it reads under root/<name>.
_DIGITS: dict[str, tuple[type[Dataset], list[str]]] = {
    "mnist": (MNIST, [f"MNIST/raw/{f}" for f in _MNIST_RAW]),
    "usps": (USPS, ["usps.bz2", "usps.t.bz2"]),
    "svhn": (SVHN, ["train_32x32.mat", "test_32x32.mat"]),
}


def digit_domain(
    name: Literal["mnist", "usps", "svhn"],
    root: str | Path,
    train: bool,
    image_size: int,
    channels: int,
    padding: int = 0,
) -> ArrayImages:
    """One split of a torchvision digit set found under ``root/<name>`` (never downloaded), labels 0-9.

    ``padding`` adds that many background (zero) pixels on each side at the stored size, before any resize.
    """
    loader, files = _DIGITS[name]
    folder = Path(root).expanduser() / name
    expected = [folder / f for f in files]
    if not all(p.is_file() for p in expected):
        raise _missing_data(
            f"{loader.__name__} not found under {folder}: expected {', '.join(map(str, expected))}; unitkit never"
            f" downloads data, so fetch it yourself"
            f" (e.g. torchvision.datasets.{loader.__name__}('{folder}', download=True))"
        )
    if loader is SVHN:
        try:
            ds = SVHN(str(folder), split="train" if train else "test", download=False)
        except ImportError as error:
            raise ImportError("reading SVHN's .mat files needs scipy: pip install scipy") from error
        data, labels = ds.data, ds.labels
    else:
        ds = loader(str(folder), train=train, download=False)
        data, labels = ds.data, ds.targets
    images = torch.as_tensor(np.asarray(data))
    images = images[:, None] if images.ndim == 3 else images  # grayscale sets come as (N, h, w)
    if padding:
        images = F.pad(images, (padding,) * 4)
    return ArrayImages(images, torch.as_tensor(np.asarray(labels)), image_size, channels)


def _digit_pair(
    root: str,
    names: tuple[str, str],
    image_size: int,
    channels: tuple[int, int],
    padding: tuple[int, int] = (0, 0),
    validation: int = 0,
) -> DomainData:
    """Two digit sets as domains A and B; ``validation`` > 0 evaluates on that many images held out of the end of
    each training set instead of on the test sets."""
    domains = list(zip(names, channels, padding, strict=True))
    train = [digit_domain(name, root, True, image_size, c, pad) for name, c, pad in domains]
    if not validation:
        test = [digit_domain(name, root, False, image_size, c, pad) for name, c, pad in domains]
        return DomainData(*train, *test, channels=channels, image_size=image_size, num_classes=10)
    if validation >= min(map(len, train)):
        sizes = " and ".join(f"{len(split):,} of {name}" for name, split in zip(names, train, strict=True))
        raise ValueError(f"validation = {validation:,} leaves no training images: there are {sizes}")
    (train_a, test_a), (train_b, test_b) = (split.held_out(validation) for split in train)
    return DomainData(train_a, train_b, test_a, test_b, channels=channels, image_size=image_size, num_classes=10,
                      evaluation_split="validation")  # fmt: skip


def mnist_usps(
    root: str,
    source: Literal["mnist", "usps"] = "mnist",
    image_size: ImageSize = 32,
    channels: Literal[1, 3] = 1,
    usps_padding: Annotated[int, Field(ge=0)] = 0,
    validation: Annotated[int, Field(ge=0)] = 0,
) -> DomainData:
    """MNIST <-> USPS digits (A = source, B = the other) from root/mnist and root/usps; labels are the digits.

    Both are resized bilinearly to image_size (MNIST 28 -> 32, USPS 16 -> 32 by default). Never downloads.
    USPS digits fill their 16x16 frame, MNIST digits sit in a 20-pixel box of a 28-pixel frame; ``usps_padding``
    adds background around each USPS digit first (3 gives MNIST's proportions: 16 of 22 pixels).
    ``validation = N`` holds out the last N training images of each set, trains on the rest and evaluates on
    those N instead of the test sets: a schedule chosen on them never looked at a test image.
    """
    target = "usps" if source == "mnist" else "mnist"
    padding = (0, usps_padding) if source == "mnist" else (usps_padding, 0)
    return _digit_pair(root, (source, target), image_size, (channels, channels), padding, validation)


def svhn_mnist(root: str, image_size: ImageSize = 32, validation: Annotated[int, Field(ge=0)] = 0) -> DomainData:
    """SVHN -> MNIST digits (A = SVHN from root/svhn, B = MNIST from root/mnist in 3 channels); labels are digits.

    SVHN is read from torchvision's .mat files (needs scipy). Never downloads. ``validation`` as in mnist-usps.
    """
    return _digit_pair(root, ("svhn", "mnist"), image_size, (3, 3), validation=validation)


__all__ = ["ArrayImages", "ImageFiles", "digit_domain", "mnist_usps", "svhn_mnist", "synthetic", "unpaired_folders"]
