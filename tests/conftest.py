"""Shared fixtures: the loaded plugin set, a tiny recipe, and a fake third-party plugin distribution."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from unitkit.plugins import load_plugins
from unitkit.recipe import data_root

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Declared here rather than in pyproject.toml, whose every change rebuilds the development environment.
    config.addinivalue_line(
        "markers",
        "slow: torchrun, torch.compile, the FID network, a browser or subprocesses stopped by signals; "
        "./dev.sh test -m 'not slow' leaves them out for a fast local loop (CI runs everything)",
    )
    config.addinivalue_line(
        "markers",
        "cuda: the GPU paths (tests/test_cuda.py); skipped without a CUDA GPU unless UNITKIT_CUDA_TESTS_ON=cpu runs "
        "them on the CPU as a dry run of their logic",
    )


@pytest.fixture(scope="session")
def registries():
    plugins = load_plugins(autoload=False)
    assert not plugins.failures, plugins.failures
    return plugins.registries


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root}; set UNITKIT_DATA to the shared/data folder")
    return root


TINY_RECIPE = """
name = "tiny"
[data]
kind = "synthetic"
image_size = 16
train_size = 64
test_size = 8
[model.encoder]
kind = "resnet"
width = 4
downsamplings = 1
res_blocks = 1
[model.generator]
kind = "resnet"
downsamplings = 1
res_blocks = 1
[model.discriminator]
kind = "patch"
width = 4
layers = 2
[train]
iterations = 4
batch_size = 2
log_every = 1
sample_every = 2
sample_count = 2
checkpoint_every = 2
device = "cpu"
[ablations.no-sharing]
"model.sharing.kind" = "none"
"""


def tiny_with_data(data_table: str) -> str:
    """TINY_RECIPE with the lines of its [data] table replaced by ``data_table``."""
    head, rest = TINY_RECIPE.split("[data]\n", 1)
    return f"{head}[data]\n{data_table.strip()}\n{rest[rest.index('[model.encoder]') :]}"


def invoke(*args: object):
    """``unitkit ARGS`` in this process; a result whose exception is an exit, never an error that escaped."""
    from click.testing import CliRunner

    from unitkit.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exc_info
    return result


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE, encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a process group's rendezvous."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


@pytest.fixture
def torchrun_tiny(tiny_recipe: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts ``unitkit run`` of the tiny recipe under torchrun, in two CPU processes (gloo) unless ``processes``
    says otherwise (and ``train.device`` another device); returns its Popen.

    torchrun's workers run in sessions of their own, so killing torchrun would orphan them: a run still going
    at the end of the test gets SIGTERM, which torchrun forwards, and is killed only if it outlives that.
    """
    started: list[subprocess.Popen] = []

    def start(out: Path, *overrides: str, processes: int = 2) -> subprocess.Popen:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "unitkit", "run",
                   str(tiny_recipe), "--out", str(out), "--quiet", *(f"--set={o}" for o in overrides)]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        env["OMP_NUM_THREADS"] = "1"
        started.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


#: The digits networks at toy width with the domain-adaptation terms on; prepend a [data] table, append [train].
TINY_DIGITS = """
[model.encoder]
kind = "digits32"
width = 2
[model.generator]
kind = "digits32"
width = 2
[model.discriminator]
kind = "digits32"
width = 2
dropout = false
[model.sharing]
kind = "all-but-ends"
[model]
share_discriminators = true
[objective]
recon = 1e-3
cycle = 0.0
kl_cycle = 0.0
classify = 10.0
feature = 1e-4
fake_reconstructions = true
"""


def fake_inception(path: Path) -> Path:
    """A tiny TorchScript stand-in with the FID network's interface: (N, 3, 299, 299) in [-1, 1] → (N, 2048)."""
    import torch

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 2048))
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the real network ships in
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(network).save(str(path))
    return path


PLUGIN_SOURCE = '''
import unitkit
from unitkit import hookimpl
from unitkit.builtin.losses import LSGAN


class DoubledLSGAN(LSGAN):
    """LSGAN times two (a third-party test plugin)."""

    def __init__(self, factor: float = 2.0):
        self.factor = factor

    def discriminator(self, real, fake):
        return self.factor * super().discriminator(real, fake)

    def generator(self, fake):
        return self.factor * super().generator(fake)


@hookimpl
def unitkit_register_gan_losses(registry):
    registry.register("doubled-lsgan", DoubledLSGAN)
'''


def make_distribution(folder: Path, package: str, module: str, source: str, version: str = "0.3.1") -> Path:
    """Write an installed-looking distribution (module + dist-info with a ``unitkit`` entry point) in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = folder / f"{package.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[unitkit]\n{package} = {module}\n", encoding="utf-8")
    return folder


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A third-party plugin 'unitkit-doubled' on sys.path, visible to importlib.metadata and subprocesses."""
    folder = make_distribution(tmp_path / "site", "unitkit-doubled", "unitkit_doubled", PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    yield folder
    sys.modules.pop("unitkit_doubled", None)


RIVAL_BACKBONES_SOURCE = '''
from torch import nn

from unitkit import hookimpl


class MyNet(nn.Module):
    """A third-party encoder backbone."""

    def __init__(self, in_channels: int, width: int = 8):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv2d(in_channels, width, 3, padding=1)])


@hookimpl
def unitkit_register_encoders(registry):
    registry.register("resnet", MyNet)  # taken by unitkit's built-in
    registry.register("my-net", MyNet)
'''

HALF_REGISTERING_SOURCE = """
from unitkit import hookimpl


@hookimpl
def unitkit_register_encoders(registry):
    registry.register("half-net", dict)


@hookimpl
def unitkit_register_datasets(registry):
    registry.register("half-data", dict)
    raise RuntimeError("disk on fire")
"""


@pytest.fixture
def rival_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Two third-party distributions whose names sort before unitkit, so their entry points come first.

    a-backbones registers encoder 'resnet' (a built-in name) and encoder 'my-net'; a-broken registers encoder
    'half-net' and dataset 'half-data', then raises from its dataset hook.
    """
    folder = tmp_path / "site"
    make_distribution(folder, "a-backbones", "a_backbones", RIVAL_BACKBONES_SOURCE, version="1.0")
    make_distribution(folder, "a-broken", "a_broken", HALF_REGISTERING_SOURCE, version="2.0")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    yield folder
    for module in ("a_backbones", "a_broken"):
        sys.modules.pop(module, None)
